//! Messages: who sent what, in which conversation, at which seq.
//!
//! A [`NewMessage`] is what a sender hands in; the store turns it into a
//! [`Message`] by assigning the next [`Seq`]. Validation against
//! [`MessageLimits`] happens before that, at the edge, so a store never sees an
//! oversized or empty body.

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, ClientMsgId, ConversationId, Seq, VisitorId};
use crate::timestamp::Timestamp;

/// Who said it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum Party {
    /// The shopper.
    Visitor(VisitorId),
    /// A human agent.
    Agent(AgentId),
    /// The shop's bot (the `IntentAgent` in cs-intent, or the host's own).
    Bot,
    /// The system itself: assignments, transfers, closing notices.
    System,
}

/// What was said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Body {
    /// Plain text. Never empty, at most [`MessageLimits::max_text_bytes`].
    Text {
        /// The text, UTF-8.
        text: String,
        /// Answers the reader may pick with one tap (the bot's "did you
        /// mean…?"); a pick is sent back as a text message of the label. Left
        /// out of the JSON when empty, so a plain text body reads as before.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        quick_replies: Vec<QuickReply>,
    },
    /// An image the host has stored; the message carries its address.
    Image {
        /// Where the client fetches it.
        url: String,
        /// Its media type, such as `image/png`.
        mime: String,
        /// Its size in bytes.
        bytes: u64,
    },
    /// Any other file the host has stored.
    File {
        /// Where the client fetches it.
        url: String,
        /// The file name to show.
        name: String,
        /// Its media type.
        mime: String,
        /// Its size in bytes.
        bytes: u64,
    },
    /// Something that happened rather than something said.
    Event(Event),
}

/// One quick-reply button of a text message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuickReply {
    /// The button's text, which is also what a tap sends.
    pub label: String,
}

/// Most quick replies one message may carry: a choice among a few, not a menu.
pub const MAX_QUICK_REPLIES: usize = 8;

impl Body {
    /// Plain text.
    pub fn text(text: impl Into<String>) -> Self {
        Body::Text {
            text: text.into(),
            quick_replies: Vec::new(),
        }
    }

    /// Text with quick-reply buttons, one per label.
    pub fn text_with_quick_replies(
        text: impl Into<String>,
        labels: impl IntoIterator<Item = String>,
    ) -> Self {
        Body::Text {
            text: text.into(),
            quick_replies: labels
                .into_iter()
                .map(|label| QuickReply { label })
                .collect(),
        }
    }

    /// Whether this body only matters to whoever is online right now (typing
    /// indicators), so the message path delivers it without storing it.
    pub fn is_ephemeral(&self) -> bool {
        matches!(self, Body::Event(Event::Typing { .. }))
    }
}

/// Things that happen in a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// The sender started or stopped typing.
    Typing {
        /// `true` while typing.
        active: bool,
    },
    /// The sender has read everything up to and including `up_to`.
    Read {
        /// The last seq read.
        up_to: Seq,
    },
    /// An agent took the conversation from the queue.
    Assigned {
        /// The agent now serving the visitor.
        agent: AgentId,
    },
    /// The conversation moved from one agent to another.
    Transfer {
        /// The agent who handed it over.
        from: AgentId,
        /// The agent who has it now.
        to: AgentId,
    },
    /// The bot handed the visitor to a human.
    Handoff {
        /// Why, in words an agent can act on ("low confidence", "asked for a person").
        reason: String,
    },
    /// The conversation was closed.
    Close {
        /// Why, if anyone said.
        reason: Option<String>,
    },
    /// A closed conversation was opened again.
    Reopen,
    /// The visitor rated the conversation at its close (satisfaction).
    Rating {
        /// 1 (bad) to 5 (very good).
        score: u8,
        /// What the visitor added in words, if anything.
        comment: Option<String>,
        /// The agent who served the conversation last, if one did: the
        /// rating counts in their figures.
        agent: Option<AgentId>,
    },
}

/// Size limits applied to every message before it is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MessageLimits {
    /// Longest text body, in bytes. Default 4 KiB: a long chat message, not a
    /// document; documents are files.
    pub max_text_bytes: usize,
    /// Largest attachment the host may announce, in bytes. Default 10 MiB.
    pub max_attachment_bytes: u64,
    /// Longest URL, file name, media type or event reason, in bytes. Default 2 KiB.
    pub max_field_bytes: usize,
}

impl Default for MessageLimits {
    fn default() -> Self {
        Self {
            max_text_bytes: 4 * 1024,
            max_attachment_bytes: 10 * 1024 * 1024,
            max_field_bytes: 2 * 1024,
        }
    }
}

/// Why a message was refused before it was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidMessage {
    /// A text body with nothing but whitespace.
    #[error("the message text is empty; send at least one visible character")]
    EmptyText,
    /// A text body over the limit.
    #[error(
        "the message text is {len} bytes, over the limit of {max}; split it or send it as a file"
    )]
    TextTooLong {
        /// Its length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// An attachment over the limit.
    #[error("the attachment is {bytes} bytes, over the limit of {max}")]
    AttachmentTooLarge {
        /// Its announced size.
        bytes: u64,
        /// The configured limit.
        max: u64,
    },
    /// A URL that is not `https://…`, `http://…` or a path of this site
    /// (`/files/…`): `javascript:` and `data:` URLs would run or render
    /// whatever the sender chose in the reader's browser.
    #[error("the url must start with https://, http:// or / (a path of this site), not {0:?}")]
    BadUrl(String),
    /// A media type that is not `type/subtype` (an image's must be `image/…`).
    #[error("the mime type {0:?} is not a media type like image/png or application/pdf")]
    BadMime(String),
    /// A URL, name, media type or reason over the limit, or an empty URL.
    #[error("the field `{field}` is {len} bytes; it must be 1 to {max} bytes")]
    BadField {
        /// Which field.
        field: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The configured limit.
        max: usize,
    },
}

/// A message as its sender hands it in, before it has a seq.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// The conversation it belongs to.
    pub conversation: ConversationId,
    /// Who sent it.
    pub sender: Party,
    /// What it says.
    pub body: Body,
    /// The sender's own id for it, so a retry is stored once.
    pub client_msg_id: Option<ClientMsgId>,
    /// When it was sent, as this server saw it.
    pub created_at: Timestamp,
}

impl NewMessage {
    /// A message sent now, with no client id.
    pub fn new(conversation: ConversationId, sender: Party, body: Body) -> Self {
        Self {
            conversation,
            sender,
            body,
            client_msg_id: None,
            created_at: Timestamp::now(),
        }
    }

    /// A text message sent now.
    pub fn text(conversation: ConversationId, sender: Party, text: impl Into<String>) -> Self {
        Self::new(conversation, sender, Body::text(text))
    }

    /// Sets the client's id, for idempotent retries.
    pub fn with_client_msg_id(mut self, id: ClientMsgId) -> Self {
        self.client_msg_id = Some(id);
        self
    }

    /// Checks the body against `limits`.
    ///
    /// # Errors
    /// [`InvalidMessage`] naming the first limit broken.
    pub fn validate(&self, limits: &MessageLimits) -> Result<(), InvalidMessage> {
        let field = |field: &'static str, value: &str, allow_empty: bool| {
            let len = value.len();
            if len > limits.max_field_bytes || (!allow_empty && len == 0) {
                Err(InvalidMessage::BadField {
                    field,
                    len,
                    max: limits.max_field_bytes,
                })
            } else {
                Ok(())
            }
        };
        let attachment = |bytes: u64| {
            if bytes > limits.max_attachment_bytes {
                Err(InvalidMessage::AttachmentTooLarge {
                    bytes,
                    max: limits.max_attachment_bytes,
                })
            } else {
                Ok(())
            }
        };
        match &self.body {
            Body::Text {
                text,
                quick_replies,
            } => {
                if quick_replies.len() > MAX_QUICK_REPLIES {
                    return Err(InvalidMessage::BadField {
                        field: "quick_replies",
                        len: quick_replies.len(),
                        max: MAX_QUICK_REPLIES,
                    });
                }
                for reply in quick_replies {
                    // A label is sent back as a message, so it obeys the text rules too.
                    field("quick_replies.label", &reply.label, false)?;
                    if reply.label.trim().is_empty() {
                        return Err(InvalidMessage::EmptyText);
                    }
                }
                if text.len() > limits.max_text_bytes {
                    return Err(InvalidMessage::TextTooLong {
                        len: text.len(),
                        max: limits.max_text_bytes,
                    });
                }
                if text.trim().is_empty() {
                    return Err(InvalidMessage::EmptyText);
                }
                Ok(())
            }
            Body::Image { url, mime, bytes } => {
                field("url", url, false)?;
                field("mime", mime, false)?;
                check_url(url)?;
                check_mime(mime, Some("image"))?;
                attachment(*bytes)
            }
            Body::File {
                url,
                name,
                mime,
                bytes,
            } => {
                field("url", url, false)?;
                field("name", name, false)?;
                field("mime", mime, false)?;
                check_url(url)?;
                check_mime(mime, None)?;
                attachment(*bytes)
            }
            Body::Event(Event::Handoff { reason }) => field("reason", reason, true),
            Body::Event(Event::Close {
                reason: Some(reason),
            }) => field("reason", reason, true),
            Body::Event(Event::Rating {
                comment: Some(comment),
                ..
            }) => field("comment", comment, true),
            Body::Event(_) => Ok(()),
        }
    }
}

/// An attachment's URL: absolute http(s), or a path of the serving site.
fn check_url(url: &str) -> Result<(), InvalidMessage> {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let absolute = lower.starts_with("https://") || lower.starts_with("http://");
    // `//host/…` is another site's URL in disguise, and `/\host` is one to some browsers.
    let local = url.starts_with('/') && !url.starts_with("//") && !url.starts_with("/\\");
    let clean = !url.chars().any(|c| c.is_control() || c.is_whitespace());
    if (absolute || local) && clean {
        Ok(())
    } else {
        Err(InvalidMessage::BadUrl(url.chars().take(40).collect()))
    }
}

/// A media type: `type/subtype` in RFC 6838's restricted name characters,
/// with no parameters; `kind` pins the type (`image`).
fn check_mime(mime: &str, kind: Option<&str>) -> Result<(), InvalidMessage> {
    let name = |part: &str| {
        !part.is_empty()
            && part.len() <= 127
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let valid = match mime.split_once('/') {
        Some((top, sub)) => {
            name(top) && name(sub) && kind.is_none_or(|k| top.eq_ignore_ascii_case(k))
        }
        None => false,
    };
    if valid {
        Ok(())
    } else {
        Err(InvalidMessage::BadMime(mime.chars().take(40).collect()))
    }
}

/// A stored message: a [`NewMessage`] plus the seq the store gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The conversation it belongs to.
    pub conversation: ConversationId,
    /// Its place in the conversation, gap-free from 1.
    pub seq: Seq,
    /// Who sent it.
    pub sender: Party,
    /// What it says.
    pub body: Body,
    /// The sender's own id for it, if it gave one.
    pub client_msg_id: Option<ClientMsgId>,
    /// When it was sent.
    pub created_at: Timestamp,
}

impl Message {
    /// Gives `new` its seq.
    pub fn from_new(new: NewMessage, seq: Seq) -> Self {
        Self {
            conversation: new.conversation,
            seq,
            sender: new.sender,
            body: new.body,
            client_msg_id: new.client_msg_id,
            created_at: new.created_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visitor() -> Party {
        Party::Visitor(VisitorId::new("v1").unwrap())
    }

    #[test]
    fn wire_shape_is_stable() {
        let conv = ConversationId::new();
        let msg = Message::from_new(NewMessage::text(conv, visitor(), "你好"), Seq::new(1));
        let json = serde_json::to_value(&msg).unwrap();
        assert_eq!(
            json["sender"],
            serde_json::json!({"kind": "visitor", "id": "v1"})
        );
        assert_eq!(
            json["body"],
            serde_json::json!({"type": "text", "text": "你好"})
        );
        assert_eq!(json["seq"], 1);

        let read = Body::Event(Event::Read { up_to: Seq::new(7) });
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::json!({"type": "event", "event": "read", "up_to": 7})
        );
        let back: Body = serde_json::from_value(serde_json::to_value(&read).unwrap()).unwrap();
        assert_eq!(back, read);
        assert_eq!(
            serde_json::to_value(Party::Bot).unwrap(),
            serde_json::json!({"kind": "bot"})
        );
    }

    #[test]
    fn quick_replies_are_optional_on_the_wire_and_checked() {
        let plain: Body = serde_json::from_str(r#"{"type":"text","text":"hi"}"#).unwrap();
        assert_eq!(plain, Body::text("hi"));
        let asking = Body::text_with_quick_replies("Which?", ["Refund".into(), "Track".into()]);
        let json = serde_json::to_value(&asking).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "text", "text": "Which?",
                               "quick_replies": [{"label": "Refund"}, {"label": "Track"}]})
        );
        assert_eq!(serde_json::from_value::<Body>(json).unwrap(), asking);

        let conv = ConversationId::new();
        let limits = MessageLimits::default();
        let with = |labels: Vec<String>| {
            NewMessage::new(
                conv,
                Party::Bot,
                Body::text_with_quick_replies("Which?", labels),
            )
            .validate(&limits)
        };
        assert_eq!(with(vec!["a".into(); 2]), Ok(()));
        assert!(matches!(
            with(vec!["a".into(); MAX_QUICK_REPLIES + 1]),
            Err(InvalidMessage::BadField {
                field: "quick_replies",
                ..
            })
        ));
        assert!(matches!(
            with(vec![String::new()]),
            Err(InvalidMessage::BadField {
                field: "quick_replies.label",
                ..
            })
        ));
        assert_eq!(with(vec!["  ".into()]), Err(InvalidMessage::EmptyText));
    }

    #[test]
    fn validation_names_the_broken_limit() {
        let conv = ConversationId::new();
        let limits = MessageLimits::default();
        let ok = NewMessage::text(conv, visitor(), "where is my order?");
        assert_eq!(ok.validate(&limits), Ok(()));

        let empty = NewMessage::text(conv, visitor(), "  \n ");
        assert_eq!(empty.validate(&limits), Err(InvalidMessage::EmptyText));

        let long = NewMessage::text(conv, visitor(), "x".repeat(4097));
        assert_eq!(
            long.validate(&limits),
            Err(InvalidMessage::TextTooLong {
                len: 4097,
                max: 4096
            })
        );

        let big = NewMessage::new(
            conv,
            visitor(),
            Body::Image {
                url: "/files/a.png".into(),
                mime: "image/png".into(),
                bytes: 11 * 1024 * 1024,
            },
        );
        assert!(matches!(
            big.validate(&limits),
            Err(InvalidMessage::AttachmentTooLarge { .. })
        ));

        let no_url = NewMessage::new(
            conv,
            visitor(),
            Body::File {
                url: String::new(),
                name: "invoice.pdf".into(),
                mime: "application/pdf".into(),
                bytes: 10,
            },
        );
        assert!(matches!(
            no_url.validate(&limits),
            Err(InvalidMessage::BadField { field: "url", .. })
        ));
    }

    #[test]
    fn attachment_urls_must_be_http_or_this_sites_paths_and_mimes_media_types() {
        let limits = MessageLimits::default();
        let image = |url: &str, mime: &str| {
            NewMessage::new(
                ConversationId::new(),
                visitor(),
                Body::Image {
                    url: url.into(),
                    mime: mime.into(),
                    bytes: 10,
                },
            )
            .validate(&limits)
        };
        for good in [
            "/support/files/0a1b",
            "https://cdn.example.com/a.png",
            "HTTP://x/y",
        ] {
            assert_eq!(image(good, "image/png"), Ok(()), "{good}");
        }
        for bad in [
            "javascript:alert(1)",
            " javascript:alert(1)",
            "data:image/png;base64,AAAA",
            "//evil.example/a.png",
            "/\\evil.example/a.png",
            "files/a.png",
            "/files/a b.png",
        ] {
            assert!(
                matches!(image(bad, "image/png"), Err(InvalidMessage::BadUrl(_))),
                "{bad}"
            );
        }
        for bad in ["text/html", "image", "image/png; charset=x", "image/<svg>"] {
            assert!(
                matches!(image("/f", bad), Err(InvalidMessage::BadMime(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_typing_is_ephemeral() {
        assert!(Body::Event(Event::Typing { active: true }).is_ephemeral());
        assert!(!Body::Event(Event::Read { up_to: Seq::ZERO }).is_ephemeral());
        assert!(!Body::text("hi").is_ephemeral());
    }
}
