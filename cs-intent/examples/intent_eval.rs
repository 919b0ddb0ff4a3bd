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
//! accuracy, in_scope_accuracy, oos_recall, handoff_rate, clarify_rate,
//! model_bytes` and a few more fields.
//!
//! `accuracy` is the share of test rows handled correctly: an in-scope row
//! when the agent does not hand off and names the right intent, an
//! out-of-scope row (category = `--unknown-label`) when it hands off. A
//! clarifying question counts by its top intent there. `handoff_rate` and
//! `clarify_rate` are shares of all test rows.
//!
//! What happened to the in-scope rows, as shares of them:
//! `answered_right_rate`, `answered_wrong_rate`, `clarified_right_rate` (the
//! right intent was among the options), `clarified_wrong_rate`,
//! `in_scope_handoff_rate`, and `right_or_rightly_clarified_rate` (the first
//! plus the third). Out-of-scope rows: `oos_answered_rate`,
//! `oos_clarified_rate` and `oos_recall` (handed off).
//!
//! `--sweep` first prints the whole curve on the test rows: each answer
//! threshold with the fitted clarify mass, then each clarify mass with the
//! fitted answer threshold (and asking switched off), every line giving
//! answered right / clarified rightly / clarified wrongly / handed off /
//! answered wrong as shares of in-scope rows, and what out-of-scope rows got.
//! `--answer-threshold`, `--clarify-mass` and `--max-wrong-answer-rate`
//! override the rule (`ModelConfig` fields of the same names).
//!
//! `--hold-out-intents N` runs the out-of-scope self-test: it removes N
//! intents (every k-th in sorted order) from TRAIN and relabels their TEST
//! rows as the unknown label (`--unknown-label`, default `__unknown__`).
//! `--oos-weight W` overrides the agent's hand-off trade-off
//! (`ModelConfig::oos_weight`; 0 never hands off).
//!
//! `--embedding-model DIR` (feature `embeddings`) loads a local sentence
//! encoder (a directory with `config.json`, `tokenizer.json`,
//! `model.safetensors`, e.g. all-MiniLM-L6-v2) and trains with its vectors
//! appended to the sparse features (`--embedding-weight`, default 2). The
//! JSON then adds `encode_seconds` and `encode_ms_per_sentence` (first-time
//! encoding of the training rows, batched), `train_from_stored_seconds` (a
//! retrain from the stored vectors, nothing encoded: what every later
//! retrain and a loaded agent cost) and `encoder_load_seconds`;
//! `train_seconds` is the first training, encoding included, and the
//! predict latencies include encoding the question.
//!
//! ```text
//! cargo run --release -p cs-intent --features embeddings --example intent_eval -- \
//!     --train TRAIN.csv --test TEST.csv --embedding-model DIR
//! ```

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use cs_intent::calibration::{tally, Calibration, Outcomes, RankedQuestion, Verdict};
use cs_intent::dataset::read_labelled_csv;
use cs_intent::text::normalize;
use cs_intent::{AgentConfig, Decision, Example, IntentAgent, IntentModel, TextEncoder};

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
    /// Wrong answers the threshold fit allows, as a share of its held-out in-scope rows.
    #[arg(long)]
    max_wrong_answer_rate: Option<f32>,
    /// Fix the answer threshold instead of fitting it (above 1: never answer outright).
    #[arg(long)]
    answer_threshold: Option<f32>,
    /// Fix the clarify mass instead of fitting it (0: ask rather than hand off; above 1: never ask).
    #[arg(long)]
    clarify_mass: Option<f32>,
    /// Print the decision curve on the test rows before the JSON line.
    #[arg(long)]
    sweep: bool,
    /// A local sentence-encoder directory (config.json, tokenizer.json,
    /// model.safetensors) whose vectors join the features (feature `embeddings`).
    #[arg(long)]
    embedding_model: Option<PathBuf>,
    /// Scale of the sentence embedding next to the unit TF-IDF vector.
    #[arg(long, default_value_t = cs_intent::Embeddings::DEFAULT_WEIGHT)]
    embedding_weight: f32,
    /// Sentences per forward pass of the encoder (`EncoderConfig::batch_size`).
    #[arg(long)]
    embedding_batch_size: Option<usize>,
}

/// Load the encoder named by `--embedding-model`, if any.
#[cfg(feature = "embeddings")]
fn load_encoder(args: &Args) -> Result<Option<Arc<dyn TextEncoder>>, Box<dyn std::error::Error>> {
    let Some(dir) = &args.embedding_model else {
        return Ok(None);
    };
    let mut config = cs_intent::bert::EncoderConfig::default();
    if let Some(n) = args.embedding_batch_size {
        config.batch_size = n;
    }
    let encoder = cs_intent::bert::SentenceEncoder::load_with(dir, config)?;
    eprintln!("sentence encoder: {encoder:?}");
    Ok(Some(Arc::new(encoder)))
}

#[cfg(not(feature = "embeddings"))]
fn load_encoder(args: &Args) -> Result<Option<Arc<dyn TextEncoder>>, Box<dyn std::error::Error>> {
    match &args.embedding_model {
        None => Ok(None),
        Some(_) => Err("--embedding-model needs the `embeddings` feature: \
                        cargo run --release -p cs-intent --features embeddings --example intent_eval"
            .into()),
    }
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
    if let Some(r) = args.max_wrong_answer_rate {
        config.model.max_wrong_answer_rate = r;
    }
    config.model.answer_threshold = args.answer_threshold;
    config.model.clarify_mass = args.clarify_mass;
    let load_start = Instant::now();
    let encoder = load_encoder(&args)?;
    let encoder_load_seconds = load_start.elapsed().as_secs_f64();
    let start = Instant::now();
    let agent = match &encoder {
        None => IntentAgent::train(train, config)?,
        Some(encoder) => IntentAgent::train_with_embeddings(
            train,
            config,
            cs_intent::Embeddings {
                encoder: Arc::clone(encoder),
                weight: args.embedding_weight,
            },
        )?,
    };
    let train_seconds = start.elapsed().as_secs_f64();
    // A retrain from the stored vectors (nothing is encoded again): the
    // cost of every later retrain.
    let train_from_stored_seconds = match &encoder {
        None => None,
        Some(_) => {
            let start = Instant::now();
            agent.retrain_now()?;
            Some(start.elapsed().as_secs_f64())
        }
    };
    let stats = agent.stats();
    if encoder.is_some() {
        eprintln!(
            "encoded {} training texts in {:.2} s; retrained from the stored vectors in {:.2} s",
            stats.embeddings_encoded,
            stats.embeddings_encode_seconds,
            train_from_stored_seconds.unwrap_or_default()
        );
    }
    let snapshot = agent.snapshot();
    let calibration = snapshot.model.calibration();
    eprintln!(
        "trained in {train_seconds:.2} s: temperature {:.3}, answer from {:.3}, ask when the top \
         {} reach {:.3} (calibration held out {} intents: in-scope answered right {:.3}, wrong \
         {:.3}, rightly asked {:.3}; oos recall {:.3})",
        calibration.temperature,
        calibration.answer_threshold,
        calibration.max_options,
        calibration.clarify_mass,
        calibration.report.held_out_intents,
        calibration.report.in_scope_accuracy,
        calibration.report.in_scope_answered_wrong,
        calibration.report.in_scope_clarified_right,
        calibration.report.oos_recall,
    );
    if args.sweep {
        let questions = ranked_questions(
            &snapshot.model,
            encoder.as_deref(),
            &test,
            unknown.as_deref(),
        )?;
        print_curve(calibration, &questions);
    }

    eprintln!("predicting {} test rows", test.len());
    let mut latencies = Vec::with_capacity(test.len());
    let (mut correct, mut in_scope, mut in_scope_correct, mut oos, mut oos_handed_off) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    let (mut handoffs, mut clarifies, mut top1_correct, mut empty) =
        (0usize, 0usize, 0usize, 0usize);
    let mut outcomes = Outcomes::default();
    for (i, row) in test.iter().enumerate() {
        let start = Instant::now();
        let prediction = agent.predict(&row.text);
        latencies.push(start.elapsed().as_secs_f64() * 1e6);
        let is_oos = unknown.as_deref() == Some(row.intent.as_str());
        let (handed_off, right_intent) = match &prediction {
            Ok(p) => {
                clarifies += usize::from(p.decision == Decision::Clarify);
                let verdict = Verdict {
                    decision: p.decision,
                    options: p.options.len(),
                };
                // Only "top", "among the options" or "elsewhere" matters to the tally.
                let right_rank = (!is_oos).then(|| {
                    if *p.intent == *row.intent {
                        0
                    } else {
                        p.options
                            .iter()
                            .position(|o| *o.intent == *row.intent)
                            .unwrap_or(usize::MAX)
                    }
                });
                outcomes.record(verdict, right_rank);
                (p.decision == Decision::HandOff, *p.intent == *row.intent)
            }
            // An empty question cannot be answered: the agent hands it off.
            Err(_) => {
                empty += 1;
                let verdict = Verdict {
                    decision: Decision::HandOff,
                    options: 0,
                };
                outcomes.record(verdict, (!is_oos).then_some(usize::MAX));
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
        "answered_right_rate": outcomes.share_of_in_scope(outcomes.answered_right),
        "answered_wrong_rate": outcomes.share_of_in_scope(outcomes.answered_wrong),
        "clarified_right_rate": outcomes.share_of_in_scope(outcomes.clarified_right),
        "clarified_wrong_rate": outcomes.share_of_in_scope(outcomes.clarified_wrong),
        "in_scope_handoff_rate": outcomes.share_of_in_scope(outcomes.handed_off),
        "right_or_rightly_clarified_rate":
            outcomes.share_of_in_scope(outcomes.answered_right + outcomes.clarified_right),
        "oos_answered_rate": if oos == 0 { None } else { Some(outcomes.share_of_out_of_scope(outcomes.oos_answered)) },
        "oos_clarified_rate": if oos == 0 { None } else { Some(outcomes.share_of_out_of_scope(outcomes.oos_clarified)) },
        // Below this top confidence the agent does not answer outright (it asks or hands off).
        "handoff_threshold": finite(calibration.answer_threshold),
        "answer_threshold": finite(calibration.answer_threshold),
        "clarify_mass": finite(calibration.clarify_mass),
        "max_wrong_answer_rate": agent.config().model.max_wrong_answer_rate,
        "oos_weight": agent.config().model.oos_weight,
        "model_bytes": model_bytes,
        "embedding_model": args.embedding_model.as_ref().filter(|_| encoder.is_some()).map(|d| d.display().to_string()),
        "embedding_weight": encoder.as_ref().map(|_| args.embedding_weight),
        // null: EncoderConfig's default (32).
        "embedding_batch_size": args.embedding_batch_size,
        "encoder_load_seconds": encoder.as_ref().map(|_| (encoder_load_seconds * 1000.0).round() / 1000.0),
        "sentences_encoded": encoder.as_ref().map(|_| stats.embeddings_encoded),
        "encode_seconds": encoder.as_ref().map(|_| (stats.embeddings_encode_seconds * 1000.0).round() / 1000.0),
        "encode_ms_per_sentence": encoder.as_ref().map(|_| {
            let ms = 1000.0 * stats.embeddings_encode_seconds / stats.embeddings_encoded.max(1) as f64;
            (ms * 1000.0).round() / 1000.0
        }),
        "train_from_stored_seconds": train_from_stored_seconds.map(|s| (s * 1000.0).round() / 1000.0),
    });
    println!("{json}");
    Ok(())
}

/// JSON has no infinity: a threshold that is never reached is `null`.
fn finite(x: f32) -> Option<f32> {
    x.is_finite().then_some(x)
}

/// Every test row as the decision rule sees it: the model's calibrated
/// probabilities (no memory: a fresh agent has none) and the right intent's rank.
fn ranked_questions(
    model: &IntentModel,
    encoder: Option<&dyn TextEncoder>,
    test: &[Example],
    unknown: Option<&str>,
) -> Result<Vec<RankedQuestion>, cs_intent::IntentError> {
    let max_chars = model.featurizer().config().max_chars;
    let keep = model.calibration().max_options;
    let texts: Vec<String> = test.iter().map(|r| normalize(&r.text, max_chars)).collect();
    let embeddings = match encoder {
        Some(encoder) if model.dense_spec().is_some() => {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            Some(encoder.encode_batch(&refs)?)
        }
        _ => None,
    };
    Ok(test
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let embedding = embeddings.as_ref().map(|e| e[i].as_slice());
            let ranked = model
                .score_vector(&model.features(&texts[i], embedding))
                .ranked;
            let is_oos = unknown == Some(row.intent.as_str());
            let right_rank = (!is_oos).then(|| {
                ranked
                    .iter()
                    .position(|&(i, _)| *model.intents()[i] == *row.intent)
                    .unwrap_or(usize::MAX)
            });
            RankedQuestion {
                top: ranked.iter().take(keep).map(|r| r.1).collect(),
                right_rank,
            }
        })
        .collect())
}

fn print_curve(fitted: &Calibration, questions: &[RankedQuestion]) {
    let pct = |o: &Outcomes, n: usize| 100.0 * o.share_of_in_scope(n);
    let oos = |o: &Outcomes, n: usize| 100.0 * o.share_of_out_of_scope(n);
    let line = |what: String, c: &Calibration| {
        let o = tally(c, questions);
        println!(
            "{what:<28} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2} | {:>6.2} {:>6.2} {:>6.2}",
            pct(&o, o.answered_right),
            pct(&o, o.clarified_right),
            pct(&o, o.answered_right + o.clarified_right),
            pct(&o, o.clarified_wrong),
            pct(&o, o.handed_off),
            pct(&o, o.answered_wrong),
            oos(&o, o.oos_answered),
            oos(&o, o.oos_clarified),
            oos(&o, o.oos_handed_off),
        );
    };
    println!(
        "{:<28} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6} | {:>6} {:>6} {:>6}",
        "rule (% of in-scope rows)",
        "ans_ok",
        "clr_ok",
        "ok",
        "clr_no",
        "hand",
        "ans_no",
        "oos_an",
        "oos_cl",
        "oos_ho"
    );
    let fmt = |x: f32| {
        if x.is_finite() {
            format!("{x:.3}")
        } else {
            "never".to_string()
        }
    };
    line(
        format!(
            "fitted a={} m={}",
            fmt(fitted.answer_threshold),
            fmt(fitted.clarify_mass)
        ),
        fitted,
    );
    for a in [
        0.0,
        0.1,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.7,
        0.8,
        0.9,
        0.95,
        f32::INFINITY,
    ] {
        let c = Calibration {
            answer_threshold: a,
            ..fitted.clone()
        };
        line(format!("a={} m=fitted", fmt(a)), &c);
    }
    for m in [0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, f32::INFINITY] {
        let c = Calibration {
            clarify_mass: m,
            ..fitted.clone()
        };
        line(format!("a=fitted m={}", fmt(m)), &c);
    }
}
