//! The storage benchmark: bulk-load N messages, then time the reads a chat
//! server makes and the reports a manager opens.
//!
//! ```sh
//! cargo run --release --example store_bench -- --store sqlite --messages 1000000
//! cargo run --release --example store_bench -- --store postgres|mysql|redis --messages N
//! ```
//!
//! What it does, in order (progress on stderr, results on stdout):
//!
//! 1. creates N/100 conversations of one tenant, spread over the last 90 days;
//! 2. loads 100 messages into each, 1,000 messages per `append_all`
//!    (10 conversations × 100), reporting the load rate. Four in ten of the
//!    conversations are handed off by the bot after nine messages (a
//!    `Handoff` event, then an `Assigned` one after a wait of 20 s to 10 min)
//!    and go on with one of ten agents; one in twenty is transferred to
//!    another agent halfway; the rest stay with the bot;
//! 3. times `recent(50)` of a random conversation, a page of 50 by seq
//!    (`range`), a resume (`after` a random seq, up to 100) and the 30-day
//!    `daily_stats` report, with hdrhistogram percentiles;
//! 4. the day measures (`cs_core::store::reports`): closes every
//!    conversation (`save_conversation`, 16 at once), which folds its log
//!    into the report counters of its close day, and rates one in three
//!    (an `Event::Rating` each, appended in batches of 1,000); then times
//!    the 90-day report a supervisor opens: the store's counters of 90 days
//!    (`report_counts`), summed into the desk's and each agent's figures
//!    (`cs::desk::reports::build_report`) and written as JSON, as
//!    `GET api/agent/reports` does. It checks the totals against what was
//!    generated;
//! 5. times batched appends to a loaded store: batches of 1,000 messages to
//!    50 random conversations (20 each);
//! 6. times single appends, as a chat server makes them: first one caller
//!    appending one message at a time, then 64 callers at once (one per
//!    conversation), which the SQL stores commit together (group commit).
//!
//! The last line of stdout is one JSON object with at least `store, messages,
//! load_msgs_per_sec, recent50_p50_ms, recent50_p99_ms, resume_p99_ms,
//! stats30d_ms, append_msgs_per_sec, report90d_p50_ms, report90d_p99_ms`
//! (other tooling reads it: keep the names), and `report_counters` (whether
//! the store kept them). With `--cache`, it also has `cache` (`"redis"`) and
//! the cache's counters `cache_hits, cache_misses, cache_redis_errors`. The
//! Redis store alone keeps no report counters: its line has no `report90d_*`.
//!
//! Flags: `--store`, `--messages` (default 100,000), `--url` (server stores;
//! default the CS_TEST_* variable, then the local default), `--path` (SQLite
//! file; default a fresh file in the temp dir), `--samples` (default 2,000),
//! `--keep` (leave the data instead of deleting it), `--sqlite-sync full|normal`
//! (SQLite's [`Durability`]: `full`, the default, syncs every commit; `normal`
//! survives a process crash but not a power cut), `--cache redis://…` (put a
//! [`TieredStore`] with that Redis in front of the SQL store; its windows
//! live under the key prefix `cs_bench_<unix seconds>:hot:`),
//! `--no-report-counters` (the SQL store keeps no report counters
//! (`set_report_counters(false)`), the baseline that shows what keeping them
//! costs every write; step 4 still closes and rates, but there is no report
//! to time).
//!
//! Every run writes into a fresh SQLite file, PostgreSQL schema, MariaDB
//! database or Redis key prefix named `cs_bench_<unix seconds>`, removed at
//! the end unless `--keep`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use cs::core::store::{ReportDay, ReportStore, ReportZone};
use cs::core::{
    AgentId, Body, Conversation, ConversationId, Event, Message, NewMessage, Party, Seq, TenantId,
    Timestamp, VisitorId,
};
use cs::datahub::store::{
    Day, Durability, MessageStoreExt, MySqlStore, PostgresStore, RedisStore, SqliteStore,
    TieredConfig, TieredStore,
};
use cs::desk::reports::{build_report, ReportScope};
use futures::StreamExt as _;
use hdrhistogram::Histogram;

const MESSAGES_PER_CONVERSATION: u64 = 100;
const LOAD_BATCH_CONVERSATIONS: usize = 10;
const APPEND_BATCH: usize = 1_000;
const APPEND_BATCH_CONVERSATIONS: usize = 50;
/// Callers appending at once in step 5: a chat server's dispatcher shards.
const CONCURRENT_APPENDERS: usize = 64;
/// Days the conversations are spread over, and the report's range.
const DAYS: u64 = 90;
/// Agents who take the handed-off conversations.
const AGENTS: u64 = 10;
/// The message after which the bot hands a conversation off.
const HANDOFF_AT: u64 = 9;
/// Where a transferred conversation changes agents.
const TRANSFER_AT: u64 = 50;
/// Seconds between two messages of a conversation.
const MESSAGE_GAP_SECS: u64 = 20;
/// Closes saved at once in step 4.
const CONCURRENT_CLOSES: usize = 16;
/// 90-day reports timed in step 4.
const REPORT_SAMPLES: usize = 200;

#[derive(Clone, Debug)]
struct Args {
    store: String,
    messages: u64,
    url: Option<String>,
    path: Option<String>,
    samples: usize,
    keep: bool,
    durability: Durability,
    cache: Option<String>,
    report_counters: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        store: String::new(),
        messages: 100_000,
        url: None,
        path: None,
        samples: 2_000,
        keep: false,
        durability: Durability::PowerLoss,
        cache: None,
        report_counters: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--store" => args.store = value()?,
            "--messages" => {
                let v = value()?.replace(['_', ','], "");
                args.messages = v.parse().map_err(|e| format!("--messages {v}: {e}"))?;
            }
            "--url" => args.url = Some(value()?),
            "--path" => args.path = Some(value()?),
            "--samples" => {
                let v = value()?;
                args.samples = v.parse().map_err(|e| format!("--samples {v}: {e}"))?;
            }
            "--keep" => args.keep = true,
            "--sqlite-sync" => {
                args.durability = match value()?.as_str() {
                    "full" => Durability::PowerLoss,
                    "normal" => Durability::ProcessCrash,
                    other => return Err(format!("--sqlite-sync {other}: use full or normal")),
                }
            }
            "--cache" => args.cache = Some(value()?),
            "--no-report-counters" => args.report_counters = false,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !["sqlite", "postgres", "mysql", "redis"].contains(&args.store.as_str()) {
        return Err("--store must be sqlite, postgres, mysql or redis".into());
    }
    if args.cache.is_some() && args.store == "redis" {
        return Err(
            "--cache puts Redis in front of a SQL store; use it with sqlite, postgres or mysql"
                .into(),
        );
    }
    if !args.report_counters && args.store == "redis" {
        return Err("--no-report-counters is for the SQL stores (Redis keeps none)".into());
    }
    if args.messages < MESSAGES_PER_CONVERSATION || args.samples == 0 {
        return Err(format!(
            "--messages must be at least {MESSAGES_PER_CONVERSATION}, --samples at least 1"
        ));
    }
    Ok(args)
}

const USAGE: &str = "usage: store_bench --store sqlite|postgres|mysql|redis [--messages N] [--url URL] [--path FILE] [--samples N] [--keep] [--sqlite-sync full|normal] [--cache redis://HOST:PORT] [--no-report-counters]";

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("store_bench: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("store_bench: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn url_for(args: &Args, var: &str, default: &str) -> String {
    args.url
        .clone()
        .or_else(|| std::env::var(var).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| default.to_owned())
}

async fn run(args: Args) -> Result<(), BoxError> {
    let name = format!(
        "cs_bench_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    match args.store.as_str() {
        "sqlite" => {
            let path = args
                .path
                .clone()
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| std::env::temp_dir().join(format!("{name}.db")));
            eprintln!("sqlite file: {} ({:?})", path.display(), args.durability);
            let store = SqliteStore::open_with(&path, args.durability).await?;
            store.set_report_counters(args.report_counters);
            let result = bench_sql(&args, &store, &name).await;
            store.close().await;
            if !args.keep {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
            }
            result
        }
        "postgres" => {
            let url = url_for(
                &args,
                "CS_TEST_POSTGRES_URL",
                "postgres://postgres@127.0.0.1:5432/test",
            );
            eprintln!("postgres: {}, schema {name}", cs::datahub::redact_url(&url));
            let store = PostgresStore::connect_in_schema(&url, &name).await?;
            store.set_report_counters(args.report_counters);
            let result = bench_sql(&args, &store, &name).await;
            store.close().await;
            if !args.keep {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query(&format!("DROP SCHEMA \"{name}\" CASCADE"))
                    .execute(&mut conn)
                    .await?;
            }
            result
        }
        "mysql" => {
            let url = url_for(
                &args,
                "CS_TEST_MYSQL_URL",
                "mysql://root@127.0.0.1:3306/test",
            );
            eprintln!("mysql: {}, database {name}", cs::datahub::redact_url(&url));
            let store = MySqlStore::connect_in_database(&url, &name).await?;
            store.set_report_counters(args.report_counters);
            let result = bench_sql(&args, &store, &name).await;
            store.close().await;
            if !args.keep {
                use sqlx::Connection;
                let mut conn = sqlx::MySqlConnection::connect(&url).await?;
                sqlx::query(&format!("DROP DATABASE `{name}`"))
                    .execute(&mut conn)
                    .await?;
            }
            result
        }
        _ => {
            let url = url_for(&args, "CS_TEST_REDIS_URL", "redis://127.0.0.1:6379");
            let prefix = format!("{name}:");
            eprintln!("redis: {}, prefix {prefix}", cs::datahub::redact_url(&url));
            // A window larger than any conversation here, so every read is served.
            let store = RedisStore::connect(&url, &prefix, 1_000).await?;
            let result = bench(&args, &store).await.map(print_summary);
            if !args.keep {
                delete_redis_prefix(&url, &prefix).await?;
            }
            result
        }
    }
}

/// Benchmarks a SQL store, with the Redis cache in front if `--cache`, and
/// prints the summary.
async fn bench_sql<S: MessageStoreExt + ReportStore + Clone>(
    args: &Args,
    store: &S,
    name: &str,
) -> Result<(), BoxError> {
    let Some(url) = &args.cache else {
        return bench(args, store).await.map(print_summary);
    };
    let prefix = format!("{name}:hot:");
    eprintln!(
        "cache: redis at {}, prefix {prefix}",
        cs::datahub::redact_url(url)
    );
    let config = TieredConfig {
        prefix: prefix.clone(),
        ..TieredConfig::default()
    };
    let tiered = TieredStore::new(store.clone(), url, config)?;
    let result = bench(args, &tiered).await;
    if !args.keep {
        delete_redis_prefix(url, &prefix).await?;
    }
    let mut json = result?;
    let stats = tiered.stats();
    println!(
        "cache            redis: {} hits, {} misses, {} Redis errors",
        stats.hits, stats.misses, stats.redis_errors
    );
    json["cache"] = "redis".into();
    json["cache_hits"] = stats.hits.into();
    json["cache_misses"] = stats.misses.into();
    json["cache_redis_errors"] = stats.redis_errors.into();
    print_summary(json);
    Ok(())
}

/// The JSON summary: always the last line of stdout.
fn print_summary(json: serde_json::Value) {
    println!("{json}");
}

async fn delete_redis_prefix(url: &str, prefix: &str) -> Result<(), BoxError> {
    let mut conn = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let () = redis::cmd("UNLINK")
                .arg(&keys)
                .query_async(&mut conn)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// A small deterministic generator for picking conversations and seqs, so two
/// runs measure the same access pattern; no statistical quality is needed.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

const TEXTS: [&str; 6] = [
    "Hi, where is my order? It was supposed to arrive yesterday.",
    "Can I change the delivery address for order 88412?",
    "您好，我的快递到哪里了？",
    "The parcel left the warehouse this morning; here is the tracking link.",
    "I'd like to return the blue jacket, it's too small.",
    "Thanks, that solved it!",
];

fn message(conversation: ConversationId, i: u64, at: Timestamp) -> NewMessage {
    let sender = if i % 2 == 0 {
        Party::Visitor(VisitorId::new("bench-visitor").expect("a valid id"))
    } else {
        Party::Bot
    };
    let mut m = NewMessage::text(
        conversation,
        sender,
        TEXTS[(i % TEXTS.len() as u64) as usize],
    );
    m.created_at = at;
    m
}

/// What happens in conversation `i` of the run: the same for every run.
#[derive(Clone, Debug)]
struct Script {
    /// Handed off after [`HANDOFF_AT`] messages: why, to whom, and how
    /// much longer than one message gap the visitor waits for them.
    handoff: Option<(&'static str, AgentId, Duration)>,
    /// Transferred at [`TRANSFER_AT`] to this agent.
    transfer: Option<AgentId>,
    /// The visitor's rating at the close.
    rating: Option<u8>,
}

const RATING_SCORES: [u8; 10] = [5, 4, 5, 3, 4, 5, 2, 5, 4, 1];

fn agent(n: u64) -> AgentId {
    AgentId::new(format!("agent-{}", n % AGENTS)).expect("a valid id")
}

impl Script {
    fn of(i: u64) -> Script {
        let handoff = (i % 10 >= 6).then(|| {
            let reason = if i % 2 == 0 {
                "asked for a person"
            } else {
                "low confidence"
            };
            // Waits from 20 s to 10 min, spread by a multiplicative hash.
            let extra = Duration::from_secs(i.wrapping_mul(7_919) % 580);
            (reason, agent(i / 10), extra)
        });
        let transfer = (i % 20 == 6).then(|| agent(i / 10 + 1));
        let rating = (i % 3 == 0).then(|| RATING_SCORES[((i / 3) % 10) as usize]);
        Script {
            handoff,
            transfer,
            rating,
        }
    }

    /// When message `k` of a conversation that opened at `start` is sent.
    fn time(&self, start: Timestamp, k: u64) -> Timestamp {
        let mut at = start.saturating_add(Duration::from_secs(k * MESSAGE_GAP_SECS));
        if let Some((_, _, extra)) = &self.handoff {
            if k > HANDOFF_AT {
                at = at.saturating_add(*extra);
            }
        }
        at
    }

    /// Message `k` of the conversation.
    fn message(&self, conversation: ConversationId, start: Timestamp, k: u64) -> NewMessage {
        let at = self.time(start, k);
        let Some((reason, first, _)) = &self.handoff else {
            return message(conversation, k, at);
        };
        let holder = match &self.transfer {
            Some(to) if k > TRANSFER_AT => to.clone(),
            _ => first.clone(),
        };
        let (sender, body) = match k {
            k if k < HANDOFF_AT => return message(conversation, k, at),
            HANDOFF_AT => (
                Party::Bot,
                Body::Event(Event::Handoff {
                    reason: (*reason).to_owned(),
                }),
            ),
            k if k == HANDOFF_AT + 1 => (
                Party::System,
                Body::Event(Event::Assigned {
                    agent: first.clone(),
                }),
            ),
            TRANSFER_AT if self.transfer.is_some() => (
                Party::System,
                Body::Event(Event::Transfer {
                    from: first.clone(),
                    to: holder,
                }),
            ),
            k if k % 2 == 0 => return message(conversation, k, at),
            k => (
                Party::Agent(holder),
                Body::text(TEXTS[(k % TEXTS.len() as u64) as usize]),
            ),
        };
        let mut m = NewMessage::new(conversation, sender, body);
        m.created_at = at;
        m
    }

    /// `opened` moved through the states its messages tell, and closed a
    /// minute after its last message.
    fn closed(&self, mut opened: Conversation) -> Result<Conversation, BoxError> {
        let start = opened.created_at();
        opened.start_bot()?;
        if let Some((_, first, _)) = &self.handoff {
            opened.enqueue(self.time(start, HANDOFF_AT))?;
            opened.assign(first.clone())?;
            let k = HANDOFF_AT + 2;
            let answer = Message::from_new(self.message(opened.id(), start, k), Seq::new(k + 1));
            opened.record_message(&answer);
            if let Some(to) = &self.transfer {
                opened.transfer(to.clone())?;
            }
        }
        opened.observe_seq(Seq::new(MESSAGES_PER_CONVERSATION));
        let last = self.time(start, MESSAGES_PER_CONVERSATION - 1);
        opened.close(last.saturating_add(Duration::from_secs(60)))?;
        Ok(opened)
    }
}

struct Latency(Histogram<u64>);

impl Latency {
    fn new() -> Self {
        // Microseconds from 1 µs to 60 s, 3 significant digits.
        Self(Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"))
    }
    fn record(&mut self, took: Duration) {
        let micros = u64::try_from(took.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 60_000_000);
        // Clamped into the histogram's range above, so recording cannot fail.
        let _ = self.0.record(micros);
    }
    fn ms(&self, quantile: f64) -> f64 {
        self.0.value_at_quantile(quantile) as f64 / 1000.0
    }
}

/// Runs the benchmark, prints the results, and returns the JSON summary for
/// the caller to complete and print last.
async fn bench<S: MessageStoreExt + ReportStore>(
    args: &Args,
    store: &S,
) -> Result<serde_json::Value, BoxError> {
    let tenant = TenantId::new("bench-shop")?;
    let conversations = (args.messages / MESSAGES_PER_CONVERSATION) as usize;
    let messages = conversations as u64 * MESSAGES_PER_CONVERSATION;
    let today = Day::today();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);

    // 1. Conversations, one per visitor, spread over the last 90 days.
    eprintln!("creating {conversations} conversations over {DAYS} days");
    let started = Instant::now();
    let mut ids = Vec::with_capacity(conversations);
    let mut opened = Vec::with_capacity(conversations);
    for i in 0..conversations {
        let day = today.minus((i as u64 % DAYS) as i64);
        let at = day
            .start()
            .saturating_add(Duration::from_secs(i as u64 % 80_000));
        let c = Conversation::open(tenant.clone(), VisitorId::new(format!("visitor-{i}"))?, at);
        store.create_conversation(&c).await?;
        ids.push((c.id(), at));
        opened.push(c);
        if (i + 1) % (conversations / 10).max(1) == 0 {
            eprintln!("  {} / {conversations} conversations", i + 1);
        }
    }
    let create_secs = started.elapsed().as_secs_f64();

    // 2. Bulk load: 100 messages per conversation, 10 conversations per batch.
    eprintln!(
        "loading {messages} messages in batches of {}",
        LOAD_BATCH_CONVERSATIONS as u64 * MESSAGES_PER_CONVERSATION
    );
    let started = Instant::now();
    let mut loaded = 0u64;
    let mut next_report = messages / 20;
    for (g, group) in ids.chunks(LOAD_BATCH_CONVERSATIONS).enumerate() {
        let mut batch = Vec::with_capacity(group.len() * MESSAGES_PER_CONVERSATION as usize);
        for (j, &(id, at)) in group.iter().enumerate() {
            let script = Script::of((g * LOAD_BATCH_CONVERSATIONS + j) as u64);
            for k in 0..MESSAGES_PER_CONVERSATION {
                batch.push(script.message(id, at, k));
            }
        }
        loaded += batch.len() as u64;
        store.append_all(batch).await?;
        if loaded >= next_report {
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "  {loaded} / {messages} messages ({:.0}%), {:.0} msgs/s",
                100.0 * loaded as f64 / messages as f64,
                loaded as f64 / secs
            );
            next_report += messages / 20;
        }
    }
    let load_secs = started.elapsed().as_secs_f64();
    let load_rate = messages as f64 / load_secs;
    eprintln!("loaded in {load_secs:.1} s: {load_rate:.0} msgs/s");

    let pick = |rng: &mut XorShift| ids[rng.below(ids.len() as u64) as usize].0;

    // 3. Reads.
    eprintln!("timing {} reads of each kind", args.samples);
    let mut recent = Latency::new();
    let mut page = Latency::new();
    let mut resume = Latency::new();
    for _ in 0..args.samples {
        let id = pick(&mut rng);
        let t = Instant::now();
        let got = store.recent(id, 50).await?;
        recent.record(t.elapsed());
        check(
            got.len() == 50,
            "recent(50) returned fewer than 50 messages",
        )?;

        let id = pick(&mut rng);
        let end = 51 + rng.below(MESSAGES_PER_CONVERSATION - 50);
        let t = Instant::now();
        let got = store
            .range(id, Seq::new(end - 50), Seq::new(end - 1), 50)
            .await?;
        page.record(t.elapsed());
        check(got.len() == 50, "a page of 50 by seq came back short")?;

        let id = pick(&mut rng);
        let after = rng.below(MESSAGES_PER_CONVERSATION);
        let t = Instant::now();
        let got = store.after(id, Seq::new(after), 100).await?;
        resume.record(t.elapsed());
        check(
            got.len() as u64 == MESSAGES_PER_CONVERSATION - after,
            "a resume missed messages",
        )?;
    }
    let mut stats = Latency::new();
    let mut counted = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let days = store.daily_stats(&tenant, today.minus(29), today).await?;
        stats.record(t.elapsed());
        counted = days.iter().map(|d| d.messages).sum::<u64>();
    }
    // Every message and event of the conversations of the last 30 days.
    let expected_30d = (0..conversations as u64).filter(|i| i % DAYS < 30).count() as u64
        * MESSAGES_PER_CONVERSATION;
    check(
        counted == expected_30d,
        &format!("the 30-day report counts {counted} messages, not the {expected_30d} loaded"),
    )?;

    // 4. The day measures: every conversation closed, one in three rated,
    //    then the 90-day report.
    let report = day_measures(args, store, &tenant, opened).await?;

    // 5. Batched appends into the loaded store.
    let append_total = (messages / 10).clamp(10_000, 200_000) as usize;
    eprintln!("appending {append_total} more messages in batches of {APPEND_BATCH}");
    let started = Instant::now();
    let mut appended = 0;
    let now = Timestamp::now();
    while appended < append_total {
        let targets: Vec<ConversationId> = (0..APPEND_BATCH_CONVERSATIONS)
            .map(|_| pick(&mut rng))
            .collect();
        let batch: Vec<NewMessage> = (0..APPEND_BATCH)
            .map(|i| message(targets[i % targets.len()], i as u64, now))
            .collect();
        appended += store.append_all(batch).await?.len();
    }
    let append_rate = appended as f64 / started.elapsed().as_secs_f64();

    // 6. Single appends: one caller, then many at once.
    let single_total = (append_total / 20).clamp(500, 5_000);
    eprintln!("appending {single_total} messages one at a time");
    let target = pick(&mut rng);
    let started = Instant::now();
    for i in 0..single_total {
        store.append(message(target, i as u64, now)).await?;
    }
    let single_rate = single_total as f64 / started.elapsed().as_secs_f64();
    let concurrent_total = single_total * 10;
    let each = concurrent_total / CONCURRENT_APPENDERS;
    eprintln!(
        "appending {} messages from {CONCURRENT_APPENDERS} callers at once",
        each * CONCURRENT_APPENDERS
    );
    let targets: Vec<ConversationId> = (0..CONCURRENT_APPENDERS).map(|_| pick(&mut rng)).collect();
    let started = Instant::now();
    let callers = targets.iter().map(|&target| async move {
        for i in 0..each {
            store.append(message(target, i as u64, now)).await?;
        }
        Ok::<(), cs::core::store::StoreError>(())
    });
    for result in futures::future::join_all(callers).await {
        result?;
    }
    let concurrent_rate = (each * CONCURRENT_APPENDERS) as f64 / started.elapsed().as_secs_f64();

    println!("store            {}", args.store);
    println!("messages         {messages} in {conversations} conversations");
    println!(
        "create           {:.0} conversations/s",
        conversations as f64 / create_secs
    );
    println!("load             {load_rate:.0} msgs/s (batches of 1,000)");
    println!(
        "recent(50)       p50 {:.3} ms  p99 {:.3} ms",
        recent.ms(0.5),
        recent.ms(0.99)
    );
    println!(
        "page by seq (50) p50 {:.3} ms  p99 {:.3} ms",
        page.ms(0.5),
        page.ms(0.99)
    );
    println!(
        "resume after seq p50 {:.3} ms  p99 {:.3} ms",
        resume.ms(0.5),
        resume.ms(0.99)
    );
    println!(
        "30-day stats     p50 {:.3} ms  p99 {:.3} ms",
        stats.ms(0.5),
        stats.ms(0.99)
    );
    println!(
        "close            {:.0} conversations/s ({CONCURRENT_CLOSES} at once, each folding its log)",
        report.closes_per_sec
    );
    if let Some(r) = &report.timed {
        println!(
            "90-day report    p50 {:.3} ms  p99 {:.3} ms ({} counters, {} KiB of JSON)",
            r.latency.ms(0.5),
            r.latency.ms(0.99),
            r.counters,
            r.json_bytes / 1024
        );
    }
    println!("batched append   {append_rate:.0} msgs/s (batches of {APPEND_BATCH} over {APPEND_BATCH_CONVERSATIONS} conversations)");
    println!("single append    {single_rate:.0} msgs/s (one caller)");
    println!(
        "concurrent       {concurrent_rate:.0} msgs/s ({CONCURRENT_APPENDERS} callers, {:.1}x one caller)",
        concurrent_rate / single_rate
    );
    let json = serde_json::json!({
        "store": args.store,
        "messages": messages,
        "conversations": conversations,
        "create_convs_per_sec": round(conversations as f64 / create_secs),
        "load_msgs_per_sec": round(load_rate),
        "recent50_p50_ms": recent.ms(0.5),
        "recent50_p99_ms": recent.ms(0.99),
        "page_p50_ms": page.ms(0.5),
        "page_p99_ms": page.ms(0.99),
        "resume_p50_ms": resume.ms(0.5),
        "resume_p99_ms": resume.ms(0.99),
        "stats30d_ms": stats.ms(0.5),
        "stats30d_p99_ms": stats.ms(0.99),
        "append_msgs_per_sec": round(append_rate),
        "single_append_msgs_per_sec": round(single_rate),
        "concurrent_append_msgs_per_sec": round(concurrent_rate),
        "concurrent_appenders": CONCURRENT_APPENDERS,
        "samples": args.samples,
        "report_counters": args.report_counters,
        "close_convs_per_sec": round(report.closes_per_sec),
    });
    let mut json = json;
    if let Some(r) = &report.timed {
        json["report90d_p50_ms"] = r.latency.ms(0.5).into();
        json["report90d_p99_ms"] = r.latency.ms(0.99).into();
        json["report90d_counters"] = r.counters.into();
    }
    if args.store == "sqlite" {
        json["sqlite_sync"] = match args.durability {
            Durability::PowerLoss => "full",
            Durability::ProcessCrash => "normal",
        }
        .into();
    }
    Ok(json)
}

/// What step 4 measured.
struct DayMeasures {
    closes_per_sec: f64,
    /// `None` when the store keeps no counters.
    timed: Option<TimedReport>,
}

struct TimedReport {
    latency: Latency,
    counters: usize,
    json_bytes: usize,
}

/// Step 4: closes every conversation (16 at once), rates one in three,
/// then times the 90-day report and checks it against the scripts.
async fn day_measures<S: MessageStoreExt + ReportStore>(
    args: &Args,
    store: &S,
    tenant: &TenantId,
    opened: Vec<Conversation>,
) -> Result<DayMeasures, BoxError> {
    let conversations = opened.len();
    eprintln!("closing {conversations} conversations, {CONCURRENT_CLOSES} at once");
    let started = Instant::now();
    let mut ratings = Vec::new();
    let mut closes = futures::stream::iter(opened.into_iter().enumerate().map(|(i, c)| {
        let script = Script::of(i as u64);
        async move {
            let closed = script.closed(c)?;
            store.save_conversation(&closed).await?;
            Ok::<_, BoxError>((script, closed))
        }
    }))
    .buffer_unordered(CONCURRENT_CLOSES);
    let mut done = 0;
    while let Some(closed) = closes.next().await {
        let (script, closed) = closed?;
        if let (Some(score), Some(at)) = (script.rating, closed.closed_at()) {
            let mut rating = NewMessage::new(
                closed.id(),
                Party::Visitor(closed.visitor().clone()),
                Body::Event(Event::Rating {
                    score,
                    comment: None,
                    agent: closed.last_agent().cloned(),
                }),
            );
            rating.created_at = at.saturating_add(Duration::from_secs(30));
            ratings.push(rating);
        }
        done += 1;
        if done % (conversations / 10).max(1) == 0 {
            eprintln!("  {done} / {conversations} closed");
        }
    }
    drop(closes);
    let closes_per_sec = conversations as f64 / started.elapsed().as_secs_f64();
    let rated = ratings.len() as u64;
    eprintln!("rating {rated} of them");
    while !ratings.is_empty() {
        let rest = ratings.split_off(ratings.len().saturating_sub(APPEND_BATCH));
        store.append_all(rest).await?;
    }
    if !args.report_counters {
        return Ok(DayMeasures {
            closes_per_sec,
            timed: None,
        });
    }

    let to = ReportZone::UTC.day_of(Timestamp::now());
    let from = ReportDay(to.0 - (DAYS as i64 - 1));
    if let Err(e) = store.report_counts(tenant, from, to).await {
        eprintln!("no 90-day report: {e}");
        return Ok(DayMeasures {
            closes_per_sec,
            timed: None,
        });
    }
    eprintln!("timing {REPORT_SAMPLES} reports of {DAYS} days");
    let mut latency = Latency::new();
    let mut last = None;
    for _ in 0..REPORT_SAMPLES {
        let t = Instant::now();
        let counts = store.report_counts(tenant, from, to).await?;
        let counters = counts.len();
        let report = build_report(
            counts,
            from,
            to,
            &ReportZone::UTC,
            &ReportScope::Everyone,
            |a| a.to_string(),
        );
        let json = serde_json::to_vec(&report)?;
        latency.record(t.elapsed());
        last = Some((report, counters, json.len()));
    }
    let (report, counters, json_bytes) = last.ok_or("no report was timed")?;

    // The figures are the scripts', exactly.
    let scripts: Vec<Script> = (0..conversations as u64).map(Script::of).collect();
    let handed = scripts.iter().filter(|s| s.handoff.is_some()).count() as u64;
    let transferred = scripts.iter().filter(|s| s.transfer.is_some()).count() as u64;
    let total = &report.desk.as_ref().ok_or("no desk figures")?.total;
    check(
        total.opened == conversations as u64 && total.closed == conversations as u64,
        &format!(
            "the report opened {} and closed {}, not {conversations}",
            total.opened, total.closed
        ),
    )?;
    check(
        total.contained == conversations as u64 - handed && total.handoffs == handed,
        "the report's containment and hand-offs differ from the scripts",
    )?;
    check(
        total.wait.count == handed && total.transfers == transferred,
        "the report's waits or transfers differ from the scripts",
    )?;
    check(
        total.ratings.count == rated && report.agents.len() as u64 == AGENTS.min(handed),
        "the report's ratings or agents differ from the scripts",
    )?;
    Ok(DayMeasures {
        closes_per_sec,
        timed: Some(TimedReport {
            latency,
            counters,
            json_bytes,
        }),
    })
}

fn round(x: f64) -> f64 {
    x.round()
}

fn check(ok: bool, what: &str) -> Result<(), BoxError> {
    if ok {
        Ok(())
    } else {
        Err(what.into())
    }
}
