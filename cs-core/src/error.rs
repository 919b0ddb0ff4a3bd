//! One error type for hosts that just want `?`.

use crate::conversation::ConversationError;
use crate::directory::DirectoryError;
use crate::ids::InvalidId;
use crate::message::InvalidMessage;
use crate::router::RouterError;
use crate::store::StoreError;

/// Any cs-core error. Each module has its own precise error; this wraps them
/// so host code can use `?` across modules and still match on the cause.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// See [`InvalidId`].
    #[error(transparent)]
    InvalidId(#[from] InvalidId),
    /// See [`InvalidMessage`].
    #[error(transparent)]
    InvalidMessage(#[from] InvalidMessage),
    /// See [`ConversationError`].
    #[error(transparent)]
    Conversation(#[from] ConversationError),
    /// See [`DirectoryError`].
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// See [`RouterError`].
    #[error(transparent)]
    Router(#[from] RouterError),
    /// See [`StoreError`].
    #[error(transparent)]
    Store(#[from] StoreError),
}
