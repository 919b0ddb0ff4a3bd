//! A toy history of past conversations for the desk's history tests: three
//! topics the demo FAQ does not cover, each asked eight ways; most agents
//! answered with the same words, a few in their own.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use serde_json::json;

pub const ENGRAVING: &str = "Engraving is free on jewellery and takes 2 extra days.";
pub const STUDENT: &str = "Students get 10% off: verify your student email under My Account.";
pub const RECYCLING: &str = "Bring old electronics to any store; we recycle them for free.";

/// (typical answer, questions, the agents' other answers).
pub fn topics() -> [(&'static str, [&'static str; 8], [&'static str; 2]); 3] {
    [
        (
            ENGRAVING,
            [
                "engrave my ring",
                "is engraving free",
                "engraving on a watch",
                "engraving time",
                "engrave a name on the bracelet",
                "engraving fonts",
                "add an engraving",
                "engraving cost",
            ],
            ["Engraving costs nothing.", "We engrave for free, 2 days."],
        ),
        (
            STUDENT,
            [
                "student discount please",
                "student discount for pupils",
                "student discount code",
                "get the student discount",
                "is there a student discount",
                "student discount with university card",
                "student discount on laptops",
                "verify student discount",
            ],
            [
                "10% off for students.",
                "Verify your student email for 10%.",
            ],
        ),
        (
            RECYCLING,
            [
                "recycle my old phone",
                "old electronics recycling",
                "recycling old laptop",
                "where to recycle a broken tv",
                "electronics recycling program",
                "recycle batteries",
                "recycle my old printer",
                "free recycling of old devices",
            ],
            ["Any store recycles them.", "We take old devices back."],
        ),
    ]
}

/// One conversation per question, as JSONL: the agent greets, the visitor
/// asks, the agent answers (every third time in their own words), the
/// visitor thanks.
pub fn toy_history() -> String {
    let mut lines = Vec::new();
    for (answer, questions, variants) in topics() {
        for (i, question) in questions.iter().enumerate() {
            let reply = if i % 3 == 2 {
                variants[i / 3 % 2]
            } else {
                answer
            };
            let line = json!({
                "id": format!("c{}", lines.len()),
                "turns": [
                    {"from": "agent", "text": "Hello, how can I help?"},
                    {"from": "visitor", "text": question},
                    {"from": "agent", "text": reply},
                    {"from": "visitor", "text": "thanks!"}
                ]
            });
            lines.push(line.to_string());
        }
    }
    lines.join("\n") + "\n"
}
