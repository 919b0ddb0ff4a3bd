//! Learning from past conversations: a toy history with three obviously
//! separate topics is grouped into exactly those topics, each with the
//! answer most agents gave; accepting a suggestion makes the bot answer a
//! question of it, rejecting one leaves the bot as it was.

use cs_core::{ConversationId, Seq};
use cs_intent::faq::{BotAction, Faq, FaqBot, FaqSettings};
use cs_intent::history::{suggest, History, HistoryConfig, Review, SuggestionEdit};

const FAQ: &str = r#"{"intents": [
  {"intent": "opening_hours", "answer": {"en": "We are open 9 to 5, Monday to Friday."},
   "examples": ["when are you open", "what are your opening hours", "are you open on sunday",
                "what time do you close", "opening times please"]},
  {"intent": "person", "action": "handoff",
   "examples": ["talk to a person", "i want a human", "let me speak to an agent",
                "real person please", "connect me to customer service"]}
]}"#;

const GIFT: &str = "Gift wrapping is free: tick the box at checkout.";
const POINTS: &str = "You earn one loyalty point per euro; see them under My Points.";
const ABROAD: &str = "We ship to every EU country in 3 to 6 days.";

/// Three topics; in each, most agents gave the same answer and a few wrote
/// their own.
fn topics() -> Vec<(&'static str, Vec<&'static str>, Vec<&'static str>)> {
    vec![
        (
            GIFT,
            vec![
                "gift wrap please",
                "is gift wrapping free",
                "gift wrapping cost",
                "wrap it as a gift",
                "gift wrap option",
                "need gift wrapping",
                "gift wrapped parcel",
                "gift wrap for a birthday",
            ],
            vec![
                "Yes, we wrap gifts for free.",
                "gift wrap is free at checkout",
            ],
        ),
        (
            POINTS,
            vec![
                "loyalty points balance",
                "how many loyalty points",
                "loyalty points missing",
                "loyalty points expire",
                "using loyalty points",
                "earn loyalty points",
                "loyalty points on sale items",
                "where are my loyalty points",
            ],
            vec!["Points show under My Points."],
        ),
        (
            ABROAD,
            vec![
                "ship abroad to germany",
                "shipping abroad to france",
                "shipping abroad cost",
                "deliver abroad",
                "abroad delivery time",
                "ship abroad to italy",
                "buy from abroad",
                "ship abroad to spain",
            ],
            vec!["EU shipping takes 3-6 days.", "We ship across the EU."],
        ),
    ]
}

/// One conversation per question: a greeting from the agent, the question,
/// the answer (every third one in the agent's own words), and thanks.
fn toy_history() -> String {
    let mut lines = Vec::new();
    for (answer, questions, variants) in topics() {
        for (i, question) in questions.iter().enumerate() {
            let reply = if i % 3 == 2 {
                variants[(i / 3) % variants.len()]
            } else {
                answer
            };
            let turns = serde_json::json!({
                "id": format!("c{}", lines.len()),
                "turns": [
                    {"from": "agent", "text": "Hello, how can I help?"},
                    {"from": "visitor", "text": question},
                    {"from": "agent", "text": reply},
                    {"from": "visitor", "text": "thanks!"}
                ]
            });
            lines.push(turns.to_string());
        }
    }
    lines.join("\n")
}

fn bot() -> FaqBot {
    let faq = Faq::from_json(FAQ).expect("the test FAQ is valid");
    FaqBot::train(faq, FaqSettings::default()).expect("the test FAQ trains")
}

fn reviewed() -> Review {
    reviewed_with(HistoryConfig::default().answer_weight)
}

/// The toy history's suggestions, grouped with the answers weighted so.
fn reviewed_with(answer_weight: f64) -> Review {
    let history =
        History::read(toy_history().as_bytes(), &mut |_| {}).expect("the toy history reads");
    assert_eq!(history.pairs.len(), 24);
    assert_eq!(history.unanswered, 24, "every \"thanks!\" is unanswered");
    let config = HistoryConfig {
        clusters: Some(3),
        answer_weight,
        ..HistoryConfig::default()
    };
    let suggestions = suggest(&history, &config, &mut |_| {}).expect("the toy history groups");
    let mut review = Review::default();
    review.replace_pending(suggestions, Default::default());
    review
}

#[test]
fn separable_topics_become_one_suggestion_each_with_the_agents_typical_answer() {
    // By questions and answers (the default), and by the questions alone.
    for weight in [HistoryConfig::default().answer_weight, 0.0] {
        check_groups(&reviewed_with(weight));
    }
}

fn check_groups(review: &Review) {
    let suggestions = review.pending();
    assert_eq!(suggestions.len(), 3);
    for (answer, questions, _) in topics() {
        let found = suggestions
            .iter()
            .find(|s| s.answer == answer)
            .unwrap_or_else(|| panic!("no suggestion answers {answer:?}: {suggestions:#?}"));
        assert_eq!(found.size, 8, "{found:#?}");
        let mut learned = found.questions.clone();
        learned.sort();
        let mut expected: Vec<String> = questions.iter().map(|q| q.to_string()).collect();
        expected.sort();
        assert_eq!(learned, expected, "the group is exactly its topic");
        assert!(found.answer_count >= 5, "{found:#?}");
        assert!(!found.representatives.is_empty() && !found.keywords.is_empty());
        assert!(found
            .representatives
            .iter()
            .all(|r| questions.contains(&r.as_str())));
    }
    let ids: std::collections::HashSet<u64> = suggestions.iter().map(|s| s.id).collect();
    assert_eq!(ids.len(), 3, "each suggestion has its own id");
}

#[test]
fn accepting_teaches_the_bot_and_rejecting_drops_the_suggestion() {
    let bot = bot();
    let mut review = reviewed();
    let gift = review
        .pending()
        .iter()
        .find(|s| s.answer == GIFT)
        .expect("a gift suggestion")
        .clone();
    let points = review
        .pending()
        .iter()
        .find(|s| s.answer == POINTS)
        .expect("a points suggestion")
        .clone();

    let edit = SuggestionEdit {
        name: Some("gift_wrap".into()),
        ..SuggestionEdit::default()
    };
    let accepted = review.accept(gift.id, edit, &bot).expect("accepted");
    assert_eq!(accepted.name, "gift_wrap");
    assert!(!accepted.merged);
    assert!(bot.intent_names().contains(&"gift_wrap".to_owned()));
    bot.agent().retrain_now().expect("the retrain succeeds");
    let reply = bot
        .reply(
            ConversationId::new(),
            Seq::new(1),
            "gift wrap for free please",
        )
        .expect("a reply");
    assert_eq!(reply.decision.intent, "gift_wrap");
    match reply.action {
        BotAction::Answer { text } => assert_eq!(text, GIFT),
        other => panic!("expected the learned answer, got {other:?}"),
    }

    let rejected = review.reject(points.id).expect("rejected");
    assert_eq!(rejected.answer, POINTS);
    assert_eq!(review.rejected(), 1);
    assert_eq!(review.pending().len(), 1);
    assert!(review.suggestion(points.id).is_none());
    assert!(!bot.intent_names().contains(&points.name));
    assert!(
        review
            .accept(points.id, SuggestionEdit::default(), &bot)
            .is_err(),
        "a rejected suggestion cannot be accepted"
    );
    let reply = bot
        .reply(
            ConversationId::new(),
            Seq::new(1),
            "how many loyalty points",
        )
        .expect("a reply");
    if let BotAction::Answer { text } = &reply.action {
        assert_ne!(text, POINTS, "the bot never learned the rejected answer");
    }

    // A restarted host teaches the accepted suggestions to its new bot.
    let saved = serde_json::to_string(&review).expect("the review serialises");
    let restored: Review = serde_json::from_str(&saved).expect("and reads back");
    assert_eq!(restored, review);
    let fresh = self::bot();
    assert_eq!(restored.replay(&fresh).expect("replayed"), 1);
    assert!(fresh.intent_names().contains(&"gift_wrap".to_owned()));
}

#[test]
fn an_edit_can_merge_into_an_existing_intent_and_a_bad_edit_changes_nothing() {
    let bot = bot();
    let mut review = reviewed();
    let abroad = review
        .pending()
        .iter()
        .find(|s| s.answer == ABROAD)
        .expect("an abroad suggestion")
        .clone();
    let empty = SuggestionEdit {
        questions: Some(vec!["  ".into()]),
        ..SuggestionEdit::default()
    };
    assert!(review.accept(abroad.id, empty, &bot).is_err());
    let spaced = SuggestionEdit {
        name: Some("two words".into()),
        ..SuggestionEdit::default()
    };
    assert!(review.accept(abroad.id, spaced, &bot).is_err());
    assert_eq!(
        review.pending().len(),
        3,
        "a refused edit keeps the suggestion"
    );

    let rows = bot.training_rows();
    let merge = SuggestionEdit {
        name: Some("opening_hours".into()),
        answer: Some("ignored for a merge".into()),
        questions: Some(vec!["are you open abroad".into()]),
    };
    let accepted = review.accept(abroad.id, merge, &bot).expect("merged");
    assert!(accepted.merged);
    assert_eq!(bot.training_rows(), rows + 1);
    assert_eq!(bot.intent_names(), ["opening_hours", "person"]);
}
