//! The local bot of the cs customer-service crates.
//!
//! **Status: not built yet.** This crate holds its place in the crate map; its
//! issue ("cs-intent: the IntentAgent …") fills it. Nothing here is usable
//! today, and nothing pretends to be.
//!
//! # Planned layout
//!
//! - `text`: normalisation (NFKC, full-width folding, case) and features that
//!   work for Chinese and English alike (character n-grams, word n-grams).
//! - `classifier`: an intent model trained on the shop's own labelled rows, on
//!   the CPU, in seconds, with a calibrated confidence.
//! - `memory`: examples and agent corrections that take effect at once, folded
//!   into the model by a background retrain.
//! - `kb`: FAQ answers searched by vector similarity (`hnsw_rs`).
//! - `agent`: `IntentAgent::predict`: an answer, a clarifying question, or an
//!   honest "I don't know" that hands off to a human.
//!
//! It is synchronous and needs no async runtime. It depends only on `cs-core`.
