//! cs-intent's hot paths: featurising a question, predicting one, training
//! on BANKING77, and searching the knowledge base. Each group carries a
//! baseline measured in the same run, so the README can quote ratios.
//!
//! Run with `cargo bench --bench intent`. The BANKING77 groups read
//! `../shared/data/banking77/` (relative to the repository root) and are
//! skipped with a printed notice when it is absent; the others fall back to
//! the Chinese retail fixture that ships with cs-intent.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use cs::intent::dataset::read_labelled_csv;
use cs::intent::text::{normalize, FeatureConfig, Featurizer};
use cs::intent::{
    AgentConfig, Example, IntentAgent, IntentModel, KbConfig, KbEntry, KnowledgeBase,
};

fn read_csv(path: &Path) -> Option<Vec<Example>> {
    read_labelled_csv(path).ok().filter(|rows| !rows.is_empty())
}

fn banking77() -> Option<(Vec<Example>, Vec<Example>)> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/data/banking77"
    ));
    match (
        read_csv(&dir.join("train.csv")),
        read_csv(&dir.join("test.csv")),
    ) {
        (Some(train), Some(test)) => Some((train, test)),
        _ => {
            eprintln!(
                "notice: BANKING77 not found at {}; its benchmarks are skipped",
                dir.display()
            );
            None
        }
    }
}

fn retail_zh() -> (Vec<Example>, Vec<Example>) {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/cs-intent/tests/data"));
    match (
        read_csv(&dir.join("retail_zh_train.csv")),
        read_csv(&dir.join("retail_zh_test.csv")),
    ) {
        (Some(train), Some(test)) => (train, test),
        _ => panic!("the Chinese retail fixture ships with the repository"),
    }
}

/// The data the per-question benchmarks use: BANKING77 when present.
fn data() -> (Vec<Example>, Vec<Example>) {
    banking77().unwrap_or_else(retail_zh)
}

/// Featurise: the full path (normalise, n-grams, hashing, TF-IDF, L2) against
/// normalisation alone.
fn featurize(c: &mut Criterion) {
    let (train, test) = data();
    let texts: Vec<&str> = train.iter().map(|e| e.text.as_str()).collect();
    let featurizer = Featurizer::fit(FeatureConfig::default(), &texts);
    let mut group = c.benchmark_group("featurize");
    let mut i = 0;
    group.bench_function("normalize_only", |b| {
        b.iter(|| {
            i = (i + 1) % test.len();
            black_box(normalize(&test[i].text, 512))
        })
    });
    group.bench_function("tfidf_vector", |b| {
        b.iter(|| {
            i = (i + 1) % test.len();
            black_box(featurizer.transform(&test[i].text))
        })
    });
    let zh = "请问我上周买的羊毛围巾什么时候发货，可以开电子发票吗";
    group.bench_function("tfidf_vector_chinese", |b| {
        b.iter(|| black_box(featurizer.transform(black_box(zh))))
    });
    group.finish();
}

/// Predict one question: uncached (a new question each time, cache of one
/// entry) against a cache hit (the same question again).
fn predict(c: &mut Criterion) {
    let (train, test) = data();
    let config = AgentConfig {
        background_retrain: false,
        cache_capacity: 1,
        ..AgentConfig::default()
    };
    let agent = match IntentAgent::train(train.clone(), config) {
        Ok(agent) => agent,
        Err(e) => panic!("training the benchmark agent failed: {e}"),
    };
    let cached = match IntentAgent::train(train, AgentConfig::default()) {
        Ok(agent) => agent,
        Err(e) => panic!("training the benchmark agent failed: {e}"),
    };
    let mut group = c.benchmark_group("predict");
    let mut i = 0;
    group.bench_function("uncached", |b| {
        b.iter(|| {
            i = (i + 1) % test.len();
            black_box(agent.predict(&test[i].text).ok())
        })
    });
    let question = &test[0].text;
    group.bench_function("cache_hit", |b| {
        b.iter(|| black_box(cached.predict(question).ok()))
    });
    group.finish();
}

/// Train on BANKING77 (10,003 rows, 77 intents): the featuriser + SVM fit
/// alone (no calibration) as the baseline, against the full model with its
/// calibration fit.
fn train(c: &mut Criterion) {
    let Some((train, _)) = banking77() else {
        return;
    };
    let mut group = c.benchmark_group("train_banking77");
    group.sample_size(10);
    let no_calibration = cs::intent::ModelConfig {
        calibration_intent_share: 0.0,
        calibration_row_share: 0.0,
        ..cs::intent::ModelConfig::default()
    };
    group.bench_function("model_without_calibration", |b| {
        b.iter(|| black_box(IntentModel::train(&train, &no_calibration).ok()))
    });
    let config = cs::intent::ModelConfig::default();
    group.bench_function("model_with_calibration", |b| {
        b.iter(|| black_box(IntentModel::train(&train, &config).ok()))
    });
    group.finish();
}

/// KB search over 100,000 entries: HNSW against exhaustive search.
fn kb_search(c: &mut Criterion) {
    let (train, _) = data();
    let products = [
        "running shoes",
        "rice cooker",
        "蓝牙耳机",
        "羊毛围巾",
        "保温杯",
        "desk lamp",
    ];
    let question = |i: usize| {
        format!(
            "{} {} #{}",
            train[(i * 7919) % train.len()].text,
            products[(i / 3) % products.len()],
            i % 9973
        )
    };
    let entries: Vec<KbEntry> = (0..100_000)
        .map(|i| KbEntry {
            id: format!("faq-{i}"),
            questions: vec![question(i)],
            answer: format!("answer {i}"),
            intent: None,
            metadata: BTreeMap::new(),
        })
        .collect();
    let kb = match KnowledgeBase::build(KbConfig::default(), entries) {
        Ok(kb) => kb,
        Err(e) => panic!("building the benchmark KB failed: {e}"),
    };
    let queries: Vec<Vec<f32>> = (0..1000)
        .map(|i| kb.embed(&question(200_001 + i * 13)))
        .collect();
    let mut group = c.benchmark_group("kb_search_100k");
    let mut i = 0;
    group.bench_function("hnsw_top10", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            black_box(kb.search_vector(&queries[i], 10))
        })
    });
    group.sample_size(10);
    group.bench_function("exhaustive_top10", |b| {
        b.iter(|| {
            i = (i + 1) % queries.len();
            black_box(kb.search_exhaustive(&queries[i], 10))
        })
    });
    group.finish();
}

criterion_group!(benches, featurize, predict, train, kb_search);
criterion_main!(benches);
