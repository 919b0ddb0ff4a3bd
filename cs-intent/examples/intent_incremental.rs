//! The incremental-learning measurement: train on all but N intents, then
//! `add_examples` N new intents with K examples each, and measure accuracy on
//! the new intents' test rows right after adding (memory, no retrain) and
//! after the background retrain swapped the new model in.
//!
//! ```text
//! cargo run --release -p cs-intent --example intent_incremental -- \
//!     --train TRAIN.csv --test TEST.csv [--new-intents 10] [--examples-per-intent 10]
//! ```
//!
//! Progress on stderr; the last line is one JSON object.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use cs_intent::dataset::read_labelled_csv;
use cs_intent::{AgentConfig, Decision, Example, IntentAgent};

#[derive(Parser)]
struct Args {
    /// Training CSV (header `text,category`).
    #[arg(long)]
    train: PathBuf,
    /// Test CSV (header `text,category`).
    #[arg(long)]
    test: PathBuf,
    /// Intents left out of the initial training and added later.
    #[arg(long, default_value_t = 10)]
    new_intents: usize,
    /// Examples added per new intent.
    #[arg(long, default_value_t = 10)]
    examples_per_intent: usize,
    /// Override `AgentConfig::memory_threshold`.
    #[arg(long)]
    memory_threshold: Option<f32>,
}

/// (top-1 accuracy, answered-correctly share) on rows.
fn accuracy(agent: &IntentAgent, rows: &[&Example]) -> (f64, f64) {
    let (mut top1, mut answered) = (0usize, 0usize);
    for row in rows {
        if let Ok(p) = agent.predict(&row.text) {
            if *p.intent == *row.intent {
                top1 += 1;
                answered += usize::from(p.decision != Decision::HandOff);
            }
        }
    }
    let n = rows.len().max(1) as f64;
    (top1 as f64 / n, answered as f64 / n)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let train = read_labelled_csv(&args.train)?;
    let test = read_labelled_csv(&args.test)?;
    let intents: Vec<String> = train
        .iter()
        .map(|e| e.intent.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let step = (intents.len() / args.new_intents.max(1)).max(1);
    let new: BTreeSet<String> = intents
        .iter()
        .step_by(step)
        .take(args.new_intents)
        .cloned()
        .collect();
    let (base, later): (Vec<Example>, Vec<Example>) =
        train.into_iter().partition(|e| !new.contains(&e.intent));
    let mut added = Vec::new();
    for intent in &new {
        added.extend(
            later
                .iter()
                .filter(|e| &e.intent == intent)
                .take(args.examples_per_intent)
                .cloned(),
        );
    }
    let new_test: Vec<&Example> = test.iter().filter(|e| new.contains(&e.intent)).collect();
    let old_test: Vec<&Example> = test.iter().filter(|e| !new.contains(&e.intent)).collect();

    eprintln!(
        "training on {} rows of {} intents; {} new intents to add: {new:?}",
        base.len(),
        intents.len() - new.len(),
        new.len()
    );
    let mut config = AgentConfig::default();
    if let Some(t) = args.memory_threshold {
        config.memory_threshold = t;
    }
    let agent = IntentAgent::train(base, config)?;
    let (old_before, _) = accuracy(&agent, &old_test);
    let (new_before, _) = accuracy(&agent, &new_test);

    eprintln!("adding {} examples", added.len());
    let start = Instant::now();
    agent.add_examples(added)?;
    // "Effect": the first new-intent question is answered from the new rows.
    let first = agent.predict(&new_test[0].text)?;
    let add_to_effect_us = start.elapsed().as_secs_f64() * 1e6;
    eprintln!(
        "first question after add: {:?} -> {} ({:?})",
        new_test[0].text, first.intent, first.source
    );
    let (new_after_add, new_after_add_answered) = accuracy(&agent, &new_test);
    let (old_after_add, _) = accuracy(&agent, &old_test);

    eprintln!("waiting for the background retrain");
    let (done, error) = agent.wait_for_retrains(1, Duration::from_secs(600));
    let retrain_seconds = start.elapsed().as_secs_f64();
    if let Some(error) = error {
        return Err(error.into());
    }
    let (new_after_retrain, new_after_retrain_answered) = accuracy(&agent, &new_test);
    let (old_after_retrain, _) = accuracy(&agent, &old_test);
    let json = serde_json::json!({
        "base_intents": intents.len() - new.len(),
        "new_intents": new.len(),
        "memory_threshold": agent.config().memory_threshold,
        "examples_per_intent": args.examples_per_intent,
        "new_test_rows": new_test.len(),
        "add_to_effect_us": add_to_effect_us.round(),
        "new_accuracy_before_add": new_before,
        "new_accuracy_after_add": new_after_add,
        "new_answered_after_add": new_after_add_answered,
        "new_accuracy_after_retrain": new_after_retrain,
        "new_answered_after_retrain": new_after_retrain_answered,
        "old_accuracy_before_add": old_before,
        "old_accuracy_after_add": old_after_add,
        "old_accuracy_after_retrain": old_after_retrain,
        "retrains_completed": done,
        "add_to_retrained_seconds": (retrain_seconds * 1000.0).round() / 1000.0,
    });
    println!("{json}");
    Ok(())
}
