//! The hand-driven API, shaped after the 6.824 Raft tester (`config.go`): cut and restore
//! links, crash and restart nodes, submit commands, and ask who is leader and what is
//! committed. Every method that waits runs the simulation forward in simulated time.

use std::collections::BTreeMap;

use shoal_raft::{ConfigChange, LogIndex, NodeId, ProposeError, Raft, Term};

use crate::kv::Command;
use crate::sim::Sim;

/// Anything that names a node: a `NodeId` or a plain number (`sim.crash(2)`).
pub trait IntoNodeId: Copy {
    fn into_node_id(self) -> NodeId;
}

impl IntoNodeId for NodeId {
    fn into_node_id(self) -> NodeId {
        self
    }
}
impl IntoNodeId for u64 {
    fn into_node_id(self) -> NodeId {
        NodeId(self)
    }
}
impl IntoNodeId for usize {
    fn into_node_id(self) -> NodeId {
        NodeId(self as u64)
    }
}
impl IntoNodeId for u32 {
    fn into_node_id(self) -> NodeId {
        NodeId(u64::from(self))
    }
}
/// Unsuffixed integer literals default to `i32`, so `sim.crash(2)` needs this one.
impl IntoNodeId for i32 {
    fn into_node_id(self) -> NodeId {
        NodeId(u64::try_from(self).expect("node ids are positive"))
    }
}

/// Anything that names a log index: a `LogIndex` or a plain number (`sim.n_committed(3)`).
pub trait IntoLogIndex: Copy {
    fn into_log_index(self) -> LogIndex;
}

impl IntoLogIndex for LogIndex {
    fn into_log_index(self) -> LogIndex {
        self
    }
}
impl IntoLogIndex for u64 {
    fn into_log_index(self) -> LogIndex {
        LogIndex(self)
    }
}
impl IntoLogIndex for usize {
    fn into_log_index(self) -> LogIndex {
        LogIndex(self as u64)
    }
}
impl IntoLogIndex for i32 {
    fn into_log_index(self) -> LogIndex {
        LogIndex(u64::try_from(self).expect("log indices are not negative"))
    }
}

/// How long `one` keeps trying (6.824: 10 s), and how long it waits for one proposal
/// (6.824: 2 s), in simulated time.
const ONE_TIMEOUT_MS: u64 = 10_000;
const ONE_PROPOSAL_WAIT_MS: u64 = 2_000;
/// Poll interval of the waiting helpers.
const POLL_MS: u64 = 10;

impl Sim {
    fn idx_of(&self, node: impl IntoNodeId) -> usize {
        let id = node.into_node_id();
        self.node_idx(id)
            .unwrap_or_else(|| panic!("seed {}: there is no node {id}", self.config.seed))
    }

    /// Every node id, voters and spares.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The core of a node, or `None` while it is crashed.
    pub fn raft(&self, node: impl IntoNodeId) -> Option<&Raft> {
        self.nodes[self.idx_of(node)].raft.as_ref()
    }

    pub fn is_up(&self, node: impl IntoNodeId) -> bool {
        self.nodes[self.idx_of(node)].is_up()
    }

    /// Up and not disconnected (6.824's "connected").
    pub fn is_connected(&self, node: impl IntoNodeId) -> bool {
        let idx = self.idx_of(node);
        self.nodes[idx].is_up() && !self.links.is_disconnected(self.nodes[idx].id)
    }

    /// The state machine's applied index on `node` in its current incarnation.
    pub fn applied_index(&self, node: impl IntoNodeId) -> LogIndex {
        self.nodes[self.idx_of(node)].applied_index
    }

    /// A key as `node`'s state machine has it (no linearizability: a local peek).
    pub fn kv_get(&self, node: impl IntoNodeId, key: &str) -> Option<&String> {
        self.nodes[self.idx_of(node)].kv.get(key)
    }

    /// Cuts `node` from every other node and from clients.
    pub fn disconnect(&mut self, node: impl IntoNodeId) {
        let id = node.into_node_id();
        self.log(|| format!("disconnect {id}"));
        self.links.disconnect(id);
    }

    pub fn connect(&mut self, node: impl IntoNodeId) {
        let id = node.into_node_id();
        self.log(|| format!("connect {id}"));
        self.links.connect(id);
    }

    /// Nodes talk only within their group; nodes in no group are isolated.
    /// `sim.partition(&[&[1, 2], &[3, 4, 5]])`.
    pub fn partition<T: IntoNodeId>(&mut self, groups: &[&[T]]) {
        let groups: Vec<Vec<NodeId>> = groups
            .iter()
            .map(|g| g.iter().map(|n| n.into_node_id()).collect())
            .collect();
        self.log(|| format!("partition {groups:?}"));
        self.links.partition(&groups);
    }

    /// Blocks messages `from -> to` while `to -> from` still flows.
    pub fn block_one_way(&mut self, from: impl IntoNodeId, to: impl IntoNodeId) {
        let (from, to) = (from.into_node_id(), to.into_node_id());
        self.log(|| format!("block {from} -> {to}"));
        self.links.block_one_way(from, to);
    }

    /// Removes every disconnection, partition and one-way block.
    pub fn heal(&mut self) {
        self.log(|| "heal".to_string());
        self.links.heal();
    }

    /// Switches between `SimConfig::net` and `SimConfig::unreliable_net`.
    pub fn set_unreliable(&mut self, unreliable: bool) {
        self.unreliable = unreliable;
    }

    /// Crashes `node`: the core and everything not fsynced are lost.
    pub fn crash(&mut self, node: impl IntoNodeId) {
        let idx = self.idx_of(node);
        self.crash_idx(idx);
    }

    /// Freezes `node` for `duration_ms` (a long GC pause): no ticks, and messages to it wait.
    pub fn pause(&mut self, node: impl IntoNodeId, duration_ms: u64) {
        let idx = self.idx_of(node);
        self.pause_idx(idx, duration_ms);
    }

    /// Restarts a crashed `node` from its durable state.
    pub fn restart(&mut self, node: impl IntoNodeId) {
        let idx = self.idx_of(node);
        self.restart_idx(idx);
    }

    /// Proposes `Command::Raw(cmd)` at `node` if it is up and leader (6.824's `Start`).
    pub fn start(&mut self, node: impl IntoNodeId, cmd: u64) -> Option<(Term, LogIndex)> {
        let idx = self.idx_of(node);
        let result = self.nodes[idx]
            .raft
            .as_mut()
            .filter(|raft| raft.is_leader())?
            .propose(Command::Raw(cmd).encode())
            .ok();
        self.after_input(idx, true);
        result
    }

    /// Proposes `Command::Blob(bytes)` at `node` if it is up and leader.
    pub fn start_blob(&mut self, node: impl IntoNodeId, bytes: Vec<u8>) -> Option<(Term, LogIndex)> {
        let idx = self.idx_of(node);
        let result = self.nodes[idx]
            .raft
            .as_mut()
            .filter(|raft| raft.is_leader())?
            .propose(Command::Blob(bytes).encode())
            .ok();
        self.after_input(idx, true);
        result
    }

    /// The highest log index any node has applied.
    pub fn applied_index_max(&self) -> LogIndex {
        self.nodes
            .iter()
            .map(|n| n.applied_index_max)
            .max()
            .unwrap_or_default()
    }

    pub fn propose_config_change(
        &mut self,
        node: impl IntoNodeId,
        change: ConfigChange,
    ) -> Result<(Term, LogIndex), ProposeError> {
        let idx = self.idx_of(node);
        let Some(raft) = self.nodes[idx].raft.as_mut() else {
            return Err(ProposeError::NotLeader { leader_hint: None });
        };
        let was_leader = raft.is_leader();
        let result = raft.propose_config_change(change, Vec::new());
        self.after_input(idx, was_leader);
        result
    }

    pub fn transfer_leadership(
        &mut self,
        from: impl IntoNodeId,
        to: impl IntoNodeId,
    ) -> Result<(), ProposeError> {
        let idx = self.idx_of(from);
        let Some(raft) = self.nodes[idx].raft.as_mut() else {
            return Err(ProposeError::NotLeader { leader_hint: None });
        };
        let was_leader = raft.is_leader();
        let result = raft.transfer_leadership(to.into_node_id());
        self.after_input(idx, was_leader);
        result
    }

    /// Runs `f` on `node`'s core as one input (then handles its `Ready`s and checks the
    /// invariants); `None` while the node is crashed.
    pub fn with_raft<R>(&mut self, node: impl IntoNodeId, f: impl FnOnce(&mut Raft) -> R) -> Option<R> {
        let idx = self.idx_of(node);
        let raft = self.nodes[idx].raft.as_mut()?;
        let was_leader = raft.is_leader();
        let result = f(raft);
        self.after_input(idx, was_leader);
        Some(result)
    }

    /// Asks `node` for a linearizable read point (`Raft::read_index`) and waits up to
    /// `max_ticks` for its `ReadState`; returns the index a read must wait for, or `None` if
    /// the node refused or never confirmed.
    pub fn read_index(&mut self, node: impl IntoNodeId, max_ticks: u64) -> Option<LogIndex> {
        let idx = self.idx_of(node);
        let context = u64::MAX - self.stats.n_events;
        self.with_raft(self.nodes[idx].id, |raft| raft.read_index(context))?
            .ok()?;
        let incarnation = self.nodes[idx].incarnation;
        self.run_until(
            |s| s.nodes[idx].incarnation != incarnation || s.nodes[idx].scenario_reads.contains_key(&context),
            max_ticks,
        );
        self.nodes[idx].scenario_reads.remove(&context)
    }

    /// How many nodes have applied `index` (now or before a crash), and the command there.
    /// The checker already guarantees they all applied the same entry.
    pub fn n_committed(&self, index: impl IntoLogIndex) -> (usize, Option<Command>) {
        let index = index.into_log_index();
        let count = self.nodes.iter().filter(|n| n.applied_index_max >= index).count();
        (count, self.applied_command(index))
    }

    /// Submits `cmd` at a leader until it is applied by at least `expected_servers` nodes
    /// (6.824's `one`); returns its index. With `retry` false, a proposal that does not
    /// commit within 2 s fails; with `retry` true it is proposed again, for up to 10 s.
    pub fn one(&mut self, cmd: u64, expected_servers: usize, retry: bool) -> LogIndex {
        let deadline_ms = self.now_ms + ONE_TIMEOUT_MS;
        let mut start_idx = 0;
        while self.now_ms < deadline_ms {
            let mut proposed = None;
            for _ in 0..self.nodes.len() {
                start_idx = (start_idx + 1) % self.nodes.len();
                let id = self.nodes[start_idx].id;
                if self.is_connected(id) {
                    if let Some((_, index)) = self.start(id, cmd) {
                        proposed = Some(index);
                        break;
                    }
                }
            }
            let Some(index) = proposed else {
                self.run_for(50);
                continue;
            };
            let wait_end_ms = self.now_ms + ONE_PROPOSAL_WAIT_MS;
            while self.now_ms < wait_end_ms {
                let (count, command) = self.n_committed(index);
                if count > 0 && count >= expected_servers && command == Some(Command::Raw(cmd)) {
                    return index;
                }
                self.run_for(POLL_MS);
            }
            if !retry {
                panic!(
                    "seed {}: one({cmd}) failed to reach agreement at index {index}{}",
                    self.config.seed,
                    self.describe_nodes()
                );
            }
        }
        panic!(
            "seed {}: one({cmd}) failed to reach agreement{}",
            self.config.seed,
            self.describe_nodes()
        );
    }

    /// Waits for exactly one leader among connected nodes, checking that no term has two
    /// (6.824's `checkOneLeader`); returns it.
    pub fn check_one_leader(&mut self) -> NodeId {
        for _ in 0..10 {
            let pause = self.rng.range_inclusive(450, 550);
            self.run_for(pause);
            let mut leaders: BTreeMap<Term, Vec<NodeId>> = BTreeMap::new();
            for node in &self.nodes {
                if let Some(raft) = node.raft.as_ref() {
                    if raft.is_leader() && !self.links.is_disconnected(node.id) {
                        leaders.entry(raft.term()).or_default().push(node.id);
                    }
                }
            }
            for (term, ids) in &leaders {
                assert!(
                    ids.len() <= 1,
                    "seed {}: term {term} has {} leaders: {ids:?}",
                    self.config.seed,
                    ids.len()
                );
            }
            if let Some((_, ids)) = leaders.iter().next_back() {
                return ids[0];
            }
        }
        panic!(
            "seed {}: expected one leader, got none{}",
            self.config.seed,
            self.describe_nodes()
        );
    }

    /// Asserts that no connected node thinks it is leader (6.824's `checkNoLeader`).
    pub fn check_no_leader(&self) {
        for node in &self.nodes {
            if let Some(raft) = node.raft.as_ref() {
                assert!(
                    !raft.is_leader() || self.links.is_disconnected(node.id),
                    "seed {}: expected no leader among connected nodes, but {} claims to be one{}",
                    self.config.seed,
                    node.id,
                    self.describe_nodes()
                );
            }
        }
    }

    /// Asserts that connected nodes agree on the term, and returns it (6.824's `checkTerms`).
    pub fn check_terms(&self) -> Term {
        let mut term = None;
        for node in &self.nodes {
            let Some(raft) = node.raft.as_ref() else { continue };
            if self.links.is_disconnected(node.id) {
                continue;
            }
            match term {
                None => term = Some(raft.term()),
                Some(t) => assert_eq!(
                    t,
                    raft.term(),
                    "seed {}: servers disagree on term{}",
                    self.config.seed,
                    self.describe_nodes()
                ),
            }
        }
        term.unwrap_or(Term(0))
    }

    /// Raft messages sent so far (whether or not they arrived).
    pub fn rpc_count(&self) -> u64 {
        self.counters.n_sent()
    }

    /// Messages of one kind (`MessageBody::kind_name`, e.g. "AppendEntries") sent so far.
    pub fn message_count(&self, kind: &str) -> u64 {
        self.counters.sent(kind)
    }

    pub fn message_counts(&self) -> BTreeMap<&'static str, u64> {
        self.counters.by_kind()
    }

    pub fn counters(&self) -> &crate::net::MessageCounters {
        &self.counters
    }

    /// Runs `n` ticks' worth of simulated time (`SimConfig::tick_ms` each).
    pub fn run_ticks(&mut self, n: u64) {
        self.run_for(n * self.config.tick_ms);
    }

    /// Runs until `pred` holds (checked after every event) or `max_ticks` pass; returns
    /// whether it held.
    pub fn run_until(&mut self, mut pred: impl FnMut(&Sim) -> bool, max_ticks: u64) -> bool {
        let end_ms = self.now_ms + max_ticks * self.config.tick_ms;
        loop {
            if pred(self) {
                return true;
            }
            if !self.step_until(end_ms) {
                self.now_ms = end_ms;
                return pred(self);
            }
        }
    }

    /// The up node that is leader in the highest term, if any.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader_idx().map(|idx| self.nodes[idx].id)
    }
}
