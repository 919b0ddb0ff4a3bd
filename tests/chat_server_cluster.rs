//! The chat_server in cluster mode, end to end: three real `chat_server`
//! processes on their own ports, sharing a PostgreSQL store and a Redis bus
//! (`--bus $CS_TEST_REDIS_URL --database $CS_TEST_POSTGRES_URL`), each test
//! with a cluster prefix and a tenant of its own. It covers a conversation
//! whose visitor and agent sit on different nodes, agent presence seen from
//! another node, a routing node killed mid-conversation (failover, resume
//! with no gap and no duplicate), an agent's capacity when hand-offs
//! arrive on two nodes at once, and a bot correction reaching every node.
//!
//! The tests skip (with a notice) when either URL is unset, and fail then
//! when `CS_REQUIRE_SERVICES=1`. Redis restarts are in
//! `chat_server_cluster_redis_restart.rs`, a test binary of their own.

mod support;

use std::time::Duration;

use serde_json::{json, Value};

use support::{
    cluster_services, contiguous, eventually, is_event, is_message_from, stored, text_of, Client,
    Cluster, Http, WAIT,
};

/// One cluster test at a time: each runs three nodes, and a dozen processes
/// on a small machine at once would make leases and timeouts flaky.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// An agent's presence ("online", "away", "offline") in the agent list as
/// the node behind `http` serves it.
async fn presence(http: &Http, token: &str, agent: &str) -> Result<String, String> {
    let desk = http.desk(token).await?;
    desk["agents"]
        .as_array()
        .and_then(|agents| agents.iter().find(|a| a["id"] == agent))
        .and_then(|a| a["presence"].as_str())
        .map(str::to_owned)
        .ok_or_else(|| format!("no {agent} in {desk}"))
}

/// Waits until the node behind `http` lists `agent` with `want` presence.
async fn wait_for_presence(http: &Http, token: &str, agent: &str, want: &str) {
    eventually(
        &format!("{agent} {want} in {}'s agent list", http.base),
        WAIT,
        async || match presence(http, token, agent).await {
            Ok(seen) if seen == want => Ok(()),
            Ok(seen) => Err(seen),
            Err(e) => Err(e),
        },
    )
    .await;
}

/// Opens a visitor's conversation on `node`, with its socket resumed (the
/// bot's greeting read); answers (token, conversation, socket).
async fn visitor_on(node: &support::Server) -> (String, String, Client) {
    let (token, _, conversation) = Http::new(node).visitor().await;
    let mut client = Client::connect(node, "/ws/visitor", &token).await;
    client.resume_and_wait(&conversation, 0).await;
    (token, conversation, client)
}

#[tokio::test]
async fn a_visitor_on_one_node_and_an_agent_on_another_exchange_messages_both_ways() {
    let Some((redis, postgres)) = cluster_services() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(&redis, &postgres, 3, &[]).await;
    cluster.router(&[0, 1, 2]).await;
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let http_one = Http::new(one);

    // Alice's console is on node 2; node 1 knows she is online.
    let alice_token = Http::new(two).agent("alice").await;
    let mut alice = Client::connect(two, "/ws/agent", &alice_token).await;
    wait_for_presence(&http_one, &alice_token, "alice", "online").await;

    // The visitor, on node 1, asks the bot for a person and gets Alice.
    let (_, conversation, mut visitor) = visitor_on(one).await;
    visitor.say(&conversation, "agent").await;
    visitor.expect(|f| is_event(f, "handoff")).await;
    let assigned = visitor.expect(|f| is_event(f, "assigned")).await;
    assert_eq!(assigned["message"]["body"]["agent"], "alice");

    // Her console on node 2 joins without asking (no resume sent).
    alice
        .expect(|f| is_event(f, "assigned") && f["message"]["conversation"] == conversation)
        .await;
    visitor
        .say(&conversation, "Hello from node 1, my parcel is late")
        .await;
    let asked = alice
        .expect(|f| is_message_from(f, "visitor") && f["message"]["conversation"] == conversation)
        .await;
    assert_eq!(text_of(&asked), "Hello from node 1, my parcel is late");

    // Her reply, sent on node 2, reaches the visitor on node 1.
    let id = alice
        .say(&conversation, "Hi, this is Alice on node 2. Let me look.")
        .await;
    let ack = alice
        .expect(|f| f["type"] == "ack" && f["client_msg_id"] == id)
        .await;
    let reply = visitor.expect(|f| is_message_from(f, "agent")).await;
    assert_eq!(text_of(&reply), "Hi, this is Alice on node 2. Let me look.");
    assert_eq!(reply["message"]["seq"], ack["seq"]);
}

#[tokio::test]
async fn agent_presence_is_visible_cluster_wide() {
    let Some((redis, postgres)) = cluster_services() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(&redis, &postgres, 3, &["--agent-grace-secs", "1"]).await;
    cluster.router(&[0, 1, 2]).await;
    let two = &cluster.nodes[1];
    let (http_one, http_three) = (Http::new(&cluster.nodes[0]), Http::new(&cluster.nodes[2]));
    // Bob only reads the agent list; he never opens a console.
    let bob_token = http_three.agent("bob").await;
    assert_eq!(
        presence(&http_three, &bob_token, "alice").await.as_deref(),
        Ok("offline")
    );

    // Alice's console is on node 2; nodes 3 and 1 list her online.
    let alice_token = Http::new(two).agent("alice").await;
    let alice = Client::connect(two, "/ws/agent", &alice_token).await;
    wait_for_presence(&http_three, &bob_token, "alice", "online").await;
    wait_for_presence(&http_one, &bob_token, "alice", "online").await;

    // She closes it: offline everywhere once the grace (1 s) has passed.
    alice.close().await;
    wait_for_presence(&http_three, &bob_token, "alice", "offline").await;
    wait_for_presence(&http_one, &bob_token, "alice", "offline").await;
}

#[tokio::test]
async fn killing_the_routing_node_mid_conversation_loses_nothing_and_another_node_takes_over() {
    let Some((redis, postgres)) = cluster_services() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    // A short lease, so the routing moves soon after the kill.
    let mut cluster = Cluster::new(&redis, &postgres, &["--cluster-ttl-ms", "1500"]);
    // Node 1 starts alone, so it takes the lease and routes.
    cluster.add_node().await;
    assert_eq!(cluster.router(&[0]).await, 0);
    cluster.add_node().await;
    cluster.add_node().await;
    assert_eq!(
        cluster.router(&[0, 1, 2]).await,
        0,
        "node 1 keeps routing when others join"
    );

    // Alice on node 2, the visitor on node 1: a conversation going both ways.
    let two = &cluster.nodes[1];
    let alice_token = Http::new(two).agent("alice").await;
    let mut alice = Client::connect(two, "/ws/agent", &alice_token).await;
    wait_for_presence(
        &Http::new(&cluster.nodes[0]),
        &alice_token,
        "alice",
        "online",
    )
    .await;
    let (token, conversation, mut visitor) = visitor_on(&cluster.nodes[0]).await;
    visitor.say(&conversation, "agent").await;
    let assigned = visitor.expect(|f| is_event(f, "assigned")).await;
    assert_eq!(assigned["message"]["body"]["agent"], "alice");
    alice
        .expect(|f| is_event(f, "assigned") && f["message"]["conversation"] == conversation)
        .await;
    visitor.say(&conversation, "my order 1042 is late").await;
    alice
        .expect(|f| text_of(f) == "my order 1042 is late")
        .await;
    alice.say(&conversation, "Checking 1042 now.").await;
    visitor.expect(|f| text_of(f) == "Checking 1042 now.").await;
    // Everything the visitor read before node 1 dies.
    visitor.drain(Duration::from_millis(300)).await;
    let mut seen = visitor.seqs(&conversation);
    let last_seq = visitor.last_seq(&conversation);
    assert!(contiguous(&seen, 1, last_seq), "{seen:?}");

    // Node 1, the router and the visitor's node, dies. Alice writes while
    // the cluster has no router.
    cluster.nodes[0].kill().await;
    drop(visitor);
    let id = alice
        .say(&conversation, "It left the warehouse yesterday.")
        .await;
    alice
        .expect(|f| f["type"] == "ack" && f["client_msg_id"] == id)
        .await;

    // The visitor reconnects to node 3 and resumes from its last seq.
    let three = &cluster.nodes[2];
    let mut visitor = Client::connect(three, "/ws/visitor", &token).await;
    visitor.resume(&conversation, last_seq).await;
    visitor
        .expect(|f| text_of(f) == "It left the warehouse yesterday.")
        .await;
    let replayed = visitor.expect(|f| f["type"] == "replayed").await;
    assert_eq!(replayed["complete"], true);

    // Another node routes, and the nodes left agree on it.
    let router = cluster.router(&[1, 2]).await;
    assert_ne!(router, 0);

    // The conversation goes on both ways, still Alice's.
    visitor.say(&conversation, "great, thanks!").await;
    alice.expect(|f| text_of(f) == "great, thanks!").await;
    alice.say(&conversation, "You're welcome.").await;
    visitor.expect(|f| text_of(f) == "You're welcome.").await;
    let http_three = Http::new(three);
    eventually(
        "the new router lists the chat as Alice's",
        WAIT,
        async || {
            let chat = http_three.chat(&alice_token, &conversation).await?;
            if chat["agent"] == "alice" {
                Ok(())
            } else {
                Err(chat.to_string())
            }
        },
    )
    .await;

    // No gap and no duplicate across the two sockets, and what the visitor
    // read is what the store holds.
    visitor.drain(Duration::from_millis(500)).await;
    seen.extend(visitor.seqs(&conversation));
    let last = *seen.last().unwrap();
    assert!(contiguous(&seen, 1, last), "seqs seen: {seen:?}");
    let history = stored(three, &token, &conversation).await;
    let stored_seqs: Vec<u64> = history
        .iter()
        .map(|f| f["message"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seen, stored_seqs, "the visitor read every stored message");
    // Kept, not requeued and assigned again.
    let assignments = history.iter().filter(|f| is_event(f, "assigned")).count();
    assert_eq!(assignments, 1, "{history:#?}");
}

#[tokio::test]
async fn an_agents_capacity_holds_when_hand_offs_arrive_on_two_nodes_at_once() {
    let Some((redis, postgres)) = cluster_services() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(&redis, &postgres, 3, &["--agent-capacity", "1"]).await;
    let router = cluster.router(&[0, 1, 2]).await;
    // The visitors are on the two nodes that do not route; Alice (capacity
    // 1) is on the one that does.
    let others: Vec<usize> = (0..3).filter(|&i| i != router).collect();
    let alice_node = &cluster.nodes[router];
    let alice_token = Http::new(alice_node).agent("alice").await;
    let mut alice = Client::connect(alice_node, "/ws/agent", &alice_token).await;
    for &i in &others {
        wait_for_presence(
            &Http::new(&cluster.nodes[i]),
            &alice_token,
            "alice",
            "online",
        )
        .await;
    }
    let (_, a_id, mut a) = visitor_on(&cluster.nodes[others[0]]).await;
    let (_, b_id, mut b) = visitor_on(&cluster.nodes[others[1]]).await;

    // Both ask for a person at the same moment.
    tokio::join!(a.say(&a_id, "agent"), b.say(&b_id, "agent"));

    // Alice gets exactly one of them; the other waits first in line.
    let first = alice.expect(|f| is_event(f, "assigned")).await;
    let won = first["message"]["conversation"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(won == a_id || won == b_id, "{first}");
    // Which visitor won, and the node that visitor is on.
    let ((winner, winner_id, winner_node), (waiter, waiter_id)) = if won == a_id {
        ((&mut a, &a_id, others[0]), (&mut b, &b_id))
    } else {
        ((&mut b, &b_id, others[1]), (&mut a, &a_id))
    };
    let assigned = winner.expect(|f| is_event(f, "assigned")).await;
    assert_eq!(assigned["message"]["body"]["agent"], "alice");
    let queued = waiter
        .expect(|f| {
            f["type"] == "queue" && f["conversation"] == waiter_id.as_str() && f["position"] == 1
        })
        .await;
    assert_eq!(queued["position"], 1);
    // Nothing more comes: the waiter is not assigned, Alice has one chat.
    waiter.drain(Duration::from_secs(1)).await;
    alice.drain(Duration::from_secs(1)).await;
    assert!(
        !waiter.messages.iter().any(|f| is_event(f, "assigned")),
        "the waiter was assigned too: {:#?}",
        waiter.messages
    );
    let assignments: Vec<&Value> = alice
        .messages
        .iter()
        .filter(|f| is_event(f, "assigned"))
        .collect();
    assert_eq!(assignments.len(), 1, "{assignments:#?}");
    let http = Http::new(&cluster.nodes[winner_node]);
    let desk = http.desk(&alice_token).await.expect("the desk answers");
    let alice_view = desk["agents"]
        .as_array()
        .and_then(|agents| agents.iter().find(|a| a["id"] == "alice"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(alice_view["active"], 1, "{desk}");
    assert_eq!(alice_view["capacity"], 1, "{desk}");
    assert_eq!(
        http.chat(&alice_token, waiter_id).await.unwrap()["queue_position"],
        1
    );

    // Alice closes the first chat, through the node its visitor is on (one
    // that does not route; any node serves every endpoint): the waiter is
    // hers now.
    let (status, body) = http
        .post(
            &format!("/api/agent/conversations/{winner_id}/close"),
            Some(&alice_token),
            json!({}),
        )
        .await;
    assert_eq!(
        status,
        200,
        "Alice closing her own chat through {}, the node its visitor is on: {body}",
        Cluster::name(winner_node)
    );
    let assigned = waiter.expect(|f| is_event(f, "assigned")).await;
    assert_eq!(assigned["message"]["body"]["agent"], "alice");
    alice
        .expect(|f| is_event(f, "assigned") && f["message"]["conversation"] == waiter_id.as_str())
        .await;
}

/// The bot's decisions in `conversation`, as the node behind `http` has them.
async fn decisions(http: &Http, token: &str, conversation: &str) -> Value {
    let (status, answer) = http
        .get(
            &format!("/api/agent/conversations/{conversation}/bot"),
            Some(token),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    answer["decisions"].clone()
}

#[tokio::test]
async fn a_correction_made_on_one_node_teaches_the_bot_on_every_node() {
    let Some((redis, postgres)) = cluster_services() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = Cluster::start(&redis, &postgres, 2, &[]).await;
    cluster.router(&[0, 1]).await;
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let (http_one, http_two) = (Http::new(one), Http::new(two));
    let carol = http_two.agent("carol").await;

    // The visitor's bot runs on node 1; node 2's console sees its decision.
    let (_, conversation, mut visitor) = visitor_on(one).await;
    let question = "do you sell gift cards?";
    visitor.say(&conversation, question).await;
    let asked = visitor.expect(|f| is_message_from(f, "visitor")).await;
    visitor.expect(|f| is_message_from(f, "bot")).await;
    let first = eventually("node 2 to have node 1's decision", WAIT, async || {
        let seen = decisions(&http_two, &carol, &conversation).await;
        seen[0]["intent"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| seen.to_string())
    })
    .await;
    let right = if first == "coupon" {
        "payment_methods"
    } else {
        "coupon"
    };

    // Carol corrects it on node 2; node 1's bot learns it.
    let (status, learned) = http_two
        .post(
            "/api/agent/corrections",
            Some(&carol),
            json!({ "conversation": conversation, "seq": asked["message"]["seq"], "intent": right }),
        )
        .await;
    assert_eq!(status, 200, "{learned}");
    eventually("node 1 to apply node 2's correction", WAIT, async || {
        let seen = decisions(&http_one, &carol, &conversation).await;
        if seen[0]["corrected_to"] == right {
            Ok(())
        } else {
            Err(seen.to_string())
        }
    })
    .await;
    visitor.say(&conversation, question).await;
    visitor.expect(|f| is_message_from(f, "bot")).await;
    let after = decisions(&http_one, &carol, &conversation).await;
    assert_eq!(after[1]["intent"], right, "{after}");
}

/// A bot message of `conversation` (frames of other conversations skipped).
fn is_bot_message_in(frame: &Value, conversation: &str) -> bool {
    is_message_from(frame, "bot") && frame["message"]["conversation"] == conversation
}

#[tokio::test]
async fn a_clarification_pick_on_one_node_teaches_the_bot_on_every_node() {
    let Some((redis, postgres)) = cluster_services() else {
        return;
    };
    let _one = ONE_AT_A_TIME.lock().await;
    // Every bot asks which was meant (never answers outright, never hands
    // off), so the only way a node answers the question below is by having
    // learned the pick.
    let always_ask = ["--bot-answer-threshold", "2", "--bot-clarify-mass", "0"];
    let cluster = Cluster::start(&redis, &postgres, 2, &always_ask).await;
    cluster.router(&[0, 1]).await;
    let (one, two) = (&cluster.nodes[0], &cluster.nodes[1]);
    let question = "are there gift vouchers i can buy for my sister";

    // On node 1: the clarification's second option is picked and answered.
    let (_, first, mut visitor) = visitor_on(one).await;
    visitor.say(&first, question).await;
    let asked = visitor.expect(|f| is_bot_message_in(f, &first)).await;
    let label = asked["message"]["body"]["quick_replies"][1]["label"]
        .as_str()
        .unwrap_or_else(|| panic!("a clarification with two options: {asked}"))
        .to_owned();
    visitor.say(&first, &label).await;
    let answer = visitor.expect(|f| is_bot_message_in(f, &first)).await;
    assert!(
        answer["message"]["body"].get("quick_replies").is_none(),
        "the pick is answered: {answer}"
    );
    let answer = text_of(&answer).to_owned();

    // On node 2 the same question is answered with that answer, once the
    // pick has come over the bus; until then it asks.
    let (_, second, mut other) = visitor_on(two).await;
    eventually("node 2 to answer with node 1's pick", WAIT, async || {
        other.say(&second, question).await;
        let reply = other.expect(|f| is_bot_message_in(f, &second)).await;
        if reply["message"]["body"].get("quick_replies").is_none() && text_of(&reply) == answer {
            Ok(())
        } else {
            // Not a pick: the next question is the question again, not a label.
            Err(reply.to_string())
        }
    })
    .await;
}
