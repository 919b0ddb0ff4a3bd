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
use crate::store::{
    ConversationQueries, MessageStore, ReportDay, ReportStore, ReportZone, StoreError,
};
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

// --------------------------------------------------------------------------
// Report counters (`ReportStore`): every store that keeps them runs these.

/// Expands to one `#[tokio::test]` per report case, in a module named
/// `report_store_contract`; `$make` as for [`message_store_contract!`], for
/// a store that is also a [`ReportStore`](crate::store::ReportStore).
#[macro_export]
macro_rules! report_store_contract {
    ($make:ident) => {
        $crate::report_store_contract!(@cases $make;
            reports_count_a_scripted_day,
            reports_fall_on_the_zones_day,
        );
    };
    (@cases $make:ident; $($case:ident),+ $(,)?) => {
        mod report_store_contract {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(store) = super::$make().await else { return };
                    $crate::store::contract::$case(::std::sync::Arc::new(store)).await;
                }
            )+
        }
    };
}

/// 2026-03-02 00:00 UTC, the scripted day.
pub const SCRIPTED_DAY_START_MS: u64 = 1_772_409_600_000;

fn at(seconds_into_the_day: u64) -> Timestamp {
    Timestamp::from_millis(SCRIPTED_DAY_START_MS + seconds_into_the_day * 1000)
}

async fn append_at<S: MessageStore + ?Sized>(
    store: &S,
    conversation: &mut Conversation,
    sender: Party,
    body: Body,
    when: Timestamp,
) {
    let message = NewMessage {
        created_at: when,
        ..NewMessage::new(conversation.id(), sender, body)
    };
    let stored = store.append(message).await.expect("append");
    let first = conversation.first_response_at();
    conversation.record_message(&stored.message);
    if conversation.first_response_at() != first {
        store.save_conversation(conversation).await.expect("save");
    }
}

async fn save<S: MessageStore + ?Sized>(store: &S, conversation: &Conversation) {
    store.save_conversation(conversation).await.expect("save");
}

/// Plays the scripted day of `tenant` (UTC days unless the caller set a
/// zone) into `store`, as the message path would (a transition is saved,
/// then its event appended), at fixed times from 10:00:
///
/// - A: the bot answers twice and the visitor leaves: closed at +60 s;
/// - B: the bot hands off ("low confidence"), alice takes it after 20 s and
///   answers 5 s later, transfers it to bob 17 s after taking it, bob
///   answers 10 s later and closes 60 s after taking it (100 s after it
///   opened), and the visitor rates it 4 ("quick").
///
/// Returns the counters it must produce, keyed by (agent or "", measure).
pub async fn play_scripted_day<S: MessageStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
) -> std::collections::BTreeMap<(String, String), i64> {
    let alice = AgentId::new("alice").expect("valid id");
    let bob = AgentId::new("bob").expect("valid id");
    let shopper = Party::Visitor(visitor());
    let t0 = 10 * 3600;

    let mut a = Conversation::open(tenant.clone(), visitor(), at(t0));
    store.create_conversation(&a).await.expect("create");
    a.start_bot().expect("start bot");
    save(store, &a).await;
    for (i, party) in [shopper.clone(), Party::Bot, shopper.clone(), Party::Bot]
        .into_iter()
        .enumerate()
    {
        append_at(store, &mut a, party, Body::text("…"), at(t0 + 1 + i as u64)).await;
    }
    a.close(at(t0 + 60)).expect("close");
    save(store, &a).await;
    let close = Body::Event(Event::Close { reason: None });
    append_at(store, &mut a, Party::System, close.clone(), at(t0 + 60)).await;

    let b0 = t0 + 100;
    let mut b = Conversation::open(tenant.clone(), visitor(), at(b0));
    store.create_conversation(&b).await.expect("create");
    b.start_bot().expect("start bot");
    save(store, &b).await;
    append_at(
        store,
        &mut b,
        shopper.clone(),
        Body::text("refund?"),
        at(b0 + 1),
    )
    .await;
    append_at(store, &mut b, Party::Bot, Body::text("…"), at(b0 + 2)).await;
    b.enqueue(at(b0 + 3)).expect("enqueue");
    save(store, &b).await;
    let handoff = Body::Event(Event::Handoff {
        reason: "low confidence".into(),
    });
    append_at(store, &mut b, Party::System, handoff, at(b0 + 3)).await;
    b.assign(alice.clone()).expect("assign");
    save(store, &b).await;
    let assigned = Body::Event(Event::Assigned {
        agent: alice.clone(),
    });
    append_at(store, &mut b, Party::System, assigned, at(b0 + 23)).await;
    let from_alice = Party::Agent(alice.clone());
    append_at(store, &mut b, from_alice, Body::text("hello"), at(b0 + 28)).await;
    append_at(
        store,
        &mut b,
        shopper.clone(),
        Body::text("hi"),
        at(b0 + 30),
    )
    .await;
    b.transfer(bob.clone()).expect("transfer");
    save(store, &b).await;
    let transfer = Body::Event(Event::Transfer {
        from: alice.clone(),
        to: bob.clone(),
    });
    append_at(store, &mut b, Party::System, transfer, at(b0 + 40)).await;
    let from_bob = Party::Agent(bob.clone());
    append_at(store, &mut b, from_bob, Body::text("done"), at(b0 + 50)).await;
    b.close(at(b0 + 100)).expect("close");
    save(store, &b).await;
    append_at(store, &mut b, Party::System, close, at(b0 + 100)).await;
    let rating = Body::Event(Event::Rating {
        score: 4,
        comment: Some("quick".into()),
        agent: Some(bob.clone()),
    });
    append_at(store, &mut b, shopper, rating, at(b0 + 110)).await;

    use crate::store::reports::measure as m;
    let mut expected = std::collections::BTreeMap::new();
    let mut put = |agent: &str, measure: String, value: i64| {
        expected.insert((agent.to_owned(), measure), value);
    };
    let time =
        |put: &mut dyn FnMut(&str, String, i64), agent: &str, name: &str, ms: &[(usize, i64)]| {
            put(agent, m::count(name), ms.len() as i64);
            put(agent, m::sum_ms(name), ms.iter().map(|(_, v)| v).sum());
            let mut by_bucket = std::collections::BTreeMap::new();
            for (bucket, _) in ms {
                *by_bucket.entry(*bucket).or_insert(0) += 1;
            }
            for (bucket, n) in by_bucket {
                put(agent, m::bucket(name, bucket), n);
            }
        };
    put("", m::OPENED.into(), 2);
    put("", m::CLOSED.into(), 2);
    put("", m::CONTAINED.into(), 1);
    put("", m::HANDOFFS.into(), 1);
    put("", m::handoff_reason("low confidence"), 1);
    put("", m::TRANSFERS.into(), 1);
    put("", "messages:visitor".into(), 4);
    put("", "messages:bot".into(), 3);
    put("", "messages:agent".into(), 2);
    // Bucket indexes: 0 is ≤ 5 s, 1 ≤ 10 s, 2 ≤ 30 s, 3 ≤ 1 min, 4 ≤ 2 min.
    time(&mut put, "", m::WAIT, &[(2, 20_000)]);
    time(&mut put, "", m::FIRST_RESPONSE, &[(2, 25_000)]);
    time(&mut put, "", m::RESOLUTION, &[(3, 60_000), (4, 100_000)]);
    put("", m::HANDLED.into(), 2);
    put("", m::HANDLING_MS.into(), 17_000 + 60_000);
    for agent in ["", "bob"] {
        put(agent, m::RATINGS.into(), 1);
        put(agent, m::RATING_SUM.into(), 4);
        put(agent, m::rating(4), 1);
    }
    put("alice", m::HANDLED.into(), 1);
    put("alice", m::HANDLING_MS.into(), 17_000);
    put("alice", m::TRANSFERS.into(), 1);
    time(&mut put, "alice", m::FIRST_RESPONSE, &[(0, 5_000)]);
    put("bob", m::HANDLED.into(), 1);
    put("bob", m::HANDLING_MS.into(), 60_000);
    time(&mut put, "bob", m::FIRST_RESPONSE, &[(1, 10_000)]);
    expected
}

/// A tenant's counters on one day, keyed by (agent or "", measure).
///
/// # Panics
/// If the store fails.
pub async fn counters_on<S: ReportStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    day: ReportDay,
) -> std::collections::BTreeMap<(String, String), i64> {
    store
        .report_counts(tenant, day, day)
        .await
        .expect("report_counts")
        .into_iter()
        .map(|c| {
            assert_eq!(c.day, day);
            let agent = c.agent.map_or_else(String::new, |a| a.to_string());
            ((agent, c.measure), c.value)
        })
        .collect()
}

/// Every measure of the scripted day is exact, and nothing else is counted.
pub async fn reports_count_a_scripted_day<S: ConversationQueries + ReportStore + ?Sized>(
    store: Arc<S>,
) {
    let tenant = fresh_tenant();
    let expected = play_scripted_day(&*store, &tenant).await;
    let day = ReportZone::UTC.day_of(at(0));
    assert_eq!(
        counters_on(&*store, &tenant, day).await,
        expected,
        "the scripted day's counters"
    );
    // Neither day around it has anything.
    assert!(store
        .report_counts(&tenant, ReportDay(day.0 - 1), ReportDay(day.0 - 1))
        .await
        .expect("report_counts")
        .is_empty());
    assert!(store
        .report_counts(&tenant, day.next(), day.next())
        .await
        .expect("report_counts")
        .is_empty());
}

/// The tenant's zone decides the day: a conversation opened at 23:30 UTC
/// and closed at 00:30 UTC counts its opening and its close on two days in
/// UTC, and both on the next day in +01:00.
pub async fn reports_fall_on_the_zones_day<S: ConversationQueries + ReportStore + ?Sized>(
    store: Arc<S>,
) {
    let (east, utc) = (fresh_tenant(), fresh_tenant());
    store.set_report_zone(&east, ReportZone::fixed(60).expect("zone"));
    let day = ReportZone::UTC.day_of(at(0));
    for tenant in [&east, &utc] {
        let mut c = Conversation::open(tenant.clone(), visitor(), at(23 * 3600 + 1800));
        store.create_conversation(&c).await.expect("create");
        c.start_bot().expect("start bot");
        save(&*store, &c).await;
        let said = Body::text("late");
        append_at(
            &*store,
            &mut c,
            Party::Visitor(visitor()),
            said,
            at(23 * 3600 + 1900),
        )
        .await;
        c.close(at(24 * 3600 + 1800)).expect("close");
        save(&*store, &c).await;
    }
    let key = |measure: &str| (String::new(), measure.to_owned());
    let on = |counters: &std::collections::BTreeMap<(String, String), i64>, measure: &str| {
        counters.get(&key(measure)).copied().unwrap_or(0)
    };
    // UTC: opened and the message on the day, closed the next.
    let (d0, d1) = (
        counters_on(&*store, &utc, day).await,
        counters_on(&*store, &utc, day.next()).await,
    );
    assert_eq!(
        (
            on(&d0, "opened"),
            on(&d0, "messages:visitor"),
            on(&d0, "closed")
        ),
        (1, 1, 0)
    );
    assert_eq!(
        (on(&d1, "opened"), on(&d1, "closed"), on(&d1, "contained")),
        (0, 1, 1)
    );
    // +01:00: 23:30 UTC is 00:30 the next day, and the close (00:30 UTC)
    // is 01:30 that same day: all of it on the next day.
    let (e0, e1, e2) = (
        counters_on(&*store, &east, day).await,
        counters_on(&*store, &east, day.next()).await,
        counters_on(&*store, &east, day.next().next()).await,
    );
    assert!(e0.is_empty(), "nothing on the UTC day in +01:00: {e0:?}");
    assert_eq!(
        (
            on(&e1, "opened"),
            on(&e1, "messages:visitor"),
            on(&e1, "closed")
        ),
        (1, 1, 1)
    );
    assert_eq!(on(&e1, "resolution:count"), 1);
    assert!(e2.is_empty(), "nothing on the day after in +01:00: {e2:?}");
    // One read over the three days holds them all, in day order.
    let all = store
        .report_counts(&east, day, day.next().next())
        .await
        .expect("report_counts");
    assert!(all.windows(2).all(|w| w[0].day <= w[1].day));
    assert_eq!(all.iter().filter(|c| c.measure == "opened").count(), 1);
}
