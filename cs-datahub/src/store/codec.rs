//! How messages and conversations become column values and back, shared by
//! every store so they all keep the same shape.

use cs_core::store::StoreError;
use cs_core::{ClientMsgId, Conversation, ConversationId, Message, NewMessage, Seq, Timestamp};

/// The largest JSON encoding of a message body a store accepts, in bytes.
///
/// `MessageLimits` caps text at 4 KiB by default, so a valid message is far
/// below this; the cap protects the database from a host that skipped
/// validation, and fits MySQL's MEDIUMTEXT with room to spare.
pub const MAX_BODY_JSON_BYTES: usize = 64 * 1024;

/// A value too large to store. Carried as the source of
/// [`StoreError::Backend`]; nothing was stored.
#[derive(Debug, thiserror::Error)]
#[error("the {field} is {len} bytes, over the store's limit of {max}; validate messages with MessageLimits before appending")]
pub struct OversizeValue {
    /// Which value.
    pub field: &'static str,
    /// Its size in bytes.
    pub len: usize,
    /// The limit.
    pub max: usize,
}

/// A message as column values.
pub(crate) struct EncodedMessage {
    pub conversation: ConversationId,
    pub sender: String,
    pub body: String,
    pub client_msg_id: Option<String>,
    pub created_at: i64,
}

pub(crate) fn encode_message(
    backend: &str,
    message: &NewMessage,
) -> Result<EncodedMessage, StoreError> {
    let sender = to_json(backend, &message.sender)?;
    let body = to_json(backend, &message.body)?;
    if body.len() > MAX_BODY_JSON_BYTES {
        return Err(StoreError::Backend {
            backend: backend.to_owned(),
            source: Box::new(OversizeValue {
                field: "message body",
                len: body.len(),
                max: MAX_BODY_JSON_BYTES,
            }),
        });
    }
    Ok(EncodedMessage {
        conversation: message.conversation,
        sender,
        body,
        client_msg_id: message
            .client_msg_id
            .as_ref()
            .map(|id| id.as_str().to_owned()),
        created_at: millis_to_i64(message.created_at),
    })
}

pub(crate) fn decode_message(
    conversation: ConversationId,
    seq: i64,
    sender: &str,
    body: &str,
    client_msg_id: Option<String>,
    created_at: i64,
) -> Result<Message, StoreError> {
    let corrupt = |what: &str, err: &dyn std::fmt::Display| {
        StoreError::Corrupt(format!(
            "message {seq} of conversation {conversation}: bad {what}: {err}"
        ))
    };
    Ok(Message {
        conversation,
        seq: Seq::new(u64::try_from(seq).map_err(|e| corrupt("seq", &e))?),
        sender: serde_json::from_str(sender).map_err(|e| corrupt("sender", &e))?,
        body: serde_json::from_str(body).map_err(|e| corrupt("body", &e))?,
        client_msg_id: client_msg_id
            .map(ClientMsgId::new)
            .transpose()
            .map_err(|e| corrupt("client_msg_id", &e))?,
        created_at: Timestamp::from_millis(
            u64::try_from(created_at).map_err(|e| corrupt("created_at", &e))?,
        ),
    })
}

pub(crate) fn encode_conversation(backend: &str, c: &Conversation) -> Result<String, StoreError> {
    to_json(backend, c)
}

pub(crate) fn decode_conversation(data: &str) -> Result<Conversation, StoreError> {
    serde_json::from_str(data)
        .map_err(|e| StoreError::Corrupt(format!("a saved conversation does not decode: {e}")))
}

/// Milliseconds as a signed 64-bit column value (saturating, never wrapping).
pub(crate) fn millis_to_i64(at: Timestamp) -> i64 {
    i64::try_from(at.as_millis()).unwrap_or(i64::MAX)
}

/// A seq as a signed 64-bit column value. Clients may send any u64; past
/// i64::MAX no message exists anyway, so saturating keeps queries right.
pub(crate) fn seq_to_i64(seq: Seq) -> i64 {
    i64::try_from(seq.get()).unwrap_or(i64::MAX)
}

/// A row limit as a column value.
pub(crate) fn limit_to_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn to_json<T: serde::Serialize>(backend: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend {
        backend: backend.to_owned(),
        source: Box::new(e),
    })
}
