//! Upload quotas ([`UploadLimits`]): files and bytes per visitor per day,
//! and per conversation.
//!
//! An upload takes its share before a byte of its body is read — the
//! declared `Content-Length`, or the largest upload when there is none — so
//! twenty uploads started at once cannot all slip past a limit. When the
//! file is kept, the share is settled to its real size; when the upload
//! fails or its request is dropped, the share is given back.
//!
//! - Per visitor, per day (UTC): counters in memory, each stamped with its
//!   day; a counter of an older day counts as zero, and the old ones are
//!   pruned the first time an upload sees a new day. They start again at a
//!   restart, and each node of a cluster counts its own. Agents have none.
//! - Per conversation: what the backend holds ([`Attachments::usage`], so
//!   it survives a restart), plus the uploads still arriving on this node.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;

use cs_core::{ConversationId, VisitorId};

use super::attachments::{AttachmentError, Attachments, UploadLimits};
use super::retention::SWEEP_EVERY;

const DAY_SECS: u64 = 24 * 3600;

/// Why an upload was refused before it started.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// The visitor sent as many files as a day allows.
    #[error("you have sent {limit} files today, the most a visitor may send in a day (UploadLimits::visitor_files_per_day = {limit}); send more after midnight UTC")]
    VisitorFiles {
        /// The limit.
        limit: u64,
        /// When a retry can succeed.
        retry_after: Duration,
    },
    /// This file would take the visitor past a day's bytes.
    #[error("this file ({bytes} bytes) would take you past {limit} bytes today ({used} sent so far), the most a visitor may send in a day (UploadLimits::visitor_bytes_per_day = {limit}); send it after midnight UTC")]
    VisitorBytes {
        /// The limit.
        limit: u64,
        /// Sent (or arriving) today.
        used: u64,
        /// This upload's declared size, or the largest upload without one.
        bytes: u64,
        /// When a retry can succeed.
        retry_after: Duration,
    },
    /// The conversation holds as many files as it may.
    #[error("this conversation already has {limit} files, the most one may hold (UploadLimits::conversation_files = {limit}); older files expire after the retention period, or close this conversation and start a new one")]
    ConversationFiles {
        /// The limit.
        limit: u64,
        /// When a retry can succeed.
        retry_after: Duration,
    },
    /// This file would take the conversation past its bytes.
    #[error("this file ({bytes} bytes) would take the conversation past {limit} bytes ({used} held or arriving), the most one may hold (UploadLimits::conversation_bytes = {limit}); older files expire after the retention period, or close this conversation and start a new one")]
    ConversationBytes {
        /// The limit.
        limit: u64,
        /// Held or arriving now.
        used: u64,
        /// This upload's declared size, or the largest upload without one.
        bytes: u64,
        /// When a retry can succeed.
        retry_after: Duration,
    },
    /// The backend could not say what the conversation holds.
    #[error(transparent)]
    Backend(AttachmentError),
}

impl QuotaError {
    /// When a retry can succeed (zero for a backend's failure).
    pub fn retry_after(&self) -> Duration {
        match self {
            QuotaError::VisitorFiles { retry_after, .. }
            | QuotaError::VisitorBytes { retry_after, .. }
            | QuotaError::ConversationFiles { retry_after, .. }
            | QuotaError::ConversationBytes { retry_after, .. } => *retry_after,
            QuotaError::Backend(_) => Duration::ZERO,
        }
    }
}

/// Until the next midnight UTC, when a visitor's day starts again.
fn until_tomorrow(now: SystemTime) -> Duration {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    Duration::from_secs(DAY_SECS - secs % DAY_SECS)
}

/// A full conversation only gets room as its files expire: by the
/// retention period and one sweep, every file it holds now is gone.
/// Without retention that never happens; a day then keeps clients from
/// hammering.
fn until_expired(retention: Option<Duration>) -> Duration {
    retention.map_or(Duration::from_secs(DAY_SECS), |r| r + SWEEP_EVERY)
}

/// A visitor's uploads on one day.
struct Day {
    day: u64,
    files: u64,
    bytes: u64,
}

/// A conversation's uploads arriving now, on this node.
#[derive(Default)]
struct Arriving {
    /// Taken by each reservation from reading to adding, so two uploads
    /// never both count the room one of them is about to fill.
    reserving: tokio::sync::Mutex<()>,
    files: AtomicU64,
    bytes: AtomicU64,
}

/// The desk's quota counters.
pub(crate) struct UploadQuotas {
    limits: UploadLimits,
    visitors: DashMap<VisitorId, Day>,
    /// The day (since the epoch, UTC) the visitors were last pruned on.
    pruned_on: AtomicU64,
    /// An entry lives while an upload of its conversation is arriving.
    conversations: DashMap<ConversationId, Arc<Arriving>>,
}

impl UploadQuotas {
    pub(crate) fn new(limits: UploadLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            visitors: DashMap::new(),
            pruned_on: AtomicU64::new(0),
            conversations: DashMap::new(),
        })
    }

    /// Takes the share of an upload of `bytes` (at most) to `conversation`,
    /// by `visitor` (`None` for an agent).
    ///
    /// # Errors
    /// A limit would be passed, or the backend cannot say what the
    /// conversation holds.
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        attachments: &dyn Attachments,
        visitor: Option<&VisitorId>,
        conversation: ConversationId,
        bytes: u64,
    ) -> Result<Reservation, QuotaError> {
        let now = SystemTime::now();
        let today = utc_day(now);
        // The visitor's day first: it needs no backend, so a flood is
        // refused cheaply.
        if let Some(visitor) = visitor {
            self.take_from_visitor(visitor, now, bytes)?;
        }
        // From here on an early return gives the visitor's share back.
        let mut reservation = Reservation {
            quotas: Arc::clone(self),
            visitor: visitor.map(|v| (v.clone(), today)),
            conversation,
            arriving: None,
            bytes,
            done: false,
        };
        // The map's guard ends with this statement, before any await.
        let arriving = Arc::clone(&self.conversations.entry(conversation).or_default());
        match self
            .take_from_conversation(&arriving, attachments, conversation, bytes)
            .await
        {
            Ok(()) => {
                reservation.arriving = Some(arriving);
                Ok(reservation)
            }
            Err(e) => {
                drop(arriving);
                self.forget_idle(conversation);
                Err(e)
            }
        }
    }

    async fn take_from_conversation(
        &self,
        arriving: &Arriving,
        attachments: &dyn Attachments,
        conversation: ConversationId,
        bytes: u64,
    ) -> Result<(), QuotaError> {
        let _turn = arriving.reserving.lock().await;
        // What is arriving first, then what is kept: an upload that
        // finishes in between is counted by one of the two reads (it is
        // kept before it stops arriving), never by neither.
        let files = arriving.files.load(Ordering::SeqCst);
        let arriving_bytes = arriving.bytes.load(Ordering::SeqCst);
        let kept = attachments
            .usage(conversation)
            .await
            .map_err(QuotaError::Backend)?;
        let limits = &self.limits;
        if kept.files.saturating_add(files) >= limits.conversation_files {
            return Err(QuotaError::ConversationFiles {
                limit: limits.conversation_files,
                retry_after: until_expired(limits.retention),
            });
        }
        let used = kept.bytes.saturating_add(arriving_bytes);
        if used.saturating_add(bytes) > limits.conversation_bytes {
            return Err(QuotaError::ConversationBytes {
                limit: limits.conversation_bytes,
                used,
                bytes,
                retry_after: until_expired(limits.retention),
            });
        }
        arriving.files.fetch_add(1, Ordering::SeqCst);
        arriving.bytes.fetch_add(bytes, Ordering::SeqCst);
        Ok(())
    }

    /// Forgets `conversation`'s entry once nobody holds it: a reservation
    /// in flight, or one waiting for its turn, keeps a clone.
    fn forget_idle(&self, conversation: ConversationId) {
        self.conversations
            .remove_if(&conversation, |_, a| Arc::strong_count(a) == 1);
    }

    fn take_from_visitor(
        &self,
        visitor: &VisitorId,
        now: SystemTime,
        bytes: u64,
    ) -> Result<(), QuotaError> {
        let today = utc_day(now);
        if self.pruned_on.swap(today, Ordering::Relaxed) != today {
            self.visitors.retain(|_, day| day.day == today);
            // Entries a dropped request left before it could forget its own.
            self.conversations.retain(|_, a| Arc::strong_count(a) > 1);
        }
        let limits = &self.limits;
        let mut day = self.visitors.entry(visitor.clone()).or_insert(Day {
            day: today,
            files: 0,
            bytes: 0,
        });
        if day.day != today {
            *day = Day {
                day: today,
                files: 0,
                bytes: 0,
            };
        }
        if day.files >= limits.visitor_files_per_day {
            return Err(QuotaError::VisitorFiles {
                limit: limits.visitor_files_per_day,
                retry_after: until_tomorrow(now),
            });
        }
        if day.bytes.saturating_add(bytes) > limits.visitor_bytes_per_day {
            return Err(QuotaError::VisitorBytes {
                limit: limits.visitor_bytes_per_day,
                used: day.bytes,
                bytes,
                retry_after: until_tomorrow(now),
            });
        }
        day.files += 1;
        day.bytes += bytes;
        Ok(())
    }
}

/// The days since the epoch, UTC.
fn utc_day(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / DAY_SECS)
}

/// One upload's share of the quotas. Settle it with the kept size; dropped
/// unsettled (the upload failed, or its request was dropped), it gives the
/// share back.
pub(crate) struct Reservation {
    quotas: Arc<UploadQuotas>,
    /// The visitor, and the day the share was taken from.
    visitor: Option<(VisitorId, u64)>,
    conversation: ConversationId,
    arriving: Option<Arc<Arriving>>,
    bytes: u64,
    done: bool,
}

impl Reservation {
    /// The file was kept with `bytes`: the visitor's day keeps the file and
    /// its real size, and the conversation's share stops arriving (the
    /// backend counts it now).
    pub(crate) fn settle(mut self, bytes: u64) {
        self.finish(Some(bytes));
    }

    fn finish(&mut self, kept: Option<u64>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let quotas = &self.quotas;
        if let Some((visitor, on)) = &self.visitor {
            if let Some(mut day) = quotas.visitors.get_mut(visitor) {
                // A new day started from zero: nothing of this one to undo.
                if day.day == *on {
                    let returned = match kept {
                        Some(bytes) => self.bytes.saturating_sub(bytes),
                        None => {
                            day.files = day.files.saturating_sub(1);
                            self.bytes
                        }
                    };
                    day.bytes = day.bytes.saturating_sub(returned);
                }
            }
        }
        if let Some(arriving) = self.arriving.take() {
            arriving.files.fetch_sub(1, Ordering::SeqCst);
            arriving.bytes.fetch_sub(self.bytes, Ordering::SeqCst);
            drop(arriving);
            quotas.forget_idle(self.conversation);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.finish(None);
    }
}
