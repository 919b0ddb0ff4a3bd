//! Learning from past conversations: a supervisor uploads a history JSONL,
//! lists the suggested FAQ entries, and accepts (maybe edited) or rejects
//! each (see [`crate::desk::history`]).
//!
//! Supervisors only, every route: what is accepted is what the bot tells
//! every visitor from then on, and the uploaded history holds customers'
//! words. An agent gets a 403 that says so.

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use cs_core::{AgentId, AgentRole};
use cs_intent::history::{HistoryConfig, HistoryError, SuggestionEdit};

use super::auth::AuthAgent;
use super::error::ApiError;
use crate::desk::history::{HistoryDeskError, HistoryReview};
use crate::desk::ServiceDesk;

impl From<HistoryDeskError> for ApiError {
    fn from(e: HistoryDeskError) -> Self {
        let message = e.to_string();
        match e {
            HistoryDeskError::NoBot => ApiError::not_found(message),
            HistoryDeskError::Busy => ApiError::new(crate::desk::ErrorKind::Conflict, message),
            HistoryDeskError::History(HistoryError::UnknownSuggestion(_)) => {
                ApiError::not_found(message)
            }
            HistoryDeskError::History(_) => ApiError::bad_request(message),
            HistoryDeskError::Load { .. } | HistoryDeskError::Save { .. } => {
                ApiError::unavailable(message)
            }
        }
    }
}

/// The desk's review, when `me` is a supervisor and the desk has a bot.
fn review_for(desk: &ServiceDesk, me: &AgentId) -> Result<std::sync::Arc<HistoryReview>, ApiError> {
    let supervisor = desk
        .state
        .directory
        .agent(me)
        .is_some_and(|r| r.role == AgentRole::Supervisor);
    if !supervisor {
        return Err(ApiError::forbidden(
            "learning from history is for supervisors: what is accepted is what the bot tells every visitor",
        ));
    }
    desk.state
        .history
        .clone()
        .ok_or_else(|| HistoryDeskError::NoBot.into())
}

/// Runs CPU-bound review work off the async runtime.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HistoryDeskError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ApiError::unavailable(format!("the history task failed: {e}")))?
        .map_err(ApiError::from)
}

/// What `upload` reads from the query.
#[derive(Deserialize)]
pub struct UploadQuery {
    /// Groups to make (default: the square root of half the questions, at most 50).
    clusters: Option<usize>,
}

/// `POST api/agent/history[?clusters=N]`: the body is a history JSONL
/// (one conversation per line, see [`cs_intent::history`]), at most
/// [`DeskSettings::max_history_bytes`](crate::desk::DeskSettings::max_history_bytes).
/// Its suggestions replace those still pending; the answer counts what was
/// read. A malformed line is a 400 naming it. The request returns when
/// the grouping is done (seconds for thousands of conversations; the log
/// shows the progress of a big one).
pub async fn upload(
    State(desk): State<ServiceDesk>,
    AuthAgent(me): AuthAgent,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let review = review_for(&desk, &me)?;
    let limit = desk.state.settings.max_history_bytes;
    let too_large = || {
        ApiError::too_large(format!(
            "the history is larger than the desk takes ({limit} bytes); split it, or raise DeskSettings::max_history_bytes"
        ))
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
        .await
        .map_err(|_| too_large())?;
    let config = HistoryConfig {
        clusters: query.clusters,
        ..HistoryConfig::default()
    };
    tracing::info!(agent = %me, bytes = bytes.len(), "history upload");
    let summary = blocking(move || review.import(&bytes, &config)).await?;
    Ok(Json(json!({ "imported": summary })))
}

/// `GET api/agent/history/suggestions`: the pending suggestions (largest
/// first, each with its representative questions, keywords, typical
/// answer, size, and every question it would teach), the accepted ones,
/// how many were rejected, the last import's counts, and the bot's intents.
pub async fn suggestions(
    State(desk): State<ServiceDesk>,
    AuthAgent(me): AuthAgent,
) -> Result<Json<Value>, ApiError> {
    let review = review_for(&desk, &me)?;
    let snapshot = review.snapshot();
    Ok(Json(json!({
        "pending": snapshot.pending(),
        "accepted": snapshot.accepted(),
        "rejected": snapshot.rejected(),
        "last_import": snapshot.last_import(),
        "intents": review.bot().intent_names(),
    })))
}

/// `POST api/agent/history/suggestions/{id}/accept`: the body is an edit,
/// each field optional (`{"name": "gift_wrap", "answer": "…", "questions":
/// ["…"]}`; `{}` accepts as suggested). The bot learns it at once; a name
/// that is already an intent merges the questions into it.
pub async fn accept(
    State(desk): State<ServiceDesk>,
    AuthAgent(me): AuthAgent,
    Path(id): Path<u64>,
    Json(edit): Json<SuggestionEdit>,
) -> Result<Json<Value>, ApiError> {
    let review = review_for(&desk, &me)?;
    let accepted = blocking(move || review.accept(id, edit)).await?;
    tracing::info!(agent = %me, suggestion = id, intent = %accepted.name, merged = accepted.merged,
        "suggestion from history accepted");
    Ok(Json(json!({ "accepted": accepted })))
}

/// `POST api/agent/history/suggestions/{id}/reject`: drops the suggestion.
pub async fn reject(
    State(desk): State<ServiceDesk>,
    AuthAgent(me): AuthAgent,
    Path(id): Path<u64>,
) -> Result<Json<Value>, ApiError> {
    let review = review_for(&desk, &me)?;
    let rejected = blocking(move || review.reject(id)).await?;
    tracing::info!(agent = %me, suggestion = id, "suggestion from history rejected");
    Ok(Json(json!({ "rejected": rejected.id })))
}
