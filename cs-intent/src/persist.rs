//! Saving and loading a whole agent: model, calibration, memory, training
//! rows and knowledge base.
//!
//! The file is `MAGIC (8 bytes) | format version (u16 LE) | payload length
//! (u64 LE) | CRC-32 of the payload (u32 LE) | payload`, the payload being
//! the postcard encoding of [`SavedAgent`]. A foreign file fails on the magic,
//! a truncated one on the length, a damaged one on the checksum: each a typed
//! [`IntentError`], never a panic. The KB's HNSW index is not stored; it is
//! rebuilt from the entries on load (deterministic, and immune to hnsw_rs's
//! own file format changing).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::agent::{AgentConfig, IntentAgent};
use crate::error::IntentError;
use crate::kb::{KbEntry, KnowledgeBase};
use crate::memory::Memory;
use crate::model::{Example, IntentModel};

/// The first bytes of every cs-intent model file.
pub const MAGIC: [u8; 8] = *b"CSINTENT";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 8 + 2 + 8 + 4;

/// What a model file holds.
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
    /// Knowledge-base entries.
    pub kb: Vec<KbEntry>,
}

/// Frame a saved agent: header, checksum, postcard payload.
pub(crate) fn encode(saved: &SavedAgent) -> Result<Vec<u8>, IntentError> {
    let payload = postcard::to_allocvec(saved).map_err(|e| IntentError::Encode(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
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
            kb: shared.kb.read().entries().map(|e| (**e).clone()).collect(),
        };
        encode(&saved)
    }

    /// Decode an agent written by [`IntentAgent::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<IntentAgent, IntentError> {
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(IntentError::NotAModelFile);
        }
        if bytes.len() < HEADER_LEN {
            return Err(IntentError::Truncated {
                expected: HEADER_LEN as u64,
                found: bytes.len() as u64,
            });
        }
        let version = u16::from_le_bytes([bytes[8], bytes[9]]);
        if version != FORMAT_VERSION {
            return Err(IntentError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
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
        let saved: SavedAgent =
            postcard::from_bytes(payload).map_err(|e| IntentError::Decode(e.to_string()))?;
        saved.model.validate().map_err(IntentError::Decode)?;
        let mut memory = Memory::default();
        for (example, row) in saved.memory {
            memory.push(example, row, saved.model.featurizer());
        }
        let kb = KnowledgeBase::build(saved.config.kb.clone(), saved.kb)?;
        Ok(IntentAgent::assemble(
            saved.config,
            saved.rows,
            saved.model,
            memory,
            kb,
        ))
    }

    /// Save the agent to a file; returns the number of bytes written.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<u64, IntentError> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        // Write beside the target and rename, so a crash never leaves half a model.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| IntentError::Io {
                action: "write",
                path: path.to_path_buf(),
                source,
            })?;
        Ok(bytes.len() as u64)
    }

    /// Load an agent saved with [`IntentAgent::save`].
    pub fn load(path: impl AsRef<Path>) -> Result<IntentAgent, IntentError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| IntentError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        IntentAgent::from_bytes(&bytes)
    }
}
