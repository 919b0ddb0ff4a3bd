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
use cs::transport::{Change, Command};

use crate::app::App;
use crate::error::ApiError;

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
            return Err(ApiError::BadRequest(format!(
                "role {other:?}: use visitor or agent"
            )))
        }
    };
    party.map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn conversation(app: &App, pairs: &Pairs, pair: usize) -> Result<ConversationId, ApiError> {
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
            app.stores
                .messages
                .create_conversation(&conversation)
                .await?;
            for change in [
                Change::HandOff {
                    reason: "load test".into(),
                },
                Change::Assign(agent),
            ] {
                app.dispatcher
                    .submit_and_wait(Command::Change {
                        conversation: id,
                        change,
                    })
                    .await?;
            }
            Ok::<_, ApiError>(id)
        })
        .await?;
    Ok(*id)
}

fn pairs_of(app: &App) -> Result<Arc<Pairs>, ApiError> {
    app.loadgen
        .clone()
        .ok_or_else(|| ApiError::NotFound("start the server with --loadgen".into()))
}

/// `GET /pair/{n}`.
pub async fn pair(
    State(app): State<App>,
    Path(pair): Path<usize>,
) -> Result<Json<Value>, ApiError> {
    let pairs = pairs_of(&app)?;
    let id = conversation(&app, &pairs, pair).await?;
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
    State(app): State<App>,
    Query(query): Query<SocketQuery>,
) -> Result<Response, ApiError> {
    pairs_of(&app)?;
    let party = party(query.pair, &query.role)?;
    Ok(app.serve_socket(upgrade, tenant(), party))
}
