//! The wire protocol: JSON frames between a client and the server.
//!
//! Every frame is one JSON object with a `type` field. `docs/protocol.md`
//! lists them all with examples. Decoding never panics: bytes that are not a
//! frame become a [`FrameError`] that names the problem, and the connection
//! carries on (an oversized frame is the exception: it closes the connection,
//! because the peer is not speaking the protocol).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use cs_core::router::Presence;
use cs_core::{
    AgentId, Body, ClientMsgId, ConnId, ConversationId, Message, Party, Seq, StateKind, Timestamp,
    VisitorId,
};

/// What a client sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// Unknown fields are ignored, so a newer client can talk to an older server.
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Send a message. The server answers with [`ServerFrame::Ack`] (or an
    /// error), and delivers it to the conversation as [`ServerFrame::Message`].
    Send {
        /// The conversation.
        conversation: ConversationId,
        /// The client's id for this message; a resend with the same id is
        /// stored once and acked with the original seq.
        #[serde(default)]
        client_msg_id: Option<ClientMsgId>,
        /// What it says.
        body: Body,
    },
    /// Join a conversation (or rejoin after a reconnect): the server replays
    /// every message after `last_seq`, then sends live ones.
    Resume {
        /// The conversation.
        conversation: ConversationId,
        /// The last seq this client has; 0 for none.
        #[serde(default)]
        last_seq: Seq,
    },
    /// The client started or stopped typing. Delivered, never stored.
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// `true` while typing.
        active: bool,
    },
    /// The client has read up to `up_to`.
    Read {
        /// The conversation.
        conversation: ConversationId,
        /// The last seq read.
        up_to: Seq,
    },
    /// Keep-alive; answered with [`ServerFrame::Pong`].
    Ping,
}

/// What the server sends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The connection is registered.
    Welcome {
        /// Its id on this node, for logs.
        conn: ConnId,
        /// Who the server believes the client is.
        party: Party,
    },
    /// A sent message is stored.
    Ack {
        /// The conversation.
        conversation: ConversationId,
        /// The client's id for it, echoed.
        client_msg_id: Option<ClientMsgId>,
        /// Its seq.
        seq: Seq,
        /// `true` if it had been stored before (a retry).
        duplicate: bool,
    },
    /// A message in a conversation this client has joined.
    Message {
        /// The message.
        message: Message,
    },
    /// Replay after a [`ClientFrame::Resume`] has sent everything up to
    /// `up_to`. If `complete`, live messages follow; if not, the gap was larger
    /// than one batch: resume again from `up_to`.
    Replayed {
        /// The conversation.
        conversation: ConversationId,
        /// The last seq replayed.
        up_to: Seq,
        /// Whether the client is now live.
        complete: bool,
    },
    /// Someone in the conversation started or stopped typing.
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// Who.
        from: Party,
        /// `true` while typing.
        active: bool,
    },
    /// A request failed. The connection stays open.
    Error {
        /// What kind of failure, for programs.
        code: ErrorCode,
        /// What went wrong and what to do, for people.
        message: String,
        /// The conversation the failed request was about, if any.
        #[serde(skip_serializing_if = "Option::is_none")]
        conversation: Option<ConversationId>,
        /// The client's message id, if the failed request was a send.
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<ClientMsgId>,
        /// For `overloaded` and `rate_limited`: when a retry (with the same
        /// `client_msg_id`) can succeed, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// The server is closing the connection, and why.
    Close {
        /// Why; tells the client whether and how to come back.
        reason: CloseReason,
    },
    /// Answer to [`ClientFrame::Ping`].
    Pong,
}

/// Error kinds in [`ServerFrame::Error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not valid JSON or not a known frame.
    Malformed,
    /// The sender may not do this in this conversation.
    Unauthorized,
    /// No such conversation.
    UnknownConversation,
    /// The message broke a limit (size, empty text) or an illegal state change.
    Invalid,
    /// The server is flooded and refused the message; retry after a moment
    /// with the same `client_msg_id`.
    Overloaded,
    /// This connection is sending too fast; slow down.
    RateLimited,
    /// The server is shutting down; reconnect (to another node).
    ShuttingDown,
    /// The store failed; the message was not stored; retry.
    Unavailable,
}

/// Why the server closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The client read too slowly and its outbound queue filled up. Nothing
    /// is lost: reconnect and resume from the last seq received.
    SlowResume,
    /// The server is shutting down; reconnect, possibly to another node.
    Shutdown,
    /// A frame was larger than the server accepts.
    FrameTooLarge,
    /// Nothing was heard from the client for too long.
    Idle,
    /// The host closed it (logout, ban, replaced by a newer session), or the
    /// client did.
    ByHost,
    /// The client broke the WebSocket protocol, or sent a frame far over
    /// the limit.
    ProtocolError,
}

impl CloseReason {
    /// The lower-case label, as on the wire and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::SlowResume => "slow_resume",
            CloseReason::Shutdown => "shutdown",
            CloseReason::FrameTooLarge => "frame_too_large",
            CloseReason::Idle => "idle",
            CloseReason::ByHost => "by_host",
            CloseReason::ProtocolError => "protocol_error",
        }
    }
}

/// A client frame that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Larger than the limit: the connection is closed.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a frame: bad JSON, an unknown `type`, a missing or invalid field.
    #[error("malformed frame: {0}; see docs/protocol.md for the frame formats")]
    Malformed(String),
}

impl ClientFrame {
    /// Decodes one frame of at most `max_len` bytes.
    ///
    /// # Errors
    /// [`FrameError::TooLarge`] or [`FrameError::Malformed`].
    pub fn decode(bytes: &[u8], max_len: usize) -> Result<Self, FrameError> {
        if bytes.len() > max_len {
            return Err(FrameError::TooLarge {
                len: bytes.len(),
                max: max_len,
            });
        }
        serde_json::from_slice(bytes).map_err(|e| FrameError::Malformed(e.to_string()))
    }

    /// The conversation and client message id this frame is about, for an
    /// error that refers back to it.
    pub fn subject(&self) -> (Option<ConversationId>, Option<ClientMsgId>) {
        match self {
            ClientFrame::Send {
                conversation,
                client_msg_id,
                ..
            } => (Some(*conversation), client_msg_id.clone()),
            ClientFrame::Resume { conversation, .. }
            | ClientFrame::Typing { conversation, .. }
            | ClientFrame::Read { conversation, .. } => (Some(*conversation), None),
            ClientFrame::Ping => (None, None),
        }
    }

    /// The conversation and client message id of a frame that did not
    /// decode (a body that breaks a rule, a wrong field), when those two
    /// fields themselves parse: the client can then tell which send failed.
    pub fn subject_of_invalid(bytes: &[u8]) -> (Option<ConversationId>, Option<ClientMsgId>) {
        #[derive(Deserialize)]
        struct Subject {
            #[serde(default)]
            conversation: Option<serde_json::Value>,
            #[serde(default)]
            client_msg_id: Option<serde_json::Value>,
        }
        let Ok(subject) = serde_json::from_slice::<Subject>(bytes) else {
            return (None, None);
        };
        let conversation = subject
            .conversation
            .and_then(|v| serde_json::from_value(v).ok());
        let client_msg_id = subject
            .client_msg_id
            .and_then(|v| serde_json::from_value(v).ok());
        (conversation, client_msg_id)
    }

    /// Encodes the frame as JSON (what a client library sends).
    pub fn encode(&self) -> Bytes {
        encode_json(self)
    }
}

/// Frames a service desk sends besides the message path's own: a queued
/// visitor's place, and what the agents' consoles show. They share the
/// `type` tag with [`ServerFrame`] and use names it does not, so a client
/// reads both from one socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum DeskFrame {
    /// To a queued visitor: their place (1 is next), whenever it changes.
    Queue {
        /// Their conversation.
        conversation: ConversationId,
        /// Their place.
        position: usize,
    },
    /// To consoles: the conversations that changed since the last frame
    /// (coalesced, a bounded number per frame), and those that left the desk.
    Desk {
        /// Changed conversations, whole.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        chats: Vec<ChatRow>,
        /// Conversations closed since the last frame.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        closed: Vec<ConversationId>,
    },
    /// To consoles: how many wait, and the head of the queue in order.
    QueueSummary {
        /// Conversations waiting for an agent.
        waiting: usize,
        /// The first of them, next first.
        head: Vec<ConversationId>,
    },
    /// To consoles: every agent with presence and load.
    Agents {
        /// The agents, by id.
        agents: Vec<AgentRow>,
    },
}

impl DeskFrame {
    /// Encodes the frame as JSON.
    pub fn encode(&self) -> Bytes {
        encode_json(self)
    }
}

/// A conversation as a console lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRow {
    /// The conversation.
    pub id: ConversationId,
    /// Its visitor.
    pub visitor: VisitorId,
    /// The visitor's name, for a shopper logged in to the shop.
    pub visitor_name: Option<String>,
    /// Bot, queued, assigned…
    pub state: StateKind,
    /// The agent serving it.
    pub agent: Option<AgentId>,
    /// When it started.
    pub opened_at: Timestamp,
    /// The last thing said, shortened.
    pub last_text: Option<String>,
    /// Who said it: visitor, agent, bot or system.
    pub last_from: Option<String>,
    /// When.
    pub last_at: Option<Timestamp>,
    /// Its place in the queue (1 is next), while queued near the head.
    pub queue_position: Option<usize>,
    /// Why it was handed to a person.
    pub handoff_reason: Option<String>,
}

/// An agent as the consoles show them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRow {
    /// Their id.
    pub id: AgentId,
    /// Their display name.
    pub name: String,
    /// Online, away or offline.
    pub presence: Presence,
    /// Conversations they serve now.
    pub active: usize,
    /// Conversations they may serve at once.
    pub capacity: usize,
}

impl ServerFrame {
    /// Encodes the frame as JSON.
    pub fn encode(&self) -> Bytes {
        encode_json(self)
    }

    /// Encodes `ServerFrame::Message { message }` without cloning the message:
    /// the hot path encodes every stored message once for all its recipients.
    pub fn encode_message(message: &Message) -> Bytes {
        #[derive(Serialize)]
        #[serde(tag = "type", rename = "message")]
        struct MessageFrame<'a> {
            message: &'a Message,
        }
        encode_json(&MessageFrame { message })
    }

    /// Decodes a server frame (what a client library receives).
    ///
    /// # Errors
    /// [`FrameError::Malformed`] if it is not one.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        serde_json::from_slice(bytes).map_err(|e| FrameError::Malformed(e.to_string()))
    }

    /// An error frame.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            code,
            message: message.into(),
            conversation: None,
            client_msg_id: None,
            retry_after_ms: None,
        }
    }
}

fn encode_json<T: Serialize>(value: &T) -> Bytes {
    // Our frame types hold only strings, numbers and enums with string keys,
    // which serde_json always serializes; an error here is a bug in this file.
    match serde_json::to_vec(value) {
        Ok(json) => Bytes::from(json),
        Err(e) => unreachable!("frame types always serialize to JSON: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_round_trip() {
        let frames = [
            ClientFrame::Send {
                conversation: ConversationId::new(),
                client_msg_id: Some(ClientMsgId::new("c1").unwrap()),
                body: Body::text("在吗？"),
            },
            ClientFrame::Resume {
                conversation: ConversationId::new(),
                last_seq: Seq::new(41),
            },
            ClientFrame::Typing {
                conversation: ConversationId::new(),
                active: true,
            },
            ClientFrame::Read {
                conversation: ConversationId::new(),
                up_to: Seq::new(3),
            },
            ClientFrame::Ping,
        ];
        for frame in frames {
            let bytes = frame.encode();
            assert_eq!(ClientFrame::decode(&bytes, 1 << 16).unwrap(), frame);
        }
    }

    #[test]
    fn the_send_frame_reads_as_documented() {
        let json = br#"{"type":"send","conversation":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                        "client_msg_id":"m-1","body":{"type":"text","text":"hi"}}"#;
        let frame = ClientFrame::decode(json, 4096).unwrap();
        assert!(matches!(
            frame,
            ClientFrame::Send {
                body: Body::Text { .. },
                ..
            }
        ));
        // A resume without last_seq means "from the start".
        let json = br#"{"type":"resume","conversation":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"}"#;
        assert!(matches!(
            ClientFrame::decode(json, 4096).unwrap(),
            ClientFrame::Resume {
                last_seq: Seq::ZERO,
                ..
            }
        ));
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(matches!(
            ClientFrame::decode(b"{not json", 4096),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::decode(br#"{"type":"launch_rockets"}"#, 4096),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::decode(
                br#"{"type":"send","conversation":"0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"}"#,
                4096
            ),
            Err(FrameError::Malformed(_))
        ));
        // Unknown fields are tolerated, for newer clients.
        assert_eq!(
            ClientFrame::decode(br#"{"type":"ping","extra":1}"#, 4096),
            Ok(ClientFrame::Ping)
        );
        assert!(matches!(
            ClientFrame::decode(br#"{"type":"resume","conversation":"nope"}"#, 4096),
            Err(FrameError::Malformed(_))
        ));
        assert_eq!(
            ClientFrame::decode(&[b' '; 100], 10),
            Err(FrameError::TooLarge { len: 100, max: 10 })
        );
    }

    #[test]
    fn encode_message_matches_the_owned_frame() {
        let message = Message::from_new(
            cs_core::NewMessage::text(ConversationId::new(), Party::Bot, "您好 \"hi\""),
            Seq::new(9),
        );
        let owned = ServerFrame::Message {
            message: message.clone(),
        };
        assert_eq!(ServerFrame::encode_message(&message), owned.encode());
    }

    #[test]
    fn server_frames_have_a_type_tag() {
        let close = ServerFrame::Close {
            reason: CloseReason::SlowResume,
        };
        assert_eq!(
            &close.encode()[..],
            br#"{"type":"close","reason":"slow_resume"}"#
        );
        assert_eq!(ServerFrame::decode(&close.encode()).unwrap(), close);
        let err = ServerFrame::error(ErrorCode::Overloaded, "retry");
        assert_eq!(
            &err.encode()[..],
            br#"{"type":"error","code":"overloaded","message":"retry"}"#
        );
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// The desk frames as docs/protocol.md shows them.
    #[test]
    fn desk_frames_have_the_documented_shape() {
        let id = ConversationId::new();
        let queue = DeskFrame::Queue {
            conversation: id,
            position: 3,
        };
        assert_eq!(
            json(&queue.encode()),
            serde_json::json!({"type": "queue", "conversation": id.to_string(), "position": 3})
        );

        let row = ChatRow {
            id,
            visitor: VisitorId::new("c-1042").unwrap(),
            visitor_name: Some("Ann".into()),
            state: StateKind::Queued,
            agent: None,
            opened_at: Timestamp::from_millis(1_700_000_000_000),
            last_text: Some("where is my parcel".into()),
            last_from: Some("visitor".into()),
            last_at: Some(Timestamp::from_millis(1_700_000_005_000)),
            queue_position: Some(1),
            handoff_reason: Some("asked for a person".into()),
        };
        let desk = DeskFrame::Desk {
            chats: vec![row.clone()],
            closed: Vec::new(),
        };
        assert_eq!(
            json(&desk.encode()),
            serde_json::json!({"type": "desk", "chats": [{
                "id": id.to_string(), "visitor": "c-1042", "visitor_name": "Ann",
                "state": "queued", "agent": null, "opened_at": 1_700_000_000_000u64,
                "last_text": "where is my parcel", "last_from": "visitor",
                "last_at": 1_700_000_005_000u64, "queue_position": 1,
                "handoff_reason": "asked for a person"
            }]}),
            "an empty `closed` is left out"
        );
        let closed = DeskFrame::Desk {
            chats: Vec::new(),
            closed: vec![id],
        };
        assert_eq!(
            json(&closed.encode()),
            serde_json::json!({"type": "desk", "closed": [id.to_string()]})
        );

        let summary = DeskFrame::QueueSummary {
            waiting: 250,
            head: vec![id],
        };
        assert_eq!(
            json(&summary.encode()),
            serde_json::json!({"type": "queue_summary", "waiting": 250, "head": [id.to_string()]})
        );

        let agents = DeskFrame::Agents {
            agents: vec![AgentRow {
                id: AgentId::new("alice").unwrap(),
                name: "Alice".into(),
                presence: Presence::Online,
                active: 1,
                capacity: 3,
            }],
        };
        assert_eq!(
            json(&agents.encode()),
            serde_json::json!({"type": "agents", "agents": [
                {"id": "alice", "name": "Alice", "presence": "online", "active": 1, "capacity": 3}
            ]})
        );
        for frame in [queue, desk, closed, summary, agents] {
            let back: DeskFrame = serde_json::from_slice(&frame.encode()).unwrap();
            assert_eq!(back, frame);
        }
    }

    /// An event's body is flat: the event's fields beside `type` and `event`.
    #[test]
    fn an_event_body_is_flat() {
        let message = Message::from_new(
            cs_core::NewMessage::new(
                ConversationId::new(),
                Party::System,
                Body::Event(cs_core::Event::Assigned {
                    agent: AgentId::new("alice").unwrap(),
                }),
            ),
            Seq::new(4),
        );
        let frame = json(&ServerFrame::encode_message(&message));
        assert_eq!(
            frame["message"]["body"],
            serde_json::json!({"type": "event", "event": "assigned", "agent": "alice"})
        );
    }
}
