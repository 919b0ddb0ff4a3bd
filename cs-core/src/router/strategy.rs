//! Who gets the next conversation: the [`AssignmentStrategy`] trait and the
//! built-in strategies.
//!
//! A strategy only *chooses*. The router hands it the agents that are online
//! and below their capacity, and re-checks whatever it picks, so a buggy
//! strategy can make a poor choice but never overload an agent.
//!
//! The built-ins compose: [`SkillMatch`] and [`Sticky`] narrow or prefer, then
//! ask an inner strategy ([`LeastBusy`] by default) to decide.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use crate::ids::{AgentId, Skill};
use crate::router::QueueRequest;

/// An agent who could take the conversation now: online, and below capacity.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The agent.
    pub agent: &'a AgentId,
    /// Their skills and groups.
    pub skills: &'a BTreeSet<Skill>,
    /// How many conversations they have now.
    pub active: usize,
    /// How many they may have at once.
    pub max_concurrent: usize,
    /// When they were last given a conversation, as a router-wide counter
    /// (larger is more recent; 0 means never).
    pub last_assigned: u64,
}

/// Chooses an agent for a queued conversation.
///
/// Implement it to route your own way (by language, by VIP tier, by shift);
/// nothing else is needed. `candidates` is never empty and lists agents in a
/// stable order (by agent id).
///
/// ```
/// use cs_core::router::{AssignmentStrategy, Candidate, QueueRequest};
///
/// /// Always the agent with the most free seats.
/// struct MostFreeSeats;
///
/// impl AssignmentStrategy for MostFreeSeats {
///     fn pick(&self, _request: &QueueRequest, candidates: &[Candidate<'_>]) -> Option<usize> {
///         (0..candidates.len()).max_by_key(|&i| candidates[i].max_concurrent - candidates[i].active)
///     }
/// }
/// ```
pub trait AssignmentStrategy: Send + Sync + 'static {
    /// The index in `candidates` of the agent to assign, or `None` to leave
    /// the conversation waiting (for example, nobody has the needed skill).
    fn pick(&self, request: &QueueRequest, candidates: &[Candidate<'_>]) -> Option<usize>;
}

impl<S: AssignmentStrategy + ?Sized> AssignmentStrategy for Box<S> {
    fn pick(&self, request: &QueueRequest, candidates: &[Candidate<'_>]) -> Option<usize> {
        (**self).pick(request, candidates)
    }
}

/// Takes turns: the agent who has waited longest since their last assignment.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundRobin;

impl AssignmentStrategy for RoundRobin {
    fn pick(&self, _request: &QueueRequest, candidates: &[Candidate<'_>]) -> Option<usize> {
        // Turn order lives in the router's `last_assigned` counter rather than a
        // cursor here, so the strategy stays stateless and survives agents
        // joining and leaving.
        (0..candidates.len()).min_by_key(|&i| candidates[i].last_assigned)
    }
}

/// The agent with the fewest active conversations; ties go to whoever waited
/// longest since their last assignment.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeastBusy;

impl AssignmentStrategy for LeastBusy {
    fn pick(&self, _request: &QueueRequest, candidates: &[Candidate<'_>]) -> Option<usize> {
        (0..candidates.len()).min_by_key(|&i| (candidates[i].active, candidates[i].last_assigned))
    }
}

/// Only agents with the skill the conversation asks for (any agent when it
/// asks for none); the inner strategy picks among them. A conversation whose
/// skill nobody free has keeps waiting, and the router moves on to the next
/// one in the queue, so one rare skill does not block everybody.
#[derive(Clone, Copy, Debug, Default)]
pub struct SkillMatch<S = LeastBusy>(pub S);

impl<S: AssignmentStrategy> AssignmentStrategy for SkillMatch<S> {
    fn pick(&self, request: &QueueRequest, candidates: &[Candidate<'_>]) -> Option<usize> {
        let Some(skill) = &request.skill else {
            return self.0.pick(request, candidates);
        };
        let (indices, matching): (Vec<usize>, Vec<Candidate<'_>>) = candidates
            .iter()
            .enumerate()
            .filter(|(_, c)| c.skills.contains(skill))
            .map(|(i, c)| (i, *c))
            .unzip();
        if matching.is_empty() {
            return None;
        }
        let chosen = self.0.pick(request, &matching)?;
        indices.get(chosen).copied()
    }
}

/// The visitor's previous agent when they are free
/// ([`QueueRequest::preferred_agent`]); otherwise the inner strategy decides.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sticky<S = LeastBusy>(pub S);

impl<S: AssignmentStrategy> AssignmentStrategy for Sticky<S> {
    fn pick(&self, request: &QueueRequest, candidates: &[Candidate<'_>]) -> Option<usize> {
        request
            .preferred_agent
            .as_ref()
            .and_then(|preferred| candidates.iter().position(|c| c.agent == preferred))
            .or_else(|| self.0.pick(request, candidates))
    }
}

/// The built-in strategies by name, for configuration files and command lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuiltinStrategy {
    /// [`RoundRobin`], named `round-robin`.
    RoundRobin,
    /// [`LeastBusy`], named `least-busy`.
    LeastBusy,
    /// [`SkillMatch`] over least-busy, named `skill`.
    SkillMatch,
    /// [`Sticky`] over least-busy, named `sticky`.
    Sticky,
}

impl BuiltinStrategy {
    /// Every built-in, in documentation order.
    pub const ALL: [BuiltinStrategy; 4] = [
        BuiltinStrategy::RoundRobin,
        BuiltinStrategy::LeastBusy,
        BuiltinStrategy::SkillMatch,
        BuiltinStrategy::Sticky,
    ];

    /// Its configuration name.
    pub fn name(self) -> &'static str {
        match self {
            BuiltinStrategy::RoundRobin => "round-robin",
            BuiltinStrategy::LeastBusy => "least-busy",
            BuiltinStrategy::SkillMatch => "skill",
            BuiltinStrategy::Sticky => "sticky",
        }
    }

    /// The strategy itself, ready for [`Router::new`](crate::router::Router::new).
    pub fn build(self) -> Box<dyn AssignmentStrategy> {
        match self {
            BuiltinStrategy::RoundRobin => Box::new(RoundRobin),
            BuiltinStrategy::LeastBusy => Box::new(LeastBusy),
            BuiltinStrategy::SkillMatch => Box::new(SkillMatch(LeastBusy)),
            BuiltinStrategy::Sticky => Box::new(Sticky(LeastBusy)),
        }
    }
}

impl fmt::Display for BuiltinStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A strategy name that is not one of the built-ins.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown assignment strategy {0:?}; choose one of round-robin, least-busy, skill, sticky")]
pub struct UnknownStrategy(pub String);

impl FromStr for BuiltinStrategy {
    type Err = UnknownStrategy;
    fn from_str(s: &str) -> Result<Self, UnknownStrategy> {
        Self::ALL
            .into_iter()
            .find(|b| b.name() == s)
            .ok_or_else(|| UnknownStrategy(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{ConversationId, VisitorId};

    fn request(skill: Option<&str>, preferred: Option<&str>) -> QueueRequest {
        QueueRequest {
            conversation: ConversationId::new(),
            visitor: VisitorId::new("v").unwrap(),
            skill: skill.map(|s| Skill::new(s).unwrap()),
            preferred_agent: preferred.map(|a| AgentId::new(a).unwrap()),
        }
    }

    struct Agents {
        ids: Vec<AgentId>,
        skills: Vec<BTreeSet<Skill>>,
    }

    impl Agents {
        fn new(spec: &[(&str, &[&str])]) -> Self {
            Self {
                ids: spec.iter().map(|(a, _)| AgentId::new(a).unwrap()).collect(),
                skills: spec
                    .iter()
                    .map(|(_, s)| s.iter().map(|s| Skill::new(s).unwrap()).collect())
                    .collect(),
            }
        }

        /// `load[i]` is (active, last_assigned) of agent i; capacity is 5.
        fn candidates(&self, load: &[(usize, u64)]) -> Vec<Candidate<'_>> {
            (0..self.ids.len())
                .map(|i| Candidate {
                    agent: &self.ids[i],
                    skills: &self.skills[i],
                    active: load[i].0,
                    max_concurrent: 5,
                    last_assigned: load[i].1,
                })
                .collect()
        }
    }

    #[test]
    fn round_robin_takes_turns() {
        let agents = Agents::new(&[("a", &[]), ("b", &[]), ("c", &[])]);
        let c = agents.candidates(&[(0, 7), (4, 2), (0, 9)]);
        assert_eq!(RoundRobin.pick(&request(None, None), &c), Some(1));
    }

    #[test]
    fn least_busy_prefers_fewest_then_longest_idle() {
        let agents = Agents::new(&[("a", &[]), ("b", &[]), ("c", &[])]);
        let c = agents.candidates(&[(2, 1), (1, 8), (1, 3)]);
        assert_eq!(LeastBusy.pick(&request(None, None), &c), Some(2));
    }

    #[test]
    fn skill_match_filters_then_delegates() {
        let agents = Agents::new(&[("a", &["zh"]), ("b", &["refunds"]), ("c", &["refunds"])]);
        let c = agents.candidates(&[(0, 0), (3, 0), (1, 0)]);
        let s = SkillMatch(LeastBusy);
        assert_eq!(s.pick(&request(Some("refunds"), None), &c), Some(2));
        assert_eq!(s.pick(&request(Some("vip"), None), &c), None);
        assert_eq!(s.pick(&request(None, None), &c), Some(0));
    }

    #[test]
    fn sticky_prefers_the_last_agent_when_free() {
        let agents = Agents::new(&[("a", &[]), ("b", &[])]);
        let c = agents.candidates(&[(0, 0), (3, 0)]);
        let s = Sticky(LeastBusy);
        assert_eq!(s.pick(&request(None, Some("b")), &c), Some(1));
        // Not among the candidates (offline or full): fall back.
        assert_eq!(s.pick(&request(None, Some("zed")), &c), Some(0));
    }

    #[test]
    fn builtins_parse_by_name() {
        for b in BuiltinStrategy::ALL {
            assert_eq!(b.name().parse::<BuiltinStrategy>(), Ok(b));
        }
        let err = "fastest".parse::<BuiltinStrategy>().unwrap_err();
        assert!(err.to_string().contains("least-busy"));
    }
}
