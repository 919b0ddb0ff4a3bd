//! `--chat-server http://HOST:PORT`: the product's own path, as shoppers
//! and agents take it. Each visitor opens a session and a conversation
//! through the HTTP API, with a real token, joins its conversation on
//! `/ws/visitor`, and asks questions taken from the demo FAQ's examples;
//! the bot answers each one. With `--handoff-share`, that share of the
//! visitors first asks for a person, and the demo agents (signed in with
//! their password, on `/ws/agent`) answer every question of theirs.
//!
//! The latency is question sent → answer received, on the visitor's own
//! socket, matched in order per visitor (the bot and the agents answer a
//! conversation's questions in order). A refusal (`overloaded`,
//! `rate_limited`, `unavailable`) is retried with the same `client_msg_id`
//! after the `retry_after_ms` it names, as the widget does. The client
//! sockets keep the default TCP settings (Nagle and delayed ACK on), like a
//! browser's.
//!
//! The server must lift its per-address limits, since every visitor comes
//! from this one machine: `chat_server --loadgen`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

use super::BoxError;

/// The bundled FAQ, for questions the bot answers.
const FAQ: &str = include_str!("../chat_server/faq.json");

/// What asks a demo agent in: the FAQ's hand-off intent.
const ASK_FOR_A_PERSON: &str = "talk to a person";

/// The demo agents and their password.
const AGENTS: [&str; 3] = ["alice", "bob", "carol"];
const AGENT_PASSWORD: &str = "demo";

/// How long answers still due are awaited after the sending stops.
const GRACE: Duration = Duration::from_secs(10);

/// The run's settings.
pub struct Plan {
    /// `http://HOST:PORT`.
    pub base: String,
    pub visitors: usize,
    /// Questions per second, across all visitors.
    pub rate: u64,
    pub duration: Duration,
    /// The share of visitors (0 to 1) served by agents instead of the bot.
    pub handoff_share: f64,
}

/// The last line's fields.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub visitors: usize,
    pub handoff_visitors: usize,
    pub questions: u64,
    pub answered: u64,
    pub questions_per_sec: f64,
    pub answer_p50_ms: f64,
    pub answer_p99_ms: f64,
    pub answer_p999_ms: f64,
    pub refused: u64,
    pub retried: u64,
    pub lost: u64,
    pub stored_msgs_per_sec: f64,
}

/// Counters every task adds to.
#[derive(Default)]
struct Tally {
    questions: AtomicU64,
    answered: AtomicU64,
    refused: AtomicU64,
    retried: AtomicU64,
    lost: AtomicU64,
    /// When the last answer came, in µs after the first question.
    last_answer_us: AtomicU64,
}

/// Runs the plan and reports.
pub async fn run(plan: Plan) -> Result<Report, BoxError> {
    if plan.visitors == 0 || plan.rate == 0 {
        return Err("--visitors and --rate must be above 0".into());
    }
    let base = plan.base.trim_end_matches('/').to_owned();
    let host = base
        .strip_prefix("http://")
        .ok_or("--chat-server must be http://HOST:PORT")?
        .to_owned();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let questions = bot_questions()?;
    let handoff_visitors =
        (plan.visitors as f64 * plan.handoff_share.clamp(0.0, 1.0)).round() as usize;

    // Agents first, so the hand-offs find someone online.
    let stop = CancellationToken::new();
    let mut agents = Vec::new();
    if handoff_visitors > 0 {
        for agent in AGENTS {
            agents.push(tokio::spawn(run_agent(
                http.clone(),
                base.clone(),
                host.clone(),
                agent,
                stop.clone(),
            )));
        }
    }

    eprintln!(
        "opening {} visitors on {base} ({handoff_visitors} of them for the agents)",
        plan.visitors
    );
    let tally = Arc::new(Tally::default());
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new(3)?));
    let interval = Duration::from_secs_f64(plan.visitors as f64 / plan.rate as f64);
    // A token, not a `Notify`: `notify_waiters` wakes only the tasks already
    // waiting, and a visitor that has just said it is ready may not be yet
    // (it then waited for ever, and the run with it).
    let start_at = CancellationToken::new();
    // Set when the questions start, for `last_answer_us`.
    let epoch: Arc<std::sync::OnceLock<Instant>> = Arc::default();
    let mut visitors = Vec::new();
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(plan.visitors);
    // Sessions open a few at a time: a thousand at once would measure the
    // connect storm, not the chat.
    let opening = Arc::new(tokio::sync::Semaphore::new(32));
    for n in 0..plan.visitors {
        let visitor = Visitor {
            n,
            handoff: n < handoff_visitors,
            http: http.clone(),
            base: base.clone(),
            host: host.clone(),
            questions: Arc::clone(&questions),
            interval,
            duration: plan.duration,
            epoch: Arc::clone(&epoch),
            tally: Arc::clone(&tally),
            latencies: Arc::clone(&latencies),
        };
        let (start_at, ready_tx, opening) =
            (start_at.clone(), ready_tx.clone(), Arc::clone(&opening));
        visitors.push(tokio::spawn(async move {
            let permit = opening.acquire_owned().await;
            let joined = visitor.join().await;
            drop(permit);
            let joined = match joined {
                Ok(joined) => {
                    let _ = ready_tx.send(Ok(())).await;
                    joined
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string())).await;
                    return;
                }
            };
            start_at.cancelled().await;
            visitor.chat(joined).await;
        }));
    }
    drop(ready_tx);
    for opened in 0..plan.visitors {
        match ready_rx.recv().await {
            Some(Ok(())) => {
                if (opened + 1) % 500 == 0 {
                    eprintln!("  {} visitors in", opened + 1);
                }
            }
            Some(Err(e)) => return Err(format!("a visitor could not join: {e}").into()),
            None => return Err("the visitors' tasks ended early".into()),
        }
    }
    eprintln!(
        "asking {} questions/s for {} s",
        plan.rate,
        plan.duration.as_secs()
    );
    let _ = epoch.set(Instant::now());
    start_at.cancel();
    let progress = tokio::spawn({
        let tally = Arc::clone(&tally);
        let stop = stop.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            let mut last = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {
                        let answered = tally.answered.load(Ordering::Relaxed);
                        eprintln!("  {} answered/s, {} refused so far", answered - last,
                            tally.refused.load(Ordering::Relaxed));
                        last = answered;
                    }
                }
            }
        }
    });
    for visitor in visitors {
        let _ = visitor.await;
    }
    stop.cancel();
    let _ = progress.await;
    for agent in agents {
        let _ = agent.await;
    }

    let histogram = latencies.lock().map_err(|_| "a visitor task panicked")?;
    let answered = tally.answered.load(Ordering::Relaxed);
    // Answers per second over the time they took to come: the sending
    // window, or longer when the answers lagged behind it.
    let last_answer = Duration::from_micros(tally.last_answer_us.load(Ordering::Relaxed));
    let window = plan.duration.max(last_answer).as_secs_f64();
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    Ok(Report {
        visitors: plan.visitors,
        handoff_visitors,
        questions: tally.questions.load(Ordering::Relaxed),
        answered,
        questions_per_sec: answered as f64 / window,
        answer_p50_ms: ms(0.5),
        answer_p99_ms: ms(0.99),
        answer_p999_ms: ms(0.999),
        refused: tally.refused.load(Ordering::Relaxed),
        retried: tally.retried.load(Ordering::Relaxed),
        lost: tally.lost.load(Ordering::Relaxed),
        // Each answered question is two stored messages: it, and its answer.
        stored_msgs_per_sec: 2.0 * answered as f64 / window,
    })
}

/// The examples of every intent the bot answers itself (not the greeting,
/// the thanks or the hand-off), for questions it knows.
fn bot_questions() -> Result<Arc<Vec<String>>, BoxError> {
    let faq: Value = serde_json::from_str(FAQ)?;
    let skip = ["greeting", "thanks"];
    let questions: Vec<String> = faq["intents"]
        .as_array()
        .ok_or("the FAQ has no intents")?
        .iter()
        .filter(|intent| intent["action"] == "answer")
        .filter(|intent| !skip.contains(&intent["intent"].as_str().unwrap_or("")))
        .filter_map(|intent| intent["examples"].as_array())
        .flat_map(|examples| examples.iter().filter_map(|e| e.as_str()).take(5))
        .map(str::to_owned)
        .collect();
    if questions.is_empty() {
        return Err("the FAQ has no examples to ask".into());
    }
    Ok(Arc::new(questions))
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Visitor {
    n: usize,
    handoff: bool,
    http: reqwest::Client,
    base: String,
    host: String,
    questions: Arc<Vec<String>>,
    interval: Duration,
    duration: Duration,
    tally: Arc<Tally>,
    latencies: Arc<Mutex<Histogram<u64>>>,
    epoch: Arc<std::sync::OnceLock<Instant>>,
}

/// A visitor in its conversation, ready to ask.
struct Joined {
    socket: Socket,
    conversation: String,
}

impl Visitor {
    /// A session, a conversation and a socket joined to it, through the
    /// same calls the widget makes; a hand-off visitor also asks for a
    /// person and waits until an agent has it.
    async fn join(&self) -> Result<Joined, BoxError> {
        let session: Value = post(
            &self.http,
            &format!("{}/api/visitor/session", self.base),
            None,
            json!({}),
        )
        .await?;
        let token = session["token"]
            .as_str()
            .ok_or("no token in the session")?
            .to_owned();
        let open: Value = post(
            &self.http,
            &format!("{}/api/visitor/conversation", self.base),
            Some(&token),
            json!({}),
        )
        .await?;
        let conversation = open["conversation"]["id"]
            .as_str()
            .ok_or("no conversation id")?
            .to_owned();
        let url = format!("ws://{}/ws/visitor?token={token}", self.host);
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await?;
        send(
            &mut socket,
            json!({ "type": "resume", "conversation": conversation, "last_seq": 0 }),
        )
        .await?;
        wait_for(&mut socket, |f| {
            f["type"] == "replayed" && f["complete"] == true
        })
        .await?;
        if self.handoff {
            let id = format!("h-{}", self.n);
            send(&mut socket, question(&conversation, &id, ASK_FOR_A_PERSON)).await?;
            wait_for(&mut socket, |f| {
                f["type"] == "message" && f["message"]["body"]["event"] == "assigned"
            })
            .await
            .map_err(|e| {
                format!("visitor {} asked for a person and no agent took it ({e}); the three demo agents serve --agent-capacity conversations each: raise it on the server", self.n)
            })?;
        }
        Ok(Joined {
            socket,
            conversation,
        })
    }

    /// Asks one question every `interval` for `duration`, retrying
    /// refusals, then waits up to `GRACE` for the answers still due.
    async fn chat(&self, joined: Joined) {
        let Joined {
            socket,
            conversation,
        } = joined;
        let (mut sink, mut stream) = socket.split();
        let answerer = if self.handoff { "agent" } else { "bot" };
        // Sent and not yet answered, oldest first: (client_msg_id, sent at).
        let mut due: VecDeque<(String, Instant)> = VecDeque::new();
        let mut histogram = Histogram::<u64>::new(3).ok();
        // Spread the visitors' first questions over one interval.
        let offset = self.interval.mul_f64((self.n % 1000) as f64 / 1000.0);
        let started = Instant::now() + offset;
        let mut next = started;
        let mut asked = 0u64;
        let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<Value>();
        let deadline = started + self.duration;
        loop {
            let sending = Instant::now() < deadline;
            if !sending && due.is_empty() {
                break;
            }
            if !sending && Instant::now() > deadline + GRACE {
                break;
            }
            let wake = if sending { next } else { deadline + GRACE };
            tokio::select! {
                _ = tokio::time::sleep_until(wake.into()) => {
                    if !sending {
                        continue;
                    }
                    asked += 1;
                    let id = format!("q-{}-{asked}", self.n);
                    let text = &self.questions[(self.n + asked as usize) % self.questions.len()];
                    due.push_back((id.clone(), Instant::now()));
                    self.tally.questions.fetch_add(1, Ordering::Relaxed);
                    if sink.send(WsMessage::text(question(&conversation, &id, text).to_string())).await.is_err() {
                        break;
                    }
                    next += self.interval;
                }
                Some(frame) = retry_rx.recv() => {
                    self.tally.retried.fetch_add(1, Ordering::Relaxed);
                    if sink.send(WsMessage::text(frame.to_string())).await.is_err() {
                        break;
                    }
                }
                frame = stream.next() => {
                    let Some(Ok(WsMessage::Text(text))) = frame else {
                        if matches!(frame, Some(Ok(_))) { continue; }
                        break;
                    };
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
                    if frame["type"] == "message"
                        && frame["message"]["conversation"] == conversation.as_str()
                        && frame["message"]["sender"]["kind"] == answerer
                        && frame["message"]["body"]["type"] == "text"
                    {
                        if let Some((_, sent)) = due.pop_front() {
                            self.tally.answered.fetch_add(1, Ordering::Relaxed);
                            if let Some(epoch) = self.epoch.get() {
                                let at = epoch.elapsed().as_micros() as u64;
                                self.tally.last_answer_us.fetch_max(at, Ordering::Relaxed);
                            }
                            if let Some(h) = histogram.as_mut() {
                                let _ = h.record(sent.elapsed().as_micros() as u64);
                            }
                        }
                    } else if frame["type"] == "error" {
                        let retryable = ["overloaded", "rate_limited", "unavailable"]
                            .contains(&frame["code"].as_str().unwrap_or(""));
                        let id = frame["client_msg_id"].as_str().unwrap_or("").to_owned();
                        let pending = due.iter().any(|(d, _)| *d == id);
                        if retryable && pending {
                            self.tally.refused.fetch_add(1, Ordering::Relaxed);
                            let wait = frame["retry_after_ms"].as_u64().unwrap_or(100).clamp(1, 5000);
                            let text = &self.questions[(self.n + id_number(&id)) % self.questions.len()];
                            let again = question(&conversation, &id, text);
                            let retry_tx = retry_tx.clone();
                            tokio::spawn(async move {
                                tokio::time::sleep(Duration::from_millis(wait)).await;
                                let _ = retry_tx.send(again);
                            });
                        } else if pending {
                            // Refused for good: it will never be answered.
                            due.retain(|(d, _)| *d != id);
                            self.tally.lost.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
        self.tally
            .lost
            .fetch_add(due.len() as u64, Ordering::Relaxed);
        if let (Some(local), Ok(mut all)) = (histogram, self.latencies.lock()) {
            let _ = all.add(&local);
        }
        let _ = sink.send(WsMessage::Close(None)).await;
    }
}

/// The number at the end of `q-N-M`, so a retry asks the same words.
fn id_number(id: &str) -> usize {
    id.rsplit('-')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn question(conversation: &str, id: &str, text: &str) -> Value {
    json!({
        "type": "send", "conversation": conversation, "client_msg_id": id,
        "body": { "type": "text", "text": text }
    })
}

/// A demo agent: signs in, goes online, and answers every visitor message
/// in the conversations it is given, until `stop`.
async fn run_agent(
    http: reqwest::Client,
    base: String,
    host: String,
    agent: &'static str,
    stop: CancellationToken,
) -> Result<(), BoxError> {
    let login: Value = post(
        &http,
        &format!("{base}/api/agent/login"),
        None,
        json!({ "agent": agent, "password": AGENT_PASSWORD }),
    )
    .await?;
    let token = login["token"].as_str().ok_or("no agent token")?.to_owned();
    let url = format!("ws://{host}/ws/agent?token={token}");
    let (socket, _) = tokio_tungstenite::connect_async(url).await?;
    post(
        &http,
        &format!("{base}/api/agent/presence"),
        Some(&token),
        json!({ "presence": "online" }),
    )
    .await?;
    let (mut sink, mut stream) = socket.split();
    let mut replies = 0u64;
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => break,
            frame = stream.next() => frame,
        };
        let Some(Ok(WsMessage::Text(text))) = frame else {
            if matches!(frame, Some(Ok(_))) {
                continue;
            }
            break;
        };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if frame["type"] == "message"
            && frame["message"]["sender"]["kind"] == "visitor"
            && frame["message"]["body"]["type"] == "text"
            && frame["message"]["body"]["text"] != ASK_FOR_A_PERSON
        {
            replies += 1;
            let reply = json!({
                "type": "send",
                "conversation": frame["message"]["conversation"],
                "client_msg_id": format!("{agent}-{replies}"),
                "body": { "type": "text", "text": "Thanks, let me check that for you." }
            });
            if sink.send(WsMessage::text(reply.to_string())).await.is_err() {
                break;
            }
        }
    }
    Ok(())
}

async fn post(
    http: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: Value,
) -> Result<Value, BoxError> {
    let mut request = http.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("POST {url}: {status} {body}").into());
    }
    Ok(body)
}

async fn send(socket: &mut Socket, frame: Value) -> Result<(), BoxError> {
    socket.send(WsMessage::text(frame.to_string())).await?;
    Ok(())
}

/// Reads frames until one matches, for up to 30 s.
async fn wait_for(socket: &mut Socket, want: impl Fn(&Value) -> bool) -> Result<Value, BoxError> {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(message) = socket.next().await {
            if let WsMessage::Text(text) = message? {
                let frame: Value = serde_json::from_str(&text)?;
                if want(&frame) {
                    return Ok(frame);
                }
            }
        }
        Err("the socket closed".into())
    })
    .await
    .map_err(|_| BoxError::from("no answer within 30 s"))?
}
