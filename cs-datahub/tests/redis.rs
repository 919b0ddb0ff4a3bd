//! Redis: cs-core's store contract and the cs-datahub extras against the
//! real server at CS_TEST_REDIS_URL, each case under a key prefix of its own
//! that is deleted afterwards; and what the window means for old reads.
#![cfg(feature = "redis")]

mod common;

use common::{delete_redis_keys, scratch_name, sweep_stale_redis_keys, Scratch};
use cs_core::store::{MessageStore, StoreError};
use cs_core::{ClientMsgId, Conversation, NewMessage, Party, Seq, TenantId, Timestamp, VisitorId};
use cs_datahub::store::{BeyondWindow, RedisStore};
use cs_datahub::OpenError;

async fn connect(url: &str, window: usize) -> Scratch<RedisStore> {
    sweep_stale_redis_keys(url).await;
    let prefix = format!("{}:", scratch_name());
    let store = RedisStore::connect(url, &prefix, window)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let url = url.to_owned();
    let cleanup = Box::new(move || -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async move { delete_redis_keys(&url, &format!("{prefix}*")).await })
    });
    Scratch::new(store, cleanup)
}

async fn make_store() -> Option<Scratch<RedisStore>> {
    let url = cs_core::testing::service_url("CS_TEST_REDIS_URL")?;
    Some(connect(&url, 1_000).await)
}

cs_core::message_store_contract!(make_store);
ext_contract!(make_store);
visitor_contract!(make_store);

fn beyond(result: Result<Vec<cs_core::Message>, StoreError>) -> Option<u64> {
    match result {
        Err(StoreError::Backend { source, .. }) => source
            .downcast_ref::<BeyondWindow>()
            .map(|b| b.oldest_kept.get()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_past_the_window_say_so_instead_of_leaving_a_hole() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else {
        return;
    };
    let scratch = connect(&url, 5).await;
    let store = &scratch.store;
    let visitor = VisitorId::new("v").unwrap();
    let c = Conversation::open(
        TenantId::new("t").unwrap(),
        visitor.clone(),
        Timestamp::now(),
    );
    store.create_conversation(&c).await.unwrap();
    for i in 1..=8 {
        let m = NewMessage::text(c.id(), Party::Visitor(visitor.clone()), format!("m{i}"))
            .with_client_msg_id(ClientMsgId::new(format!("c{i}")).unwrap());
        store.append(m).await.unwrap();
    }
    assert_eq!(
        store.last_seq(c.id()).await.unwrap(),
        Seq::new(8),
        "seqs outlive the window"
    );
    let seqs = |v: Vec<cs_core::Message>| v.iter().map(|m| m.seq.get()).collect::<Vec<_>>();
    assert_eq!(
        seqs(store.recent(c.id(), 5).await.unwrap()),
        vec![4, 5, 6, 7, 8]
    );
    assert_eq!(beyond(store.recent(c.id(), 6).await), Some(4));
    assert_eq!(beyond(store.after(c.id(), Seq::ZERO, 100).await), Some(4));
    assert_eq!(
        seqs(store.after(c.id(), Seq::new(3), 100).await.unwrap()),
        vec![4, 5, 6, 7, 8]
    );
    assert_eq!(
        beyond(store.range(c.id(), Seq::new(2), Seq::new(6), 100).await),
        Some(4)
    );
    assert!(store
        .range(c.id(), Seq::new(9), Seq::new(20), 10)
        .await
        .unwrap()
        .is_empty());

    // A retry inside the window is deduplicated; one of an evicted message is
    // a new message (the documented limit of the window).
    let retry = NewMessage::text(c.id(), Party::Visitor(visitor.clone()), "m8 again")
        .with_client_msg_id(ClientMsgId::new("c8").unwrap());
    let again = store.append(retry).await.unwrap();
    assert!(again.duplicate && again.message.seq == Seq::new(8));
    let old = NewMessage::text(c.id(), Party::Visitor(visitor), "m1 again")
        .with_client_msg_id(ClientMsgId::new("c1").unwrap());
    assert_eq!(store.append(old).await.unwrap().message.seq, Seq::new(9));
}

#[tokio::test]
async fn an_unreachable_server_is_named_without_its_password() {
    let err = RedisStore::connect("redis://:hunter2@127.0.0.1:1/0", "x:", 10)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("redis://:***@127.0.0.1:1/0") && !text.contains("hunter2"),
        "{text}"
    );
    let err = RedisStore::connect("notredis://x", "x:", 10)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, OpenError::BadUrl { .. }), "{err:?}");
}
