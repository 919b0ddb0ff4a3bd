//! The `shop` example in a real browser: an ordinary axum shop with its own
//! login, the desk nested at `/support`, and the desk's widget from one
//! script tag. A shopper logs in on the shop's page, opens the widget, gets
//! the bot's answer and asks for a person; the agent's console at
//! `/support/agent` shows the shopper by name with the orders of the shop's
//! own table; a reload of the shop's page resumes the same conversation.
//!
//! Runs the example binary, which `cargo test` builds first (after changing
//! the example alone, `cargo build --example shop` before `--test`). Needs
//! Chromium and chromedriver, as `chat_server_browser.rs` does: without them
//! each test prints a notice and passes, unless `CS_REQUIRE_SERVICES=1`.
#![cfg(unix)]

#[path = "support/browser.rs"]
mod browser;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use sqlx::sqlite::SqlitePoolOptions;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use browser::{
    ask_the_bot, browser_installed, faq_answer, signed_in_console, Browsers, Page, Row,
    ONE_AT_A_TIME,
};

/// The demo shopper the tests log in as, as the shop's seed has her.
const LOGIN: &str = "ann";
const NAME: &str = "Ann Lee";
const CUSTOMER_ID: &str = "c-1001";

/// A running `shop` example with a data dir of its own; killed, and the
/// dir removed, on drop.
struct Shop {
    /// `http://127.0.0.1:PORT`.
    base: String,
    data_dir: PathBuf,
    child: Child,
}

impl Shop {
    /// Starts the example on a free port and waits until it listens.
    async fn start() -> Shop {
        let exe = std::env::current_exe().expect("the test binary has a path");
        // target/<profile>/deps/<test> → target/<profile>/examples/shop
        let binary = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("the test binary lives in target/<profile>/deps")
            .join("examples")
            .join(format!("shop{}", std::env::consts::EXE_SUFFIX));
        assert!(
            binary.exists(),
            "{} is missing: build it with `cargo build --example shop`",
            binary.display()
        );
        let data_dir = std::env::temp_dir().join(format!(
            "cs-shop-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let mut child = Command::new(&binary)
            .args(["--addr", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the shop binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        // Generous: the bot trains before the shop listens, on a machine
        // that may be busy building.
        let base = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("shop listening on ") {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    return url.trim_end_matches('/').to_owned();
                }
            }
            panic!("the shop exited before listening");
        })
        .await
        .expect("the shop listens within two minutes");
        // Keep draining stdout, so the shop never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Shop {
            base,
            data_dir,
            child,
        }
    }

    /// The shop's own database, as the shop keeps it.
    async fn database(&self) -> sqlx::SqlitePool {
        let url = format!("sqlite://{}", self.data_dir.join("shop.db").display());
        SqlitePoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .expect("the shop's database opens")
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

// ---------------------------------------------------------------------------
// The flows.

/// The shopper, logged in on the shop's login page, with the widget opened
/// from its launcher and greeted by the bot, on the orders page.
async fn logged_in_shopper(browsers: &mut Browsers, shop: &Shop) -> Page {
    let page = browsers.open("shopper").await;
    page.goto(&format!("{}/login", shop.base)).await;
    // A first visit opens the widget; closed here, it stays closed on the
    // next page, so the shopper opens it there from its launcher.
    page.click("#minimise").await;
    page.wait_js(
        "the widget closed, its launcher shown",
        "return document.getElementById('widget').hidden \
             && !document.getElementById('launcher').hidden;",
        vec![],
    )
    .await;
    page.type_into("#shop-login", LOGIN).await;
    page.type_into("#shop-password", "demo").await;
    page.click("form.shop-login button[type=submit]").await;
    page.wait_js(
        "the shopper's orders page",
        "const h = document.querySelector('main h1'); \
         return location.pathname === '/orders' && !!h && h.textContent === arguments[0];",
        vec![json!(format!("Your orders, {NAME}"))],
    )
    .await;
    page.wait_js(
        "the widget's launcher on the orders page",
        "const n = document.getElementById('launcher'); return !!n && !n.hidden;",
        vec![],
    )
    .await;
    page.click("#launcher").await;
    page.wait_js(
        "the widget open",
        "return !document.getElementById('widget').hidden;",
        vec![],
    )
    .await;
    page.wait_rows("the bot's greeting", |rows| {
        rows.iter().any(|r| r.is("from-bot"))
    })
    .await;
    page
}

/// The logged-in shopper has asked the bot about an order and then for a
/// person, and waits for one.
async fn handed_off(browsers: &mut Browsers, shop: &Shop) -> Page {
    let shopper = logged_in_shopper(browsers, shop).await;
    let (_, answer) = ask_the_bot(&shopper, "where is my order").await;
    assert_eq!(answer.text, faq_answer("order_status", "en"));
    let (_, notice) = ask_the_bot(&shopper, "I want to talk to a real person").await;
    assert!(notice.text.contains("get a person"), "{notice:?}");
    shopper
        .wait_js(
            "the widget to say the shopper waits for a person",
            "return document.getElementById('status').textContent \
               .startsWith('Waiting for an agent');",
            vec![],
        )
        .await;
    shopper
}

/// Alice has taken the handed-off shopper's chat and opened it.
async fn alice_has_the_chat(browsers: &mut Browsers, shop: &Shop, shopper: &Page) -> Page {
    let url = format!("{}/support/agent", shop.base);
    let agent = signed_in_console(browsers, &url, "alice").await;
    // Named by the shop's login, not by a visitor id, and with no queue
    // place left over from before the assignment.
    agent
        .wait_js(
            "the shopper's chat, by name, under My chats",
            "const n = document.querySelector('#list-mine .chat-item .chat-title'); \
             return !!n && n.textContent === arguments[0];",
            vec![json!(NAME)],
        )
        .await;
    agent.click("#list-mine .chat-item").await;
    agent
        .wait_js(
            "the chat open, titled with the shopper's name and customer id",
            "return document.getElementById('chat-title').textContent === arguments[0];",
            vec![json!(format!("{NAME} ({CUSTOMER_ID})"))],
        )
        .await;
    shopper
        .wait_js(
            "the widget to say Alice has the chat",
            "return document.getElementById('status').textContent === 'Chatting with Alice';",
            vec![],
        )
        .await;
    agent
}

fn texts(rows: &[Row]) -> Vec<(u64, String)> {
    rows.iter().map(|r| (r.seq, r.text.clone())).collect()
}

// ---------------------------------------------------------------------------

#[tokio::test]
async fn a_shopper_logs_in_opens_the_widget_gets_the_bots_answer_and_asks_for_a_person() {
    if !browser_installed() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let shop = Shop::start().await;

    // The shop's pages allow no inline script: the widget must work under it.
    let response = reqwest::get(format!("{}/orders", shop.base))
        .await
        .expect("the shop answers");
    let csp = response
        .headers()
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        csp.contains("default-src 'self'") && !csp.contains("unsafe"),
        "a strict CSP: {csp:?}"
    );

    let mut browsers = Browsers::start().await;
    let shopper = handed_off(&mut browsers, &shop).await;

    // The whole chat came from one tag: no other script, none inline.
    assert_eq!(
        shopper
            .js(
                "return [...document.scripts].map((s) => s.getAttribute('src'));",
                vec![]
            )
            .await,
        json!(["/support/widget.js"])
    );
    shopper
        .wait_rows("the hand-off in the transcript", |rows| {
            rows.iter()
                .any(|r| r.text.starts_with("Waiting for a person"))
        })
        .await;
    shopper.close().await;
}

#[tokio::test]
async fn the_agent_sees_the_shoppers_name_and_the_orders_of_the_shops_table() {
    if !browser_installed() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let shop = Shop::start().await;
    let mut browsers = Browsers::start().await;
    let shopper = handed_off(&mut browsers, &shop).await;

    // An order placed a moment ago, straight into the shop's table: the
    // console can only show it by reading that table.
    let db = shop.database().await;
    sqlx::query(
        "INSERT INTO orders (id, customer_id, sku, quantity, status, placed_on) \
         VALUES ('SH-2001', ?, 'TOTE-01', 3, 'packed', date('now'))",
    )
    .bind(CUSTOMER_ID)
    .execute(&db)
    .await
    .expect("a new order is stored");
    let expected: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT o.id, o.status, o.quantity, p.name FROM orders o JOIN products p ON p.sku = o.sku \
         WHERE o.customer_id = ? ORDER BY o.placed_on DESC, o.id DESC LIMIT 5",
    )
    .bind(CUSTOMER_ID)
    .fetch_all(&db)
    .await
    .expect("the shopper's orders are read");
    db.close().await;
    assert_eq!(expected.len(), 4, "the seed's three and the new one");
    assert_eq!(expected[0].0, "SH-2001", "the new one is the newest");

    let agent = alice_has_the_chat(&mut browsers, &shop, &shopper).await;
    agent
        .wait_rows("the shopper's questions in the console", |rows| {
            let questions: Vec<&str> = rows
                .iter()
                .filter(|r| r.is("question"))
                .map(|r| r.text.as_str())
                .collect();
            questions == ["where is my order", "I want to talk to a real person"]
        })
        .await;

    // The profile panel: the shopper's name, and each order of the table,
    // newest first ("SH-2001 · packed · <total> · 3 × Canvas tote").
    let profile = agent
        .wait_js(
            "the shopper's orders in the profile panel",
            "const items = [...document.querySelectorAll('#profile ul.orders li')]; \
             return items.length === arguments[0] ? items.map((n) => n.textContent) : null;",
            vec![json!(expected.len())],
        )
        .await;
    let shown: Vec<String> = serde_json::from_value(profile).expect("a list of texts");
    for ((id, status, quantity, name), line) in expected.iter().zip(&shown) {
        assert!(
            line.starts_with(&format!("{id} · {status} · ")),
            "{line:?} is order {id}, {status}"
        );
        assert!(
            line.ends_with(&format!(" · {quantity} × {name}")),
            "{line:?} lists {quantity} × {name}"
        );
    }
    assert_eq!(
        agent
            .wait_text("the shopper's name in the profile", "#profile dl dd")
            .await,
        NAME
    );

    agent.close().await;
    shopper.close().await;
}

#[tokio::test]
async fn a_reload_of_the_shops_page_resumes_the_conversation() {
    if !browser_installed() {
        return;
    }
    let _turn = ONE_AT_A_TIME.lock().await;
    let shop = Shop::start().await;
    let mut browsers = Browsers::start().await;
    let shopper = handed_off(&mut browsers, &shop).await;
    let agent = alice_has_the_chat(&mut browsers, &shop, &shopper).await;

    let reply = "Hi Ann, this is Alice. Let me look at that order.";
    agent.say(reply).await;
    let before = shopper
        .wait_rows("Alice's reply in the widget", |rows| {
            rows.iter().any(|r| r.is("from-agent") && r.text == reply)
        })
        .await;

    // A reload: the same conversation, every row once, in order, still
    // with Alice, and the widget still open (the shopper opened it).
    shopper.client.refresh().await.expect("the page reloads");
    let last = before.last().map_or(0, |r| r.seq);
    let after = shopper
        .wait_rows("the history after the reload", |rows| {
            rows.last().is_some_and(|r| r.seq >= last)
        })
        .await;
    assert_eq!(texts(&after), texts(&before), "every row, once, in order");
    let mut seqs: Vec<u64> = after.iter().map(|r| r.seq).collect();
    seqs.dedup();
    assert_eq!(seqs.len(), after.len(), "no seq twice: {after:#?}");
    shopper
        .wait_js(
            "the widget open, chatting with Alice",
            "return !document.getElementById('widget').hidden \
               && document.getElementById('status').textContent === 'Chatting with Alice';",
            vec![],
        )
        .await;

    // And it goes on: the shopper's next message reaches Alice's open chat.
    let thanks = "Thanks! It is order SH-1042.";
    shopper.say(thanks).await;
    shopper
        .wait_rows("the shopper's message in the widget", |rows| {
            rows.iter().any(|r| r.is("mine") && r.text == thanks)
        })
        .await;
    agent
        .wait_rows("the shopper's message in the console", |rows| {
            rows.iter().any(|r| r.is("question") && r.text == thanks)
        })
        .await;

    agent.close().await;
    shopper.close().await;
}
