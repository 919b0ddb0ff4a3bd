//! The chat_server demo in a real browser: the visitor widget at `/` and the
//! agent console at `/agent`, each in its own headless Chromium, driven over
//! WebDriver by a chromedriver this test starts. The flows are those of
//! `chat_server_api.rs`, seen from the pages: the bot answers, a person takes
//! over, both sides type and read, a reload shows the history once, a
//! correction changes the next answer, and markup stays text.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`.ci/run`
//! installs them). Without them each test prints a notice and passes, unless
//! `CS_REQUIRE_SERVICES=1`, which makes it fail. With `CS_SCREENSHOTS=1` the
//! first test also rewrites `docs/screenshots/{visitor,agent}.png`; install
//! CJK and emoji fonts first (`fonts-wqy-microhei`, `fonts-noto-color-emoji`),
//! or the Chinese text shows as boxes.
#![cfg(unix)]

#[path = "support/browser.rs"]
mod browser;
mod support;

use std::path::{Path, PathBuf};

use fantoccini::Locator;
use serde_json::json;

use browser::{
    ask_the_bot, browser_installed, faq_answer, signed_in_console, Browsers, Page, Row, ENTER,
    ONE_AT_A_TIME,
};
use support::Server;

// ---------------------------------------------------------------------------
// The pages' flows.

/// The widget, open, greeted by the bot.
async fn visitor_page(browsers: &mut Browsers, server: &Server) -> Page {
    let page = browsers.open("visitor").await;
    page.goto(&format!("{}/", server.base)).await;
    page.wait_rows("the bot's greeting", |rows| {
        rows.iter().any(|r| r.is("from-bot"))
    })
    .await;
    page
}

/// The console, signed in as `agent` and online.
async fn agent_page(browsers: &mut Browsers, server: &Server, agent: &str) -> Page {
    signed_in_console(browsers, &format!("{}/agent", server.base), agent).await
}

fn screenshots_wanted() -> bool {
    std::env::var("CS_SCREENSHOTS").is_ok_and(|v| v.trim() == "1")
}

fn screenshot_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("docs")
        .join("screenshots")
        .join(name)
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_bot_answers_then_alice_takes_over_and_a_reload_shows_it_all_once() {
    if !browser_installed() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = Server::start(&[]).await;
    let mut browsers = Browsers::start().await;
    let agent = agent_page(&mut browsers, &server, "alice").await;
    let visitor = visitor_page(&mut browsers, &server).await;
    assert_eq!(
        visitor.wait_text("the widget's status", "#status").await,
        "Chatting with the Demo Shop assistant"
    );

    // An FAQ question: the bot's answer comes after it.
    let (_, answer) = ask_the_bot(&visitor, "where is my order").await;
    assert_eq!(answer.text, faq_answer("order_status", "en"));

    // Asking for a person: Alice gets the chat under "My chats".
    let (_, notice) = ask_the_bot(&visitor, "I want to talk to a real person").await;
    assert!(notice.text.contains("get a person"), "{notice:?}");
    visitor
        .wait_js(
            "the widget to say Alice has the chat",
            "return document.getElementById('status').textContent === 'Chatting with Alice';",
            vec![],
        )
        .await;
    visitor
        .wait_rows("the 'Alice joined' line", |rows| {
            rows.iter().any(|r| r.text == "Alice joined the chat")
        })
        .await;
    agent
        .wait_text("the chat under My chats", "#list-mine .chat-item")
        .await;
    agent.click("#list-mine .chat-item").await;
    agent
        .wait_rows("the visitor's questions in the console", |rows| {
            let questions: Vec<&str> = rows
                .iter()
                .filter(|r| r.is("question"))
                .map(|r| r.text.as_str())
                .collect();
            questions == ["where is my order", "I want to talk to a real person"]
        })
        .await;

    // Opening the chat read it: the widget marks the visitor's messages read.
    visitor
        .wait_rows("the visitor's messages marked read", |rows| {
            let mine: Vec<&Row> = rows.iter().filter(|r| r.is("mine")).collect();
            mine.len() == 2 && mine.iter().all(|r| r.is("read"))
        })
        .await;

    // Alice types: the widget says so; she sends: the widget shows it.
    let reply = "Hi, this is Alice. Let me check that order.";
    agent.type_text(reply).await;
    assert_eq!(
        visitor
            .wait_text("Alice's typing indicator", "#typing")
            .await,
        "Alice is typing…"
    );
    agent.type_text(ENTER).await;
    visitor
        .wait_rows("Alice's reply in the widget", |rows| {
            rows.iter().any(|r| r.is("from-agent") && r.text == reply)
        })
        .await;
    visitor
        .wait_js(
            "the typing indicator to go with the reply",
            "return document.getElementById('typing').hidden;",
            vec![],
        )
        .await;

    // The visitor types: the console says so; the answer arrives and is read.
    let thanks = "Thanks! It is order DS20231101.";
    visitor.type_text(thanks).await;
    assert_eq!(
        agent
            .wait_text("the visitor's typing indicator", "#typing")
            .await,
        "The visitor is typing…"
    );
    visitor.type_text(ENTER).await;
    agent
        .wait_rows("the visitor's answer in the console", |rows| {
            rows.iter().any(|r| r.is("question") && r.text == thanks)
        })
        .await;
    // The transcript scrolls inside the console, to the newest row; the
    // page itself stays the window's height.
    agent
        .wait_js(
            "the console's transcript to show its newest row",
            "const list = document.getElementById('messages'); \
             const box = list.getBoundingClientRect(); \
             const last = list.lastElementChild.getBoundingClientRect(); \
             return document.documentElement.scrollHeight <= window.innerHeight \
               && list.scrollHeight > list.clientHeight && last.bottom <= box.bottom + 1;",
            vec![],
        )
        .await;
    let before = visitor
        .wait_rows("every visitor message read by Alice", |rows| {
            let mine: Vec<&Row> = rows.iter().filter(|r| r.is("mine")).collect();
            mine.len() == 3 && mine.iter().all(|r| r.is("read"))
        })
        .await;

    if screenshots_wanted() {
        agent
            .wait_text("the visitor's profile", "#profile dl dd")
            .await;
        agent
            .wait_text("the bot's reading of a question", "#messages .bot-tag")
            .await;
        visitor.screenshot(&screenshot_path("visitor.png")).await;
        agent.screenshot(&screenshot_path("agent.png")).await;
    }

    // A reload: the same conversation, every row once, in order.
    visitor.client.refresh().await.expect("the page reloads");
    let last = before.last().map_or(0, |r| r.seq);
    let after = visitor
        .wait_rows("the history after the reload", |rows| {
            rows.last().is_some_and(|r| r.seq >= last)
                && rows.iter().filter(|r| r.is("mine")).all(|r| r.is("read"))
        })
        .await;
    let texts = |rows: &[Row]| -> Vec<(u64, String)> {
        rows.iter().map(|r| (r.seq, r.text.clone())).collect()
    };
    assert_eq!(texts(&after), texts(&before), "every row, once, in order");
    let mut seqs: Vec<u64> = after.iter().map(|r| r.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), after.len(), "no seq twice: {after:#?}");
    assert_eq!(
        visitor.wait_text("the widget's status", "#status").await,
        "Chatting with Alice"
    );

    agent.close().await;
    visitor.close().await;
}

#[tokio::test]
async fn a_correction_taught_in_the_console_changes_the_bots_next_answer() {
    if !browser_installed() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = Server::start(&[]).await;
    let mut browsers = Browsers::start().await;
    let agent = agent_page(&mut browsers, &server, "carol").await;
    let visitor = visitor_page(&mut browsers, &server).await;

    // Asked in Chinese, so the corrected answer must be the Chinese one.
    let question = "你们有礼品卡吗";
    let (asked, _) = ask_the_bot(&visitor, question).await;

    // Carol opens the chat the bot is having and reads its decision.
    agent
        .wait_text("the chat under With the bot", "#list-bot .chat-item")
        .await;
    agent.click("#list-bot .chat-item").await;
    let tag = format!(
        "#messages .msg.question[data-seq=\"{}\"] .bot-tag",
        asked.seq
    );
    let label = agent
        .wait_text("the bot's decision on the question", &format!("{tag} span"))
        .await;
    // "bot: gift_card 87% · answer"
    let first = label
        .strip_prefix("bot: ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("a decision label: {label:?}"))
        .to_owned();
    assert!(label.ends_with("· answer"), "{label}");
    let right = if first == "coupon" {
        "payment_methods"
    } else {
        "coupon"
    };

    // "Wrong answer?", the right intent, "Teach the bot".
    agent.click(&format!("{tag} button.wrong")).await;
    agent
        .client
        .find(Locator::Css(&format!("{tag} select.correct-intent")))
        .await
        .expect("the intent picker")
        .select_by_value(right)
        .await
        .expect("the intent is picked");
    agent.click(&format!("{tag} button.correct-save")).await;
    // The console confirms with "Learned: …" until the decisions are drawn
    // again (any desk frame redraws them), and from then on marks the
    // question "corrected to …": either is the bot's confirmation.
    agent
        .wait_js(
            "the bot to confirm",
            "const n = document.querySelector(arguments[0]); \
             return !!n && (n.textContent.includes(arguments[1]) || n.textContent.includes(arguments[2]));",
            vec![
                json!(tag),
                json!(format!("Learned: the next answer uses {right}")),
                json!(format!("corrected to {right}")),
            ],
        )
        .await;

    // The same question again: the corrected intent's answer, in Chinese.
    let (_, answer) = ask_the_bot(&visitor, question).await;
    assert_eq!(answer.text, faq_answer(right, "zh"));
    assert_ne!(answer.text, faq_answer(&first, "zh"));
    // The console marks the first question as corrected.
    agent
        .wait_js(
            "the correction in the console",
            "const n = document.querySelector(arguments[0]); \
             return n && n.textContent.includes(arguments[1]);",
            vec![
                json!(format!("{tag} span")),
                json!(format!("corrected to {right}")),
            ],
        )
        .await;

    agent.close().await;
    visitor.close().await;
}

#[tokio::test]
async fn markup_in_a_message_is_shown_as_text_in_the_widget_and_the_console() {
    if !browser_installed() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let server = Server::start(&[]).await;
    let mut browsers = Browsers::start().await;
    let agent = agent_page(&mut browsers, &server, "bob").await;
    let visitor = visitor_page(&mut browsers, &server).await;
    let visitor_title = visitor.title().await;
    let agent_title = agent.title().await;

    let payload =
        r#"<img src=x onerror="document.title='pwned'"><script>document.title='pwned'</script>"#;
    visitor.say(payload).await;
    visitor
        .wait_rows("the payload in the widget", |rows| {
            rows.iter().any(|r| r.is("mine") && r.text == payload)
        })
        .await;

    // Whatever the bot made of it, the chat is on Bob's desk: open it.
    agent
        .wait_text("the chat on the desk", ".chat-list .chat-item")
        .await;
    agent.click(".chat-list .chat-item").await;
    agent
        .wait_rows("the payload in the console", |rows| {
            rows.iter().any(|r| r.is("question") && r.text == payload)
        })
        .await;
    // The list's preview shows it too (shortened): it must be text as well.
    agent
        .wait_text("the payload in the desk's preview", ".chat-preview")
        .await;

    // No element came of it: neither page has an image, and each has only
    // its own scripts (the shop page the widget's one, the console the chat
    // client and its own); the titles are untouched.
    let made = "return [document.querySelectorAll('img').length, \
                document.querySelectorAll('script:not([src])').length, \
                document.querySelectorAll('script').length];";
    for (page, title, scripts) in [(&visitor, &visitor_title, 1), (&agent, &agent_title, 2)] {
        assert_eq!(
            page.js(made, vec![]).await,
            json!([0, 0, scripts]),
            "{}",
            page.name
        );
        assert_eq!(&page.title().await, title, "{}", page.name);
        assert_ne!(page.title().await, "pwned");
    }

    agent.close().await;
    visitor.close().await;
}

/// The intent of faq.json whose examples include `label` (a clarification
/// button is labelled with the intent's first example in the question's
/// language, the bundled FAQ having no labels of its own).
fn intent_labelled(label: &str) -> String {
    let faq: serde_json::Value =
        serde_json::from_str(include_str!("../examples/chat_server/faq.json"))
            .expect("faq.json is JSON");
    faq["intents"]
        .as_array()
        .and_then(|all| {
            all.iter().find(|i| {
                i["examples"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|x| x == label))
            })
        })
        .and_then(|i| i["intent"].as_str())
        .unwrap_or_else(|| panic!("no intent of faq.json has the example {label:?}"))
        .to_owned()
}

#[tokio::test]
async fn a_quick_reply_tap_picks_the_intent_and_the_bot_answers_it() {
    if !browser_installed() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    // The bot never answers outright and always asks rather than hands off,
    // so the question below is a clarification whatever the fit chose.
    let server = Server::start(&["--bot-answer-threshold", "2", "--bot-clarify-mass", "0"]).await;
    let mut browsers = Browsers::start().await;
    let visitor = visitor_page(&mut browsers, &server).await;

    let (_, asked) = ask_the_bot(&visitor, "where is my order").await;
    let buttons = format!(
        "#messages .msg[data-seq=\"{}\"] .quick-replies button.quick-reply",
        asked.seq
    );
    let labels = visitor
        .wait_js(
            "the clarification's quick-reply buttons",
            "return [...document.querySelectorAll(arguments[0])] \
               .filter((b) => !b.disabled && b.offsetParent !== null).map((b) => b.textContent);",
            vec![json!(buttons)],
        )
        .await;
    let labels: Vec<String> = serde_json::from_value(labels).expect("labels are strings");
    assert!((2..=3).contains(&labels.len()), "{labels:?}");

    // Tap the second option: the bot's runner-up, not its first guess.
    let picked = &labels[1];
    visitor.click(&format!("{buttons}:nth-of-type(2)")).await;
    let rows = visitor
        .wait_rows("the picked option's answer", |rows| {
            let pick = rows.iter().find(|r| r.seq > asked.seq && r.is("mine"));
            pick.is_some_and(|p| rows.iter().any(|r| r.seq > p.seq && r.is("from-bot")))
        })
        .await;
    let pick = rows
        .iter()
        .find(|r| r.seq > asked.seq && r.is("mine"))
        .expect("the pick is shown");
    assert_eq!(&pick.text, picked, "the tap sends the label");
    let answer = rows
        .iter()
        .find(|r| r.seq > pick.seq && r.is("from-bot"))
        .expect("the answer is shown");
    assert_eq!(answer.text, faq_answer(&intent_labelled(picked), "en"));
    // The answered clarification's buttons are spent.
    let live = visitor
        .js(
            "return [...document.querySelectorAll(arguments[0])].filter((b) => !b.disabled).length;",
            vec![json!(buttons)],
        )
        .await;
    assert_eq!(live, json!(0), "{}", browsers.log());
    visitor.close().await;
}
