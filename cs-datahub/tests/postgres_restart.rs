//! PostgreSQL restarted under a running writer: the store reconnects, every
//! append that returned `Ok` is still there with its seq, and every append
//! that failed said so (`Unavailable`) and, retried with its
//! `client_msg_id`, is stored exactly once.
//!
//! It restarts the local cluster with `pg_ctlcluster`, so it lives in a test
//! binary of its own (cargo runs test binaries one at a time) and skips where
//! that command is missing. A guard starts the cluster again if the test
//! fails halfway, so PostgreSQL is left running whatever happens.
#![cfg(feature = "postgres")]

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{scratch_name, Scratch};
use cs_core::store::{MessageStore, StoreError};
use cs_core::{ClientMsgId, Conversation, NewMessage, Party, Seq, TenantId, Timestamp, VisitorId};
use cs_datahub::store::PostgresStore;

fn cluster_version() -> Option<String> {
    let entries = std::fs::read_dir("/etc/postgresql").ok()?;
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().into_string().ok())
        .min()
}

fn pg_ctl(version: &str, action: &str) -> bool {
    Command::new("pg_ctlcluster")
        .args(["--skip-systemctl-redirect", version, "main", action])
        .status()
        .is_ok_and(|s| s.success())
}

fn is_ready() -> bool {
    Command::new("pg_isready")
        .args(["-q", "-h", "127.0.0.1", "-p", "5432"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Starts the cluster again on drop if it is not answering.
struct KeepRunning(String);

impl Drop for KeepRunning {
    fn drop(&mut self) {
        for _ in 0..30 {
            if is_ready() {
                return;
            }
            pg_ctl(&self.0, "start");
            std::thread::sleep(Duration::from_secs(1));
        }
        eprintln!("PostgreSQL did not come back; start it with: pg_ctlcluster --skip-systemctl-redirect {} main start", self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_appends_survive_a_server_restart() {
    let Some(url) = cs_core::testing::service_url("CS_TEST_POSTGRES_URL") else {
        return;
    };
    let (Some(version), true) = (
        cluster_version(),
        Command::new("pg_ctlcluster").arg("--help").output().is_ok(),
    ) else {
        eprintln!(
            "skipped: no local PostgreSQL cluster to restart (pg_ctlcluster, /etc/postgresql)"
        );
        return;
    };
    let _guard = KeepRunning(version.clone());
    let schema = scratch_name();
    let store = PostgresStore::connect_in_schema(&url, &schema)
        .await
        .unwrap();
    let drop_url = url.clone();
    let drop_schema = schema.clone();
    let scratch = Arc::new(Scratch::new(
        store,
        Box::new(move || -> futures::future::BoxFuture<'static, ()> {
            Box::pin(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&drop_url).await {
                    let _ =
                        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{drop_schema}\" CASCADE"))
                            .execute(&mut conn)
                            .await;
                }
            })
        }),
    ));
    let visitor = VisitorId::new("restart-visitor").unwrap();
    let c = Conversation::open(
        TenantId::new("restart").unwrap(),
        visitor.clone(),
        Timestamp::now(),
    );
    scratch.store.create_conversation(&c).await.unwrap();

    // A writer appends without pause while the server restarts under it,
    // until 50 appends succeeded after the restart (or 60 s passed).
    let restart_done = Arc::new(AtomicBool::new(false));
    let writer = {
        let scratch = Arc::clone(&scratch);
        let restart_done = Arc::clone(&restart_done);
        let (id, visitor) = (c.id(), visitor.clone());
        tokio::spawn(async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut acked_after_restart = 0;
            let started = Instant::now();
            for i in 0u32.. {
                if acked_after_restart >= 50 || started.elapsed() > Duration::from_secs(60) {
                    break;
                }
                let done = restart_done.load(Ordering::SeqCst);
                let cid = format!("m-{i}");
                let message =
                    NewMessage::text(id, Party::Visitor(visitor.clone()), format!("message {i}"))
                        .with_client_msg_id(ClientMsgId::new(&cid).unwrap());
                match scratch.store.append(message).await {
                    Ok(appended) => {
                        acked.push((cid, appended.message.seq));
                        acked_after_restart += usize::from(done);
                    }
                    Err(e) => {
                        assert!(
                            matches!(
                                e,
                                StoreError::Unavailable { .. } | StoreError::Backend { .. }
                            ),
                            "a failed append must say the store failed, got {e:?}"
                        );
                        failed.push(cid);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
            (acked, failed, acked_after_restart)
        })
    };

    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = tokio::task::spawn_blocking(move || pg_ctl(&version, "restart"))
        .await
        .unwrap();
    restart_done.store(true, Ordering::SeqCst);
    assert!(restarted, "pg_ctlcluster restart failed");
    let (acked, failed, acked_after_restart) = writer.await.unwrap();
    assert!(
        acked_after_restart >= 50,
        "the store did not recover after the restart"
    );
    eprintln!(
        "{} appends acknowledged, {} failed during the restart",
        acked.len(),
        failed.len()
    );

    // Every acknowledged append is there, with the seq it was given.
    let stored = scratch
        .store
        .after(c.id(), Seq::ZERO, 100_000)
        .await
        .unwrap();
    let by_client: std::collections::HashMap<String, Seq> = stored
        .iter()
        .map(|m| (m.client_msg_id.as_ref().unwrap().as_str().to_owned(), m.seq))
        .collect();
    for (cid, seq) in &acked {
        assert_eq!(
            by_client.get(cid),
            Some(seq),
            "acknowledged {cid} lost or renumbered"
        );
    }
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq.get()).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "no gaps"
    );

    // A failed append may or may not have committed (the reply can be lost
    // with the connection); retrying it with its client id settles it once.
    for cid in &failed {
        let retry = NewMessage::text(c.id(), Party::Visitor(visitor.clone()), "retry")
            .with_client_msg_id(ClientMsgId::new(cid).unwrap());
        scratch.store.append(retry).await.unwrap();
    }
    let after_retries = scratch
        .store
        .after(c.id(), Seq::ZERO, 100_000)
        .await
        .unwrap();
    assert_eq!(
        after_retries.len(),
        acked.len() + failed.len(),
        "each message stored exactly once"
    );
}
