//! The chat_server in cluster mode while Redis restarts: three real
//! `chat_server` nodes share a PostgreSQL store and a Redis bus; a visitor
//! on node 1 and Alice (consoles on nodes 2 and 3) keep writing while the
//! local Redis is shut down and started again. The nodes reconnect and
//! resubscribe (and agree on a router again, though Redis lost every key),
//! every message sent before, during and after the outage arrives, and
//! each client's seqs are contiguous with no duplicates: the nodes'
//! position check replays what pub/sub dropped.
//!
//! It shuts down and starts the shared local Redis, so it lives in a test
//! binary of its own (cargo runs test binaries one at a time), as
//! cs-transport's `redis_restart.rs` does, and skips where `redis-server`
//! is missing or `CS_TEST_REDIS_URL` is not that local server. A guard
//! starts Redis again if the test fails halfway.

#[path = "../cs-transport/tests/support/local_redis.rs"]
mod local_redis;
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use local_redis::{installed, shutdown, start, wait_for, KeepRunning};

use support::{
    cluster_services, contiguous, eventually, is_event, metric, stored, text_of, Client, Cluster,
    Http, WAIT,
};

/// Where the writers are: before the outage, during it, after it.
const BEFORE: u8 = 0;
const DURING: u8 = 1;
const AFTER: u8 = 2;

/// Messages each writer sends while Redis is down, and after it is back.
const SENT_DURING: usize = 3;
const SENT_AFTER: usize = 15;

/// Sends a text every 100 ms (well under the per-connection rate limit)
/// without waiting for acks, until it has sent `SENT_AFTER` after the
/// outage; counts the ones sent during it. Answers the client_msg_ids.
async fn write(
    client: &mut Client,
    conversation: &str,
    who: &str,
    phase: &AtomicU8,
    sent_during: &AtomicUsize,
) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = 0;
    while after < SENT_AFTER {
        let now = phase.load(Ordering::SeqCst);
        let id = client
            .say(conversation, &format!("{who} {} (phase {now})", ids.len()))
            .await;
        ids.push(id);
        match now {
            DURING => {
                sent_during.fetch_add(1, Ordering::SeqCst);
            }
            AFTER => after += 1,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ids
}

/// Waits for an ack of every id in `ids`; answers id → seq. Any error
/// frame (a send refused) fails the test.
async fn acks(client: &mut Client, ids: &[String]) -> BTreeMap<String, u64> {
    let mut acked = BTreeMap::new();
    while acked.len() < ids.len() {
        let frame = client
            .expect(|f| f["type"] == "ack" || f["type"] == "error")
            .await;
        assert_eq!(frame["type"], "ack", "a send was refused: {frame}");
        let id = frame["client_msg_id"].as_str().unwrap().to_owned();
        assert!(ids.contains(&id), "an ack for an unknown send: {frame}");
        let seq = frame["seq"].as_u64().unwrap();
        assert!(acked.insert(id, seq).is_none(), "acked twice: {frame}");
    }
    acked
}

#[tokio::test]
async fn nodes_resubscribe_after_a_redis_restart_and_every_client_sees_every_seq_once() {
    let Some((redis, postgres)) = cluster_services() else {
        return;
    };
    if !installed() {
        eprintln!("skipped: redis-server is not on PATH, so this test cannot restart Redis");
        return;
    }
    if !["127.0.0.1:6379", "localhost:6379"]
        .iter()
        .any(|local| redis.contains(local))
    {
        eprintln!("skipped: CS_TEST_REDIS_URL is not the local Redis on port 6379, which this test restarts");
        return;
    }
    let _guard = KeepRunning;
    let cluster = Cluster::start(&redis, &postgres, 3, &[]).await;
    cluster.router(&[0, 1, 2]).await;
    let (one, two, three) = (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);

    // Alice has consoles on nodes 2 and 3; the visitor on node 1 gets her.
    let alice_token = Http::new(two).agent("alice").await;
    let mut alice = Client::connect(two, "/ws/agent", &alice_token).await;
    let mut alice_tab = Client::connect(three, "/ws/agent", &alice_token).await;
    let http_one = Http::new(one);
    eventually("alice online on node 1", WAIT, async || {
        let desk = http_one.desk(&alice_token).await?;
        match desk["agents"]
            .as_array()
            .and_then(|agents| agents.iter().find(|a| a["id"] == "alice"))
        {
            Some(alice) if alice["presence"] == "online" => Ok(()),
            _ => Err(desk.to_string()),
        }
    })
    .await;
    let (token, _, conversation) = http_one.visitor().await;
    let mut visitor = Client::connect(one, "/ws/visitor", &token).await;
    visitor.resume_and_wait(&conversation, 0).await;
    visitor.say(&conversation, "agent").await;
    let assigned = visitor.expect(|f| is_event(f, "assigned")).await;
    assert_eq!(assigned["message"]["body"]["agent"], "alice");
    for console in [&mut alice, &mut alice_tab] {
        console
            .expect(|f| is_event(f, "assigned") && f["message"]["conversation"] == conversation)
            .await;
    }
    let id = visitor.say(&conversation, "before the outage").await;
    visitor
        .expect(|f| f["type"] == "ack" && f["client_msg_id"] == id)
        .await;
    for console in [&mut alice, &mut alice_tab] {
        console.expect(|f| text_of(f) == "before the outage").await;
    }

    // Both write without waiting while Redis goes down, stays down until
    // each has sent a few messages, and comes back.
    let phase = AtomicU8::new(BEFORE);
    let (visitor_during, alice_during) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let restart = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let down =
            tokio::task::spawn_blocking(|| shutdown() && wait_for(false, Duration::from_secs(10)))
                .await
                .unwrap();
        assert!(down, "Redis was shut down");
        phase.store(DURING, Ordering::SeqCst);
        eventually("both wrote while Redis was down", WAIT, async || {
            let sent = (
                visitor_during.load(Ordering::SeqCst),
                alice_during.load(Ordering::SeqCst),
            );
            if sent.0 >= SENT_DURING && sent.1 >= SENT_DURING {
                Ok(())
            } else {
                Err(format!("{sent:?}"))
            }
        })
        .await;
        let up = tokio::task::spawn_blocking(|| start() && wait_for(true, Duration::from_secs(10)))
            .await
            .unwrap();
        assert!(up, "Redis was started again");
        phase.store(AFTER, Ordering::SeqCst);
    };
    let (visitor_ids, alice_ids, ()) = tokio::join!(
        write(
            &mut visitor,
            &conversation,
            "visitor",
            &phase,
            &visitor_during
        ),
        write(&mut alice, &conversation, "alice", &phase, &alice_during),
        restart
    );

    // Every node noticed the restart and subscribed again.
    for node in &cluster.nodes {
        eventually("the node reconnected to Redis", WAIT, async || {
            let metrics = node.metrics().await;
            match metric(&metrics, "cs_redis_bus_reconnects_total") {
                Some(n) if n >= 1 => Ok(()),
                seen => Err(format!("cs_redis_bus_reconnects_total {seen:?}")),
            }
        })
        .await;
    }

    // Every send was stored once.
    let visitor_acks = acks(&mut visitor, &visitor_ids).await;
    let alice_acks = acks(&mut alice, &alice_ids).await;
    let last = visitor_acks
        .values()
        .chain(alice_acks.values())
        .copied()
        .max()
        .unwrap();

    // Every client reads every seq up to the last, once, in order.
    for (who, client) in [
        ("the visitor on node 1", &mut visitor),
        ("alice on node 2", &mut alice),
        ("alice's tab on node 3", &mut alice_tab),
    ] {
        client.read_through(&conversation, last).await;
        client.drain(Duration::from_secs(1)).await;
        let seqs = client.seqs(&conversation);
        let first = seqs.first().copied().unwrap_or_default();
        assert!(
            contiguous(&seqs, first, last),
            "{who} read seqs {seqs:?}, not {first}..={last} each once"
        );
    }
    assert_eq!(visitor.seqs(&conversation)[0], 1);
    let history = stored(one, &token, &conversation).await;
    let stored_seqs: Vec<u64> = history
        .iter()
        .map(|f| f["message"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(visitor.seqs(&conversation), stored_seqs);
    let texts = |client: &Client| -> Vec<Value> {
        client
            .messages
            .iter()
            .map(|f| f["message"]["body"].clone())
            .collect()
    };
    assert_eq!(
        texts(&alice)[..],
        texts(&visitor)[texts(&visitor).len() - texts(&alice).len()..],
        "alice read what the visitor read, from her assignment on"
    );
    assert_eq!(texts(&alice), texts(&alice_tab));

    // The nodes are back in one cluster: one router all agree on.
    cluster.router(&[0, 1, 2]).await;
}
