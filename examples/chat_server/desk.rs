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

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use parking_lot::Mutex;
use serde::Serialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use cs::core::router::{AgentProfile, Assignment, Presence, QueueRequest, Router, RouterError};
use cs::core::{
    AgentId, Body, Conversation, ConversationId, Message, NewMessage, Party, Skill, StateKind,
    TenantId, Timestamp, VisitorId,
};
use cs::transport::{
    Change, Command, ConnectionPool, Dispatcher, Hook, HookAction, HookContext, HookError, Origin,
    Outcome, PathEvent, PresenceEvent,
};

use crate::auth::DEMO_AGENTS;
use crate::error::ApiError;
use crate::storage::Stores;

/// The bot's first words in a new conversation.
const GREETING: &str = "Hi! I'm the Demo Shop assistant. Ask me about orders, shipping, returns, refunds, sizes or coupons, or type \"agent\" to talk to a person.\n您好！我是演示商城的智能助手，可以问我订单、物流、退换货、退款、尺码或优惠券，输入“转人工”联系客服。";

/// A conversation as the consoles list it.
#[derive(Clone, Debug, Serialize)]
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
    pub last_from: Option<&'static str>,
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
#[derive(Clone, Debug, Serialize)]
pub struct AgentView {
    /// Their id.
    pub id: AgentId,
    /// Their display name.
    pub name: &'static str,
    /// Online, away or offline.
    pub presence: Presence,
    /// Conversations they serve now.
    pub active: usize,
    /// Conversations they may serve at once.
    pub capacity: usize,
}

/// The routing glue; one per server.
pub struct Desk {
    tenant: TenantId,
    router: Router,
    dispatcher: Dispatcher,
    pool: Arc<ConnectionPool>,
    stores: Stores,
    /// Open conversations, for the consoles.
    chats: DashMap<ConversationId, ChatSummary>,
    /// Each visitor's open conversation.
    by_visitor: DashMap<VisitorId, ConversationId>,
    /// What each agent chose in the console; offline is decided by their tabs.
    chosen: DashMap<AgentId, Presence>,
    /// Bumped whenever an agent's tabs come or go, so a grace timer started
    /// by an earlier departure can tell it is stale.
    tab_epoch: DashMap<AgentId, u64>,
    /// The queue as last published, to clear positions of those who left it.
    published_queue: Mutex<Vec<ConversationId>>,
    /// One visitor conversation is created at a time, so two tabs opening
    /// the widget at once get the same conversation.
    creating: tokio::sync::Mutex<()>,
    grace: Duration,
}

impl Desk {
    /// Registers the demo agents (offline until they connect) with `router`.
    pub fn new(
        tenant: TenantId,
        router: Router,
        dispatcher: Dispatcher,
        pool: Arc<ConnectionPool>,
        stores: Stores,
        capacity: usize,
        grace: Duration,
    ) -> Result<Arc<Self>, RouterError> {
        for agent in &DEMO_AGENTS {
            let (Ok(id), Ok(skill)) = (AgentId::new(agent.id), Skill::new(agent.skill)) else {
                unreachable!("the demo accounts have valid ids")
            };
            router.register_agent(&tenant, AgentProfile::new(id, capacity).with_skill(skill))?;
        }
        Ok(Arc::new(Desk {
            tenant,
            router,
            dispatcher,
            pool,
            stores,
            chats: DashMap::new(),
            by_visitor: DashMap::new(),
            chosen: DashMap::new(),
            tab_epoch: DashMap::new(),
            published_queue: Mutex::new(Vec::new()),
            creating: tokio::sync::Mutex::new(()),
            grace,
        }))
    }

    /// Starts following the message path's events and the pool's presence.
    pub fn spawn(self: &Arc<Self>, shutdown: CancellationToken) -> Vec<JoinHandle<()>> {
        let events = self.dispatcher.events();
        let presence = self.pool.presence();
        vec![
            tokio::spawn(Arc::clone(self).follow_path(events, shutdown.clone())),
            tokio::spawn(Arc::clone(self).follow_presence(presence, shutdown)),
        ]
    }

    /// Puts the conversations a previous run left open back on the desk:
    /// queued ones into the queue, assigned ones back to the queue too (their
    /// agent has to reconnect, and `sticky` routing returns them to that
    /// agent), waiting ones to the bot. Returns how many it found.
    pub async fn recover(&self) -> usize {
        let open = match self
            .stores
            .queries
            .open_conversations(&self.tenant, 100_000)
            .await
        {
            Ok(open) => open,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the open conversations; they return when their visitors do");
                return 0;
            }
        };
        let found = open.len();
        for conversation in open {
            self.track(&conversation);
            match conversation.state().kind() {
                StateKind::Assigned => self.change(conversation.id(), Change::Requeue).await,
                StateKind::Queued => self.route_queued(&conversation).await,
                StateKind::Waiting => self.change(conversation.id(), Change::StartBot).await,
                _ => {}
            }
        }
        found
    }

    // ----------------------------------------------------------------------
    // Visitors.

    /// The visitor's open conversation, or a new one with the bot.
    pub async fn open_for_visitor(&self, visitor: &VisitorId) -> Result<ChatSummary, ApiError> {
        let _one_at_a_time = self.creating.lock().await;
        if let Some(summary) = self.visitor_chat(visitor) {
            return Ok(summary);
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
            self.track(&open);
            if open.state().kind() == StateKind::Queued {
                self.route_queued(&open).await;
            }
            return self.visitor_chat(visitor).ok_or_else(|| {
                ApiError::Unavailable("the conversation closed while opening".into())
            });
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
        // Tracked from the outcome, not the event, which comes a moment later.
        match started {
            Outcome::Changed { conversation, .. } => self.track(&conversation),
            _ => self.track(&conversation),
        }
        self.dispatcher
            .submit_and_wait(Command::Send {
                origin: Origin::Host,
                message: NewMessage::new(id, Party::Bot, Body::text(GREETING)),
            })
            .await?;
        self.visitor_chat(visitor)
            .ok_or_else(|| ApiError::Unavailable("the conversation closed while opening".into()))
    }

    fn visitor_chat(&self, visitor: &VisitorId) -> Option<ChatSummary> {
        let id = *self.by_visitor.get(visitor)?;
        self.chats.get(&id).map(|c| c.clone())
    }

    /// A tracked conversation's summary.
    pub fn chat(&self, id: ConversationId) -> Option<ChatSummary> {
        self.chats.get(&id).map(|c| c.clone())
    }

    /// Every open conversation, most recently active first.
    pub fn chats(&self) -> Vec<ChatSummary> {
        let mut chats: Vec<ChatSummary> = self.chats.iter().map(|c| c.clone()).collect();
        chats.sort_by_key(|c| std::cmp::Reverse(c.last_at.unwrap_or(c.opened_at)));
        chats
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

    /// The agents and their load.
    pub fn agents(&self) -> Vec<AgentView> {
        let snapshot = self.router.snapshot(&self.tenant);
        let names: BTreeMap<&str, &'static str> =
            DEMO_AGENTS.iter().map(|a| (a.id, a.name)).collect();
        snapshot
            .agents
            .into_iter()
            .map(|status| AgentView {
                name: names
                    .get(status.profile.id.as_str())
                    .copied()
                    .unwrap_or("agent"),
                id: status.profile.id,
                presence: status.presence,
                active: status.active.len(),
                capacity: status.profile.max_concurrent,
            })
            .collect()
    }

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
        self.chosen.insert(agent.clone(), presence);
        let connected = !self
            .pool
            .connections_of(&self.tenant, &Party::Agent(agent.clone()))
            .is_empty();
        if connected {
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
        if self.router.agent_of(&self.tenant, id).as_ref() != Some(by) {
            return Err(ApiError::Forbidden(
                "only the agent serving a conversation may transfer it".into(),
            ));
        }
        let transferred = self.router.transfer(&self.tenant, id, &to)?;
        let changed = self
            .dispatcher
            .submit_and_wait(Command::Change {
                conversation: id,
                change: Change::Transfer(to.clone()),
            })
            .await;
        if let Err(e) = changed {
            // The conversation did not move: move the router's seat back.
            if let Err(undo) = self.router.transfer(&self.tenant, id, by) {
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
                }) if tenant == self.tenant => self.on_changed(conversation, change).await,
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "fell behind the message path's events; rereading the open conversations"
                    );
                    self.reconcile().await;
                }
                Err(RecvError::Closed) => break,
            }
        }
    }

    async fn on_changed(&self, conversation: Conversation, change: Change) {
        let id = conversation.id();
        self.track(&conversation);
        if let Change::HandOff { reason } = &change {
            if let Some(mut chat) = self.chats.get_mut(&id) {
                chat.handoff_reason = Some(reason.clone());
            }
        }
        match conversation.state().kind() {
            StateKind::Queued => self.route_queued(&conversation).await,
            StateKind::Closed => match self.router.release(&self.tenant, id) {
                Ok(released) => self.assign(released.assigned).await,
                Err(RouterError::NotRouted { .. }) => {}
                Err(e) => tracing::warn!(conversation = %id, error = %e, "release failed"),
            },
            _ => {}
        }
        self.publish_chat(id);
        self.publish_queue();
        self.publish_agents();
    }

    /// Puts a queued conversation in the router's queue (if it is not yet).
    async fn route_queued(&self, conversation: &Conversation) {
        let request = QueueRequest {
            preferred_agent: conversation.last_agent().cloned(),
            ..QueueRequest::new(conversation.id(), conversation.visitor().clone())
        };
        match self.router.enqueue(&self.tenant, request) {
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
                if let Ok(released) = self.router.release(&self.tenant, assignment.conversation) {
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

    /// After missed events: reread every tracked conversation and route what waits.
    async fn reconcile(&self) {
        let ids: Vec<ConversationId> = self.chats.iter().map(|c| *c.key()).collect();
        for id in ids {
            match self.stores.messages.conversation(id).await {
                Ok(conversation) => {
                    self.track(&conversation);
                    match conversation.state().kind() {
                        StateKind::Queued => self.route_queued(&conversation).await,
                        StateKind::Closed => {
                            if let Ok(released) = self.router.release(&self.tenant, id) {
                                self.assign(released.assigned).await;
                            }
                        }
                        _ => {}
                    }
                }
                Err(e) => tracing::warn!(conversation = %id, error = %e, "could not reread"),
            }
        }
        self.publish_queue();
        self.publish_agents();
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
    fn note_message(&self, message: &Message, conversation: &Conversation) {
        let preview = match &message.body {
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
        // Only the preview: the state comes from the path's events, which
        // are in order, while this hook may run after a later change.
        let _ = conversation;
        if let Some(mut chat) = self.chats.get_mut(&message.conversation) {
            chat.last_text = Some(preview);
            chat.last_from = Some(from);
            chat.last_at = Some(message.created_at);
        }
        self.publish_chat(message.conversation);
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
                    online,
                }) if tenant == self.tenant => {
                    let epoch = {
                        let mut epoch = self.tab_epoch.entry(agent.clone()).or_insert(0);
                        *epoch += 1;
                        *epoch
                    };
                    if online {
                        let chosen = self.chosen.get(&agent).map_or(Presence::Online, |p| *p);
                        if let Err(e) = self.set_presence(&agent, chosen).await {
                            tracing::warn!(%agent, error = %e, "presence not applied");
                        }
                    } else {
                        tokio::spawn(Arc::clone(&self).offline_after_grace(agent, epoch));
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => {
                    // Reread the truth: who has tabs open now.
                    for agent in DEMO_AGENTS.iter().filter_map(|a| AgentId::new(a.id).ok()) {
                        let party = Party::Agent(agent.clone());
                        let presence = if self.pool.connections_of(&self.tenant, &party).is_empty()
                        {
                            Presence::Offline
                        } else {
                            self.chosen.get(&agent).map_or(Presence::Online, |p| *p)
                        };
                        let _ = self.set_presence(&agent, presence).await;
                    }
                }
                Err(RecvError::Closed) => break,
            }
        }
    }

    async fn offline_after_grace(self: Arc<Self>, agent: AgentId, epoch: u64) {
        tokio::time::sleep(self.grace).await;
        let still_gone = self.tab_epoch.get(&agent).is_some_and(|e| *e == epoch)
            && self
                .pool
                .connections_of(&self.tenant, &Party::Agent(agent.clone()))
                .is_empty();
        if still_gone {
            tracing::info!(%agent, "agent left; their conversations go back to the queue");
            if let Err(e) = self.set_presence(&agent, Presence::Offline).await {
                tracing::warn!(%agent, error = %e, "presence not applied");
            }
        }
    }

    async fn set_presence(&self, agent: &AgentId, presence: Presence) -> Result<(), ApiError> {
        let rebalanced = self.router.set_presence(&self.tenant, agent, presence)?;
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
    // Telling the consoles and widgets.

    fn to_agents(&self, frame: Bytes) {
        for agent in DEMO_AGENTS.iter().filter_map(|a| AgentId::new(a.id).ok()) {
            self.pool
                .send_to_party(&self.tenant, &Party::Agent(agent), frame.clone());
        }
    }

    fn publish_chat(&self, id: ConversationId) {
        let frame = match self.chats.get(&id) {
            Some(chat) => json!({ "type": "desk", "chat": *chat }),
            None => json!({ "type": "desk", "closed": id }),
        };
        self.to_agents(Bytes::from(frame.to_string()));
    }

    fn publish_agents(&self) {
        let frame = json!({ "type": "agents", "agents": self.agents() });
        self.to_agents(Bytes::from(frame.to_string()));
    }

    /// Tells each queued visitor their place, and the consoles the queue.
    fn publish_queue(&self) {
        let queue = self.router.snapshot(&self.tenant).queue;
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
            desk.note_message(&context.message, &context.conversation);
        }
        Ok(Vec::new())
    }
}
