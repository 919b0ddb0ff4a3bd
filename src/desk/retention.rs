//! How long files are kept ([`UploadLimits::retention`]): a sweep once at
//! start and then hourly asks the backend to remove what is older
//! ([`Attachments::remove_older_than`]).
//!
//! Conversations are never deleted in cs, so a file cannot go with its
//! conversation: its age is the only thing that ends it.
//!
//! [`UploadLimits::retention`]: super::attachments::UploadLimits::retention
//! [`Attachments::remove_older_than`]: super::attachments::Attachments::remove_older_than

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::attachments::AttachmentError;
use super::state::DeskState;

/// How often the sweep runs. An hour late is nothing next to a retention
/// of days, and a scan of the records an hour costs next to nothing.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(3600);

impl DeskState {
    /// Sweeps at once, then every [`SWEEP_EVERY`], until shutdown. A
    /// failed sweep is logged and tried again at the next tick.
    pub(crate) async fn sweep_files(self: Arc<Self>) {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        // A machine that slept sweeps once on waking, not once per hour missed.
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = every.tick() => match self.expire_files().await {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "expired files removed"),
                    Err(e) => tracing::warn!(error = %e, "the file sweep failed; trying again in an hour"),
                },
            }
        }
    }

    /// Removes the files older than the retention period now; answers how
    /// many (0 without uploads or without retention).
    pub(crate) async fn expire_files(&self) -> Result<usize, AttachmentError> {
        let (Some(attachments), Some(retention)) =
            (&self.attachments, self.settings.uploads.retention)
        else {
            return Ok(0);
        };
        // A retention longer than the clock goes back keeps everything.
        let Some(cutoff) = SystemTime::now().checked_sub(retention) else {
            return Ok(0);
        };
        attachments.remove_older_than(cutoff).await
    }
}
