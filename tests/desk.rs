//! The service desk without HTTP: `ServiceDesk` on cs-core's `MemoryStore`
//! and `MemoryDirectory`, with connections registered on the desk's pool
//! the way its sockets register them. Every wait is for the frame that
//! proves a state, with a generous deadline for a busy machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::channel::mpsc;
use futures::StreamExt;
use serde_json::Value;

use cs::core::router::Presence;
use cs::core::{AgentId, AgentRecord, ConversationId, MemoryDirectory, Party, TenantId, VisitorId};
use cs::desk::{DeskSettings, ServiceDesk};
use cs::transport::{Actor, Change, Command};

/// How long a frame may take on a loaded machine; a passing run waits far less.
const WAIT: Duration = Duration::from_secs(30);

/// A connection as the desk's sockets make one: registered on the pool as
/// its party, reading the frames the pool writes.
struct Conn {
    id: cs::core::ConnId,
    frames: mpsc::UnboundedReceiver<Bytes>,
    /// Bytes received so far.
    bytes: usize,
    /// The largest frame received so far.
    largest: usize,
}

impl Conn {
    fn open(desk: &ServiceDesk, party: Party) -> Conn {
        let (tx, frames) = mpsc::unbounded::<Bytes>();
        let registered = desk.pool().register(desk.tenant().clone(), party, tx);
        Conn {
            id: registered.id,
            frames,
            bytes: 0,
            largest: 0,
        }
    }

    /// The tab closes: the pool forgets the connection, as a socket's end does.
    fn close(self, desk: &ServiceDesk) {
        desk.pool().close(self.id, cs::transport::CloseReason::Idle);
    }

    /// The next frame, as JSON.
    async fn next(&mut self) -> Value {
        self.next_before(Instant::now() + WAIT, "a frame", &[])
            .await
    }

    async fn next_before(&mut self, deadline: Instant, what: &str, seen: &[Value]) -> Value {
        let wait = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(wait, self.frames.next())
            .await
            .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}; saw {seen:#?}"))
            .expect("the pool closed the connection");
        self.bytes += frame.len();
        self.largest = self.largest.max(frame.len());
        let frame: Value = serde_json::from_slice(&frame).expect("frames are JSON");
        assert_ne!(
            frame["type"], "close",
            "the desk closed this connection: {frame}"
        );
        frame
    }

    /// Reads frames until one matches, and returns it.
    async fn expect(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let frame = self.next_before(deadline, what, &seen).await;
            if matches(&frame) {
                return frame;
            }
            seen.push(frame);
        }
    }
}

fn is_event(frame: &Value, event: &str, conversation: ConversationId) -> bool {
    frame["type"] == "message"
        && frame["message"]["body"]["event"] == event
        && frame["message"]["conversation"] == conversation.to_string()
}

fn agent(id: &str) -> AgentId {
    AgentId::new(id).expect("a valid id")
}

fn visitor(id: &str) -> VisitorId {
    VisitorId::new(id).expect("a valid id")
}

/// The agents frame says `id` has `presence`.
fn shows(frame: &Value, id: &str, presence: &str) -> bool {
    frame["type"] == "agents"
        && frame["agents"].as_array().is_some_and(|agents| {
            agents
                .iter()
                .any(|a| a["id"] == id && a["presence"] == presence)
        })
}

async fn desk(directory: &Arc<MemoryDirectory>, settings: DeskSettings) -> ServiceDesk {
    ServiceDesk::builder(TenantId::new("shop").expect("a valid id"))
        .directory(Arc::clone(directory) as Arc<dyn cs::core::AgentDirectory>)
        .settings(settings)
        .build()
        .await
        .expect("the desk starts")
}

/// A visitor opens a chat and asks for a person, as the bot's hand-off does.
async fn hand_off(desk: &ServiceDesk, who: &VisitorId) -> ConversationId {
    let chat = desk.open_for_visitor(who).await.expect("the chat opens");
    desk.dispatcher()
        .submit_and_wait(Command::Change {
            conversation: chat.id,
            change: Change::HandOff {
                reason: "asked for a person".into(),
            },
            by: Actor::Host,
        })
        .await
        .expect("the hand-off is applied");
    chat.id
}

/// The agent closes a chat the moment its `assigned` event reaches their
/// console, 200 times. The close is checked on the conversation's shard,
/// which applied the assignment before it sent the event, so it is never
/// refused; a check against the desk's own view of the chats (which follows
/// the message path a moment later) was refused now and then.
#[tokio::test]
async fn a_close_made_as_the_assignment_arrives_is_allowed_every_time() {
    let directory = Arc::new(MemoryDirectory::default());
    directory
        .upsert(AgentRecord::new(agent("alice"), "Alice", 1))
        .unwrap();
    let desk = desk(&directory, DeskSettings::default()).await;
    let mut console = Conn::open(&desk, Party::Agent(agent("alice")));
    console
        .expect("alice online", |f| shows(f, "alice", "online"))
        .await;

    for round in 0..200 {
        let id = hand_off(&desk, &visitor(&format!("visitor-{round}"))).await;
        console
            .expect("the assignment", |f| is_event(f, "assigned", id))
            .await;
        desk.close(id, Actor::Agent(agent("alice")), None)
            .await
            .unwrap_or_else(|e| panic!("round {round}: the close was refused: {e}"));
    }
    desk.shutdown().await;
}

/// Close and transfer are the serving agent's; a visitor closes only their own.
#[tokio::test]
async fn only_the_serving_agent_or_the_own_visitor_may_close() {
    let directory = Arc::new(MemoryDirectory::default());
    for (id, name) in [("alice", "Alice"), ("bob", "Bob")] {
        directory
            .upsert(AgentRecord::new(agent(id), name, 2))
            .unwrap();
    }
    let desk = desk(&directory, DeskSettings::default()).await;
    let mut alice = Conn::open(&desk, Party::Agent(agent("alice")));
    alice
        .expect("alice online", |f| shows(f, "alice", "online"))
        .await;

    let id = hand_off(&desk, &visitor("ann")).await;
    alice
        .expect("the assignment", |f| is_event(f, "assigned", id))
        .await;
    let refused = desk.close(id, Actor::Agent(agent("bob")), None).await;
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(cs::desk::ErrorKind::Forbidden)
    );
    let refused = desk.transfer(&agent("bob"), id, agent("alice")).await;
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(cs::desk::ErrorKind::Forbidden)
    );
    let refused = desk.close(id, Actor::Visitor(visitor("ben")), None).await;
    assert_eq!(
        refused.map_err(|e| e.kind()),
        Err(cs::desk::ErrorKind::Forbidden)
    );
    desk.close(id, Actor::Visitor(visitor("ann")), None)
        .await
        .expect("ann closes her own chat");
    desk.shutdown().await;
}

/// The host changes its agents at runtime and the router follows: a new
/// agent takes the waiting visitor, and an agent removed hands theirs back
/// to the queue.
#[tokio::test]
async fn the_router_follows_the_directory() {
    let directory = Arc::new(MemoryDirectory::default());
    let desk = desk(&directory, DeskSettings::default()).await;
    let ann = visitor("ann");
    let mut widget = Conn::open(&desk, Party::Visitor(ann.clone()));

    // Nobody to serve: she waits, first in line.
    let id = hand_off(&desk, &ann).await;
    widget
        .expect("first in line", |f| {
            f["type"] == "queue" && f["position"] == 1
        })
        .await;

    // The host adds Carol, who has her console open: she takes Ann.
    directory
        .upsert(AgentRecord::new(agent("carol"), "Carol", 2))
        .unwrap();
    let mut carol = Conn::open(&desk, Party::Agent(agent("carol")));
    carol
        .expect("the assignment", |f| is_event(f, "assigned", id))
        .await;
    assert_eq!(desk.chat(id).await.unwrap().agent, Some(agent("carol")));

    // The host removes Carol: Ann goes back to the queue, at its head.
    directory.remove(&agent("carol"));
    widget
        .expect("back in line", |f| {
            f["type"] == "queue" && f["position"] == 1
        })
        .await;
    let chat = desk.chat(id).await.unwrap();
    assert_eq!(chat.agent, None);
    assert_eq!(chat.state, cs::core::StateKind::Queued);
    desk.shutdown().await;
}

/// Away keeps an agent's chats and takes nobody new; an agent whose console
/// closed and did not come back within the grace hands their chats back.
#[tokio::test]
async fn away_takes_nobody_new_and_an_agent_gone_past_the_grace_hands_back() {
    let directory = Arc::new(MemoryDirectory::default());
    directory
        .upsert(AgentRecord::new(agent("alice"), "Alice", 3))
        .unwrap();
    let settings = DeskSettings {
        grace: Duration::from_millis(300),
        ..DeskSettings::default()
    };
    let desk = desk(&directory, settings).await;
    let mut alice = Conn::open(&desk, Party::Agent(agent("alice")));
    alice
        .expect("alice online", |f| shows(f, "alice", "online"))
        .await;
    let first = hand_off(&desk, &visitor("ann")).await;
    alice
        .expect("the assignment", |f| is_event(f, "assigned", first))
        .await;

    desk.choose_presence(&agent("alice"), Presence::Away)
        .await
        .unwrap();
    alice
        .expect("alice away", |f| shows(f, "alice", "away"))
        .await;
    let ben = visitor("ben");
    let mut bens_widget = Conn::open(&desk, Party::Visitor(ben.clone()));
    let second = hand_off(&desk, &ben).await;
    bens_widget
        .expect("ben waits", |f| f["type"] == "queue" && f["position"] == 1)
        .await;
    assert_eq!(desk.chat(first).await.unwrap().agent, Some(agent("alice")));
    assert_eq!(desk.chat(second).await.unwrap().agent, None);

    // Alice's console closes for good: after the grace, Ann is queued again.
    let mut anns_widget = Conn::open(&desk, Party::Visitor(visitor("ann")));
    alice.close(&desk);
    anns_widget
        .expect("ann back in line", |f| f["type"] == "queue")
        .await;
    assert_eq!(desk.chat(first).await.unwrap().agent, None);
    desk.shutdown().await;
}

/// A thousand visitors wait while three consoles are open: the consoles get
/// coalesced frames (changed rows in bounded frames, a queue summary at most
/// every 250 ms), so none is closed and each receives under 64 KiB/s.
#[tokio::test]
async fn a_thousand_waiting_visitors_cost_each_console_under_64_kib_a_second() {
    const VISITORS: usize = 1000;
    let directory = Arc::new(MemoryDirectory::default());
    let names = ["alice", "bob", "carol"];
    for id in names {
        directory
            .upsert(AgentRecord::new(agent(id), id, 3))
            .unwrap();
    }
    let desk = desk(&directory, DeskSettings::default()).await;
    let mut consoles = Vec::new();
    for id in names {
        // Away, so the queue only grows.
        desk.choose_presence(&agent(id), Presence::Away)
            .await
            .unwrap();
        consoles.push(Conn::open(&desk, Party::Agent(agent(id))));
    }
    for console in &mut consoles {
        console
            .expect("everyone away", |f| {
                names.iter().all(|n| shows(f, n, "away"))
            })
            .await;
    }
    let before: Vec<usize> = consoles.iter().map(|c| c.bytes).collect();

    let started = Instant::now();
    let mut waiting = std::collections::HashSet::new();
    for n in 0..VISITORS {
        waiting.insert(
            hand_off(&desk, &visitor(&format!("shopper-{n}")))
                .await
                .to_string(),
        );
    }

    // Each console learns of every waiting chat, and that a thousand wait.
    let mut elapsed = Vec::new();
    for console in &mut consoles {
        let mut unseen = waiting.clone();
        let mut summary_seen = false;
        while !(unseen.is_empty() && summary_seen) {
            let frame = console.next().await;
            match frame["type"].as_str() {
                Some("desk") => {
                    for row in frame["chats"].as_array().into_iter().flatten() {
                        if row["state"] == "queued" {
                            unseen.remove(row["id"].as_str().unwrap_or_default());
                        }
                    }
                }
                Some("queue_summary") => {
                    summary_seen = frame["waiting"] == VISITORS;
                }
                _ => {}
            }
        }
        elapsed.push(started.elapsed());
    }

    for (n, console) in consoles.iter().enumerate() {
        let received = console.bytes - before[n];
        let rate = received as f64 / elapsed[n].as_secs_f64();
        println!(
            "console {n}: {received} bytes in {:.1} s = {:.1} KiB/s, largest frame {} bytes",
            elapsed[n].as_secs_f64(),
            rate / 1024.0,
            console.largest
        );
        assert!(rate < 64.0 * 1024.0, "console {n}: {rate:.0} B/s");
        assert!(
            console.largest <= 16 * 1024,
            "console {n}: a frame of {} bytes",
            console.largest
        );
    }
    for id in names {
        let open = desk
            .pool()
            .connections_of(desk.tenant(), &Party::Agent(agent(id)));
        assert_eq!(open.len(), 1, "{id}'s console is still open");
    }
    desk.shutdown().await;
}

/// The widget's `data-lang` picks the greeting's language; without it the
/// greeting is in every language the FAQ has.
#[tokio::test]
async fn a_new_chat_is_greeted_in_the_pages_language() {
    use cs::intent::faq::{Faq, FaqBot, FaqSettings};
    let faq = Faq::from_json(include_str!("../examples/chat_server/faq.json")).unwrap();
    let bot = FaqBot::train(faq, FaqSettings::default()).unwrap();
    let (english, chinese) = (
        bot.greeting("en").unwrap().to_owned(),
        bot.greeting("zh").unwrap().to_owned(),
    );
    let desk = ServiceDesk::builder(TenantId::new("shop").unwrap())
        .bot(Arc::new(bot))
        .build()
        .await
        .unwrap();
    let greeting = |id: ConversationId| {
        let store = Arc::clone(desk.store());
        async move {
            let stored = store.recent(id, 10).await.unwrap();
            match &stored.first().expect("a greeting").body {
                cs::core::Body::Text { text, .. } => text.clone(),
                other => panic!("not text: {other:?}"),
            }
        }
    };
    let zh = desk
        .open_for_visitor_in(&visitor("ann"), Some("zh"))
        .await
        .unwrap();
    assert_eq!(greeting(zh.id).await, chinese);
    let any = desk.open_for_visitor(&visitor("ben")).await.unwrap();
    let both = greeting(any.id).await;
    assert!(both.contains(&english) && both.contains(&chinese), "{both}");
    let unknown = desk
        .open_for_visitor_in(&visitor("cai"), Some("fr"))
        .await
        .unwrap();
    assert_eq!(greeting(unknown.id).await, both);
    desk.shutdown().await;
}

/// The bot's "did you mean…?" reaches the visitor as a text message with
/// quick replies; the visitor's pick (the label, sent back as a message) is
/// answered with that intent's answer and taught to the bot as a labelled
/// example.
#[tokio::test]
async fn a_clarification_carries_quick_replies_and_a_pick_gets_that_answer_and_is_learned() {
    use cs::core::{NewMessage, Seq};
    use cs::intent::faq::{Faq, FaqBot, FaqSettings, Outcome};
    use cs::transport::Origin;

    let faq = Faq::from_json(include_str!("../examples/chat_server/faq.json")).unwrap();
    // Never answer outright, always ask rather than hand off: every question
    // is a clarification (the fitted rule is tested in cs-intent).
    let settings = FaqSettings {
        answer_threshold: Some(f32::INFINITY),
        clarify_mass: Some(0.0),
        ..FaqSettings::default()
    };
    let bot = Arc::new(FaqBot::train(faq.clone(), settings).unwrap());
    let desk = ServiceDesk::builder(TenantId::new("shop").unwrap())
        .bot(Arc::clone(&bot))
        .build()
        .await
        .unwrap();
    let ann = visitor("ann");
    let chat = desk.open_for_visitor(&ann).await.unwrap();
    let mut tab = Conn::open(&desk, Party::Visitor(ann.clone()));
    desk.dispatcher()
        .submit_and_wait(Command::Join {
            conn: tab.id,
            conversation: chat.id,
            last_seq: Seq::new(0),
        })
        .await
        .unwrap();
    let tab_id = tab.id;
    let say = |text: &str| Command::Send {
        origin: Origin::Connection(tab_id),
        message: NewMessage::text(chat.id, Party::Visitor(ann.clone()), text),
    };
    let from_bot = |frame: &Value| {
        frame["type"] == "message"
            && frame["message"]["sender"]["kind"] == "bot"
            && frame["message"]["conversation"] == chat.id.to_string()
    };

    let question = "where is my parcel";
    desk.dispatcher()
        .submit_and_wait(say(question))
        .await
        .unwrap();
    let asked = tab
        .expect("the bot's clarification", |f| {
            from_bot(f) && f["message"]["body"]["quick_replies"].is_array()
        })
        .await;
    let body = &asked["message"]["body"];
    assert_eq!(body["type"], "text");
    let labels: Vec<String> = body["quick_replies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["label"].as_str().unwrap().to_owned())
        .collect();
    assert!((2..=3).contains(&labels.len()), "{body}");
    let logged = bot.decisions(chat.id).pop().unwrap();
    assert_eq!(logged.outcome, Outcome::Clarify);
    assert_eq!(
        logged.options.iter().map(|o| &o.label).collect::<Vec<_>>(),
        labels.iter().collect::<Vec<_>>(),
        "the buttons are the options the bot logged"
    );
    for label in &labels {
        assert!(
            body["text"].as_str().unwrap().contains(label.as_str()),
            "the text names every option for clients without buttons: {body}"
        );
    }

    // The visitor picks the second option, not the bot's top guess.
    let picked = &logged.options[1];
    let rows_before = bot.training_rows();
    desk.dispatcher()
        .submit_and_wait(say(&picked.label))
        .await
        .unwrap();
    let answer = tab
        .expect("the picked intent's answer", |f| {
            from_bot(f) && f["message"]["seq"].as_u64() > asked["message"]["seq"].as_u64()
        })
        .await;
    let expected = faq.intent(&picked.intent).unwrap().answer["en"].clone();
    assert_eq!(answer["message"]["body"]["text"], expected.as_str());
    assert!(answer["message"]["body"].get("quick_replies").is_none());

    let decision = bot.decisions(chat.id).pop().unwrap();
    assert_eq!(
        (
            decision.intent.as_str(),
            decision.confidence,
            decision.question.as_str()
        ),
        (picked.intent.as_str(), 1.0, question)
    );
    assert_eq!(
        bot.training_rows(),
        rows_before + 1,
        "the pick is a training row"
    );
    assert_eq!(bot.counters.snapshot().chosen, 1);
    desk.shutdown().await;
}
