//! Connections and the message path of the cs customer-service crates.
//!
//! **Status: not built yet.** This crate holds its place in the crate map; its
//! issue ("cs-transport: ConnectionPool, flood-handling Dispatcher, …") fills
//! it. Nothing here is usable today, and nothing pretends to be.
//!
//! # Planned layout
//!
//! - `pool`: `ConnectionPool`, `ConnId → handle` plus a party index (one
//!   visitor or agent on several tabs), each connection with a bounded
//!   outbound queue and one batching writer task.
//! - `dispatcher`: inbound messages sharded by conversation onto bounded
//!   queues; a deadline, then an in-order spill path; `Overloaded` past a hard
//!   memory bound. Never a silent drop.
//! - `resume`: replay from the store after `(conversation, last_seq)`, then
//!   live messages, with no gap and no duplicate.
//! - `bus`: cross-node routing and presence (in-process first).
//! - `axum` (feature): the WebSocket adapter and the JSON wire protocol.
//!
//! It depends only on `cs-core`, and talks to storage through
//! `cs_core::store::MessageStore`.
