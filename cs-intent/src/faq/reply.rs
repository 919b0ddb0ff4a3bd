//! What the bot says about one question ([`BotAction`]) and what it decided
//! ([`BotDecision`], for the agent console's log).

use cs_core::Seq;
use serde::{Deserialize, Serialize};

use crate::model::Example;

/// The bot's reply to one question: the decision as logged, and what to say.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BotReply {
    /// What the bot decided, as it went into the conversation's log.
    pub decision: BotDecision,
    /// What the host should say and do.
    pub action: BotAction,
    /// The labelled example this reply taught the bot: set when the
    /// visitor picked a clarification option, so a host running several
    /// nodes can teach the others' bots the same (see [`FaqBot::learn_choice`](super::FaqBot::learn_choice)).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learned: Option<Example>,
}

/// What the host should say and do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BotAction {
    /// Send `text` to the visitor.
    Answer {
        /// The answer, in the question's language where the FAQ has it.
        text: String,
    },
    /// Ask which intent was meant: send `text` with one button per option,
    /// and pass the clicked option to [`FaqBot::choose`](super::FaqBot::choose).
    Clarify {
        /// The question before the options.
        text: String,
        /// The top intent first, then the close alternatives.
        options: Vec<ClarifyOption>,
    },
    /// Send `notice` to the visitor and hand the conversation to a person.
    HandOff {
        /// Tells the visitor a person is coming.
        notice: String,
        /// Tells the agent why (for the queue and the console).
        reason: String,
    },
}

/// One button of a clarification.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClarifyOption {
    /// The intent the button stands for.
    pub intent: String,
    /// The button's text, in the question's language.
    pub label: String,
}

/// One thing the bot decided, for the agent console.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BotDecision {
    /// The visitor message it answered.
    pub question_seq: Seq,
    /// Its text.
    pub question: String,
    /// The intent it chose.
    pub intent: String,
    /// How sure it was (1.0 when the visitor chose the intent).
    pub confidence: f32,
    /// Answered, asked which was meant, or handed off.
    pub outcome: Outcome,
    /// The intent an agent said was right, if one corrected it.
    pub corrected_to: Option<String>,
    /// For a clarification: the options offered, the top intent first. A
    /// later visitor message equal to one of their labels is the pick.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<ClarifyOption>,
}

/// The kind of a decision; on the wire `"answer"`, `"clarify"` or `"handoff"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Answered from the FAQ.
    Answer,
    /// Asked which of a few intents was meant.
    Clarify,
    /// Handed to a person.
    Handoff,
}

impl BotAction {
    /// The decision's outcome for this action.
    pub fn outcome(&self) -> Outcome {
        match self {
            BotAction::Answer { .. } => Outcome::Answer,
            BotAction::Clarify { .. } => Outcome::Clarify,
            BotAction::HandOff { .. } => Outcome::Handoff,
        }
    }
}
