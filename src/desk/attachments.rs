//! Where uploaded images and files go: behind [`Attachments`], with the
//! filesystem as the default ([`FsAttachments`]).
//!
//! Every file belongs to one conversation, and the HTTP layer serves it only
//! to that conversation's visitor and to agents. What a file may be (size,
//! images checked by their first bytes) is decided before it gets here, so a
//! backend only keeps bytes.

use std::path::PathBuf;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use cs_core::ConversationId;

/// A kept file's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Its id: 32 hex digits, unguessable.
    pub id: String,
    /// The conversation it was sent in.
    pub conversation: ConversationId,
    /// Its name, as the sender's device called it.
    pub name: String,
    /// Its type: an image type checked by its bytes, or `application/octet-stream`.
    pub mime: String,
    /// Its size.
    pub bytes: u64,
}

/// Why a file could not be kept or read.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    /// No file with this id.
    #[error("no such file")]
    NotFound,
    /// The backend failed.
    #[error("the file store failed: {0}; retry shortly")]
    Unavailable(String),
    /// The record beside the file does not decode.
    #[error("the file's record is damaged: {0}")]
    Corrupt(String),
}

/// Keeps uploaded files. Implement it to put them in object storage.
#[async_trait]
pub trait Attachments: Send + Sync + 'static {
    /// Keeps `body` as a file of `conversation`.
    ///
    /// # Errors
    /// [`AttachmentError::Unavailable`].
    async fn put(
        &self,
        conversation: ConversationId,
        name: &str,
        mime: &str,
        body: Bytes,
    ) -> Result<StoredFile, AttachmentError>;

    /// A kept file and its bytes.
    ///
    /// # Errors
    /// [`AttachmentError::NotFound`] for an unknown id.
    async fn get(&self, id: &str) -> Result<(StoredFile, Bytes), AttachmentError>;
}

/// Files in a directory: `ID` holds the bytes, `ID.json` the record.
#[derive(Clone, Debug)]
pub struct FsAttachments {
    dir: PathBuf,
}

impl FsAttachments {
    /// Files in `dir`, created if missing.
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }
}

/// A file id is exactly 32 lowercase hex digits; anything else names no
/// file, so no path can be built from a request's text.
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[async_trait]
impl Attachments for FsAttachments {
    async fn put(
        &self,
        conversation: ConversationId,
        name: &str,
        mime: &str,
        body: Bytes,
    ) -> Result<StoredFile, AttachmentError> {
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|e| AttachmentError::Unavailable(format!("no randomness: {e}")))?;
        let file = StoredFile {
            id: hex::encode(id),
            conversation,
            name: name.to_owned(),
            mime: mime.to_owned(),
            bytes: body.len() as u64,
        };
        let record =
            serde_json::to_vec(&file).map_err(|e| AttachmentError::Unavailable(e.to_string()))?;
        let failed = |e: std::io::Error| AttachmentError::Unavailable(e.to_string());
        tokio::fs::write(self.dir.join(&file.id), &body)
            .await
            .map_err(failed)?;
        // The record last: a file without one is not served.
        tokio::fs::write(self.dir.join(format!("{}.json", file.id)), record)
            .await
            .map_err(failed)?;
        Ok(file)
    }

    async fn get(&self, id: &str) -> Result<(StoredFile, Bytes), AttachmentError> {
        if !valid_id(id) {
            return Err(AttachmentError::NotFound);
        }
        let read = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => AttachmentError::NotFound,
            _ => AttachmentError::Unavailable(e.to_string()),
        };
        let record = tokio::fs::read(self.dir.join(format!("{id}.json")))
            .await
            .map_err(read)?;
        let file: StoredFile =
            serde_json::from_slice(&record).map_err(|e| AttachmentError::Corrupt(e.to_string()))?;
        let bytes = tokio::fs::read(self.dir.join(id)).await.map_err(read)?;
        Ok((file, Bytes::from(bytes)))
    }
}
