//! Dense sentence vectors that join the sparse features: the [`TextEncoder`]
//! contract, and the [`EmbeddingStore`] that keeps every training row's
//! vector so a retrain never encodes a row twice.
//!
//! The encoder the crate ships is [`crate::bert::SentenceEncoder`] (feature
//! `embeddings`): a local BERT-family model such as all-MiniLM-L6-v2. The
//! contract is a trait so the classifier, the agent and the knowledge base
//! hold one `Arc<dyn TextEncoder>` and are compiled the same with or without
//! the feature; without it no encoder exists and nothing here runs.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::IntentError;

/// Turns texts into L2-normalised dense vectors of a fixed dimension.
///
/// Implementations are deterministic: the same text gives the same vector,
/// which is what lets the agent store each training row's vector once.
pub trait TextEncoder: Send + Sync + std::fmt::Debug {
    /// The vector dimension (384 for all-MiniLM-L6-v2).
    fn dim(&self) -> usize;

    /// Identifies the model (weights, tokenizer, settings): vectors stored
    /// with one fingerprint are refused by an encoder with another.
    fn fingerprint(&self) -> u32;

    /// Encode texts (already normalised by [`crate::text::normalize`]), one
    /// unit vector of [`TextEncoder::dim`] per text, in order.
    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, IntentError>;
}

/// How a model uses an encoder's vectors: which encoder made them and how
/// strongly they count next to the sparse TF-IDF features (whose vector has
/// norm 1).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenseSpec {
    /// [`TextEncoder::dim`] of the encoder.
    pub dim: u32,
    /// [`TextEncoder::fingerprint`] of the encoder.
    pub fingerprint: u32,
    /// The embedding is scaled by this before it is appended to the sparse
    /// features (about 2 won on BANKING77, see the crate README).
    pub weight: f32,
}

/// The first feature column of the appended embedding: the hashed sparse
/// features stay below `2^30` ([`crate::text::FeatureConfig::dim`]), so the
/// dense columns sort after them and never collide.
pub const DENSE_COLUMN_BASE: u32 = 1 << 31;

/// Every vector the agent has computed, by normalised text, with the encoder
/// that computed them. Saved with the agent, so a loaded agent retrains
/// without encoding its rows again.
#[derive(Clone, Debug, Default)]
pub struct EmbeddingStore {
    spec: Option<DenseSpec>,
    vectors: HashMap<String, Vec<f32>>,
    /// Texts this store sent to an encoder, over its lifetime in this process.
    encoded: u64,
    /// Seconds spent encoding them.
    encode_seconds: f64,
}

/// The store as saved: its spec and vectors, sorted by text (deterministic bytes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SavedEmbeddings {
    /// The encoder and weight the vectors belong to.
    pub spec: DenseSpec,
    /// `(normalised text, vector)` pairs.
    pub vectors: Vec<(String, Vec<f32>)>,
}

impl EmbeddingStore {
    /// An empty store for vectors of this spec.
    pub fn new(spec: DenseSpec) -> EmbeddingStore {
        EmbeddingStore {
            spec: Some(spec),
            vectors: HashMap::new(),
            encoded: 0,
            encode_seconds: 0.0,
        }
    }

    /// The spec the vectors belong to (`None` for a store never used).
    pub fn spec(&self) -> Option<DenseSpec> {
        self.spec
    }

    /// Number of stored vectors.
    pub fn len(&self) -> usize {
        self.vectors.len()
    }

    /// True when no vector is stored.
    pub fn is_empty(&self) -> bool {
        self.vectors.is_empty()
    }

    /// The stored vector of a normalised text.
    pub fn get(&self, normalized: &str) -> Option<&[f32]> {
        self.vectors.get(normalized).map(Vec::as_slice)
    }

    /// Texts this store has sent to an encoder since it was created or loaded.
    pub fn encoded(&self) -> u64 {
        self.encoded
    }

    /// Seconds spent encoding since the store was created or loaded.
    pub fn encode_seconds(&self) -> f64 {
        self.encode_seconds
    }

    /// Encode the texts that have no stored vector yet (each distinct text
    /// once) and keep the results. Returns how many were encoded.
    pub fn ensure<S: AsRef<str>>(
        &mut self,
        encoder: &dyn TextEncoder,
        normalized: &[S],
    ) -> Result<usize, IntentError> {
        self.check_encoder(encoder)?;
        let mut missing: Vec<&str> = normalized
            .iter()
            .map(AsRef::as_ref)
            .filter(|t| !self.vectors.contains_key(*t))
            .collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(0);
        }
        let start = std::time::Instant::now();
        let vectors = encoder.encode_batch(&missing)?;
        self.encode_seconds += start.elapsed().as_secs_f64();
        if vectors.len() != missing.len() {
            return Err(IntentError::Encoding(format!(
                "the encoder returned {} vectors for {} texts",
                vectors.len(),
                missing.len()
            )));
        }
        for (text, vector) in missing.iter().zip(vectors) {
            self.vectors.insert((*text).to_string(), vector);
        }
        self.encoded += missing.len() as u64;
        Ok(missing.len())
    }

    /// Refuse an encoder other than the one the stored vectors came from.
    pub fn check_encoder(&self, encoder: &dyn TextEncoder) -> Result<(), IntentError> {
        match self.spec {
            Some(spec)
                if spec.fingerprint != encoder.fingerprint()
                    || spec.dim as usize != encoder.dim() =>
            {
                Err(IntentError::EncoderMismatch {
                    stored: spec.fingerprint,
                    stored_dim: spec.dim as usize,
                    given: encoder.fingerprint(),
                    given_dim: encoder.dim(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Capture the store for saving (`None` when it was never used).
    pub fn to_saved(&self) -> Option<SavedEmbeddings> {
        let spec = self.spec?;
        let mut vectors: Vec<(String, Vec<f32>)> = self
            .vectors
            .iter()
            .map(|(t, v)| (t.clone(), v.clone()))
            .collect();
        vectors.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Some(SavedEmbeddings { spec, vectors })
    }

    /// Restore a saved store, checking every vector (dimension, finite
    /// values, unique texts); a bad part is [`IntentError::Decode`].
    pub fn from_saved(saved: SavedEmbeddings) -> Result<EmbeddingStore, IntentError> {
        let dim = saved.spec.dim as usize;
        if !(1..=1 << 16).contains(&dim) || !saved.spec.weight.is_finite() {
            return Err(IntentError::Decode(format!(
                "stored embeddings: dimension {dim}, weight {}",
                saved.spec.weight
            )));
        }
        let mut vectors = HashMap::with_capacity(saved.vectors.len());
        for (text, vector) in saved.vectors {
            if vector.len() != dim || vector.iter().any(|x| !x.is_finite()) {
                return Err(IntentError::Decode(format!(
                    "stored embedding of {text:?} has {} values (want {dim}) or a non-finite one",
                    vector.len()
                )));
            }
            if vectors.insert(text, vector).is_some() {
                return Err(IntentError::Decode(
                    "a text has two stored embeddings".into(),
                ));
            }
        }
        Ok(EmbeddingStore {
            spec: Some(saved.spec),
            vectors,
            encoded: 0,
            encode_seconds: 0.0,
        })
    }
}

/// Scale `vector` by `weight` and append it to `sparse` as the dense columns.
pub(crate) fn append_dense(sparse: &mut crate::text::SparseVector, vector: &[f32], weight: f32) {
    sparse.indices.reserve(vector.len());
    sparse.values.reserve(vector.len());
    for (j, v) in vector.iter().enumerate() {
        sparse.indices.push(DENSE_COLUMN_BASE + j as u32);
        sparse.values.push(v * weight);
    }
}
