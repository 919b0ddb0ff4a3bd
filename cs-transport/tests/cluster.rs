//! Cluster state in Redis: leases and cross-node presence, against the real
//! server at CS_TEST_REDIS_URL, each test under a key prefix of its own that
//! is deleted afterwards. Ttls are short (a few hundred ms); waits are
//! bounded, and no assertion depends on exact timing.
#![cfg(feature = "redis")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cs_core::{AgentId, Party, TenantId, VisitorId};
use cs_transport::cluster::{ClusterError, ClusterPresence, Lease};
use cs_transport::NodeId;
use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

const TTL: Duration = Duration::from_millis(400);

fn redis_url() -> Option<String> {
    cs_core::testing::service_url("CS_TEST_REDIS_URL")
}

/// A key prefix no other test (or earlier run) uses.
fn scratch(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("cs-test:cluster:{name}:{nanos}:")
}

/// Deletes every key under `prefix`.
async fn cleanup(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        redis::cmd("DEL")
            .arg(keys)
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }
}

async fn lease(url: &str, key: &str, node: &str) -> Arc<Lease> {
    Lease::connect(url, key, NodeId::new(node), TTL)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (bounded) until the watch says `want`; returns when it did.
async fn wait_for(rx: &mut watch::Receiver<bool>, want: bool) -> Instant {
    timeout(Duration::from_secs(5), rx.wait_for(|held| *held == want))
        .await
        .unwrap_or_else(|_| panic!("the keeper's watch did not turn {want} within 5 s"))
        .expect("the keeper's watch is open");
    Instant::now()
}

/// Records the instant a watch first turns `want`, from its own task so it
/// does not depend on when the test looks.
fn record_turn(mut rx: watch::Receiver<bool>, want: bool) -> tokio::task::JoinHandle<Instant> {
    tokio::spawn(async move { wait_for(&mut rx, want).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_leases_holds_and_release_hands_it_over() {
    let Some(url) = redis_url() else { return };
    let prefix = scratch("handover");
    let key = format!("{prefix}router");
    let a = lease(&url, &key, "a").await;
    let b = lease(&url, &key, "b").await;

    assert!(a.try_acquire().await.unwrap());
    assert!(!b.try_acquire().await.unwrap(), "only one holder at a time");
    assert!(
        a.try_acquire().await.unwrap(),
        "the holder extends its lease"
    );
    assert_eq!(a.holder().await.unwrap(), Some(NodeId::new("a")));
    let first = a.epoch().unwrap();
    assert_eq!(b.epoch(), None);

    assert!(a.release().await.unwrap());
    assert_eq!(a.holder().await.unwrap(), None);
    assert!(b.try_acquire().await.unwrap(), "released, so b takes it");
    assert!(!a.try_acquire().await.unwrap());
    assert_eq!(b.holder().await.unwrap(), Some(NodeId::new("b")));
    assert!(
        b.epoch().unwrap() > first,
        "a fresh acquisition has a newer fencing epoch"
    );
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_never_deletes_another_holders_lease() {
    let Some(url) = redis_url() else { return };
    let prefix = scratch("release");
    let key = format!("{prefix}router");
    let a = lease(&url, &key, "a").await;
    let b = lease(&url, &key, "b").await;
    // Two processes that were both left with the default node name.
    let also_a = lease(&url, &key, "a").await;

    assert!(a.try_acquire().await.unwrap());
    assert!(!b.release().await.unwrap());
    assert!(!also_a.release().await.unwrap());
    assert!(
        !also_a.try_acquire().await.unwrap(),
        "the same node name is not the same holder"
    );
    assert_eq!(b.holder().await.unwrap(), Some(NodeId::new("a")));
    assert!(a.try_acquire().await.unwrap(), "a still holds it");
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_stops_believing_before_the_other_takes_over() {
    let Some(url) = redis_url() else { return };
    let prefix = scratch("crash");
    let key = format!("{prefix}router");
    let a = lease(&url, &key, "a").await;
    let b = lease(&url, &key, "b").await;
    let shutdown = CancellationToken::new();

    let (mut a_held, a_keeper) = a.spawn_keeper(shutdown.clone());
    wait_for(&mut a_held, true).await;
    let (mut b_held, b_keeper) = b.spawn_keeper(shutdown.clone());
    // b's keeper tries a few times and fails: a renews.
    tokio::time::sleep(TTL).await;
    assert!(!*b_held.borrow());
    assert!(*a_held.borrow());

    let a_false = record_turn(a_held.clone(), false);
    let b_true = record_turn(b_held.clone(), true);
    a_keeper.abort(); // a crash: no release
    assert_eq!(
        b.holder().await.unwrap(),
        Some(NodeId::new("a")),
        "a crashed holder's lease stays until its ttl runs out"
    );
    let a_false = a_false.await.unwrap();
    let b_true = b_true.await.unwrap();
    assert!(
        a_false < b_true,
        "a stopped believing ({a_false:?}) before b started ({b_true:?})"
    );
    assert_eq!(b.holder().await.unwrap(), Some(NodeId::new("b")));

    shutdown.cancel();
    b_keeper.await.unwrap();
    assert!(!*b_held.borrow_and_update());
    assert_eq!(b.holder().await.unwrap(), None, "shutdown releases");
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_cut_off_from_redis_stops_believing_before_its_lease_expires() {
    let Some(url) = redis_url() else { return };
    let prefix = scratch("frozen");
    let key = format!("{prefix}router");
    let relay = Relay::start(&url).await;
    // a reaches Redis through a relay that the test freezes: its renewals
    // hang instead of failing, so only the ttl/2 rule can save it.
    let a = lease(&relay.url, &key, "a").await;
    let b = lease(&url, &key, "b").await;
    let shutdown = CancellationToken::new();

    let (mut a_held, a_keeper) = a.spawn_keeper(shutdown.clone());
    wait_for(&mut a_held, true).await;
    let (b_held, b_keeper) = b.spawn_keeper(shutdown.clone());

    let a_false = record_turn(a_held.clone(), false);
    let b_true = record_turn(b_held.clone(), true);
    relay.freeze(true);
    let a_false = a_false.await.unwrap();
    let b_true = b_true.await.unwrap();
    assert!(
        a_false < b_true,
        "a stopped believing ({a_false:?}) before b started ({b_true:?})"
    );

    // Back online, a finds b holding it and stays out.
    relay.freeze(false);
    tokio::time::sleep(TTL).await;
    assert!(!*a_held.borrow());
    assert!(*b_held.borrow());
    assert_eq!(a.holder().await.unwrap(), Some(NodeId::new("b")));

    shutdown.cancel();
    a_keeper.await.unwrap();
    b_keeper.await.unwrap();
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_racing_keepers_never_both_hold() {
    let Some(url) = redis_url() else { return };
    let prefix = scratch("race");
    let key = format!("{prefix}router");
    let leases = [lease(&url, &key, "a").await, lease(&url, &key, "b").await];
    let start_keeper = |i: usize| {
        let token = CancellationToken::new();
        let (rx, task) = leases[i].spawn_keeper(token.clone());
        Some((rx, task, token))
    };
    let mut keepers = [start_keeper(0), start_keeper(1)];
    let mut restart_at: [Option<Instant>; 2] = [None, None];

    let start = Instant::now();
    let (mut samples, mut both, mut handovers, mut stops) = (0u64, 0u64, 0u32, 0u32);
    let mut last_holder = None;
    let mut next_stop = start + TTL / 2;
    while start.elapsed() < Duration::from_secs(2) {
        let held = |k: &Option<(watch::Receiver<bool>, _, _)>| {
            k.as_ref().is_some_and(|(rx, _, _)| *rx.borrow())
        };
        let (a, b) = (held(&keepers[0]), held(&keepers[1]));
        samples += 1;
        if a && b {
            both += 1;
        }
        let holder = match (a, b) {
            (true, _) => Some(0),
            (_, true) => Some(1),
            _ => None,
        };
        if holder.is_some() && holder != last_holder {
            handovers += 1;
            last_holder = holder;
        }
        let now = Instant::now();
        // Every so often stop the holder, cleanly or by a crash, and start
        // it again a varying while later (0 to 180 ms, around the other's
        // ttl/3 retry period), so sometimes it wins the key back and
        // sometimes the other takes it.
        if let (Some(i), true) = (holder, now >= next_stop) {
            if let Some((_, task, token)) = keepers[i].take() {
                stops += 1;
                if stops % 3 == 0 {
                    task.abort();
                } else {
                    token.cancel();
                }
                let _ = task.await;
            }
            restart_at[i] = Some(now + Duration::from_millis(u64::from(stops % 10) * 20));
            next_stop = now + TTL / 2;
        }
        for i in 0..2 {
            if restart_at[i].is_some_and(|at| now >= at) {
                restart_at[i] = None;
                keepers[i] = start_keeper(i);
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(
        both, 0,
        "both held the lease in {both} of {samples} samples"
    );
    assert!(
        handovers >= 3,
        "the test should hand the lease over a few times, saw {handovers}"
    );
    eprintln!("{samples} samples, {handovers} handovers, {stops} stops");
    for (_, task, token) in keepers.into_iter().flatten() {
        token.cancel();
        let _ = task.await;
    }
    cleanup(&url, &prefix).await;
}

#[tokio::test]
async fn an_unreachable_redis_is_named_without_its_password() {
    let err = Lease::connect("redis://:hunter2@127.0.0.1:1", "k", NodeId::new("a"), TTL)
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Unreachable { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(shown.contains("127.0.0.1:1"), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

// ---- presence ----

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

fn visitor(name: &str) -> Party {
    Party::Visitor(VisitorId::new(name).unwrap())
}

fn agent(name: &str) -> Party {
    Party::Agent(AgentId::new(name).unwrap())
}

fn nodes(names: &[&str]) -> Vec<NodeId> {
    names.iter().map(NodeId::new).collect()
}

async fn presence(url: &str, prefix: &str, node: &str) -> Arc<ClusterPresence> {
    ClusterPresence::connect(url, prefix, NodeId::new(node), Duration::from_millis(600))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_unions_the_nodes_and_keeps_to_the_tenant() {
    let Some(url) = redis_url() else { return };
    let prefix = scratch("online");
    let one = presence(&url, &prefix, "one").await;
    let two = presence(&url, &prefix, "two").await;
    let shutdown = CancellationToken::new();
    let beats = [
        one.spawn_heartbeat(shutdown.clone()),
        two.spawn_heartbeat(shutdown.clone()),
    ];
    let (shop, other) = (tenant("shop"), tenant("other"));

    one.set_online(&shop, &visitor("ann"), true).await.unwrap();
    one.set_online(&shop, &agent("bob"), true).await.unwrap();
    one.set_online(&other, &visitor("carl"), true)
        .await
        .unwrap();
    two.set_online(&shop, &visitor("ann"), true).await.unwrap();
    two.set_online(&shop, &visitor("dan"), true).await.unwrap();

    assert_eq!(
        two.online(&shop).await.unwrap(),
        vec![
            (agent("bob"), nodes(&["one"])),
            (visitor("ann"), nodes(&["one", "two"])),
            (visitor("dan"), nodes(&["two"])),
        ]
    );
    assert_eq!(
        two.online(&other).await.unwrap(),
        vec![(visitor("carl"), nodes(&["one"]))]
    );
    assert_eq!(one.nodes().await.unwrap(), nodes(&["one", "two"]));

    one.set_online(&shop, &visitor("ann"), false).await.unwrap();
    one.set_online(&other, &visitor("carl"), false)
        .await
        .unwrap();
    assert_eq!(
        one.online(&shop).await.unwrap(),
        vec![
            (agent("bob"), nodes(&["one"])),
            (visitor("ann"), nodes(&["two"])),
            (visitor("dan"), nodes(&["two"])),
        ]
    );
    assert_eq!(one.online(&other).await.unwrap(), vec![]);

    shutdown.cancel();
    for beat in beats {
        beat.await.unwrap();
    }
    cleanup(&url, &prefix).await;
}

/// Polls `check` until it holds, for at most 5 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let done = timeout(Duration::from_secs(5), async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(done.is_ok(), "{what} within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_goes_offline_after_the_ttl_and_a_stopped_one_at_once() {
    let Some(url) = redis_url() else { return };
    let prefix = scratch("dead");
    let one = presence(&url, &prefix, "one").await;
    let two = presence(&url, &prefix, "two").await;
    let (stop_one, stop_two) = (CancellationToken::new(), CancellationToken::new());
    let beat_one = one.spawn_heartbeat(stop_one.clone());
    let beat_two = two.spawn_heartbeat(stop_two.clone());
    let shop = tenant("shop");
    one.set_online(&shop, &visitor("ann"), true).await.unwrap();
    two.set_online(&shop, &visitor("dan"), true).await.unwrap();

    beat_one.abort(); // node one dies: no more heartbeats, no goodbye
    assert_eq!(
        two.nodes().await.unwrap(),
        nodes(&["one", "two"]),
        "a node is live until its last heartbeat is a ttl old"
    );
    eventually("node one drops out of nodes()", || async {
        two.nodes().await.unwrap() == nodes(&["two"])
    })
    .await;
    assert_eq!(
        two.online(&shop).await.unwrap(),
        vec![(visitor("dan"), nodes(&["two"]))]
    );
    // Its keys are gone too, not just filtered out.
    let mut raw = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*one*"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(left, Vec::<String>::new());

    stop_two.cancel();
    beat_two.await.unwrap();
    assert_eq!(
        one.nodes().await.unwrap(),
        vec![],
        "a clean shutdown leaves at once"
    );
    assert_eq!(one.online(&shop).await.unwrap(), vec![]);
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_all_replaces_the_nodes_entries() {
    let Some(url) = redis_url() else { return };
    let prefix = scratch("replace");
    let one = presence(&url, &prefix, "one").await;
    let two = presence(&url, &prefix, "two").await;
    let (shop, other) = (tenant("shop"), tenant("other"));
    one.set_online(&shop, &visitor("ann"), true).await.unwrap();
    one.set_online(&shop, &visitor("bea"), true).await.unwrap();
    two.set_online(&shop, &visitor("ann"), true).await.unwrap();

    one.replace_all(&[
        (shop.clone(), agent("bob")),
        (other.clone(), visitor("carl")),
    ])
    .await
    .unwrap();
    assert_eq!(
        two.online(&shop).await.unwrap(),
        vec![
            (agent("bob"), nodes(&["one"])),
            (visitor("ann"), nodes(&["two"])),
        ]
    );
    assert_eq!(
        two.online(&other).await.unwrap(),
        vec![(visitor("carl"), nodes(&["one"]))]
    );

    one.replace_all(&[]).await.unwrap();
    assert_eq!(
        two.online(&shop).await.unwrap(),
        vec![(visitor("ann"), nodes(&["two"]))]
    );
    assert_eq!(two.online(&other).await.unwrap(), vec![]);
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_entries_expired_is_asked_to_resync() {
    let Some(url) = redis_url() else { return };
    let prefix = scratch("expired");
    let one = presence(&url, &prefix, "one").await;
    let mut resyncs = one.resyncs();
    let shop = tenant("shop");
    one.set_online(&shop, &visitor("ann"), true).await.unwrap();
    assert!(!resyncs.has_changed().unwrap(), "a first write is no loss");

    // No heartbeat task: after the ttl, node one is dead to the others.
    eventually("node one expires", || async {
        one.online(&shop).await.unwrap().is_empty()
    })
    .await;
    one.set_online(&shop, &visitor("bea"), true).await.unwrap();
    assert!(
        resyncs.has_changed().unwrap(),
        "ann's entry was lost, so the node is told to re-send"
    );
    resyncs.mark_unchanged();
    one.replace_all(&[
        (shop.clone(), visitor("ann")),
        (shop.clone(), visitor("bea")),
    ])
    .await
    .unwrap();
    assert_eq!(
        one.online(&shop).await.unwrap(),
        vec![
            (visitor("ann"), nodes(&["one"])),
            (visitor("bea"), nodes(&["one"])),
        ]
    );
    assert!(!resyncs.has_changed().unwrap());
    cleanup(&url, &prefix).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_during_an_outage_are_unavailable_and_ask_for_a_resync() {
    let Some(url) = redis_url() else { return };
    let prefix = scratch("outage");
    let relay = Relay::start(&url).await;
    let one = presence(&relay.url, &prefix, "one").await;
    let mut resyncs = one.resyncs();
    let shop = tenant("shop");
    one.set_online(&shop, &visitor("ann"), true).await.unwrap();

    relay.freeze(true);
    let err = one
        .set_online(&shop, &visitor("bea"), true)
        .await
        .unwrap_err();
    assert!(matches!(err, ClusterError::Unavailable { .. }), "{err:?}");
    assert!(!resyncs.has_changed().unwrap(), "nothing to re-send yet");

    relay.freeze(false);
    let shutdown = CancellationToken::new();
    let beat = one.spawn_heartbeat(shutdown.clone());
    timeout(Duration::from_secs(5), resyncs.changed())
        .await
        .expect("the first heartbeat after the outage asks for a resync")
        .unwrap();
    shutdown.cancel();
    beat.await.unwrap();
    cleanup(&url, &prefix).await;
}

/// A TCP relay to the real Redis that the test can freeze: while frozen it
/// forwards nothing either way, so calls hang the way they do when a
/// network partition swallows packets.
struct Relay {
    url: String,
    frozen: Arc<AtomicBool>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(url: &str) -> Self {
        let rest = url.strip_prefix("redis://").expect("a redis:// URL");
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((user, host)) => (format!("{user}@"), host),
            None => (String::new(), authority),
        };
        let upstream = tokio::net::lookup_host(hostport)
            .await
            .unwrap()
            .next()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(AtomicBool::new(false));
        let gate = Arc::clone(&frozen);
        let acceptor = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pump(in_read, out_write, Arc::clone(&gate)));
                tokio::spawn(pump(out_read, in_write, Arc::clone(&gate)));
            }
        });
        Self {
            url: format!("redis://{userinfo}127.0.0.1:{port}/{path}"),
            frozen,
            acceptor,
        }
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
