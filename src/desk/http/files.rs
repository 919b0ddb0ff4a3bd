//! Images and files: uploaded over HTTP (size-limited), kept by the
//! desk's [`Attachments`](crate::desk::Attachments), each bound to its
//! conversation and served only to that conversation's visitor and to agents.

use axum::body::Bytes;
use axum::extract::{OriginalUri, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use cs_core::{ConversationId, Party};

use super::auth::{party_of, prefix_of};
use super::error::ApiError;
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
    Ok(match party {
        Party::Agent(_) => true,
        Party::Visitor(visitor) => {
            let stored = desk.store().conversation(conversation).await?;
            stored.visitor() == visitor && stored.tenant() == desk.tenant()
        }
        _ => false,
    })
}

/// `POST api/upload?name=…[&conversation=…]` with the file as the body and
/// its type as `Content-Type`, by a visitor or an agent. Answers the body
/// to send.
pub async fn upload(
    State(desk): State<ServiceDesk>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    parts: Parts,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let attachments = desk.state.attachments.clone().ok_or_else(|| {
        ApiError::not_found("this desk takes no uploads; add ServiceDeskBuilder::attachments")
    })?;
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
    if body.is_empty() {
        return Err(ApiError::bad_request("the file is empty"));
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
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    // An image must be what it says; anything else is served as a download.
    let image = IMAGE_TYPES
        .iter()
        .find(|(mime, magic)| *mime == declared && body.starts_with(magic));
    if declared.starts_with("image/") && image.is_none() {
        return Err(ApiError::bad_request(format!(
            "not a PNG, JPEG, GIF or WebP image (declared {declared}); send other files as files"
        )));
    }
    let mime = image.map_or("application/octet-stream", |(mime, _)| *mime);
    let file = attachments.put(conversation, &name, mime, body).await?;
    let url = format!("{}/files/{}", prefix_of(&original, &uri), file.id);
    let body = if image.is_some() {
        json!({ "type": "image", "url": url, "mime": file.mime, "bytes": file.bytes })
    } else {
        json!({ "type": "file", "url": url, "name": file.name, "mime": file.mime, "bytes": file.bytes })
    };
    Ok(Json(json!({ "body": body, "conversation": conversation })))
}

/// `GET files/{id}`: a file, to its conversation's visitor and to agents.
/// Images inline; everything else as a download, so no upload is ever
/// rendered as a page of the host's site.
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
    ];
    Ok((headers, bytes).into_response())
}
