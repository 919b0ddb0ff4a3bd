//! Group commit: concurrent appends share one transaction.
//!
//! A SQL append is a transaction of five statements and, on SQLite with
//! `synchronous = FULL` or on PostgreSQL, a sync to disk. Done one message at
//! a time that caps a store at a few thousand appends a second, however many
//! conversations are busy. So appends that arrive while a transaction is in
//! flight wait for it, and the next one commits all of them at once: under
//! load the batches grow by themselves, and alone a message is committed at
//! once, with no timer to wait for.
//!
//! There is no background task. Each caller queues its message and then
//! either finds it committed by another caller, or takes the commit lock and
//! commits everything queued, its own message included (the "leader"). A
//! message is answered only after the transaction holding it has committed,
//! so an `Ok` means as durable as a single append made it.

use std::future::Future;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use cs_core::store::{Appended, StoreError};
use cs_core::NewMessage;

/// At most this many messages per transaction: a bound on how long one
/// commit holds the writer, and on the statement's size.
pub(crate) const MAX_GROUP: usize = 512;

struct Pending {
    message: NewMessage,
    reply: oneshot::Sender<Result<Appended, StoreError>>,
}

/// The queue and the commit lock of one store.
#[derive(Default)]
pub(crate) struct GroupCommit {
    pending: Mutex<Vec<Pending>>,
    leader: tokio::sync::Mutex<()>,
}

impl GroupCommit {
    /// Appends `message` in the next group. `commit` stores a group, oldest
    /// first, and answers each message of it in the same order; it runs
    /// under the commit lock, one group at a time.
    pub(crate) async fn append<F, Fut>(
        &self,
        message: NewMessage,
        backend: &str,
        commit: F,
    ) -> Result<Appended, StoreError>
    where
        F: Fn(Vec<NewMessage>) -> Fut,
        Fut: Future<Output = Vec<Result<Appended, StoreError>>>,
    {
        let mut results = self.append_many(vec![message], backend, commit).await;
        results.pop().unwrap_or_else(|| {
            Err(StoreError::Corrupt(
                "a group commit returned no result for its message".into(),
            ))
        })
    }

    /// Appends `messages` in the next groups, queued together so they stay
    /// in order and usually share one transaction, and answers each.
    pub(crate) async fn append_many<F, Fut>(
        &self,
        messages: Vec<NewMessage>,
        backend: &str,
        commit: F,
    ) -> Vec<Result<Appended, StoreError>>
    where
        F: Fn(Vec<NewMessage>) -> Fut,
        Fut: Future<Output = Vec<Result<Appended, StoreError>>>,
    {
        let mut answers = Vec::with_capacity(messages.len());
        {
            let mut pending = self.pending.lock();
            for message in messages {
                let (reply, answer) = oneshot::channel();
                pending.push(Pending { message, reply });
                answers.push(answer);
            }
        }
        // Ours are queued together and groups go oldest first, so when the
        // last of ours is answered, all of ours are.
        let Some(mut last) = answers.pop() else {
            return Vec::new();
        };
        let last_result = loop {
            let _leader = tokio::select! {
                // Answered by a leader that committed our messages.
                biased;
                answer = &mut last => break answer.ok(),
                leader = self.leader.lock() => leader,
            };
            let group: Vec<Pending> = {
                let mut pending = self.pending.lock();
                let take = pending.len().min(MAX_GROUP);
                pending.drain(..take).collect()
            };
            if group.is_empty() {
                // A leader before us took our messages and has answered
                // them (it released the lock only after answering).
                break (&mut last).await.ok();
            }
            let (messages, replies): (Vec<_>, Vec<_>) =
                group.into_iter().map(|p| (p.message, p.reply)).unzip();
            let count = messages.len();
            let mut results = commit(messages).await.into_iter();
            for reply in replies {
                let result = results.next().unwrap_or_else(|| {
                    Err(StoreError::Corrupt(format!(
                        "a group commit of {count} messages returned fewer results"
                    )))
                });
                // A caller that gave up still had its message stored.
                let _ = reply.send(result);
            }
            // Ours were in this group or earlier ones, unless some are still
            // queued behind MAX_GROUP others: then we go round again.
            match last.try_recv() {
                Ok(result) => break Some(result),
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => break None,
            }
        };
        let mut results = Vec::with_capacity(answers.len() + 1);
        for answer in answers {
            // Already answered: this await does not wait.
            results.push(answered(answer.await.ok(), backend));
        }
        results.push(answered(last_result, backend));
        results
    }
}

fn answered(
    answer: Option<Result<Appended, StoreError>>,
    backend: &str,
) -> Result<Appended, StoreError> {
    answer.unwrap_or_else(|| {
        // The leader was cancelled mid-commit (its caller dropped the future):
        // the transaction may or may not have committed.
        Err(StoreError::Unavailable {
            backend: backend.to_owned(),
            source: "the group commit carrying this message was cancelled before it finished"
                .into(),
        })
    })
}

/// What each message of a failed group gets when the failure was the
/// backend's (down, restarting), not the message's own: the same error.
pub(crate) fn fan_out(error: &StoreError, count: usize) -> Vec<Result<Appended, StoreError>> {
    (0..count)
        .map(|_| {
            Err(match error {
                StoreError::Unavailable { backend, source } => StoreError::Unavailable {
                    backend: backend.clone(),
                    source: source.to_string().into(),
                },
                StoreError::Backend { backend, source } => StoreError::Backend {
                    backend: backend.clone(),
                    source: source.to_string().into(),
                },
                StoreError::UnknownConversation(id) => StoreError::UnknownConversation(*id),
                StoreError::ConversationExists(id) => StoreError::ConversationExists(*id),
                StoreError::Corrupt(why) => StoreError::Corrupt(why.clone()),
            })
        })
        .collect()
}
