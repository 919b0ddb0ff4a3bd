//! Learning from past conversations over the desk's real HTTP API: a
//! `ServiceDesk` with the demo FAQ bot and a history file, served on a
//! local port. A supervisor uploads a history JSONL, lists the suggestions,
//! accepts one (renamed) and rejects another; an agent may not; a malformed
//! line and an upload over the limit are refused with what to fix. A second
//! desk on the same history file teaches its new bot what was accepted.

#[path = "support/history.rs"]
mod history_data;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use cs::core::{AgentId, AgentRecord, AgentRole, ConversationId, MemoryDirectory, Seq, TenantId};
use cs::desk::{DeskSettings, ServiceDesk, Signer, TokenKind};
use cs::intent::faq::{BotAction, Faq, FaqBot, FaqSettings};
use history_data::{toy_history, ENGRAVING, RECYCLING, STUDENT};

const SECRET: &[u8] = b"a-signing-key-for-the-history-api-test";

/// A desk with the demo bot and the history file, served on a free port.
async fn serve(history_file: &std::path::Path, settings: DeskSettings) -> (ServiceDesk, String) {
    let faq = Faq::from_json(include_str!("../examples/chat_server/faq.json")).expect("demo FAQ");
    let bot = FaqBot::train(faq, FaqSettings::default()).expect("the demo FAQ trains");
    let directory = MemoryDirectory::from_records(vec![
        AgentRecord::new(AgentId::new("alice").unwrap(), "Alice", 3),
        AgentRecord::new(AgentId::new("carol").unwrap(), "Carol", 3)
            .with_role(AgentRole::Supervisor),
    ])
    .expect("a directory");
    let desk = ServiceDesk::builder(TenantId::new("demo").unwrap())
        .signer(Signer::new(SECRET.to_vec()))
        .directory(Arc::new(directory))
        .bot(Arc::new(bot))
        .history_file(history_file)
        .settings(settings)
        .build()
        .await
        .expect("the desk builds");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = desk.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (desk, base)
}

/// A directory of its own under the system's temporary one, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("cs-history-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).expect("a temporary directory");
        TempDir(path)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn token(desk: &ServiceDesk, agent: &str) -> String {
    desk.signer()
        .issue(TokenKind::Agent, agent, Duration::from_secs(600))
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("the desk answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_supervisor_uploads_history_accepts_and_rejects_suggestions_and_the_bot_learns() {
    let dir = TempDir::new("api");
    let file = dir.path().join("history-review.json");
    let (desk, base) = serve(&file, DeskSettings::default()).await;
    let client = reqwest::Client::new();
    let (carol, alice) = (token(&desk, "carol"), token(&desk, "alice"));
    let upload = |who: &str, body: String, query: &str| {
        client
            .post(format!("{base}/api/agent/history{query}"))
            .bearer_auth(who)
            .header("content-type", "application/x-ndjson")
            .body(body)
    };

    // An agent may not; a supervisor's malformed line is named.
    let (status, body) = send(upload(&alice, toy_history(), "?clusters=3")).await;
    assert_eq!(status, 403, "{body}");
    let broken = toy_history().replacen('\n', "\n{\"turns\": \"no list\"}\n", 2);
    let (status, body) = send(upload(&carol, broken, "?clusters=3")).await;
    assert_eq!(status, 400, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("line 2 of the history"), "{message}");

    let (status, body) = send(upload(&carol, toy_history(), "?clusters=3")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["imported"]["conversations"], 24);
    assert_eq!(body["imported"]["questions"], 24);
    assert_eq!(body["imported"]["suggestions"], 3);

    let list = |who: &str| {
        client
            .get(format!("{base}/api/agent/history/suggestions"))
            .bearer_auth(who)
    };
    assert_eq!(send(list(&alice)).await.0, 403);
    let (status, review) = send(list(&carol)).await;
    assert_eq!(status, 200, "{review}");
    let pending = review["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 3, "{review}");
    let find = |answer: &str| {
        pending
            .iter()
            .find(|s| s["answer"] == answer)
            .unwrap_or_else(|| panic!("no suggestion answers {answer:?}: {review}"))
            .clone()
    };
    let (engraving, student) = (find(ENGRAVING), find(STUDENT));
    find(RECYCLING);
    assert_eq!(engraving["size"], 8, "{review:#}");
    assert!(!engraving["representatives"].as_array().unwrap().is_empty());
    assert!(!engraving["keywords"].as_array().unwrap().is_empty());

    // Accept, renamed: the bot answers a question of the group.
    let accept = |who: &str, id: &Value, edit: Value| {
        client
            .post(format!("{base}/api/agent/history/suggestions/{id}/accept"))
            .bearer_auth(who)
            .json(&edit)
    };
    assert_eq!(
        send(accept(&alice, &engraving["id"], json!({}))).await.0,
        403
    );
    let (status, body) = send(accept(
        &carol,
        &engraving["id"],
        json!({"name": "engraving"}),
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["accepted"]["name"], "engraving");
    assert_eq!(body["accepted"]["merged"], false);
    let bot = desk.bot().unwrap();
    assert!(bot.intent_names().contains(&"engraving".to_owned()));
    let reply = bot
        .reply(ConversationId::new(), Seq::new(1), "is engraving free")
        .unwrap();
    match reply.action {
        BotAction::Answer { text } => assert_eq!(text, ENGRAVING),
        other => panic!("expected the accepted answer, got {other:?}"),
    }

    // Reject: gone, and not to be accepted after.
    let reject = client
        .post(format!(
            "{base}/api/agent/history/suggestions/{}/reject",
            student["id"]
        ))
        .bearer_auth(&carol);
    let (status, body) = send(reject).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = send(accept(&carol, &student["id"], json!({}))).await;
    assert_eq!(status, 404, "{body}");
    let (_, review) = send(list(&carol)).await;
    assert_eq!(review["pending"].as_array().unwrap().len(), 1, "{review}");
    assert_eq!(review["accepted"][0]["name"], "engraving");
    assert_eq!(review["rejected"], 1);
    assert!(review["intents"]
        .as_array()
        .unwrap()
        .contains(&json!("engraving")));

    // A bad edit is a 400 that keeps the suggestion.
    let recycling = review["pending"][0].clone();
    let (status, body) = send(accept(&carol, &recycling["id"], json!({"questions": []}))).await;
    assert_eq!(status, 400, "{body}");
    desk.shutdown().await;

    // A new desk on the same file: the review is back, the bot knows engraving.
    let (again, base) = serve(&file, DeskSettings::default()).await;
    assert!(again
        .bot()
        .unwrap()
        .intent_names()
        .contains(&"engraving".to_owned()));
    let (status, review) = send(
        client
            .get(format!("{base}/api/agent/history/suggestions"))
            .bearer_auth(token(&again, "carol")),
    )
    .await;
    assert_eq!(status, 200, "{review}");
    assert_eq!(review["pending"].as_array().unwrap().len(), 1);
    assert_eq!(review["rejected"], 1);
    again.shutdown().await;
}

#[tokio::test]
async fn an_upload_over_the_limit_is_refused_with_413() {
    let dir = TempDir::new("limit");
    let settings = DeskSettings {
        max_history_bytes: 1024,
        ..DeskSettings::default()
    };
    let (desk, base) = serve(&dir.path().join("review.json"), settings).await;
    let (status, body) = send(
        reqwest::Client::new()
            .post(format!("{base}/api/agent/history"))
            .bearer_auth(token(&desk, "carol"))
            .body(toy_history()),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("1024 bytes"),
        "{body}"
    );
    desk.shutdown().await;
}
