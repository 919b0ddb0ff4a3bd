//! Train a fresh agent on a labelled CSV and evaluate it on another.
//!
//! ```text
//! cargo run --release -p cs-intent --example intent_eval -- \
//!     --train TRAIN.csv --test TEST.csv [--unknown-label LABEL] [--hold-out-intents N]
//! ```
//!
//! Both files have a header row `text,category` (UTF-8, standard CSV quoting).
//! Progress goes to stderr; the last line on stdout is one JSON object with
//! `train_rows, test_rows, train_seconds, predict_p50_us, predict_p99_us,
//! accuracy, in_scope_accuracy, oos_recall, handoff_rate, model_bytes` and a
//! few more fields.
//!
//! `accuracy` is the share of test rows handled correctly: an in-scope row
//! when the agent does not hand off and names the right intent, an
//! out-of-scope row (category = `--unknown-label`) when it hands off. A
//! clarifying question counts by its top intent.
//!
//! `--hold-out-intents N` runs the out-of-scope self-test: it removes N
//! intents (every k-th in sorted order) from TRAIN and relabels their TEST
//! rows as the unknown label (`--unknown-label`, default `__unknown__`).
//! `--oos-weight W` overrides the agent's hand-off trade-off
//! (`ModelConfig::oos_weight`; 0 never hands off).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use cs_intent::dataset::read_labelled_csv;
use cs_intent::{AgentConfig, Decision, IntentAgent};

#[derive(Parser)]
#[command(about = "Train a cs-intent agent on TRAIN and evaluate it on TEST")]
struct Args {
    /// Training CSV (header `text,category`).
    #[arg(long)]
    train: PathBuf,
    /// Test CSV (header `text,category`).
    #[arg(long)]
    test: PathBuf,
    /// Test rows with this category are out of scope: correct only when handed off.
    #[arg(long)]
    unknown_label: Option<String>,
    /// Self-test: drop N intents from TRAIN and mark their TEST rows unknown.
    #[arg(long)]
    hold_out_intents: Option<usize>,
    /// Override the trade-off: weight of out-of-scope recall against in-scope
    /// accuracy when the agent picks its hand-off threshold (0 = never hand off).
    #[arg(long)]
    oos_weight: Option<f32>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut train = read_labelled_csv(&args.train)?;
    let mut test = read_labelled_csv(&args.test)?;
    let mut unknown = args.unknown_label.clone();
    if let Some(n) = args.hold_out_intents {
        let label = unknown
            .get_or_insert_with(|| "__unknown__".to_string())
            .clone();
        let intents: Vec<String> = train
            .iter()
            .map(|e| e.intent.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let step = (intents.len() / n.max(1)).max(1);
        let held: BTreeSet<String> = intents.iter().step_by(step).take(n).cloned().collect();
        eprintln!("self-test: holding out {} intents: {held:?}", held.len());
        train.retain(|e| !held.contains(&e.intent));
        for e in &mut test {
            if held.contains(&e.intent) {
                e.intent = label.clone();
            }
        }
    }
    if let Some(label) = &unknown {
        let before = train.len();
        train.retain(|e| &e.intent != label);
        if train.len() != before {
            eprintln!(
                "dropped {} TRAIN rows labelled {label:?}",
                before - train.len()
            );
        }
    }
    let intents = train
        .iter()
        .map(|e| e.intent.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    eprintln!(
        "training on {} rows ({intents} intents) from {}",
        train.len(),
        args.train.display()
    );
    let train_rows = train.len();
    let mut config = AgentConfig {
        background_retrain: false,
        ..AgentConfig::default()
    };
    if let Some(w) = args.oos_weight {
        config.model.oos_weight = w;
    }
    let start = Instant::now();
    let agent = IntentAgent::train(train, config)?;
    let train_seconds = start.elapsed().as_secs_f64();
    let snapshot = agent.snapshot();
    let calibration = snapshot.model.calibration();
    eprintln!(
        "trained in {train_seconds:.2} s: temperature {:.3}, hand-off below {:.3} \
         (calibration held out {} intents: in-scope accuracy {:.3}, oos recall {:.3})",
        calibration.temperature,
        calibration.handoff_threshold,
        calibration.report.held_out_intents,
        calibration.report.in_scope_accuracy,
        calibration.report.oos_recall,
    );

    eprintln!("predicting {} test rows", test.len());
    let mut latencies = Vec::with_capacity(test.len());
    let (mut correct, mut in_scope, mut in_scope_correct, mut oos, mut oos_handed_off) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    let (mut handoffs, mut clarifies, mut top1_correct, mut empty) =
        (0usize, 0usize, 0usize, 0usize);
    for (i, row) in test.iter().enumerate() {
        let start = Instant::now();
        let prediction = agent.predict(&row.text);
        latencies.push(start.elapsed().as_secs_f64() * 1e6);
        let is_oos = unknown.as_deref() == Some(row.intent.as_str());
        let (handed_off, right_intent) = match &prediction {
            Ok(p) => {
                clarifies += usize::from(p.decision == Decision::Clarify);
                (p.decision == Decision::HandOff, *p.intent == *row.intent)
            }
            // An empty question cannot be answered: the agent hands it off.
            Err(_) => {
                empty += 1;
                (true, false)
            }
        };
        handoffs += usize::from(handed_off);
        if is_oos {
            oos += 1;
            oos_handed_off += usize::from(handed_off);
            correct += usize::from(handed_off);
        } else {
            in_scope += 1;
            top1_correct += usize::from(right_intent);
            let ok = !handed_off && right_intent;
            in_scope_correct += usize::from(ok);
            correct += usize::from(ok);
        }
        if (i + 1) % 1000 == 0 {
            eprintln!("  {} / {}", i + 1, test.len());
        }
    }
    latencies.sort_by(f64::total_cmp);
    let model_bytes = agent.to_bytes()?.len();
    let share = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    let json = serde_json::json!({
        "train_rows": train_rows,
        "test_rows": test.len(),
        "intents": intents,
        "train_seconds": (train_seconds * 1000.0).round() / 1000.0,
        "predict_p50_us": (percentile(&latencies, 0.50) * 10.0).round() / 10.0,
        "predict_p99_us": (percentile(&latencies, 0.99) * 10.0).round() / 10.0,
        "accuracy": share(correct, test.len()),
        "in_scope_accuracy": share(in_scope_correct, in_scope),
        "oos_recall": if oos == 0 { None } else { Some(share(oos_handed_off, oos)) },
        "handoff_rate": share(handoffs, test.len()),
        "clarify_rate": share(clarifies, test.len()),
        "top1_accuracy_in_scope": share(top1_correct, in_scope),
        "oos_rows": oos,
        "empty_test_rows": empty,
        "handoff_threshold": calibration.handoff_threshold,
        "oos_weight": agent.config().model.oos_weight,
        "model_bytes": model_bytes,
    });
    println!("{json}");
    Ok(())
}
