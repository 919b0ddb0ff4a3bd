//! Learning from past conversations at the desk: a supervisor uploads a
//! history JSONL (the format of [`cs_intent::history`]), the desk groups it
//! into suggested FAQ entries, and a supervisor accepts (maybe edited) or
//! rejects each on the console's History page. An accepted suggestion is
//! taught to the desk's bot at once ([`FaqBot::learn_intent`]).
//!
//! # What survives a restart
//!
//! With [`ServiceDeskBuilder::history_file`](super::ServiceDeskBuilder::history_file)
//! the review (pending suggestions, accepted ones, the rejected count) is
//! written to that JSON file after every change, and read back at build:
//! the accepted suggestions are taught again to the freshly trained bot.
//! Without it the review is in memory only and a restart forgets it (and
//! the bot what it learned from it). The uploaded file itself is not kept.
//!
//! In a cluster, each node keeps its own review and teaches only its own
//! bot: review on one node (the demo's nodes each have their own file).
//! Sharing accepted intents across nodes is not built yet.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cs_intent::faq::FaqBot;
use cs_intent::history::{
    suggest, AcceptedIntent, FaqSuggestion, History, HistoryConfig, HistoryError, HistoryProgress,
    ImportSummary, Review, SuggestionEdit,
};

/// What can go wrong with the desk's history review.
#[derive(Debug, thiserror::Error)]
pub enum HistoryDeskError {
    /// The desk has no bot to teach.
    #[error("this desk has no bot to learn from history; add one with ServiceDeskBuilder::bot")]
    NoBot,
    /// Another import is still running.
    #[error("another history import is still running; try again when it is done")]
    Busy,
    /// The history, a suggestion or an edit was refused.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// The review file could not be read or is not a review.
    #[error("cannot load the history review {path}: {reason} (fix or remove the file; it is rewritten after every change)")]
    Load {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The review file could not be written.
    #[error("cannot save the history review to {path}: {source}")]
    Save {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// The desk's review of suggestions from history, and where it is saved.
pub(crate) struct HistoryReview {
    bot: Arc<FaqBot>,
    review: parking_lot::Mutex<Review>,
    file: Option<PathBuf>,
    /// Held while a save writes, so saves land in the order of the changes.
    saving: parking_lot::Mutex<()>,
    importing: AtomicBool,
}

/// Clears the import flag however the import ends.
struct Importing<'a>(&'a AtomicBool);

impl Drop for Importing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl HistoryReview {
    /// A review for `bot`, loaded from `file` when it exists, its accepted
    /// suggestions taught to the bot again.
    pub(crate) fn open(
        bot: Arc<FaqBot>,
        file: Option<PathBuf>,
    ) -> Result<HistoryReview, HistoryDeskError> {
        let review = match &file {
            Some(path) if path.exists() => {
                let review = load(path)?;
                let taught = review.replay(&bot)?;
                tracing::info!(path = %path.display(), taught, pending = review.pending().len(),
                    "history review loaded; accepted suggestions taught to the bot again");
                review
            }
            _ => Review::default(),
        };
        Ok(HistoryReview {
            bot,
            review: parking_lot::Mutex::new(review),
            file,
            saving: parking_lot::Mutex::new(()),
            importing: AtomicBool::new(false),
        })
    }

    /// Reads a history upload and replaces the pending suggestions with its
    /// own. CPU-bound: call it off the async runtime.
    pub(crate) fn import(
        &self,
        body: &[u8],
        config: &HistoryConfig,
    ) -> Result<ImportSummary, HistoryDeskError> {
        if self.importing.swap(true, Ordering::AcqRel) {
            return Err(HistoryDeskError::Busy);
        }
        let _importing = Importing(&self.importing);
        let mut log = |p: HistoryProgress| tracing::info!(progress = ?p, "history import");
        let history = History::read(body, &mut log)?;
        let suggestions = suggest(&history, config, &mut log)?;
        let summary = ImportSummary {
            lines: history.lines,
            conversations: history.conversations,
            questions: history.pairs.len(),
            unanswered: history.unanswered,
            suggestions: suggestions.len(),
        };
        self.review
            .lock()
            .replace_pending(suggestions, summary.clone());
        self.save()?;
        Ok(summary)
    }

    /// A copy of the review as it stands.
    pub(crate) fn snapshot(&self) -> Review {
        self.review.lock().clone()
    }

    /// Accepts suggestion `id` as edited: the bot learns it at once.
    pub(crate) fn accept(
        &self,
        id: u64,
        edit: SuggestionEdit,
    ) -> Result<AcceptedIntent, HistoryDeskError> {
        let accepted = self.review.lock().accept(id, edit, &self.bot)?;
        self.save()?;
        Ok(accepted)
    }

    /// Drops suggestion `id`.
    pub(crate) fn reject(&self, id: u64) -> Result<FaqSuggestion, HistoryDeskError> {
        let rejected = self.review.lock().reject(id)?;
        self.save()?;
        Ok(rejected)
    }

    /// The bot it teaches.
    pub(crate) fn bot(&self) -> &FaqBot {
        &self.bot
    }

    /// Writes the review to its file, if it has one: to a temporary file
    /// beside it, then renamed over it, so a crash never leaves half a file.
    fn save(&self) -> Result<(), HistoryDeskError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let _saving = self.saving.lock();
        let text =
            serde_json::to_vec(&*self.review.lock()).map_err(|e| HistoryDeskError::Save {
                path: path.clone(),
                source: std::io::Error::other(e),
            })?;
        let partial = path.with_extension("json.partial");
        let write = std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, path));
        write.map_err(|source| HistoryDeskError::Save {
            path: path.clone(),
            source,
        })
    }
}

fn load(path: &Path) -> Result<Review, HistoryDeskError> {
    let fail = |reason: String| HistoryDeskError::Load {
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
    serde_json::from_slice(&text).map_err(|e| fail(e.to_string()))
}
