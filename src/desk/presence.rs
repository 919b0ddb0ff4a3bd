//! Agents' presence: what each chose in the console (online or away), and
//! whether they have a console open anywhere, with one grace mechanism for
//! one node and for many.
//!
//! The router hears "offline" only when an agent has had no console open
//! for the whole grace period: a page reload, or a node dying under them
//! while the load balancer sends them to another, is not a departure. One
//! timer runs per absence; coming back cancels it (its generation no longer
//! matches). Where "connected" comes from is the only difference between a
//! single node (this pool) and a cluster (the shared presence in Redis).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::broadcast::error::RecvError;

use cs_core::router::Presence;
use cs_core::{AgentId, Party};
use cs_transport::{Change, PresenceEvent};

use super::error::PresenceError;
use super::state::DeskState;

/// Presence choices and the absences being waited out.
#[derive(Default)]
pub(crate) struct AgentPresence {
    /// What each agent chose in the console; online until they choose.
    chosen: DashMap<AgentId, Presence>,
    /// Agents with no console open anywhere, and the generation of the
    /// timer that will set them offline.
    leaving: DashMap<AgentId, u64>,
    generation: AtomicU64,
}

impl AgentPresence {
    /// What the agent chose; online until they choose.
    pub fn chosen(&self, agent: &AgentId) -> Presence {
        self.chosen.get(agent).map_or(Presence::Online, |p| *p)
    }

    /// Forgets the absences being waited out (a new router starts over).
    #[cfg(feature = "redis")]
    pub fn clear_absences(&self) {
        self.leaving.clear();
    }
}

impl DeskState {
    /// The agent chose online or away in the console.
    pub(crate) async fn choose_presence_here(
        self: &Arc<Self>,
        agent: &AgentId,
        presence: Presence,
    ) -> Result<(), PresenceError> {
        if presence == Presence::Offline {
            return Err(PresenceError::OfflineIsNotAChoice);
        }
        self.presence.chosen.insert(agent.clone(), presence);
        if self.agent_connected(agent).await {
            self.set_presence(agent, presence).await?;
        }
        Ok(())
    }

    /// Whether any console of the agent is open, on any node. When the
    /// cluster's presence cannot be read, yes: an outage of Redis must not
    /// send every agent's visitors back to the queue.
    pub(crate) async fn agent_connected(&self, agent: &AgentId) -> bool {
        match &self.cluster {
            None => self.connected_here(agent),
            Some(cluster) => cluster.agent_online(&self.tenant, agent).await,
        }
    }

    /// Brings one agent's routing in line with whether they are connected:
    /// present agents get what they chose at once, absent ones go offline
    /// after the grace period unless they come back first.
    pub(crate) async fn reconcile_agent(self: &Arc<Self>, agent: &AgentId, connected: bool) {
        if !self.routing_here() {
            return;
        }
        let status = self
            .routing
            .router()
            .snapshot(&self.tenant)
            .agents
            .into_iter()
            .find(|a| a.profile.id == *agent);
        let Some(status) = status else { return };
        if connected {
            self.presence.leaving.remove(agent);
            let wanted = self.presence.chosen(agent);
            if status.presence != wanted {
                if let Err(e) = self.set_presence(agent, wanted).await {
                    tracing::warn!(%agent, error = %e, "presence not applied");
                }
            }
            return;
        }
        let nothing_to_take = status.presence == Presence::Offline && status.active.is_empty();
        if nothing_to_take || self.presence.leaving.contains_key(agent) {
            return;
        }
        let generation = self.presence.generation.fetch_add(1, Ordering::Relaxed);
        self.presence.leaving.insert(agent.clone(), generation);
        let desk = Arc::clone(self);
        let agent = agent.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = desk.shutdown.cancelled() => return,
                _ = tokio::time::sleep(desk.settings.grace) => {}
            }
            // Still the same absence? A return, or a new router, removed it.
            let same = desk
                .presence
                .leaving
                .remove_if(&agent, |_, g| *g == generation)
                .is_some();
            if same && desk.routing_here() && !desk.agent_connected(&agent).await {
                tracing::info!(%agent, "agent gone for the grace period; their conversations go back to the queue");
                if let Err(e) = desk.set_presence(&agent, Presence::Offline).await {
                    tracing::warn!(%agent, error = %e, "presence not applied");
                }
            }
        });
    }

    /// Every agent of the directory, as after a restart, a take-over or
    /// missed presence events.
    pub(crate) async fn reconcile_all_agents(self: &Arc<Self>) {
        let online = match &self.cluster {
            Some(cluster) => match cluster.online_agents(&self.tenant).await {
                Some(online) => Some(online),
                // Nothing changes while the presence cannot be read.
                None => return,
            },
            None => None,
        };
        for agent in self.agent_ids() {
            let connected = match &online {
                Some(online) => online.contains(&agent),
                None => self.connected_here(&agent),
            };
            self.reconcile_agent(&agent, connected).await;
        }
    }

    pub(crate) async fn set_presence(
        &self,
        agent: &AgentId,
        presence: Presence,
    ) -> Result<(), PresenceError> {
        let rebalanced = self
            .routing
            .router()
            .set_presence(&self.tenant, agent, presence)?;
        // Requeues first: the router may already have given some of them to
        // someone else in `assigned`, which needs them queued.
        for id in rebalanced.requeued {
            self.change(id, Change::Requeue).await;
        }
        self.assign(rebalanced.assigned).await;
        self.consoles.agents_changed();
        self.consoles.queue_changed();
        Ok(())
    }

    /// Follows this node's pool: an agent's first console opened or last
    /// one closed.
    pub(crate) async fn follow_presence(
        self: Arc<Self>,
        mut presence: tokio::sync::broadcast::Receiver<PresenceEvent>,
    ) {
        loop {
            let event = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                event = presence.recv() => event,
            };
            match event {
                Ok(PresenceEvent {
                    tenant,
                    party: Party::Agent(agent),
                    ..
                }) if tenant == self.tenant => {
                    if let Some(cluster) = &self.cluster {
                        cluster.share_presence(&self, &agent).await;
                        continue;
                    }
                    // The pool's state now, not the event's: a first tab's
                    // event and a last tab's can arrive in either order.
                    let connected = self.connected_here(&agent);
                    self.reconcile_agent(&agent, connected).await;
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => match &self.cluster {
                    Some(cluster) => cluster.share_all_presence(&self).await,
                    None => self.reconcile_all_agents().await,
                },
                Err(RecvError::Closed) => break,
            }
        }
    }
}
