//! What every cs-datahub store must do beyond cs-core's contract (which
//! covers the inbox queries of `ConversationQueries`): batched appends and
//! the per-day counters
//! (`ext_contract!(make_store)`), and visitor records
//! (`visitor_contract!(make_store)`). Each store's test file runs both; the
//! scratch helpers at the end give each case a schema, database or key
//! prefix of its own.

#![allow(dead_code)]

use std::sync::Arc;

use cs_core::store::{ConversationQueries, MessageStore, StoreError};
use cs_core::{
    AgentId, Body, ClientMsgId, Conversation, Event, NewMessage, Party, Seq, TenantId, Timestamp,
    VisitorId,
};
use cs_datahub::store::{
    Day, MessageStoreExt, OversizeValue, VisitorRecord, VisitorStore, MAX_VISITOR_FIELD_BYTES,
};

#[macro_export]
macro_rules! ext_contract {
    ($make:ident) => {
        mod ext_contract {
            $crate::ext_contract!(@cases $make;
                batch_appends_number_and_dedup,
                batch_with_unknown_conversation_stores_nothing,
                daily_stats_follow_writes,
                oversize_bodies_are_refused,
                concurrent_appends_fail_alone,
            );
        }
    };
    (@cases $make:ident; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(store) = super::$make().await else { return };
                $crate::common::$case(::std::sync::Arc::new(store)).await;
            }
        )+
    };
}

/// The visitor-record cases, one `#[tokio::test]` each, in a module
/// `visitor_contract`; `$make` as for [`ext_contract!`], for a store that is
/// also a `VisitorStore`.
#[macro_export]
macro_rules! visitor_contract {
    ($make:ident) => {
        mod visitor_contract {
            $crate::ext_contract!(@cases $make;
                visitor_records_round_trip,
                touching_creates_and_bumps_last_seen,
                recent_visitors_newest_first,
                oversize_visitor_fields_are_refused,
                ids_with_colons_stay_apart,
            );
        }
    };
}

/// A tenant of its own per call, so parallel cases never share stats rows.
pub fn fresh_tenant() -> TenantId {
    TenantId::new(format!("t-{}", uuid::Uuid::now_v7())).unwrap()
}

fn visitor(name: &str) -> VisitorId {
    VisitorId::new(name).unwrap()
}

async fn open<S: MessageStore + ?Sized>(store: &S, tenant: &TenantId, v: &str) -> Conversation {
    let c = Conversation::open(tenant.clone(), visitor(v), Timestamp::now());
    store.create_conversation(&c).await.unwrap();
    c
}

pub async fn batch_appends_number_and_dedup<S: MessageStoreExt + ?Sized>(store: Arc<S>) {
    let tenant = fresh_tenant();
    let a = open(&*store, &tenant, "va").await;
    let b = open(&*store, &tenant, "vb").await;
    store
        .append(
            NewMessage::text(a.id(), Party::Bot, "before")
                .with_client_msg_id(ClientMsgId::new("x").unwrap()),
        )
        .await
        .unwrap();
    let batch = vec![
        NewMessage::text(a.id(), Party::Bot, "a2"),
        NewMessage::text(b.id(), Party::Bot, "b1")
            .with_client_msg_id(ClientMsgId::new("y").unwrap()),
        NewMessage::text(a.id(), Party::Bot, "retry of before")
            .with_client_msg_id(ClientMsgId::new("x").unwrap()),
        NewMessage::text(b.id(), Party::Bot, "b1 again")
            .with_client_msg_id(ClientMsgId::new("y").unwrap()),
        NewMessage::text(a.id(), Party::Bot, "a3"),
    ];
    let out = store.append_all(batch).await.unwrap();
    let got: Vec<(u64, bool)> = out
        .iter()
        .map(|a| (a.message.seq.get(), a.duplicate))
        .collect();
    assert_eq!(
        got,
        vec![(2, false), (1, false), (1, true), (1, true), (3, false)]
    );
    assert_eq!(
        out[2].message.body,
        Body::text("before"),
        "a retry returns the original"
    );
    assert_eq!(
        out[3].message.body,
        Body::text("b1"),
        "a retry within the batch returns the first"
    );
    assert_eq!(store.last_seq(a.id()).await.unwrap(), Seq::new(3));
    assert_eq!(store.last_seq(b.id()).await.unwrap(), Seq::new(1));
    let texts: Vec<Body> = store
        .after(a.id(), Seq::ZERO, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(
        texts,
        vec![Body::text("before"), Body::text("a2"), Body::text("a3")]
    );
    assert!(store.append_all(Vec::new()).await.unwrap().is_empty());
}

pub async fn batch_with_unknown_conversation_stores_nothing<S: MessageStoreExt + ?Sized>(
    store: Arc<S>,
) {
    let tenant = fresh_tenant();
    let a = open(&*store, &tenant, "va").await;
    let ghost = cs_core::ConversationId::new();
    let result = store
        .append_all(vec![
            NewMessage::text(a.id(), Party::Bot, "kept?"),
            NewMessage::text(ghost, Party::Bot, "nowhere"),
        ])
        .await;
    assert!(
        matches!(result, Err(StoreError::UnknownConversation(id)) if id == ghost),
        "{result:?}"
    );
    assert_eq!(
        store.last_seq(a.id()).await.unwrap(),
        Seq::ZERO,
        "all or nothing"
    );
}

/// Appends made at once share transactions in the SQL stores (group
/// commit); one that names an unknown conversation, or retries a stored
/// message, must not change what the others get.
pub async fn concurrent_appends_fail_alone<S: MessageStoreExt + ?Sized + 'static>(store: Arc<S>) {
    const TASKS: usize = 8;
    const EACH: u64 = 25;
    let tenant = fresh_tenant();
    let mut conversations = Vec::new();
    for i in 0..TASKS {
        conversations.push(open(&*store, &tenant, &format!("v{i}")).await.id());
    }
    let ghost = cs_core::ConversationId::new();
    let mut tasks = Vec::new();
    for (task, &id) in conversations.iter().enumerate() {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for i in 0..EACH {
                let client_id = ClientMsgId::new(format!("t{task}-m{i}")).unwrap();
                let message = NewMessage::text(id, Party::Bot, format!("{task}/{i}"))
                    .with_client_msg_id(client_id.clone());
                let first = store.append(message.clone()).await;
                // The same message again, while others are in flight: a retry.
                let again = store.append(message).await;
                // And one for nowhere, from the same task.
                let lost = store
                    .append(NewMessage::text(ghost, Party::Bot, "nowhere"))
                    .await;
                outcomes.push((first, again, lost));
            }
            outcomes
        }));
    }
    for (task, id) in tasks.into_iter().zip(&conversations) {
        let outcomes = task.await.unwrap();
        for (i, (first, again, lost)) in outcomes.into_iter().enumerate() {
            let first = first.unwrap();
            assert_eq!(
                first.message.seq,
                Seq::new(i as u64 + 1),
                "gap-free per conversation"
            );
            assert!(!first.duplicate);
            let again = again.unwrap();
            assert!(again.duplicate, "a retry is recognised");
            assert_eq!(again.message.seq, first.message.seq);
            assert!(
                matches!(lost, Err(StoreError::UnknownConversation(g)) if g == ghost),
                "{lost:?}"
            );
        }
        assert_eq!(store.last_seq(*id).await.unwrap(), Seq::new(EACH));
    }
}

pub async fn daily_stats_follow_writes<S: MessageStoreExt + ?Sized>(store: Arc<S>) {
    let tenant = fresh_tenant();
    let day = |d: i64| Timestamp::from_millis(u64::try_from(d).unwrap() * 86_400_000 + 3_600_000);
    let today = Day::today();
    let yesterday = today.minus(1);
    let at = |d: Day| day(d.0);

    // Yesterday: a conversation the bot settled alone.
    let mut by_bot = Conversation::open(tenant.clone(), visitor("v1"), at(yesterday));
    store.create_conversation(&by_bot).await.unwrap();
    by_bot.start_bot().unwrap();
    store.save_conversation(&by_bot).await.unwrap();
    let mut m = NewMessage::text(by_bot.id(), Party::Bot, "It ships tomorrow.");
    m.created_at = at(yesterday);
    store.append(m).await.unwrap();
    by_bot.close(at(yesterday)).unwrap();
    store.save_conversation(&by_bot).await.unwrap();

    // Today: a hand-off, then an agent answers 30 s after the queue.
    let start = at(today);
    let mut human = Conversation::open(tenant.clone(), visitor("v2"), start);
    store.create_conversation(&human).await.unwrap();
    human.start_bot().unwrap();
    let mut handoff = NewMessage::new(
        human.id(),
        Party::System,
        Body::Event(Event::Handoff {
            reason: "asked for a person".into(),
        }),
    );
    handoff.created_at = start;
    store.append(handoff).await.unwrap();
    human.enqueue(start).unwrap();
    human.assign(AgentId::new("a").unwrap()).unwrap();
    store.save_conversation(&human).await.unwrap();
    let mut reply = NewMessage::text(
        human.id(),
        Party::Agent(AgentId::new("a").unwrap()),
        "Hi, I'm here.",
    );
    reply.created_at = start.saturating_add(std::time::Duration::from_secs(30));
    let stored = store.append(reply).await.unwrap();
    human.record_message(&stored.message);
    store.save_conversation(&human).await.unwrap();
    store.save_conversation(&human).await.unwrap(); // saving again counts nothing twice
    human
        .close(start.saturating_add(std::time::Duration::from_secs(60)))
        .unwrap();
    store.save_conversation(&human).await.unwrap();

    let stats = store
        .daily_stats(&tenant, today.minus(29), today)
        .await
        .unwrap();
    assert_eq!(stats.len(), 2, "{stats:?}");
    let (y, t) = (&stats[0], &stats[1]);
    assert_eq!(
        (
            y.day,
            y.conversations,
            y.messages,
            y.closed,
            y.bot_resolved,
            y.handoffs
        ),
        (yesterday, 1, 1, 1, 1, 0)
    );
    assert_eq!(
        (
            t.day,
            t.conversations,
            t.messages,
            t.closed,
            t.bot_resolved,
            t.handoffs
        ),
        (today, 1, 2, 1, 0, 1)
    );
    assert_eq!((t.first_responses, t.first_response_ms_total), (1, 30_000));
    assert_eq!(
        t.mean_first_response(),
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(y.bot_resolved_share(), Some(1.0));
    assert!(store
        .daily_stats(&fresh_tenant(), today.minus(29), today)
        .await
        .unwrap()
        .is_empty());
}

pub async fn oversize_bodies_are_refused<S: MessageStoreExt + ?Sized>(store: Arc<S>) {
    let tenant = fresh_tenant();
    let c = open(&*store, &tenant, "v").await;
    let huge = NewMessage::text(
        c.id(),
        Party::Bot,
        "x".repeat(cs_datahub::store::MAX_BODY_JSON_BYTES + 1),
    );
    match store.append(huge).await {
        Err(StoreError::Backend { source, .. }) => {
            assert!(
                source
                    .downcast_ref::<cs_datahub::store::OversizeValue>()
                    .is_some(),
                "{source}"
            );
        }
        other => panic!("an oversize body must be refused with OversizeValue, got {other:?}"),
    }
    assert_eq!(store.last_seq(c.id()).await.unwrap(), Seq::ZERO);
    store
        .append(NewMessage::text(c.id(), Party::Bot, "still serving"))
        .await
        .unwrap();
}

fn at(ms: u64) -> Timestamp {
    Timestamp::from_millis(1_700_000_000_000 + ms)
}

pub async fn visitor_records_round_trip<S: VisitorStore + ?Sized>(store: Arc<S>) {
    let tenant = fresh_tenant();
    let ada = visitor("ada");
    assert_eq!(store.visitor(&tenant, &ada).await.unwrap(), None);
    let mut record = VisitorRecord::new(tenant.clone(), ada.clone(), at(1_000));
    record.display_name = Some("Ada Lovelace 艾达".into());
    record.email = Some("ada@example.com".into());
    record.attributes.insert("tier".into(), "gold".into());
    record.attributes.insert("locale".into(), "zh-CN".into());
    record.last_seen = at(2_000);
    assert_eq!(store.upsert_visitor(&record).await.unwrap(), record);
    assert_eq!(
        store.visitor(&tenant, &ada).await.unwrap().as_ref(),
        Some(&record)
    );

    // An update keeps first_seen and replaces the rest, emptied fields too.
    let update = VisitorRecord {
        display_name: None,
        email: Some("ada@new.example".into()),
        first_seen: at(5_000),
        last_seen: at(5_000),
        attributes: [("tier".to_owned(), "platinum".to_owned())].into(),
        ..record.clone()
    };
    let stored = store.upsert_visitor(&update).await.unwrap();
    assert_eq!(
        stored,
        VisitorRecord {
            first_seen: at(1_000),
            ..update
        }
    );
    assert_eq!(store.visitor(&tenant, &ada).await.unwrap(), Some(stored));
    assert_eq!(
        store.visitor(&fresh_tenant(), &ada).await.unwrap(),
        None,
        "tenants do not share visitors"
    );
}

pub async fn touching_creates_and_bumps_last_seen<S: VisitorStore + ?Sized>(store: Arc<S>) {
    let tenant = fresh_tenant();
    let bob = visitor("bob");
    store.touch_visitor(&tenant, &bob, at(10)).await.unwrap();
    assert_eq!(
        store.visitor(&tenant, &bob).await.unwrap(),
        Some(VisitorRecord::new(tenant.clone(), bob.clone(), at(10))),
        "a first touch makes a minimal record"
    );
    store.touch_visitor(&tenant, &bob, at(20)).await.unwrap();
    let mut named = store.visitor(&tenant, &bob).await.unwrap().unwrap();
    assert_eq!((named.first_seen, named.last_seen), (at(10), at(20)));

    named.display_name = Some("Bob".into());
    named.first_seen = at(30);
    named.last_seen = at(30);
    store.upsert_visitor(&named).await.unwrap();
    store.touch_visitor(&tenant, &bob, at(40)).await.unwrap();
    let now = store.visitor(&tenant, &bob).await.unwrap().unwrap();
    assert_eq!(
        now.display_name.as_deref(),
        Some("Bob"),
        "a touch keeps the rest"
    );
    assert_eq!((now.first_seen, now.last_seen), (at(10), at(40)));
}

pub async fn recent_visitors_newest_first<S: VisitorStore + ?Sized>(store: Arc<S>) {
    let tenant = fresh_tenant();
    for (name, ms) in [("a", 100), ("b", 300), ("c", 200)] {
        store
            .touch_visitor(&tenant, &visitor(name), at(ms))
            .await
            .unwrap();
    }
    let mut d = VisitorRecord::new(tenant.clone(), visitor("d"), at(50));
    d.last_seen = at(400);
    store.upsert_visitor(&d).await.unwrap();
    let names = |v: Vec<VisitorRecord>| {
        v.iter()
            .map(|r| r.id.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(store.recent_visitors(&tenant, 10).await.unwrap()),
        vec!["d", "b", "c", "a"]
    );
    assert_eq!(
        names(store.recent_visitors(&tenant, 2).await.unwrap()),
        vec!["d", "b"]
    );
    assert!(store.recent_visitors(&tenant, 0).await.unwrap().is_empty());
    store
        .touch_visitor(&tenant, &visitor("a"), at(500))
        .await
        .unwrap();
    let recent = store.recent_visitors(&tenant, 1).await.unwrap();
    assert_eq!(names(recent.clone()), vec!["a"]);
    assert_eq!(recent[0].first_seen, at(100));
    assert!(store
        .recent_visitors(&fresh_tenant(), 10)
        .await
        .unwrap()
        .is_empty());
}

pub async fn oversize_visitor_fields_are_refused<S: VisitorStore + ?Sized>(store: Arc<S>) {
    let tenant = fresh_tenant();
    let eve = visitor("eve");
    let base = VisitorRecord::new(tenant.clone(), eve.clone(), at(0));
    let too_long = "é".repeat(MAX_VISITOR_FIELD_BYTES / 2 + 1);
    let cases = [
        (
            "visitor display name",
            VisitorRecord {
                display_name: Some(too_long.clone()),
                ..base.clone()
            },
        ),
        (
            "visitor email",
            VisitorRecord {
                email: Some(too_long),
                ..base.clone()
            },
        ),
        (
            "visitor attributes",
            VisitorRecord {
                attributes: (0..200)
                    .map(|i| (format!("key-{i}"), "v".repeat(100)))
                    .collect(),
                ..base.clone()
            },
        ),
    ];
    for (field, record) in cases {
        match store.upsert_visitor(&record).await {
            Err(StoreError::Backend { source, .. }) => {
                let oversize = source
                    .downcast_ref::<OversizeValue>()
                    .unwrap_or_else(|| panic!("{field}: {source}"));
                assert_eq!(oversize.field, field);
            }
            other => panic!("{field}: expected OversizeValue, got {other:?}"),
        }
    }
    assert_eq!(
        store.visitor(&tenant, &eve).await.unwrap(),
        None,
        "nothing stored"
    );
    let at_limit = VisitorRecord {
        display_name: Some("n".repeat(MAX_VISITOR_FIELD_BYTES)),
        email: Some("e".repeat(MAX_VISITOR_FIELD_BYTES)),
        ..base
    };
    assert_eq!(store.upsert_visitor(&at_limit).await.unwrap(), at_limit);
}

/// Ids may contain `:`; tenant `t:x` with visitor `y` is not tenant `t`
/// with visitor `x:y`.
pub async fn ids_with_colons_stay_apart<S: VisitorStore + ?Sized>(store: Arc<S>) {
    let t = fresh_tenant();
    let t_x = TenantId::new(format!("{t}:x")).unwrap();
    let mut one = VisitorRecord::new(t_x.clone(), visitor("y"), at(1));
    one.display_name = Some("one".into());
    let mut two = VisitorRecord::new(t.clone(), visitor("x:y"), at(2));
    two.display_name = Some("two".into());
    store.upsert_visitor(&one).await.unwrap();
    store.upsert_visitor(&two).await.unwrap();
    assert_eq!(store.visitor(&t_x, &visitor("y")).await.unwrap(), Some(one));
    assert_eq!(store.visitor(&t, &visitor("x:y")).await.unwrap(), Some(two));
    assert_eq!(store.recent_visitors(&t, 10).await.unwrap().len(), 1);
}

type Cleanup = Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>;

/// A store that runs `cleanup` (dropping its test schema, database or keys)
/// when the test is done with it, pass or fail.
pub struct Scratch<S> {
    pub store: S,
    // In a mutex only so the wrapper is `Sync`, as a store must be.
    cleanup: std::sync::Mutex<Option<Cleanup>>,
}

impl<S> Scratch<S> {
    /// `cleanup` must open its own connection: it runs on a runtime of its
    /// own, because the test's runtime may be shutting down by then.
    pub fn new(store: S, cleanup: Cleanup) -> Self {
        Self {
            store,
            cleanup: std::sync::Mutex::new(Some(cleanup)),
        }
    }
}

impl<S> Drop for Scratch<S> {
    fn drop(&mut self) {
        let Some(cleanup) = self.cleanup.get_mut().ok().and_then(Option::take) else {
            return;
        };
        let done = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if tokio::time::timeout(std::time::Duration::from_secs(20), cleanup())
                    .await
                    .is_err()
                {
                    eprintln!("test cleanup timed out; the next run's sweep removes what is left");
                }
            });
        });
        let _ = done.join();
    }
}

/// A fresh name for a test schema, database or key prefix:
/// `cs_test_<unix seconds>_<random>`, so a later run can sweep leftovers of a
/// crashed run by age.
pub fn scratch_name() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("cs_test_{secs}_{}", &random[..12])
}

/// Whether a scratch name is from a run over an hour ago.
pub fn is_stale_scratch(name: &str) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    name.strip_prefix("cs_test_")
        .and_then(|rest| rest.split('_').next())
        .and_then(|secs| secs.parse::<u64>().ok())
        .is_some_and(|secs| secs + 3600 < now)
}

macro_rules! delegate_store {
    () => {
        #[async_trait::async_trait]
        impl<S: MessageStoreExt> MessageStore for Scratch<S> {
            async fn create_conversation(&self, c: &Conversation) -> Result<(), StoreError> {
                self.store.create_conversation(c).await
            }
            async fn save_conversation(&self, c: &Conversation) -> Result<(), StoreError> {
                self.store.save_conversation(c).await
            }
            async fn conversation(
                &self,
                id: cs_core::ConversationId,
            ) -> Result<Conversation, StoreError> {
                self.store.conversation(id).await
            }
            async fn append(&self, m: NewMessage) -> Result<cs_core::store::Appended, StoreError> {
                self.store.append(m).await
            }
            async fn last_seq(&self, c: cs_core::ConversationId) -> Result<Seq, StoreError> {
                self.store.last_seq(c).await
            }
            async fn range(
                &self,
                c: cs_core::ConversationId,
                from: Seq,
                to: Seq,
                limit: usize,
            ) -> Result<Vec<cs_core::Message>, StoreError> {
                self.store.range(c, from, to, limit).await
            }
            async fn recent(
                &self,
                c: cs_core::ConversationId,
                n: usize,
            ) -> Result<Vec<cs_core::Message>, StoreError> {
                self.store.recent(c, n).await
            }
            async fn after(
                &self,
                c: cs_core::ConversationId,
                after: Seq,
                limit: usize,
            ) -> Result<Vec<cs_core::Message>, StoreError> {
                self.store.after(c, after, limit).await
            }
        }

        #[async_trait::async_trait]
        impl<S: MessageStoreExt> ConversationQueries for Scratch<S> {
            async fn visitor_conversations(
                &self,
                t: &TenantId,
                v: &VisitorId,
                limit: usize,
            ) -> Result<Vec<Conversation>, StoreError> {
                self.store.visitor_conversations(t, v, limit).await
            }
            async fn agent_open_conversations(
                &self,
                t: &TenantId,
                a: &AgentId,
            ) -> Result<Vec<Conversation>, StoreError> {
                self.store.agent_open_conversations(t, a).await
            }
            async fn open_conversations(
                &self,
                t: &TenantId,
                limit: usize,
            ) -> Result<Vec<Conversation>, StoreError> {
                self.store.open_conversations(t, limit).await
            }
        }

        #[async_trait::async_trait]
        impl<S: MessageStoreExt> MessageStoreExt for Scratch<S> {
            async fn append_all(
                &self,
                m: Vec<NewMessage>,
            ) -> Result<Vec<cs_core::store::Appended>, StoreError> {
                self.store.append_all(m).await
            }
            async fn daily_stats(
                &self,
                t: &TenantId,
                from: Day,
                to: Day,
            ) -> Result<Vec<cs_datahub::store::DailyStats>, StoreError> {
                self.store.daily_stats(t, from, to).await
            }
        }
    };
}
delegate_store!();

#[async_trait::async_trait]
impl<S: cs_core::store::ReportStore> cs_core::store::ReportStore for Scratch<S> {
    fn set_report_zone(&self, t: &TenantId, zone: cs_core::store::ReportZone) {
        self.store.set_report_zone(t, zone);
    }
    async fn add_report_counts(
        &self,
        t: &TenantId,
        deltas: &cs_core::store::reports::Deltas,
    ) -> Result<(), StoreError> {
        self.store.add_report_counts(t, deltas).await
    }
    async fn report_counts(
        &self,
        t: &TenantId,
        from: cs_core::store::ReportDay,
        to: cs_core::store::ReportDay,
    ) -> Result<Vec<cs_core::store::Count>, StoreError> {
        self.store.report_counts(t, from, to).await
    }
}

#[async_trait::async_trait]
impl<S: VisitorStore> VisitorStore for Scratch<S> {
    async fn upsert_visitor(&self, r: &VisitorRecord) -> Result<VisitorRecord, StoreError> {
        self.store.upsert_visitor(r).await
    }
    async fn visitor(
        &self,
        t: &TenantId,
        v: &VisitorId,
    ) -> Result<Option<VisitorRecord>, StoreError> {
        self.store.visitor(t, v).await
    }
    async fn touch_visitor(
        &self,
        t: &TenantId,
        v: &VisitorId,
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.store.touch_visitor(t, v, now).await
    }
    async fn recent_visitors(
        &self,
        t: &TenantId,
        limit: usize,
    ) -> Result<Vec<VisitorRecord>, StoreError> {
        self.store.recent_visitors(t, limit).await
    }
}

/// Deletes every Redis key matching `pattern`.
pub async fn delete_redis_keys(url: &str, pattern: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys = scan_redis(&mut conn, pattern).await;
    for chunk in keys.chunks(500) {
        let _: () = redis::cmd("DEL")
            .arg(chunk)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}

async fn scan_redis(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
}

/// Deletes Redis keys left by a run that crashed more than an hour ago.
pub async fn sweep_stale_redis_keys(url: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut stale = std::collections::BTreeSet::new();
    for key in scan_redis(&mut conn, "cs_test_*").await {
        let prefix = key.split(':').next().unwrap_or_default().to_owned();
        if is_stale_scratch(&prefix) {
            stale.insert(prefix);
        }
    }
    for prefix in stale {
        delete_redis_keys(url, &format!("{prefix}:*")).await;
    }
}

/// Drops a PostgreSQL schema and everything in it.
pub async fn drop_pg_schema(url: &str, schema: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(&mut conn)
        .await
        .unwrap();
}

/// Drops PostgreSQL schemas left by a run that crashed more than an hour ago.
pub async fn sweep_stale_pg_schemas(url: &str) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT schema_name::text FROM information_schema.schemata WHERE schema_name LIKE 'cs\\_test\\_%'",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    for name in names.into_iter().filter(|n| is_stale_scratch(n)) {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE"))
            .execute(&mut conn)
            .await;
    }
}
