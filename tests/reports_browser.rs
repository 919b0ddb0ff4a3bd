//! Ratings and reports in a real browser (headless Chromium over WebDriver,
//! as `chat_server_browser.rs`): the visitor is handed to Carol, ends the
//! chat, picks four stars, adds a comment and sends it; Carol (a supervisor)
//! opens the Reports page and sees it in the tiles, the SVG charts, the
//! agents' table and the bot's handed-off questions, and today's figures
//! follow a new conversation without a reload. Skips with a notice without Chromium, unless
//! `CS_REQUIRE_SERVICES=1`. With `CS_SCREENSHOTS=1` it rewrites
//! `docs/screenshots/reports.png`.
#![cfg(unix)]

#[path = "support/browser.rs"]
mod browser;
mod support;

use serde_json::json;

use browser::{ask_the_bot, browser_installed, signed_in_console, Browsers, ONE_AT_A_TIME};
use cs::core::store::ReportZone;
use cs::core::Timestamp;
use support::{Http, Server};

#[tokio::test]
async fn a_rating_at_the_close_shows_on_the_supervisors_reports_page() {
    if !browser_installed() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = Server::start(&[]).await;
    let mut browsers = Browsers::start().await;
    let carol = signed_in_console(&mut browsers, &format!("{}/agent", server.base), "carol").await;
    let visitor = browsers.open("visitor").await;
    visitor.goto(&format!("{}/", server.base)).await;
    visitor
        .wait_rows("the bot's greeting", |rows| {
            rows.iter().any(|r| r.is("from-bot"))
        })
        .await;
    let hidden = "return document.getElementById('rate').hidden;";
    assert_eq!(
        visitor.js(hidden, vec![]).await,
        json!(true),
        "no rating while open"
    );

    ask_the_bot(&visitor, "I want to talk to a real person").await;
    visitor
        .wait_js(
            "the widget to say Carol has the chat",
            "return document.getElementById('status').textContent === 'Chatting with Carol';",
            vec![],
        )
        .await;
    visitor.click("#end").await;
    visitor
        .wait_js(
            "the rating form at the close",
            "return !document.getElementById('rate').hidden;",
            vec![],
        )
        .await;
    visitor.click("#rate [data-score='4']").await;
    let lit = "return document.querySelectorAll('#rate .stars .on').length;";
    assert_eq!(visitor.js(lit, vec![]).await, json!(4));
    visitor.type_into("#rate-comment", "quick and kind").await;
    visitor.click("#rate-send").await;
    visitor
        .wait_js(
            "the thanks, and the form gone",
            "return document.getElementById('rate').hidden && \
             [...document.querySelectorAll('.msg.notice')].some(n => n.textContent.includes('Thank you'));",
            vec![],
        )
        .await;

    let http = Http::new(&server);
    let token = http.agent("carol").await;
    let today = ReportZone::UTC.day_of(Timestamp::now());
    let (from, to) = (cs::core::store::ReportDay(today.0 - 1), today.next());
    let (status, report) = http
        .get(
            &format!("/api/agent/reports?from={from}&to={to}"),
            Some(&token),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    let ratings = &report["desk"]["total"]["ratings"];
    assert_eq!(ratings["count"], 1, "{report}");
    assert_eq!(ratings["by_score"], json!([0, 0, 0, 1, 0]));
    assert_eq!(report["desk"]["total"]["handoffs"], 1, "{report}");

    // The Reports page, signed in by the console's cookie.
    carol.goto(&format!("{}/agent/reports", server.base)).await;
    carol
        .wait_js(
            "Carol's row in the agents' table",
            "return !!document.querySelector('#agents tr[data-agent=\"carol\"]');",
            vec![],
        )
        .await;
    let cells = carol
        .js(
            "return [...document.querySelectorAll('#agents tr[data-agent=\"carol\"] td')].map(td => td.textContent);",
            vec![],
        )
        .await;
    // Agent, handled, first response, handling, transfers, ratings, mean rating.
    assert_eq!(cells[1], "1", "{cells}");
    assert_eq!(cells[4], "0", "{cells}");
    assert_eq!(
        (&cells[5], &cells[6]),
        (&json!("1"), &json!("4.00")),
        "{cells}"
    );
    let tiles = carol
        .js(
            "return document.getElementById('tiles').textContent;",
            vec![],
        )
        .await;
    assert!(tiles.as_str().unwrap().contains("4.00 / 5"), "{tiles}");
    // Each chart is SVG the page drew: bars for the volume and the ratings.
    let drawn = carol
        .js(
            "return ['chart-volume', 'chart-containment', 'chart-times', 'chart-rating'].map(id => \
             document.getElementById(id).querySelectorAll('rect, circle, polyline').length);",
            vec![],
        )
        .await;
    let drawn: Vec<u64> = drawn
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .collect();
    assert!(drawn.iter().all(|n| *n > 0), "empty charts: {drawn:?}");
    let csv = carol
        .js(
            "return document.getElementById('csv').getAttribute('href');",
            vec![],
        )
        .await;
    assert!(csv.as_str().unwrap().ends_with("&format=csv"), "{csv}");
    let csv_top = carol
        .js(
            "return document.getElementById('csv-top').getAttribute('href');",
            vec![],
        )
        .await;
    assert!(
        csv_top.as_str().unwrap().ends_with("&format=csv&table=top"),
        "{csv_top}"
    );

    // The bot's lists: the question it handed off, once (its decisions
    // reach the counters about once a second: the page, read again every
    // 10 s while it shows today, catches up).
    carol
        .wait_js(
            "the handed-off question in the bot's list",
            "const rows = [...document.querySelectorAll('#top-handed-off tbody tr')]               .map(tr => [...tr.children].map(td => td.textContent));             return rows.some(r => r[0] === 'i want to talk to a real person' && r[1] === '1');",
            vec![],
        )
        .await;
    // Today's figures: one conversation opened; a second visitor's chat
    // shows without a reload.
    let opened_today = |n: u64| {
        format!(
            "const tile = [...document.querySelectorAll('#today .tile')]\
               .find(t => t.querySelector('.tile-label').textContent === 'opened today');\
             return !!tile && Number(tile.querySelector('.tile-value').textContent) === {n};"
        )
    };
    assert_eq!(carol.js(&opened_today(1), vec![]).await, json!(true));
    let _second = http.visitor().await;
    carol
        .wait_js(
            "today's tile to count the second conversation",
            &opened_today(2),
            vec![],
        )
        .await;
    if std::env::var("CS_SCREENSHOTS").is_ok_and(|v| v.trim() == "1") {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join("screenshots")
            .join("reports.png");
        carol.screenshot(&path).await;
    }
    visitor.close().await;
    carol.close().await;
}
