//! A knowledge base saved with its HNSW graph loads without re-indexing and
//! answers exactly as before; a damaged, truncated, foreign or future file is
//! a typed error.

use std::collections::BTreeMap;

use cs_intent::persist::{KB_FORMAT_VERSION, KB_MAGIC};
use cs_intent::{AgentConfig, Example, IntentAgent, IntentError, KbConfig, KbEntry, KnowledgeBase};

const TOPICS: [&str; 10] = [
    "where is my parcel",
    "how do i get a refund",
    "my card was declined",
    "change my delivery address",
    "我的快递到哪了",
    "退款多久到账",
    "发票怎么开",
    "can i cancel my order",
    "the item arrived broken",
    "修改收货地址",
];
const DETAILS: [&str; 8] = [
    "running shoes",
    "rice cooker",
    "蓝牙耳机",
    "winter jacket",
    "保温杯",
    "desk lamp",
    "儿童书包",
    "phone case",
];

fn entry(i: usize) -> KbEntry {
    KbEntry {
        id: format!("faq-{i}"),
        questions: vec![
            format!(
                "{} {} #{}",
                TOPICS[i % TOPICS.len()],
                DETAILS[(i / 10) % DETAILS.len()],
                i
            ),
            format!("{} please ({})", TOPICS[(i * 7) % TOPICS.len()], i % 97),
        ],
        answer: format!("answer {i}"),
        intent: Some(format!("topic-{}", i % TOPICS.len())),
        metadata: BTreeMap::new(),
    }
}

/// A KB large enough that its graph has several layers.
fn kb(n: usize) -> KnowledgeBase {
    KnowledgeBase::build(KbConfig::default(), (0..n).map(entry).collect()).unwrap()
}

fn queries() -> Vec<String> {
    (0..200)
        .map(|i| {
            format!(
                "{} {} {}",
                TOPICS[(i * 3) % TOPICS.len()],
                DETAILS[i % DETAILS.len()],
                i * 31
            )
        })
        .collect()
}

/// Every query's top 10: ids and similarity bits.
fn answers(kb: &KnowledgeBase) -> Vec<Vec<(String, u32)>> {
    queries()
        .iter()
        .map(|q| {
            kb.search(q, 10)
                .into_iter()
                .map(|h| (h.entry.id.clone(), h.similarity.to_bits()))
                .collect()
        })
        .collect()
}

#[test]
fn a_round_trip_gives_identical_search_results() {
    let original = kb(3_000);
    let bytes = original.to_bytes().unwrap();
    let loaded = KnowledgeBase::from_bytes(&bytes).unwrap();
    assert_eq!(loaded.len(), original.len());
    let before = answers(&original);
    assert!(before.iter().all(|hits| hits.len() == 10));
    assert_eq!(answers(&loaded), before);
    // The restored graph is the saved one, so saving it again gives the same bytes.
    assert_eq!(loaded.to_bytes().unwrap(), bytes);
}

#[test]
fn a_loaded_kb_keeps_its_tombstones_and_takes_new_entries() {
    let mut original = kb(1_000);
    original.delete("faq-3").unwrap();
    assert_eq!(original.tombstones(), 2, "two question variants");
    let mut loaded = KnowledgeBase::from_bytes(&original.to_bytes().unwrap()).unwrap();
    assert_eq!(loaded.tombstones(), 2);
    assert!(loaded.get("faq-3").is_none());
    assert_eq!(answers(&loaded), answers(&original));

    let fresh = KbEntry {
        id: "gift-wrap".into(),
        questions: vec!["do you offer gift wrapping".into()],
        answer: "Yes, at checkout.".into(),
        intent: None,
        metadata: BTreeMap::new(),
    };
    loaded.upsert(fresh).unwrap();
    let hit = &loaded.search("Do you offer gift wrapping?", 1)[0];
    assert_eq!(hit.entry.id, "gift-wrap");
    assert_eq!(loaded.len(), original.len() + 1);
    loaded.delete("faq-4").unwrap();
    assert!(loaded
        .search(&entry(4).questions[0], 5)
        .iter()
        .all(|h| h.entry.id != "faq-4"));
}

#[test]
fn an_empty_kb_round_trips() {
    let empty = KnowledgeBase::new(KbConfig::default());
    let loaded = KnowledgeBase::from_bytes(&empty.to_bytes().unwrap()).unwrap();
    assert!(loaded.is_empty());
    assert!(loaded.search("anything", 3).is_empty());
}

#[test]
fn corrupt_bytes_are_a_checksum_error() {
    let mut bytes = kb(300).to_bytes().unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    assert!(matches!(
        KnowledgeBase::from_bytes(&bytes),
        Err(IntentError::ChecksumMismatch)
    ));
}

#[test]
fn a_truncated_file_is_a_truncation_error() {
    let bytes = kb(300).to_bytes().unwrap();
    for cut in [bytes.len() - 1, bytes.len() / 3, 12] {
        assert!(
            matches!(
                KnowledgeBase::from_bytes(&bytes[..cut]),
                Err(IntentError::Truncated { .. })
            ),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_wrong_version_or_magic_is_refused() {
    let mut bytes = kb(100).to_bytes().unwrap();
    assert_eq!(bytes[..8], KB_MAGIC);
    bytes[8..10].copy_from_slice(&(KB_FORMAT_VERSION + 1).to_le_bytes());
    assert!(matches!(
        KnowledgeBase::from_bytes(&bytes),
        Err(IntentError::UnsupportedVersion { found, .. }) if found == KB_FORMAT_VERSION + 1
    ));
    bytes[..8].copy_from_slice(b"NOTAKBFL");
    assert!(matches!(
        KnowledgeBase::from_bytes(&bytes),
        Err(IntentError::NotAModelFile)
    ));
    assert!(matches!(
        KnowledgeBase::from_bytes(b""),
        Err(IntentError::NotAModelFile)
    ));
}

#[test]
fn an_agent_file_carries_its_kb_graph() {
    let rows = vec![
        Example::new("where is my parcel", "track"),
        Example::new("我的快递到哪了", "track"),
        Example::new("refund please", "refund"),
        Example::new("退款多久到账", "refund"),
    ];
    let agent = IntentAgent::train(rows, AgentConfig::default()).unwrap();
    agent.kb_replace((0..500).map(entry).collect()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.csi");
    agent.save(&path).unwrap();
    let loaded = IntentAgent::load(&path).unwrap();
    for q in queries().iter().take(50) {
        let a: Vec<String> = agent
            .kb_search(q, 5)
            .iter()
            .map(|h| h.entry.id.clone())
            .collect();
        let b: Vec<String> = loaded
            .kb_search(q, 5)
            .iter()
            .map(|h| h.entry.id.clone())
            .collect();
        assert_eq!(a, b, "{q}");
    }
}
