//! Capacity is never exceeded, whatever the concurrency.
//!
//! Eight threads hammer one tenant's router with a random mix of enqueue,
//! release, transfer, presence and capacity changes. After every step each
//! thread takes an atomic snapshot of the desk and checks the invariants; at
//! the end, every conversation ever enqueued is accounted for exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use cs_core::router::{
    AgentProfile, DeskSnapshot, LeastBusy, Presence, QueueRequest, ReleasedFrom, Router,
    RouterError, SkillMatch,
};
use cs_core::{AgentId, ConversationId, Skill, TenantId, VisitorId};

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
