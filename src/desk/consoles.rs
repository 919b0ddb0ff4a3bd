//! Telling the agents' consoles and the queued visitors what changed,
//! coalesced.
//!
//! Changes only mark what is dirty; one task sends, at most once per
//! `console_interval` (250 ms by default): the rows that changed since the
//! last frame (at most [`DESK_FRAME_BYTES`] of them a frame, the rest in the next), the
//! queue's head and length, and the agents when they differ from what was
//! sent. So a queue of a thousand moving by one costs each console one small
//! frame, not a thousand, and a console's 64 KiB outbound queue never fills
//! with desk news. Each queued visitor hears their own position when it
//! changes.
//!
//! Only the routing node sends: its frames reach every node's consoles
//! through the pool's bus, so a follower sending too would say it all twice.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use cs_core::router::DeskSnapshot;
use cs_core::{ConversationId, Party};
use cs_transport::protocol::{AgentRow, DeskFrame};

use super::state::DeskState;

/// Most bytes of conversation rows in one `desk` frame (about 35 rows): at
/// four frames a second, with the queue summary and the agents, a console
/// receives under 64 KiB/s however long the queue, inside its 64 KiB
/// outbound queue.
pub const DESK_FRAME_BYTES: usize = 12 * 1024;

/// What is dirty, and what was last sent.
#[derive(Default)]
pub(crate) struct Consoles {
    dirty: Mutex<HashSet<ConversationId>>,
    closed: Mutex<Vec<ConversationId>>,
    queue_dirty: AtomicBool,
    agents_dirty: AtomicBool,
    wake: Notify,
    /// Each queued visitor's position as last told.
    positions: Mutex<HashMap<ConversationId, usize>>,
    last_summary: Mutex<Option<(usize, Vec<ConversationId>)>>,
    last_agents: Mutex<Vec<AgentRow>>,
    /// Frames and bytes sent to consoles, for `/metrics`.
    pub frames: AtomicU64,
    /// See `frames`.
    pub bytes: AtomicU64,
}

impl Consoles {
    /// A conversation's row changed.
    pub fn chat_changed(&self, id: ConversationId) {
        self.dirty.lock().insert(id);
        self.wake.notify_one();
    }

    /// A conversation left the desk.
    pub fn chat_closed(&self, id: ConversationId) {
        self.dirty.lock().remove(&id);
        self.positions.lock().remove(&id);
        self.closed.lock().push(id);
        self.wake.notify_one();
    }

    /// A conversation left the queue: forget the place its visitor was told.
    pub fn left_queue(&self, id: ConversationId) {
        self.positions.lock().remove(&id);
    }

    /// The queue may have changed.
    pub fn queue_changed(&self) {
        self.queue_dirty.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// An agent's presence or load may have changed.
    pub fn agents_changed(&self) {
        self.agents_dirty.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Forgets what was sent (a new routing node tells everything afresh).
    #[cfg(feature = "redis")]
    pub fn reset(&self) {
        self.positions.lock().clear();
        *self.last_summary.lock() = None;
        self.last_agents.lock().clear();
        self.queue_changed();
        self.agents_changed();
    }
}

impl DeskState {
    /// Sends what is dirty, at most once per interval, until shutdown.
    pub(crate) async fn run_consoles(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = self.consoles.wake.notified() => {}
            }
            self.flush_consoles();
            // What changes meanwhile waits, and goes in one frame.
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.settings.console_interval) => {}
            }
        }
    }

    fn flush_consoles(&self) {
        let consoles = &self.consoles;
        if !self.routing_here() {
            consoles.dirty.lock().clear();
            consoles.closed.lock().clear();
            return;
        }
        let queue_changed = consoles.queue_dirty.swap(false, Ordering::Relaxed);
        let snapshot = self.routing.router().snapshot(&self.tenant);
        if queue_changed {
            self.publish_positions(&snapshot);
        }
        // The ids are taken out under the lock and the rows read after it
        // is released: publish_positions holds a row while it marks it dirty.
        let ids: Vec<ConversationId> = consoles.dirty.lock().drain().collect();
        let mut chats = Vec::new();
        let mut room = DESK_FRAME_BYTES;
        let mut left_over = Vec::new();
        for id in ids {
            if !left_over.is_empty() {
                left_over.push(id);
                continue;
            }
            let Some(row) = self.routing.chats.get(&id).map(|c| c.clone()) else {
                continue;
            };
            let size = serde_json::to_vec(&row).map_or(0, |encoded| encoded.len());
            if size > room && !chats.is_empty() {
                left_over.push(id);
                continue;
            }
            room = room.saturating_sub(size);
            chats.push(row);
        }
        let more = !left_over.is_empty();
        consoles.dirty.lock().extend(left_over);
        let closed = std::mem::take(&mut *consoles.closed.lock());
        if !chats.is_empty() || !closed.is_empty() {
            self.to_consoles(&DeskFrame::Desk { chats, closed });
        }
        if more {
            consoles.wake.notify_one();
        }
        if queue_changed {
            let head: Vec<ConversationId> = snapshot
                .queue
                .iter()
                .take(self.settings.queue_head)
                .copied()
                .collect();
            let summary = (snapshot.queue.len(), head);
            let fresh = consoles.last_summary.lock().as_ref() != Some(&summary);
            if fresh {
                self.to_consoles(&DeskFrame::QueueSummary {
                    waiting: summary.0,
                    head: summary.1.clone(),
                });
                *consoles.last_summary.lock() = Some(summary);
            }
        }
        if consoles.agents_dirty.swap(false, Ordering::Relaxed) {
            let agents = self.agent_rows(&snapshot);
            let fresh = *consoles.last_agents.lock() != agents;
            if fresh {
                self.to_consoles(&DeskFrame::Agents {
                    agents: agents.clone(),
                });
                *consoles.last_agents.lock() = agents;
            }
        }
    }

    /// Tells each queued visitor whose place changed, and marks the rows of
    /// the queue's head (which carry their position) dirty.
    fn publish_positions(&self, snapshot: &DeskSnapshot) {
        let mut told = self.consoles.positions.lock();
        let queued: HashSet<ConversationId> = snapshot.queue.iter().copied().collect();
        let left: Vec<ConversationId> = told
            .keys()
            .filter(|id| !queued.contains(id))
            .copied()
            .collect();
        for id in left {
            told.remove(&id);
            if let Some(mut chat) = self.routing.chats.get_mut(&id) {
                if chat.queue_position.take().is_some() {
                    self.consoles.dirty.lock().insert(id);
                }
            }
        }
        for (index, id) in snapshot.queue.iter().enumerate() {
            let position = index + 1;
            if told.get(id) == Some(&position) {
                continue;
            }
            let Some(mut chat) = self.routing.chats.get_mut(id) else {
                continue;
            };
            told.insert(*id, position);
            let in_head = index < self.settings.queue_head;
            let shown = in_head.then_some(position);
            if chat.queue_position != shown {
                chat.queue_position = shown;
                self.consoles.dirty.lock().insert(*id);
            }
            let visitor = Party::Visitor(chat.visitor.clone());
            drop(chat);
            let frame = DeskFrame::Queue {
                conversation: *id,
                position,
            };
            self.pool
                .send_to_party(&self.tenant, &visitor, frame.encode());
        }
    }

    /// The agents as consoles show them: presence and load from the router,
    /// names from the directory.
    pub(crate) fn agent_rows(&self, snapshot: &DeskSnapshot) -> Vec<AgentRow> {
        snapshot
            .agents
            .iter()
            .map(|status| AgentRow {
                id: status.profile.id.clone(),
                name: self.agent_name(&status.profile.id),
                presence: status.presence,
                active: status.active.len(),
                capacity: status.profile.max_concurrent,
            })
            .collect()
    }

    fn to_consoles(&self, frame: &DeskFrame) {
        let bytes = frame.encode();
        for agent in self.agent_ids() {
            self.pool
                .send_to_party(&self.tenant, &Party::Agent(agent), bytes.clone());
        }
        self.consoles.frames.fetch_add(1, Ordering::Relaxed);
        self.consoles
            .bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
}
