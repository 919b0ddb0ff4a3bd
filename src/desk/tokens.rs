//! The desk's own signed tokens: what a widget or a console presents on
//! every request and on the socket, once the host's identity (or a guest
//! session) has said who it is.
//!
//! A token is `kind.subject.expiry.mac`, the MAC an HMAC-SHA256 over the
//! rest with the desk's key. It names a guest, a logged-in customer of the
//! shop, or an agent; the message path then lets that party into its own
//! conversations only.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Whose token it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// Not signed with this desk's key (or tampered with).
    #[error("the token's signature is not valid; sign in again")]
    BadSignature,
}

/// The key file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("signing key {path}: {source}; fix its permissions, delete it to make a new one (signing everyone out), or pass the key explicitly")]
pub struct KeyFileError {
    path: String,
    #[source]
    source: std::io::Error,
}

/// Signs and checks the desk's tokens with one key.
///
/// ```
/// use std::time::Duration;
/// use cs::desk::{Signer, TokenKind};
///
/// let signer = Signer::new(b"a key every node of the shop shares".to_vec());
/// let token = signer.issue(TokenKind::Agent, "alice", Duration::from_secs(60));
/// assert_eq!(signer.verify(&token), Ok((TokenKind::Agent, "alice".to_owned())));
/// assert!(Signer::new(b"another key".to_vec()).verify(&token).is_err());
/// ```
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
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
        Self { key }
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

    /// A token for `subject` (a visitor or agent id), valid for `ttl`.
    pub fn issue(&self, kind: TokenKind, subject: &str, ttl: Duration) -> String {
        let expires = unix_now() + ttl.as_secs();
        let payload = format!("{}.{subject}.{expires}", kind.tag());
        let mac = hex::encode(self.mac(&payload).finalize().into_bytes());
        format!("{payload}.{mac}")
    }

    /// The kind and subject of a valid token.
    ///
    /// # Errors
    /// Why it is not valid.
    pub fn verify(&self, token: &str) -> Result<(TokenKind, String), TokenError> {
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
        let kind = TokenKind::from_tag(tag).ok_or(TokenError::Malformed)?;
        let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
        if expires < unix_now() {
            return Err(TokenError::Expired);
        }
        Ok((kind, subject.to_owned()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampered_truncated_and_expired_tokens_are_refused() {
        let signer = Signer::new(b"k".repeat(32));
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
        let expired = signer.issue(TokenKind::Agent, "alice", Duration::ZERO);
        // Issued "now" with no lifetime: valid for the rest of this second only.
        let payload = expired.rsplit_once('.').map(|(p, _)| p).unwrap_or_default();
        let past = payload.replacen(payload.rsplit('.').next().unwrap_or_default(), "1000", 1);
        let mac = hex::encode(signer.mac(&past).finalize().into_bytes());
        assert_eq!(
            signer.verify(&format!("{past}.{mac}")),
            Err(TokenError::Expired)
        );
    }
}
