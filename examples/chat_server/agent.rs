//! The agent side: sign-in, the desk, presence, transfer and close, the
//! bot's decisions and corrections, intent suggestions, the visitor's
//! profile from the shop's systems, and the console socket.

use axum::extract::{Path, State, WebSocketUpgrade};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use cs::core::router::Presence;
use cs::core::{AgentId, Body, ConversationId, Party, Seq};

use crate::app::App;
use crate::auth::{demo_login, AuthAgent, TokenKind, AGENT_TOKEN_TTL, DEMO_AGENTS};
use crate::error::ApiError;

#[derive(Deserialize)]
pub struct Login {
    agent: String,
    password: String,
}

/// `POST /api/agent/login` with a demo account.
pub async fn login(
    State(app): State<App>,
    Json(login): Json<Login>,
) -> Result<Json<Value>, ApiError> {
    let account = demo_login(&login.agent, &login.password).ok_or_else(|| {
        ApiError::Unauthenticated(
            "unknown agent or wrong password (demo accounts: alice, bob, carol; password demo)"
                .into(),
        )
    })?;
    let token = app
        .signer
        .issue(TokenKind::Agent, account.id, AGENT_TOKEN_TTL);
    Ok(Json(
        json!({ "agent": account.id, "name": account.name, "token": token }),
    ))
}

/// `GET /api/agent/desk`: the agents, the open conversations and the bot's intents.
pub async fn desk(
    State(app): State<App>,
    AuthAgent(me): AuthAgent,
) -> Result<Json<Value>, ApiError> {
    let (agents, chats) = app.desk.snapshot().await?;
    Ok(Json(json!({
        "me": me,
        "agents": agents,
        "chats": chats,
        "intents": app.bot.intent_names(),
    })))
}

#[derive(Deserialize)]
pub struct PresenceChoice {
    presence: Presence,
}

/// `POST /api/agent/presence`: online (takes new visitors) or away (keeps
/// their own, takes no new ones).
pub async fn presence(
    State(app): State<App>,
    AuthAgent(me): AuthAgent,
    Json(choice): Json<PresenceChoice>,
) -> Result<Json<Value>, ApiError> {
    app.desk.choose_presence(&me, choice.presence).await?;
    Ok(Json(json!({ "presence": choice.presence })))
}

#[derive(Deserialize)]
pub struct Transfer {
    to: String,
}

/// `POST /api/agent/conversations/{id}/transfer`: hand a visitor to a colleague.
pub async fn transfer(
    State(app): State<App>,
    AuthAgent(me): AuthAgent,
    Path(id): Path<ConversationId>,
    Json(transfer): Json<Transfer>,
) -> Result<Json<Value>, ApiError> {
    let to = AgentId::new(transfer.to.clone())
        .ok()
        .filter(|to| DEMO_AGENTS.iter().any(|a| a.id == to.as_str()))
        .ok_or_else(|| ApiError::NotFound(format!("no agent {:?}", transfer.to)))?;
    app.desk.transfer(&me, id, to.clone()).await?;
    Ok(Json(json!({ "transferred": id, "to": to })))
}

/// `POST /api/agent/conversations/{id}/close`: the serving agent ends the chat.
pub async fn close(
    State(app): State<App>,
    AuthAgent(me): AuthAgent,
    Path(id): Path<ConversationId>,
) -> Result<Json<Value>, ApiError> {
    let chat = app.desk.chat(id).await?;
    if chat.agent.as_ref() != Some(&me) {
        return Err(ApiError::Forbidden(
            "only the agent serving a conversation may close it".into(),
        ));
    }
    app.desk.close(id, Some(format!("closed by {me}"))).await?;
    Ok(Json(json!({ "closed": id })))
}

/// `GET /api/agent/conversations/{id}/bot`: what the bot decided, per question.
pub async fn bot_decisions(
    State(app): State<App>,
    AuthAgent(_): AuthAgent,
    Path(id): Path<ConversationId>,
) -> Json<Value> {
    Json(json!({ "decisions": app.bot.decisions(id) }))
}

#[derive(Deserialize)]
pub struct Correction {
    conversation: ConversationId,
    seq: Seq,
    intent: String,
}

/// `POST /api/agent/corrections`: the visitor message at `seq` meant
/// `intent`. The text comes from the store, never from the request, so a
/// console cannot teach the bot words no visitor said.
pub async fn correct(
    State(app): State<App>,
    AuthAgent(me): AuthAgent,
    Json(correction): Json<Correction>,
) -> Result<Json<Value>, ApiError> {
    let Correction {
        conversation,
        seq,
        intent,
    } = correction;
    let found = app
        .stores
        .messages
        .range(conversation, seq, seq, 1)
        .await?
        .into_iter()
        .next();
    let question = match found {
        Some(message) => match (message.sender, message.body) {
            (Party::Visitor(_), Body::Text { text }) => text,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "message {seq} is not a visitor's text; correct the question, not the answer"
                )))
            }
        },
        None => {
            return Err(ApiError::NotFound(format!(
                "no message {seq} in {conversation}"
            )))
        }
    };
    let version = app
        .bot
        .correct(conversation, seq, &question, &intent)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    tracing::info!(agent = %me, %conversation, %seq, %intent, "bot corrected");
    Ok(Json(
        json!({ "learned": question, "intent": intent, "version": version }),
    ))
}

/// `GET /api/agent/intents`: what a correction may pick.
pub async fn intents(State(app): State<App>, AuthAgent(_): AuthAgent) -> Json<Value> {
    Json(json!({ "intents": app.bot.intent_names() }))
}

/// `GET /api/agent/suggestions`: groups of handed-off questions that may
/// deserve an intent of their own.
pub async fn suggestions(State(app): State<App>, AuthAgent(_): AuthAgent) -> Json<Value> {
    let questions = app.bot.handed_off_questions();
    match app.bot.suggestions() {
        Ok(groups) => Json(json!({
            "questions": questions,
            "suggestions": groups.iter().map(|g| json!({
                "size": g.members.len(),
                "examples": g.examples,
                "keywords": g.keywords,
                "cohesion": g.cohesion,
            })).collect::<Vec<_>>(),
        })),
        Err(e) => Json(json!({
            "questions": questions,
            "suggestions": [],
            "note": format!("no suggestions yet: {e}"),
        })),
    }
}

/// `GET /api/agent/conversations/{id}/profile`: the visitor's profile and
/// orders from the shop's systems, marked partial when one is down.
pub async fn profile(
    State(app): State<App>,
    AuthAgent(_): AuthAgent,
    Path(id): Path<ConversationId>,
) -> Result<Json<Value>, ApiError> {
    let visitor = match app.desk.chat(id).await {
        Ok(chat) => chat.visitor,
        Err(_) => app
            .stores
            .messages
            .conversation(id)
            .await?
            .visitor()
            .clone(),
    };
    let (profile, orders) = tokio::join!(
        app.shop.hub.user_profile(&visitor),
        app.shop.hub.recent_orders(&visitor, 5)
    );
    let failures: Vec<_> = profile
        .failures
        .iter()
        .chain(orders.failures.iter())
        .cloned()
        .collect();
    Ok(Json(json!({
        "visitor": visitor,
        "profile": profile.value,
        "orders": orders.value,
        "partial": !failures.is_empty(),
        "failures": failures,
    })))
}

#[derive(Deserialize)]
pub struct Outage {
    down: bool,
}

/// `POST /api/agent/demo/crm`: **demo only**, switches a simulated CRM
/// outage on or off, to show partial answers.
pub async fn crm_outage(
    State(app): State<App>,
    AuthAgent(me): AuthAgent,
    Json(outage): Json<Outage>,
) -> Json<Value> {
    app.shop.set_crm_down(outage.down);
    app.shop.hub.clear_cache();
    tracing::info!(agent = %me, down = outage.down, "demo CRM outage switched");
    Json(json!({ "crm_down": outage.down }))
}

/// `GET /ws/agent?token=…`: the console socket, as this agent. The agent's
/// conversations join it on assignment; others it may watch by `resume`.
pub async fn socket(
    upgrade: WebSocketUpgrade,
    State(app): State<App>,
    AuthAgent(me): AuthAgent,
) -> Response {
    let tenant = app.tenant.clone();
    app.serve_socket(upgrade, tenant, Party::Agent(me))
}
