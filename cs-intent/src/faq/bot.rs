//! [`FaqBot`]: an [`IntentAgent`] trained on a [`Faq`], deciding for each
//! question whether to answer, ask which intent was meant, or hand off.

use std::borrow::Cow;
use std::collections::BTreeMap;

use parking_lot::RwLock;

use cs_core::{ConversationId, Seq};

use super::counters::FaqCounters;
use super::error::FaqError;
use super::file::{Faq, FaqAction, FaqIntent};
use super::log::DecisionLog;
use super::messages::MessageKind;
use super::reply::{BotAction, BotDecision, BotReply, ClarifyOption, Outcome};
use crate::agent::{AgentConfig, IntentAgent, Prediction};
use crate::calibration::Decision;
use crate::discovery::{DiscoveryConfig, SuggestedIntent};
use crate::error::IntentError;
use crate::kb::{KbEntry, KbHit};
use crate::model::Example;

/// The hand-off reason when the visitor asked for a person, by words or by click.
const ASKED_FOR_PERSON: &str = "the visitor asked for a person";

/// What a reply decided, before it is logged.
struct Decided<'a> {
    question_seq: Seq,
    question: &'a str,
    intent: String,
    confidence: f32,
}

/// The knowledge-base metadata key holding an entry's language.
const LANGUAGE_KEY: &str = "language";

/// The bot's knobs.
#[derive(Clone, Debug)]
pub struct FaqSettings {
    /// Hand off below this confidence, on top of the calibrated threshold
    /// (default 0: the calibration alone decides).
    pub min_confidence: f32,
    /// [`ModelConfig::oos_weight`](crate::ModelConfig::oos_weight): raise it
    /// to hand off more of the questions the FAQ does not cover.
    pub oos_weight: f32,
    /// [`ModelConfig::answer_threshold`](crate::ModelConfig::answer_threshold),
    /// if set: answer outright only from this confidence on (higher asks
    /// more often; above 1 always asks or hands off). By default the
    /// calibration fit chooses it.
    pub answer_threshold: Option<f32>,
    /// [`ModelConfig::clarify_mass`](crate::ModelConfig::clarify_mass), if
    /// set: below the answer threshold, ask which was meant when the top
    /// options' confidences together reach this (lower asks more often, 0
    /// always asks rather than hands off). By default the fit chooses it.
    pub clarify_mass: Option<f32>,
    /// At most this many clarification options (at least 2 are offered).
    pub max_clarify_options: usize,
}

impl Default for FaqSettings {
    fn default() -> Self {
        FaqSettings {
            min_confidence: 0.0,
            oos_weight: AgentConfig::default().model.oos_weight,
            answer_threshold: None,
            clarify_mass: None,
            max_clarify_options: 3,
        }
    }
}

/// A FAQ bot: trained on a [`Faq`] in about a second, it answers in the
/// question's language, asks which intent was meant when two are close,
/// hands off when it is unsure or the visitor asks for a person, and learns
/// at once from agents' corrections and visitors' clicks.
///
/// It is synchronous and `Send + Sync`: share it as `Arc<FaqBot>` and call
/// [`FaqBot::reply`] from any thread (a prediction takes tens of
/// microseconds, so an async host can call it inline).
///
/// ```
/// use cs_core::{ConversationId, Seq};
/// use cs_intent::faq::{BotAction, Faq, FaqBot, FaqSettings};
///
/// let faq = Faq::from_json(r#"{
///   "greeting": {"en": "Hello! Ask me about opening hours or delivery."},
///   "intents": [
///     {"intent": "opening_hours", "answer": {"en": "We are open 9 to 5, Monday to Friday."},
///      "examples": ["when are you open", "what are your opening hours", "are you open on sunday",
///                   "what time do you close", "opening times please"]},
///     {"intent": "delivery", "answer": {"en": "Delivery takes 2 to 3 working days."},
///      "examples": ["how long does delivery take", "when will my parcel arrive",
///                   "how fast do you ship", "delivery time", "how many days to deliver"]},
///     {"intent": "person", "action": "handoff",
///      "examples": ["talk to a person", "i want a human", "let me speak to an agent",
///                   "real person please", "connect me to customer service"]}
///   ]
/// }"#)?;
/// let bot = FaqBot::train(faq, FaqSettings::default())?;
/// assert_eq!(bot.greeting("en"), Some("Hello! Ask me about opening hours or delivery."));
///
/// let conversation = ConversationId::new();
/// let reply = bot.reply(conversation, Seq::new(1), "how long does delivery take")?;
/// assert_eq!(reply.decision.intent, "delivery");
/// match reply.action {
///     BotAction::Answer { text } => assert_eq!(text, "Delivery takes 2 to 3 working days."),
///     BotAction::Clarify { text, options } => { /* send text, one button per option */ }
///     BotAction::HandOff { notice, reason } => { /* send notice, queue for a person */ }
/// }
/// assert_eq!(bot.decisions(conversation).len(), 1);
/// # Ok::<(), cs_intent::faq::FaqError>(())
/// ```
pub struct FaqBot {
    agent: IntentAgent,
    faq: Faq,
    settings: FaqSettings,
    log: DecisionLog,
    /// Intents taught after training ([`FaqBot::learn_intent`]), by name:
    /// their answers and labels; their examples live in the agent's rows.
    learned: RwLock<BTreeMap<String, FaqIntent>>,
    /// For a host's metrics.
    pub counters: FaqCounters,
}

/// What [`FaqBot::learn_intent`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedIntent {
    /// The agent's model version after the examples were added.
    pub version: u64,
    /// `true` when the name was already an intent (of the FAQ or learned
    /// before): the examples were added to it and its answer kept.
    pub merged: bool,
}

/// Examples kept with a learned intent for its clarification button label.
const LABEL_EXAMPLES: usize = 3;

impl std::fmt::Debug for FaqBot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaqBot")
            .field("intents", &self.faq.intents().len())
            .field("languages", &self.faq.languages())
            .field("settings", &self.settings)
            .field("counters", &self.counters.snapshot())
            .finish()
    }
}

impl FaqBot {
    /// Trains an [`IntentAgent`] on every example of the FAQ and fills its
    /// knowledge base with one entry per intent and language.
    pub fn train(faq: Faq, settings: FaqSettings) -> Result<FaqBot, FaqError> {
        let mut config = AgentConfig::default();
        config.model.oos_weight = settings.oos_weight;
        config.model.answer_threshold = settings.answer_threshold;
        config.model.clarify_mass = settings.clarify_mass;
        config.model.clarify_options = settings.max_clarify_options.max(2);
        let rows: Vec<Example> = faq
            .intents()
            .iter()
            .flat_map(|i| i.examples.iter().map(|e| Example::new(e, &i.name)))
            .collect();
        let agent = IntentAgent::train(rows, config)?;
        agent.kb_replace(knowledge_base(&faq))?;
        Ok(FaqBot {
            agent,
            faq,
            settings,
            log: DecisionLog::default(),
            learned: RwLock::new(BTreeMap::new()),
            counters: FaqCounters::default(),
        })
    }

    /// Reads one visitor message, decides, logs the decision in the
    /// conversation's log and counts it. An empty question is
    /// [`IntentError::EmptyText`].
    ///
    /// When the bot's last decision in the conversation asked which was
    /// meant and the message is one of the options' labels (a quick-reply
    /// tap, or the label typed), it is that pick: handled as
    /// [`FaqBot::choose`] for the question that was asked about.
    pub fn reply(
        &self,
        conversation: ConversationId,
        question_seq: Seq,
        question: &str,
    ) -> Result<BotReply, FaqError> {
        if let Some((asked, intent)) = self.picked_option(conversation, question) {
            return self.choose(conversation, question_seq, &asked, &intent);
        }
        let prediction = self.agent.predict(question)?;
        let language = self.language_of(question);
        let intent = self.intent(&prediction.intent);
        let asked_for_person = intent.is_some_and(|i| i.action == FaqAction::Handoff);
        let unsure = prediction.decision == Decision::HandOff
            || prediction.confidence < self.settings.min_confidence;

        let action = if asked_for_person || unsure {
            FaqCounters::bump(&self.counters.handed_off);
            let reason = if asked_for_person {
                ASKED_FOR_PERSON.to_owned()
            } else {
                format!(
                    "the bot was unsure (best guess {} at {:.0}%)",
                    prediction.intent,
                    prediction.confidence * 100.0
                )
            };
            self.hand_off(language, reason)
        } else if let Some(options) = (prediction.decision == Decision::Clarify)
            .then(|| self.options(&prediction, language))
            .filter(|options| options.len() >= 2)
        {
            FaqCounters::bump(&self.counters.clarified);
            BotAction::Clarify {
                text: self.message(MessageKind::Clarify, language).to_owned(),
                options,
            }
        } else {
            FaqCounters::bump(&self.counters.answered);
            BotAction::Answer {
                text: self.answer(&prediction.intent, prediction.answer.as_ref(), language),
            }
        };
        let intent = prediction.intent.to_string();
        let decided = Decided {
            question_seq,
            question,
            intent,
            confidence: prediction.confidence,
        };
        Ok(self.record(conversation, decided, action))
    }

    /// The visitor clicked a clarification option: the click is a labelled
    /// example, learned at once, and the reply is that intent's answer (or a
    /// hand-off, for a hand-off intent). Logged with confidence 1.0 and
    /// counted in `counters.chosen`.
    pub fn choose(
        &self,
        conversation: ConversationId,
        question_seq: Seq,
        question: &str,
        intent: &str,
    ) -> Result<BotReply, FaqError> {
        let chosen = self.known(intent)?;
        let learned = Example::new(question, &chosen.name);
        self.agent.add_examples([learned.clone()])?;
        FaqCounters::bump(&self.counters.chosen);
        let language = self.language_of(question);
        let action = match chosen.action {
            FaqAction::Handoff => self.hand_off(language, ASKED_FOR_PERSON.to_owned()),
            FaqAction::Answer => BotAction::Answer {
                text: self.answer(&chosen.name, None, language),
            },
        };
        let intent = chosen.name.clone();
        let decided = Decided {
            question_seq,
            question,
            intent,
            confidence: 1.0,
        };
        let mut reply = self.record(conversation, decided, action);
        reply.learned = Some(learned);
        Ok(reply)
    }

    /// Learns a pick made on another node ([`BotReply::learned`]) without
    /// logging or counting it there: that node did both.
    pub fn learn_choice(&self, example: Example) -> Result<u64, FaqError> {
        let known = self.known(&example.intent)?;
        let example = Example::new(example.text, &known.name);
        Ok(self.agent.add_examples([example])?)
    }

    /// The option `text` picks, if the conversation's last decision asked
    /// which was meant: `(the question asked about, the option's intent)`.
    /// A label matches ignoring case and surrounding space.
    fn picked_option(&self, conversation: ConversationId, text: &str) -> Option<(String, String)> {
        let last = self.log.last(conversation)?;
        if last.outcome != Outcome::Clarify {
            return None;
        }
        let text = text.trim().to_lowercase();
        let picked = last
            .options
            .iter()
            .find(|o| o.label.trim().to_lowercase() == text)?;
        Some((last.question, picked.intent.clone()))
    }

    /// Logs a decision in the conversation's log and pairs it with the action.
    fn record(
        &self,
        conversation: ConversationId,
        decided: Decided<'_>,
        action: BotAction,
    ) -> BotReply {
        let options = match &action {
            BotAction::Clarify { options, .. } => options.clone(),
            _ => Vec::new(),
        };
        let decision = BotDecision {
            question_seq: decided.question_seq,
            question: decided.question.to_owned(),
            intent: decided.intent,
            confidence: decided.confidence,
            outcome: action.outcome(),
            corrected_to: None,
            options,
        };
        self.log.record(conversation, decision.clone());
        BotReply {
            decision,
            action,
            learned: None,
        }
    }

    /// An agent says `question` is `intent`: the bot learns it at once
    /// (through [`IntentAgent::add_examples`]), marks the decision in the
    /// log, and counts the correction. Returns the agent's new model version.
    pub fn correct(
        &self,
        conversation: ConversationId,
        question_seq: Seq,
        question: &str,
        intent: &str,
    ) -> Result<u64, FaqError> {
        let version = self.learn(conversation, question_seq, question, intent)?;
        // Counted only where the agent made it, so a sum over nodes counts it once.
        FaqCounters::bump(&self.counters.corrections);
        Ok(version)
    }

    /// [`FaqBot::correct`] without counting: for a correction an agent made
    /// on another node, which that node counted.
    pub fn learn(
        &self,
        conversation: ConversationId,
        question_seq: Seq,
        question: &str,
        intent: &str,
    ) -> Result<u64, FaqError> {
        let known = self.known(intent)?;
        let version = self
            .agent
            .add_examples([Example::new(question, &known.name)])?;
        self.log.mark_corrected(conversation, question_seq, intent);
        Ok(version)
    }

    /// Puts a decision another node's bot made into this node's log, so
    /// every node's console shows the whole conversation.
    pub fn remember(&self, conversation: ConversationId, decision: BotDecision) {
        self.log.record(conversation, decision);
    }

    /// The conversation's last [`DECISIONS_KEPT`](super::DECISIONS_KEPT)
    /// decisions, oldest first.
    pub fn decisions(&self, conversation: ConversationId) -> Vec<BotDecision> {
        self.log.decisions(conversation)
    }

    /// Drops a conversation's log. The log is in memory and kept until
    /// forgotten, so a host calls this when a conversation closes.
    pub fn forget(&self, conversation: ConversationId) {
        self.log.forget(conversation);
    }

    /// The greeting in `language`, else in the FAQ's first language; `None`
    /// when the FAQ has no greeting.
    pub fn greeting(&self, language: &str) -> Option<&str> {
        let greeting = self.faq.greeting();
        greeting
            .get(language)
            .or_else(|| greeting.get(self.faq.first_language()))
            .map(String::as_str)
    }

    /// Which of the FAQ's languages `text` is in (see [`Faq::language_of`]).
    pub fn language_of(&self, text: &str) -> &str {
        self.faq.language_of(text)
    }

    /// The FAQ's languages, the first being the fallback.
    pub fn languages(&self) -> &[String] {
        self.faq.languages()
    }

    /// Every intent, the FAQ's and those learned since, sorted.
    pub fn intent_names(&self) -> Vec<String> {
        let mut names = self.faq.intent_names();
        names.extend(self.learned.read().keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// Teaches the bot an intent it was not trained on, such as an accepted
    /// suggestion from past conversations ([`crate::history`]): `examples`
    /// are learned at once ([`IntentAgent::add_examples`]), `answer` is what
    /// the bot says for it (in the answer's own language) and it joins the
    /// knowledge base. When `name` is already an intent, of the FAQ or
    /// learned before, the examples are added to that intent and its answer
    /// is kept (`merged`).
    ///
    /// Learned intents are in memory: a host that restarts teaches them
    /// again (the desk does, from its history file).
    pub fn learn_intent(
        &self,
        name: &str,
        answer: &str,
        examples: &[String],
    ) -> Result<LearnedIntent, FaqError> {
        let name = name.trim();
        let answer = answer.trim();
        let examples: Vec<String> = examples
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if name.is_empty() {
            return Err(FaqError::Invalid(
                "a learned intent needs a name; give it one such as \"delivery_time\"".to_owned(),
            ));
        }
        if examples.is_empty() {
            return Err(FaqError::Invalid(format!(
                "intent {name:?} needs at least one example question to learn from"
            )));
        }
        let merged = self.intent(name).is_some();
        if !merged && answer.is_empty() {
            return Err(FaqError::Invalid(format!(
                "the new intent {name:?} needs an answer text"
            )));
        }
        let rows: Vec<Example> = examples.iter().map(|e| Example::new(e, name)).collect();
        let version = self.agent.add_examples(rows)?;
        if !merged {
            let language = self.language_of(answer).to_owned();
            let questions: Vec<String> = examples
                .iter()
                .filter(|e| self.language_of(e) == language)
                .cloned()
                .collect();
            if !questions.is_empty() {
                self.agent.kb_upsert(KbEntry {
                    id: format!("{name}.{language}"),
                    questions,
                    answer: answer.to_owned(),
                    intent: Some(name.to_owned()),
                    metadata: BTreeMap::from([(LANGUAGE_KEY.to_owned(), language.clone())]),
                })?;
            }
            let intent = FaqIntent {
                name: name.to_owned(),
                action: FaqAction::Answer,
                answer: BTreeMap::from([(language, answer.to_owned())]),
                examples: examples.into_iter().take(LABEL_EXAMPLES).collect(),
                label: BTreeMap::new(),
            };
            self.learned.write().insert(name.to_owned(), intent);
        }
        Ok(LearnedIntent { version, merged })
    }

    /// Training rows: the FAQ's examples and everything learned since.
    pub fn training_rows(&self) -> usize {
        self.agent.stats().rows
    }

    /// Groups of recent handed-off questions that may deserve an intent.
    pub fn suggestions(&self) -> Result<Vec<SuggestedIntent>, IntentError> {
        self.agent.discover(&DiscoveryConfig::default())
    }

    /// How many handed-off questions discovery has to work with.
    pub fn handed_off_questions(&self) -> usize {
        self.agent.handed_off_questions().len()
    }

    /// The FAQ the bot was trained on.
    pub fn faq(&self) -> &Faq {
        &self.faq
    }

    /// The settings it was trained with.
    pub fn settings(&self) -> &FaqSettings {
        &self.settings
    }

    /// The agent underneath, for hosts that want more (stats, saving, the
    /// knowledge base).
    pub fn agent(&self) -> &IntentAgent {
        &self.agent
    }

    fn known(&self, intent: &str) -> Result<Cow<'_, FaqIntent>, FaqError> {
        self.intent(intent)
            .ok_or_else(|| FaqError::UnknownIntent(intent.to_owned()))
    }

    /// The FAQ's intent, else a learned one (a cheap copy: it keeps only a
    /// few examples).
    fn intent(&self, name: &str) -> Option<Cow<'_, FaqIntent>> {
        match self.faq.intent(name) {
            Some(intent) => Some(Cow::Borrowed(intent)),
            None => self.learned.read().get(name).cloned().map(Cow::Owned),
        }
    }

    fn message(&self, kind: MessageKind, language: &str) -> &str {
        self.faq
            .messages()
            .text(kind, language, self.faq.first_language())
    }

    fn hand_off(&self, language: &str, reason: String) -> BotAction {
        BotAction::HandOff {
            notice: self.message(MessageKind::Handoff, language).to_owned(),
            reason,
        }
    }

    /// The answer for `intent` in `language`: the knowledge base's hit when
    /// it is the intent's entry in that language (a question that matched
    /// none of the intent's entries closely gets any of them, maybe another
    /// language's); else the FAQ's text in that language, its first
    /// language, or any; else, for an intent the FAQ does not have, the
    /// "noted" message.
    fn answer(&self, intent: &str, hit: Option<&KbHit>, language: &str) -> String {
        if let Some(hit) = hit.filter(|hit| {
            hit.entry.intent.as_deref() == Some(intent)
                && hit.entry.metadata.get(LANGUAGE_KEY).map(String::as_str) == Some(language)
        }) {
            return hit.entry.answer.clone();
        }
        let found = self.intent(intent);
        found
            .as_ref()
            .and_then(|i| {
                let t = &i.answer;
                t.get(language)
                    .or_else(|| t.get(self.faq.first_language()))
                    .or_else(|| t.values().next())
            })
            .cloned()
            .unwrap_or_else(|| self.message(MessageKind::Noted, language).to_owned())
    }

    /// The intents the decision rule chose to offer (the top one first),
    /// labelled in the question's language. Two options that would read the
    /// same keep only the first, so a tap always names one intent.
    fn options(&self, prediction: &Prediction, language: &str) -> Vec<ClarifyOption> {
        let mut options: Vec<ClarifyOption> = Vec::new();
        for offered in &prediction.options {
            let option = self.option(&offered.intent, language);
            let same_label = |o: &ClarifyOption| {
                o.label.trim().to_lowercase() == option.label.trim().to_lowercase()
            };
            if !options.iter().any(same_label) {
                options.push(option);
            }
        }
        options
    }

    /// A button for `intent`: the FAQ's label in the language, else the
    /// intent's first example in it, else its name with spaces.
    fn option(&self, intent: &str, language: &str) -> ClarifyOption {
        let faq_intent = self.intent(intent);
        let label = faq_intent
            .and_then(|i| {
                i.label.get(language).cloned().or_else(|| {
                    i.examples
                        .iter()
                        .find(|e| self.language_of(e) == language)
                        .cloned()
                })
            })
            .unwrap_or_else(|| intent.replace('_', " "));
        ClarifyOption {
            intent: intent.to_owned(),
            label,
        }
    }
}

/// One entry per intent and language, holding the intent's examples in that
/// language: so the entry that best matches a question is also the one in
/// the question's language. A language the intent has no examples or no
/// answer text in gets no entry; the answer then falls back to the FAQ.
fn knowledge_base(faq: &Faq) -> Vec<KbEntry> {
    let mut entries = Vec::new();
    for intent in faq.intents() {
        for language in faq.languages() {
            let Some(answer) = intent.answer.get(language) else {
                continue;
            };
            let questions: Vec<String> = intent
                .examples
                .iter()
                .filter(|e| faq.language_of(e) == language)
                .cloned()
                .collect();
            if questions.is_empty() {
                continue;
            }
            entries.push(KbEntry {
                id: format!("{}.{language}", intent.name),
                questions,
                answer: answer.clone(),
                intent: Some(intent.name.clone()),
                metadata: BTreeMap::from([(LANGUAGE_KEY.to_owned(), language.clone())]),
            });
        }
    }
    entries
}
