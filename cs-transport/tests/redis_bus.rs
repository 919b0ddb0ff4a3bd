//! `RedisBus` against a real Redis (CS_TEST_REDIS_URL): two nodes, each a
//! pool and a dispatcher with its own `RedisBus` (as two processes would
//! have), over one shared store. Each test uses a channel of its own.
//!
//! Some tests kill this process's subscriber connections, which would
//! disturb the others running at the same time: every test takes `SERIAL`.
#![cfg(feature = "redis")]

mod support;

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::redis_nodes::*;
use support::*;

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn plain(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Local ports of this process's TCP sockets.
fn own_ports() -> HashSet<u16> {
    own_tcp_sockets()
        .into_iter()
        .map(|socket| socket.local_port)
        .collect()
}

/// `CLIENT KILL TYPE pubsub`, narrowed to this process's connections so
/// that tests of other binaries using the same server are left alone.
/// Returns how many it killed.
async fn kill_own_subscribers(conn: &mut redis::aio::MultiplexedConnection) -> usize {
    let ports = own_ports();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(conn)
        .await
        .unwrap();
    let mut killed = 0;
    for line in list.lines() {
        let Some(addr) = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("addr="))
        else {
            continue;
        };
        let port = addr.rsplit_once(':').and_then(|(_, p)| p.parse().ok());
        if port.is_some_and(|p| ports.contains(&p)) {
            let n: usize = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("TYPE")
                .arg("pubsub")
                .arg("ADDR")
                .arg(addr)
                .query_async(conn)
                .await
                .unwrap();
            killed += n;
        }
    }
    killed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_and_an_agent_on_two_nodes_talk_both_ways_in_order_once() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let d = redis_deployment(&url, &url, &unique_channel("talk")).await;
    let (id, mut ann, mut alice, joined) = ann_and_alice(&d.one, &d.two).await;

    // Both write at once, each on its own node.
    const EACH: usize = 40;
    let nodes = (&d.one, &d.two);
    talk_both_ways(nodes, id, (&mut ann, &mut alice), joined, EACH).await;

    for bus in [&d.bus_one, &d.bus_two] {
        let stats = bus.stats();
        assert!(stats.published >= EACH as u64, "{stats:?}");
        assert_eq!(
            (stats.decode_errors, stats.publish_failed, stats.reconnects),
            (0, 0, 0),
            "{stats:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_channel_is_counted_and_skipped() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let d = redis_deployment(&url, &url, &unique_channel("garbage")).await;
    let (id, _ann, mut alice, joined) = ann_and_alice(&d.one, &d.two).await;

    let mut conn = plain(&url).await;
    for garbage in GARBAGE {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&d.channel)
            .arg(garbage)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    still_delivered(&d.one, id, &mut alice, joined).await;
    wait_until("both nodes counted the garbage", LIMIT, || {
        d.bus_one.stats().decode_errors == 3 && d.bus_two.stats().decode_errors == 3
    })
    .await;
    assert_eq!(d.bus_two.stats().lost_reported, 0, "garbage is not a loss");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_subscriptions_reconnect_report_a_loss_and_miss_nothing() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else {
        return;
    };
    let _serial = SERIAL.lock().await;
    let d = redis_deployment(&url, &url, &unique_channel("kill")).await;
    let (id, mut ann, mut alice, joined) = ann_and_alice(&d.one, &d.two).await;
    let first = hello(&d.one, id, (&mut ann, &mut alice), joined).await;

    // Kill both subscriptions and write at once, so that what is written
    // may well land while they are away.
    let mut conn = plain(&url).await;
    let (killed, written) = tokio::join!(
        kill_own_subscribers(&mut conn),
        both_write_once((&d.one, &d.two), id, (&ann, &alice))
    );
    assert!(
        killed >= 2,
        "both nodes' subscriptions were killed: {killed}"
    );
    for (bus, node) in [(&d.bus_one, &d.one), (&d.bus_two, &d.two)] {
        wait_until("the node resubscribed and reported a loss", LIMIT, || {
            let stats = bus.stats();
            stats.reconnects >= 1
                && stats.lost_reported >= 1
                && node.metrics.snapshot().bus_lost >= 1
        })
        .await;
    }
    nothing_missed(&d.one, id, (&mut ann, &mut alice), first, written).await;
}

/// An ACL user for node two's bus, removed on drop. Taking its channel
/// permissions away cuts its subscription and refuses the next SUBSCRIBE
/// (NOPERM) until they are given back: a node that is away for as long as
/// the test wants, while the other node publishes as usual.
struct AclUser {
    url: String,
    name: String,
}

impl AclUser {
    fn set(&self, rules: &[&str]) {
        let mut conn = redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(&self.name)
            .arg(rules)
            .query(&mut conn)
            .unwrap();
    }
}

impl Drop for AclUser {
    fn drop(&mut self) {
        if let Ok(mut conn) =
            redis::Client::open(self.url.as_str()).and_then(|c| c.get_connection())
        {
            let _: redis::RedisResult<i64> = redis::cmd("ACL")
                .arg("DELUSER")
                .arg(&self.name)
                .query(&mut conn);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_published_while_a_node_cannot_subscribe_is_replayed_from_the_store() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_REDIS_URL") else {
        return;
    };
    let Some(host) = url
        .strip_prefix("redis://")
        .filter(|rest| !rest.contains('@'))
    else {
        eprintln!("skipped: this test adds its own ACL user, so CS_TEST_REDIS_URL must carry no credentials");
        return;
    };
    let _serial = SERIAL.lock().await;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let user = AclUser {
        url: url.clone(),
        name: format!("cs-test-bus-{}-{nanos}", std::process::id()),
    };
    user.set(&["on", "nopass", "~*", "&*", "+@all"]);
    let url_two = format!("redis://{}:unused@{host}", user.name);
    let channel = unique_channel("away");
    let d = redis_deployment(&url, &url_two, &channel).await;
    let (id, _ann, mut alice, joined) = ann_and_alice(&d.one, &d.two).await;
    let mut conn = plain(&url).await;
    let subscribers = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let channel = channel.clone();
        async move {
            let (_, n): (String, i64) = redis::cmd("PUBSUB")
                .arg("NUMSUB")
                .arg(&channel)
                .query_async(&mut conn)
                .await
                .unwrap();
            n
        }
    };
    assert_eq!(subscribers(&mut conn).await, 2);

    // Node two loses its subscription and cannot get it back.
    user.set(&["resetchannels"]);
    let away = tokio::time::timeout(LIMIT, async {
        while subscribers(&mut conn).await != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(away.is_ok(), "node two's subscription was cut");

    let missed = d
        .one
        .host_send(id, agent("alice"), "sent while two is away")
        .await;
    let saw = read_until(&mut alice, missed.seq, LIMIT).await;
    assert_complete(&saw, joined.get() + 1, missed.seq);
    assert_eq!(
        subscribers(&mut conn).await,
        1,
        "still away: it came from the store"
    );
    let metrics = d.two.metrics.snapshot();
    assert!(
        metrics.gap_repairs >= 1,
        "the position check replayed it: {metrics:?}"
    );
    let stats = d.bus_two.stats();
    assert_eq!(stats.reconnects, 0, "{stats:?}");

    // Back: node two resubscribes, says it may have missed something, and
    // live delivery goes on with no duplicate.
    user.set(&["&*"]);
    wait_until("node two resubscribed and reported a loss", LIMIT, || {
        let stats = d.bus_two.stats();
        stats.reconnects >= 1 && stats.lost_reported >= 1
    })
    .await;
    let after = d.one.host_send(id, agent("alice"), "welcome back").await;
    let saw = read_until(&mut alice, after.seq, LIMIT).await;
    assert_complete(&saw, missed.seq.get() + 1, after.seq);
    assert_no_more_messages(&mut alice).await;
}
