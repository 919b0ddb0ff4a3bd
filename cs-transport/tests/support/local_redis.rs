//! The local Redis on 127.0.0.1:6379, stopped and started as `.ci/run`
//! does, for the tests that restart it (each in its own test binary, as
//! other tests use the same server). Shared by cs-transport's
//! `redis_restart.rs` and the root package's
//! `chat_server_cluster_redis_restart.rs` (through `#[path]`).

#![allow(dead_code)] // Each test binary uses a different part.

use std::process::Command;
use std::time::{Duration, Instant};

/// Whether `redis-server` is on PATH, so a stopped Redis can be started.
pub fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok()
}

/// Whether it answers PING.
pub fn ping() -> bool {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "ping"])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"PONG"))
}

/// Stops it at once, without saving.
pub fn shutdown() -> bool {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"])
        .status()
        .is_ok()
}

/// Starts it as `.ci/run` does.
pub fn start() -> bool {
    Command::new("redis-server")
        .args([
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ])
        .status()
        .is_ok_and(|s| s.success())
}

/// Waits up to `limit` for `ping` to answer `up`.
pub fn wait_for(up: bool, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if ping() == up {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Starts Redis again on drop if it is not answering: a test that stops
/// the shared server must leave it running, even when it fails.
pub struct KeepRunning;

impl Drop for KeepRunning {
    fn drop(&mut self) {
        for _ in 0..10 {
            if ping() {
                return;
            }
            start();
            if wait_for(true, Duration::from_secs(3)) {
                return;
            }
        }
        eprintln!("Redis did not come back; start it with: redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log");
    }
}
