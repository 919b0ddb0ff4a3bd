//! The widget asks for a rating at the close, in a real browser (headless
//! Chromium over WebDriver, as `chat_server_browser.rs`): the visitor ends
//! the chat, picks four stars, adds a comment and sends it; the supervisor's
//! report counts it. Skips with a notice without Chromium, unless
//! `CS_REQUIRE_SERVICES=1`.
#![cfg(unix)]

#[path = "support/browser.rs"]
mod browser;
mod support;

use serde_json::json;

use browser::{browser_installed, Browsers, ONE_AT_A_TIME};
use cs::core::store::ReportZone;
use cs::core::Timestamp;
use support::{Http, Server};

#[tokio::test]
async fn the_widget_asks_for_a_rating_at_the_close_and_the_report_counts_it() {
    if !browser_installed() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = Server::start(&[]).await;
    let mut browsers = Browsers::start().await;
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
    let carol = http.agent("carol").await;
    let today = ReportZone::UTC.day_of(Timestamp::now());
    let (from, to) = (cs::core::store::ReportDay(today.0 - 1), today.next());
    let (status, report) = http
        .get(
            &format!("/api/agent/reports?from={from}&to={to}"),
            Some(&carol),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    let ratings = &report["desk"]["total"]["ratings"];
    assert_eq!(ratings["count"], 1, "{report}");
    assert_eq!(ratings["by_score"], json!([0, 0, 0, 1, 0]));
    // The bot had it alone: contained.
    assert_eq!(report["desk"]["total"]["contained"], 1, "{report}");
    visitor.close().await;
}
