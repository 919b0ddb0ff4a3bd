//! Saving and loading a whole agent (model, calibration, memory, training
//! rows and knowledge base) or a knowledge base on its own.
//!
//! A file is `MAGIC (8 bytes) | format version (u16 LE) | payload length
//! (u64 LE) | CRC-32 of the payload (u32 LE) | payload`, the payload being
//! the postcard encoding of [`SavedAgent`] (magic [`MAGIC`]) or of
//! [`SavedKb`] (magic [`KB_MAGIC`]). A foreign file fails on the magic, a
//! truncated one on the length, a damaged one on the checksum: each a typed
//! [`IntentError`], never a panic. What passes the checksum is still checked
//! part by part before use (see [`KnowledgeBase::from_saved`]).
//!
//! Format 2 stores the KB's embedded points and its HNSW graph, so a 100,000
//! entry KB loads without being re-indexed (see the crate README). Format 3
//! adds the sentence embeddings (feature `embeddings`): every training row's
//! vector with the fingerprint of the encoder that computed it, and the
//! encoder's spec beside the KB's points, so a loaded agent retrains without
//! encoding a row again. Format 2 files (and KB format 1 files) still load,
//! as agents without embeddings. A format 1 file (the KB as bare entries) is
//! refused with [`IntentError::UnsupportedVersion`]: its model types have
//! changed too, so retrain from the shop's rows.
//!
//! A file with embeddings needs the encoder it was trained with
//! ([`IntentAgent::load_with_encoder`]); without one it is
//! [`IntentError::EncoderRequired`], with another
//! [`IntentError::EncoderMismatch`].

use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::agent::{AgentConfig, IntentAgent};
use crate::encoder::{EmbeddingStore, SavedEmbeddings, TextEncoder};
use crate::error::IntentError;
use crate::kb::{KnowledgeBase, SavedKb, SavedKbV1};
use crate::memory::Memory;
use crate::model::{Example, IntentModel};

/// The first bytes of every cs-intent agent file.
pub const MAGIC: [u8; 8] = *b"CSINTENT";
/// The agent format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 3;
/// The first bytes of a knowledge-base file ([`KnowledgeBase::save`]).
pub const KB_MAGIC: [u8; 8] = *b"CSINTKB\0";
/// The knowledge-base format version this build writes and reads.
pub const KB_FORMAT_VERSION: u16 = 2;
const HEADER_LEN: usize = 8 + 2 + 8 + 4;

/// What an agent file holds.
#[derive(Serialize, Deserialize)]
pub struct SavedAgent {
    /// The agent's configuration.
    pub config: AgentConfig,
    /// Every training row, so a loaded agent can keep retraining.
    pub rows: Vec<Example>,
    /// The trained model with its calibration.
    pub model: IntentModel,
    /// Memory entries not yet folded into the model: `(example, row)`.
    pub memory: Vec<(Example, usize)>,
    /// The knowledge base with its index.
    pub kb: SavedKb,
    /// Every training row's sentence embedding, when the agent has an encoder.
    pub embeddings: Option<SavedEmbeddings>,
}

/// What a format 2 agent file holds (no sentence embeddings).
#[derive(Deserialize)]
struct SavedAgentV2 {
    config: AgentConfig,
    rows: Vec<Example>,
    model: IntentModel,
    memory: Vec<(Example, usize)>,
    kb: SavedKbV1,
}

impl From<SavedAgentV2> for SavedAgent {
    fn from(v2: SavedAgentV2) -> SavedAgent {
        SavedAgent {
            config: v2.config,
            rows: v2.rows,
            model: v2.model,
            memory: v2.memory,
            kb: v2.kb.into(),
            embeddings: None,
        }
    }
}

/// Frame a payload: magic, version, length, checksum.
fn frame(magic: &[u8; 8], version: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Check a frame's magic, length and checksum; returns the version (one of
/// `versions`) and the payload.
fn unframe<'a>(
    magic: &[u8; 8],
    versions: &[u16],
    bytes: &'a [u8],
) -> Result<(u16, &'a [u8]), IntentError> {
    if bytes.len() < magic.len() || bytes[..magic.len()] != magic[..] {
        return Err(IntentError::NotAModelFile);
    }
    if bytes.len() < HEADER_LEN {
        return Err(IntentError::Truncated {
            expected: HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if !versions.contains(&version) {
        return Err(IntentError::UnsupportedVersion {
            found: version,
            supported: versions.iter().copied().max().unwrap_or_default(),
        });
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[10..18]);
    let expected = u64::from_le_bytes(len);
    let mut crc = [0u8; 4];
    crc.copy_from_slice(&bytes[18..22]);
    let payload = &bytes[HEADER_LEN..];
    if (payload.len() as u64) < expected {
        return Err(IntentError::Truncated {
            expected,
            found: payload.len() as u64,
        });
    }
    let payload = &payload[..expected as usize];
    if crc32fast::hash(payload) != u32::from_le_bytes(crc) {
        return Err(IntentError::ChecksumMismatch);
    }
    Ok((version, payload))
}

fn encode_payload<T: Serialize>(value: &T) -> Result<Vec<u8>, IntentError> {
    postcard::to_allocvec(value).map_err(|e| IntentError::Encode(e.to_string()))
}

fn decode_payload<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, IntentError> {
    postcard::from_bytes(payload).map_err(|e| IntentError::Decode(e.to_string()))
}

/// Frame a saved agent: header, checksum, postcard payload.
pub(crate) fn encode(saved: &SavedAgent) -> Result<Vec<u8>, IntentError> {
    Ok(frame(&MAGIC, FORMAT_VERSION, &encode_payload(saved)?))
}

/// Write `bytes` beside `path` and rename, so a crash never leaves half a file.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<u64, IntentError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| IntentError::Io {
            action: "write",
            path: path.to_path_buf(),
            source,
        })?;
    Ok(bytes.len() as u64)
}

fn read_file(path: &Path) -> Result<Vec<u8>, IntentError> {
    std::fs::read(path).map_err(|source| IntentError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

impl KnowledgeBase {
    /// Encode the KB (entries, embeddings and HNSW graph) into the versioned,
    /// checksummed format.
    pub fn to_bytes(&self) -> Result<Vec<u8>, IntentError> {
        Ok(frame(
            &KB_MAGIC,
            KB_FORMAT_VERSION,
            &encode_payload(&self.to_saved()?)?,
        ))
    }

    /// Decode a KB written by [`KnowledgeBase::to_bytes`]; its graph is
    /// restored, not rebuilt. A KB saved with sentence embeddings needs
    /// [`KnowledgeBase::from_bytes_with_encoder`].
    pub fn from_bytes(bytes: &[u8]) -> Result<KnowledgeBase, IntentError> {
        KnowledgeBase::from_saved_with(decode_kb(bytes)?, None)
    }

    /// Decode a KB saved with sentence embeddings, with the encoder it was
    /// built with.
    pub fn from_bytes_with_encoder(
        bytes: &[u8],
        encoder: Arc<dyn TextEncoder>,
    ) -> Result<KnowledgeBase, IntentError> {
        KnowledgeBase::from_saved_with(decode_kb(bytes)?, Some(encoder))
    }

    /// Save the KB to a file; returns the number of bytes written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<u64, IntentError> {
        write_atomically(path.as_ref(), &self.to_bytes()?)
    }

    /// Load a KB saved with [`KnowledgeBase::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<KnowledgeBase, IntentError> {
        KnowledgeBase::from_bytes(&read_file(path.as_ref())?)
    }

    /// Load a KB saved with sentence embeddings, with its encoder.
    pub fn load_with_encoder(
        path: impl AsRef<Path>,
        encoder: Arc<dyn TextEncoder>,
    ) -> Result<KnowledgeBase, IntentError> {
        KnowledgeBase::from_bytes_with_encoder(&read_file(path.as_ref())?, encoder)
    }
}

fn decode_kb(bytes: &[u8]) -> Result<SavedKb, IntentError> {
    match unframe(&KB_MAGIC, &[1, KB_FORMAT_VERSION], bytes)? {
        (1, payload) => Ok(decode_payload::<SavedKbV1>(payload)?.into()),
        (_, payload) => decode_payload(payload),
    }
}

impl IntentAgent {
    /// Encode the whole agent into the versioned, checksummed format.
    pub fn to_bytes(&self) -> Result<Vec<u8>, IntentError> {
        let shared = self.shared();
        let snapshot = shared.snapshot.load_full();
        let saved = SavedAgent {
            config: shared.config.clone(),
            rows: shared.rows.lock().clone(),
            model: (*snapshot.model).clone(),
            memory: snapshot
                .memory
                .entries()
                .iter()
                .map(|e| (e.example.clone(), e.row))
                .collect(),
            kb: shared.kb.read().to_saved()?,
            embeddings: shared.embeddings.lock().to_saved(),
        };
        encode(&saved)
    }

    /// Decode an agent written by [`IntentAgent::to_bytes`]. An agent saved
    /// with sentence embeddings needs [`IntentAgent::from_bytes_with_encoder`].
    pub fn from_bytes(bytes: &[u8]) -> Result<IntentAgent, IntentError> {
        IntentAgent::decode(bytes, None)
    }

    /// Decode an agent saved with sentence embeddings, with the encoder it
    /// was trained with (checked by fingerprint). Its stored vectors are
    /// reused: nothing is encoded until new rows arrive. An agent saved
    /// without embeddings gets the encoder for its next retrain.
    pub fn from_bytes_with_encoder(
        bytes: &[u8],
        encoder: Arc<dyn TextEncoder>,
    ) -> Result<IntentAgent, IntentError> {
        IntentAgent::decode(bytes, Some(encoder))
    }

    fn decode(
        bytes: &[u8],
        encoder: Option<Arc<dyn TextEncoder>>,
    ) -> Result<IntentAgent, IntentError> {
        let mut saved: SavedAgent = match unframe(&MAGIC, &[2, FORMAT_VERSION], bytes)? {
            (2, payload) => decode_payload::<SavedAgentV2>(payload)?.into(),
            (_, payload) => decode_payload(payload)?,
        };
        let store = match saved.embeddings {
            None => None,
            Some(embeddings) => {
                let store = EmbeddingStore::from_saved(embeddings)?;
                let encoder = encoder.as_deref().ok_or(IntentError::EncoderRequired)?;
                store.check_encoder(encoder)?;
                Some(store)
            }
        };
        saved
            .model
            .set_dense_spec(store.as_ref().and_then(|s| s.spec()));
        saved.model.validate().map_err(IntentError::Decode)?;
        let mut memory = Memory::default();
        for (example, row) in saved.memory {
            memory.push(example, row, saved.model.featurizer());
        }
        let kb = KnowledgeBase::from_saved_with(saved.kb, encoder.clone())?;
        let store = match (store, &encoder) {
            (Some(store), _) => store,
            // Saved without embeddings, loaded with an encoder: the next
            // retrain encodes the rows and appends their vectors.
            (None, Some(encoder)) => EmbeddingStore::new(crate::encoder::DenseSpec {
                dim: encoder.dim() as u32,
                fingerprint: encoder.fingerprint(),
                weight: crate::agent::Embeddings::DEFAULT_WEIGHT,
            }),
            (None, None) => EmbeddingStore::default(),
        };
        Ok(IntentAgent::assemble(
            saved.config,
            saved.rows,
            saved.model,
            memory,
            kb,
            encoder,
            store,
        ))
    }

    /// Save the agent to a file; returns the number of bytes written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<u64, IntentError> {
        write_atomically(path.as_ref(), &self.to_bytes()?)
    }

    /// Load an agent saved with [`IntentAgent::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<IntentAgent, IntentError> {
        IntentAgent::from_bytes(&read_file(path.as_ref())?)
    }

    /// Load an agent saved with sentence embeddings, with its encoder (see
    /// [`IntentAgent::from_bytes_with_encoder`]).
    pub fn load_with_encoder(
        path: impl AsRef<Path>,
        encoder: Arc<dyn TextEncoder>,
    ) -> Result<IntentAgent, IntentError> {
        IntentAgent::from_bytes_with_encoder(&read_file(path.as_ref())?, encoder)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kb::{KbConfig, KbEntry};
    use std::collections::BTreeMap;

    #[test]
    fn a_format_1_agent_file_is_refused_with_its_version() {
        let bytes = frame(&MAGIC, 1, b"an old payload");
        assert!(matches!(
            IntentAgent::from_bytes(&bytes),
            Err(IntentError::UnsupportedVersion {
                found: 1,
                supported: FORMAT_VERSION
            })
        ));
    }

    /// A format 2 agent file (written before sentence embeddings) still
    /// loads. Without embeddings the format 3 payload is the format 2 one
    /// plus two `None` tags at its end: the KB's encoder spec (the KB is the
    /// last but one field) and the stored embeddings.
    #[test]
    fn format_2_agent_and_format_1_kb_files_still_load() {
        let rows = vec![
            Example::new("where is my parcel", "track"),
            Example::new("track my order", "track"),
            Example::new("refund please", "refund"),
            Example::new("money back", "refund"),
        ];
        let agent = IntentAgent::train(
            rows,
            AgentConfig {
                background_retrain: false,
                ..AgentConfig::default()
            },
        )
        .unwrap();
        let bytes = agent.to_bytes().unwrap();
        let payload = &bytes[HEADER_LEN..];
        assert_eq!(payload[payload.len() - 2..], [0, 0]);
        let v2 = frame(&MAGIC, 2, &payload[..payload.len() - 2]);
        let old = IntentAgent::from_bytes(&v2).unwrap();
        assert_eq!(
            old.predict("where is my parcel").unwrap().intent,
            agent.predict("where is my parcel").unwrap().intent
        );
        assert_eq!(old.to_bytes().unwrap(), bytes);

        let kb = KnowledgeBase::build(
            KbConfig::default(),
            vec![KbEntry {
                id: "a".into(),
                questions: vec!["where is my parcel".into()],
                answer: "x".into(),
                intent: None,
                metadata: BTreeMap::new(),
            }],
        )
        .unwrap();
        let bytes = kb.to_bytes().unwrap();
        let payload = &bytes[HEADER_LEN..];
        let v1 = frame(&KB_MAGIC, 1, &payload[..payload.len() - 1]);
        let old = KnowledgeBase::from_bytes(&v1).unwrap();
        assert_eq!(old.search("parcel", 1)[0].entry.id, "a");
    }

    #[test]
    fn stored_embeddings_of_the_wrong_size_are_a_decode_error() {
        use crate::encoder::{DenseSpec, EmbeddingStore, SavedEmbeddings};
        let spec = DenseSpec {
            dim: 4,
            fingerprint: 7,
            weight: 2.0,
        };
        let good = SavedEmbeddings {
            spec,
            vectors: vec![("hello".into(), vec![0.5; 4])],
        };
        assert_eq!(EmbeddingStore::from_saved(good.clone()).unwrap().len(), 1);
        let short = SavedEmbeddings {
            vectors: vec![("hello".into(), vec![0.5; 3])],
            ..good.clone()
        };
        assert!(matches!(
            EmbeddingStore::from_saved(short),
            Err(IntentError::Decode(_))
        ));
        let twice = SavedEmbeddings {
            vectors: vec![("a".into(), vec![0.5; 4]), ("a".into(), vec![0.5; 4])],
            ..good
        };
        assert!(matches!(
            EmbeddingStore::from_saved(twice),
            Err(IntentError::Decode(_))
        ));
    }

    #[test]
    fn a_well_checksummed_kb_with_a_bad_part_is_a_decode_error() {
        let kb = KnowledgeBase::build(
            KbConfig::default(),
            vec![KbEntry {
                id: "a".into(),
                questions: vec!["where is my parcel".into()],
                answer: "x".into(),
                intent: None,
                metadata: BTreeMap::new(),
            }],
        )
        .unwrap();
        let mut bytes = kb.to_bytes().unwrap();
        // The saved config's dimension is the payload's first field (a varint):
        // 128 -> 0x80 0x01. Make it 129, so no stored vector fits; re-checksum.
        let payload = HEADER_LEN;
        assert_eq!(bytes[payload..payload + 2], [0x80, 0x01]);
        bytes[payload] = 0x81;
        let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
        bytes[18..22].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(
            KnowledgeBase::from_bytes(&bytes),
            Err(IntentError::Decode(_))
        ));
    }
}
