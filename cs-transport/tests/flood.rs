//! Flood handling: three times what the shards can take, then shutdown.
//!
//! The store is a real `MemoryStore` behind a fixed 2 ms delay per append
//! (`delayed_store`), standing in for a database round trip, so the shards'
//! capacity is known: 2 shards / 2 ms = about 1,000 messages a second.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cs_core::{Body, NewMessage, Seq};
use cs_transport::{Admission, Command, DispatchError, DispatcherConfig, Origin};
use support::*;

const CONVERSATIONS: usize = 20;
const PER_CONVERSATION: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_is_degraded_in_order_refused_loudly_and_never_dropped() {
    let config = DispatcherConfig {
        shards: 2,
        queue_capacity: 4,
        enqueue_deadline: Duration::from_millis(20),
        // Room for about 40 spilled messages across both shards.
        max_spill_bytes: 40 * 270,
        ..DispatcherConfig::default()
    };
    let store = delayed_store(Duration::from_millis(2));
    let node = Arc::new(Node::start(config, store, Vec::new()));
    let mut conversations = Vec::new();
    for i in 0..CONVERSATIONS {
        conversations.push(node.conversation("shop", &format!("v{i}"), None).await.id());
    }

    // 20 producers at 150 msgs/s each: 3,000 msgs/s offered against ~1,000.
    let mut producers = Vec::new();
    for (i, &id) in conversations.iter().enumerate() {
        let node = Arc::clone(&node);
        producers.push(tokio::spawn(async move {
            let mut pace = tokio::time::interval(Duration::from_micros(6_667));
            let mut outcomes = Vec::new();
            for n in 0..PER_CONVERSATION {
                pace.tick().await;
                let command = Command::Send {
                    origin: Origin::Host,
                    message: NewMessage::text(id, visitor(&format!("v{i}")), format!("{n}")),
                };
                outcomes.push((n, node.dispatcher.submit(command).await));
            }
            (id, outcomes)
        }));
    }
    let mut accepted: HashMap<_, Vec<usize>> = HashMap::new();
    let (mut direct, mut degraded, mut refused) = (0, 0, 0);
    for producer in producers {
        let (id, outcomes) = producer.await.unwrap();
        for (n, outcome) in outcomes {
            match outcome {
                Ok(admission) => {
                    accepted.entry(id).or_default().push(n);
                    match admission {
                        Admission::Direct => direct += 1,
                        Admission::Degraded => degraded += 1,
                        Admission::Shed => unreachable!("no typing or receipts here"),
                    }
                }
                Err(DispatchError::Overloaded) => refused += 1,
                Err(other) => panic!("unexpected refusal {other}"),
            }
        }
    }
    assert_eq!(
        direct + degraded + refused,
        CONVERSATIONS * PER_CONVERSATION
    );
    assert!(degraded > 0, "the flood must reach the spill path");
    assert!(refused > 0, "the flood must pass the hard bound");

    // Drain everything accepted, then compare with the store.
    node.dispatcher.shutdown().await;
    assert_eq!(node.dispatcher.spilled_bytes(), 0);
    for id in &conversations {
        let stored = node.store.after(*id, Seq::ZERO, 10_000).await.unwrap();
        let texts: Vec<usize> = stored
            .iter()
            .map(|m| match &m.body {
                Body::Text { text, .. } => text.parse().unwrap(),
                other => panic!("unexpected body {other:?}"),
            })
            .collect();
        let want = accepted.remove(id).unwrap_or_default();
        assert_eq!(
            texts, want,
            "every accepted message stored once, in order; no refused one"
        );
    }
    let metrics = node.metrics.snapshot();
    assert_eq!(metrics.accepted as usize, direct + degraded);
    assert_eq!(metrics.degraded as usize, degraded);
    assert_eq!(metrics.refused as usize, refused);
    assert_eq!(metrics.persisted as usize, direct + degraded);
    eprintln!("flood: {direct} direct, {degraded} degraded, {refused} refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_every_accepted_message_then_refuses() {
    let store = delayed_store(Duration::from_millis(1));
    let node = Node::start(DispatcherConfig::default(), store, Vec::new());
    let conversation = node.conversation("shop", "ann", None).await.id();
    for n in 0..200 {
        let command = Command::Send {
            origin: Origin::Host,
            message: NewMessage::text(conversation, visitor("ann"), format!("{n}")),
        };
        node.dispatcher.submit(command).await.unwrap();
    }
    // Most of them are still queued: one shard stores one per millisecond.
    assert!(node.store.last_seq(conversation).await.unwrap() < Seq::new(200));
    node.dispatcher.shutdown().await;
    assert_eq!(
        node.store.last_seq(conversation).await.unwrap(),
        Seq::new(200)
    );

    let late = Command::Send {
        origin: Origin::Host,
        message: NewMessage::text(conversation, visitor("ann"), "late"),
    };
    assert_eq!(
        node.dispatcher.submit(late).await,
        Err(DispatchError::ShuttingDown)
    );
    assert_eq!(
        node.store.last_seq(conversation).await.unwrap(),
        Seq::new(200)
    );
}

/// Holds every append until it is opened, and says when one is waiting.
struct Gate {
    open: tokio::sync::Semaphore,
    waiting: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl cs_core::testing::AppendInterceptor for Gate {
    async fn before_append(&self, _message: &NewMessage) {
        self.waiting.notify_one();
        // Closed to open it for good; an error is the open gate.
        let _ = self.open.acquire().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_delay_target_typing_then_receipts_are_shed_and_messages_refused_not_lost() {
    let gate = Arc::new(cs_core::testing::Intercepted {
        inner: cs_core::store::MemoryStore::new(),
        interceptor: Gate {
            open: tokio::sync::Semaphore::new(0),
            waiting: tokio::sync::Notify::new(),
        },
    });
    let config = DispatcherConfig {
        shards: 1,
        queue_delay_target: Duration::from_millis(40),
        ..DispatcherConfig::default()
    };
    let node = Node::start(config, Arc::clone(&gate) as _, Vec::new());
    let id = node.conversation("shop", "v1", None).await.id();
    let mut visitor = node.connect("shop", visitor("v1"));
    let send = |text: &str, client_id: &str| Command::Send {
        origin: Origin::Connection(visitor.conn),
        message: NewMessage::text(id, visitor.party.clone(), text)
            .with_client_msg_id(cs_core::ClientMsgId::new(client_id).unwrap()),
    };
    let event = |event| Command::Send {
        origin: Origin::Connection(visitor.conn),
        message: NewMessage::new(id, visitor.party.clone(), Body::Event(event)),
    };

    // The first message reaches the store and is held there: the shard is busy.
    let waiting = gate.interceptor.waiting.notified();
    assert_eq!(
        node.dispatcher.submit(send("first", "c-1")).await,
        Ok(Admission::Direct)
    );
    waiting.await;
    // Wait for the state under test, bounded: the delay grows while it is held.
    tokio::time::timeout(Duration::from_secs(30), async {
        while node.dispatcher.queue_delay(id) <= Duration::from_millis(40) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the queue delay passes the target while the store is held");

    let typing = event(cs_core::Event::Typing { active: true });
    assert_eq!(node.dispatcher.submit(typing).await, Ok(Admission::Shed));
    let read = event(cs_core::Event::Read { up_to: Seq::ZERO });
    assert_eq!(node.dispatcher.submit(read).await, Ok(Admission::Shed));
    assert_eq!(
        node.dispatcher.submit(send("second", "c-2")).await,
        Err(DispatchError::Overloaded)
    );
    // The host's own commands are not held to the client's bound.
    let host = Command::Send {
        origin: Origin::Host,
        message: NewMessage::text(id, cs_core::Party::Bot, "the bot still speaks"),
    };
    assert!(node.dispatcher.submit(host).await.is_ok());

    // Open the gate: what was accepted is stored, and the refused one is
    // stored when retried with its id.
    gate.interceptor.open.close();
    tokio::time::timeout(Duration::from_secs(30), async {
        while node.dispatcher.queue_delay(id) > Duration::ZERO {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the queue drains");
    assert!(node.dispatcher.submit(send("second", "c-2")).await.is_ok());
    let stored = loop {
        let stored = node.store.recent(id, 10).await.unwrap();
        if stored.len() == 3 {
            break stored;
        }
        visitor.next().await;
    };
    let texts: Vec<String> = stored
        .iter()
        .map(|m| match &m.body {
            Body::Text { text, .. } => text.clone(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(texts, ["first", "the bot still speaks", "second"]);
    let metrics = node.metrics.snapshot();
    assert_eq!((metrics.shed, metrics.refused), (2, 1));
}
