//! The service desk: live chat, the bot and the shop's data, as an axum
//! router a host nests into its own app (feature `desk`, on by default).
//!
//! ```no_run
//! use std::sync::Arc;
//! use cs::core::{AgentId, AgentRecord, MemoryDirectory, TenantId};
//! use cs::desk::ServiceDesk;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let agents = MemoryDirectory::default();
//! agents.upsert(AgentRecord::new(AgentId::new("alice")?, "Alice", 3))?;
//! let desk = ServiceDesk::builder(TenantId::new("my-shop")?)
//!     .directory(Arc::new(agents))
//!     .build()
//!     .await?;
//! let app = axum::Router::new().nest("/support", desk.router());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8081").await?;
//! // Until Ctrl-C or SIGTERM, then it drains (see `server` for the guards).
//! desk.serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Then one `<script src="/support/widget.js" defer></script>` on any page
//! adds the chat launcher, and `/support/agent` is the agents' console.
//!
//! # Layout
//!
//! - `builder`: [`ServiceDeskBuilder`], which wires the four crates.
//! - [`identity`]: the seam where the host says who a request is.
//! - [`tokens`]: the desk's own signed tokens for guests, customers, agents.
//! - [`limits`]: what one visitor, address or account may ask for.
//! - [`attachments`]: where uploads go ([`FsAttachments`] by default), and
//!   the limits on them (`UploadLimits`).
//! - `quotas`: files and bytes per visitor per day and per conversation.
//! - `retention`: the sweep that removes files past their retention.
//! - [`history`]: suggestions learned from past conversations, reviewed by
//!   supervisors and taught to the bot; kept in the host's history file.
//! - [`reports`]: what the desk and the bot achieved per day, from the
//!   store's counters, and the visitors' ratings.
//! - `routing`: the message path's events to the router and back.
//! - `presence`: agents' presence, with one grace period for one node or many.
//! - `consoles`: coalesced updates to consoles and queued visitors.
//! - `cluster`: several nodes, one routing (feature `redis`).
//! - `hooks`: the FAQ bot and the consoles' previews on the message path.
//! - [`server`]: the accept loop with `TCP_NODELAY`, timeouts and caps.
//! - `http`: the routes, handlers, extractors and the one HTTP error type.
//! - `assets/`: the widget, the console and their shared chat client,
//!   embedded in the binary (no npm build, no inline script).

pub mod attachments;
mod builder;
mod cluster;
mod consoles;
pub mod error;
pub mod history;
mod hooks;
mod http;
pub mod identity;
pub mod limits;
mod presence;
mod private_fs;
mod quotas;
pub mod reports;
mod retention;
mod routing;
pub mod server;
mod settings;
mod state;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use cs_core::router::Presence;
use cs_core::{AgentId, ConversationId, Party, TenantId, VisitorId};
use cs_intent::faq::FaqBot;
use cs_transport::protocol::{AgentRow, ChatRow};
use cs_transport::{Actor, ConnectionPool, Dispatcher, Metrics, NodeId};

pub use attachments::{
    AttachmentError, Attachments, ByteStream, FsAttachments, StoredFile, UploadLimits, Usage,
};
pub use builder::ServiceDeskBuilder;
pub use cluster::{Cluster, ClusterConfig};
pub use error::{BuildError, ClusterError, DeskError, ErrorKind, PresenceError, RoutingError};
pub use history::HistoryDeskError;
pub use http::{ApiError, AuthAgent, AuthVisitor, ClientIp};
pub use identity::{Customer, GuestsOnly, Identity, IdentityError};
pub use limits::{LimitSettings, Limited, Rate};
pub use private_fs::create_private_dir;
pub use reports::{RatingError, Report, ReportError, ReportScope};
pub use settings::DeskSettings;
pub use tokens::{Claims, Revocations, Signer, TokenError, TokenKind};

use state::DeskState;

/// A running service desk. Cheap to clone: every clone is the same desk.
#[derive(Clone)]
pub struct ServiceDesk {
    state: Arc<DeskState>,
}

impl std::fmt::Debug for ServiceDesk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceDesk")
            .field("tenant", &self.state.tenant)
            .field("node", self.state.pool.node())
            .finish_non_exhaustive()
    }
}

impl ServiceDesk {
    /// Starts building a desk for the shop `tenant`.
    pub fn builder(tenant: TenantId) -> ServiceDeskBuilder {
        ServiceDeskBuilder::new(tenant)
    }

    /// The desk's routes, to `nest` under any prefix (or `merge` at the
    /// root): the visitor and agent APIs, the sockets, `widget.js`, the
    /// console at `agent`, uploads, `metrics` and `healthz`.
    pub fn router<S>(&self) -> axum::Router<S>
    where
        S: Clone + Send + Sync + 'static,
    {
        http::routes(self.clone())
    }

    /// Serves `app` (the host's, with [`ServiceDesk::router`] nested in
    /// it) on `listener` with the protections of [`server`] and the
    /// desk's [`DeskSettings::serve`], until Ctrl-C or SIGTERM; then it
    /// drains the requests in flight and [shuts the desk
    /// down](ServiceDesk::shutdown).
    ///
    /// # Errors
    /// The listener failed for good.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        app: axum::Router,
    ) -> std::io::Result<()> {
        self.serve_with_shutdown(listener, app, shutdown_signal())
            .await
    }

    /// [`ServiceDesk::serve`], stopping when `signal` resolves instead.
    ///
    /// # Errors
    /// The listener failed for good.
    pub async fn serve_with_shutdown(
        &self,
        listener: tokio::net::TcpListener,
        app: axum::Router,
        signal: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let state = &self.state;
        let served = server::serve(
            listener,
            app,
            &state.settings.serve,
            Arc::clone(&state.serve_stats),
            signal,
        )
        .await;
        // HTTP has stopped taking requests: drain the message path, then
        // tell the open sockets to reconnect elsewhere.
        self.shutdown().await;
        served
    }

    /// Stops: the message path drains (every accepted message is stored
    /// and delivered, and the bot's answers to them too), then the open
    /// sockets are told to reconnect elsewhere (`shutdown`), and the desk's
    /// tasks end. Call it after the host's server stopped taking requests.
    pub async fn shutdown(&self) {
        let state = &self.state;
        state.shutdown.cancel();
        state.dispatcher.shutdown().await;
        let closed = state.pool.close_all(cs_transport::CloseReason::Shutdown);
        // close_all only queues each close frame; wait (briefly) for the
        // socket tasks to write them, or clients would see a bare disconnect.
        state.sockets.close();
        if tokio::time::timeout(Duration::from_secs(5), state.sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sockets did not close within 5 s");
        }
        let tasks = std::mem::take(&mut *state.tasks.lock());
        for task in tasks {
            let _ = task.await;
        }
        // The bot answered until the path drained: count its last decisions.
        state.flush_bot_tally().await;
        tracing::info!(connections = closed, "service desk stopped");
    }

    /// Removes the files older than [`UploadLimits::retention`] now, as the
    /// desk's own sweep does once at start and then hourly; answers how
    /// many (0 without uploads or without retention).
    ///
    /// # Errors
    /// The backend failed.
    pub async fn expire_files(&self) -> Result<usize, AttachmentError> {
        self.state.expire_files().await
    }

    /// The shop it serves.
    pub fn tenant(&self) -> &TenantId {
        &self.state.tenant
    }

    /// Every connection on this node.
    pub fn pool(&self) -> &Arc<ConnectionPool> {
        &self.state.pool
    }

    /// The message path's front door.
    pub fn dispatcher(&self) -> &Dispatcher {
        &self.state.dispatcher
    }

    /// The message path's counters.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.state.metrics
    }

    /// The store the message path writes to.
    pub fn store(&self) -> &Arc<dyn cs_core::store::MessageStore> {
        &self.state.store
    }

    /// The signer of the desk's tokens.
    pub fn signer(&self) -> &Signer {
        &self.state.signer
    }

    /// The FAQ bot, if the desk has one.
    pub fn bot(&self) -> Option<&Arc<FaqBot>> {
        self.state.bot.as_ref()
    }

    /// This node's name.
    pub fn node(&self) -> &NodeId {
        self.state.pool.node()
    }

    /// Whether this node routes the queue (always, on a single node).
    pub fn routing(&self) -> bool {
        self.state.routing_here()
    }

    /// The node routing the queue: this one alone; in a cluster, as Redis
    /// says (`None` while the routing fails over).
    pub async fn router_node(&self) -> Option<NodeId> {
        match &self.state.cluster {
            #[cfg(feature = "redis")]
            Some(cluster) => cluster.router_node().await,
            #[cfg(not(feature = "redis"))]
            Some(cluster) => match **cluster {},
            None => Some(self.state.pool.node().clone()),
        }
    }

    /// The visitor's open conversation, or a new one with the bot (within
    /// [`LimitSettings::conversations_per_visitor`]).
    ///
    /// # Errors
    /// The store or the message path failed, or the visitor opened too many.
    pub async fn open_for_visitor(&self, visitor: &VisitorId) -> Result<ChatRow, DeskError> {
        Ok(self.state.open_for_visitor(visitor, None, None).await?)
    }

    /// Like [`ServiceDesk::open_for_visitor`], with the page's language: a
    /// new conversation's greeting is the FAQ's in `language` only (else in
    /// every language the FAQ has).
    ///
    /// # Errors
    /// The store or the message path failed.
    pub async fn open_for_visitor_in(
        &self,
        visitor: &VisitorId,
        language: Option<&str>,
    ) -> Result<ChatRow, DeskError> {
        Ok(self.state.open_for_visitor(visitor, language, None).await?)
    }

    /// An open conversation's row.
    ///
    /// # Errors
    /// [`RoutingError::NotOpen`].
    pub async fn chat(&self, id: ConversationId) -> Result<ChatRow, DeskError> {
        Ok(self.state.chat(id).await?)
    }

    /// The agents with their load, and the open conversations, most
    /// recently active first; in a cluster, from the routing node.
    ///
    /// # Errors
    /// In a cluster, the routing node did not answer.
    pub async fn snapshot(&self) -> Result<(Vec<AgentRow>, Vec<ChatRow>), DeskError> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.state.follower_of() {
            let answer = cluster.ask(cluster::DeskOp::Snapshot).await?;
            let agents = serde_json::from_value(answer["agents"].clone());
            let chats = serde_json::from_value(answer["chats"].clone());
            return match (agents, chats) {
                (Ok(agents), Ok(chats)) => Ok((agents, chats)),
                (Err(e), _) | (_, Err(e)) => Err(ClusterError::Format(e.to_string()).into()),
            };
        }
        let snapshot = self.state.routing.router().snapshot(&self.state.tenant);
        Ok((self.state.agent_rows(&snapshot), self.state.local_chats()))
    }

    /// The agent chose online or away in the console.
    ///
    /// # Errors
    /// [`PresenceError::OfflineIsNotAChoice`], an unknown agent, or in a
    /// cluster no answer from the routing node.
    pub async fn choose_presence(
        &self,
        agent: &AgentId,
        presence: Presence,
    ) -> Result<(), DeskError> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.state.follower_of() {
            cluster
                .ask(cluster::DeskOp::ChoosePresence {
                    agent: agent.clone(),
                    presence,
                })
                .await?;
            return Ok(());
        }
        Ok(self.state.choose_presence_here(agent, presence).await?)
    }

    /// Moves a conversation from `by`, who must serve it, to `to`.
    ///
    /// # Errors
    /// `to` is unknown or full, `by` does not serve it, or in a cluster no
    /// answer from the routing node.
    pub async fn transfer(
        &self,
        by: &AgentId,
        id: ConversationId,
        to: AgentId,
    ) -> Result<(), DeskError> {
        #[cfg(feature = "redis")]
        if let Some(cluster) = self.state.follower_of() {
            cluster
                .ask(cluster::DeskOp::Transfer {
                    by: by.clone(),
                    conversation: id,
                    to,
                })
                .await?;
            return Ok(());
        }
        Ok(self.state.transfer_here(by, id, to).await?)
    }

    /// Closes a conversation on behalf of `by`, checked on its shard: an
    /// agent must serve it, a visitor must own it, the host may always.
    ///
    /// # Errors
    /// `by` may not, or it is already closed.
    pub async fn close(
        &self,
        id: ConversationId,
        by: Actor,
        reason: Option<String>,
    ) -> Result<(), DeskError> {
        Ok(self.state.close(id, by, reason).await?)
    }

    /// The report of days `from..=to` (in [`DeskSettings::report_zone`])
    /// for `scope`, from the counters the store keeps.
    ///
    /// # Errors
    /// [`ReportError::TooLong`] or [`ReportError::Reversed`] for a bad
    /// range, or the store failed (or keeps no reports).
    pub async fn report(
        &self,
        from: cs_core::store::ReportDay,
        to: cs_core::store::ReportDay,
        scope: &ReportScope,
    ) -> Result<Report, ReportError> {
        if from > to {
            return Err(ReportError::Reversed { from, to });
        }
        let days = to.0 - from.0 + 1;
        if days > reports::MAX_REPORT_DAYS {
            return Err(ReportError::TooLong { days });
        }
        self.state.report(from, to, scope).await
    }

    /// Stores `visitor`'s rating (1 to 5, and a comment) of their closed
    /// conversation `id`, once, as an event of it.
    ///
    /// # Errors
    /// A bad score or comment, not theirs, still open, rated already, or
    /// the store failed.
    pub async fn rate(
        &self,
        visitor: &VisitorId,
        id: ConversationId,
        score: i64,
        comment: Option<String>,
    ) -> Result<(), RatingError> {
        self.state.rate(visitor, id, score, comment).await
    }

    /// Serves an upgraded WebSocket for `party` of `tenant`, which the
    /// caller has verified, tracked so shutdown waits for its close frame.
    pub fn serve_socket(
        &self,
        upgrade: axum::extract::WebSocketUpgrade,
        tenant: TenantId,
        party: Party,
    ) -> axum::response::Response {
        self.serve_socket_holding(upgrade, tenant, party, None)
    }

    /// [`ServiceDesk::serve_socket`], keeping `place` in the socket caps
    /// until the socket closes.
    pub(crate) fn serve_socket_holding(
        &self,
        upgrade: axum::extract::WebSocketUpgrade,
        tenant: TenantId,
        party: Party,
        place: Option<limits::SocketPlace>,
    ) -> axum::response::Response {
        let state = &self.state;
        let (pool, dispatcher, ws, sockets) = (
            Arc::clone(&state.pool),
            state.dispatcher.clone(),
            state.settings.ws.clone(),
            state.sockets.clone(),
        );
        cs_transport::websocket::upgrade(upgrade, &ws).on_upgrade(move |socket| {
            sockets.track_future(async move {
                cs_transport::websocket::serve(socket, tenant, party, pool, dispatcher, ws).await;
                drop(place);
            })
        })
    }

    /// Closes every socket of `party` on this node (a logout).
    pub fn close_sockets_of(&self, party: &Party) {
        let pool = &self.state.pool;
        for conn in pool.connections_of(&self.state.tenant, party) {
            pool.close(conn, cs_transport::protocol::CloseReason::ByHost);
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM: what a host passes to axum's
/// `with_graceful_shutdown`, so both drain the same way.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No handler could be installed: never resolve on this arm.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C: draining, then stopping"),
        _ = terminate => tracing::info!("SIGTERM: draining, then stopping"),
    }
}
