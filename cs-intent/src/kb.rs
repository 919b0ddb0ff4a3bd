//! The knowledge base: FAQ entries (id, question variants, answer, metadata)
//! embedded as dense vectors and indexed with `hnsw_rs` for top-k search.
//!
//! Every question variant is one point in the index. `hnsw_rs` has no delete,
//! so a deleted or replaced entry's points become tombstones that search skips,
//! and the index is rebuilt from the live points once tombstones pass a share
//! of the index ([`KbConfig::rebuild_tombstone_share`]).
//!
//! A KB built with a sentence encoder ([`KnowledgeBase::with_encoder`],
//! feature `embeddings`) indexes each question as its hashed n-gram vector
//! and its sentence embedding side by side, each of norm 1 (so the cosine is
//! the mean of the two): the n-grams keep exact words and Chinese, which an
//! English encoder reads poorly; the embedding finds paraphrases.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::encoder::{DenseSpec, TextEncoder};
use crate::error::IntentError;
use crate::kb_graph::{self, IndexCell, SavedGraph};
use crate::text::{hashed_terms, normalize, FeatureConfig};

/// One FAQ entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KbEntry {
    /// The shop's id for the entry (unique in the KB).
    pub id: String,
    /// Ways a shopper may ask it; each is indexed.
    pub questions: Vec<String>,
    /// The answer to send.
    pub answer: String,
    /// The intent this entry answers, if any: the agent answers a predicted
    /// intent from the best-matching entry tagged with it.
    pub intent: Option<String>,
    /// Free-form metadata (category, locale, product, ...).
    pub metadata: BTreeMap<String, String>,
}

/// Knobs of the index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KbConfig {
    /// Dimension of the dense embedding.
    pub dim: usize,
    /// HNSW links per node (at most 255: hnsw_rs stores it in a byte).
    pub max_connections: usize,
    /// HNSW candidate list size while building.
    pub ef_construction: usize,
    /// HNSW candidate list size while searching.
    pub ef_search: usize,
    /// Rebuild the index when tombstones exceed this share of its points.
    pub rebuild_tombstone_share: f32,
}

impl Default for KbConfig {
    fn default() -> Self {
        KbConfig {
            // Measured on 100,000 entries (README): recall@10 0.96 against
            // exhaustive search; larger values buy recall with latency.
            dim: 128,
            max_connections: 16,
            ef_construction: 100,
            ef_search: 48,
            rebuild_tombstone_share: 0.2,
        }
    }
}

/// A search result.
#[derive(Clone, Debug)]
pub struct KbHit {
    /// The entry.
    pub entry: Arc<KbEntry>,
    /// Cosine similarity of the query to the entry's closest question variant.
    pub similarity: f32,
}

/// Embeds text as a dense, L2-normalised vector: sublinear-TF character 1-3
/// grams and words, signed-hashed into `dim` buckets. No fitted state, so
/// entries can be added and removed without re-embedding the rest.
#[derive(Clone, Debug)]
pub struct Embedder {
    dim: usize,
    features: FeatureConfig,
}

impl Embedder {
    /// An embedder of the given dimension.
    pub fn new(dim: usize) -> Embedder {
        Embedder {
            dim: dim.max(8),
            features: FeatureConfig {
                hash_bits: 30,
                char_ngram_min: 1,
                char_ngram_max: 3,
                cjk_char_ngram_max: 0,
                word_ngram_max: 1,
                sublinear_tf: true,
                max_chars: 512,
            },
        }
    }

    /// The dense embedding of a text (all zeros when the text is empty).
    pub fn embed(&self, text: &str) -> Vec<f32> {
        let normalized = normalize(text, self.features.max_chars);
        let mut terms = Vec::new();
        hashed_terms(&normalized, &self.features, &mut terms);
        terms.sort_unstable();
        let mut v = vec![0.0f32; self.dim];
        let mut i = 0;
        while i < terms.len() {
            let mut j = i;
            while j < terms.len() && terms[j] == terms[i] {
                j += 1;
            }
            let h = terms[i];
            // The top hash bit is the sign, so collisions cancel rather than pile up.
            let sign = if h & (1 << 29) == 0 { 1.0 } else { -1.0 };
            v[(h as usize) % self.dim] += sign * (1.0 + ((j - i) as f32).ln());
            i = j;
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

/// One indexed question variant.
struct Point {
    entry: usize,
    vector: Vec<f32>,
}

/// A knowledge base as saved: entries, the embedded points and the HNSW graph
/// over them, so loading needs neither re-embedding nor re-indexing. Written
/// inside the checksummed agent file ([`crate::persist`]) or on its own by
/// [`KnowledgeBase::to_bytes`].
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SavedKb {
    config: KbConfig,
    /// Entries by slot; `None` for a deleted one whose points are tombstones.
    entries: Vec<Option<KbEntry>>,
    /// `(entry slot, embedding)` of every point, by hnsw data id.
    points: Vec<(u32, Vec<f32>)>,
    /// Points of deleted entries, still in the graph until the next rebuild.
    tombstones: Vec<u32>,
    /// The HNSW graph; `None` when there is no point (or it is to be rebuilt).
    graph: Option<SavedGraph>,
    /// The sentence encoder whose vectors follow the hashed part of every
    /// point, if the KB was built with one.
    dense: Option<DenseSpec>,
}

/// [`SavedKb`] as KB format 1 and agent format 2 wrote it (no sentence
/// embeddings): read, then upgraded.
#[derive(Deserialize)]
pub(crate) struct SavedKbV1 {
    config: KbConfig,
    entries: Vec<Option<KbEntry>>,
    points: Vec<(u32, Vec<f32>)>,
    tombstones: Vec<u32>,
    graph: Option<SavedGraph>,
}

impl From<SavedKbV1> for SavedKb {
    fn from(v1: SavedKbV1) -> SavedKb {
        SavedKb {
            config: v1.config,
            entries: v1.entries,
            points: v1.points,
            tombstones: v1.tombstones,
            graph: v1.graph,
            dense: None,
        }
    }
}

impl SavedKb {
    /// The saved configuration.
    pub fn config(&self) -> &KbConfig {
        &self.config
    }
}

/// The FAQ knowledge base.
pub struct KnowledgeBase {
    config: KbConfig,
    embedder: Embedder,
    /// Entries by slot; `None` once deleted.
    entries: Vec<Option<Arc<KbEntry>>>,
    by_id: HashMap<String, usize>,
    /// Points by hnsw data id.
    points: Vec<Point>,
    tombstones: HashSet<usize>,
    index: IndexCell,
    /// The sentence encoder whose vector joins each point, if any.
    encoder: Option<Arc<dyn TextEncoder>>,
}

impl std::fmt::Debug for KnowledgeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeBase")
            .field("entries", &self.len())
            .field("points", &self.points.len())
            .field("tombstones", &self.tombstones.len())
            .finish()
    }
}

fn new_index(config: &KbConfig, capacity: usize) -> IndexCell {
    IndexCell::empty(
        config.max_connections.clamp(4, kb_graph::MAX_CONNECTIONS),
        capacity.max(1024),
        config.ef_construction.max(16),
    )
}

impl KnowledgeBase {
    /// An empty knowledge base.
    pub fn new(config: KbConfig) -> KnowledgeBase {
        KnowledgeBase {
            embedder: Embedder::new(config.dim),
            index: new_index(&config, 1024),
            config,
            entries: Vec::new(),
            by_id: HashMap::new(),
            points: Vec::new(),
            tombstones: HashSet::new(),
            encoder: None,
        }
    }

    /// An empty knowledge base whose points also carry `encoder`'s sentence
    /// embedding (see the module docs).
    pub fn with_encoder(config: KbConfig, encoder: Arc<dyn TextEncoder>) -> KnowledgeBase {
        KnowledgeBase {
            encoder: Some(encoder),
            ..KnowledgeBase::new(config)
        }
    }

    /// The sentence encoder, if the KB uses one.
    pub fn encoder(&self) -> Option<&Arc<dyn TextEncoder>> {
        self.encoder.as_ref()
    }

    /// Length of every point's vector: the hashed part plus the embedding.
    fn point_dim(&self) -> usize {
        self.embedder.dim + self.encoder.as_ref().map_or(0, |e| e.dim())
    }

    /// Sentence embeddings of texts (batched), when the KB has an encoder.
    fn encode(&self, texts: &[&String]) -> Result<Option<Vec<Vec<f32>>>, IntentError> {
        let Some(encoder) = &self.encoder else {
            return Ok(None);
        };
        let normalized: Vec<String> = texts
            .iter()
            .map(|t| normalize(t, self.embedder.features.max_chars))
            .collect();
        let refs: Vec<&str> = normalized.iter().map(String::as_str).collect();
        encoder.encode_batch(&refs).map(Some)
    }

    /// A point's vector: the hashed embedding, then the sentence embedding
    /// (each of norm 1, the whole scaled back to norm 1). All zeros when the
    /// text has no hashed feature, so such a text is never indexed.
    fn join(&self, hashed: Vec<f32>, neural: Option<&[f32]>) -> Vec<f32> {
        let Some(encoder) = &self.encoder else {
            return hashed;
        };
        let mut v = hashed;
        if v.iter().all(|x| *x == 0.0) {
            v.resize(self.point_dim(), 0.0);
            return v;
        }
        match neural {
            Some(n) if n.len() == encoder.dim() => v.extend_from_slice(n),
            // No embedding (the encoder failed on a query): the hashed part alone.
            _ => v.resize(self.point_dim(), 0.0),
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    /// Build from many entries at once (points inserted in parallel).
    pub fn build(config: KbConfig, entries: Vec<KbEntry>) -> Result<KnowledgeBase, IntentError> {
        KnowledgeBase::build_into(KnowledgeBase::new(config), entries)
    }

    /// Build with a sentence encoder: every question variant is encoded
    /// (batched) and joins its hashed vector.
    pub fn build_with_encoder(
        config: KbConfig,
        entries: Vec<KbEntry>,
        encoder: Arc<dyn TextEncoder>,
    ) -> Result<KnowledgeBase, IntentError> {
        KnowledgeBase::build_into(KnowledgeBase::with_encoder(config, encoder), entries)
    }

    fn build_into(
        mut kb: KnowledgeBase,
        entries: Vec<KbEntry>,
    ) -> Result<KnowledgeBase, IntentError> {
        let mut last: HashMap<String, usize> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            last.insert(e.id.clone(), i);
        }
        let kept: Vec<KbEntry> = entries
            .into_iter()
            .enumerate()
            // A later entry with the same id replaces this one.
            .filter(|(i, e)| last.get(&e.id) == Some(i))
            .map(|(_, e)| e)
            .collect();
        let questions: Vec<&String> = kept.iter().flat_map(|e| &e.questions).collect();
        let mut neural = kb.encode(&questions)?.map(Vec::into_iter);
        for entry in kept {
            kb.check(&entry)?;
            let slot = kb.entries.len();
            kb.by_id.insert(entry.id.clone(), slot);
            for q in &entry.questions {
                let n = neural.as_mut().and_then(Iterator::next);
                let vector = kb.join(kb.embedder.embed(q), n.as_deref());
                if vector.iter().any(|x| *x != 0.0) {
                    kb.points.push(Point {
                        entry: slot,
                        vector,
                    });
                }
            }
            kb.entries.push(Some(Arc::new(entry)));
        }
        kb.rebuild();
        Ok(kb)
    }

    fn check(&self, entry: &KbEntry) -> Result<(), IntentError> {
        if entry
            .questions
            .iter()
            .all(|q| normalize(q, 64).chars().all(|c| !c.is_alphanumeric()))
        {
            return Err(IntentError::EmptyEntry(entry.id.clone()));
        }
        Ok(())
    }

    /// Number of live entries.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// True when the knowledge base has no live entry.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Points in the index that are tombstones (deleted, awaiting rebuild).
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// The configuration.
    pub fn config(&self) -> &KbConfig {
        &self.config
    }

    /// The live entries.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<KbEntry>> {
        self.entries.iter().flatten()
    }

    /// The entry with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<KbEntry>> {
        self.by_id
            .get(id)
            .and_then(|&slot| self.entries[slot].as_ref())
    }

    /// Add an entry, or replace the entry with the same id.
    pub fn upsert(&mut self, entry: KbEntry) -> Result<(), IntentError> {
        self.check(&entry)?;
        if self.by_id.contains_key(&entry.id) {
            self.delete(&entry.id)?;
        }
        let questions: Vec<&String> = entry.questions.iter().collect();
        let mut neural = self.encode(&questions)?.map(Vec::into_iter);
        let slot = self.entries.len();
        self.by_id.insert(entry.id.clone(), slot);
        for q in &entry.questions {
            let n = neural.as_mut().and_then(Iterator::next);
            let vector = self.join(self.embedder.embed(q), n.as_deref());
            if vector.iter().all(|x| *x == 0.0) {
                continue;
            }
            let id = self.points.len();
            self.index.with(|index| index.insert_slice((&vector, id)));
            self.points.push(Point {
                entry: slot,
                vector,
            });
        }
        self.entries.push(Some(Arc::new(entry)));
        Ok(())
    }

    /// Delete an entry: its points become tombstones, and the index is rebuilt
    /// when tombstones pass the configured share.
    pub fn delete(&mut self, id: &str) -> Result<(), IntentError> {
        let slot = self
            .by_id
            .remove(id)
            .ok_or_else(|| IntentError::UnknownEntry(id.to_string()))?;
        self.entries[slot] = None;
        for (pid, p) in self.points.iter().enumerate() {
            if p.entry == slot {
                self.tombstones.insert(pid);
            }
        }
        if self.tombstones.len() as f32
            > self.config.rebuild_tombstone_share * self.points.len().max(1) as f32
        {
            self.rebuild();
        }
        Ok(())
    }

    /// Rebuild the index from the live points, dropping every tombstone.
    pub fn rebuild(&mut self) {
        let live: Vec<Point> = std::mem::take(&mut self.points)
            .into_iter()
            .enumerate()
            .filter(|(pid, _)| !self.tombstones.contains(pid))
            .map(|(_, p)| p)
            .collect();
        self.tombstones.clear();
        self.points = live;
        self.index = new_index(&self.config, self.points.len());
        let batch: Vec<(&[f32], usize)> = self
            .points
            .iter()
            .enumerate()
            .map(|(id, p)| (p.vector.as_slice(), id))
            .collect();
        self.index.with(|index| index.parallel_insert_slice(&batch));
    }

    /// Capture everything needed to restore this KB without re-indexing.
    pub fn to_saved(&self) -> Result<SavedKb, IntentError> {
        let mut tombstones: Vec<u32> = self.tombstones.iter().map(|&t| t as u32).collect();
        tombstones.sort_unstable();
        Ok(SavedKb {
            config: self.config.clone(),
            entries: self
                .entries
                .iter()
                .map(|e| e.as_ref().map(|e| (**e).clone()))
                .collect(),
            points: self
                .points
                .iter()
                .map(|p| (p.entry as u32, p.vector.clone()))
                .collect(),
            tombstones,
            graph: self
                .index
                .with(|index| kb_graph::capture(index, self.points.len()))?,
            dense: self.encoder.as_ref().map(|e| DenseSpec {
                dim: e.dim() as u32,
                fingerprint: e.fingerprint(),
                weight: 1.0,
            }),
        })
    }

    /// Restore a KB from [`KnowledgeBase::to_saved`]. Every part is checked
    /// (ids unique, points pointing at entries, vectors of the configured
    /// dimension, the graph consistent); a mismatch is
    /// [`IntentError::Decode`], never a panic.
    ///
    /// A KB saved with sentence embeddings is [`IntentError::EncoderRequired`]
    /// here; use [`KnowledgeBase::from_saved_with_encoder`].
    pub fn from_saved(saved: SavedKb) -> Result<KnowledgeBase, IntentError> {
        KnowledgeBase::from_saved_with(saved, None)
    }

    /// Restore a KB from [`KnowledgeBase::to_saved`] with the sentence
    /// encoder it was built with (checked by fingerprint:
    /// [`IntentError::EncoderMismatch`] otherwise). A KB saved without
    /// embeddings loads as it was, without the encoder.
    pub fn from_saved_with_encoder(
        saved: SavedKb,
        encoder: Arc<dyn TextEncoder>,
    ) -> Result<KnowledgeBase, IntentError> {
        KnowledgeBase::from_saved_with(saved, Some(encoder))
    }

    pub(crate) fn from_saved_with(
        saved: SavedKb,
        encoder: Option<Arc<dyn TextEncoder>>,
    ) -> Result<KnowledgeBase, IntentError> {
        let bad = |what: String| IntentError::Decode(format!("knowledge base: {what}"));
        let SavedKb {
            config,
            entries,
            points,
            tombstones,
            graph,
            dense,
        } = saved;
        if !(8..=1 << 16).contains(&config.dim) {
            return Err(bad(format!("embedding dimension {}", config.dim)));
        }
        let mut kb = KnowledgeBase::new(config);
        if let Some(spec) = dense {
            let encoder = encoder.ok_or(IntentError::EncoderRequired)?;
            if spec.fingerprint != encoder.fingerprint() || spec.dim as usize != encoder.dim() {
                return Err(IntentError::EncoderMismatch {
                    stored: spec.fingerprint,
                    stored_dim: spec.dim as usize,
                    given: encoder.fingerprint(),
                    given_dim: encoder.dim(),
                });
            }
            kb.encoder = Some(encoder);
        }
        if points.is_empty() && graph.is_none() && tombstones.is_empty() {
            // No indexed point (entries whose questions all embed to zero): index them.
            let live = entries.into_iter().flatten().collect();
            return KnowledgeBase::build_into(kb, live);
        }
        for (slot, entry) in entries.iter().enumerate() {
            if let Some(entry) = entry {
                if kb.by_id.insert(entry.id.clone(), slot).is_some() {
                    return Err(bad(format!("entry id {:?} appears twice", entry.id)));
                }
            }
        }
        kb.entries = entries.into_iter().map(|e| e.map(Arc::new)).collect();
        for &t in &tombstones {
            if t as usize >= points.len() || !kb.tombstones.insert(t as usize) {
                return Err(bad(format!("tombstone {t} is not a point")));
            }
        }
        for (pid, (slot, _)) in points.iter().enumerate() {
            match kb.entries.get(*slot as usize) {
                None => return Err(bad(format!("point {pid} names no entry"))),
                Some(None) if !kb.tombstones.contains(&pid) => {
                    return Err(bad(format!("point {pid} of a deleted entry is live")))
                }
                _ => {}
            }
        }
        kb.points = points
            .into_iter()
            .map(|(entry, vector)| Point {
                entry: entry as usize,
                vector,
            })
            .collect();
        match graph {
            Some(graph) => {
                let vectors: Vec<&[f32]> = kb.points.iter().map(|p| p.vector.as_slice()).collect();
                kb.index = kb_graph::restore(&graph, &vectors, kb.point_dim())?;
            }
            None => {
                if let Some(pid) = kb
                    .points
                    .iter()
                    .position(|p| p.vector.len() != kb.point_dim())
                {
                    return Err(bad(format!("point {pid} has the wrong dimension")));
                }
                kb.rebuild();
            }
        }
        Ok(kb)
    }

    /// The dense vector this KB indexes a text as (for callers comparing
    /// with brute force). With an encoder that fails on the text, its hashed
    /// part alone.
    pub fn embed(&self, text: &str) -> Vec<f32> {
        self.embed_with(text, None)
    }

    /// [`KnowledgeBase::embed`] with the text's sentence embedding already
    /// computed (`neural`), so it is not encoded twice.
    pub fn embed_with(&self, text: &str, neural: Option<&[f32]>) -> Vec<f32> {
        let hashed = self.embedder.embed(text);
        if self.encoder.is_none() {
            return hashed;
        }
        let computed;
        let neural = match neural {
            Some(n) => Some(n),
            None => {
                computed = self
                    .encode(&[&text.to_string()])
                    .ok()
                    .flatten()
                    .and_then(|mut v| v.pop());
                computed.as_deref()
            }
        };
        self.join(hashed, neural)
    }

    /// The top `k` entries most similar to `query`, best first (one hit per entry).
    pub fn search(&self, query: &str, k: usize) -> Vec<KbHit> {
        self.search_vector(&self.embed(query), k)
    }

    /// Like [`KnowledgeBase::search`], for an already embedded query.
    pub fn search_vector(&self, query: &[f32], k: usize) -> Vec<KbHit> {
        if k == 0 || self.points.is_empty() || query.iter().all(|x| *x == 0.0) {
            return Vec::new();
        }
        // Ask for extra neighbours: tombstones and further variants of one entry are skipped.
        let want = (k * 2 + self.tombstones.len().min(k * 4)).min(self.points.len());
        let ef = self.config.ef_search.max(want);
        let mut hits: Vec<KbHit> = Vec::with_capacity(k);
        for n in self.index.with(|index| index.search(query, want, ef)) {
            if hits.len() == k {
                break;
            }
            if self.tombstones.contains(&n.d_id) {
                continue;
            }
            let Some(point) = self.points.get(n.d_id) else {
                continue;
            };
            let Some(entry) = self.entries[point.entry].as_ref() else {
                continue;
            };
            if hits.iter().any(|h| Arc::ptr_eq(&h.entry, entry)) {
                continue;
            }
            // Unit vectors: |a - b|^2 = 2 - 2 cos.
            hits.push(KbHit {
                entry: Arc::clone(entry),
                similarity: 1.0 - n.distance * n.distance / 2.0,
            });
        }
        hits
    }

    /// The top `k` entries by exhaustive search: the baseline for recall.
    pub fn search_exhaustive(&self, query: &[f32], k: usize) -> Vec<KbHit> {
        let mut best: HashMap<usize, f32> = HashMap::new();
        for (pid, p) in self.points.iter().enumerate() {
            if self.tombstones.contains(&pid) {
                continue;
            }
            let sim: f32 = p.vector.iter().zip(query).map(|(a, b)| a * b).sum();
            let e = best.entry(p.entry).or_insert(f32::NEG_INFINITY);
            *e = e.max(sim);
        }
        let mut ranked: Vec<(usize, f32)> = best.into_iter().collect();
        ranked.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        ranked
            .into_iter()
            .filter_map(|(slot, similarity)| {
                self.entries[slot].as_ref().map(|e| KbHit {
                    entry: Arc::clone(e),
                    similarity,
                })
            })
            .take(k)
            .collect()
    }

    /// The best entry tagged with `intent` for this question, if any is tagged.
    pub fn answer_for(&self, query: &str, intent: &str) -> Option<KbHit> {
        self.answer_for_embedded(query, None, intent)
    }

    /// [`KnowledgeBase::answer_for`] with the question's sentence embedding
    /// already computed (the agent encodes a question once).
    pub fn answer_for_embedded(
        &self,
        query: &str,
        neural: Option<&[f32]>,
        intent: &str,
    ) -> Option<KbHit> {
        let hits = self.search_vector(&self.embed_with(query, neural), 10);
        hits.into_iter()
            .find(|h| h.entry.intent.as_deref() == Some(intent))
            .or_else(|| {
                // The question matched no tagged entry closely: take any entry of the intent.
                self.entries()
                    .find(|e| e.intent.as_deref() == Some(intent))
                    .map(|e| KbHit {
                        entry: Arc::clone(e),
                        similarity: 0.0,
                    })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, q: &[&str], answer: &str, intent: Option<&str>) -> KbEntry {
        KbEntry {
            id: id.into(),
            questions: q.iter().map(|s| s.to_string()).collect(),
            answer: answer.into(),
            intent: intent.map(str::to_string),
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn search_update_delete_and_rebuild() {
        let mut kb = KnowledgeBase::build(
            KbConfig::default(),
            vec![
                entry(
                    "ship",
                    &["多久发货", "什么时候发货"],
                    "48小时内发货",
                    Some("shipping"),
                ),
                entry(
                    "refund",
                    &["怎么退款", "退款多久到账"],
                    "3-5个工作日到账",
                    Some("refund"),
                ),
                entry(
                    "invoice",
                    &["how do i get an invoice"],
                    "Account > Orders > Invoice",
                    None,
                ),
            ],
        )
        .unwrap();
        assert_eq!(kb.len(), 3);
        assert_eq!(kb.search("退款什么时候到账", 1)[0].entry.id, "refund");
        assert_eq!(kb.search("INVOICE please", 1)[0].entry.id, "invoice");

        kb.upsert(entry(
            "refund",
            &["退款怎么申请"],
            "在订单页申请",
            Some("refund"),
        ))
        .unwrap();
        assert_eq!(kb.len(), 3);
        assert_eq!(kb.get("refund").unwrap().answer, "在订单页申请");
        let hit = kb.answer_for("我要申请退款", "refund").unwrap();
        assert_eq!(hit.entry.answer, "在订单页申请");

        kb.delete("ship").unwrap();
        assert!(kb
            .search("多久发货", 3)
            .iter()
            .all(|h| h.entry.id != "ship"));
        assert_eq!(
            kb.tombstones(),
            0,
            "deleting past the share rebuilt the index"
        );
        assert!(matches!(
            kb.delete("ship"),
            Err(IntentError::UnknownEntry(_))
        ));
        assert!(matches!(
            kb.upsert(entry("blank", &["  ", "？"], "x", None)),
            Err(IntentError::EmptyEntry(_))
        ));
    }
}
