//! PostgreSQL: cs-core's store contract and the cs-datahub extras against the
//! real server at CS_TEST_POSTGRES_URL, each case in a schema of its own that
//! is dropped afterwards; visitor records; open conversations.
#![cfg(feature = "postgres")]

mod common;

use common::{drop_pg_schema, scratch_name, sweep_stale_pg_schemas, Scratch};
use cs_datahub::store::PostgresStore;
use cs_datahub::OpenError;
use sqlx::Connection;

async fn make_store() -> Option<Scratch<PostgresStore>> {
    let url = cs_core::testing::service_url("CS_TEST_POSTGRES_URL")?;
    sweep_stale_pg_schemas(&url).await;
    let schema = scratch_name();
    let store = PostgresStore::connect_in_schema(&url, &schema)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cleanup = Box::new(move || -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move { drop_pg_schema(&url, &schema).await })
    });
    Some(Scratch::new(store, cleanup))
}

cs_core::message_store_contract!(make_store);
ext_contract!(make_store);
cs_core::report_store_contract!(make_store);
visitor_contract!(make_store);

#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password() {
    // Nothing listens on port 1; the password must not appear in the error.
    let err = PostgresStore::connect("postgres://app:hunter2@127.0.0.1:1/shop")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("postgres://app:***@127.0.0.1:1/shop"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn bad_urls_and_schema_names_are_typed_errors() {
    let err = PostgresStore::connect("postgres://127.0.0.1:notaport/x")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::BadUrl { .. }), "{err:?}");
    let err = PostgresStore::connect_in_schema("postgres://127.0.0.1/x", "Robert'); DROP")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::BadUrl { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_version_is_refused() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_POSTGRES_URL") else {
        return;
    };
    let schema = scratch_name();
    let store = PostgresStore::connect_in_schema(&url, &schema)
        .await
        .unwrap();
    store.close().await;
    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\"._sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', true, '\\x00', 0)"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let result = PostgresStore::connect_in_schema(&url, &schema).await;
    drop_pg_schema(&url, &schema).await;
    match result {
        Err(e @ OpenError::SchemaMismatch { .. }) => assert!(e.to_string().contains("9999"), "{e}"),
        other => panic!("expected SchemaMismatch, got {:?}", other.err()),
    }
}
