//! Intent discovery: cluster unlabelled or handed-off questions into
//! suggested new intents, each with representative examples and keywords, so
//! a shop can label a whole group in one go.
//!
//! Questions are embedded as TF-IDF vectors fitted on the questions
//! themselves (character n-grams and words, like the classifier), folded into
//! a dense vector by signed hashing, and clustered with linfa's k-means.

use std::collections::HashMap;

use linfa::prelude::*;
use linfa::DatasetBase;
use linfa_clustering::KMeans;
use ndarray::Array2;

use crate::error::IntentError;
use crate::text::{normalize, FeatureConfig, Featurizer};

/// Knobs of a discovery run.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscoveryConfig {
    /// Number of groups; `None` picks `sqrt(n / 2)`, clamped to `2..=50`.
    pub clusters: Option<usize>,
    /// Dense dimension the TF-IDF vectors are folded into.
    pub dim: usize,
    /// Representative questions returned per group.
    pub examples: usize,
    /// Keywords returned per group.
    pub keywords: usize,
    /// k-means restarts (the best inertia wins).
    pub runs: usize,
    /// k-means iterations per restart at most: each costs
    /// `questions × clusters × dim` multiply-adds, so a big history wants
    /// fewer (see [`crate::history::HistoryConfig`]).
    pub max_iterations: u64,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            clusters: None,
            dim: 512,
            examples: 5,
            keywords: 3,
            runs: 4,
            max_iterations: 200,
        }
    }
}

/// One suggested intent.
#[derive(Clone, Debug, PartialEq)]
pub struct SuggestedIntent {
    /// Indices (into the input) of every question in the group, the
    /// closest to the group's centre first.
    pub members: Vec<usize>,
    /// The questions closest to the group's centre, most typical first.
    pub examples: Vec<String>,
    /// Words (or, for Chinese, character pairs) frequent in this group and rare elsewhere.
    pub keywords: Vec<String>,
    /// Mean cosine similarity of members to the centre: higher is a tighter group.
    pub cohesion: f32,
}

/// Terms a person can read: words for Latin text, character pairs for CJK runs.
fn readable_terms(normalized: &str) -> Vec<String> {
    let mut out = Vec::new();
    for token in normalized
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
    {
        let chars: Vec<char> = token.chars().collect();
        if chars.iter().any(|c| !c.is_ascii()) && chars.len() > 1 {
            out.extend(chars.windows(2).map(|w| w.iter().collect::<String>()));
        } else if chars.len() > 1 || !chars[0].is_ascii() {
            out.push(token.to_string());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Unit-length dense vectors for `texts`: TF-IDF fitted on the texts
/// themselves (character 1–3-grams and words), folded into `dim` (at least
/// 16) dimensions by signed hashing. Row `i` is `texts[i]`; the dot product
/// of two rows is their cosine similarity. Discovery clusters these, and
/// [`crate::history`] picks an answer medoid with them.
pub fn embed<S: AsRef<str>>(texts: &[S], dim: usize) -> Array2<f64> {
    let features = FeatureConfig {
        char_ngram_max: 3,
        ..FeatureConfig::default()
    };
    let featurizer = Featurizer::fit(features, texts);
    let dim = dim.max(16);
    let mut data = Array2::<f64>::zeros((texts.len(), dim));
    for (i, q) in texts.iter().enumerate() {
        let x = featurizer.transform(q.as_ref());
        let mut row = data.row_mut(i);
        for (index, value) in x.indices.iter().zip(&x.values) {
            // Signed folding keeps the inner products of the sparse vectors on average.
            let sign = if index & 0x8_0000 == 0 { 1.0 } else { -1.0 };
            row[*index as usize % dim] += sign * f64::from(*value);
        }
        let norm = row.dot(&row).sqrt();
        if norm > 0.0 {
            row.mapv_inplace(|v| v / norm);
        }
    }
    data
}

/// The number of groups for `n` questions, or why there cannot be any.
fn check_groups(n: usize, config: &DiscoveryConfig) -> Result<usize, IntentError> {
    let k = config
        .clusters
        .unwrap_or_else(|| ((n as f64 / 2.0).sqrt().round() as usize).clamp(2, 50));
    if k < 2 || k > n {
        return Err(IntentError::Discovery {
            questions: n,
            clusters: k,
            reason: "need at least 2 groups and at least as many questions as groups".into(),
        });
    }
    Ok(k)
}

/// Group questions into suggested intents, largest group first.
pub fn discover<S: AsRef<str>>(
    questions: &[S],
    config: &DiscoveryConfig,
) -> Result<Vec<SuggestedIntent>, IntentError> {
    // The checks run before the (costly) embedding too.
    check_groups(questions.len(), config)?;
    discover_embedded(questions, embed(questions, config.dim), config)
}

/// [`discover`] over vectors the caller made (one unit-length row per
/// question, such as [`embed`]'s, maybe with more features appended):
/// `questions` still give the examples and keywords. `config.dim` is
/// unused here.
pub fn discover_embedded<S: AsRef<str>>(
    questions: &[S],
    data: Array2<f64>,
    config: &DiscoveryConfig,
) -> Result<Vec<SuggestedIntent>, IntentError> {
    let n = questions.len();
    let k = check_groups(n, config)?;
    let fail = |reason: String| IntentError::Discovery {
        questions: n,
        clusters: k,
        reason,
    };
    if data.nrows() != n {
        return Err(fail(format!(
            "{} vectors for {n} questions; give one row per question",
            data.nrows()
        )));
    }
    let dataset = DatasetBase::from(data.clone());
    let model = KMeans::params(k)
        .n_runs(config.runs.max(1))
        .max_n_iterations(config.max_iterations.max(1))
        .tolerance(1e-5)
        .fit(&dataset)
        .map_err(|e| fail(e.to_string()))?;
    let memberships = model.predict(&data);
    let centroids = model.centroids();

    let normalized: Vec<String> = questions
        .iter()
        .map(|q| normalize(q.as_ref(), 512))
        .collect();
    let terms: Vec<Vec<String>> = normalized.iter().map(|q| readable_terms(q)).collect();
    let mut overall: HashMap<&str, usize> = HashMap::new();
    for t in terms.iter().flatten() {
        *overall.entry(t.as_str()).or_insert(0) += 1;
    }

    let mut groups: Vec<SuggestedIntent> = Vec::new();
    for cluster in 0..k {
        let members: Vec<usize> = (0..n).filter(|&i| memberships[i] == cluster).collect();
        if members.is_empty() {
            continue;
        }
        let centre = centroids.row(cluster);
        let centre_norm = centre.dot(&centre).sqrt().max(1e-12);
        let mut by_closeness: Vec<(usize, f64)> = members
            .iter()
            .map(|&i| (i, data.row(i).dot(&centre) / centre_norm))
            .collect();
        by_closeness.sort_by(|a, b| b.1.total_cmp(&a.1));
        let cohesion =
            (by_closeness.iter().map(|m| m.1).sum::<f64>() / members.len() as f64) as f32;
        let mut seen = std::collections::HashSet::new();
        let examples = by_closeness
            .iter()
            .map(|&(i, _)| questions[i].as_ref().to_string())
            .filter(|q| seen.insert(normalize(q, 512)))
            .take(config.examples)
            .collect();
        let mut inside: HashMap<&str, usize> = HashMap::new();
        for &i in &members {
            for t in &terms[i] {
                *inside.entry(t.as_str()).or_insert(0) += 1;
            }
        }
        // Share inside the group minus share outside it: frequent here, rare elsewhere.
        let outside_n = (n - members.len()).max(1) as f64;
        let mut scored: Vec<(&str, f64)> = inside
            .into_iter()
            .map(|(t, c)| {
                let out = (overall[t] - c) as f64;
                (t, c as f64 / members.len() as f64 - out / outside_n)
            })
            .collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(b.0)));
        groups.push(SuggestedIntent {
            keywords: scored
                .into_iter()
                .take(config.keywords)
                .map(|(t, _)| t.to_string())
                .collect(),
            members: by_closeness.iter().map(|&(i, _)| i).collect(),
            examples,
            cohesion,
        });
    }
    groups.sort_by_key(|g| std::cmp::Reverse(g.members.len()));
    Ok(groups)
}
