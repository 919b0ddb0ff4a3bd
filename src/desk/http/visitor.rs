//! The visitor side: a session, the visitor's conversation, and the socket.

use axum::extract::{OriginalUri, Query, State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use cs_core::{Party, VisitorId};
use cs_transport::Actor;

use super::auth::{
    bearer_of, check_origin, cookie_of, prefix_of, visitor_claims, AuthVisitor, ClientIp,
    VISITOR_COOKIE,
};
use super::error::ApiError;
use crate::desk::limits::Limited;
use crate::desk::tokens::{new_session_id, unix_now, Claims, TokenKind};
use crate::desk::ServiceDesk;

/// `POST api/visitor/session`: the visitor's id and a fresh token.
///
/// A shopper logged in to the shop (the host's [`Identity`]) is their
/// customer id. Anyone else is a guest: a guest token in the request keeps
/// the same guest (a returning shopper, even some days after it expired:
/// `guest_return_window`), anything else starts a new one, within the
/// per-address limit on new sessions. A customer token without the shop's
/// login (they logged out) is not carried over to the guest: the next
/// person at that browser is someone else.
///
/// A renewal keeps the token's session and retires every token of it
/// issued before, so a copied token stops working at the next page load.
///
/// [`Identity`]: crate::desk::Identity
pub async fn session(
    State(desk): State<ServiceDesk>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    ClientIp(ip): ClientIp,
    parts: Parts,
) -> Result<Response, ApiError> {
    let settings = &desk.state.settings;
    // What the browser holds, if it is genuine and not retired (expired is fine here).
    let presented = bearer_of(&parts)
        .or_else(|| cookie_of(&parts, VISITOR_COOKIE))
        .and_then(|token| desk.signer().verify_claims(&token).ok())
        .filter(|claims| !desk.state.revocations.refuses(claims));
    let (visitor, kind, ttl, name, renewed) = match desk.state.identity.customer(&parts).await? {
        Some(customer) => {
            if let Some(name) = &customer.name {
                desk.state
                    .visitor_names
                    .insert(customer.id.clone(), name.clone());
            }
            let renewed = presented.filter(|c| {
                c.kind == TokenKind::Customer && c.subject == customer.id.as_str() && !c.expired()
            });
            (
                customer.id,
                TokenKind::Customer,
                settings.customer_token_ttl,
                customer.name,
                renewed,
            )
        }
        None => {
            let window = settings.guest_return_window.as_secs();
            let returning = presented
                .filter(|c| c.kind == TokenKind::Guest)
                .filter(|c| c.expires.saturating_add(window) >= unix_now())
                .and_then(|c| VisitorId::new(&c.subject).ok().map(|v| (v, c)));
            match returning {
                Some((visitor, claims)) => (
                    visitor,
                    TokenKind::Guest,
                    settings.guest_token_ttl,
                    None,
                    Some(claims),
                ),
                None => {
                    desk.state.limits.new_session(ip).map_err(limited)?;
                    let visitor = new_guest_id()?;
                    (
                        visitor,
                        TokenKind::Guest,
                        settings.guest_token_ttl,
                        None,
                        None,
                    )
                }
            }
        }
    };
    let claims = Claims {
        kind,
        subject: visitor.as_str().to_owned(),
        session: renewed
            .as_ref()
            .map_or_else(new_session_id, |c| c.session.clone()),
        issued_ms: desk.signer().next_issued(),
        expires: unix_now() + ttl.as_secs(),
    };
    let token = desk.signer().issue_claims(&claims);
    if renewed.is_some() {
        // Every earlier token of this session expires by then at the latest.
        desk.state
            .revocations
            .retire_session(&claims.session, claims.issued_ms, claims.expires);
    }
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

/// `POST api/visitor/logout`: ends this browser's session. Its tokens are
/// refused from now on, its cookie is cleared, and the visitor's open
/// sockets are closed (a shared computer must not keep showing the chat).
pub async fn logout(
    State(desk): State<ServiceDesk>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    parts: Parts,
) -> Result<Response, ApiError> {
    let claims = visitor_claims(&desk, &parts)?;
    let until = unix_now()
        + desk
            .state
            .settings
            .guest_token_ttl
            .as_secs()
            .max(claims.expires);
    desk.state
        .revocations
        .retire_session(&claims.session, desk.signer().next_issued(), until);
    if let Ok(visitor) = VisitorId::new(&claims.subject) {
        desk.close_sockets_of(&Party::Visitor(visitor));
    }
    let cookie = clear_cookie(VISITOR_COOKIE, &prefix_of(&original, &uri));
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "signed_out": true })),
    )
        .into_response())
}

/// A 429 from a limit's refusal.
pub(crate) fn limited(refusal: Limited) -> ApiError {
    ApiError::rate_limited(refusal.to_string(), refusal.retry_after)
}

/// A cookie that deletes `name`.
pub(crate) fn clear_cookie(name: &str, prefix: &str) -> HeaderValue {
    session_cookie(name, "", prefix, std::time::Duration::ZERO)
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
/// new one with the bot (within the limits on new conversations per
/// visitor and per address), and the agents' names.
pub async fn conversation(
    State(desk): State<ServiceDesk>,
    AuthVisitor(visitor): AuthVisitor,
    ClientIp(ip): ClientIp,
    Query(page): Query<PageLanguage>,
) -> Result<Json<Value>, ApiError> {
    let chat = desk
        .state
        .open_for_visitor(&visitor, page.lang.as_deref(), ip)
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

/// What `rating` reads.
#[derive(serde::Deserialize)]
pub struct Rating {
    conversation: cs_core::ConversationId,
    score: i64,
    #[serde(default)]
    comment: Option<String>,
}

/// `POST api/visitor/rating` `{conversation, score: 1..=5, comment?}`:
/// the visitor rates their conversation once it is closed, once. A 409
/// for an open or already rated one.
pub async fn rating(
    State(desk): State<ServiceDesk>,
    AuthVisitor(visitor): AuthVisitor,
    Json(rating): Json<Rating>,
) -> Result<Json<Value>, ApiError> {
    desk.rate(&visitor, rating.conversation, rating.score, rating.comment)
        .await?;
    Ok(Json(
        json!({ "rated": rating.conversation, "score": rating.score }),
    ))
}

/// `GET ws/visitor?token=…`: the chat socket, as this visitor, from a page
/// of an allowed origin, within the caps on sockets per visitor and per
/// address. Every frame on it is authorized against this identity by the
/// message path.
pub async fn socket(
    upgrade: WebSocketUpgrade,
    State(desk): State<ServiceDesk>,
    AuthVisitor(visitor): AuthVisitor,
    ClientIp(ip): ClientIp,
    parts: Parts,
) -> Result<Response, ApiError> {
    check_origin(&desk, &parts)?;
    let place = desk
        .state
        .limits
        .socket(Some(&visitor), ip)
        .map_err(limited)?;
    let tenant = desk.tenant().clone();
    Ok(desk.serve_socket_holding(upgrade, tenant, Party::Visitor(visitor), Some(place)))
}
