//! `cs::desk::server::serve` against real sockets: `TCP_NODELAY`, the
//! header and write timeouts, the per-address cap, the client's address,
//! and the drain at shutdown.
//!
//! Every wait here ends on an event (a byte, an EOF, a counter reaching a
//! value); the timeouts around them only bound a test that would hang.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::ConnectInfo;
use axum::routing::get;
use axum::Router;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, Notify};

use cs::desk::server::{serve, ServeConfig, ServeStats};

/// Bounds a wait that should end on its own much sooner.
const BOUND: Duration = Duration::from_secs(20);

struct Running {
    addr: SocketAddr,
    stats: Arc<ServeStats>,
    stop: Option<oneshot::Sender<()>>,
    served: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(app: Router, config: ServeConfig) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(ServeStats::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn({
        let stats = Arc::clone(&stats);
        async move {
            serve(listener, app, &config, stats, async {
                let _ = stopped.await;
            })
            .await
        }
    });
    Running {
        addr,
        stats,
        stop: Some(stop),
        served,
    }
}

/// Headers (and the next request on a kept-alive connection) within 500 ms.
fn short_header_timeout() -> ServeConfig {
    ServeConfig {
        header_read_timeout: Duration::from_millis(500),
        ..ServeConfig::default()
    }
}

fn healthz() -> Router {
    Router::new().route("/healthz", get(|| async { "ok" }))
}

/// One `GET path` on a fresh connection; the whole response as text.
async fn get_once(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(BOUND, stream.read_to_string(&mut response))
        .await
        .expect("a response")
        .unwrap();
    response
}

/// Reads until the server closes the connection; what it sent before.
async fn until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(BOUND, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the server kept the connection open past {BOUND:?}"),
        }
    }
}

/// Waits until `open` connections are counted.
async fn open_becomes(stats: &ServeStats, open: u64) {
    tokio::time::timeout(BOUND, async {
        while stats.open.load(Ordering::Relaxed) != open {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "open connections stayed at {}, not {open}",
            stats.open.load(Ordering::Relaxed)
        )
    });
}

/// Answers every text frame with two frames written back to back, the
/// way the desk sends an ack and then the bot's reply.
async fn two_replies(mut socket: WebSocket) {
    while let Some(Ok(Message::Text(text))) = socket.next().await {
        if socket
            .send(Message::text(format!("ack {text}")))
            .await
            .is_err()
            || socket
                .send(Message::text(format!("reply {text}")))
                .await
                .is_err()
        {
            return;
        }
    }
}

#[tokio::test]
async fn back_to_back_frames_reach_a_client_with_delayed_ack_on_without_waiting_for_it() {
    let app = Router::new().route(
        "/ws",
        get(|upgrade: WebSocketUpgrade| async move { upgrade.on_upgrade(two_replies) }),
    );
    let server = start(app, ServeConfig::default()).await;
    // A client with default TCP settings: Nagle on, delayed ACK on.
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut client, _) =
        tokio_tungstenite::client_async(format!("ws://{}/ws", server.addr), stream)
            .await
            .unwrap();
    // Without TCP_NODELAY the second frame waits for the ACK of the first,
    // which Linux delays 40 ms once the exchange looks interactive; the
    // first rounds can be quick (quick-ACK mode), so many rounds are timed
    // and their median compared.
    let mut gaps = Vec::new();
    for round in 0..41 {
        client
            .send(tokio_tungstenite::tungstenite::Message::text(
                round.to_string(),
            ))
            .await
            .unwrap();
        let sent = Instant::now();
        for expected in [format!("ack {round}"), format!("reply {round}")] {
            let frame = tokio::time::timeout(BOUND, client.next())
                .await
                .expect("a frame")
                .expect("the socket open")
                .unwrap();
            assert_eq!(frame.into_text().unwrap().as_str(), expected);
        }
        gaps.push(sent.elapsed());
    }
    gaps.sort();
    let median = gaps[gaps.len() / 2];
    assert!(
        median < Duration::from_millis(5),
        "send → both frames took {median:?} (median of {}); with Nagle waiting on the delayed ACK it is ~40 ms",
        gaps.len()
    );
}

#[tokio::test]
async fn half_sent_requests_are_closed_after_the_header_timeout_while_healthz_answers() {
    let server = start(healthz(), short_header_timeout()).await;
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        stalled.push(stream);
    }
    let response = get_once(server.addr, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for stream in &mut stalled {
        let sent = until_closed(stream).await;
        // hyper answers a header timeout with 408, or just closes.
        let text = String::from_utf8_lossy(&sent);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text}"
        );
    }
    open_becomes(&server.stats, 0).await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_header_timeout() {
    let server = start(healthz(), short_header_timeout()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The response arrives, then the connection idles until it is closed.
    let sent = until_closed(&mut stream).await;
    assert!(String::from_utf8_lossy(&sent).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn connections_past_the_per_address_cap_are_closed_at_once_and_the_place_frees() {
    let config = ServeConfig {
        max_connections_per_ip: 5,
        ..ServeConfig::default()
    };
    let server = start(healthz(), config).await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    open_becomes(&server.stats, 5).await;

    let mut sixth = TcpStream::connect(server.addr).await.unwrap();
    // Closed before it could send anything: no response at all.
    let _ = sixth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(until_closed(&mut sixth).await.is_empty());
    assert_eq!(server.stats.refused.load(Ordering::Relaxed), 1);

    drop(held.pop());
    open_becomes(&server.stats, 4).await;
    let response = get_once(server.addr, "/healthz").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let config = ServeConfig {
        write_timeout: Duration::from_millis(500),
        ..ServeConfig::default()
    };
    // 64 MiB: far more than the socket buffers hold.
    let app = Router::new().route("/big", get(|| async { vec![b'x'; 64 << 20] }));
    let server = start(app, config).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    open_becomes(&server.stats, 1).await;
    // The client never reads; the server gives up and lets go.
    open_becomes(&server.stats, 0).await;
    drop(stream);
}

#[tokio::test]
async fn handlers_see_the_clients_address() {
    let app = Router::new().route(
        "/me",
        get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
    );
    let server = start(app, ServeConfig::default()).await;
    let response = get_once(server.addr, "/me").await;
    assert!(response.ends_with("127.0.0.1"), "{response}");
}

#[tokio::test]
async fn shutdown_lets_a_request_in_flight_finish_then_returns() {
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let app = Router::new().route(
        "/slow",
        get({
            let (entered, release) = (Arc::clone(&entered), Arc::clone(&release));
            move || async move {
                entered.notify_one();
                release.notified().await;
                "done"
            }
        }),
    );
    let mut server = start(app, ServeConfig::default()).await;
    let request = tokio::spawn(get_once(server.addr, "/slow"));
    entered.notified().await;
    server.stop.take().unwrap().send(()).unwrap();
    // Stopped accepting: the listener is closed once the drain begins.
    tokio::time::timeout(BOUND, async {
        while TcpStream::connect(server.addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the listener to close");
    assert!(
        !server.served.is_finished(),
        "serve returned before the drain"
    );
    release.notify_one();
    let response = request.await.unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200") && response.ends_with("done"),
        "{response}"
    );
    tokio::time::timeout(BOUND, server.served)
        .await
        .expect("serve to return after the drain")
        .unwrap()
        .unwrap();
}
