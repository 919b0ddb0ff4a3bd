//! The router: agent presence and capacity, the waiting queue, assignment.
//!
//! Each tenant has one *desk* (its agents, its queue, its seats) behind one
//! mutex. Every decision that could overfill an agent (assign, transfer,
//! return to queue) happens inside that lock, so an agent's capacity holds
//! however many tasks call in at once. Tenants never share a lock, so one
//! shop's flood does not slow another's routing.
//!
//! The router decides; it does not own the [`Conversation`](crate::Conversation).
//! Each call returns what it did ([`Assignment`]s, requeued conversations) and
//! the caller applies that to the conversation and tells the parties.
//!
//! All methods are synchronous and short (no I/O, no `.await` under the lock),
//! so they are safe to call from async code.

mod strategy;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use dashmap::DashMap;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::directory::AgentRecord;
use crate::ids::{AgentId, ConversationId, Skill, TenantId, VisitorId};

pub use strategy::{
    AssignmentStrategy, BuiltinStrategy, Candidate, LeastBusy, RoundRobin, SkillMatch, Sticky,
    UnknownStrategy,
};

/// Whether an agent takes new conversations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Takes new conversations up to their capacity.
    Online,
    /// Keeps their conversations but takes no new ones.
    Away,
    /// Gone: their conversations go back to the head of the queue.
    Offline,
}

/// An agent as the router knows them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentProfile {
    /// The agent.
    pub id: AgentId,
    /// How many conversations they may serve at once. Zero is allowed (a
    /// supervisor who only takes transfers is still limited: zero means none).
    pub max_concurrent: usize,
    /// Skills and groups, for [`SkillMatch`].
    pub skills: BTreeSet<Skill>,
}

impl AgentProfile {
    /// An agent with `max_concurrent` seats and no skills.
    pub fn new(id: AgentId, max_concurrent: usize) -> Self {
        Self {
            id,
            max_concurrent,
            skills: BTreeSet::new(),
        }
    }

    /// Adds a skill or group.
    pub fn with_skill(mut self, skill: Skill) -> Self {
        self.skills.insert(skill);
        self
    }
}

/// A conversation asking for a human.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueRequest {
    /// The conversation.
    pub conversation: ConversationId,
    /// Its visitor.
    pub visitor: VisitorId,
    /// A skill the agent should have, for [`SkillMatch`].
    pub skill: Option<Skill>,
    /// The agent to prefer, for [`Sticky`]; usually
    /// [`Conversation::last_agent`](crate::Conversation::last_agent).
    pub preferred_agent: Option<AgentId>,
}

impl QueueRequest {
    /// A request with no skill and no preferred agent.
    pub fn new(conversation: ConversationId, visitor: VisitorId) -> Self {
        Self {
            conversation,
            visitor,
            skill: None,
            preferred_agent: None,
        }
    }
}

/// The router gave a conversation to an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The conversation.
    pub conversation: ConversationId,
    /// Its visitor.
    pub visitor: VisitorId,
    /// The agent now serving it.
    pub agent: AgentId,
}

/// What [`Router::enqueue`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Enqueued {
    /// The new conversation's place in the queue (1 is next), or `None` if an
    /// agent took it at once.
    pub position: Option<usize>,
    /// Every assignment the call made: usually none, or just the new
    /// conversation, but a custom strategy may also place an earlier one.
    pub assigned: Vec<Assignment>,
}

impl Enqueued {
    /// The agent who took `conversation` in this call, if any.
    pub fn agent_for(&self, conversation: ConversationId) -> Option<&AgentId> {
        self.assigned
            .iter()
            .find(|a| a.conversation == conversation)
            .map(|a| &a.agent)
    }
}

/// What [`Router::transfer`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transferred {
    /// The agent the conversation came from.
    pub from: AgentId,
    /// Conversations assigned into the seat that agent freed.
    pub assigned: Vec<Assignment>,
}

/// What an agent's change of presence or capacity did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rebalanced {
    /// Conversations taken from the agent and put at the head of the queue,
    /// in their queue order. Apply these first.
    pub requeued: Vec<ConversationId>,
    /// Conversations then assigned (possibly some of `requeued`, to another agent).
    pub assigned: Vec<Assignment>,
}

/// What [`Router::sync_agents`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Agents registered by the sync (offline, as with
    /// [`Router::register_agent`]), by id.
    pub added: Vec<AgentId>,
    /// Agents the sync took off the desk, by id.
    pub removed: Vec<AgentId>,
    /// The removed agents' conversations, put at the head of the queue in
    /// this order (each agent's oldest first, agents by id). Apply these first.
    pub requeued: Vec<ConversationId>,
    /// Conversations then assigned: some of `requeued`, or queued ones that a
    /// new seat or skill now suits.
    pub assigned: Vec<Assignment>,
}

/// Where a released conversation was.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReleasedFrom {
    /// It was waiting in the queue.
    Queue,
    /// It was with this agent.
    Agent(AgentId),
}

/// What [`Router::release`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Released {
    /// Where the conversation was.
    pub from: ReleasedFrom,
    /// Conversations assigned into the freed seat.
    pub assigned: Vec<Assignment>,
}

/// One agent's state, as read by [`Router::agents`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Their profile.
    pub profile: AgentProfile,
    /// Their presence.
    pub presence: Presence,
    /// Their conversations, oldest assignment first.
    pub active: Vec<ConversationId>,
}

/// A consistent picture of one tenant's desk, taken under its lock.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeskSnapshot {
    /// Every registered agent, by id.
    pub agents: Vec<AgentStatus>,
    /// The waiting queue, head first.
    pub queue: Vec<ConversationId>,
}

/// The router refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouterError {
    /// No such agent in this tenant.
    #[error(
        "unknown agent {agent} in tenant {tenant}; register them with Router::register_agent first"
    )]
    UnknownAgent {
        /// The tenant asked about.
        tenant: TenantId,
        /// The agent.
        agent: AgentId,
    },
    /// The agent is already registered.
    #[error("agent {agent} is already registered in tenant {tenant}; change them with set_capacity, set_skills or set_presence")]
    AgentExists {
        /// The tenant.
        tenant: TenantId,
        /// The agent.
        agent: AgentId,
    },
    /// [`Router::sync_agents`] was given two records with one id; nothing
    /// was changed.
    #[error("agent {agent} is listed twice in the records synced for tenant {tenant}; nothing was changed")]
    DuplicateAgent {
        /// The tenant.
        tenant: TenantId,
        /// The agent listed twice.
        agent: AgentId,
    },
    /// The agent is not online.
    #[error("agent {agent} is {presence:?}, not online, and cannot take conversations")]
    AgentUnavailable {
        /// The agent.
        agent: AgentId,
        /// Their presence.
        presence: Presence,
    },
    /// The agent has no free seat.
    #[error("agent {agent} is at capacity ({active} of {max} conversations)")]
    AtCapacity {
        /// The agent.
        agent: AgentId,
        /// Their conversations now.
        active: usize,
        /// Their limit.
        max: usize,
    },
    /// The conversation is already queued or assigned.
    #[error("conversation {conversation} is already queued or assigned in tenant {tenant}")]
    AlreadyRouted {
        /// The tenant.
        tenant: TenantId,
        /// The conversation.
        conversation: ConversationId,
    },
    /// The conversation is neither queued nor assigned (here).
    #[error("conversation {conversation} is not queued or assigned in tenant {tenant}")]
    NotRouted {
        /// The tenant.
        tenant: TenantId,
        /// The conversation.
        conversation: ConversationId,
    },
    /// A transfer of a conversation that is waiting, not with an agent.
    #[error("conversation {conversation} is waiting in the queue, not with an agent; there is nobody to transfer it from")]
    NotAssigned {
        /// The conversation.
        conversation: ConversationId,
    },
    /// A transfer to the agent who already has it.
    #[error("conversation {conversation} is already with agent {agent}")]
    SameAgent {
        /// The conversation.
        conversation: ConversationId,
        /// The agent.
        agent: AgentId,
    },
}

/// Agent presence, capacity and the waiting queue, for every tenant.
///
/// ```
/// use cs_core::router::{AgentProfile, LeastBusy, Presence, QueueRequest, Router};
/// use cs_core::{AgentId, ConversationId, TenantId, VisitorId};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let router = Router::new(LeastBusy);
/// let shop = TenantId::new("shop")?;
/// let alice = AgentId::new("alice")?;
/// router.register_agent(&shop, AgentProfile::new(alice.clone(), 1))?;
/// router.set_presence(&shop, &alice, Presence::Online)?;
///
/// let first = QueueRequest::new(ConversationId::new(), VisitorId::new("v1")?);
/// let second = QueueRequest::new(ConversationId::new(), VisitorId::new("v2")?);
/// let taken = router.enqueue(&shop, first.clone())?;
/// assert_eq!(taken.agent_for(first.conversation), Some(&alice));
/// // Alice's one seat is taken: the second visitor waits, first in line.
/// assert_eq!(router.enqueue(&shop, second.clone())?.position, Some(1));
///
/// // Alice finishes the first chat and gets the second at once.
/// let released = router.release(&shop, first.conversation)?;
/// assert_eq!(released.assigned[0].conversation, second.conversation);
/// # Ok(())
/// # }
/// ```
pub struct Router {
    strategy: Box<dyn AssignmentStrategy>,
    /// One desk per tenant. The map only finds the desk; the desk's own mutex
    /// guards its state, so no map guard is held while routing.
    desks: DashMap<TenantId, Arc<Mutex<Desk>>>,
}

impl Router {
    /// A router that assigns with `strategy`.
    pub fn new(strategy: impl AssignmentStrategy) -> Self {
        Self {
            strategy: Box::new(strategy),
            desks: DashMap::new(),
        }
    }

    /// The tenant's desk, created on first use: visitors may queue before any
    /// agent has logged in.
    fn desk(&self, tenant: &TenantId) -> Arc<Mutex<Desk>> {
        if let Some(desk) = self.desks.get(tenant) {
            return Arc::clone(&desk);
        }
        Arc::clone(&self.desks.entry(tenant.clone()).or_default())
    }

    /// Adds an agent, offline until [`Router::set_presence`] says otherwise.
    ///
    /// # Errors
    /// [`RouterError::AgentExists`] if the id is already registered here.
    pub fn register_agent(
        &self,
        tenant: &TenantId,
        profile: AgentProfile,
    ) -> Result<(), RouterError> {
        let desk = self.desk(tenant);
        let mut desk = desk.lock();
        if desk.agents.contains_key(&profile.id) {
            return Err(RouterError::AgentExists {
                tenant: tenant.clone(),
                agent: profile.id,
            });
        }
        desk.agents
            .insert(profile.id.clone(), AgentSlot::offline(profile));
        Ok(())
    }

    /// Sets an agent's presence. Going online fills their free seats from the
    /// queue; going offline returns their conversations to the head of the
    /// queue (oldest first) and offers them to the other agents.
    ///
    /// # Errors
    /// [`RouterError::UnknownAgent`].
    pub fn set_presence(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
        presence: Presence,
    ) -> Result<Rebalanced, RouterError> {
        let desk = self.desk(tenant);
        let mut desk = desk.lock();
        let slot = desk.slot_mut(tenant, agent)?;
        slot.presence = presence;
        let mut requeued = Vec::new();
        if presence == Presence::Offline {
            requeued = std::mem::take(&mut slot.active);
            desk.requeue_at_head(&requeued);
        }
        let assigned = desk.fill(self.strategy.as_ref());
        Ok(Rebalanced { requeued, assigned })
    }

    /// Takes an agent off the desk, because the host no longer lists them.
    /// Their conversations go back to the head of the queue (oldest first),
    /// as when they go offline, and are offered to the other agents.
    ///
    /// # Errors
    /// [`RouterError::UnknownAgent`].
    pub fn remove_agent(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> Result<Rebalanced, RouterError> {
        let desk = self.desk(tenant);
        let mut desk = desk.lock();
        let Some(slot) = desk.agents.remove(agent) else {
            return Err(RouterError::UnknownAgent {
                tenant: tenant.clone(),
                agent: agent.clone(),
            });
        };
        desk.requeue_at_head(&slot.active);
        let assigned = desk.fill(self.strategy.as_ref());
        Ok(Rebalanced {
            requeued: slot.active,
            assigned,
        })
    }

    /// Replaces an agent's skills and groups. Conversations they already
    /// serve stay with them; a new skill may let queued work be assigned,
    /// which the result lists.
    ///
    /// # Errors
    /// [`RouterError::UnknownAgent`].
    pub fn set_skills(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
        skills: Vec<Skill>,
    ) -> Result<Vec<Assignment>, RouterError> {
        let desk = self.desk(tenant);
        let mut desk = desk.lock();
        desk.slot_mut(tenant, agent)?.profile.skills = skills.into_iter().collect();
        Ok(desk.fill(self.strategy.as_ref()))
    }

    /// Makes the tenant's agents exactly `records`, as an
    /// [`AgentDirectory`](crate::AgentDirectory) lists them: new agents are
    /// registered (offline, until [`Router::set_presence`]), the capacity
    /// and skills of listed ones are updated (presence and conversations are
    /// kept; a lower capacity takes nothing away), and agents not listed are
    /// removed as by [`Router::remove_agent`]. The queue is then offered to
    /// whoever is free. [`AgentRecord::name`] and [`AgentRecord::role`] are
    /// not the router's business and are ignored.
    ///
    /// It all happens under one lock of the tenant's desk, so no assignment
    /// in between can see half a sync (an old capacity beside a new one).
    ///
    /// ```
    /// use cs_core::router::{LeastBusy, Router};
    /// use cs_core::{AgentDirectory, AgentId, AgentRecord, MemoryDirectory, TenantId};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let shop = TenantId::new("shop")?;
    /// let router = Router::new(LeastBusy);
    /// let directory = MemoryDirectory::from_records([
    ///     AgentRecord::new(AgentId::new("alice")?, "Alice", 3),
    ///     AgentRecord::new(AgentId::new("bob")?, "Bob", 2),
    /// ])?;
    /// let synced = router.sync_agents(&shop, &directory.agents())?;
    /// assert_eq!(synced.added.len(), 2);
    ///
    /// // Bob leaves the shop: the next sync takes him off the desk.
    /// directory.remove(&AgentId::new("bob")?);
    /// let synced = router.sync_agents(&shop, &directory.agents())?;
    /// assert_eq!(synced.removed, vec![AgentId::new("bob")?]);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`RouterError::DuplicateAgent`] if an id appears twice in `records`;
    /// nothing is changed then.
    pub fn sync_agents(
        &self,
        tenant: &TenantId,
        records: &[AgentRecord],
    ) -> Result<Synced, RouterError> {
        let mut listed: BTreeMap<&AgentId, &AgentRecord> = BTreeMap::new();
        for record in records {
            if listed.insert(&record.id, record).is_some() {
                return Err(RouterError::DuplicateAgent {
                    tenant: tenant.clone(),
                    agent: record.id.clone(),
                });
            }
        }
        let desk = self.desk(tenant);
        let mut desk = desk.lock();
        let removed: Vec<AgentId> = desk
            .agents
            .keys()
            .filter(|id| !listed.contains_key(id))
            .cloned()
            .collect();
        let mut requeued = Vec::new();
        for id in &removed {
            if let Some(slot) = desk.agents.remove(id) {
                requeued.extend(slot.active);
            }
        }
        desk.requeue_at_head(&requeued);

        let mut added = Vec::new();
        for (id, record) in listed {
            let skills: BTreeSet<Skill> = record.skills.iter().cloned().collect();
            match desk.agents.get_mut(id) {
                Some(slot) => {
                    slot.profile.max_concurrent = record.capacity;
                    slot.profile.skills = skills;
                }
                None => {
                    let profile = AgentProfile {
                        id: id.clone(),
                        max_concurrent: record.capacity,
                        skills,
                    };
                    desk.agents.insert(id.clone(), AgentSlot::offline(profile));
                    added.push(id.clone());
                }
            }
        }
        let assigned = desk.fill(self.strategy.as_ref());
        Ok(Synced {
            added,
            removed,
            requeued,
            assigned,
        })
    }

    /// Changes how many conversations an agent may serve at once. Raising it
    /// fills the new seats; lowering it below their current load takes nothing
    /// away, they simply get no new conversation until they are below it.
    ///
    /// # Errors
    /// [`RouterError::UnknownAgent`].
    pub fn set_capacity(
        &self,
        tenant: &TenantId,
        agent: &AgentId,
        max_concurrent: usize,
    ) -> Result<Vec<Assignment>, RouterError> {
        let desk = self.desk(tenant);
        let mut desk = desk.lock();
        desk.slot_mut(tenant, agent)?.profile.max_concurrent = max_concurrent;
        Ok(desk.fill(self.strategy.as_ref()))
    }

    /// Asks for a human. The conversation goes to the back of the queue, and
    /// the queue is then offered to free agents in order.
    ///
    /// # Errors
    /// [`RouterError::AlreadyRouted`] if it is already queued or assigned.
    pub fn enqueue(
        &self,
        tenant: &TenantId,
        request: QueueRequest,
    ) -> Result<Enqueued, RouterError> {
        let desk = self.desk(tenant);
        let mut desk = desk.lock();
        let conversation = request.conversation;
        if desk.seats.contains_key(&conversation) || desk.position(conversation).is_some() {
            return Err(RouterError::AlreadyRouted {
                tenant: tenant.clone(),
                conversation,
            });
        }
        desk.queue.push_back(request);
        let assigned = desk.fill(self.strategy.as_ref());
        let position = desk.position(conversation);
        Ok(Enqueued { position, assigned })
    }

    /// Takes a conversation out of routing, because it closed or the visitor
    /// left. A freed seat is offered to the queue at once.
    ///
    /// # Errors
    /// [`RouterError::NotRouted`] if it is neither queued nor assigned.
    pub fn release(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
    ) -> Result<Released, RouterError> {
        let desk = self.desk(tenant);
        let mut desk = desk.lock();
        if let Some(seat) = desk.seats.remove(&conversation) {
            if let Some(slot) = desk.agents.get_mut(&seat.agent) {
                slot.active.retain(|c| *c != conversation);
            }
            let assigned = desk.fill(self.strategy.as_ref());
            return Ok(Released {
                from: ReleasedFrom::Agent(seat.agent),
                assigned,
            });
        }
        match desk.position(conversation) {
            Some(position) => {
                desk.queue.remove(position - 1);
                Ok(Released {
                    from: ReleasedFrom::Queue,
                    assigned: Vec::new(),
                })
            }
            None => Err(RouterError::NotRouted {
                tenant: tenant.clone(),
                conversation,
            }),
        }
    }

    /// Moves an assigned conversation to agent `to`, who must be online and
    /// below capacity. The seat it frees is offered to the queue.
    ///
    /// # Errors
    /// [`RouterError::NotRouted`], [`RouterError::NotAssigned`],
    /// [`RouterError::SameAgent`], [`RouterError::UnknownAgent`],
    /// [`RouterError::AgentUnavailable`] or [`RouterError::AtCapacity`].
    pub fn transfer(
        &self,
        tenant: &TenantId,
        conversation: ConversationId,
        to: &AgentId,
    ) -> Result<Transferred, RouterError> {
        let desk = self.desk(tenant);
        let mut desk = desk.lock();
        let Some(from) = desk.seats.get(&conversation).map(|s| s.agent.clone()) else {
            if desk.position(conversation).is_some() {
                return Err(RouterError::NotAssigned { conversation });
            }
            return Err(RouterError::NotRouted {
                tenant: tenant.clone(),
                conversation,
            });
        };
        if from == *to {
            return Err(RouterError::SameAgent {
                conversation,
                agent: from,
            });
        }
        let target = desk.slot_mut(tenant, to)?;
        if target.presence != Presence::Online {
            return Err(RouterError::AgentUnavailable {
                agent: to.clone(),
                presence: target.presence,
            });
        }
        if !target.has_free_seat() {
            return Err(RouterError::AtCapacity {
                agent: to.clone(),
                active: target.active.len(),
                max: target.profile.max_concurrent,
            });
        }
        target.active.push(conversation);
        if let Some(source) = desk.agents.get_mut(&from) {
            source.active.retain(|c| *c != conversation);
        }
        if let Some(seat) = desk.seats.get_mut(&conversation) {
            seat.agent = to.clone();
        }
        let assigned = desk.fill(self.strategy.as_ref());
        Ok(Transferred { from, assigned })
    }

    /// Seats a conversation with the agent it is already assigned to, as
    /// the store says, without asking the strategy: how a router that starts
    /// after the assignment was made (a restart, or another node taking over
    /// the routing) adopts it, so the agent keeps the chat and their seat is
    /// counted.
    ///
    /// The seat is taken whatever the agent's presence and load: the
    /// assignment exists. An agent who is offline keeps it until the host
    /// says so with [`Router::set_presence`], which returns it to the queue;
    /// one above capacity gets nothing new until below it. A conversation
    /// waiting in the queue leaves it for the seat.
    ///
    /// # Errors
    /// [`RouterError::UnknownAgent`]; [`RouterError::AlreadyRouted`] if it
    /// is already seated (with this agent or another).
    pub fn restore(
        &self,
        tenant: &TenantId,
        request: QueueRequest,
        agent: &AgentId,
    ) -> Result<(), RouterError> {
        let desk = self.desk(tenant);
        let mut desk = desk.lock();
        let conversation = request.conversation;
        if desk.seats.contains_key(&conversation) {
            return Err(RouterError::AlreadyRouted {
                tenant: tenant.clone(),
                conversation,
            });
        }
        desk.slot_mut(tenant, agent)?.active.push(conversation);
        if let Some(position) = desk.position(conversation) {
            desk.queue.remove(position - 1);
        }
        desk.seats.insert(
            conversation,
            Seat {
                agent: agent.clone(),
                request,
            },
        );
        Ok(())
    }

    /// The conversation's place in its tenant's queue (1 is next), or `None`
    /// if it is not waiting.
    pub fn position(&self, tenant: &TenantId, conversation: ConversationId) -> Option<usize> {
        let desk = self.desks.get(tenant).map(|d| Arc::clone(&d))?;
        let position = desk.lock().position(conversation);
        position
    }

    /// The agent serving the conversation, if it is assigned.
    pub fn agent_of(&self, tenant: &TenantId, conversation: ConversationId) -> Option<AgentId> {
        let desk = self.desks.get(tenant).map(|d| Arc::clone(&d))?;
        let agent = desk
            .lock()
            .seats
            .get(&conversation)
            .map(|s| s.agent.clone());
        agent
    }

    /// The whole desk of one tenant, read atomically: agents with their
    /// conversations, and the queue in order. Use it to show queue positions
    /// to every waiting visitor in one pass.
    pub fn snapshot(&self, tenant: &TenantId) -> DeskSnapshot {
        let Some(desk) = self.desks.get(tenant).map(|d| Arc::clone(&d)) else {
            return DeskSnapshot::default();
        };
        let desk = desk.lock();
        DeskSnapshot {
            agents: desk
                .agents
                .values()
                .map(|slot| AgentStatus {
                    profile: slot.profile.clone(),
                    presence: slot.presence,
                    active: slot.active.clone(),
                })
                .collect(),
            queue: desk.queue.iter().map(|r| r.conversation).collect(),
        }
    }
}

/// One tenant's routing state. Only ever touched under its mutex.
#[derive(Default)]
struct Desk {
    /// By id, so candidates come in a stable order.
    agents: BTreeMap<AgentId, AgentSlot>,
    /// Waiting conversations, head first.
    queue: VecDeque<QueueRequest>,
    /// Assigned conversations. The request is kept so that a conversation
    /// returned to the queue keeps its skill and preferred agent.
    seats: HashMap<ConversationId, Seat>,
    /// Counts assignments, to order agents by how recently they got one.
    clock: u64,
}

struct AgentSlot {
    profile: AgentProfile,
    presence: Presence,
    active: Vec<ConversationId>,
    last_assigned: u64,
}

impl AgentSlot {
    /// A newly registered agent: offline, serving nobody.
    fn offline(profile: AgentProfile) -> Self {
        Self {
            profile,
            presence: Presence::Offline,
            active: Vec::new(),
            last_assigned: 0,
        }
    }

    fn has_free_seat(&self) -> bool {
        self.active.len() < self.profile.max_concurrent
    }

    fn can_take(&self) -> bool {
        self.presence == Presence::Online && self.has_free_seat()
    }
}

struct Seat {
    agent: AgentId,
    request: QueueRequest,
}

impl Desk {
    fn slot_mut(
        &mut self,
        tenant: &TenantId,
        agent: &AgentId,
    ) -> Result<&mut AgentSlot, RouterError> {
        self.agents
            .get_mut(agent)
            .ok_or_else(|| RouterError::UnknownAgent {
                tenant: tenant.clone(),
                agent: agent.clone(),
            })
    }

    /// 1-based. A linear scan: queues are hundreds long, not millions, and a
    /// host that shows every position uses one `snapshot` instead.
    fn position(&self, conversation: ConversationId) -> Option<usize> {
        self.queue
            .iter()
            .position(|r| r.conversation == conversation)
            .map(|i| i + 1)
    }

    /// Puts assigned conversations back at the head of the queue, in the
    /// order given, keeping each one's request (skill, preferred agent). The
    /// caller has already taken them out of their agent's `active`.
    fn requeue_at_head(&mut self, conversations: &[ConversationId]) {
        // Reverse, so after pushing each to the front the first given leads.
        for conversation in conversations.iter().rev() {
            if let Some(seat) = self.seats.remove(conversation) {
                self.queue.push_front(seat.request);
            }
        }
    }

    /// Offers the queue, in order, to agents with a free seat. A request that
    /// no free agent suits (a skill nobody free has) keeps its place and the
    /// next one is tried, so one rare skill cannot block the whole queue.
    fn fill(&mut self, strategy: &dyn AssignmentStrategy) -> Vec<Assignment> {
        let mut assigned = Vec::new();
        let mut index = 0;
        while index < self.queue.len() {
            let chosen = {
                let candidates: Vec<Candidate<'_>> = self
                    .agents
                    .values()
                    .filter(|slot| slot.can_take())
                    .map(|slot| Candidate {
                        agent: &slot.profile.id,
                        skills: &slot.profile.skills,
                        active: slot.active.len(),
                        max_concurrent: slot.profile.max_concurrent,
                        last_assigned: slot.last_assigned,
                    })
                    .collect();
                if candidates.is_empty() {
                    break;
                }
                strategy
                    .pick(&self.queue[index], &candidates)
                    .and_then(|i| candidates.get(i))
                    .map(|c| c.agent.clone())
            };
            // Re-check what the strategy chose: a custom strategy may return
            // any index, but capacity is the router's promise, not theirs.
            let slot = chosen.and_then(|agent| self.agents.get_mut(&agent));
            let Some(slot) = slot.filter(|slot| slot.can_take()) else {
                index += 1;
                continue;
            };
            let Some(request) = self.queue.remove(index) else {
                break;
            };
            self.clock += 1;
            slot.last_assigned = self.clock;
            slot.active.push(request.conversation);
            let agent = slot.profile.id.clone();
            assigned.push(Assignment {
                conversation: request.conversation,
                visitor: request.visitor.clone(),
                agent: agent.clone(),
            });
            self.seats
                .insert(request.conversation, Seat { agent, request });
        }
        assigned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> TenantId {
        TenantId::new("shop").unwrap()
    }

    fn agent(name: &str) -> AgentId {
        AgentId::new(name).unwrap()
    }

    fn request() -> QueueRequest {
        QueueRequest::new(ConversationId::new(), VisitorId::new("v").unwrap())
    }

    fn online(router: &Router, name: &str, max: usize) {
        router
            .register_agent(&shop(), AgentProfile::new(agent(name), max))
            .unwrap();
        router
            .set_presence(&shop(), &agent(name), Presence::Online)
            .unwrap();
    }

    #[test]
    fn queue_is_fifo_and_reports_positions() {
        let router = Router::new(LeastBusy);
        let requests: Vec<_> = (0..3).map(|_| request()).collect();
        for (i, r) in requests.iter().enumerate() {
            assert_eq!(
                router.enqueue(&shop(), r.clone()).unwrap().position,
                Some(i + 1)
            );
        }
        assert_eq!(router.position(&shop(), requests[2].conversation), Some(3));
        router.release(&shop(), requests[0].conversation).unwrap();
        assert_eq!(router.position(&shop(), requests[2].conversation), Some(2));

        router
            .register_agent(&shop(), AgentProfile::new(agent("alice"), 5))
            .unwrap();
        let online = router
            .set_presence(&shop(), &agent("alice"), Presence::Online)
            .unwrap();
        let order: Vec<_> = online.assigned.iter().map(|a| a.conversation).collect();
        assert_eq!(
            order,
            vec![requests[1].conversation, requests[2].conversation]
        );
        assert_eq!(router.position(&shop(), requests[2].conversation), None);
    }

    #[test]
    fn duplicate_enqueue_is_refused() {
        let router = Router::new(LeastBusy);
        let r = request();
        router.enqueue(&shop(), r.clone()).unwrap();
        assert!(matches!(
            router.enqueue(&shop(), r),
            Err(RouterError::AlreadyRouted { .. })
        ));
    }

    #[test]
    fn offline_returns_conversations_to_the_head_of_the_queue() {
        let router = Router::new(LeastBusy);
        online(&router, "alice", 2);
        let (a, b, c) = (request(), request(), request());
        router.enqueue(&shop(), a.clone()).unwrap();
        router.enqueue(&shop(), b.clone()).unwrap();
        router.enqueue(&shop(), c.clone()).unwrap();
        let gone = router
            .set_presence(&shop(), &agent("alice"), Presence::Offline)
            .unwrap();
        assert_eq!(gone.requeued, vec![a.conversation, b.conversation]);
        assert!(gone.assigned.is_empty());
        assert_eq!(
            router.snapshot(&shop()).queue,
            vec![a.conversation, b.conversation, c.conversation]
        );
        // Bob comes online with one seat: the oldest returned conversation first.
        router
            .register_agent(&shop(), AgentProfile::new(agent("bob"), 1))
            .unwrap();
        let bob = router
            .set_presence(&shop(), &agent("bob"), Presence::Online)
            .unwrap();
        assert_eq!(bob.assigned[0].conversation, a.conversation);
    }

    #[test]
    fn away_keeps_conversations_but_takes_no_new_ones() {
        let router = Router::new(LeastBusy);
        online(&router, "alice", 3);
        let a = request();
        router.enqueue(&shop(), a.clone()).unwrap();
        let away = router
            .set_presence(&shop(), &agent("alice"), Presence::Away)
            .unwrap();
        assert_eq!(away, Rebalanced::default());
        assert_eq!(
            router.agent_of(&shop(), a.conversation),
            Some(agent("alice"))
        );
        assert_eq!(
            router.enqueue(&shop(), request()).unwrap().position,
            Some(1)
        );
    }

    #[test]
    fn transfer_checks_the_target() {
        let router = Router::new(LeastBusy);
        online(&router, "alice", 1);
        online(&router, "bob", 1);
        router
            .register_agent(&shop(), AgentProfile::new(agent("carol"), 1))
            .unwrap();
        let a = request();
        let b = request();
        router.enqueue(&shop(), a.clone()).unwrap();
        router.enqueue(&shop(), b.clone()).unwrap();
        let a_agent = router.agent_of(&shop(), a.conversation).unwrap();
        let b_agent = router.agent_of(&shop(), b.conversation).unwrap();
        assert!(matches!(
            router.transfer(&shop(), a.conversation, &b_agent),
            Err(RouterError::AtCapacity {
                active: 1,
                max: 1,
                ..
            })
        ));
        assert!(matches!(
            router.transfer(&shop(), a.conversation, &agent("carol")),
            Err(RouterError::AgentUnavailable {
                presence: Presence::Offline,
                ..
            })
        ));
        assert!(matches!(
            router.transfer(&shop(), a.conversation, &agent("dave")),
            Err(RouterError::UnknownAgent { .. })
        ));
        assert!(matches!(
            router.transfer(&shop(), a.conversation, &a_agent),
            Err(RouterError::SameAgent { .. })
        ));
        router
            .set_presence(&shop(), &agent("carol"), Presence::Online)
            .unwrap();
        let moved = router
            .transfer(&shop(), a.conversation, &agent("carol"))
            .unwrap();
        assert_eq!(moved.from, a_agent);
        assert!(moved.assigned.is_empty());
        assert_eq!(
            router.agent_of(&shop(), a.conversation),
            Some(agent("carol"))
        );
    }

    #[test]
    fn tenants_are_scoped() {
        let router = Router::new(LeastBusy);
        online(&router, "alice", 5);
        let other = TenantId::new("other-shop").unwrap();
        assert_eq!(router.enqueue(&other, request()).unwrap().position, Some(1));
        assert!(matches!(
            router.set_presence(&other, &agent("alice"), Presence::Online),
            Err(RouterError::UnknownAgent { .. })
        ));
    }

    #[test]
    fn a_rare_skill_does_not_block_the_queue() {
        let router = Router::new(SkillMatch(LeastBusy));
        online(&router, "alice", 5);
        let mut needs_vip = request();
        needs_vip.skill = Some(Skill::new("vip").unwrap());
        let plain = request();
        // Enqueue both while nobody is online, then bring Alice (no vip skill) in.
        router
            .set_presence(&shop(), &agent("alice"), Presence::Away)
            .unwrap();
        router.enqueue(&shop(), needs_vip.clone()).unwrap();
        router.enqueue(&shop(), plain.clone()).unwrap();
        let back = router
            .set_presence(&shop(), &agent("alice"), Presence::Online)
            .unwrap();
        assert_eq!(back.assigned.len(), 1);
        assert_eq!(back.assigned[0].conversation, plain.conversation);
        assert_eq!(router.position(&shop(), needs_vip.conversation), Some(1));
    }

    #[test]
    fn a_lying_strategy_cannot_overfill() {
        struct AlwaysFirstOrNonsense;
        impl AssignmentStrategy for AlwaysFirstOrNonsense {
            fn pick(&self, _: &QueueRequest, candidates: &[Candidate<'_>]) -> Option<usize> {
                Some(candidates.len() + 10)
            }
        }
        let router = Router::new(AlwaysFirstOrNonsense);
        online(&router, "alice", 1);
        assert_eq!(
            router.enqueue(&shop(), request()).unwrap().position,
            Some(1)
        );
    }

    #[test]
    fn a_transfer_frees_a_seat_for_the_queue() {
        let router = Router::new(SkillMatch(LeastBusy));
        let zh = Skill::new("zh").unwrap();
        router
            .register_agent(
                &shop(),
                AgentProfile::new(agent("alice"), 1).with_skill(zh.clone()),
            )
            .unwrap();
        router
            .set_presence(&shop(), &agent("alice"), Presence::Online)
            .unwrap();
        let a = request();
        router.enqueue(&shop(), a.clone()).unwrap();
        online(&router, "carol", 2);
        // Only Alice speaks Chinese, and she is full: this one waits.
        let mut c = request();
        c.skill = Some(zh);
        assert_eq!(
            router.enqueue(&shop(), c.clone()).unwrap().position,
            Some(1)
        );

        let moved = router
            .transfer(&shop(), a.conversation, &agent("carol"))
            .unwrap();
        assert_eq!(moved.from, agent("alice"));
        assert_eq!(
            moved.assigned,
            vec![Assignment {
                conversation: c.conversation,
                visitor: c.visitor.clone(),
                agent: agent("alice"),
            }]
        );
    }

    #[test]
    fn restore_seats_an_existing_assignment_and_counts_it_against_capacity() {
        let router = Router::new(LeastBusy);
        online(&router, "alice", 1);
        let kept = request();
        // Alice is offline on the new router, yet the stored assignment holds.
        router
            .set_presence(&shop(), &agent("alice"), Presence::Offline)
            .unwrap();
        router
            .restore(&shop(), kept.clone(), &agent("alice"))
            .unwrap();
        assert_eq!(
            router.agent_of(&shop(), kept.conversation),
            Some(agent("alice"))
        );
        assert!(matches!(
            router.restore(&shop(), kept.clone(), &agent("alice")),
            Err(RouterError::AlreadyRouted { .. })
        ));
        // Back online, her one seat is the restored chat: a newcomer waits.
        router
            .set_presence(&shop(), &agent("alice"), Presence::Online)
            .unwrap();
        let waiting = request();
        assert_eq!(
            router.enqueue(&shop(), waiting.clone()).unwrap().position,
            Some(1)
        );
        // A queued conversation that turns out to be assigned leaves the queue.
        router
            .restore(&shop(), waiting.clone(), &agent("alice"))
            .unwrap();
        assert_eq!(router.position(&shop(), waiting.conversation), None);
        assert_eq!(router.snapshot(&shop()).agents[0].active.len(), 2);
        // Going offline hands both back, oldest first.
        let rebalanced = router
            .set_presence(&shop(), &agent("alice"), Presence::Offline)
            .unwrap();
        assert_eq!(
            rebalanced.requeued,
            vec![kept.conversation, waiting.conversation]
        );
    }

    #[test]
    fn removing_an_agent_requeues_their_chats_at_the_head_for_others() {
        let router = Router::new(LeastBusy);
        online(&router, "alice", 2);
        let (a, b, waiting) = (request(), request(), request());
        router.enqueue(&shop(), a.clone()).unwrap();
        router.enqueue(&shop(), b.clone()).unwrap();
        router.enqueue(&shop(), waiting.clone()).unwrap();
        // Bob is registered but away: nobody can take the returned chats yet.
        router
            .register_agent(&shop(), AgentProfile::new(agent("bob"), 1))
            .unwrap();
        router
            .set_presence(&shop(), &agent("bob"), Presence::Away)
            .unwrap();

        let gone = router.remove_agent(&shop(), &agent("alice")).unwrap();
        assert_eq!(gone.requeued, vec![a.conversation, b.conversation]);
        assert!(gone.assigned.is_empty());
        let snapshot = router.snapshot(&shop());
        assert_eq!(
            snapshot.queue,
            vec![a.conversation, b.conversation, waiting.conversation],
            "ahead of those who were already waiting, in their old order"
        );
        assert_eq!(
            snapshot
                .agents
                .iter()
                .map(|s| s.profile.id.clone())
                .collect::<Vec<_>>(),
            vec![agent("bob")]
        );
        assert!(matches!(
            router.remove_agent(&shop(), &agent("alice")),
            Err(RouterError::UnknownAgent { .. })
        ));

        // With a free agent online, a removal hands the chats straight over.
        online(&router, "carol", 3);
        let carol_has = router.snapshot(&shop()).agents[1].active.clone();
        assert_eq!(
            carol_has,
            vec![a.conversation, b.conversation, waiting.conversation]
        );
        online(&router, "dave", 3);
        let moved = router.remove_agent(&shop(), &agent("carol")).unwrap();
        assert_eq!(moved.requeued, carol_has);
        assert_eq!(
            moved
                .assigned
                .iter()
                .map(|x| (x.conversation, x.agent.clone()))
                .collect::<Vec<_>>(),
            carol_has
                .iter()
                .map(|c| (*c, agent("dave")))
                .collect::<Vec<_>>()
        );
        assert!(router.snapshot(&shop()).queue.is_empty());
    }

    #[test]
    fn lowering_capacity_takes_nothing_away() {
        let router = Router::new(LeastBusy);
        online(&router, "alice", 3);
        let chats: Vec<_> = (0..3).map(|_| request()).collect();
        for c in &chats {
            router.enqueue(&shop(), c.clone()).unwrap();
        }
        assert!(router
            .set_capacity(&shop(), &agent("alice"), 1)
            .unwrap()
            .is_empty());
        let sync = router
            .sync_agents(&shop(), &[AgentRecord::new(agent("alice"), "Alice", 1)])
            .unwrap();
        assert_eq!(sync, Synced::default(), "an update moves nothing");
        let alice = &router.snapshot(&shop()).agents[0];
        assert_eq!(alice.active.len(), 3, "she keeps all three");
        assert_eq!(alice.profile.max_concurrent, 1);
        // Below her new limit only once two have closed.
        let newcomer = request();
        assert_eq!(
            router.enqueue(&shop(), newcomer.clone()).unwrap().position,
            Some(1)
        );
        assert!(router
            .release(&shop(), chats[0].conversation)
            .unwrap()
            .assigned
            .is_empty());
        let freed = router.release(&shop(), chats[1].conversation).unwrap();
        assert!(freed.assigned.is_empty(), "one of one seat still taken");
        let freed = router.release(&shop(), chats[2].conversation).unwrap();
        assert_eq!(freed.assigned[0].conversation, newcomer.conversation);
    }

    #[test]
    fn a_new_skill_assigns_queued_work() {
        let router = Router::new(SkillMatch(LeastBusy));
        online(&router, "alice", 2);
        let zh = Skill::new("zh").unwrap();
        let mut needs_zh = request();
        needs_zh.skill = Some(zh.clone());
        assert_eq!(
            router.enqueue(&shop(), needs_zh.clone()).unwrap().position,
            Some(1)
        );
        let assigned = router
            .set_skills(&shop(), &agent("alice"), vec![zh.clone()])
            .unwrap();
        assert_eq!(assigned.len(), 1);
        assert_eq!(assigned[0].conversation, needs_zh.conversation);
        // Losing the skill does not take the chat away.
        assert!(router
            .set_skills(&shop(), &agent("alice"), Vec::new())
            .unwrap()
            .is_empty());
        assert_eq!(
            router.agent_of(&shop(), needs_zh.conversation),
            Some(agent("alice"))
        );
        assert!(router.snapshot(&shop()).agents[0].profile.skills.is_empty());
        assert!(matches!(
            router.set_skills(&shop(), &agent("nobody"), vec![zh]),
            Err(RouterError::UnknownAgent { .. })
        ));
    }

    #[test]
    fn sync_adds_updates_and_removes() {
        let router = Router::new(SkillMatch(LeastBusy));
        let refunds = Skill::new("refunds").unwrap();
        online(&router, "alice", 1);
        online(&router, "bob", 1);
        let (a, b) = (request(), request());
        router.enqueue(&shop(), a.clone()).unwrap();
        router.enqueue(&shop(), b.clone()).unwrap();
        let mut needs_refunds = request();
        needs_refunds.skill = Some(refunds.clone());
        router.enqueue(&shop(), needs_refunds.clone()).unwrap();
        let bob_had = router.snapshot(&shop()).agents[1].active.clone();

        // Bob leaves, Carol joins, Alice gets a second seat and the skill.
        let records = [
            AgentRecord::new(agent("carol"), "Carol", 2),
            AgentRecord::new(agent("alice"), "Alice", 2).with_skill(refunds.clone()),
        ];
        let synced = router.sync_agents(&shop(), &records).unwrap();
        assert_eq!(synced.added, vec![agent("carol")]);
        assert_eq!(synced.removed, vec![agent("bob")]);
        assert_eq!(synced.requeued, bob_had);
        // Alice's new seat goes to the head of the queue: Bob's chat.
        assert_eq!(
            synced.assigned,
            vec![Assignment {
                conversation: bob_had[0],
                visitor: b.visitor.clone(),
                agent: agent("alice"),
            }]
        );
        let snapshot = router.snapshot(&shop());
        assert_eq!(snapshot.queue, vec![needs_refunds.conversation]);
        let carol = &snapshot.agents[1];
        assert_eq!(carol.profile.id, agent("carol"));
        assert_eq!(
            carol.presence,
            Presence::Offline,
            "new agents start offline"
        );
        assert_eq!(carol.profile.max_concurrent, 2);
        let alice = &snapshot.agents[0];
        assert_eq!(alice.presence, Presence::Online, "presence is kept");
        assert!(alice.profile.skills.contains(&refunds));
        assert_eq!(alice.active.len(), 2);

        // The same records again change nothing.
        assert_eq!(
            router.sync_agents(&shop(), &records).unwrap(),
            Synced::default()
        );

        // A duplicate id refuses the whole sync.
        let twice = [
            AgentRecord::new(agent("dave"), "Dave", 1),
            AgentRecord::new(agent("dave"), "Dave again", 1),
        ];
        assert!(matches!(
            router.sync_agents(&shop(), &twice),
            Err(RouterError::DuplicateAgent { .. })
        ));
        assert_eq!(router.snapshot(&shop()), snapshot);

        // An empty list takes everyone off the desk.
        let emptied = router.sync_agents(&shop(), &[]).unwrap();
        assert_eq!(emptied.removed, vec![agent("alice"), agent("carol")]);
        assert_eq!(emptied.requeued, alice.active);
        let snapshot = router.snapshot(&shop());
        assert!(snapshot.agents.is_empty());
        assert_eq!(snapshot.queue.len(), 3);
    }
}
