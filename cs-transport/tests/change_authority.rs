//! Who may change a conversation, checked by the conversation's shard (the
//! single writer) against the state the change would modify.

mod support;

use cs_core::ConversationState;
use cs_transport::{Actor, Change, Command, PathError, SubmitError};
use support::*;

/// Submits `change` as `by` and waits for the path's answer.
async fn change_as(
    node: &Node,
    conversation: cs_core::ConversationId,
    change: Change,
    by: Actor,
) -> Result<(), SubmitError> {
    node.dispatcher
        .submit_and_wait(Command::Change {
            conversation,
            change,
            by,
        })
        .await
        .map(|_| ())
}

fn is_unauthorized(result: &Result<(), SubmitError>) -> bool {
    matches!(
        result,
        Err(SubmitError::Rejected(PathError::Unauthorized { .. }))
    )
}

fn close() -> Change {
    Change::Close { reason: None }
}

#[tokio::test]
async fn only_the_serving_agent_may_close_or_transfer() {
    let node = Node::memory();
    let conversation = node.conversation("shop", "ann", Some("alice")).await;
    let id = conversation.id();

    let bob = Actor::Agent(agent_id("bob"));
    assert!(is_unauthorized(
        &change_as(&node, id, close(), bob.clone()).await
    ));
    let to_carol = Change::Transfer(agent_id("carol"));
    assert!(is_unauthorized(
        &change_as(&node, id, to_carol.clone(), bob).await
    ));

    // An agent, even the serving one, may not make any other change.
    let alice = Actor::Agent(agent_id("alice"));
    let requeue = change_as(&node, id, Change::Requeue, alice.clone()).await;
    assert!(is_unauthorized(&requeue));

    change_as(&node, id, to_carol, alice.clone()).await.unwrap();
    let stored = node.store.conversation(id).await.unwrap();
    assert_eq!(stored.agent(), Some(&agent_id("carol")));
    // Alice no longer serves it: her close is refused, Carol's is not.
    assert!(is_unauthorized(&change_as(&node, id, close(), alice).await));
    change_as(&node, id, close(), Actor::Agent(agent_id("carol")))
        .await
        .unwrap();
    let stored = node.store.conversation(id).await.unwrap();
    assert_eq!(stored.state(), &ConversationState::Closed);
}

#[tokio::test]
async fn a_visitor_may_close_only_their_own_conversation() {
    let node = Node::memory();
    let conversation = node.conversation("shop", "ann", None).await;
    let id = conversation.id();

    let ben = Actor::Visitor(visitor_id("ben"));
    assert!(is_unauthorized(&change_as(&node, id, close(), ben).await));
    let ann = Actor::Visitor(visitor_id("ann"));
    let hand_off = Change::HandOff {
        reason: "ann asks".into(),
    };
    assert!(is_unauthorized(
        &change_as(&node, id, hand_off, ann.clone()).await
    ));
    let assign = Change::Assign(agent_id("alice"));
    assert!(is_unauthorized(
        &change_as(&node, id, assign, ann.clone()).await
    ));

    change_as(&node, id, close(), ann).await.unwrap();
    let stored = node.store.conversation(id).await.unwrap();
    assert_eq!(stored.state(), &ConversationState::Closed);
}

#[tokio::test]
async fn a_refused_change_changes_nothing() {
    let node = Node::memory();
    let conversation = node.conversation("shop", "ann", Some("alice")).await;
    let id = conversation.id();
    let before = node.store.conversation(id).await.unwrap();

    let refused = change_as(&node, id, close(), Actor::Agent(agent_id("bob"))).await;
    assert!(is_unauthorized(&refused));
    let after = node.store.conversation(id).await.unwrap();
    assert_eq!(after.state(), before.state());
    assert_eq!(after.agent(), before.agent());
    assert_eq!(after.last_seq(), before.last_seq(), "no event was written");
}

/// An agent closes the moment the assignment is made, without waiting for
/// anything to settle: the shard runs the two in order, so the close sees
/// the assignment every time.
#[tokio::test]
async fn a_close_right_after_the_assignment_is_allowed_every_time() {
    let node = Node::memory();
    for round in 0..200 {
        let conversation = node
            .conversation("shop", &format!("visitor-{round}"), None)
            .await;
        let id = conversation.id();
        node.change(
            id,
            Change::HandOff {
                reason: "test".into(),
            },
        )
        .await;
        // Admitted, not awaited: the close is submitted while the
        // assignment may still be in the shard's queue.
        node.dispatcher
            .submit(Command::Change {
                conversation: id,
                change: Change::Assign(agent_id("alice")),
                by: Actor::Host,
            })
            .await
            .unwrap();
        change_as(&node, id, close(), Actor::Agent(agent_id("alice")))
            .await
            .unwrap_or_else(|e| panic!("round {round}: the close was refused: {e}"));
    }
}
