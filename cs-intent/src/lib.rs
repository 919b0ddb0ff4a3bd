//! The local bot of the cs customer-service crates.
#![warn(missing_docs)]

pub mod agent;
pub mod calibration;
pub mod classifier;
pub mod dataset;
pub mod discovery;
pub mod error;
pub mod kb;
pub mod memory;
pub mod model;
pub mod persist;
pub mod text;

pub use agent::{AgentConfig, AgentStats, Alternative, IntentAgent, Prediction, Source};
pub use calibration::Decision;
pub use error::IntentError;
pub use kb::{KbConfig, KbEntry, KbHit, KnowledgeBase};
pub use model::{Example, IntentModel, ModelConfig};
