//! The desk's errors: one per concern, and [`DeskError`] over them for the
//! public API. Each says what kind of failure it is ([`ErrorKind`]), which
//! the HTTP layer turns into a status and other nodes carry over the bus.

use serde::{Deserialize, Serialize};

use cs_core::router::RouterError;
use cs_core::store::StoreError;
use cs_core::ConversationId;
use cs_transport::{PathError, SubmitError};

use super::limits::Limited;

/// What kind of failure an error is, whatever its concern.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// No valid token or session.
    Unauthenticated,
    /// Signed in, but not allowed to do this.
    Forbidden,
    /// No such thing.
    NotFound,
    /// The request itself is wrong.
    BadRequest,
    /// It conflicts with the current state (already closed, not assigned).
    Conflict,
    /// Flooded, stopping, or a store or node is down: retry later.
    Unavailable,
    /// Too many requests from this client (logins, sessions, uploads):
    /// retry after the time the error gives.
    RateLimited,
    /// The request's body is larger than the desk takes (an upload).
    TooLarge,
}

impl ErrorKind {
    /// The code clients see in `error`.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::TooLarge => "too_large",
        }
    }
}

/// Why the routing glue refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RoutingError {
    /// The conversation is closed or never was.
    #[error("no open conversation {0}")]
    NotOpen(ConversationId),
    /// It was closed by someone else between its creation and its summary.
    #[error("the conversation closed while it was being opened; open it again")]
    ClosedWhileOpening,
    /// The agent does not serve the conversation they tried to hand on.
    #[error("agent {0:?} does not serve this conversation; only its agent may transfer it")]
    NotServing(String),
    /// No agent of that id in the directory.
    #[error("no agent {0:?} on this desk")]
    UnknownAgent(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The message path refused the change (or is flooded or stopping).
    #[error(transparent)]
    Path(#[from] SubmitError),
    /// The router refused (the agent is full, already routed…).
    #[error(transparent)]
    Router(#[from] RouterError),
    /// Past a limit on new conversations.
    #[error(transparent)]
    Limited(#[from] Limited),
}

impl RoutingError {
    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RoutingError::NotOpen(_) | RoutingError::UnknownAgent(_) => ErrorKind::NotFound,
            RoutingError::ClosedWhileOpening => ErrorKind::Conflict,
            RoutingError::NotServing(_) => ErrorKind::Forbidden,
            RoutingError::Store(StoreError::UnknownConversation(_)) => ErrorKind::NotFound,
            RoutingError::Store(_) => ErrorKind::Unavailable,
            RoutingError::Path(SubmitError::Rejected(e)) => match e {
                PathError::UnknownConversation(_) => ErrorKind::NotFound,
                PathError::Unauthorized { .. } => ErrorKind::Forbidden,
                PathError::IllegalChange(_) | PathError::Closed(_) | PathError::Invalid(_) => {
                    ErrorKind::Conflict
                }
                _ => ErrorKind::Unavailable,
            },
            RoutingError::Path(_) => ErrorKind::Unavailable,
            RoutingError::Router(RouterError::UnknownAgent { .. }) => ErrorKind::NotFound,
            RoutingError::Router(_) => ErrorKind::Conflict,
            RoutingError::Limited(_) => ErrorKind::RateLimited,
        }
    }

    /// When a retry can succeed, for a refusal by a limit.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            RoutingError::Limited(limited) => Some(limited.retry_after),
            _ => None,
        }
    }
}

/// Why an agent's presence could not be set.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// Offline is what closing the last console means; it is not chosen.
    #[error("choose online or away; closing the console is how an agent goes offline")]
    OfflineIsNotAChoice,
    /// The router does not know the agent.
    #[error(transparent)]
    Router(#[from] RouterError),
}

impl PresenceError {
    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            PresenceError::OfflineIsNotAChoice => ErrorKind::BadRequest,
            PresenceError::Router(RouterError::UnknownAgent { .. }) => ErrorKind::NotFound,
            PresenceError::Router(_) => ErrorKind::Conflict,
        }
    }
}

/// Why a node of a cluster could not get an answer from the routing node.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Joining failed: Redis is unreachable or refused.
    #[error("cannot join the cluster: {0}")]
    Join(String),
    /// Nobody answered in time.
    #[error("the node routing this shop's desk did not answer within {waited:?} (it may be failing over, which takes up to the cluster ttl of {ttl:?}); retry shortly")]
    NoAnswer {
        /// How long this node waited.
        waited: std::time::Duration,
        /// The cluster's lease time to live.
        ttl: std::time::Duration,
    },
    /// The routing node answered in a form this node does not read.
    #[error(
        "the routing node answered in an unknown format ({0}); are all nodes the same version?"
    )]
    Format(String),
    /// The routing node refused, for this reason.
    #[error("{message}")]
    Remote {
        /// Its kind, as the routing node said.
        kind: ErrorKind,
        /// Its words.
        message: String,
    },
}

impl ClusterError {
    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ClusterError::Remote { kind, .. } => *kind,
            _ => ErrorKind::Unavailable,
        }
    }
}

/// Why a desk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DeskError {
    /// Routing (conversations, the queue, transfers).
    #[error(transparent)]
    Routing(#[from] RoutingError),
    /// Agents' presence.
    #[error(transparent)]
    Presence(#[from] PresenceError),
    /// Talking to the routing node of a cluster.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
}

impl DeskError {
    /// What kind of failure it is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            DeskError::Routing(e) => e.kind(),
            DeskError::Presence(e) => e.kind(),
            DeskError::Cluster(e) => e.kind(),
        }
    }

    /// When a retry can succeed, for a refusal by a limit.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            DeskError::Routing(e) => e.retry_after(),
            _ => None,
        }
    }
}

impl From<StoreError> for DeskError {
    fn from(e: StoreError) -> Self {
        DeskError::Routing(e.into())
    }
}

impl From<SubmitError> for DeskError {
    fn from(e: SubmitError) -> Self {
        DeskError::Routing(e.into())
    }
}

impl From<RouterError> for DeskError {
    fn from(e: RouterError) -> Self {
        DeskError::Routing(e.into())
    }
}

/// Why a desk could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The router refused the directory's agents.
    #[error("the agent directory could not be loaded into the router: {0}")]
    Directory(#[from] RouterError),
    /// No randomness for a signing key.
    #[error("no randomness for a signing key: {0}; pass one with ServiceDeskBuilder::signer")]
    Randomness(String),
    /// The cluster could not be joined.
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// The history review file could not be loaded or replayed.
    #[error(transparent)]
    History(#[from] super::history::HistoryDeskError),
}
