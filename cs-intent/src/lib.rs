//! The local bot of the cs customer-service crates: an intent classifier
//! trained on the shop's own labelled questions, on its own CPU, in seconds;
//! a calibrated confidence that hands off to a human when it does not know;
//! examples and corrections that take effect at once; FAQ answers searched by
//! vector similarity; and intent discovery over the questions it handed off.
//!
//! It is synchronous and CPU-bound: training and prediction need no async
//! runtime (training uses the rayon pool, retraining its own thread). It
//! depends only on `cs-core` among the cs crates.
//!
//! # Layout
//!
//! - [`text`][]: normalisation (NFKC folds full-width, lowercase, truncation)
//!   and TF-IDF features that work for Chinese and English alike: character
//!   n-grams (no word segmenter needed) plus word n-grams, hashed into a fixed
//!   dimension, sublinear TF, L2-normalised.
//! - [`classifier`][]: a sparse one-vs-rest linear SVM trained by dual
//!   coordinate descent (LIBLINEAR's solver), both cores.
//! - [`calibration`][]: softmax temperature and the answer / clarify / hand-off
//!   rule ([`Decision`]): answer when sure of one intent, ask which of the top
//!   2–3 when torn between them, hand off when sure of nothing; its thresholds
//!   fitted on held-out intents and rows within a wrong-answer budget.
//! - [`model`][]: [`IntentModel`], featuriser + classifier + calibration, trained
//!   in one call from [`Example`] rows (duplicates, conflicts and bad rows handled).
//! - [`memory`][]: the nearest-neighbour memory that makes added examples count
//!   before the retrain.
//! - [`encoder`][]: the [`TextEncoder`] contract and the store of each
//!   training row's sentence embedding; `bert` (feature `embeddings`): the
//!   local BERT-family `SentenceEncoder` on candle, whose
//!   vectors join the sparse features and the knowledge-base search.
//! - [`kb`][]: the FAQ [`KnowledgeBase`] over `hnsw_rs`, with tombstones and
//!   rebuild for delete; saved with its HNSW graph and restored without
//!   re-indexing (`kb_graph`, private).
//! - [`discovery`][]: clusters unlabelled questions into suggested intents
//!   (linfa k-means).
//! - [`agent`][]: [`IntentAgent`] ties it together: concurrent `predict`,
//!   `add_examples`, background retrain with atomic swap, bounded prediction
//!   cache, stats.
//! - [`persist`][]: save/load the whole agent, or a KB alone (magic, format
//!   version, CRC-32).
//! - [`history`][]: learning from past conversations: a JSONL file of
//!   visitor and agent turns becomes suggested FAQ entries (questions
//!   grouped by discovery, the agents' typical answer); a [`history::Review`]
//!   accepts, edits or rejects each, teaching the [`faq::FaqBot`] at once.
//! - [`dataset`][]: reading `text,category` CSV files.
//! - [`error`][]: [`IntentError`], every failure as a typed error.
//! - [`faq`][]: a FAQ bot from a JSON file: [`faq::Faq`] parses and checks it,
//!   [`faq::FaqBot`] answers, asks which was meant, or hands off, and learns
//!   from corrections and clarification clicks.
//!
//! # Example
//!
//! ```
//! use cs_intent::{AgentConfig, Decision, Example, IntentAgent};
//!
//! let rows = vec![
//!     Example::new("where is my order", "order_status"),
//!     Example::new("我的快递到哪了", "order_status"),
//!     Example::new("包裹怎么还没到", "order_status"),
//!     Example::new("i want a refund", "refund"),
//!     Example::new("我要退款", "refund"),
//!     Example::new("退款什么时候到账", "refund"),
//! ];
//! let agent = IntentAgent::train(rows, AgentConfig::default())?;
//! let p = agent.predict("ＲＥＦＵＮＤ please, 我要退款")?;
//! assert_eq!(&*p.intent, "refund");
//! if p.decision == Decision::HandOff {
//!     // route the conversation to a human agent
//! }
//! // An agent's correction counts for the very next question.
//! agent.add_examples([Example::new("钱还没退回来", "refund")])?;
//! # Ok::<(), cs_intent::IntentError>(())
//! ```
//!
//! See the crate README for measurements (BANKING77, the out-of-scope
//! self-test, incremental learning, KB search) and what is not built yet.
#![warn(missing_docs)]

// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub mod agent;
#[cfg(feature = "embeddings")]
pub mod bert;
pub mod calibration;
pub mod classifier;
pub mod dataset;
pub mod discovery;
pub mod encoder;
pub mod error;
pub mod faq;
pub mod history;
pub mod kb;
mod kb_graph;
pub mod memory;
pub mod model;
pub mod persist;
pub mod text;

pub use agent::{
    AgentConfig, AgentStats, Alternative, Embeddings, IntentAgent, Prediction, Source,
};
pub use calibration::Decision;
pub use encoder::TextEncoder;
pub use error::IntentError;
pub use kb::{KbConfig, KbEntry, KbHit, KnowledgeBase, SavedKb};
pub use model::{Example, IntentModel, ModelConfig};
