//! The load generator's endpoints, served with `--loadgen` only:
//!
//! - `GET /pair/{n}`: the conversation of pair `n`, created on first use and
//!   assigned to the pair's agent;
//! - `GET /ws?pair={n}&role=visitor|agent`: a socket as that pair's visitor
//!   or agent.
//!
//! They skip authentication, which is why they are off by default. The
//! pairs live in a tenant of their own, so the desk, the queue and the
//! consoles never see them; everything else (dispatcher, store, hooks) is
//! the server's real path.

use std::sync::Arc;

use axum::extract::{Path, Query, State, WebSocketUpgrade};
use axum::response::Response;
use axum::Json;
use dashmap::DashMap;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::OnceCell;

use cs::core::{AgentId, Conversation, ConversationId, Party, TenantId, Timestamp, VisitorId};
use cs::desk::ApiError;
use cs::transport::{Actor, Change, Command};

use crate::Host;

/// The tenant of the load test's conversations.
const TENANT: &str = "loadgen";

/// Each pair's conversation, made once.
#[derive(Default)]
pub struct Pairs {
    conversations: DashMap<usize, Arc<OnceCell<ConversationId>>>,
}

fn tenant() -> TenantId {
    TenantId::new(TENANT).unwrap_or_else(|e| unreachable!("constant id: {e}"))
}

fn party(pair: usize, role: &str) -> Result<Party, ApiError> {
    let party = match role {
        "visitor" => VisitorId::new(format!("lg-visitor-{pair}")).map(Party::Visitor),
        "agent" => AgentId::new(format!("lg-agent-{pair}")).map(Party::Agent),
        other => {
            return Err(ApiError::bad_request(format!(
                "role {other:?}: use visitor or agent"
            )))
        }
    };
    party.map_err(|e| ApiError::bad_request(e.to_string()))
}

async fn conversation(host: &Host, pairs: &Pairs, pair: usize) -> Result<ConversationId, ApiError> {
    // The cell is cloned out so no map guard is held across the await.
    let cell = Arc::clone(&pairs.conversations.entry(pair).or_default());
    let id = cell
        .get_or_try_init(|| async {
            let Party::Visitor(visitor) = party(pair, "visitor")? else {
                unreachable!("a visitor role gives a visitor")
            };
            let Party::Agent(agent) = party(pair, "agent")? else {
                unreachable!("an agent role gives an agent")
            };
            let conversation = Conversation::open(tenant(), visitor, Timestamp::now());
            let id = conversation.id();
            host.desk.store().create_conversation(&conversation).await?;
            for change in [
                Change::HandOff {
                    reason: "load test".into(),
                },
                Change::Assign(agent),
            ] {
                host.desk
                    .dispatcher()
                    .submit_and_wait(Command::Change {
                        conversation: id,
                        change,
                        by: Actor::Host,
                    })
                    .await
                    .map_err(cs::desk::RoutingError::from)?;
            }
            Ok::<_, ApiError>(id)
        })
        .await?;
    Ok(*id)
}

fn pairs_of(host: &Host) -> Result<Arc<Pairs>, ApiError> {
    host.loadgen
        .clone()
        .ok_or_else(|| ApiError::not_found("start the server with --loadgen"))
}

/// `GET /pair/{n}`.
pub async fn pair(
    State(host): State<Host>,
    Path(pair): Path<usize>,
) -> Result<Json<Value>, ApiError> {
    let pairs = pairs_of(&host)?;
    let id = conversation(&host, &pairs, pair).await?;
    Ok(Json(json!({ "conversation": id })))
}

#[derive(Deserialize)]
pub struct SocketQuery {
    pair: usize,
    role: String,
}

/// `GET /ws?pair={n}&role=visitor|agent`.
pub async fn socket(
    upgrade: WebSocketUpgrade,
    State(host): State<Host>,
    Query(query): Query<SocketQuery>,
) -> Result<Response, ApiError> {
    pairs_of(&host)?;
    let party = party(query.pair, &query.role)?;
    Ok(host.desk.serve_socket(upgrade, tenant(), party))
}
