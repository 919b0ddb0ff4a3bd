//! Which agents exist: the host's list, which it may change at runtime.
//!
//! The library ships no accounts. A host lists its agents in an
//! [`AgentDirectory`] (usually a [`MemoryDirectory`] it fills from its own
//! user table), and a desk's router follows it with
//! [`Router::sync_agents`](crate::router::Router::sync_agents) whenever it
//! changes.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, Skill};

/// What an agent may do on the desk beyond serving chats.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentRole {
    /// Serves the chats the router gives them.
    #[default]
    Agent,
    /// Also watches the whole desk (every queue and conversation).
    Supervisor,
}

/// One agent as the host lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's id, as the host's login knows them.
    pub id: AgentId,
    /// The name visitors and colleagues see.
    pub name: String,
    /// How many conversations they may serve at once; at least 1.
    pub capacity: usize,
    /// Skills and groups, for skill routing; kept sorted and without repeats
    /// by [`AgentRecord::with_skill`].
    pub skills: Vec<Skill>,
    /// What they may do beyond serving chats.
    pub role: AgentRole,
}

impl AgentRecord {
    /// An agent with no skills and the [`AgentRole::Agent`] role.
    ///
    /// ```
    /// use cs_core::{AgentId, AgentRecord, AgentRole, Skill};
    ///
    /// # fn main() -> Result<(), cs_core::InvalidId> {
    /// let alice = AgentRecord::new(AgentId::new("alice")?, "Alice", 3)
    ///     .with_skill(Skill::new("refunds")?)
    ///     .with_role(AgentRole::Supervisor);
    /// assert_eq!(alice.skills.len(), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(id: AgentId, name: impl Into<String>, capacity: usize) -> Self {
        Self {
            id,
            name: name.into(),
            capacity,
            skills: Vec::new(),
            role: AgentRole::default(),
        }
    }

    /// Adds a skill or group (once, however often it is given).
    pub fn with_skill(mut self, skill: Skill) -> Self {
        // Sorted, so two records with the same skills compare equal and an
        // upsert of an unchanged record is recognised as no change.
        if let Err(at) = self.skills.binary_search(&skill) {
            self.skills.insert(at, skill);
        }
        self
    }

    /// Sets the role.
    pub fn with_role(mut self, role: AgentRole) -> Self {
        self.role = role;
        self
    }
}

/// A directory refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    /// Two records with one id in the same list.
    #[error("agent {0} is listed twice; each agent id may appear once")]
    Duplicate(AgentId),
    /// A capacity of zero.
    #[error("agent {0} has capacity 0; capacity must be at least 1 (set their presence to away to take no new chats)")]
    ZeroCapacity(AgentId),
}

/// Where a desk learns which agents exist.
///
/// Sync and in memory on purpose: the router reads it on every change; a host
/// that keeps agents in its own database loads them into a
/// [`MemoryDirectory`] (or implements this over its own cache).
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use cs_core::{AgentDirectory, AgentId, AgentRecord, MemoryDirectory};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let directory = Arc::new(MemoryDirectory::new());
/// let changes = Arc::new(AtomicUsize::new(0));
/// let seen = Arc::clone(&changes);
/// directory.subscribe(Box::new(move || {
///     seen.fetch_add(1, Ordering::SeqCst);
/// }));
///
/// directory.upsert(AgentRecord::new(AgentId::new("alice")?, "Alice", 3))?;
/// assert_eq!(directory.agents().len(), 1);
/// assert_eq!(changes.load(Ordering::SeqCst), 1);
/// # Ok(())
/// # }
/// ```
pub trait AgentDirectory: Send + Sync + 'static {
    /// Every agent, sorted by id.
    fn agents(&self) -> Vec<AgentRecord>;

    /// One agent, if listed.
    fn agent(&self, id: &AgentId) -> Option<AgentRecord>;

    /// A number that grows on every change, so a reader can tell whether what
    /// it last read is still current.
    fn version(&self) -> u64;

    /// Calls `on_change` after every change, with no lock of the directory
    /// held, so it may read the directory (or change it) from inside. It is
    /// told only that something changed: it re-reads [`agents`](Self::agents).
    /// Callbacks stay registered for the directory's life.
    fn subscribe(&self, on_change: Box<dyn Fn() + Send + Sync>);
}

/// A shared directory is a directory, so a host can keep one handle to change
/// it and give the desk another.
impl<T: AgentDirectory + ?Sized> AgentDirectory for Arc<T> {
    fn agents(&self) -> Vec<AgentRecord> {
        (**self).agents()
    }
    fn agent(&self, id: &AgentId) -> Option<AgentRecord> {
        (**self).agent(id)
    }
    fn version(&self) -> u64 {
        (**self).version()
    }
    fn subscribe(&self, on_change: Box<dyn Fn() + Send + Sync>) {
        (**self).subscribe(on_change)
    }
}

type Subscriber = Arc<dyn Fn() + Send + Sync>;

/// An [`AgentDirectory`] kept in memory, changed with
/// [`upsert`](Self::upsert) and [`remove`](Self::remove).
#[derive(Default)]
pub struct MemoryDirectory {
    /// The agents and the version, changed together under one lock so a
    /// reader never sees one without the other.
    state: RwLock<State>,
    /// Apart from `state`, and each an `Arc`, so the list can be copied out
    /// and called with no lock held: a callback may then read the directory,
    /// change it, or subscribe, without deadlocking.
    subscribers: Mutex<Vec<Subscriber>>,
}

#[derive(Default)]
struct State {
    agents: BTreeMap<AgentId, AgentRecord>,
    version: u64,
}

fn check_capacity(record: &AgentRecord) -> Result<(), DirectoryError> {
    if record.capacity == 0 {
        return Err(DirectoryError::ZeroCapacity(record.id.clone()));
    }
    Ok(())
}

impl MemoryDirectory {
    /// An empty directory, at version 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory holding `records`, at version 0.
    ///
    /// # Errors
    /// [`DirectoryError::Duplicate`] if an id appears twice,
    /// [`DirectoryError::ZeroCapacity`] if a capacity is 0.
    pub fn from_records(
        records: impl IntoIterator<Item = AgentRecord>,
    ) -> Result<Self, DirectoryError> {
        let mut agents = BTreeMap::new();
        for record in records {
            check_capacity(&record)?;
            let id = record.id.clone();
            if agents.insert(id.clone(), record).is_some() {
                return Err(DirectoryError::Duplicate(id));
            }
        }
        Ok(Self {
            state: RwLock::new(State { agents, version: 0 }),
            subscribers: Mutex::new(Vec::new()),
        })
    }

    /// Adds an agent, or replaces the record with the same id. A record equal
    /// to the one listed is no change: the version stays and nobody is told.
    ///
    /// # Errors
    /// [`DirectoryError::ZeroCapacity`]; the directory is unchanged then.
    pub fn upsert(&self, record: AgentRecord) -> Result<(), DirectoryError> {
        check_capacity(&record)?;
        {
            let mut state = self.state.write();
            if state.agents.get(&record.id) == Some(&record) {
                return Ok(());
            }
            state.agents.insert(record.id.clone(), record);
            state.version += 1;
        }
        self.notify();
        Ok(())
    }

    /// Takes an agent out of the directory, returning their record, or
    /// `None` (and no change) if they were not listed.
    pub fn remove(&self, id: &AgentId) -> Option<AgentRecord> {
        let removed = {
            let mut state = self.state.write();
            let removed = state.agents.remove(id)?;
            state.version += 1;
            removed
        };
        self.notify();
        Some(removed)
    }

    /// Calls every subscriber. Called with no lock held (see `subscribers`).
    fn notify(&self) {
        let subscribers: Vec<Subscriber> = self.subscribers.lock().clone();
        for on_change in subscribers {
            on_change();
        }
    }
}

impl AgentDirectory for MemoryDirectory {
    fn agents(&self) -> Vec<AgentRecord> {
        self.state.read().agents.values().cloned().collect()
    }

    fn agent(&self, id: &AgentId) -> Option<AgentRecord> {
        self.state.read().agents.get(id).cloned()
    }

    fn version(&self) -> u64 {
        self.state.read().version
    }

    fn subscribe(&self, on_change: Box<dyn Fn() + Send + Sync>) {
        self.subscribers.lock().push(Arc::from(on_change));
    }
}

impl std::fmt::Debug for MemoryDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.state.read();
        f.debug_struct("MemoryDirectory")
            .field("agents", &state.agents.len())
            .field("version", &state.version)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn id(name: &str) -> AgentId {
        AgentId::new(name).unwrap()
    }

    fn counter(directory: &MemoryDirectory) -> Arc<AtomicUsize> {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        directory.subscribe(Box::new(move || {
            seen.fetch_add(1, Ordering::SeqCst);
        }));
        calls
    }

    #[test]
    fn upsert_and_remove_bump_the_version_and_notify_once_per_change() {
        let directory = MemoryDirectory::new();
        let calls = counter(&directory);
        assert_eq!(directory.version(), 0);

        directory
            .upsert(AgentRecord::new(id("bob"), "Bob", 2))
            .unwrap();
        directory
            .upsert(AgentRecord::new(id("alice"), "Alice", 1))
            .unwrap();
        assert_eq!(directory.version(), 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let ids: Vec<_> = directory.agents().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, vec![id("alice"), id("bob")], "sorted by id");

        // A changed record is a change; the same record again is not.
        let bigger = AgentRecord::new(id("bob"), "Bob", 5);
        directory.upsert(bigger.clone()).unwrap();
        directory.upsert(bigger.clone()).unwrap();
        assert_eq!(directory.version(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(directory.agent(&id("bob")), Some(bigger.clone()));

        assert_eq!(directory.remove(&id("bob")), Some(bigger));
        assert_eq!(directory.remove(&id("bob")), None);
        assert_eq!(directory.version(), 4);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        assert_eq!(directory.agent(&id("bob")), None);
    }

    #[test]
    fn refused_changes_change_nothing() {
        let directory = MemoryDirectory::new();
        let calls = counter(&directory);
        assert_eq!(
            directory.upsert(AgentRecord::new(id("alice"), "Alice", 0)),
            Err(DirectoryError::ZeroCapacity(id("alice")))
        );
        assert!(directory.agents().is_empty());
        assert_eq!(directory.version(), 0);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn from_records_refuses_duplicates_and_zero_capacity() {
        let alice = AgentRecord::new(id("alice"), "Alice", 1);
        assert!(matches!(
            MemoryDirectory::from_records([alice.clone(), alice.clone()]),
            Err(DirectoryError::Duplicate(dup)) if dup == id("alice")
        ));
        assert!(matches!(
            MemoryDirectory::from_records([AgentRecord::new(id("bob"), "Bob", 0)]),
            Err(DirectoryError::ZeroCapacity(_))
        ));
        let directory = MemoryDirectory::from_records([alice.clone()]).unwrap();
        assert_eq!(directory.agents(), vec![alice]);
        assert_eq!(directory.version(), 0);
    }

    #[test]
    fn a_subscriber_may_read_and_change_the_directory_from_its_callback() {
        let directory = Arc::new(MemoryDirectory::new());
        let seen = Arc::new(Mutex::new(Vec::new()));
        {
            // Weak, so the directory does not keep itself alive through its
            // own subscriber.
            let weak = Arc::downgrade(&directory);
            let seen = Arc::clone(&seen);
            directory.subscribe(Box::new(move || {
                let Some(directory) = weak.upgrade() else {
                    return;
                };
                seen.lock()
                    .push((directory.version(), directory.agents().len()));
                // A change from inside the callback: removing the temporary
                // agent notifies again (reentrantly), and must not deadlock.
                if directory.agent(&id("temp")).is_some() {
                    directory.remove(&id("temp"));
                }
                directory.subscribe(Box::new(|| {}));
            }));
        }
        directory
            .upsert(AgentRecord::new(id("temp"), "Temp", 1))
            .unwrap();
        assert_eq!(directory.version(), 2);
        assert!(directory.agents().is_empty());
        // The first call saw the upsert; the nested one, made by its remove,
        // saw the removal. Each read a consistent state.
        assert_eq!(*seen.lock(), vec![(1, 1), (2, 0)]);
    }

    #[test]
    fn a_shared_directory_is_a_directory() {
        fn count(directory: &dyn AgentDirectory) -> usize {
            directory.agents().len()
        }
        let shared: Arc<MemoryDirectory> = Arc::new(MemoryDirectory::new());
        let as_dyn: Arc<dyn AgentDirectory> = Arc::clone(&shared) as Arc<dyn AgentDirectory>;
        shared
            .upsert(AgentRecord::new(id("alice"), "Alice", 1))
            .unwrap();
        assert_eq!(count(&as_dyn), 1);
        assert_eq!(as_dyn.version(), 1);
        assert!(as_dyn.agent(&id("alice")).is_some());
    }

    #[test]
    fn records_round_trip_through_json() {
        let record = AgentRecord::new(id("小王"), "小王", 2)
            .with_skill(Skill::new("zh").unwrap())
            .with_skill(Skill::new("refunds").unwrap())
            .with_skill(Skill::new("zh").unwrap())
            .with_role(AgentRole::Supervisor);
        assert_eq!(record.skills.len(), 2, "a repeated skill is kept once");
        let json = serde_json::to_string(&record).unwrap();
        assert!(json.contains("\"supervisor\""), "{json}");
        let back: AgentRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record);
    }
}
