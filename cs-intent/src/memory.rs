//! The nearest-neighbour memory: examples added since the last retrain
//! (new rows, a brand-new intent, an agent's correction) that must take
//! effect for the very next prediction, before the background retrain folds
//! them into the linear model.

use std::sync::Arc;

use crate::model::Example;
use crate::text::{normalize, Featurizer, SparseVector};

/// One remembered example.
#[derive(Clone, Debug)]
pub struct MemoryEntry {
    /// The example as given.
    pub example: Example,
    /// Its position in the agent's training rows: a retrain that saw rows
    /// `0..n` makes every entry with `row < n` redundant.
    pub row: usize,
    /// Its feature vector under the current model's featuriser.
    pub vector: SparseVector,
    /// The part of `vector` on buckets the model never saw in training:
    /// words of a brand-new intent.
    pub novel: SparseVector,
    /// The intent, shared.
    pub intent: Arc<str>,
}

/// Examples not yet folded into the model, searched by cosine similarity.
#[derive(Clone, Debug, Default)]
pub struct Memory {
    entries: Vec<MemoryEntry>,
}

impl Memory {
    /// Number of remembered examples.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is waiting to be folded into the model.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The remembered examples.
    pub fn entries(&self) -> &[MemoryEntry] {
        &self.entries
    }

    /// Remember one example, featurised with `featurizer`. Empty texts are skipped.
    pub fn push(&mut self, example: Example, row: usize, featurizer: &Featurizer) {
        let vector = featurizer
            .transform_normalized(&normalize(&example.text, featurizer.config().max_chars));
        if vector.is_empty() {
            return;
        }
        // A later example with the same text replaces the earlier one: a correction wins.
        self.entries.retain(|e| e.vector != vector);
        let intent = Arc::from(example.intent.as_str());
        let mut novel = SparseVector::default();
        for (i, v) in vector.indices.iter().zip(&vector.values) {
            if !featurizer.has_seen(*i) {
                novel.indices.push(*i);
                novel.values.push(*v);
            }
        }
        self.entries.push(MemoryEntry {
            example,
            row,
            vector,
            novel,
            intent,
        });
    }

    /// The entries a retrain on rows `0..folded_rows` did not see, re-featurised
    /// with the new model's featuriser.
    pub fn after_retrain(&self, folded_rows: usize, featurizer: &Featurizer) -> Memory {
        let mut next = Memory::default();
        for e in self.entries.iter().filter(|e| e.row >= folded_rows) {
            next.push(e.example.clone(), e.row, featurizer);
        }
        next
    }

    /// The most similar remembered example that decides the answer, and its
    /// cosine similarity: one at least `threshold` similar, or one sharing at
    /// least `novel_floor` of similarity on terms the model never saw (the
    /// model cannot weigh those, so it must not outvote them).
    pub fn nearest(
        &self,
        x: &SparseVector,
        threshold: f32,
        novel_floor: f32,
    ) -> Option<(&MemoryEntry, f32)> {
        self.entries
            .iter()
            .filter_map(|e| {
                let sim = e.vector.dot(x);
                (sim >= threshold || e.novel.dot(x) >= novel_floor).then_some((e, sim))
            })
            .max_by(|a, b| a.1.total_cmp(&b.1))
    }
}
