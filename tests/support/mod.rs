//! Runs the real `chat_server` example binary for the end-to-end tests.
//!
//! `cargo test` builds every example before it runs any test, so the binary
//! sits beside this test's own executable, in `target/<profile>/examples/`.
//! Each test gets its own server on a free port, with its own data dir and
//! an in-memory SQLite store, and a known signing key so tests can forge
//! tokens to prove they are refused.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The signing key every test server uses.
pub const SECRET: &str = "test-secret-key-for-the-e2e-tests-only";

/// A running chat_server, killed on drop.
pub struct Server {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// `127.0.0.1:PORT`.
    pub host: String,
    /// Its data dir (removed on drop).
    pub data_dir: PathBuf,
    child: Child,
}

/// Where `cargo test` put the example binary.
pub fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test> → target/<profile>/examples/chat_server
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("the test binary lives in target/<profile>/deps");
    profile_dir
        .join("examples")
        .join(format!("chat_server{}", std::env::consts::EXE_SUFFIX))
}

impl Server {
    /// Starts a server with `extra` flags and waits until it listens.
    pub async fn start(extra: &[&str]) -> Server {
        let binary = binary();
        assert!(
            binary.exists(),
            "{} is missing: run the tests with `cargo test` (which builds the examples first), \
             or build it with `cargo build --example chat_server`",
            binary.display()
        );
        let data_dir =
            std::env::temp_dir().join(format!("cs-e2e-{}-{}", std::process::id(), uuid_like()));
        let mut child = Command::new(&binary)
            .args(["--addr", "127.0.0.1:0", "--database", "sqlite::memory:"])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--secret", SECRET])
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("the chat_server binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let base = tokio::time::timeout(Duration::from_secs(120), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(rest) = line.strip_prefix("chat_server listening on ") {
                    let url = rest.split_whitespace().next().unwrap_or_default();
                    return url.trim_end_matches('/').to_owned();
                }
            }
            panic!("chat_server exited before listening");
        })
        .await
        .expect("chat_server listens within two minutes");
        // Keep draining stdout, so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let host = base.trim_start_matches("http://").to_owned();
        Server {
            base,
            host,
            data_dir,
            child,
        }
    }

    /// Asks the server to stop as Ctrl-C would, and waits for it to exit.
    pub async fn interrupt(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            // SIGINT, what Ctrl-C sends; `kill` is on every machine these tests run on.
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("the server stops within 30 s of Ctrl-C")
            .expect("the server's exit status is readable")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{nanos:x}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
