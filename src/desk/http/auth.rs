//! Who a request is, as extractors: [`AuthVisitor`] and [`AuthAgent`]
//! (and the client's address, [`ClientIp`]). A host's own routes can use
//! them too, with any state the desk can be taken from (`FromRef`).
//!
//! The desk's token travels as `Authorization: Bearer …`, as the
//! `cs_visitor` / `cs_agent` cookie the session endpoints set (so an
//! `<img>` of an attachment is authorized too), or as `?token=…` on the
//! WebSocket upgrade only, where a browser cannot set headers: a token in
//! any other URL would land in logs and `Referer` headers.
//!
//! Every token is checked the same way ([`check`]): signature for this
//! shop, expiry, and the desk's [`Revocations`](crate::desk::Revocations).

use std::net::IpAddr;

use axum::extract::{FromRef, FromRequestParts, Query};
use axum::http::header;
use axum::http::request::Parts;
use serde::Deserialize;

use cs_core::{AgentId, Party, VisitorId};

use super::error::ApiError;
use crate::desk::tokens::{Claims, TokenError, TokenKind};
use crate::desk::ServiceDesk;

/// The cookie holding a visitor's token.
pub(crate) const VISITOR_COOKIE: &str = "cs_visitor";
/// The cookie holding an agent's token.
pub(crate) const AGENT_COOKIE: &str = "cs_agent";

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Whether the request asks for a WebSocket.
fn is_websocket_upgrade(parts: &Parts) -> bool {
    parts
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// The bearer token of a request, else, on a WebSocket upgrade, `?token=`.
pub(crate) fn bearer_of(parts: &Parts) -> Option<String> {
    let header = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    header.or_else(|| {
        is_websocket_upgrade(parts)
            .then(|| Query::<TokenQuery>::try_from_uri(&parts.uri).ok())
            .flatten()
            .and_then(|q| q.0.token)
    })
}

/// A token's claims, when it is signed for this shop, unexpired and not revoked.
pub(crate) fn check(desk: &ServiceDesk, token: &str) -> Result<Claims, TokenError> {
    let claims = desk.signer().verify_claims(token)?;
    if claims.expired() {
        return Err(TokenError::Expired);
    }
    if desk.state.revocations.refuses(&claims) {
        return Err(TokenError::Revoked);
    }
    Ok(claims)
}

/// The claims of the request's visitor token (bearer, else cookie).
pub(crate) fn visitor_claims(desk: &ServiceDesk, parts: &Parts) -> Result<Claims, ApiError> {
    let token = bearer_of(parts)
        .or_else(|| cookie_of(parts, VISITOR_COOKIE))
        .ok_or_else(|| {
            ApiError::unauthenticated("no visitor token; POST api/visitor/session first")
        })?;
    let claims = check(desk, &token)?;
    match claims.kind {
        TokenKind::Guest | TokenKind::Customer => Ok(claims),
        TokenKind::Agent => Err(TokenError::WrongKind.into()),
    }
}

/// The claims of the request's agent token (bearer, else cookie).
pub(crate) fn agent_claims(desk: &ServiceDesk, parts: &Parts) -> Result<Claims, ApiError> {
    let token = bearer_of(parts)
        .or_else(|| cookie_of(parts, AGENT_COOKIE))
        .ok_or_else(|| ApiError::unauthenticated("not signed in as an agent"))?;
    let claims = check(desk, &token)?;
    match claims.kind {
        TokenKind::Agent => Ok(claims),
        _ => Err(TokenError::WrongKind.into()),
    }
}

/// The agent behind a request: by the host's own staff login, else by a
/// desk token; and in the directory either way.
pub(crate) async fn agent_of(desk: &ServiceDesk, parts: &Parts) -> Result<AgentId, ApiError> {
    let agent = match desk.state.identity.agent(parts).await? {
        Some(agent) => agent,
        None => AgentId::new(agent_claims(desk, parts)?.subject)
            .map_err(|_| ApiError::from(TokenError::Malformed))?,
    };
    // A token outlives a removal from the directory; the directory decides.
    if desk.state.directory.agent(&agent).is_none() {
        return Err(ApiError::forbidden(format!(
            "{agent} is not an agent of this desk"
        )));
    }
    Ok(agent)
}

/// The visitor behind a request's token.
pub(crate) fn visitor_of(desk: &ServiceDesk, parts: &Parts) -> Result<VisitorId, ApiError> {
    VisitorId::new(visitor_claims(desk, parts)?.subject)
        .map_err(|_| ApiError::from(TokenError::Malformed))
}

/// The party behind a request, agent or visitor: for the routes both use
/// (files). An agent's credentials win when a browser carries both cookies.
pub(crate) async fn party_of(desk: &ServiceDesk, parts: &Parts) -> Result<Party, ApiError> {
    match agent_of(desk, parts).await {
        Ok(agent) => Ok(Party::Agent(agent)),
        Err(as_agent) => match visitor_of(desk, parts) {
            Ok(visitor) => Ok(Party::Visitor(visitor)),
            // The more telling refusal: "not an agent of this desk" over
            // "no visitor token".
            Err(_) if as_agent.kind != crate::desk::ErrorKind::Unauthenticated => Err(as_agent),
            Err(as_visitor) => Err(as_visitor),
        },
    }
}

/// Refuses a browser's WebSocket upgrade from a page of another site: a
/// socket authorized by a cookie would otherwise be open to any page the
/// shopper visits. Same origin (the `Host` the request was sent to) is
/// allowed, and so are the settings' `allowed_origins`. A request with no
/// `Origin` is not from a browser page, and has no cookie to abuse.
pub(crate) fn check_origin(desk: &ServiceDesk, parts: &Parts) -> Result<(), ApiError> {
    let Some(origin) = parts.headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("null");
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let same_site = origin
        .split_once("://")
        .is_some_and(|(_, rest)| !host.is_empty() && rest.eq_ignore_ascii_case(host));
    let allowed = desk
        .state
        .settings
        .allowed_origins
        .iter()
        .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin));
    if same_site || allowed {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "sockets from pages of {origin} are not allowed; add it to DeskSettings::allowed_origins if the widget is embedded there"
        )))
    }
}

/// The client's address, as [`limits`](crate::desk::limits) reads it:
/// behind a trusted proxy, from `X-Forwarded-For`. `None` when the server
/// inserts no `ConnectInfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S> FromRequestParts<S> for ClientIp
where
    ServiceDesk: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            ServiceDesk::from_ref(state).state.limits.client_ip(parts),
        ))
    }
}

/// The value of cookie `name`.
pub(crate) fn cookie_of(parts: &Parts, name: &str) -> Option<String> {
    parts
        .headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// A request from a visitor with a valid desk token: a guest, or a
/// customer of the shop (the id is then the shop's customer id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthVisitor(pub VisitorId);

impl<S> FromRequestParts<S> for AuthVisitor
where
    ServiceDesk: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        visitor_of(&ServiceDesk::from_ref(state), parts).map(AuthVisitor)
    }
}

/// A request from an agent of the desk's directory: by the host's own
/// login ([`Identity::agent`](crate::desk::Identity::agent)), or by a desk
/// token from the console's sign-in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthAgent(pub AgentId);

impl<S> FromRequestParts<S> for AuthAgent
where
    ServiceDesk: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        agent_of(&ServiceDesk::from_ref(state), parts)
            .await
            .map(AuthAgent)
    }
}

/// The path the desk is nested under (`/support`), from the original URI
/// and the path the desk's router saw: "" at the root.
pub(crate) fn prefix_of(original: &axum::http::Uri, seen: &axum::http::Uri) -> String {
    original
        .path()
        .strip_suffix(seen.path())
        .unwrap_or("")
        .to_owned()
}
