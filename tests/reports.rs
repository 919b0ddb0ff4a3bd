//! Reports and ratings through the chat_server demo's HTTP API: a scripted
//! conversation (the bot answering, a hand-off, a transfer, a close and a
//! rating) shows in `GET /api/agent/reports` exactly, for the agents who
//! took part and for the supervisor; CSV; and the 400s for bad ranges.

mod support;

use std::time::Instant;

use serde_json::{json, Value};

use cs::core::store::ReportZone;
use cs::core::Timestamp;
use support::{is_event, is_message_from, metric, Client, Http, Server};

/// `from`..`to` around today in `zone`: yesterday to tomorrow, so a run
/// across midnight still finds everything.
fn around_today(zone: &ReportZone) -> (String, String) {
    let today = zone.day_of(Timestamp::now());
    (
        cs::core::store::ReportDay(today.0 - 1).to_string(),
        today.next().to_string(),
    )
}

async fn report(http: &Http, token: &str, query: &str) -> (u16, Value) {
    http.get(&format!("/api/agent/reports?{query}"), Some(token))
        .await
}

fn total<'a>(report: &'a Value, agent: &str) -> &'a Value {
    report["agents"]
        .as_array()
        .and_then(|agents| agents.iter().find(|a| a["agent"] == agent))
        .map(|a| &a["total"])
        .unwrap_or_else(|| panic!("no figures for {agent}: {report}"))
}

#[tokio::test]
async fn a_scripted_conversation_is_counted_exactly_and_shown_to_whom_it_belongs() {
    let started = Instant::now();
    let server = Server::start(&["--report-utc-offset-minutes", "330"]).await;
    let zone = ReportZone::fixed(330).unwrap();
    let http = Http::new(&server);
    let alice_token = http.agent("alice").await;
    let bob_token = http.agent("bob").await;
    let carol_token = http.agent("carol").await;
    let mut alice = Client::connect(&server, "/ws/agent", &alice_token).await;
    alice
        .expect(|f| f["type"] == "agents" && f["agents"][0]["presence"] == "online")
        .await;
    // Bob online, away from new chats, so the hand-off goes to Alice.
    let mut bob = Client::connect(&server, "/ws/agent", &bob_token).await;
    http.choose_presence(&bob_token, "away").await;

    let (token, _visitor, conversation) = http.visitor().await;
    let mut visitor = Client::connect(&server, "/ws/visitor", &token).await;
    visitor.resume(&conversation, 0).await;
    visitor.expect(|f| f["type"] == "replayed").await;
    // The bot answers once, then hands off.
    visitor
        .say(&conversation, "where is my order? it has not arrived")
        .await;
    visitor
        .expect(|f| is_message_from(f, "bot") && f["message"]["seq"].as_u64() > Some(2))
        .await;
    visitor
        .say(&conversation, "I want to talk to a real person")
        .await;
    visitor.expect(|f| is_event(f, "handoff")).await;
    visitor.expect(|f| is_event(f, "assigned")).await;
    alice.say(&conversation, "Hi, Alice here.").await;
    alice.expect(|f| f["type"] == "ack").await;
    visitor.expect(|f| is_message_from(f, "agent")).await;

    // A rating before the close is refused.
    let rate = json!({ "conversation": conversation, "score": 4, "comment": "quick" });
    let (status, body) = http
        .post("/api/visitor/rating", Some(&token), rate.clone())
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );

    // Alice hands it to Bob, who answers and closes.
    http.choose_presence(&bob_token, "online").await;
    let (status, body) = http
        .post(
            &format!("/api/agent/conversations/{conversation}/transfer"),
            Some(&alice_token),
            json!({ "to": "bob" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    bob.expect(|f| {
        is_event(f, "transfer") && f["message"]["conversation"] == conversation.as_str()
    })
    .await;
    bob.say(&conversation, "Bob here, all done.").await;
    bob.expect(|f| f["type"] == "ack").await;
    let (status, body) = http
        .post(
            &format!("/api/agent/conversations/{conversation}/close"),
            Some(&bob_token),
            json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    visitor.expect(|f| is_event(f, "close")).await;

    // The visitor rates it, once; a bad score and another's rating are refused.
    let (status, body) = http
        .post("/api/visitor/rating", Some(&token), rate.clone())
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http.post("/api/visitor/rating", Some(&token), rate).await;
    assert_eq!(status, 409, "rated twice: {body}");
    let bad = json!({ "conversation": conversation, "score": 6 });
    let (status, body) = http.post("/api/visitor/rating", Some(&token), bad).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("bad_request")),
        "{body}"
    );
    let (other, _, _) = http.visitor().await;
    let theirs = json!({ "conversation": conversation, "score": 1 });
    let (status, _) = http.post("/api/visitor/rating", Some(&other), theirs).await;
    assert_eq!(status, 404, "another visitor rated it");
    let elapsed_ms = started.elapsed().as_millis() as u64;

    let (from, to) = around_today(&zone);
    let range = format!("from={from}&to={to}");
    // The supervisor sees the desk and every agent.
    // The bot's decisions reach the counters within about a second (the
    // desk adds them in one write a second): wait for them.
    let deadline = Instant::now() + std::time::Duration::from_secs(30);
    let everyone = loop {
        let (status, everyone) = report(&http, &carol_token, &range).await;
        assert_eq!(status, 200, "{everyone}");
        let bot = &everyone["desk"]["bot"];
        if bot["answers"] == 1 && bot["handed_off"] == 1 {
            break everyone;
        }
        assert!(
            Instant::now() < deadline,
            "the bot's decisions never counted: {bot}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(everyone["zone_offset_minutes"], 330);
    assert_eq!(everyone["zone"], "+05:30");
    // Its top intent is the one it answered; its top handed-off question
    // is the visitor's, as counted, linked to the suggestions.
    let bot = &everyone["desk"]["bot"];
    assert_eq!(
        bot["top_intents"].as_array().map(Vec::len),
        Some(1),
        "{bot}"
    );
    assert_eq!(bot["top_intents"][0]["count"], 1);
    assert_eq!(
        bot["top_handed_off"],
        json!([{ "name": "i want to talk to a real person", "count": 1 }]),
        "{bot}"
    );
    assert_eq!(bot["handed_off_other"], 0);
    assert_eq!(bot["suggestions"], "api/agent/suggestions");
    let (status, _) = http
        .get(
            &format!("/{}", bot["suggestions"].as_str().unwrap()),
            Some(&carol_token),
        )
        .await;
    assert_eq!(status, 200, "the suggestions link does not lead anywhere");
    let desk = &everyone["desk"]["total"];
    // Two visitors opened a conversation; one closed, after a person had it.
    assert_eq!(desk["opened"], 2, "{desk}");
    assert_eq!(desk["closed"], 1);
    assert_eq!(desk["contained"], 0);
    assert_eq!(desk["containment_rate"], 0.0);
    assert_eq!(desk["handoffs"], 1);
    assert_eq!(
        desk["handoff_reasons"].as_object().map(|r| r.len()),
        Some(1)
    );
    assert_eq!(desk["transfers"], 1);
    assert_eq!(desk["messages"]["visitor"], 2);
    assert_eq!(desk["messages"]["agent"], 2);
    // The greetings of both conversations, and the answer.
    assert_eq!(desk["messages"]["bot"], 4, "{desk}");
    for timing in ["wait", "first_response", "resolution"] {
        assert_eq!(desk[timing]["count"], 1, "{timing}: {desk}");
        let mean = desk[timing]["mean_ms"].as_u64().unwrap();
        assert!(
            mean <= elapsed_ms,
            "{timing} {mean} ms in a {elapsed_ms} ms test"
        );
    }
    assert_eq!(desk["handled"], 2);
    assert_eq!(desk["ratings"]["count"], 1);
    assert_eq!(desk["ratings"]["mean"], 4.0);
    assert_eq!(desk["ratings"]["by_score"], json!([0, 0, 0, 1, 0]));
    let (a, b) = (total(&everyone, "alice"), total(&everyone, "bob"));
    assert_eq!(
        (&a["handled"], &a["transfers"], &a["ratings"]["count"]),
        (&json!(1), &json!(1), &json!(0))
    );
    assert_eq!(
        (&b["handled"], &b["transfers"], &b["ratings"]["count"]),
        (&json!(1), &json!(0), &json!(1))
    );
    assert_eq!(a["first_response"]["count"], 1);
    assert_eq!(b["first_response"]["count"], 1);
    assert_eq!(
        desk["handling_ms"].as_u64(),
        Some(a["handling_ms"].as_u64().unwrap() + b["handling_ms"].as_u64().unwrap())
    );

    // An agent sees their own figures only.
    let (status, mine) = report(&http, &alice_token, &range).await;
    assert_eq!(status, 200, "{mine}");
    assert_eq!(mine["desk"], Value::Null);
    assert_eq!(mine["agents"].as_array().map(Vec::len), Some(1));
    assert_eq!(total(&mine, "alice"), a);
    let (status, body) = report(&http, &alice_token, &format!("{range}&agent=bob")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // The supervisor may pick one agent.
    let (status, only_bob) = report(&http, &carol_token, &format!("{range}&agent=bob")).await;
    assert_eq!(status, 200);
    assert_eq!(only_bob["agents"].as_array().map(Vec::len), Some(1));
    assert_eq!(total(&only_bob, "bob"), b);

    // CSV: a header, a row per day for the desk, then per agent.
    let csv = http
        .client
        .get(format!(
            "{}/api/agent/reports?{range}&format=csv",
            http.base
        ))
        .bearer_auth(&carol_token)
        .send()
        .await
        .unwrap();
    assert_eq!(csv.status(), 200);
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(
        lines[0].starts_with("day,agent,opened,closed,contained"),
        "{csv}"
    );
    let desk_day = everyone["desk"]["days"][0]["day"].as_str().unwrap();
    assert!(lines[1].starts_with(&format!("{desk_day},,")), "{csv}");
    for agent in ["alice", "bob"] {
        let day = everyone["agents"]
            .as_array()
            .and_then(|all| all.iter().find(|a| a["agent"] == agent))
            .map(|a| a["days"][0]["day"].as_str().unwrap().to_owned())
            .unwrap();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{day},{agent},"))),
            "{csv}"
        );
    }
    let agent_days: usize = everyone["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["days"].as_array().unwrap().len())
        .sum();
    let desk_days = everyone["desk"]["days"].as_array().unwrap().len();
    assert_eq!(lines.len(), 1 + desk_days + agent_days, "{csv}");

    // The bot's top lists as CSV.
    let top = http
        .client
        .get(format!(
            "{}/api/agent/reports?{range}&format=csv&table=top",
            http.base
        ))
        .bearer_auth(&carol_token)
        .send()
        .await
        .unwrap();
    assert_eq!(top.status(), 200);
    let top = top.text().await.unwrap();
    let intent = bot["top_intents"][0]["name"].as_str().unwrap();
    assert_eq!(
        top,
        format!(
            "list,rank,name,count\nintent,1,{intent},1\nhanded_off,1,i want to talk to a real person,1\n"
        )
    );

    // /metrics: today's gauges are today's report.
    let today = zone.day_of(Timestamp::now());
    let (_, today_report) = report(&http, &carol_token, &format!("from={today}&to={today}")).await;
    let metrics = server.metrics().await;
    let t = &today_report["desk"]["total"];
    for (gauge, figure) in [
        ("cs_today_conversations_opened", &t["opened"]),
        ("cs_today_conversations_closed", &t["closed"]),
        ("cs_today_handoffs", &t["handoffs"]),
        ("cs_today_transfers", &t["transfers"]),
        ("cs_today_ratings", &t["ratings"]["count"]),
    ] {
        assert_eq!(
            metric(&metrics, gauge),
            figure.as_u64(),
            "{gauge}: {metrics}"
        );
    }
    assert!(
        metrics.contains("cs_today_messages{party=\"visitor\"} ")
            && metrics.contains("cs_today_agent_handled{agent=\"bob\"} "),
        "{metrics}"
    );
}

#[tokio::test]
async fn bad_dates_and_ranges_get_a_400_that_says_why() {
    let server = Server::start(&[]).await;
    let http = Http::new(&server);
    let carol = http.agent("carol").await;
    for (query, says) in [
        ("to=2026-03-01", "from: missing"),
        ("from=2026-03-01", "to: missing"),
        ("from=2026-02-30&to=2026-03-01", "from"),
        ("from=yesterday&to=2026-03-01", "YYYY-MM-DD"),
        ("from=2026-03-02&to=2026-03-01", "after"),
        ("from=2025-01-01&to=2026-03-01", "at most 366 days"),
        ("from=2026-03-01&to=2026-03-01&format=xml", "format"),
        (
            "from=2026-03-01&to=2026-03-01&format=csv&table=all",
            "table",
        ),
    ] {
        let (status, body) = report(&http, &carol, query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["error"], "bad_request", "{query}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(says),
            "{query}: {message:?} should say {says:?}"
        );
    }
    // A year is fine; no token is not.
    let (status, _) = report(&http, &carol, "from=2025-03-02&to=2026-03-02").await;
    assert_eq!(status, 200);
    let (status, _) = http
        .get("/api/agent/reports?from=2026-03-01&to=2026-03-01", None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = report(&http, &carol, "from=2026-03-01&to=2026-03-01&agent=nobody").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_named_time_zone_decides_the_days() {
    let server = Server::start(&["--report-time-zone", "Europe/Berlin"]).await;
    let http = Http::new(&server);
    let carol = http.agent("carol").await;
    let (token, _visitor, conversation) = http.visitor().await;
    let mut visitor = Client::connect(&server, "/ws/visitor", &token).await;
    visitor.resume(&conversation, 0).await;
    visitor.expect(|f| f["type"] == "replayed").await;
    let zone = ReportZone::named("Europe/Berlin").unwrap();
    let today = zone.day_of(Timestamp::now());
    let (status, body) = report(&http, &carol, &format!("from={today}&to={today}")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["zone"], "Europe/Berlin");
    let offset = zone.offset_minutes_at(Timestamp::now());
    assert!(offset == 60 || offset == 120, "Berlin at {offset} minutes");
    assert_eq!(body["zone_offset_minutes"], offset);
    // The conversation opened just now falls on Berlin's today (or, for a
    // run across Berlin's midnight, on the day before: both are asked for).
    let yesterday = cs::core::store::ReportDay(today.0 - 1);
    let (_, both) = report(&http, &carol, &format!("from={yesterday}&to={today}")).await;
    assert_eq!(both["desk"]["total"]["opened"], 1, "{both}");
}
