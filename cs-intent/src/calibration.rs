//! Calibrated confidence and the answer / clarify / hand-off decision.
//!
//! Raw one-vs-rest SVM scores are turned into probabilities by a softmax with
//! a temperature fitted on held-out rows. The decision rule has two
//! thresholds on those probabilities, both chosen by the agent itself from the
//! training data alone: [`crate::model::IntentModel::train`] holds out a share
//! of the *intents* and of the other intents' rows during an internal
//! calibration fit, so it sees how questions it was taught score and what
//! the scores of questions it was never taught look like (a shop has no
//! "out-of-scope" examples).
//!
//! The rule ([`Calibration::decide`]), for probabilities sorted best first:
//!
//! - the top intent alone reaches `answer_threshold`: **answer**;
//! - else the top 2, or the top 3 (up to `max_options`), together reach
//!   `clarify_mass`: **ask** which of those it was (the fewest that reach it);
//! - else the model is sure of nothing: **hand off**.
//!
//! [`fit`] picks the pair that does best on the held-out rows (see
//! [`RuleObjective`]) while keeping wrong answers within a budget.

use serde::{Deserialize, Serialize};

/// What the agent should do with a question.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Decision {
    /// Confident: answer with the top intent.
    Answer,
    /// Torn between a few intents: ask the shopper which one they meant.
    Clarify,
    /// Not confident in any intent: hand the conversation to a human.
    HandOff,
}

/// A decision and, for [`Decision::Clarify`], how many of the top intents to offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Answer, ask or hand off.
    pub decision: Decision,
    /// The top intents to offer as options (2 or more) when asking; 0 otherwise.
    pub options: usize,
}

/// The fitted calibration of one model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// Softmax temperature applied to raw scores.
    pub temperature: f32,
    /// Answer outright when the top probability is at least this (above 1: never).
    pub answer_threshold: f32,
    /// Below `answer_threshold`, ask which was meant when the top
    /// 2..=`max_options` probabilities together reach this; otherwise hand off.
    pub clarify_mass: f32,
    /// At most this many options in a clarifying question (2 or more).
    pub max_options: usize,
    /// What the fit saw, for reports.
    pub report: CalibrationReport,
}

/// What the calibration fit measured on its held-out rows, at the chosen thresholds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CalibrationReport {
    /// Intents held out entirely (standing in for out-of-scope questions).
    pub held_out_intents: usize,
    /// Held-out rows of known intents.
    pub in_scope_rows: usize,
    /// Rows of the held-out intents.
    pub out_of_scope_rows: usize,
    /// On held-out known-intent rows: share answered with the right intent.
    pub in_scope_accuracy: f32,
    /// On held-out known-intent rows: share answered with a wrong intent.
    pub in_scope_answered_wrong: f32,
    /// On held-out known-intent rows: share asked about with the right intent among the options.
    pub in_scope_clarified_right: f32,
    /// On held-out intents' rows: share handed off.
    pub oos_recall: f32,
}

/// What the threshold fit optimises. On the held-out rows of known intents
/// each decision earns a value (a right answer 1, a right clarification 0.8,
/// a wrong one -0.3, a hand-off 0, a wrong answer -1); on the rows of
/// held-out intents a hand-off earns `oos_weight` (as a share of those rows)
/// and a clarification half of that. The best pair whose wrong answers stay
/// within `max_wrong_answer_rate` of the known-intent rows wins.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RuleObjective {
    /// Weight of out-of-scope recall against the known-intent value.
    pub oos_weight: f32,
    /// Wrong answers allowed, as a share of known-intent rows.
    pub max_wrong_answer_rate: f32,
    /// At most this many options in a clarifying question.
    pub max_options: usize,
}

// The values of the in-scope outcomes. A right clarification is worth less
// than a right answer (the shopper had to click), so the fit answers when it
// can; a wrong clarification costs a little (the shopper has to say it
// again), a wrong answer more than a hand-off (the shopper was misled).
const VALUE_CLARIFIED_RIGHT: f32 = 0.8;
const VALUE_CLARIFIED_WRONG: f32 = -0.3;
const VALUE_ANSWERED_WRONG: f32 = -1.0;
// An out-of-scope question asked about: offered nothing that fits, the
// shopper rephrases or asks for a person and reaches one a step later, so it
// earns part of a hand-off's credit.
const VALUE_OOS_CLARIFIED: f32 = 0.5;

impl Calibration {
    /// A calibration that always answers (used when there is too little data to fit one).
    pub fn uncalibrated(max_options: usize) -> Calibration {
        Calibration {
            temperature: 0.1,
            answer_threshold: 0.0,
            clarify_mass: f32::INFINITY,
            max_options: max_options.max(2),
            report: CalibrationReport::default(),
        }
    }

    /// Softmax of `scores / temperature`, in place.
    pub fn probabilities(&self, scores: &mut [f32]) {
        softmax(scores, self.temperature);
    }

    /// The decision for probabilities sorted best first (only the first
    /// `max_options` are read).
    ///
    /// ```
    /// use cs_intent::calibration::{Calibration, Decision};
    ///
    /// let mut c = Calibration::uncalibrated(3);
    /// (c.answer_threshold, c.clarify_mass) = (0.7, 0.6);
    /// assert_eq!(c.decide(&[0.9, 0.05]).decision, Decision::Answer);
    /// let torn = c.decide(&[0.4, 0.35, 0.1]);
    /// assert_eq!((torn.decision, torn.options), (Decision::Clarify, 2));
    /// assert_eq!(c.decide(&[0.2, 0.15, 0.1, 0.1]).decision, Decision::HandOff);
    /// ```
    pub fn decide(&self, ranked: &[f32]) -> Verdict {
        let Some(&top) = ranked.first() else {
            return Verdict {
                decision: Decision::HandOff,
                options: 0,
            };
        };
        if top >= self.answer_threshold {
            return Verdict {
                decision: Decision::Answer,
                options: 0,
            };
        }
        let mut mass = top;
        for (i, &p) in ranked
            .iter()
            .enumerate()
            .take(self.max_options.max(2))
            .skip(1)
        {
            mass += p;
            if mass >= self.clarify_mass {
                return Verdict {
                    decision: Decision::Clarify,
                    options: i + 1,
                };
            }
        }
        Verdict {
            decision: Decision::HandOff,
            options: 0,
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

/// How one question came out, counted by kind: the known-intent ("in-scope")
/// rows by whether the answer or the options held the right intent, the
/// out-of-scope rows by what was done with them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    /// In scope, answered with the right intent.
    pub answered_right: usize,
    /// In scope, answered with a wrong intent.
    pub answered_wrong: usize,
    /// In scope, asked about with the right intent among the options.
    pub clarified_right: usize,
    /// In scope, asked about without the right intent among the options.
    pub clarified_wrong: usize,
    /// In scope, handed off.
    pub handed_off: usize,
    /// Out of scope, answered (wrongly, whatever the intent).
    pub oos_answered: usize,
    /// Out of scope, asked about.
    pub oos_clarified: usize,
    /// Out of scope, handed off (rightly).
    pub oos_handed_off: usize,
}

impl Outcomes {
    /// Count one question: `right_rank` is where its right intent ranks among
    /// all intents (0 = top), `None` for an out-of-scope question.
    pub fn record(&mut self, verdict: Verdict, right_rank: Option<usize>) {
        match (verdict.decision, right_rank) {
            (Decision::Answer, Some(0)) => self.answered_right += 1,
            (Decision::Answer, Some(_)) => self.answered_wrong += 1,
            (Decision::Clarify, Some(r)) if r < verdict.options => self.clarified_right += 1,
            (Decision::Clarify, Some(_)) => self.clarified_wrong += 1,
            (Decision::HandOff, Some(_)) => self.handed_off += 1,
            (Decision::Answer, None) => self.oos_answered += 1,
            (Decision::Clarify, None) => self.oos_clarified += 1,
            (Decision::HandOff, None) => self.oos_handed_off += 1,
        }
    }

    /// Known-intent questions counted.
    pub fn in_scope(&self) -> usize {
        self.answered_right
            + self.answered_wrong
            + self.clarified_right
            + self.clarified_wrong
            + self.handed_off
    }

    /// Out-of-scope questions counted.
    pub fn out_of_scope(&self) -> usize {
        self.oos_answered + self.oos_clarified + self.oos_handed_off
    }

    /// `count` as a share of the known-intent questions (0 when there are none).
    pub fn share_of_in_scope(&self, count: usize) -> f64 {
        share(count, self.in_scope())
    }

    /// `count` as a share of the out-of-scope questions (0 when there are none).
    pub fn share_of_out_of_scope(&self, count: usize) -> f64 {
        share(count, self.out_of_scope())
    }
}

fn share(count: usize, of: usize) -> f64 {
    if of == 0 {
        0.0
    } else {
        count as f64 / of as f64
    }
}

/// One question as the decision rule sees it: its top probabilities, best
/// first, and where its right intent ranks (`None` when out of scope).
#[derive(Clone, Debug, PartialEq)]
pub struct RankedQuestion {
    /// The highest probabilities, best first (at least `max_options` of them when there are as many intents).
    pub top: Vec<f32>,
    /// Rank of the right intent among all intents (0 = top); `None` out of scope.
    pub right_rank: Option<usize>,
}

impl RankedQuestion {
    /// From every intent's probability (any order) and the right intent's index.
    pub fn new(probabilities: &[f32], right: Option<usize>, keep: usize) -> RankedQuestion {
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_unstable_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        let right_rank = right.map(|r| order.iter().position(|&i| i == r).unwrap_or(usize::MAX));
        RankedQuestion {
            top: order.iter().take(keep).map(|&i| probabilities[i]).collect(),
            right_rank,
        }
    }
}

/// How a calibration's rule handles a set of questions.
pub fn tally(calibration: &Calibration, questions: &[RankedQuestion]) -> Outcomes {
    let mut outcomes = Outcomes::default();
    for q in questions {
        outcomes.record(calibration.decide(&q.top), q.right_rank);
    }
    outcomes
}

/// One held-out row's raw scores and, for a known intent, its label.
pub(crate) struct HeldOut {
    pub scores: Vec<f32>,
    /// `None` for a row of a held-out (unknown to the calibration model) intent.
    pub label: Option<usize>,
}

/// Thresholds a host fixed instead of letting the fit choose them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Fixed {
    pub answer_threshold: Option<f32>,
    pub clarify_mass: Option<f32>,
}

/// Up to `n` evenly spaced values of a sorted list (its quantiles), deduplicated.
fn quantiles(sorted: &[f32], n: usize) -> Vec<f32> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<f32> = (0..n)
        .map(|i| sorted[(i * (sorted.len() - 1)) / (n - 1).max(1)])
        .collect();
    out.dedup();
    out
}

/// Fit the temperature (minimum negative log-likelihood of the true intent on
/// held-out known-intent rows, by a log-spaced grid: one parameter needs no
/// optimiser), then the two thresholds of the rule: every pair from a grid of
/// the held-out rows' own quantiles is tallied, and the best by
/// [`RuleObjective`] within the wrong-answer budget wins (a grid search:
/// the objective is a step function, so it has no gradient to follow).
pub(crate) fn fit(held: &[HeldOut], objective: RuleObjective, fixed: Fixed) -> Calibration {
    let max_options = objective.max_options.max(2);
    let in_scope: Vec<&HeldOut> = held.iter().filter(|h| h.label.is_some()).collect();
    if in_scope.is_empty() {
        let mut c = Calibration::uncalibrated(max_options);
        c.answer_threshold = fixed.answer_threshold.unwrap_or(c.answer_threshold);
        c.clarify_mass = fixed.clarify_mass.unwrap_or(c.clarify_mass);
        return c;
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
    let questions: Vec<RankedQuestion> = held
        .iter()
        .map(|h| {
            let mut p = h.scores.clone();
            softmax(&mut p, temperature);
            RankedQuestion::new(&p, h.label, max_options)
        })
        .collect();

    let mut calibration = Calibration {
        temperature,
        answer_threshold: f32::INFINITY,
        clarify_mass: f32::INFINITY,
        max_options,
        report: CalibrationReport::default(),
    };
    let (a, m) = choose_thresholds(&questions, &mut calibration, objective, fixed);
    calibration.answer_threshold = a;
    calibration.clarify_mass = m;
    let o = tally(&calibration, &questions);
    calibration.report = CalibrationReport {
        held_out_intents: 0,
        in_scope_rows: o.in_scope(),
        out_of_scope_rows: o.out_of_scope(),
        in_scope_accuracy: o.share_of_in_scope(o.answered_right) as f32,
        in_scope_answered_wrong: o.share_of_in_scope(o.answered_wrong) as f32,
        in_scope_clarified_right: o.share_of_in_scope(o.clarified_right) as f32,
        oos_recall: o.share_of_out_of_scope(o.oos_handed_off) as f32,
    };
    calibration
}

/// The pair of thresholds with the best objective (ties: fewer hand-offs).
///
/// Exact over every answer threshold the rows suggest: sorted by top
/// probability, a threshold answers a suffix of the rows, so for each
/// candidate clarify mass one pass of prefix sums (rows below, asked or
/// handed off) and suffix sums (rows above, answered) scores every split.
/// A grid search, not an optimiser: the objective is a step function.
fn choose_thresholds(
    questions: &[RankedQuestion],
    scratch: &mut Calibration,
    objective: RuleObjective,
    fixed: Fixed,
) -> (f32, f32) {
    let n = questions.len();
    let n_in = questions
        .iter()
        .filter(|q| q.right_rank.is_some())
        .count()
        .max(1) as f32;
    let n_oos = questions.iter().filter(|q| q.right_rank.is_none()).count();
    let oos_credit = if n_oos == 0 {
        0.0
    } else {
        objective.oos_weight / n_oos as f32
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| questions[a].top[0].total_cmp(&questions[b].top[0]));
    let top = |i: usize| questions[order[i]].top[0];

    // Answered: value and wrong answers of the rows from index i on.
    let mut answered_value = vec![0.0f32; n + 1];
    let mut answered_wrong = vec![0usize; n + 1];
    for i in (0..n).rev() {
        let (value, wrong) = match questions[order[i]].right_rank {
            Some(0) => (1.0 / n_in, 0),
            Some(_) => (VALUE_ANSWERED_WRONG / n_in, 1),
            None => (0.0, 0),
        };
        answered_value[i] = answered_value[i + 1] + value;
        answered_wrong[i] = answered_wrong[i + 1] + wrong;
    }
    // The splits: every place where the top probability changes, and "never answer".
    let split_of = |a: f32| order.partition_point(|&q| questions[q].top[0] < a);
    let splits: Vec<usize> = match fixed.answer_threshold {
        Some(a) => vec![split_of(a)],
        None => (0..=n)
            .filter(|&i| i == 0 || i == n || top(i - 1) < top(i))
            .collect(),
    };
    let threshold_at = |i: usize| match fixed.answer_threshold {
        Some(a) => a,
        None if i == n => f32::INFINITY,
        None if i == 0 => 0.0,
        None => top(i),
    };
    let masses = match fixed.clarify_mass {
        Some(m) => vec![m],
        None => {
            let mut masses: Vec<f32> = questions.iter().map(|q| q.top.iter().sum()).collect();
            masses.sort_by(f32::total_cmp);
            let mut candidates = quantiles(&masses, 80);
            candidates.push(f32::INFINITY);
            candidates
        }
    };
    let budget = objective.max_wrong_answer_rate * n_in;
    // (objective, hand-offs, answer threshold, clarify mass)
    let mut chosen: Option<(f32, usize, f32, f32)> = None;
    for &m in &masses {
        scratch.answer_threshold = f32::INFINITY;
        scratch.clarify_mass = m;
        // Below the split: value and hand-offs of the rows before index i.
        let (mut below_value, mut below_handed) = (0.0f32, 0usize);
        let mut next_split = splits.iter().peekable();
        for i in 0..=n {
            while let Some(&&split) = next_split.peek() {
                if split != i {
                    break;
                }
                next_split.next();
                let within = (answered_wrong[i] as f32) <= budget;
                if !within && fixed.answer_threshold.is_none() {
                    continue;
                }
                let value = below_value + answered_value[i];
                let better = match chosen {
                    None => true,
                    Some((v, h, _, _)) => value > v || (value == v && below_handed < h),
                };
                if better {
                    chosen = Some((value, below_handed, threshold_at(i), m));
                }
            }
            if i == n {
                break;
            }
            let q = &questions[order[i]];
            let verdict = scratch.decide(&q.top);
            below_value += match (verdict.decision, q.right_rank) {
                (Decision::Clarify, Some(r)) if r < verdict.options => VALUE_CLARIFIED_RIGHT / n_in,
                (Decision::Clarify, Some(_)) => VALUE_CLARIFIED_WRONG / n_in,
                (Decision::Clarify, None) => VALUE_OOS_CLARIFIED * oos_credit,
                (_, None) => oos_credit,
                (_, Some(_)) => 0.0,
            };
            below_handed += usize::from(verdict.decision == Decision::HandOff);
        }
    }
    // Never answering is always within budget, so something was chosen.
    let (_, _, a, m) = chosen.unwrap_or((0.0, 0, f32::INFINITY, f32::INFINITY));
    (a, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(answer_threshold: f32, clarify_mass: f32) -> Calibration {
        Calibration {
            temperature: 0.1,
            answer_threshold,
            clarify_mass,
            max_options: 3,
            report: CalibrationReport::default(),
        }
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut s = vec![1.0, 0.5, -1.0];
        softmax(&mut s, 0.5);
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert!(s[0] > s[1] && s[1] > s[2]);
    }

    #[test]
    fn torn_between_two_or_three_asks_with_just_those() {
        let c = rule(0.6, 0.7);
        let two = c.decide(&[0.45, 0.40, 0.05, 0.05]);
        assert_eq!((two.decision, two.options), (Decision::Clarify, 2));
        let three = c.decide(&[0.30, 0.25, 0.22, 0.10]);
        assert_eq!((three.decision, three.options), (Decision::Clarify, 3));
        // The fourth intent never becomes a button, however close.
        let four = c.decide(&[0.22, 0.20, 0.19, 0.18, 0.1]);
        assert_eq!(four.decision, Decision::HandOff);
        let two_max = Calibration {
            max_options: 2,
            ..c.clone()
        };
        assert_eq!(
            two_max.decide(&[0.30, 0.25, 0.22, 0.10]).decision,
            Decision::HandOff
        );
    }

    #[test]
    fn sure_of_nothing_hands_off_and_sure_of_one_answers() {
        let c = rule(0.6, 0.7);
        let flat = c.decide(&[0.15, 0.14, 0.13, 0.12, 0.11]);
        assert_eq!((flat.decision, flat.options), (Decision::HandOff, 0));
        let sure = c.decide(&[0.92, 0.03]);
        assert_eq!((sure.decision, sure.options), (Decision::Answer, 0));
        assert_eq!(c.decide(&[]).decision, Decision::HandOff);
    }

    #[test]
    fn outcomes_count_a_clarification_as_right_when_the_right_intent_is_offered() {
        let c = rule(0.6, 0.7);
        let mut o = Outcomes::default();
        let torn = c.decide(&[0.45, 0.40, 0.05]);
        o.record(torn, Some(1));
        o.record(torn, Some(2));
        o.record(torn, None);
        o.record(c.decide(&[0.9]), Some(0));
        o.record(c.decide(&[0.9]), Some(3));
        assert_eq!(
            (
                o.clarified_right,
                o.clarified_wrong,
                o.oos_clarified,
                o.answered_right,
                o.answered_wrong
            ),
            (1, 1, 1, 1, 1)
        );
        assert_eq!((o.in_scope(), o.out_of_scope()), (4, 1));
    }

    /// Held-out rows of three kinds: clear (one intent far ahead), torn (two
    /// intents level, the right one either), unknown (flat).
    fn held_rows() -> Vec<HeldOut> {
        let mut held = Vec::new();
        for i in 0..60 {
            let mut clear = vec![-1.0; 6];
            clear[i % 6] = 0.8;
            held.push(HeldOut {
                scores: clear,
                label: Some(i % 6),
            });
            let mut torn = vec![-1.0; 6];
            torn[i % 6] = 0.3;
            torn[(i + 1) % 6] = 0.3;
            held.push(HeldOut {
                scores: torn,
                label: Some((i + i % 2) % 6),
            });
            held.push(HeldOut {
                scores: vec![-0.6, -0.5, -0.7, -0.55, -0.65, -0.6],
                label: None,
            });
        }
        held
    }

    #[test]
    fn the_fit_answers_the_clear_asks_the_torn_and_hands_off_the_unknown() {
        let objective = RuleObjective {
            oos_weight: 0.2,
            max_wrong_answer_rate: 0.03,
            max_options: 3,
        };
        let c = fit(&held_rows(), objective, Fixed::default());
        assert!(c.report.in_scope_answered_wrong <= 0.03, "{c:?}");
        assert!(c.report.in_scope_accuracy > 0.49, "the clear half: {c:?}");
        assert!(
            c.report.in_scope_clarified_right > 0.49,
            "the torn half: {c:?}"
        );
        assert!(c.report.oos_recall > 0.99, "{c:?}");

        let mut clear = vec![-1.0, 0.8, -1.0, -1.0, -1.0, -1.0];
        c.probabilities(&mut clear);
        clear.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(c.decide(&clear).decision, Decision::Answer);
        let mut torn = vec![-1.0, 0.3, 0.3, -1.0, -1.0, -1.0];
        c.probabilities(&mut torn);
        torn.sort_by(|a, b| b.total_cmp(a));
        let verdict = c.decide(&torn);
        assert_eq!((verdict.decision, verdict.options), (Decision::Clarify, 2));
        let mut flat = vec![-0.6, -0.5, -0.7, -0.55, -0.65, -0.6];
        c.probabilities(&mut flat);
        flat.sort_by(|a, b| b.total_cmp(a));
        assert_eq!(c.decide(&flat).decision, Decision::HandOff);
    }

    #[test]
    fn a_fixed_threshold_is_kept_and_reported_truthfully() {
        let objective = RuleObjective {
            oos_weight: 0.2,
            max_wrong_answer_rate: 0.03,
            max_options: 3,
        };
        let fixed = Fixed {
            answer_threshold: Some(f32::INFINITY),
            clarify_mass: Some(0.0),
        };
        let c = fit(&held_rows(), objective, fixed);
        assert_eq!((c.answer_threshold, c.clarify_mass), (f32::INFINITY, 0.0));
        assert_eq!(c.report.in_scope_accuracy, 0.0, "never answers: {c:?}");
        assert_eq!(c.report.oos_recall, 0.0, "always asks: {c:?}");
    }
}
