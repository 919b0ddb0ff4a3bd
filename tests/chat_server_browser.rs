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

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

use support::Server;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a page may take to show what a step waits for. Generous: the
/// machine may be busy building; a passing run waits far less.
const WAIT: Duration = Duration::from_secs(20);
/// How often a wait looks at the page again.
const POLL: Duration = Duration::from_millis(50);

/// One browser test at a time: each runs a server and two Chromiums, and
/// several at once on a small machine only make every wait longer. A tokio
/// mutex, because each test has its own runtime and a panicking test must
/// not poison the lock for the others.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// The browser: a chromedriver of our own, and one Chromium per session.

/// Whether Chromium and chromedriver are installed: skip with a notice when
/// not, or fail when `CS_REQUIRE_SERVICES=1` (the rule of the service tests,
/// see `cs_core::testing::service_url`).
fn browser_installed() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|path| !Path::new(path).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(" and ");
    if std::env::var("CS_REQUIRE_SERVICES").is_ok_and(|v| v.trim() == "1") {
        panic!(
            "{missing} missing, but CS_REQUIRE_SERVICES=1 requires the browser tests; \
             install the Debian packages chromium and chromium-driver (.ci/run does) \
             or unset CS_REQUIRE_SERVICES"
        );
    }
    eprintln!(
        "skipped: {missing} missing; install chromium and chromium-driver to run the browser tests"
    );
    false
}

/// A chromedriver on a free port, with a scratch dir for its log and the
/// browsers' profiles. Dropping it ends every browser it started.
struct Browsers {
    url: String,
    dir: PathBuf,
    child: Child,
    sessions: u32,
}

impl Browsers {
    async fn start() -> Browsers {
        let dir = std::env::temp_dir().join(format!(
            "cs-browser-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("the scratch dir is created");
        // A port nobody holds this instant; chromedriver binds it a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.join("chromedriver.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, which the browsers it starts join: a
            // test that fails half-way still ends all of them on drop.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let mut browsers = Browsers {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            child,
            sessions: 0,
        };
        let deadline = Instant::now() + WAIT;
        let client = reqwest::Client::new();
        loop {
            let status = client.get(format!("{}/status", browsers.url)).send().await;
            if let Ok(response) = status {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                if body["value"]["ready"] == true {
                    return browsers;
                }
            }
            if let Ok(Some(exit)) = browsers.child.try_wait() {
                panic!("chromedriver exited ({exit}): {}", browsers.log());
            }
            assert!(Instant::now() < deadline, "chromedriver is not ready");
            tokio::time::sleep(POLL).await;
        }
    }

    /// A new browser with a fresh profile: its own localStorage, so each
    /// session is a different visitor or agent.
    async fn open(&mut self, name: &'static str) -> Page {
        self.sessions += 1;
        let profile = self.dir.join(format!("profile-{}", self.sessions));
        let capabilities = json!({
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--disable-component-update",
                    "--disable-sync",
                    format!("--user-data-dir={}", profile.display()),
                    "--window-size=1280,860",
                ],
            }
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("a JSON object literal")
        };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("Chromium starts ({e}): {}", self.log()));
        Page { name, client }
    }

    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Browsers {
    fn drop(&mut self) {
        // The browsers share chromedriver's process group (see `start`):
        // ending the group ends them too, whatever state the test left.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One message row as a page shows it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
struct Row {
    seq: u64,
    class: String,
    text: String,
}

impl Row {
    fn is(&self, class: &str) -> bool {
        self.class.split_whitespace().any(|c| c == class)
    }
}

/// Every message row of the open transcript, in page order: a text
/// message's own text (without the name and time around it), or an event's
/// line. The pages tag each row with its seq.
const ROWS: &str = r#"
return [...document.querySelectorAll('#messages .msg[data-seq]:not(.notice)')].map((n) => ({
  seq: Number(n.dataset.seq),
  class: n.className,
  text: (n.querySelector('.bubble .text') || n).textContent,
}));"#;

/// Enter, as WebDriver spells it: the pages send on Enter.
const ENTER: &str = "\u{E007}";

/// One browser tab, on the widget or the console.
struct Page {
    name: &'static str,
    client: Client,
}

impl Page {
    async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("the page loads");
    }

    async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{}: the script failed: {e}\n{script}", self.name))
    }

    /// Runs `script` until it returns something other than null, false, 0,
    /// "" or []; answers that.
    async fn wait_js(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.js(script, args.clone()).await;
            let ready = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::Number(n) => n.as_f64() != Some(0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                _ => true,
            };
            if ready {
                return value;
            }
            if Instant::now() > deadline {
                self.fail(what).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn rows(&self) -> Vec<Row> {
        serde_json::from_value(self.js(ROWS, vec![]).await).expect("rows are {seq, class, text}")
    }

    /// Waits until the transcript's rows satisfy `ready`; answers them.
    async fn wait_rows(&self, what: &str, ready: impl Fn(&[Row]) -> bool) -> Vec<Row> {
        let deadline = Instant::now() + WAIT;
        loop {
            let rows = self.rows().await;
            if ready(&rows) {
                return rows;
            }
            if Instant::now() > deadline {
                self.fail(what).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The text of the element `css`, once it is shown and says something.
    async fn wait_text(&self, what: &str, css: &str) -> String {
        let script = "const n = document.querySelector(arguments[0]); \
                      return n && n.offsetParent !== null ? n.textContent : null;";
        let text = self.wait_js(what, script, vec![json!(css)]).await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Clicks `css` once it is there. The lists are re-rendered on every
    /// desk frame, so an element found a moment ago may be gone: find again.
    async fn click(&self, css: &str) {
        let deadline = Instant::now() + WAIT;
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(element) => element.click().await,
                Err(e) => Err(e),
            };
            match clicked {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    self.fail(&format!("a clickable {css} ({e})")).await
                }
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Types into the composer, as a person would: one key event each, so
    /// the page sends its typing frames.
    async fn type_text(&self, text: &str) {
        self.client
            .find(Locator::Css("#input"))
            .await
            .expect("the page has a composer")
            .send_keys(text)
            .await
            .expect("the composer takes keys");
    }

    /// Types `text` and presses Enter.
    async fn say(&self, text: &str) {
        self.type_text(&format!("{text}{ENTER}")).await;
    }

    async fn title(&self) -> String {
        self.client.title().await.expect("the page has a title")
    }

    async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot dir is created");
        }
        std::fs::write(path, png).expect("the screenshot is saved");
    }

    /// Panics with what the page shows, so a timeout says where it stood.
    async fn fail(&self, what: &str) -> ! {
        let shown = self
            .client
            .execute("return document.body.innerText;", vec![])
            .await
            .unwrap_or(Value::Null);
        panic!(
            "{}: waited {WAIT:?} for {what}; the page shows:\n{}",
            self.name,
            shown.as_str().unwrap_or_default()
        );
    }

    async fn close(self) {
        let _ = self.client.close().await;
    }
}

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
    let page = browsers.open("agent").await;
    page.goto(&format!("{}/agent", server.base)).await;
    let field = page
        .client
        .find(Locator::Css("#login-agent"))
        .await
        .expect("the sign-in form");
    field.clear().await.expect("the field clears");
    field.send_keys(agent).await.expect("the field takes keys");
    page.click("#login-form button[type=submit]").await;
    page.wait_js(
        "the console online",
        "return document.getElementById('conn').textContent === 'online';",
        vec![],
    )
    .await;
    page
}

/// Sends `text` from the widget and waits for the bot's next row; answers
/// (the visitor's row, the bot's row).
async fn ask_the_bot(visitor: &Page, text: &str) -> (Row, Row) {
    let before = visitor.rows().await.last().map_or(0, |r| r.seq);
    visitor.say(text).await;
    let rows = visitor
        .wait_rows(&format!("the bot's answer to {text:?}"), |rows| {
            let asked = rows.iter().find(|r| r.seq > before && r.is("mine"));
            asked.is_some_and(|q| rows.iter().any(|r| r.seq > q.seq && r.is("from-bot")))
        })
        .await;
    let asked = rows
        .iter()
        .find(|r| r.seq > before && r.is("mine"))
        .cloned()
        .expect("the question is shown");
    assert_eq!(asked.text, text);
    let answer = rows
        .iter()
        .find(|r| r.seq > asked.seq && r.is("from-bot"))
        .cloned()
        .expect("the answer is shown");
    (asked, answer)
}

/// The FAQ's answer for `intent` in `language` (`en` or `zh`).
fn faq_answer(intent: &str, language: &str) -> String {
    let faq: Value = serde_json::from_str(include_str!("../examples/chat_server/faq.json"))
        .expect("faq.json is JSON");
    let entry = faq["intents"]
        .as_array()
        .and_then(|all| all.iter().find(|i| i["intent"] == intent))
        .unwrap_or_else(|| panic!("faq.json has no intent {intent}"));
    entry["answer"][language]
        .as_str()
        .expect("an answer in each language")
        .to_owned()
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
    // its own two scripts; the titles are untouched.
    let made = "return [document.querySelectorAll('img').length, \
                document.querySelectorAll('script:not([src])').length, \
                document.querySelectorAll('script').length];";
    for (page, title) in [(&visitor, &visitor_title), (&agent, &agent_title)] {
        assert_eq!(
            page.js(made, vec![]).await,
            json!([0, 0, 2]),
            "{}",
            page.name
        );
        assert_eq!(&page.title().await, title, "{}", page.name);
        assert_ne!(page.title().await, "pwned");
    }

    agent.close().await;
    visitor.close().await;
}
