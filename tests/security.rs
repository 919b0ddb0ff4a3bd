//! The desk's edge, tried as an attacker would, against the real
//! `chat_server` binary on 127.0.0.1: sign-in backoff, one rate for all of
//! a visitor's sockets, session and conversation limits per address and
//! visitor, token renewal, logout, tenant binding, tokens in URLs, the
//! `Origin` check, the metrics token, demo accounts on a public address,
//! private files on disk, attachment URLs, and idle bot chats.
//!
//! Each test waits for the answer or frame that proves its point, bounded
//! by `WAIT`; none sleeps to let something happen.

mod support;

use std::time::Instant;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::{binary, is_event, Client, Http, Server, WAIT};

/// The login attempts `n` wrong passwords for `agent`; the statuses and bodies.
async fn wrong_logins(http: &Http, agent: &str, n: usize) -> Vec<(u16, Value)> {
    let mut answers = Vec::new();
    for _ in 0..n {
        answers.push(
            http.post(
                "/api/agent/login",
                None,
                json!({ "agent": agent, "password": "guess" }),
            )
            .await,
        );
    }
    answers
}

#[tokio::test]
async fn a_hundred_wrong_logins_bring_429s_that_name_no_account() {
    let server = Server::start(&[]).await;
    let http = Http::new(&server);
    // Half against one account, half spread over made-up ones (a scan).
    let mut answers = wrong_logins(&http, "alice", 50).await;
    for n in 0..50 {
        answers.extend(wrong_logins(&http, &format!("user{n}"), 1).await);
    }
    let limited: Vec<&Value> = answers
        .iter()
        .filter(|(status, _)| *status == 429)
        .map(|(_, body)| body)
        .collect();
    // alice: 5 free failures; the address: 20 free failures in all.
    assert!(
        limited.len() >= 70,
        "only {} of 100 wrong logins were refused with 429",
        limited.len()
    );
    assert!(answers
        .iter()
        .all(|(status, _)| *status == 401 || *status == 429));
    for (status, body) in &answers {
        let text = body.to_string();
        for secret in ["bob", "carol", "\"demo\""] {
            assert!(!text.contains(secret), "{status} names {secret}: {text}");
        }
    }
    assert!(limited
        .iter()
        .all(|body| body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0)));
    // The lockout holds against the right password too, and the address is
    // locked for every other account after this many failures.
    let (status, _) = http
        .post(
            "/api/agent/login",
            None,
            json!({ "agent": "alice", "password": "demo" }),
        )
        .await;
    assert_eq!(status, 429);
    let response = http
        .client
        .post(format!("{}/api/agent/login", http.base))
        .json(&json!({ "agent": "bob", "password": "demo" }))
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header in seconds");
    assert!(retry_after >= 1);
}

#[tokio::test]
async fn one_visitors_many_sockets_share_one_message_rate() {
    let server = Server::start(&[]).await;
    let http = Http::new(&server);
    let (token, _, conversation) = http.visitor().await;
    // 16 sockets (the per-visitor cap), 25 messages each: under each socket's
    // own burst of 40, and ten times the visitor's shared burst.
    let mut sockets = Vec::new();
    for _ in 0..16 {
        sockets.push(Client::connect(&server, "/ws/visitor", &token).await);
    }
    let started = Instant::now();
    let mut sent = Vec::new();
    for socket in &mut sockets {
        for n in 0..25 {
            sent.push(socket.say(&conversation, &format!("flood {n}")).await);
        }
    }
    let sending = started.elapsed();
    let (mut acked, mut limited) = (0usize, 0usize);
    for socket in &mut sockets {
        for _ in 0..25 {
            let answer = socket
                .expect(|f| f["type"] == "ack" || f["type"] == "error")
                .await;
            if answer["type"] == "ack" {
                acked += 1;
            } else {
                assert_eq!(answer["code"], "rate_limited", "{answer}");
                assert!(answer["client_msg_id"].is_string(), "{answer}");
                assert_eq!(answer["conversation"], conversation.as_str());
                assert!(answer["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0));
                limited += 1;
            }
        }
    }
    assert_eq!(acked + limited, sent.len(), "every send was answered");
    // 40 at once, then 20 per second, whatever the number of sockets.
    let allowed = 40 + 20 * (sending.as_secs() as usize + 1);
    assert!(
        acked <= allowed,
        "{acked} accepted in {sending:?} across 16 sockets; the shared rate allows {allowed}"
    );
    assert!(limited > 0, "none of {} sends was limited", sent.len());
    // A 17th socket for the same visitor is refused before the upgrade.
    let url = format!("ws://{}/ws/visitor?token={token}", server.host);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}

#[tokio::test]
async fn two_thousand_session_creations_from_one_address_are_throttled() {
    let server = Server::start(&[]).await;
    let http = Http::new(&server);
    let (returning, _, _) = http.visitor().await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let http = Http::new(&server);
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..250 {
                statuses.push(http.post("/api/visitor/session", None, json!({})).await);
            }
            statuses
        }));
    }
    let mut created = 1; // the returning visitor's
    let mut throttled = 0;
    for task in tasks {
        for (status, body) in task.await.expect("the task ran") {
            match status {
                200 => created += 1,
                429 => {
                    assert!(body["message"]
                        .as_str()
                        .unwrap_or("")
                        .contains("per minute"));
                    throttled += 1;
                }
                other => panic!("unexpected {other}: {body}"),
            }
        }
    }
    let elapsed = started.elapsed();
    // 30 at once, then one every 2 s.
    let allowed = 30 + (elapsed.as_secs() as usize) / 2 + 1;
    assert!(
        created <= allowed,
        "{created} sessions in {elapsed:?}; the limit allows {allowed}"
    );
    assert!(throttled >= 2000 - allowed, "{throttled} throttled");
    // A returning visitor renews meanwhile: that is not a new session.
    let (status, renewed) = http
        .post("/api/visitor/session", Some(&returning), json!({}))
        .await;
    assert_eq!(status, 200, "{renewed}");
}

#[tokio::test]
async fn one_visitor_cannot_open_and_close_conversations_without_end() {
    let server = Server::start(&[]).await;
    let http = Http::new(&server);
    let (token, _, _) = http.visitor().await;
    let mut opened = 1;
    let refused = loop {
        let (status, body) = http
            .post("/api/visitor/conversation/close", Some(&token), json!({}))
            .await;
        if status == 429 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        let (status, body) = http
            .post("/api/visitor/conversation", Some(&token), json!({}))
            .await;
        if status == 429 {
            break body;
        }
        assert_eq!(status, 200, "{body}");
        opened += 1;
        assert!(opened <= 21, "{opened} conversations opened by one visitor");
    };
    assert!(opened >= 19, "refused after only {opened}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap_or("")
            .contains("per visitor"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_renewal_retires_the_old_token_and_a_logout_revokes() {
    let server = Server::start(&[]).await;
    let http = Http::new(&server);
    let (first, visitor, _) = http.visitor().await;
    let (status, renewed) = http
        .post("/api/visitor/session", Some(&first), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(renewed["visitor"], visitor.as_str(), "the same visitor");
    let second = renewed["token"].as_str().unwrap().to_owned();
    let (status, body) = http
        .post("/api/visitor/conversation", Some(&first), json!({}))
        .await;
    assert_eq!(status, 401, "the replaced token: {body}");
    assert!(body["message"].as_str().unwrap().contains("replaced"));
    let (status, _) = http
        .post("/api/visitor/conversation", Some(&second), json!({}))
        .await;
    assert_eq!(status, 200);

    // The visitor signs out: the token is refused, on the API and the socket.
    let mut open = Client::connect(&server, "/ws/visitor", &second).await;
    let (status, _) = http
        .post("/api/visitor/logout", Some(&second), json!({}))
        .await;
    assert_eq!(status, 200);
    open.expect(|f| f["type"] == "close").await;
    let (status, _) = http
        .post("/api/visitor/conversation", Some(&second), json!({}))
        .await;
    assert_eq!(status, 401);
    let url = format!("ws://{}/ws/visitor?token={second}", server.host);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());

    // An agent signs out everywhere, and can sign in again.
    let agent = http.agent("alice").await;
    assert!(http.desk(&agent).await.is_ok());
    let (status, _) = http
        .post("/api/agent/logout", Some(&agent), json!({}))
        .await;
    assert_eq!(status, 200);
    let refused = http.desk(&agent).await.expect_err("a revoked token");
    assert!(refused.starts_with("401"), "{refused}");
    let again = http.agent("alice").await;
    assert!(http.desk(&again).await.is_ok());
}

#[tokio::test]
async fn tokens_are_bound_to_their_shop_and_kept_out_of_urls() {
    let shop = Server::start(&[]).await;
    let other = Server::start(&["--tenant", "another-shop"]).await;
    let (token, _, _) = Http::new(&shop).visitor().await;
    // Both servers sign with the same secret; the other shop still refuses.
    let (status, body) = Http::new(&other)
        .post("/api/visitor/conversation", Some(&token), json!({}))
        .await;
    assert_eq!(status, 401, "{body}");

    let http = Http::new(&shop);
    let agent = http.agent("bob").await;
    let (status, _) = http
        .get(&format!("/api/agent/desk?token={agent}"), None)
        .await;
    assert_eq!(status, 401, "a token in the URL of a plain request");
    assert!(http.desk(&agent).await.is_ok());
    // The WebSocket upgrade is the one place a browser cannot set a header.
    Client::connect(&shop, "/ws/agent", &agent)
        .await
        .close()
        .await;
}

/// A WebSocket upgrade with `Origin: origin`; whether it was accepted.
async fn upgrade_from(server: &Server, token: &str, origin: &str) -> bool {
    let mut request = format!("ws://{}/ws/visitor?token={token}", server.host)
        .into_client_request()
        .expect("a request");
    request
        .headers_mut()
        .insert("origin", origin.parse().expect("a header value"));
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request)).await {
        Ok(Ok((mut ws, _))) => {
            let _ = ws.close(None).await;
            true
        }
        Ok(Err(_)) => false,
        Err(_) => panic!("the upgrade neither succeeded nor failed within {WAIT:?}"),
    }
}

#[tokio::test]
async fn sockets_from_a_foreign_origin_are_refused() {
    let server = Server::start(&["--allowed-origin", "https://shop.example"]).await;
    let (token, _, _) = Http::new(&server).visitor().await;
    assert!(!upgrade_from(&server, &token, "https://evil.example").await);
    assert!(!upgrade_from(&server, &token, "null").await);
    assert!(upgrade_from(&server, &token, &format!("http://{}", server.host)).await);
    assert!(upgrade_from(&server, &token, "https://shop.example").await);
}

#[tokio::test]
async fn metrics_need_the_token_when_one_is_set() {
    let server = Server::start(&["--metrics-token", "scrape-me"]).await;
    let http = Http::new(&server);
    let (status, _) = http.get("/metrics", None).await;
    assert_eq!(status, 401);
    let (status, _) = http.get("/metrics", Some("wrong")).await;
    assert_eq!(status, 401);
    let response = http
        .client
        .get(format!("{}/metrics", http.base))
        .bearer_auth("scrape-me")
        .send()
        .await
        .expect("the server answers");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap_or_default();
    assert!(text.contains("cs_connections"), "{text}");
}

#[tokio::test]
async fn demo_accounts_are_refused_on_a_public_address() {
    let run = tokio::process::Command::new(binary())
        .args(["--addr", "0.0.0.0:0", "--database", "sqlite::memory:"])
        .arg("--data-dir")
        .arg(std::env::temp_dir().join(format!("cs-sec-{}", std::process::id())))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(WAIT, run)
        .await
        .expect("chat_server exits at once")
        .expect("chat_server runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--demo-accounts-anywhere"), "{stderr}");
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_the_database_and_the_key_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("cs-private-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    cs::desk::create_private_dir(&dir).expect("the dir is made");
    let db = dir.join("cs.db");
    let store = cs::datahub::store::SqliteStore::open(&db)
        .await
        .expect("the store opens");
    drop(store);
    cs::desk::Signer::load_or_create(&dir.join("secret.key")).expect("a key");
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o777)
            .unwrap_or(0)
    };
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&dir.join("secret.key")), 0o600);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_script_url_is_refused_with_the_sends_id_and_conversation() {
    let server = Server::start(&[]).await;
    let (token, _, conversation) = Http::new(&server).visitor().await;
    let mut socket = Client::connect(&server, "/ws/visitor", &token).await;
    socket
        .send_frame(json!({
            "type": "send", "conversation": conversation, "client_msg_id": "evil-1",
            "body": { "type": "image", "url": "javascript:alert(1)", "mime": "image/png", "bytes": 10 }
        }))
        .await;
    let refused = socket.expect(|f| f["type"] == "error").await;
    assert_eq!(refused["client_msg_id"], "evil-1", "{refused}");
    assert_eq!(refused["conversation"], conversation.as_str());
    assert!(refused["message"].as_str().unwrap().contains("https://"));
    // A frame that does not decode still names the send it was.
    socket
        .send_frame(json!({
            "type": "send", "conversation": conversation, "client_msg_id": "odd-1",
            "body": { "type": "hologram" }
        }))
        .await;
    let refused = socket.expect(|f| f["type"] == "error").await;
    assert_eq!(refused["code"], "malformed");
    assert_eq!(refused["client_msg_id"], "odd-1", "{refused}");
    assert_eq!(refused["conversation"], conversation.as_str());
}

#[tokio::test]
async fn a_silent_bot_conversation_is_closed() {
    let server = Server::start(&["--idle-bot-close-secs", "1"]).await;
    let (token, _, conversation) = Http::new(&server).visitor().await;
    let mut socket = Client::connect(&server, "/ws/visitor", &token).await;
    socket.resume(&conversation, 0).await;
    let closed = socket.expect(|f| is_event(f, "close")).await;
    let reason = closed["message"]["body"]["reason"].as_str().unwrap_or("");
    assert!(reason.contains("without a word"), "{closed}");
    // The next question starts a new conversation.
    let (status, open) = Http::new(&server)
        .post("/api/visitor/conversation", Some(&token), json!({}))
        .await;
    assert_eq!(status, 200);
    assert_ne!(open["conversation"]["id"], conversation.as_str());
}
