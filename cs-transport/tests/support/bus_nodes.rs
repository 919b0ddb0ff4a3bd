//! Two nodes over a network bus (Redis or NATS), whichever bus carries
//! them: each with its own bus instance (as separate processes would have),
//! one shared `MemoryStore`, and the checks the bus tests make.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cs_core::store::MemoryStore;
use cs_core::{ConversationId, Seq};
use cs_transport::{Bus, DispatcherConfig, ServerFrame};
use tokio::sync::broadcast::error::RecvError;

use super::{agent, visitor, Client, Node};

/// One of this process's TCP sockets.
pub struct OwnSocket {
    pub fd: i32,
    pub local_port: u16,
    pub remote_port: u16,
}

/// This process's TCP sockets: its fds that are sockets, matched by inode
/// with the kernel's socket tables. For tests that cut their own
/// connections and leave other processes' alone.
pub fn own_tcp_sockets() -> Vec<OwnSocket> {
    let mut fd_of_inode = std::collections::HashMap::new();
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'));
        let number = fd.file_name().to_string_lossy().parse::<i32>();
        if let (Some(inode), Ok(number)) = (inode, number) {
            fd_of_inode.insert(inode.to_owned(), number);
        }
    }
    let port = |address: &str| {
        let (_, hex) = address.rsplit_once(':')?;
        u16::from_str_radix(hex, 16).ok()
    };
    let mut sockets = Vec::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(&fd) = fields.get(9).and_then(|inode| fd_of_inode.get(*inode)) else {
                continue;
            };
            if let (Some(local_port), Some(remote_port)) = (port(fields[1]), port(fields[2])) {
                sockets.push(OwnSocket {
                    fd,
                    local_port,
                    remote_port,
                });
            }
        }
    }
    sockets
}

/// How long a connection must stay silent to count as having nothing more.
pub const QUIET: Duration = Duration::from_millis(400);

/// A channel or subject name no other test (or run) uses.
pub fn unique_channel(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cs:test:{tag}:{}:{nanos}", std::process::id())
}

/// Nodes "one" and "two" on their buses, sharing a store, with a 100 ms
/// position check.
pub fn nodes_on(bus_one: Arc<dyn Bus>, bus_two: Arc<dyn Bus>) -> (Node, Node) {
    let config = DispatcherConfig {
        position_check_interval: Some(Duration::from_millis(100)),
        ..DispatcherConfig::default()
    };
    let store = Arc::new(MemoryStore::new());
    let one = Node::on_bus("one", config.clone(), store.clone(), bus_one);
    let two = Node::on_bus("two", config, store, bus_two);
    (one, two)
}

/// Polls `done` every 10 ms; panics naming `what` after `limit`.
pub async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let polled = tokio::time::timeout(limit, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "{what} within {limit:?}");
}

/// Reads frames until the message with seq `last` has arrived (within
/// `limit`), returning every message's (seq, text) in arrival order and
/// skipping acks and replay markers.
pub async fn read_until(client: &mut Client, last: Seq, limit: Duration) -> Vec<(u64, String)> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(limit, async {
        while seen.last().map(|(seq, _)| *seq) != Some(last.get()) {
            if let ServerFrame::Message { message } = client.next().await {
                let text = match &message.body {
                    cs_core::Body::Text { text, .. } => text.clone(),
                    other => format!("{other:?}"),
                };
                seen.push((message.seq.get(), text));
            }
        }
    })
    .await;
    assert!(read.is_ok(), "seq {last} within {limit:?}; got {seen:?}");
    seen
}

/// Fails if a message frame arrives within `QUIET`.
pub async fn assert_no_more_messages(client: &mut Client) {
    while let Some(frame) = client.next_within(QUIET).await {
        assert!(
            !matches!(frame, ServerFrame::Message { .. }),
            "no message after the last one (a duplicate?): {frame:?}"
        );
    }
}

/// The seqs in `seen`, which must be `from..=to` exactly.
pub fn assert_complete(seen: &[(u64, String)], from: u64, to: Seq) {
    let seqs: Vec<u64> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(
        seqs,
        (from..=to.get()).collect::<Vec<_>>(),
        "every seq once, in order"
    );
}

// The scenarios every network bus goes through, each test binary running
// them over its own bus.

/// How long a scenario waits for a message.
pub const LIMIT: Duration = Duration::from_secs(10);

/// What another program might publish on the bus's channel or subject.
pub const GARBAGE: [&[u8]; 3] = [
    b"not an envelope",
    b"{\"v\":1,\"from\":\"one\"}\n{}",
    b"\xff\xfe\n\x00",
];

/// Waits until node two has handled everything node one published before
/// this call: a host message sent now arrives after it (one publisher's
/// envelopes keep their order on either bus). Sent again every 100 ms, as a
/// small inbox may drop it.
pub async fn heard(one: &Node, two: &Node) {
    let mut heard = two.pool.host_messages();
    let marker = bytes::Bytes::from(format!("{:?}", SystemTime::now()));
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            one.pool.publish_host("settled", marker.clone());
            let round = tokio::time::timeout(Duration::from_millis(100), async {
                loop {
                    match heard.recv().await {
                        Ok(message)
                            if &*message.topic == "settled" && message.payload == marker =>
                        {
                            return;
                        }
                        // Other news, or some missed: keep listening.
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => std::future::pending::<()>().await,
                    }
                }
            });
            if round.await.is_ok() {
                return;
            }
        }
    })
    .await;
    assert!(settled.is_ok(), "node two heard node one within 10 s");
}

/// A visitor on node one and an agent on node two, both joined to a fresh
/// conversation assigned to the agent. The agent connects only once node
/// two has heard the assignment: its `Follow` would otherwise join her
/// mid-way through her own join, and she would get the assignment live,
/// then again in the replay (legal, but not what these tests look at).
pub async fn ann_and_alice(one: &Node, two: &Node) -> (ConversationId, Client, Client, Seq) {
    let id = one.conversation("shop", "ann", Some("alice")).await.id();
    heard(one, two).await;
    let mut ann = one.connect("shop", visitor("ann"));
    let mut alice = two.connect("shop", agent("alice"));
    let joined = one.join_from_start(&mut ann, id).await;
    assert_eq!(two.join_from_start(&mut alice, id).await, joined);
    (id, ann, alice, joined)
}

/// Ann (on node one) and alice (on node two) write `each` messages at
/// once; both see every one once, in order, and nothing more.
pub async fn talk_both_ways(
    (one, two): (&Node, &Node),
    id: ConversationId,
    (ann, alice): (&mut Client, &mut Client),
    joined: Seq,
    each: usize,
) {
    let ann_writes = async {
        for i in 0..each {
            one.client_send(ann, id, &format!("ann {i}")).await;
        }
    };
    let alice_writes = async {
        for i in 0..each {
            two.client_send(alice, id, &format!("alice {i}")).await;
        }
    };
    tokio::join!(ann_writes, alice_writes);
    let last = Seq::new(joined.get() + 2 * each as u64);

    let ann_saw = read_until(ann, last, LIMIT).await;
    let alice_saw = read_until(alice, last, LIMIT).await;
    assert_complete(&ann_saw, joined.get() + 1, last);
    assert_eq!(ann_saw, alice_saw, "both sides saw the same conversation");
    for who in ["ann", "alice"] {
        let theirs: Vec<&str> = ann_saw
            .iter()
            .map(|(_, text)| text.as_str())
            .filter(|text| text.starts_with(&format!("{who} ")))
            .collect();
        let sent: Vec<String> = (0..each).map(|i| format!("{who} {i}")).collect();
        assert_eq!(theirs, sent, "{who}'s messages in the order sent");
    }
    assert_no_more_messages(ann).await;
    assert_no_more_messages(alice).await;
}

/// After garbage on the bus, a message from node one still reaches alice,
/// with nothing missing before it.
pub async fn still_delivered(one: &Node, id: ConversationId, alice: &mut Client, joined: Seq) {
    let after = one.host_send(id, agent("alice"), "still here").await;
    let saw = read_until(alice, after.seq, LIMIT).await;
    assert_complete(&saw, joined.get() + 1, after.seq);
}

/// Ann says hello and both see it; returns its seq.
pub async fn hello(
    one: &Node,
    id: ConversationId,
    (ann, alice): (&mut Client, &mut Client),
    joined: Seq,
) -> Seq {
    let first = one.client_send(ann, id, "hello").await;
    for client in [ann, alice] {
        assert_complete(
            &read_until(client, first, LIMIT).await,
            joined.get() + 1,
            first,
        );
    }
    first
}

/// Ann and alice write one message each, on their own nodes; their seqs.
pub async fn both_write_once(
    (one, two): (&Node, &Node),
    id: ConversationId,
    (ann, alice): (&Client, &Client),
) -> (Seq, Seq) {
    let from_ann = one.client_send(ann, id, "are you there?").await;
    let from_alice = two.client_send(alice, id, "yes, one moment").await;
    (from_ann, from_alice)
}

/// Ann thanks alice; both see everything after `first` (the two messages
/// `written` while the bus was disturbed included) once, in order.
pub async fn nothing_missed(
    one: &Node,
    id: ConversationId,
    (ann, alice): (&mut Client, &mut Client),
    first: Seq,
    (from_ann, from_alice): (Seq, Seq),
) {
    let last = one.client_send(ann, id, "thanks").await;
    assert!(from_ann < from_alice && from_alice < last);
    let ann_saw = read_until(ann, last, LIMIT).await;
    let alice_saw = read_until(alice, last, LIMIT).await;
    assert_complete(&ann_saw, first.get() + 1, last);
    assert_complete(&alice_saw, first.get() + 1, last);
    assert_no_more_messages(ann).await;
    assert_no_more_messages(alice).await;
}
