//! Typed identifiers.
//!
//! Every id is its own type, so a `VisitorId` can never be passed where an
//! `AgentId` is expected. Two families:
//!
//! - **Names from the host** (`TenantId`, `VisitorId`, `AgentId`): the shop
//!   already has customer and staff ids, so these wrap the host's string. They
//!   are validated once, at the edge (1 to [`MAX_NAME_LEN`] bytes, no control
//!   characters), and are cheap to clone (`Arc<str>`), because they are copied
//!   into every message and routing decision.
//! - **Ids that cs mints** (`ConversationId`, `ConnId`) and the per-conversation
//!   [`Seq`].

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// The longest host-supplied id, in bytes. Long enough for a UUID, an email
/// address or a prefixed database key; short enough to index cheaply.
pub const MAX_NAME_LEN: usize = 128;

/// A host-supplied id was empty, too long or contained a control character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidId {
    /// Which id type was being parsed, such as `"agent id"`.
    pub kind: &'static str,
    /// The rejected input, cut to 64 characters so the error stays printable.
    pub value: String,
    /// What was wrong with it and what is accepted instead.
    pub reason: &'static str,
}

fn validate_name(kind: &'static str, value: &str) -> Result<(), InvalidId> {
    let reason = if value.is_empty() {
        "it is empty; use 1 to 128 bytes"
    } else if value.len() > MAX_NAME_LEN {
        "it is longer than 128 bytes"
    } else if value.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(InvalidId {
        kind,
        value: value.chars().take(64).collect(),
        reason,
    })
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `value` and wraps it.
            ///
            /// # Errors
            /// [`InvalidId`] if it is empty, longer than [`MAX_NAME_LEN`] bytes or
            /// contains a control character.
            pub fn new(value: impl AsRef<str>) -> Result<Self, InvalidId> {
                let value = value.as_ref();
                validate_name($kind, value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The id as the host gave it.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.as_ref().to_owned()
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }
    };
}

name_id!(
    /// A shop (or brand, or site) served by the same deployment. Agents, queues
    /// and conversations never cross tenants.
    TenantId,
    "tenant id"
);
name_id!(
    /// A shopper, as the host identifies them (a customer id, or a random id
    /// for an anonymous visitor).
    VisitorId,
    "visitor id"
);
name_id!(
    /// A human agent, as the host's staff directory identifies them.
    AgentId,
    "agent id"
);
name_id!(
    /// A skill or group an agent belongs to ("refunds", "vip", "zh"), which the
    /// skill-match strategy uses to route a conversation that needs it.
    Skill,
    "skill"
);
name_id!(
    /// A client-chosen id for one message, so a retried send (after a timeout
    /// or a reconnect) is stored once. Unique within its conversation.
    ClientMsgId,
    "client message id"
);

/// One conversation between a visitor and the shop.
///
/// A UUIDv7: unique across nodes without coordination, and time-ordered, so
/// conversations created together sit together in a database index.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConversationId(uuid::Uuid);

impl ConversationId {
    /// Mints a fresh id.
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7())
    }

    /// Wraps an existing UUID, such as one read back from a database.
    pub fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self(uuid)
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> uuid::Uuid {
        self.0
    }
}

impl Default for ConversationId {
    fn default() -> Self {
        Self::new()
    }
}

impl FromStr for ConversationId {
    type Err = InvalidId;
    fn from_str(s: &str) -> Result<Self, InvalidId> {
        uuid::Uuid::parse_str(s).map(Self).map_err(|_| InvalidId {
            kind: "conversation id",
            value: s.chars().take(64).collect(),
            reason: "it is not a UUID such as 0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        })
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConversationId({})", self.0)
    }
}

/// One live connection (a browser tab, an app session) on this node.
///
/// Connections never outlive their process, so a process-wide counter is
/// enough; other nodes address parties, not connections.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnId(u64);

impl ConnId {
    /// Mints the next id of this process.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// The raw number, for logs and metrics labels.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

impl fmt::Debug for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnId({})", self.0)
    }
}

/// The position of a message in its conversation: 1, 2, 3, … with no gaps.
///
/// The store assigns it on append. [`Seq::ZERO`] means "nothing yet", so a
/// client that has seen nothing resumes after `Seq::ZERO`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Seq(u64);

impl Seq {
    /// Before the first message.
    pub const ZERO: Seq = Seq(0);

    /// Wraps a raw sequence number.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The raw number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The seq that follows this one. Saturates: a client may send any
    /// number, and `u64::MAX` must not wrap around to the start.
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(AgentId::new("alice").is_ok());
        assert_eq!(
            AgentId::new("").unwrap_err().reason,
            "it is empty; use 1 to 128 bytes"
        );
        assert!(VisitorId::new("a".repeat(MAX_NAME_LEN)).is_ok());
        assert!(VisitorId::new("a".repeat(MAX_NAME_LEN + 1)).is_err());
        assert!(TenantId::new("shop\n").is_err());
        // Chinese names are fine: the limit is in bytes, not a charset.
        assert!(AgentId::new("客服小王").is_ok());
    }

    #[test]
    fn deserializing_validates_too() {
        let ok: AgentId = serde_json::from_str("\"bob\"").unwrap();
        assert_eq!(ok.as_str(), "bob");
        let err = serde_json::from_str::<AgentId>("\"\"").unwrap_err();
        assert!(err.to_string().contains("invalid agent id"), "{err}");
    }

    #[test]
    fn conversation_ids_round_trip_and_reject_garbage() {
        let id = ConversationId::new();
        assert_eq!(id.to_string().parse::<ConversationId>().unwrap(), id);
        let err = "not-a-uuid".parse::<ConversationId>().unwrap_err();
        assert_eq!(err.kind, "conversation id");
    }

    #[test]
    fn conn_ids_are_unique() {
        let a = ConnId::next();
        let b = ConnId::next();
        assert_ne!(a, b);
    }
}
