//! What every part of the desk shares: one struct, built once by the
//! builder, with each concern's own state in a field of its own. The
//! concerns' behaviour lives in their files (`routing.rs`, `presence.rs`,
//! `consoles.rs`, `cluster.rs`, `retention.rs`) as methods on [`DeskState`].

use std::sync::Arc;

use dashmap::DashMap;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use cs_core::store::{ConversationQueries, MessageStore, ReportStore};
use cs_core::{AgentDirectory, AgentId, Party, TenantId, VisitorId};
use cs_datahub::DataHub;
use cs_intent::faq::FaqBot;
use cs_transport::{ConnectionPool, Dispatcher, Metrics};

use super::attachments::Attachments;
use super::cluster::Cluster;
use super::consoles::Consoles;
use super::history::HistoryReview;
use super::identity::Identity;
use super::limits::Limits;
use super::presence::AgentPresence;
use super::quotas::UploadQuotas;
use super::reports::BotTally;
use super::routing::Routing;
use super::server::ServeStats;
use super::settings::DeskSettings;
use super::tokens::{Revocations, Signer};

/// Everything the desk is made of.
pub(crate) struct DeskState {
    /// The shop this desk serves.
    pub tenant: TenantId,
    pub settings: DeskSettings,
    /// The message path's store.
    pub store: Arc<dyn MessageStore>,
    /// The same store, for the desk's own queries.
    pub queries: Arc<dyn ConversationQueries>,
    /// The same store, for the report counters it keeps.
    pub reports: Arc<dyn ReportStore>,
    /// The bot's decisions, counted for the reports until flushed.
    pub bot_tally: Arc<BotTally>,
    pub directory: Arc<dyn AgentDirectory>,
    pub identity: Arc<dyn Identity>,
    /// Bound to `tenant`.
    pub signer: Signer,
    /// Renewed and signed-out tokens, refused before their expiry.
    pub revocations: Revocations,
    /// What one visitor, address or account may ask for.
    pub limits: Limits,
    pub bot: Option<Arc<FaqBot>>,
    /// Suggestions from past conversations under review; with the bot.
    pub history: Option<Arc<HistoryReview>>,
    pub hub: Option<Arc<DataHub>>,
    pub attachments: Option<Arc<dyn Attachments>>,
    /// What each visitor and conversation has uploaded (`settings.uploads`).
    pub uploads: Arc<UploadQuotas>,
    pub pool: Arc<ConnectionPool>,
    pub dispatcher: Dispatcher,
    pub metrics: Arc<Metrics>,
    pub routing: Routing,
    pub presence: AgentPresence,
    pub consoles: Consoles,
    /// `None` on a single node.
    pub cluster: Option<Arc<Cluster>>,
    /// Logged-in customers' names, for the consoles (guests have none).
    pub visitor_names: DashMap<VisitorId, String>,
    /// The HTTP server's counters, when the desk serves ([`super::ServiceDesk::serve`]).
    pub serve_stats: Arc<ServeStats>,
    /// Every socket task, so shutdown can wait for their close frames.
    pub sockets: TaskTracker,
    /// Stops the desk's own tasks.
    pub shutdown: CancellationToken,
    /// Those tasks, awaited at shutdown.
    pub tasks: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

impl DeskState {
    /// Whether this node routes: always on a single node; in a cluster,
    /// while it holds the tenant's lease.
    pub fn routing_here(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.routing())
    }

    /// The cluster, when this node is in one and does not route.
    pub fn follower_of(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref().filter(|c| !c.routing())
    }

    /// Whether the agent has a console open on this node.
    pub fn connected_here(&self, agent: &AgentId) -> bool {
        !self
            .pool
            .connections_of(&self.tenant, &Party::Agent(agent.clone()))
            .is_empty()
    }

    /// The directory's agents' ids.
    pub fn agent_ids(&self) -> Vec<AgentId> {
        self.directory.agents().into_iter().map(|a| a.id).collect()
    }

    /// An agent's display name, or its id.
    pub fn agent_name(&self, agent: &AgentId) -> String {
        self.directory
            .agent(agent)
            .map_or_else(|| agent.to_string(), |a| a.name)
    }

    /// Adds the bot's counted decisions to the store's counters (kept for
    /// the next try if the store fails).
    pub async fn flush_bot_tally(&self) {
        if let Err(e) = self.bot_tally.flush(&*self.reports, &self.tenant).await {
            tracing::warn!(error = %e, "the bot's report counts wait for the store");
        }
    }

    /// Keeps a task to await at shutdown.
    pub fn keep(&self, task: JoinHandle<()>) {
        self.tasks.lock().push(task);
    }
}
