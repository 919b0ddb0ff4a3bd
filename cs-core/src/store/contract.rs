//! The contract every [`MessageStore`] must keep, and the
//! [`ConversationQueries`] it answers, as a reusable test suite.
//!
//! Each function below checks one promise and panics, naming it, when the
//! store breaks it. A store crate runs them all with one line in a test file:
//!
//! ```no_run
//! use cs_core::store::MemoryStore;
//!
//! async fn make_store() -> Option<MemoryStore> {
//!     // A server-backed store reads its URL first; `service_url` prints a
//!     // notice and returns None (skip) when it is unset.
//!     let _url = cs_core::testing::service_url("CS_TEST_POSTGRES_URL")?;
//!     Some(MemoryStore::new())
//! }
//!
//! cs_core::message_store_contract!(make_store);
//! # fn main() {}
//! ```
//!
//! Every case creates its own conversations with fresh ids, so cases may
//! share one database and run in parallel. The calling crate needs `tokio`
//! (with `macros` and `rt-multi-thread`) among its dev-dependencies.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::conversation::{Conversation, ConversationState};
use crate::ids::{AgentId, ClientMsgId, ConversationId, Seq, TenantId, VisitorId};
use crate::message::{Body, Event, Message, NewMessage, Party};
use crate::store::{ConversationQueries, MessageStore, StoreError};
use crate::timestamp::Timestamp;

/// Expands to one `#[tokio::test]` per contract case, in a module named
/// `message_store_contract`. `$make` names an `async fn() -> Option<S>` in the calling module where
/// `S: ConversationQueries` (so also a [`MessageStore`]); `None` skips the case.
#[macro_export]
macro_rules! message_store_contract {
    ($make:ident) => {
        $crate::message_store_contract!(@cases $make;
            append_assigns_gap_free_seqs,
            client_msg_id_makes_retries_idempotent,
            append_batch_keeps_order_dedups_and_isolates_errors,
            reads_by_range_recent_and_after,
            unknown_conversations_are_errors,
            conversations_round_trip,
            every_body_kind_round_trips,
            conversations_number_independently,
            concurrent_appenders_get_gap_free_unique_seqs,
            concurrent_retries_store_once,
            visitor_conversations_newest_first,
            agent_open_conversations_oldest_first,
            open_conversations_oldest_first,
        );
    };
    (@cases $make:ident; $($case:ident),+ $(,)?) => {
        mod message_store_contract {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $case() {
                    let Some(store) = super::$make().await else { return };
                    $crate::store::contract::$case(::std::sync::Arc::new(store)).await;
                }
            )+
        }
    };
}

fn tenant() -> TenantId {
    TenantId::new("contract-tenant").expect("valid id")
}

/// A tenant of its own per call: the query cases list a tenant's
/// conversations, and cases (and earlier runs) may share one database.
fn fresh_tenant() -> TenantId {
    TenantId::new(format!("contract-{}", uuid::Uuid::now_v7())).expect("valid id")
}

fn visitor() -> VisitorId {
    VisitorId::new("contract-visitor").expect("valid id")
}

fn client_id(s: &str) -> ClientMsgId {
    ClientMsgId::new(s).expect("valid id")
}

async fn new_conversation<S: MessageStore + ?Sized>(store: &S) -> Conversation {
    let conversation = Conversation::open(tenant(), visitor(), Timestamp::now());
    store
        .create_conversation(&conversation)
        .await
        .expect("create_conversation on a fresh id must succeed");
    conversation
}

fn text(conversation: ConversationId, text: &str) -> NewMessage {
    NewMessage::text(conversation, Party::Visitor(visitor()), text)
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq.get()).collect()
}

async fn fill<S: MessageStore + ?Sized>(store: &S, conversation: ConversationId, n: u64) {
    for i in 1..=n {
        store
            .append(text(conversation, &format!("message {i}")))
            .await
            .expect("append");
    }
}

/// A batch over two conversations gets each conversation's seqs in the
/// order given; a retry inside the batch, and one of a message stored
/// before it, come back as duplicates of their originals; an unknown
/// conversation fails its own message only.
pub async fn append_batch_keeps_order_dedups_and_isolates_errors<S: MessageStore + ?Sized>(
    store: Arc<S>,
) {
    let a = new_conversation(&*store).await;
    let b = new_conversation(&*store).await;
    let earlier = store
        .append(text(a.id(), "before the batch").with_client_msg_id(client_id("batch-0")))
        .await
        .expect("append");
    let unknown = ConversationId::new();
    let batch = vec![
        text(a.id(), "a1").with_client_msg_id(client_id("batch-1")),
        text(b.id(), "b1"),
        text(unknown, "lost"),
        text(a.id(), "a2"),
        text(a.id(), "a1 again").with_client_msg_id(client_id("batch-1")),
        text(b.id(), "b2"),
        text(a.id(), "retry of an earlier one").with_client_msg_id(client_id("batch-0")),
    ];
    let results = store.append_batch(batch).await;
    assert_eq!(results.len(), 7, "append_batch answers every message");
    let ok = |i: usize| -> &crate::store::Appended {
        results[i]
            .as_ref()
            .unwrap_or_else(|e| panic!("batch message {i} must be stored: {e}"))
    };
    assert_eq!((ok(0).message.seq, ok(0).duplicate), (Seq::new(2), false));
    assert_eq!((ok(1).message.seq, ok(1).duplicate), (Seq::new(1), false));
    assert!(
        matches!(results[2], Err(StoreError::UnknownConversation(id)) if id == unknown),
        "an unknown conversation fails its own message: {:?}",
        results[2]
    );
    assert_eq!((ok(3).message.seq, ok(3).duplicate), (Seq::new(3), false));
    assert!(ok(4).duplicate, "a retry within the batch is a duplicate");
    assert_eq!(ok(4).message.seq, Seq::new(2));
    assert_eq!(
        ok(4).message.body,
        ok(0).message.body,
        "the original comes back"
    );
    assert_eq!((ok(5).message.seq, ok(5).duplicate), (Seq::new(2), false));
    assert!(
        ok(6).duplicate,
        "a retry of a message stored before the batch"
    );
    assert_eq!(ok(6).message.seq, earlier.message.seq);
    let stored = store.after(a.id(), Seq::ZERO, 100).await.expect("after");
    assert_eq!(seqs(&stored), vec![1, 2, 3], "no gap, nothing stored twice");
    assert!(store.append_batch(Vec::new()).await.is_empty());
}

/// Appends get seqs 1, 2, 3, … and `last_seq` follows.
pub async fn append_assigns_gap_free_seqs<S: MessageStore + ?Sized>(store: Arc<S>) {
    let c = new_conversation(&*store).await;
    assert_eq!(store.last_seq(c.id()).await.expect("last_seq"), Seq::ZERO);
    for expected in 1..=10 {
        let appended = store.append(text(c.id(), "hello")).await.expect("append");
        assert_eq!(
            appended.message.seq,
            Seq::new(expected),
            "seqs must be 1, 2, 3, …"
        );
        assert!(!appended.duplicate);
    }
    assert_eq!(
        store.last_seq(c.id()).await.expect("last_seq"),
        Seq::new(10)
    );
}

/// A retried `client_msg_id` returns the original and stores nothing new;
/// the same id in another conversation is a different message.
pub async fn client_msg_id_makes_retries_idempotent<S: MessageStore + ?Sized>(store: Arc<S>) {
    let c = new_conversation(&*store).await;
    let first = store
        .append(text(c.id(), "first try").with_client_msg_id(client_id("m-1")))
        .await
        .expect("append");
    store
        .append(text(c.id(), "something else"))
        .await
        .expect("append");
    let retry = store
        .append(text(c.id(), "first try, resent").with_client_msg_id(client_id("m-1")))
        .await
        .expect("append of a retry");
    assert!(
        retry.duplicate,
        "a repeated client_msg_id must be reported as a duplicate"
    );
    assert_eq!(
        retry.message, first.message,
        "a retry must return the original message"
    );
    assert_eq!(store.last_seq(c.id()).await.expect("last_seq"), Seq::new(2));

    let other = new_conversation(&*store).await;
    let elsewhere = store
        .append(text(other.id(), "first try").with_client_msg_id(client_id("m-1")))
        .await
        .expect("append");
    assert!(
        !elsewhere.duplicate,
        "client ids are scoped to their conversation"
    );
    assert_eq!(elsewhere.message.seq, Seq::new(1));
}

/// `range`, `recent` and `after` return the right messages, oldest first,
/// within their limits.
pub async fn reads_by_range_recent_and_after<S: MessageStore + ?Sized>(store: Arc<S>) {
    let c = new_conversation(&*store).await;
    fill(&*store, c.id(), 25).await;
    let id = c.id();

    let page = store
        .range(id, Seq::new(5), Seq::new(9), 100)
        .await
        .expect("range");
    assert_eq!(seqs(&page), vec![5, 6, 7, 8, 9]);
    assert_eq!(page[0].body, Body::text("message 5"));
    let capped = store
        .range(id, Seq::new(5), Seq::new(9), 2)
        .await
        .expect("range");
    assert_eq!(seqs(&capped), vec![5, 6], "range keeps the oldest `limit`");
    let past_end = store
        .range(id, Seq::new(24), Seq::new(99), 100)
        .await
        .expect("range");
    assert_eq!(seqs(&past_end), vec![24, 25]);
    let from_zero = store
        .range(id, Seq::ZERO, Seq::new(2), 100)
        .await
        .expect("range");
    assert_eq!(seqs(&from_zero), vec![1, 2]);
    let empty = store
        .range(id, Seq::new(9), Seq::new(5), 100)
        .await
        .expect("range");
    assert!(empty.is_empty(), "an inverted range is empty");

    let recent = store.recent(id, 10).await.expect("recent");
    assert_eq!(seqs(&recent), (16..=25).collect::<Vec<_>>());
    let all = store.recent(id, 100).await.expect("recent");
    assert_eq!(seqs(&all), (1..=25).collect::<Vec<_>>());
    assert!(store.recent(id, 0).await.expect("recent").is_empty());

    let missed = store.after(id, Seq::new(20), 100).await.expect("after");
    assert_eq!(seqs(&missed), vec![21, 22, 23, 24, 25]);
    let first_three = store.after(id, Seq::ZERO, 3).await.expect("after");
    assert_eq!(seqs(&first_three), vec![1, 2, 3]);
    assert!(store
        .after(id, Seq::new(25), 100)
        .await
        .expect("after")
        .is_empty());
    assert!(
        store
            .after(id, Seq::new(u64::MAX), 100)
            .await
            .expect("after")
            .is_empty(),
        "a client may send any seq; u64::MAX must not wrap"
    );
}

fn assert_unknown<T: std::fmt::Debug>(
    result: Result<T, StoreError>,
    id: ConversationId,
    call: &str,
) {
    match result {
        Err(StoreError::UnknownConversation(got)) => assert_eq!(got, id, "{call}"),
        other => {
            panic!("{call} on an unknown conversation must be UnknownConversation, got {other:?}")
        }
    }
}

/// Every call on a conversation that was never created is
/// [`StoreError::UnknownConversation`], and stores nothing.
pub async fn unknown_conversations_are_errors<S: MessageStore + ?Sized>(store: Arc<S>) {
    let ghost = Conversation::open(tenant(), visitor(), Timestamp::now());
    let id = ghost.id();
    assert_unknown(store.append(text(id, "anyone?")).await, id, "append");
    assert_unknown(store.conversation(id).await, id, "conversation");
    assert_unknown(
        store.save_conversation(&ghost).await,
        id,
        "save_conversation",
    );
    assert_unknown(store.last_seq(id).await, id, "last_seq");
    assert_unknown(
        store.range(id, Seq::ZERO, Seq::new(10), 10).await,
        id,
        "range",
    );
    assert_unknown(store.recent(id, 10).await, id, "recent");
    assert_unknown(store.after(id, Seq::ZERO, 10).await, id, "after");
    assert_unknown(
        store.conversation(id).await,
        id,
        "conversation after a failed append",
    );
}

/// Conversations load back exactly as saved, through transitions; a second
/// create with the same id is refused.
pub async fn conversations_round_trip<S: MessageStore + ?Sized>(store: Arc<S>) {
    let mut c = new_conversation(&*store).await;
    assert_eq!(store.conversation(c.id()).await.expect("load"), c);
    match store.create_conversation(&c).await {
        Err(StoreError::ConversationExists(id)) => assert_eq!(id, c.id()),
        other => panic!("a second create must be ConversationExists, got {other:?}"),
    }

    c.enqueue(Timestamp::now()).expect("enqueue");
    c.assign(AgentId::new("contract-agent").expect("valid id"))
        .expect("assign");
    store.save_conversation(&c).await.expect("save");
    let loaded = store.conversation(c.id()).await.expect("load");
    assert_eq!(loaded, c);
    assert!(matches!(loaded.state(), ConversationState::Assigned(_)));

    c.close(Timestamp::now()).expect("close");
    store.save_conversation(&c).await.expect("save");
    assert_eq!(store.conversation(c.id()).await.expect("load"), c);
}

/// Text (including Chinese and emoji), images, files and events all come back
/// exactly as appended, with their sender, client id and timestamp.
pub async fn every_body_kind_round_trips<S: MessageStore + ?Sized>(store: Arc<S>) {
    let c = new_conversation(&*store).await;
    let agent = AgentId::new("小王").expect("valid id");
    let sent = vec![
        NewMessage::text(
            c.id(),
            Party::Visitor(visitor()),
            "我的订单在哪里？ 📦 \"quoted\" \\ back",
        )
        .with_client_msg_id(client_id("c-1")),
        NewMessage::new(
            c.id(),
            Party::Agent(agent.clone()),
            Body::Image {
                url: "/files/abc.png".into(),
                mime: "image/png".into(),
                bytes: 2048,
            },
        ),
        NewMessage::new(
            c.id(),
            Party::Bot,
            Body::File {
                url: "/files/invoice.pdf".into(),
                name: "发票 invoice.pdf".into(),
                mime: "application/pdf".into(),
                bytes: 99_999,
            },
        ),
        NewMessage::new(
            c.id(),
            Party::System,
            Body::Event(Event::Assigned {
                agent: agent.clone(),
            }),
        ),
        NewMessage::new(
            c.id(),
            Party::System,
            Body::Event(Event::Handoff {
                reason: "low confidence".into(),
            }),
        ),
        NewMessage::new(
            c.id(),
            Party::Visitor(visitor()),
            Body::Event(Event::Read { up_to: Seq::new(3) }),
        ),
        NewMessage::new(
            c.id(),
            Party::System,
            Body::Event(Event::Close { reason: None }),
        ),
    ];
    for message in &sent {
        store.append(message.clone()).await.expect("append");
    }
    let back = store.after(c.id(), Seq::ZERO, 100).await.expect("after");
    assert_eq!(back.len(), sent.len());
    for (i, (got, want)) in back.iter().zip(sent).enumerate() {
        assert_eq!(
            *got,
            Message::from_new(want, Seq::new(i as u64 + 1)),
            "message {}",
            i + 1
        );
    }
}

/// Each conversation has its own seqs, starting at 1.
pub async fn conversations_number_independently<S: MessageStore + ?Sized>(store: Arc<S>) {
    let a = new_conversation(&*store).await;
    let b = new_conversation(&*store).await;
    fill(&*store, a.id(), 3).await;
    let first_of_b = store.append(text(b.id(), "hi")).await.expect("append");
    assert_eq!(first_of_b.message.seq, Seq::new(1));
    assert_eq!(store.last_seq(a.id()).await.expect("last_seq"), Seq::new(3));
    assert_eq!(store.last_seq(b.id()).await.expect("last_seq"), Seq::new(1));
}

/// Many tasks appending to one conversation at once get seqs with no gap and
/// no duplicate, and every message is stored exactly once.
pub async fn concurrent_appenders_get_gap_free_unique_seqs<S: MessageStore + ?Sized>(
    store: Arc<S>,
) {
    const TASKS: u64 = 8;
    const EACH: u64 = 40;
    let c = new_conversation(&*store).await;
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        let id = c.id();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                let message = text(id, &format!("task {task} message {i}"))
                    .with_client_msg_id(client_id(&format!("t{task}-m{i}")));
                seqs.push(
                    store
                        .append(message)
                        .await
                        .expect("concurrent append")
                        .message
                        .seq
                        .get(),
                );
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let seqs = task.await.expect("appender task panicked");
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "one task's seqs must increase"
        );
        all.extend(seqs);
    }
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=TASKS * EACH).collect::<Vec<_>>(),
        "no gaps, no duplicates"
    );

    let stored = store.after(c.id(), Seq::ZERO, 10_000).await.expect("after");
    assert_eq!(seqs(&stored), (1..=TASKS * EACH).collect::<Vec<_>>());
    let ids: BTreeSet<_> = stored
        .iter()
        .filter_map(|m| m.client_msg_id.clone())
        .collect();
    assert_eq!(
        ids.len() as u64,
        TASKS * EACH,
        "every message stored exactly once"
    );
}

/// The same message retried by many tasks at once is stored once, and every
/// retry gets the same seq back.
pub async fn concurrent_retries_store_once<S: MessageStore + ?Sized>(store: Arc<S>) {
    let c = new_conversation(&*store).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&store);
        let id = c.id();
        tasks.push(tokio::spawn(async move {
            let message = text(id, "pay now").with_client_msg_id(client_id("same-id"));
            store.append(message).await.expect("append").message.seq
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task panicked"), Seq::new(1));
    }
    assert_eq!(store.last_seq(c.id()).await.expect("last_seq"), Seq::new(1));
}

fn ids(conversations: &[Conversation]) -> Vec<ConversationId> {
    conversations.iter().map(Conversation::id).collect()
}

/// A time a minute ago plus `ms`: creation times in the cases are explicit,
/// so "newest" and "oldest" do not depend on the clock ticking between calls.
fn minute_ago_plus(ms: u64) -> Timestamp {
    Timestamp::from_millis(Timestamp::now().as_millis().saturating_sub(60_000) + ms)
}

async fn create_at<S: MessageStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    visitor: &str,
    at: Timestamp,
) -> Conversation {
    let conversation = Conversation::open(
        tenant.clone(),
        VisitorId::new(visitor).expect("valid id"),
        at,
    );
    store
        .create_conversation(&conversation)
        .await
        .expect("create_conversation on a fresh id must succeed");
    conversation
}

/// `visitor_conversations` lists one visitor's conversations in one tenant,
/// newest first, at most `limit`, closed ones included.
pub async fn visitor_conversations_newest_first<S: ConversationQueries + ?Sized>(store: Arc<S>) {
    let tenant = fresh_tenant();
    let base = minute_ago_plus(0).as_millis();
    let first = create_at(
        &*store,
        &tenant,
        "alice",
        Timestamp::from_millis(base + 1_000),
    )
    .await;
    let mut second = create_at(
        &*store,
        &tenant,
        "alice",
        Timestamp::from_millis(base + 2_000),
    )
    .await;
    create_at(
        &*store,
        &tenant,
        "bob",
        Timestamp::from_millis(base + 3_000),
    )
    .await;
    second
        .close(Timestamp::from_millis(base + 4_000))
        .expect("close");
    store.save_conversation(&second).await.expect("save");
    let alice = VisitorId::new("alice").expect("valid id");

    let found = store
        .visitor_conversations(&tenant, &alice, 10)
        .await
        .expect("visitor_conversations");
    assert_eq!(
        ids(&found),
        vec![second.id(), first.id()],
        "one visitor's conversations, newest first, closed ones too"
    );
    assert_eq!(found[0], second, "the saved state comes back");
    assert_eq!(
        ids(&store
            .visitor_conversations(&tenant, &alice, 1)
            .await
            .expect("visitor_conversations")),
        vec![second.id()],
        "limit keeps the newest"
    );
    assert!(store
        .visitor_conversations(&tenant, &alice, 0)
        .await
        .expect("visitor_conversations")
        .is_empty());
    assert!(
        store
            .visitor_conversations(&fresh_tenant(), &alice, 10)
            .await
            .expect("visitor_conversations")
            .is_empty(),
        "another tenant's visitor of the same name is someone else"
    );
}

/// `agent_open_conversations` lists the conversations assigned to one agent
/// in one tenant right now, oldest first: not queued ones, not another
/// agent's, not closed ones, and not after a transfer away.
pub async fn agent_open_conversations_oldest_first<S: ConversationQueries + ?Sized>(store: Arc<S>) {
    let tenant = fresh_tenant();
    let agent = AgentId::new("contract-agent").expect("valid id");
    let other = AgentId::new("contract-other").expect("valid id");
    let base = minute_ago_plus(0).as_millis();
    let at = |ms: u64| Timestamp::from_millis(base + ms);
    assert!(store
        .agent_open_conversations(&tenant, &agent)
        .await
        .expect("agent_open_conversations")
        .is_empty());

    // Created out of order, so the answer's order is the store's doing.
    let mut newer = create_at(&*store, &tenant, "v2", at(2_000)).await;
    let mut older = create_at(&*store, &tenant, "v1", at(1_000)).await;
    let mut theirs = create_at(&*store, &tenant, "v3", at(1_500)).await;
    let mut queued = create_at(&*store, &tenant, "v4", at(500)).await;
    for (c, to) in [
        (&mut newer, &agent),
        (&mut older, &agent),
        (&mut theirs, &other),
    ] {
        c.enqueue(at(2_500)).expect("enqueue");
        c.assign(to.clone()).expect("assign");
        store.save_conversation(c).await.expect("save");
    }
    queued.enqueue(at(2_500)).expect("enqueue");
    store.save_conversation(&queued).await.expect("save");
    // The same agent id in another tenant is another agent.
    let mut elsewhere = create_at(&*store, &fresh_tenant(), "v1", at(0)).await;
    elsewhere.enqueue(at(100)).expect("enqueue");
    elsewhere.assign(agent.clone()).expect("assign");
    store.save_conversation(&elsewhere).await.expect("save");

    let open = store
        .agent_open_conversations(&tenant, &agent)
        .await
        .expect("agent_open_conversations");
    assert_eq!(open, vec![older.clone(), newer.clone()], "oldest first");

    older.close(at(3_000)).expect("close");
    store.save_conversation(&older).await.expect("save");
    newer.transfer(other.clone()).expect("transfer");
    store.save_conversation(&newer).await.expect("save");
    assert!(
        store
            .agent_open_conversations(&tenant, &agent)
            .await
            .expect("agent_open_conversations")
            .is_empty(),
        "closed is not open, and a transferred conversation is the new agent's"
    );
    assert_eq!(
        ids(&store
            .agent_open_conversations(&tenant, &other)
            .await
            .expect("agent_open_conversations")),
        vec![theirs.id(), newer.id()]
    );
    theirs.close(at(3_000)).expect("close");
    store.save_conversation(&theirs).await.expect("save");
}

/// `open_conversations` lists a tenant's conversations that are not closed
/// (waiting, bot, queued, assigned), oldest first by creation time then id,
/// at most `limit`, following closes and reopens.
pub async fn open_conversations_oldest_first<S: ConversationQueries + ?Sized>(store: Arc<S>) {
    let tenant = fresh_tenant();
    let base = minute_ago_plus(0).as_millis();
    let at = |ms: u64| Timestamp::from_millis(base + ms);
    // Created out of order, in every open state, and one closed.
    let mut middle = create_at(&*store, &tenant, "v2", at(2_000)).await;
    let oldest = create_at(&*store, &tenant, "v1", at(1_000)).await;
    let mut newest = create_at(&*store, &tenant, "v3", at(3_000)).await;
    let mut closed = create_at(&*store, &tenant, "v0", at(500)).await;
    middle.start_bot().expect("start_bot");
    store.save_conversation(&middle).await.expect("save");
    newest.enqueue(at(3_100)).expect("enqueue");
    newest
        .assign(AgentId::new("contract-agent").expect("valid id"))
        .expect("assign");
    store.save_conversation(&newest).await.expect("save");
    closed.close(at(600)).expect("close");
    store.save_conversation(&closed).await.expect("save");
    // Another tenant's open conversation is not ours.
    create_at(&*store, &fresh_tenant(), "v1", at(0)).await;

    let open = store
        .open_conversations(&tenant, 10)
        .await
        .expect("open_conversations");
    assert_eq!(
        ids(&open),
        vec![oldest.id(), middle.id(), newest.id()],
        "open ones only, oldest first"
    );
    assert_eq!(open[1], middle, "the saved state comes back");
    assert_eq!(
        ids(&store
            .open_conversations(&tenant, 2)
            .await
            .expect("open_conversations")),
        vec![oldest.id(), middle.id()],
        "limit keeps the oldest"
    );
    assert!(store
        .open_conversations(&tenant, 0)
        .await
        .expect("open_conversations")
        .is_empty());

    // Closing drops one from the list; reopening brings one back.
    let mut oldest = oldest;
    oldest.close(at(4_000)).expect("close");
    store.save_conversation(&oldest).await.expect("save");
    closed.reopen(at(4_100)).expect("reopen");
    store.save_conversation(&closed).await.expect("save");
    assert_eq!(
        ids(&store
            .open_conversations(&tenant, 10)
            .await
            .expect("open_conversations")),
        vec![closed.id(), middle.id(), newest.id()]
    );

    // Equal creation times come back in id order (ids are minted in order).
    let tie = fresh_tenant();
    let same = at(5_000);
    let a = create_at(&*store, &tie, "v1", same).await;
    let b = create_at(&*store, &tie, "v2", same).await;
    let mut expected = vec![a.id(), b.id()];
    expected.sort();
    assert_eq!(
        ids(&store
            .open_conversations(&tie, 10)
            .await
            .expect("open_conversations")),
        expected,
        "equal creation times are ordered by id"
    );
    assert!(store
        .open_conversations(&fresh_tenant(), 10)
        .await
        .expect("open_conversations")
        .is_empty());
}
