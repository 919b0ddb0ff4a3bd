//! MariaDB: cs-core's store contract and the cs-datahub extras against the
//! real server at CS_TEST_MYSQL_URL, each case in a database of its own that
//! is dropped afterwards.
#![cfg(feature = "mysql")]

mod common;

use common::{is_stale_scratch, scratch_name, Scratch};
use cs_datahub::store::MySqlStore;
use cs_datahub::OpenError;
use sqlx::Connection;

async fn make_store() -> Option<Scratch<MySqlStore>> {
    let url = cs_core::testing::service_url("CS_TEST_MYSQL_URL")?;
    sweep_stale_schemas(&url).await;
    let schema = scratch_name();
    let store = MySqlStore::connect_in_database(&url, &schema)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let cleanup = Box::new(move || -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move { drop_schema(&url, &schema).await })
    });
    Some(Scratch::new(store, cleanup))
}

async fn drop_schema(url: &str, schema: &str) {
    let mut conn = sqlx::MySqlConnection::connect(url).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS `{schema}`"))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Drops databases left by a run that crashed more than an hour ago.
async fn sweep_stale_schemas(url: &str) {
    let mut conn = sqlx::MySqlConnection::connect(url).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(schema_name AS CHAR) FROM information_schema.schemata WHERE schema_name LIKE 'cs\\_test\\_%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for name in names.into_iter().filter(|n| is_stale_scratch(n)) {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{name}`"))
            .execute(&mut conn)
            .await;
    }
}

cs_core::message_store_contract!(make_store);
ext_contract!(make_store);
cs_core::report_store_contract!(make_store);
visitor_contract!(make_store);

#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password() {
    // Nothing listens on port 1; the password must not appear in the error.
    let err = MySqlStore::connect("mysql://app:hunter2@127.0.0.1:1/shop")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("mysql://app:***@127.0.0.1:1/shop"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test]
async fn bad_urls_and_schema_names_are_typed_errors() {
    let err = MySqlStore::connect("mysql://127.0.0.1:notaport/x")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::BadUrl { .. }), "{err:?}");
    let err = MySqlStore::connect_in_database("mysql://127.0.0.1/x", "Robert'); DROP")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::BadUrl { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_version_is_refused() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_MYSQL_URL") else {
        return;
    };
    let schema = scratch_name();
    let store = MySqlStore::connect_in_database(&url, &schema)
        .await
        .unwrap();
    store.close().await;
    let mut conn = sqlx::MySqlConnection::connect(&url).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO `{schema}`._sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', true, x'00', 0)"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let result = MySqlStore::connect_in_database(&url, &schema).await;
    drop_schema(&url, &schema).await;
    match result {
        Err(e @ OpenError::SchemaMismatch { .. }) => assert!(e.to_string().contains("9999"), "{e}"),
        other => panic!("expected SchemaMismatch, got {:?}", other.err()),
    }
}
