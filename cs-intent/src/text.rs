//! Text normalisation and featurisation for Chinese and English alike.
//!
//! A question goes through three steps:
//!
//! 1. [`normalize`]: Unicode NFKC (folds full-width `ＡＢＣ１２３，` to `ABC123,`),
//!    lowercase, whitespace collapsed, truncated at a configurable length.
//! 2. Terms: character n-grams inside each alphanumeric run (these need no word
//!    segmenter, so Chinese works as well as English) plus word unigrams and
//!    bigrams (useful for Latin text, harmless for CJK runs).
//! 3. [`Featurizer::transform`]: every term is hashed into a fixed dimension
//!    (feature hashing: no vocabulary to store or grow when a shop adds rows),
//!    weighted by sublinear TF times IDF, and the vector is L2-normalised.

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// How text becomes a feature vector. The defaults won on BANKING77 (see the
/// crate README for the measurements).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureConfig {
    /// Features are hashed into `2^hash_bits` buckets.
    pub hash_bits: u8,
    /// Smallest character n-gram length.
    pub char_ngram_min: u8,
    /// Largest character n-gram length (0 disables character n-grams).
    pub char_ngram_max: u8,
    /// Largest character n-gram length for n-grams that contain a CJK
    /// character (Han, kana, hangul); 0 means `char_ngram_max`. Short Chinese
    /// queries carry their meaning in one- and two-character words, and longer
    /// n-grams of a five-character question mostly name the question itself.
    pub cjk_char_ngram_max: u8,
    /// Largest word n-gram length (0 disables word n-grams; 2 = unigrams and bigrams).
    pub word_ngram_max: u8,
    /// Use `1 + ln(tf)` instead of the raw term count.
    pub sublinear_tf: bool,
    /// Questions longer than this many characters (after normalisation) are truncated.
    pub max_chars: usize,
}

impl Default for FeatureConfig {
    fn default() -> Self {
        FeatureConfig {
            hash_bits: 20,
            char_ngram_min: 1,
            char_ngram_max: 5,
            // 2 won 5-fold cross-validation on the Chinese retail fixture's
            // training rows (78.4% against 73.0%, crate README).
            cjk_char_ngram_max: 2,
            word_ngram_max: 2,
            sublinear_tf: true,
            max_chars: 512,
        }
    }
}

impl FeatureConfig {
    /// The number of hash buckets, `2^hash_bits`.
    pub fn dim(&self) -> usize {
        1usize << self.hash_bits.min(30)
    }
}

/// Normalise a question: NFKC (full-width folding), lowercase, whitespace
/// collapsed to single spaces, trimmed, and cut at `max_chars` characters.
pub fn normalize(text: &str, max_chars: usize) -> String {
    normalize_checked(text, max_chars).0
}

/// Like [`normalize`], and also says whether the text was cut at `max_chars`.
pub fn normalize_checked(text: &str, max_chars: usize) -> (String, bool) {
    let mut truncated = false;
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    let mut chars = 0usize;
    let mut pending_space = false;
    for c in text.nfkc().flat_map(char::to_lowercase) {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            if chars + 1 >= max_chars {
                truncated = true;
                break;
            }
            out.push(' ');
            chars += 1;
            pending_space = false;
        }
        if chars >= max_chars {
            truncated = true;
            break;
        }
        out.push(c);
        chars += 1;
    }
    (out, truncated)
}

/// A sparse vector: strictly increasing indices with their values.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseVector {
    /// Feature indices, strictly increasing.
    pub indices: Vec<u32>,
    /// The value of each index.
    pub values: Vec<f32>,
}

impl SparseVector {
    /// Number of non-zero entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// True when the vector has no non-zero entry (e.g. the text was empty).
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Dot product of two sparse vectors (a merge of the sorted indices).
    pub fn dot(&self, other: &SparseVector) -> f32 {
        let (mut i, mut j, mut sum) = (0, 0, 0.0f32);
        while i < self.indices.len() && j < other.indices.len() {
            match self.indices[i].cmp(&other.indices[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    sum += self.values[i] * other.values[j];
                    i += 1;
                    j += 1;
                }
            }
        }
        sum
    }

    /// Scale to unit Euclidean length (an all-zero vector stays zero).
    pub fn l2_normalize(&mut self) {
        let norm = self.values.iter().map(|v| v * v).sum::<f32>().sqrt();
        if norm > 0.0 {
            self.values.iter_mut().for_each(|v| *v /= norm);
        }
    }
}

// FNV-1a, written here because the hash must never change between versions:
// a saved model's feature indices depend on it.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv_char(mut h: u64, c: char) -> u64 {
    let mut buf = [0u8; 4];
    for b in c.encode_utf8(&mut buf).bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

fn fnv_str(h: u64, s: &str) -> u64 {
    s.chars().fold(h, fnv_char)
}

// A final avalanche (from SplitMix64) so the low bits used as the bucket are well mixed.
fn finish(mut h: u64) -> u64 {
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

// Namespaces keep a word "a" and a character "a" in different buckets.
const NS_CHAR: char = '\u{1}';
const NS_WORD: char = '\u{2}';

/// True for the CJK scripts, whose text has no spaces between words.
fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30ff       // hiragana, katakana
        | 0x3400..=0x4dbf     // CJK extension A
        | 0x4e00..=0x9fff     // CJK unified ideographs
        | 0xac00..=0xd7af     // hangul syllables
        | 0xf900..=0xfaff     // CJK compatibility ideographs
        | 0x20000..=0x3134f) // CJK extensions B-G
}

/// Hash every term of an already-normalised text into `out` (bucket indices,
/// one per occurrence, unsorted).
pub fn hashed_terms(normalized: &str, config: &FeatureConfig, out: &mut Vec<u32>) {
    let mask = (config.dim() - 1) as u64;
    let tokens: Vec<&str> = normalized
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    // Character n-grams inside each token padded by a space on each side, like
    // scikit-learn's `char_wb`: a CJK run is one token, so its n-grams span words.
    let (lo, hi) = (
        config.char_ngram_min.max(1) as usize,
        config.char_ngram_max as usize,
    );
    let cjk_hi = match config.cjk_char_ngram_max {
        0 => hi,
        n => usize::from(n).min(hi),
    };
    if hi >= lo {
        let mut padded: Vec<char> = Vec::new();
        for token in &tokens {
            padded.clear();
            padded.push(' ');
            padded.extend(token.chars());
            padded.push(' ');
            for start in 0..padded.len() {
                let mut h = fnv_char(FNV_OFFSET, NS_CHAR);
                let mut limit = hi;
                for (n, &c) in padded[start..].iter().take(hi).enumerate() {
                    if is_cjk(c) {
                        limit = cjk_hi;
                    }
                    if n >= limit {
                        break;
                    }
                    h = fnv_char(h, c);
                    // A lone padding space says nothing.
                    if n + 1 >= lo && !(n == 0 && c == ' ') {
                        out.push((finish(h) & mask) as u32);
                    }
                }
            }
        }
    }
    let max_n = config.word_ngram_max as usize;
    for start in 0..tokens.len() {
        let mut h = fnv_char(FNV_OFFSET, NS_WORD);
        for (n, token) in tokens[start..].iter().take(max_n).enumerate() {
            if n > 0 {
                h = fnv_char(h, ' ');
            }
            h = fnv_str(h, token);
            out.push((finish(h) & mask) as u32);
        }
    }
}

/// Turns term occurrences into sorted `(bucket, count)` pairs.
fn count_terms(terms: &mut [u32]) -> Vec<(u32, f32)> {
    terms.sort_unstable();
    let mut counts: Vec<(u32, f32)> = Vec::with_capacity(terms.len());
    for &t in terms.iter() {
        match counts.last_mut() {
            Some((last, c)) if *last == t => *c += 1.0,
            _ => counts.push((t, 1.0)),
        }
    }
    counts
}

/// A fitted featuriser: the configuration plus the IDF of every bucket seen in
/// the training texts.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Featurizer {
    config: FeatureConfig,
    /// Buckets seen in training, sorted, and their IDF.
    seen: Vec<u32>,
    idf: Vec<f32>,
    /// IDF of a bucket never seen in training (the rarest possible term).
    unseen_idf: f32,
}

impl Featurizer {
    /// Fit the IDF on training texts (raw, not yet normalised).
    pub fn fit<S: AsRef<str>>(config: FeatureConfig, texts: &[S]) -> Featurizer {
        let mut df: std::collections::HashMap<u32, u32> = std::collections::HashMap::new();
        let mut terms = Vec::new();
        for text in texts {
            terms.clear();
            hashed_terms(
                &normalize(text.as_ref(), config.max_chars),
                &config,
                &mut terms,
            );
            for (bucket, _) in count_terms(&mut terms) {
                *df.entry(bucket).or_insert(0) += 1;
            }
        }
        let n = texts.len() as f32;
        let mut pairs: Vec<(u32, u32)> = df.into_iter().collect();
        pairs.sort_unstable();
        // Smoothed IDF, as scikit-learn's TfidfVectorizer computes it.
        let idf_of = |df: f32| ((1.0 + n) / (1.0 + df)).ln() + 1.0;
        Featurizer {
            seen: pairs.iter().map(|p| p.0).collect(),
            idf: pairs.iter().map(|p| idf_of(p.1 as f32)).collect(),
            unseen_idf: idf_of(0.0),
            config,
        }
    }

    /// Check the fitted tables agree (see [`crate::classifier::LinearModel::validate`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.seen.len() != self.idf.len() {
            return Err(format!(
                "{} buckets but {} IDF values",
                self.seen.len(),
                self.idf.len()
            ));
        }
        if self.seen.windows(2).any(|w| w[0] >= w[1]) {
            return Err("IDF buckets are not strictly increasing".into());
        }
        Ok(())
    }

    /// The configuration this featuriser was fitted with.
    pub fn config(&self) -> &FeatureConfig {
        &self.config
    }

    /// Number of distinct buckets seen in training.
    pub fn seen_buckets(&self) -> usize {
        self.seen.len()
    }

    /// True when the bucket occurred in the training texts.
    pub fn has_seen(&self, bucket: u32) -> bool {
        self.seen.binary_search(&bucket).is_ok()
    }

    /// The weighted, L2-normalised feature vector of a raw text.
    pub fn transform(&self, text: &str) -> SparseVector {
        self.transform_normalized(&normalize(text, self.config.max_chars))
    }

    /// Like [`Featurizer::transform`], for a text already passed through [`normalize`].
    pub fn transform_normalized(&self, normalized: &str) -> SparseVector {
        let mut terms = Vec::with_capacity(normalized.len() * 6);
        hashed_terms(normalized, &self.config, &mut terms);
        let counts = count_terms(&mut terms);
        let mut v = SparseVector {
            indices: Vec::with_capacity(counts.len()),
            values: Vec::with_capacity(counts.len()),
        };
        for (bucket, count) in counts {
            let tf = if self.config.sublinear_tf {
                1.0 + count.ln()
            } else {
                count
            };
            let idf = match self.seen.binary_search(&bucket) {
                Ok(i) => self.idf[i],
                Err(_) => self.unseen_idf,
            };
            v.indices.push(bucket);
            v.values.push(tf * idf);
        }
        v.l2_normalize();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_folds_full_width_and_case() {
        assert_eq!(normalize("ＡＢＣ１２３，Ｈｉ", 100), "abc123,hi");
        assert_eq!(
            normalize("  Where   is\tMY order? ", 100),
            "where is my order?"
        );
        assert_eq!(normalize("我的订单　在哪里", 100), "我的订单 在哪里");
    }

    #[test]
    fn normalize_truncates_at_max_chars() {
        let long = "退".repeat(10_000);
        assert_eq!(normalize(&long, 64).chars().count(), 64);
        assert_eq!(normalize("", 64), "");
    }

    #[test]
    fn chinese_gets_character_ngram_features() {
        let f = Featurizer::fit(FeatureConfig::default(), &["我要退货", "发票怎么开"]);
        let a = f.transform("我要退货");
        let b = f.transform("我想退货");
        let c = f.transform("发票怎么开");
        assert!(!a.is_empty());
        assert!((a.dot(&a) - 1.0).abs() < 1e-4, "unit length");
        assert!(a.dot(&b) > a.dot(&c), "shared 退货 makes them closer");
    }

    #[test]
    fn full_width_and_half_width_give_the_same_vector() {
        let f = Featurizer::fit(FeatureConfig::default(), &["refund my order"]);
        assert_eq!(
            f.transform("ＲＥＦＵＮＤ my order"),
            f.transform("refund my order")
        );
    }

    #[test]
    fn cjk_ngrams_stop_at_their_own_length() {
        let config = |cjk| FeatureConfig {
            cjk_char_ngram_max: cjk,
            word_ngram_max: 0,
            ..FeatureConfig::default()
        };
        let count = |text: &str, cjk| {
            let mut out = Vec::new();
            hashed_terms(text, &config(cjk), &mut out);
            out.len()
        };
        // " 我要退货 ": " 我", then 1- and 2-grams from each of the 4 characters.
        assert_eq!(count("我要退货", 2), 9);
        assert!(count("我要退货", 0) > 9);
        // Latin text keeps its 1-5-grams.
        assert_eq!(count("refund", 2), count("refund", 0));
    }

    #[test]
    fn empty_text_is_an_empty_vector() {
        let f = Featurizer::fit(FeatureConfig::default(), &["hello"]);
        assert!(f.transform("  ，。!! ").is_empty());
    }
}
