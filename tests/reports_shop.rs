//! Reports and ratings in the `shop` example, the host that nests the desk
//! at `/support` in a few dozen lines: a guest's chat, closed and rated,
//! shows in `GET /support/api/agent/reports` (JSON and CSV) for Bob, the
//! shop's supervisor, and Alice sees her own figures only; the Reports page
//! is served at `/support/agent/reports`.
//!
//! Runs the example binary, which `cargo test` builds first (after changing
//! the example alone, `cargo build --example shop` before `--test`).

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use cs::core::store::{ReportDay, ReportZone};
use cs::core::Timestamp;
use support::Http;

/// A running `shop` example with a data dir of its own; killed, and the
/// dir removed, on drop.
struct Shop {
    /// `http://127.0.0.1:PORT/support`: the desk.
    desk: String,
    data_dir: PathBuf,
    child: Child,
}

impl Shop {
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
            "cs-shop-reports-{}-{}",
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
        // Generous: the bot trains before the shop listens.
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
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Shop {
            desk: format!("{base}/support"),
            data_dir,
            child,
        }
    }

    fn http(&self) -> Http {
        Http {
            base: self.desk.clone(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("an HTTP client"),
        }
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

#[tokio::test]
async fn the_shop_serves_reports_ratings_and_the_reports_page() {
    let shop = Shop::start().await;
    let http = shop.http();
    let bob = http.agent("bob").await;
    let alice = http.agent("alice").await;

    // A guest chats, ends the chat and rates it.
    let (token, _visitor, conversation) = http.visitor().await;
    let (status, body) = http
        .post("/api/visitor/conversation/close", Some(&token), json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    let rating = json!({ "conversation": conversation, "score": 5, "comment": "fast" });
    let (status, body) = http.post("/api/visitor/rating", Some(&token), rating).await;
    assert_eq!(status, 200, "{body}");

    let today = ReportZone::UTC.day_of(Timestamp::now());
    let range = format!("from={}&to={}", ReportDay(today.0 - 1), today.next());
    let (status, report) = http
        .get(&format!("/api/agent/reports?{range}"), Some(&bob))
        .await;
    assert_eq!(status, 200, "{report}");
    let desk = &report["desk"]["total"];
    assert_eq!(
        (&desk["opened"], &desk["closed"], &desk["contained"]),
        (&json!(1), &json!(1), &json!(1)),
        "{desk}"
    );
    assert_eq!(desk["containment_rate"], 1.0);
    assert_eq!(desk["ratings"]["count"], 1);
    assert_eq!(desk["ratings"]["mean"], 5.0);
    // The bot's greeting is a message of the bot's.
    assert!(desk["messages"]["bot"].as_u64() >= Some(1), "{desk}");
    assert_eq!(
        report["desk"]["bot"]["suggestions"],
        "api/agent/suggestions"
    );

    // Alice is an agent: her own figures, no desk.
    let (status, hers) = http
        .get(&format!("/api/agent/reports?{range}"), Some(&alice))
        .await;
    assert_eq!(status, 200, "{hers}");
    assert_eq!(hers["desk"], Value::Null);

    // CSV, with the desk's day.
    let csv = http
        .client
        .get(format!(
            "{}/api/agent/reports?{range}&format=csv",
            http.base
        ))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("the shop answers");
    assert_eq!(csv.status(), 200);
    let csv = csv.text().await.expect("a CSV body");
    let day = report["desk"]["days"][0]["day"]
        .as_str()
        .unwrap_or_default();
    assert!(
        csv.lines()
            .any(|l| l.starts_with(&format!("{day},,1,1,1,"))),
        "{csv}"
    );

    // The page and its script, from the binary.
    for (path, holds) in [
        ("/agent/reports", "assets/reports.js"),
        ("/assets/reports.js", "api/agent/reports"),
    ] {
        let page = http
            .client
            .get(format!("{}{path}", http.base))
            .send()
            .await
            .expect("the shop answers");
        assert_eq!(page.status(), 200, "{path}");
        let text = page.text().await.expect("a body");
        assert!(text.contains(holds), "{path} lacks {holds}");
    }
}
