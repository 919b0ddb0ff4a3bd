//! The desk's two hooks on the message path: the FAQ bot, which answers a
//! visitor while the conversation is with it, and the consoles' previews.
//!
//! In a cluster every node trains the same bot at start and answers the
//! visitors connected to it. So that they stay one bot, a node shares its
//! decisions (for every node's console) and its agents' corrections (for
//! every node's model) on the pool's host channel, topic `bot`. A
//! correction lost on the bus leaves that node's model one example behind.

use std::sync::{Arc, OnceLock, Weak};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;

use cs_core::{Body, Conversation, ConversationId, Message, Party, Seq, StateKind, TenantId};
use cs_intent::faq::{BotAction, BotDecision, FaqBot, Outcome};

use super::reports::BotTally;
use cs_intent::Example;
use cs_transport::{ConnectionPool, Hook, HookAction, HookContext, HookError};

use super::state::DeskState;

/// The host-channel topic the nodes' bots share decisions and corrections on.
const BOT_TOPIC: &str = "bot";

/// What one node's bot tells the others.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum BotWire {
    Decision {
        conversation: ConversationId,
        decision: BotDecision,
    },
    Correction {
        conversation: ConversationId,
        question_seq: Seq,
        question: String,
        intent: String,
    },
    /// A visitor picked a clarification option: a labelled example.
    Learned { example: Example },
}

/// The bot on the message path.
pub(crate) struct BotHook {
    bot: Arc<FaqBot>,
    tenant: TenantId,
    /// In a cluster: where decisions are shared.
    shared_through: OnceLock<Arc<ConnectionPool>>,
    /// Counts this node's decisions for the reports.
    tally: Arc<BotTally>,
}

impl BotHook {
    pub fn new(bot: Arc<FaqBot>, tenant: TenantId, tally: Arc<BotTally>) -> Self {
        Self {
            bot,
            tenant,
            shared_through: OnceLock::new(),
            tally,
        }
    }

    /// Shares this bot's decisions with the other nodes' bots through
    /// `pool`'s bus, and applies theirs, until `desk` shuts down.
    pub fn share_through(self: &Arc<Self>, pool: Arc<ConnectionPool>, desk: &DeskState) {
        let mut heard = pool.host_messages();
        let _ = self.shared_through.set(pool);
        let bot = Arc::clone(&self.bot);
        let shutdown = desk.shutdown.clone();
        desk.keep(tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    message = heard.recv() => message,
                };
                match message {
                    Ok(message) if &*message.topic == BOT_TOPIC => apply(&bot, &message.payload),
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "missed other nodes' bot decisions and corrections");
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        }));
    }

    fn share(&self, wire: &BotWire) {
        share(self.shared_through.get(), wire);
    }
}

fn share(pool: Option<&Arc<ConnectionPool>>, wire: &BotWire) {
    let Some(pool) = pool else { return };
    match serde_json::to_vec(wire) {
        Ok(payload) => pool.publish_host(BOT_TOPIC, Bytes::from(payload)),
        Err(e) => tracing::error!(error = %e, "could not encode a bot message"),
    }
}

/// Another node's decision or correction.
fn apply(bot: &FaqBot, payload: &[u8]) {
    match serde_json::from_slice(payload) {
        Ok(BotWire::Decision {
            conversation,
            decision,
        }) => bot.remember(conversation, decision),
        Ok(BotWire::Correction {
            conversation,
            question_seq,
            question,
            intent,
        }) => {
            if let Err(e) = bot.learn(conversation, question_seq, &question, &intent) {
                tracing::warn!(error = %e, "could not apply another node's correction");
            }
        }
        Ok(BotWire::Learned { example }) => {
            if let Err(e) = bot.learn_choice(example) {
                tracing::warn!(error = %e, "could not learn another node's clarification pick");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "unreadable bot message from another node; are all nodes the same version?");
        }
    }
}

/// Shares an agent's correction made on this node with the other nodes.
pub(crate) fn share_correction(
    pool: &Arc<ConnectionPool>,
    clustered: bool,
    conversation: ConversationId,
    question_seq: Seq,
    question: &str,
    intent: &str,
) {
    if !clustered {
        return;
    }
    share(
        Some(pool),
        &BotWire::Correction {
            conversation,
            question_seq,
            question: question.to_owned(),
            intent: intent.to_owned(),
        },
    );
}

/// What the message path does with the bot's decision.
pub(crate) fn actions_of(action: BotAction) -> Vec<HookAction> {
    match action {
        BotAction::Answer { text } => vec![HookAction::Reply(Body::text(text))],
        BotAction::Clarify { text, options } => {
            // The labels are in the text too, for a client without buttons
            // (an older widget, the console, a transcript); a visitor who
            // types one picks it just as a tap does.
            let quoted: Vec<String> = options.iter().map(|o| format!("“{}”", o.label)).collect();
            let labels = options.into_iter().map(|o| o.label);
            vec![HookAction::Reply(Body::text_with_quick_replies(
                format!("{text} {}", quoted.join(" / ")),
                labels,
            ))]
        }
        BotAction::HandOff { notice, reason } => vec![
            HookAction::Reply(Body::text(notice)),
            HookAction::HandOff { reason },
        ],
    }
}

#[async_trait]
impl Hook for BotHook {
    fn name(&self) -> &str {
        "faq-bot"
    }

    /// Visitor text, while the bot has the conversation: once a person is
    /// on it (or it waits for one), the bot keeps quiet.
    fn wants(&self, message: &Message, conversation: &Conversation) -> bool {
        matches!(message.sender, Party::Visitor(_))
            && matches!(message.body, Body::Text { .. })
            && conversation.state().kind() == StateKind::Bot
            && *conversation.tenant() == self.tenant
    }

    async fn on_message(&self, context: HookContext) -> Result<Vec<HookAction>, HookError> {
        let Body::Text { text, .. } = &context.message.body else {
            return Ok(Vec::new());
        };
        // Prediction is ~15 µs of CPU: cheaper inline than a blocking-pool hop.
        let reply = self
            .bot
            .reply(context.message.conversation, context.message.seq, text)?;
        let (decision, at) = (&reply.decision, context.message.created_at);
        match decision.outcome {
            Outcome::Answer => self.tally.answered(&decision.intent, at),
            Outcome::Handoff => self.tally.handed_off(&decision.question, at),
            Outcome::Clarify => {}
        }
        self.share(&BotWire::Decision {
            conversation: context.message.conversation,
            decision: reply.decision,
        });
        if let Some(example) = reply.learned {
            self.share(&BotWire::Learned { example });
        }
        Ok(actions_of(reply.action))
    }
}

/// Keeps the consoles' previews current: runs for every stored message of
/// the desk's tenant.
pub(crate) struct PreviewHook {
    tenant: TenantId,
    desk: OnceLock<Weak<DeskState>>,
}

impl PreviewHook {
    pub fn new(tenant: TenantId) -> Self {
        Self {
            tenant,
            desk: OnceLock::new(),
        }
    }

    /// Points the hook at the desk (which is built after the dispatcher).
    pub fn attach(&self, desk: &Arc<DeskState>) {
        let _ = self.desk.set(Arc::downgrade(desk));
    }
}

#[async_trait]
impl Hook for PreviewHook {
    fn name(&self) -> &str {
        "desk-preview"
    }

    fn wants(&self, message: &Message, conversation: &Conversation) -> bool {
        !matches!(message.body, Body::Event(_)) && *conversation.tenant() == self.tenant
    }

    async fn on_message(&self, context: HookContext) -> Result<Vec<HookAction>, HookError> {
        if let Some(desk) = self.desk.get().and_then(Weak::upgrade) {
            desk.note_message(&context.message);
        }
        Ok(Vec::new())
    }
}
