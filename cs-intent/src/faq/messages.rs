//! The bot's own words: the hand-off notice, the clarification question and
//! the "noted" reply, from the FAQ file where it gives them and built in
//! (English and Chinese) where it does not.

use std::collections::BTreeMap;

/// Texts by language code: `{"en": "…", "zh": "…"}`.
pub type Texts = BTreeMap<String, String>;

/// The `messages` section of a FAQ file: the bot's words that are not
/// answers. A language missing here falls back to the built-in text.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Messages {
    /// Said when handing the visitor to a person.
    pub handoff: Texts,
    /// Asked before the clarification options.
    pub clarify: Texts,
    /// Said for an intent the FAQ has no answer for (one a host taught the
    /// agent directly, for instance).
    pub noted: Texts,
}

/// Which of the bot's own messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MessageKind {
    Handoff,
    Clarify,
    Noted,
}

impl MessageKind {
    /// The built-in text, in English and Chinese only.
    fn built_in(self, language: &str) -> Option<&'static str> {
        let chinese = language == "zh" || language.starts_with("zh-");
        let english = language == "en" || language.starts_with("en-");
        let (en, zh) = match self {
            MessageKind::Handoff => (
                "Let me get a person to help you with that. You are in the queue; please hold on.",
                "这个问题我需要请同事来帮您，正在为您转接人工客服，请稍候。",
            ),
            MessageKind::Clarify => (
                "Just to be sure: do you mean one of these?",
                "我想确认一下：您是想问以下哪一个？",
            ),
            MessageKind::Noted => (
                "Got it; I've noted your question and a colleague will follow up.",
                "收到，我已经记下您的问题，客服同事会尽快跟进。",
            ),
        };
        match (english, chinese) {
            (true, _) => Some(en),
            (_, true) => Some(zh),
            _ => None,
        }
    }
}

impl Messages {
    /// The text of `kind` in `language`: the file's, else the built-in one,
    /// else the same two in `first` (the FAQ's first language), else English.
    /// A shop in a third language gives its texts in the file.
    pub(crate) fn text<'a>(&'a self, kind: MessageKind, language: &str, first: &str) -> &'a str {
        let texts = match kind {
            MessageKind::Handoff => &self.handoff,
            MessageKind::Clarify => &self.clarify,
            MessageKind::Noted => &self.noted,
        };
        texts
            .get(language)
            .map(String::as_str)
            .or_else(|| kind.built_in(language))
            .or_else(|| texts.get(first).map(String::as_str))
            .or_else(|| kind.built_in(first))
            .or_else(|| kind.built_in("en"))
            .unwrap_or_default()
    }
}
