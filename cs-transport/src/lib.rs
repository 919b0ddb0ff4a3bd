//! Connections and the path of a message, for the cs customer-service crates.
//!
//! # Layout
//!
//! - [`protocol`]: the JSON wire frames ([`ClientFrame`], [`ServerFrame`]),
//!   error codes and close reasons; decoding that never panics.
//! - `outbox`: one connection's outbound queue, bounded in bytes, and the
//!   writer task that batches it into the socket; overflow closes the
//!   connection as a slow consumer.
//! - [`pool`]: [`ConnectionPool`], every connection on this node, indexed by
//!   party, joined conversation and group, delivering through the [`Bus`].
//! - [`bus`]: the [`Bus`] trait for cross-node delivery, and
//!   [`InProcessBus`].
//! - `redis_bus` (feature `redis`): `RedisBus`, the bus over Redis pub/sub,
//!   which notices and reports what it loses.
//! - `nats_bus` (feature `nats`): `NatsBus`, the same over NATS core
//!   pub/sub. `bus_wire` holds what both share: the envelope's wire format,
//!   the publisher's counter, the inbox that reports losses, the counters.
//! - `cluster` (feature `redis`): state several nodes share in Redis: a
//!   `Lease` (one owner at a time, such as the node that routes a tenant)
//!   and `ClusterPresence` (who is connected on which live node).
//! - `command`: [`Command`] and its outcomes ([`Admission`],
//!   [`DispatchError`], [`Outcome`], [`PathError`], [`PathEvent`]), shared
//!   by the dispatcher and the path without either reaching into the other.
//! - [`dispatcher`]: [`Dispatcher`], sharding commands by conversation with a
//!   bounded queue, a deadline, an in-order spill path and `Overloaded`.
//! - `admission`: the latency bound (shed typing, then receipts, then
//!   refuse messages past a queue-delay target).
//! - `fair_queue`: a shard's per-conversation queues, served in turn, so a
//!   flooding conversation cannot hold a quiet one behind its backlog.
//! - `path`: what a shard does with each batch: authorize, validate,
//!   persist, route, ack, run hooks; joins with gap-free replay; state changes.
//! - `gaps`: gap repair: a joined connection's missing messages are replayed
//!   from the store, and a repair that cannot run now is reported again.
//! - [`hooks`]: the [`Hook`] trait for the bot, audit or moderation.
//! - [`metrics`]: counters and latency percentiles, as a [`MetricsSnapshot`].
//! - `websocket` (feature `axum`): the axum adapter: upgrade with small
//!   buffers, the read loop with rate limiting and an idle timeout.
//!
//! Without the `axum` feature a host connects any `futures::Sink<Bytes>` to
//! the pool and decodes client frames with [`ClientFrame::decode`] itself.
//! Across nodes, stored messages reach every joined connection in seq order
//! with no gap and no duplicate even when the bus loses envelopes: the pool
//! holds back a message past a hole and the dispatcher replays the hole from
//! the store (see [`ConnectionPool::gaps`] and
//! [`DispatcherConfig::position_check_interval`]).
//!
//! Hosts exchange their own messages across nodes on the same bus
//! ([`ConnectionPool::publish_host`], [`ConnectionPool::host_messages`]).
//!
//! Not built yet: a server-initiated heartbeat (clients keep the connection
//! alive with `ping` frames). The pool's presence events are
//! per node; a host shares them through `cluster::ClusterPresence`.
//!
//! It depends only on `cs-core`; storage comes in as a
//! [`cs_core::store::MessageStore`].

#![warn(missing_docs)]

// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod admission;
pub mod bus;
#[cfg(any(feature = "redis", feature = "nats"))]
mod bus_wire;
#[cfg(feature = "redis")]
pub mod cluster;
mod command;
pub mod dispatcher;
mod fair_queue;
mod gaps;
pub mod hooks;
pub mod metrics;
#[cfg(feature = "nats")]
pub mod nats_bus;
mod outbox;
mod path;
pub mod pool;
pub mod protocol;
#[cfg(feature = "redis")]
pub mod redis_bus;
#[cfg(feature = "axum")]
pub mod websocket;

pub use bus::{Bus, Envelope, InProcessBus, Inbound, NodeId, Target};
pub use command::{Outcome, PathError, PathEvent};
pub use dispatcher::{
    Actor, Admission, Change, Command, DispatchError, Dispatcher, DispatcherConfig, Origin,
    SubmitError,
};
pub use hooks::{Hook, HookAction, HookContext, HookError};
pub use metrics::{Metrics, MetricsSnapshot};
#[cfg(feature = "nats")]
pub use nats_bus::{NatsBus, NatsBusConfig, NatsBusError, NatsBusStats};
pub use outbox::{PushError, WriterExit};
pub use pool::{
    ConnInfo, ConnectionPool, Gap, HostMessage, PoolConfig, PresenceEvent, Registered, SendError,
};
pub use protocol::{
    AgentRow, ChatRow, ClientFrame, CloseReason, DeskFrame, ErrorCode, FrameError, ServerFrame,
};
#[cfg(feature = "redis")]
pub use redis_bus::{RedisBus, RedisBusConfig, RedisBusError, RedisBusStats};
