//! The load generator for the network path.
//!
//! ```sh
//! cargo run --release --example loadgen -- --connections 2000 --rate 30000 --duration 10 --baseline
//! ```
//!
//! It opens N WebSocket clients in visitor/agent pairs over loopback. Each
//! visitor sends its share of `--rate` messages per second into its pair's
//! conversation; each agent receives them. The send time travels in the
//! message text, so the end-to-end latency (visitor socket → server: dispatch,
//! store, route → agent socket) is measured in this one process, on one clock.
//!
//! Without `--url` it starts its own server as a separate process (this same
//! binary, `--serve cs`), built from cs-transport with `MemoryStore`, so the
//! server's memory is its own and can be read from `/proc`. With `--baseline`
//! it then runs the same load against a plain tokio-tungstenite relay
//! (`--serve relay`: no pool, no dispatcher, no store) and reports the ratio.
//! With `--url ws://HOST:PORT/ws` it loads a running server that offers the
//! same two endpoints (`GET /pair/{n}` and `/ws?pair={n}&role=visitor|agent`),
//! such as `chat_server --loadgen`. Repeat `--url` for the nodes of one
//! cluster (pairs are spread as below), add `--server-pid` for their memory
//! and CPU, and `--bus` for the CPU of Redis or nats-server.
//!
//! The last line of stdout is one JSON object: connections, msgs_per_sec,
//! p50_ms, p99_ms, p999_ms, refused, retried, degraded, server_rss_mb,
//! server_kb_per_connection, and with `--baseline` baseline_msgs_per_sec and
//! ratio. Progress goes to stderr every second.
//!
//! `--ws-buffer-bytes` sets both servers' socket read and write buffers
//! (default: the adapter's own default), for the memory-per-connection table.
//!
//! **Several nodes.** `--nodes 3 --bus redis://127.0.0.1:6379 --store
//! postgres://postgres@127.0.0.1:5432/test` starts three cs servers that share
//! a PostgreSQL store (in a fresh schema, dropped at the end) and a
//! [`RedisBus`](cs::transport::RedisBus), or a
//! [`NatsBus`](cs::transport::NatsBus) with `--bus nats://127.0.0.1:4222`
//! (the URL's scheme picks the bus); each pair's visitor connects to node
//! `n % 3` and its agent to node `(n + 1) % 3`, so every message crosses the
//! bus. With `--baseline`, the baseline is then one node on the same store
//! (no bus), not the relay. The JSON also has `nodes`, `servers_cpu_percent`
//! and `redis_cpu_percent` or `nats_cpu_percent` (the bus server's own CPU
//! over the sending window, read from `/proc`, so it must run on this
//! machine: Redis's pid is the one it reports, nats-server's the one process
//! of that name).
//!
//! **The product's own path.** `--chat-server http://HOST:PORT --visitors N
//! --rate R --duration S [--handoff-share F]` drives a running desk as
//! shoppers do: a session and a token per visitor through the HTTP API,
//! the visitor socket, questions the bot answers (or, for the hand-off
//! share, the demo agents), refusals retried with the same
//! `client_msg_id`; see `chat_path.rs`. Its last line is JSON with
//! `questions_per_sec, answer_p50_ms, answer_p99_ms, refused, retried, lost`.
//! Run the server with `chat_server --loadgen` (every visitor comes from
//! this one address), and `--agent-capacity` large enough for the hand-offs.
//!
//! These machines cap open files at 20,000 per process, so one server holds at
//! most about 19,900 connections; clients spread over 127.0.0.x source
//! addresses so that the ephemeral ports of one address are not the limit.

mod chat_path;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use axum::Json;
use clap::{Parser, ValueEnum};
use dashmap::DashMap;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, OnceCell};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use cs::core::store::{MemoryStore, MessageStore};
use cs::core::{AgentId, Conversation, ConversationId, Party, TenantId, Timestamp, VisitorId};
use cs::datahub::store::PostgresStore;
use cs::transport::websocket::{self, WsConfig};
use cs::transport::{
    Actor, Change, ClientFrame, Command, ConnectionPool, Dispatcher, DispatcherConfig, Metrics,
    NatsBus, NatsBusConfig, NodeId, PoolConfig, RedisBus, RedisBusConfig, ServerFrame,
};

#[derive(Parser, Debug)]
#[command(about = "Load generator for the cs network path")]
struct Args {
    /// WebSocket clients to open, in visitor/agent pairs.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Messages per second to send, across all visitors.
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Also run the same load against a plain tokio-tungstenite relay, and report the ratio.
    #[arg(long)]
    baseline: bool,
    /// Load a running server instead of starting one (ws://HOST:PORT/ws).
    /// Repeat it for several nodes of one cluster: each pair's visitor then
    /// connects to node `n % N` and its agent to node `(n + 1) % N`.
    #[arg(long)]
    url: Vec<String>,
    /// With `--url`: the running servers' process ids, so their memory and
    /// CPU are reported too (`--server-pid $(pgrep -d, chat_server)`).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Socket read and write buffer of the servers it starts, in bytes.
    #[arg(long, default_value_t = WsConfig::default().read_buffer_bytes)]
    ws_buffer_bytes: usize,
    /// cs servers to start, sharing `--store` and `--bus`.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// The bus between the nodes (needed with `--nodes` above 1):
    /// `redis://…` for Redis pub/sub, `nats://…` for NATS.
    #[arg(long)]
    bus: Option<String>,
    /// A shared PostgreSQL store for the cs servers (needed with `--nodes`
    /// above 1); default, one node with `MemoryStore`.
    #[arg(long)]
    store: Option<String>,
    /// Drive the product's own path on this running desk
    /// (`http://HOST:PORT`): real sessions, tokens and the bot answering.
    #[arg(long)]
    chat_server: Option<String>,
    /// With `--chat-server`: visitors, each in a conversation of its own.
    #[arg(long, default_value_t = 200)]
    visitors: usize,
    /// With `--chat-server`: the share of visitors (0 to 1) who ask for a
    /// person first and are then answered by the demo agents.
    #[arg(long, default_value_t = 0.0)]
    handoff_share: f64,
    /// Internal: run a server of this kind and print its address.
    #[arg(long, hide = true)]
    serve: Option<ServerKind>,
    /// Internal: the server's node id.
    #[arg(long, hide = true, default_value = "node-0")]
    node_id: String,
    /// Internal: the PostgreSQL schema of the server's store.
    #[arg(long, hide = true)]
    schema: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ServerKind {
    /// cs-transport: pool, dispatcher, MemoryStore, axum adapter.
    Cs,
    /// A plain tokio-tungstenite relay.
    Relay,
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("loadgen: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        match args.serve {
            Some(ServerKind::Cs) => serve_cs(&args).await,
            Some(ServerKind::Relay) => serve_relay(args.ws_buffer_bytes).await,
            None => drive(&args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---------------------------------------------------------------------------
// The driver: start servers, run the load, report.

#[derive(Debug, Default, Clone, serde::Serialize)]
struct LoadResult {
    connections: usize,
    msgs_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    refused: u64,
    /// Refused messages sent again with the same id (a refusal near the end
    /// may not be retried before the run stops).
    retried: u64,
    degraded: Option<u64>,
    server_rss_mb: Option<f64>,
    server_kb_per_connection: Option<f64>,
    sent: u64,
    /// Every message that arrived, including after the window (msgs_per_sec
    /// counts those that arrived by half a second after it).
    delivered: u64,
    nodes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    servers_cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nats_cpu_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_msgs_per_sec: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ratio: Option<f64>,
}

async fn drive(args: &Args) -> Result<(), BoxError> {
    if let Some(base) = &args.chat_server {
        let report = chat_path::run(chat_path::Plan {
            base: base.clone(),
            visitors: args.visitors,
            rate: args.rate,
            duration: Duration::from_secs(args.duration),
            handoff_share: args.handoff_share,
        })
        .await?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if args.connections < 2 {
        return Err("--connections must be at least 2 (one visitor/agent pair)".into());
    }
    if args.nodes > 1 && (args.bus.is_none() || args.store.is_none()) {
        return Err(
            "--nodes above 1 needs --bus redis://… or nats://…, and --store postgres://… (the nodes share both)"
                .into(),
        );
    }
    let schema = args
        .store
        .as_ref()
        .map(|_| format!("cs_loadgen_{}", std::process::id()));
    let mut result = if args.url.is_empty() {
        run_nodes(args, args.nodes, schema.as_deref()).await?
    } else {
        eprintln!("loading {}", args.url.join(", "));
        run_load(args, &args.url, Mode::Cs, &args.server_pid).await?
    };
    if args.baseline {
        let baseline = if args.nodes > 1 {
            eprintln!("baseline: one node on the same store, no bus");
            run_nodes(args, 1, schema.as_deref()).await?
        } else {
            let relay = ServerProcess::start(ServerKind::Relay, args, None, None).await?;
            eprintln!("baseline relay: pid {} at {}", relay.pid, relay.addr);
            let url = format!("ws://{}/ws", relay.addr);
            let baseline = run_load(args, &[url], Mode::Relay, &[relay.pid]).await?;
            relay.finish().await.ok();
            baseline
        };
        eprintln!(
            "baseline: {:.0} msgs/s, p99 {:.2} ms, {:.1} KB/connection",
            baseline.msgs_per_sec,
            baseline.p99_ms,
            baseline.server_kb_per_connection.unwrap_or(0.0)
        );
        result.baseline_msgs_per_sec = Some(baseline.msgs_per_sec);
        result.baseline_p99_ms = Some(baseline.p99_ms);
        result.ratio = Some(if baseline.msgs_per_sec > 0.0 {
            result.msgs_per_sec / baseline.msgs_per_sec
        } else {
            0.0
        });
    }
    if let (Some(store), Some(schema)) = (&args.store, &schema) {
        drop_schema(store, schema).await;
    }
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

/// Starts `nodes` cs servers, loads them, stops them.
async fn run_nodes(
    args: &Args,
    nodes: usize,
    schema: Option<&str>,
) -> Result<LoadResult, BoxError> {
    let mut servers = Vec::with_capacity(nodes);
    for node in 0..nodes {
        let bus = if nodes > 1 { args.bus.as_deref() } else { None };
        let server = ServerProcess::start(
            ServerKind::Cs,
            args,
            Some((format!("node-{node}"), bus)),
            schema,
        )
        .await?;
        eprintln!(
            "cs server node-{node}: pid {} at {}",
            server.pid, server.addr
        );
        servers.push(server);
    }
    let urls: Vec<String> = servers
        .iter()
        .map(|s| format!("ws://{}/ws", s.addr))
        .collect();
    let pids: Vec<u32> = servers.iter().map(|s| s.pid).collect();
    let mut result = run_load(args, &urls, Mode::Cs, &pids).await?;
    let mut degraded = 0;
    for server in servers {
        degraded += server.finish().await?.degraded;
    }
    result.degraded = Some(degraded);
    Ok(result)
}

/// Removes the schema the servers wrote into. Failing to is only untidy.
async fn drop_schema(url: &str, schema: &str) {
    let dropped = async {
        let pool = sqlx::PgPool::connect(url).await?;
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(&pool)
            .await?;
        pool.close().await;
        Ok::<(), sqlx::Error>(())
    };
    if let Err(e) = dropped.await {
        eprintln!("loadgen: could not drop schema {schema}: {e}");
    }
}

/// A server run as a child process of this binary.
struct ServerProcess {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    stdout: BufReader<tokio::process::ChildStdout>,
}

#[derive(Deserialize, Default)]
struct ServerReport {
    degraded: u64,
}

impl ServerProcess {
    /// Starts a server; a cs server gets `node` (its id and the bus, if
    /// any) and the store in `schema` when `--store` is set.
    async fn start(
        kind: ServerKind,
        args: &Args,
        node: Option<(String, Option<&str>)>,
        schema: Option<&str>,
    ) -> Result<Self, BoxError> {
        let exe = std::env::current_exe()?;
        let mode = match kind {
            ServerKind::Cs => "cs",
            ServerKind::Relay => "relay",
        };
        let mut command = tokio::process::Command::new(exe);
        command.args([
            "--serve",
            mode,
            "--ws-buffer-bytes",
            &args.ws_buffer_bytes.to_string(),
        ]);
        if let Some((id, bus)) = node {
            command.args(["--node-id", &id]);
            if let Some(bus) = bus {
                command.args(["--bus", bus]);
            }
        }
        if let (Some(store), Some(schema)) = (&args.store, schema) {
            command.args(["--store", store, "--schema", schema]);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("the server exited at once")?;
        let stdout = child.stdout.take().ok_or("no stdout from the server")?;
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        stdout.read_line(&mut line).await?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .ok_or_else(|| format!("unexpected first line from the server: {line:?}"))?
            .parse()?;
        Ok(Self {
            child,
            pid,
            addr,
            stdout,
        })
    }

    /// Closes its stdin (its signal to stop) and reads its final report.
    async fn finish(mut self) -> Result<ServerReport, BoxError> {
        drop(self.child.stdin.take());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).await?;
        let _ = self.child.wait().await;
        let last = rest.lines().last().unwrap_or("{}");
        Ok(serde_json::from_str(last).unwrap_or_default())
    }
}

/// CPU time a process has used so far (user + system), from `/proc`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // Linux reports in USER_HZ, 100 per second on every platform it supports.
    Some(Duration::from_millis(ticks * 10))
}

fn cpu_times(pids: &[u32]) -> Option<Duration> {
    pids.iter().map(|pid| cpu_time(*pid)).sum()
}

/// Whether `--bus` names a NATS server rather than Redis.
fn is_nats(url: &str) -> bool {
    url.starts_with("nats://") || url.starts_with("tls://")
}

/// The pid of the one process named `nats-server` on this machine (NATS
/// does not report its pid to clients); none if there are several.
fn nats_server_pid() -> Option<u32> {
    let mut pids = std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
            (comm.trim() == "nats-server").then_some(pid)
        });
    let pid = pids.next()?;
    pids.next().is_none().then_some(pid)
}

/// The pid of the Redis behind `url`, as it reports it (`INFO server`).
async fn redis_pid(url: &str) -> Option<u32> {
    let client = redis::Client::open(url).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut conn)
        .await
        .ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// The load itself.

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Our protocol: look up the pair's conversation, agents resume it.
    Cs,
    /// The relay: no conversation, raw frames.
    Relay,
}

/// Counters shared by every client task.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    delivered: AtomicU64,
    refused: AtomicU64,
    /// Refused messages sent again after their `retry_after_ms`.
    retried: AtomicU64,
    connected: AtomicU64,
}

/// The instant all send times are measured from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Loads the servers at `urls`: pair `n`'s visitor on `urls[n % len]`, its
/// agent on the next one (the same one when there is one). `server_pids`
/// are read for memory and CPU.
async fn run_load(
    args: &Args,
    urls: &[String],
    mode: Mode,
    server_pids: &[u32],
) -> Result<LoadResult, BoxError> {
    let pairs = args.connections / 2;
    let nodes = urls.len().max(1);
    let counters = Arc::new(Counters::default());
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let rss = |pids: &[u32]| -> Option<u64> {
        if pids.is_empty() {
            return None;
        }
        pids.iter().map(|pid| rss_kb(*pid)).sum()
    };
    let rss_before = rss(server_pids);
    let bus_server = match (&args.bus, nodes > 1) {
        (Some(url), true) if is_nats(url) => nats_server_pid(),
        (Some(url), true) => redis_pid(url).await,
        _ => None,
    };

    // Connect every pair first (agents before visitors), then start sending.
    // Tokens, not `Notify`: a task that is busy when the signal comes must
    // still see it.
    let start_sending = CancellationToken::new();
    let stop_sending = CancellationToken::new();
    let stop = CancellationToken::new();
    let per_visitor = Duration::from_secs_f64(pairs as f64 / args.rate.max(1) as f64);
    let mut tasks = Vec::with_capacity(args.connections);
    let connect_started = Instant::now();
    for pair in 0..pairs {
        let visitor_url = &urls[pair % nodes];
        let agent_url = &urls[(pair + 1) % nodes];
        let conversation = match mode {
            // The pair's conversation is made on one node; the store is shared.
            Mode::Cs => Some(lookup_pair(&urls[0], pair).await?),
            Mode::Relay => None,
        };
        let agent = connect(agent_url, pair, "agent").await?;
        counters.connected.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(run_agent(
            agent,
            conversation,
            Arc::clone(&counters),
            Arc::clone(&latencies),
            stop.clone(),
        )));
        let visitor = connect(visitor_url, pair, "visitor").await?;
        counters.connected.fetch_add(1, Ordering::Relaxed);
        tasks.push(tokio::spawn(run_visitor(
            visitor,
            conversation,
            per_visitor,
            Arc::clone(&counters),
            start_sending.clone(),
            stop_sending.clone(),
            stop.clone(),
        )));
        if pair % 1000 == 999 {
            eprintln!("connected {} of {}", (pair + 1) * 2, pairs * 2);
        }
    }
    eprintln!(
        "{} connections open in {:.1} s",
        pairs * 2,
        connect_started.elapsed().as_secs_f64()
    );
    // Let the server settle, then read its memory with every connection idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = rss(server_pids);
    let kb_per_connection = match (rss_before, rss_idle) {
        (Some(before), Some(idle)) => Some(idle.saturating_sub(before) as f64 / (pairs * 2) as f64),
        _ => None,
    };

    start_sending.cancel();
    let started = Instant::now();
    let servers_cpu_before = cpu_times(server_pids);
    let bus_cpu_before = bus_server.and_then(cpu_time);
    let duration = Duration::from_secs(args.duration);
    let mut last_delivered = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let delivered = counters.delivered.load(Ordering::Relaxed);
        let p99 = latencies
            .lock()
            .map(|h| h.value_at_quantile(0.99))
            .unwrap_or(0);
        eprintln!(
            "t={:>3}s sent={} delivered={} ({}/s) refused={} p99={:.2}ms",
            started.elapsed().as_secs(),
            counters.sent.load(Ordering::Relaxed),
            delivered,
            delivered - last_delivered,
            counters.refused.load(Ordering::Relaxed),
            p99 as f64 / 1000.0
        );
        last_delivered = delivered;
    }
    stop_sending.cancel();
    let sending_time = started.elapsed();
    let share = |before: Option<Duration>, after: Option<Duration>| match (before, after) {
        (Some(before), Some(after)) => {
            Some(100.0 * after.saturating_sub(before).as_secs_f64() / sending_time.as_secs_f64())
        }
        _ => None,
    };
    let servers_cpu_percent = share(servers_cpu_before, cpu_times(server_pids));
    let bus_cpu_percent = share(bus_cpu_before, bus_server.and_then(cpu_time));
    let (redis_cpu_percent, nats_cpu_percent) = match &args.bus {
        Some(url) if is_nats(url) => (None, bus_cpu_percent),
        _ => (bus_cpu_percent, None),
    };
    // Throughput counts what arrived by half a second after the window, as
    // it always has; then the rest may still arrive, to show nothing sent
    // was lost: wait until every one has, or for at most five seconds
    // (refusals not retried before the stop, losses).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered_in_time = counters.delivered.load(Ordering::Relaxed);
    let draining = Instant::now();
    while counters.delivered.load(Ordering::Relaxed) < counters.sent.load(Ordering::Relaxed)
        && draining.elapsed() < Duration::from_secs(5)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let rss_end = rss(server_pids);
    // Each agent merges its last latencies as it stops.
    let _ = tokio::time::timeout(Duration::from_secs(5), futures::future::join_all(tasks)).await;

    let histogram = latencies
        .lock()
        .map(|h| h.clone())
        .map_err(|_| "a client task panicked")?;
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let delivered = counters.delivered.load(Ordering::Relaxed);
    Ok(LoadResult {
        connections: pairs * 2,
        msgs_per_sec: delivered_in_time as f64 / sending_time.as_secs_f64(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        refused: counters.refused.load(Ordering::Relaxed),
        retried: counters.retried.load(Ordering::Relaxed),
        degraded: None,
        server_rss_mb: rss_end.map(|kb| kb as f64 / 1024.0),
        server_kb_per_connection: kb_per_connection,
        sent: counters.sent.load(Ordering::Relaxed),
        delivered,
        nodes,
        servers_cpu_percent,
        redis_cpu_percent,
        nats_cpu_percent,
        baseline_msgs_per_sec: None,
        baseline_p99_ms: None,
        ratio: None,
    })
}

type Client = tokio_tungstenite::WebSocketStream<TcpStream>;

/// Spreads clients over 127.0.0.1 to 127.0.0.50, so one source address's
/// ephemeral ports are not what limits the connection count.
fn source_addr(pair: usize) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(127, 0, 0, 1 + (pair % 50) as u8), 0))
}

fn server_addr(url: &str) -> Result<(String, String), BoxError> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or("--url must start with ws://")?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, "ws"));
    Ok((host.to_owned(), format!("/{path}")))
}

async fn connect(url: &str, pair: usize, role: &str) -> Result<Client, BoxError> {
    let (host, path) = server_addr(url)?;
    let addr: SocketAddr = tokio::net::lookup_host(&host)
        .await?
        .next()
        .ok_or("cannot resolve the server")?;
    let socket = TcpSocket::new_v4()?;
    socket.bind(source_addr(pair))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let request = format!("ws://{host}{path}?pair={pair}&role={role}");
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096);
    let (client, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    Ok(client)
}

/// `GET /pair/{n}`: the conversation of pair n. One small request per pair at
/// setup, so a plain HTTP/1.1 exchange is written out here rather than
/// pulling an HTTP client crate into the examples.
async fn lookup_pair(url: &str, pair: usize) -> Result<ConversationId, BoxError> {
    let (host, _) = server_addr(url)?;
    let mut stream = TcpStream::connect(&host).await?;
    let request = format!("GET /pair/{pair} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!(
            "GET /pair/{pair} failed: {}",
            head.lines().next().unwrap_or("")
        )
        .into());
    }
    let pair: PairInfo = serde_json::from_str(body.trim())?;
    Ok(pair.conversation)
}

#[derive(serde::Serialize, Deserialize)]
struct PairInfo {
    conversation: ConversationId,
}

async fn run_visitor(
    client: Client,
    conversation: Option<ConversationId>,
    period: Duration,
    counters: Arc<Counters>,
    start: CancellationToken,
    stop: CancellationToken,
    hang_up: CancellationToken,
) {
    let (mut sink, mut stream) = client.split();
    // Refusals come back as error frames naming the message; each is sent
    // again, with the same id and send time, once its retry_after_ms is up,
    // so a refused message still counts (late) when it is delivered.
    let (retry_tx, mut retries) = mpsc::unbounded_channel::<(String, u64)>();
    let reader_counters = Arc::clone(&counters);
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let WsMessage::Text(text) = message else {
                continue;
            };
            if !(text.contains("\"overloaded\"") || text.contains("\"rate_limited\"")) {
                continue;
            }
            reader_counters.refused.fetch_add(1, Ordering::Relaxed);
            let Ok(ServerFrame::Error {
                client_msg_id: Some(id),
                retry_after_ms,
                ..
            }) = ServerFrame::decode(text.as_bytes())
            else {
                continue;
            };
            let Some(sent_at) = sent_at_of_id(id.as_str()) else {
                continue;
            };
            let retry_tx = retry_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(retry_after_ms.unwrap_or(100).max(1)))
                    .await;
                let _ = retry_tx.send((id.as_str().to_owned(), sent_at));
            });
        }
    });
    // A ping every so often while idle: the server closes a socket silent
    // for its idle timeout (60 s), and opening 15,000 takes about that long.
    let mut keepalive = keepalive();
    loop {
        tokio::select! {
            () = start.cancelled() => break,
            _ = keepalive.tick() => {
                if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                    reader.abort();
                    return;
                }
            }
        }
    }
    // Spread the visitors' ticks over one period, so the load is smooth.
    let offset = Duration::from_nanos(fastrand_u64() % period.as_nanos().max(1) as u64);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let conversation =
        conversation.unwrap_or_else(|| ConversationId::from_uuid(Default::default()));
    let mut next_id = 0u64;
    loop {
        let (client_msg_id, sent_at, retry) = tokio::select! {
            _ = ticks.tick() => {
                next_id += 1;
                let sent_at = epoch().elapsed().as_micros() as u64;
                (format!("{next_id}-{sent_at}"), sent_at, false)
            }
            Some((id, sent_at)) = retries.recv() => (id, sent_at, true),
            _ = keepalive.tick() => {
                if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                    break;
                }
                continue;
            }
            _ = stop.cancelled() => break,
        };
        let Ok(client_msg_id) = cs::core::ClientMsgId::new(client_msg_id) else {
            break;
        };
        let frame = ClientFrame::Send {
            conversation,
            client_msg_id: Some(client_msg_id),
            body: cs::core::Body::text(sent_at.to_string()),
        };
        let Ok(text) = String::from_utf8(frame.encode().to_vec()) else {
            break;
        };
        if sink.send(WsMessage::Text(text.into())).await.is_err() {
            break;
        }
        let counter = if retry {
            &counters.retried
        } else {
            &counters.sent
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
    // Open until every count is in: closing a socket with unread acks in
    // it sends a reset, and the server then drops what it had not read yet
    // of this client's last messages (up to 0.8% of a 15,000-socket run).
    hang_up.cancelled().await;
    reader.abort();
}

/// The send time a message id carries (`{n}-{sent_at_micros}`).
fn sent_at_of_id(id: &str) -> Option<u64> {
    id.split_once('-')?.1.parse().ok()
}

/// Ticks every 20 s, the first one 20 s from now: when an idle client pings.
fn keepalive() -> tokio::time::Interval {
    let every = Duration::from_secs(20);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks
}

/// A cheap per-task random number for tick offsets (not cryptographic).
fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(epoch().elapsed().as_nanos() as u64);
    hasher.finish()
}

async fn run_agent(
    client: Client,
    conversation: Option<ConversationId>,
    counters: Arc<Counters>,
    latencies: Arc<Mutex<Histogram<u64>>>,
    stop: CancellationToken,
) {
    let (mut sink, mut stream) = client.split();
    if let Some(conversation) = conversation {
        let resume = ClientFrame::Resume {
            conversation,
            last_seq: cs::core::Seq::ZERO,
        };
        let Ok(text) = String::from_utf8(resume.encode().to_vec()) else {
            return;
        };
        if sink.send(WsMessage::Text(text.into())).await.is_err() {
            return;
        }
    }
    let mut keepalive = keepalive();
    // A local histogram, merged every so often: no lock per message.
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).ok();
    let mut last_merge = Instant::now();
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = keepalive.tick() => {
                if sink.send(WsMessage::Ping(Default::default())).await.is_err() {
                    break;
                }
                continue;
            }
            _ = stop.cancelled() => None,
        };
        let text = match next {
            Some(Ok(WsMessage::Text(text))) => text,
            // Pongs and the like.
            Some(Ok(_)) => continue,
            _ => break,
        };
        if let Some(sent_at) = sent_at_micros(&text) {
            let now = epoch().elapsed().as_micros() as u64;
            if let Some(local) = local.as_mut() {
                local.saturating_record(now.saturating_sub(sent_at).max(1));
            }
            counters.delivered.fetch_add(1, Ordering::Relaxed);
            if last_merge.elapsed() > Duration::from_millis(250) {
                merge(&latencies, &mut local);
                last_merge = Instant::now();
            }
        }
    }
    merge(&latencies, &mut local);
}

fn merge(into: &Mutex<Histogram<u64>>, local: &mut Option<Histogram<u64>>) {
    if let (Ok(mut shared), Some(local)) = (into.lock(), local.as_mut()) {
        let _ = shared.add(&*local);
        local.reset();
    }
}

/// The send time in a delivered frame: the digits of its `"text"` field.
/// A scan rather than a JSON parse, because the client shares the two cores
/// with the server and must not be the bottleneck it measures.
fn sent_at_micros(frame: &str) -> Option<u64> {
    let start = frame.find("\"text\":\"")? + 8;
    let digits = &frame[start..];
    let end = digits.find('"')?;
    digits[..end].parse().ok()
}

// ---------------------------------------------------------------------------
// Server 1: cs-transport.

#[derive(Clone)]
struct CsServer {
    pool: Arc<ConnectionPool>,
    dispatcher: Dispatcher,
    store: Arc<dyn MessageStore>,
    pairs: Arc<DashMap<usize, Arc<OnceCell<ConversationId>>>>,
    ws: WsConfig,
}

#[derive(Deserialize)]
struct WsQuery {
    pair: usize,
    role: String,
}

fn tenant() -> TenantId {
    TenantId::new("loadgen").unwrap_or_else(|e| unreachable!("constant id: {e}"))
}

impl CsServer {
    /// The pair's conversation, created and assigned to its agent on first use.
    async fn conversation(&self, pair: usize) -> Result<ConversationId, String> {
        let cell = Arc::clone(&self.pairs.entry(pair).or_default());
        cell.get_or_try_init(|| async {
            let visitor = VisitorId::new(format!("visitor-{pair}")).map_err(|e| e.to_string())?;
            let agent = AgentId::new(format!("agent-{pair}")).map_err(|e| e.to_string())?;
            let conversation = Conversation::open(tenant(), visitor, Timestamp::now());
            let id = conversation.id();
            self.store
                .create_conversation(&conversation)
                .await
                .map_err(|e| e.to_string())?;
            for change in [
                Change::HandOff {
                    reason: "load test".into(),
                },
                Change::Assign(agent),
            ] {
                let command = Command::Change {
                    conversation: id,
                    change,
                    by: Actor::Host,
                };
                self.dispatcher
                    .submit_and_wait(command)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(id)
        })
        .await
        .copied()
    }
}

async fn pair_info(
    Path(pair): Path<usize>,
    State(server): State<CsServer>,
) -> Result<Json<PairInfo>, String> {
    Ok(Json(PairInfo {
        conversation: server.conversation(pair).await?,
    }))
}

async fn cs_socket(
    upgrade: WebSocketUpgrade,
    Query(query): Query<WsQuery>,
    State(server): State<CsServer>,
) -> Response {
    let party = match query.role.as_str() {
        "agent" => AgentId::new(format!("agent-{}", query.pair)).map(Party::Agent),
        _ => VisitorId::new(format!("visitor-{}", query.pair)).map(Party::Visitor),
    };
    let party = party.unwrap_or(Party::System);
    let CsServer {
        pool,
        dispatcher,
        ws,
        ..
    } = server;
    websocket::upgrade(upgrade, &ws)
        .on_upgrade(move |socket| websocket::serve(socket, tenant(), party, pool, dispatcher, ws))
}

async fn serve_cs(args: &Args) -> Result<(), BoxError> {
    let ws_buffer_bytes = args.ws_buffer_bytes;
    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn MessageStore> = match (&args.store, &args.schema) {
        (Some(url), Some(schema)) => Arc::new(PostgresStore::connect_in_schema(url, schema).await?),
        (Some(url), None) => Arc::new(PostgresStore::connect(url).await?),
        (None, _) => Arc::new(MemoryStore::new()),
    };
    let pool_config = PoolConfig {
        node: NodeId::new(&args.node_id),
        ..PoolConfig::default()
    };
    let mut dispatcher_config = DispatcherConfig::default();
    let pool = match &args.bus {
        Some(url) => {
            let bus: Arc<dyn cs::transport::Bus> = if is_nats(url) {
                NatsBus::connect(url, NatsBusConfig::default()).await?
            } else {
                RedisBus::connect(url, RedisBusConfig::default()).await?
            };
            // A message lost on the bus with nothing after it is found by this.
            dispatcher_config.position_check_interval = Some(Duration::from_secs(2));
            ConnectionPool::with_bus(pool_config, bus, Arc::clone(&metrics))
        }
        None => ConnectionPool::new(pool_config, Arc::clone(&metrics)),
    };
    if args.store.is_some() {
        // A database round trip per append: more shards, bigger group commits.
        dispatcher_config.shards = 64;
    }
    let dispatcher = Dispatcher::start(
        dispatcher_config,
        Arc::clone(&store),
        Arc::clone(&pool),
        Vec::new(),
        Arc::clone(&metrics),
    );
    let server = CsServer {
        pool,
        dispatcher: dispatcher.clone(),
        store,
        pairs: Arc::new(DashMap::new()),
        ws: WsConfig {
            // The load generator decides the rate; the limiter is tested elsewhere.
            rate_per_second: 1_000_000,
            rate_burst: 1_000_000,
            idle_timeout: Duration::from_secs(600),
            read_buffer_bytes: ws_buffer_bytes,
            write_buffer_bytes: ws_buffer_bytes,
            ..WsConfig::default()
        },
    };
    let app = axum::Router::new()
        .route("/ws", get(cs_socket))
        .route("/pair/{pair}", get(pair_info))
        .with_state(server);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    // The accept loop a host gets from cs (TCP_NODELAY, timeouts), with the
    // per-address cap lifted: every socket comes from 127.0.0.1.
    let config = cs::desk::server::ServeConfig {
        max_connections_per_ip: usize::MAX,
        ..Default::default()
    };
    tokio::spawn(async move {
        cs::desk::server::serve(
            listener,
            app,
            &config,
            Arc::default(),
            std::future::pending(),
        )
        .await
    });
    wait_for_stdin_close().await;
    dispatcher.shutdown().await;
    println!("{}", serde_json::to_string(&metrics.snapshot())?);
    Ok(())
}

/// The driver closes our stdin to stop us.
async fn wait_for_stdin_close() {
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

// ---------------------------------------------------------------------------
// Server 2: the baseline relay. A visitor's frames go to its pair's agent,
// byte for byte; nothing is parsed, stored or indexed beyond the pair.

type AgentTx = tokio::sync::mpsc::UnboundedSender<WsMessage>;

async fn serve_relay(ws_buffer_bytes: usize) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let agents: Arc<DashMap<usize, AgentTx>> = Arc::new(DashMap::new());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let agents = Arc::clone(&agents);
            tokio::spawn(async move {
                let _ = relay_connection(stream, agents, ws_buffer_bytes).await;
            });
        }
    });
    wait_for_stdin_close().await;
    println!("{{\"degraded\":0}}");
    Ok(())
}

async fn relay_connection(
    stream: TcpStream,
    agents: Arc<DashMap<usize, AgentTx>>,
    ws_buffer_bytes: usize,
) -> Result<(), BoxError> {
    let _ = stream.set_nodelay(true);
    let query = Arc::new(std::sync::Mutex::new(HashMap::<String, String>::new()));
    let seen = Arc::clone(&query);
    // The callback's error type is tungstenite's handshake response; not ours to shrink.
    #[allow(clippy::result_large_err)]
    let callback =
        move |request: &tokio_tungstenite::tungstenite::handshake::server::Request,
              response: tokio_tungstenite::tungstenite::handshake::server::Response| {
            if let (Some(q), Ok(mut seen)) = (request.uri().query(), seen.lock()) {
                for part in q.split('&') {
                    if let Some((k, v)) = part.split_once('=') {
                        seen.insert(k.to_owned(), v.to_owned());
                    }
                }
            }
            Ok(response)
        };
    let config = WebSocketConfig::default()
        .read_buffer_size(ws_buffer_bytes)
        .write_buffer_size(ws_buffer_bytes);
    let socket =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await?;
    let (pair, role) = {
        let query = query.lock().map_err(|_| "poisoned")?;
        let pair: usize = query.get("pair").ok_or("no pair")?.parse()?;
        (pair, query.get("role").cloned().unwrap_or_default())
    };
    let (mut sink, mut stream) = socket.split();
    if role == "agent" {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        agents.insert(pair, tx);
        while let Some(message) = rx.recv().await {
            sink.send(message).await?;
        }
    } else {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, WsMessage::Text(_)) {
                let tx = agents.get(&pair).map(|tx| tx.clone());
                if let Some(tx) = tx {
                    let _ = tx.send(message);
                }
            }
        }
    }
    Ok(())
}
