//! History import end to end in the demo console, in a real browser
//! (headless Chromium over WebDriver, as `chat_server_browser.rs`): Carol,
//! a supervisor, opens the console's History page, uploads a JSONL of past
//! conversations, renames and accepts the engraving suggestion and rejects
//! the student one; a visitor then asks the widget about engraving and the
//! bot gives the answer the agents used to give. Skips with a notice
//! without Chromium, unless `CS_REQUIRE_SERVICES=1`.
#![cfg(unix)]

#[path = "support/browser.rs"]
mod browser;
#[path = "support/history.rs"]
mod history_data;
mod support;

use fantoccini::Locator;
use serde_json::json;

use browser::{ask_the_bot, browser_installed, signed_in_console, Browsers, ONE_AT_A_TIME};
use history_data::{toy_history, ENGRAVING, STUDENT};
use support::Server;

/// The id of the suggestion card whose answer is `answer`.
const CARD_OF: &str = "return [...document.querySelectorAll('#pending .suggestion')]\
    .filter(c => c.querySelector('.s-answer').value === arguments[0])\
    .map(c => c.dataset.id)[0] || null;";

#[tokio::test]
async fn a_supervisor_imports_history_in_the_console_and_the_bot_answers_what_she_accepted() {
    if !browser_installed() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = Server::start(&[]).await;
    let file = server.data_dir.join("past-conversations.jsonl");
    std::fs::write(&file, toy_history()).expect("the history file is written");
    let mut browsers = Browsers::start().await;
    let carol = signed_in_console(&mut browsers, &format!("{}/agent", server.base), "carol").await;
    let link = carol
        .js(
            "return document.getElementById('history-link').href;",
            vec![],
        )
        .await;
    assert!(link.as_str().unwrap().ends_with("/agent/history"), "{link}");
    // The link opens a tab of its own; the test follows it in Carol's.
    carol.goto(&format!("{}/agent/history", server.base)).await;
    carol
        .wait_js(
            "the History page, empty",
            "return document.getElementById('summary').textContent.includes('Nothing imported');",
            vec![],
        )
        .await;

    let input = carol
        .client
        .find(Locator::Css("#history-file"))
        .await
        .expect("the file field");
    input
        .send_keys(&file.display().to_string())
        .await
        .expect("the file is chosen");
    carol.type_into("#clusters", "3").await;
    carol.click("#import").await;
    carol
        .wait_js(
            "three suggestions",
            "return document.querySelectorAll('#pending .suggestion').length === 3;",
            vec![],
        )
        .await;
    let summary = carol
        .js(
            "return document.getElementById('summary').textContent;",
            vec![],
        )
        .await;
    assert!(
        summary.as_str().unwrap().contains("24 conversations"),
        "{summary}"
    );

    let engraving = carol
        .wait_js("the engraving card", CARD_OF, vec![json!(ENGRAVING)])
        .await;
    let engraving = engraving.as_str().expect("an id");
    let card = format!("#pending .suggestion[data-id='{engraving}']");
    let shown = carol
        .js(
            "return document.querySelectorAll(arguments[0] + ' .representatives li').length;",
            vec![json!(card)],
        )
        .await;
    assert!(
        shown.as_u64().unwrap() >= 1,
        "representative questions shown"
    );
    carol
        .type_into(&format!("{card} .s-name"), "engraving")
        .await;
    carol.click(&format!("{card} .s-accept")).await;
    carol
        .wait_js(
            "engraving accepted",
            "return [...document.querySelectorAll('#accepted li')].some(li => li.textContent.startsWith('engraving:')) \
             && document.querySelectorAll('#pending .suggestion').length === 2;",
            vec![],
        )
        .await;

    let student = carol
        .wait_js("the student card", CARD_OF, vec![json!(STUDENT)])
        .await;
    let student = student.as_str().expect("an id");
    carol
        .click(&format!(
            "#pending .suggestion[data-id='{student}'] .s-reject"
        ))
        .await;
    carol
        .wait_js(
            "student rejected",
            "return document.getElementById('rejected-count').textContent === '(1 rejected)' \
             && document.querySelectorAll('#pending .suggestion').length === 1;",
            vec![],
        )
        .await;

    // A visitor asks the widget: the bot knows engraving now.
    let visitor = browsers.open("visitor").await;
    visitor.goto(&format!("{}/", server.base)).await;
    visitor
        .wait_rows("the bot's greeting", |rows| {
            rows.iter().any(|r| r.is("from-bot"))
        })
        .await;
    let (_, answer) = ask_the_bot(&visitor, "is engraving free").await;
    assert_eq!(answer.text, ENGRAVING);

    // Alice is no supervisor: the page says so rather than showing anything.
    let alice = signed_in_console(&mut browsers, &format!("{}/agent", server.base), "alice").await;
    alice.goto(&format!("{}/agent/history", server.base)).await;
    alice
        .wait_js(
            "the page refusing Alice",
            "return document.getElementById('error').textContent.includes('supervisors');",
            vec![],
        )
        .await;
    visitor.close().await;
    alice.close().await;
    carol.close().await;
}
