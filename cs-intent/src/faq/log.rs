//! The per-conversation decision log the agent console reads.

use std::collections::{HashMap, VecDeque};

use cs_core::{ConversationId, Seq};
use parking_lot::Mutex;

use super::reply::BotDecision;

/// Decisions kept per conversation; older ones are dropped first.
pub const DECISIONS_KEPT: usize = 50;

/// The last [`DECISIONS_KEPT`] decisions of every conversation the host has
/// not forgotten. One mutex for all conversations: every critical section is
/// a push or a copy of at most 50 entries, far shorter than the prediction
/// that precedes it, so sharding would buy nothing.
#[derive(Debug, Default)]
pub(crate) struct DecisionLog {
    conversations: Mutex<HashMap<ConversationId, VecDeque<BotDecision>>>,
}

impl DecisionLog {
    pub(crate) fn record(&self, conversation: ConversationId, decision: BotDecision) {
        let mut conversations = self.conversations.lock();
        let log = conversations.entry(conversation).or_default();
        if log.len() >= DECISIONS_KEPT {
            log.pop_front();
        }
        log.push_back(decision);
    }

    /// Oldest first.
    pub(crate) fn decisions(&self, conversation: ConversationId) -> Vec<BotDecision> {
        self.conversations
            .lock()
            .get(&conversation)
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The newest decision, without copying the rest.
    pub(crate) fn last(&self, conversation: ConversationId) -> Option<BotDecision> {
        self.conversations
            .lock()
            .get(&conversation)
            .and_then(|log| log.back().cloned())
    }

    pub(crate) fn forget(&self, conversation: ConversationId) {
        self.conversations.lock().remove(&conversation);
    }

    /// Marks every decision about `question_seq` as corrected to `intent`.
    pub(crate) fn mark_corrected(
        &self,
        conversation: ConversationId,
        question_seq: Seq,
        intent: &str,
    ) {
        if let Some(log) = self.conversations.lock().get_mut(&conversation) {
            for decision in log.iter_mut().filter(|d| d.question_seq == question_seq) {
                decision.corrected_to = Some(intent.to_owned());
            }
        }
    }
}
