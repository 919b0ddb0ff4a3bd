//! cs-core's hot paths: appending to and reading from the store, and one
//! routing decision. Each group has a baseline measured in the same run, so
//! the README can quote ratios rather than machine-dependent absolutes.
//!
//! Run with `cargo bench --bench core`.

use std::collections::VecDeque;
use std::hint::black_box;
use std::sync::Mutex;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use cs::core::router::{AgentProfile, LeastBusy, Presence, QueueRequest, Router, SkillMatch};
use cs::core::store::{MemoryStore, MessageStore};
use cs::core::{
    AgentId, ClientMsgId, Conversation, ConversationId, Message, NewMessage, Party, Seq, Skill,
    TenantId, Timestamp, VisitorId,
};

fn runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread().build() {
        Ok(rt) => rt,
        Err(e) => panic!("cannot start a tokio runtime for the benchmark: {e}"),
    }
}

fn ids() -> (TenantId, VisitorId) {
    match (TenantId::new("bench"), VisitorId::new("visitor")) {
        (Ok(t), Ok(v)) => (t, v),
        _ => unreachable!("constant ids are valid"),
    }
}

/// A visitor's message with client id `m{n}`, as a retrying client sends it.
fn numbered_message(id: ConversationId, visitor: &VisitorId, n: u64) -> NewMessage {
    let mut m = NewMessage::text(id, Party::Visitor(visitor.clone()), "where is my order?");
    m.client_msg_id = ClientMsgId::new(format!("m{n}")).ok();
    m
}

/// Append: MemoryStore (seq assignment, client-id dedup, per-conversation
/// lock behind a sharded map) against the least any in-memory log does, a
/// push onto a `Mutex<Vec<Message>>`.
fn store_append(c: &mut Criterion) {
    let rt = runtime();
    let (tenant, visitor) = ids();
    let mut group = c.benchmark_group("store_append");

    let store = MemoryStore::new();
    let conversation = Conversation::open(tenant, visitor.clone(), Timestamp::now());
    let id = conversation.id();
    rt.block_on(store.create_conversation(&conversation)).ok();
    let mut n = 0u64;
    group.bench_function("memory_store", |b| {
        b.to_async(&rt).iter_batched(
            || {
                n += 1;
                numbered_message(id, &visitor, n)
            },
            |m| async { black_box(store.append(m).await.ok()) },
            BatchSize::SmallInput,
        );
    });

    let log: Mutex<Vec<Message>> = Mutex::new(Vec::new());
    let mut n = 0u64;
    group.bench_function("baseline_mutex_vec_push", |b| {
        b.iter_batched(
            || {
                n += 1;
                numbered_message(id, &visitor, n)
            },
            |m| {
                let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                let seq = Seq::new(log.len() as u64 + 1);
                log.push(Message::from_new(m, seq));
                black_box(seq)
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

/// Recent 50 of a 10,000-message conversation, against cloning the same 50
/// out of a plain `Vec`.
fn store_recent(c: &mut Criterion) {
    let rt = runtime();
    let (tenant, visitor) = ids();
    let store = MemoryStore::new();
    let conversation = Conversation::open(tenant, visitor.clone(), Timestamp::now());
    let id = conversation.id();
    let mut plain = Vec::new();
    rt.block_on(async {
        store.create_conversation(&conversation).await.ok();
        for i in 0..10_000 {
            let m = NewMessage::text(id, Party::Visitor(visitor.clone()), format!("message {i}"));
            if let Ok(appended) = store.append(m).await {
                plain.push(appended.message);
            }
        }
    });
    let mut group = c.benchmark_group("store_recent_50_of_10k");
    group.bench_function("memory_store", |b| {
        b.to_async(&rt)
            .iter(|| async { black_box(store.recent(id, 50).await.ok()) });
    });
    group.bench_function("baseline_vec_clone", |b| {
        b.iter(|| black_box(plain[plain.len() - 50..].to_vec()));
    });
    group.finish();
}

/// One routing round trip (enqueue, which assigns; release) with 50 online
/// agents, against a bare `Mutex<VecDeque>` push and pop.
fn router_cycle(c: &mut Criterion) {
    let (tenant, visitor) = ids();
    let mut group = c.benchmark_group("router_enqueue_release_50_agents");
    let routers = [
        ("least_busy", Router::new(LeastBusy)),
        ("skill_match", Router::new(SkillMatch(LeastBusy))),
    ];
    for (name, router) in &routers {
        for i in 0..50 {
            let (Ok(agent), Ok(skill)) = (
                AgentId::new(format!("agent-{i}")),
                Skill::new(format!("s{}", i % 5)),
            ) else {
                unreachable!("constant ids are valid")
            };
            router
                .register_agent(
                    &tenant,
                    AgentProfile::new(agent.clone(), 5).with_skill(skill),
                )
                .ok();
            router.set_presence(&tenant, &agent, Presence::Online).ok();
        }
        let skill = Skill::new("s3").ok();
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut request =
                    QueueRequest::new(cs::core::ConversationId::new(), visitor.clone());
                request.skill = skill.clone();
                let id = request.conversation;
                let routed = router.enqueue(&tenant, request).ok();
                black_box(&routed);
                black_box(router.release(&tenant, id).ok())
            });
        });
    }
    let queue: Mutex<VecDeque<QueueRequest>> = Mutex::new(VecDeque::new());
    group.bench_function("baseline_mutex_vecdeque", |b| {
        b.iter(|| {
            let request = QueueRequest::new(cs::core::ConversationId::new(), visitor.clone());
            let mut queue = queue.lock().unwrap_or_else(|e| e.into_inner());
            queue.push_back(request);
            black_box(queue.pop_front())
        });
    });
    group.finish();
}

criterion_group!(benches, store_append, store_recent, router_cycle);
criterion_main!(benches);
