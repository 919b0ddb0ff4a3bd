//! Learning from past conversations, measured: how well does a bot answer
//! when all it had was a history of chats (no labels), against a bot
//! trained on the labels?
//!
//! 1. Builds a history JSONL from BANKING77 train: one conversation per row
//!    (the agent greets, the visitor asks the row's question, the agent
//!    answers with one canned answer per intent, the visitor thanks). The
//!    labels are dropped: only the answer text says which intent it was.
//! 2. Imports it ([`History::from_path`]) and suggests FAQ entries
//!    ([`suggest`]).
//! 3. Starts a bot that knows only a greeting and "talk to a person", and
//!    accepts every suggestion as it comes ([`Review::accept`]), named after
//!    the intent its canned answer belongs to (a reviewer reading the answer
//!    would name it the same); suggestions with the same answer merge.
//! 4. Answers every BANKING77 test question with that bot and with a bot
//!    trained on the labelled rows and the same answers, in the same run.
//!
//! ```text
//! cargo run --release -p cs-intent --example learn_from_history -- \
//!     --train ../shared/data/banking77/train.csv --test ../shared/data/banking77/test.csv \
//!     [--clusters 154] [--answer-weight 1] [--history-out history.jsonl]
//! ```
//!
//! "Right" is the bot's reply being the test row's intent's answer; a
//! clarification is "rightly asked" when that intent is among its buttons.
//! Progress on stderr; the last line is one JSON object.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use cs_core::{ConversationId, Seq};
use cs_intent::dataset::read_labelled_csv;
use cs_intent::faq::{BotAction, Faq, FaqBot, FaqSettings};
use cs_intent::history::{
    suggest, History, HistoryConfig, HistoryProgress, ImportSummary, Review, SuggestionEdit,
};
use cs_intent::Example;
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Training CSV (header `text,category`): becomes the history.
    #[arg(long)]
    train: PathBuf,
    /// Test CSV (header `text,category`).
    #[arg(long)]
    test: PathBuf,
    /// Groups to suggest (default: two per intent of the training file).
    #[arg(long)]
    clusters: Option<usize>,
    /// How much the agents' answers count in grouping
    /// (`HistoryConfig::answer_weight`; 0 groups by the questions alone).
    #[arg(long)]
    answer_weight: Option<f64>,
    /// Keep the generated history here (default: a temporary file).
    #[arg(long)]
    history_out: Option<PathBuf>,
}

/// The intents every shop starts with, before any history.
const STARTER: [(&str, &str, &[&str]); 2] = [
    (
        "greeting",
        "Hello! How can I help?",
        &[
            "hello",
            "hi there",
            "good morning",
            "hey",
            "hello, anyone there?",
        ],
    ),
    (
        "human_agent",
        "",
        &[
            "talk to a person",
            "i want a human",
            "let me speak to an agent",
            "real person please",
            "connect me to customer service",
        ],
    ),
];

/// The agents' one answer per intent: its words name the intent, so a
/// reviewer reading it knows what to call the suggestion.
fn canned(intent: &str) -> String {
    format!(
        "About {}: here is what to do. (help article {intent})",
        intent.replace('_', " ")
    )
}

/// A FAQ of the starter intents plus `extra` (name, answer, examples).
fn faq(extra: &[(String, String, Vec<String>)]) -> Result<Faq, Box<dyn std::error::Error>> {
    let mut intents = Vec::new();
    for (name, answer, examples) in STARTER {
        intents.push(if answer.is_empty() {
            json!({"intent": name, "action": "handoff", "examples": examples})
        } else {
            json!({"intent": name, "answer": {"en": answer}, "examples": examples})
        });
    }
    for (name, answer, examples) in extra {
        intents.push(json!({"intent": name, "answer": {"en": answer}, "examples": examples}));
    }
    Ok(Faq::from_json(
        &json!({"languages": ["en"], "intents": intents}).to_string(),
    )?)
}

#[derive(Default)]
struct Score {
    right: usize,
    rightly_asked: usize,
    asked_wrongly: usize,
    wrong: usize,
    handed_off: usize,
    top1: usize,
}

/// Every test row through `bot.reply`, each in a conversation of its own.
fn score(bot: &FaqBot, test: &[Example]) -> Result<Score, Box<dyn std::error::Error>> {
    let mut score = Score::default();
    for row in test {
        let conversation = ConversationId::new();
        let reply = bot.reply(conversation, Seq::new(1), &row.text)?;
        bot.forget(conversation);
        let expected = canned(&row.intent);
        score.top1 += usize::from(*reply.decision.intent == *row.intent);
        match reply.action {
            BotAction::Answer { text } if text == expected => score.right += 1,
            BotAction::Answer { .. } => score.wrong += 1,
            BotAction::Clarify { options, .. } => {
                if options.iter().any(|o| *o.intent == *row.intent) {
                    score.rightly_asked += 1;
                } else {
                    score.asked_wrongly += 1;
                }
            }
            BotAction::HandOff { .. } => score.handed_off += 1,
        }
    }
    Ok(score)
}

fn report(score: &Score, n: usize) -> serde_json::Value {
    let share = |c: usize| (c as f64 / n.max(1) as f64 * 10_000.0).round() / 10_000.0;
    json!({
        "top1": share(score.top1),
        "answered_right": share(score.right),
        "answered_right_or_rightly_asked": share(score.right + score.rightly_asked),
        "answered_wrong": share(score.wrong),
        "asked_wrongly": share(score.asked_wrongly),
        "handed_off": share(score.handed_off),
    })
}

fn seconds(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let train = read_labelled_csv(&args.train)?;
    let test = read_labelled_csv(&args.test)?;
    let mut intents: Vec<String> = train.iter().map(|e| e.intent.to_string()).collect();
    intents.sort();
    intents.dedup();
    let by_answer: HashMap<String, String> =
        intents.iter().map(|i| (canned(i), i.clone())).collect();

    // 1. The history, labels dropped.
    let temporary;
    let path = match &args.history_out {
        Some(path) => path.clone(),
        None => {
            temporary = tempfile::NamedTempFile::new()?;
            temporary.path().to_owned()
        }
    };
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for (i, row) in train.iter().enumerate() {
            let line = json!({"id": format!("c{i}"), "turns": [
                {"from": "agent", "text": "Hello, how can I help?"},
                {"from": "visitor", "text": row.text},
                {"from": "agent", "text": canned(&row.intent)},
                {"from": "visitor", "text": "thank you"},
            ]});
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }

    // 2. Import and suggest.
    let mut show = |p: HistoryProgress| eprintln!("{p:?}");
    let started = Instant::now();
    let history = History::from_path(&path, &mut show)?;
    let import_time = started.elapsed();
    let clusters = args.clusters.unwrap_or(intents.len() * 2);
    let defaults = HistoryConfig::default();
    let config = HistoryConfig {
        clusters: Some(clusters),
        answer_weight: args.answer_weight.unwrap_or(defaults.answer_weight),
        ..defaults
    };
    let started = Instant::now();
    let suggestions = suggest(&history, &config, &mut show)?;
    let suggest_time = started.elapsed();
    let mut review = Review::default();
    let summary = ImportSummary {
        lines: history.lines,
        conversations: history.conversations,
        questions: history.pairs.len(),
        unanswered: history.unanswered,
        suggestions: suggestions.len(),
    };
    review.replace_pending(suggestions, summary);
    let pure: f64 = review
        .pending()
        .iter()
        .map(|s| s.answer_count as f64)
        .sum::<f64>()
        / history.pairs.len().max(1) as f64;

    // 3. Accept each suggestion, named by its answer.
    let settings = FaqSettings::default();
    let learner = FaqBot::train(faq(&[])?, settings.clone())?;
    let started = Instant::now();
    let (mut accepted, mut merged) = (0usize, 0usize);
    let ids: Vec<(u64, String)> = review
        .pending()
        .iter()
        .map(|s| (s.id, s.answer.clone()))
        .collect();
    for (id, answer) in ids {
        let Some(intent) = by_answer.get(&answer) else {
            review.reject(id)?;
            continue;
        };
        let edit = SuggestionEdit {
            name: Some(intent.clone()),
            ..SuggestionEdit::default()
        };
        let done = review.accept(id, edit, &learner)?;
        accepted += 1;
        merged += usize::from(done.merged);
    }
    let accept_time = started.elapsed();
    let covered = learner.intent_names().len() - STARTER.len();
    let memory_score = score(&learner, &test)?;
    // What the background retrain would do next, done now so the run is repeatable.
    let started = Instant::now();
    learner.agent().retrain_now()?;
    let retrain_time = started.elapsed();
    let learned_score = score(&learner, &test)?;

    // 4. The bot trained on the labels, with the same answers.
    let mut labelled: Vec<(String, String, Vec<String>)> = intents
        .iter()
        .map(|i| (i.clone(), canned(i), Vec::new()))
        .collect();
    let index: HashMap<&str, usize> = intents
        .iter()
        .enumerate()
        .map(|(n, i)| (i.as_str(), n))
        .collect();
    for row in &train {
        labelled[index[&*row.intent]].2.push(row.text.clone());
    }
    let started = Instant::now();
    let baseline = FaqBot::train(faq(&labelled)?, settings)?;
    let baseline_time = started.elapsed();
    let baseline_score = score(&baseline, &test)?;

    let n = test.len();
    let result = json!({
        "train_rows": train.len(),
        "test_rows": n,
        "history_questions": history.pairs.len(),
        "clusters": clusters,
        "answer_weight": config.answer_weight,
        "suggestions": review.accepted().len() + review.rejected() as usize,
        "accepted": accepted,
        "accepted_merged": merged,
        "rejected": review.rejected(),
        "intents_covered": covered,
        "typical_answer_share": (pure * 10_000.0).round() / 10_000.0,
        "import_s": seconds(import_time),
        "suggest_s": seconds(suggest_time),
        "accept_s": seconds(accept_time),
        "retrain_s": seconds(retrain_time),
        "labelled_train_s": seconds(baseline_time),
        "from_history_before_retrain": report(&memory_score, n),
        "from_history": report(&learned_score, n),
        "labelled": report(&baseline_score, n),
        "answered_right_ratio": ((learned_score.right as f64 / baseline_score.right.max(1) as f64) * 10_000.0).round() / 10_000.0,
    });
    eprintln!("{}", serde_json::to_string_pretty(&result)?);
    println!("{result}");
    Ok(())
}
