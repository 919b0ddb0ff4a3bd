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
