//! The HTTP layer: every route of the desk in one place, thin handlers
//! over [`ServiceDesk`], the extractors that say who is asking, and the
//! one error type ([`ApiError`]) that turns the desk's errors into statuses.
//!
//! Paths are relative to wherever the host nests the router: under
//! `/support`, the widget is `/support/widget.js` and the console
//! `/support/agent`.

mod agent;
mod assets;
mod auth;
mod error;
mod files;
mod history;
mod ops;
mod visitor;

use axum::routing::{get, post};
use axum::Router;

pub use auth::{AuthAgent, AuthVisitor, ClientIp};
pub use error::ApiError;

use super::ServiceDesk;

/// Every route of the desk.
pub(crate) fn routes<S>(desk: ServiceDesk) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        // The widget and the console.
        .route("/widget.js", get(assets::widget))
        .route("/agent", get(assets::console))
        .route("/assets/chat.js", get(assets::chat))
        .route("/assets/console.js", get(assets::console_js))
        .route("/assets/desk.css", get(assets::css))
        .route("/agent/reports", get(assets::reports))
        .route("/assets/reports.js", get(assets::reports_js))
        .route("/assets/reports.css", get(assets::reports_css))
        .route("/agent/history", get(assets::history))
        .route("/assets/history.js", get(assets::history_js))
        .route("/assets/history.css", get(assets::history_css))
        // Visitors.
        .route("/api/visitor/session", post(visitor::session))
        .route("/api/visitor/conversation", post(visitor::conversation))
        .route("/api/visitor/conversation/close", post(visitor::close))
        .route("/api/visitor/logout", post(visitor::logout))
        .route("/api/visitor/rating", post(visitor::rating))
        .route("/ws/visitor", get(visitor::socket))
        // Agents.
        .route("/api/agent/login", post(agent::login))
        .route("/api/agent/logout", post(agent::logout))
        .route("/api/agent/me", get(agent::me))
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
        .route("/api/agent/reports", get(agent::reports))
        // Learning from past conversations (supervisors).
        // No body limit layer: the handler stops at DeskSettings::max_history_bytes.
        .route("/api/agent/history", post(history::upload))
        .route("/api/agent/history/suggestions", get(history::suggestions))
        .route(
            "/api/agent/history/suggestions/{id}/accept",
            post(history::accept),
        )
        .route(
            "/api/agent/history/suggestions/{id}/reject",
            post(history::reject),
        )
        .route("/ws/agent", get(agent::socket))
        // Files.
        // No body limit layer: the handler streams the body to the
        // backend and stops it at DeskSettings::max_upload_bytes itself.
        .route("/api/upload", post(files::upload))
        .route("/files/{id}", get(files::download))
        // Operations.
        .route("/metrics", get(ops::metrics))
        .route("/healthz", get(ops::healthz))
        .with_state(desk)
}
