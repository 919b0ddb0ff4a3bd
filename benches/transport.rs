//! cs-transport's hot paths, each beside a baseline measured in the same run:
//!
//! - `pool_send`: one frame to one connection among 10,000 (lookup + queue),
//!   against a `DashMap` of plain unbounded channels.
//! - `dispatch`: messages through the whole path (authorize, validate,
//!   persist in `MemoryStore`, route to a joined connection), in batches of
//!   20,000 over 200 conversations, against pushing the same messages straight
//!   into `MemoryStore` with no dispatcher.
//! - `dispatch/degraded_spill_path`: the same through one saturated shard
//!   (one slot, no wait), so most messages take the spill path; the share
//!   that did is printed.
//! - `resume`: a join with a 100-message gap, replayed and live (p99 printed).
//!
//! Run with `cargo bench --bench transport`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dashmap::DashMap;
use hdrhistogram::Histogram;
use tokio::sync::mpsc;

use cs::core::store::{MemoryStore, MessageStore};
use cs::core::testing::{AppendInterceptor, Intercepted};
use cs::core::{
    ConnId, Conversation, ConversationId, NewMessage, Party, Seq, TenantId, Timestamp, VisitorId,
};
use cs::transport::{
    CloseReason, Command, ConnectionPool, Dispatcher, DispatcherConfig, Metrics, Origin, PoolConfig,
};

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a tokio runtime for the benchmark: {e}"),
    }
}

fn name<T>(parse: Result<T, cs::core::InvalidId>) -> T {
    match parse {
        Ok(id) => id,
        Err(e) => unreachable!("constant ids are valid: {e}"),
    }
}

fn pool_send(c: &mut Criterion) {
    let rt = runtime();
    let tenant = name(TenantId::new("bench"));
    let frame = Bytes::from_static(
        br#"{"type":"message","message":{"seq":1,"body":{"type":"text","text":"hello"}}}"#,
    );
    let mut group = c.benchmark_group("pool_send");

    let pool = ConnectionPool::new(
        PoolConfig {
            outbound_limit_bytes: 1 << 30,
            ..PoolConfig::default()
        },
        Arc::new(Metrics::new()),
    );
    let ids: Vec<ConnId> = rt.block_on(async {
        (0..10_000)
            .map(|i| {
                let party = Party::Visitor(name(VisitorId::new(format!("v{i}"))));
                pool.register(tenant.clone(), party, futures::sink::drain())
                    .id
            })
            .collect()
    });
    let mut i = 0usize;
    group.bench_function("connection_pool", |b| {
        b.iter(|| {
            i = (i + 7919) % ids.len();
            let _ = pool.send_to_connection(ids[i], frame.clone());
        });
    });

    // Each channel has a task draining it, as each connection has a writer.
    let plain: DashMap<usize, mpsc::UnboundedSender<Bytes>> = DashMap::new();
    rt.block_on(async {
        for i in 0..10_000 {
            let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
            plain.insert(i, tx);
            tokio::spawn(async move { while rx.recv().await.is_some() {} });
        }
    });
    let mut i = 0usize;
    group.bench_function("baseline_dashmap_channel", |b| {
        b.iter(|| {
            i = (i + 7919) % 10_000;
            if let Some(tx) = plain.get(&i) {
                let _ = tx.send(frame.clone());
            }
        });
    });
    group.finish();
}

struct Setup {
    dispatcher: Dispatcher,
    metrics: Arc<Metrics>,
    conversations: Vec<(ConversationId, Party)>,
}

const CONVERSATIONS: usize = 200;
const BATCH: usize = 20_000;

/// A node on `MemoryStore` whose connections never overflow, so the
/// measurement is the path, not slow-consumer closes.
struct Node {
    dispatcher: Dispatcher,
    pool: Arc<ConnectionPool>,
    metrics: Arc<Metrics>,
    store: Arc<dyn MessageStore>,
}

fn start_node(config: DispatcherConfig, store: Arc<dyn MessageStore>) -> Node {
    let metrics = Arc::new(Metrics::new());
    let pool = ConnectionPool::new(
        PoolConfig {
            outbound_limit_bytes: 1 << 30,
            ..PoolConfig::default()
        },
        Arc::clone(&metrics),
    );
    let dispatcher = Dispatcher::start(
        config,
        Arc::clone(&store),
        Arc::clone(&pool),
        Vec::new(),
        Arc::clone(&metrics),
    );
    Node {
        dispatcher,
        pool,
        metrics,
        store,
    }
}

async fn setup(config: DispatcherConfig, store: Arc<dyn MessageStore>) -> Setup {
    let Node {
        dispatcher,
        pool,
        metrics,
        store,
    } = start_node(config, store);
    let tenant = name(TenantId::new("bench"));
    let mut conversations = Vec::new();
    for i in 0..CONVERSATIONS {
        let visitor = name(VisitorId::new(format!("v{i}")));
        let conversation = Conversation::open(tenant.clone(), visitor.clone(), Timestamp::now());
        let _ = store.create_conversation(&conversation).await;
        let party = Party::Visitor(visitor);
        // One reader per conversation, so routing is part of the measurement.
        let conn = pool
            .register(tenant.clone(), party.clone(), futures::sink::drain())
            .id;
        let join = Command::Join {
            conn,
            conversation: conversation.id(),
            last_seq: Seq::ZERO,
        };
        let _ = dispatcher.submit_and_wait(join).await;
        conversations.push((conversation.id(), party));
    }
    Setup {
        dispatcher,
        metrics,
        conversations,
    }
}

/// Submits `BATCH` messages from two tasks and waits until all are stored.
async fn run_batch(setup: &Setup) -> Duration {
    let target = setup.metrics.snapshot().persisted + BATCH as u64;
    let start = Instant::now();
    submit_batch(setup).await;
    wait_persisted(setup, target).await;
    start.elapsed()
}

/// Submits `BATCH` messages over the conversations, from two tasks.
async fn submit_batch(setup: &Setup) {
    let halves = [0usize, 1].map(|half| {
        let dispatcher = setup.dispatcher.clone();
        let conversations = setup.conversations.clone();
        tokio::spawn(async move {
            for n in (half..BATCH).step_by(2) {
                let (id, party) = &conversations[n % CONVERSATIONS];
                let command = Command::Send {
                    origin: Origin::Host,
                    message: NewMessage::text(*id, party.clone(), "where is my order?"),
                };
                let _ = dispatcher.submit(command).await;
            }
        })
    });
    for half in halves {
        let _ = half.await;
    }
}

async fn wait_persisted(setup: &Setup, target: u64) {
    // Poll gently: a spinning waiter would take a core from the workers.
    while setup.metrics.snapshot().persisted < target {
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
}

fn dispatch(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("dispatch");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);

    let direct = rt.block_on(setup(
        DispatcherConfig::default(),
        Arc::new(MemoryStore::new()),
    ));
    group.bench_function("full_path_memory_store", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let direct = &direct;
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += run_batch(direct).await;
                }
                total
            }
        });
    });

    // The degrade path: one shard, one slot, no wait, and a store that holds
    // every append until the whole batch is admitted. All but the first
    // commands spill; then the gate opens and the spill drains in order.
    // Compared with the same single shard taking the batch directly.
    let one_shard = DispatcherConfig {
        shards: 1,
        queue_capacity: 1,
        enqueue_deadline: Duration::ZERO,
        max_spill_bytes: 1 << 30,
        ..DispatcherConfig::default()
    };
    let degraded = Arc::new(Mutex::new((0, 0)));
    for (name, gated) in [
        ("one_shard_direct", false),
        ("one_shard_degraded_spill", true),
    ] {
        group.bench_function(name, |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let config = one_shard.clone();
                let degraded = Arc::clone(&degraded);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let store = Arc::new(Intercepted {
                            inner: MemoryStore::new(),
                            interceptor: Gate::new(gated),
                        });
                        let setup = setup(config.clone(), store.clone()).await;
                        let target = setup.metrics.snapshot().persisted + BATCH as u64;
                        let start = Instant::now();
                        // Gated: every command is admitted (spilled) before any is stored.
                        submit_batch(&setup).await;
                        store.interceptor.open();
                        wait_persisted(&setup, target).await;
                        total += start.elapsed();
                        if gated {
                            let counts = setup.metrics.snapshot();
                            if let Ok(mut seen) = degraded.lock() {
                                *seen = (counts.degraded, counts.accepted);
                            }
                        }
                        setup.dispatcher.shutdown().await;
                    }
                    total
                }
            });
        });
    }
    if let Ok(seen) = degraded.lock() {
        eprintln!(
            "one_shard_degraded_spill: {} of {} messages in the last batch took the spill path",
            seen.0, seen.1
        );
    }

    // Baseline: the store alone, appended from two tasks, no dispatcher.
    let store = Arc::new(MemoryStore::new());
    let baseline_conversations: Vec<(ConversationId, Party)> = rt.block_on(async {
        let tenant = name(TenantId::new("bench"));
        let mut out = Vec::new();
        for i in 0..CONVERSATIONS {
            let visitor = name(VisitorId::new(format!("v{i}")));
            let conversation =
                Conversation::open(tenant.clone(), visitor.clone(), Timestamp::now());
            let _ = store.create_conversation(&conversation).await;
            out.push((conversation.id(), Party::Visitor(visitor)));
        }
        out
    });
    group.bench_function("baseline_memory_store_append", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let store = Arc::clone(&store);
            let conversations = baseline_conversations.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let halves = [0usize, 1].map(|half| {
                        let store = Arc::clone(&store);
                        let conversations = conversations.clone();
                        tokio::spawn(async move {
                            for n in (half..BATCH).step_by(2) {
                                let (id, party) = &conversations[n % CONVERSATIONS];
                                let _ = store
                                    .append(NewMessage::text(
                                        *id,
                                        party.clone(),
                                        "where is my order?",
                                    ))
                                    .await;
                            }
                        })
                    });
                    for half in halves {
                        let _ = half.await;
                    }
                }
                start.elapsed()
            }
        });
    });
    group.finish();
}

/// Resume with a 100-message gap: a client that last saw seq 900 of 1,000
/// joins, gets the 100 it missed and goes live. Timed from submit to the
/// end-of-replay marker being queued to its connection; the p99 over all
/// iterations is printed, since the target is a tail.
fn resume(c: &mut Criterion) {
    let rt = runtime();
    let mut group = c.benchmark_group("resume");
    let (dispatcher, pool, conversation, tenant, party) = rt.block_on(async {
        let Node {
            dispatcher,
            pool,
            store,
            ..
        } = start_node(DispatcherConfig::default(), Arc::new(MemoryStore::new()));
        let tenant = name(TenantId::new("bench"));
        let visitor = name(VisitorId::new("v"));
        let conversation = Conversation::open(tenant.clone(), visitor.clone(), Timestamp::now());
        let _ = store.create_conversation(&conversation).await;
        let party = Party::Visitor(visitor);
        for i in 0..1_000 {
            let text = format!("message {i}: where is my order? it was due on Monday");
            let _ = store
                .append(NewMessage::text(conversation.id(), party.clone(), text))
                .await;
        }
        (dispatcher, pool, conversation.id(), tenant, party)
    });
    let latencies = Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok());
    group.bench_function("gap_100_of_1000", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (dispatcher, pool, tenant, party, latencies) =
                (&dispatcher, &pool, &tenant, &party, &latencies);
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let conn = pool
                        .register(tenant.clone(), party.clone(), futures::sink::drain())
                        .id;
                    let start = Instant::now();
                    let join = Command::Join {
                        conn,
                        conversation,
                        last_seq: Seq::new(900),
                    };
                    let _ = dispatcher.submit_and_wait(join).await;
                    let took = start.elapsed();
                    total += took;
                    if let Ok(mut guard) = latencies.lock() {
                        if let Some(h) = guard.as_mut() {
                            h.saturating_record(took.as_micros() as u64);
                        }
                    }
                    pool.close(conn, CloseReason::ByHost);
                }
                total
            }
        });
    });
    if let Ok(guard) = latencies.lock() {
        if let Some(h) = guard.as_ref() {
            eprintln!(
                "resume/gap_100_of_1000: p50 {} us, p99 {} us over {} resumes",
                h.value_at_quantile(0.5),
                h.value_at_quantile(0.99),
                h.len()
            );
        }
    }
    group.finish();
}

/// Holds appends at a gate until it opens, so a shard stays saturated while a
/// batch is admitted. Open from the start, it costs an atomic load.
struct Gate {
    open: std::sync::atomic::AtomicBool,
    opened: tokio::sync::Notify,
}

impl Gate {
    fn new(shut: bool) -> Self {
        Self {
            open: std::sync::atomic::AtomicBool::new(!shut),
            opened: tokio::sync::Notify::new(),
        }
    }

    fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
        self.opened.notify_waiters();
    }
}

#[async_trait::async_trait]
impl AppendInterceptor for Gate {
    async fn before_append(&self, _message: &NewMessage) {
        use std::sync::atomic::Ordering;
        if !self.open.load(Ordering::SeqCst) {
            // Register before re-checking, so an `open` in between is not missed.
            let opened = self.opened.notified();
            if !self.open.load(Ordering::SeqCst) {
                opened.await;
            }
        }
    }
}

criterion_group!(benches, pool_send, dispatch, resume);
criterion_main!(benches);
