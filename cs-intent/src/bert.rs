//! [`SentenceEncoder`] (feature `embeddings`): a local BERT-family sentence
//! encoder, run on the CPU with candle. It reads `config.json`,
//! `tokenizer.json` and `model.safetensors` from a directory the host gives
//! and never touches a network. Sentence vectors are the attention-masked
//! mean of the last hidden states, L2-normalised: the pooling
//! sentence-transformers uses for all-MiniLM-L6-v2.
//!
//! ```no_run
//! use cs_intent::bert::SentenceEncoder;
//! use cs_intent::encoder::TextEncoder;
//!
//! let encoder = SentenceEncoder::load("/models/all-MiniLM-L6-v2")?;
//! let v = encoder.encode_batch(&["where is my parcel", "track my order"])?;
//! let cosine: f32 = v[0].iter().zip(&v[1]).map(|(a, b)| a * b).sum();
//! assert!(cosine > 0.5);
//! # Ok::<(), cs_intent::IntentError>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{Tokenizer, TruncationParams};

use crate::encoder::TextEncoder;
use crate::error::IntentError;

/// Knobs of the encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct EncoderConfig {
    /// Sentences per forward pass. Texts are sorted by length first, so a
    /// batch pads little.
    pub batch_size: usize,
    /// Longer texts are cut to this many tokens (special tokens included).
    pub max_tokens: usize,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            batch_size: 32,
            // Shop questions are short; all-MiniLM-L6-v2 was trained on 128.
            max_tokens: 128,
        }
    }
}

/// A BERT-family sentence encoder loaded from a local directory.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    config: EncoderConfig,
    dim: usize,
    fingerprint: u32,
    dir: PathBuf,
    /// Sentences run through the model since it was loaded.
    encoded: AtomicU64,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("dir", &self.dir)
            .field("dim", &self.dim)
            .field("fingerprint", &format_args!("{:08x}", self.fingerprint))
            .finish()
    }
}

fn read(dir: &Path, name: &str) -> Result<Vec<u8>, IntentError> {
    let path = dir.join(name);
    std::fs::read(&path).map_err(|e| IntentError::EncoderModel {
        path: dir.to_path_buf(),
        reason: format!("cannot read {}: {e}", path.display()),
    })
}

impl SentenceEncoder {
    /// Load the model in `dir` with the default [`EncoderConfig`].
    pub fn load(dir: impl AsRef<Path>) -> Result<SentenceEncoder, IntentError> {
        SentenceEncoder::load_with(dir, EncoderConfig::default())
    }

    /// Load the model in `dir`: `config.json` (a BERT config),
    /// `tokenizer.json` (a Hugging Face tokenizer) and `model.safetensors`.
    /// A missing, unreadable or inconsistent file is
    /// [`IntentError::EncoderModel`].
    pub fn load_with(
        dir: impl AsRef<Path>,
        config: EncoderConfig,
    ) -> Result<SentenceEncoder, IntentError> {
        let dir = dir.as_ref();
        let bad = |reason: String| IntentError::EncoderModel {
            path: dir.to_path_buf(),
            reason,
        };
        let config_json = read(dir, "config.json")?;
        let tokenizer_json = read(dir, "tokenizer.json")?;
        let weights = read(dir, "model.safetensors")?;
        let bert: Config = serde_json::from_slice(&config_json)
            .map_err(|e| bad(format!("config.json is not a BERT config: {e}")))?;
        let mut tokenizer = Tokenizer::from_bytes(&tokenizer_json)
            .map_err(|e| bad(format!("tokenizer.json cannot be read: {e}")))?;
        // Padding is done per batch here (to the batch's longest text), not
        // to the fixed length some tokenizer.json files ask for.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: config.max_tokens.clamp(8, bert.max_position_embeddings),
                ..TruncationParams::default()
            }))
            .map_err(|e| bad(format!("tokenizer truncation: {e}")))?;
        let mut hasher = crc32fast::Hasher::new();
        for part in [&config_json, &tokenizer_json, &weights] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update(&(config.max_tokens as u64).to_le_bytes());
        let fingerprint = hasher.finalize();
        let vb = VarBuilder::from_buffered_safetensors(weights, DType::F32, &Device::Cpu)
            .map_err(|e| bad(format!("model.safetensors cannot be read: {e}")))?;
        let model = BertModel::load(vb, &bert)
            .map_err(|e| bad(format!("model.safetensors does not fit config.json: {e}")))?;
        let encoder = SentenceEncoder {
            model,
            tokenizer,
            dim: bert.hidden_size,
            config: EncoderConfig {
                batch_size: config.batch_size.max(1),
                ..config
            },
            fingerprint,
            dir: dir.to_path_buf(),
            encoded: AtomicU64::new(0),
        };
        // One sentence through the model proves the weights and the
        // tokenizer work together before a host relies on them.
        encoder
            .encode_batch(&["hello"])
            .map_err(|e| bad(format!("a test sentence failed: {e}")))?;
        encoder.encoded.store(0, Ordering::Relaxed);
        Ok(encoder)
    }

    /// The directory the model was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The configuration.
    pub fn config(&self) -> &EncoderConfig {
        &self.config
    }

    /// Sentences run through the model since it was loaded (the check that
    /// stored vectors are reused rather than recomputed).
    pub fn sentences_encoded(&self) -> u64 {
        self.encoded.load(Ordering::Relaxed)
    }

    /// One forward pass over texts of similar length.
    fn encode_chunk(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, IntentError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            IntentError::Encoding(format!("{what}: {e} (model in {})", self.dir.display()))
        };
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| fail("tokenizing", &e))?;
        let longest = encodings
            .iter()
            .map(|e| e.get_ids().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let n = texts.len();
        let (mut ids, mut types, mut mask) = (
            vec![0u32; n * longest],
            vec![0u32; n * longest],
            vec![0u32; n * longest],
        );
        for (row, e) in encodings.iter().enumerate() {
            let at = row * longest;
            let len = e.get_ids().len();
            ids[at..at + len].copy_from_slice(e.get_ids());
            types[at..at + len].copy_from_slice(e.get_type_ids());
            mask[at..at + len].copy_from_slice(e.get_attention_mask());
        }
        let tensor = |v: Vec<u32>| Tensor::from_vec(v, (n, longest), &Device::Cpu);
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = tensor(ids)?;
            let types = tensor(types)?;
            let mask = tensor(mask)?;
            let hidden = self.model.forward(&ids, &types, Some(&mask))?;
            // Mean over the real tokens only: padding must not dilute the sentence.
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
            let norms = mean
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            mean.broadcast_div(&norms)?.to_vec2::<f32>()
        };
        let vectors = run().map_err(|e| fail("running the model", &e))?;
        self.encoded.fetch_add(n as u64, Ordering::Relaxed);
        Ok(vectors)
    }
}

impl TextEncoder for SentenceEncoder {
    fn dim(&self) -> usize {
        self.dim
    }

    fn fingerprint(&self) -> u32 {
        self.fingerprint
    }

    fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, IntentError> {
        // Shortest first, so each batch pads to a length close to its own.
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let mut out = vec![Vec::new(); texts.len()];
        for chunk in order.chunks(self.config.batch_size) {
            let batch: Vec<&str> = chunk.iter().map(|&i| texts[i]).collect();
            for (&i, vector) in chunk.iter().zip(self.encode_chunk(&batch)?) {
                out[i] = vector;
            }
        }
        Ok(out)
    }
}
