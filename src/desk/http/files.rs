//! Images and files: uploaded over HTTP, kept by the desk's
//! [`Attachments`](crate::desk::Attachments), each bound to its
//! conversation and served only to that conversation's visitor and to
//! agents.
//!
//! Both ways the bytes stream: an upload goes to the backend chunk by
//! chunk and a download comes back the same way, so a slow or stalled
//! client holds a chunk, not a file. Enforced here, before the backend
//! sees a byte: the size ([`DeskSettings::max_upload_bytes`], from
//! `Content-Length` at once and while streaming, 413), the quotas
//! ([`UploadLimits`], 429), and an image's type by its first bytes. The
//! server's body-read timeout ends a stalled upload, which then keeps
//! nothing.
//!
//! [`DeskSettings::max_upload_bytes`]: crate::desk::DeskSettings::max_upload_bytes
//! [`UploadLimits`]: crate::desk::UploadLimits

use axum::body::{Body, Bytes};
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::BytesMut;
use futures::{future, stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use cs_core::{ConversationId, Party};

use super::auth::{party_of, prefix_of};
use super::error::ApiError;
use crate::desk::attachments::{AttachmentError, ByteStream};
use crate::desk::ServiceDesk;

/// Images shown inline, with the bytes each must start with.
const IMAGE_TYPES: [(&str, &[u8]); 4] = [
    ("image/png", b"\x89PNG"),
    ("image/jpeg", b"\xff\xd8\xff"),
    ("image/gif", b"GIF8"),
    ("image/webp", b"RIFF"),
];

/// What `upload` reads from the query.
#[derive(Deserialize)]
pub struct UploadQuery {
    /// The file's name, as the sender's device calls it.
    name: String,
    /// The conversation it is sent in; a visitor's own open one by default.
    conversation: Option<ConversationId>,
}

/// Whether `party` may see the files of `conversation`: its visitor, or an agent.
async fn may_see(
    desk: &ServiceDesk,
    party: &Party,
    conversation: ConversationId,
) -> Result<bool, ApiError> {
    // The conversation must exist and be this shop's, for agents too: an
    // upload into a made-up id would be kept for no one.
    let stored = desk.store().conversation(conversation).await?;
    if stored.tenant() != desk.tenant() {
        return Ok(false);
    }
    Ok(match party {
        Party::Agent(_) => true,
        Party::Visitor(visitor) => stored.visitor() == visitor,
        _ => false,
    })
}

/// How many first bytes an image's type is checked by: the longest magic.
const SNIFF: usize = 4;

/// A `Content-Length` the client declared, if any.
fn content_length(parts: &Parts) -> Result<Option<u64>, ApiError> {
    let Some(value) = parts.headers.get(header::CONTENT_LENGTH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| ApiError::bad_request("Content-Length is not a number of bytes"))
}

/// The request body as a [`ByteStream`] that ends in
/// [`AttachmentError::TooLarge`] as soon as it passes `limit`, and in
/// [`AttachmentError::Aborted`] when the body does (the client hung up, or
/// paused past the server's body-read timeout).
fn limited(body: Body, limit: u64) -> ByteStream {
    body.into_data_stream()
        .scan(0u64, move |seen, chunk| {
            let item = match chunk {
                Ok(chunk) => {
                    *seen += chunk.len() as u64;
                    if *seen > limit {
                        Err(AttachmentError::TooLarge { limit })
                    } else {
                        Ok(chunk)
                    }
                }
                Err(e) => Err(AttachmentError::Aborted(e.to_string())),
            };
            future::ready(Some(item))
        })
        .boxed()
}

/// At least the first [`SNIFF`] bytes of `body` (fewer if it is shorter),
/// and the stream with them put back in front.
async fn sniff(mut body: ByteStream) -> Result<(Bytes, ByteStream), AttachmentError> {
    let mut head = BytesMut::new();
    while head.len() < SNIFF {
        match body.next().await {
            Some(chunk) => head.extend_from_slice(&chunk?),
            None => break,
        }
    }
    let head = head.freeze();
    let whole = stream::once(future::ready(Ok(head.clone())))
        .chain(body)
        .boxed();
    Ok((head, whole))
}

/// `POST api/upload?name=…[&conversation=…]` with the file as the body and
/// its type as `Content-Type`, by a visitor or an agent. Answers the body
/// to send.
///
/// The body streams to the backend, never whole in memory. Refused, in
/// this order: a `Content-Length` over [`DeskSettings::max_upload_bytes`]
/// (413, before a byte is read); a party that may not post to the
/// conversation; a quota of [`UploadLimits`] that the declared length (or,
/// without one, the largest upload) would pass (429, with `Retry-After`);
/// an image whose first bytes are not its type (400); a body that grows
/// past the limit (413) or ends early (400). A refused upload keeps nothing.
///
/// [`DeskSettings::max_upload_bytes`]: crate::desk::DeskSettings::max_upload_bytes
/// [`UploadLimits`]: crate::desk::UploadLimits
pub async fn upload(
    State(desk): State<ServiceDesk>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    parts: Parts,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let attachments = desk.state.attachments.clone().ok_or_else(|| {
        ApiError::not_found("this desk takes no uploads; add ServiceDeskBuilder::attachments")
    })?;
    let limit = desk.state.settings.max_upload_bytes;
    let length = content_length(&parts)?;
    match length {
        Some(length) if length > limit => return Err(AttachmentError::TooLarge { limit }.into()),
        Some(0) => return Err(ApiError::bad_request("the file is empty")),
        _ => {}
    }
    let party = party_of(&desk, &parts).await?;
    let conversation = match (query.conversation, &party) {
        (Some(id), _) => id,
        (None, Party::Visitor(visitor)) => desk.open_for_visitor(visitor).await?.id,
        (None, _) => {
            return Err(ApiError::bad_request(
                "name the conversation the file is for (?conversation=…)",
            ))
        }
    };
    if !may_see(&desk, &party, conversation).await? {
        return Err(ApiError::forbidden("not your conversation"));
    }
    let name: String = query
        .name
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    if name.trim().is_empty() {
        return Err(ApiError::bad_request("give the file a name (?name=…)"));
    }
    let declared = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");

    // The share is taken before the body is read, so uploads started
    // together cannot all pass a quota; it is given back if this fails.
    let visitor = match &party {
        Party::Visitor(visitor) => Some(visitor),
        _ => None,
    };
    let reservation = desk
        .state
        .uploads
        .reserve(
            attachments.as_ref(),
            visitor,
            conversation,
            length.unwrap_or(limit),
        )
        .await?;

    let (head, body) = sniff(limited(body, limit)).await?;
    if head.is_empty() {
        return Err(ApiError::bad_request("the file is empty"));
    }
    // An image must be what it says; anything else is served as a download.
    let image = IMAGE_TYPES
        .iter()
        .find(|(mime, magic)| *mime == declared && head.starts_with(magic));
    if declared.starts_with("image/") && image.is_none() {
        return Err(ApiError::bad_request(format!(
            "not a PNG, JPEG, GIF or WebP image (declared {declared}); send other files as files"
        )));
    }
    let mime = image.map_or("application/octet-stream", |(mime, _)| *mime);
    let file = attachments.put(conversation, &name, mime, body).await?;
    reservation.settle(file.bytes);

    let url = format!("{}/files/{}", prefix_of(&original, &uri), file.id);
    let body = if image.is_some() {
        json!({ "type": "image", "url": url, "mime": file.mime, "bytes": file.bytes })
    } else {
        json!({ "type": "file", "url": url, "name": file.name, "mime": file.mime, "bytes": file.bytes })
    };
    Ok(Json(json!({ "body": body, "conversation": conversation })))
}

/// `GET files/{id}`: a file, to its conversation's visitor and to agents
/// (to anyone else, a 404 as for a file that does not exist). Images
/// inline; everything else as a download, so no upload is ever rendered as
/// a page of the host's site. Streamed from the backend with its
/// `Content-Length`; a client that stops reading is dropped by the
/// server's write timeout, holding one chunk.
pub async fn download(
    State(desk): State<ServiceDesk>,
    parts: Parts,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let attachments = desk
        .state
        .attachments
        .clone()
        .ok_or_else(|| ApiError::not_found("no such file"))?;
    let party = party_of(&desk, &parts).await?;
    let (file, bytes) = attachments.get(&id).await?;
    if !may_see(&desk, &party, file.conversation).await? {
        // The same answer as for a file that does not exist.
        return Err(ApiError::not_found("no such file"));
    }
    let disposition = if file.mime.starts_with("image/") {
        "inline".to_owned()
    } else {
        // RFC 5987 form, so any name survives; only unreserved bytes stay as they are.
        let encoded: String = file
            .name
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        format!("attachment; filename*=UTF-8''{encoded}")
    };
    let headers = [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_str(&file.mime)
                .unwrap_or(HeaderValue::from_static("application/octet-stream")),
        ),
        (
            header::CONTENT_DISPOSITION,
            HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment")),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox"),
        ),
        (header::CONTENT_LENGTH, HeaderValue::from(file.bytes)),
    ];
    Ok((headers, Body::from_stream(bytes)).into_response())
}
