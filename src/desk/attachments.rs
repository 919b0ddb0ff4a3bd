//! Where uploaded images and files go: behind [`Attachments`], with the
//! filesystem as the default ([`FsAttachments`]).
//!
//! Every file belongs to one conversation, and the HTTP layer serves it only
//! to that conversation's visitor and to agents. What a file may be is
//! decided before it gets here, so a backend only keeps bytes:
//!
//! - its size, at most [`DeskSettings::max_upload_bytes`], checked against
//!   `Content-Length` before a byte is read and again while the body streams
//!   (the stream a backend is given ends in [`AttachmentError::TooLarge`]);
//! - an image's type, by its first bytes;
//! - the quotas of [`UploadLimits`]: files and bytes per visitor per day, and
//!   per conversation (the desk asks a backend for the latter with
//!   [`Attachments::usage`], so it survives a restart);
//! - how long a file is kept ([`UploadLimits::retention`]): the desk calls
//!   [`Attachments::remove_older_than`] once at start and then hourly.
//!
//! Bytes travel as a [`ByteStream`] both ways, so neither an upload nor a
//! download is ever whole in memory.
//!
//! [`DeskSettings::max_upload_bytes`]: super::DeskSettings::max_upload_bytes

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use cs_core::ConversationId;

use super::private_fs::{create_private_dir, private_file};

/// A file's bytes, in order, chunk by chunk. An `Err` ends the stream: an
/// upload that ended early or grew too large, or a read that failed.
pub type ByteStream = BoxStream<'static, Result<Bytes, AttachmentError>>;

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
    /// When it was kept, in milliseconds since the Unix epoch; retention
    /// counts from here. `0` in records written before it was kept (a
    /// backend then goes by what else it knows, such as the file's time).
    #[serde(default)]
    pub created_ms: u64,
}

/// How many files a conversation holds, and their bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Files.
    pub files: u64,
    /// Their bytes, in all.
    pub bytes: u64,
}

/// How much a visitor may send and a conversation may hold, and how long
/// files are kept. Set a limit to `u64::MAX` to lift it.
///
/// The per-visitor counters are the desk's, in memory: they start again at
/// midnight UTC and at a restart, and each node of a cluster keeps its own.
/// The per-conversation ones ask the backend ([`Attachments::usage`]), plus
/// the uploads still arriving on this node.
///
/// ```
/// use std::time::Duration;
/// use cs::desk::{DeskSettings, UploadLimits};
///
/// let settings = DeskSettings {
///     uploads: UploadLimits {
///         visitor_files_per_day: 20,
///         retention: Some(Duration::from_secs(30 * 24 * 3600)),
///         ..UploadLimits::default()
///     },
///     ..DeskSettings::default()
/// };
/// # assert_eq!(settings.uploads.conversation_files, 100);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadLimits {
    /// Files one visitor may send in a day (UTC), over all their
    /// conversations. Agents have no such limit. Default 50.
    pub visitor_files_per_day: u64,
    /// Bytes one visitor may send in a day (UTC). Default 100 MiB.
    pub visitor_bytes_per_day: u64,
    /// Files one conversation may hold, whoever sent them (agents too).
    /// Default 100.
    pub conversation_files: u64,
    /// Bytes one conversation may hold, whoever sent them. Default 200 MiB.
    pub conversation_bytes: u64,
    /// How long a file is kept after its upload; `None` keeps files for
    /// ever. Conversations are never deleted in cs, so a file's age is the
    /// only thing that ends it. Default 90 days.
    pub retention: Option<Duration>,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            visitor_files_per_day: 50,
            visitor_bytes_per_day: 100 * 1024 * 1024,
            conversation_files: 100,
            conversation_bytes: 200 * 1024 * 1024,
            retention: Some(Duration::from_secs(90 * 24 * 3600)),
        }
    }
}

/// Why a file could not be kept or read.
#[derive(Debug, thiserror::Error)]
pub enum AttachmentError {
    /// No file with this id.
    #[error("no such file")]
    NotFound,
    /// The upload is larger than the desk takes.
    #[error("the file is larger than {limit} bytes, the most this desk takes (DeskSettings::max_upload_bytes); send a smaller file")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The upload's body ended before it was complete: the client hung up,
    /// or paused longer than the server waits.
    #[error("the upload ended before the file was complete ({0}); send it again")]
    Aborted(String),
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
    /// Keeps `body` as a file of `conversation`, and answers its record
    /// with its real size.
    ///
    /// Nothing may be kept, not even in part, unless `body` ends without
    /// an error; the future may also be dropped mid-way (the client hung
    /// up), which must leave nothing behind either.
    ///
    /// # Errors
    /// The first `Err` of `body`, as it is; [`AttachmentError::Unavailable`].
    async fn put(
        &self,
        conversation: ConversationId,
        name: &str,
        mime: &str,
        body: ByteStream,
    ) -> Result<StoredFile, AttachmentError>;

    /// A kept file's record, and its bytes as a stream of exactly
    /// [`StoredFile::bytes`] bytes.
    ///
    /// # Errors
    /// [`AttachmentError::NotFound`] for an unknown id.
    async fn get(&self, id: &str) -> Result<(StoredFile, ByteStream), AttachmentError>;

    /// How many files `conversation` holds, and their bytes: the quota
    /// [`UploadLimits::conversation_files`] and
    /// [`UploadLimits::conversation_bytes`] are checked against it before
    /// every upload, so it should be cheap.
    ///
    /// # Errors
    /// [`AttachmentError::Unavailable`].
    async fn usage(&self, conversation: ConversationId) -> Result<Usage, AttachmentError>;

    /// Removes every file kept at or before `cutoff`; answers how many.
    ///
    /// The default removes nothing: keep it only for a backend that
    /// expires files by itself (an object store's lifecycle rule, say),
    /// or [`UploadLimits::retention`] means nothing.
    ///
    /// # Errors
    /// [`AttachmentError::Unavailable`].
    async fn remove_older_than(&self, cutoff: SystemTime) -> Result<usize, AttachmentError> {
        let _ = cutoff;
        Ok(0)
    }
}

/// The suffix of a file being written; it is renamed without it once
/// complete, so a name without it always holds a whole file.
const PART: &str = ".part";

/// A download is read in chunks of this size: big enough that a 10 MiB
/// file is a few hundred reads, small enough that an unread download holds
/// next to nothing.
const READ_CHUNK: usize = 64 * 1024;

/// Files in a directory: `ID` holds the bytes, `ID.json` the record.
///
/// - An upload is written to `ID.part` and renamed to `ID` only once it is
///   complete and on disk; then its record is written the same way. A
///   failed or dropped upload removes its `.part` file at once; one left by
///   a process that died is removed by the next process's first scan.
/// - On unix, the directory is created `0700` and every file `0600`: only
///   the desk's user reads them.
/// - [`Attachments::usage`] comes from an index built by one scan of the
///   records, at the first upload or query after start, then kept by `put`
///   and `remove_older_than`. One scan per process is cheap next to an
///   upload; reading every record on every upload would not be. So one
///   process should own a directory: another's uploads are not counted
///   until a restart.
/// - [`Attachments::remove_older_than`] reads every record (an hourly scan
///   of small files), by [`StoredFile::created_ms`], or for a record
///   written before that field by the record's modification time.
#[derive(Clone, Debug)]
pub struct FsAttachments {
    dir: PathBuf,
    index: Arc<tokio::sync::OnceCell<DashMap<ConversationId, Usage>>>,
}

impl FsAttachments {
    /// Files in `dir`, created if missing (`0700` on unix).
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn new(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        create_private_dir(&dir)?;
        Ok(Self {
            dir,
            index: Arc::default(),
        })
    }

    /// The per-conversation index, built by the first caller.
    async fn index(&self) -> Result<&DashMap<ConversationId, Usage>, AttachmentError> {
        self.index.get_or_try_init(|| scan(&self.dir)).await
    }
}

/// A file id is exactly 32 lowercase hex digits; anything else names no
/// file, so no path can be built from a request's text.
pub(crate) fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn unavailable(e: std::io::Error) -> AttachmentError {
    AttachmentError::Unavailable(e.to_string())
}

/// Milliseconds since the Unix epoch (0 before it).
fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A path removed on drop unless kept: a `put` that fails, or whose future
/// is dropped (the client hung up), leaves nothing. Drop cannot await, so
/// the removal is one blocking `unlink`, which does not wait on the disk.
struct Removed(Option<PathBuf>);

impl Removed {
    fn new(path: PathBuf) -> Self {
        Self(Some(path))
    }

    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Removed {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            if let Err(e) = std::fs::remove_file(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove an unfinished upload");
                }
            }
        }
    }
}

/// A new file only the desk's user may read, failing if the name exists.
///
/// Written on the blocking pool one chunk at a time, from the chunk itself:
/// `tokio::fs::File` would copy each into a buffer of its own and keep that
/// buffer, which thirty stalled uploads then hold thirty times.
struct Private(Option<std::fs::File>);

impl Private {
    async fn create(path: &Path) -> Result<Self, AttachmentError> {
        let file = tokio::fs::OpenOptions::from(private_file())
            .open(path)
            .await
            .map_err(unavailable)?;
        Ok(Self(Some(file.into_std().await)))
    }

    /// Runs `op` on the file on the blocking pool.
    async fn with(
        &mut self,
        op: impl FnOnce(&mut std::fs::File) -> std::io::Result<()> + Send + 'static,
    ) -> Result<(), AttachmentError> {
        let mut file = self.0.take().ok_or_else(|| {
            AttachmentError::Unavailable("an earlier write to this file failed".to_owned())
        })?;
        let file = tokio::task::spawn_blocking(move || op(&mut file).map(|()| file))
            .await
            .map_err(|e| AttachmentError::Unavailable(e.to_string()))?
            .map_err(unavailable)?;
        self.0 = Some(file);
        Ok(())
    }

    async fn write(&mut self, chunk: Bytes) -> Result<(), AttachmentError> {
        self.with(move |file| std::io::Write::write_all(file, &chunk))
            .await
    }

    /// Puts the bytes on disk before a name says the file is whole.
    async fn sync(mut self) -> Result<(), AttachmentError> {
        self.with(|file| file.sync_all()).await
    }
}

/// The record of `id`.
async fn read_record(dir: &Path, id: &str) -> Result<StoredFile, AttachmentError> {
    let record = tokio::fs::read(dir.join(format!("{id}.json")))
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => AttachmentError::NotFound,
            _ => unavailable(e),
        })?;
    serde_json::from_slice(&record).map_err(|e| AttachmentError::Corrupt(e.to_string()))
}

/// The ids of the records in `dir`; removes what a dead process left half
/// written when `clean` (only the first scan may: later, a `.part` file
/// may be an upload in flight).
async fn record_ids(dir: &Path, clean: bool) -> Result<Vec<String>, AttachmentError> {
    let mut ids = Vec::new();
    let mut entries = tokio::fs::read_dir(dir).await.map_err(unavailable)?;
    while let Some(entry) = entries.next_entry().await.map_err(unavailable)? {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if clean && name.ends_with(PART) {
            if let Err(e) = tokio::fs::remove_file(entry.path()).await {
                tracing::warn!(file = name, error = %e, "cannot remove an unfinished upload");
            }
        } else if let Some(id) = name.strip_suffix(".json").filter(|id| valid_id(id)) {
            ids.push(id.to_owned());
        }
    }
    Ok(ids)
}

/// Every conversation's usage, from the records in `dir`.
async fn scan(dir: &Path) -> Result<DashMap<ConversationId, Usage>, AttachmentError> {
    let index: DashMap<ConversationId, Usage> = DashMap::new();
    for id in record_ids(dir, true).await? {
        match read_record(dir, &id).await {
            Ok(file) => {
                let mut usage = index.entry(file.conversation).or_default();
                usage.files += 1;
                usage.bytes += file.bytes;
            }
            Err(e) => tracing::warn!(file = id, error = %e, "a file's record is not counted"),
        }
    }
    Ok(index)
}

#[async_trait]
impl Attachments for FsAttachments {
    async fn put(
        &self,
        conversation: ConversationId,
        name: &str,
        mime: &str,
        mut body: ByteStream,
    ) -> Result<StoredFile, AttachmentError> {
        // Built before any file is written, so the first scan never sees
        // (and removes) an upload of this process in flight.
        let index = self.index().await?;
        let mut id = [0u8; 16];
        getrandom::fill(&mut id)
            .map_err(|e| AttachmentError::Unavailable(format!("no randomness: {e}")))?;
        let id = hex::encode(id);

        let part = Removed::new(self.dir.join(format!("{id}{PART}")));
        let mut out = Private::create(part.path()).await?;
        let mut bytes = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            bytes += chunk.len() as u64;
            out.write(chunk).await?;
        }
        out.sync().await?;

        let file = StoredFile {
            id: id.clone(),
            conversation,
            name: name.to_owned(),
            mime: mime.to_owned(),
            bytes,
            created_ms: unix_ms(SystemTime::now()),
        };
        let record =
            serde_json::to_vec(&file).map_err(|e| AttachmentError::Unavailable(e.to_string()))?;
        let record_part = Removed::new(self.dir.join(format!("{id}.json{PART}")));
        let mut out = Private::create(record_part.path()).await?;
        out.write(Bytes::from(record)).await?;
        out.sync().await?;

        let data = self.dir.join(&id);
        tokio::fs::rename(part.path(), &data)
            .await
            .map_err(unavailable)?;
        part.keep();
        // Until its record is in place the file is not served; if that
        // fails, the file goes too.
        let data = Removed::new(data);
        tokio::fs::rename(record_part.path(), self.dir.join(format!("{id}.json")))
            .await
            .map_err(unavailable)?;
        record_part.keep();
        data.keep();

        let mut usage = index.entry(conversation).or_default();
        usage.files += 1;
        usage.bytes += bytes;
        Ok(file)
    }

    async fn get(&self, id: &str) -> Result<(StoredFile, ByteStream), AttachmentError> {
        if !valid_id(id) {
            return Err(AttachmentError::NotFound);
        }
        let file = read_record(&self.dir, id).await?;
        let data = tokio::fs::File::open(self.dir.join(id))
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => AttachmentError::NotFound,
                _ => unavailable(e),
            })?;
        // The response promises this many bytes up front (Content-Length).
        let len = data.metadata().await.map_err(unavailable)?.len();
        if len != file.bytes {
            return Err(AttachmentError::Corrupt(format!(
                "the record says {} bytes, the file holds {len}",
                file.bytes
            )));
        }
        let bytes = tokio_util::io::ReaderStream::with_capacity(data, READ_CHUNK)
            .map_err(unavailable)
            .boxed();
        Ok((file, bytes))
    }

    async fn usage(&self, conversation: ConversationId) -> Result<Usage, AttachmentError> {
        let index = self.index().await?;
        Ok(index.get(&conversation).map(|u| *u).unwrap_or_default())
    }

    async fn remove_older_than(&self, cutoff: SystemTime) -> Result<usize, AttachmentError> {
        let index = self.index().await?;
        let cutoff = unix_ms(cutoff);
        let mut removed = 0;
        for id in record_ids(&self.dir, false).await? {
            let file = match read_record(&self.dir, &id).await {
                Ok(file) => file,
                // Removed meanwhile.
                Err(AttachmentError::NotFound) => continue,
                Err(e) => {
                    tracing::warn!(file = id, error = %e, "a file's record is unreadable; it is kept");
                    continue;
                }
            };
            let record = self.dir.join(format!("{id}.json"));
            let created = match file.created_ms {
                0 => match tokio::fs::metadata(&record)
                    .await
                    .and_then(|m| m.modified())
                {
                    Ok(modified) => unix_ms(modified),
                    Err(_) => continue,
                },
                created => created,
            };
            if created > cutoff {
                continue;
            }
            // The record first: without it the file is no longer served,
            // whatever happens to the bytes.
            match tokio::fs::remove_file(&record).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(unavailable(e)),
            }
            if let Err(e) = tokio::fs::remove_file(self.dir.join(&id)).await {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(file = id, error = %e, "an expired file's bytes could not be removed");
                }
            }
            // Decremented and forgotten at zero under one shard lock.
            index.remove_if_mut(&file.conversation, |_, usage| {
                usage.files = usage.files.saturating_sub(1);
                usage.bytes = usage.bytes.saturating_sub(file.bytes);
                usage.files == 0
            });
            removed += 1;
        }
        Ok(removed)
    }
}
