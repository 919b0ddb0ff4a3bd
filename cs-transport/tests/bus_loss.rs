//! Several nodes on one lossy bus: two pools, each with its own dispatcher,
//! over one shared store, connected by an `InProcessBus` that holds a single
//! envelope per node and drops the rest, as pub/sub does for a lagging
//! subscriber. Whatever the bus loses, a connection gets every stored
//! message of its conversation once, in seq order, repaired from the store.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cs_core::store::MemoryStore;
use cs_core::{ConversationId, Seq};
use cs_transport::{Command, DispatcherConfig, InProcessBus, Origin, ServerFrame};
use support::*;

/// How long a connection must stay silent to count as caught up with what
/// reached its node. Only used to decide when to go on, never asserted.
const QUIET: Duration = Duration::from_millis(300);

struct Deployment {
    bus: Arc<InProcessBus>,
    one: Node,
    two: Node,
}

/// Two nodes with `config`, on a bus that holds one envelope per node.
fn two_nodes(config: DispatcherConfig) -> Deployment {
    let bus = Arc::new(InProcessBus::new(1));
    let store = Arc::new(MemoryStore::new());
    Deployment {
        one: Node::on_bus("one", config.clone(), store.clone(), bus.clone()),
        two: Node::on_bus("two", config, store, bus.clone()),
        bus,
    }
}

/// Joins `client` to `id` (assigned to alice, so seqs 1 and 2 are the
/// hand-off and the assignment) from the start, and reads the replay.
async fn join_from_start(node: &Node, client: &mut Client, id: ConversationId) {
    assert_eq!(node.join_from_start(client, id).await, Seq::new(2));
}

/// Queues `count` messages on `node` without waiting for any: its shard
/// then stores and publishes them back to back, faster than the other
/// node's listener takes them off the bus (a single-threaded runtime runs
/// the listener only once the shard yields).
async fn burst(node: &Node, id: ConversationId, count: usize) {
    for n in 0..count {
        let command = Command::Send {
            origin: Origin::Host,
            message: cs_core::NewMessage::text(id, agent("alice"), format!("offer {n}")),
        };
        node.dispatcher.submit(command).await.unwrap();
    }
}

/// Reads message seqs into `seen` until `last` has arrived, failing after
/// 10 s without it.
async fn read_until(client: &mut Client, seen: &mut Vec<u64>, last: Seq) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.last() != Some(&last.get()) {
            seen.push(client.next_message().await.seq.get());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("seq {last} within 10 s; got {seen:?}"));
}

#[tokio::test]
async fn a_burst_on_one_node_reaches_a_connection_on_another_complete_in_order_and_once() {
    let Deployment { bus, one, two } = two_nodes(DispatcherConfig::default());
    let id = one.conversation("shop", "ann", Some("alice")).await.id();
    let mut ann = two.connect("shop", visitor("ann"));
    join_from_start(&two, &mut ann, id).await;

    burst(&one, id, 150).await;
    let end_of_burst = one.host_send(id, agent("alice"), "that's all").await;
    let mut seen = Vec::new();
    while let Some(frame) = ann.next_within(QUIET).await {
        match frame {
            ServerFrame::Message { message } => seen.push(message.seq.get()),
            other => panic!("expected messages only, got {other:?}"),
        }
    }
    assert!(bus.dropped() > 0, "the bus lost part of the burst");

    // Node two's inbox is empty now, so the next message gets through; it
    // reveals whatever is still missing, and the hole is replayed.
    let after = one.host_send(id, agent("alice"), "anything else?").await;
    read_until(&mut ann, &mut seen, after.seq).await;
    assert_eq!(
        seen,
        (3..=after.seq.get()).collect::<Vec<_>>(),
        "every seq once, in order"
    );
    assert!(end_of_burst.seq < after.seq);
    assert!(
        ann.next_within(QUIET).await.is_none(),
        "nothing after the last message: no duplicate"
    );

    let metrics = two.metrics.snapshot();
    assert!(metrics.gaps >= 1, "holes were found: {metrics:?}");
    assert!(metrics.gap_repairs >= 1, "and replayed: {metrics:?}");
    assert!(metrics.bus_lost >= 1, "the bus said so: {metrics:?}");
    let sender = one.metrics.snapshot();
    assert_eq!(
        (sender.gaps, sender.gap_repairs, sender.bus_lost),
        (0, 0, 0),
        "node one had nothing to repair"
    );
}

#[tokio::test]
async fn a_trailing_loss_is_found_by_the_position_check() {
    let config = DispatcherConfig {
        position_check_interval: Some(Duration::from_millis(50)),
        ..DispatcherConfig::default()
    };
    let Deployment { bus, one, two } = two_nodes(config);
    let id = one.conversation("shop", "ann", Some("alice")).await.id();
    let mut ann = two.connect("shop", visitor("ann"));
    join_from_start(&two, &mut ann, id).await;
    // The setup's envelopes (the assignment publishes two back to back) may
    // already have overflowed the one-envelope inbox: one more message
    // reveals any such loss before the count is taken.
    let settled = one.host_send(id, agent("alice"), "settled").await;
    let mut seen = Vec::new();
    read_until(&mut ann, &mut seen, settled.seq).await;
    let lost_before = two.metrics.snapshot().bus_lost;
    let dropped_before = bus.dropped();

    // Node two's inbox takes the first of these; the rest, the last one
    // included, is lost, and nothing comes after it to reveal the loss.
    burst(&one, id, 10).await;
    let last = one.host_send(id, agent("alice"), "last call").await;
    seen.clear();
    read_until(&mut ann, &mut seen, last.seq).await;
    assert_eq!(
        seen,
        (settled.seq.get() + 1..=last.seq.get()).collect::<Vec<_>>()
    );
    assert!(ann.next_within(QUIET).await.is_none(), "no duplicate");

    assert!(
        bus.dropped() > dropped_before,
        "the bus lost the tail of the burst"
    );
    let metrics = two.metrics.snapshot();
    assert_eq!(
        metrics.bus_lost, lost_before,
        "no envelope followed the loss, so the bus told node two nothing"
    );
    assert!(metrics.gaps >= 1, "the check found the hole: {metrics:?}");
    assert!(metrics.gap_repairs >= 1, "and it was replayed: {metrics:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_one_node_while_another_keeps_writing_has_no_gap_and_no_duplicate() {
    const TOTAL: u64 = 400;
    let config = DispatcherConfig {
        position_check_interval: Some(Duration::from_millis(50)),
        ..DispatcherConfig::default()
    };
    let Deployment { one, two, .. } = two_nodes(config);
    let one = Arc::new(one);
    let id = one.conversation("shop", "ann", Some("alice")).await.id();
    let producer = {
        let one = Arc::clone(&one);
        tokio::spawn(async move {
            for n in 0..TOTAL {
                one.host_send(id, agent("alice"), &format!("update {n}"))
                    .await;
                if n % 20 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Reconnect to node two mid-stream, having seen only seq 2.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut ann = two.connect("shop", visitor("ann"));
    two.dispatcher
        .submit(ann.join_command(id, Seq::new(2)))
        .await
        .unwrap();
    let end = 2 + TOTAL;
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while seen.last() != Some(&end) {
            match ann.next().await {
                ServerFrame::Message { message } => seen.push(message.seq.get()),
                ServerFrame::Replayed {
                    complete: false,
                    up_to,
                    ..
                } => {
                    two.dispatcher
                        .submit(ann.join_command(id, up_to))
                        .await
                        .unwrap();
                }
                ServerFrame::Replayed { complete: true, .. } => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("seq {end} within 20 s; got {} messages", seen.len()));
    producer.await.unwrap();
    assert_eq!(
        seen,
        (3..=end).collect::<Vec<_>>(),
        "every seq once, in order"
    );
    while let Some(frame) = ann.next_within(QUIET).await {
        assert!(
            matches!(frame, ServerFrame::Replayed { .. }),
            "nothing after the end but a replay marker, got {frame:?}"
        );
    }
}
