//! The visitor side: a session, the visitor's conversation, and the socket.

use axum::extract::{OriginalUri, Query, State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use cs_core::{Party, VisitorId};
use cs_transport::Actor;

use super::auth::{bearer_of, cookie_of, prefix_of, AuthVisitor, VISITOR_COOKIE};
use super::error::ApiError;
use crate::desk::tokens::TokenKind;
use crate::desk::ServiceDesk;

/// `POST api/visitor/session`: the visitor's id and a fresh token.
///
/// A shopper logged in to the shop (the host's [`Identity`]) is their
/// customer id. Anyone else is a guest: a valid guest token in the request
/// keeps the same guest (a returning shopper), anything else starts a new
/// one. A customer token without the shop's login (they logged out) is not
/// carried over to the guest: the next person at that browser is someone else.
///
/// [`Identity`]: crate::desk::Identity
pub async fn session(
    State(desk): State<ServiceDesk>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    parts: Parts,
) -> Result<Response, ApiError> {
    let settings = &desk.state.settings;
    let (visitor, kind, ttl, name) = match desk.state.identity.customer(&parts).await? {
        Some(customer) => {
            if let Some(name) = &customer.name {
                desk.state
                    .visitor_names
                    .insert(customer.id.clone(), name.clone());
            }
            (
                customer.id,
                TokenKind::Customer,
                settings.customer_token_ttl,
                customer.name,
            )
        }
        None => {
            let returning = bearer_of(&parts)
                .or_else(|| cookie_of(&parts, VISITOR_COOKIE))
                .and_then(|token| desk.signer().verify(&token).ok())
                .filter(|(kind, _)| *kind == TokenKind::Guest)
                .and_then(|(_, subject)| VisitorId::new(subject).ok());
            let visitor = match returning {
                Some(visitor) => visitor,
                None => new_guest_id()?,
            };
            (visitor, TokenKind::Guest, settings.guest_token_ttl, None)
        }
    };
    let token = desk.signer().issue(kind, visitor.as_str(), ttl);
    let cookie = session_cookie(VISITOR_COOKIE, &token, &prefix_of(&original, &uri), ttl);
    let kind = match kind {
        TokenKind::Customer => "customer",
        _ => "guest",
    };
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "visitor": visitor, "token": token, "kind": kind, "name": name })),
    )
        .into_response())
}

/// An HttpOnly cookie for the desk's paths only.
pub(crate) fn session_cookie(
    name: &str,
    token: &str,
    prefix: &str,
    ttl: std::time::Duration,
) -> HeaderValue {
    let path = if prefix.is_empty() { "/" } else { prefix };
    let cookie = format!(
        "{name}={token}; Path={path}; Max-Age={}; HttpOnly; SameSite=Lax",
        ttl.as_secs()
    );
    // Tokens and paths are ASCII; a path that is not falls back to none.
    HeaderValue::from_str(&cookie).unwrap_or(HeaderValue::from_static("cs=; Max-Age=0"))
}

fn new_guest_id() -> Result<VisitorId, ApiError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes)
        .map_err(|e| ApiError::unavailable(format!("no randomness for a visitor id: {e}")))?;
    VisitorId::new(format!("v-{}", hex::encode(bytes)))
        .map_err(|e| ApiError::unavailable(e.to_string()))
}

/// What `conversation` reads from the query: the widget's `data-lang`.
#[derive(serde::Deserialize)]
pub struct PageLanguage {
    /// The page's language (`en`, `zh`, …), for a new chat's greeting.
    lang: Option<String>,
}

/// `POST api/visitor/conversation[?lang=…]`: the visitor's open conversation, or a
/// new one with the bot, and the agents' names.
pub async fn conversation(
    State(desk): State<ServiceDesk>,
    AuthVisitor(visitor): AuthVisitor,
    Query(page): Query<PageLanguage>,
) -> Result<Json<Value>, ApiError> {
    let chat = desk
        .open_for_visitor_in(&visitor, page.lang.as_deref())
        .await?;
    let agents: serde_json::Map<String, Value> = desk
        .state
        .directory
        .agents()
        .into_iter()
        .map(|a| (a.id.to_string(), Value::from(a.name)))
        .collect();
    Ok(Json(json!({ "conversation": chat, "agents": agents })))
}

/// `POST api/visitor/conversation/close`: the visitor ends the chat.
pub async fn close(
    State(desk): State<ServiceDesk>,
    AuthVisitor(visitor): AuthVisitor,
) -> Result<Json<Value>, ApiError> {
    let chat = desk.open_for_visitor(&visitor).await?;
    desk.close(
        chat.id,
        Actor::Visitor(visitor),
        Some("the visitor ended the chat".into()),
    )
    .await?;
    Ok(Json(json!({ "closed": chat.id })))
}

/// `GET ws/visitor?token=…`: the chat socket, as this visitor. Every frame
/// on it is authorized against this identity by the message path.
pub async fn socket(
    upgrade: WebSocketUpgrade,
    State(desk): State<ServiceDesk>,
    AuthVisitor(visitor): AuthVisitor,
) -> Response {
    let tenant = desk.tenant().clone();
    desk.serve_socket(upgrade, tenant, Party::Visitor(visitor))
}
