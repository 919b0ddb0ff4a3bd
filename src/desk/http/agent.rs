//! The agent side: sign-in, the desk, presence, transfer and close, the
//! bot's decisions and corrections, intent suggestions, the visitor's
//! profile from the shop's systems, and the console socket.

use axum::extract::{OriginalUri, Path, Query, State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use cs_core::router::Presence;
use cs_core::{AgentId, Body, ConversationId, Party, Seq};
use cs_transport::Actor;

use super::auth::{check_origin, prefix_of, AuthAgent, ClientIp, AGENT_COOKIE};
use super::error::ApiError;
use super::visitor::{clear_cookie, limited, session_cookie};
use crate::desk::hooks::share_correction;
use crate::desk::tokens::{unix_now, TokenKind};
use crate::desk::ServiceDesk;

/// What `login` reads.
#[derive(Deserialize)]
pub struct Login {
    agent: String,
    password: String,
}

/// `POST api/agent/login`: the console's sign-in form, checked by the
/// host's [`Identity::sign_in`](crate::desk::Identity::sign_in).
///
/// Past a few failures for one account, or more from one address, each
/// further try waits a doubling backoff (a 429 with `retry_after_ms`). The
/// refusal never says which of login and password was wrong.
pub async fn login(
    State(desk): State<ServiceDesk>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    ClientIp(ip): ClientIp,
    Json(login): Json<Login>,
) -> Result<Response, ApiError> {
    let account = login.agent.trim();
    let limits = &desk.state.limits;
    limits.may_sign_in(account, ip).map_err(limited)?;
    let checked = desk
        .state
        .identity
        .sign_in(account, &login.password)
        .await?
        .filter(|agent| desk.state.directory.agent(agent).is_some());
    limits.signed_in(account, ip, checked.is_some());
    let agent =
        checked.ok_or_else(|| ApiError::unauthenticated("unknown agent or wrong password"))?;
    Ok(signed_in(&desk, &agent, &prefix_of(&original, &uri)))
}

/// `POST api/agent/logout`: signs the agent out everywhere. Every desk
/// token of theirs issued until now is refused, the cookie is cleared and
/// their consoles' sockets are closed. (An agent signed in by the shop's own
/// staff login is signed in again by it: log out of the shop too.)
pub async fn logout(
    State(desk): State<ServiceDesk>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    AuthAgent(me): AuthAgent,
) -> Response {
    let until = unix_now() + desk.state.settings.agent_token_ttl.as_secs();
    desk.state.revocations.retire_subject(
        TokenKind::Agent,
        me.as_str(),
        desk.signer().next_issued(),
        until,
    );
    desk.close_sockets_of(&Party::Agent(me.clone()));
    tracing::info!(agent = %me, "agent signed out");
    let cookie = clear_cookie(AGENT_COOKIE, &prefix_of(&original, &uri));
    (
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "signed_out": true })),
    )
        .into_response()
}

/// A token (and its cookie) for a signed-in agent.
fn signed_in(desk: &ServiceDesk, agent: &AgentId, prefix: &str) -> Response {
    let ttl = desk.state.settings.agent_token_ttl;
    let token = desk.signer().issue(TokenKind::Agent, agent.as_str(), ttl);
    let cookie = session_cookie(AGENT_COOKIE, &token, prefix, ttl);
    (
        [(header::SET_COOKIE, cookie)],
        Json(json!({ "agent": agent, "name": desk.state.agent_name(agent), "token": token })),
    )
        .into_response()
}

/// `GET api/agent/me`: the signed-in agent and a fresh token; with the
/// host's own staff login, this is the console's whole sign-in. A 401 says
/// whether the console may show its sign-in form (`sign_in`).
pub async fn me(
    State(desk): State<ServiceDesk>,
    OriginalUri(original): OriginalUri,
    uri: Uri,
    mut parts: Parts,
) -> Response {
    use axum::extract::FromRequestParts;
    match AuthAgent::from_request_parts(&mut parts, &desk).await {
        Ok(AuthAgent(agent)) => signed_in(&desk, &agent, &prefix_of(&original, &uri)),
        Err(e) => {
            let offers = desk.state.identity.offers_sign_in();
            (
                axum::http::StatusCode::UNAUTHORIZED,
                Json(json!({ "error": e.kind.code(), "message": e.message, "sign_in": offers })),
            )
                .into_response()
        }
    }
}

/// `GET api/agent/desk`: the agents, the open conversations and the bot's intents.
pub async fn desk(
    State(desk): State<ServiceDesk>,
    AuthAgent(me): AuthAgent,
) -> Result<Json<Value>, ApiError> {
    let (agents, chats) = desk.snapshot().await?;
    let intents = desk.bot().map(|bot| bot.intent_names()).unwrap_or_default();
    Ok(Json(json!({
        "me": me,
        "agents": agents,
        "chats": chats,
        "intents": intents,
        "data_hub": desk.state.hub.is_some(),
        "uploads": desk.state.attachments.is_some(),
    })))
}

/// What `presence` reads.
#[derive(Deserialize)]
pub struct PresenceChoice {
    presence: Presence,
}

/// `POST api/agent/presence`: online (takes new visitors) or away (keeps
/// their own, takes no new ones).
pub async fn presence(
    State(desk): State<ServiceDesk>,
    AuthAgent(me): AuthAgent,
    Json(choice): Json<PresenceChoice>,
) -> Result<Json<Value>, ApiError> {
    desk.choose_presence(&me, choice.presence).await?;
    Ok(Json(json!({ "presence": choice.presence })))
}

/// What `transfer` reads.
#[derive(Deserialize)]
pub struct Transfer {
    to: String,
}

/// `POST api/agent/conversations/{id}/transfer`: hand a visitor to a colleague.
pub async fn transfer(
    State(desk): State<ServiceDesk>,
    AuthAgent(me): AuthAgent,
    Path(id): Path<ConversationId>,
    Json(transfer): Json<Transfer>,
) -> Result<Json<Value>, ApiError> {
    let to = AgentId::new(transfer.to.clone())
        .ok()
        .filter(|to| desk.state.directory.agent(to).is_some())
        .ok_or_else(|| ApiError::not_found(format!("no agent {:?}", transfer.to)))?;
    desk.transfer(&me, id, to.clone()).await?;
    Ok(Json(json!({ "transferred": id, "to": to })))
}

/// `POST api/agent/conversations/{id}/close`: the serving agent ends the
/// chat; the conversation's shard checks that `me` serves it.
pub async fn close(
    State(desk): State<ServiceDesk>,
    AuthAgent(me): AuthAgent,
    Path(id): Path<ConversationId>,
) -> Result<Json<Value>, ApiError> {
    let reason = Some(format!("closed by {me}"));
    desk.close(id, Actor::Agent(me), reason).await?;
    Ok(Json(json!({ "closed": id })))
}

/// `GET api/agent/conversations/{id}/bot`: what the bot decided, per question.
pub async fn bot_decisions(
    State(desk): State<ServiceDesk>,
    AuthAgent(_): AuthAgent,
    Path(id): Path<ConversationId>,
) -> Json<Value> {
    let decisions = desk.bot().map(|bot| bot.decisions(id)).unwrap_or_default();
    Json(json!({ "decisions": decisions }))
}

/// What `correct` reads.
#[derive(Deserialize)]
pub struct Correction {
    conversation: ConversationId,
    seq: Seq,
    intent: String,
}

/// `POST api/agent/corrections`: the visitor message at `seq` meant
/// `intent`. The text comes from the store, never from the request, so a
/// console cannot teach the bot words no visitor said.
pub async fn correct(
    State(desk): State<ServiceDesk>,
    AuthAgent(me): AuthAgent,
    Json(correction): Json<Correction>,
) -> Result<Json<Value>, ApiError> {
    let Correction {
        conversation,
        seq,
        intent,
    } = correction;
    let bot = desk
        .bot()
        .ok_or_else(|| ApiError::not_found("this desk has no bot to correct"))?;
    let found = desk
        .store()
        .range(conversation, seq, seq, 1)
        .await?
        .into_iter()
        .next();
    let question = match found {
        Some(message) => match (message.sender, message.body) {
            (Party::Visitor(_), Body::Text { text, .. }) => text,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "message {seq} is not a visitor's text; correct the question, not the answer"
                )))
            }
        },
        None => {
            return Err(ApiError::not_found(format!(
                "no message {seq} in {conversation}"
            )))
        }
    };
    let version = bot
        .correct(conversation, seq, &question, &intent)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    share_correction(
        desk.pool(),
        desk.state.cluster.is_some(),
        conversation,
        seq,
        &question,
        &intent,
    );
    tracing::info!(agent = %me, %conversation, %seq, %intent, "bot corrected");
    Ok(Json(
        json!({ "learned": question, "intent": intent, "version": version }),
    ))
}

/// `GET api/agent/intents`: what a correction may pick.
pub async fn intents(State(desk): State<ServiceDesk>, AuthAgent(_): AuthAgent) -> Json<Value> {
    let intents = desk.bot().map(|bot| bot.intent_names()).unwrap_or_default();
    Json(json!({ "intents": intents }))
}

/// `GET api/agent/suggestions`: groups of handed-off questions that may
/// deserve an intent of their own.
pub async fn suggestions(State(desk): State<ServiceDesk>, AuthAgent(_): AuthAgent) -> Json<Value> {
    let Some(bot) = desk.bot() else {
        return Json(json!({ "questions": 0, "suggestions": [], "note": "this desk has no bot" }));
    };
    let questions = bot.handed_off_questions();
    match bot.suggestions() {
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

/// `GET api/agent/conversations/{id}/profile`: the visitor's profile and
/// orders from the shop's systems, marked partial when one is down.
pub async fn profile(
    State(desk): State<ServiceDesk>,
    AuthAgent(_): AuthAgent,
    Path(id): Path<ConversationId>,
) -> Result<Json<Value>, ApiError> {
    let hub = desk.state.hub.clone().ok_or_else(|| {
        ApiError::not_found("this desk has no data hub; add one with ServiceDeskBuilder::data_hub")
    })?;
    let visitor = match desk.chat(id).await {
        Ok(chat) => chat.visitor,
        Err(_) => desk.store().conversation(id).await?.visitor().clone(),
    };
    let (profile, orders) =
        tokio::join!(hub.user_profile(&visitor), hub.recent_orders(&visitor, 5));
    let failures: Vec<_> = profile
        .failures
        .iter()
        .chain(orders.failures.iter())
        .cloned()
        .collect();
    Ok(Json(json!({
        "visitor": visitor,
        "name": desk.state.visitor_names.get(&visitor).map(|n| n.clone()),
        "profile": profile.value,
        "orders": orders.value,
        "partial": !failures.is_empty(),
        "failures": failures,
    })))
}

/// `GET ws/agent?token=…`: the console socket, as this agent. The agent's
/// conversations join it on assignment; others it may watch by `resume`.
/// Only from a page of an allowed origin (the console's own, by default).
pub async fn socket(
    upgrade: WebSocketUpgrade,
    State(desk): State<ServiceDesk>,
    AuthAgent(me): AuthAgent,
    parts: Parts,
) -> Result<Response, ApiError> {
    check_origin(&desk, &parts)?;
    let tenant = desk.tenant().clone();
    Ok(desk.serve_socket(upgrade, tenant, Party::Agent(me)))
}

/// What `reports` reads: every field optional, so a missing one gets the
/// desk's own 400 that names it.
#[derive(Deserialize)]
pub struct ReportQuery {
    from: Option<String>,
    to: Option<String>,
    agent: Option<String>,
    format: Option<String>,
    table: Option<String>,
}

/// `GET api/agent/reports?from=YYYY-MM-DD&to=YYYY-MM-DD[&agent=ID][&format=csv[&table=top]]`:
/// the days `from..=to` of the shop's zone, as JSON (a
/// [`Report`](crate::desk::Report)) or CSV (the days; with `table=top`,
/// the bot's top intents and handed-off questions). An agent sees their own
/// figures; a supervisor the desk's and everyone's, or one agent's with
/// `agent`. Bad dates, `from` after `to`, or more than a year: 400.
pub async fn reports(
    State(desk): State<ServiceDesk>,
    AuthAgent(me): AuthAgent,
    Query(query): Query<ReportQuery>,
) -> Result<Response, ApiError> {
    use crate::desk::reports::{parse_range, to_csv, top_to_csv, ReportError};
    let csv = match query.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ReportError::BadFormat(other.to_owned()).into()),
    };
    let top = match query.table.as_deref() {
        None | Some("days") => false,
        Some("top") => true,
        Some(other) => return Err(ReportError::BadTable(other.to_owned()).into()),
    };
    let (from, to) = parse_range(query.from.as_deref(), query.to.as_deref())?;
    let scope = desk.state.report_scope(&me, query.agent.as_deref())?;
    let report = desk.report(from, to, &scope).await?;
    if csv {
        let kind = if top { "top-" } else { "" };
        let name = format!("attachment; filename=\"report-{kind}{from}-{to}.csv\"");
        return Ok((
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
                (header::CONTENT_DISPOSITION, name),
            ],
            if top {
                top_to_csv(&report)
            } else {
                to_csv(&report)
            },
        )
            .into_response());
    }
    Ok(Json(report).into_response())
}
