//! A tour of cs-core: agents come online, visitors queue, an agent goes
//! offline mid-chat, and a reconnecting client catches up from the store.
//!
//! Run it with `cargo run --example quickstart`.

use cs::core::router::{AgentProfile, LeastBusy, Presence, QueueRequest, Router};
use cs::core::store::{MemoryStore, MessageStore};
use cs::core::{
    AgentId, Conversation, Error, NewMessage, Party, Seq, TenantId, Timestamp, VisitorId,
};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let shop = TenantId::new("demo-shop")?;
    let router = Router::new(LeastBusy);
    let store = MemoryStore::new();

    // Two agents: Alice can chat with two visitors at once, Bob with one.
    let alice = AgentId::new("alice")?;
    let bob = AgentId::new("bob")?;
    router.register_agent(&shop, AgentProfile::new(alice.clone(), 2))?;
    router.register_agent(&shop, AgentProfile::new(bob.clone(), 1))?;
    router.set_presence(&shop, &alice, Presence::Online)?;

    // Three visitors ask for a human while only Alice is online.
    let mut conversations = Vec::new();
    for name in ["ann", "ben", "cai"] {
        let visitor = VisitorId::new(name)?;
        let mut conversation = Conversation::open(shop.clone(), visitor.clone(), Timestamp::now());
        store.create_conversation(&conversation).await?;
        store
            .append(NewMessage::text(
                conversation.id(),
                Party::Visitor(visitor.clone()),
                "Hi, I need help with my order",
            ))
            .await?;

        conversation.enqueue(Timestamp::now())?;
        let routed = router.enqueue(&shop, QueueRequest::new(conversation.id(), visitor))?;
        match routed.agent_for(conversation.id()) {
            Some(agent) => {
                conversation.assign(agent.clone())?;
                println!("{name}: assigned to {agent}");
            }
            None => println!("{name}: waiting, position {}", routed.position.unwrap_or(0)),
        }
        store.save_conversation(&conversation).await?;
        conversations.push(conversation);
    }

    // Alice answers her first visitor.
    let first = &mut conversations[0];
    let reply = store
        .append(NewMessage::text(
            first.id(),
            Party::Agent(alice.clone()),
            "Hello! Let me look that up.",
        ))
        .await?;
    first.record_message(&reply.message);
    let waited = first.first_response_time().unwrap_or_default();
    println!(
        "alice replied {} ms after ann asked for a human",
        waited.as_millis()
    );

    // Bob comes online and takes the visitor who was waiting.
    for assignment in router.set_presence(&shop, &bob, Presence::Online)?.assigned {
        println!(
            "{}: assigned to {} as he came online",
            assignment.visitor, assignment.agent
        );
    }

    // Alice's browser dies: her conversations go back to the head of the queue.
    let gone = router.set_presence(&shop, &alice, Presence::Offline)?;
    println!(
        "alice went offline; back in the queue: {} conversation(s)",
        gone.requeued.len()
    );
    for conversation in conversations
        .iter_mut()
        .filter(|c| gone.requeued.contains(&c.id()))
    {
        // The router decided; the conversation and the store follow.
        conversation.requeue(Timestamp::now())?;
        store.save_conversation(conversation).await?;
        let position = router.position(&shop, conversation.id()).unwrap_or(0);
        println!("  {} is now at position {position}", conversation.visitor());
    }

    // The first visitor's client reconnects having seen only seq 1, and
    // catches up from the store: no gap, no duplicate.
    let missed = store.after(conversations[0].id(), Seq::new(1), 100).await?;
    for message in &missed {
        println!("replayed seq {} from {:?}", message.seq, message.sender);
    }
    Ok(())
}
