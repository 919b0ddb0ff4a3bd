//! Who is asking: HMAC-signed tokens for visitors and agents, and the demo
//! agent accounts.
//!
//! A visitor gets a token on their first visit; it names their visitor id,
//! and the message path lets a visitor id into its own conversations only,
//! so the token is what binds a visitor to their conversations. Agents get a
//! token by signing in. Both travel as `Authorization: Bearer …`, or as
//! `?token=…` where a browser cannot set headers (the WebSocket upgrade).
//!
//! A shop embedding the crates keeps its own login: it only has to hand
//! `websocket::serve` the tenant and party it has verified.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use cs::core::{AgentId, VisitorId};

use crate::app::App;
use crate::error::ApiError;

/// A demo agent account. **Demo only**: real agents sign in through the
/// shop's own identity system.
pub struct DemoAgent {
    /// Login and agent id.
    pub id: &'static str,
    /// Shown in the console and to visitors.
    pub name: &'static str,
    /// A skill, for the `skill` strategy.
    pub skill: &'static str,
}

/// The demo accounts; every password is `demo`.
pub const DEMO_AGENTS: [DemoAgent; 3] = [
    DemoAgent {
        id: "alice",
        name: "Alice",
        skill: "orders",
    },
    DemoAgent {
        id: "bob",
        name: "Bob",
        skill: "returns",
    },
    DemoAgent {
        id: "carol",
        name: "Carol",
        skill: "orders",
    },
];

/// The demo password of every demo account.
pub const DEMO_PASSWORD: &str = "demo";

/// How long tokens last.
pub const VISITOR_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long an agent stays signed in.
pub const AGENT_TOKEN_TTL: Duration = Duration::from_secs(12 * 3600);

/// Whose token it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// A shopper.
    Visitor,
    /// An agent.
    Agent,
}

impl TokenKind {
    fn tag(self) -> &'static str {
        match self {
            TokenKind::Visitor => "v",
            TokenKind::Agent => "a",
        }
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not `kind.subject.expiry.mac`.
    #[error("the token is malformed; sign in again")]
    Malformed,
    /// A visitor token where an agent one is needed, or the reverse.
    #[error("this token is for another kind of user")]
    WrongKind,
    /// Past its expiry.
    #[error("the token has expired; sign in again")]
    Expired,
    /// Not signed by this server (or tampered with).
    #[error("the token's signature is not valid; sign in again")]
    BadSignature,
}

impl From<TokenError> for ApiError {
    fn from(e: TokenError) -> Self {
        ApiError::Unauthenticated(e.to_string())
    }
}

/// Signs and checks tokens with one server key.
pub struct Signer {
    key: Vec<u8>,
}

/// The key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("signing key {path}: {source}; fix its permissions, delete it to make a new one (signing everyone out), or pass --secret")]
pub struct KeyFileError {
    path: String,
    #[source]
    source: std::io::Error,
}

impl Signer {
    /// The key given, or the one kept in `data_dir/secret.key`, made on first start.
    pub fn load_or_create(data_dir: &Path, explicit: Option<&str>) -> Result<Self, KeyFileError> {
        if let Some(secret) = explicit {
            return Ok(Self::new(secret.as_bytes().to_vec()));
        }
        let path = data_dir.join("secret.key");
        let fail = |source| KeyFileError {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => match hex::decode(text.trim()) {
                Ok(key) if key.len() >= 32 => Ok(Self::new(key)),
                _ => Err(fail(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "expected at least 32 bytes as hex",
                ))),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = vec![0u8; 32];
                getrandom::fill(&mut key)
                    .map_err(|e| fail(std::io::Error::other(e.to_string())))?;
                write_private(&path, hex::encode(&key).as_bytes()).map_err(fail)?;
                Ok(Self::new(key))
            }
            Err(e) => Err(fail(e)),
        }
    }

    fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        // Any key length is valid for HMAC, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(payload.as_bytes());
        mac
    }

    /// A token for `subject` (a visitor or agent id), valid for `ttl`.
    pub fn issue(&self, kind: TokenKind, subject: &str, ttl: Duration) -> String {
        let expires = unix_now() + ttl.as_secs();
        let payload = format!("{}.{subject}.{expires}", kind.tag());
        let mac = hex::encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{mac}")
    }

    /// The subject of a valid token of `kind`.
    pub fn verify(&self, kind: TokenKind, token: &str) -> Result<String, TokenError> {
        let (payload, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mut fields = payload.splitn(3, '.');
        let (Some(tag), Some(subject), Some(expires)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(TokenError::Malformed);
        };
        let mac = hex::decode(mac).map_err(|_| TokenError::Malformed)?;
        // Constant-time comparison, so the signature cannot be guessed byte by byte.
        self.mac(payload)
            .verify_slice(&mac)
            .map_err(|_| TokenError::BadSignature)?;
        if tag != kind.tag() {
            return Err(TokenError::WrongKind);
        }
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        if expires < unix_now() {
            return Err(TokenError::Expired);
        }
        Ok(subject.to_owned())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)?.write_all(contents)
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The token of a request: the bearer header, else `?token=`.
fn token_of(parts: &Parts) -> Option<String> {
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

/// A request from a visitor with a valid token.
pub struct AuthVisitor(pub VisitorId);

impl FromRequestParts<App> for AuthVisitor {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let token = token_of(parts).ok_or_else(|| {
            ApiError::Unauthenticated("no visitor token; POST /api/visitor/session first".into())
        })?;
        let subject = app.signer.verify(TokenKind::Visitor, &token)?;
        VisitorId::new(subject)
            .map(AuthVisitor)
            .map_err(|_| TokenError::Malformed.into())
    }
}

/// A request from a signed-in agent.
pub struct AuthAgent(pub AgentId);

impl FromRequestParts<App> for AuthAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiError> {
        let token = token_of(parts).ok_or_else(|| {
            ApiError::Unauthenticated("not signed in; POST /api/agent/login first".into())
        })?;
        let subject = app.signer.verify(TokenKind::Agent, &token)?;
        AgentId::new(subject)
            .map(AuthAgent)
            .map_err(|_| TokenError::Malformed.into())
    }
}

/// The demo account with this login and password.
pub fn demo_login(id: &str, password: &str) -> Option<&'static DemoAgent> {
    // Demo accounts with a published password: nothing here is secret.
    DEMO_AGENTS
        .iter()
        .find(|a| a.id == id && password == DEMO_PASSWORD)
}
