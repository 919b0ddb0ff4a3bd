//! Calibrated confidence and the answer / clarify / hand-off decision.
//!
//! Raw one-vs-rest SVM scores are turned into probabilities by a softmax with
//! a temperature fitted on held-out rows. The hand-off threshold on that
//! probability is chosen by the agent itself from the training data alone:
//! [`crate::model::IntentModel::train`] holds out a share of the *intents*
//! during an internal calibration fit, so it sees what the scores of questions
//! it was never taught look like (a shop has no "out-of-scope" examples).

use serde::{Deserialize, Serialize};

/// What the agent should do with a question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    /// Confident: answer with the top intent.
    Answer,
    /// Two or more intents are close: ask the shopper which one they meant.
    Clarify,
    /// Not confident in any intent: hand the conversation to a human.
    HandOff,
}

/// The fitted calibration of one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Softmax temperature applied to raw scores.
    pub temperature: f32,
    /// Below this top probability the agent hands off.
    pub handoff_threshold: f32,
    /// Clarify when the runner-up's probability is at least this share of the top one's.
    pub clarify_ratio: f32,
    /// What the fit saw, for reports.
    pub report: CalibrationReport,
}

/// What the calibration fit measured on its held-out rows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    /// Intents held out entirely (standing in for out-of-scope questions).
    pub held_out_intents: usize,
    /// Held-out rows of known intents.
    pub in_scope_rows: usize,
    /// Rows of the held-out intents.
    pub out_of_scope_rows: usize,
    /// On held-out known-intent rows: share answered with the right intent at the chosen threshold.
    pub in_scope_accuracy: f32,
    /// On held-out intents' rows: share handed off at the chosen threshold.
    pub oos_recall: f32,
}

impl Calibration {
    /// A calibration that always answers (used when there is too little data to fit one).
    pub fn uncalibrated(clarify_ratio: f32) -> Calibration {
        Calibration {
            temperature: 0.1,
            handoff_threshold: 0.0,
            clarify_ratio,
            report: CalibrationReport::default(),
        }
    }

    /// Softmax of `scores / temperature`, in place.
    pub fn probabilities(&self, scores: &mut [f32]) {
        softmax(scores, self.temperature);
    }

    /// The decision for probabilities sorted best first.
    pub fn decide(&self, top: f32, runner_up: Option<f32>) -> Decision {
        if top < self.handoff_threshold {
            Decision::HandOff
        } else if runner_up.is_some_and(|p| p >= self.clarify_ratio * top) {
            Decision::Clarify
        } else {
            Decision::Answer
        }
    }
}

pub(crate) fn softmax(scores: &mut [f32], temperature: f32) {
    let t = temperature.max(1e-4);
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for s in scores.iter_mut() {
        *s = ((*s - max) / t).exp();
        sum += *s;
    }
    if sum > 0.0 {
        scores.iter_mut().for_each(|s| *s /= sum);
    }
}

/// One held-out row's raw scores and, for a known intent, its label.
pub(crate) struct HeldOut {
    pub scores: Vec<f32>,
    /// `None` for a row of a held-out (unknown to the calibration model) intent.
    pub label: Option<usize>,
}

/// Fit the temperature (minimum negative log-likelihood of the true intent on
/// held-out known-intent rows, by a log-spaced grid: one parameter needs no
/// optimiser), then the hand-off threshold.
pub(crate) fn fit(held: &[HeldOut], clarify_ratio: f32, oos_weight: f32) -> Calibration {
    let in_scope: Vec<&HeldOut> = held.iter().filter(|h| h.label.is_some()).collect();
    if in_scope.is_empty() {
        return Calibration::uncalibrated(clarify_ratio);
    }
    let mut best = (f32::INFINITY, 0.1f32);
    for step in 0..=40 {
        let t = 0.01 * 10f32.powf(step as f32 / 20.0); // 0.01 .. 1.0
        let mut nll = 0.0;
        for h in &in_scope {
            let mut p = h.scores.clone();
            softmax(&mut p, t);
            nll -= p[h.label.unwrap_or(0)].max(1e-9).ln();
        }
        if nll < best.0 {
            best = (nll, t);
        }
    }
    let temperature = best.1;

    // (top probability, answered correctly if answered?, is out of scope)
    let points: Vec<(f32, bool, bool)> = held
        .iter()
        .map(|h| {
            let mut p = h.scores.clone();
            softmax(&mut p, temperature);
            let (arg, top) =
                p.iter()
                    .copied()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |a, (i, v)| if v > a.1 { (i, v) } else { a },
                    );
            (top, h.label == Some(arg), h.label.is_none())
        })
        .collect();
    let n_in = points.iter().filter(|p| !p.2).count().max(1) as f32;
    let n_oos = points.iter().filter(|p| p.2).count();
    let rates = |t: f32| {
        let correct = points.iter().filter(|p| !p.2 && p.1 && p.0 >= t).count() as f32 / n_in;
        let recall = if n_oos == 0 {
            0.0
        } else {
            points.iter().filter(|p| p.2 && p.0 < t).count() as f32 / n_oos as f32
        };
        (correct, recall)
    };
    let handoff_threshold = if n_oos == 0 {
        // No intent could be held out: hand off only below what the lowest 2% of
        // correct in-scope answers scored.
        let mut correct: Vec<f32> = points.iter().filter(|p| p.1).map(|p| p.0).collect();
        correct.sort_by(f32::total_cmp);
        correct.get(correct.len() / 50).copied().unwrap_or(0.0)
    } else {
        // The trade-off: maximise in-scope accuracy + oos_weight * oos_recall
        // over every candidate threshold the held-out rows suggest.
        let mut candidates: Vec<f32> = points.iter().map(|p| p.0).collect();
        candidates.push(0.0);
        candidates.sort_by(f32::total_cmp);
        let mut best = (f32::NEG_INFINITY, 0.0f32);
        for &t in &candidates {
            let (c, r) = rates(t);
            let score = c + oos_weight * r;
            if score > best.0 {
                best = (score, t);
            }
        }
        best.1
    };
    let (in_scope_accuracy, oos_recall) = rates(handoff_threshold);
    Calibration {
        temperature,
        handoff_threshold,
        clarify_ratio,
        report: CalibrationReport {
            held_out_intents: 0,
            in_scope_rows: in_scope.len(),
            out_of_scope_rows: n_oos,
            in_scope_accuracy,
            oos_recall,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut s = vec![1.0, 0.5, -1.0];
        softmax(&mut s, 0.5);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(s[0] > s[1] && s[1] > s[2]);
    }

    #[test]
    fn threshold_separates_confident_known_from_unknown() {
        // Known intents score one class clearly higher; unknown rows are flat.
        let mut held = Vec::new();
        for i in 0..50 {
            let mut scores = vec![-1.0; 5];
            scores[i % 5] = 0.8;
            held.push(HeldOut {
                scores,
                label: Some(i % 5),
            });
            held.push(HeldOut {
                scores: vec![-0.6, -0.5, -0.7, -0.55, -0.65],
                label: None,
            });
        }
        let c = fit(&held, 0.8, 1.0);
        assert!(c.report.in_scope_accuracy > 0.99, "{c:?}");
        assert!(c.report.oos_recall > 0.99, "{c:?}");
        let mut known = vec![-1.0, 0.8, -1.0, -1.0, -1.0];
        c.probabilities(&mut known);
        assert_eq!(c.decide(known[1], Some(known[0])), Decision::Answer);
        let mut flat = vec![-0.6, -0.5, -0.7, -0.55, -0.65];
        c.probabilities(&mut flat);
        assert_eq!(c.decide(flat[1], Some(flat[3])), Decision::HandOff);
    }

    #[test]
    fn close_runner_up_asks_to_clarify() {
        let c = Calibration {
            temperature: 0.1,
            handoff_threshold: 0.2,
            clarify_ratio: 0.8,
            report: CalibrationReport::default(),
        };
        assert_eq!(c.decide(0.45, Some(0.40)), Decision::Clarify);
        assert_eq!(c.decide(0.9, Some(0.05)), Decision::Answer);
        assert_eq!(c.decide(0.1, Some(0.05)), Decision::HandOff);
    }
}
