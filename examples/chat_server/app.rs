//! The state every handler shares, and every route, in one place.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;

use cs::core::TenantId;
use cs::transport::websocket::WsConfig;
use cs::transport::{ConnectionPool, Dispatcher, Metrics};

use crate::auth::Signer;
use crate::bot::Bot;
use crate::cluster::Cluster;
use crate::desk::Desk;
use crate::shop::Shop;
use crate::storage::Stores;
use crate::uploads::Uploads;
use crate::{agent, loadtest, ops, uploads, visitor};

/// Everything a handler may need. Cheap to clone: all shared.
#[derive(Clone)]
pub struct App {
    /// The shop this server serves.
    pub tenant: TenantId,
    /// Signs and checks tokens.
    pub signer: Arc<Signer>,
    /// The conversation store.
    pub stores: Stores,
    /// Every WebSocket connection.
    pub pool: Arc<ConnectionPool>,
    /// The message path's front door.
    pub dispatcher: Dispatcher,
    /// Routing between the bot, the queue and the agents.
    pub desk: Arc<Desk>,
    /// This node's membership of a cluster, with `--bus`.
    pub cluster: Option<Arc<Cluster>>,
    /// The FAQ bot.
    pub bot: Arc<Bot>,
    /// The shop's systems, behind the DataHub.
    pub shop: Arc<Shop>,
    /// Uploaded files.
    pub uploads: Arc<Uploads>,
    /// The message path's counters.
    pub metrics: Arc<Metrics>,
    /// WebSocket limits.
    pub ws: WsConfig,
    /// The load generator's conversations, with `--loadgen` only.
    pub loadgen: Option<Arc<loadtest::Pairs>>,
    /// Every socket task, so shutdown can wait for their close frames.
    pub sockets: tokio_util::task::TaskTracker,
}

impl App {
    /// Upgrades to a chat socket for `party` of `tenant`, which the caller
    /// has verified, and tracks it so shutdown can wait for its close frame.
    pub fn serve_socket(
        self,
        upgrade: axum::extract::WebSocketUpgrade,
        tenant: TenantId,
        party: cs::core::Party,
    ) -> axum::response::Response {
        let App {
            pool,
            dispatcher,
            ws,
            sockets,
            ..
        } = self;
        cs::transport::websocket::upgrade(upgrade, &ws).on_upgrade(move |socket| {
            sockets.track_future(cs::transport::websocket::serve(
                socket, tenant, party, pool, dispatcher, ws,
            ))
        })
    }
}

/// The pages, embedded in the binary: no build step, nothing to install.
mod assets {
    pub const INDEX: &str = include_str!("assets/index.html");
    pub const AGENT: &str = include_str!("assets/agent.html");
    pub const WIDGET_JS: &str = include_str!("assets/widget.js");
    pub const AGENT_JS: &str = include_str!("assets/agent.js");
    pub const CHAT_JS: &str = include_str!("assets/chat.js");
    pub const STYLE: &str = include_str!("assets/style.css");
}

fn page(body: &'static str, content_type: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The pages load only their own scripts and styles: an injected
            // <script> would not run even if escaping failed somewhere.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
}

/// Every route of the server.
pub fn routes(app: App) -> Router {
    let html = "text/html; charset=utf-8";
    let js = "text/javascript; charset=utf-8";
    let upload_limit = usize::try_from(app.uploads.max_bytes()).unwrap_or(usize::MAX);
    let loadgen = app.loadgen.is_some();

    let router = Router::new()
        // Pages.
        .route("/", get(move || async move { page(assets::INDEX, html) }))
        .route(
            "/agent",
            get(move || async move { page(assets::AGENT, html) }),
        )
        .route(
            "/assets/widget.js",
            get(move || async move { page(assets::WIDGET_JS, js) }),
        )
        .route(
            "/assets/agent.js",
            get(move || async move { page(assets::AGENT_JS, js) }),
        )
        .route(
            "/assets/chat.js",
            get(move || async move { page(assets::CHAT_JS, js) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { page(assets::STYLE, "text/css; charset=utf-8") }),
        )
        // Visitors.
        .route("/api/visitor/session", post(visitor::session))
        .route("/api/visitor/conversation", post(visitor::conversation))
        .route("/api/visitor/conversation/close", post(visitor::close))
        .route("/ws/visitor", get(visitor::socket))
        // Agents.
        .route("/api/agent/login", post(agent::login))
        .route("/api/agent/desk", get(agent::desk))
        .route("/api/agent/presence", post(agent::presence))
        .route(
            "/api/agent/conversations/{id}/transfer",
            post(agent::transfer),
        )
        .route("/api/agent/conversations/{id}/close", post(agent::close))
        .route(
            "/api/agent/conversations/{id}/bot",
            get(agent::bot_decisions),
        )
        .route("/api/agent/conversations/{id}/profile", get(agent::profile))
        .route("/api/agent/corrections", post(agent::correct))
        .route("/api/agent/intents", get(agent::intents))
        .route("/api/agent/suggestions", get(agent::suggestions))
        .route("/api/agent/demo/crm", post(agent::crm_outage))
        .route("/ws/agent", get(agent::socket))
        // Files.
        .route(
            "/api/upload",
            post(uploads::upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/files/{name}", get(uploads::download))
        // Operations.
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz));

    let router = if loadgen {
        router
            .route("/pair/{pair}", get(loadtest::pair))
            .route("/ws", get(loadtest::socket))
    } else {
        router
    };
    router.with_state(app)
}
