//! `cs_intent::faq`: the FAQ file's checks and the bot's answer / clarify /
//! hand-off behaviour, on the chat server's bundled FAQ and on a small FAQ
//! written here, with real training (no mocks).

use std::sync::atomic::Ordering;

use cs_core::{ConversationId, Seq};
use cs_intent::faq::{
    BotAction, BotReply, Faq, FaqBot, FaqError, FaqSettings, Outcome, DECISIONS_KEPT,
};
use cs_intent::{Example, IntentError};

const DEMO_FAQ: &str = include_str!("../../examples/chat_server/faq.json");

fn demo_faq() -> Faq {
    match Faq::from_json(DEMO_FAQ) {
        Ok(faq) => faq,
        Err(e) => panic!("the bundled demo FAQ does not load: {e}"),
    }
}

fn train(faq: Faq, settings: FaqSettings) -> FaqBot {
    match FaqBot::train(faq, settings) {
        Ok(bot) => bot,
        Err(e) => panic!("training failed: {e}"),
    }
}

fn ask(bot: &FaqBot, conversation: ConversationId, seq: u64, question: &str) -> BotReply {
    match bot.reply(conversation, Seq::new(seq), question) {
        Ok(reply) => reply,
        Err(e) => panic!("reply({question:?}) failed: {e}"),
    }
}

/// The FAQ's answer to `intent` in `language`.
fn answer_of(faq: &Faq, intent: &str, language: &str) -> String {
    faq.intent(intent)
        .and_then(|i| i.answer.get(language))
        .cloned()
        .unwrap_or_else(|| panic!("the FAQ has no {language} answer for {intent}"))
}

fn answer_text(reply: &BotReply) -> &str {
    match &reply.action {
        BotAction::Answer { text } => text,
        other => panic!("expected an answer for {:?}, got {other:?}", reply.decision),
    }
}

fn hand_off_reason(reply: &BotReply) -> &str {
    match &reply.action {
        BotAction::HandOff { reason, .. } => reason,
        other => panic!(
            "expected a hand-off for {:?}, got {other:?}",
            reply.decision
        ),
    }
}

fn has_chinese(text: &str) -> bool {
    text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c))
}

#[test]
fn the_bot_is_shared_across_threads() {
    fn send_and_sync<T: Send + Sync>() {}
    send_and_sync::<FaqBot>();
}

#[test]
fn the_demo_faq_answers_in_the_questions_language_and_hands_off() {
    let faq = demo_faq();
    assert_eq!(faq.languages(), ["en", "zh"]);
    let bot = train(faq.clone(), FaqSettings::default());
    assert_eq!(bot.languages(), ["en", "zh"]);
    assert!(
        bot.greeting("en").is_some_and(|g| g.starts_with("Hi!")),
        "the demo FAQ greets in English"
    );
    assert!(
        bot.greeting("zh").is_some_and(|g| g.starts_with("您好")),
        "and in Chinese"
    );
    assert!(bot.intent_names().windows(2).all(|w| w[0] < w[1]));
    assert_eq!(bot.intent_names().len(), faq.intents().len());
    let examples: usize = faq.intents().iter().map(|i| i.examples.len()).sum();
    assert_eq!(bot.training_rows(), examples);
    let conversation = ConversationId::new();

    let english = ask(&bot, conversation, 1, "where is my order");
    assert_eq!(english.decision.intent, "order_status");
    assert_eq!(english.decision.outcome, Outcome::Answer);
    assert_eq!(answer_text(&english), answer_of(&faq, "order_status", "en"));

    let chinese = ask(&bot, conversation, 3, "我的订单到哪了");
    assert_eq!(chinese.decision.intent, "order_status");
    assert_eq!(answer_text(&chinese), answer_of(&faq, "order_status", "zh"));

    for (seq, question) in [(5, "I want to talk to a person"), (7, "转人工")] {
        let reply = ask(&bot, conversation, seq, question);
        assert_eq!(reply.decision.intent, "human_agent", "{question:?}");
        assert_eq!(reply.decision.outcome, Outcome::Handoff);
        assert_eq!(hand_off_reason(&reply), "the visitor asked for a person");
        let BotAction::HandOff { notice, .. } = &reply.action else {
            unreachable!("checked above");
        };
        assert_eq!(has_chinese(notice), has_chinese(question), "{notice:?}");
    }

    // Out-of-scope questions tests/chat_server_faq.rs shows are handed off.
    let mut seq = 9;
    for question in ["explain photosynthesis to me", "明天股票会涨吗"] {
        let reply = ask(&bot, conversation, seq, question);
        seq += 2;
        let reason = hand_off_reason(&reply);
        assert!(
            reason.starts_with("the bot was unsure (best guess ") && reason.ends_with("%)"),
            "{question:?}: {reason}"
        );
        assert!(reason.contains(&reply.decision.intent), "{reason}");
    }
    assert!(bot.handed_off_questions() >= 2);

    let log = bot.decisions(conversation);
    let seqs: Vec<u64> = log.iter().map(|d| d.question_seq.get()).collect();
    assert_eq!(seqs, [1, 3, 5, 7, 9, 11], "oldest first");
    let counters = bot.counters.snapshot();
    assert_eq!(
        (counters.answered, counters.clarified, counters.handed_off),
        (2, 0, 4)
    );
    assert!(bot.decisions(ConversationId::new()).is_empty());
}

#[test]
fn a_close_call_asks_which_was_meant_and_the_click_is_learned() {
    let faq = demo_faq();
    // Answering outright only from 95% makes this two-intent question a
    // clarification whatever the fit chose (the rule itself is tested in
    // cs-intent's calibration module).
    let settings = FaqSettings {
        answer_threshold: Some(0.95),
        clarify_mass: Some(0.3),
        ..FaqSettings::default()
    };
    let bot = train(faq.clone(), settings);
    let conversation = ConversationId::new();
    let question = "the item is broken and missing a part";

    let reply = ask(&bot, conversation, 1, question);
    assert_eq!(reply.decision.outcome, Outcome::Clarify, "{reply:?}");
    let BotAction::Clarify { text, options } = &reply.action else {
        panic!("expected a clarification, got {:?}", reply.action);
    };
    assert_eq!(text, "Just to be sure: do you mean one of these?");
    assert!((2..=3).contains(&options.len()), "{options:?}");
    assert_eq!(
        options[0].intent, reply.decision.intent,
        "the top intent first"
    );
    let intents: Vec<&str> = options.iter().map(|o| o.intent.as_str()).collect();
    assert!(
        intents.contains(&"damaged_item") && intents.contains(&"missing_item"),
        "{intents:?}"
    );
    for option in options {
        assert!(!option.label.trim().is_empty(), "{option:?}");
        assert!(
            !has_chinese(&option.label),
            "an English question, English labels: {option:?}"
        );
    }

    assert_eq!(
        &reply.decision.options, options,
        "the log keeps the options"
    );

    // A tap sends the option's label as the next message: that is the pick.
    let Some(missing) = options.iter().find(|o| o.intent == "missing_item") else {
        panic!("no missing_item option in {options:?}");
    };
    let chosen = ask(&bot, conversation, 2, &format!(" {} ", missing.label));
    assert_eq!(chosen.decision.intent, "missing_item");
    assert_eq!(chosen.decision.outcome, Outcome::Answer);
    assert_eq!(
        chosen.decision.question, question,
        "logged against the question asked about"
    );
    assert_eq!(
        chosen.learned,
        Some(Example::new(question, "missing_item")),
        "the pick is a labelled example"
    );
    assert_eq!(answer_text(&chosen), answer_of(&faq, "missing_item", "en"));
    assert_eq!(bot.counters.chosen.load(Ordering::Relaxed), 1);
    assert_eq!(bot.counters.clarified.load(Ordering::Relaxed), 1);

    // The click was a labelled example: the same question is answered now.
    let again = ask(&bot, conversation, 3, question);
    assert_eq!(again.decision.intent, "missing_item");
    assert_eq!(answer_text(&again), answer_of(&faq, "missing_item", "en"));

    // A Chinese question gets Chinese labels and the Chinese question.
    let chinese = ask(&bot, conversation, 5, "换货还是退货");
    let BotAction::Clarify { text, options } = &chinese.action else {
        panic!("expected a clarification, got {:?}", chinese.action);
    };
    assert!(has_chinese(text), "{text:?}");
    assert!(options.iter().all(|o| has_chinese(&o.label)), "{options:?}");

    // Choosing the hand-off intent hands off.
    let person = match bot.choose(conversation, Seq::new(5), "换货还是退货", "human_agent") {
        Ok(reply) => reply,
        Err(e) => panic!("choose failed: {e}"),
    };
    assert_eq!(hand_off_reason(&person), "the visitor asked for a person");
    assert!(matches!(
        bot.choose(conversation, Seq::new(5), "换货还是退货", "no_such_intent"),
        Err(FaqError::UnknownIntent(name)) if name == "no_such_intent"
    ));
    assert_eq!(bot.counters.chosen.load(Ordering::Relaxed), 2);
}

#[test]
fn a_correction_changes_the_next_answer_and_marks_the_log() {
    let faq = demo_faq();
    let bot = train(faq.clone(), FaqSettings::default());
    let conversation = ConversationId::new();
    let question = "i want to return it and get my money back";

    let before = ask(&bot, conversation, 1, question);
    assert_eq!(before.decision.intent, "refund_status", "{before:?}");
    let rows = bot.training_rows();

    let version = match bot.correct(conversation, Seq::new(1), question, "return_request") {
        Ok(version) => version,
        Err(e) => panic!("correct failed: {e}"),
    };
    assert!(version > 1);
    assert_eq!(bot.training_rows(), rows + 1);
    assert_eq!(bot.counters.corrections.load(Ordering::Relaxed), 1);
    let log = bot.decisions(conversation);
    assert_eq!(log[0].corrected_to.as_deref(), Some("return_request"));

    let after = ask(&bot, conversation, 3, question);
    assert_eq!(after.decision.intent, "return_request");
    assert_eq!(answer_text(&after), answer_of(&faq, "return_request", "en"));
    assert_eq!(bot.decisions(conversation)[1].corrected_to, None);

    // Another node's correction: learned, marked, not counted here.
    let chinese = "退货退款";
    let _ = ask(&bot, conversation, 5, chinese);
    if let Err(e) = bot.learn(conversation, Seq::new(5), chinese, "return_request") {
        panic!("learn failed: {e}");
    }
    assert_eq!(bot.counters.corrections.load(Ordering::Relaxed), 1);
    assert_eq!(
        bot.decisions(conversation)[2].corrected_to.as_deref(),
        Some("return_request")
    );
    let learned = ask(&bot, conversation, 7, chinese);
    assert_eq!(learned.decision.intent, "return_request");
    assert_eq!(
        answer_text(&learned),
        answer_of(&faq, "return_request", "zh")
    );

    match bot.correct(conversation, Seq::new(1), question, "no_such_intent") {
        Err(FaqError::UnknownIntent(name)) => assert_eq!(name, "no_such_intent"),
        other => panic!("expected UnknownIntent, got {other:?}"),
    }
    assert_eq!(bot.counters.corrections.load(Ordering::Relaxed), 1);
}

/// Three intents, English only, and the file's own texts for everything the
/// bot says: nothing of the demo shop.
const SMALL_FAQ: &str = r#"{
  "greeting": {"en": "Hello from the bike shop."},
  "messages": {
    "handoff": {"en": "A mechanic will be with you shortly."},
    "clarify": {"en": "Which one did you mean?"}
  },
  "future_field": {"ignored": true},
  "intents": [
    {"intent": "repair_booking", "answer": {"en": "Book a repair slot at the counter or by phone."},
     "label": {"en": "Book a repair"},
     "examples": ["can i book a repair", "my bike needs fixing", "book a service for my bike",
                  "when can you fix my bike", "i need a mechanic appointment", "repair my brakes please"]},
    {"intent": "rental_prices", "answer": {"en": "Rentals cost 20 a day."},
     "examples": ["how much is a rental", "rent a bike price", "what does it cost to hire a bike",
                  "daily rental rate", "bike hire prices", "how much to rent for a weekend"]},
    {"intent": "speak_to_staff", "action": "handoff",
     "examples": ["can i talk to someone", "i want a real person", "let me speak to staff",
                  "human please", "connect me to a person", "get me an employee"]}
  ]
}"#;

#[test]
fn a_small_faq_of_its_own_works_with_nothing_demo_specific() {
    let faq = match Faq::from_json(SMALL_FAQ) {
        Ok(faq) => faq,
        Err(e) => panic!("the small FAQ does not load: {e}"),
    };
    assert_eq!(faq.languages(), ["en"]);
    let bot = train(faq, FaqSettings::default());
    assert_eq!(bot.greeting("en"), Some("Hello from the bike shop."));
    assert_eq!(
        bot.greeting("fr"),
        Some("Hello from the bike shop."),
        "first language"
    );
    assert_eq!(bot.language_of("我的自行车"), "en", "no zh in this FAQ");
    assert_eq!(
        bot.intent_names(),
        ["rental_prices", "repair_booking", "speak_to_staff"]
    );
    let conversation = ConversationId::new();

    let price = ask(&bot, conversation, 1, "how much is a rental");
    assert_eq!(price.decision.intent, "rental_prices");
    assert_eq!(answer_text(&price), "Rentals cost 20 a day.");

    let person = ask(&bot, conversation, 3, "i want a real person");
    assert_eq!(hand_off_reason(&person), "the visitor asked for a person");
    assert_eq!(
        person.action,
        BotAction::HandOff {
            notice: "A mechanic will be with you shortly.".to_owned(),
            reason: "the visitor asked for a person".to_owned(),
        }
    );

    // Clarify every time (never answer outright, always ask rather than
    // hand off): the file's own text and labels.
    let faq = match Faq::from_json(SMALL_FAQ) {
        Ok(faq) => faq,
        Err(e) => panic!("the small FAQ does not load: {e}"),
    };
    let asking = train(
        faq,
        FaqSettings {
            answer_threshold: Some(f32::INFINITY),
            clarify_mass: Some(0.0),
            max_clarify_options: 2,
            ..FaqSettings::default()
        },
    );
    let reply = ask(&asking, conversation, 5, "my bike needs fixing");
    let BotAction::Clarify { text, options } = &reply.action else {
        panic!("expected a clarification, got {:?}", reply.action);
    };
    assert_eq!(text, "Which one did you mean?");
    assert_eq!(options.len(), 2, "max_clarify_options");
    assert_eq!(options[0].intent, "repair_booking");
    assert_eq!(options[0].label, "Book a repair", "the file's label");
    if options[1].intent == "rental_prices" {
        assert_eq!(
            options[1].label, "how much is a rental",
            "the first example"
        );
    }
}

#[test]
fn the_log_keeps_the_last_fifty_and_is_forgotten_on_request() {
    let faq = match Faq::from_json(SMALL_FAQ) {
        Ok(faq) => faq,
        Err(e) => panic!("the small FAQ does not load: {e}"),
    };
    let bot = train(faq, FaqSettings::default());
    let conversation = ConversationId::new();
    let other = ConversationId::new();
    for seq in 1..=60 {
        let _ = ask(&bot, conversation, seq, "how much is a rental");
    }
    let _ = ask(&bot, other, 1, "can i book a repair");
    let log = bot.decisions(conversation);
    assert_eq!(DECISIONS_KEPT, 50);
    assert_eq!(log.len(), DECISIONS_KEPT);
    assert_eq!(log[0].question_seq, Seq::new(11), "the oldest go first");
    assert_eq!(log[49].question_seq, Seq::new(60));

    // A decision made on another node joins the log.
    let mut elsewhere = log[49].clone();
    elsewhere.question_seq = Seq::new(61);
    bot.remember(conversation, elsewhere);
    let log = bot.decisions(conversation);
    assert_eq!(log.len(), DECISIONS_KEPT);
    assert_eq!(log[49].question_seq, Seq::new(61));

    bot.forget(conversation);
    assert!(bot.decisions(conversation).is_empty());
    assert_eq!(bot.decisions(other).len(), 1, "other conversations stay");

    assert!(matches!(
        bot.reply(conversation, Seq::new(62), "  ?! "),
        Err(FaqError::Intent(IntentError::EmptyText))
    ));
}

#[test]
fn decisions_and_actions_have_the_wire_shape_the_console_reads() {
    let decision = cs_intent::faq::BotDecision {
        question_seq: Seq::new(4),
        question: "hi".to_owned(),
        intent: "greeting".to_owned(),
        confidence: 0.5,
        outcome: Outcome::Handoff,
        corrected_to: None,
        options: Vec::new(),
    };
    let json = serde_json::to_value(&decision).unwrap_or_default();
    assert_eq!(json["outcome"], "handoff");
    assert_eq!(json["question_seq"], 4);
    assert!(
        json.get("options").is_none(),
        "no options, no field: {json}"
    );
    for (outcome, wire) in [(Outcome::Answer, "answer"), (Outcome::Clarify, "clarify")] {
        assert_eq!(serde_json::to_value(outcome).unwrap_or_default(), wire);
    }
    let action = BotAction::HandOff {
        notice: "n".to_owned(),
        reason: "r".to_owned(),
    };
    let json = serde_json::to_value(&action).unwrap_or_default();
    assert_eq!(json["kind"], "hand_off");
    let answer = serde_json::to_value(BotAction::Answer { text: "t".into() }).unwrap_or_default();
    assert_eq!(answer["kind"], "answer");
}

fn invalid(json: &str) -> String {
    match Faq::from_json(json) {
        Err(FaqError::Invalid(why)) => why,
        other => panic!("expected FaqError::Invalid for {json}, got {other:?}"),
    }
}

#[test]
fn malformed_files_are_typed_errors_that_say_what_to_fix() {
    match Faq::from_json(r#"{"intents": [ {"intent": "a", "#) {
        Err(e @ FaqError::Parse { path: None, .. }) => {
            let message = e.to_string();
            assert!(message.contains("line"), "{message}");
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
    assert!(matches!(
        Faq::from_json(r#"{"intents": {"not": "a list"}}"#),
        Err(FaqError::Parse { .. })
    ));

    let why = invalid(r#"{"languages": ["en"]}"#);
    assert!(why.contains("no \"intents\" list"), "{why}");

    let why = invalid(
        r#"{"intents": [
            {"intent": "hours", "answer": {"en": "9-5"}, "examples": ["when are you open"]},
            {"intent": "hours", "answer": {"en": "9-6"}, "examples": ["opening hours"]}
        ]}"#,
    );
    assert!(why.contains("\"hours\" appears twice"), "{why}");
    assert!(why.contains("merge"), "{why}");

    let why = invalid(
        r#"{"intents": [
            {"intent": "hours", "answer": {"en": "9-5"}, "examples": ["when are you open"]},
            {"intent": "empty", "answer": {"en": "?"}, "examples": []}
        ]}"#,
    );
    assert!(why.contains("\"empty\" has no examples"), "{why}");

    let why = invalid(
        r#"{"intents": [{"intent": "silent", "action": "answer", "answer": {"en": "  "}, "examples": ["x"]}]}"#,
    );
    assert!(
        why.contains("\"silent\" answers but has no answer text"),
        "{why}"
    );
    assert!(why.contains("\"handoff\""), "{why}");

    let why =
        invalid(r#"{"intents": [{"intent": "odd", "action": "escalate", "examples": ["x"]}]}"#);
    assert!(
        why.contains("\"odd\"") && why.contains("\"escalate\""),
        "{why}"
    );

    let why = invalid(r#"{"intents": [{"answer": {"en": "a"}, "examples": ["x"]}]}"#);
    assert!(why.contains("intent number 1"), "{why}");

    // A hand-off intent needs no answer, and unknown fields are fine.
    assert!(Faq::from_json(
        r#"{"version": 2, "intents": [{"intent": "h", "action": "handoff", "examples": ["x"], "priority": 1}]}"#
    )
    .is_ok());

    // From a file, every error names the file.
    let missing = std::env::temp_dir().join("cs-intent-faq-test-does-not-exist.json");
    match Faq::from_path(&missing) {
        Err(e @ FaqError::Read { .. }) => {
            assert!(e.to_string().contains(&*missing.to_string_lossy()))
        }
        other => panic!("expected a read error, got {other:?}"),
    }
    let path = std::env::temp_dir().join(format!("cs-intent-faq-test-{}.json", std::process::id()));
    if let Err(e) = std::fs::write(&path, r#"{"intents": [{"intent": "x", "examples": []}]}"#) {
        panic!("cannot write {}: {e}", path.display());
    }
    let result = Faq::from_path(&path);
    let _ = std::fs::remove_file(&path);
    match result {
        Err(FaqError::Invalid(why)) => {
            assert!(
                why.contains(&*path.to_string_lossy()) && why.contains("\"x\""),
                "{why}"
            )
        }
        other => panic!("expected Invalid naming the file, got {other:?}"),
    }
}
