//! [`Faq`]: the FAQ file, parsed and checked.
//!
//! The file is read leniently and checked strictly: unknown fields are
//! ignored (a newer file still loads in an older bot), but every rule the bot
//! relies on (names, examples, answer texts) is checked here, once, so the
//! bot itself never meets a half-valid FAQ.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::Deserialize;

use super::error::FaqError;
use super::language;
use super::messages::{Messages, Texts};

/// The file as written; [`Faq::from_json`] turns it into a checked [`Faq`].
#[derive(Deserialize)]
struct RawFaq {
    #[serde(default)]
    languages: Option<Vec<String>>,
    #[serde(default)]
    greeting: Texts,
    #[serde(default)]
    messages: RawMessages,
    #[serde(default)]
    intents: Option<Vec<RawIntent>>,
}

#[derive(Deserialize, Default)]
struct RawMessages {
    #[serde(default)]
    handoff: Texts,
    #[serde(default)]
    clarify: Texts,
    #[serde(default)]
    noted: Texts,
}

#[derive(Deserialize)]
struct RawIntent {
    #[serde(default)]
    intent: Option<String>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    answer: Texts,
    #[serde(default)]
    examples: Vec<String>,
    #[serde(default)]
    label: Texts,
}

/// What the bot does when a question is this intent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaqAction {
    /// Answer with the FAQ's text (`"action": "answer"`, the default).
    Answer,
    /// The visitor wants a person: say so and hand off (`"action": "handoff"`).
    Handoff,
}

/// One intent of the FAQ, checked: a name, examples, and for an answer
/// intent at least one answer text.
#[derive(Clone, Debug, PartialEq)]
pub struct FaqIntent {
    /// The intent's name, unique in the FAQ.
    pub name: String,
    /// Answer or hand off.
    pub action: FaqAction,
    /// The answer by language; blank texts are dropped.
    pub answer: Texts,
    /// Questions visitors ask for it, in any of the FAQ's languages.
    pub examples: Vec<String>,
    /// The text of its clarification button by language, where the file gives one.
    pub label: Texts,
}

/// A FAQ file, parsed and checked. Make one with [`Faq::from_json`] or
/// [`Faq::from_path`], and train a bot on it with
/// [`FaqBot::train`](super::FaqBot::train).
///
/// ```
/// use cs_intent::faq::{Faq, FaqError};
///
/// let faq = Faq::from_json(r#"{"intents": [
///     {"intent": "hours", "answer": {"en": "9 to 5."}, "examples": ["when are you open"]},
///     {"intent": "human", "action": "handoff", "examples": ["talk to a person"]}
/// ]}"#)?;
/// assert_eq!(faq.languages(), ["en"]);
/// assert_eq!(faq.intent_names(), ["hours", "human"]);
///
/// let twice = Faq::from_json(r#"{"intents": [
///     {"intent": "hours", "answer": {"en": "9 to 5."}, "examples": ["when are you open"]},
///     {"intent": "hours", "answer": {"en": "9 to 6."}, "examples": ["opening hours"]}
/// ]}"#);
/// assert!(matches!(twice, Err(FaqError::Invalid(why)) if why.contains("\"hours\" appears twice")));
/// # Ok::<(), FaqError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Faq {
    languages: Vec<String>,
    greeting: Texts,
    messages: Messages,
    intents: Vec<FaqIntent>,
    /// Name → index into `intents`; sorted, so names come out sorted.
    by_name: BTreeMap<String, usize>,
}

impl Faq {
    /// Parses and checks FAQ JSON (the format is described in
    /// [`cs_intent::faq`](super)).
    pub fn from_json(text: &str) -> Result<Faq, FaqError> {
        let raw: RawFaq =
            serde_json::from_str(text).map_err(|source| FaqError::Parse { path: None, source })?;
        Faq::check(raw)
    }

    /// Reads, parses and checks a FAQ file; every error names the file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<Faq, FaqError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| FaqError::Read {
            path: path.to_owned(),
            source,
        })?;
        let raw: RawFaq = serde_json::from_str(&text).map_err(|source| FaqError::Parse {
            path: Some(path.to_owned()),
            source,
        })?;
        Faq::check(raw).map_err(|e| match e {
            FaqError::Invalid(why) => FaqError::Invalid(format!("{}: {why}", path.display())),
            other => other,
        })
    }

    fn check(raw: RawFaq) -> Result<Faq, FaqError> {
        let raw_intents = raw.intents.ok_or_else(|| {
            FaqError::Invalid(
                "the FAQ has no \"intents\" list; add one, such as \"intents\": [{\"intent\": \
                 \"order_status\", \"answer\": {\"en\": \"…\"}, \"examples\": [\"where is my order\"]}]"
                    .to_owned(),
            )
        })?;
        if raw_intents.is_empty() {
            return Err(FaqError::Invalid(
                "the FAQ's \"intents\" list is empty; add the intents the bot should know, each with examples"
                    .to_owned(),
            ));
        }
        let mut intents = Vec::with_capacity(raw_intents.len());
        let mut by_name = BTreeMap::new();
        for (index, raw) in raw_intents.into_iter().enumerate() {
            let intent = check_intent(index + 1, raw)?;
            if let Some(first) = by_name.insert(intent.name.clone(), index) {
                return Err(FaqError::Invalid(format!(
                    "intent {:?} appears twice in \"intents\" (numbers {} and {}); merge the two \
                     into one entry or rename one",
                    intent.name,
                    first + 1,
                    index + 1
                )));
            }
            intents.push(intent);
        }
        let languages = match raw.languages {
            Some(listed) => check_languages(listed)?,
            None => languages_of(&intents),
        };
        Ok(Faq {
            languages,
            greeting: drop_blank(raw.greeting),
            messages: Messages {
                handoff: drop_blank(raw.messages.handoff),
                clarify: drop_blank(raw.messages.clarify),
                noted: drop_blank(raw.messages.noted),
            },
            intents,
            by_name,
        })
    }

    /// The FAQ's languages, the first being the fallback for texts missing
    /// in another language.
    pub fn languages(&self) -> &[String] {
        &self.languages
    }

    /// The intents, in the file's order.
    pub fn intents(&self) -> &[FaqIntent] {
        &self.intents
    }

    /// The intent named `name`.
    pub fn intent(&self, name: &str) -> Option<&FaqIntent> {
        self.by_name.get(name).map(|&index| &self.intents[index])
    }

    /// Every intent's name, sorted.
    pub fn intent_names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// The greeting by language (empty when the file has none).
    pub fn greeting(&self) -> &Texts {
        &self.greeting
    }

    /// The bot's own messages as the file gives them (built-in texts fill
    /// the gaps when the bot speaks).
    pub fn messages(&self) -> &Messages {
        &self.messages
    }

    /// Which of the FAQ's languages `text` is in: Chinese characters mean
    /// `zh` when the FAQ has it; anything else is the first language that is
    /// not Chinese, else the first.
    pub fn language_of(&self, text: &str) -> &str {
        language::detect(text, &self.languages)
    }

    /// The FAQ's first language.
    pub(crate) fn first_language(&self) -> &str {
        self.languages.first().map_or("en", String::as_str)
    }
}

/// Checks one intent; `number` counts from 1, as a person reading the file does.
fn check_intent(number: usize, raw: RawIntent) -> Result<FaqIntent, FaqError> {
    let name = raw.intent.map(|n| n.trim().to_owned()).unwrap_or_default();
    if name.is_empty() {
        return Err(FaqError::Invalid(format!(
            "intent number {number} in \"intents\" has no \"intent\" name; give it one, such as \"order_status\""
        )));
    }
    let action = match raw.action.as_deref().map(str::trim) {
        None | Some("answer") => FaqAction::Answer,
        Some("handoff") => FaqAction::Handoff,
        Some(other) => {
            return Err(FaqError::Invalid(format!(
                "intent {name:?}: action {other:?} is not known; use \"answer\" or \"handoff\""
            )))
        }
    };
    if raw.examples.is_empty() {
        return Err(FaqError::Invalid(format!(
            "intent {name:?} has no examples; add an \"examples\" list with the questions visitors ask for it"
        )));
    }
    if let Some(blank) = raw.examples.iter().position(|e| e.trim().is_empty()) {
        return Err(FaqError::Invalid(format!(
            "intent {name:?}: example number {} is empty; write the question or remove it",
            blank + 1
        )));
    }
    let answer = drop_blank(raw.answer);
    if action == FaqAction::Answer && answer.is_empty() {
        return Err(FaqError::Invalid(format!(
            "intent {name:?} answers but has no answer text; add \"answer\": {{\"en\": \"…\"}} \
             (one text per language), or set \"action\": \"handoff\""
        )));
    }
    Ok(FaqIntent {
        name,
        action,
        answer,
        examples: raw.examples,
        label: drop_blank(raw.label),
    })
}

/// The `languages` list as given, without blanks or repeats.
fn check_languages(listed: Vec<String>) -> Result<Vec<String>, FaqError> {
    let mut languages: Vec<String> = Vec::with_capacity(listed.len());
    for code in listed {
        let code = code.trim().to_owned();
        if code.is_empty() {
            return Err(FaqError::Invalid(
                "\"languages\" has an empty code; use codes such as \"en\" and \"zh\"".to_owned(),
            ));
        }
        if !languages.contains(&code) {
            languages.push(code);
        }
    }
    if languages.is_empty() {
        return Err(FaqError::Invalid(
            "\"languages\" is an empty list; list the FAQ's languages, such as [\"en\", \"zh\"], or leave it out"
                .to_owned(),
        ));
    }
    Ok(languages)
}

/// With no `languages` list: the languages the answers are written in, "en"
/// first if present (it is the likeliest fallback a visitor can read), then
/// the others sorted. A FAQ of hand-offs only is English.
fn languages_of(intents: &[FaqIntent]) -> Vec<String> {
    let seen: BTreeSet<&str> = intents
        .iter()
        .flat_map(|i| i.answer.keys().map(String::as_str))
        .collect();
    let mut languages: Vec<String> = Vec::with_capacity(seen.len().max(1));
    if seen.contains("en") || seen.is_empty() {
        languages.push("en".to_owned());
    }
    languages.extend(seen.into_iter().filter(|&l| l != "en").map(str::to_owned));
    languages
}

/// A blank text is no text: the next fallback is used instead.
fn drop_blank(texts: Texts) -> Texts {
    texts
        .into_iter()
        .filter(|(_, text)| !text.trim().is_empty())
        .collect()
}
