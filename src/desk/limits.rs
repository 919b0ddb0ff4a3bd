//! What one client may ask of the desk across requests and sockets: new
//! sessions and conversations per address, conversations and messages per
//! visitor, sockets per visitor and per address, and sign-in attempts with
//! backoff.
//!
//! A socket's own frame rate ([`WsConfig`](cs_transport::websocket::WsConfig))
//! stops one connection from flooding; these stop one person (or one
//! address) from opening many. Each refusal says which limit and when to
//! retry, as a 429 or a `rate_limited` frame.
//!
//! Behind a reverse proxy every client shares the proxy's address: list the
//! proxy in [`LimitSettings::trusted_proxies`] so the client's own address
//! is read from `X-Forwarded-For`, or the per-address limits throttle
//! everyone together. See docs/security.md.

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};

use cs_core::VisitorId;

/// A network of trusted proxies (`10.0.0.0/8`, or one address as `/32`).
pub use ipnet::IpNet;

/// A budget: `burst` at once, refilled evenly over `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// How many at once, and in each `per`.
    pub burst: u32,
    /// The time over which `burst` is refilled.
    pub per: Duration,
}

impl Rate {
    /// `n` per minute, all of them at once if need be.
    pub const fn per_minute(n: u32) -> Self {
        Self {
            burst: n,
            per: Duration::from_secs(60),
        }
    }

    /// `n` per hour, all of them at once if need be.
    pub const fn per_hour(n: u32) -> Self {
        Self {
            burst: n,
            per: Duration::from_secs(3600),
        }
    }

    fn quota(self) -> Quota {
        cs_transport::websocket::burst_quota(self.burst, self.per)
    }

    fn describe(self) -> String {
        match self.per.as_secs() {
            3600 => format!("{} per hour", self.burst),
            60 => format!("{} per minute", self.burst),
            1 => format!("{} per second", self.burst),
            s => format!("{} per {s} s", self.burst),
        }
    }
}

/// The limits, each with a default that lets a real shopper or agent
/// through and stops a script. See docs/security.md for each one.
#[derive(Clone, Debug)]
pub struct LimitSettings {
    /// New guest sessions one address may start. A returning visitor
    /// renewing their token does not count. Default 30 per minute.
    pub sessions_per_ip: Rate,
    /// Conversations one address may open. Default 30 per minute.
    pub conversations_per_ip: Rate,
    /// Conversations one visitor may open (each closes the last). Default 20 per hour.
    pub conversations_per_visitor: Rate,
    /// Messages one visitor may send, all their sockets together (each
    /// socket also has its own frame rate), as a
    /// [`PartyRate`](cs_transport::websocket::PartyRate) the desk puts in
    /// its [`WsConfig`](cs_transport::websocket::WsConfig) unless the host
    /// set one. Default 40 at once, 20 per second.
    pub messages_per_visitor: Rate,
    /// Sockets one visitor may hold open at once (tabs, devices). Default 16.
    pub sockets_per_visitor: usize,
    /// Sockets one address may hold open at once. Default 64.
    pub sockets_per_ip: usize,
    /// Sign-in attempts: failures allowed before the backoff starts, per
    /// account and per address. Default 5 per account, 20 per address.
    pub login_failures_per_account: u32,
    /// See [`LimitSettings::login_failures_per_account`].
    pub login_failures_per_ip: u32,
    /// The first backoff after the free failures; it doubles with each
    /// further failure. Default 1 s.
    pub login_backoff: Duration,
    /// The longest backoff. Default 15 minutes.
    pub login_backoff_max: Duration,
    /// Proxies whose `X-Forwarded-For` is believed: the client is the last
    /// address in it that is not one of these. Default none (the peer's
    /// address is the client's).
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            sessions_per_ip: Rate::per_minute(30),
            conversations_per_ip: Rate::per_minute(30),
            conversations_per_visitor: Rate::per_hour(20),
            messages_per_visitor: Rate {
                burst: 40,
                per: Duration::from_secs(2),
            },
            sockets_per_visitor: 16,
            sockets_per_ip: 64,
            login_failures_per_account: 5,
            login_failures_per_ip: 20,
            login_backoff: Duration::from_secs(1),
            login_backoff_max: Duration::from_secs(15 * 60),
            trusted_proxies: Vec::new(),
        }
    }
}

impl LimitSettings {
    /// Every limit lifted, for load tests that drive thousands of visitors
    /// from one address. Never in production.
    pub fn unlimited() -> Self {
        let lots = Rate {
            burst: u32::MAX / 2,
            per: Duration::from_secs(1),
        };
        Self {
            sessions_per_ip: lots,
            conversations_per_ip: lots,
            conversations_per_visitor: lots,
            messages_per_visitor: lots,
            sockets_per_visitor: usize::MAX,
            sockets_per_ip: usize::MAX,
            login_failures_per_account: u32::MAX,
            login_failures_per_ip: u32::MAX,
            ..Self::default()
        }
    }
}

/// A network (`10.0.0.0/8`) or one address (`10.0.0.2`, as `/32`), as a
/// host's flag or config names a trusted proxy.
///
/// # Errors
/// Neither a network nor an address.
pub fn parse_network(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or a network like 10.0.0.0/8"))
}

/// A refusal: which limit, and when a retry can succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{what}; retry in {}", seconds(*retry_after))]
pub struct Limited {
    /// The limit, in words ("at most 30 new sessions per minute from one address").
    pub what: String,
    /// When a retry can succeed.
    pub retry_after: Duration,
}

fn seconds(d: Duration) -> String {
    format!("{} s", d.as_millis().div_ceil(1000).max(1))
}

/// One keyed budget, pruned of idle keys by [`Limits::prune`].
struct Budget<K: Hash + Eq + Clone> {
    rate: Rate,
    limiter: DefaultKeyedRateLimiter<K>,
    /// "new sessions from one address": what the refusal names.
    what: &'static str,
}

impl<K: Hash + Eq + Clone> Budget<K> {
    fn new(rate: Rate, what: &'static str) -> Self {
        Self {
            rate,
            limiter: DefaultKeyedRateLimiter::keyed(rate.quota()),
            what,
        }
    }

    fn take(&self, key: &K) -> Result<(), Limited> {
        self.limiter.check_key(key).map_err(|not_until| Limited {
            what: format!("at most {} {}", self.rate.describe(), self.what),
            retry_after: not_until.wait_time_from(DefaultClock::default().now()),
        })
    }
}

/// Counts of open things per key (sockets per visitor, connections per
/// address), each freed when its [`Held`] drops.
pub(crate) struct Counts<K: Hash + Eq + Clone> {
    open: DashMap<K, usize>,
}

impl<K: Hash + Eq + Clone> Default for Counts<K> {
    fn default() -> Self {
        Self {
            open: DashMap::new(),
        }
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Counts<K> {
    /// One more for `key`, or `None` when it already holds `cap`.
    pub fn hold(self: &Arc<Self>, key: K, cap: usize) -> Option<Held<K>> {
        {
            // The entry guard ends with this block, before anything else
            // touches the map.
            let mut count = self.open.entry(key.clone()).or_insert(0);
            if *count >= cap {
                return None;
            }
            *count += 1;
        }
        Some(Held {
            counts: Arc::clone(self),
            key,
        })
    }

    /// How many `key` holds.
    #[cfg(test)]
    fn of(&self, key: &K) -> usize {
        self.open.get(key).map_or(0, |count| *count)
    }
}

/// One counted thing; dropping it frees its place.
pub(crate) struct Held<K: Hash + Eq + Clone + Send + Sync + 'static> {
    counts: Arc<Counts<K>>,
    key: K,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Drop for Held<K> {
    fn drop(&mut self) {
        // One call under the shard's lock: decrement, and forget the key
        // when nothing of it is left open.
        self.counts.open.remove_if_mut(&self.key, |_, count| {
            *count = count.saturating_sub(1);
            *count == 0
        });
    }
}

/// Failed sign-ins of one key, and until when it must wait.
#[derive(Clone, Copy)]
struct Failures {
    count: u32,
    until: Instant,
}

/// Sign-in failures per key with exponential backoff past the free ones.
struct Backoff {
    free: u32,
    base: Duration,
    max: Duration,
    failures: DashMap<String, Failures>,
    what: &'static str,
}

impl Backoff {
    fn check(&self, key: &str) -> Result<(), Limited> {
        let now = Instant::now();
        // Copied out, so no guard outlives this line.
        let Some(failures) = self.failures.get(key).map(|f| *f) else {
            return Ok(());
        };
        if failures.until > now {
            return Err(Limited {
                what: format!(
                    "too many failed sign-ins {}; wait before trying again",
                    self.what
                ),
                retry_after: failures.until - now,
            });
        }
        Ok(())
    }

    fn failed(&self, key: &str) {
        let now = Instant::now();
        let mut entry = self.failures.entry(key.to_owned()).or_insert(Failures {
            count: 0,
            until: now,
        });
        entry.count = entry.count.saturating_add(1);
        if entry.count > self.free {
            let doublings = (entry.count - self.free - 1).min(30);
            let wait = self.base.saturating_mul(1 << doublings).min(self.max);
            entry.until = now + wait;
        }
    }

    fn succeeded(&self, key: &str) {
        self.failures.remove(key);
    }

    /// Forgets keys whose backoff ended long ago, so a scan of many
    /// accounts does not keep memory forever.
    fn prune(&self) {
        let now = Instant::now();
        self.failures
            .retain(|_, f| f.until + self.max.max(Duration::from_secs(60)) > now);
    }
}

/// Every limit of one desk, shared by its handlers and sockets.
pub(crate) struct Limits {
    pub settings: LimitSettings,
    sessions_per_ip: Budget<IpAddr>,
    conversations_per_ip: Budget<IpAddr>,
    conversations_per_visitor: Budget<VisitorId>,
    sockets_per_visitor: Arc<Counts<VisitorId>>,
    sockets_per_ip: Arc<Counts<IpAddr>>,
    logins_per_account: Backoff,
    logins_per_ip: Backoff,
}

impl Limits {
    pub fn new(settings: LimitSettings) -> Self {
        let backoff = |free, what| Backoff {
            free,
            base: settings.login_backoff,
            max: settings.login_backoff_max,
            failures: DashMap::new(),
            what,
        };
        Self {
            sessions_per_ip: Budget::new(settings.sessions_per_ip, "new sessions from one address"),
            conversations_per_ip: Budget::new(
                settings.conversations_per_ip,
                "new conversations from one address",
            ),
            conversations_per_visitor: Budget::new(
                settings.conversations_per_visitor,
                "new conversations per visitor",
            ),
            sockets_per_visitor: Arc::default(),
            sockets_per_ip: Arc::default(),
            logins_per_account: backoff(settings.login_failures_per_account, "for this account"),
            logins_per_ip: backoff(settings.login_failures_per_ip, "from this address"),
            settings,
        }
    }

    /// A new guest session from `ip`.
    pub fn new_session(&self, ip: Option<IpAddr>) -> Result<(), Limited> {
        ip.map_or(Ok(()), |ip| self.sessions_per_ip.take(&ip))
    }

    /// A new conversation by `visitor` from `ip`.
    pub fn new_conversation(&self, visitor: &VisitorId, ip: Option<IpAddr>) -> Result<(), Limited> {
        if let Some(ip) = ip {
            self.conversations_per_ip.take(&ip)?;
        }
        self.conversations_per_visitor.take(visitor)
    }

    /// A place for one more socket of `visitor` from `ip`, held while it is open.
    pub fn socket(
        &self,
        visitor: Option<&VisitorId>,
        ip: Option<IpAddr>,
    ) -> Result<SocketPlace, Limited> {
        let refused = |what: String| Limited {
            what,
            // A socket frees its place when it closes, which cannot be foreseen.
            retry_after: Duration::from_secs(5),
        };
        let by_visitor = match visitor {
            Some(visitor) => Some(
                self.sockets_per_visitor
                    .hold(visitor.clone(), self.settings.sockets_per_visitor)
                    .ok_or_else(|| {
                        refused(format!(
                            "at most {} open sockets per visitor; close a tab",
                            self.settings.sockets_per_visitor
                        ))
                    })?,
            ),
            None => None,
        };
        let by_ip = match ip {
            Some(ip) => Some(
                self.sockets_per_ip
                    .hold(ip, self.settings.sockets_per_ip)
                    .ok_or_else(|| {
                        refused(format!(
                            "at most {} open sockets from one address",
                            self.settings.sockets_per_ip
                        ))
                    })?,
            ),
            None => None,
        };
        Ok(SocketPlace {
            _by_visitor: by_visitor,
            _by_ip: by_ip,
        })
    }

    /// Whether a sign-in for `account` from `ip` may be tried now.
    pub fn may_sign_in(&self, account: &str, ip: Option<IpAddr>) -> Result<(), Limited> {
        if let Some(ip) = ip {
            self.logins_per_ip.check(&ip.to_string())?;
        }
        self.logins_per_account.check(account)
    }

    /// Records a sign-in's outcome.
    pub fn signed_in(&self, account: &str, ip: Option<IpAddr>, ok: bool) {
        if ok {
            // The address keeps its failures: one good account does not
            // clear a scan of others.
            self.logins_per_account.succeeded(account);
            return;
        }
        self.logins_per_account.failed(account);
        if let Some(ip) = ip {
            self.logins_per_ip.failed(&ip.to_string());
        }
    }

    /// Forgets idle keys; the desk calls it every minute.
    pub fn prune(&self) {
        self.sessions_per_ip.limiter.retain_recent();
        self.conversations_per_ip.limiter.retain_recent();
        self.conversations_per_visitor.limiter.retain_recent();
        self.logins_per_account.prune();
        self.logins_per_ip.prune();
    }

    /// The client's address: the peer's, or, when the peer is a trusted
    /// proxy, the last address in `X-Forwarded-For` that is not one.
    /// `None` when the server inserts no `ConnectInfo` (a host serving with
    /// plain `axum::serve`): per-address limits are then off.
    pub fn client_ip(&self, parts: &Parts) -> Option<IpAddr> {
        client_ip(parts, &self.settings.trusted_proxies)
    }
}

/// A socket's places in the per-visitor and per-address counts.
pub(crate) struct SocketPlace {
    _by_visitor: Option<Held<VisitorId>>,
    _by_ip: Option<Held<IpAddr>>,
}

/// See [`Limits::client_ip`].
pub(crate) fn client_ip(parts: &Parts, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())?;
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return Some(peer);
    }
    // Each proxy appends the address it saw: read from the right, past our
    // own proxies; anything further left was written by the client itself.
    let forwarded = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return Some(ip),
            // Garbage from beyond our proxies: the proxy's own address is
            // the best we know.
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(peer: &str, forwarded: &[&str]) -> Parts {
        let mut request = axum::http::Request::builder().uri("/");
        for value in forwarded {
            request = request.header("x-forwarded-for", *value);
        }
        let (mut parts, ()) = request.body(()).unwrap_or_default().into_parts();
        if let Ok(peer) = peer.parse::<SocketAddr>() {
            parts.extensions.insert(ConnectInfo(peer));
        }
        parts
    }

    fn ip(text: &str) -> Option<IpAddr> {
        text.parse().ok()
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap_or_else(|_| unreachable!())];
        // A client claiming an address directly is not believed.
        let direct = parts("203.0.113.7:5000", &["1.2.3.4"]);
        assert_eq!(client_ip(&direct, &trusted), ip("203.0.113.7"));
        // Through our proxy, the proxy's append is the client.
        let proxied = parts("10.0.0.2:5000", &["1.2.3.4, 198.51.100.9"]);
        assert_eq!(client_ip(&proxied, &trusted), ip("198.51.100.9"));
        // Two of our proxies in a row are skipped.
        let chained = parts("10.0.0.2:5000", &["198.51.100.9", "10.0.0.3"]);
        assert_eq!(client_ip(&chained, &trusted), ip("198.51.100.9"));
        // No header behind the proxy: the proxy is all we know.
        let bare = parts("10.0.0.2:5000", &[]);
        assert_eq!(client_ip(&bare, &trusted), ip("10.0.0.2"));
        // No ConnectInfo: no address at all.
        assert_eq!(client_ip(&parts("", &["1.2.3.4"]), &trusted), None);
    }

    #[test]
    fn proxies_are_networks_or_single_addresses() {
        assert_eq!(parse_network("10.0.0.0/8").map(|n| n.prefix_len()), Ok(8));
        assert_eq!(parse_network(" 10.0.0.2 ").map(|n| n.prefix_len()), Ok(32));
        assert_eq!(parse_network("::1").map(|n| n.prefix_len()), Ok(128));
        assert!(parse_network("proxy.local").is_err());
    }

    #[test]
    fn backoff_starts_after_the_free_failures_and_doubles() {
        let limits = Limits::new(LimitSettings {
            login_failures_per_account: 2,
            login_backoff: Duration::from_secs(10),
            ..LimitSettings::default()
        });
        let who = ip("192.0.2.1");
        for _ in 0..2 {
            assert!(limits.may_sign_in("alice", who).is_ok());
            limits.signed_in("alice", who, false);
        }
        assert!(limits.may_sign_in("alice", who).is_ok(), "two are free");
        limits.signed_in("alice", who, false);
        let first = limits
            .may_sign_in("alice", who)
            .err()
            .map(|e| e.retry_after);
        assert!(first.is_some_and(|d| d > Duration::from_secs(8) && d <= Duration::from_secs(10)));
        limits.signed_in("alice", who, false);
        let second = limits
            .may_sign_in("alice", who)
            .err()
            .map(|e| e.retry_after);
        assert!(second.is_some_and(|d| d > Duration::from_secs(18)));
        // Another account from the same address is not locked by alice's.
        assert!(limits.may_sign_in("bob", who).is_ok());
        limits.signed_in("alice", who, true);
        assert!(limits.may_sign_in("alice", who).is_ok());
    }

    #[test]
    fn budgets_refuse_past_the_burst_and_name_the_limit() {
        let limits = Limits::new(LimitSettings {
            sessions_per_ip: Rate::per_minute(3),
            ..LimitSettings::default()
        });
        let who = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(limits.new_session(who).is_ok());
        }
        let refused = limits.new_session(who).err();
        assert!(refused
            .as_ref()
            .is_some_and(|e| e.what.contains("3 per minute")
                && e.retry_after > Duration::from_secs(10)
                && e.retry_after <= Duration::from_secs(20)));
        assert!(limits.new_session(ip("192.0.2.2")).is_ok());
    }

    #[test]
    fn socket_places_are_freed_when_dropped() {
        let limits = Limits::new(LimitSettings {
            sockets_per_visitor: 2,
            ..LimitSettings::default()
        });
        let visitor = VisitorId::new("v-1").unwrap_or_else(|_| unreachable!());
        let first = limits.socket(Some(&visitor), None);
        let second = limits.socket(Some(&visitor), None);
        assert!(first.is_ok() && second.is_ok());
        assert!(limits.socket(Some(&visitor), None).is_err());
        drop(first);
        assert!(limits.socket(Some(&visitor), None).is_ok());
        drop(second);
        assert_eq!(limits.sockets_per_visitor.of(&visitor), 0);
    }
}
