//! Operations: `metrics` for Prometheus and `healthz` for the load balancer.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use sha2::{Digest, Sha256};

use cs_core::router::Presence;
use cs_core::store::StoreError;
use cs_core::ConversationId;

use super::error::ApiError;
use crate::desk::ServiceDesk;

/// `GET metrics`: the message path's counters (`cs_accepted_total`,
/// `cs_persisted_total`, …; msgs/s is `rate(cs_persisted_total[1m])`),
/// connections, the queue, agents, console traffic and the bot's outcomes.
///
/// In a cluster every node reports its own connections, message path and
/// bus (`cs_redis_bus_*`), plus `cs_desk_routing` (1 on the node routing
/// the queue); the desk's gauges come from the routing node only, so
/// summing over nodes counts each once.
///
/// With [`DeskSettings::metrics_token`](crate::desk::DeskSettings::metrics_token)
/// set, only a request bearing it is answered.
pub async fn metrics(
    State(desk): State<ServiceDesk>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(expected) = &desk.state.settings.metrics_token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        // Digests compared, so the time taken says nothing about the token's bytes.
        if Sha256::digest(given.as_bytes()) != Sha256::digest(expected.as_bytes()) {
            return Err(ApiError::unauthenticated(
                "metrics need `Authorization: Bearer <metrics token>`",
            ));
        }
    }
    let state = &desk.state;
    let mut out = state.metrics.snapshot().to_prometheus("cs_");
    let routing = desk.routing();
    let mut gauges = vec![
        (
            "connections",
            "Open WebSocket connections on this node.",
            "gauge",
            state.pool.len() as u64,
        ),
        (
            "spilled_bytes",
            "Bytes held on the degrade path.",
            "gauge",
            state.dispatcher.spilled_bytes() as u64,
        ),
        (
            "console_frames_total",
            "Desk frames sent to the agents' consoles.",
            "counter",
            state.consoles.frames.load(Ordering::Relaxed),
        ),
        (
            "console_bytes_total",
            "Bytes of desk frames sent to each console.",
            "counter",
            state.consoles.bytes.load(Ordering::Relaxed),
        ),
        (
            "http_connections",
            "HTTP connections open now, WebSockets included (when the desk serves).",
            "gauge",
            state.serve_stats.open.load(Ordering::Relaxed),
        ),
        (
            "http_connections_accepted_total",
            "HTTP connections accepted.",
            "counter",
            state.serve_stats.accepted.load(Ordering::Relaxed),
        ),
        (
            "http_connections_refused_total",
            "HTTP connections closed at once: over the per-address or the total cap.",
            "counter",
            state.serve_stats.refused.load(Ordering::Relaxed),
        ),
    ];
    #[cfg(feature = "redis")]
    if let Some(cluster) = &state.cluster {
        out.push_str(&cluster.bus_metrics("cs_"));
        gauges.push((
            "desk_routing",
            "1 on the node that routes the queue, 0 on the others.",
            "gauge",
            u64::from(routing),
        ));
    }
    if routing {
        let snapshot = state.routing.router().snapshot(&state.tenant);
        let online = snapshot
            .agents
            .iter()
            .filter(|a| a.presence == Presence::Online)
            .count();
        gauges.extend([
            (
                "open_conversations",
                "Conversations not closed.",
                "gauge",
                state.routing.chats.len() as u64,
            ),
            (
                "queue_length",
                "Visitors waiting for an agent.",
                "gauge",
                snapshot.queue.len() as u64,
            ),
            (
                "agents_online",
                "Agents taking new conversations.",
                "gauge",
                online as u64,
            ),
        ]);
    }
    for (name, help, kind, value) in gauges {
        // Writing to a String cannot fail.
        let _ = writeln!(
            out,
            "# HELP cs_{name} {help}\n# TYPE cs_{name} {kind}\ncs_{name} {value}"
        );
    }
    if routing {
        today_gauges(&desk, &mut out).await;
    }
    if let Some(bot) = desk.bot() {
        let counters = bot.counters.snapshot();
        let _ = writeln!(
            out,
            "# HELP cs_bot_replies_total Visitor questions the bot handled, by outcome.\n# TYPE cs_bot_replies_total counter"
        );
        for (outcome, value) in [
            ("answer", counters.answered),
            ("clarify", counters.clarified),
            ("handoff", counters.handed_off),
        ] {
            let _ = writeln!(out, "cs_bot_replies_total{{outcome=\"{outcome}\"}} {value}");
        }
        let _ = writeln!(
            out,
            "# HELP cs_bot_corrections_total Bot answers corrected by agents.\n# TYPE cs_bot_corrections_total counter\ncs_bot_corrections_total {}",
            counters.corrections
        );
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// The report's measures over today (the shop's zone) as `cs_today_*`
/// gauges: one read of the store's counters. A store that keeps no reports
/// (Redis alone) leaves them out.
async fn today_gauges(desk: &ServiceDesk, out: &mut String) {
    use crate::desk::reports::{ReportScope, Timing};
    let today = desk
        .state
        .settings
        .report_zone
        .day_of(cs_core::Timestamp::now());
    let report = match desk.report(today, today, &ReportScope::Everyone).await {
        Ok(report) => report,
        Err(e) => {
            tracing::debug!(error = %e, "no report gauges");
            return;
        }
    };
    let Some(desk_figures) = report.desk else {
        return;
    };
    let f = &desk_figures.total;
    let mut gauge = |name: &str, help: &str, series: Vec<(String, f64)>| {
        let _ = writeln!(
            out,
            "# HELP cs_today_{name} {help}\n# TYPE cs_today_{name} gauge"
        );
        for (labels, value) in series {
            let _ = writeln!(out, "cs_today_{name}{labels} {value}");
        }
    };
    let one = |v: u64| vec![(String::new(), v as f64)];
    gauge(
        "conversations_opened",
        "Conversations opened today.",
        one(f.opened),
    );
    gauge(
        "conversations_closed",
        "Conversations closed today.",
        one(f.closed),
    );
    gauge(
        "conversations_contained",
        "Conversations closed today that never reached a person.",
        one(f.contained),
    );
    gauge(
        "handoffs",
        "Hand-offs to the human queue today.",
        one(f.handoffs),
    );
    gauge(
        "transfers",
        "Transfers between agents today.",
        one(f.transfers),
    );
    gauge(
        "messages",
        "Messages said today, by party.",
        f.messages
            .iter()
            .map(|(party, n)| (format!("{{party=\"{}\"}}", label(party)), *n as f64))
            .collect(),
    );
    let timing = |t: &Timing| {
        let mut series = Vec::new();
        if let Some(mean) = t.mean_ms {
            series.push(("{stat=\"mean\"}".to_owned(), mean as f64 / 1000.0));
        }
        for (stat, bound) in [("p50_at_most", t.p50_le_ms), ("p90_at_most", t.p90_le_ms)] {
            if let Some(bound) = bound {
                series.push((format!("{{stat=\"{stat}\"}}"), bound as f64 / 1000.0));
            }
        }
        series
    };
    gauge(
        "wait_seconds",
        "Queue to agent today: the mean, and the bucket bounds the median and p90 are at most.",
        timing(&f.wait),
    );
    gauge(
        "first_response_seconds",
        "First queued to first agent message today (as wait_seconds).",
        timing(&f.first_response),
    );
    gauge(
        "resolution_seconds",
        "Opened to closed today (as wait_seconds).",
        timing(&f.resolution),
    );
    gauge("ratings", "Ratings given today.", one(f.ratings.count));
    if let Some(mean) = f.ratings.mean {
        gauge(
            "rating_mean",
            "The mean rating today, 1 to 5.",
            vec![(String::new(), mean)],
        );
    }
    let per_agent = |value: fn(&crate::desk::reports::Figures) -> Option<f64>| {
        report
            .agents
            .iter()
            .filter_map(|a| {
                let labels = format!("{{agent=\"{}\"}}", label(a.agent.as_str()));
                Some((labels, value(&a.total)?))
            })
            .collect::<Vec<_>>()
    };
    gauge(
        "agent_handled",
        "Conversations each agent served, counted at their close today.",
        per_agent(|f| Some(f.handled as f64)),
    );
    gauge(
        "agent_transfers",
        "Conversations each agent transferred away today.",
        per_agent(|f| Some(f.transfers as f64)),
    );
    gauge(
        "agent_first_response_seconds",
        "Each agent's mean time from taking a conversation to their first message, today.",
        per_agent(|f| f.first_response.mean_ms.map(|ms| ms as f64 / 1000.0)),
    );
}

/// A Prometheus label value, escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET healthz`: 200 when the store answers, 503 when it does not, with
/// `{"status", "node", "routing", "router"}`: this node, whether it routes
/// the queue, and which node does (`null` while a cluster fails over).
pub async fn healthz(State(desk): State<ServiceDesk>) -> impl IntoResponse {
    let router = desk.router_node().await.map(|n| n.to_string());
    // Any answer about a conversation that does not exist proves the store
    // is reachable; only a failure to answer is unhealthy.
    let (status, state) = match desk.store().last_seq(ConversationId::new()).await {
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
            "node": desk.node().to_string(),
            "routing": desk.routing(),
            "router": router,
        })),
    )
}
