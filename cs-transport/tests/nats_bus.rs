//! `NatsBus` against a real NATS server (CS_TEST_NATS_URL): two nodes, each
//! a pool and a dispatcher with its own `NatsBus` (as two processes would
//! have), over one shared store. Each test uses a subject of its own.
//!
//! One test cuts this process's connections to NATS, which would disturb
//! the others running at the same time: every test takes `SERIAL`.
#![cfg(feature = "nats")]

mod support;

use std::sync::Arc;
use std::time::Duration;

use cs_core::{NewMessage, Seq};
use cs_transport::{Command, NatsBus, NatsBusConfig, Origin};
use support::bus_nodes::*;
use support::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The server's URL (None, after a notice, where it is not configured)
/// and the turn to use it.
async fn server() -> Option<(String, tokio::sync::MutexGuard<'static, ()>)> {
    let url = cs_core::testing::service_url("CS_TEST_NATS_URL")?;
    Some((url, SERIAL.lock().await))
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_and_an_agent_on_two_nodes_talk_both_ways_in_order_once() {
    let Some((url, _serial)) = server().await else {
        return;
    };
    let d = nats_deployment(&url, "talk", NatsBusConfig::default()).await;
    let (id, mut ann, mut alice, joined) = ann_and_alice(&d.one, &d.two).await;

    const EACH: usize = 40;
    talk_both_ways((&d.one, &d.two), id, (&mut ann, &mut alice), joined, EACH).await;

    // Nothing went wrong, so nothing was reported lost.
    let stats = [d.bus_one.stats(), d.bus_two.stats()];
    assert!(
        stats.iter().all(|s| s.published >= EACH as u64
            && s.lost_reported + s.decode_errors + s.publish_failed + s.reconnects == 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_subject_is_counted_and_skipped() {
    let Some((url, _serial)) = server().await else {
        return;
    };
    let d = nats_deployment(&url, "garbage", NatsBusConfig::default()).await;
    let (id, _ann, mut alice, joined) = ann_and_alice(&d.one, &d.two).await;

    // Another program on the same subject.
    let other = async_nats::connect(url.as_str()).await.unwrap();
    for garbage in GARBAGE {
        let subject = d.subject.clone();
        other
            .publish(subject, garbage.to_vec().into())
            .await
            .unwrap();
    }
    other.flush().await.unwrap();
    still_delivered(&d.one, id, &mut alice, joined).await;
    let counted = || [d.bus_one.stats(), d.bus_two.stats()].map(|s| s.decode_errors);
    wait_until("both nodes counted it", LIMIT, || counted() == [3, 3]).await;
    let stats = d.bus_two.stats();
    assert_eq!(stats.lost_reported, 0, "garbage is not a loss: {stats:?}");
}

/// Shuts down (without closing: the client owns them) this process's TCP
/// connections to `port`, as a server restart or a network cut would end
/// them. Returns how many.
fn cut_own_connections_to(port: u16) -> usize {
    use std::mem::ManuallyDrop;
    use std::os::fd::FromRawFd;
    let fds: Vec<i32> = own_tcp_sockets()
        .into_iter()
        .filter(|socket| socket.remote_port == port)
        .map(|socket| socket.fd)
        .collect();
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
    let Some((url, _serial)) = server().await else {
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
    let config_two = NatsBusConfig {
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..NatsBusConfig::default()
    };
    let d = nats_deployment(&url, "cut", config_two).await;
    let (id, mut ann, mut alice, joined) = ann_and_alice(&d.one, &d.two).await;
    let first = hello(&d.one, id, (&mut ann, &mut alice), joined).await;

    // Cut both nodes' connections and write at once, so that what is
    // written may well be published while they are away.
    let (cut, written) = tokio::join!(
        async { cut_own_connections_to(port) },
        both_write_once((&d.one, &d.two), id, (&ann, &alice))
    );
    assert!(cut >= 2, "both nodes' connections were cut: {cut}");
    let reported = |d: &NatsDeployment| {
        [(&d.bus_one, &d.one), (&d.bus_two, &d.two)]
            .iter()
            .all(|(bus, node)| {
                let stats = bus.stats();
                let told_the_pool = node.metrics.snapshot().bus_lost >= 1;
                stats.reconnects >= 1 && stats.lost_reported >= 1 && told_the_pool
            })
    };
    wait_until("both reconnected and reported a loss", LIMIT, || {
        reported(&d)
    })
    .await;
    nothing_missed(&d.one, id, (&mut ann, &mut alice), first, written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overflowing_inbox_is_reported_and_repaired_from_the_store() {
    let Some((url, _serial)) = server().await else {
        return;
    };
    // Node two holds one envelope at a time: a burst from node one
    // overflows it, as a lagging node's would.
    let tiny = NatsBusConfig {
        inbox: 1,
        ..NatsBusConfig::default()
    };
    let d = nats_deployment(&url, "overflow", tiny).await;
    let (id, _ann, mut alice, joined) = ann_and_alice(&d.one, &d.two).await;

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
