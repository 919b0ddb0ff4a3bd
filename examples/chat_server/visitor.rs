//! The visitor side: a session token, the visitor's conversation, and the
//! chat socket.

use axum::extract::{State, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use cs::core::{Party, VisitorId};

use crate::app::App;
use crate::auth::{AuthVisitor, TokenKind, DEMO_AGENTS, VISITOR_TOKEN_TTL};
use crate::error::ApiError;

/// `POST /api/visitor/session`: the visitor's id and a fresh token. A valid
/// token in the request keeps the same visitor (a returning shopper); any
/// other request starts a new one.
pub async fn session(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let returning = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|token| app.signer.verify(TokenKind::Visitor, token).ok())
        .and_then(|subject| VisitorId::new(subject).ok());
    let visitor = match returning {
        Some(visitor) => visitor,
        None => new_visitor_id()?,
    };
    let token = app
        .signer
        .issue(TokenKind::Visitor, visitor.as_str(), VISITOR_TOKEN_TTL);
    Ok(Json(json!({ "visitor": visitor, "token": token })))
}

fn new_visitor_id() -> Result<VisitorId, ApiError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::Unavailable(format!("no randomness for a visitor id: {e}")))?;
    VisitorId::new(format!("v-{}", hex::encode(bytes)))
        .map_err(|e| ApiError::Unavailable(e.to_string()))
}

/// `POST /api/visitor/conversation`: the visitor's open conversation, or a
/// new one with the bot.
pub async fn conversation(
    State(app): State<App>,
    AuthVisitor(visitor): AuthVisitor,
) -> Result<Json<Value>, ApiError> {
    let chat = app.desk.open_for_visitor(&visitor).await?;
    let agents: serde_json::Map<String, Value> = DEMO_AGENTS
        .iter()
        .map(|a| (a.id.to_owned(), Value::from(a.name)))
        .collect();
    Ok(Json(json!({ "conversation": chat, "agents": agents })))
}

/// `POST /api/visitor/conversation/close`: the visitor ends the chat.
pub async fn close(
    State(app): State<App>,
    AuthVisitor(visitor): AuthVisitor,
) -> Result<Json<Value>, ApiError> {
    let chat = app.desk.open_for_visitor(&visitor).await?;
    app.desk
        .close(chat.id, Some("the visitor ended the chat".into()))
        .await?;
    Ok(Json(json!({ "closed": chat.id })))
}

/// `GET /ws/visitor?token=…`: the chat socket, as this visitor. Every frame
/// on it is authorized against this identity by the message path.
pub async fn socket(
    upgrade: WebSocketUpgrade,
    State(app): State<App>,
    AuthVisitor(visitor): AuthVisitor,
) -> Response {
    let tenant = app.tenant.clone();
    app.serve_socket(upgrade, tenant, Party::Visitor(visitor))
}
