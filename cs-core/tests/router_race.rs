//! Capacity is never exceeded, whatever the concurrency.
//!
//! Eight threads hammer one tenant's router with a random mix of enqueue,
//! release, transfer, presence and capacity changes (and, in the last test,
//! directory syncs that add, change and remove agents). After every step each
//! thread takes an atomic snapshot of the desk and checks the invariants; at
//! the end, every conversation ever enqueued is accounted for exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use cs_core::router::{
    AgentProfile, DeskSnapshot, LeastBusy, Presence, QueueRequest, ReleasedFrom, Router,
    RouterError, SkillMatch,
};
use cs_core::{AgentId, AgentRecord, ConversationId, Skill, TenantId, VisitorId};

const THREADS: u64 = 8;
const STEPS: u64 = 3_000;
const AGENTS: usize = 6;
const MAX_OPEN_PER_THREAD: usize = 40;

/// A tiny deterministic PRNG (xorshift64*): each thread gets a reproducible
/// sequence of operations without pulling in a crate for it.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn check(snapshot: &DeskSnapshot) {
    let mut seen = HashSet::new();
    for agent in &snapshot.agents {
        assert!(
            agent.active.len() <= agent.profile.max_concurrent,
            "capacity exceeded: {} has {} of {}",
            agent.profile.id,
            agent.active.len(),
            agent.profile.max_concurrent
        );
        if agent.presence == Presence::Offline {
            assert!(
                agent.active.is_empty(),
                "offline agent {} still holds conversations",
                agent.profile.id
            );
        }
        for c in &agent.active {
            assert!(seen.insert(*c), "conversation {c} is held twice");
        }
    }
    for c in &snapshot.queue {
        assert!(
            seen.insert(*c),
            "conversation {c} is both queued and assigned, or queued twice"
        );
    }
}

fn race(router: &Router, tenant: &TenantId, skills: &[Skill]) {
    let agents: Vec<AgentId> = (0..AGENTS)
        .map(|i| AgentId::new(format!("agent-{i}")).unwrap())
        .collect();
    for (i, agent) in agents.iter().enumerate() {
        // Must match `capacities` below.
        let profile = AgentProfile::new(agent.clone(), 1 + i % 3)
            .with_skill(skills[i % skills.len()].clone());
        router.register_agent(tenant, profile).unwrap();
    }
    // Every conversation ever enqueued, and every one released; the rest must
    // still be in the router at the end.
    let capacities: Vec<Mutex<usize>> = (0..AGENTS).map(|i| Mutex::new(1 + i % 3)).collect();
    let enqueued = Mutex::new(HashSet::new());
    let released = Mutex::new(HashSet::new());
    let assignments = AtomicU64::new(0);

    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (agents, capacities) = (&agents, &capacities);
            let (enqueued, released, assignments) = (&enqueued, &released, &assignments);
            scope.spawn(move || {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (thread + 1));
                let mut mine: Vec<ConversationId> = Vec::new();
                for _ in 0..STEPS {
                    let agent = &agents[rng.below(AGENTS as u64) as usize];
                    let mut op = rng.below(10);
                    if op <= 3 && mine.len() >= MAX_OPEN_PER_THREAD {
                        // Keep the queue at a realistic size: release instead.
                        op = 4;
                    }
                    match op {
                        0..=3 => {
                            let mut request = QueueRequest::new(
                                ConversationId::new(),
                                VisitorId::new("v").unwrap(),
                            );
                            request.skill = (rng.below(3) == 0)
                                .then(|| skills[rng.below(skills.len() as u64) as usize].clone());
                            enqueued.lock().unwrap().insert(request.conversation);
                            mine.push(request.conversation);
                            let routed = router.enqueue(tenant, request).unwrap();
                            assignments.fetch_add(routed.assigned.len() as u64, Ordering::Relaxed);
                        }
                        4..=5 if !mine.is_empty() => {
                            let c = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                            let done = router.release(tenant, c).unwrap();
                            released.lock().unwrap().insert(c);
                            assignments.fetch_add(done.assigned.len() as u64, Ordering::Relaxed);
                            if let ReleasedFrom::Agent(a) = done.from {
                                assert!(agents.contains(&a));
                            }
                        }
                        6 if !mine.is_empty() => {
                            let c = mine[rng.below(mine.len() as u64) as usize];
                            match router.transfer(tenant, c, agent) {
                                Ok(moved) => {
                                    assignments
                                        .fetch_add(moved.assigned.len() as u64, Ordering::Relaxed);
                                }
                                Err(
                                    RouterError::AtCapacity { .. }
                                    | RouterError::AgentUnavailable { .. }
                                    | RouterError::SameAgent { .. }
                                    | RouterError::NotAssigned { .. },
                                ) => {}
                                Err(other) => panic!("unexpected transfer error: {other}"),
                            }
                        }
                        7 | 8 => {
                            let presence = match rng.below(3) {
                                0 => Presence::Offline,
                                1 => Presence::Away,
                                _ => Presence::Online,
                            };
                            let changed = router.set_presence(tenant, agent, presence).unwrap();
                            assignments.fetch_add(changed.assigned.len() as u64, Ordering::Relaxed);
                        }
                        _ => {
                            // Raising capacity only: lowering it below the current load
                            // is allowed by design and would make "active <= max" a
                            // statement about the past, not a violation. The per-agent
                            // lock stops two threads from raising from a stale value.
                            let index = agents.iter().position(|a| a == agent).unwrap();
                            let mut capacity = capacities[index].lock().unwrap();
                            *capacity = (*capacity + 1).min(4);
                            let more = router.set_capacity(tenant, agent, *capacity).unwrap();
                            assignments.fetch_add(more.len() as u64, Ordering::Relaxed);
                        }
                    }
                    check(&router.snapshot(tenant));
                }
            });
        }
    });

    // Nothing lost, nothing duplicated: what was enqueued and not released is
    // still queued or assigned, exactly once.
    let snapshot = router.snapshot(tenant);
    check(&snapshot);
    let enqueued = enqueued.into_inner().unwrap();
    let released = released.into_inner().unwrap();
    let mut still_routed: HashSet<ConversationId> = snapshot.queue.iter().copied().collect();
    for agent in &snapshot.agents {
        still_routed.extend(agent.active.iter().copied());
    }
    let expected: HashSet<ConversationId> = enqueued.difference(&released).copied().collect();
    assert_eq!(still_routed, expected);
    assert!(
        assignments.load(Ordering::Relaxed) > 100,
        "the race must actually assign conversations"
    );
}

#[test]
fn capacity_holds_under_concurrent_assign_release_and_offline() {
    let router = Router::new(LeastBusy);
    race(
        &router,
        &TenantId::new("shop").unwrap(),
        &[Skill::new("general").unwrap()],
    );
}

#[test]
fn capacity_holds_with_skill_routing_and_two_tenants_at_once() {
    let router = Router::new(SkillMatch(LeastBusy));
    let skills = [Skill::new("refunds").unwrap(), Skill::new("zh").unwrap()];
    std::thread::scope(|scope| {
        scope.spawn(|| race(&router, &TenantId::new("shop-a").unwrap(), &skills));
        scope.spawn(|| race(&router, &TenantId::new("shop-b").unwrap(), &skills));
    });
    // Tenants do not see each other's agents.
    let a = router.snapshot(&TenantId::new("shop-a").unwrap());
    assert_eq!(a.agents.len(), AGENTS);
    let per_agent: HashMap<_, _> = a.agents.iter().map(|s| (s.profile.id.clone(), s)).collect();
    assert_eq!(per_agent.len(), AGENTS);
}

/// The directory the sync test's threads share: which agents are listed and
/// with what. One lock around changing it *and* syncing the router to it, as
/// a host's directory callback would: two syncs from stale copies could
/// otherwise lower a capacity below the load, which is allowed by design and
/// would make "active <= max" a statement about the past.
struct Listing {
    /// `Some(record)` if agent i is listed.
    agents: Vec<Option<AgentRecord>>,
}

impl Listing {
    fn records(&self) -> Vec<AgentRecord> {
        self.agents.iter().flatten().cloned().collect()
    }
}

#[test]
fn capacity_holds_while_syncs_add_change_and_remove_agents() {
    let router = Router::new(SkillMatch(LeastBusy));
    let tenant = TenantId::new("shop").unwrap();
    let skills = [Skill::new("refunds").unwrap(), Skill::new("zh").unwrap()];
    let ids: Vec<AgentId> = (0..AGENTS)
        .map(|i| AgentId::new(format!("agent-{i}")).unwrap())
        .collect();
    let listing = Mutex::new(Listing {
        agents: ids
            .iter()
            .enumerate()
            .map(|(i, id)| Some(AgentRecord::new(id.clone(), "agent", 1 + i % 3)))
            .collect(),
    });
    router
        .sync_agents(&tenant, &listing.lock().unwrap().records())
        .unwrap();
    let enqueued = Mutex::new(HashSet::new());
    let released = Mutex::new(HashSet::new());
    let assignments = AtomicU64::new(0);
    let syncs = AtomicU64::new(0);
    let removals = AtomicU64::new(0);

    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (router, tenant, skills, ids, listing) =
                (&router, &tenant, &skills, &ids, &listing);
            let (enqueued, released, assignments) = (&enqueued, &released, &assignments);
            let (syncs, removals) = (&syncs, &removals);
            scope.spawn(move || {
                let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (thread + 1));
                let mut mine: Vec<ConversationId> = Vec::new();
                for _ in 0..STEPS {
                    let index = rng.below(AGENTS as u64) as usize;
                    let agent = &ids[index];
                    let mut op = rng.below(10);
                    if op <= 3 && mine.len() >= MAX_OPEN_PER_THREAD {
                        op = 4;
                    }
                    match op {
                        0..=3 => {
                            let mut request = QueueRequest::new(
                                ConversationId::new(),
                                VisitorId::new("v").unwrap(),
                            );
                            request.skill = (rng.below(3) == 0)
                                .then(|| skills[rng.below(skills.len() as u64) as usize].clone());
                            enqueued.lock().unwrap().insert(request.conversation);
                            mine.push(request.conversation);
                            let routed = router.enqueue(tenant, request).unwrap();
                            assignments.fetch_add(routed.assigned.len() as u64, Ordering::Relaxed);
                        }
                        4..=5 if !mine.is_empty() => {
                            let c = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                            let done = router.release(tenant, c).unwrap();
                            released.lock().unwrap().insert(c);
                            assignments.fetch_add(done.assigned.len() as u64, Ordering::Relaxed);
                        }
                        6 | 7 => {
                            let presence = match rng.below(4) {
                                0 => Presence::Offline,
                                1 => Presence::Away,
                                _ => Presence::Online,
                            };
                            match router.set_presence(tenant, agent, presence) {
                                Ok(changed) => {
                                    assignments
                                        .fetch_add(changed.assigned.len() as u64, Ordering::Relaxed);
                                }
                                // Taken off the desk by a sync a moment ago.
                                Err(RouterError::UnknownAgent { .. }) => {}
                                Err(other) => panic!("unexpected presence error: {other}"),
                            }
                        }
                        _ => {
                            // Change one agent in the listing, then sync the
                            // whole listing, under the listing's lock.
                            let mut listing = listing.lock().unwrap();
                            let slot = &mut listing.agents[index];
                            *slot = match slot.take() {
                                // Listed: usually more seats or another
                                // skill, sometimes removed.
                                Some(_) if rng.below(4) == 0 => {
                                    removals.fetch_add(1, Ordering::Relaxed);
                                    None
                                }
                                Some(mut record) => {
                                    record.capacity = (record.capacity + 1).min(4);
                                    record.skills = if rng.below(2) == 0 {
                                        Vec::new()
                                    } else {
                                        vec![skills[rng.below(skills.len() as u64) as usize]
                                            .clone()]
                                    };
                                    Some(record)
                                }
                                // Not listed: back, with a fresh (possibly
                                // lower) capacity; they return with no chats.
                                None => Some(AgentRecord::new(
                                    agent.clone(),
                                    "agent",
                                    1 + rng.below(3) as usize,
                                )),
                            };
                            let synced = router.sync_agents(tenant, &listing.records()).unwrap();
                            syncs.fetch_add(1, Ordering::Relaxed);
                            assignments.fetch_add(synced.assigned.len() as u64, Ordering::Relaxed);
                            let snapshot = router.snapshot(tenant);
                            let on_desk: Vec<AgentId> =
                                snapshot.agents.iter().map(|a| a.profile.id.clone()).collect();
                            let listed: Vec<AgentId> =
                                listing.records().into_iter().map(|r| r.id).collect();
                            assert_eq!(on_desk, listed, "the desk follows the listing");
                        }
                    }
                    check(&router.snapshot(tenant));
                }
            });
        }
    });

    let snapshot = router.snapshot(&tenant);
    check(&snapshot);
    let enqueued = enqueued.into_inner().unwrap();
    let released = released.into_inner().unwrap();
    let mut still_routed: HashSet<ConversationId> = snapshot.queue.iter().copied().collect();
    for agent in &snapshot.agents {
        still_routed.extend(agent.active.iter().copied());
    }
    let expected: HashSet<ConversationId> = enqueued.difference(&released).copied().collect();
    assert_eq!(
        still_routed, expected,
        "a removed agent's chats are requeued, not lost"
    );
    assert!(assignments.load(Ordering::Relaxed) > 100);
    assert!(syncs.load(Ordering::Relaxed) > 100);
    assert!(
        removals.load(Ordering::Relaxed) > 10,
        "the race must remove agents"
    );
}
