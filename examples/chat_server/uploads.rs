//! Images and files: uploaded over HTTP (size-limited), kept in the data
//! dir, served back by an unguessable name. The chat message then carries
//! the address, as the protocol asks.

use std::path::PathBuf;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::app::App;
use crate::auth::TokenKind;
use crate::error::ApiError;

/// Images shown inline, with the bytes each must start with.
const IMAGE_TYPES: [(&str, &[u8]); 4] = [
    ("image/png", b"\x89PNG"),
    ("image/jpeg", b"\xff\xd8\xff"),
    ("image/gif", b"GIF8"),
    ("image/webp", b"RIFF"),
];

/// Where uploads live, and how large they may be.
pub struct Uploads {
    dir: PathBuf,
    max_bytes: u64,
}

/// What is kept beside each file.
#[derive(Serialize, Deserialize)]
struct Meta {
    mime: String,
    name: String,
    bytes: u64,
}

impl Uploads {
    /// Uploads in `dir` (created if missing), each at most `max_bytes`.
    pub fn new(dir: PathBuf, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, max_bytes })
    }

    /// The largest upload accepted.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }
}

#[derive(Deserialize)]
pub struct UploadQuery {
    /// The file's name, as the sender's device calls it.
    name: String,
}

/// `POST /api/upload?name=…` with the file as the body and its type as
/// `Content-Type`, by a visitor or an agent. Answers the body to send.
pub async fn upload(
    State(app): State<App>,
    headers: HeaderMap,
    Query(query): Query<UploadQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| ApiError::Unauthenticated("sign in before uploading".into()))?;
    let signed = app.signer.verify(TokenKind::Visitor, token).is_ok()
        || app.signer.verify(TokenKind::Agent, token).is_ok();
    if !signed {
        return Err(ApiError::Unauthenticated(
            "the token is not valid; sign in again".into(),
        ));
    }
    if body.is_empty() {
        return Err(ApiError::BadRequest("the file is empty".into()));
    }
    let name: String = query
        .name
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    if name.trim().is_empty() {
        return Err(ApiError::BadRequest(
            "give the file a name (?name=…)".into(),
        ));
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
        return Err(ApiError::BadRequest(format!(
            "not a PNG, JPEG, GIF or WebP image (declared {declared}); send other files as files"
        )));
    }
    let mime = match image {
        Some((mime, _)) => (*mime).to_owned(),
        None => "application/octet-stream".to_owned(),
    };

    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| ApiError::Unavailable(format!("no randomness: {e}")))?;
    let id = hex::encode(id);
    let meta = Meta {
        mime: mime.clone(),
        name: name.clone(),
        bytes: body.len() as u64,
    };
    let meta_json = serde_json::to_vec(&meta).map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let store = |e: std::io::Error| ApiError::Unavailable(format!("could not store the file: {e}"));
    tokio::fs::write(app.uploads.dir.join(&id), &body)
        .await
        .map_err(store)?;
    tokio::fs::write(app.uploads.dir.join(format!("{id}.json")), meta_json)
        .await
        .map_err(store)?;

    let url = format!("/files/{id}");
    let body = if image.is_some() {
        json!({ "type": "image", "url": url, "mime": mime, "bytes": meta.bytes })
    } else {
        json!({ "type": "file", "url": url, "name": name, "mime": mime, "bytes": meta.bytes })
    };
    Ok(Json(json!({ "body": body })))
}

/// `GET /files/{name}`: an uploaded file. Images inline; everything else as
/// a download, so no upload is ever rendered as a page of this site.
pub async fn download(
    State(app): State<App>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let valid = name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(ApiError::NotFound("no such file".into()));
    }
    let missing = |_| ApiError::NotFound("no such file".into());
    let meta = tokio::fs::read(app.uploads.dir.join(format!("{name}.json")))
        .await
        .map_err(missing)?;
    let meta: Meta = serde_json::from_slice(&meta)
        .map_err(|e| ApiError::Unavailable(format!("the file's record is damaged: {e}")))?;
    let bytes = tokio::fs::read(app.uploads.dir.join(&name))
        .await
        .map_err(missing)?;
    let disposition = if meta.mime.starts_with("image/") {
        "inline".to_owned()
    } else {
        // RFC 5987 form, so any name survives; only unreserved bytes stay as they are.
        let encoded: String = meta
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
            HeaderValue::from_str(&meta.mime)
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
