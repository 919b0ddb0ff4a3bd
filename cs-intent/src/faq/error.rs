//! [`FaqError`]: what can go wrong reading a FAQ file, training on it, or
//! acting on a visitor's or an agent's input.

use std::path::PathBuf;

use crate::error::IntentError;

/// Everything that can go wrong with a FAQ and its bot. Each message says
/// what went wrong and what to change.
#[derive(Debug, thiserror::Error)]
pub enum FaqError {
    /// The text is not JSON, or not of the FAQ's shape.
    #[error(
        "{} is not a valid FAQ: {source} (expected a JSON object with an \"intents\" list; see cs_intent::faq for the format)",
        describe(.path)
    )]
    Parse {
        /// The file, when it came from one.
        path: Option<PathBuf>,
        /// What the JSON parser said, with the line and column.
        source: serde_json::Error,
    },
    /// The file could not be read.
    #[error("cannot read the FAQ file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The JSON parsed, but the FAQ breaks a rule: the message names the
    /// intent (and the file, if any) and says what to fix.
    #[error("{0}")]
    Invalid(String),
    /// Training or the knowledge base failed.
    #[error(transparent)]
    Intent(#[from] IntentError),
    /// A correction or a choice named an intent the FAQ does not have.
    #[error("the FAQ has no intent {0:?}; use one of FaqBot::intent_names()")]
    UnknownIntent(String),
}

fn describe(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!("the FAQ file {}", path.display()),
        None => "the FAQ text".to_owned(),
    }
}
