//! Who a request is, as extractors: [`AuthVisitor`] and [`AuthAgent`]. A
//! host's own routes can use them too, with any state the desk can be
//! taken from (`FromRef`).
//!
//! The desk's token travels as `Authorization: Bearer …`, as `?token=…`
//! where a browser cannot set headers (the WebSocket upgrade), or as the
//! `cs_visitor` / `cs_agent` cookie the session endpoints set (so an
//! `<img>` of an attachment is authorized too).

use axum::extract::{FromRef, FromRequestParts, Query};
use axum::http::request::Parts;
use serde::Deserialize;

use cs_core::{AgentId, VisitorId};

use super::error::ApiError;
use crate::desk::tokens::TokenKind;
use crate::desk::ServiceDesk;

/// The cookie holding a visitor's token.
pub(crate) const VISITOR_COOKIE: &str = "cs_visitor";
/// The cookie holding an agent's token.
pub(crate) const AGENT_COOKIE: &str = "cs_agent";

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The bearer token of a request, else `?token=`.
pub(crate) fn bearer_of(parts: &Parts) -> Option<String> {
    let header = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    header.or_else(|| {
        Query::<TokenQuery>::try_from_uri(&parts.uri)
            .ok()
            .and_then(|q| q.0.token)
    })
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
        let desk = ServiceDesk::from_ref(state);
        let token = bearer_of(parts)
            .or_else(|| cookie_of(parts, VISITOR_COOKIE))
            .ok_or_else(|| {
                ApiError::unauthenticated("no visitor token; POST api/visitor/session first")
            })?;
        match desk.signer().verify(&token)? {
            (TokenKind::Guest | TokenKind::Customer, subject) => VisitorId::new(subject)
                .map(AuthVisitor)
                .map_err(|_| ApiError::unauthenticated("the token is malformed; sign in again")),
            (TokenKind::Agent, _) => Err(ApiError::unauthenticated(
                "this token is for another kind of user",
            )),
        }
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
        let desk = ServiceDesk::from_ref(state);
        let agent = match desk.state.identity.agent(parts).await? {
            Some(agent) => agent,
            None => {
                let token = bearer_of(parts)
                    .or_else(|| cookie_of(parts, AGENT_COOKIE))
                    .ok_or_else(|| ApiError::unauthenticated("not signed in as an agent"))?;
                match desk.signer().verify(&token)? {
                    (TokenKind::Agent, subject) => AgentId::new(subject).map_err(|_| {
                        ApiError::unauthenticated("the token is malformed; sign in again")
                    })?,
                    _ => {
                        return Err(ApiError::unauthenticated(
                            "this token is for another kind of user",
                        ))
                    }
                }
            }
        };
        // A token outlives a removal from the directory; the directory decides.
        if desk.state.directory.agent(&agent).is_none() {
            return Err(ApiError::forbidden(format!(
                "{agent} is not an agent of this desk"
            )));
        }
        Ok(AuthAgent(agent))
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
