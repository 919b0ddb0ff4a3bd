//! The desk: the glue between the message path and the router.
//!
//! The crates keep these apart on purpose (the dispatcher stores and
//! delivers; the router decides who serves whom), and this file is the
//! wiring a host writes once:
//!
//! - a hand-off (the bot's, or a requeue) arrives as a `PathEvent`: the
//!   conversation joins the router's queue, and any assignment the router
//!   makes goes back through the dispatcher as `Change::Assign`;
//! - a close frees the agent's seat, which may assign the next visitor;
//! - the pool's presence events (an agent's first tab opened, last tab
//!   closed) and the console's online/away switch drive `set_presence`;
//!   a closed last tab counts only after a grace period, so a page reload
//!   does not send an agent's visitors back to the queue;
//! - after every change, queued visitors are told their position, and the
//!   agents' consoles get the changed conversation.
//!
//! Messages to consoles and widgets that are not part of the cs protocol
//! ("host frames": `desk`, `agents`, `queue`) go through the same pool, as
//! JSON objects whose `type` the protocol does not use.
//!
//! In cluster mode (`cluster.rs`) only the node holding the tenant's lease
//! routes: it alone keeps a `Router` with seats and a queue. The others
//! tell it what happened on their side and ask it what only it knows; its
//! frames reach every node's consoles through the bus. A node that takes
//! the routing over starts from the store: open conversations are reread,
//! existing assignments restored, and agents who are not connected anywhere
//! lose theirs only after the grace period.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use cs::core::router::{
    AgentProfile, Assignment, BuiltinStrategy, Presence, QueueRequest, Router, RouterError,
};
use cs::core::{
    AgentId, Body, Conversation, ConversationId, Message, NewMessage, Party, Skill, StateKind,
    TenantId, Timestamp, VisitorId,
};
use cs::transport::{
    Change, Command, ConnectionPool, Dispatcher, Hook, HookAction, HookContext, HookError, Origin,
    Outcome, PathEvent, PresenceEvent,
};

use crate::auth::DEMO_AGENTS;
use crate::cluster::{Cluster, DeskOp, DeskWire, RemoteError, DESK_TOPIC};
use crate::error::ApiError;
use crate::storage::Stores;

/// How often the routing node of a cluster rereads the open conversations,
/// repairing whatever a lost bus message left undone.
const REREAD_EVERY: Duration = Duration::from_secs(5);
/// How often the routing node of a cluster rereads the agents' presence.
const PRESENCE_EVERY: Duration = Duration::from_secs(1);
/// Most open conversations read back at once.
const OPEN_MAX: usize = 100_000;

/// The bot's first words in a new conversation.
const GREETING: &str = "Hi! I'm the Demo Shop assistant. Ask me about orders, shipping, returns, refunds, sizes or coupons, or type \"agent\" to talk to a person.\n您好！我是演示商城的智能助手，可以问我订单、物流、退换货、退款、尺码或优惠券，输入“转人工”联系客服。";

/// A conversation as the consoles list it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChatSummary {
    /// The conversation.
    pub id: ConversationId,
    /// Its visitor.
    pub visitor: VisitorId,
    /// Bot, queued, assigned, closed…
    pub state: StateKind,
    /// The agent serving it.
    pub agent: Option<AgentId>,
    /// When it started.
    pub opened_at: Timestamp,
    /// The last thing said, shortened.
    pub last_text: Option<String>,
    /// Who said it: visitor, agent, bot or system.
    pub last_from: Option<String>,
    /// When.
    pub last_at: Option<Timestamp>,
    /// Its place in the queue (1 is next), while queued.
    pub queue_position: Option<usize>,
    /// Why it was handed to a person.
    pub handoff_reason: Option<String>,
}

impl ChatSummary {
    fn of(conversation: &Conversation) -> Self {
        ChatSummary {
            id: conversation.id(),
            visitor: conversation.visitor().clone(),
            state: conversation.state().kind(),
            agent: conversation.agent().cloned(),
            opened_at: conversation.created_at(),
            last_text: None,
            last_from: None,
            last_at: None,
            queue_position: None,
            handoff_reason: None,
        }
    }
}

/// An agent as the consoles show them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentView {
    /// Their id.
    pub id: AgentId,
    /// Their display name.
    pub name: String,
    /// Online, away or offline.
    pub presence: Presence,
    /// Conversations they serve now.
    pub active: usize,
    /// Conversations they may serve at once.
    pub capacity: usize,
}

/// How the desk routes, from the flags.
#[derive(Clone, Copy, Debug)]
pub struct DeskSettings {
    /// How queued visitors are given to agents.
    pub strategy: BuiltinStrategy,
    /// Conversations each agent serves at once.
    pub capacity: usize,
    /// How long an agent whose consoles all closed keeps their conversations.
    pub grace: Duration,
}

/// The routing glue; one per server.
pub struct Desk {
    tenant: TenantId,
    settings: DeskSettings,
    /// Replaced whole when this node starts or stops routing a cluster's
    /// desk, so a new owner starts from the store, not from stale seats.
    router: RwLock<Arc<Router>>,
    dispatcher: Dispatcher,
    pool: Arc<ConnectionPool>,
    stores: Stores,
    /// `None` on a single node.
    cluster: Option<Arc<Cluster>>,
    /// Open conversations, for the consoles.
    chats: DashMap<ConversationId, ChatSummary>,
    /// Each visitor's open conversation.
    by_visitor: DashMap<VisitorId, ConversationId>,
    /// What each agent chose in the console; offline is decided by their tabs.
    chosen: DashMap<AgentId, Presence>,
    /// Bumped whenever an agent's tabs come or go, so a grace timer started
    /// by an earlier departure can tell it is stale.
    tab_epoch: DashMap<AgentId, u64>,
    /// Cluster mode: agents whose grace timer runs, so one is started per
    /// absence, not one per presence poll.
    grace_pending: DashMap<AgentId, ()>,
    /// The queue as last published, to clear positions of those who left it.
    published_queue: Mutex<Vec<ConversationId>>,
    /// One visitor conversation is created at a time, so two tabs opening
    /// the widget at once get the same conversation.
    creating: tokio::sync::Mutex<()>,
}

impl Desk {
    /// A desk for `tenant`, whose demo agents are offline until they connect.
    /// With `cluster`, it routes only while this node holds the lease.
    pub fn new(
        tenant: TenantId,
        settings: DeskSettings,
        dispatcher: Dispatcher,
        pool: Arc<ConnectionPool>,
        stores: Stores,
        cluster: Option<Arc<Cluster>>,
    ) -> Result<Arc<Self>, RouterError> {
        let router = fresh_router(&tenant, &settings)?;
        Ok(Arc::new(Desk {
            tenant,
            settings,
            router: RwLock::new(Arc::new(router)),
            dispatcher,
            pool,
            stores,
            cluster,
            chats: DashMap::new(),
            by_visitor: DashMap::new(),
            chosen: DashMap::new(),
            tab_epoch: DashMap::new(),
            grace_pending: DashMap::new(),
            published_queue: Mutex::new(Vec::new()),
            creating: tokio::sync::Mutex::new(()),
        }))
    }

    /// Starts following the message path's events and the pool's presence,
    /// and in a cluster the other nodes and the routing lease.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        let events = self.dispatcher.events();
        let presence = self.pool.presence();
        let mut tasks = vec![
            tokio::spawn(Arc::clone(self).follow_path(events, shutdown.clone())),
            tokio::spawn(Arc::clone(self).follow_presence(presence, shutdown.clone())),
        ];
        if let Some(cluster) = &self.cluster {
            let cluster = Arc::clone(cluster);
            tasks.push(tokio::spawn(
                Arc::clone(self).follow_cluster(cluster, shutdown),
            ));
        }
        tasks
    }

    /// Whether this node routes: always on a single node; in a cluster,
    /// while it holds the tenant's lease.
    pub fn routing(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.routing())
    }

    fn router(&self) -> Arc<Router> {
        Arc::clone(&self.router.read())
    }

    /// Puts the conversations left open (by a previous run, or by the node
    /// that routed before this one) back on the desk: queued ones into the
    /// queue, assigned ones back with their agent, waiting ones to the bot.
    /// An agent not connected keeps their conversations for the grace
    /// period, then they return to the queue. Returns how many it found;
    /// 0 on a node that does not route.
    pub async fn recover(self: &Arc<Self>) -> usize {
        let found = self.reread_open(true).await;
        self.expire_absent_agents().await;
        found
    }

    /// Makes the router and the consoles agree with the store's open
    /// conversations. `starting`: also start the bot where a conversation
    /// was opened but never started (safe only before anyone else may).
    async fn reread_open(&self, starting: bool) -> usize {
        if !self.routing() {
            return 0;
        }
        let open = match self
            .stores
            .queries
            .open_conversations(&self.tenant, OPEN_MAX)
            .await
        {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the open conversations; they return when their visitors do");
                return 0;
            }
        };
        let found = open.len();
        let open_ids: HashSet<ConversationId> = open.iter().map(Conversation::id).collect();
        for conversation in open {
            self.track(&conversation);
            if starting && conversation.state().kind() == StateKind::Waiting {
                self.change(conversation.id(), Change::StartBot).await;
            } else {
                self.route(&conversation).await;
            }
        }
        // What the desk holds that is no longer open (closed while a word
        // was lost) is reread one by one: it may also have opened since.
        let snapshot = self.router().snapshot(&self.tenant);
        let held: HashSet<ConversationId> = snapshot
            .queue
            .into_iter()
            .chain(snapshot.agents.into_iter().flat_map(|a| a.active))
            .chain(self.chats.iter().map(|c| *c.key()))
            .filter(|id| !open_ids.contains(id))
            .collect();
        for id in held {
            match self.stores.messages.conversation(id).await {
                Ok(conversation) => {
                    self.track(&conversation);
                    self.route(&conversation).await;
                }
                Err(e) => tracing::warn!(conversation = %id, error = %e, "could not reread"),
            }
        }
        self.publish_queue();
        self.publish_agents();
        found
    }

    /// Puts a conversation where its stored state says, on the router.
    async fn route(&self, conversation: &Conversation) {
        let id = conversation.id();
        match conversation.state().kind() {
            StateKind::Queued => self.route_queued(conversation).await,
            StateKind::Assigned => {
                let Some(agent) = conversation.agent() else {
                    return;
                };
                let router = self.router();
                if router.agent_of(&self.tenant, id).is_none() {
                    // Assigned by an earlier router (or by this one while a
                    // word about it was lost): the agent keeps it.
                    if let Err(e) = router.restore(&self.tenant, queue_request(conversation), agent)
                    {
                        tracing::warn!(conversation = %id, error = %e, "could not restore an assignment");
                    }
                }
            }
            StateKind::Closed => match self.router().release(&self.tenant, id) {
                Ok(released) => self.assign(released.assigned).await,
                Err(RouterError::NotRouted { .. }) => {}
                Err(e) => tracing::warn!(conversation = %id, error = %e, "release failed"),
            },
            _ => {}
        }
    }

    // ----------------------------------------------------------------------
    // Visitors.

    /// The visitor's open conversation, or a new one with the bot.
    pub async fn open_for_visitor(&self, visitor: &VisitorId) -> Result<ChatSummary, ApiError> {
        let _one_at_a_time = self.creating.lock().await;
        // In a cluster another node may have closed it: ask the store.
        if self.cluster.is_none() {
            if let Some(summary) = self.visitor_chat(visitor) {
                return Ok(summary);
            }
        }
        // After a restart the store remembers what this process does not.
        let earlier = self
            .stores
            .queries
            .visitor_conversations(&self.tenant, visitor, 5)
            .await?;
        if let Some(open) = earlier
            .into_iter()
            .find(|c| c.state().kind() != StateKind::Closed)
        {
            if open.state().kind() == StateKind::Queued {
                if self.routing() {
                    self.track(&open);
                    self.route_queued(&open).await;
                } else {
                    self.tell_router(open.id(), None);
                }
            }
            return self.summary(&open);
        }

        let conversation =
            Conversation::open(self.tenant.clone(), visitor.clone(), Timestamp::now());
        let id = conversation.id();
        self.stores
            .messages
            .create_conversation(&conversation)
            .await?;
        let started = self
            .dispatcher
            .submit_and_wait(Command::Change {
                conversation: id,
                change: Change::StartBot,
            })
            .await?;
        // From the outcome, not the event, which comes a moment later; and
        // before the greeting, so its preview has a chat to land on.
        let summary = match started {
            Outcome::Changed { conversation, .. } => self.summary(&conversation)?,
            _ => self.summary(&conversation)?,
        };
        self.dispatcher
            .submit_and_wait(Command::Send {
                origin: Origin::Host,
                message: NewMessage::new(id, Party::Bot, Body::text(GREETING)),
            })
            .await?;
        Ok(self.chats.get(&id).map_or(summary, |c| c.clone()))
    }

    /// The summary of a conversation a visitor opens. Only the routing node
    /// tracks conversations (the others would keep entries that a close on
    /// another node never removes), so a follower answers from the store's copy.
    fn summary(&self, conversation: &Conversation) -> Result<ChatSummary, ApiError> {
        if !self.routing() {
            return Ok(ChatSummary::of(conversation));
        }
        self.track(conversation);
        self.chats
            .get(&conversation.id())
            .map(|c| c.clone())
            .ok_or_else(|| ApiError::Unavailable("the conversation closed while opening".into()))
    }

    fn visitor_chat(&self, visitor: &VisitorId) -> Option<ChatSummary> {
        let id = *self.by_visitor.get(visitor)?;
        self.chats.get(&id).map(|c| c.clone())
    }

    /// An open conversation's summary. In a cluster it is read from the
    /// store, which every node shares, so its state and agent are current.
    pub async fn chat(&self, id: ConversationId) -> Result<ChatSummary, ApiError> {
        let not_open = || ApiError::NotFound(format!("no open conversation {id}"));
        if self.cluster.is_none() {
            return self.chats.get(&id).map(|c| c.clone()).ok_or_else(not_open);
        }
        let conversation = self.stores.messages.conversation(id).await?;
        if conversation.state().kind() == StateKind::Closed {
            return Err(not_open());
        }
        Ok(self
            .chats
            .get(&id)
            .map(|c| c.clone())
            .unwrap_or_else(|| ChatSummary::of(&conversation)))
    }

    /// The agents with their load, and the open conversations most recently
    /// active first; in a cluster, from the routing node.
    pub async fn snapshot(&self) -> Result<(Vec<AgentView>, Vec<ChatSummary>), ApiError> {
        match self.follower_of() {
            None => Ok((self.local_agents(), self.local_chats())),
            Some(cluster) => {
                let answer = cluster.ask(DeskOp::Snapshot).await?;
                let agents = serde_json::from_value(answer["agents"].clone());
                let chats = serde_json::from_value(answer["chats"].clone());
                match (agents, chats) {
                    (Ok(agents), Ok(chats)) => Ok((agents, chats)),
                    (Err(e), _) | (_, Err(e)) => Err(ApiError::Unavailable(format!(
                        "the routing node answered in an unknown format ({e}); are all nodes the same version?"
                    ))),
                }
            }
        }
    }

    /// The cluster, when this node is in one and does not route.
    fn follower_of(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref().filter(|c| !c.routing())
    }

    fn local_chats(&self) -> Vec<ChatSummary> {
        let mut chats: Vec<ChatSummary> = self.chats.iter().map(|c| c.clone()).collect();
        chats.sort_by_key(|c| std::cmp::Reverse(c.last_at.unwrap_or(c.opened_at)));
        chats
    }

    fn local_agents(&self) -> Vec<AgentView> {
        let snapshot = self.router().snapshot(&self.tenant);
        let names: BTreeMap<&str, &'static str> =
            DEMO_AGENTS.iter().map(|a| (a.id, a.name)).collect();
        snapshot
            .agents
            .into_iter()
            .map(|status| AgentView {
                name: names
                    .get(status.profile.id.as_str())
                    .copied()
                    .unwrap_or("agent")
                    .to_owned(),
                id: status.profile.id,
                presence: status.presence,
                active: status.active.len(),
                capacity: status.profile.max_concurrent,
            })
            .collect()
    }

    /// Closes a conversation; the event frees its agent's seat.
    pub async fn close(&self, id: ConversationId, reason: Option<String>) -> Result<(), ApiError> {
        self.dispatcher
            .submit_and_wait(Command::Change {
                conversation: id,
                change: Change::Close { reason },
            })
            .await?;
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Agents.

    /// The agent chose online or away in the console.
    pub async fn choose_presence(
        &self,
        agent: &AgentId,
        presence: Presence,
    ) -> Result<(), ApiError> {
        if presence == Presence::Offline {
            return Err(ApiError::BadRequest(
                "choose online or away; closing the console is how an agent goes offline".into(),
            ));
        }
        if let Some(cluster) = self.follower_of() {
            cluster
                .ask(DeskOp::ChoosePresence {
                    agent: agent.clone(),
                    presence,
                })
                .await?;
            return Ok(());
        }
        self.chosen.insert(agent.clone(), presence);
        if self.agent_connected(agent).await {
            self.set_presence(agent, presence).await?;
        }
        Ok(())
    }

    /// Moves a conversation from `by` to `to`.
    pub async fn transfer(
        &self,
        by: &AgentId,
        id: ConversationId,
        to: AgentId,
    ) -> Result<(), ApiError> {
        if let Some(cluster) = self.follower_of() {
            cluster
                .ask(DeskOp::Transfer {
                    by: by.clone(),
                    conversation: id,
                    to,
                })
                .await?;
            return Ok(());
        }
        let router = self.router();
        if router.agent_of(&self.tenant, id).as_ref() != Some(by) {
            return Err(ApiError::Forbidden(
                "only the agent serving a conversation may transfer it".into(),
            ));
        }
        let transferred = router.transfer(&self.tenant, id, &to)?;
        let changed = self
            .dispatcher
            .submit_and_wait(Command::Change {
                conversation: id,
                change: Change::Transfer(to.clone()),
            })
            .await;
        if let Err(e) = changed {
            // The conversation did not move: move the router's seat back.
            if let Err(undo) = router.transfer(&self.tenant, id, by) {
                tracing::error!(conversation = %id, error = %undo, "router and conversation disagree after a failed transfer");
            }
            return Err(e.into());
        }
        self.assign(transferred.assigned).await;
        self.publish_agents();
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Following the message path.

    async fn follow_path(
        self: Arc<Self>,
        mut events: tokio::sync::broadcast::Receiver<PathEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => event,
            };
            match event {
                Ok(PathEvent::Changed {
                    tenant,
                    conversation,
                    change,
                }) if tenant == self.tenant => {
                    let handoff = match change {
                        Change::HandOff { reason } => Some(reason),
                        _ => None,
                    };
                    if self.routing() {
                        self.on_changed(conversation, handoff).await;
                    } else {
                        self.tell_router(conversation.id(), handoff);
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    // A follower's routing node rereads the store by itself.
                    tracing::warn!(
                        missed,
                        "fell behind the message path's events; rereading the open conversations"
                    );
                    self.reread_open(false).await;
                }
                Err(RecvError::Closed) => break,
            }
        }
    }

    /// Tells the routing node that a conversation changed here.
    fn tell_router(&self, conversation: ConversationId, handoff: Option<String>) {
        if let Some(cluster) = &self.cluster {
            cluster.tell(&DeskWire::Changed {
                conversation,
                handoff,
            });
        }
    }

    async fn on_changed(&self, conversation: Conversation, handoff: Option<String>) {
        let id = conversation.id();
        self.track(&conversation);
        if let Some(reason) = handoff {
            if let Some(mut chat) = self.chats.get_mut(&id) {
                chat.handoff_reason = Some(reason);
            }
        }
        self.route(&conversation).await;
        self.publish_chat(id);
        self.publish_queue();
        self.publish_agents();
    }

    /// Puts a queued conversation in the router's queue (if it is not yet).
    async fn route_queued(&self, conversation: &Conversation) {
        match self
            .router()
            .enqueue(&self.tenant, queue_request(conversation))
        {
            Ok(enqueued) => self.assign(enqueued.assigned).await,
            // Requeued by a presence change, which already put it at the head.
            Err(RouterError::AlreadyRouted { .. }) => {}
            Err(e) => {
                tracing::warn!(conversation = %conversation.id(), error = %e, "enqueue failed")
            }
        }
    }

    /// Applies the router's assignments to the conversations.
    async fn assign(&self, mut assignments: Vec<Assignment>) {
        while let Some(assignment) = assignments.pop() {
            let result = self
                .dispatcher
                .submit_and_wait(Command::Change {
                    conversation: assignment.conversation,
                    change: Change::Assign(assignment.agent.clone()),
                })
                .await;
            if let Err(e) = result {
                // Closed meanwhile, or the store is down: free the seat so
                // the router's count stays true, and fill it again.
                tracing::warn!(conversation = %assignment.conversation, agent = %assignment.agent, error = %e, "assignment not applied; freeing the seat");
                if let Ok(released) = self.router().release(&self.tenant, assignment.conversation) {
                    assignments.extend(released.assigned);
                }
            }
        }
    }

    /// Applies a change the desk decided, logging a refusal.
    async fn change(&self, id: ConversationId, change: Change) {
        let command = Command::Change {
            conversation: id,
            change,
        };
        if let Err(e) = self.dispatcher.submit_and_wait(command).await {
            tracing::warn!(conversation = %id, error = %e, "state change refused");
        }
    }

    /// Records a conversation's current state; a closed one leaves the desk.
    fn track(&self, conversation: &Conversation) {
        let id = conversation.id();
        if conversation.state().kind() == StateKind::Closed {
            if let Some((_, chat)) = self.chats.remove(&id) {
                self.by_visitor
                    .remove_if(&chat.visitor, |_, open| *open == id);
            }
            return;
        }
        self.chats
            .entry(id)
            .and_modify(|chat| {
                chat.state = conversation.state().kind();
                chat.agent = conversation.agent().cloned();
            })
            .or_insert_with(|| ChatSummary::of(conversation));
        self.by_visitor.insert(conversation.visitor().clone(), id);
    }

    /// A stored message: the consoles' preview follows it.
    fn note_message(&self, message: &Message) {
        let text = match &message.body {
            Body::Text { text } => shorten(text, 80),
            Body::Image { .. } => "[image]".to_owned(),
            Body::File { name, .. } => format!("[file] {}", shorten(name, 60)),
            Body::Event(_) => return,
        };
        let from = match message.sender {
            Party::Visitor(_) => "visitor",
            Party::Agent(_) => "agent",
            Party::Bot => "bot",
            Party::System => "system",
        };
        if let Some(cluster) = self.follower_of() {
            cluster.tell(&DeskWire::Preview {
                conversation: message.conversation,
                text,
                from: from.to_owned(),
                at: message.created_at,
            });
            return;
        }
        self.preview(
            message.conversation,
            text,
            from.to_owned(),
            message.created_at,
        );
    }

    /// Only the preview: the state comes from the path's events, which are
    /// in order, while the hook may run after a later change.
    fn preview(&self, id: ConversationId, text: String, from: String, at: Timestamp) {
        if let Some(mut chat) = self.chats.get_mut(&id) {
            chat.last_text = Some(text);
            chat.last_from = Some(from);
            chat.last_at = Some(at);
        }
        self.publish_chat(id);
    }

    // ----------------------------------------------------------------------
    // Presence.

    async fn follow_presence(
        self: Arc<Self>,
        mut presence: tokio::sync::broadcast::Receiver<PresenceEvent>,
        shutdown: CancellationToken,
    ) {
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = presence.recv() => event,
            };
            match event {
                Ok(PresenceEvent {
                    tenant,
                    party: Party::Agent(agent),
                    ..
                }) if tenant == self.tenant => {
                    if let Some(cluster) = &self.cluster {
                        self.share_presence(cluster, &agent).await;
                        continue;
                    }
                    let epoch = {
                        let mut epoch = self.tab_epoch.entry(agent.clone()).or_insert(0);
                        *epoch += 1;
                        *epoch
                    };
                    // The pool's state now, not the event's: a first tab's
                    // event and a last tab's can arrive in either order.
                    if self.connected_here(&agent) {
                        if let Err(e) = self.set_presence(&agent, self.chosen(&agent)).await {
                            tracing::warn!(%agent, error = %e, "presence not applied");
                        }
                    } else {
                        tokio::spawn(Arc::clone(&self).offline_after_grace(agent, epoch));
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    if let Some(cluster) = &self.cluster {
                        self.share_all_presence(cluster).await;
                        continue;
                    }
                    // Reread the truth: who has tabs open now.
                    for agent in demo_agents() {
                        let presence = if self.connected_here(&agent) {
                            self.chosen(&agent)
                        } else {
                            Presence::Offline
                        };
                        let _ = self.set_presence(&agent, presence).await;
                    }
                }
                Err(RecvError::Closed) => break,
            }
        }
    }

    /// What the agent chose in the console; online until they choose.
    fn chosen(&self, agent: &AgentId) -> Presence {
        self.chosen.get(agent).map_or(Presence::Online, |p| *p)
    }

    fn connected_here(&self, agent: &AgentId) -> bool {
        !self
            .pool
            .connections_of(&self.tenant, &Party::Agent(agent.clone()))
            .is_empty()
    }

    /// Whether any console of the agent is open, on any node. When the
    /// cluster's presence cannot be read, yes: an outage of Redis must not
    /// send every agent's visitors back to the queue.
    async fn agent_connected(&self, agent: &AgentId) -> bool {
        match &self.cluster {
            None => self.connected_here(agent),
            Some(cluster) => match cluster.presence().online(&self.tenant).await {
                Ok(online) => online
                    .iter()
                    .any(|(party, _)| *party == Party::Agent(agent.clone())),
                Err(_) => true,
            },
        }
    }

    async fn offline_after_grace(self: Arc<Self>, agent: AgentId, epoch: u64) {
        tokio::time::sleep(self.settings.grace).await;
        let still_gone =
            self.tab_epoch.get(&agent).is_none_or(|e| *e == epoch) && !self.connected_here(&agent);
        if still_gone {
            tracing::info!(%agent, "agent left; their conversations go back to the queue");
            if let Err(e) = self.set_presence(&agent, Presence::Offline).await {
                tracing::warn!(%agent, error = %e, "presence not applied");
            }
        }
    }

    /// After a restart or a take-over: agents holding conversations who are
    /// not connected get the grace period to come back.
    async fn expire_absent_agents(self: &Arc<Self>) {
        if self.cluster.is_some() {
            self.sync_presence().await;
            return;
        }
        for status in self.router().snapshot(&self.tenant).agents {
            let agent = status.profile.id;
            if !status.active.is_empty() && !self.connected_here(&agent) {
                let epoch = self.tab_epoch.get(&agent).map_or(0, |e| *e);
                tokio::spawn(Arc::clone(self).offline_after_grace(agent, epoch));
            }
        }
    }

    async fn set_presence(&self, agent: &AgentId, presence: Presence) -> Result<(), ApiError> {
        let rebalanced = self.router().set_presence(&self.tenant, agent, presence)?;
        // Requeues first: the router may already have given some of them to
        // someone else in `assigned`, which needs them queued.
        for id in rebalanced.requeued {
            self.change(id, Change::Requeue).await;
        }
        self.assign(rebalanced.assigned).await;
        self.publish_agents();
        self.publish_queue();
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Cluster mode.

    /// Writes whether the agent has consoles on this node to the cluster's
    /// presence, then has the routing node reread it.
    async fn share_presence(self: &Arc<Self>, cluster: &Cluster, agent: &AgentId) {
        // The pool's state now, not the event's: events can overtake.
        let party = Party::Agent(agent.clone());
        let here = self.connected_here(agent);
        if let Err(e) = cluster
            .presence()
            .set_online(&self.tenant, &party, here)
            .await
        {
            // The heartbeat notices the loss and `resyncs` rewrites it all.
            tracing::warn!(%agent, error = %e, "could not share the agent's presence");
        }
        if self.routing() {
            self.sync_presence().await;
        } else {
            cluster.tell(&DeskWire::PresenceChanged);
        }
    }

    /// Rewrites every agent this node has consoles of, after Redis lost them.
    async fn share_all_presence(self: &Arc<Self>, cluster: &Cluster) {
        let here: Vec<(TenantId, Party)> = demo_agents()
            .filter(|agent| self.connected_here(agent))
            .map(|agent| (self.tenant.clone(), Party::Agent(agent)))
            .collect();
        match cluster.presence().replace_all(&here).await {
            Ok(()) => tracing::info!(agents = here.len(), "agents' presence shared again"),
            Err(e) => tracing::warn!(error = %e, "could not share the agents' presence again"),
        }
        if !self.routing() {
            cluster.tell(&DeskWire::PresenceChanged);
        }
    }

    /// Routing node: brings the router's presence in line with the agents
    /// connected anywhere. Agents who left keep their conversations for the
    /// grace period (their node may have died under them, and the load
    /// balancer sends them to another).
    async fn sync_presence(self: &Arc<Self>) {
        let Some(cluster) = &self.cluster else { return };
        if !cluster.routing() {
            return;
        }
        let online: HashSet<AgentId> = match cluster.presence().online(&self.tenant).await {
            Ok(online) => online
                .into_iter()
                .filter_map(|(party, _)| match party {
                    Party::Agent(agent) => Some(agent),
                    _ => None,
                })
                .collect(),
            // Nothing changes while the presence cannot be read.
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the cluster's presence");
                return;
            }
        };
        for status in self.router().snapshot(&self.tenant).agents {
            let agent = status.profile.id;
            if online.contains(&agent) {
                let wanted = self.chosen(&agent);
                if status.presence != wanted {
                    if let Err(e) = self.set_presence(&agent, wanted).await {
                        tracing::warn!(%agent, error = %e, "presence not applied");
                    }
                }
            } else if (status.presence != Presence::Offline || !status.active.is_empty())
                && self.grace_pending.insert(agent.clone(), ()).is_none()
            {
                tokio::spawn(Arc::clone(self).offline_in_cluster_after_grace(agent));
            }
        }
    }

    async fn offline_in_cluster_after_grace(self: Arc<Self>, agent: AgentId) {
        tokio::time::sleep(self.settings.grace).await;
        self.grace_pending.remove(&agent);
        if self.routing() && !self.agent_connected(&agent).await {
            tracing::info!(%agent, "agent gone from every node; their conversations go back to the queue");
            if let Err(e) = self.set_presence(&agent, Presence::Offline).await {
                tracing::warn!(%agent, error = %e, "presence not applied");
            }
        }
    }

    async fn follow_cluster(self: Arc<Self>, cluster: Arc<Cluster>, shutdown: CancellationToken) {
        let mut routing = cluster.routing_changes();
        let mut resyncs = cluster.presence().resyncs();
        let mut host = self.pool.host_messages();
        let mut presence_poll = tokio::time::interval(PRESENCE_EVERY);
        let mut reread = tokio::time::interval(REREAD_EVERY);
        for tick in [&mut presence_poll, &mut reread] {
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = routing.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = *routing.borrow_and_update();
                    if now {
                        self.take_over().await;
                    } else {
                        self.hand_over();
                    }
                }
                changed = resyncs.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    self.share_all_presence(&cluster).await;
                }
                message = host.recv() => match message {
                    Ok(message) if &*message.topic == DESK_TOPIC => {
                        self.on_wire(&cluster, &message.payload).await;
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "fell behind the other nodes' desks; rereading the store");
                        self.reread_open(false).await;
                    }
                    Err(RecvError::Closed) => break,
                },
                _ = presence_poll.tick() => self.sync_presence().await,
                _ = reread.tick() => {
                    self.reread_open(false).await;
                }
            }
        }
    }

    /// This node holds the lease: it routes from now on, starting from the
    /// store's truth.
    async fn take_over(self: &Arc<Self>) {
        match fresh_router(&self.tenant, &self.settings) {
            Ok(router) => *self.router.write() = Arc::new(router),
            Err(e) => {
                tracing::error!(error = %e, "could not build the router");
                return;
            }
        }
        self.published_queue.lock().clear();
        self.grace_pending.clear();
        let found = self.recover().await;
        tracing::info!(open_conversations = found, "this node now routes the desk");
    }

    /// This node lost the lease (another routes now, or Redis is away):
    /// it forgets its seats, so nothing it still holds can be assigned.
    fn hand_over(&self) {
        if let Ok(router) = fresh_router(&self.tenant, &self.settings) {
            *self.router.write() = Arc::new(router);
        }
        self.chats.clear();
        self.by_visitor.clear();
        tracing::info!("this node no longer routes the desk");
    }

    /// Another node's desk said something.
    async fn on_wire(self: &Arc<Self>, cluster: &Arc<Cluster>, payload: &[u8]) {
        let wire: DeskWire = match serde_json::from_slice(payload) {
            Ok(wire) => wire,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable desk message from another node; are all nodes the same version?");
                return;
            }
        };
        match wire {
            DeskWire::Reply { id, to, result } => cluster.answered(id, &to, result),
            // Only the routing node acts on the rest.
            _ if !self.routing() => {}
            DeskWire::Changed {
                conversation,
                handoff,
            } => match self.stores.messages.conversation(conversation).await {
                Ok(stored) => self.on_changed(stored, handoff).await,
                // The periodic reread tries again.
                Err(e) => {
                    tracing::warn!(%conversation, error = %e, "could not read a changed conversation")
                }
            },
            DeskWire::Preview {
                conversation,
                text,
                from,
                at,
            } => self.preview(conversation, text, from, at),
            DeskWire::PresenceChanged => self.sync_presence().await,
            DeskWire::Request { id, from, op } => {
                // Answered in its own task: a transfer waits on the store,
                // and the other nodes' news must not wait behind it.
                let desk = Arc::clone(self);
                let cluster = Arc::clone(cluster);
                tokio::spawn(async move {
                    let result = desk.answer(op).await.map_err(RemoteError::from);
                    cluster.tell(&DeskWire::Reply {
                        id,
                        to: from,
                        result,
                    });
                });
            }
        }
    }

    /// Routing node: does what a follower asked.
    async fn answer(&self, op: DeskOp) -> Result<Value, ApiError> {
        match op {
            DeskOp::Snapshot => Ok(json!({
                "agents": self.local_agents(),
                "chats": self.local_chats(),
            })),
            DeskOp::ChoosePresence { agent, presence } => {
                self.choose_presence(&agent, presence).await?;
                Ok(Value::Null)
            }
            DeskOp::Transfer {
                by,
                conversation,
                to,
            } => {
                self.transfer(&by, conversation, to).await?;
                Ok(Value::Null)
            }
        }
    }

    // ----------------------------------------------------------------------
    // Telling the consoles and widgets. Only the routing node does: its
    // frames reach every node's consoles through the bus.

    fn to_agents(&self, frame: Bytes) {
        for agent in demo_agents() {
            self.pool
                .send_to_party(&self.tenant, &Party::Agent(agent), frame.clone());
        }
    }

    fn publish_chat(&self, id: ConversationId) {
        if !self.routing() {
            return;
        }
        let frame = match self.chats.get(&id) {
            Some(chat) => json!({ "type": "desk", "chat": *chat }),
            None => json!({ "type": "desk", "closed": id }),
        };
        self.to_agents(Bytes::from(frame.to_string()));
    }

    fn publish_agents(&self) {
        if !self.routing() {
            return;
        }
        let frame = json!({ "type": "agents", "agents": self.local_agents() });
        self.to_agents(Bytes::from(frame.to_string()));
    }

    /// Tells each queued visitor their place, and the consoles the queue.
    fn publish_queue(&self) {
        if !self.routing() {
            return;
        }
        let queue = self.router().snapshot(&self.tenant).queue;
        let left: Vec<ConversationId> = {
            let mut published = self.published_queue.lock();
            let left = published
                .iter()
                .filter(|id| !queue.contains(id))
                .copied()
                .collect();
            published.clone_from(&queue);
            left
        };
        for id in left {
            if let Some(mut chat) = self.chats.get_mut(&id) {
                chat.queue_position = None;
            }
        }
        for (index, id) in queue.iter().enumerate() {
            let position = index + 1;
            let visitor = match self.chats.get_mut(id) {
                Some(mut chat) if chat.queue_position != Some(position) => {
                    chat.queue_position = Some(position);
                    chat.visitor.clone()
                }
                _ => continue,
            };
            let frame = json!({ "type": "queue", "conversation": id, "position": position });
            self.pool.send_to_party(
                &self.tenant,
                &Party::Visitor(visitor),
                Bytes::from(frame.to_string()),
            );
            self.publish_chat(*id);
        }
    }
}

/// A router with the demo agents registered, offline until they connect.
fn fresh_router(tenant: &TenantId, settings: &DeskSettings) -> Result<Router, RouterError> {
    let router = Router::new(settings.strategy.build());
    for agent in &DEMO_AGENTS {
        let (Ok(id), Ok(skill)) = (AgentId::new(agent.id), Skill::new(agent.skill)) else {
            unreachable!("the demo accounts have valid ids")
        };
        router.register_agent(
            tenant,
            AgentProfile::new(id, settings.capacity).with_skill(skill),
        )?;
    }
    Ok(router)
}

fn demo_agents() -> impl Iterator<Item = AgentId> {
    DEMO_AGENTS.iter().filter_map(|a| AgentId::new(a.id).ok())
}

/// What the router needs to place `conversation`: `sticky` routing sends
/// it back to the agent who served it last.
fn queue_request(conversation: &Conversation) -> QueueRequest {
    QueueRequest {
        preferred_agent: conversation.last_agent().cloned(),
        ..QueueRequest::new(conversation.id(), conversation.visitor().clone())
    }
}

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Keeps the desk's previews current: runs for every stored message of
/// the desk's tenant.
pub struct DeskHook {
    tenant: TenantId,
    desk: OnceLock<Weak<Desk>>,
}

impl DeskHook {
    /// A hook for `tenant`'s conversations; [`DeskHook::attach`] it to the desk.
    pub fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            desk: OnceLock::new(),
        }
    }

    /// Points the hook at the desk (which is built after the dispatcher).
    pub fn attach(&self, desk: &Arc<Desk>) {
        let _ = self.desk.set(Arc::downgrade(desk));
    }
}

#[async_trait]
impl Hook for DeskHook {
    fn name(&self) -> &str {
        "desk-preview"
    }

    fn wants(&self, message: &Message, conversation: &Conversation) -> bool {
        !matches!(message.body, Body::Event(_)) && *conversation.tenant() == self.tenant
    }

    async fn on_message(&self, context: HookContext) -> Result<Vec<HookAction>, HookError> {
        if let Some(desk) = self.desk.get().and_then(Weak::upgrade) {
            desk.note_message(&context.message);
        }
        Ok(Vec::new())
    }
}
