//! The chat_server demo, end to end over its real HTTP and WebSocket
//! endpoints: the bot, the hand-off to a person, the queue, transfers,
//! reconnects, corrections, uploads, tokens, metrics and shutdown. Each test
//! runs the real binary (see `support`). The browser tests drive the same
//! flows through the pages.

mod support;

use std::time::Duration;

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use support::{eventually, is_event, is_message_from, text_of, Client, Http, Server, SECRET};

#[tokio::test]
async fn the_bot_answers_then_hands_off_to_an_agent_who_replies_and_reconnects_see_it_all_once() {
    let server = Server::start(&[]).await;
    let http = Http::new(&server);
    let alice_token = http.agent("alice").await;
    let mut alice = Client::connect(&server, "/ws/agent", &alice_token).await;
    // Alice's console: she is online once her socket is.
    alice
        .expect(|f| f["type"] == "agents" && f["agents"][0]["presence"] == "online")
        .await;

    let (token, _visitor, conversation) = http.visitor().await;
    let mut visitor = Client::connect(&server, "/ws/visitor", &token).await;
    visitor.resume(&conversation, 0).await;
    let greeting = visitor.expect(|f| is_message_from(f, "bot")).await;
    assert!(text_of(&greeting).contains("Demo Shop"));
    visitor.expect(|f| f["type"] == "replayed").await;

    // An FAQ question: the bot answers from the knowledge base.
    let id = visitor
        .say(&conversation, "where is my order? it has not arrived")
        .await;
    let ack = visitor.expect(|f| f["type"] == "ack").await;
    assert_eq!(ack["client_msg_id"], id);
    let answer = visitor.expect(|f| is_message_from(f, "bot")).await;
    assert!(!text_of(&answer).is_empty());
    let (_, decisions) = http
        .get(
            &format!("/api/agent/conversations/{conversation}/bot"),
            Some(&alice_token),
        )
        .await;
    assert_eq!(
        decisions["decisions"][0]["intent"], "order_status",
        "{decisions}"
    );
    assert_eq!(decisions["decisions"][0]["outcome"], "answer");

    // Asking for a person: the bot says so and hands off; Alice gets it.
    visitor
        .say(&conversation, "I want to talk to a real person")
        .await;
    visitor.expect(|f| is_event(f, "handoff")).await;
    let assigned = visitor.expect(|f| is_event(f, "assigned")).await;
    assert_eq!(assigned["message"]["body"]["agent"], "alice");
    alice
        .expect(|f| {
            is_event(f, "assigned") && f["message"]["conversation"] == conversation.as_str()
        })
        .await;

    // Alice replies; the visitor sees it.
    alice
        .say(&conversation, "Hi, this is Alice. Let me check that order.")
        .await;
    alice.expect(|f| f["type"] == "ack").await;
    let reply = visitor.expect(|f| is_message_from(f, "agent")).await;
    assert_eq!(
        text_of(&reply),
        "Hi, this is Alice. Let me check that order."
    );
    // Once a person has it, the bot keeps quiet.
    visitor
        .say(&conversation, "thanks, where is my parcel though?")
        .await;
    let quiet = visitor.drain(Duration::from_millis(800)).await;
    assert!(
        !quiet.iter().any(|f| is_message_from(f, "bot")),
        "the bot spoke in an assigned conversation: {quiet:#?}"
    );

    // A reload: a fresh socket resumes from 0 and sees every message once, in order.
    drop(visitor);
    let mut reloaded = Client::connect(&server, "/ws/visitor", &token).await;
    reloaded.resume(&conversation, 0).await;
    let mut frames = Vec::new();
    loop {
        let frame = reloaded
            .expect(|f| f["type"] == "message" || f["type"] == "replayed")
            .await;
        if frame["type"] == "replayed" {
            assert_eq!(frame["complete"], true);
            break;
        }
        frames.push(frame);
    }
    let seqs: Vec<u64> = frames
        .iter()
        .map(|f| f["message"]["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
    assert!(frames
        .iter()
        .any(|f| text_of(f) == "Hi, this is Alice. Let me check that order."));

    // A resend of an acknowledged message (same client_msg_id) is stored once.
    reloaded
        .send_frame(json!({
            "type": "send", "conversation": conversation, "client_msg_id": id,
            "body": { "type": "text", "text": "where is my order? it has not arrived" }
        }))
        .await;
    let again = reloaded.expect(|f| f["type"] == "ack").await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["seq"], ack["seq"]);
}

#[tokio::test]
async fn visitors_wait_in_order_and_are_told_their_place_then_transfer_moves_the_chat() {
    let server = Server::start(&["--agent-capacity", "1"]).await;
    let http = Http::new(&server);

    // Nobody online: two visitors ask for a person and queue in order.
    let mut visitors = Vec::new();
    for expected in [1, 2] {
        let (token, _, conversation) = http.visitor().await;
        let mut client = Client::connect(&server, "/ws/visitor", &token).await;
        client.resume(&conversation, 0).await;
        client.say(&conversation, "转人工").await;
        let queued = client
            .expect(|f| f["type"] == "queue" && f["conversation"] == conversation.as_str())
            .await;
        assert_eq!(queued["position"], expected);
        visitors.push((client, conversation));
    }

    // Alice (capacity 1) comes online: the first in line is hers, the
    // second moves up to first.
    let alice_token = http.agent("alice").await;
    let mut alice = Client::connect(&server, "/ws/agent", &alice_token).await;
    let (first, first_id) = &mut visitors[0];
    let assigned = first.expect(|f| is_event(f, "assigned")).await;
    assert_eq!(assigned["message"]["body"]["agent"], "alice");
    alice
        .expect(|f| is_event(f, "assigned") && f["message"]["conversation"] == first_id.as_str())
        .await;
    let first_id = first_id.clone();
    let (second, second_id) = &mut visitors[1];
    let moved = second
        .expect(|f| f["type"] == "queue" && f["conversation"] == second_id.as_str())
        .await;
    assert_eq!(moved["position"], 1);

    // Away keeps her chat and takes nobody new; transfer needs Bob online.
    http.choose_presence(&alice_token, "away").await;
    let bob_token = http.agent("bob").await;
    let mut bob = Client::connect(&server, "/ws/agent", &bob_token).await;
    // Bob takes the second visitor as soon as he is online (capacity 1 each).
    let (second, second_id) = &mut visitors[1];
    let to_bob = second.expect(|f| is_event(f, "assigned")).await;
    assert_eq!(to_bob["message"]["body"]["agent"], "bob");
    let second_id = second_id.clone();

    // Bob is full, so a transfer to him is refused with a reason.
    let (status, refused) = http
        .post(
            &format!("/api/agent/conversations/{first_id}/transfer"),
            Some(&alice_token),
            json!({ "to": "bob" }),
        )
        .await;
    assert_eq!(status, 409, "{refused}");
    // Bob closes his chat; now the transfer goes through.
    let (status, _) = http
        .post(
            &format!("/api/agent/conversations/{second_id}/close"),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200);
    // Only the serving agent may transfer.
    let (status, _) = http
        .post(
            &format!("/api/agent/conversations/{first_id}/transfer"),
            Some(&bob_token),
            json!({ "to": "bob" }),
        )
        .await;
    assert_eq!(status, 403);
    let (status, moved) = http
        .post(
            &format!("/api/agent/conversations/{first_id}/transfer"),
            Some(&alice_token),
            json!({ "to": "bob" }),
        )
        .await;
    assert_eq!(status, 200, "{moved}");
    let (first, _) = &mut visitors[0];
    let transfer = first.expect(|f| is_event(f, "transfer")).await;
    assert_eq!(transfer["message"]["body"]["to"], "bob");
    bob.expect(|f| is_event(f, "transfer")).await;
    // Alice may no longer write there.
    alice.say(&first_id, "still me?").await;
    let error = alice.expect(|f| f["type"] == "error").await;
    assert_eq!(error["code"], "unauthorized");
}

#[tokio::test]
async fn an_agent_correction_changes_the_next_answer_at_once() {
    let server = Server::start(&[]).await;
    let http = Http::new(&server);
    let agent = http.agent("carol").await;
    let (token, _, conversation) = http.visitor().await;
    let mut visitor = Client::connect(&server, "/ws/visitor", &token).await;
    visitor.resume(&conversation, 0).await;
    visitor.expect(|f| f["type"] == "replayed").await;

    let question = "do you sell gift cards?";
    visitor.say(&conversation, question).await;
    let asked = visitor.expect(|f| is_message_from(f, "visitor")).await;
    visitor.expect(|f| is_message_from(f, "bot")).await;
    let (_, before) = http
        .get(
            &format!("/api/agent/conversations/{conversation}/bot"),
            Some(&agent),
        )
        .await;
    let first = before["decisions"][0]["intent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(before["decisions"][0]["outcome"], "answer", "{before}");
    let right = if first == "coupon" {
        "payment_methods"
    } else {
        "coupon"
    };

    let (status, learned) = http
        .post(
            "/api/agent/corrections",
            Some(&agent),
            json!({ "conversation": conversation, "seq": asked["message"]["seq"], "intent": right }),
        )
        .await;
    assert_eq!(status, 200, "{learned}");
    assert_eq!(learned["learned"], question);

    visitor.say(&conversation, question).await;
    visitor.expect(|f| is_message_from(f, "bot")).await;
    let (_, after) = http
        .get(
            &format!("/api/agent/conversations/{conversation}/bot"),
            Some(&agent),
        )
        .await;
    assert_eq!(after["decisions"][0]["corrected_to"], right);
    assert_eq!(after["decisions"][1]["intent"], right, "{after}");

    // A correction must name a visitor's question and a known intent.
    let (status, _) = http
        .post(
            "/api/agent/corrections",
            Some(&agent),
            json!({ "conversation": conversation, "seq": 1, "intent": right }),
        )
        .await;
    assert_eq!(status, 400, "seq 1 is the bot's greeting");
    let (status, _) = http
        .post(
            "/api/agent/corrections",
            Some(&agent),
            json!({ "conversation": conversation, "seq": asked["message"]["seq"], "intent": "no_such_intent" }),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn tokens_are_checked_and_visitors_see_only_their_own_conversation() {
    let server = Server::start(&[]).await;
    let http = Http::new(&server);
    let (token, _, conversation) = http.visitor().await;
    let (other_token, _, _) = http.visitor().await;

    // No token, a tampered one, one of the wrong kind, an expired one.
    let (status, _) = http
        .post("/api/visitor/conversation", None, json!({}))
        .await;
    assert_eq!(status, 401);
    let tampered = token.replacen("v-", "v-0", 1);
    let (status, _) = http
        .post("/api/visitor/conversation", Some(&tampered), json!({}))
        .await;
    assert_eq!(status, 401);
    let (status, body) = http.get("/api/agent/desk", Some(&token)).await;
    assert_eq!(
        status, 401,
        "a visitor token is not an agent session: {body}"
    );
    // Signed as the desk signs: with the key derived for its tenant (`demo`).
    let mut derive = <Hmac<Sha256> as Mac>::new_from_slice(SECRET.as_bytes()).unwrap();
    derive.update(b"cs desk token key for tenant demo");
    let key = derive.finalize().into_bytes();
    let payload = "a.alice.s1.1.1000";
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).unwrap();
    mac.update(payload.as_bytes());
    let expired = format!("{payload}.{}", hex::encode(mac.finalize().into_bytes()));
    let (status, body) = http.get("/api/agent/desk", Some(&expired)).await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    let (status, _) = http
        .post(
            "/api/agent/login",
            None,
            json!({ "agent": "alice", "password": "nope" }),
        )
        .await;
    assert_eq!(status, 401);

    // Another visitor's socket cannot read or write this conversation.
    let mut intruder = Client::connect(&server, "/ws/visitor", &other_token).await;
    intruder.resume(&conversation, 0).await;
    let refused = intruder.expect(|f| f["type"] == "error").await;
    assert_eq!(refused["code"], "unauthorized");
    intruder.say(&conversation, "let me in").await;
    let refused = intruder.expect(|f| f["type"] == "error").await;
    assert_eq!(refused["code"], "unauthorized");

    // A socket without a valid token is not upgraded.
    let url = format!("ws://{}/ws/visitor?token={tampered}", server.host);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}

#[tokio::test]
async fn uploads_are_size_limited_images_are_checked_and_files_come_back() {
    let server = Server::start(&["--max-upload-mb", "1"]).await;
    let http = Http::new(&server);
    let (token, _, _) = http.visitor().await;
    let upload = |name: &str, mime: &str, bytes: Vec<u8>, token: Option<String>| {
        let mut request = http
            .client
            .post(format!("{}/api/upload?name={name}", http.base))
            .header("Content-Type", mime.to_owned())
            .body(bytes);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let png = [b"\x89PNG\r\n\x1a\n".as_slice(), &[0u8; 64]].concat();
    let response = upload("photo.png", "image/png", png.clone(), Some(token.clone()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["body"]["type"], "image");
    let url = body["body"]["url"].as_str().unwrap().to_owned();
    let download = |url: &str, token: Option<&str>| {
        let mut request = http.client.get(format!("{}{url}", http.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let served = download(&url, Some(&token)).await.unwrap();
    assert_eq!(served.headers()["content-type"], "image/png");
    assert_eq!(served.headers()["x-content-type-options"], "nosniff");
    assert_eq!(served.bytes().await.unwrap().as_ref(), png.as_slice());

    // A file is its conversation's: nobody signed out can open it, and to
    // another visitor it does not exist.
    assert_eq!(download(&url, None).await.unwrap().status(), 401);
    let (stranger, _, _) = http.visitor().await;
    assert_eq!(download(&url, Some(&stranger)).await.unwrap().status(), 404);

    // Not an image, whatever it says; and not without a token.
    let fake = b"<script>alert(1)</script>".to_vec();
    let response = upload("x.png", "image/png", fake.clone(), Some(token.clone()))
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = upload("x.png", "image/png", png.clone(), None)
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // Any other file is served as a download, never as a page.
    let response = upload("page.html", "text/html", fake, Some(token.clone()))
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["body"]["type"], "file");
    let url = body["body"]["url"].as_str().unwrap();
    let served = download(url, Some(&token)).await.unwrap();
    assert_eq!(served.headers()["content-type"], "application/octet-stream");
    assert!(served.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .starts_with("attachment"));

    // Over the limit (1 MiB here): refused on its Content-Length, before a
    // byte of the body is read (so the raw request sends none; a client
    // still writing a body may see the connection close under it).
    let mut raw = tokio::net::TcpStream::connect(&server.host).await.unwrap();
    let head = format!(
        "POST /api/upload?name=big.bin HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        server.host,
        1024 * 1024 + 1
    );
    tokio::io::AsyncWriteExt::write_all(&mut raw, head.as_bytes())
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let read = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncReadExt::read(&mut raw, &mut answer),
    )
    .await
    .expect("an answer without the body")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let missing = download(&format!("/files/{}", "0".repeat(32)), Some(&token))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn the_profile_is_marked_partial_when_a_system_is_down() {
    let server = Server::start(&[]).await;
    let http = Http::new(&server);
    let agent = http.agent("alice").await;
    let (_, visitor, conversation) = http.visitor().await;

    let path = format!("/api/agent/conversations/{conversation}/profile");
    let (status, whole) = http.get(&path, Some(&agent)).await;
    assert_eq!(status, 200);
    assert_eq!(whole["visitor"], visitor.as_str());
    assert_eq!(whole["partial"], false);
    assert!(whole["profile"]["name"].is_string(), "{whole}");
    assert!(!whole["orders"].as_array().unwrap().is_empty());

    http.post("/api/agent/demo/crm", Some(&agent), json!({ "down": true }))
        .await;
    let (_, partial) = http.get(&path, Some(&agent)).await;
    assert_eq!(partial["partial"], true, "{partial}");
    assert_eq!(partial["failures"][0]["adapter"], "crm");
    assert!(
        partial["profile"]["name"].is_null(),
        "the CRM's fields are missing"
    );
    assert!(
        !partial["orders"].as_array().unwrap().is_empty(),
        "the ERP still answers"
    );
}

#[tokio::test]
async fn metrics_health_and_ctrl_c_drain() {
    let server = Server::start(&[]).await;
    let http = Http::new(&server);
    let (token, _, conversation) = http.visitor().await;
    let mut visitor = Client::connect(&server, "/ws/visitor", &token).await;
    visitor.resume(&conversation, 0).await;
    visitor.expect(|f| f["type"] == "replayed").await;
    visitor.say(&conversation, "how do I get a refund").await;
    visitor.expect(|f| is_message_from(f, "bot")).await;

    let health = http
        .client
        .get(format!("{}/healthz", http.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let metrics = http
        .client
        .get(format!("{}/metrics", http.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "cs_connections 1",
        "cs_open_conversations 1",
        "cs_persisted_total 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    let bot_replies: u64 = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("cs_bot_replies_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(bot_replies, 1, "one question, one bot decision:\n{metrics}");

    // Ctrl-C: the server drains, tells the socket to reconnect, and exits cleanly.
    let status = server.interrupt().await;
    assert!(status.success(), "exit status {status}");
    let close = visitor.expect(|f| f["type"] == "close").await;
    assert_eq!(close["reason"], "shutdown");
}

/// The agent serving `conversation` in the desk as `token` sees it.
async fn agent_of(http: &Http, token: &str, conversation: &str) -> Result<String, String> {
    let chat = http.chat(token, conversation).await?;
    chat["agent"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("chat without an agent: {chat}"))
}

#[tokio::test]
async fn after_a_restart_agents_keep_their_chats_and_an_absent_one_loses_them_after_the_grace() {
    let dir = std::env::temp_dir().join(format!(
        "cs-e2e-restart-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let database = format!("sqlite://{}", dir.join("cs.db").display());
    let flags = ["--database", database.as_str(), "--agent-grace-secs", "2"];

    let server = Server::start_node("before", &flags).await;
    let http = Http::new(&server);
    let alice_token = http.agent("alice").await;
    let bob_token = http.agent("bob").await;
    let alice = Client::connect(&server, "/ws/agent", &alice_token).await;
    let (first_token, _, first) = http.visitor().await;
    let mut visitor = Client::connect(&server, "/ws/visitor", &first_token).await;
    visitor.resume(&first, 0).await;
    visitor.say(&first, "I want to talk to a real person").await;
    let assigned = visitor.expect(|f| is_event(f, "assigned")).await;
    assert_eq!(assigned["message"]["body"]["agent"], "alice");
    // Bob comes online and Alice steps away, so the next visitor is Bob's.
    let bob = Client::connect(&server, "/ws/agent", &bob_token).await;
    http.choose_presence(&alice_token, "away").await;
    let (second_token, _, second) = http.visitor().await;
    let mut other = Client::connect(&server, "/ws/visitor", &second_token).await;
    other.resume(&second, 0).await;
    other.say(&second, "I want to talk to a real person").await;
    let assigned = other.expect(|f| is_event(f, "assigned")).await;
    assert_eq!(assigned["message"]["body"]["agent"], "bob");
    drop((alice, bob, visitor, other));
    assert!(server.interrupt().await.success());

    // The same store, a new process: both chats are still with their agents.
    let server = Server::start_node("after", &flags).await;
    let http = Http::new(&server);
    assert_eq!(
        agent_of(&http, &alice_token, &first).await.unwrap(),
        "alice"
    );
    assert_eq!(agent_of(&http, &alice_token, &second).await.unwrap(), "bob");

    // Alice comes back; Bob does not. After his grace his visitor returns to
    // the queue, and Alice, online again, takes them; hers stays hers.
    let mut alice = Client::connect(&server, "/ws/agent", &alice_token).await;
    eventually(
        "bob's chat to move to alice",
        Duration::from_secs(20),
        async || match agent_of(&http, &alice_token, &second).await {
            Ok(agent) if agent == "alice" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    )
    .await;
    assert_eq!(
        agent_of(&http, &alice_token, &first).await.unwrap(),
        "alice"
    );
    let id = alice.say(&first, "still here after the restart").await;
    let ack = alice.expect(|f| f["type"] == "ack").await;
    assert_eq!(ack["client_msg_id"], id, "alice may still write: {ack}");
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
