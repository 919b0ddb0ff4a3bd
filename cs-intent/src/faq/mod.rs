//! A FAQ bot from a file: [`Faq`] reads and checks the FAQ (JSON), and
//! [`FaqBot`] trains an [`IntentAgent`](crate::IntentAgent) on it and decides,
//! for each visitor question, to answer, to ask which intent was meant, or to
//! hand off to a person.
//!
//! Nothing about any one shop is built in: the intents, answers, labels,
//! greeting and the bot's own messages come from the file; only the
//! `messages` have built-in English and Chinese defaults.
//!
//! # The file
//!
//! ```json
//! {
//!   "languages": ["en", "zh"],
//!   "greeting": {"en": "Hi! How can I help?", "zh": "您好！请问有什么可以帮您？"},
//!   "messages": {
//!     "handoff": {"en": "Let me get a person for you."},
//!     "clarify": {"en": "Just to be sure: do you mean one of these?"},
//!     "noted":   {"en": "Got it; a colleague will follow up."}
//!   },
//!   "intents": [
//!     {"intent": "order_status", "action": "answer",
//!      "answer": {"en": "Track it under My Account → Orders.", "zh": "请在「我的订单」查看物流。"},
//!      "examples": ["where is my order", "我的快递到哪了"],
//!      "label": {"en": "Where is my order?", "zh": "我的订单到哪了？"}},
//!     {"intent": "human_agent", "action": "handoff", "examples": ["talk to a person", "转人工"]}
//!   ]
//! }
//! ```
//!
//! - `intents` is required; each intent needs a unique `intent` name and
//!   non-empty `examples`. `action` is `"answer"` (the default, which needs
//!   an `answer` text in at least one language) or `"handoff"`.
//! - `languages` is optional: by default the languages of the answers, `"en"`
//!   first if present. The first language is the fallback for any text
//!   missing in another.
//! - `label` (the text of a clarification button) is optional: by default the
//!   intent's first example in the question's language, else its name with
//!   `_` read as a space.
//! - `greeting` and `messages` are optional. Unknown fields are ignored, so a
//!   newer file still loads.
//!
//! A question's language is decided by its characters: Chinese characters
//! mean `zh` (when the FAQ has it), anything else the first other language.
//!
//! # Layout
//!
//! - [`file`](mod@file): [`Faq`], parsing and every check on the file.
//! - [`bot`][]: [`FaqBot`] and [`FaqSettings`]: training, the answer / clarify /
//!   hand-off rules, corrections and clarification clicks.
//! - [`reply`][]: what the bot returns: [`BotReply`], [`BotAction`],
//!   [`BotDecision`].
//! - [`messages`][]: the bot's own words, with built-in defaults.
//! - [`counters`][]: [`FaqCounters`] for a host's metrics.
//! - [`error`][]: [`FaqError`].
//! - `log` (private): the per-conversation decision log; `language`
//!   (private): the language rule.

pub mod bot;
pub mod counters;
pub mod error;
pub mod file;
mod language;
mod log;
pub mod messages;
pub mod reply;

pub use bot::{FaqBot, FaqSettings, LearnedIntent};
pub use counters::{FaqCounters, FaqCountersSnapshot};
pub use error::FaqError;
pub use file::{Faq, FaqAction, FaqIntent};
pub use log::DECISIONS_KEPT;
pub use messages::{Messages, Texts};
pub use reply::{BotAction, BotDecision, BotReply, ClarifyOption, Outcome};
