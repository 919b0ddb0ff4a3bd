//! Choose featurisation and SVM settings by cross-validation on the training
//! data only: for each setting, train the bare linear model (no calibration,
//! no hand-off) on k-1 folds of TRAIN and score the held-out fold. The test
//! set, when given, is scored once per setting after the choice is made, for
//! the README only.
//!
//! ```text
//! cargo run --release -p cs-intent --example intent_sweep -- TRAIN.csv [TEST.csv|-] [C,C,...]
//! ```
//!
//! `SWEEP_GRID="bits,char_min,char_max,word_max[,sublinear[,cjk_char_max]];..."`
//! replaces the default grid (`sublinear` 1 or 0, default 1; `cjk_char_max` 0 =
//! same as `char_max`); the optional third argument
//! lists SVM `C` values (default 1); `SWEEP_LOGISTIC="0,0.5"` lists weights of
//! the logistic regression blended into the SVM (default 0); `SWEEP_FOLDS`
//! sets k (default 5).
//!
//! The other sweep, of the answer / ask / hand-off rule's thresholds on a
//! trained agent, is `intent_eval --sweep`.

use std::collections::HashMap;
use std::time::Instant;

use cs_intent::classifier::{LinearModel, TrainConfig};
use cs_intent::dataset::{read_labelled_csv, stratified_folds};
use cs_intent::text::{FeatureConfig, Featurizer};
use cs_intent::Example;

fn top1(model: &LinearModel, f: &Featurizer, text: &str) -> u32 {
    let s = model.scores(&f.transform(text));
    (0..s.len())
        .max_by(|&a, &b| s[a].total_cmp(&s[b]))
        .unwrap_or(0) as u32
}

fn fit(
    config: &FeatureConfig,
    texts: &[&str],
    labels: &[u32],
    classes: usize,
    (c, logistic_weight): (f32, f32),
) -> (Featurizer, LinearModel) {
    let f = Featurizer::fit(config.clone(), texts);
    let rows: Vec<_> = texts.iter().map(|t| f.transform(t)).collect();
    let svm = TrainConfig {
        c,
        logistic_weight,
        ..TrainConfig::default()
    };
    let model = LinearModel::train(&rows, labels, classes, &svm);
    (f, model)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(train) = args.get(1) else {
        return Err("usage: intent_sweep TRAIN.csv [TEST.csv|-] [C,C,...]".into());
    };
    let train = read_labelled_csv(train)?;
    let test = match args.get(2).map(String::as_str) {
        None | Some("-") => None,
        Some(path) => Some(read_labelled_csv(path)?),
    };
    let mut ids: HashMap<String, u32> = HashMap::new();
    for Example { intent: l, .. } in &train {
        let n = ids.len() as u32;
        ids.entry(l.clone()).or_insert(n);
    }
    let classes = ids.len();
    let labels: Vec<u32> = train.iter().map(|e| ids[&e.intent]).collect();
    let texts: Vec<&str> = train.iter().map(|e| e.text.as_str()).collect();
    let k: usize = std::env::var("SWEEP_FOLDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let folds = stratified_folds(&labels, k, 0x5eed);
    let base = FeatureConfig::default();
    let grid: Vec<Vec<u8>> = match std::env::var("SWEEP_GRID") {
        Ok(g) => g
            .split(';')
            .map(|c| {
                c.split(',')
                    .filter_map(|x| x.trim().parse().ok())
                    .collect::<Vec<u8>>()
            })
            .filter(|p| p.len() >= 4)
            .collect(),
        Err(_) => [
            [20, 1, 5, 2],
            [20, 1, 4, 2],
            [20, 1, 5, 3],
            [20, 1, 4, 3],
            [20, 2, 5, 2],
            [20, 1, 6, 2],
            [22, 1, 5, 3],
        ]
        .iter()
        .map(|c| c.to_vec())
        .collect(),
    };
    let list =
        |s: &str| -> Vec<f32> { s.split(',').filter_map(|x| x.trim().parse().ok()).collect() };
    let cs: Vec<f32> = args.get(3).map(|s| list(s)).unwrap_or(vec![1.0]);
    let logistic: Vec<f32> = std::env::var("SWEEP_LOGISTIC")
        .map(|s| list(&s))
        .unwrap_or(vec![0.0]);
    let settings: Vec<(f32, f32)> = cs
        .iter()
        .flat_map(|&c| logistic.iter().map(move |&l| (c, l)))
        .collect();
    println!(
        "{k}-fold cross-validation on {} rows, {classes} intents",
        train.len()
    );
    for p in grid {
        let config = FeatureConfig {
            hash_bits: p[0],
            char_ngram_min: p[1],
            char_ngram_max: p[2],
            word_ngram_max: p[3],
            sublinear_tf: p.get(4).is_none_or(|&s| s != 0),
            cjk_char_ngram_max: p.get(5).copied().unwrap_or(0),
            ..base.clone()
        };
        for &(c, logistic_weight) in &settings {
            let (mut right, mut seconds) = (0usize, 0.0f64);
            for fold in 0..k {
                let (mut fit_texts, mut fit_labels) = (Vec::new(), Vec::new());
                for (i, &t) in texts.iter().enumerate() {
                    if folds[i] != fold {
                        fit_texts.push(t);
                        fit_labels.push(labels[i]);
                    }
                }
                let start = Instant::now();
                let (f, model) = fit(
                    &config,
                    &fit_texts,
                    &fit_labels,
                    classes,
                    (c, logistic_weight),
                );
                seconds += start.elapsed().as_secs_f64();
                right += (0..texts.len())
                    .filter(|&i| folds[i] == fold && top1(&model, &f, texts[i]) == labels[i])
                    .count();
            }
            let mut line = format!(
                "bits={} char={}..{} cjk<={} word<={} sublinear={} C={c} logistic={logistic_weight}: cv accuracy {:.4} (fit {:.2}s per fold)",
                config.hash_bits,
                config.char_ngram_min,
                config.char_ngram_max,
                config.cjk_char_ngram_max,
                config.word_ngram_max,
                config.sublinear_tf,
                right as f64 / texts.len() as f64,
                seconds / k as f64,
            );
            if let Some(test) = &test {
                let (f, model) = fit(&config, &texts, &labels, classes, (c, logistic_weight));
                let correct = test
                    .iter()
                    .filter(|e| ids.get(&e.intent) == Some(&top1(&model, &f, &e.text)))
                    .count();
                line += &format!(", test {:.4}", correct as f64 / test.len() as f64);
            }
            println!("{line}");
        }
    }
    Ok(())
}
