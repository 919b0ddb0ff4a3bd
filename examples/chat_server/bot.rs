//! The FAQ bot: an `IntentAgent` trained at start on the bundled retail FAQ
//! (`faq.json`, Chinese and English), answering from its knowledge base,
//! and a message-path hook that asks it about every visitor message while
//! the conversation is with the bot.
//!
//! It answers when it is confident, asks which of two intents was meant
//! when they are close, and hands the visitor to a person when it is unsure
//! or when they ask for one. Agents correct wrong answers from the console;
//! a correction goes through `add_examples` and changes the next answer at
//! once.
//!
//! In a cluster every node trains the same bot at start, and each answers
//! the visitors connected to it. So that they stay the same bot, a node
//! shares its decisions (for every node's console) and its corrections (for
//! every node's model) on the pool's host channel, topic `bot`. A correction
//! lost on the bus leaves that node's model one example behind; the console
//! shows which node's decisions it reads.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use cs::core::{Body, Conversation, ConversationId, Message, Party, Seq, StateKind};
use cs::intent::discovery::{DiscoveryConfig, SuggestedIntent};
use cs::intent::{AgentConfig, Decision, Example, IntentAgent, IntentError, KbEntry};
use cs::transport::{ConnectionPool, Hook, HookAction, HookContext, HookError};

/// The host-channel topic the nodes' bots share decisions and corrections on.
const BOT_TOPIC: &str = "bot";

/// The bundled FAQ, embedded in the binary.
const BUNDLED_FAQ: &str = include_str!("faq.json");

/// Decisions kept per conversation for the console.
const DECISIONS_KEPT: usize = 50;

/// The FAQ file's shape.
#[derive(Deserialize)]
struct Faq {
    intents: Vec<FaqIntent>,
}

#[derive(Deserialize)]
struct FaqIntent {
    intent: String,
    action: FaqAction,
    answer: Answers,
    examples: Vec<String>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum FaqAction {
    /// Answer with the FAQ's text.
    Answer,
    /// The visitor asked for a person: say so, and hand off.
    Handoff,
}

#[derive(Deserialize, Clone)]
struct Answers {
    en: String,
    zh: String,
}

/// Bot knobs from the command line.
#[derive(Clone, Debug)]
pub struct BotSettings {
    /// Hand off below this confidence, on top of the calibrated threshold.
    pub min_confidence: f32,
    /// `ModelConfig::oos_weight`.
    pub oos_weight: f32,
    /// `ModelConfig::clarify_ratio`, if set.
    pub clarify_ratio: Option<f32>,
}

/// The bundled FAQ could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// faq.json is not valid.
    #[error("the bundled FAQ is not valid JSON of the expected shape: {0}")]
    Faq(#[from] serde_json::Error),
    /// Training or the knowledge base failed.
    #[error(transparent)]
    Intent(#[from] IntentError),
    /// A correction named an intent the bot does not know.
    #[error("unknown intent {0:?}; pick one of the bot's intents")]
    UnknownIntent(String),
}

/// One thing the bot decided, for the agent console.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BotDecision {
    /// The visitor message it answered.
    pub question_seq: Seq,
    /// Its text.
    pub question: String,
    /// The intent it chose.
    pub intent: String,
    /// How sure it was.
    pub confidence: f32,
    /// `answer`, `clarify` or `handoff`.
    pub outcome: String,
    /// The intent an agent said was right, if one corrected it.
    pub corrected_to: Option<String>,
}

/// What the bot says and does about one question.
pub struct Reply {
    /// The decision, as logged.
    pub decision: BotDecision,
    /// What the hook asks the message path to do.
    pub actions: Vec<HookAction>,
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct BotCounters {
    /// Questions answered from the FAQ.
    pub answered: AtomicU64,
    /// Questions answered with "did you mean …".
    pub clarified: AtomicU64,
    /// Questions handed to a person.
    pub handed_off: AtomicU64,
    /// Corrections made by agents.
    pub corrections: AtomicU64,
}

/// The trained bot.
pub struct Bot {
    agent: IntentAgent,
    intents: BTreeMap<String, FaqIntent>,
    settings: BotSettings,
    rows: usize,
    decisions: DashMap<ConversationId, VecDeque<BotDecision>>,
    /// In a cluster: where decisions and corrections are shared.
    shared_through: OnceLock<Arc<ConnectionPool>>,
    /// For `/metrics`.
    pub counters: BotCounters,
}

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
}

impl Bot {
    /// Trains on the bundled FAQ and loads its answers into the knowledge base.
    pub fn train_bundled(settings: BotSettings) -> Result<Bot, BotError> {
        Self::train(BUNDLED_FAQ, settings)
    }

    fn train(faq: &str, settings: BotSettings) -> Result<Bot, BotError> {
        let faq: Faq = serde_json::from_str(faq)?;
        let mut config = AgentConfig::default();
        config.model.oos_weight = settings.oos_weight;
        if let Some(ratio) = settings.clarify_ratio {
            config.model.clarify_ratio = ratio;
        }
        let rows: Vec<Example> = faq
            .intents
            .iter()
            .flat_map(|i| {
                i.examples
                    .iter()
                    .map(|e| Example::new(e.clone(), i.intent.clone()))
            })
            .collect();
        let row_count = rows.len();
        let agent = IntentAgent::train(rows, config)?;
        // One knowledge-base entry per intent and language, so the entry that
        // best matches a question is also the one in the question's language.
        let mut entries = Vec::new();
        for intent in &faq.intents {
            for (language, answer) in [("en", &intent.answer.en), ("zh", &intent.answer.zh)] {
                let questions: Vec<String> = intent
                    .examples
                    .iter()
                    .filter(|q| is_chinese(q) == (language == "zh"))
                    .cloned()
                    .collect();
                if questions.is_empty() {
                    continue;
                }
                entries.push(KbEntry {
                    id: format!("{}.{language}", intent.intent),
                    questions,
                    answer: answer.clone(),
                    intent: Some(intent.intent.clone()),
                    metadata: BTreeMap::from([("language".to_owned(), language.to_owned())]),
                });
            }
        }
        agent.kb_replace(entries)?;
        Ok(Bot {
            agent,
            intents: faq
                .intents
                .into_iter()
                .map(|i| (i.intent.clone(), i))
                .collect(),
            settings,
            rows: row_count,
            decisions: DashMap::new(),
            shared_through: OnceLock::new(),
            counters: BotCounters::default(),
        })
    }

    /// Every intent the bot knows, sorted.
    pub fn intent_names(&self) -> Vec<String> {
        self.intents.keys().cloned().collect()
    }

    /// Training rows, including corrections since.
    pub fn training_rows(&self) -> usize {
        self.rows
    }

    /// Reads one visitor question and decides.
    pub fn reply(&self, question_seq: Seq, question: &str) -> Result<Reply, IntentError> {
        let prediction = self.agent.predict(question)?;
        let chinese = is_chinese(question);
        let faq = self.intents.get(&*prediction.intent);
        let asked_for_person = faq.is_some_and(|f| f.action == FaqAction::Handoff);
        let unsure = prediction.decision == Decision::HandOff
            || prediction.confidence < self.settings.min_confidence;

        let mut decision = BotDecision {
            question_seq,
            question: question.to_owned(),
            intent: prediction.intent.to_string(),
            confidence: prediction.confidence,
            outcome: "answer".to_owned(),
            corrected_to: None,
        };
        let actions = if asked_for_person || unsure {
            decision.outcome = "handoff".to_owned();
            self.counters.handed_off.fetch_add(1, Ordering::Relaxed);
            let reason = if asked_for_person {
                "the visitor asked for a person".to_owned()
            } else {
                format!(
                    "the bot was unsure (best guess {} at {:.0}%)",
                    prediction.intent,
                    prediction.confidence * 100.0
                )
            };
            let notice = if chinese {
                "这个问题我需要请同事来帮您，正在为您转接人工客服，请稍候。"
            } else {
                "Let me get a person to help you with that. You are in the queue; please hold on."
            };
            vec![
                HookAction::Reply(Body::text(notice)),
                HookAction::HandOff { reason },
            ]
        } else if prediction.decision == Decision::Clarify && !prediction.alternatives.is_empty() {
            decision.outcome = "clarify".to_owned();
            self.counters.clarified.fetch_add(1, Ordering::Relaxed);
            let first = self.label(&prediction.intent, chinese);
            let second = self.label(&prediction.alternatives[0].intent, chinese);
            let text = if chinese {
                format!("我想确认一下：您是想问「{first}」还是「{second}」？也可以输入“转人工”联系客服。")
            } else {
                format!("Just to be sure: do you mean \"{first}\" or \"{second}\"? You can also type \"agent\" to talk to a person.")
            };
            vec![HookAction::Reply(Body::text(text))]
        } else {
            self.counters.answered.fetch_add(1, Ordering::Relaxed);
            let language = if chinese { "zh" } else { "en" };
            let answer = match (&prediction.answer, faq) {
                // The knowledge base's best entry for the intent, when it is
                // in the question's language: a question that matched none
                // of the intent's entries gets any of them, maybe the other
                // language's (a corrected question, typically).
                (Some(hit), _)
                    if hit.entry.intent.as_deref() == Some(&*prediction.intent)
                        && hit.entry.metadata.get("language").map(String::as_str)
                            == Some(language) =>
                {
                    hit.entry.answer.clone()
                }
                (_, Some(faq)) if chinese => faq.answer.zh.clone(),
                (_, Some(faq)) => faq.answer.en.clone(),
                (_, None) => {
                    // An intent an agent taught that the FAQ has no answer for.
                    if chinese {
                        "收到，我已经记下您的问题，客服同事会尽快跟进。".to_owned()
                    } else {
                        "Got it; I've noted your question and a colleague will follow up."
                            .to_owned()
                    }
                }
            };
            vec![HookAction::Reply(Body::text(answer))]
        };
        Ok(Reply { decision, actions })
    }

    /// A short human label for an intent: its first example in the language.
    fn label(&self, intent: &str, chinese: bool) -> String {
        self.intents
            .get(intent)
            .and_then(|f| f.examples.iter().find(|e| is_chinese(e) == chinese))
            .cloned()
            .unwrap_or_else(|| intent.replace('_', " "))
    }

    /// Records a decision of this node's bot, and shares it in a cluster.
    fn log(&self, conversation: ConversationId, decision: BotDecision) {
        self.share(&BotWire::Decision {
            conversation,
            decision: decision.clone(),
        });
        self.remember(conversation, decision);
    }

    fn remember(&self, conversation: ConversationId, decision: BotDecision) {
        let mut log = self.decisions.entry(conversation).or_default();
        if log.len() == DECISIONS_KEPT {
            log.pop_front();
        }
        log.push_back(decision);
    }

    /// The bot's recent decisions in a conversation, oldest first.
    pub fn decisions(&self, conversation: ConversationId) -> Vec<BotDecision> {
        self.decisions
            .get(&conversation)
            .map(|log| log.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// An agent says `question` is `intent`: the bot learns it at once.
    pub fn correct(
        &self,
        conversation: ConversationId,
        question_seq: Seq,
        question: &str,
        intent: &str,
    ) -> Result<u64, BotError> {
        let version = self.learn(conversation, question_seq, question, intent)?;
        // Counted where the agent made it, so a sum over nodes counts it once.
        self.counters.corrections.fetch_add(1, Ordering::Relaxed);
        self.share(&BotWire::Correction {
            conversation,
            question_seq,
            question: question.to_owned(),
            intent: intent.to_owned(),
        });
        Ok(version)
    }

    fn learn(
        &self,
        conversation: ConversationId,
        question_seq: Seq,
        question: &str,
        intent: &str,
    ) -> Result<u64, BotError> {
        if !self.intents.contains_key(intent) {
            return Err(BotError::UnknownIntent(intent.to_owned()));
        }
        let version = self
            .agent
            .add_examples([Example::new(question.to_owned(), intent.to_owned())])?;
        if let Some(mut log) = self.decisions.get_mut(&conversation) {
            for decision in log.iter_mut().filter(|d| d.question_seq == question_seq) {
                decision.corrected_to = Some(intent.to_owned());
            }
        }
        Ok(version)
    }

    /// Shares this bot's decisions and corrections with the other nodes'
    /// bots through `pool`'s bus, and applies theirs, until `shutdown`.
    pub fn share_through(
        self: &Arc<Self>,
        pool: Arc<ConnectionPool>,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        let mut heard = pool.host_messages();
        let _ = self.shared_through.set(pool);
        let bot = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    message = heard.recv() => message,
                };
                match message {
                    Ok(message) if &*message.topic == BOT_TOPIC => {
                        bot.apply(&message.payload);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(missed, "missed other nodes' bot decisions and corrections");
                    }
                    Err(RecvError::Closed) => break,
                }
            }
        })
    }

    fn share(&self, wire: &BotWire) {
        let Some(pool) = self.shared_through.get() else {
            return;
        };
        match serde_json::to_vec(wire) {
            Ok(payload) => pool.publish_host(BOT_TOPIC, Bytes::from(payload)),
            Err(e) => tracing::error!(error = %e, "could not encode a bot message"),
        }
    }

    /// Another node's decision or correction.
    fn apply(&self, payload: &[u8]) {
        match serde_json::from_slice(payload) {
            Ok(BotWire::Decision {
                conversation,
                decision,
            }) => self.remember(conversation, decision),
            Ok(BotWire::Correction {
                conversation,
                question_seq,
                question,
                intent,
            }) => {
                if let Err(e) = self.learn(conversation, question_seq, &question, &intent) {
                    tracing::warn!(error = %e, "could not apply another node's correction");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "unreadable bot message from another node; are all nodes the same version?");
            }
        }
    }

    /// Groups of recent handed-off questions that may deserve an intent.
    pub fn suggestions(&self) -> Result<Vec<SuggestedIntent>, IntentError> {
        self.agent.discover(&DiscoveryConfig::default())
    }

    /// How many handed-off questions discovery has to work with.
    pub fn handed_off_questions(&self) -> usize {
        self.agent.handed_off_questions().len()
    }
}

/// Whether the text has Chinese characters, which picks the answer's language.
fn is_chinese(text: &str) -> bool {
    text.chars()
        .any(|c| matches!(c, '\u{4e00}'..='\u{9fff}' | '\u{3400}'..='\u{4dbf}'))
}

/// The bot on the message path.
pub struct BotHook {
    bot: Arc<Bot>,
}

impl BotHook {
    /// A hook asking `bot`.
    pub fn new(bot: Arc<Bot>) -> Self {
        Self { bot }
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
    }

    async fn on_message(&self, context: HookContext) -> Result<Vec<HookAction>, HookError> {
        let Body::Text { text } = &context.message.body else {
            return Ok(Vec::new());
        };
        // Prediction is ~15 µs of CPU: cheaper inline than a blocking-pool hop.
        let reply = self.bot.reply(context.message.seq, text)?;
        self.bot.log(context.message.conversation, reply.decision);
        Ok(reply.actions)
    }
}
