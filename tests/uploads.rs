//! Uploads and downloads of a desk served on a real socket, in this
//! process (so its memory can be read from `/proc/self/status`): stalled
//! uploads hold neither memory nor temp files, the quotas, the size limit,
//! who may open a file, and retention.
//!
//! Every wait ends on the event that proves a state (a response, a file on
//! disk reaching its size, a file gone); the bounds only stop a test that
//! would hang.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, RwLock};

use cs::core::store::MemoryStore;
use cs::core::{AgentId, AgentRecord, ConversationId, MemoryDirectory, TenantId, VisitorId};
use cs::desk::server::ServeConfig;
use cs::desk::{Attachments, DeskSettings, FsAttachments, ServiceDesk, TokenKind, UploadLimits};
use support::eventually;

/// Bounds a wait that should end on its own much sooner.
const BOUND: Duration = Duration::from_secs(60);
const MIB: u64 = 1024 * 1024;

/// The memory test measures the whole process: it runs alone (write), the
/// others beside each other (read).
static ALONE: RwLock<()> = RwLock::const_new(());

/// A desk with uploads in its own directory, served on a free port.
struct Served {
    desk: ServiceDesk,
    addr: SocketAddr,
    base: String,
    dir: PathBuf,
    /// The desk's backend, for the tests to call directly.
    files: FsAttachments,
    /// Its conversations, kept for a desk that takes this one's place.
    store: Arc<MemoryStore>,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.stop.take().map(|stop| stop.send(()));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fresh_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "cs-uploads-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Quotas out of the way, for tests about something else.
fn no_quotas() -> UploadLimits {
    UploadLimits {
        visitor_files_per_day: u64::MAX,
        visitor_bytes_per_day: u64::MAX,
        conversation_files: u64::MAX,
        conversation_bytes: u64::MAX,
        retention: None,
    }
}

async fn serve(settings: DeskSettings) -> Served {
    serve_in(fresh_dir(), Arc::new(MemoryStore::new()), settings).await
}

/// A desk keeping its files in `dir` and its conversations in `store`,
/// with the agent `alice`.
async fn serve_in(dir: PathBuf, store: Arc<MemoryStore>, settings: DeskSettings) -> Served {
    let files = FsAttachments::new(&dir).expect("the uploads dir");
    let directory = MemoryDirectory::default();
    directory
        .upsert(AgentRecord::new(AgentId::new("alice").unwrap(), "Alice", 3))
        .unwrap();
    let desk = ServiceDesk::builder(TenantId::new("shop").unwrap())
        .directory(Arc::new(directory))
        .store(Arc::clone(&store))
        .attachments(files.clone())
        .settings(settings)
        .build()
        .await
        .expect("the desk starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let app: axum::Router = desk.router();
    tokio::spawn({
        let desk = desk.clone();
        async move {
            desk.serve_with_shutdown(listener, app, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    Served {
        desk,
        addr,
        base: format!("http://{addr}"),
        dir,
        files,
        store,
        http: reqwest::Client::builder().timeout(BOUND).build().unwrap(),
        stop: Some(stop),
    }
}

impl Served {
    /// A visitor's token and their open conversation.
    async fn visitor(&self, id: &str) -> (String, ConversationId) {
        let visitor = VisitorId::new(id).unwrap();
        let conversation = self.desk.open_for_visitor(&visitor).await.unwrap().id;
        let token = self
            .desk
            .signer()
            .issue(TokenKind::Guest, id, Duration::from_secs(3600));
        (token, conversation)
    }

    fn agent(&self) -> String {
        self.desk
            .signer()
            .issue(TokenKind::Agent, "alice", Duration::from_secs(3600))
    }

    /// Uploads `bytes` as `mime`; the status and the JSON answer.
    async fn upload(
        &self,
        token: &str,
        conversation: ConversationId,
        mime: &str,
        bytes: Vec<u8>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let response = self
            .http
            .post(format!(
                "{}/api/upload?name=f.bin&conversation={conversation}",
                self.base
            ))
            .bearer_auth(token)
            .header("Content-Type", mime)
            .body(bytes)
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (
            status,
            response.json().await.unwrap_or(Value::Null),
            headers,
        )
    }

    /// Twenty uploads of `bytes` at once; their statuses.
    async fn twenty_at_once(
        &self,
        token: &str,
        conversation: ConversationId,
        bytes: &[u8],
    ) -> Vec<u16> {
        let at_once = (0..20).map(|_| {
            self.upload(
                token,
                conversation,
                "application/octet-stream",
                bytes.to_vec(),
            )
        });
        futures::future::join_all(at_once)
            .await
            .into_iter()
            .map(|(status, _, _)| status)
            .collect()
    }

    /// Uploads `bytes` as a plain file and answers its URL, asserting a 200.
    async fn upload_ok(&self, token: &str, conversation: ConversationId, bytes: Vec<u8>) -> String {
        let (status, body, _) = self
            .upload(token, conversation, "application/octet-stream", bytes)
            .await;
        assert_eq!(status, 200, "{body}");
        body["body"]["url"].as_str().unwrap().to_owned()
    }

    async fn download(&self, url: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(format!("{}{url}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("the server answers")
    }
}

/// The names in `dir`, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The sizes of the unfinished uploads in `dir`.
fn parts_in(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".part")
                .then(|| e.metadata().map_or(0, |m| m.len()))
        })
        .collect()
}

/// This process's resident memory, in bytes.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kb * 1024
}

/// Bytes that are not all alike, so a swapped or lost chunk shows.
fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Reads until the server closes; what it sent.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(BOUND, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&seen).into_owned(),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open past {BOUND:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_stalled_uploads_hold_neither_memory_nor_temp_files() {
    const STALLED: usize = 30;
    const DECLARED: u64 = 9 * MIB + MIB / 2;
    const SENT: u64 = 9 * MIB;
    let _alone = ALONE.write().await;
    let served = serve(DeskSettings {
        uploads: no_quotas(),
        serve: ServeConfig {
            // Long enough for 30 bodies to stream on a busy machine, short
            // enough that the test does not wait long for the stall to end.
            body_read_timeout: Duration::from_secs(5),
            ..ServeConfig::default()
        },
        ..DeskSettings::default()
    })
    .await;
    let (token, conversation) = served.visitor("staller").await;
    // Warm: one upload and download, so the paths have run once.
    let url = served
        .upload_ok(&token, conversation, pattern(MIB as usize))
        .await;
    let warm = served.download(&url, Some(&token)).await;
    assert_eq!(warm.bytes().await.unwrap().len() as u64, MIB);
    let idle = rss();

    let chunk = Arc::new(vec![0u8; 64 * 1024]);
    let mut sending = Vec::new();
    for _ in 0..STALLED {
        let (addr, token, chunk) = (served.addr, token.clone(), Arc::clone(&chunk));
        sending.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let head = format!(
                "POST /api/upload?name=big.bin&conversation={conversation} HTTP/1.1\r\n\
                 Host: x\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/octet-stream\r\nContent-Length: {DECLARED}\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await.unwrap();
            for _ in 0..SENT / chunk.len() as u64 {
                stream.write_all(&chunk).await.unwrap();
            }
            // And then nothing: the rest never comes.
            stream
        }));
    }
    let mut peak = idle;
    let mut streams = Vec::new();
    for task in sending {
        streams.push(task.await.unwrap());
        peak = peak.max(rss());
    }
    // The server has read everything sent, and waits for the rest.
    eventually(
        "every stalled upload on disk to its last byte",
        BOUND,
        async || {
            peak = peak.max(rss());
            let parts = parts_in(&served.dir);
            if parts.len() == STALLED && parts.iter().all(|&len| len == SENT) {
                Ok(())
            } else {
                Err(format!("{parts:?}"))
            }
        },
    )
    .await;
    let stalled = rss();
    peak = peak.max(stalled);
    eprintln!(
        "VmRSS idle {} MiB, with {STALLED} stalled uploads of {} MiB each {} MiB, peak {} MiB",
        idle / MIB,
        SENT / MIB,
        stalled / MIB,
        peak / MIB
    );
    assert!(
        peak < idle + 50 * MIB,
        "{STALLED} stalled uploads took VmRSS from {idle} to {peak} bytes"
    );

    // The body timeout ends each: a 400, and its temp file gone.
    for stream in &mut streams {
        let response = until_closed(stream).await;
        assert!(response.starts_with("HTTP/1.1 400"), "{response}");
        assert!(response.contains("send it again"), "{response}");
    }
    let names = names_in(&served.dir);
    assert_eq!(
        names.len(),
        2,
        "only the warm-up file and its record: {names:?}"
    );
    assert!(parts_in(&served.dir).is_empty());
}

#[tokio::test]
async fn quotas_per_visitor_per_day_and_per_conversation_answer_429_naming_the_limit() {
    let _shared = ALONE.read().await;
    let limits = UploadLimits {
        visitor_files_per_day: 3,
        visitor_bytes_per_day: MIB,
        conversation_files: 5,
        conversation_bytes: 2 * MIB,
        retention: Some(Duration::from_secs(24 * 3600)),
    };
    let served = serve(DeskSettings {
        uploads: limits.clone(),
        ..DeskSettings::default()
    })
    .await;
    let small = || vec![7u8; 1000];

    // Files per visitor per day.
    let (ann, anns) = served.visitor("ann").await;
    for _ in 0..3 {
        served.upload_ok(&ann, anns, small()).await;
    }
    let (status, body, headers) = served
        .upload(&ann, anns, "application/octet-stream", small())
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"], "rate_limited");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("visitor_files_per_day = 3"), "{message}");
    let retry = body["retry_after_ms"].as_u64().unwrap();
    assert!(
        retry > 0 && retry <= 24 * 3600 * 1000,
        "until midnight UTC: {retry}"
    );
    assert!(headers.contains_key("retry-after"));

    // Bytes per visitor per day: the declared length counts up front.
    let (ben, bens) = served.visitor("ben").await;
    served.upload_ok(&ben, bens, vec![1u8; 600 * 1024]).await;
    let (status, body, _) = served
        .upload(
            &ben,
            bens,
            "application/octet-stream",
            vec![1u8; 600 * 1024],
        )
        .await;
    assert_eq!(status, 429, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("visitor_bytes_per_day = 1048576"),
        "{message}"
    );

    // Twenty at once cannot slip past: exactly three of them are kept.
    let (cat, cats) = served.visitor("cat").await;
    let statuses = served.twenty_at_once(&cat, cats, &small()).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        17,
        "{statuses:?}"
    );

    // Files per conversation: agents pass the visitors' daily limit (3),
    // not the conversation's (5); twenty at once again fill it exactly.
    let agent = served.agent();
    let (dan, dans) = served.visitor("dan").await;
    let statuses = served.twenty_at_once(&agent, dans, &small()).await;
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        5,
        "{statuses:?}"
    );
    let (status, body, headers) = served
        .upload(&dan, dans, "application/octet-stream", small())
        .await;
    assert_eq!(status, 429, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("conversation_files = 5"), "{message}");
    // Room comes as files expire: by the retention and one hourly sweep.
    assert_eq!(
        body["retry_after_ms"].as_u64(),
        Some((24 + 1) * 3600 * 1000)
    );
    assert_eq!(
        headers["retry-after"],
        ((24 + 1) * 3600).to_string().as_str()
    );

    // Bytes per conversation.
    let (_, eves) = served.visitor("eve").await;
    served
        .upload_ok(&agent, eves, vec![2u8; (3 * MIB / 2) as usize])
        .await;
    let (status, body, _) = served
        .upload(
            &agent,
            eves,
            "application/octet-stream",
            vec![2u8; MIB as usize],
        )
        .await;
    assert_eq!(status, 429, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("conversation_bytes = 2097152"),
        "{message}"
    );

    // A conversation's files are counted from the backend: after a
    // restart (a new desk on the same directory), Fay's is still full.
    drop(served);
    let mut first = serve(DeskSettings {
        uploads: limits.clone(),
        ..DeskSettings::default()
    })
    .await;
    let (_, fays) = first.visitor("fay").await;
    let agent = first.agent();
    for _ in 0..5 {
        first.upload_ok(&agent, fays, small()).await;
    }
    // The next desk takes the directory over (and removes it at the end).
    let again = serve_in(
        std::mem::take(&mut first.dir),
        Arc::clone(&first.store),
        DeskSettings {
            uploads: limits,
            ..DeskSettings::default()
        },
    )
    .await;
    let (status, body, _) = again
        .upload(&again.agent(), fays, "application/octet-stream", small())
        .await;
    assert_eq!(status, 429, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("conversation_files = 5"), "{message}");
}

#[tokio::test]
async fn an_oversize_upload_gets_413_and_keeps_nothing() {
    let _shared = ALONE.read().await;
    let served = serve(DeskSettings {
        max_upload_bytes: MIB,
        uploads: no_quotas(),
        ..DeskSettings::default()
    })
    .await;
    let (token, conversation) = served.visitor("ann").await;

    // Declared too large: refused before a byte is read.
    let (status, body, _) = served
        .upload(
            &token,
            conversation,
            "application/octet-stream",
            vec![0u8; MIB as usize + 1],
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"], "too_large");
    assert!(
        body["message"].as_str().unwrap().contains("1048576"),
        "{body}"
    );

    // Not declared (chunked): refused as the limit is passed. Exactly one
    // byte over is sent, and no more, so the server has read all of it
    // when it answers and closes.
    let mut stream = TcpStream::connect(served.addr).await.unwrap();
    let over = MIB as usize + 1;
    let head = format!(
        "POST /api/upload?name=big.bin&conversation={conversation} HTTP/1.1\r\n\
         Host: x\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n{over:x}\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&vec![0u8; over]).await.unwrap();
    let response = until_closed(&mut stream).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("too_large"), "{response}");
    // The handler has answered, so its temp file is already gone.
    assert_eq!(names_in(&served.dir), Vec::<String>::new());

    // At the limit exactly, it is kept.
    served
        .upload_ok(&token, conversation, vec![0u8; MIB as usize])
        .await;
}

#[tokio::test]
async fn files_are_streamed_back_byte_identical_to_their_visitor_and_agents_only() {
    let _shared = ALONE.read().await;
    let served = serve(DeskSettings {
        uploads: no_quotas(),
        ..DeskSettings::default()
    })
    .await;
    let (ann, anns) = served.visitor("ann").await;
    let (ben, _) = served.visitor("ben").await;
    let bytes = pattern(3 * MIB as usize + 12_345);
    let url = served.upload_ok(&ann, anns, bytes.clone()).await;

    for (who, token) in [("the visitor", ann.clone()), ("an agent", served.agent())] {
        let response = served.download(&url, Some(&token)).await;
        assert_eq!(response.status(), 200, "{who}");
        assert_eq!(
            response.headers()["content-length"],
            bytes.len().to_string().as_str(),
            "{who}"
        );
        assert_eq!(
            response.headers()["content-type"],
            "application/octet-stream"
        );
        let served_bytes = response.bytes().await.unwrap();
        assert!(
            served_bytes.as_ref() == bytes.as_slice(),
            "{who} got other bytes"
        );
    }
    // To another visitor the file does not exist; signed out, sign in.
    assert_eq!(served.download(&url, Some(&ben)).await.status(), 404);
    assert_eq!(served.download(&url, None).await.status(), 401);

    // An image by its first bytes, in one chunk or several.
    let png = [b"\x89PNG\r\n\x1a\n".as_slice(), &pattern(5000)].concat();
    let (status, body, _) = served.upload(&ann, anns, "image/png", png.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["body"]["type"], "image");
    let image = served
        .download(body["body"]["url"].as_str().unwrap(), Some(&ann))
        .await;
    assert_eq!(image.headers()["content-type"], "image/png");
    assert!(image.bytes().await.unwrap().as_ref() == png.as_slice());
    let (status, body, _) = served
        .upload(&ann, anns, "image/png", b"<svg onload=alert(1)>".to_vec())
        .await;
    assert_eq!(status, 400, "{body}");

    // Only the desk's user may read them.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&served.dir), 0o700);
        for name in names_in(&served.dir) {
            assert_eq!(mode(&served.dir.join(&name)), 0o600, "{name}");
        }
    }
}

#[tokio::test]
async fn retention_removes_old_files_at_the_sweep_and_at_start() {
    let _shared = ALONE.read().await;
    let served = serve(DeskSettings {
        uploads: no_quotas(),
        ..DeskSettings::default()
    })
    .await;
    let (ann, anns) = served.visitor("ann").await;
    let url = served.upload_ok(&ann, anns, pattern(1000)).await;
    let kept = served.upload_ok(&ann, anns, pattern(2000)).await;
    assert_eq!(served.files.usage(anns).await.unwrap().files, 2);

    // A record written before `created_ms` existed still loads, and is
    // aged by its modification time.
    let old_id = kept.rsplit('/').next().unwrap();
    let record_path = served.dir.join(format!("{old_id}.json"));
    let mut record: Value = serde_json::from_slice(&std::fs::read(&record_path).unwrap()).unwrap();
    record.as_object_mut().unwrap().remove("created_ms");
    std::fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
    assert_eq!(served.download(&kept, Some(&ann)).await.status(), 200);

    // Nothing is older than an hour ago.
    let hour = Duration::from_secs(3600);
    let removed = served
        .files
        .remove_older_than(SystemTime::now() - hour)
        .await
        .unwrap();
    assert_eq!(removed, 0);
    // Everything is older than an hour from now.
    let removed = served
        .files
        .remove_older_than(SystemTime::now() + hour)
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert_eq!(served.download(&url, Some(&ann)).await.status(), 404);
    assert_eq!(served.download(&kept, Some(&ann)).await.status(), 404);
    assert_eq!(names_in(&served.dir), Vec::<String>::new());
    assert_eq!(served.files.usage(anns).await.unwrap().files, 0);

    // The desk sweeps once at start: a desk with a retention of zero,
    // started on a directory holding a file, removes it on its own.
    served.upload_ok(&ann, anns, pattern(3000)).await;
    assert_eq!(names_in(&served.dir).len(), 2);
    let mut served = served;
    let dir = std::mem::take(&mut served.dir);
    let sweeping = serve_in(
        dir,
        Arc::clone(&served.store),
        DeskSettings {
            uploads: UploadLimits {
                retention: Some(Duration::ZERO),
                ..no_quotas()
            },
            ..DeskSettings::default()
        },
    )
    .await;
    eventually(
        "the start sweep to remove the file",
        BOUND,
        async || match names_in(&sweeping.dir) {
            names if names.is_empty() => Ok(()),
            names => Err(format!("{names:?}")),
        },
    )
    .await;
    // And on demand, as the hourly sweep does.
    let (bo, bos) = sweeping.visitor("bo").await;
    sweeping.upload_ok(&bo, bos, pattern(10)).await;
    assert_eq!(sweeping.desk.expire_files().await.unwrap(), 1);
    assert_eq!(names_in(&sweeping.dir), Vec::<String>::new());
}
