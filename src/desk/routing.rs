//! The routing glue: the message path's events in, router calls and state
//! changes out.
//!
//! The crates keep these apart on purpose (the dispatcher stores and
//! delivers; the router decides who serves whom), and this file joins them:
//!
//! - a hand-off (the bot's, or a requeue) arrives as a `PathEvent`: the
//!   conversation joins the router's queue, and each assignment the router
//!   makes goes back through the dispatcher as `Change::Assign`;
//! - a close frees the agent's seat, which may assign the next visitor;
//! - a directory change registers, updates or removes agents;
//! - after every change the consoles are told, coalesced (`consoles.rs`).
//!
//! Who may close or transfer is decided on the conversation's shard, the
//! single writer, by the `Actor` of each change: never here, against a view
//! that may lag it.
//!
//! In a cluster only the node holding the tenant's lease routes; the others
//! forward what happens on their side (`cluster.rs`). A node that takes the
//! routing over starts from the store: open conversations are reread,
//! assignments restored, and absent agents get the grace period.

use std::collections::HashSet;
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::RwLock;
use tokio::sync::broadcast::error::RecvError;

use cs_core::router::{Assignment, QueueRequest, Router, RouterError};
use cs_core::{
    Body, Conversation, ConversationId, Message, NewMessage, Party, StateKind, TenantId, Timestamp,
    VisitorId,
};
use cs_transport::protocol::ChatRow;
use cs_transport::{Actor, Change, Command, Origin, Outcome, PathEvent};

use super::error::RoutingError;
use super::settings::DeskSettings;
use super::state::DeskState;

/// Most open conversations read back at once.
const OPEN_MAX: usize = 100_000;

/// The router and the conversations it routes, as the consoles list them.
pub(crate) struct Routing {
    /// Replaced whole when this node starts or stops routing a cluster's
    /// desk, so a new owner starts from the store, not from stale seats.
    router: RwLock<Arc<Router>>,
    /// Open conversations, for the consoles. Only the routing node keeps
    /// them: a follower's would hold chats a close elsewhere never removes.
    pub chats: DashMap<ConversationId, ChatRow>,
    /// Each visitor's open conversation.
    by_visitor: DashMap<VisitorId, ConversationId>,
    /// One visitor conversation is created at a time, so two tabs opening
    /// the widget at once get the same conversation.
    creating: tokio::sync::Mutex<()>,
}

impl Routing {
    pub fn new(router: Router) -> Self {
        Self {
            router: RwLock::new(Arc::new(router)),
            chats: DashMap::new(),
            by_visitor: DashMap::new(),
            creating: tokio::sync::Mutex::new(()),
        }
    }

    pub fn router(&self) -> Arc<Router> {
        Arc::clone(&self.router.read())
    }

    /// Swaps in a fresh router (a node took or lost the routing lease).
    #[cfg(feature = "redis")]
    fn replace(&self, router: Router) {
        *self.router.write() = Arc::new(router);
    }
}

/// A router for `settings`' strategy with `tenant`'s agents from the
/// directory, all offline until they connect.
pub(crate) fn fresh_router(
    tenant: &TenantId,
    settings: &DeskSettings,
    directory: &dyn cs_core::AgentDirectory,
) -> Result<Router, RouterError> {
    let router = Router::new(settings.strategy.build());
    router.sync_agents(tenant, &directory.agents())?;
    Ok(router)
}

/// What the router needs to place `conversation`: `sticky` routing sends
/// it back to the agent who served it last.
fn queue_request(conversation: &Conversation) -> QueueRequest {
    QueueRequest {
        preferred_agent: conversation.last_agent().cloned(),
        ..QueueRequest::new(conversation.id(), conversation.visitor().clone())
    }
}

fn row_of(conversation: &Conversation, visitor_name: Option<String>) -> ChatRow {
    ChatRow {
        id: conversation.id(),
        visitor: conversation.visitor().clone(),
        visitor_name,
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

fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

impl DeskState {
    fn router(&self) -> Arc<Router> {
        self.routing.router()
    }

    fn row(&self, conversation: &Conversation) -> ChatRow {
        let name = self
            .visitor_names
            .get(conversation.visitor())
            .map(|n| n.clone());
        row_of(conversation, name)
    }

    // ----------------------------------------------------------------------
    // Visitors.

    /// The visitor's open conversation, or a new one with the bot.
    pub(crate) async fn open_for_visitor(
        &self,
        visitor: &VisitorId,
        language: Option<&str>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<ChatRow, RoutingError> {
        let _one_at_a_time = self.routing.creating.lock().await;
        // In a cluster another node may have closed it: ask the store.
        if self.cluster.is_none() {
            if let Some(row) = self.visitor_chat(visitor) {
                // The shard saves a close before anyone hears of it, but the
                // desk's own record follows a moment later: a visitor who
                // saw the close and asks again at once must get a new chat.
                // A store that does not answer leaves the record as it is.
                match self.store.conversation(row.id).await {
                    Ok(stored) if stored.state().kind() == StateKind::Closed => {
                        self.track(&stored);
                    }
                    _ => return Ok(row),
                }
            }
        }
        // After a restart the store remembers what this process does not.
        let earlier = self
            .queries
            .visitor_conversations(&self.tenant, visitor, 5)
            .await?;
        if let Some(open) = earlier
            .into_iter()
            .find(|c| c.state().kind() != StateKind::Closed)
        {
            if open.state().kind() == StateKind::Queued {
                if self.routing_here() {
                    self.track(&open);
                    self.route_queued(&open).await;
                } else {
                    self.tell_router(open.id(), None);
                }
            }
            return self.summary(&open);
        }

        // Only a new conversation counts: reopening the page is free.
        self.limits.new_conversation(visitor, ip)?;
        let conversation =
            Conversation::open(self.tenant.clone(), visitor.clone(), Timestamp::now());
        let id = conversation.id();
        self.store.create_conversation(&conversation).await?;
        let started = self
            .dispatcher
            .submit_and_wait(Command::Change {
                conversation: id,
                change: Change::StartBot,
                by: Actor::Host,
            })
            .await?;
        // From the outcome, not the event, which comes a moment later; and
        // before the greeting, so its preview has a chat to land on.
        let summary = match started {
            Outcome::Changed { conversation, .. } => self.summary(&conversation)?,
            _ => self.summary(&conversation)?,
        };
        if let Some(greeting) = self.greeting_in(language) {
            self.dispatcher
                .submit_and_wait(Command::Send {
                    origin: Origin::Host,
                    message: NewMessage::new(id, Party::Bot, Body::text(greeting)),
                })
                .await?;
        }
        Ok(self.routing.chats.get(&id).map_or(summary, |c| c.clone()))
    }

    /// The bot's first words: the FAQ's greeting in the page's language,
    /// else in each of its languages (the visitor has said nothing yet), or
    /// the settings' own.
    fn greeting_in(&self, language: Option<&str>) -> Option<String> {
        let asked = self.bot.as_ref().and_then(|bot| {
            let language = language?;
            bot.languages()
                .iter()
                .any(|known| known == language)
                .then(|| bot.greeting(language).map(str::to_owned))
                .flatten()
        });
        if asked.is_some() {
            return asked;
        }
        let from_faq = self.bot.as_ref().and_then(|bot| {
            let greetings: Vec<&str> = bot
                .languages()
                .iter()
                .filter_map(|language| bot.greeting(language))
                .collect();
            (!greetings.is_empty()).then(|| greetings.join("\n"))
        });
        from_faq.or_else(|| self.settings.greeting.clone())
    }

    /// The row of a conversation a visitor opens. A follower answers from
    /// the store's copy (only the routing node tracks conversations).
    fn summary(&self, conversation: &Conversation) -> Result<ChatRow, RoutingError> {
        if !self.routing_here() {
            return Ok(self.row(conversation));
        }
        self.track(conversation);
        self.routing
            .chats
            .get(&conversation.id())
            .map(|c| c.clone())
            .ok_or(RoutingError::ClosedWhileOpening)
    }

    fn visitor_chat(&self, visitor: &VisitorId) -> Option<ChatRow> {
        let id = *self.routing.by_visitor.get(visitor)?;
        self.routing.chats.get(&id).map(|c| c.clone())
    }

    /// An open conversation's row. In a cluster it is read from the store,
    /// which every node shares, so its state and agent are current.
    pub(crate) async fn chat(&self, id: ConversationId) -> Result<ChatRow, RoutingError> {
        if self.cluster.is_none() {
            return self
                .routing
                .chats
                .get(&id)
                .map(|c| c.clone())
                .ok_or(RoutingError::NotOpen(id));
        }
        let conversation = self.store.conversation(id).await?;
        if conversation.state().kind() == StateKind::Closed {
            return Err(RoutingError::NotOpen(id));
        }
        Ok(self
            .routing
            .chats
            .get(&id)
            .map(|c| c.clone())
            .unwrap_or_else(|| self.row(&conversation)))
    }

    /// The open conversations, most recently active first (this node's view).
    pub(crate) fn local_chats(&self) -> Vec<ChatRow> {
        let mut chats: Vec<ChatRow> = self.routing.chats.iter().map(|c| c.clone()).collect();
        chats.sort_by_key(|c| std::cmp::Reverse(c.last_at.unwrap_or(c.opened_at)));
        chats
    }

    /// Closes a conversation for `by`; the shard checks that `by` may. The
    /// event frees its agent's seat.
    pub(crate) async fn close(
        &self,
        id: ConversationId,
        by: Actor,
        reason: Option<String>,
    ) -> Result<(), RoutingError> {
        self.dispatcher
            .submit_and_wait(Command::Change {
                conversation: id,
                change: Change::Close { reason },
                by,
            })
            .await?;
        Ok(())
    }

    /// Closes the conversations still with the bot in which nothing was said
    /// for `idle`: a shopper who asked and left. Conversations waiting for or
    /// served by an agent are the agents' to close. Returns how many closed.
    pub(crate) async fn close_idle_bot_chats(&self, idle: std::time::Duration) -> usize {
        let now = Timestamp::now();
        // Copied out first: no map guard is held across the closes below.
        let idle_chats: Vec<ConversationId> = self
            .routing
            .chats
            .iter()
            .filter(|c| c.state == StateKind::Bot)
            .filter(|c| now.saturating_since(c.last_at.unwrap_or(c.opened_at)) >= idle)
            .map(|c| c.id)
            .collect();
        let mut closed = 0;
        for id in idle_chats {
            let reason = format!("closed after {} s without a word", idle.as_secs());
            match self.close(id, Actor::Host, Some(reason)).await {
                Ok(()) => closed += 1,
                // It moved on meanwhile (handed off, closed): nothing to do.
                Err(e) => {
                    tracing::debug!(conversation = %id, error = %e, "idle bot chat not closed")
                }
            }
        }
        closed
    }

    /// Moves a conversation from `by` to `to`. The router moves the seat
    /// first (it refuses a full colleague), then the shard moves the
    /// conversation, refusing unless `by` serves it at that moment; a
    /// refusal puts the seat back.
    pub(crate) async fn transfer_here(
        &self,
        by: &cs_core::AgentId,
        id: ConversationId,
        to: cs_core::AgentId,
    ) -> Result<(), RoutingError> {
        if self.directory.agent(&to).is_none() {
            return Err(RoutingError::UnknownAgent(to.to_string()));
        }
        let router = self.router();
        // The router seats an assignment before the shard applies it, so
        // this refuses early without ever lagging the shard; the shard
        // still has the last word below.
        if router.agent_of(&self.tenant, id).as_ref() != Some(by) {
            return Err(RoutingError::NotServing(by.to_string()));
        }
        let transferred = router.transfer(&self.tenant, id, &to)?;
        let changed = self
            .dispatcher
            .submit_and_wait(Command::Change {
                conversation: id,
                change: Change::Transfer(to.clone()),
                by: Actor::Agent(by.clone()),
            })
            .await;
        if let Err(e) = changed {
            // The conversation did not move: move the router's seat back to
            // whoever the shard says still serves it.
            let serving = self
                .store
                .conversation(id)
                .await
                .ok()
                .and_then(|c| c.agent().cloned());
            if let Some(serving) = serving {
                if let Err(undo) = router.transfer(&self.tenant, id, &serving) {
                    tracing::error!(conversation = %id, error = %undo, "router and conversation disagree after a refused transfer");
                }
            }
            return Err(e.into());
        }
        self.assign(transferred.assigned).await;
        self.consoles.agents_changed();
        Ok(())
    }

    // ----------------------------------------------------------------------
    // Following the message path.

    pub(crate) async fn follow_path(
        self: Arc<Self>,
        mut events: tokio::sync::broadcast::Receiver<PathEvent>,
    ) {
        loop {
            let event = tokio::select! {
                _ = self.shutdown.cancelled() => break,
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
                    if self.routing_here() {
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
            cluster.tell_changed(conversation, handoff);
        }
    }

    pub(crate) async fn on_changed(&self, conversation: Conversation, handoff: Option<String>) {
        let id = conversation.id();
        self.track(&conversation);
        if let Some(reason) = handoff {
            if let Some(mut chat) = self.routing.chats.get_mut(&id) {
                chat.handoff_reason = Some(reason);
            }
        }
        self.route(&conversation).await;
        self.consoles.chat_changed(id);
        self.consoles.queue_changed();
        self.consoles.agents_changed();
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
    pub(crate) async fn assign(&self, mut assignments: Vec<Assignment>) {
        while let Some(assignment) = assignments.pop() {
            let result = self
                .dispatcher
                .submit_and_wait(Command::Change {
                    conversation: assignment.conversation,
                    change: Change::Assign(assignment.agent.clone()),
                    by: Actor::Host,
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
    pub(crate) async fn change(&self, id: ConversationId, change: Change) {
        let command = Command::Change {
            conversation: id,
            change,
            by: Actor::Host,
        };
        if let Err(e) = self.dispatcher.submit_and_wait(command).await {
            tracing::warn!(conversation = %id, error = %e, "state change refused");
        }
    }

    /// Records a conversation's current state; a closed one leaves the desk.
    fn track(&self, conversation: &Conversation) {
        let id = conversation.id();
        if conversation.state().kind() == StateKind::Closed {
            if let Some((_, chat)) = self.routing.chats.remove(&id) {
                self.routing
                    .by_visitor
                    .remove_if(&chat.visitor, |_, open| *open == id);
                self.consoles.chat_closed(id);
            }
            return;
        }
        let row = self.row(conversation);
        if row.state != StateKind::Queued {
            // Out of the queue, even if only between two coalesced frames:
            // back in it, the visitor hears their place again.
            self.consoles.left_queue(id);
        }
        self.routing
            .chats
            .entry(id)
            .and_modify(|chat| {
                if row.state != StateKind::Queued {
                    // The place it had is no longer true; the caller marks
                    // the row changed, so consoles hear it.
                    chat.queue_position = None;
                }
                chat.state = row.state;
                chat.agent = row.agent.clone();
                if row.visitor_name.is_some() {
                    chat.visitor_name = row.visitor_name.clone();
                }
            })
            .or_insert(row);
        self.routing
            .by_visitor
            .insert(conversation.visitor().clone(), id);
    }

    /// A stored message: the consoles' preview follows it.
    pub(crate) fn note_message(&self, message: &Message) {
        let text = match &message.body {
            Body::Text { text, .. } => shorten(text, 80),
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
            cluster.tell_preview(message.conversation, text, from, message.created_at);
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
    pub(crate) fn preview(&self, id: ConversationId, text: String, from: String, at: Timestamp) {
        if let Some(mut chat) = self.routing.chats.get_mut(&id) {
            chat.last_text = Some(text);
            chat.last_from = Some(from);
            chat.last_at = Some(at);
        } else {
            return;
        }
        self.consoles.chat_changed(id);
    }

    // ----------------------------------------------------------------------
    // Recovery and repair.

    /// Puts the conversations left open (by a previous run, or by the node
    /// that routed before this one) back on the desk: queued ones into the
    /// queue, assigned ones back with their agent, waiting ones to the bot.
    /// An agent not connected keeps their conversations for the grace
    /// period. Returns how many it found; 0 on a node that does not route.
    pub(crate) async fn recover(self: &Arc<Self>) -> usize {
        let found = self.reread_open(true).await;
        self.reconcile_all_agents().await;
        found
    }

    /// Makes the router and the consoles agree with the store's open
    /// conversations. `starting`: also start the bot where a conversation
    /// was opened but never started (safe only before anyone else may).
    pub(crate) async fn reread_open(&self, starting: bool) -> usize {
        if !self.routing_here() {
            return 0;
        }
        let open = match self
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
            let known = self
                .routing
                .chats
                .get(&conversation.id())
                .map(|c| (c.state, c.agent.clone()));
            self.track(&conversation);
            if starting && conversation.state().kind() == StateKind::Waiting {
                self.change(conversation.id(), Change::StartBot).await;
            } else {
                self.route(&conversation).await;
            }
            // Only what the reread changed is news for the consoles.
            if known != Some((conversation.state().kind(), conversation.agent().cloned())) {
                self.consoles.chat_changed(conversation.id());
            }
        }
        // What the desk holds that is no longer open (closed while a word
        // was lost) is reread one by one: it may also have opened since.
        let snapshot = self.router().snapshot(&self.tenant);
        let held: HashSet<ConversationId> = snapshot
            .queue
            .into_iter()
            .chain(snapshot.agents.into_iter().flat_map(|a| a.active))
            .chain(self.routing.chats.iter().map(|c| *c.key()))
            .filter(|id| !open_ids.contains(id))
            .collect();
        for id in held {
            match self.store.conversation(id).await {
                Ok(conversation) => {
                    self.track(&conversation);
                    self.route(&conversation).await;
                    self.consoles.chat_changed(id);
                }
                Err(e) => tracing::warn!(conversation = %id, error = %e, "could not reread"),
            }
        }
        self.consoles.queue_changed();
        self.consoles.agents_changed();
        found
    }

    /// The directory changed: the router registers, updates and removes
    /// agents to match; a removed agent's conversations go back to the queue.
    pub(crate) async fn follow_directory_change(self: &Arc<Self>) {
        if !self.routing_here() {
            return;
        }
        let records = self.directory.agents();
        let synced = match self.router().sync_agents(&self.tenant, &records) {
            Ok(synced) => synced,
            Err(e) => {
                tracing::warn!(error = %e, "the directory's agents could not be loaded into the router");
                return;
            }
        };
        if !synced.added.is_empty() || !synced.removed.is_empty() {
            tracing::info!(added = ?synced.added, removed = ?synced.removed, "agent directory changed");
        }
        for id in synced.requeued {
            self.change(id, Change::Requeue).await;
        }
        self.assign(synced.assigned).await;
        for agent in synced.added {
            // Someone added while already connected starts online.
            let connected = self.agent_connected(&agent).await;
            self.reconcile_agent(&agent, connected).await;
        }
        self.consoles.agents_changed();
        self.consoles.queue_changed();
    }

    /// Starts from a fresh router (this node began or stopped routing).
    #[cfg(feature = "redis")]
    pub(crate) fn reset_router(&self) -> Result<(), RouterError> {
        let router = fresh_router(&self.tenant, &self.settings, self.directory.as_ref())?;
        self.routing.replace(router);
        Ok(())
    }

    /// This node no longer routes: it forgets what only a routing node keeps.
    #[cfg(feature = "redis")]
    pub(crate) fn forget_chats(&self) {
        self.routing.chats.clear();
        self.routing.by_visitor.clear();
    }
}
