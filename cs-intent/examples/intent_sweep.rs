//! Sweep featurisation settings on a labelled CSV pair and print accuracy and
//! training time of the bare linear model for each (no calibration, no hand-off).
//!
//! `cargo run --release -p cs-intent --example intent_sweep -- TRAIN.csv TEST.csv [C,C,...]`
//!
//! `SWEEP_GRID="bits,char_min,char_max,word_max;..."` replaces the default grid;
//! the optional third argument lists SVM `C` values to try (default 1).
//!
//! The other sweep, of the answer / ask / hand-off rule's thresholds on a
//! trained agent, is `intent_eval --sweep`.

use std::collections::HashMap;
use std::time::Instant;

use cs_intent::classifier::{LinearModel, TrainConfig};
use cs_intent::dataset::read_labelled_csv;
use cs_intent::text::{FeatureConfig, Featurizer};
use cs_intent::Example;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(train), Some(test)) = (args.get(1), args.get(2)) else {
        return Err("usage: intent_sweep TRAIN.csv TEST.csv [C,C,...]".into());
    };
    let (train, test) = (read_labelled_csv(train)?, read_labelled_csv(test)?);
    let mut ids: HashMap<String, u32> = HashMap::new();
    for Example { intent: l, .. } in &train {
        let n = ids.len() as u32;
        ids.entry(l.clone()).or_insert(n);
    }
    let labels: Vec<u32> = train.iter().map(|e| ids[&e.intent]).collect();
    let texts: Vec<&str> = train.iter().map(|e| e.text.as_str()).collect();
    let base = FeatureConfig::default();
    let mut configs = vec![];
    let grid: Vec<(u8, u8, u8, u8)> = match std::env::var("SWEEP_GRID") {
        Ok(g) => g
            .split(';')
            .filter_map(|c| {
                let p: Vec<u8> = c.split(',').filter_map(|x| x.parse().ok()).collect();
                (p.len() == 4).then(|| (p[0], p[1], p[2], p[3]))
            })
            .collect(),
        Err(_) => vec![
            (20, 1, 5, 2),
            (16, 1, 5, 2),
            (18, 1, 5, 2),
            (24, 1, 5, 2),
            (20, 2, 5, 2),
            (20, 1, 4, 2),
            (20, 1, 6, 2),
            (20, 0, 0, 2),
            (20, 1, 5, 0),
            (20, 1, 5, 1),
            (20, 1, 5, 3),
        ],
    };
    for (bits, cmin, cmax, wmax) in grid {
        configs.push(FeatureConfig {
            hash_bits: bits,
            char_ngram_min: cmin,
            char_ngram_max: cmax,
            word_ngram_max: wmax,
            ..base.clone()
        });
    }
    let cs: Vec<f32> = args
        .get(3)
        .map(|s| s.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or(vec![1.0]);
    for config in configs {
        for &c in &cs {
            let start = Instant::now();
            let f = Featurizer::fit(config.clone(), &texts);
            let rows: Vec<_> = texts.iter().map(|t| f.transform(t)).collect();
            let model = LinearModel::train(
                &rows,
                &labels,
                ids.len(),
                &TrainConfig {
                    c,
                    ..TrainConfig::default()
                },
            );
            let secs = start.elapsed().as_secs_f64();
            let correct = test
                .iter()
                .filter(|e| {
                    let s = model.scores(&f.transform(&e.text));
                    let best = (0..s.len())
                        .max_by(|&a, &b| s[a].total_cmp(&s[b]))
                        .unwrap_or(0);
                    ids.get(&e.intent) == Some(&(best as u32))
                })
                .count();
            println!(
                "bits={} char={}..{} word<={} C={c}: accuracy {:.4} train {:.2}s columns {}",
                config.hash_bits,
                config.char_ngram_min,
                config.char_ngram_max,
                config.word_ngram_max,
                correct as f64 / test.len() as f64,
                secs,
                model.columns()
            );
        }
    }
    Ok(())
}
