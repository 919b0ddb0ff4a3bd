//! The trained intent model: featuriser + linear classifier + calibration,
//! trained in one call from labelled rows.

use std::collections::HashMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::calibration::{self, Calibration, Fixed, HeldOut, RuleObjective};
use crate::classifier::{LinearModel, SplitMix, TrainConfig};
use crate::encoder::{append_dense, DenseSpec, EmbeddingStore};
use crate::error::IntentError;
use crate::text::{normalize, FeatureConfig, Featurizer, SparseVector};

/// One labelled training row.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Example {
    /// The shopper's question.
    pub text: String,
    /// The intent it expresses.
    pub intent: String,
}

impl Example {
    /// A row from anything string-like.
    pub fn new(text: impl Into<String>, intent: impl Into<String>) -> Example {
        Example {
            text: text.into(),
            intent: intent.into(),
        }
    }
}

/// Everything that shapes training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Text features.
    pub features: FeatureConfig,
    /// The linear SVM.
    pub svm: TrainConfig,
    /// Share of intents held out (as stand-ins for out-of-scope questions) in
    /// the calibration fit. With `calibration_row_share` also 0, no
    /// calibration is fitted and the agent never hands off.
    pub calibration_intent_share: f32,
    /// Share of the other intents' rows held out in the calibration fit.
    pub calibration_row_share: f32,
    /// Weight of out-of-scope recall against in-scope value when choosing
    /// the thresholds (see [`RuleObjective`]); 0 never hands off what it can ask about.
    pub oos_weight: f32,
    /// Wrong answers the threshold fit allows, as a share of held-out
    /// known-intent rows (3% is the product's budget; the fit aims a little
    /// under it, since the final model meets more intents than the fit's).
    pub max_wrong_answer_rate: f32,
    /// At most this many options in a clarifying question (2 or more).
    pub clarify_options: usize,
    /// Fix [`Calibration::answer_threshold`] instead of fitting it (above 1: never answer outright).
    pub answer_threshold: Option<f32>,
    /// Fix [`Calibration::clarify_mass`] instead of fitting it (0: always ask
    /// rather than hand off; above 1: never ask).
    pub clarify_mass: Option<f32>,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            features: FeatureConfig::default(),
            svm: TrainConfig::default(),
            calibration_intent_share: 0.2,
            calibration_row_share: 0.2,
            oos_weight: 0.2,
            max_wrong_answer_rate: 0.025,
            clarify_options: 3,
            answer_threshold: None,
            clarify_mass: None,
        }
    }
}

/// What training did with the rows it was given.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Rows given.
    pub rows_given: usize,
    /// Rows used after removing duplicates and empty texts.
    pub rows_used: usize,
    /// Exact duplicates (same normalised text, same intent) dropped.
    pub duplicates_dropped: usize,
    /// Texts given with different intents; the last row given wins (an agent's correction).
    pub conflicts_resolved: usize,
    /// Rows whose text normalised to nothing.
    pub empty_texts_dropped: usize,
    /// Distinct intents.
    pub intents: usize,
    /// Feature columns carrying weights.
    pub feature_columns: usize,
}

/// A trained intent model. Immutable: the agent swaps in a new one after a retrain.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IntentModel {
    intents: Vec<Arc<str>>,
    featurizer: Featurizer,
    linear: LinearModel,
    calibration: Calibration,
    report: TrainReport,
    /// The sentence embedding appended to the sparse features, when trained
    /// with one. Saved beside the model (with the vectors, in
    /// [`crate::persist`]), so files without embeddings keep their layout.
    #[serde(skip)]
    dense: Option<DenseSpec>,
}

/// Per-row sentence vectors for a fit (aligned with its texts), and their weight.
#[derive(Clone, Copy)]
struct Dense<'a> {
    vectors: &'a [&'a [f32]],
    weight: f32,
}

/// Rows cleaned for training: normalised texts with compact labels.
struct Cleaned {
    texts: Vec<String>,
    labels: Vec<u32>,
    intents: Vec<Arc<str>>,
}

fn clean(rows: &[Example], max_chars: usize) -> Result<(Cleaned, TrainReport), IntentError> {
    let mut report = TrainReport {
        rows_given: rows.len(),
        ..TrainReport::default()
    };
    // Last row wins for a text given twice, so a correction overrides the original label.
    let mut by_text: HashMap<String, (usize, &str)> = HashMap::new();
    for (i, row) in rows.iter().enumerate() {
        if row.intent.trim().is_empty() {
            return Err(IntentError::EmptyIntent { row: i });
        }
        let text = normalize(&row.text, max_chars);
        if text.is_empty() {
            report.empty_texts_dropped += 1;
            continue;
        }
        if let Some((_, old)) = by_text.insert(text, (i, &row.intent)) {
            if old == row.intent {
                report.duplicates_dropped += 1;
            } else {
                report.conflicts_resolved += 1;
            }
        }
    }
    if by_text.is_empty() {
        return Err(IntentError::EmptyTrainingSet);
    }
    let mut kept: Vec<(usize, String, &str)> =
        by_text.into_iter().map(|(t, (i, l))| (i, t, l)).collect();
    kept.sort_unstable_by_key(|k| k.0);
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut intents: Vec<Arc<str>> = Vec::new();
    let mut cleaned = Cleaned {
        texts: Vec::with_capacity(kept.len()),
        labels: Vec::with_capacity(kept.len()),
        intents: Vec::new(),
    };
    for (_, text, intent) in kept {
        let id = *ids.entry(intent).or_insert_with(|| {
            intents.push(Arc::from(intent));
            intents.len() as u32 - 1
        });
        cleaned.texts.push(text);
        cleaned.labels.push(id);
    }
    cleaned.intents = intents;
    report.rows_used = cleaned.texts.len();
    report.intents = cleaned.intents.len();
    if report.intents < 2 {
        return Err(IntentError::TooFewIntents {
            found: report.intents,
        });
    }
    Ok((cleaned, report))
}

fn fit_linear(
    texts: &[&str],
    dense: Option<Dense<'_>>,
    labels: &[u32],
    classes: usize,
    config: &ModelConfig,
) -> (Featurizer, LinearModel) {
    let featurizer = Featurizer::fit(config.features.clone(), texts);
    let rows: Vec<SparseVector> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut x = featurizer.transform_normalized(t);
            if let Some(d) = dense {
                append_dense(&mut x, d.vectors[i], d.weight);
            }
            x
        })
        .collect();
    let linear = LinearModel::train(&rows, labels, classes, &config.svm);
    (featurizer, linear)
}

/// No calibration fit: always answer, unless the host fixed the thresholds.
fn fixed_only(config: &ModelConfig) -> Calibration {
    let mut calibration = Calibration::uncalibrated(config.clarify_options);
    if let Some(a) = config.answer_threshold {
        calibration.answer_threshold = a;
    }
    if let Some(m) = config.clarify_mass {
        calibration.clarify_mass = m;
    }
    calibration
}

/// The internal calibration fit: hold out some intents and some rows, train on
/// the rest, and fit the calibration on how the held-out rows score.
fn calibrate(cleaned: &Cleaned, dense: Option<Dense<'_>>, config: &ModelConfig) -> Calibration {
    let k = cleaned.intents.len();
    let mut rng = SplitMix(config.svm.seed ^ 0xca1b);
    // Hold out intents only when at least 2 stay to train on.
    if config.calibration_intent_share <= 0.0 && config.calibration_row_share <= 0.0 {
        return fixed_only(config);
    }
    let held_intents = if k >= 4 && config.calibration_intent_share > 0.0 {
        ((k as f32 * config.calibration_intent_share).round() as usize).clamp(1, k - 2)
    } else {
        0
    };
    let mut order: Vec<usize> = (0..k).collect();
    rng.shuffle(&mut order);
    let mut new_label: Vec<Option<u32>> = vec![None; k];
    for (next, &intent) in order[held_intents..].iter().enumerate() {
        new_label[intent] = Some(next as u32);
    }
    let (mut fit_texts, mut fit_labels, mut held_rows) = (Vec::new(), Vec::new(), Vec::new());
    let mut fit_dense: Vec<&[f32]> = Vec::new();
    let mut seen_per_intent = vec![0usize; k];
    for (row, (text, &label)) in cleaned.texts.iter().zip(&cleaned.labels).enumerate() {
        match new_label[label as usize] {
            None => held_rows.push((row, None)),
            Some(l) => {
                // Keep the first row of each intent for training; then hold out by share.
                let seen = seen_per_intent[label as usize];
                seen_per_intent[label as usize] += 1;
                let hold = seen > 0
                    && (rng.next_u64() % 10_000) as f32 / 10_000.0 < config.calibration_row_share;
                if hold {
                    held_rows.push((row, Some(l as usize)));
                } else {
                    fit_texts.push(text.as_str());
                    fit_labels.push(l);
                    if let Some(d) = dense {
                        fit_dense.push(d.vectors[row]);
                    }
                }
            }
        }
    }
    let classes = k - held_intents;
    if held_rows.is_empty() || classes < 2 {
        return fixed_only(config);
    }
    let fit_dense = dense.map(|d| Dense {
        vectors: &fit_dense,
        weight: d.weight,
    });
    let (featurizer, linear) = fit_linear(&fit_texts, fit_dense, &fit_labels, classes, config);
    let held: Vec<HeldOut> = held_rows
        .iter()
        .map(|&(row, label)| {
            let mut x = featurizer.transform_normalized(&cleaned.texts[row]);
            if let Some(d) = dense {
                append_dense(&mut x, d.vectors[row], d.weight);
            }
            HeldOut {
                scores: linear.scores(&x),
                label,
            }
        })
        .collect();
    let objective = RuleObjective {
        oos_weight: config.oos_weight,
        max_wrong_answer_rate: config.max_wrong_answer_rate,
        max_options: config.clarify_options,
    };
    let fixed = Fixed {
        answer_threshold: config.answer_threshold,
        clarify_mass: config.clarify_mass,
    };
    let mut calibration = calibration::fit(&held, objective, fixed);
    calibration.report.held_out_intents = held_intents;
    calibration
}

/// A scored question: intent ids sorted best first with their probabilities.
#[derive(Clone, Debug)]
pub struct Scored {
    /// `(intent index, probability)`, best first, all intents.
    pub ranked: Vec<(usize, f32)>,
}

impl IntentModel {
    /// Train a model (and its calibration) on labelled rows. The calibration
    /// fit and the final fit run side by side on the rayon pool.
    pub fn train(rows: &[Example], config: &ModelConfig) -> Result<IntentModel, IntentError> {
        IntentModel::train_inner(rows, config, None)
    }

    /// Train with each row's sentence embedding appended to its sparse
    /// features (scaled by the store's [`DenseSpec::weight`]). Every row's
    /// normalised text must have a vector in `embeddings`
    /// ([`EmbeddingStore::ensure`] computes the missing ones); nothing is
    /// encoded here.
    pub fn train_with_embeddings(
        rows: &[Example],
        config: &ModelConfig,
        embeddings: &EmbeddingStore,
    ) -> Result<IntentModel, IntentError> {
        IntentModel::train_inner(rows, config, Some(embeddings))
    }

    fn train_inner(
        rows: &[Example],
        config: &ModelConfig,
        embeddings: Option<&EmbeddingStore>,
    ) -> Result<IntentModel, IntentError> {
        let (cleaned, mut report) = clean(rows, config.features.max_chars)?;
        let texts: Vec<&str> = cleaned.texts.iter().map(String::as_str).collect();
        let classes = cleaned.intents.len();
        let (spec, vectors) = match embeddings {
            None => (None, Vec::new()),
            Some(store) => {
                let spec = store.spec().ok_or_else(|| {
                    IntentError::Encoding("the embedding store has no encoder spec".into())
                })?;
                let vectors = texts
                    .iter()
                    .map(|t| {
                        store.get(t).ok_or_else(|| {
                            IntentError::Encoding(format!(
                                "no stored embedding for the training text {t:?}"
                            ))
                        })
                    })
                    .collect::<Result<Vec<&[f32]>, IntentError>>()?;
                (Some(spec), vectors)
            }
        };
        let dense = spec.map(|s| Dense {
            vectors: &vectors,
            weight: s.weight,
        });
        let (calibration, (featurizer, linear)) = rayon::join(
            || calibrate(&cleaned, dense, config),
            || fit_linear(&texts, dense, &cleaned.labels, classes, config),
        );
        report.feature_columns = linear.columns();
        Ok(IntentModel {
            intents: cleaned.intents,
            featurizer,
            linear,
            calibration,
            report,
            dense: spec,
        })
    }

    /// The sentence embedding this model expects beside the sparse
    /// features, if it was trained with one.
    pub fn dense_spec(&self) -> Option<DenseSpec> {
        self.dense
    }

    /// Attach the spec saved beside the model (see [`crate::persist`]).
    pub(crate) fn set_dense_spec(&mut self, spec: Option<DenseSpec>) {
        self.dense = spec;
    }

    /// The feature vector of a normalised question: its sparse features,
    /// plus its sentence embedding when the model was trained with one
    /// (`embedding` is then required; without it the dense part counts as zero).
    pub fn features(&self, normalized: &str, embedding: Option<&[f32]>) -> SparseVector {
        let mut x = self.featurizer.transform_normalized(normalized);
        if let (Some(spec), Some(e)) = (self.dense, embedding) {
            append_dense(&mut x, e, spec.weight);
        }
        x
    }

    /// Check that the parts of a decoded model fit together.
    pub fn validate(&self) -> Result<(), String> {
        self.featurizer.validate()?;
        if let Some(spec) = self.dense {
            if !(1..=1 << 16).contains(&spec.dim) || !spec.weight.is_finite() {
                return Err(format!(
                    "embedding dimension {} with weight {}",
                    spec.dim, spec.weight
                ));
            }
        }
        self.linear.validate()?;
        if self.intents.len() != self.linear.classes() || self.intents.len() < 2 {
            return Err(format!(
                "{} intent names for {} classes",
                self.intents.len(),
                self.linear.classes()
            ));
        }
        Ok(())
    }

    /// The intents this model knows, by index.
    pub fn intents(&self) -> &[Arc<str>] {
        &self.intents
    }

    /// The featuriser (its IDF was fitted on this model's training rows).
    pub fn featurizer(&self) -> &Featurizer {
        &self.featurizer
    }

    /// The fitted calibration.
    pub fn calibration(&self) -> &Calibration {
        &self.calibration
    }

    /// What training did.
    pub fn report(&self) -> &TrainReport {
        &self.report
    }

    /// Raw decision values of every intent (before calibration), by intent index.
    pub fn raw_scores(&self, x: &SparseVector) -> Vec<f32> {
        self.linear.scores(x)
    }

    /// Calibrated probabilities for a feature vector, best first.
    pub fn score_vector(&self, x: &SparseVector) -> Scored {
        let mut scores = self.linear.scores(x);
        self.calibration.probabilities(&mut scores);
        let mut ranked: Vec<(usize, f32)> = scores.into_iter().enumerate().collect();
        ranked.sort_unstable_by(|a, b| b.1.total_cmp(&a.1));
        Scored { ranked }
    }

    /// Calibrated probabilities for a normalised question, best first, from
    /// its sparse features alone. A model trained with sentence embeddings
    /// wants [`IntentModel::score_vector`] of [`IntentModel::features`] with
    /// the question's embedding instead (here its dense part counts as zero).
    pub fn score_normalized(&self, normalized: &str) -> Scored {
        self.score_vector(&self.featurizer.transform_normalized(normalized))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_single_intent_sets_are_typed_errors() {
        let config = ModelConfig::default();
        assert!(matches!(
            IntentModel::train(&[], &config),
            Err(IntentError::EmptyTrainingSet)
        ));
        assert!(matches!(
            IntentModel::train(&[Example::new("  ", "a")], &config),
            Err(IntentError::EmptyTrainingSet)
        ));
        assert!(matches!(
            IntentModel::train(&[Example::new("hi", "a"), Example::new("ho", "a")], &config),
            Err(IntentError::TooFewIntents { found: 1 })
        ));
        assert!(matches!(
            IntentModel::train(&[Example::new("hi", "")], &config),
            Err(IntentError::EmptyIntent { row: 0 })
        ));
    }

    #[test]
    fn a_well_checksummed_but_inconsistent_file_is_a_decode_error() {
        use crate::agent::{AgentConfig, IntentAgent};
        use crate::persist::{encode, SavedAgent};
        let rows = vec![
            Example::new("where is my parcel", "track"),
            Example::new("refund please", "refund"),
            Example::new("money back", "refund"),
        ];
        let mut model = IntentModel::train(&rows, &ModelConfig::default()).unwrap();
        // One intent name fewer than the classifier has classes.
        model.intents.pop();
        let saved = SavedAgent {
            config: AgentConfig::default(),
            rows,
            model,
            memory: Vec::new(),
            kb: Default::default(),
            embeddings: None,
        };
        let bytes = encode(&saved).unwrap();
        assert!(matches!(
            IntentAgent::from_bytes(&bytes),
            Err(IntentError::Decode(_))
        ));
    }

    #[test]
    fn duplicates_and_conflicts_are_counted_and_last_row_wins() {
        let rows = vec![
            Example::new("where is my parcel", "track"),
            Example::new("Where is my  parcel", "track"),
            Example::new("refund please", "track"),
            Example::new("refund please", "refund"),
            Example::new("money back", "refund"),
        ];
        let model = IntentModel::train(&rows, &ModelConfig::default()).unwrap();
        let r = model.report();
        assert_eq!(r.duplicates_dropped, 1);
        assert_eq!(r.conflicts_resolved, 1);
        assert_eq!(r.rows_used, 3);
        let top = model.score_normalized("refund please").ranked[0].0;
        assert_eq!(&*model.intents()[top], "refund");
    }
}
