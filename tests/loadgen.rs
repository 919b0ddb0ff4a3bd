//! The load generator itself, run briefly against a real `chat_server
//! --loadgen`: both of its paths finish, print their JSON, and account for
//! every message. Speed is not asserted here (that is the README's job);
//! that the tool the README's numbers come from works is.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::Server;

/// Where `cargo test` put the loadgen example, beside chat_server.
fn loadgen() -> PathBuf {
    support::binary().with_file_name(format!("loadgen{}", std::env::consts::EXE_SUFFIX))
}

/// Runs loadgen with `args` (bounded: a hang fails the test) and returns
/// its last stdout line as JSON.
async fn run_loadgen(args: &[&str]) -> Value {
    let binary = loadgen();
    assert!(
        binary.exists(),
        "{} is missing: run the tests with `cargo test`",
        binary.display()
    );
    let run = tokio::process::Command::new(&binary)
        .args(args)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("loadgen finishes within five minutes")
        .expect("loadgen starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadgen failed ({}):\n{stderr}",
        output.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("last line {last:?} is not JSON: {e}"))
}

/// A number field of loadgen's report.
fn number(report: &Value, name: &str) -> f64 {
    report[name]
        .as_f64()
        .unwrap_or_else(|| panic!("{name} missing from {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_product_path_answers_every_question_including_the_agents_share() {
    let server = Server::start(&["--loadgen", "--agent-capacity", "100"]).await;
    let report = run_loadgen(&[
        "--chat-server",
        &server.base,
        "--visitors",
        "8",
        "--rate",
        "8",
        "--duration",
        "2",
        "--handoff-share",
        "0.25",
    ])
    .await;
    let field = |name: &str| number(&report, name);
    assert_eq!(field("visitors"), 8.0);
    assert_eq!(field("handoff_visitors"), 2.0);
    let questions = field("questions");
    assert!(questions > 0.0, "no question was asked: {report}");
    // Every question got its answer, from the bot or from a demo agent.
    assert_eq!(field("answered"), questions, "{report}");
    assert_eq!(field("lost"), 0.0, "{report}");
    for name in [
        "questions_per_sec",
        "answer_p50_ms",
        "answer_p99_ms",
        "refused",
        "retried",
    ] {
        field(name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pairs_path_delivers_what_it_sends() {
    let server = Server::start(&["--loadgen"]).await;
    let url = format!("ws://{}/ws", server.host);
    let report = run_loadgen(&[
        "--url",
        &url,
        "--connections",
        "20",
        "--rate",
        "100",
        "--duration",
        "2",
    ])
    .await;
    let field = |name: &str| number(&report, name);
    assert_eq!(field("connections"), 20.0);
    let sent = field("sent");
    assert!(sent > 0.0, "nothing was sent: {report}");
    // Nothing is refused at this rate, so each sent message is delivered once.
    assert_eq!(field("refused"), 0.0, "{report}");
    assert_eq!(field("delivered"), sent, "{report}");
    field("retried");
}
