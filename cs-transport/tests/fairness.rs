//! Fair shards: a conversation that floods its shard does not hold another
//! conversation of the same shard behind its backlog.

mod support;

use std::sync::Arc;

use cs_core::{ConversationId, NewMessage, Party, Seq};
use cs_transport::{Command, DispatcherConfig, Origin};
use support::*;

/// Holds the first append until opened, says when it is held, and notes
/// the conversation of every message in the order the store sees them.
struct Recorder {
    open: tokio::sync::Semaphore,
    held: tokio::sync::Notify,
    order: parking_lot::Mutex<Vec<ConversationId>>,
}

#[async_trait::async_trait]
impl cs_core::testing::AppendInterceptor for Recorder {
    async fn before_append(&self, message: &NewMessage) {
        let first = {
            let mut order = self.order.lock();
            order.push(message.conversation);
            order.len() == 1
        };
        if first {
            self.held.notify_one();
            // Closed to open it for good; an error is the open gate.
            let _ = self.open.acquire().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_conversation_is_served_in_the_next_batch_behind_a_flood_on_its_shard() {
    const FLOOD: u64 = 2_000;
    let recorder = Arc::new(cs_core::testing::Intercepted {
        inner: cs_core::store::MemoryStore::new(),
        interceptor: Recorder {
            open: tokio::sync::Semaphore::new(0),
            held: tokio::sync::Notify::new(),
            order: parking_lot::Mutex::new(Vec::new()),
        },
    });
    let config = DispatcherConfig {
        // One shard: both conversations share it.
        shards: 1,
        queue_capacity: 4_096,
        ..DispatcherConfig::default()
    };
    let max_batch = config.max_batch;
    let node = Node::start(config, Arc::clone(&recorder) as _, Vec::new());
    let flood = node.conversation("shop", "flooder", None).await.id();
    let quiet = node.conversation("shop", "quiet", None).await.id();
    let send = |conversation, visitor: &str, text: String| Command::Send {
        origin: Origin::Host,
        message: NewMessage::text(conversation, Party::Visitor(visitor_id(visitor)), text),
    };

    // The flood's first message is held in the store: the shard is busy...
    let held = recorder.interceptor.held.notified();
    node.dispatcher
        .submit(send(flood, "flooder", "0".into()))
        .await
        .unwrap();
    held.await;
    // ...while its backlog queues up, and then the quiet conversation's one
    // message, last of all.
    for i in 1..FLOOD {
        node.dispatcher
            .submit(send(flood, "flooder", i.to_string()))
            .await
            .unwrap();
    }
    node.dispatcher
        .submit(send(quiet, "quiet", "hello?".into()))
        .await
        .unwrap();

    recorder.interceptor.open.close();
    // Shutdown drains everything accepted: nothing is lost.
    node.dispatcher.shutdown().await;
    assert_eq!(node.store.last_seq(flood).await.unwrap(), Seq::new(FLOOD));
    assert_eq!(node.store.last_seq(quiet).await.unwrap(), Seq::new(1));

    let order = recorder.interceptor.order.lock().clone();
    let flood_before_quiet = order.iter().take_while(|c| **c == flood).count();
    // In one FIFO the quiet message would have waited behind all 2,000.
    assert!(
        flood_before_quiet <= 1 + max_batch,
        "the quiet conversation's message waited behind {flood_before_quiet} of the flood's"
    );
}
