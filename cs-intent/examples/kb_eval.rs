//! Knowledge-base measurement: build a KB of N entries, then search Q
//! queries and report build time, search p50/p99 and recall@10 against an
//! exhaustive search over the same embeddings. Then save the KB (entries,
//! embeddings and HNSW graph), load it `--load-runs` times, and report the
//! file size, save time, median load time, and whether the loaded KB answers
//! every query exactly as the built one.
//!
//! ```text
//! cargo run --release -p cs-intent --example kb_eval -- [--entries 100000] [--queries 1000]
//!     [--questions ../shared/data/banking77/train.csv] [--save PATH] [--load-runs 3]
//! cargo run --release -p cs-intent --example kb_eval -- --load-only PATH [--load-runs 3]
//! ```
//!
//! Entries are synthetic but realistic: each joins a real customer question
//! (BANKING77 when present, otherwise the Chinese retail fixture) with an
//! order, product and store detail, so no two entries are the same text.
//! Queries are fresh combinations not in the KB. Last stdout line: JSON.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use cs_intent::{KbConfig, KbEntry, KnowledgeBase};

#[derive(Parser)]
struct Args {
    /// Entries in the KB.
    #[arg(long, default_value_t = 100_000)]
    entries: usize,
    /// Queries to time.
    #[arg(long, default_value_t = 1_000)]
    queries: usize,
    /// CSV with a `text` column to draw questions from.
    #[arg(long)]
    questions: Option<PathBuf>,
    /// HNSW ef_search.
    #[arg(long)]
    ef_search: Option<usize>,
    /// Embedding dimension.
    #[arg(long)]
    dim: Option<usize>,
    /// HNSW links per node.
    #[arg(long)]
    max_connections: Option<usize>,
    /// HNSW ef_construction.
    #[arg(long)]
    ef_construction: Option<usize>,
    /// Where to save the KB (default: a file in a temporary directory).
    #[arg(long)]
    save: Option<PathBuf>,
    /// How many times to load the saved KB (the median is reported).
    #[arg(long, default_value_t = 3)]
    load_runs: usize,
    /// Only load this saved KB `--load-runs` times and report the load times.
    #[arg(long)]
    load_only: Option<PathBuf>,
}

fn median(runs: &[f64]) -> f64 {
    let mut sorted = runs.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

const PRODUCTS: [&str; 12] = [
    "running shoes",
    "rice cooker",
    "phone case",
    "winter jacket",
    "water bottle",
    "desk lamp",
    "蓝牙耳机",
    "羊毛围巾",
    "电饭煲",
    "儿童书包",
    "保温杯",
    "运动手表",
];
const PLACES: [&str; 8] = [
    "Shanghai store",
    "Berlin warehouse",
    "online shop",
    "Beijing outlet",
    "广州仓",
    "成都门店",
    "app",
    "mini program",
];

/// A deterministic mix of a question with product, place and number.
fn synthesize(questions: &[String], i: usize) -> String {
    let q = &questions[(i * 7919) % questions.len()];
    format!(
        "{q} {} {} #{}",
        PRODUCTS[(i / 3) % PRODUCTS.len()],
        PLACES[(i / 5) % PLACES.len()],
        i % 9973
    )
}

fn load_questions(args: &Args) -> Result<Vec<String>, Box<dyn std::error::Error>> {
    let default = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/data/banking77/train.csv"
    ));
    let fixture = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/retail_zh_train.csv"
    ));
    let path = match &args.questions {
        Some(p) => p.clone(),
        None if default.exists() => default,
        None => fixture,
    };
    eprintln!("questions from {}", path.display());
    let mut reader = csv::Reader::from_path(&path)?;
    let text = reader
        .headers()?
        .iter()
        .position(|h| h == "text")
        .ok_or("no `text` column")?;
    let mut out = Vec::new();
    for r in reader.records() {
        if let Some(t) = r?.get(text) {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    if let Some(path) = &args.load_only {
        let mut runs = Vec::new();
        let mut entries = 0;
        for _ in 0..args.load_runs.max(1) {
            let start = Instant::now();
            let loaded = KnowledgeBase::load(path)?;
            runs.push(start.elapsed().as_secs_f64());
            // Dropping 100k linked points takes a while too; it is not loading.
            entries = loaded.len();
            drop(loaded);
            eprintln!("load {}: {:.2} s", runs.len(), runs[runs.len() - 1]);
        }
        let json = serde_json::json!({
            "entries": entries,
            "file_bytes": std::fs::metadata(path)?.len(),
            "load_seconds": round3(median(&runs)),
            "load_seconds_runs": runs.iter().map(|&x| round3(x)).collect::<Vec<_>>(),
        });
        println!("{json}");
        return Ok(());
    }
    let questions = load_questions(&args)?;
    let entries: Vec<KbEntry> = (0..args.entries)
        .map(|i| KbEntry {
            id: format!("faq-{i}"),
            questions: vec![synthesize(&questions, i)],
            answer: format!("answer {i}"),
            intent: None,
            metadata: BTreeMap::new(),
        })
        .collect();
    let mut config = KbConfig::default();
    if let Some(ef) = args.ef_search {
        config.ef_search = ef;
    }
    if let Some(dim) = args.dim {
        config.dim = dim;
    }
    if let Some(m) = args.max_connections {
        config.max_connections = m;
    }
    if let Some(ef) = args.ef_construction {
        config.ef_construction = ef;
    }
    eprintln!("building a KB of {} entries", entries.len());
    let start = Instant::now();
    let kb = KnowledgeBase::build(config, entries)?;
    let build_seconds = start.elapsed().as_secs_f64();
    eprintln!(
        "built in {build_seconds:.1} s; searching {} queries",
        args.queries
    );

    let queries: Vec<Vec<f32>> = (0..args.queries)
        .map(|i| kb.embed(&synthesize(&questions, args.entries + 1 + i * 13)))
        .collect();
    // Time the HNSW searches back to back (as a serving KB runs them), then
    // check them against exhaustive search in a second pass.
    let mut latencies = Vec::with_capacity(queries.len());
    let mut results = Vec::with_capacity(queries.len());
    for q in &queries {
        let start = Instant::now();
        let hits = kb.search_vector(q, 10);
        latencies.push(start.elapsed().as_secs_f64() * 1e6);
        results.push(hits);
    }
    let mut found = 0usize;
    let mut wanted = 0usize;
    for (q, hits) in queries.iter().zip(&results) {
        let exact: HashSet<String> = kb
            .search_exhaustive(q, 10)
            .into_iter()
            .map(|h| h.entry.id.clone())
            .collect();
        wanted += exact.len();
        found += hits.iter().filter(|h| exact.contains(&h.entry.id)).count();
    }
    let start = Instant::now();
    for q in queries.iter().take(100) {
        std::hint::black_box(kb.search_exhaustive(q, 10));
    }
    let exhaustive_us = start.elapsed().as_secs_f64() * 1e6 / queries.len().min(100) as f64;
    latencies.sort_by(f64::total_cmp);
    let pct = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];

    let dir = tempfile::tempdir()?;
    let path = args
        .save
        .clone()
        .unwrap_or_else(|| dir.path().join("kb.cskb"));
    eprintln!("saving to {}", path.display());
    let start = Instant::now();
    let save_bytes = kb.save(&path)?;
    let save_seconds = start.elapsed().as_secs_f64();
    let mut load_runs = Vec::new();
    let mut identical = true;
    for run in 0..args.load_runs.max(1) {
        let start = Instant::now();
        let loaded = KnowledgeBase::load(&path)?;
        load_runs.push(start.elapsed().as_secs_f64());
        eprintln!("load {}: {:.2} s", run + 1, load_runs[run]);
        if run == 0 {
            identical = loaded.len() == kb.len()
                && queries.iter().zip(&results).all(|(q, hits)| {
                    let again = loaded.search_vector(q, 10);
                    again.len() == hits.len()
                        && again
                            .iter()
                            .zip(hits)
                            .all(|(a, b)| a.entry.id == b.entry.id && a.similarity == b.similarity)
                });
        }
    }
    let load_seconds = median(&load_runs);
    let json = serde_json::json!({
        "entries": kb.len(),
        "queries": queries.len(),
        "build_seconds": (build_seconds * 100.0).round() / 100.0,
        "search_p50_us": pct(0.5).round(),
        "search_p99_us": pct(0.99).round(),
        "exhaustive_mean_us": exhaustive_us.round(),
        "recall_at_10": found as f64 / wanted.max(1) as f64,
        "ef_search": kb.config().ef_search,
        "dim": kb.config().dim,
        "max_connections": kb.config().max_connections,
        "ef_construction": kb.config().ef_construction,
        "save_bytes": save_bytes,
        "save_seconds": round3(save_seconds),
        "load_seconds": round3(load_seconds),
        "load_seconds_runs": load_runs.iter().map(|&x| round3(x)).collect::<Vec<_>>(),
        "loaded_answers_identical": identical,
    });
    println!("{json}");
    Ok(())
}
