//! Identifiers, log entries, hard state, membership and snapshot metadata.

use std::collections::BTreeSet;
use std::fmt;

/// The id of a Raft member. `NodeId(0)` is reserved for "nobody" (no vote, no leader).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u64);

/// A Raft term (§5.1): a logical clock that only grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Term(pub u64);

/// A position in the replicated log; the first entry has index 1, index 0 is "before the log".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogIndex(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl LogIndex {
    pub const ZERO: LogIndex = LogIndex(0);
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }
    /// The index before this one; `LogIndex(0).prev()` is `LogIndex(0)`.
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
    pub fn plus(self, n: u64) -> LogIndex {
        LogIndex(self.0 + n)
    }
}

impl Term {
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

/// What a log entry carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// Appended by every new leader at the start of its term (§5.4.2, §8): committing it commits
    /// everything before it and lets ReadIndex serve reads. The state machine ignores it.
    Noop,
    /// An opaque command for the state machine.
    Command,
    /// A membership change; it takes effect on each server as soon as it is in its log
    /// (Raft dissertation §4.1), committed or not.
    ConfigChange(ConfigChange),
}

/// One entry of the replicated log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub term: Term,
    pub index: LogIndex,
    pub kind: EntryKind,
    /// The command bytes for `Command`; empty otherwise.
    pub data: Vec<u8>,
}

impl Entry {
    /// Bytes this entry costs in a message, used for batching limits.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 32
    }
}

/// State that must be on stable storage before any message that depends on it is sent
/// (Raft Figure 2: currentTerm, votedFor; `commit` is persisted lazily as a restart hint).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HardState {
    pub term: Term,
    /// The candidate voted for in `term`, if any.
    pub vote: Option<NodeId>,
    /// The commit index known when this was written. Safe to lag: it only speeds up restart.
    pub commit: LogIndex,
}

/// A single-server membership change (Raft dissertation §4.1 / §4.2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigChange {
    /// Adds a non-voting learner that receives the log but does not count for quorums.
    AddLearner(NodeId),
    /// Adds a voter directly (prefer AddLearner then PromoteLearner so the new voter is caught up).
    AddVoter(NodeId),
    /// Turns a learner into a voter.
    PromoteLearner(NodeId),
    /// Removes a voter or learner.
    Remove(NodeId),
}

impl ConfigChange {
    pub fn node_id(&self) -> NodeId {
        match self {
            ConfigChange::AddLearner(id)
            | ConfigChange::AddVoter(id)
            | ConfigChange::PromoteLearner(id)
            | ConfigChange::Remove(id) => *id,
        }
    }
}

/// The cluster membership: voters decide elections and commits; learners only follow.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    /// Every member, voters then learners.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// The number of voters that form a majority.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// Applies `change`, or says why it is not a valid single-server change of this membership.
    pub fn apply(&self, change: &ConfigChange) -> Result<Membership, String> {
        let mut next = self.clone();
        match change {
            ConfigChange::AddLearner(id) => {
                if self.contains(*id) {
                    return Err(format!("node {id} is already a member"));
                }
                next.learners.insert(*id);
            }
            ConfigChange::AddVoter(id) => {
                if self.voters.contains(id) {
                    return Err(format!("node {id} is already a voter"));
                }
                next.learners.remove(id);
                next.voters.insert(*id);
            }
            ConfigChange::PromoteLearner(id) => {
                if !self.learners.contains(id) {
                    return Err(format!("node {id} is not a learner"));
                }
                next.learners.remove(id);
                next.voters.insert(*id);
            }
            ConfigChange::Remove(id) => {
                if !self.contains(*id) {
                    return Err(format!("node {id} is not a member"));
                }
                if self.voters.len() == 1 && self.voters.contains(id) {
                    return Err(format!("node {id} is the last voter"));
                }
                next.voters.remove(id);
                next.learners.remove(id);
            }
        }
        Ok(next)
    }
}

/// What a snapshot covers: every entry up to and including `index`, and the membership then.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotMeta {
    pub index: LogIndex,
    pub term: Term,
    pub membership: Membership,
}

/// The answer to a ReadIndex request: once the state machine has applied `index`, a read
/// issued with `context` sees every write committed before the request (Raft §6.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub context: u64,
    pub index: LogIndex,
}

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
    /// A non-voting member: follows the leader, never campaigns.
    Learner,
}

impl Role {
    /// The role's name as status output shows it ("leader", "pre-candidate", ...).
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::Learner => "learner",
        }
    }

    /// The role named `name` (the inverse of [`Role::name`]).
    pub fn from_name(name: &str) -> Option<Role> {
        [
            Role::Follower,
            Role::PreCandidate,
            Role::Candidate,
            Role::Leader,
            Role::Learner,
        ]
        .into_iter()
        .find(|role| role.name() == name)
    }
}
