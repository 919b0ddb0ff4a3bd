//! Redis restarted while two nodes exchange messages over `RedisBus`: both
//! resubscribe, and every message stored (the store is a `MemoryStore`,
//! which the restart does not touch) reaches the other node's connection
//! complete, in order, once.
//!
//! It shuts down and starts the local server, so it lives in a test binary
//! of its own (cargo runs test binaries one at a time) and skips where
//! `redis-server` is missing. A guard starts the server again if the test
//! fails halfway, so Redis is left running whatever happens.
#![cfg(feature = "redis")]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cs_core::Seq;
use cs_transport::ServerFrame;
use support::local_redis::*;
use support::redis_nodes::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_nodes_resubscribe_after_a_redis_restart_and_miss_nothing() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else {
        return;
    };
    if !installed() {
        eprintln!("skipped: redis-server is not on PATH, so this test cannot restart Redis");
        return;
    }
    let _guard = KeepRunning;
    let d = redis_deployment(&url, &url, &unique_channel("restart")).await;
    let id = d.one.conversation("shop", "ann", Some("alice")).await.id();
    heard(&d.one, &d.two).await;
    let mut ann = d.one.connect("shop", visitor("ann"));
    let mut alice = d.two.connect("shop", agent("alice"));
    let joined = d.one.join_from_start(&mut ann, id).await;
    d.two.join_from_start(&mut alice, id).await;

    // Both write without pause (a few ms apart) until each has sent 30
    // messages after Redis is back.
    let restarted = AtomicBool::new(false);
    let writer = |node: &'static str| {
        let (node, client) = match node {
            "one" => (&d.one, &ann),
            _ => (&d.two, &alice),
        };
        let restarted = &restarted;
        async move {
            let (mut sent, mut after) = (0u64, 0);
            while after < 30 && sent < 5_000 {
                node.client_send(client, id, &format!("{} {sent}", client.conn))
                    .await;
                sent += 1;
                after += usize::from(restarted.load(Ordering::SeqCst));
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            sent
        }
    };
    let restart = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let done = tokio::task::spawn_blocking(|| {
            shutdown()
                && wait_for(false, Duration::from_secs(10))
                && start()
                && wait_for(true, Duration::from_secs(10))
        })
        .await
        .unwrap();
        assert!(done, "Redis was shut down and started again");
        restarted.store(true, Ordering::SeqCst);
    };
    let (sent_one, sent_two, ()) = tokio::join!(writer("one"), writer("two"), restart);

    for bus in [&d.bus_one, &d.bus_two] {
        wait_until("both nodes resubscribed", Duration::from_secs(20), || {
            let stats = bus.stats();
            stats.reconnects >= 1 && stats.lost_reported >= 1
        })
        .await;
    }
    let last = Seq::new(joined.get() + sent_one + sent_two);
    let ann_saw = read_until(&mut ann, last, Duration::from_secs(20)).await;
    let alice_saw = read_until(&mut alice, last, Duration::from_secs(20)).await;
    let expected: Vec<u64> = (joined.get() + 1..=last.get()).collect();
    for saw in [&ann_saw, &alice_saw] {
        let seqs: Vec<u64> = saw.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, expected, "every seq once, in order");
    }
    assert_eq!(ann_saw, alice_saw);
    for client in [&mut ann, &mut alice] {
        while let Some(frame) = client.next_within(Duration::from_millis(400)).await {
            assert!(
                !matches!(frame, ServerFrame::Message { .. }),
                "no message after the last one: {frame:?}"
            );
        }
    }
    let (one, two) = (d.bus_one.stats(), d.bus_two.stats());
    eprintln!(
        "sent {sent_one} + {sent_two}; node one {one:?}, repairs {}; node two {two:?}, repairs {}",
        d.one.metrics.snapshot().gap_repairs,
        d.two.metrics.snapshot().gap_repairs
    );
}
