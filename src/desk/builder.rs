//! [`ServiceDeskBuilder`]: what the host brings, with a default for each,
//! and the wiring, in dependency order: the pool (on the cluster's bus),
//! the hooks, the dispatcher, the router from the directory, then the
//! tasks that follow the message path, presence, the directory and the
//! cluster, and the sweep of expired files.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use cs_core::store::{ConversationQueries, MemoryStore, MessageStore, ReportStore};
use cs_core::{AgentDirectory, MemoryDirectory, TenantId};
use cs_datahub::DataHub;
use cs_intent::faq::FaqBot;
use cs_transport::websocket::PartyRate;
use cs_transport::{
    ConnectionPool, Dispatcher, DispatcherConfig, Hook, Metrics, NodeId, PoolConfig,
};

use super::attachments::Attachments;
use super::cluster::ClusterConfig;
use super::consoles::Consoles;
use super::error::BuildError;
use super::history::HistoryReview;
use super::hooks::{BotHook, PreviewHook};
use super::identity::{GuestsOnly, Identity};
use super::limits::Limits;
use super::presence::AgentPresence;
use super::quotas::UploadQuotas;
use super::reports::BotTally;
use super::routing::{fresh_router, Routing};
use super::settings::DeskSettings;
use super::state::DeskState;
use super::tokens::{Revocations, Signer};
use super::ServiceDesk;

/// One store as the desk uses it: the message path's, the queries', the
/// report counters'.
type StoreViews = (
    Arc<dyn MessageStore>,
    Arc<dyn ConversationQueries>,
    Arc<dyn ReportStore>,
);

/// Builds a [`ServiceDesk`]. Everything has a default: an in-memory store,
/// an empty directory, guests only, a random signing key, no bot, no data
/// hub, no uploads, one node.
pub struct ServiceDeskBuilder {
    tenant: TenantId,
    store: Option<StoreViews>,
    directory: Option<Arc<dyn AgentDirectory>>,
    identity: Arc<dyn Identity>,
    signer: Option<Signer>,
    bot: Option<Arc<FaqBot>>,
    hub: Option<Arc<DataHub>>,
    attachments: Option<Arc<dyn Attachments>>,
    hooks: Vec<Arc<dyn Hook>>,
    settings: DeskSettings,
    cluster: Option<ClusterConfig>,
    node: Option<NodeId>,
    history_file: Option<std::path::PathBuf>,
}

impl ServiceDeskBuilder {
    pub(crate) fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            store: None,
            directory: None,
            identity: Arc::new(GuestsOnly),
            signer: None,
            bot: None,
            hub: None,
            attachments: None,
            hooks: Vec::new(),
            settings: DeskSettings::default(),
            cluster: None,
            node: None,
            history_file: None,
        }
    }

    /// Where conversations and messages are kept: any store with the
    /// conversation queries (cs-datahub's SQLite, PostgreSQL, MySQL, Redis,
    /// or cs-core's `MemoryStore`, the default, gone at exit). The store
    /// also keeps the report counters, with the writes they count.
    pub fn store<S: ConversationQueries + ReportStore>(mut self, store: Arc<S>) -> Self {
        let messages: Arc<dyn MessageStore> = Arc::clone(&store) as Arc<dyn MessageStore>;
        let reports: Arc<dyn ReportStore> = Arc::clone(&store) as Arc<dyn ReportStore>;
        self.store = Some((messages, store, reports));
        self
    }

    /// The agents: who exists, their capacity and skills. The desk follows
    /// its changes at runtime. Default: nobody (visitors queue).
    pub fn directory(mut self, directory: Arc<dyn AgentDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Who a request is, by the host's own login. Default: [`GuestsOnly`].
    pub fn identity(mut self, identity: impl Identity) -> Self {
        self.identity = Arc::new(identity);
        self
    }

    /// The key the desk's tokens are signed with; every node of a cluster
    /// needs the same. Default: a random key, so sessions end with the process.
    pub fn signer(mut self, signer: Signer) -> Self {
        self.signer = Some(signer);
        self
    }

    /// The FAQ bot that answers visitors before a person does.
    pub fn bot(mut self, bot: Arc<FaqBot>) -> Self {
        self.bot = Some(bot);
        self
    }

    /// The shop's systems, for the console's profile and orders panel.
    pub fn data_hub(mut self, hub: Arc<DataHub>) -> Self {
        self.hub = Some(hub);
        self
    }

    /// Where the review of suggestions learned from past conversations is
    /// kept ([`crate::desk::history`]): a JSON file, rewritten after every
    /// upload, acceptance and rejection, and read back at build, its
    /// accepted suggestions taught again to the bot. Default: none, the
    /// review is in memory only.
    pub fn history_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.history_file = Some(path.into());
        self
    }

    /// Where uploads go. Default: none (uploads are refused with a 404 that
    /// says so).
    pub fn attachments(mut self, attachments: impl Attachments) -> Self {
        self.attachments = Some(Arc::new(attachments));
        self
    }

    /// Another hook on the message path (audit, moderation), after the bot's.
    pub fn hook(mut self, hook: Arc<dyn Hook>) -> Self {
        self.hooks.push(hook);
        self
    }

    /// Routing, limits and timing.
    pub fn settings(mut self, settings: DeskSettings) -> Self {
        self.settings = settings;
        self
    }

    /// This node's name (default: `node`; in a cluster, name every node).
    pub fn node(mut self, node: NodeId) -> Self {
        self.node = Some(node);
        self
    }

    /// Joins a cluster of nodes through Redis (feature `redis`): messages
    /// reach parties on other nodes, presence is shared, and one node at a
    /// time routes. Needs a store every node shares (PostgreSQL or MySQL)
    /// and the same [`Signer`] key on every node.
    pub fn cluster(mut self, config: ClusterConfig) -> Self {
        self.cluster = Some(config);
        self
    }

    /// Starts the desk on the current tokio runtime.
    ///
    /// # Errors
    /// The directory's agents are inconsistent, there is no randomness for
    /// a key, or the cluster cannot be joined.
    pub async fn build(self) -> Result<ServiceDesk, BuildError> {
        let ServiceDeskBuilder {
            tenant,
            store,
            directory,
            identity,
            signer,
            bot,
            hub,
            attachments,
            hooks: extra_hooks,
            settings,
            cluster: cluster_config,
            node,
            history_file,
        } = self;
        // Before the first visitor: the bot learns again what was accepted.
        let history = match &bot {
            Some(bot) => Some(Arc::new(HistoryReview::open(
                Arc::clone(bot),
                history_file,
            )?)),
            None => None,
        };
        let (store, queries, reports) = store.unwrap_or_else(|| {
            let memory = Arc::new(MemoryStore::new());
            (
                Arc::clone(&memory) as Arc<dyn MessageStore>,
                Arc::clone(&memory) as Arc<dyn ConversationQueries>,
                memory as Arc<dyn ReportStore>,
            )
        });
        // Before anything is written: every event from now on falls on a
        // day of the shop's zone.
        reports.set_report_zone(&tenant, settings.report_zone.clone());
        let directory = directory.unwrap_or_else(|| Arc::new(MemoryDirectory::default()));
        let signer = match signer {
            Some(signer) => signer,
            None => {
                tracing::warn!("the desk signs its tokens with a random key: sessions end when the process does; pass ServiceDeskBuilder::signer to keep them");
                Signer::random().map_err(|e| BuildError::Randomness(e.to_string()))?
            }
        };
        // Bound to this shop: another shop's desk with the same key refuses its tokens.
        let signer = signer.for_tenant(tenant.as_str());
        let mut settings = settings;
        if settings.ws.party_rate.is_none() {
            let rate = settings.limits.messages_per_visitor;
            settings.ws.party_rate = Some(Arc::new(PartyRate::new(rate.burst, rate.per)));
        }
        let limits = Limits::new(settings.limits.clone());
        let shutdown = CancellationToken::new();
        #[cfg_attr(not(feature = "redis"), allow(unused_mut))]
        let mut tasks = Vec::new();

        let metrics = Arc::new(Metrics::new());
        #[cfg(feature = "redis")]
        let node = node.or_else(|| cluster_config.as_ref().map(|c| c.node.clone()));
        let pool_config = PoolConfig {
            node: node.unwrap_or_else(|| NodeId::new("node")),
            ..PoolConfig::default()
        };
        #[cfg(feature = "redis")]
        let bus = match &cluster_config {
            Some(config) => Some(super::cluster::Cluster::connect_bus(config).await?),
            None => None,
        };
        #[cfg(feature = "redis")]
        let pool = match &bus {
            Some(bus) => ConnectionPool::with_bus(pool_config, bus.clone(), Arc::clone(&metrics)),
            None => ConnectionPool::new(pool_config, Arc::clone(&metrics)),
        };
        #[cfg(not(feature = "redis"))]
        let pool = ConnectionPool::new(pool_config, Arc::clone(&metrics));

        let bot_tally = Arc::new(BotTally::new(settings.report_zone.clone()));
        let preview = Arc::new(PreviewHook::new(tenant.clone()));
        let bot_hook = bot.as_ref().map(|bot| {
            Arc::new(BotHook::new(
                Arc::clone(bot),
                tenant.clone(),
                Arc::clone(&bot_tally),
            ))
        });
        let mut hooks: Vec<Arc<dyn Hook>> = Vec::new();
        if let Some(bot_hook) = &bot_hook {
            hooks.push(Arc::clone(bot_hook) as Arc<dyn Hook>);
        }
        hooks.push(Arc::clone(&preview) as Arc<dyn Hook>);
        hooks.extend(extra_hooks);

        let mut dispatcher_config = DispatcherConfig {
            shards: settings.shards.max(1),
            queue_delay_target: settings.queue_delay_target,
            ..DispatcherConfig::default()
        };
        // A message may announce any file the upload endpoint accepted.
        dispatcher_config.message_limits.max_attachment_bytes = settings.max_upload_bytes;
        if cluster_config.is_some() {
            // Pub/sub may drop a message: each connection's position is
            // checked against the store this often, and a gap replayed.
            dispatcher_config.position_check_interval = Some(Duration::from_secs(1));
        }
        let dispatcher = Dispatcher::start(
            dispatcher_config,
            Arc::clone(&store),
            Arc::clone(&pool),
            hooks,
            Arc::clone(&metrics),
        );

        #[cfg(feature = "redis")]
        let cluster = match (cluster_config, bus) {
            (Some(config), Some(bus)) => {
                let (cluster, cluster_tasks) = super::cluster::Cluster::join(
                    config,
                    &tenant,
                    bus,
                    Arc::clone(&pool),
                    shutdown.clone(),
                )
                .await?;
                tasks.extend(cluster_tasks);
                Some(cluster)
            }
            _ => None,
        };
        #[cfg(not(feature = "redis"))]
        let cluster = cluster_config.map(|config| match config {});

        let router = fresh_router(&tenant, &settings, directory.as_ref())?;
        let uploads = UploadQuotas::new(settings.uploads.clone());
        let state = Arc::new(DeskState {
            tenant,
            settings,
            store,
            queries,
            reports,
            bot_tally,
            directory: Arc::clone(&directory),
            identity,
            signer,
            revocations: Revocations::default(),
            limits,
            bot,
            history,
            hub,
            attachments,
            uploads,
            pool: Arc::clone(&pool),
            dispatcher: dispatcher.clone(),
            metrics,
            routing: Routing::new(router),
            presence: AgentPresence::default(),
            consoles: Consoles::default(),
            cluster: cluster.clone(),
            visitor_names: dashmap::DashMap::new(),
            serve_stats: Arc::default(),
            sockets: TaskTracker::new(),
            shutdown,
            tasks: parking_lot::Mutex::new(tasks),
        });
        preview.attach(&state);
        if let (Some(bot_hook), Some(_)) = (&bot_hook, &cluster) {
            bot_hook.share_through(Arc::clone(&pool), &state);
        }

        state.keep(tokio::spawn(
            Arc::clone(&state).follow_path(dispatcher.events()),
        ));
        state.keep(tokio::spawn(
            Arc::clone(&state).follow_presence(pool.presence()),
        ));
        state.keep(tokio::spawn(Arc::clone(&state).run_consoles()));
        state.keep(tokio::spawn(follow_directory(Arc::clone(&state))));
        state.keep(tokio::spawn(prune_limits(Arc::clone(&state))));
        if state.bot.is_some() {
            state.keep(tokio::spawn(flush_bot_tally(Arc::clone(&state))));
        }
        if let Some(idle) = state.settings.idle_bot_close {
            state.keep(tokio::spawn(close_idle_bot_chats(Arc::clone(&state), idle)));
        }
        if state.attachments.is_some() && state.settings.uploads.retention.is_some() {
            state.keep(tokio::spawn(Arc::clone(&state).sweep_files()));
        }
        #[cfg(feature = "redis")]
        if let Some(cluster) = &cluster {
            state.keep(tokio::spawn(
                Arc::clone(&state).follow_cluster(Arc::clone(cluster)),
            ));
        }

        // In a cluster the node that takes the routing lease recovers, when it does.
        if state.cluster.is_none() {
            let recovered = state.recover().await;
            if recovered > 0 {
                tracing::info!(
                    conversations = recovered,
                    "open conversations recovered from the store"
                );
            }
        }
        Ok(ServiceDesk { state })
    }
}

/// Adds the bot's counted decisions to the store's report counters every
/// second (and `ServiceDesk::shutdown` once more, after the message path
/// drained).
async fn flush_bot_tally(state: Arc<DeskState>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = every.tick() => state.flush_bot_tally().await,
        }
    }
}

/// Forgets idle limit keys and lapsed revocations every minute, so a scan
/// of many addresses or accounts costs memory only while it lasts.
async fn prune_limits(state: Arc<DeskState>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = every.tick() => {
                state.limits.prune();
                state.revocations.prune();
                if let Some(rate) = &state.settings.ws.party_rate {
                    rate.prune();
                }
            }
        }
    }
}

/// Closes abandoned bot conversations, looking a few times per idle period
/// (so one closes within a quarter of it past its time), on the node that routes.
async fn close_idle_bot_chats(state: Arc<DeskState>, idle: Duration) {
    let period = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = every.tick() => {
                if !state.routing_here() {
                    continue;
                }
                let closed = state.close_idle_bot_chats(idle).await;
                if closed > 0 {
                    tracing::info!(closed, idle_secs = idle.as_secs(), "idle bot conversations closed");
                }
            }
        }
    }
}

/// Follows the directory: each change is applied once, however many came
/// in a burst (a `Notify` holds one wake-up).
async fn follow_directory(state: Arc<DeskState>) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let wake = Arc::clone(&changed);
    state
        .directory
        .subscribe(Box::new(move || wake.notify_one()));
    loop {
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = changed.notified() => state.follow_directory_change().await,
        }
    }
}
