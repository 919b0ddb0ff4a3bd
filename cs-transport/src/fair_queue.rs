//! A shard's waiting room: one queue per conversation, served in turn.
//!
//! A shard serves many conversations. With one FIFO for all of them, a
//! conversation that floods its shard (a bulk import, a runaway
//! integration, a thousand pasted lines) puts everybody else behind its
//! backlog. Here every conversation with work waiting takes one turn of
//! one command, round the ring, so a quiet conversation's command goes into
//! the next batch the worker takes, however long the flood's queue is. The
//! order within each conversation is kept, which is all the message path
//! needs: conversations never share state.
//!
//! Memory stays bounded because nothing here is admitted without a slot or
//! a place on the spill path (see the dispatcher); an idle conversation
//! holds no entry.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Per-conversation FIFOs and the ring of conversations whose turn is due.
/// `K` is the conversation (its id; anything hashable, for the tests).
pub(crate) struct FairQueue<K, T> {
    waiting: HashMap<K, VecDeque<T>>,
    /// Each conversation with something waiting appears exactly once.
    turns: VecDeque<K>,
    len: usize,
}

impl<K: Hash + Eq + Copy, T> FairQueue<K, T> {
    pub(crate) fn new() -> Self {
        Self {
            waiting: HashMap::new(),
            turns: VecDeque::new(),
            len: 0,
        }
    }

    /// Commands waiting, in every conversation.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queues `item` behind what `conversation` has waiting already; a
    /// conversation that had nothing waiting joins the ring at the back.
    pub(crate) fn push(&mut self, conversation: K, item: T) {
        let queue = self.waiting.entry(conversation).or_default();
        if queue.is_empty() {
            self.turns.push_back(conversation);
        }
        queue.push_back(item);
        self.len += 1;
    }

    /// Moves up to `max` items into `batch`, one per conversation per turn,
    /// starting where the previous batch stopped.
    pub(crate) fn take_batch(&mut self, max: usize, batch: &mut Vec<T>) {
        let mut taken = 0;
        while taken < max {
            let Some(conversation) = self.turns.pop_front() else {
                break;
            };
            let Some(queue) = self.waiting.get_mut(&conversation) else {
                continue;
            };
            if let Some(item) = queue.pop_front() {
                batch.push(item);
                taken += 1;
                self.len -= 1;
            }
            if queue.is_empty() {
                self.waiting.remove(&conversation);
            } else {
                self.turns.push_back(conversation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conversation(n: u32) -> u32 {
        n
    }

    #[test]
    fn a_quiet_conversation_goes_in_the_next_batch_behind_any_flood() {
        let mut queue = FairQueue::new();
        for i in 0..10_000 {
            queue.push(conversation(1), ("flood", i));
        }
        queue.push(conversation(2), ("quiet", 0));
        let mut batch = Vec::new();
        queue.take_batch(128, &mut batch);
        assert_eq!(batch.len(), 128);
        assert!(batch.contains(&("quiet", 0)));
        assert_eq!(queue.len(), 10_001 - 128);
    }

    #[test]
    fn each_conversation_keeps_its_order_and_nothing_is_lost() {
        let mut queue = FairQueue::new();
        let mut expected = 0;
        for i in 0..1_000u32 {
            // Uneven: conversation k gets every (k+1)-th item.
            let k = (0..5u32).find(|k| i % (*k + 1) == 0).unwrap_or(4);
            queue.push(conversation(k), (k, i));
            expected += 1;
        }
        let mut out = Vec::new();
        while !queue.is_empty() {
            queue.take_batch(7, &mut out);
        }
        assert_eq!(out.len(), expected);
        for k in 0..5u32 {
            let seen: Vec<u32> = out
                .iter()
                .filter(|(c, _)| *c == k)
                .map(|(_, i)| *i)
                .collect();
            let mut sorted = seen.clone();
            sorted.sort_unstable();
            assert_eq!(seen, sorted, "conversation {k} out of order");
        }
        assert!(queue.waiting.is_empty() && queue.turns.is_empty());
    }

    #[test]
    fn turns_go_round_the_ring() {
        let mut queue = FairQueue::new();
        for i in 0..3 {
            for c in 1..=3u32 {
                queue.push(conversation(c), (c, i));
            }
        }
        let mut batch = Vec::new();
        queue.take_batch(4, &mut batch);
        assert_eq!(batch, [(1, 0), (2, 0), (3, 0), (1, 1)]);
        batch.clear();
        queue.take_batch(2, &mut batch);
        // The next batch starts where the last one stopped.
        assert_eq!(batch, [(2, 1), (3, 1)]);
    }
}
