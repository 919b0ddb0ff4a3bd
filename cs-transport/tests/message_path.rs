//! The path of one message, end to end through pool, dispatcher and store:
//! delivery and acks, retries, authorization, resume under a concurrent
//! producer, hooks, and state changes.

mod support;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cs_core::store::MemoryStore;
use cs_core::testing::Intercepted;
use cs_core::{Body, ClientMsgId, ConversationState, Event, Message, NewMessage, Party, Seq};
use cs_transport::{
    Actor, Change, Command, DispatcherConfig, ErrorCode, Hook, HookAction, HookContext, HookError,
    Origin, Outcome, PathError, PathEvent, ServerFrame, SubmitError,
};
use support::*;

#[tokio::test]
async fn a_message_is_stored_delivered_and_acked() {
    let node = Node::memory();
    let conversation = node.conversation("shop", "ann", None).await;
    let mut ann = node.connect("shop", visitor("ann"));
    let mut alice = node.connect("shop", agent("alice"));
    // Alice's console is open before the conversation is assigned to her: it
    // joins the conversation with the assignment.
    node.change(
        conversation.id(),
        Change::HandOff {
            reason: "asked for a person".into(),
        },
    )
    .await;
    node.change(conversation.id(), Change::Assign(agent_id("alice")))
        .await;
    let assigned = alice.next_message().await;
    assert_eq!(
        assigned.body,
        Body::Event(Event::Assigned {
            agent: agent_id("alice")
        })
    );

    node.dispatcher
        .submit(ann.join_command(conversation.id(), Seq::ZERO))
        .await
        .unwrap();
    // The replay has the hand-off and the assignment, then ann is live.
    assert_eq!(ann.next_message().await.seq, Seq::new(1));
    assert_eq!(ann.next_message().await.seq, Seq::new(2));
    assert!(
        matches!(ann.next().await, ServerFrame::Replayed { up_to, complete: true, .. } if up_to == Seq::new(2))
    );

    node.dispatcher
        .submit(ann.send_command(conversation.id(), "where is my parcel?"))
        .await
        .unwrap();
    let delivered = alice.next_message().await;
    assert_eq!(delivered.body, Body::text("where is my parcel?"));
    assert_eq!(delivered.seq, Seq::new(3));
    // Ann gets her own message (every joined tab does) and the ack.
    assert_eq!(ann.next_message().await.seq, Seq::new(3));
    assert!(
        matches!(ann.next().await, ServerFrame::Ack { seq, duplicate: false, .. } if seq == Seq::new(3))
    );

    let stored = node.store.recent(conversation.id(), 10).await.unwrap();
    assert_eq!(
        stored.last().unwrap().body,
        Body::text("where is my parcel?")
    );
    let metrics = node.metrics.snapshot();
    assert_eq!(metrics.persisted, 3);
    assert_eq!(metrics.rejected, 0);
}

#[tokio::test]
async fn a_retry_is_acked_with_the_original_seq_and_not_delivered_twice() {
    let node = Node::memory();
    let conversation = node.conversation("shop", "ann", Some("alice")).await;
    let mut alice = node.connect("shop", agent("alice"));
    node.dispatcher
        .submit(alice.join_command(conversation.id(), Seq::new(2)))
        .await
        .unwrap();
    assert!(matches!(
        alice.next().await,
        ServerFrame::Replayed { complete: true, .. }
    ));
    let mut ann = node.connect("shop", visitor("ann"));

    let send = |text: &str| Command::Send {
        origin: Origin::Connection(ann.conn),
        message: NewMessage::text(conversation.id(), visitor("ann"), text)
            .with_client_msg_id(ClientMsgId::new("m-1").unwrap()),
    };
    node.dispatcher.submit(send("pay now")).await.unwrap();
    node.dispatcher
        .submit(send("pay now (resent)"))
        .await
        .unwrap();
    let first = ann.next().await;
    let second = ann.next().await;
    assert!(matches!(first, ServerFrame::Ack { seq, duplicate: false, .. } if seq == Seq::new(3)));
    assert!(matches!(second, ServerFrame::Ack { seq, duplicate: true, .. } if seq == Seq::new(3)));
    assert_eq!(alice.next_message().await.body, Body::text("pay now"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        alice.try_next().is_none(),
        "the retry must not be delivered again"
    );
    assert_eq!(node.metrics.snapshot().duplicates, 1);
}

#[tokio::test]
async fn a_retry_after_a_transfer_or_a_close_gets_its_original_ack() {
    let node = Node::memory();
    let id = node.conversation("shop", "ann", Some("alice")).await.id();
    let alice = node.connect("shop", agent("alice"));
    let ann = node.connect("shop", visitor("ann"));
    let send = |client: &Client, key: &str| Command::Send {
        origin: Origin::Connection(client.conn),
        message: NewMessage::text(id, client.party.clone(), "are you there?")
            .with_client_msg_id(ClientMsgId::new(key).unwrap()),
    };
    let stored = |outcome: Result<Outcome, SubmitError>| match outcome {
        Ok(Outcome::Stored { message, duplicate }) => (message.seq, duplicate),
        other => panic!("expected a stored message, got {other:?}"),
    };

    // Alice's message is stored, but her ack is lost; the chat moves to bob.
    let (seq, _) = stored(node.dispatcher.submit_and_wait(send(&alice, "a-1")).await);
    node.change(id, Change::Transfer(agent_id("bob"))).await;
    // Her retry is acked with the original seq; a new message is refused.
    let retried = stored(node.dispatcher.submit_and_wait(send(&alice, "a-1")).await);
    assert_eq!(retried, (seq, true));
    assert_unauthorized(&node, send(&alice, "a-2")).await;

    // The same for ann's message once the conversation is closed.
    let (seq, _) = stored(node.dispatcher.submit_and_wait(send(&ann, "v-1")).await);
    node.change(id, Change::Close { reason: None }).await;
    let retried = stored(node.dispatcher.submit_and_wait(send(&ann, "v-1")).await);
    assert_eq!(retried, (seq, true));
    match node.dispatcher.submit_and_wait(send(&ann, "v-2")).await {
        Err(SubmitError::Rejected(PathError::Closed(closed))) => assert_eq!(closed, id),
        other => panic!("a new message to a closed conversation is refused, got {other:?}"),
    }
    assert_eq!(node.metrics.snapshot().duplicates, 2);
}

async fn assert_unauthorized(node: &Node, command: Command) {
    match node.dispatcher.submit_and_wait(command).await {
        Err(SubmitError::Rejected(PathError::Unauthorized { .. })) => {}
        other => panic!("expected an Unauthorized rejection, got {other:?}"),
    }
}

#[tokio::test]
async fn visitors_and_agents_only_reach_what_is_theirs() {
    let node = Node::memory();
    let ours = node.conversation("shop", "ann", Some("alice")).await;
    let theirs = node.conversation("shop", "ben", Some("bob")).await;
    let elsewhere = node.conversation("other-shop", "ann", None).await;
    let ann = node.connect("shop", visitor("ann"));
    let alice = node.connect("shop", agent("alice"));
    let mallory = node.connect("other-shop", agent("mallory"));

    // A visitor cannot write to or read another visitor's conversation.
    assert_unauthorized(&node, ann.send_command(theirs.id(), "hi")).await;
    assert_unauthorized(&node, ann.join_command(theirs.id(), Seq::ZERO)).await;
    // Not across tenants either, even with the same visitor name.
    assert_unauthorized(&node, ann.join_command(elsewhere.id(), Seq::ZERO)).await;
    assert_unauthorized(&node, mallory.join_command(ours.id(), Seq::ZERO)).await;
    // An agent may watch any conversation of their tenant, but write only where assigned.
    assert!(node
        .dispatcher
        .submit_and_wait(alice.join_command(theirs.id(), Seq::ZERO))
        .await
        .is_ok());
    assert_unauthorized(&node, alice.send_command(theirs.id(), "hello")).await;
    // A connection cannot speak as someone else, or as the bot.
    for sender in [visitor("ben"), Party::Bot, Party::System] {
        let forged = Command::Send {
            origin: Origin::Connection(ann.conn),
            message: NewMessage::text(ours.id(), sender, "trust me"),
        };
        assert_unauthorized(&node, forged).await;
    }
    // Nothing of that was stored.
    assert_eq!(node.store.last_seq(theirs.id()).await.unwrap(), Seq::new(2));
    assert_eq!(node.store.last_seq(ours.id()).await.unwrap(), Seq::new(2));
    // And the rightful sender is still served.
    assert!(node
        .dispatcher
        .submit_and_wait(ann.send_command(ours.id(), "hi"))
        .await
        .is_ok());
}

#[tokio::test]
async fn bad_messages_get_an_error_frame_and_the_connection_lives_on() {
    let node = Node::memory();
    let conversation = node.conversation("shop", "ann", None).await;
    let mut ann = node.connect("shop", visitor("ann"));
    node.dispatcher
        .submit(ann.send_command(conversation.id(), "   "))
        .await
        .unwrap();
    assert!(matches!(
        ann.next().await,
        ServerFrame::Error {
            code: ErrorCode::Invalid,
            ..
        }
    ));
    let unknown = cs_core::ConversationId::new();
    node.dispatcher
        .submit(ann.send_command(unknown, "hello?"))
        .await
        .unwrap();
    assert!(matches!(
        ann.next().await,
        ServerFrame::Error {
            code: ErrorCode::UnknownConversation,
            ..
        }
    ));
    let too_long = "字".repeat(2000);
    node.dispatcher
        .submit(ann.send_command(conversation.id(), &too_long))
        .await
        .unwrap();
    assert!(matches!(
        ann.next().await,
        ServerFrame::Error {
            code: ErrorCode::Invalid,
            ..
        }
    ));
    let state_event = Command::Send {
        origin: Origin::Connection(ann.conn),
        message: NewMessage::new(
            conversation.id(),
            visitor("ann"),
            Body::Event(Event::Close { reason: None }),
        ),
    };
    node.dispatcher.submit(state_event).await.unwrap();
    assert!(matches!(
        ann.next().await,
        ServerFrame::Error {
            code: ErrorCode::Invalid,
            ..
        }
    ));

    node.dispatcher
        .submit(ann.send_command(conversation.id(), "fine now"))
        .await
        .unwrap();
    assert!(matches!(
        ann.next_non_message().await,
        ServerFrame::Ack { .. }
    ));
    assert_eq!(node.metrics.snapshot().rejected, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_has_no_gap_and_no_duplicate_while_a_producer_keeps_sending() {
    const TOTAL: u64 = 600;
    let node = Arc::new(Node::memory());
    let conversation = node.conversation("shop", "ann", Some("alice")).await;
    let id = conversation.id();
    let already = node.store.last_seq(id).await.unwrap().get();

    let producer = {
        let node = Arc::clone(&node);
        tokio::spawn(async move {
            for i in 0..TOTAL {
                node.host_send(id, agent("alice"), &format!("update {i}"))
                    .await;
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    // Reconnect while the producer is mid-stream, having seen only seq 3.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut ann = node.connect("shop", visitor("ann"));
    let mut last = Seq::new(3);
    let mut seen = Vec::new();
    node.dispatcher
        .submit(ann.join_command(id, last))
        .await
        .unwrap();
    let end = already + TOTAL;
    while last.get() < end {
        match ann.next().await {
            ServerFrame::Message { message } => {
                seen.push(message.seq.get());
                last = message.seq;
            }
            ServerFrame::Replayed {
                complete: false,
                up_to,
                ..
            } => {
                // A long gap comes in rounds: ask for the rest.
                node.dispatcher
                    .submit(ann.join_command(id, up_to))
                    .await
                    .unwrap();
            }
            ServerFrame::Replayed { complete: true, .. } => {}
            other => panic!("unexpected frame {other:?}"),
        }
    }
    producer.await.unwrap();
    assert_eq!(
        seen,
        (4..=end).collect::<Vec<_>>(),
        "every seq once, in order"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The last round's `Replayed` marker may trail the last message; no
    // message may.
    while let Some(frame) = ann.try_next() {
        assert!(
            matches!(frame, ServerFrame::Replayed { complete: true, .. }),
            "nothing after the end but the replay marker, got {frame:?}"
        );
    }
    assert!(node.metrics.snapshot().resumed >= 1);
}

/// Answers every visitor text with the same line; hands off on "human".
struct EchoBot;

#[async_trait]
impl Hook for EchoBot {
    fn name(&self) -> &str {
        "echo-bot"
    }

    async fn on_message(&self, context: HookContext) -> Result<Vec<HookAction>, HookError> {
        match &context.message.body {
            Body::Text { text, .. } if text.contains("human") => Ok(vec![HookAction::HandOff {
                reason: "asked for a human".into(),
            }]),
            Body::Text { text, .. } => {
                Ok(vec![HookAction::Reply(Body::text(format!("bot: {text}")))])
            }
            _ => Ok(Vec::new()),
        }
    }
}

/// Sleeps far past the hook timeout.
struct SleepyHook;

#[async_trait]
impl Hook for SleepyHook {
    fn name(&self) -> &str {
        "sleepy"
    }

    async fn on_message(&self, _context: HookContext) -> Result<Vec<HookAction>, HookError> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(vec![HookAction::Reply(Body::text("too late"))])
    }
}

/// Panics on every message.
struct BrokenHook;

#[async_trait]
impl Hook for BrokenHook {
    fn name(&self) -> &str {
        "broken"
    }

    async fn on_message(&self, _context: HookContext) -> Result<Vec<HookAction>, HookError> {
        panic!("a bug in host code");
    }
}

#[tokio::test]
async fn hooks_reply_hand_off_and_cannot_stall_or_crash_the_path() {
    let config = DispatcherConfig {
        hook_timeout: Duration::from_millis(200),
        ..DispatcherConfig::default()
    };
    let hooks: Vec<Arc<dyn Hook>> = vec![
        Arc::new(EchoBot),
        Arc::new(SleepyHook),
        Arc::new(BrokenHook),
    ];
    let node = Node::start(config, Arc::new(MemoryStore::new()), hooks);
    let mut events = node.dispatcher.events();
    let conversation = node.conversation("shop", "ann", None).await;
    node.change(conversation.id(), Change::StartBot).await;
    let mut ann = node.connect("shop", visitor("ann"));
    node.dispatcher
        .submit(ann.join_command(conversation.id(), Seq::ZERO))
        .await
        .unwrap();
    assert!(matches!(ann.next().await, ServerFrame::Replayed { .. }));

    node.dispatcher
        .submit(ann.send_command(conversation.id(), "opening hours?"))
        .await
        .unwrap();
    assert_eq!(ann.next_message().await.body, Body::text("opening hours?"));
    assert!(matches!(ann.next().await, ServerFrame::Ack { .. }));
    // The bot's answer arrives at once, though the sleepy hook is still running.
    let answer = tokio::time::timeout(Duration::from_millis(150), ann.next_message())
        .await
        .unwrap();
    assert_eq!(answer.sender, Party::Bot);
    assert_eq!(answer.body, Body::text("bot: opening hours?"));

    node.dispatcher
        .submit(ann.send_command(conversation.id(), "I want a human"))
        .await
        .unwrap();
    let handed_off = loop {
        match events.recv().await.unwrap() {
            PathEvent::Changed {
                conversation: c,
                change: Change::HandOff { .. },
                ..
            } => break c,
            PathEvent::Changed { .. } => continue,
        }
    };
    assert_eq!(handed_off.state(), &ConversationState::Queued);
    assert_eq!(
        node.store
            .conversation(conversation.id())
            .await
            .unwrap()
            .state(),
        &ConversationState::Queued
    );

    tokio::time::sleep(Duration::from_millis(400)).await;
    let metrics = node.metrics.snapshot();
    assert_eq!(
        metrics.hook_timeouts, 2,
        "the sleepy hook was cut off for both messages"
    );
    assert_eq!(
        metrics.hook_failures, 2,
        "the panicking hook was caught for both messages"
    );
    // The path is still serving.
    let message: Message = node
        .host_send(conversation.id(), Party::System, "still here")
        .await;
    assert!(message.seq > Seq::new(3));
}

#[tokio::test]
async fn state_changes_are_ordered_saved_and_announced() {
    let node = Node::memory();
    let conversation = node.conversation("shop", "ann", Some("alice")).await;
    let mut alice = node.connect("shop", agent("alice"));
    let mut bob = node.connect("shop", agent("bob"));
    node.dispatcher
        .submit(alice.join_command(conversation.id(), Seq::new(2)))
        .await
        .unwrap();
    assert!(matches!(alice.next().await, ServerFrame::Replayed { .. }));

    node.change(conversation.id(), Change::Transfer(agent_id("bob")))
        .await;
    let transfer = Body::Event(Event::Transfer {
        from: agent_id("alice"),
        to: agent_id("bob"),
    });
    assert_eq!(
        alice.next_message().await.body,
        transfer,
        "alice sees the hand-over"
    );
    assert_eq!(
        bob.next_message().await.body,
        transfer,
        "bob's console joined"
    );
    // Alice has left the conversation: she no longer gets its messages.
    node.host_send(conversation.id(), visitor("ann"), "thanks")
        .await;
    assert_eq!(bob.next_message().await.body, Body::text("thanks"));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(alice.try_next().is_none());

    // An illegal change is refused and changes nothing.
    let refused = node
        .dispatcher
        .submit_and_wait(Command::Change {
            conversation: conversation.id(),
            change: Change::Reopen,
            by: Actor::Host,
        })
        .await;
    assert!(matches!(
        refused,
        Err(SubmitError::Rejected(PathError::IllegalChange(_)))
    ));
    node.change(
        conversation.id(),
        Change::Close {
            reason: Some("solved".into()),
        },
    )
    .await;
    let saved = node.store.conversation(conversation.id()).await.unwrap();
    assert_eq!(saved.state(), &ConversationState::Closed);
    assert_eq!(saved.last_agent(), Some(&agent_id("bob")));
    // A closed conversation takes no new messages until reopened.
    let late = node
        .dispatcher
        .submit_and_wait(Command::Send {
            origin: Origin::Host,
            message: NewMessage::text(conversation.id(), visitor("ann"), "one more thing"),
        })
        .await;
    assert!(matches!(
        late,
        Err(SubmitError::Rejected(PathError::Closed(_)))
    ));
}

#[tokio::test]
async fn a_panicking_store_does_not_take_the_shard_down() {
    let config = DispatcherConfig {
        shards: 1,
        ..DispatcherConfig::default()
    };
    let node = Node::start(
        config,
        Arc::new(Intercepted {
            inner: MemoryStore::new(),
            interceptor: PanicOnText,
        }),
        Vec::new(),
    );
    let conversation = node.conversation("shop", "ann", None).await.id();
    let boom = Command::Send {
        origin: Origin::Host,
        message: NewMessage::text(conversation, visitor("ann"), "panic"),
    };
    assert!(matches!(
        node.dispatcher.submit_and_wait(boom).await,
        Err(SubmitError::Panicked)
    ));
    // A client that sent it is told, with its message id, so it can retry.
    let mut ann = node.connect("shop", visitor("ann"));
    let from_client = Command::Send {
        origin: Origin::Connection(ann.conn),
        message: NewMessage::text(conversation, visitor("ann"), "panic")
            .with_client_msg_id(ClientMsgId::new("p-1").unwrap()),
    };
    node.dispatcher.submit(from_client).await.unwrap();
    match ann.next().await {
        ServerFrame::Error {
            code: ErrorCode::Unavailable,
            client_msg_id: Some(id),
            ..
        } => assert_eq!(id.as_str(), "p-1"),
        other => panic!("expected an error frame, got {other:?}"),
    }
    // The only shard still serves.
    let after = node
        .host_send(conversation, visitor("ann"), "still there?")
        .await;
    assert_eq!(after.seq, Seq::new(1));
}

/// Hands off after a pause when asked for a human.
struct SlowHandOff;

#[async_trait]
impl Hook for SlowHandOff {
    fn name(&self) -> &str {
        "slow-hand-off"
    }

    async fn on_message(&self, context: HookContext) -> Result<Vec<HookAction>, HookError> {
        tokio::time::sleep(Duration::from_millis(20)).await;
        Ok(match &context.message.body {
            Body::Text { text, .. } if text.contains("human") => vec![HookAction::HandOff {
                reason: "asked for a human".into(),
            }],
            _ => Vec::new(),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_what_hooks_still_have_to_say() {
    let node = Node::start(
        DispatcherConfig::default(),
        Arc::new(MemoryStore::new()),
        vec![Arc::new(SlowHandOff)],
    );
    let conversation = node.conversation("shop", "ann", None).await.id();
    node.change(conversation, Change::StartBot).await;
    for n in 0..50 {
        let command = Command::Send {
            origin: Origin::Host,
            message: NewMessage::text(conversation, visitor("ann"), format!("question {n}")),
        };
        node.dispatcher.submit(command).await.unwrap();
    }
    let human = Command::Send {
        origin: Origin::Host,
        message: NewMessage::text(conversation, visitor("ann"), "a human please"),
    };
    node.dispatcher.submit(human).await.unwrap();
    // Stop while the hand-off is still being thought about.
    node.dispatcher.shutdown().await;
    let saved = node.store.conversation(conversation).await.unwrap();
    assert_eq!(
        saved.state(),
        &ConversationState::Queued,
        "the hand-off the visitor asked for happened before the workers stopped"
    );
}

#[tokio::test]
async fn resuming_several_long_gaps_on_one_connection_never_overflows_it() {
    let node = Node::memory();
    let (a, b) = (
        node.conversation("shop", "ann", None).await.id(),
        node.conversation("shop", "ann", None).await.id(),
    );
    let long = "x".repeat(1000);
    for id in [a, b] {
        for _ in 0..60 {
            node.host_send(id, visitor("ann"), &long).await;
        }
    }
    // A client whose socket takes nothing yet: everything stays queued.
    let stuck = futures::sink::unfold((), |(), _frame: bytes::Bytes| {
        futures::future::pending::<Result<(), String>>()
    });
    let conn = node
        .pool
        .register(tenant_id("shop"), visitor("ann"), Box::pin(stuck))
        .id;
    for id in [a, b] {
        let join = Command::Join {
            conn,
            conversation: id,
            last_seq: Seq::ZERO,
        };
        match node.dispatcher.submit_and_wait(join).await {
            Ok(Outcome::Joined {
                complete: false,
                replayed,
                ..
            }) => assert!(replayed < 60, "a partial replay, to be continued"),
            other => panic!("expected a partial replay, got {other:?}"),
        }
    }
    assert!(
        node.pool.info(conn).is_some(),
        "the connection is still open: the replays fit its queue"
    );
    assert_eq!(node.metrics.snapshot().slow_closed, 0);
}

#[tokio::test]
async fn a_shard_that_forgets_conversations_reloads_them_intact() {
    let config = DispatcherConfig {
        shards: 1,
        cached_conversations: 2,
        ..DispatcherConfig::default()
    };
    let node = Node::start(config, Arc::new(MemoryStore::new()), Vec::new());
    let mut ids = Vec::new();
    for name in ["a", "b", "c", "d"] {
        ids.push(node.conversation("shop", name, Some("alice")).await.id());
    }
    // Round-robin over four conversations through a cache of two: every
    // send may reload its conversation, and seqs must still run on.
    for round in 1..=3u64 {
        for (id, name) in ids.iter().zip(["a", "b", "c", "d"]) {
            let m = node.host_send(*id, visitor(name), "again").await;
            assert_eq!(
                m.seq,
                Seq::new(2 + round),
                "conversation {name}, round {round}"
            );
        }
    }
    // The state saved by the assignment survived the evictions.
    let saved = node.store.conversation(ids[0]).await.unwrap();
    assert_eq!(saved.agent(), Some(&agent_id("alice")));
}

/// Holds the first batch at a gate and records every batch's size, so the
/// messages sent meanwhile queue up behind it.
struct BatchGate {
    first: tokio::sync::Semaphore,
    sizes: parking_lot::Mutex<Vec<usize>>,
    held: tokio::sync::Notify,
}

#[async_trait]
impl cs_core::testing::AppendInterceptor for BatchGate {
    async fn before_append(&self, _message: &NewMessage) {}

    async fn before_batch(&self, messages: &[NewMessage]) {
        let first = self.sizes.lock().is_empty();
        self.sizes.lock().push(messages.len());
        if first {
            self.held.notify_one();
            // Closed by the test once the rest are queued.
            let _ = self.first.acquire().await;
        }
    }
}

#[tokio::test]
async fn messages_queued_together_are_stored_in_one_call_in_order_and_deduplicated() {
    let gate = Arc::new(Intercepted {
        inner: MemoryStore::new(),
        interceptor: BatchGate {
            first: tokio::sync::Semaphore::new(0),
            sizes: parking_lot::Mutex::new(Vec::new()),
            held: tokio::sync::Notify::new(),
        },
    });
    let config = DispatcherConfig {
        shards: 1,
        ..DispatcherConfig::default()
    };
    let node = Node::start(config, Arc::clone(&gate) as _, Vec::new());
    let a = node.conversation("shop", "ann", Some("alice")).await.id();
    let b = node.conversation("shop", "bob", Some("alice")).await.id();
    let mut ann = node.connect("shop", visitor("ann"));
    let mut bob = node.connect("shop", visitor("bob"));
    let send = |client: &Client, id, text: &str, client_id: &str| Command::Send {
        origin: Origin::Connection(client.conn),
        message: NewMessage::text(id, client.party.clone(), text)
            .with_client_msg_id(ClientMsgId::new(client_id).unwrap()),
    };
    // The first message's batch is held in the store...
    node.dispatcher
        .submit(send(&ann, a, "first", "a-0"))
        .await
        .unwrap();
    gate.interceptor.held.notified().await;
    // ...while these queue behind it, on the same shard: two conversations,
    // and a retry of a message of the same batch.
    for (client, id, text, client_id) in [
        (&ann, a, "one", "a-1"),
        (&bob, b, "bob one", "b-1"),
        (&ann, a, "two", "a-2"),
        (&ann, a, "one (resent)", "a-1"),
        (&bob, b, "bob two", "b-2"),
    ] {
        node.dispatcher
            .submit(send(client, id, text, client_id))
            .await
            .unwrap();
    }
    gate.interceptor.first.close();

    let acks = |frames: Vec<ServerFrame>| -> Vec<(u64, bool)> {
        frames
            .into_iter()
            .filter_map(|frame| match frame {
                ServerFrame::Ack { seq, duplicate, .. } => Some((seq.get(), duplicate)),
                _ => None,
            })
            .collect()
    };
    let mut ann_frames = Vec::new();
    while ann_frames.len() < 4 {
        if let frame @ ServerFrame::Ack { .. } = ann.next().await {
            ann_frames.push(frame);
        }
    }
    let mut bob_frames = Vec::new();
    while bob_frames.len() < 2 {
        if let frame @ ServerFrame::Ack { .. } = bob.next().await {
            bob_frames.push(frame);
        }
    }
    // Each conversation's messages get their seqs in the order sent (after
    // the hand-off and the assignment, seqs 1 and 2); the retry is acked
    // with its original's seq.
    assert_eq!(
        acks(ann_frames),
        vec![(3, false), (4, false), (5, false), (4, true)]
    );
    assert_eq!(acks(bob_frames), vec![(3, false), (4, false)]);
    // The five queued behind the gate went to the store in one call.
    assert_eq!(*gate.interceptor.sizes.lock(), vec![1, 5]);
    let stored: Vec<_> = node
        .store
        .after(a, Seq::new(2), 10)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(
        stored,
        vec![Body::text("first"), Body::text("one"), Body::text("two")]
    );
}
