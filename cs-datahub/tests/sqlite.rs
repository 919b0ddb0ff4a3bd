//! SQLite: cs-core's store contract, the cs-datahub extras, and what a bad
//! file does. No server needed.
#![cfg(feature = "sqlite")]

mod common;

use cs_core::store::{MessageStore, StoreError};
use cs_core::{Conversation, NewMessage, Party, Seq, TenantId, Timestamp, VisitorId};
use cs_datahub::store::SqliteStore;
use cs_datahub::OpenError;

async fn make_store() -> Option<SqliteStore> {
    Some(SqliteStore::in_memory().await.expect("in-memory sqlite"))
}

cs_core::message_store_contract!(make_store);
ext_contract!(make_store);
cs_core::report_store_contract!(make_store);
visitor_contract!(make_store);

/// The file-backed store (one writer, several readers) keeps the contract too.
mod file_backed {
    use super::*;

    async fn make_file_store() -> Option<SqliteStore> {
        let dir = std::env::temp_dir().join(format!("cs-datahub-test-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        // The directory is left for the OS temp cleaner if the test dies.
        Some(
            SqliteStore::open(dir.join("chat.db"))
                .await
                .expect("sqlite file"),
        )
    }

    cs_core::message_store_contract!(make_file_store);
}

fn temp_db() -> (tempdir::Dir, std::path::PathBuf) {
    let dir = tempdir::Dir::new();
    let path = dir.0.join("chat.db");
    (dir, path)
}

mod tempdir {
    /// A temporary directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new() -> Self {
            let p = std::env::temp_dir().join(format!("cs-datahub-test-{}", uuid::Uuid::now_v7()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A file store at `path` holding one conversation with one message.
async fn file_store_with_one_message(
    path: &std::path::Path,
    text: &str,
) -> (SqliteStore, Conversation, VisitorId) {
    let store = SqliteStore::open(path).await.unwrap();
    let visitor = VisitorId::new("v").unwrap();
    let c = Conversation::open(
        TenantId::new("t").unwrap(),
        visitor.clone(),
        Timestamp::now(),
    );
    store.create_conversation(&c).await.unwrap();
    store
        .append(NewMessage::text(
            c.id(),
            Party::Visitor(visitor.clone()),
            text,
        ))
        .await
        .unwrap();
    (store, c, visitor)
}

#[tokio::test]
async fn a_file_store_keeps_messages_across_reopen() {
    let (_dir, path) = temp_db();
    let (store, c, _) = file_store_with_one_message(&path, "kept").await;
    store.close().await;
    drop(store);

    let again = SqliteStore::open(&path).await.unwrap();
    assert_eq!(again.last_seq(c.id()).await.unwrap(), Seq::new(1));
    assert_eq!(again.conversation(c.id()).await.unwrap(), c);
}

/// The report counters are rows of the file: a reopened store (a restarted
/// desk) reads the same scripted day, and counts on from there.
#[tokio::test]
async fn report_counters_survive_a_reopen() {
    use cs_core::store::contract::{counters_on, play_scripted_day, SCRIPTED_DAY_START_MS};
    use cs_core::store::{ReportStore, ReportZone};
    let (_dir, path) = temp_db();
    let tenant = TenantId::new("restart").unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    let expected = play_scripted_day(&store, &tenant).await;
    store.close().await;
    drop(store);

    let again = SqliteStore::open(&path).await.unwrap();
    again.set_report_zone(&tenant, ReportZone::UTC);
    let day = ReportZone::UTC.day_of(Timestamp::from_millis(SCRIPTED_DAY_START_MS));
    assert_eq!(counters_on(&again, &tenant, day).await, expected);
    // The same day played again after the restart adds to it, exactly.
    play_scripted_day(&again, &tenant).await;
    let doubled: std::collections::BTreeMap<_, _> =
        expected.iter().map(|(k, v)| (k.clone(), v * 2)).collect();
    assert_eq!(counters_on(&again, &tenant, day).await, doubled);
}

/// With the counters off (`set_report_counters(false)`, store_bench's
/// baseline) a scripted day adds nothing; back on, counts added on their
/// own (the bot's decisions) land as any other.
#[tokio::test]
async fn report_counters_can_be_switched_off_and_added_on_their_own() {
    use cs_core::store::contract::{counters_on, play_scripted_day, SCRIPTED_DAY_START_MS};
    use cs_core::store::reports::{measure, Deltas};
    use cs_core::store::{ReportStore, ReportZone};
    let (_dir, path) = temp_db();
    let tenant = TenantId::new("off").unwrap();
    let store = SqliteStore::open(&path).await.unwrap();
    let day = ReportZone::UTC.day_of(Timestamp::from_millis(SCRIPTED_DAY_START_MS));
    store.set_report_counters(false);
    play_scripted_day(&store, &tenant).await;
    assert!(counters_on(&store, &tenant, day).await.is_empty());

    store.set_report_counters(true);
    let mut deltas = Deltas::default();
    deltas.add(day, None, &measure::bot_answer("order_status"), 2);
    deltas.add(day, None, &measure::bot_answer("order_status"), 1);
    store.add_report_counts(&tenant, &deltas).await.unwrap();
    store.add_report_counts(&tenant, &deltas).await.unwrap();
    let counts = store.report_counts(&tenant, day, day).await.unwrap();
    assert_eq!(counts.len(), 1, "{counts:?}");
    assert_eq!(
        (
            counts[0].measure.as_str(),
            counts[0].value,
            &counts[0].agent
        ),
        ("bot_answer:order_status", 6, &None)
    );
}

#[tokio::test]
async fn a_schema_from_a_newer_version_is_refused() {
    let (_dir, path) = temp_db();
    SqliteStore::open(&path).await.unwrap().close().await;
    // What a newer cs-datahub would leave behind: a migration this build lacks.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (9999, 'from the future', 1, x'00', 0)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    match SqliteStore::open(&path).await {
        Err(e @ OpenError::SchemaMismatch { .. }) => {
            assert!(e.to_string().contains("9999"), "{e}");
        }
        other => panic!("expected SchemaMismatch, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_an_error() {
    let (_dir, path) = temp_db();
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    match SqliteStore::open(&path).await {
        Err(OpenError::Migration { .. } | OpenError::Unreachable { .. }) => {}
        other => panic!("expected an open error, got {:?}", other.err()),
    }
}

#[tokio::test]
async fn a_directory_that_does_not_exist_names_the_path() {
    let err = SqliteStore::open("/nonexistent-dir-cs/chat.db")
        .await
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::Unreachable { .. }), "{err:?}");
    assert!(
        err.to_string().contains("/nonexistent-dir-cs/chat.db"),
        "{err}"
    );
}

#[tokio::test]
async fn a_row_edited_by_hand_reads_as_corrupt() {
    let (_dir, path) = temp_db();
    let (store, c, visitor) = file_store_with_one_message(&path, "fine").await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE cs_messages SET body = '{not json'")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    match store.recent(c.id(), 10).await {
        Err(StoreError::Corrupt(what)) => assert!(what.contains("body"), "{what}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Everything else keeps working.
    store
        .append(NewMessage::text(c.id(), Party::Visitor(visitor), "next"))
        .await
        .unwrap();
}
