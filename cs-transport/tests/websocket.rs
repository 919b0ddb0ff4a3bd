//! The axum adapter over real sockets: a tokio-tungstenite client talks to an
//! axum server on 127.0.0.1.

#![cfg(feature = "axum")]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use proptest::prelude::*;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use cs_core::store::MemoryStore;
use cs_core::{Body, ClientMsgId, ConversationId, Seq};
use cs_transport::websocket::{self, WsConfig};
use cs_transport::{Change, ClientFrame, CloseReason, DispatcherConfig, ErrorCode, ServerFrame};
use support::*;

#[derive(Clone)]
struct App {
    node: Arc<Node>,
    ws: WsConfig,
}

/// Test-only identity from the query string; a real host verifies a token.
#[derive(Deserialize)]
struct Who {
    tenant: String,
    visitor: Option<String>,
    agent: Option<String>,
}

async fn chat(
    upgrade: WebSocketUpgrade,
    Query(who): Query<Who>,
    State(app): State<App>,
) -> Response {
    let party = match (&who.visitor, &who.agent) {
        (Some(v), _) => visitor(v),
        (None, Some(a)) => agent(a),
        (None, None) => visitor("anonymous"),
    };
    let tenant = tenant_id(&who.tenant);
    let (pool, dispatcher) = (Arc::clone(&app.node.pool), app.node.dispatcher.clone());
    websocket::upgrade(upgrade, &app.ws)
        .on_upgrade(move |socket| websocket::serve(socket, tenant, party, pool, dispatcher, app.ws))
}

async fn start(ws: WsConfig) -> (SocketAddr, Arc<Node>) {
    let node = Arc::new(Node::start(
        DispatcherConfig::default(),
        Arc::new(MemoryStore::new()),
        Vec::new(),
    ));
    let app = App {
        node: Arc::clone(&node),
        ws,
    };
    let router = axum::Router::new()
        .route("/chat", get(chat))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, node)
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

struct WsClient {
    socket: Socket,
}

impl WsClient {
    async fn connect(addr: SocketAddr, query: &str) -> Self {
        let (socket, _) = connect_async(format!("ws://{addr}/chat?{query}"))
            .await
            .unwrap();
        let mut client = Self { socket };
        assert!(matches!(
            client.next().await,
            Some(ServerFrame::Welcome { .. })
        ));
        client
    }

    async fn send(&mut self, frame: &ClientFrame) {
        self.send_raw(String::from_utf8(frame.encode().to_vec()).unwrap())
            .await;
    }

    async fn send_raw(&mut self, text: String) {
        self.socket
            .send(WsMessage::Text(text.into()))
            .await
            .unwrap();
    }

    /// Like `send_raw`, but a socket the server has closed is not a failure.
    async fn try_send_raw(&mut self, text: String) -> bool {
        self.socket.send(WsMessage::Text(text.into())).await.is_ok()
    }

    /// The next frame, or `None` once the server has closed the socket.
    async fn next(&mut self) -> Option<ServerFrame> {
        loop {
            let message = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a frame within 10 s");
            match message {
                Some(Ok(WsMessage::Text(text))) => {
                    return Some(ServerFrame::decode(text.as_bytes()).unwrap())
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                _ => return None,
            }
        }
    }

    async fn ping_pong(&mut self) {
        self.send(&ClientFrame::Ping).await;
        loop {
            match self.next().await {
                Some(ServerFrame::Pong) => return,
                Some(_) => continue,
                None => panic!("the connection closed instead of answering the ping"),
            }
        }
    }
}

#[tokio::test]
async fn a_visitor_and_an_agent_talk_over_real_sockets() {
    let (addr, node) = start(WsConfig::default()).await;
    let conversation = node.conversation("shop", "ann", Some("alice")).await.id();
    let mut ann = WsClient::connect(addr, "tenant=shop&visitor=ann").await;
    let mut alice = WsClient::connect(addr, "tenant=shop&agent=alice").await;
    for client in [&mut ann, &mut alice] {
        client
            .send(&ClientFrame::Resume {
                conversation,
                last_seq: Seq::new(2),
            })
            .await;
        assert!(matches!(
            client.next().await,
            Some(ServerFrame::Replayed { complete: true, .. })
        ));
    }

    ann.send(&ClientFrame::Send {
        conversation,
        client_msg_id: Some(ClientMsgId::new("m-1").unwrap()),
        body: Body::text("我的快递到哪了？"),
    })
    .await;
    match alice.next().await {
        Some(ServerFrame::Message { message }) => {
            assert_eq!(message.body, Body::text("我的快递到哪了？"));
            assert_eq!(message.seq, Seq::new(3));
        }
        other => panic!("expected the message, got {other:?}"),
    }
    let mut acked = false;
    while !acked {
        match ann.next().await {
            Some(ServerFrame::Ack { seq, .. }) => {
                assert_eq!(seq, Seq::new(3));
                acked = true;
            }
            Some(ServerFrame::Message { .. }) => {}
            other => panic!("expected the ack, got {other:?}"),
        }
    }
    alice
        .send(&ClientFrame::Typing {
            conversation,
            active: true,
        })
        .await;
    assert!(matches!(
        ann.next().await,
        Some(ServerFrame::Typing { active: true, .. })
    ));
    // Every joined tab gets typing, the typist's own included (clients skip their own).
    assert!(matches!(
        alice.next().await,
        Some(ServerFrame::Typing { active: true, .. })
    ));
    // After the conversation closes, the close event reaches both sides.
    node.change(conversation, Change::Close { reason: None })
        .await;
    assert!(matches!(
        ann.next().await,
        Some(ServerFrame::Message { .. })
    ));
    assert!(matches!(
        alice.next().await,
        Some(ServerFrame::Message { .. })
    ));
}

#[tokio::test]
async fn a_malformed_frame_gets_an_error_and_the_connection_stays_open() {
    let (addr, _node) = start(WsConfig::default()).await;
    let mut ann = WsClient::connect(addr, "tenant=shop&visitor=ann").await;
    for garbage in [
        "{not json",
        r#"{"type":"fly"}"#,
        r#"{"type":"send"}"#,
        "",
        "null",
        "[1,2,3]",
    ] {
        ann.send_raw(garbage.to_owned()).await;
        match ann.next().await {
            Some(ServerFrame::Error {
                code: ErrorCode::Malformed,
                message,
                ..
            }) => {
                assert!(message.contains("docs/protocol.md"), "{message}");
            }
            other => panic!("expected a malformed-frame error for {garbage:?}, got {other:?}"),
        }
    }
    ann.ping_pong().await;
    // Unknown conversations are errors too, not disconnects.
    ann.send(&ClientFrame::Resume {
        conversation: ConversationId::new(),
        last_seq: Seq::ZERO,
    })
    .await;
    assert!(matches!(
        ann.next().await,
        Some(ServerFrame::Error {
            code: ErrorCode::UnknownConversation,
            ..
        })
    ));
    ann.ping_pong().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection_with_a_reason() {
    let (addr, _node) = start(WsConfig::default()).await;
    let mut ann = WsClient::connect(addr, "tenant=shop&visitor=ann").await;
    let mut bob = WsClient::connect(addr, "tenant=shop&visitor=bob").await;
    ann.send_raw("x".repeat(20 * 1024)).await;
    assert_eq!(
        ann.next().await,
        Some(ServerFrame::Close {
            reason: CloseReason::FrameTooLarge
        })
    );
    assert_eq!(ann.next().await, None, "the socket is closed");
    bob.ping_pong().await;
}

#[tokio::test]
async fn a_flooding_connection_is_rate_limited() {
    let config = WsConfig {
        rate_per_second: 5,
        rate_burst: 10,
        ..WsConfig::default()
    };
    let (addr, _node) = start(config).await;
    let mut ann = WsClient::connect(addr, "tenant=shop&visitor=ann").await;
    for _ in 0..30 {
        ann.send(&ClientFrame::Ping).await;
    }
    let (mut pongs, mut limited) = (0, 0);
    for _ in 0..30 {
        match ann.next().await {
            Some(ServerFrame::Pong) => pongs += 1,
            Some(ServerFrame::Error {
                code: ErrorCode::RateLimited,
                ..
            }) => limited += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        pongs >= 10 && limited >= 10,
        "{pongs} answered, {limited} limited"
    );
}

#[tokio::test]
async fn a_silent_connection_is_closed_as_idle() {
    let config = WsConfig {
        idle_timeout: Duration::from_millis(200),
        ..WsConfig::default()
    };
    let (addr, _node) = start(config).await;
    let mut ann = WsClient::connect(addr, "tenant=shop&visitor=ann").await;
    assert_eq!(
        ann.next().await,
        Some(ServerFrame::Close {
            reason: CloseReason::Idle
        })
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Whatever text a client sends, the server answers with frames or a
    /// reasoned close, and keeps serving a well-behaved neighbour.
    #[test]
    fn arbitrary_frames_never_take_the_server_down(frames in prop::collection::vec(
        prop_oneof![
            any::<String>(),
            "\\{\"type\":\"(send|resume|typing|read|ping)\"[^}]{0,40}\\}",
            Just("x".repeat(17 * 1024)),
        ],
        1..6,
    )) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async {
            let (addr, _node) = start(WsConfig::default()).await;
            let mut fuzzer = WsClient::connect(addr, "tenant=shop&visitor=fuzz").await;
            let mut neighbour = WsClient::connect(addr, "tenant=shop&visitor=calm").await;
            let mut sent = 0;
            for frame in &frames {
                if !fuzzer.try_send_raw(frame.clone()).await {
                    break;
                }
                sent += 1;
            }
            // Each frame gets at most one answer, or the socket closes with a reason.
            let mut closed = false;
            for _ in 0..sent {
                match fuzzer.next().await {
                    Some(ServerFrame::Close { .. }) | None => { closed = true; break; }
                    Some(_) => {}
                }
            }
            if !closed {
                fuzzer.ping_pong().await;
            }
            neighbour.ping_pong().await;
        });
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, .. ProptestConfig::default() })]

    /// The decoder returns a frame or an error for any bytes; it never panics.
    #[test]
    fn the_decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ClientFrame::decode(&bytes, 256);
    }
}
