//! Reading labelled rows from CSV: a header row naming a `text` and a
//! `category` column (the format of BANKING77), UTF-8, standard quoting.

use std::path::Path;

use crate::error::IntentError;
use crate::model::Example;

/// Read `(text, category)` rows from a CSV file with a header row.
pub fn read_labelled_csv(path: impl AsRef<Path>) -> Result<Vec<Example>, IntentError> {
    let path = path.as_ref();
    let bad = |reason: String| IntentError::Dataset {
        path: path.to_path_buf(),
        reason,
    };
    let mut reader = csv::Reader::from_path(path).map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| bad(format!("the header row has no `{name}` column")))
    };
    let (text, category) = (column("text")?, column("category")?);
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        // Line numbers count the header as line 1.
        let record = record.map_err(|e| bad(format!("line {}: {e}", i + 2)))?;
        match (record.get(text), record.get(category)) {
            (Some(t), Some(c)) => rows.push(Example::new(t, c)),
            _ => return Err(bad(format!("line {}: a column is missing", i + 2))),
        }
    }
    Ok(rows)
}

/// Assign each row to one of `k` cross-validation folds, stratified by label:
/// every label's rows are shuffled (reproducibly, by `seed`) and dealt out
/// round-robin, so each fold holds about `1/k` of every intent. Returns the
/// fold of each row. Settings should be chosen by the accuracy on held-out
/// folds of the training data, never on the test set.
pub fn stratified_folds(labels: &[u32], k: usize, seed: u64) -> Vec<usize> {
    let k = k.max(1);
    let mut by_label: std::collections::BTreeMap<u32, Vec<usize>> = Default::default();
    for (row, &label) in labels.iter().enumerate() {
        by_label.entry(label).or_default().push(row);
    }
    let mut rng = crate::classifier::SplitMix(seed);
    let mut fold = vec![0; labels.len()];
    // Continue the deal across labels, so small labels do not all start at fold 0.
    let mut next = 0;
    for rows in by_label.values_mut() {
        rng.shuffle(rows);
        for &row in rows.iter() {
            fold[row] = next % k;
            next += 1;
        }
    }
    fold
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_are_stratified_and_reproducible() {
        let labels: Vec<u32> = (0..100).map(|i| (i % 4) as u32).collect();
        let folds = stratified_folds(&labels, 5, 7);
        assert_eq!(folds, stratified_folds(&labels, 5, 7));
        for f in 0..5 {
            for l in 0..4 {
                let n = (0..100)
                    .filter(|&i| folds[i] == f && labels[i] == l)
                    .count();
                assert_eq!(n, 5, "fold {f} label {l}");
            }
        }
    }
}
