//! The typed errors of cs-intent.

use std::path::PathBuf;

/// Everything that can go wrong training, predicting, saving or loading.
#[derive(Debug, thiserror::Error)]
pub enum IntentError {
    /// No usable training rows (none given, or every text normalised to nothing).
    #[error("the training set is empty: give at least one (text, intent) row for each of two or more intents")]
    EmptyTrainingSet,
    /// A classifier needs at least two intents to tell apart.
    #[error("the training set has only {found} intent(s); a classifier needs at least 2 (add rows for another intent, or answer that one intent without a model)")]
    TooFewIntents {
        /// How many distinct intents the rows had.
        found: usize,
    },
    /// An intent name was empty.
    #[error("row {row}: the intent name is empty; every row needs a non-empty intent")]
    EmptyIntent {
        /// Index of the offending row.
        row: usize,
    },
    /// A question was empty after normalisation.
    #[error("the question is empty (after normalisation nothing is left to classify)")]
    EmptyText,
    /// Reading or writing a model file failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// "read" or "write".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file does not start with the cs-intent magic bytes.
    #[error(
        "not a cs-intent model file (wrong magic bytes); was it written by IntentAgent::save?"
    )]
    NotAModelFile,
    /// The file was written by a format version this build cannot read.
    #[error("model file format version {found} is not supported (this build reads version {supported}); retrain or use a matching cs-intent version")]
    UnsupportedVersion {
        /// Version in the file.
        found: u16,
        /// Version this build reads.
        supported: u16,
    },
    /// The file ends before its declared length.
    #[error("the model file is truncated: expected {expected} payload bytes, found {found}")]
    Truncated {
        /// Declared payload length.
        expected: u64,
        /// Bytes actually present.
        found: u64,
    },
    /// The checksum does not match: the file was damaged.
    #[error("the model file is corrupt (checksum mismatch); restore it from a backup or retrain")]
    ChecksumMismatch,
    /// The payload passed the checksum but could not be decoded.
    #[error("the model file payload cannot be decoded: {0}")]
    Decode(String),
    /// Encoding the agent failed.
    #[error("cannot encode the agent: {0}")]
    Encode(String),
    /// A knowledge-base entry id was not found.
    #[error("no knowledge-base entry with id {0:?}")]
    UnknownEntry(String),
    /// A knowledge-base entry had no question text.
    #[error("knowledge-base entry {0:?} has no question variant with any text")]
    EmptyEntry(String),
    /// A labelled CSV file could not be read.
    #[error("cannot read labelled rows from {path}: {reason} (expected a CSV with a header row `text,category`)")]
    Dataset {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// Discovery was asked for an impossible clustering.
    #[error("cannot cluster {questions} question(s) into {clusters} group(s): {reason}")]
    Discovery {
        /// Questions given.
        questions: usize,
        /// Clusters asked for.
        clusters: usize,
        /// Why it failed.
        reason: String,
    },
    /// A sentence-encoder model directory could not be loaded.
    #[error("cannot load the sentence encoder from {path}: {reason} (expected a directory with config.json, tokenizer.json and model.safetensors of a BERT-family model such as all-MiniLM-L6-v2)")]
    EncoderModel {
        /// The model directory.
        path: PathBuf,
        /// What was missing or wrong.
        reason: String,
    },
    /// The sentence encoder failed on a text.
    #[error("the sentence encoder failed: {0}")]
    Encoding(String),
    /// The agent file holds sentence embeddings, but no encoder was given.
    #[error("this agent was trained with sentence embeddings: load it with IntentAgent::load_with_encoder and the same model (cs-intent feature `embeddings`)")]
    EncoderRequired,
    /// Stored embeddings were computed by another encoder than the one given.
    #[error("the stored embeddings come from another encoder (fingerprint {stored:08x}, dimension {stored_dim}) than the one given ({given:08x}, dimension {given_dim}); load with the model directory the agent was trained with, or retrain with this one")]
    EncoderMismatch {
        /// Fingerprint of the encoder the vectors were stored with.
        stored: u32,
        /// Their dimension.
        stored_dim: usize,
        /// Fingerprint of the encoder given.
        given: u32,
        /// Its dimension.
        given_dim: usize,
    },
}
