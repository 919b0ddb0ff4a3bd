//! [`IntentAgent`]: the model, the memory, the knowledge base and the cache
//! behind one `predict` that many threads call at once.
//!
//! Readers never wait for training: the model and the memory live together in
//! one immutable [`Snapshot`] behind an [`ArcSwap`], and every change (added
//! examples, a finished retrain) publishes a new snapshot with a new version.
//! A background thread owns retraining; its request channel has room for one
//! request, so a burst of `add_examples` calls coalesces into one retrain that
//! sees every row.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::{Condvar, Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::calibration::Decision;
use crate::discovery::{discover, DiscoveryConfig, SuggestedIntent};
use crate::encoder::{DenseSpec, EmbeddingStore, TextEncoder};
use crate::error::IntentError;
use crate::kb::{KbConfig, KbEntry, KbHit, KnowledgeBase};
use crate::memory::Memory;
use crate::model::{Example, IntentModel, ModelConfig};
use crate::text::{normalize, normalize_checked};

/// How the agent behaves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AgentConfig {
    /// Training and calibration.
    pub model: ModelConfig,
    /// A remembered example at least this similar (cosine) decides the answer.
    pub memory_threshold: f32,
    /// The memory threshold when the model's own confidence is below its
    /// hand-off threshold.
    pub memory_threshold_when_unsure: f32,
    /// A remembered example whose similarity on terms the model never saw
    /// reaches this decides the answer too (a brand-new intent's own words).
    pub memory_novel_floor: f32,
    /// Predictions kept in the cache.
    pub cache_capacity: usize,
    /// Alternatives returned with each prediction.
    pub alternatives: usize,
    /// Retrain in the background after `add_examples`.
    pub background_retrain: bool,
    /// The knowledge-base index.
    pub kb: KbConfig,
    /// Handed-off questions kept (in memory only) for intent discovery.
    pub handoff_log_capacity: usize,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            model: ModelConfig::default(),
            memory_threshold: 0.5,
            memory_threshold_when_unsure: 0.3,
            memory_novel_floor: 0.1,
            cache_capacity: 10_000,
            alternatives: 3,
            background_retrain: true,
            kb: KbConfig::default(),
            handoff_log_capacity: 10_000,
        }
    }
}

/// A sentence encoder for the agent, and how strongly its vectors count
/// next to the sparse features.
#[derive(Clone, Debug)]
pub struct Embeddings {
    /// The encoder (feature `embeddings`: [`crate::bert::SentenceEncoder`]).
    pub encoder: Arc<dyn TextEncoder>,
    /// Scale of the unit embedding appended to the unit TF-IDF vector.
    pub weight: f32,
}

impl Embeddings {
    /// The weight that won on BANKING77 (see the crate README).
    pub const DEFAULT_WEIGHT: f32 = 2.0;

    /// This encoder at [`Embeddings::DEFAULT_WEIGHT`].
    pub fn new(encoder: Arc<dyn TextEncoder>) -> Embeddings {
        Embeddings {
            encoder,
            weight: Embeddings::DEFAULT_WEIGHT,
        }
    }

    fn spec(&self) -> DenseSpec {
        DenseSpec {
            dim: self.encoder.dim() as u32,
            fingerprint: self.encoder.fingerprint(),
            weight: self.weight,
        }
    }
}

/// Where a prediction came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Source {
    /// The trained linear model.
    Model,
    /// A remembered example added since the last retrain.
    Memory,
}

/// An intent with its confidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Alternative {
    /// Intent name.
    pub intent: Arc<str>,
    /// Calibrated probability (or, from memory, cosine similarity).
    pub confidence: f32,
}

/// The agent's reading of one question.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// The most likely intent (also set when the decision is a hand-off).
    pub intent: Arc<str>,
    /// Its calibrated confidence in `[0, 1]`.
    pub confidence: f32,
    /// What to do: answer, ask which of the top intents was meant, or hand off.
    pub decision: Decision,
    /// The next most likely intents, best first.
    pub alternatives: Vec<Alternative>,
    /// For [`Decision::Clarify`]: the intents to offer, the top one first
    /// (2 to [`ModelConfig::clarify_options`](crate::ModelConfig::clarify_options));
    /// empty for the other decisions.
    pub options: Vec<Alternative>,
    /// The knowledge-base entry answering the intent, if the KB has one.
    pub answer: Option<KbHit>,
    /// Model or memory.
    pub source: Source,
    /// The question was longer than the configured limit and was cut.
    pub truncated: bool,
    /// The snapshot version that produced it.
    pub version: u64,
}

/// Counters since the agent was created.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AgentStats {
    /// `predict` calls that returned a prediction.
    pub predictions: u64,
    /// Of those, answered from the cache.
    pub cache_hits: u64,
    /// `cache_hits / predictions`.
    pub cache_hit_rate: f64,
    /// Predictions decided by the memory.
    pub memory_answers: u64,
    /// Predictions that handed off.
    pub handoffs: u64,
    /// Retrains completed.
    pub retrains: u64,
    /// Seconds the last retrain took.
    pub last_retrain_seconds: f64,
    /// Current snapshot version.
    pub version: u64,
    /// Training rows (including added ones).
    pub rows: usize,
    /// Examples in memory, waiting for a retrain.
    pub memory_size: usize,
    /// Stored sentence embeddings (0 without an encoder).
    pub embeddings_stored: usize,
    /// Texts the agent has sent to its encoder for training rows since it
    /// was created or loaded (stored vectors are never encoded again).
    pub embeddings_encoded: u64,
    /// Seconds spent encoding them.
    pub embeddings_encode_seconds: f64,
    /// Live knowledge-base entries.
    pub kb_entries: usize,
}

/// The model and the memory, published together.
pub struct Snapshot {
    /// The trained model.
    pub model: Arc<IntentModel>,
    /// Examples not yet in the model.
    pub memory: Arc<Memory>,
    /// Bumped by every change to model, memory or KB.
    pub version: u64,
}

#[derive(Default)]
struct Counters {
    predictions: AtomicU64,
    cache_hits: AtomicU64,
    memory_answers: AtomicU64,
    handoffs: AtomicU64,
}

#[derive(Default)]
struct RetrainState {
    completed: u64,
    last_seconds: f64,
    last_error: Option<String>,
}

pub(crate) struct Shared {
    pub(crate) config: AgentConfig,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    /// Every training row, including added ones: what a retrain learns from.
    pub(crate) rows: Mutex<Vec<Example>>,
    /// Serialises publishers (add_examples, retrain swap, KB changes), never readers.
    publish: Mutex<()>,
    pub(crate) kb: RwLock<KnowledgeBase>,
    /// The sentence encoder, when the agent uses embeddings.
    pub(crate) encoder: Option<Arc<dyn TextEncoder>>,
    /// Every training row's embedding; copied on write, so a retrain trains
    /// from a snapshot while `to_bytes` reads another.
    pub(crate) embeddings: Mutex<Arc<EmbeddingStore>>,
    handoff_log: Mutex<VecDeque<String>>,
    cache: quick_cache::sync::Cache<(u64, String), Prediction>,
    counters: Counters,
    retrain: Mutex<RetrainState>,
    retrain_done: Condvar,
}

impl Shared {
    fn publish(&self, model: Arc<IntentModel>, memory: Arc<Memory>) {
        let version = self.snapshot.load().version + 1;
        self.snapshot.store(Arc::new(Snapshot {
            model,
            memory,
            version,
        }));
        // Keys carry the version, so stale entries can never be served; clearing frees them.
        self.cache.clear();
    }

    fn retrain(&self) -> Result<(), IntentError> {
        let start = Instant::now();
        let rows = self.rows.lock().clone();
        let folded = rows.len();
        let model = match &self.encoder {
            None => IntentModel::train(&rows, &self.config.model)?,
            Some(encoder) => {
                let store = self.embed_rows(encoder.as_ref(), &rows)?;
                IntentModel::train_with_embeddings(&rows, &self.config.model, &store)?
            }
        };
        let model = Arc::new(model);
        {
            let _publisher = self.publish.lock();
            let current = self.snapshot.load();
            let memory = Arc::new(current.memory.after_retrain(folded, model.featurizer()));
            self.publish(model, memory);
        }
        let mut state = self.retrain.lock();
        state.completed += 1;
        state.last_seconds = start.elapsed().as_secs_f64();
        Ok(())
    }

    /// Encode the rows whose text has no stored embedding yet (only those),
    /// and return the store with every row's vector.
    fn embed_rows(
        &self,
        encoder: &dyn TextEncoder,
        rows: &[Example],
    ) -> Result<Arc<EmbeddingStore>, IntentError> {
        let max_chars = self.config.model.features.max_chars;
        let texts: Vec<String> = rows
            .iter()
            .map(|r| normalize(&r.text, max_chars))
            .filter(|t| !t.is_empty())
            .collect();
        let mut current = self.embeddings.lock();
        if texts.iter().any(|t| current.get(t).is_none()) {
            let mut next = (**current).clone();
            next.ensure(encoder, &texts)?;
            *current = Arc::new(next);
        }
        Ok(Arc::clone(&current))
    }
}

/// The background retrain thread. Dropping the sender is the shutdown signal:
/// the thread finishes the retrain in progress, sees the channel closed, exits.
struct RetrainWorker {
    requests: Option<SyncSender<()>>,
    handle: Option<JoinHandle<()>>,
}

fn retrain_loop(shared: Arc<Shared>, requests: Receiver<()>) {
    while requests.recv().is_ok() {
        let result = shared.retrain();
        let mut state = shared.retrain.lock();
        state.last_error = result.err().map(|e| e.to_string());
        if state.last_error.is_some() {
            state.completed += 1;
        }
        drop(state);
        shared.retrain_done.notify_all();
    }
}

/// The local bot: intent prediction with calibrated hand-off, incremental
/// learning, knowledge-base answers. `Send + Sync`: share it in an `Arc` and
/// call [`IntentAgent::predict`] from any number of threads.
///
/// ```
/// use cs_intent::{IntentAgent, AgentConfig, Example, Decision};
///
/// let rows = vec![
///     Example::new("where is my order", "order_status"),
///     Example::new("my parcel has not arrived", "order_status"),
///     Example::new("我的快递到哪了", "order_status"),
///     Example::new("i want a refund", "refund"),
///     Example::new("give me my money back", "refund"),
///     Example::new("我要退款", "refund"),
/// ];
/// let agent = IntentAgent::train(rows, AgentConfig::default())?;
/// let p = agent.predict("我的订单到哪了")?;
/// assert_eq!(&*p.intent, "order_status");
/// # Ok::<(), cs_intent::IntentError>(())
/// ```
pub struct IntentAgent {
    shared: Arc<Shared>,
    worker: RetrainWorker,
}

impl std::fmt::Debug for IntentAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntentAgent")
            .field("stats", &self.stats())
            .finish()
    }
}

impl IntentAgent {
    /// Train a new agent on labelled rows (at least two intents).
    pub fn train(rows: Vec<Example>, config: AgentConfig) -> Result<IntentAgent, IntentError> {
        let model = IntentModel::train(&rows, &config.model)?;
        let kb = KnowledgeBase::new(config.kb.clone());
        Ok(Self::assemble(
            config,
            rows,
            model,
            Memory::default(),
            kb,
            None,
            EmbeddingStore::default(),
        ))
    }

    /// Train a new agent whose classifier and knowledge base also use a
    /// sentence encoder: every row is encoded once (batched), its vector
    /// appended to the sparse features and stored with the agent, so
    /// retrains and saved agents reuse it.
    ///
    /// ```no_run
    /// # #[cfg(feature = "embeddings")] {
    /// use std::sync::Arc;
    /// use cs_intent::bert::SentenceEncoder;
    /// use cs_intent::{AgentConfig, Embeddings, Example, IntentAgent};
    ///
    /// let encoder = Arc::new(SentenceEncoder::load("/models/all-MiniLM-L6-v2")?);
    /// let rows = vec![
    ///     Example::new("where is my order", "order_status"),
    ///     Example::new("my parcel has not arrived", "order_status"),
    ///     Example::new("i want a refund", "refund"),
    ///     Example::new("give me my money back", "refund"),
    /// ];
    /// let agent =
    ///     IntentAgent::train_with_embeddings(rows, AgentConfig::default(), Embeddings::new(encoder.clone()))?;
    /// assert_eq!(&*agent.predict("has my package shipped yet")?.intent, "order_status");
    /// agent.save("agent.csi")?;
    /// // Loading needs the same model; the stored vectors are not recomputed.
    /// let again = IntentAgent::load_with_encoder("agent.csi", encoder)?;
    /// # }
    /// # Ok::<(), cs_intent::IntentError>(())
    /// ```
    pub fn train_with_embeddings(
        rows: Vec<Example>,
        config: AgentConfig,
        embeddings: Embeddings,
    ) -> Result<IntentAgent, IntentError> {
        let mut store = EmbeddingStore::new(embeddings.spec());
        let max_chars = config.model.features.max_chars;
        let texts: Vec<String> = rows
            .iter()
            .map(|r| normalize(&r.text, max_chars))
            .filter(|t| !t.is_empty())
            .collect();
        store.ensure(embeddings.encoder.as_ref(), &texts)?;
        let model = IntentModel::train_with_embeddings(&rows, &config.model, &store)?;
        let kb = KnowledgeBase::with_encoder(config.kb.clone(), Arc::clone(&embeddings.encoder));
        Ok(Self::assemble(
            config,
            rows,
            model,
            Memory::default(),
            kb,
            Some(embeddings.encoder),
            store,
        ))
    }

    pub(crate) fn assemble(
        config: AgentConfig,
        rows: Vec<Example>,
        model: IntentModel,
        memory: Memory,
        kb: KnowledgeBase,
        encoder: Option<Arc<dyn TextEncoder>>,
        embeddings: EmbeddingStore,
    ) -> IntentAgent {
        let shared = Arc::new(Shared {
            cache: quick_cache::sync::Cache::new(config.cache_capacity.max(1)),
            snapshot: ArcSwap::from_pointee(Snapshot {
                model: Arc::new(model),
                memory: Arc::new(memory),
                version: 1,
            }),
            rows: Mutex::new(rows),
            publish: Mutex::new(()),
            kb: RwLock::new(kb),
            encoder,
            embeddings: Mutex::new(Arc::new(embeddings)),
            handoff_log: Mutex::new(VecDeque::new()),
            counters: Counters::default(),
            retrain: Mutex::new(RetrainState::default()),
            retrain_done: Condvar::new(),
            config,
        });
        let worker = if shared.config.background_retrain {
            // Room for one pending request: later requests coalesce into it.
            let (tx, rx) = mpsc::sync_channel(1);
            let for_thread = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name("cs-intent-retrain".into())
                .spawn(move || retrain_loop(for_thread, rx))
                .ok();
            RetrainWorker {
                requests: handle.as_ref().map(|_| tx),
                handle,
            }
        } else {
            RetrainWorker {
                requests: None,
                handle: None,
            }
        };
        IntentAgent { shared, worker }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The configuration.
    pub fn config(&self) -> &AgentConfig {
        &self.shared.config
    }

    /// The current model and memory.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.snapshot.load_full()
    }

    /// Predict the intent of a question. An empty question is
    /// [`IntentError::EmptyText`]; a very long one is truncated at
    /// `FeatureConfig::max_chars` (and says so in [`Prediction::truncated`]).
    pub fn predict(&self, text: &str) -> Result<Prediction, IntentError> {
        let snapshot = self.shared.snapshot.load();
        let max_chars = snapshot.model.featurizer().config().max_chars;
        let (normalized, truncated) = normalize_checked(text, max_chars);
        if normalized.is_empty() || !normalized.chars().any(char::is_alphanumeric) {
            return Err(IntentError::EmptyText);
        }
        let counters = &self.shared.counters;
        counters.predictions.fetch_add(1, Ordering::Relaxed);
        let key = (snapshot.version, normalized);
        if let Some(hit) = self.shared.cache.get(&key) {
            counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            self.note_handoff(&hit, &key.1);
            return Ok(hit);
        }
        let normalized = &key.1;
        let model = &snapshot.model;
        // The sparse features alone feed the memory; the model also gets the
        // question's sentence embedding when it was trained with one.
        let x = model.featurizer().transform_normalized(normalized);
        let embedding = match (model.dense_spec(), &self.shared.encoder) {
            (Some(_), Some(encoder)) => encoder
                .encode_batch(&[normalized.as_str()])?
                .into_iter()
                .next(),
            _ => None,
        };
        let scored = match &embedding {
            Some(e) => model.score_vector(&model.features(normalized, Some(e))),
            None => model.score_vector(&x),
        };
        let intents = model.intents();
        let config = &self.shared.config;
        let n_alt = config.alternatives;
        let probabilities: Vec<f32> = scored
            .ranked
            .iter()
            .take(model.calibration().max_options)
            .map(|r| r.1)
            .collect();
        let verdict = model.calibration().decide(&probabilities);
        // When the model itself would hand off, a weaker memory match is
        // still the better guess: a new intent is what the model is unsure about.
        let model_unsure = verdict.decision == Decision::HandOff;
        let threshold = if model_unsure {
            config.memory_threshold_when_unsure
        } else {
            config.memory_threshold
        };
        let remembered = snapshot
            .memory
            .nearest(&x, threshold, config.memory_novel_floor);
        let mut prediction = match remembered {
            Some((entry, similarity)) => {
                counters.memory_answers.fetch_add(1, Ordering::Relaxed);
                Prediction {
                    intent: Arc::clone(&entry.intent),
                    confidence: similarity.min(1.0),
                    decision: Decision::Answer,
                    alternatives: scored
                        .ranked
                        .iter()
                        .filter(|(i, _)| intents[*i] != entry.intent)
                        .take(n_alt)
                        .map(|&(i, p)| Alternative {
                            intent: Arc::clone(&intents[i]),
                            confidence: p,
                        })
                        .collect(),
                    options: Vec::new(),
                    answer: None,
                    source: Source::Memory,
                    truncated,
                    version: snapshot.version,
                }
            }
            None => {
                let (top, p) = scored.ranked[0];
                let alternative = |&(i, p): &(usize, f32)| Alternative {
                    intent: Arc::clone(&intents[i]),
                    confidence: p,
                };
                Prediction {
                    intent: Arc::clone(&intents[top]),
                    confidence: p,
                    decision: verdict.decision,
                    options: scored.ranked[..verdict.options.min(scored.ranked.len())]
                        .iter()
                        .map(alternative)
                        .collect(),
                    alternatives: scored.ranked[1..]
                        .iter()
                        .take(n_alt)
                        .map(alternative)
                        .collect(),
                    answer: None,
                    source: Source::Model,
                    truncated,
                    version: snapshot.version,
                }
            }
        };
        self.note_handoff(&prediction, normalized);
        if prediction.decision != Decision::HandOff {
            let kb = self.shared.kb.read();
            if !kb.is_empty() {
                prediction.answer =
                    kb.answer_for_embedded(normalized, embedding.as_deref(), &prediction.intent);
            }
        }
        self.shared.cache.insert(key, prediction.clone());
        Ok(prediction)
    }

    /// Count a hand-off and keep its question for [`IntentAgent::discover`].
    fn note_handoff(&self, prediction: &Prediction, normalized: &str) {
        if prediction.decision != Decision::HandOff {
            return;
        }
        self.shared
            .counters
            .handoffs
            .fetch_add(1, Ordering::Relaxed);
        let capacity = self.shared.config.handoff_log_capacity;
        if capacity == 0 {
            return;
        }
        let mut log = self.shared.handoff_log.lock();
        // Bounded: the oldest question goes when the log is full.
        if log.len() >= capacity {
            log.pop_front();
        }
        log.push_back(normalized.to_string());
    }

    /// The most recent handed-off questions (normalised), oldest first.
    pub fn handed_off_questions(&self) -> Vec<String> {
        self.shared.handoff_log.lock().iter().cloned().collect()
    }

    /// Group the recent handed-off questions into suggested new intents
    /// (see [`crate::discovery`]).
    pub fn discover(&self, config: &DiscoveryConfig) -> Result<Vec<SuggestedIntent>, IntentError> {
        discover(&self.handed_off_questions(), config)
    }

    /// Add labelled rows: new examples, a brand-new intent, or an agent's
    /// correction of a wrong answer. They take effect for the next `predict`
    /// (through the memory), and a background retrain folds them into the model.
    /// Returns the new snapshot version.
    pub fn add_examples(
        &self,
        examples: impl IntoIterator<Item = Example>,
    ) -> Result<u64, IntentError> {
        let examples: Vec<Example> = examples.into_iter().collect();
        if let Some(row) = examples.iter().position(|e| e.intent.trim().is_empty()) {
            return Err(IntentError::EmptyIntent { row });
        }
        let version = {
            let _publisher = self.shared.publish.lock();
            let current = self.shared.snapshot.load_full();
            let mut memory = (*current.memory).clone();
            let mut rows = self.shared.rows.lock();
            for example in examples {
                memory.push(example.clone(), rows.len(), current.model.featurizer());
                rows.push(example);
            }
            drop(rows);
            self.shared
                .publish(Arc::clone(&current.model), Arc::new(memory));
            self.shared.snapshot.load().version
        };
        if let Some(requests) = &self.worker.requests {
            match requests.try_send(()) {
                // Full: a retrain is already pending and will read every row, these included.
                Ok(()) | Err(TrySendError::Full(())) => {}
                Err(TrySendError::Disconnected(())) => {}
            }
        }
        Ok(version)
    }

    /// Retrain on every row now, on this thread, and swap the new model in.
    pub fn retrain_now(&self) -> Result<(), IntentError> {
        self.shared.retrain()?;
        self.shared.retrain_done.notify_all();
        Ok(())
    }

    /// Block until at least `completed` retrains have finished, or the timeout
    /// passes. Returns the number completed and the last retrain error, if any.
    pub fn wait_for_retrains(&self, completed: u64, timeout: Duration) -> (u64, Option<String>) {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.retrain.lock();
        while state.completed < completed {
            if self
                .shared
                .retrain_done
                .wait_until(&mut state, deadline)
                .timed_out()
            {
                break;
            }
        }
        (state.completed, state.last_error.clone())
    }

    /// Add or replace a knowledge-base entry.
    pub fn kb_upsert(&self, entry: KbEntry) -> Result<(), IntentError> {
        self.shared.kb.write().upsert(entry)?;
        self.bump_version();
        Ok(())
    }

    /// Delete a knowledge-base entry.
    pub fn kb_delete(&self, id: &str) -> Result<(), IntentError> {
        self.shared.kb.write().delete(id)?;
        self.bump_version();
        Ok(())
    }

    /// Replace the whole knowledge base (built in parallel; with the
    /// agent's sentence encoder, if it has one).
    pub fn kb_replace(&self, entries: Vec<KbEntry>) -> Result<(), IntentError> {
        let config = self.shared.config.kb.clone();
        let kb = match &self.shared.encoder {
            Some(encoder) => {
                KnowledgeBase::build_with_encoder(config, entries, Arc::clone(encoder))?
            }
            None => KnowledgeBase::build(config, entries)?,
        };
        *self.shared.kb.write() = kb;
        self.bump_version();
        Ok(())
    }

    /// Top-`k` knowledge-base entries for a question.
    pub fn kb_search(&self, query: &str, k: usize) -> Vec<KbHit> {
        self.shared.kb.read().search(query, k)
    }

    fn bump_version(&self) {
        let _publisher = self.shared.publish.lock();
        let current = self.shared.snapshot.load_full();
        self.shared
            .publish(Arc::clone(&current.model), Arc::clone(&current.memory));
    }

    /// The sentence encoder, when the agent uses embeddings.
    pub fn encoder(&self) -> Option<&Arc<dyn TextEncoder>> {
        self.shared.encoder.as_ref()
    }

    /// Counters and sizes.
    pub fn stats(&self) -> AgentStats {
        let c = &self.shared.counters;
        let predictions = c.predictions.load(Ordering::Relaxed);
        let cache_hits = c.cache_hits.load(Ordering::Relaxed);
        let snapshot = self.shared.snapshot.load();
        let retrain = self.shared.retrain.lock();
        let embeddings = Arc::clone(&self.shared.embeddings.lock());
        AgentStats {
            predictions,
            cache_hits,
            cache_hit_rate: if predictions == 0 {
                0.0
            } else {
                cache_hits as f64 / predictions as f64
            },
            memory_answers: c.memory_answers.load(Ordering::Relaxed),
            handoffs: c.handoffs.load(Ordering::Relaxed),
            retrains: retrain.completed,
            last_retrain_seconds: retrain.last_seconds,
            version: snapshot.version,
            rows: self.shared.rows.lock().len(),
            memory_size: snapshot.memory.len(),
            embeddings_stored: embeddings.len(),
            embeddings_encoded: embeddings.encoded(),
            embeddings_encode_seconds: embeddings.encode_seconds(),
            kb_entries: self.shared.kb.read().len(),
        }
    }
}

/// Dropping the agent stops its retrain thread; a retrain in progress is
/// finished first (it takes about as long as the initial training).
impl Drop for IntentAgent {
    fn drop(&mut self) {
        // Closing the channel stops the worker after any retrain in progress.
        self.worker.requests.take();
        if let Some(handle) = self.worker.handle.take() {
            let _ = handle.join();
        }
    }
}
