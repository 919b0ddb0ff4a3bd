//! TieredStore: Redis (CS_TEST_REDIS_URL) in front of SQLite and of
//! PostgreSQL (CS_TEST_POSTGRES_URL). Both pass cs-core's store contract, the
//! cs-datahub extras and the visitor cases, and so does SQLite behind a Redis
//! that is not there. Then: hits really come from Redis, a window that fell
//! behind SQL or was deleted or corrupted is never served, and a Redis that
//! dies and comes back mid-run costs nothing but hits.
//!
//! Each case has a key prefix (and a schema) of its own, deleted afterwards.
#![cfg(all(feature = "redis", feature = "sqlite", feature = "postgres"))]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{
    delete_redis_keys, drop_pg_schema, scratch_name, sweep_stale_pg_schemas,
    sweep_stale_redis_keys, Scratch,
};
use cs_core::store::MessageStore;
use cs_core::{
    Conversation, ConversationId, NewMessage, Party, Seq, TenantId, Timestamp, VisitorId,
};
use cs_datahub::breaker::BreakerConfig;
use cs_datahub::store::{
    MessageStoreExt, PostgresStore, SqliteStore, TieredConfig, TieredStats, TieredStore,
};

/// Short timeouts and a breaker that reopens quickly, so the fault cases
/// run in well under a second.
fn config(prefix: &str) -> TieredConfig {
    TieredConfig {
        prefix: prefix.to_owned(),
        window: 50,
        ttl: Duration::from_secs(600),
        timeout: Duration::from_millis(300),
        breaker: BreakerConfig {
            failures_to_open: 2,
            open_for: Duration::from_millis(100),
        },
    }
}

fn redis_cleanup(
    url: String,
    prefix: String,
) -> impl FnOnce() -> futures::future::BoxFuture<'static, ()> {
    move || Box::pin(async move { delete_redis_keys(&url, &format!("{prefix}*")).await })
}

/// SQLite in memory behind Redis at `redis_url`, under a fresh key prefix.
async fn sqlite_behind(redis_url: &str) -> Scratch<TieredStore<SqliteStore>> {
    sweep_stale_redis_keys(redis_url).await;
    let prefix = format!("{}:", scratch_name());
    let sql = SqliteStore::in_memory().await.expect("in-memory sqlite");
    let store = TieredStore::new(sql, redis_url, config(&prefix)).unwrap_or_else(|e| panic!("{e}"));
    Scratch::new(store, Box::new(redis_cleanup(redis_url.to_owned(), prefix)))
}

async fn make_sqlite_store() -> Option<Scratch<TieredStore<SqliteStore>>> {
    let url = cs_core::testing::service_url("CS_TEST_REDIS_URL")?;
    Some(sqlite_behind(&url).await)
}

mod sqlite_and_redis {
    use super::*;
    async fn make_store() -> Option<Scratch<TieredStore<SqliteStore>>> {
        make_sqlite_store().await
    }
    cs_core::message_store_contract!(make_store);
    ext_contract!(make_store);
    cs_core::report_store_contract!(make_store);
    visitor_contract!(make_store);
}

mod postgres_and_redis {
    use super::*;

    async fn make_store() -> Option<Scratch<TieredStore<PostgresStore>>> {
        let redis_url = cs_core::testing::service_url("CS_TEST_REDIS_URL")?;
        let pg_url = cs_core::testing::service_url("CS_TEST_POSTGRES_URL")?;
        sweep_stale_pg_schemas(&pg_url).await;
        sweep_stale_redis_keys(&redis_url).await;
        let name = scratch_name();
        let prefix = format!("{name}:");
        let sql = PostgresStore::connect_in_schema(&pg_url, &name)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let store =
            TieredStore::new(sql, &redis_url, config(&prefix)).unwrap_or_else(|e| panic!("{e}"));
        let redis_gone = redis_cleanup(redis_url, prefix);
        let cleanup = Box::new(move || -> futures::future::BoxFuture<'static, ()> {
            Box::pin(async move {
                redis_gone().await;
                drop_pg_schema(&pg_url, &name).await;
            })
        });
        Some(Scratch::new(store, cleanup))
    }
    cs_core::message_store_contract!(make_store);
    ext_contract!(make_store);
    cs_core::report_store_contract!(make_store);
    visitor_contract!(make_store);
}

/// Nothing listens on port 1: every Redis call fails at once, and the
/// contract must hold all the same, answered by SQLite.
mod sqlite_and_no_redis {
    use super::*;
    async fn make_store() -> Option<TieredStore<SqliteStore>> {
        let sql = SqliteStore::in_memory().await.expect("in-memory sqlite");
        Some(TieredStore::new(sql, "redis://127.0.0.1:1", config("unused:")).unwrap())
    }
    cs_core::message_store_contract!(make_store);
    ext_contract!(make_store);
    cs_core::report_store_contract!(make_store);
    visitor_contract!(make_store);
}

async fn conversation<S: MessageStore>(store: &S) -> (ConversationId, VisitorId) {
    let visitor = VisitorId::new("v").unwrap();
    let c = Conversation::open(
        TenantId::new("t").unwrap(),
        visitor.clone(),
        Timestamp::now(),
    );
    store.create_conversation(&c).await.unwrap();
    (c.id(), visitor)
}

fn text(c: ConversationId, v: &VisitorId, i: u64) -> NewMessage {
    NewMessage::text(c, Party::Visitor(v.clone()), format!("m{i}"))
}

fn seqs(messages: &[cs_core::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.get()).collect()
}

/// What changed in the counters between two snapshots.
fn delta(before: TieredStats, after: TieredStats) -> (u64, u64, u64) {
    (
        after.hits - before.hits,
        after.misses - before.misses,
        after.redis_errors - before.redis_errors,
    )
}

async fn raw_redis(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

fn window_key<S>(store: &TieredStore<S>, c: ConversationId) -> String {
    format!("{}win:{c}", store.config().prefix)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_are_served_from_the_redis_window() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else {
        return;
    };
    let scratch = sqlite_behind(&url).await;
    let store = &scratch.store;
    let (c, v) = conversation(store).await;
    for i in 1..=10 {
        store.append(text(c, &v, i)).await.unwrap();
    }
    let mut conn = raw_redis(&url).await;
    let held: u64 = redis::cmd("ZCARD")
        .arg(window_key(store, c))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(held, 10, "every append was pushed onto the window");

    let before = store.stats();
    let recent = store.recent(c, 5).await.unwrap();
    assert_eq!(seqs(&recent), vec![6, 7, 8, 9, 10]);
    assert_eq!(recent[4].body, cs_core::Body::text("m10"));
    assert_eq!(
        seqs(&store.after(c, Seq::new(7), 100).await.unwrap()),
        vec![8, 9, 10]
    );
    assert!(store.after(c, Seq::new(10), 100).await.unwrap().is_empty());
    assert_eq!(
        seqs(&store.range(c, Seq::new(2), Seq::new(4), 10).await.unwrap()),
        vec![2, 3, 4]
    );
    assert_eq!(
        seqs(&store.range(c, Seq::ZERO, Seq::new(99), 3).await.unwrap()),
        vec![1, 2, 3]
    );
    assert_eq!(
        seqs(&store.recent(c, 20).await.unwrap()),
        (1..=10).collect::<Vec<_>>(),
        "fewer messages than asked: all of them"
    );
    assert_eq!(
        delta(before, store.stats()),
        (6, 0, 0),
        "{:?}",
        store.stats()
    );
    assert_eq!(
        store.recent(c, 5).await.unwrap(),
        store.cold().recent(c, 5).await.unwrap(),
        "the cached answer is SQL's answer"
    );

    // A retry is answered by SQL's dedup and leaves the window alone.
    let retry = text(c, &v, 11).with_client_msg_id(cs_core::ClientMsgId::new("k").unwrap());
    assert!(!store.append(retry.clone()).await.unwrap().duplicate);
    assert!(store.append(retry).await.unwrap().duplicate);
    let held: u64 = redis::cmd("ZCARD")
        .arg(window_key(store, c))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(held, 11);

    // Windows are capped: 60 messages in a window of 50.
    for i in 12..=60 {
        store.append(text(c, &v, i)).await.unwrap();
    }
    let held: u64 = redis::cmd("ZCARD")
        .arg(window_key(store, c))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(held, 50);
    let before = store.stats();
    assert_eq!(
        seqs(&store.recent(c, 50).await.unwrap()),
        (11..=60).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(
            &store
                .range(c, Seq::new(5), Seq::new(12), 100)
                .await
                .unwrap()
        ),
        (5..=12).collect::<Vec<_>>()
    );
    assert_eq!(
        seqs(&store.recent(c, 51).await.unwrap()),
        (10..=60).collect::<Vec<_>>()
    );
    assert_eq!(
        delta(before, store.stats()),
        (1, 2, 0),
        "past the window is SQL's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_fill_every_window_they_touch() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else {
        return;
    };
    let scratch = sqlite_behind(&url).await;
    let store = &scratch.store;
    let (a, v) = conversation(store).await;
    let (b, _) = conversation(store).await;
    store.append(text(a, &v, 0)).await.unwrap();
    // 1,100 messages for a (more than one ZADD's worth in the script), 100
    // for b, interleaved, and a retry of a's first message.
    let mut batch: Vec<NewMessage> = (1..=1_100)
        .map(|i| text(a, &v, i))
        .chain((1..=100).map(|i| text(b, &v, i)))
        .collect();
    batch.swap(5, 1_150);
    let retry = text(a, &v, 0).with_client_msg_id(cs_core::ClientMsgId::new("r").unwrap());
    store.append(retry.clone()).await.unwrap();
    batch.push(retry);
    let out = store.append_all(batch).await.unwrap();
    assert!(out.last().unwrap().duplicate);

    let mut conn = raw_redis(&url).await;
    for (c, top) in [(a, 1_102.0), (b, 100.0)] {
        let held: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(window_key(store, c))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .unwrap();
        let scores: Vec<f64> = held.iter().map(|(_, s)| *s).collect();
        let expected: Vec<f64> = (0..50).map(|i| top - 49.0 + f64::from(i)).collect();
        assert_eq!(scores, expected, "the last 50 of each, in order");
    }
    let before = store.stats();
    assert_eq!(
        store.recent(a, 50).await.unwrap(),
        store.cold().recent(a, 50).await.unwrap()
    );
    assert_eq!(
        store.after(b, Seq::new(60), 100).await.unwrap(),
        store.cold().after(b, Seq::new(60), 100).await.unwrap()
    );
    assert_eq!(delta(before, store.stats()), (2, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_behind_sql_is_never_served() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else {
        return;
    };
    let scratch = sqlite_behind(&url).await;
    let store = &scratch.store;
    let (c, v) = conversation(store).await;
    for i in 1..=5 {
        store.append(text(c, &v, i)).await.unwrap();
    }
    // Message 6 reaches SQL but not Redis: what a failed push whose
    // invalidation failed too leaves behind (or another writer's).
    store.cold().append(text(c, &v, 6)).await.unwrap();

    let before = store.stats();
    assert_eq!(seqs(&store.recent(c, 3).await.unwrap()), vec![4, 5, 6]);
    assert_eq!(
        delta(before, store.stats()),
        (0, 1, 0),
        "SQL's last seq is past the window"
    );
    // That miss warmed the window with 4..=6, which joins 1..=5.
    let before = store.stats();
    assert_eq!(
        seqs(&store.recent(c, 6).await.unwrap()),
        (1..=6).collect::<Vec<_>>()
    );
    assert_eq!(delta(before, store.stats()), (1, 0, 0));

    store.cold().append(text(c, &v, 7)).await.unwrap();
    let before = store.stats();
    assert_eq!(
        seqs(&store.after(c, Seq::new(5), 100).await.unwrap()),
        vec![6, 7]
    );
    assert_eq!(
        seqs(&store.range(c, Seq::new(1), Seq::new(6), 100).await.unwrap()),
        (1..=6).collect::<Vec<_>>(),
    );
    assert_eq!(
        seqs(
            &store
                .range(c, Seq::new(5), Seq::new(10), 100)
                .await
                .unwrap()
        ),
        vec![5, 6, 7]
    );
    assert_eq!(
        delta(before, store.stats()),
        (1, 2, 0),
        "a span inside the window needs no SQL; one reaching past it does"
    );

    // The next push finds the gap (the window ends at 6, this is 8) and
    // restarts the window at 8.
    store.append(text(c, &v, 8)).await.unwrap();
    let mut conn = raw_redis(&url).await;
    let held: Vec<f64> = redis::cmd("ZRANGE")
        .arg(window_key(store, c))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async::<Vec<(String, f64)>>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|(_, score)| score)
        .collect();
    assert_eq!(held, vec![8.0]);
    let before = store.stats();
    assert_eq!(seqs(&store.recent(c, 1).await.unwrap()), vec![8]);
    assert_eq!(seqs(&store.recent(c, 3).await.unwrap()), vec![6, 7, 8]);
    assert_eq!(seqs(&store.recent(c, 3).await.unwrap()), vec![6, 7, 8]);
    assert_eq!(delta(before, store.stats()), (2, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_corrupt_window_is_never_served() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else {
        return;
    };
    let scratch = sqlite_behind(&url).await;
    let store = &scratch.store;
    let (c, v) = conversation(store).await;
    for i in 1..=5 {
        store.append(text(c, &v, i)).await.unwrap();
    }
    let key = window_key(store, c);
    let mut conn = raw_redis(&url).await;

    // Deleted behind the store's back (evicted, flushed, expired).
    let () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = store.stats();
    assert_eq!(
        seqs(&store.after(c, Seq::new(2), 10).await.unwrap()),
        vec![3, 4, 5]
    );
    assert_eq!(
        seqs(&store.recent(c, 5).await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        seqs(&store.recent(c, 5).await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(
        delta(before, store.stats()),
        (1, 2, 0),
        "missed twice, then warmed"
    );

    // A member that is not a message: counted, the window dropped, SQL answers.
    let () = redis::cmd("ZADD")
        .arg(&key)
        .arg(3.5)
        .arg("{not a message")
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = store.stats();
    assert_eq!(
        seqs(&store.recent(c, 5).await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(delta(before, store.stats()), (0, 1, 1));
    let held: u64 = redis::cmd("ZCARD")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(held, 5, "dropped, then warmed again from SQL");

    // A message of another conversation under this key: the same.
    let stranger = cs_core::Message::from_new(
        NewMessage::text(ConversationId::new(), Party::Bot, "not yours"),
        Seq::new(6),
    );
    let () = redis::cmd("ZADD")
        .arg(&key)
        .arg(6)
        .arg(serde_json::to_string(&stranger).unwrap())
        .query_async(&mut conn)
        .await
        .unwrap();
    store.cold().append(text(c, &v, 6)).await.unwrap();
    let before = store.stats();
    let got = store.range(c, Seq::new(4), Seq::new(6), 10).await.unwrap();
    assert_eq!(seqs(&got), vec![4, 5, 6]);
    assert_eq!(got[2].body, cs_core::Body::text("m6"));
    assert_eq!(delta(before, store.stats()), (0, 1, 1));

    // Not even a sorted set: reads and pushes fail in Redis, never for the caller.
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("junk")
        .query_async(&mut conn)
        .await
        .unwrap();
    let before = store.stats();
    assert_eq!(seqs(&store.recent(c, 2).await.unwrap()), vec![5, 6]);
    let appended = store.append(text(c, &v, 7)).await.unwrap();
    assert_eq!(appended.message.seq, Seq::new(7));
    let (hits, misses, errors) = delta(before, store.stats());
    assert_eq!((hits, misses), (0, 1));
    assert!(
        errors >= 2,
        "the read, the warm-up and the push failed: {errors}"
    );
    let kind: String = redis::cmd("TYPE")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kind, "none", "the failed push dropped the key");
    assert_eq!(seqs(&store.recent(c, 3).await.unwrap()), vec![5, 6, 7]);
    assert_eq!(seqs(&store.recent(c, 3).await.unwrap()), vec![5, 6, 7]);
    assert!(
        store.stats().hits > before.hits,
        "and the cache works again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_sql_serves_everything_and_appends_succeed() {
    let sql = SqliteStore::in_memory().await.unwrap();
    let store = TieredStore::new(sql, "redis://127.0.0.1:1", config("unused:")).unwrap();
    let (c, v) = conversation(&store).await;
    for i in 1..=10 {
        assert_eq!(
            store.append(text(c, &v, i)).await.unwrap().message.seq,
            Seq::new(i)
        );
    }
    let batch = (11..=20).map(|i| text(c, &v, i)).collect();
    assert_eq!(store.append_all(batch).await.unwrap().len(), 10);
    assert_eq!(seqs(&store.recent(c, 3).await.unwrap()), vec![18, 19, 20]);
    assert_eq!(
        seqs(&store.after(c, Seq::new(17), 10).await.unwrap()),
        vec![18, 19, 20]
    );
    assert_eq!(
        seqs(&store.range(c, Seq::new(1), Seq::new(2), 10).await.unwrap()),
        vec![1, 2]
    );
    let stats = store.stats();
    assert_eq!((stats.hits, stats.misses), (0, 3));
    assert!(stats.redis_errors >= 2, "{stats:?}");
    assert!(stats.bypassed >= 1, "the breaker opened: {stats:?}");

    let err = TieredStore::new(
        SqliteStore::in_memory().await.unwrap(),
        "mysql://x",
        config("x:"),
    )
    .err()
    .unwrap();
    assert!(
        matches!(err, cs_datahub::OpenError::BadUrl { .. }),
        "{err:?}"
    );
}

/// A TCP relay to the real Redis that the test can cut and restore: Redis
/// "dying" mid-run without touching the shared server.
struct Relay {
    port: u16,
    upstream: std::net::SocketAddr,
    tasks: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(port: u16, upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let accepted = Arc::clone(&tasks);
        let acceptor = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                accepted.lock().push(relay);
            }
        });
        tasks.lock().push(acceptor);
        Self {
            port,
            upstream,
            tasks,
        }
    }

    /// Closes the listener and every relayed connection.
    async fn cut(&self) {
        let tasks: Vec<_> = self.tasks.lock().drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restore(&self) -> Self {
        Self::start(self.port, self.upstream).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_mid_run_costs_hits_never_correctness() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else {
        return;
    };
    let info = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_info()
        .clone();
    let redis::ConnectionAddr::Tcp(host, port) = &info.addr else {
        panic!("this test relays TCP; CS_TEST_REDIS_URL is {url}");
    };
    let upstream = tokio::net::lookup_host((host.as_str(), *port))
        .await
        .unwrap()
        .next()
        .unwrap();
    let relay = Relay::start(0, upstream).await;
    let relayed = format!("redis://127.0.0.1:{}/{}", relay.port, info.redis.db);
    let prefix = format!("{}:", scratch_name());
    let sql = SqliteStore::in_memory().await.unwrap();
    let store = TieredStore::new(sql, &relayed, config(&prefix)).unwrap();
    let _cleanup = Scratch::new((), Box::new(redis_cleanup(url.clone(), prefix.clone())));

    let (c, v) = conversation(&store).await;
    for i in 1..=5 {
        store.append(text(c, &v, i)).await.unwrap();
    }
    assert_eq!(
        seqs(&store.recent(c, 5).await.unwrap()),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(store.stats().hits, 1);

    // Redis goes away: appends 6 and 7 reach SQL; their pushes and the
    // invalidations after them fail, leaving the window at 1..=5.
    relay.cut().await;
    for i in 6..=7 {
        assert_eq!(
            store.append(text(c, &v, i)).await.unwrap().message.seq,
            Seq::new(i)
        );
    }
    assert_eq!(seqs(&store.recent(c, 3).await.unwrap()), vec![5, 6, 7]);
    assert_eq!(
        seqs(&store.after(c, Seq::new(4), 10).await.unwrap()),
        vec![5, 6, 7]
    );
    let down = store.stats();
    assert_eq!(down.hits, 1);
    assert!(down.redis_errors >= 2, "{down:?}");

    // Back up, with the stale window 1..=5 still in it.
    let relay = relay.restore().await;
    let mut conn = raw_redis(&url).await;
    let held: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}win:{c}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        held, 5,
        "the stale window survived: this is the case to catch"
    );
    tokio::time::sleep(Duration::from_millis(150)).await; // the breaker's pause
                                                          // Reads until Redis is reachable again: each must be complete, and the
                                                          // stale window must never answer.
    let mut answers = 0;
    while store.stats().hits == down.hits {
        assert_eq!(seqs(&store.recent(c, 3).await.unwrap()), vec![5, 6, 7]);
        assert_eq!(
            seqs(&store.after(c, Seq::new(4), 10).await.unwrap()),
            vec![5, 6, 7]
        );
        answers += 1;
        assert!(
            answers < 100,
            "the cache never came back: {:?}",
            store.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.append(text(c, &v, 8)).await.unwrap();
    assert_eq!(seqs(&store.recent(c, 4).await.unwrap()), vec![5, 6, 7, 8]);
    relay.cut().await;
}
