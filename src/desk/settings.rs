//! The desk's knobs, each with a default that suits a small shop.

use std::time::Duration;

use cs_core::router::BuiltinStrategy;
use cs_core::store::ReportZone;
use cs_transport::websocket::WsConfig;

use super::attachments::UploadLimits;
use super::limits::LimitSettings;
use super::server::ServeConfig;

/// How the desk routes, limits and times things.
#[derive(Clone, Debug)]
pub struct DeskSettings {
    /// How queued visitors are given to agents. Default: sticky (back to
    /// the agent who served them last, else the least busy).
    pub strategy: BuiltinStrategy,
    /// How long an agent whose consoles all closed keeps their
    /// conversations before they go back to the queue: a page reload, or a
    /// node dying under them, is not a departure. Default 15 s.
    pub grace: Duration,
    /// Dispatcher shards: conversations processed at once. Each waits on
    /// the store while it persists a message, and the SQL stores commit the
    /// messages that wait together in one transaction, so more shards mean
    /// bigger, cheaper commits under load. Default 64.
    pub shards: usize,
    /// The longest a client's frame should wait in its shard's queue; past
    /// it, typing and read receipts are shed and messages refused with
    /// `overloaded` and a retry time (see cs-transport's `admission`).
    /// Default: off (zero), as the dispatcher's; `DispatcherConfig::
    /// queue_delay_target` says what it cost when on.
    pub queue_delay_target: Duration,
    /// WebSocket limits (buffers, frame size, rate per socket, idle timeout).
    pub ws: WsConfig,
    /// Largest upload. Default 10 MiB.
    pub max_upload_bytes: u64,
    /// Largest history JSONL a supervisor may upload to learn from
    /// (`POST api/agent/history`; see [`cs_intent::history`]). Default
    /// 64 MiB, about 200,000 short conversations.
    pub max_history_bytes: u64,
    /// Upload quotas per visitor and per conversation, and how long files
    /// are kept (see [`UploadLimits`] for the defaults).
    pub uploads: UploadLimits,
    /// Consoles get at most one update of each kind per this interval;
    /// changes in between are merged. Default 250 ms.
    pub console_interval: Duration,
    /// How many queued conversations the consoles see in order with their
    /// position; the rest are counted. Default 20.
    pub queue_head: usize,
    /// A guest's token lifetime. Default 1 day: the widget renews it on
    /// every page load, and a renewal retires the token it replaces.
    pub guest_token_ttl: Duration,
    /// How long after its token expired a guest who comes back is still the
    /// same guest (sees their conversation) rather than a new one. Default
    /// 30 days.
    pub guest_return_window: Duration,
    /// A logged-in customer's token lifetime: short, because logging out of
    /// the shop must end it soon. Default 1 hour.
    pub customer_token_ttl: Duration,
    /// An agent's token lifetime. Default 12 hours.
    pub agent_token_ttl: Duration,
    /// What the bot says first when there is no FAQ greeting. Default none.
    pub greeting: Option<String>,
    /// The HTTP server's timeouts and connection caps, used by
    /// [`ServiceDesk::serve`](super::ServiceDesk::serve).
    pub serve: ServeConfig,
    /// What one visitor, address or account may ask for: sessions,
    /// conversations, messages across sockets, sockets, sign-ins.
    pub limits: LimitSettings,
    /// Pages allowed to open the desk's sockets, as origins
    /// (`https://shop.example`). A browser's WebSocket upgrade from any
    /// other origin is refused, unless it is the desk's own (same host).
    /// Default none: same origin only. A widget on another domain needs
    /// that domain here.
    pub allowed_origins: Vec<String>,
    /// A bearer token `GET metrics` requires. Default none: `/metrics` is
    /// open, so put it behind the host's own guard or set this (the
    /// counters say how busy the shop is, which is not for everyone).
    pub metrics_token: Option<String>,
    /// Conversations still with the bot and silent this long are closed,
    /// so abandoned chats do not pile up. Default 30 minutes; `None` keeps them.
    pub idle_bot_close: Option<Duration>,
    /// The shop's time zone for reports: which day an event falls in.
    /// Default UTC.
    pub report_zone: ReportZone,
}

impl Default for DeskSettings {
    fn default() -> Self {
        Self {
            strategy: BuiltinStrategy::Sticky,
            grace: Duration::from_secs(15),
            shards: 64,
            queue_delay_target: cs_transport::DispatcherConfig::default().queue_delay_target,
            ws: WsConfig::default(),
            max_upload_bytes: 10 * 1024 * 1024,
            max_history_bytes: 64 * 1024 * 1024,
            uploads: UploadLimits::default(),
            console_interval: Duration::from_millis(250),
            queue_head: 20,
            guest_token_ttl: Duration::from_secs(24 * 3600),
            guest_return_window: Duration::from_secs(30 * 24 * 3600),
            customer_token_ttl: Duration::from_secs(3600),
            agent_token_ttl: Duration::from_secs(12 * 3600),
            greeting: None,
            serve: ServeConfig::default(),
            limits: LimitSettings::default(),
            allowed_origins: Vec::new(),
            metrics_token: None,
            idle_bot_close: Some(Duration::from_secs(30 * 60)),
            report_zone: ReportZone::UTC,
        }
    }
}
