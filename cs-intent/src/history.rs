//! Learn from past conversations: import a JSONL file of conversations
//! between visitors and agents (no intent labels), group the visitors'
//! questions with [`discovery`](crate::discovery), and suggest one FAQ entry
//! per group with the answer the agents typically gave. A person reviews
//! each suggestion ([`Review`]): accepting one (name, answer and questions
//! may be edited first) teaches it to a [`FaqBot`] at once; rejecting one
//! drops it.
//!
//! # The file
//!
//! One conversation per line, as a JSON object; blank lines are skipped and
//! unknown fields ignored:
//!
//! ```json
//! {"id": "c-1001", "turns": [
//!   {"from": "visitor", "text": "where is my parcel?"},
//!   {"from": "agent", "text": "You can follow it under My Account → Orders."},
//!   {"from": "visitor", "text": "thanks"}]}
//! ```
//!
//! (shown on several lines here; in the file each conversation is one line.)
//!
//! - `turns` is required: a list of `{"from", "text"}` in the order said.
//!   `from` is `"visitor"`, `"agent"`, or `"bot"` (a bot's turns are neither
//!   a question nor an agent's answer, and are skipped). `text` is a non-empty
//!   string. `id` is optional and only used in messages.
//! - A question is a run of consecutive visitor turns (joined by a space);
//!   its answer is the run of agent turns right after it (joined by a line
//!   break). A question no agent answered is counted, not used.
//! - A line that is not such an object is [`HistoryError::Malformed`],
//!   naming its line number (from 1); nothing of the file is used then.
//!
//! # The groups
//!
//! Each answered question becomes its TF-IDF vector with its answer's
//! appended ([`HistoryConfig::answer_weight`]): questions agents answered
//! alike land together even when worded apart. k-means
//! ([`discovery`](crate::discovery)) groups them.
//!
//! # The typical answer
//!
//! For each group of questions, the answer most agents gave, compared after
//! [`normalize`] (case, width and spacing folded). When no answer was given
//! twice (agents wrote each reply afresh), the medoid: the reply most
//! similar, in TF-IDF cosine, to the group's other replies.
//!
//! ```
//! use cs_intent::history::{suggest, History, HistoryConfig};
//!
//! let mut jsonl = String::new();
//! for i in 0..6 {
//!     jsonl += &format!(
//!         "{{\"turns\":[{{\"from\":\"visitor\",\"text\":\"where is my parcel number {i}\"}},\
//!           {{\"from\":\"agent\",\"text\":\"Track it under My Orders.\"}}]}}\n"
//!     );
//!     jsonl += &format!(
//!         "{{\"turns\":[{{\"from\":\"visitor\",\"text\":\"i want a refund for item {i}\"}},\
//!           {{\"from\":\"agent\",\"text\":\"Refunds take 5 days.\"}}]}}\n"
//!     );
//! }
//! let history = History::read(jsonl.as_bytes(), &mut |_| {})?;
//! assert_eq!(history.pairs.len(), 12);
//! let config = HistoryConfig { clusters: Some(2), ..HistoryConfig::default() };
//! let suggestions = suggest(&history, &config, &mut |_| {})?;
//! assert_eq!(suggestions.len(), 2);
//! assert!(suggestions.iter().any(|s| s.answer == "Refunds take 5 days." && s.size == 6));
//! # Ok::<(), cs_intent::history::HistoryError>(())
//! ```

use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use serde::{Deserialize, Serialize};

use ndarray::{concatenate, Axis};

use crate::discovery::{discover_embedded, embed, DiscoveryConfig};
use crate::error::IntentError;
use crate::faq::{FaqBot, FaqError};
use crate::text::normalize;

/// Progress is reported every this many lines while reading.
const PROGRESS_EVERY: usize = 1_000;

/// Answers compared for the medoid at most (the first ones of the group):
/// the comparison is quadratic in their number.
const MEDOID_SAMPLE: usize = 300;

/// Characters of a question or answer kept when comparing (as the
/// classifier's own normalisation).
const COMPARE_CHARS: usize = 2_048;

/// Everything that can go wrong importing history and acting on its
/// suggestions; each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file (or upload) could not be read.
    #[error("cannot read line {line} of the history: {source}")]
    Read {
        /// The line being read, from 1.
        line: usize,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The history file could not be opened.
    #[error("cannot open the history file {path}: {source}")]
    Open {
        /// The file.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A line is not a conversation of the expected shape.
    #[error(
        "line {line} of the history is not a conversation: {reason} (each line must be a JSON object \
         such as {{\"turns\": [{{\"from\": \"visitor\", \"text\": \"…\"}}, {{\"from\": \"agent\", \"text\": \"…\"}}]}}; \
         see cs_intent::history)"
    )]
    Malformed {
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// Too few answered questions to group.
    #[error(
        "the history has {questions} answered visitor questions; at least {needed} are needed to \
         suggest anything (import more conversations, or ask for fewer groups)"
    )]
    TooFewQuestions {
        /// Questions an agent answered.
        questions: usize,
        /// What the grouping needs.
        needed: usize,
    },
    /// Grouping the questions failed.
    #[error(transparent)]
    Discovery(#[from] IntentError),
    /// No pending suggestion has this id.
    #[error("no pending suggestion {0}: it was accepted, rejected or replaced by a newer import; list the suggestions again")]
    UnknownSuggestion(u64),
    /// An edit made the suggestion unusable.
    #[error("{0}")]
    InvalidEdit(String),
    /// The bot refused what it was taught.
    #[error(transparent)]
    Bot(#[from] FaqError),
}

/// One visitor question and the agent's answer to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QuestionAnswer {
    /// The visitor's words.
    pub question: String,
    /// The agent's reply.
    pub answer: String,
}

/// What was read from a history file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct History {
    /// Lines read, blank ones included.
    pub lines: usize,
    /// Conversations (non-blank lines).
    pub conversations: usize,
    /// Every answered question, in file order.
    pub pairs: Vec<QuestionAnswer>,
    /// Questions no agent answered (the conversation ended, or only the bot spoke).
    pub unanswered: usize,
}

/// Where an import or a suggestion run is, for a host to show on a big file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryProgress {
    /// Reading: lines and bytes so far, answered questions found.
    Reading {
        /// Lines read.
        lines: usize,
        /// Bytes read.
        bytes: u64,
        /// Answered questions found.
        questions: usize,
    },
    /// Grouping this many questions into this many groups.
    Grouping {
        /// Questions being grouped.
        questions: usize,
        /// Groups asked for.
        groups: usize,
    },
    /// Done: this many suggestions.
    Done {
        /// Suggestions made.
        suggestions: usize,
    },
}

#[derive(Deserialize)]
struct RawConversation {
    #[serde(default)]
    turns: Option<Vec<RawTurn>>,
}

#[derive(Deserialize)]
struct RawTurn {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

/// Who said a turn.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Speaker {
    Visitor,
    Agent,
    Bot,
}

impl History {
    /// Reads the JSONL format described in [`crate::history`], calling
    /// `progress` every thousand lines and once at the end.
    pub fn read<R: BufRead>(
        mut reader: R,
        progress: &mut dyn FnMut(HistoryProgress),
    ) -> Result<History, HistoryError> {
        let mut history = History::default();
        let mut bytes = 0u64;
        let mut line = String::new();
        loop {
            line.clear();
            let number = history.lines + 1;
            let read = reader
                .read_line(&mut line)
                .map_err(|source| HistoryError::Read {
                    line: number,
                    source,
                })?;
            if read == 0 {
                break;
            }
            history.lines = number;
            bytes += read as u64;
            if !line.trim().is_empty() {
                history.conversation(number, &line)?;
            }
            if number % PROGRESS_EVERY == 0 {
                progress(HistoryProgress::Reading {
                    lines: number,
                    bytes,
                    questions: history.pairs.len(),
                });
            }
        }
        progress(HistoryProgress::Reading {
            lines: history.lines,
            bytes,
            questions: history.pairs.len(),
        });
        Ok(history)
    }

    /// [`History::read`] from a file.
    pub fn from_path(
        path: impl AsRef<Path>,
        progress: &mut dyn FnMut(HistoryProgress),
    ) -> Result<History, HistoryError> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|source| HistoryError::Open {
            path: path.to_owned(),
            source,
        })?;
        History::read(std::io::BufReader::new(file), progress)
    }

    /// Parses one non-blank line and pairs its questions with their answers.
    fn conversation(&mut self, line: usize, text: &str) -> Result<(), HistoryError> {
        let malformed = |reason: String| HistoryError::Malformed { line, reason };
        let raw: RawConversation = serde_json::from_str(text)
            .map_err(|e| malformed(format!("not JSON of that shape ({e})")))?;
        let turns = raw
            .turns
            .ok_or_else(|| malformed("it has no \"turns\" list".to_owned()))?;
        self.conversations += 1;
        let mut question: Vec<String> = Vec::new();
        let mut answer: Vec<String> = Vec::new();
        for (index, turn) in turns.into_iter().enumerate() {
            let turn_number = index + 1;
            let speaker = match turn.from.as_deref() {
                Some("visitor") => Speaker::Visitor,
                Some("agent") => Speaker::Agent,
                Some("bot") => Speaker::Bot,
                Some(other) => {
                    return Err(malformed(format!(
                    "turn {turn_number} is from {other:?}; use \"visitor\", \"agent\" or \"bot\""
                )))
                }
                None => return Err(malformed(format!("turn {turn_number} has no \"from\""))),
            };
            let said = turn.text.unwrap_or_default();
            let said = said.trim();
            if said.is_empty() {
                return Err(malformed(format!("turn {turn_number} has no \"text\"")));
            }
            match speaker {
                Speaker::Visitor => {
                    if !answer.is_empty() {
                        self.pair(&mut question, &mut answer);
                    }
                    question.push(said.to_owned());
                }
                Speaker::Agent if !question.is_empty() => answer.push(said.to_owned()),
                // An agent's opening words, or a bot's turn, answer nothing.
                Speaker::Agent | Speaker::Bot => {}
            }
        }
        if answer.is_empty() {
            self.unanswered += usize::from(!question.is_empty());
        } else {
            self.pair(&mut question, &mut answer);
        }
        Ok(())
    }

    fn pair(&mut self, question: &mut Vec<String>, answer: &mut Vec<String>) {
        self.pairs.push(QuestionAnswer {
            question: question.join(" "),
            answer: answer.join("\n"),
        });
        question.clear();
        answer.clear();
    }
}

/// Knobs of [`suggest`].
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryConfig {
    /// Groups to make; `None` lets [`discovery`](crate::discovery) choose
    /// (`sqrt(n / 2)`, at most 50).
    pub clusters: Option<usize>,
    /// Representative questions per suggestion, most typical first.
    pub representatives: usize,
    /// Keywords per suggestion.
    pub keywords: usize,
    /// Groups smaller than this are not suggested.
    pub min_size: usize,
    /// How much the agent's answer counts, next to the question, in
    /// grouping: each question is grouped by its own TF-IDF vector with the
    /// answer's appended, scaled by this (0: by the questions alone). Two
    /// questions the agents answered alike are likely one FAQ entry, so the
    /// default, 1, weighs the answer as much as the question.
    pub answer_weight: f64,
    /// Distinct questions a suggestion keeps to teach the bot, most typical
    /// first.
    pub max_questions: usize,
    /// The rest of discovery's knobs (its `clusters`, `examples` and
    /// `keywords` are taken from the fields above; `dim` is each half's,
    /// question and answer).
    pub discovery: DiscoveryConfig,
    /// A history of more than this many questions × groups is big: it is
    /// grouped with `big_discovery`'s knobs instead, since a k-means
    /// iteration costs that product times the dimension.
    pub big: usize,
    /// The knobs for a big history: fewer restarts, iterations and
    /// dimensions.
    pub big_discovery: DiscoveryConfig,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            clusters: None,
            representatives: 5,
            keywords: 4,
            min_size: 2,
            max_questions: 500,
            answer_weight: 1.0,
            discovery: DiscoveryConfig::default(),
            big: 200_000,
            // Two k-means runs of at most 30 iterations over 128-dimension
            // halves: discovery's defaults (4 × 200 over 512) took over ten
            // minutes on a 10k-question history of 154 groups.
            big_discovery: DiscoveryConfig {
                dim: 128,
                runs: 2,
                max_iterations: 30,
                ..DiscoveryConfig::default()
            },
        }
    }
}

/// A suggested FAQ entry: a group of visitor questions and the answer
/// agents typically gave them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FaqSuggestion {
    /// Unique within a [`Review`] (0 until one numbers it).
    pub id: u64,
    /// A proposed intent name, from the keywords.
    pub name: String,
    /// The questions closest to the group's centre, most typical first.
    pub representatives: Vec<String>,
    /// Words frequent in this group and rare in the others.
    pub keywords: Vec<String>,
    /// The agents' typical answer (see [`crate::history`]).
    pub answer: String,
    /// How many of the group's replies were this answer (after
    /// normalisation): `size` when every agent said the same, 1 for a
    /// medoid of replies that all differ.
    pub answer_count: usize,
    /// Questions in the group.
    pub size: usize,
    /// Mean cosine similarity of the group's questions to its centre.
    pub cohesion: f32,
    /// The distinct questions the bot learns on acceptance, most typical
    /// first (at most [`HistoryConfig::max_questions`]).
    pub questions: Vec<String>,
}

/// Groups the history's answered questions and suggests one FAQ entry per
/// group of at least [`HistoryConfig::min_size`], largest first.
pub fn suggest(
    history: &History,
    config: &HistoryConfig,
    progress: &mut dyn FnMut(HistoryProgress),
) -> Result<Vec<FaqSuggestion>, HistoryError> {
    let questions: Vec<&str> = history.pairs.iter().map(|p| p.question.as_str()).collect();
    let n = questions.len();
    let groups = config
        .clusters
        .unwrap_or_else(|| ((n as f64 / 2.0).sqrt().round() as usize).clamp(2, 50));
    if n < groups.max(2) {
        return Err(HistoryError::TooFewQuestions {
            questions: n,
            needed: groups.max(2),
        });
    }
    progress(HistoryProgress::Grouping {
        questions: n,
        groups,
    });
    let discovery = DiscoveryConfig {
        clusters: Some(groups),
        examples: config.representatives,
        keywords: config.keywords,
        ..if n.saturating_mul(groups) > config.big {
            config.big_discovery.clone()
        } else {
            config.discovery.clone()
        }
    };
    let mut vectors = embed(&questions, discovery.dim);
    if config.answer_weight > 0.0 {
        let answers: Vec<&str> = history.pairs.iter().map(|p| p.answer.as_str()).collect();
        let answers = embed(&answers, discovery.dim) * config.answer_weight;
        vectors = concatenate(Axis(1), &[vectors.view(), answers.view()]).map_err(|e| {
            IntentError::Discovery {
                questions: n,
                clusters: groups,
                reason: e.to_string(),
            }
        })?;
        // Unit length again, so k-means compares directions as before.
        let scale = 1.0 / (1.0 + config.answer_weight * config.answer_weight).sqrt();
        vectors *= scale;
    }
    let found = discover_embedded(&questions, vectors, &discovery)?;
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut suggestions = Vec::new();
    for group in found {
        if group.members.len() < config.min_size.max(1) {
            continue;
        }
        let answers: Vec<&str> = group
            .members
            .iter()
            .map(|&i| history.pairs[i].answer.as_str())
            .collect();
        let (answer, answer_count) = typical_answer(&answers, discovery.dim);
        let mut seen = std::collections::HashSet::new();
        let learn: Vec<String> = group
            .members
            .iter()
            .map(|&i| history.pairs[i].question.clone())
            .filter(|q| seen.insert(normalize(q, COMPARE_CHARS)))
            .take(config.max_questions.max(1))
            .collect();
        let mut name = proposed_name(&group.keywords);
        let uses = names.entry(name.clone()).or_insert(0);
        *uses += 1;
        if *uses > 1 {
            name = format!("{name}_{uses}");
        }
        suggestions.push(FaqSuggestion {
            id: 0,
            name,
            representatives: group.examples,
            keywords: group.keywords,
            answer: answer.to_owned(),
            answer_count,
            size: group.members.len(),
            cohesion: group.cohesion,
            questions: learn,
        });
    }
    progress(HistoryProgress::Done {
        suggestions: suggestions.len(),
    });
    Ok(suggestions)
}

/// The answer given most often (normalised), with its count; when none
/// was given twice, the medoid of the replies, with count 1.
fn typical_answer<'a>(answers: &[&'a str], dim: usize) -> (&'a str, usize) {
    let mut counts: HashMap<String, (usize, usize)> = HashMap::new();
    for (index, answer) in answers.iter().enumerate() {
        let entry = counts
            .entry(normalize(answer, COMPARE_CHARS))
            .or_insert((0, index));
        entry.0 += 1;
    }
    // Most given; among equals, the one given first (a reply nearer the group's centre).
    let (count, first) = counts
        .values()
        .copied()
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .unwrap_or((0, 0));
    if count >= 2 || answers.len() < 3 {
        return (
            answers.get(first).copied().unwrap_or_default(),
            count.max(1),
        );
    }
    let sample = &answers[..answers.len().min(MEDOID_SAMPLE)];
    let vectors = embed(sample, dim);
    let similarity = vectors.dot(&vectors.t());
    let medoid = (0..sample.len())
        .max_by(|&a, &b| similarity.row(a).sum().total_cmp(&similarity.row(b).sum()))
        .unwrap_or(0);
    (sample[medoid], 1)
}

/// `where_parcel`-style: the keywords joined by `_`, or `suggestion`.
fn proposed_name(keywords: &[String]) -> String {
    let name = keywords
        .iter()
        .take(3)
        .map(|k| k.replace(|c: char| !c.is_alphanumeric(), ""))
        .filter(|k| !k.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    if name.is_empty() {
        "suggestion".to_owned()
    } else {
        name
    }
}

/// A reviewer's changes to a suggestion before accepting it; each field
/// left out keeps the suggestion's own.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SuggestionEdit {
    /// The intent's name. An existing intent's name merges the questions
    /// into it (its answer is kept).
    #[serde(default)]
    pub name: Option<String>,
    /// The answer the bot gives.
    #[serde(default)]
    pub answer: Option<String>,
    /// The questions the bot learns.
    #[serde(default)]
    pub questions: Option<Vec<String>>,
}

/// A suggestion a reviewer accepted, as the bot learned it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AcceptedIntent {
    /// The suggestion it came from.
    pub suggestion: u64,
    /// The intent's name.
    pub name: String,
    /// Its answer (for a merge, the answer the reviewer saw; the bot keeps
    /// the intent's own).
    pub answer: String,
    /// The questions the bot learned.
    pub questions: Vec<String>,
    /// Whether the questions joined an intent that already existed.
    pub merged: bool,
}

/// Counts of the last import, for a reviewer's page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImportSummary {
    /// Lines read.
    pub lines: usize,
    /// Conversations read.
    pub conversations: usize,
    /// Answered questions grouped.
    pub questions: usize,
    /// Questions no agent answered.
    pub unanswered: usize,
    /// Suggestions made.
    pub suggestions: usize,
}

/// The review of suggestions: those pending, those accepted (kept so a
/// restarted host can teach them to its new bot with [`Review::replay`]),
/// and how many were rejected. It is plain data (serde), so a host can
/// save it wherever it keeps state.
///
/// ```
/// use cs_intent::faq::{Faq, FaqBot, FaqSettings};
/// use cs_intent::history::{FaqSuggestion, Review, SuggestionEdit};
///
/// let faq = Faq::from_json(r#"{"intents": [
///   {"intent": "hours", "answer": {"en": "We are open 9 to 5."},
///    "examples": ["when are you open", "opening hours", "what time do you open"]},
///   {"intent": "person", "action": "handoff",
///    "examples": ["talk to a person", "i want a human", "real agent please"]}]}"#)?;
/// let bot = FaqBot::train(faq, FaqSettings::default())?;
/// let mut review = Review::default();
/// review.replace_pending(vec![FaqSuggestion {
///     id: 0, name: "gift_wrap".into(), representatives: vec![], keywords: vec!["gift".into()],
///     answer: "Gift wrapping is free.".into(), answer_count: 3, size: 3, cohesion: 0.8,
///     questions: vec!["can you gift wrap it".into(), "do you do gift wrapping".into(),
///                     "is gift wrap free".into()],
/// }], Default::default());
/// let id = review.pending()[0].id;
/// review.accept(id, SuggestionEdit::default(), &bot)?;
/// assert!(bot.intent_names().contains(&"gift_wrap".to_owned()));
/// assert!(review.pending().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Review {
    next_id: u64,
    pending: Vec<FaqSuggestion>,
    accepted: Vec<AcceptedIntent>,
    rejected: u64,
    last_import: Option<ImportSummary>,
}

impl Review {
    /// The suggestions waiting for a decision, largest first.
    pub fn pending(&self) -> &[FaqSuggestion] {
        &self.pending
    }

    /// The pending suggestion `id`.
    pub fn suggestion(&self, id: u64) -> Option<&FaqSuggestion> {
        self.pending.iter().find(|s| s.id == id)
    }

    /// Every accepted suggestion, in the order accepted.
    pub fn accepted(&self) -> &[AcceptedIntent] {
        &self.accepted
    }

    /// How many suggestions were rejected.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Counts of the last import, if any.
    pub fn last_import(&self) -> Option<&ImportSummary> {
        self.last_import.as_ref()
    }

    /// A new import's suggestions replace those still pending (they came
    /// from an older picture of the history); accepted ones stay. Each gets
    /// a fresh id.
    pub fn replace_pending(&mut self, suggestions: Vec<FaqSuggestion>, summary: ImportSummary) {
        self.pending = suggestions
            .into_iter()
            .map(|mut s| {
                self.next_id += 1;
                s.id = self.next_id;
                s
            })
            .collect();
        self.last_import = Some(summary);
    }

    /// Accepts suggestion `id`, changed by `edit`: `bot` learns it at once
    /// ([`FaqBot::learn_intent`]) and it leaves the pending list. On an
    /// error nothing changes.
    pub fn accept(
        &mut self,
        id: u64,
        edit: SuggestionEdit,
        bot: &FaqBot,
    ) -> Result<AcceptedIntent, HistoryError> {
        let index = self
            .pending
            .iter()
            .position(|s| s.id == id)
            .ok_or(HistoryError::UnknownSuggestion(id))?;
        let suggestion = &self.pending[index];
        let name = edit.name.unwrap_or_else(|| suggestion.name.clone());
        let name = name.trim();
        if name.is_empty() || name.chars().any(char::is_whitespace) {
            return Err(HistoryError::InvalidEdit(format!(
                "intent name {name:?} must be one word (use _ between words), such as \"gift_wrap\""
            )));
        }
        let answer = edit.answer.unwrap_or_else(|| suggestion.answer.clone());
        let questions: Vec<String> = edit
            .questions
            .unwrap_or_else(|| suggestion.questions.clone())
            .into_iter()
            .map(|q| q.trim().to_owned())
            .filter(|q| !q.is_empty())
            .collect();
        if questions.is_empty() {
            return Err(HistoryError::InvalidEdit(
                "keep at least one question for the bot to learn from".to_owned(),
            ));
        }
        let learned = bot.learn_intent(name, &answer, &questions)?;
        let accepted = AcceptedIntent {
            suggestion: id,
            name: name.to_owned(),
            answer: answer.trim().to_owned(),
            questions,
            merged: learned.merged,
        };
        self.pending.remove(index);
        self.accepted.push(accepted.clone());
        Ok(accepted)
    }

    /// Drops suggestion `id` from the pending list.
    pub fn reject(&mut self, id: u64) -> Result<FaqSuggestion, HistoryError> {
        let index = self
            .pending
            .iter()
            .position(|s| s.id == id)
            .ok_or(HistoryError::UnknownSuggestion(id))?;
        self.rejected += 1;
        Ok(self.pending.remove(index))
    }

    /// Teaches every accepted suggestion, in order, to `bot`: for a host
    /// that restarted with a freshly trained bot. Returns how many.
    pub fn replay(&self, bot: &FaqBot) -> Result<usize, HistoryError> {
        for accepted in &self.accepted {
            bot.learn_intent(&accepted.name, &accepted.answer, &accepted.questions)?;
        }
        Ok(self.accepted.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(turns: &[(&str, &str)]) -> String {
        let turns: Vec<_> = turns
            .iter()
            .map(|(from, text)| serde_json::json!({"from": from, "text": text}))
            .collect();
        serde_json::json!({ "turns": turns }).to_string()
    }

    #[test]
    fn reads_questions_and_the_answers_that_follow_them() {
        let text = [
            line(&[
                ("agent", "hello, how can I help?"),
                ("visitor", "where is"),
                ("visitor", "my parcel"),
                ("agent", "It ships today."),
                ("agent", "Tracking follows."),
                ("visitor", "and a refund?"),
                ("bot", "Let me check."),
                ("agent", "Refunds take 5 days."),
                ("visitor", "thanks"),
            ]),
            String::new(),
            line(&[("visitor", "anyone there?")]),
        ]
        .join("\n");
        let mut seen = Vec::new();
        let history = History::read(text.as_bytes(), &mut |p| seen.push(p)).unwrap();
        assert_eq!(history.lines, 3);
        assert_eq!(history.conversations, 2);
        assert_eq!(
            history.pairs,
            vec![
                QuestionAnswer {
                    question: "where is my parcel".into(),
                    answer: "It ships today.\nTracking follows.".into()
                },
                QuestionAnswer {
                    question: "and a refund?".into(),
                    answer: "Refunds take 5 days.".into()
                },
            ]
        );
        assert_eq!(history.unanswered, 2, "\"thanks\" and \"anyone there?\"");
        assert!(matches!(
            seen.last(),
            Some(HistoryProgress::Reading {
                lines: 3,
                questions: 2,
                ..
            })
        ));
    }

    #[test]
    fn a_malformed_line_is_named_by_its_number() {
        let good = line(&[("visitor", "hi"), ("agent", "hello")]);
        let cases = [
            ("{not json", "not JSON"),
            (r#"{"id": "c1"}"#, "no \"turns\""),
            (
                r#"{"turns": [{"from": "customer", "text": "hi"}]}"#,
                "\"customer\"",
            ),
            (
                r#"{"turns": [{"from": "visitor", "text": "  "}]}"#,
                "turn 1 has no \"text\"",
            ),
            (r#"{"turns": [{"text": "hi"}]}"#, "no \"from\""),
            (r#"[1, 2]"#, "not JSON of that shape"),
        ];
        for (bad, why) in cases {
            let text = format!("{good}\n\n{good}\n{bad}\n{good}\n");
            let error = History::read(text.as_bytes(), &mut |_| {}).unwrap_err();
            match &error {
                HistoryError::Malformed { line, reason } => {
                    assert_eq!(*line, 4, "{bad}");
                    assert!(reason.contains(why), "{bad}: {reason}");
                }
                other => panic!("{bad}: {other}"),
            }
            assert!(error.to_string().starts_with("line 4 of the history"));
        }
    }

    #[test]
    fn progress_is_reported_while_reading_a_big_file() {
        let one = line(&[("visitor", "hi"), ("agent", "hello")]);
        let text = vec![one; 2_500].join("\n");
        let mut seen = Vec::new();
        History::read(text.as_bytes(), &mut |p| seen.push(p)).unwrap();
        let lines: Vec<usize> = seen
            .iter()
            .map(|p| match p {
                HistoryProgress::Reading { lines, .. } => *lines,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(lines, [1_000, 2_000, 2_500]);
    }

    #[test]
    fn too_few_questions_is_an_error_that_says_so() {
        let history = History::read(
            line(&[("visitor", "hi"), ("agent", "hello")]).as_bytes(),
            &mut |_| {},
        )
        .unwrap();
        let error = suggest(&history, &HistoryConfig::default(), &mut |_| {}).unwrap_err();
        assert!(matches!(
            error,
            HistoryError::TooFewQuestions { questions: 1, .. }
        ));
    }

    #[test]
    fn the_most_given_answer_wins_and_a_medoid_stands_in_when_all_differ() {
        let answers = [
            "Refunds take 5 days.",
            "refunds take 5 days. ",
            "Ask the shop.",
            "Refunds take five days",
        ];
        assert_eq!(typical_answer(&answers, 256), ("Refunds take 5 days.", 2));
        let all_differ = [
            "your refund arrives within five working days",
            "the refund arrives within five days",
            "please call the bank about it",
            "a refund arrives within a few working days",
        ];
        let (medoid, count) = typical_answer(&all_differ, 256);
        assert_eq!(count, 1);
        assert_ne!(medoid, "please call the bank about it");
        assert!(medoid.contains("refund"));
    }
}
