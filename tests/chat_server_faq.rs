//! The chat server's bundled FAQ (`examples/chat_server/faq.json`): its
//! structure, and the bot the server trains on it at startup, tested on
//! phrasings that are not in the file. `cargo test --test chat_server_faq --
//! --nocapture` prints the calibration, the misses and every out-of-scope
//! decision.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::OnceLock;
use std::time::Instant;

use cs::intent::text::{normalize, FeatureConfig};
use cs::intent::{AgentConfig, Decision, Example, IntentAgent, Prediction};
use serde::Deserialize;

const FAQ_JSON: &str = include_str!("../examples/chat_server/faq.json");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Faq {
    /// What the bot says first, in both languages.
    greeting: Answer,
    intents: Vec<FaqIntent>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaqIntent {
    intent: String,
    action: Action,
    answer: Answer,
    examples: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Answer,
    Handoff,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    en: String,
    zh: String,
}

/// New phrasings, none of them in faq.json: (question, intent).
const HELD_OUT: &[(&str, &str)] = &[
    ("can you look up where order DS90311 is", "order_status"),
    ("my package still hasn't shown up, where is it", "order_status"),
    ("帮忙查查 20231215 这个单子到哪了", "order_status"),
    ("快递 tracking 一直没动静", "order_status"),
    ("i need to cancel the order i just made", "cancel_order"),
    ("please don't send my order, i want to cancel", "cancel_order"),
    ("刚刚下的订单 我想取消掉", "cancel_order"),
    ("订单能不能不要了 取消", "cancel_order"),
    ("i need to fix the delivery address on my order", "change_address"),
    ("please send my package to my new address", "change_address"),
    ("收货地址要改一下", "change_address"),
    ("地址写错了 能帮我改吗 订单 20231120", "change_address"),
    ("how can i return the shoes i bought", "return_request"),
    ("can i send this jacket back for a return", "return_request"),
    ("这个东西我想退回去 怎么退货", "return_request"),
    ("退货 return 要几天内申请", "return_request"),
    ("when does the refund hit my account", "refund_status"),
    ("refund still not in my bank account", "refund_status"),
    ("退款到现在还没收到", "refund_status"),
    ("退的钱什么时候能到 refund", "refund_status"),
    ("can i get a medium instead of a small", "exchange"),
    ("i want to exchange the shirt for a different colour", "exchange"),
    ("想换一个大一码的", "exchange"),
    ("能不能换个别的颜色的", "exchange"),
    ("how many business days does delivery take", "shipping_time"),
    ("if i order today when does it ship", "shipping_time"),
    ("下单以后几天能送到", "shipping_time"),
    ("快递一般要多少天", "shipping_time"),
    ("do i need to pay for delivery", "shipping_cost"),
    ("how much does express delivery cost", "shipping_cost"),
    ("多少钱可以免运费", "shipping_cost"),
    ("运费 怎么收", "shipping_cost"),
    ("can you deliver to france", "international_shipping"),
    ("do you ship to singapore and how long", "international_shipping"),
    ("能不能寄到澳大利亚", "international_shipping"),
    ("海外 shipping 可以吗", "international_shipping"),
    ("can you issue an invoice with my company name", "invoice"),
    ("where do i download the receipt for my order", "invoice"),
    ("我需要开个发票报销", "invoice"),
    ("电子发票怎么下载", "invoice"),
    ("which size fits me, i'm 180cm 75kg", "size_guide"),
    ("do these jeans run big or small", "size_guide"),
    ("我平时穿L 这个选什么码", "size_guide"),
    ("尺码表 size chart 在哪看", "size_guide"),
    ("my discount code isn't being accepted", "coupon"),
    ("where do i put the promo code", "coupon"),
    ("优惠券怎么领", "coupon"),
    ("折扣码输入了没反应", "coupon"),
    ("can i pay using google pay", "payment_methods"),
    ("do you accept visa cards", "payment_methods"),
    ("你们支持什么付款方式", "payment_methods"),
    ("能用信用卡付吗", "payment_methods"),
    ("my payment keeps failing at checkout", "payment_failed"),
    ("the card payment was declined again", "payment_failed"),
    ("付款一直不成功", "payment_failed"),
    ("付钱的时候报错了", "payment_failed"),
    ("i forgot my password and can't get in", "account_login"),
    ("how do i reset my login", "account_login"),
    ("密码忘了怎么办", "account_login"),
    ("账号登不进去", "account_login"),
    ("please close my account and delete my data", "delete_account"),
    ("how do i stop your promotional emails", "delete_account"),
    ("我想注销这个账号", "delete_account"),
    ("怎么删除我的个人数据", "delete_account"),
    ("is the grey hoodie still in stock", "product_availability"),
    ("when will you have size s again", "product_availability"),
    ("这个什么时候有货", "product_availability"),
    ("还有库存吗", "product_availability"),
    ("my speaker broke, is it covered by warranty", "warranty_repair"),
    ("the watch stopped working after 3 months", "warranty_repair"),
    ("用了半年坏了可以保修吗", "warranty_repair"),
    ("东西坏了 能维修吗", "warranty_repair"),
    (
        "the price went down after my purchase, refund the difference?",
        "price_protection",
    ),
    ("do you offer price protection", "price_protection"),
    ("买了以后降价了 能保价吗", "price_protection"),
    ("差价能退吗", "price_protection"),
    ("what time does customer service open", "store_hours_contact"),
    ("how do i reach you by phone", "store_hours_contact"),
    ("客服电话是多少", "store_hours_contact"),
    ("你们的客服工作时间", "store_hours_contact"),
    ("how can i check my reward points", "membership_points"),
    ("do my points expire", "membership_points"),
    ("我的积分在哪看", "membership_points"),
    ("积分可以抵钱吗", "membership_points"),
    ("how do i check the balance on my gift card", "gift_card"),
    ("can i buy a gift card for my friend", "gift_card"),
    ("礼品卡余额怎么查", "gift_card"),
    ("礼品卡怎么使用", "gift_card"),
    ("my order arrived smashed", "damaged_item"),
    ("the vase came broken in the box", "damaged_item"),
    ("收到的时候已经破了", "damaged_item"),
    ("包裹到了东西是坏的", "damaged_item"),
    ("one of the items in my order is missing", "missing_item"),
    ("i only received one of the two items", "missing_item"),
    ("少发了一件", "missing_item"),
    ("包裹里缺了东西", "missing_item"),
    ("hello there", "greeting"),
    ("hey good morning", "greeting"),
    ("你好 在吗", "greeting"),
    ("嗨 你好", "greeting"),
    ("thank you very much", "thanks"),
    ("thanks, that's all", "thanks"),
    ("好的 感谢", "thanks"),
    ("谢谢 你们", "thanks"),
    ("i want to talk to a human", "human_agent"),
    ("let me speak with a real agent", "human_agent"),
    ("我要找人工客服", "human_agent"),
    ("转人工客服", "human_agent"),
    // Harder: long and chatty, or short with typos and colloquial Chinese.
    ("hello, i placed an order last monday (DS20231188) and the tracking page still shows nothing, can you check?", "order_status"),
    ("wher is my oder", "order_status"),
    ("sorry i ordered by mistake, is there any way to cancel before it goes out", "cancel_order"),
    ("我刚才手滑下错单了，麻烦帮我取消一下", "cancel_order"),
    ("i'm not going to be home next week, can the parcel go to my mom's place instead", "change_address"),
    ("地址错了要改", "change_address"),
    ("bought a dress for a wedding but it doesnt fit well, what do i do to send it back", "return_request"),
    ("想退 怎么弄 不合适", "return_request"),
    ("it's been over a week since you got my return and i still haven't seen the money", "refund_status"),
    ("退款咋还没到", "refund_status"),
    ("the shoes are half a size too small, can i swap them for the next size up", "exchange"),
    ("换码 怎么换", "exchange"),
    ("i need this for a birthday on saturday, will it get here in time if i order now", "shipping_time"),
    ("多久到货", "shipping_time"),
    ("is delivery free if i spend over 50 dollars", "shipping_cost"),
    ("运费咋算", "shipping_cost"),
    ("i live in malaysia, can i order from you and how much is postage", "international_shipping"),
    ("寄国外吗", "international_shipping"),
    ("my company needs a proper tax invoice for this purchase, how do i request one", "invoice"),
    ("发票咋开", "invoice"),
    ("i usually wear a 40 in nike, what size should i order in these sneakers", "size_guide"),
    ("码数咋选", "size_guide"),
    ("i got a code in your newsletter but checkout says it's not valid", "coupon"),
    ("有券吗", "coupon"),
    ("i don't have a credit card, what other ways can i pay", "payment_methods"),
    ("能支付宝付不", "payment_methods"),
    ("i tried three times and every time the payment page says something went wrong", "payment_failed"),
    ("付款失败了咋办", "payment_failed"),
    ("i changed phones and now i can't receive the sms code to sign in", "account_login"),
    ("登不上账号了", "account_login"),
    ("i don't shop here anymore, please remove everything you have on me", "delete_account"),
    ("帮我注销账户吧", "delete_account"),
    ("the red one in size 38 has been sold out for weeks, will it come back", "product_availability"),
    ("补货吗", "product_availability"),
    ("my coffee machine started leaking after four months of normal use", "warranty_repair"),
    ("保修期多长", "warranty_repair"),
    ("i bought the tv for 499 and now it's 449 on your site, can i get 50 back", "price_protection"),
    ("降价补差吗", "price_protection"),
    ("is there a number i can call about my order or is it chat only", "store_hours_contact"),
    ("客服啥时候在", "store_hours_contact"),
    ("i bought a lot last month but my points balance didn't go up", "membership_points"),
    ("积分咋用", "membership_points"),
    ("i received a gift card for my birthday, how do i spend it on your site", "gift_card"),
    ("礼品卡咋用", "gift_card"),
    ("the box was soaked and the book inside is ruined", "damaged_item"),
    ("到手就碎了", "damaged_item"),
    ("the order says 4 items but there were only 3 in the parcel", "missing_item"),
    ("缺件", "missing_item"),
    ("hi hi", "greeting"),
    ("哈啰 你好", "greeting"),
    ("thank you, have a nice day", "thanks"),
    ("谢了", "thanks"),
    ("this bot is useless, put me through to a real person", "human_agent"),
    ("找客服 人工", "human_agent"),
];

/// Questions a retail shop's bot must not answer from its FAQ.
const OUT_OF_SCOPE: &[&str] = &[
    "what is the capital of France",
    "帮我写一首诗",
    "how do i fix my car engine",
    "今天天气怎么样",
    "tell me a joke",
    "who won the world cup in 2018",
    "推荐一部好看的电影",
    "what is 17 times 23",
    "how to cook rice in a pot",
    "给我讲个笑话",
    "明天股票会涨吗",
    "把这句话翻译成法语",
    "write me a python script that sorts a list",
    "什么是量子力学",
    "who is the president of brazil",
    "how tall is mount everest",
    "帮我做数学作业",
    "what's the meaning of life",
    "附近有什么好吃的餐厅",
    "how do i lose weight fast",
    "明天会下雨吗",
    "explain photosynthesis to me",
    "how do i change a flat tire",
    "你是男的还是女的",
    "what year did world war 2 end",
    "怎么学好英语",
    "sing me a song",
    "tell me about black holes",
    "北京到上海的高铁几点",
    "what's the weather like in london",
    "谁是世界上最高的人",
    "can you help me with my resume",
];

fn faq() -> Faq {
    match serde_json::from_str(FAQ_JSON) {
        Ok(faq) => faq,
        Err(e) => panic!("examples/chat_server/faq.json does not parse: {e}"),
    }
}

/// The text as the model sees it (NFKC, case, spaces): two examples with the
/// same key are one training row to the model, and the last label would win.
fn key(text: &str) -> String {
    normalize(text, FeatureConfig::default().max_chars)
}

fn has_cjk(text: &str) -> bool {
    text.chars()
        .any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c) || ('\u{3400}'..='\u{4dbf}').contains(&c))
}

/// The agent trained on every example, as the server trains it at startup,
/// and the seconds training took. Trained once for all tests in this file.
fn agent() -> &'static (IntentAgent, f64) {
    static AGENT: OnceLock<(IntentAgent, f64)> = OnceLock::new();
    AGENT.get_or_init(|| {
        let rows: Vec<Example> = faq()
            .intents
            .iter()
            .flat_map(|i| i.examples.iter().map(|e| Example::new(e, &i.intent)))
            .collect();
        let given = rows.len();
        let start = Instant::now();
        let agent = match IntentAgent::train(rows, AgentConfig::default()) {
            Ok(agent) => agent,
            Err(e) => panic!("training on faq.json failed: {e}"),
        };
        let seconds = start.elapsed().as_secs_f64();
        let snapshot = agent.snapshot();
        let model = &snapshot.model;
        let calibration = model.calibration();
        let report = model.report();
        // Every example must reach the model: none dropped as a duplicate or
        // relabelled as a conflict after normalisation.
        assert_eq!(
            (
                report.rows_used,
                report.duplicates_dropped,
                report.conflicts_resolved
            ),
            (given, 0, 0),
            "{report:?}"
        );
        println!(
            "trained in {seconds:.3} s: {} rows, {} intents; calibration held out {} intents \
             ({} rows) and {} rows of the others; temperature {}, answer threshold {:.3}, \
             clarify mass {:.3}, held-out in-scope accuracy {:.3}, held-out oos recall {:.3}",
            report.rows_used,
            report.intents,
            calibration.report.held_out_intents,
            calibration.report.out_of_scope_rows,
            calibration.report.in_scope_rows,
            calibration.temperature,
            calibration.answer_threshold,
            calibration.clarify_mass,
            calibration.report.in_scope_accuracy,
            calibration.report.oos_recall,
        );
        (agent, seconds)
    })
}

fn predict(text: &str) -> Prediction {
    match agent().0.predict(text) {
        Ok(p) => p,
        Err(e) => panic!("predict({text:?}) failed: {e}"),
    }
}

#[test]
fn faq_has_the_intents_the_demo_needs() {
    let faq = faq();
    assert!(
        !faq.greeting.en.trim().is_empty() && !faq.greeting.zh.trim().is_empty(),
        "the greeting is in both languages"
    );
    let answers = faq
        .intents
        .iter()
        .filter(|i| i.action == Action::Answer)
        .count();
    assert!(answers >= 24, "{answers} answer intents, want at least 24");
    let handoffs: Vec<&str> = faq
        .intents
        .iter()
        .filter(|i| i.action == Action::Handoff)
        .map(|i| i.intent.as_str())
        .collect();
    assert_eq!(handoffs, ["human_agent"], "exactly one hand-off intent");

    let mut names = HashSet::new();
    let mut owner: HashMap<String, &str> = HashMap::new();
    for intent in &faq.intents {
        let name = intent.intent.as_str();
        assert!(!name.trim().is_empty(), "an intent has an empty name");
        assert!(names.insert(name), "intent {name} appears twice");
        assert!(
            !intent.answer.en.trim().is_empty() && !intent.answer.zh.trim().is_empty(),
            "{name}: both answers must be non-empty"
        );
        let zh = intent.examples.iter().filter(|e| has_cjk(e)).count();
        let en = intent.examples.len() - zh;
        assert!(
            en >= 12 && zh >= 12,
            "{name}: {en} English and {zh} Chinese examples, want at least 12 of each"
        );
        for example in &intent.examples {
            assert!(!example.trim().is_empty(), "{name}: an empty example");
            if let Some(other) = owner.insert(key(example), name) {
                panic!("{example:?} is an example of both {other} and {name}");
            }
        }
    }
    for required in ["greeting", "thanks", "order_status", "return_request"] {
        assert!(names.contains(required), "missing intent {required}");
    }

    // The held-out set must test generalisation: new phrasings of known intents only.
    for (text, intent) in HELD_OUT {
        assert!(
            names.contains(intent),
            "held-out row names unknown {intent}"
        );
        assert!(
            !owner.contains_key(&key(text)),
            "held-out {text:?} is in faq.json"
        );
    }
    let mut per_intent: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, intent) in HELD_OUT {
        *per_intent.entry(intent).or_default() += 1;
    }
    for name in &names {
        let n = per_intent.get(name).copied().unwrap_or(0);
        assert!(n >= 3, "{name}: {n} held-out questions, want at least 3");
    }
    for text in OUT_OF_SCOPE {
        assert!(!owner.contains_key(&key(text)), "{text:?} is in faq.json");
    }
}

#[test]
fn the_bot_recognises_new_phrasings() {
    let (_, seconds) = agent();
    let (mut right, mut answered, mut answered_wrong, mut served) = (0, 0, 0, 0);
    let mut misses = Vec::new();
    let mut not_answered = Vec::new();
    for &(text, want) in HELD_OUT {
        let p = predict(text);
        if &*p.intent == want {
            right += 1;
        } else {
            misses.push(format!(
                "  {text:?}: want {want}, got {} ({:.2}, {:?})",
                p.intent, p.confidence, p.decision
            ));
        }
        let offered = p.options.iter().any(|o| &*o.intent == want);
        match p.decision {
            Decision::Answer => {
                answered += 1;
                answered_wrong += usize::from(&*p.intent != want);
                served += usize::from(&*p.intent == want);
            }
            Decision::Clarify => served += usize::from(offered),
            Decision::HandOff => {}
        }
        if p.decision != Decision::Answer {
            let options: Vec<&str> = p.options.iter().map(|o| &*o.intent).collect();
            not_answered.push(format!(
                "  {text:?}: {:?} {} ({:.2}) {options:?}",
                p.decision, p.intent, p.confidence
            ));
        }
    }
    let n = HELD_OUT.len() as f64;
    let accuracy = right as f64 / n;
    let served_rate = served as f64 / n;
    let wrong_rate = answered_wrong as f64 / n;
    println!(
        "held-out: {right}/{} right (top-1 accuracy {:.1}%), {answered} answered ({answered_wrong} wrongly), \
         {served} answered right or asked about with the right option ({:.1}%); trained in {seconds:.3} s",
        HELD_OUT.len(),
        accuracy * 100.0,
        served_rate * 100.0
    );
    println!("misses (question: want, got):\n{}", misses.join("\n"));
    println!(
        "not answered (options offered):\n{}",
        not_answered.join("\n")
    );
    assert!(accuracy >= 0.90, "top-1 accuracy {accuracy:.3} < 0.90");
    // The product's promise: few wrong answers, and most questions either
    // answered right or asked about with the right intent among the buttons.
    // Measured 0.6% wrong and 98.1% served; the thresholds move with every
    // edit of the FAQ, so the floors leave room for that.
    assert!(wrong_rate <= 0.03, "answered wrong {wrong_rate:.3} > 0.03");
    assert!(
        served_rate >= 0.90,
        "answered right or rightly asked {served_rate:.3} < 0.90"
    );
}

#[test]
fn out_of_scope_questions_are_not_answered() {
    // "Low confidence": the top intent is less likely than all the others together.
    const LOW: f32 = 0.5;
    let mut handed_off = 0;
    let mut handed_off_or_low = 0;
    let mut lines = Vec::new();
    for &text in OUT_OF_SCOPE {
        let p = predict(text);
        if p.decision == Decision::HandOff {
            handed_off += 1;
        }
        if p.decision == Decision::HandOff || p.confidence < LOW {
            handed_off_or_low += 1;
        }
        lines.push(format!(
            "  {text:?}: {:?} {} ({:.2})",
            p.decision, p.intent, p.confidence
        ));
    }
    let n = OUT_OF_SCOPE.len() as f64;
    let handoff_rate = handed_off as f64 / n;
    let low_rate = handed_off_or_low as f64 / n;
    println!(
        "out of scope: {handed_off}/{} handed off ({:.1}%), {handed_off_or_low} handed off or below {LOW} ({:.1}%)\n{}",
        OUT_OF_SCOPE.len(),
        handoff_rate * 100.0,
        low_rate * 100.0,
        lines.join("\n")
    );
    let answered = lines.iter().filter(|l| l.contains(": Answer ")).count();
    let answered_rate = answered as f64 / n;
    // Measured with the default oos_weight (0.2): none answered, 28.1%
    // handed off, the rest asked about (offered nothing that fits, the
    // shopper rephrases or asks for a person), 78.1% handed off or below 0.5. Before the bot could
    // ask, 68.8% were handed off and the rest answered. The answered ones
    // share character n-grams with shop words ("sing" in "missing", "war" in
    // "warranty"); a server that wants more hand-offs raises oos_weight.
    assert!(answered_rate <= 0.10, "answered {answered_rate:.3} > 0.10");
    assert!(
        handoff_rate >= 0.20,
        "hand-off rate {handoff_rate:.3} < 0.20"
    );
    assert!(
        low_rate >= 0.75,
        "hand-off or low confidence {low_rate:.3} < 0.75"
    );
}

#[test]
fn asking_for_a_person_picks_the_handoff_intent() {
    for text in ["转人工", "I want to talk to a real person"] {
        let p = predict(text);
        println!(
            "{text:?}: {:?} {} ({:.2})",
            p.decision, p.intent, p.confidence
        );
        assert_eq!(&*p.intent, "human_agent", "{text:?}: {p:?}");
    }
}
