//! Two nodes sharing a store and a bus agree on a conversation's state: a
//! change made on one node is what the other node's dispatcher authorizes
//! against next, not the copy it cached before. And hosts talk across nodes
//! with `publish_host`. An assignment joins the agent's consoles on every node.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cs_core::store::MemoryStore;
use cs_transport::{Change, DispatcherConfig, InProcessBus, Outcome, ServerFrame, SubmitError};
use support::*;

fn two_nodes() -> (Node, Node) {
    let bus = Arc::new(InProcessBus::default());
    let store = Arc::new(MemoryStore::new());
    (
        Node::on_bus(
            "one",
            DispatcherConfig::default(),
            store.clone(),
            bus.clone(),
        ),
        Node::on_bus("two", DispatcherConfig::default(), store, bus),
    )
}

/// Waits until `client` has a message frame with seq `seq`, skipping
/// everything else (acks, replay markers).
async fn wait_for_seq(client: &mut Client, seq: u64) {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let ServerFrame::Message { message } = client.next().await {
                if message.seq.get() == seq {
                    return;
                }
            }
        }
    })
    .await
    .expect("the message reached the other node");
}

/// Hands the conversation to a person and assigns it to `agent` on `node`,
/// as the node that routes would: two stored events.
async fn hand_to(node: &Node, id: cs_core::ConversationId, agent: &str) {
    node.change(
        id,
        Change::HandOff {
            reason: "test".into(),
        },
    )
    .await;
    node.change(id, Change::Assign(agent_id(agent))).await;
}

#[tokio::test]
async fn an_assignment_made_on_one_node_lets_the_agent_write_on_the_other() {
    let (one, two) = two_nodes();
    let conversation = one.conversation("shop", "ann", None).await;
    let id = conversation.id();
    // Node two caches the conversation while it waits for an agent.
    let mut ann = two.connect("shop", visitor("ann"));
    two.dispatcher
        .submit_and_wait(ann.send_command(id, "hello?"))
        .await
        .unwrap();
    let bob = two.connect("shop", agent("bob"));
    let refused = two
        .dispatcher
        .submit_and_wait(bob.send_command(id, "too early"))
        .await;
    assert!(
        matches!(refused, Err(SubmitError::Rejected(_))),
        "bob is not assigned yet: {refused:?}"
    );
    two.dispatcher
        .submit_and_wait(ann.join_command(id, cs_core::Seq::ZERO))
        .await
        .unwrap();

    // Node one hands the conversation to bob (as the node that routes would).
    hand_to(&one, id, "bob").await;
    // Seq 1 is ann's message, 2 the hand-off, 3 the assignment: once node
    // two has delivered seq 3, it has heard of the change.
    wait_for_seq(&mut ann, 3).await;

    let sent = two
        .dispatcher
        .submit_and_wait(bob.send_command(id, "hi ann, bob here"))
        .await;
    match sent {
        Ok(Outcome::Stored { message, .. }) => assert_eq!(message.seq.get(), 4),
        other => panic!("node two must see bob assigned, got {other:?}"),
    }
}

#[tokio::test]
async fn an_assignment_on_one_node_joins_the_agents_console_on_the_other() {
    let (one, two) = two_nodes();
    let conversation = one.conversation("shop", "ann", None).await;
    let id = conversation.id();
    let mut ann = one.connect("shop", visitor("ann"));
    one.join_from_start(&mut ann, id).await;
    // Bob's console is on node two and has never asked for this conversation.
    let mut bob = two.connect("shop", agent("bob"));

    hand_to(&one, id, "bob").await;
    // Seq 1 is the hand-off, 2 the assignment: bob's console gets the
    // assignment live, then ann's next message, without a resume.
    wait_for_seq(&mut bob, 2).await;
    one.client_send(&ann, id, "hello bob").await;
    wait_for_seq(&mut bob, 3).await;
}

#[tokio::test]
async fn a_close_on_one_node_stops_messages_on_the_other() {
    let (one, two) = two_nodes();
    let conversation = one.conversation("shop", "cy", Some("dee")).await;
    let id = conversation.id();
    let mut cy = two.connect("shop", visitor("cy"));
    two.dispatcher
        .submit_and_wait(cy.join_command(id, cs_core::Seq::ZERO))
        .await
        .unwrap();
    two.dispatcher
        .submit_and_wait(cy.send_command(id, "one question"))
        .await
        .unwrap();

    one.change(id, Change::Close { reason: None }).await;
    wait_for_seq(&mut cy, 4).await;

    let late = two
        .dispatcher
        .submit_and_wait(cy.send_command(id, "and another"))
        .await;
    assert!(
        matches!(late, Err(SubmitError::Rejected(cs_transport::PathError::Closed(c))) if c == id),
        "node two must see the conversation closed, got {late:?}"
    );
}

#[tokio::test]
async fn hosts_exchange_messages_across_nodes_and_connections_never_see_them() {
    let (one, two) = two_nodes();
    let mut on_two = two.pool.host_messages();
    let mut on_one = one.pool.host_messages();
    let mut watcher = two.connect("shop", agent("eve"));
    two.pool.join_group(watcher.conn, "agents").unwrap();

    one.pool
        .publish_host("desk", Bytes::from_static(b"{\"handoff\":1}"));
    let message = tokio::time::timeout(Duration::from_secs(5), on_two.recv())
        .await
        .expect("node two heard it")
        .unwrap();
    assert_eq!(message.from.as_str(), "one");
    assert_eq!(&*message.topic, "desk");
    assert_eq!(message.payload, Bytes::from_static(b"{\"handoff\":1}"));
    assert!(on_one.try_recv().is_err(), "a node does not hear itself");
    assert!(
        watcher.try_next().is_none(),
        "host messages are not frames for connections"
    );
}
