//! One connection's outbound queue, bounded in bytes, and the writer task
//! that drains it.
//!
//! Why bytes and not frames: a flood is many small frames, a replay a few
//! large ones; memory is what must stay bounded. When a frame would overflow
//! the queue, the connection is closed as a slow consumer
//! ([`CloseReason::SlowResume`]) instead of growing: its client resumes from
//! its last seq, and nobody else waits for it.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Sink, SinkExt};
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::protocol::{CloseReason, ServerFrame};

/// How long the writer tries to send the close frame to a peer that may be stuck.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The queue would exceed its byte limit; the connection is now closing
    /// as a slow consumer.
    #[error("outbound queue full: the connection is closed as a slow consumer")]
    Overflow,
    /// The connection is already closing.
    #[error("the connection is closing")]
    Closed,
}

pub(crate) struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer. `Notify` keeps one permit, so a push that happens
    /// while the writer is busy is never missed.
    wake: Notify,
    limit_bytes: usize,
}

struct State {
    frames: VecDeque<Bytes>,
    bytes: usize,
    closing: Option<CloseReason>,
}

impl Outbox {
    pub(crate) fn new(limit_bytes: usize) -> Self {
        Self {
            state: Mutex::new(State {
                frames: VecDeque::new(),
                bytes: 0,
                closing: None,
            }),
            wake: Notify::new(),
            limit_bytes,
        }
    }

    pub(crate) fn push(&self, frame: Bytes) -> Result<(), PushError> {
        let mut state = self.state.lock();
        if state.closing.is_some() {
            return Err(PushError::Closed);
        }
        if state.bytes + frame.len() > self.limit_bytes {
            state.closing = Some(CloseReason::SlowResume);
            drop(state);
            self.wake.notify_one();
            return Err(PushError::Overflow);
        }
        let was_empty = state.frames.is_empty();
        state.bytes += frame.len();
        state.frames.push_back(frame);
        drop(state);
        // Only the push into an empty queue wakes the writer: any later push
        // finds a wake-up already pending, and the writer drains everything
        // at once. This saves a task wake-up per frame in a burst.
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Asks the writer to finish with `reason`. The first reason wins.
    pub(crate) fn close(&self, reason: CloseReason) {
        self.state.lock().closing.get_or_insert(reason);
        self.wake.notify_one();
    }

    /// Bytes that can still be queued before the connection overflows.
    pub(crate) fn room(&self) -> usize {
        self.limit_bytes.saturating_sub(self.state.lock().bytes)
    }

    #[cfg(test)]
    pub(crate) fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }
}

/// How a writer task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriterExit {
    /// Closed with this reason, after sending the close frame.
    Closed(CloseReason),
    /// The sink failed (the peer went away); the message says how.
    SinkFailed(String),
}

/// Drains `outbox` into `sink` until the connection closes.
///
/// Every wake-up takes *all* queued frames and feeds them before one flush,
/// so a burst becomes one write to the socket, not one per frame.
pub(crate) async fn write_loop<S>(outbox: Arc<Outbox>, mut sink: S) -> WriterExit
where
    S: Sink<Bytes> + Unpin,
    S::Error: std::fmt::Display,
{
    let mut batch: Vec<Bytes> = Vec::new();
    loop {
        let closing = {
            let mut state = outbox.state.lock();
            batch.extend(state.frames.drain(..));
            state.bytes = 0;
            state.closing
        };
        if closing == Some(CloseReason::SlowResume) {
            // The client could not keep up; sending it the backlog would only
            // delay the close. It resumes from its last seq instead.
            batch.clear();
        }
        if !batch.is_empty() {
            for frame in batch.drain(..) {
                if let Err(e) = sink.feed(frame).await {
                    return WriterExit::SinkFailed(e.to_string());
                }
            }
            if let Err(e) = sink.flush().await {
                return WriterExit::SinkFailed(e.to_string());
            }
        }
        if let Some(reason) = closing {
            // Best effort, and bounded: the peer may be gone or stuck, and a
            // closing connection must not hold its task for minutes.
            let goodbye = async {
                let _ = sink.send(ServerFrame::Close { reason }.encode()).await;
                let _ = sink.close().await;
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, goodbye).await;
            return WriterExit::Closed(reason);
        }
        outbox.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;
    use futures::StreamExt;

    #[tokio::test]
    async fn frames_arrive_in_order_then_the_close_frame() {
        let outbox = Arc::new(Outbox::new(1024));
        let (tx, mut rx) = mpsc::unbounded::<Bytes>();
        let writer = tokio::spawn(write_loop(Arc::clone(&outbox), tx));
        for i in 0..5 {
            outbox.push(Bytes::from(format!("f{i}"))).unwrap();
        }
        outbox.close(CloseReason::Shutdown);
        assert_eq!(
            writer.await.unwrap(),
            WriterExit::Closed(CloseReason::Shutdown)
        );
        let got: Vec<Bytes> = rx.by_ref().collect().await;
        let names: Vec<&[u8]> = got.iter().map(|b| &b[..]).collect();
        assert_eq!(&names[..5], &[b"f0", b"f1", b"f2", b"f3", b"f4"]);
        assert_eq!(
            ServerFrame::decode(&got[5]).unwrap(),
            ServerFrame::Close {
                reason: CloseReason::Shutdown
            }
        );
        assert_eq!(
            outbox.push(Bytes::from_static(b"late")),
            Err(PushError::Closed)
        );
    }

    #[tokio::test]
    async fn overflow_closes_as_slow_and_drops_the_backlog() {
        let outbox = Arc::new(Outbox::new(10));
        outbox.push(Bytes::from_static(b"123456")).unwrap();
        assert_eq!(outbox.queued_bytes(), 6);
        assert_eq!(
            outbox.push(Bytes::from_static(b"123456")),
            Err(PushError::Overflow)
        );
        let (tx, rx) = mpsc::unbounded::<Bytes>();
        let exit = write_loop(Arc::clone(&outbox), tx).await;
        assert_eq!(exit, WriterExit::Closed(CloseReason::SlowResume));
        let got: Vec<Bytes> = rx.collect().await;
        assert_eq!(
            got.len(),
            1,
            "only the close frame is sent to a slow consumer"
        );
        assert_eq!(
            ServerFrame::decode(&got[0]).unwrap(),
            ServerFrame::Close {
                reason: CloseReason::SlowResume
            }
        );
    }
}
