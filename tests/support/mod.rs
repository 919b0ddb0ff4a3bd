//! Runs the real `chat_server` example binary for the end-to-end tests.
//!
//! `cargo test` builds every example before it runs any test, so the binary
//! sits beside this test's own executable, in `target/<profile>/examples/`.
//! Each test gets its own server on a free port, with its own data dir and
//! an in-memory SQLite store, and a known signing key so tests can forge
//! tokens to prove they are refused.
//!
//! The cluster tests (`chat_server_cluster*.rs`) start several nodes that
//! share a PostgreSQL store and a Redis bus instead ([`Cluster`]), and drive
//! them with [`Http`] and [`Client`], which keep every message frame a
//! client read so seqs can be checked for gaps and duplicates.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The signing key every test server uses.
pub const SECRET: &str = "test-secret-key-for-the-e2e-tests-only";

/// A running chat_server, killed on drop.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Its data dir (removed on drop).
    pub data_dir: PathBuf,
    child: Child,
}

/// Where `cargo test` put the example binary.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test> → target/<profile>/examples/chat_server
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    profile_dir
        .join("examples")
        .join(format!("chat_server{}", std::env::consts::EXE_SUFFIX))
}

impl Server {
    /// Starts a server with `extra` flags and waits until it listens.
    pub async fn start(extra: &[&str]) -> Server {
        let mut args = vec!["--database", "sqlite::memory:"];
        args.extend_from_slice(extra);
        Server::launch(&args, None).await
    }

    /// Starts `binary()` on a free port with its own data dir, the test
    /// secret and `extra`, and waits until it listens. Its log goes to this
    /// process's stderr: as is, or with each line prefixed `[name]` (the
    /// test harness then shows it with a failing test's output).
    async fn launch(extra: &[&str], name: Option<&str>) -> Server {
        let binary = binary();
        assert!(
            binary.exists(),
            "{} is missing: run the tests with `cargo test` (which builds the examples first), \
             or build it with `cargo build --example chat_server`",
            binary.display()
        );
        let data_dir =
            std::env::temp_dir().join(format!("cs-e2e-{}-{}", std::process::id(), uuid_like()));
        let log = match name {
            // Nodes of a cluster: `CS_E2E_NODE_LOG` picks their log level.
            Some(_) => std::env::var("CS_E2E_NODE_LOG").unwrap_or_else(|_| "warn".to_owned()),
            None => "warn".to_owned(),
        };
        let mut child = Command::new(&binary)
            .args(["--addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--secret", SECRET])
            .args(extra)
            .env("RUST_LOG", log)
            .stdout(Stdio::piped())
            .stderr(if name.is_some() {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .kill_on_drop(true)
            .spawn()
            .expect("the chat_server binary starts");
        if let (Some(name), Some(stderr)) = (name, child.stderr.take()) {
            let name = name.to_owned();
            let mut lines = BufReader::new(stderr).lines();
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    eprintln!("[{name}] {line}");
                }
            });
        }
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("chat_server listening on ") {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    return url.trim_end_matches('/').to_owned();
                }
            }
            panic!("chat_server exited before listening");
        })
        .await
        .expect("chat_server listens within two minutes");
        // Keep draining stdout, so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let host = base.trim_start_matches("http://").to_owned();
        Server {
            base,
            host,
            data_dir,
            child,
        }
    }

    /// Asks the server to stop as Ctrl-C would, and waits for it to exit.
    pub async fn interrupt(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            // SIGINT, what Ctrl-C sends; `kill` is on every machine these tests run on.
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server stops within 30 s of Ctrl-C")
            .expect("the server's exit status is readable")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{nanos:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

// ---------------------------------------------------------------------------
// Cluster mode: several nodes sharing a PostgreSQL store and a Redis bus
// (tests/chat_server_cluster*.rs), and the clients those tests drive.

/// How long a cluster test waits for a frame or a condition. Generous: three
/// nodes, Redis and PostgreSQL share a small, busy machine.
pub const WAIT: Duration = Duration::from_secs(30);

impl Server {
    /// Starts a node of a cluster, named `name` in its log lines: like
    /// [`Server::start`] but without the in-memory SQLite store, so `extra`
    /// names the shared `--database` (and `--bus`, `--cluster`, …).
    pub async fn start_node(name: &str, extra: &[&str]) -> Server {
        Server::launch(extra, Some(name)).await
    }

    /// Kills the server with SIGKILL, as a crash would, and waits until it
    /// is gone. It closes nothing and tells nobody.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("the server is killed");
    }

    /// `GET /healthz` as JSON; `None` when the node does not answer with a
    /// 200 and JSON (it is dead, or its store is down).
    pub async fn health(&self) -> Option<Value> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .ok()?;
        let response = client
            .get(format!("{}/healthz", self.base))
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        response.json().await.ok()
    }

    /// `GET /metrics`, the Prometheus text.
    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("the server answers")
            .text()
            .await
            .expect("the metrics are text")
    }
}

/// The service URLs a cluster needs: `(redis, postgres)`, from
/// `CS_TEST_REDIS_URL` and `CS_TEST_POSTGRES_URL`. `None` (after a notice)
/// when one is unset, so the test returns and counts as skipped; a panic
/// instead when `CS_REQUIRE_SERVICES=1`.
pub fn cluster_services() -> Option<(String, String)> {
    let redis = cs_core::testing::service_url("CS_TEST_REDIS_URL")?;
    let postgres = cs_core::testing::service_url("CS_TEST_POSTGRES_URL")?;
    Some((redis, postgres))
}

/// Nodes of one cluster, each a `chat_server` process on its own port. The
/// cluster has a Redis prefix and a tenant of its own, so tests running at
/// the same time share neither routing state nor conversations.
pub struct Cluster {
    /// The nodes in the order they were started; `nodes[0]` is "n1".
    pub nodes: Vec<Server>,
    /// The `--cluster` prefix.
    pub prefix: String,
    /// The `--tenant`.
    pub tenant: String,
    /// The flags every node gets.
    flags: Vec<String>,
}

impl Cluster {
    /// A cluster of no nodes yet: every node added gets `--bus redis`,
    /// `--database postgres`, the prefix, the tenant and `extra`.
    pub fn new(redis: &str, postgres: &str, extra: &[&str]) -> Cluster {
        let unique = format!("{}-{}", std::process::id(), uuid_like());
        let prefix = format!("cstest-{unique}");
        let tenant = format!("cluster-{unique}");
        let mut flags: Vec<String> = [
            "--bus",
            redis,
            "--database",
            postgres,
            "--cluster",
            &prefix,
            "--tenant",
            &tenant,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        flags.extend(extra.iter().map(|s| (*s).to_owned()));
        Cluster {
            nodes: Vec::new(),
            prefix,
            tenant,
            flags,
        }
    }

    /// A cluster of `n` nodes, started at the same time.
    pub async fn start(redis: &str, postgres: &str, n: usize, extra: &[&str]) -> Cluster {
        let mut cluster = Cluster::new(redis, postgres, extra);
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let starting = names.iter().map(|name| cluster.launch(name));
        cluster.nodes = futures::future::join_all(starting).await;
        cluster
    }

    /// Starts the next node ("n1", "n2", …); answers its index in `nodes`.
    pub async fn add_node(&mut self) -> usize {
        let name = format!("n{}", self.nodes.len() + 1);
        let node = self.launch(&name).await;
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn launch(&self, name: &str) -> impl std::future::Future<Output = Server> + 'static {
        let mut args = self.flags.clone();
        args.extend(["--node-id".to_owned(), name.to_owned()]);
        let name = name.to_owned();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Server::start_node(&name, &args).await
        }
    }

    /// The node id of `nodes[index]`.
    pub fn name(index: usize) -> String {
        format!("n{}", index + 1)
    }

    /// Waits until the nodes `among` agree: one of them routes, and each
    /// names it as the router. Answers its index in `nodes`.
    pub async fn router(&self, among: &[usize]) -> usize {
        eventually("the nodes agree on one routing node", WAIT, async || {
            let mut healths = Vec::new();
            for &index in among {
                healths.push((Cluster::name(index), self.nodes[index].health().await));
            }
            let routing: Vec<usize> = among
                .iter()
                .zip(&healths)
                .filter(|(_, (_, health))| {
                    health
                        .as_ref()
                        .is_some_and(|h| h["routing"] == true && h["status"] == "ok")
                })
                .map(|(&index, _)| index)
                .collect();
            match routing[..] {
                [router]
                    if healths.iter().all(|(_, health)| {
                        health
                            .as_ref()
                            .is_some_and(|h| h["router"] == Cluster::name(router).as_str())
                    }) =>
                {
                    Ok(router)
                }
                _ => Err(format!("{healths:?}")),
            }
        })
        .await
    }
}

/// Calls `probe` until it answers `Ok`, every 100 ms, for at most `limit`;
/// then panics, saying `what` was awaited and the last `Err` (what was seen).
pub async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = std::time::Instant::now();
    loop {
        match probe().await {
            Ok(found) => return found,
            Err(seen) if started.elapsed() > limit => {
                panic!("waited {limit:?} for {what}; last saw {seen}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The HTTP API of one server, with a token where one is given.
pub struct Http {
    pub base: String,
    /// For requests the helpers do not cover (uploads, raw bodies).
    pub client: reqwest::Client,
}

impl Http {
    pub fn new(server: &Server) -> Self {
        Http {
            base: server.base.clone(),
            client: reqwest::Client::builder()
                .timeout(WAIT)
                .build()
                .expect("an HTTP client"),
        }
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut request = self.client.post(format!("{}{path}", self.base)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A new visitor: (token, visitor id, conversation id).
    pub async fn visitor(&self) -> (String, String, String) {
        let (status, session) = self.post("/api/visitor/session", None, json!({})).await;
        assert_eq!(status, 200, "{session}");
        let token = session["token"].as_str().unwrap().to_owned();
        let (status, open) = self
            .post("/api/visitor/conversation", Some(&token), json!({}))
            .await;
        assert_eq!(status, 200, "{open}");
        assert_eq!(open["conversation"]["state"], "bot");
        (
            token,
            session["visitor"].as_str().unwrap().to_owned(),
            open["conversation"]["id"].as_str().unwrap().to_owned(),
        )
    }

    /// A demo agent's token.
    /// The agent chooses `presence` (online or away) in the console.
    pub async fn choose_presence(&self, token: &str, presence: &str) {
        let (status, answer) = self
            .post(
                "/api/agent/presence",
                Some(token),
                json!({ "presence": presence }),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
    }

    pub async fn agent(&self, id: &str) -> String {
        let (status, login) = self
            .post(
                "/api/agent/login",
                None,
                json!({ "agent": id, "password": "demo" }),
            )
            .await;
        assert_eq!(status, 200, "{login}");
        login["token"].as_str().unwrap().to_owned()
    }

    /// The desk as this node sees it (`agents`, `chats`); `Err` with the
    /// status and body unless it answers 200.
    pub async fn desk(&self, token: &str) -> Result<Value, String> {
        match self.get("/api/agent/desk", Some(token)).await {
            (200, desk) => Ok(desk),
            (status, body) => Err(format!("{status} {body}")),
        }
    }

    /// `conversation` as the desk lists it, or what was seen instead.
    pub async fn chat(&self, token: &str, conversation: &str) -> Result<Value, String> {
        let desk = self.desk(token).await?;
        desk["chats"]
            .as_array()
            .and_then(|chats| chats.iter().find(|c| c["id"] == conversation))
            .cloned()
            .ok_or_else(|| format!("{conversation} is not on the desk: {desk}"))
    }
}

/// A WebSocket client that waits for the frame a test expects. It reads its
/// socket all the time (so a test may send without reading) and keeps every
/// `message` frame it has taken, to check seqs for gaps and duplicates.
pub struct Client {
    sink: SplitSink<WebSocketStream<MaybeTlsStream<TcpStream>>, WsMessage>,
    frames: mpsc::UnboundedReceiver<Value>,
    reader: tokio::task::JoinHandle<()>,
    /// Prefix of its client_msg_ids, unique per client.
    name: String,
    counter: u32,
    /// Every `message` frame taken so far (by `expect` or `drain`), in order.
    pub messages: Vec<Value>,
}

impl Client {
    pub async fn connect(server: &Server, path: &str, token: &str) -> Client {
        let url = format!("ws://{}{path}?token={token}", server.host);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("the socket opens in time")
            .expect("the socket opens");
        let (sink, mut stream) = ws.split();
        let (tx, frames) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                if let WsMessage::Text(text) = message {
                    let frame: Value = serde_json::from_str(&text).expect("frames are JSON");
                    if tx.send(frame).is_err() {
                        break;
                    }
                }
            }
        });
        let mut client = Client {
            sink,
            frames,
            reader,
            name: format!(
                "{}{}",
                token.chars().rev().take(12).collect::<String>(),
                uuid_like()
            ),
            counter: 0,
            messages: Vec::new(),
        };
        client.expect(|f| f["type"] == "welcome").await;
        client
    }

    pub async fn send_frame(&mut self, frame: Value) {
        self.sink
            .send(WsMessage::text(frame.to_string()))
            .await
            .expect("the frame is sent");
    }

    pub async fn resume(&mut self, conversation: &str, last_seq: u64) {
        self.send_frame(
            json!({ "type": "resume", "conversation": conversation, "last_seq": last_seq }),
        )
        .await;
    }

    /// Resumes from `last_seq` and waits until the replay is complete.
    pub async fn resume_and_wait(&mut self, conversation: &str, last_seq: u64) {
        self.resume(conversation, last_seq).await;
        let replayed = self
            .expect(|f| f["type"] == "replayed" && f["conversation"] == conversation)
            .await;
        assert_eq!(replayed["complete"], true, "{replayed}");
    }

    /// Sends text; answers its client_msg_id.
    pub async fn say(&mut self, conversation: &str, text: &str) -> String {
        self.counter += 1;
        let id = format!("{}-{}", self.name, self.counter);
        self.send_frame(json!({
            "type": "send", "conversation": conversation, "client_msg_id": id,
            "body": { "type": "text", "text": text }
        }))
        .await;
        id
    }

    /// Closes the socket as a browser tab would.
    pub async fn close(mut self) {
        let _ = self.sink.send(WsMessage::Close(None)).await;
        let _ = self.sink.close().await;
        // The server answers the close and ends the stream.
        let _ =
            tokio::time::timeout(WAIT, async { while self.frames.recv().await.is_some() {} }).await;
    }

    fn keep(&mut self, frame: &Value) {
        if frame["type"] == "message" {
            self.messages.push(frame.clone());
        }
    }

    /// The next frame matching `want`, skipping others; panics after `WAIT`
    /// or when the socket ends.
    pub async fn expect(&mut self, want: impl Fn(&Value) -> bool) -> Value {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(WAIT, async {
            while let Some(frame) = self.frames.recv().await {
                self.keep(&frame);
                if want(&frame) {
                    return Some(frame);
                }
                seen.push(frame);
            }
            None
        })
        .await;
        match found {
            Ok(Some(frame)) => frame,
            Ok(None) => panic!("the socket ended before the expected frame; saw {seen:#?}"),
            Err(_) => panic!("the expected frame did not come within {WAIT:?}; saw {seen:#?}"),
        }
    }

    /// Every frame that arrives within `quiet` of the previous one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = tokio::time::timeout(quiet, self.frames.recv()).await {
            self.keep(&frame);
            frames.push(frame);
        }
        frames
    }

    /// Reads until it has taken a message of `conversation` with `seq` or
    /// a later one (at once if it has already).
    pub async fn read_through(&mut self, conversation: &str, seq: u64) {
        if self.last_seq(conversation) >= seq {
            return;
        }
        self.expect(|f| {
            f["type"] == "message"
                && f["message"]["conversation"] == conversation
                && f["message"]["seq"].as_u64().is_some_and(|s| s >= seq)
        })
        .await;
    }

    /// The seqs of the `message` frames taken so far in `conversation`.
    pub fn seqs(&self, conversation: &str) -> Vec<u64> {
        self.messages
            .iter()
            .filter(|f| f["message"]["conversation"] == conversation)
            .map(|f| f["message"]["seq"].as_u64().expect("a message has a seq"))
            .collect()
    }

    /// The highest seq taken so far in `conversation` (0 for none).
    pub fn last_seq(&self, conversation: &str) -> u64 {
        self.seqs(conversation).into_iter().max().unwrap_or(0)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

pub fn is_message_from(frame: &Value, kind: &str) -> bool {
    frame["type"] == "message" && frame["message"]["sender"]["kind"] == kind
}

pub fn is_event(frame: &Value, event: &str) -> bool {
    frame["type"] == "message" && frame["message"]["body"]["event"] == event
}

pub fn text_of(frame: &Value) -> &str {
    frame["message"]["body"]["text"]
        .as_str()
        .unwrap_or_default()
}

/// The value of the unlabelled Prometheus counter or gauge `name` in
/// `metrics`, if it is there.
pub fn metric(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .find_map(|value| value.trim().parse().ok())
}

/// Whether `seqs` are `first..=last` each once, in order.
pub fn contiguous(seqs: &[u64], first: u64, last: u64) -> bool {
    seqs == (first..=last).collect::<Vec<_>>()
}

/// The messages a fresh visitor socket on `server` replays from 0: what
/// the store holds, in order.
pub async fn stored(server: &Server, token: &str, conversation: &str) -> Vec<Value> {
    let mut reader = Client::connect(server, "/ws/visitor", token).await;
    reader.resume_and_wait(conversation, 0).await;
    reader.messages.clone()
}
