//! The desk's own signed tokens: what a widget or a console presents on
//! every request and on the socket, once the host's identity (or a guest
//! session) has said who it is.
//!
//! A token is `kind.subject.session.issued.expiry.mac`: the MAC is an
//! HMAC-SHA256 over the rest, keyed by the desk's key *and its tenant*, so
//! two shops that share a key still refuse each other's tokens. `session`
//! names one browser's sign-in, so a renewal can retire the token it
//! replaces and a logout can end it ([`Revocations`]); `issued` is in
//! milliseconds and strictly increasing per signer, so "everything issued
//! before this one" is exact.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::private_fs::write_private;

/// Whose token it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A shopper the shop does not know (no login): the desk made up the id.
    Guest,
    /// A shopper logged in to the shop: the id is the shop's customer id.
    Customer,
    /// An agent.
    Agent,
}

impl TokenKind {
    fn tag(self) -> &'static str {
        match self {
            TokenKind::Guest => "v",
            TokenKind::Customer => "c",
            TokenKind::Agent => "a",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "v" => Some(TokenKind::Guest),
            "c" => Some(TokenKind::Customer),
            "a" => Some(TokenKind::Agent),
            _ => None,
        }
    }
}

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Whose it is.
    pub kind: TokenKind,
    /// The visitor or agent id.
    pub subject: String,
    /// The sign-in it belongs to: renewals keep it, a new sign-in gets a new one.
    pub session: String,
    /// When it was issued, in milliseconds since 1970, unique per signer.
    pub issued_ms: u64,
    /// When it expires, in seconds since 1970.
    pub expires: u64,
}

impl Claims {
    /// Whether it is past its expiry.
    pub fn expired(&self) -> bool {
        self.expires < unix_now()
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not `kind.subject.session.issued.expiry.mac`.
    #[error("the token is malformed; sign in again")]
    Malformed,
    /// A visitor token where an agent one is needed, or the reverse.
    #[error("this token is for another kind of user")]
    WrongKind,
    /// Past its expiry.
    #[error("the token has expired; sign in again")]
    Expired,
    /// Not signed with this desk's key for this shop (or tampered with).
    #[error("the token's signature is not valid for this shop; sign in again")]
    BadSignature,
    /// Signed out, or replaced by a renewal.
    #[error("this token was signed out or replaced by a newer one; sign in again (the widget and console do so by themselves)")]
    Revoked,
}

/// The key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("signing key {path}: {source}; fix its permissions, delete it to make a new one (signing everyone out), or pass the key explicitly")]
pub struct KeyFileError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// Signs and checks the desk's tokens with one key, for one shop.
///
/// ```
/// use std::time::Duration;
/// use cs::desk::{Signer, TokenKind};
///
/// let signer = Signer::new(b"a key every node of the shop shares".to_vec());
/// let token = signer.issue(TokenKind::Agent, "alice", Duration::from_secs(60));
/// assert_eq!(signer.verify(&token), Ok((TokenKind::Agent, "alice".to_owned())));
/// assert!(Signer::new(b"another key".to_vec()).verify(&token).is_err());
/// // The same key for another shop is another signer.
/// let other_shop = Signer::new(b"a key every node of the shop shares".to_vec()).for_tenant("other");
/// assert!(other_shop.verify(&token).is_err());
/// ```
#[derive(Clone)]
pub struct Signer {
    /// The host's key, or the key derived from it for one tenant.
    key: Vec<u8>,
    /// The last `issued_ms` handed out, so each is unique and increasing.
    last_issued: Arc<AtomicU64>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself, not even in a debug log.
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer with `key` (any length; 32 random bytes or more is right).
    pub fn new(key: Vec<u8>) -> Self {
        Self {
            key,
            last_issued: Arc::default(),
        }
    }

    /// A signer with a fresh random key: tokens die with the process.
    ///
    /// # Errors
    /// The system has no randomness to give.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key)?;
        Ok(Self::new(key))
    }

    /// This signer's key bound to `tenant`: its tokens are refused by the
    /// signer of any other tenant, even with the same key. The desk binds
    /// the signer it is given to its own tenant.
    pub fn for_tenant(&self, tenant: &str) -> Self {
        // A key derived with HMAC itself: HMAC(key, label) is a PRF output.
        let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        derive.update(b"cs desk token key for tenant ");
        derive.update(tenant.as_bytes());
        Self {
            key: derive.finalize().into_bytes().to_vec(),
            last_issued: Arc::clone(&self.last_issued),
        }
    }

    /// The key kept in `path` (hex), made on first use with mode 0600, so
    /// sessions survive a restart.
    ///
    /// # Errors
    /// The file cannot be read or written, or holds fewer than 32 bytes of hex.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyFileError> {
        let fail = |source| KeyFileError {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
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
                write_private(path, hex::encode(&key).as_bytes()).map_err(fail)?;
                Ok(Self::new(key))
            }
            Err(e) => Err(fail(e)),
        }
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(payload.as_bytes());
        mac
    }

    /// A fresh `issued_ms`: now, or one past the last handed out.
    pub fn next_issued(&self) -> u64 {
        let now = unix_now_ms();
        let previous = self
            .last_issued
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(now.max(last + 1))
            })
            .unwrap_or_else(|last| last);
        now.max(previous + 1)
    }

    /// A token for `subject` (a visitor or agent id) in a new session,
    /// valid for `ttl`.
    pub fn issue(&self, kind: TokenKind, subject: &str, ttl: Duration) -> String {
        self.issue_in(kind, subject, &new_session_id(), ttl)
    }

    /// A token for `subject` in `session` (a renewal keeps its session).
    pub fn issue_in(&self, kind: TokenKind, subject: &str, session: &str, ttl: Duration) -> String {
        self.issue_claims(&Claims {
            kind,
            subject: subject.to_owned(),
            session: session.to_owned(),
            issued_ms: self.next_issued(),
            expires: unix_now() + ttl.as_secs(),
        })
    }

    /// A token saying exactly `claims`.
    pub fn issue_claims(&self, claims: &Claims) -> String {
        let payload = format!(
            "{}.{}.{}.{}.{}",
            claims.kind.tag(),
            claims.subject,
            claims.session,
            claims.issued_ms,
            claims.expires
        );
        let mac = hex::encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{mac}")
    }

    /// The kind and subject of a valid, unexpired token.
    ///
    /// # Errors
    /// Why it is not valid.
    pub fn verify(&self, token: &str) -> Result<(TokenKind, String), TokenError> {
        let claims = self.verify_claims(token)?;
        if claims.expired() {
            return Err(TokenError::Expired);
        }
        Ok((claims.kind, claims.subject))
    }

    /// What a token with a valid signature says, expired or not (a guest's
    /// renewal accepts an expired one, to keep the same visitor).
    ///
    /// # Errors
    /// Malformed, or not signed by this signer.
    pub fn verify_claims(&self, token: &str) -> Result<Claims, TokenError> {
        let (payload, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let mac = hex::decode(mac).map_err(|_| TokenError::Malformed)?;
        // Constant-time comparison, so the signature cannot be guessed byte by byte.
        self.mac(payload)
            .verify_slice(&mac)
            .map_err(|_| TokenError::BadSignature)?;
        // From the right, so a subject with dots in it still parses.
        let mut fields = payload.rsplitn(4, '.');
        let (Some(expires), Some(issued), Some(session), Some(head)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(TokenError::Malformed);
        };
        let (tag, subject) = head.split_once('.').ok_or(TokenError::Malformed)?;
        Ok(Claims {
            kind: TokenKind::from_tag(tag).ok_or(TokenError::Malformed)?,
            subject: subject.to_owned(),
            session: session.to_owned(),
            issued_ms: issued.parse().map_err(|_| TokenError::Malformed)?,
            expires: expires.parse().map_err(|_| TokenError::Malformed)?,
        })
    }
}

/// Tokens refused before their expiry: sessions whose tokens were renewed
/// (each renewal retires the ones before it) or signed out, and subjects
/// signed out everywhere (an agent's logout).
///
/// Kept in this process's memory, and forgotten once every token they
/// refuse has expired anyway, so the map holds at most the sessions
/// renewed within one token lifetime. A restart, or another node of a
/// cluster, does not know them: the tokens they refuse are then valid
/// until they expire (docs/security.md says so).
#[derive(Debug, Default)]
pub struct Revocations {
    /// Session id → tokens issued before this (ms) are refused, and until
    /// when (s) the entry matters.
    sessions: DashMap<String, (u64, u64)>,
    /// (kind, subject) → the same, for everything of that subject.
    subjects: DashMap<(TokenKind, String), (u64, u64)>,
}

impl Revocations {
    /// Refuses `session`'s tokens issued before `issued_ms`, until `until` (s).
    pub fn retire_session(&self, session: &str, issued_ms: u64, until: u64) {
        raise(&self.sessions, session.to_owned(), issued_ms, until);
    }

    /// Refuses every token of `subject` issued before `issued_ms`, until `until` (s).
    pub fn retire_subject(&self, kind: TokenKind, subject: &str, issued_ms: u64, until: u64) {
        raise(&self.subjects, (kind, subject.to_owned()), issued_ms, until);
    }

    /// Whether `claims` were retired.
    pub fn refuses(&self, claims: &Claims) -> bool {
        let before = |entry: Option<u64>| entry.is_some_and(|cut| claims.issued_ms < cut);
        before(self.sessions.get(&claims.session).map(|e| e.0))
            || before(
                self.subjects
                    .get(&(claims.kind, claims.subject.clone()))
                    .map(|e| e.0),
            )
    }

    /// Forgets entries whose tokens have all expired.
    pub fn prune(&self) {
        let now = unix_now();
        self.sessions.retain(|_, (_, until)| *until >= now);
        self.subjects.retain(|_, (_, until)| *until >= now);
    }

    /// How many sessions and subjects are remembered.
    pub fn len(&self) -> usize {
        self.sessions.len() + self.subjects.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn raise<K: std::hash::Hash + Eq>(map: &DashMap<K, (u64, u64)>, key: K, cut: u64, until: u64) {
    let mut entry = map.entry(key).or_insert((0, 0));
    entry.0 = entry.0.max(cut);
    entry.1 = entry.1.max(until);
}

/// A new session id: 16 hex digits of randomness (or of the clock, when
/// the system has none to give; a session id is not a secret).
pub(crate) fn new_session_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = unix_now_ms().to_le_bytes();
    }
    hex::encode(bytes)
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampered_truncated_expired_and_foreign_tokens_are_refused() {
        let signer = Signer::new(b"k".repeat(32)).for_tenant("shop");
        let token = signer.issue(TokenKind::Guest, "v-1", Duration::from_secs(60));
        assert_eq!(
            signer.verify(&token),
            Ok((TokenKind::Guest, "v-1".to_owned()))
        );
        let tampered = token.replacen("v-1", "v-2", 1);
        assert_eq!(signer.verify(&tampered), Err(TokenError::BadSignature));
        assert_eq!(
            signer.verify(&token[..token.len() - 4]),
            Err(TokenError::BadSignature)
        );
        assert_eq!(signer.verify("garbage"), Err(TokenError::Malformed));
        let other_shop = Signer::new(b"k".repeat(32)).for_tenant("shop2");
        assert_eq!(other_shop.verify(&token), Err(TokenError::BadSignature));
        let claims = signer
            .verify_claims(&token)
            .unwrap_or_else(|e| panic!("{e}"));
        let expired = signer.issue_claims(&Claims {
            expires: 1000,
            ..claims
        });
        assert_eq!(signer.verify(&expired), Err(TokenError::Expired));
        // A subject with a dot still parses, and dots cannot shift fields.
        let dotted = signer.issue(TokenKind::Agent, "a.b", Duration::from_secs(60));
        assert_eq!(
            signer.verify(&dotted),
            Ok((TokenKind::Agent, "a.b".to_owned()))
        );
    }

    #[test]
    fn retiring_a_session_refuses_its_earlier_tokens_only() {
        let signer = Signer::new(b"k".repeat(32));
        let revocations = Revocations::default();
        let old = signer.issue_in(TokenKind::Guest, "v-1", "s1", Duration::from_secs(60));
        let renewed = signer.issue_in(TokenKind::Guest, "v-1", "s1", Duration::from_secs(60));
        let other_tab = signer.issue_in(TokenKind::Guest, "v-1", "s2", Duration::from_secs(60));
        let claims = |t: &str| signer.verify_claims(t).unwrap_or_else(|e| panic!("{e}"));
        revocations.retire_session("s1", claims(&renewed).issued_ms, unix_now() + 60);
        assert!(revocations.refuses(&claims(&old)));
        assert!(!revocations.refuses(&claims(&renewed)));
        assert!(!revocations.refuses(&claims(&other_tab)));
        revocations.retire_subject(
            TokenKind::Guest,
            "v-1",
            signer.next_issued(),
            unix_now() + 60,
        );
        assert!(revocations.refuses(&claims(&renewed)) && revocations.refuses(&claims(&other_tab)));
        let after = signer.issue_in(TokenKind::Guest, "v-1", "s3", Duration::from_secs(60));
        assert!(!revocations.refuses(&claims(&after)));
        revocations.retire_session("s9", 1, 0);
        revocations.prune();
        assert_eq!(revocations.len(), 2, "the lapsed entry is forgotten");
    }
}
