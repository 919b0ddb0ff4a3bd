//! Operations: `/metrics` for Prometheus and `/healthz` for the load balancer.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;

use cs::core::router::Presence;
use cs::core::store::StoreError;
use cs::core::ConversationId;

use crate::app::App;

/// `GET /metrics`: the message path's counters (`cs_accepted_total`,
/// `cs_degraded_total`, `cs_refused_total`, `cs_persisted_total`, …; msgs/s
/// is `rate(cs_persisted_total[1m])`), plus connections, the queue, agents
/// and the bot's answer and hand-off counts.
pub async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let mut out = app.metrics.snapshot().to_prometheus("cs_");
    let agents = app.desk.agents();
    let online = agents
        .iter()
        .filter(|a| a.presence == Presence::Online)
        .count();
    let chats = app.desk.chats();
    let queued = chats.iter().filter(|c| c.queue_position.is_some()).count();
    let bot = &app.bot.counters;
    let gauges = [
        (
            "connections",
            "Open WebSocket connections on this node.",
            app.pool.len() as u64,
        ),
        (
            "open_conversations",
            "Conversations not closed.",
            chats.len() as u64,
        ),
        (
            "queue_length",
            "Visitors waiting for an agent.",
            queued as u64,
        ),
        (
            "agents_online",
            "Agents taking new conversations.",
            online as u64,
        ),
        (
            "spilled_bytes",
            "Bytes held on the degrade path.",
            app.dispatcher.spilled_bytes() as u64,
        ),
    ];
    for (name, help, value) in gauges {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP cs_{name} {help}\n# TYPE cs_{name} gauge\ncs_{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP cs_bot_replies_total Visitor questions the bot handled, by outcome.\n# TYPE cs_bot_replies_total counter"
    );
    for (outcome, counter) in [
        ("answer", &bot.answered),
        ("clarify", &bot.clarified),
        ("handoff", &bot.handed_off),
    ] {
        let _ = writeln!(
            out,
            "cs_bot_replies_total{{outcome=\"{outcome}\"}} {}",
            counter.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP cs_bot_corrections_total Bot answers corrected by agents.\n# TYPE cs_bot_corrections_total counter\ncs_bot_corrections_total {}",
        bot.corrections.load(Ordering::Relaxed)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// `GET /healthz`: 200 when the store answers, 503 when it does not.
pub async fn healthz(State(app): State<App>) -> impl IntoResponse {
    // Any answer about a conversation that does not exist proves the store
    // is reachable; only a failure to answer is unhealthy.
    match app.stores.messages.last_seq(ConversationId::new()).await {
        Ok(_) | Err(StoreError::UnknownConversation(_)) => (StatusCode::OK, "ok".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}"),
        ),
    }
}
