//! `NatsBus` against a real NATS server (CS_TEST_NATS_URL): two nodes, each
//! a pool and a dispatcher with its own `NatsBus` (as two processes would
//! have), over one shared store. Each test uses a subject of its own.
//!
//! One test cuts this process's connections to NATS, which would disturb
//! the others running at the same time: every test takes `SERIAL`.
#![cfg(feature = "nats")]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use cs_core::{ConversationId, NewMessage, Seq};
use cs_transport::{Command, NatsBus, NatsBusConfig, Origin};
use support::bus_nodes::*;
use support::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LIMIT: Duration = Duration::from_secs(10);

struct NatsDeployment {
    subject: String,
    bus_one: Arc<NatsBus>,
    bus_two: Arc<NatsBus>,
    one: Node,
    two: Node,
}

/// Nodes "one" and "two" on a subject of their own, with a 100 ms position
/// check, once both have subscribed. Node two's bus takes `config_two`
/// (its subject replaced).
async fn nats_deployment(url: &str, tag: &str, config_two: NatsBusConfig) -> NatsDeployment {
    let subject = unique_channel(tag);
    let config_one = NatsBusConfig {
        subject: subject.clone(),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..NatsBusConfig::default()
    };
    let config_two = NatsBusConfig {
        subject: subject.clone(),
        ..config_two
    };
    let bus_one = NatsBus::connect(url, config_one).await.unwrap();
    let bus_two = NatsBus::connect(url, config_two).await.unwrap();
    let (one, two) = nodes_on(bus_one.clone(), bus_two.clone());
    for bus in [&bus_one, &bus_two] {
        wait_until("both nodes subscribed", LIMIT, || {
            bus.stats().subscriptions >= 1
        })
        .await;
    }
    NatsDeployment {
        subject,
        bus_one,
        bus_two,
        one,
        two,
    }
}

/// Waits until node two has heard all node one published (a fresh
/// conversation's hand-off and assignment), and 50 ms more without news.
/// An agent who connects on node two before the assignment's Follow
/// arrives would start following at once and get the assignment live, then
/// again in the replay she asks for: not what these tests look at.
async fn settle(d: &NatsDeployment) {
    let (mut last, mut quiet_polls) = (None, 0);
    wait_until("node two heard node one", LIMIT, || {
        let now = (d.bus_one.stats().published, d.bus_two.stats().received);
        quiet_polls = if last == Some(now) { quiet_polls + 1 } else { 0 };
        last = Some(now);
        now.0 >= 1 && now.1 >= now.0 && quiet_polls >= 5
    })
    .await;
}

/// A visitor on node one and an agent on node two, both joined to a fresh
/// conversation assigned to the agent.
async fn ann_and_alice(d: &NatsDeployment) -> (ConversationId, Client, Client, Seq) {
    let id = d.one.conversation("shop", "ann", Some("alice")).await.id();
    settle(d).await;
    let mut ann = d.one.connect("shop", visitor("ann"));
    let mut alice = d.two.connect("shop", agent("alice"));
    let joined = d.one.join_from_start(&mut ann, id).await;
    assert_eq!(d.two.join_from_start(&mut alice, id).await, joined);
    (id, ann, alice, joined)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_and_an_agent_on_two_nodes_talk_both_ways_in_order_once() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_NATS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let d = nats_deployment(&url, "talk", NatsBusConfig::default()).await;
    let (id, mut ann, mut alice, joined) = ann_and_alice(&d).await;

    // Both write at once, each on its own node.
    const EACH: usize = 40;
    let ann_writes = async {
        for i in 0..EACH {
            d.one.client_send(&ann, id, &format!("ann {i}")).await;
        }
    };
    let alice_writes = async {
        for i in 0..EACH {
            d.two.client_send(&alice, id, &format!("alice {i}")).await;
        }
    };
    tokio::join!(ann_writes, alice_writes);
    let last = Seq::new(joined.get() + 2 * EACH as u64);

    let ann_saw = read_until(&mut ann, last, LIMIT).await;
    let alice_saw = read_until(&mut alice, last, LIMIT).await;
    assert_complete(&ann_saw, joined.get() + 1, last);
    assert_eq!(ann_saw, alice_saw, "both sides saw the same conversation");
    for who in ["ann", "alice"] {
        let theirs: Vec<&str> = ann_saw
            .iter()
            .map(|(_, text)| text.as_str())
            .filter(|text| text.starts_with(&format!("{who} ")))
            .collect();
        let sent: Vec<String> = (0..EACH).map(|i| format!("{who} {i}")).collect();
        assert_eq!(theirs, sent, "{who}'s messages in the order sent");
    }
    assert_no_more_messages(&mut ann).await;
    assert_no_more_messages(&mut alice).await;

    for bus in [&d.bus_one, &d.bus_two] {
        let stats = bus.stats();
        assert!(stats.published >= EACH as u64, "{stats:?}");
        assert_eq!(
            (
                stats.decode_errors,
                stats.publish_failed,
                stats.reconnects,
                stats.lost_reported
            ),
            (0, 0, 0, 0),
            "{stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_subject_is_counted_and_skipped() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_NATS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let d = nats_deployment(&url, "garbage", NatsBusConfig::default()).await;
    let (id, _ann, mut alice, joined) = ann_and_alice(&d).await;

    let raw = async_nats::connect(url.as_str()).await.unwrap();
    for garbage in [
        &b"not an envelope"[..],
        b"{\"v\":1,\"from\":\"one\"}\n{}",
        b"\xff\xfe\n\x00",
    ] {
        raw.publish(d.subject.clone(), garbage.to_vec().into())
            .await
            .unwrap();
    }
    raw.flush().await.unwrap();
    let after = d.one.host_send(id, agent("alice"), "still here").await;
    let saw = read_until(&mut alice, after.seq, LIMIT).await;
    assert_complete(&saw, joined.get() + 1, after.seq);
    wait_until("both nodes counted the garbage", LIMIT, || {
        d.bus_one.stats().decode_errors == 3 && d.bus_two.stats().decode_errors == 3
    })
    .await;
    assert_eq!(d.bus_two.stats().lost_reported, 0, "garbage is not a loss");
}

/// This process's sockets connected to `port`, by fd: its fds that are
/// sockets, matched by inode with the kernel's socket tables.
fn own_sockets_to(port: u16) -> Vec<i32> {
    let mut by_inode = std::collections::HashMap::new();
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
            by_inode.insert(inode.to_owned(), number);
        }
    }
    let mut fds = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|remote| remote.rsplit_once(':'))
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if fields.len() > 9 && remote_port == Some(port) {
                if let Some(fd) = by_inode.get(fields[9]) {
                    fds.insert(*fd);
                }
            }
        }
    }
    fds.into_iter().collect()
}

/// Shuts down (without closing: the client owns them) this process's TCP
/// connections to `port`, as a server restart or a network cut would end
/// them. Returns how many.
fn cut_own_connections_to(port: u16) -> usize {
    use std::mem::ManuallyDrop;
    use std::os::fd::FromRawFd;
    let fds = own_sockets_to(port);
    for &fd in &fds {
        // SAFETY: `fd` is an open socket of this process (just read from
        // /proc/self/fd); ManuallyDrop keeps the stream from closing it, so
        // its owner still holds a valid fd, which now reports end of file.
        let stream = ManuallyDrop::new(unsafe { std::net::TcpStream::from_raw_fd(fd) });
        let _ = stream.shutdown(std::net::Shutdown::Both);
    }
    fds.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_reconnect_report_a_loss_and_miss_nothing() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_NATS_URL") else {
        return;
    };
    let Some(port) = url
        .trim_end_matches('/')
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
    else {
        eprintln!("skipped: CS_TEST_NATS_URL must name one server with its port, such as nats://127.0.0.1:4222");
        return;
    };
    let _serial = SERIAL.lock().await;
    let config_two = NatsBusConfig {
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..NatsBusConfig::default()
    };
    let d = nats_deployment(&url, "cut", config_two).await;
    let (id, mut ann, mut alice, joined) = ann_and_alice(&d).await;
    let first = d.one.client_send(&ann, id, "hello").await;
    for client in [&mut ann, &mut alice] {
        let saw = read_until(client, first, LIMIT).await;
        assert_complete(&saw, joined.get() + 1, first);
    }

    // Cut both nodes' connections and write at once, so that what is
    // written may well be published while they are away.
    let (cut, (from_ann, from_alice)) =
        tokio::join!(async { cut_own_connections_to(port) }, async {
            let from_ann = d.one.client_send(&ann, id, "are you there?").await;
            let from_alice = d.two.client_send(&alice, id, "yes, one moment").await;
            (from_ann, from_alice)
        });
    assert!(cut >= 2, "both nodes' connections were cut: {cut}");
    for (bus, node) in [(&d.bus_one, &d.one), (&d.bus_two, &d.two)] {
        wait_until("the node reconnected and reported a loss", LIMIT, || {
            let stats = bus.stats();
            stats.reconnects >= 1
                && stats.lost_reported >= 1
                && node.metrics.snapshot().bus_lost >= 1
        })
        .await;
    }
    let last = d.one.client_send(&ann, id, "thanks").await;
    assert!(from_ann < from_alice && from_alice < last);
    let ann_saw = read_until(&mut ann, last, LIMIT).await;
    let alice_saw = read_until(&mut alice, last, LIMIT).await;
    assert_complete(&ann_saw, first.get() + 1, last);
    assert_complete(&alice_saw, first.get() + 1, last);
    assert_no_more_messages(&mut ann).await;
    assert_no_more_messages(&mut alice).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_inbox_is_reported_and_repaired_from_the_store() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_NATS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    // Node two holds one envelope at a time: a burst from node one
    // overflows it, as a lagging node's would.
    let tiny = NatsBusConfig {
        inbox: 1,
        ..NatsBusConfig::default()
    };
    let d = nats_deployment(&url, "overflow", tiny).await;
    let (id, _ann, mut alice, joined) = ann_and_alice(&d).await;

    // Queued without waiting for any: node one's shard stores and
    // publishes them back to back.
    const BURST: u64 = 300;
    for n in 0..BURST {
        let command = Command::Send {
            origin: Origin::Host,
            message: NewMessage::text(id, agent("alice"), format!("offer {n}")),
        };
        d.one.dispatcher.submit(command).await.unwrap();
    }
    let last = Seq::new(joined.get() + BURST);
    let saw = read_until(&mut alice, last, LIMIT).await;
    assert_complete(&saw, joined.get() + 1, last);
    assert_no_more_messages(&mut alice).await;

    let stats = d.bus_two.stats();
    assert!(
        stats.dropped_full_inbox >= 1,
        "the inbox overflowed: {stats:?}"
    );
    assert!(stats.lost_reported >= 1, "and said so: {stats:?}");
    let metrics = d.two.metrics.snapshot();
    assert!(
        metrics.gap_repairs >= 1,
        "the store filled the hole: {metrics:?}"
    );
}
