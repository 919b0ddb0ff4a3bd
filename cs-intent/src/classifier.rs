//! A sparse linear multi-class model: one-vs-rest L2-loss linear SVMs trained
//! by dual coordinate descent (Hsieh et al. 2008, the LIBLINEAR solver).
//!
//! Written here rather than taken from linfa because linfa's linear models
//! take dense `ndarray` matrices, and 10,000 rows x 2^20 hashed features
//! (or 77 classes x 2^20 weights) would not fit dense.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::text::SparseVector;

/// Knobs of the linear SVM.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Inverse regularisation strength (LIBLINEAR's `C`).
    pub c: f32,
    /// Upper bound on passes over the data per class.
    pub max_epochs: u32,
    /// Stop when the projected-gradient spread falls below this (LIBLINEAR's `eps`).
    pub tolerance: f32,
    /// Seed of the coordinate order, so training is reproducible.
    pub seed: u64,
    /// Scale `c` for an intent's own rows by `(mean rows per intent / its rows)`,
    /// capped at this factor, so an intent with few examples (one just added) is
    /// not drowned by the others. 1 disables it.
    pub max_class_weight: f32,
    /// Weight of an L2-regularised logistic regression blended into the SVM:
    /// both are trained per class on the same rows, and the model keeps
    /// `svm + logistic_weight * logistic` (a sum of linear models is one
    /// linear model, so prediction costs the same). 0 trains the SVM alone.
    pub logistic_weight: f32,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            c: 1.0,
            max_epochs: 50,
            tolerance: 0.1,
            seed: 0x5eed,
            max_class_weight: 5.0,
            logistic_weight: 0.0,
        }
    }
}

/// A tiny SplitMix64 generator: the coordinate order only needs to be
/// shuffled reproducibly, not cryptographically.
#[derive(Clone, Debug)]
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub(crate) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

/// A trained one-vs-rest linear model over hashed sparse features.
///
/// Weights are stored feature-major for the buckets seen in training only,
/// so predicting a question touches one contiguous row of `classes` weights
/// per non-zero feature.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LinearModel {
    classes: usize,
    /// Hash buckets that carry weights, sorted.
    columns: Vec<u32>,
    /// `weights[col * classes + class]`.
    weights: Vec<f32>,
    /// One intercept per class.
    bias: Vec<f32>,
}

/// A training row remapped to compact column ids.
struct CompactRow {
    cols: Vec<u32>,
    vals: Vec<f32>,
    sq_norm: f32,
}

impl LinearModel {
    /// Train on rows labelled `0..classes`. Rows and labels have the same
    /// length, and every label is below `classes` (the caller checks both).
    pub fn train(
        rows: &[SparseVector],
        labels: &[u32],
        classes: usize,
        config: &TrainConfig,
    ) -> LinearModel {
        let mut columns: Vec<u32> = rows
            .iter()
            .flat_map(|r| r.indices.iter().copied())
            .collect();
        columns.sort_unstable();
        columns.dedup();
        let compact: Vec<CompactRow> = rows
            .iter()
            .map(|r| {
                let cols = r
                    .indices
                    .iter()
                    .map(|i| columns.binary_search(i).unwrap_or(0) as u32)
                    .collect();
                CompactRow {
                    cols,
                    vals: r.values.clone(),
                    // + 1 for the constant bias feature.
                    sq_norm: r.values.iter().map(|v| v * v).sum::<f32>() + 1.0,
                }
            })
            .collect();
        let n_cols = columns.len();
        let mut counts = vec![0usize; classes];
        for &l in labels {
            counts[l as usize] += 1;
        }
        let mean = labels.len() as f32 / classes.max(1) as f32;
        let per_class: Vec<(Vec<f32>, f32)> = (0..classes)
            .into_par_iter()
            .map(|class| {
                let y: Vec<f32> = labels
                    .iter()
                    .map(|&l| if l as usize == class { 1.0 } else { -1.0 })
                    .collect();
                let mut rng = SplitMix(config.seed ^ (class as u64).wrapping_mul(0x9e37));
                let weight = (mean / counts[class].max(1) as f32)
                    .clamp(1.0, config.max_class_weight.max(1.0));
                let (mut w, mut b) = train_binary(&compact, &y, n_cols, config, weight, &mut rng);
                if config.logistic_weight > 0.0 {
                    let (lw, lb) = train_logistic(&compact, &y, n_cols, config, weight, &mut rng);
                    for (w, l) in w.iter_mut().zip(lw) {
                        *w += config.logistic_weight * l;
                    }
                    b += config.logistic_weight * lb;
                }
                (w, b)
            })
            .collect();
        let mut weights = vec![0.0f32; n_cols * classes];
        let mut bias = vec![0.0f32; classes];
        for (class, (w, b)) in per_class.into_iter().enumerate() {
            for (col, value) in w.into_iter().enumerate() {
                weights[col * classes + class] = value;
            }
            bias[class] = b;
        }
        LinearModel {
            classes,
            columns,
            weights,
            bias,
        }
    }

    /// Check the shapes agree (a decoded model could be inconsistent even
    /// when its checksum is right, e.g. a hand-crafted file).
    pub fn validate(&self) -> Result<(), String> {
        if self.bias.len() != self.classes {
            return Err(format!(
                "{} intercepts for {} classes",
                self.bias.len(),
                self.classes
            ));
        }
        if Some(self.weights.len()) != self.columns.len().checked_mul(self.classes) {
            return Err(format!(
                "{} weights for {} columns x {} classes",
                self.weights.len(),
                self.columns.len(),
                self.classes
            ));
        }
        if self.columns.windows(2).any(|w| w[0] >= w[1]) {
            return Err("feature columns are not strictly increasing".into());
        }
        Ok(())
    }

    /// Number of classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Number of feature columns carrying weights.
    pub fn columns(&self) -> usize {
        self.columns.len()
    }

    /// The decision value of every class for `x`, written into `out`
    /// (resized to the number of classes).
    pub fn scores_into(&self, x: &SparseVector, out: &mut Vec<f32>) {
        out.clear();
        out.extend_from_slice(&self.bias);
        for (index, value) in x.indices.iter().zip(&x.values) {
            if let Ok(col) = self.columns.binary_search(index) {
                let row = &self.weights[col * self.classes..(col + 1) * self.classes];
                for (o, w) in out.iter_mut().zip(row) {
                    *o += w * value;
                }
            }
        }
    }

    /// The decision value of every class for `x`.
    pub fn scores(&self, x: &SparseVector) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.classes);
        self.scores_into(x, &mut out);
        out
    }
}

/// Dual coordinate descent for one L2-loss SVM (`y` in {-1, +1}) with
/// LIBLINEAR's shrinking; returns the weights over compact columns and the bias.
///
/// Shrinking: a row whose dual variable sits at its bound 0 with a gradient
/// beyond the last pass's largest projected gradient will almost surely stay
/// there, so it leaves the active set. In one-vs-rest most rows of the other
/// classes do so after a pass or two, which is where the time went. Before
/// stopping, one more pass over every row checks the shrunk ones.
fn train_binary(
    rows: &[CompactRow],
    y: &[f32],
    n_cols: usize,
    config: &TrainConfig,
    positive_weight: f32,
    rng: &mut SplitMix,
) -> (Vec<f32>, f32) {
    // L2-loss SVM: each row's C enters only through the diagonal term 1 / (2 C_i).
    let diag_pos = 0.5 / (config.c * positive_weight);
    let diag_neg = 0.5 / config.c;
    let mut w = vec![0.0f32; n_cols];
    let mut b = 0.0f32;
    let mut alpha = vec![0.0f32; rows.len()];
    let mut order: Vec<usize> = (0..rows.len()).collect();
    let mut active = rows.len();
    // Rows at 0 with a gradient above this are shrunk (no upper bound: L2 loss).
    let mut pg_max_old = f32::INFINITY;
    let mut epoch = 0;
    while epoch < config.max_epochs {
        rng.shuffle(&mut order[..active]);
        let (mut pg_max, mut pg_min) = (f32::NEG_INFINITY, f32::INFINITY);
        let mut s = 0;
        while s < active {
            let i = order[s];
            let row = &rows[i];
            let diag = if y[i] > 0.0 { diag_pos } else { diag_neg };
            let mut wx = b;
            for (c, v) in row.cols.iter().zip(&row.vals) {
                wx += w[*c as usize] * v;
            }
            let g = y[i] * wx - 1.0 + diag * alpha[i];
            let pg = if alpha[i] == 0.0 {
                if g > pg_max_old {
                    active -= 1;
                    order.swap(s, active);
                    continue;
                }
                g.min(0.0)
            } else {
                g
            };
            pg_max = pg_max.max(pg);
            pg_min = pg_min.min(pg);
            if pg.abs() > 1e-12 {
                let old = alpha[i];
                alpha[i] = (old - g / (row.sq_norm + diag)).max(0.0);
                let step = (alpha[i] - old) * y[i];
                if step != 0.0 {
                    for (c, v) in row.cols.iter().zip(&row.vals) {
                        w[*c as usize] += step * v;
                    }
                    b += step;
                }
            }
            s += 1;
        }
        epoch += 1;
        if pg_max - pg_min < config.tolerance {
            if active == rows.len() {
                break;
            }
            // Converged on the active set: check every row once more.
            active = rows.len();
            pg_max_old = f32::INFINITY;
            continue;
        }
        pg_max_old = if pg_max <= 0.0 { f32::INFINITY } else { pg_max };
    }
    (w, b)
}

/// Dual coordinate descent for one L2-regularised logistic regression (`y`
/// in {-1, +1}), LIBLINEAR's `solve_l2r_lr_dual` (Yu, Huang and Lin 2011):
/// each row has two dual variables summing to its `C`, and one Newton
/// solve per row updates the pair. Returns weights over compact columns and
/// the bias.
fn train_logistic(
    rows: &[CompactRow],
    y: &[f32],
    n_cols: usize,
    config: &TrainConfig,
    positive_weight: f32,
    rng: &mut SplitMix,
) -> (Vec<f32>, f32) {
    // f64 inside: the log barrier near the bounds loses everything in f32.
    let upper = |i: usize| {
        f64::from(config.c)
            * if y[i] > 0.0 {
                f64::from(positive_weight)
            } else {
                1.0
            }
    };
    let mut w = vec![0.0f64; n_cols];
    let mut b = 0.0f64;
    // alpha[2i] is the row's variable, alpha[2i + 1] = C_i - alpha[2i].
    let mut alpha = vec![0.0f64; 2 * rows.len()];
    for (i, row) in rows.iter().enumerate() {
        let c = upper(i);
        alpha[2 * i] = (0.001 * c).min(1e-8);
        alpha[2 * i + 1] = c - alpha[2 * i];
        let step = f64::from(y[i]) * alpha[2 * i];
        for (col, v) in row.cols.iter().zip(&row.vals) {
            w[*col as usize] += step * f64::from(*v);
        }
        b += step;
    }
    let eps = f64::from(config.tolerance);
    let mut inner_eps = 1e-2f64;
    let inner_eps_min = eps.min(1e-8);
    let mut order: Vec<usize> = (0..rows.len()).collect();
    for _ in 0..config.max_epochs {
        rng.shuffle(&mut order);
        let (mut newton_steps, mut g_max) = (0usize, 0.0f64);
        for &i in &order {
            let row = &rows[i];
            let (c, yi) = (upper(i), f64::from(y[i]));
            let a = f64::from(row.sq_norm);
            let mut wx = b;
            for (col, v) in row.cols.iter().zip(&row.vals) {
                wx += w[*col as usize] * f64::from(*v);
            }
            let ywx = yi * wx;
            // Optimise whichever of the pair the gradient points into.
            let (mut ind1, mut ind2, mut sign) = (2 * i, 2 * i + 1, 1.0f64);
            if 0.5 * a * (alpha[ind2] - alpha[ind1]) + ywx < 0.0 {
                (ind1, ind2, sign) = (2 * i + 1, 2 * i, -1.0);
            }
            let old = alpha[ind1];
            let mut z = if c - old < 0.5 * c { 0.1 * old } else { old };
            let mut gp = a * (z - old) + sign * ywx + (z / (c - z)).ln();
            g_max = g_max.max(gp.abs());
            let mut inner = 0;
            while inner <= 100 && gp.abs() >= inner_eps {
                let gpp = a + c / (c - z) / z;
                let next = z - gp / gpp;
                z = if next <= 0.0 { z * 0.1 } else { next };
                gp = a * (z - old) + sign * ywx + (z / (c - z)).ln();
                newton_steps += 1;
                inner += 1;
            }
            if inner > 0 {
                alpha[ind1] = z;
                alpha[ind2] = c - z;
                let step = sign * (z - old) * yi;
                for (col, v) in row.cols.iter().zip(&row.vals) {
                    w[*col as usize] += step * f64::from(*v);
                }
                b += step;
            }
        }
        if g_max < eps {
            break;
        }
        if newton_steps <= rows.len() / 10 {
            inner_eps = inner_eps_min.max(0.1 * inner_eps);
        }
    }
    (w.into_iter().map(|x| x as f32).collect(), b as f32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::{FeatureConfig, Featurizer};

    /// Parcels (0) and refunds (1), three questions each, featurised.
    fn two_small_intents() -> (Featurizer, Vec<SparseVector>, [u32; 6]) {
        let texts = [
            "where is my parcel",
            "my parcel has not arrived",
            "track my parcel please",
            "i want my money back",
            "refund my money",
            "give me a refund",
        ];
        let f = Featurizer::fit(FeatureConfig::default(), &texts);
        let rows = texts.iter().map(|t| f.transform(t)).collect();
        (f, rows, [0, 0, 0, 1, 1, 1])
    }

    #[test]
    fn separates_two_small_intents() {
        let (f, rows, labels) = two_small_intents();
        let model = LinearModel::train(&rows, &labels, 2, &TrainConfig::default());
        let s = model.scores(&f.transform("where is the parcel"));
        assert!(s[0] > s[1]);
        let s = model.scores(&f.transform("can i get a refund"));
        assert!(s[1] > s[0]);
    }

    #[test]
    fn the_logistic_blend_separates_them_too() {
        let (f, rows, labels) = two_small_intents();
        let svm = LinearModel::train(&rows, &labels, 2, &TrainConfig::default());
        let config = TrainConfig {
            logistic_weight: 1.0,
            ..TrainConfig::default()
        };
        let blend = LinearModel::train(&rows, &labels, 2, &config);
        for (text, want) in [("where is the parcel", 0), ("can i get a refund", 1)] {
            let x = f.transform(text);
            let (s, b) = (svm.scores(&x), blend.scores(&x));
            assert!(b[want] > b[1 - want], "{text}");
            assert!(b.iter().all(|v| v.is_finite()));
            assert_ne!(s, b, "the logistic part changed the weights");
        }
    }
}
