//! Operations: `/metrics` for Prometheus and `/healthz` for the load balancer.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use cs::core::router::Presence;
use cs::core::store::StoreError;
use cs::core::ConversationId;

use crate::app::App;

/// `GET /metrics`: the message path's counters (`cs_accepted_total`,
/// `cs_degraded_total`, `cs_refused_total`, `cs_persisted_total`, …; msgs/s
/// is `rate(cs_persisted_total[1m])`), plus connections, the queue, agents
/// and the bot's answer and hand-off counts.
///
/// In a cluster, every node reports its own connections, message path and
/// bus (`cs_redis_bus_*`), plus `cs_desk_routing` (1 on the node routing the
/// queue); the desk's gauges (queue, agents, open conversations) come from
/// the routing node only, so summing over nodes counts each once.
pub async fn metrics(State(app): State<App>) -> impl IntoResponse {
    let mut out = app.metrics.snapshot().to_prometheus("cs_");
    let routing = app.desk.routing();
    let mut gauges = vec![
        (
            "connections",
            "Open WebSocket connections on this node.",
            app.pool.len() as u64,
        ),
        (
            "spilled_bytes",
            "Bytes held on the degrade path.",
            app.dispatcher.spilled_bytes() as u64,
        ),
    ];
    if let Some(cluster) = &app.cluster {
        out.push_str(&cluster.bus_metrics("cs_"));
        gauges.push((
            "desk_routing",
            "1 on the node that routes the queue, 0 on the others.",
            u64::from(routing),
        ));
    }
    if routing {
        // Local on the routing node: no request to another node.
        if let Ok((agents, chats)) = app.desk.snapshot().await {
            let online = agents
                .iter()
                .filter(|a| a.presence == Presence::Online)
                .count();
            let queued = chats.iter().filter(|c| c.queue_position.is_some()).count();
            gauges.extend([
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
            ]);
        }
    }
    let bot = &app.bot.counters;
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

/// `GET /healthz`: 200 when the store answers, 503 when it does not, with
/// `{"status", "node", "routing", "router"}`: this node, whether it routes
/// the queue, and which node does (`null` alone, or while a cluster fails
/// over).
pub async fn healthz(State(app): State<App>) -> impl IntoResponse {
    let routing = app.desk.routing();
    let router = match &app.cluster {
        Some(cluster) => cluster.router_node().await.map(|n| n.to_string()),
        None => Some(app.pool.node().to_string()),
    };
    // Any answer about a conversation that does not exist proves the store
    // is reachable; only a failure to answer is unhealthy.
    let (status, state) = match app.stores.messages.last_seq(ConversationId::new()).await {
        Ok(_) | Err(StoreError::UnknownConversation(_)) => (StatusCode::OK, "ok".to_owned()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store unavailable: {e}"),
        ),
    };
    (
        status,
        Json(json!({
            "status": state,
            "node": app.pool.node().to_string(),
            "routing": routing,
            "router": router,
        })),
    )
}
