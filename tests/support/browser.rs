//! The browser harness of the browser tests: a chromedriver of the test's
//! own, one headless Chromium per [`Page`], and waits that poll the page
//! until it shows what a step needs (never a fixed sleep).
//!
//! Included by each browser test with
//! `#[path = "support/browser.rs"] mod browser;`, so every test crate has
//! one copy of it and none of `support`'s other helpers need it.
//!
//! Needs the Debian packages `chromium` and `chromium-driver`; see
//! [`browser_installed`] for what happens without them.

#![allow(dead_code)] // Each browser test uses a different part of this module.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a page may take to show what a step waits for. Generous: the
/// machine may be busy building; a passing run waits far less.
pub const WAIT: Duration = Duration::from_secs(20);
/// How often a wait looks at the page again.
pub const POLL: Duration = Duration::from_millis(50);

/// One browser test at a time: each runs a server and two Chromiums, and
/// several at once on a small machine only make every wait longer. A tokio
/// mutex, because each test has its own runtime and a panicking test must
/// not poison the lock for the others.
pub static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// The browser: a chromedriver of our own, and one Chromium per session.

/// Whether Chromium and chromedriver are installed: skip with a notice when
/// not, or fail when `CS_REQUIRE_SERVICES=1` (the rule of the service tests,
/// see `cs_core::testing::service_url`).
pub fn browser_installed() -> bool {
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
pub struct Browsers {
    url: String,
    dir: PathBuf,
    child: Child,
    sessions: u32,
}

impl Browsers {
    pub async fn start() -> Browsers {
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
    pub async fn open(&mut self, name: &'static str) -> Page {
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

    pub fn log(&self) -> String {
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
pub struct Row {
    pub seq: u64,
    pub class: String,
    pub text: String,
}

impl Row {
    pub fn is(&self, class: &str) -> bool {
        self.class.split_whitespace().any(|c| c == class)
    }
}

/// Every message row of the open transcript, in page order: a text
/// message's own text (without the name and time around it), or an event's
/// line. The pages tag each row with its seq.
pub const ROWS: &str = r#"
return [...document.querySelectorAll('#messages .msg[data-seq]:not(.notice)')].map((n) => ({
  seq: Number(n.dataset.seq),
  class: n.className,
  text: (n.querySelector('.bubble .text') || n).textContent,
}));"#;

/// Enter, as WebDriver spells it: the pages send on Enter.
pub const ENTER: &str = "\u{E007}";

/// One browser tab, on the widget or the console.
pub struct Page {
    pub name: &'static str,
    pub client: Client,
}

impl Page {
    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("the page loads");
    }

    /// Clears the field `css` and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{}: no field {css}: {e}", self.name));
        field.clear().await.expect("the field clears");
        field.send_keys(text).await.expect("the field takes keys");
    }

    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{}: the script failed: {e}\n{script}", self.name))
    }

    /// Runs `script` until it returns something other than null, false, 0,
    /// "" or []; answers that.
    pub async fn wait_js(&self, what: &str, script: &str, args: Vec<Value>) -> Value {
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

    pub async fn rows(&self) -> Vec<Row> {
        serde_json::from_value(self.js(ROWS, vec![]).await).expect("rows are {seq, class, text}")
    }

    /// Waits until the transcript's rows satisfy `ready`; answers them.
    pub async fn wait_rows(&self, what: &str, ready: impl Fn(&[Row]) -> bool) -> Vec<Row> {
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
    pub async fn wait_text(&self, what: &str, css: &str) -> String {
        let script = "const n = document.querySelector(arguments[0]); \
                      return n && n.offsetParent !== null ? n.textContent : null;";
        let text = self.wait_js(what, script, vec![json!(css)]).await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Clicks `css` once it is there. The lists are re-rendered on every
    /// desk frame, so an element found a moment ago may be gone: find again.
    pub async fn click(&self, css: &str) {
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
    pub async fn type_text(&self, text: &str) {
        self.client
            .find(Locator::Css("#input"))
            .await
            .expect("the page has a composer")
            .send_keys(text)
            .await
            .expect("the composer takes keys");
    }

    /// Types `text` and presses Enter.
    pub async fn say(&self, text: &str) {
        self.type_text(&format!("{text}{ENTER}")).await;
    }

    pub async fn title(&self) -> String {
        self.client.title().await.expect("the page has a title")
    }

    pub async fn screenshot(&self, path: &Path) {
        let png = self.client.screenshot().await.expect("a screenshot");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("the screenshot dir is created");
        }
        std::fs::write(path, png).expect("the screenshot is saved");
    }

    /// Panics with what the page shows, so a timeout says where it stood.
    pub async fn fail(&self, what: &str) -> ! {
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

    pub async fn close(self) {
        let _ = self.client.close().await;
    }
}

// ---------------------------------------------------------------------------
// The widget's bot, as every browser test asks it.

/// Sends `text` from the widget and waits for the bot's next row; answers
/// (the visitor's row, the bot's row).
pub async fn ask_the_bot(visitor: &Page, text: &str) -> (Row, Row) {
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
pub fn faq_answer(intent: &str, language: &str) -> String {
    let faq: Value = serde_json::from_str(include_str!("../../examples/chat_server/faq.json"))
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

/// The desk's console at `url`, signed in on its own form as `agent`
/// (password `demo`) and online. The form shows only once the console has
/// asked who is there, so it is waited for before anything is typed.
pub async fn signed_in_console(browsers: &mut Browsers, url: &str, agent: &str) -> Page {
    let page = browsers.open("agent").await;
    page.goto(url).await;
    page.wait_js(
        "the console's sign-in form",
        "const f = document.getElementById('login-form'); return !!f && !f.hidden;",
        vec![],
    )
    .await;
    page.type_into("#login-agent", agent).await;
    page.type_into("#login-password", "demo").await;
    page.click("#login-form button[type=submit]").await;
    page.wait_js(
        "the console online",
        "return document.getElementById('conn').textContent === 'online';",
        vec![],
    )
    .await;
    page
}
