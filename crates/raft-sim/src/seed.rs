//! One seeded run, FoundationDB style: a safety phase with faults, then a liveness phase
//! without them that requires progress within a bound, then the end-of-run checks.

use std::time::Duration;

use shoal_lincheck::{check, CheckResult, ClientId, KvInput, KvModel, KvOutput, Operation};
use shoal_raft::LogIndex;

use crate::config::SimConfig;
use crate::history::{History, OpInput, OpResult};
use crate::kv::Command;
use crate::sim::{Sim, SimStats};

/// After healing, a new write must be applied by every member within this bound; the
/// clients' pending operations, the final reads and replica convergence get as long each.
/// Generous: an election takes up to two election timeouts (2 s), a snapshot transfer of a
/// few KiB in 16-byte chunks about a second.
pub const LIVENESS_BOUND_MS: u64 = 30_000;
/// How long the liveness phase waits before proposing the marker again at the leader.
const MARKER_RETRY_MS: u64 = 3_000;
const POLL_MS: u64 = 10;

/// What one seed did.
#[derive(Clone, Debug)]
pub struct SeedReport {
    pub seed: u64,
    pub trace_hash: u64,
    pub stats: SimStats,
    pub n_ops: usize,
    pub n_ops_unknown: usize,
    pub n_messages: u64,
    pub sim_ms: u64,
    /// True when the linearizability check ran out of time (no violation found so far).
    pub lincheck_timed_out: bool,
    pub history: History,
}

/// Wall-clock budget of the linearizability check of one seed's history. Cost: the search is
/// exponential in the worst case (unknown appends stay concurrent with everything after);
/// a run that exceeds this is counted, not failed.
pub const LINCHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs seed `seed` with [`SimConfig::for_seed`]; panics (with the seed) on any violation.
pub fn run_seed(seed: u64) -> SeedReport {
    run_config(SimConfig::for_seed(seed))
}

/// Runs one configuration through both phases and the end-of-run checks.
pub fn run_config(config: SimConfig) -> SeedReport {
    let mut sim = Sim::new(config);
    let fault_phase_ms = sim.config().fault_phase_ms;
    sim.run_for(fault_phase_ms);
    sim.begin_liveness_phase();
    sim.check_liveness(LIVENESS_BOUND_MS);
    sim.finish_clients(LIVENESS_BOUND_MS);
    sim.check_replicas_converge(LIVENESS_BOUND_MS);
    sim.check_history();
    let lincheck_timed_out = !sim.check_linearizable(LINCHECK_TIMEOUT);
    let (n_returned, n_unknown) = sim.history().counts();
    SeedReport {
        seed: sim.config().seed,
        trace_hash: sim.trace_hash(),
        stats: sim.stats().clone(),
        n_ops: n_returned + n_unknown,
        n_ops_unknown: n_unknown,
        n_messages: sim.rpc_count(),
        sim_ms: sim.now_ms(),
        lincheck_timed_out,
        history: sim.history().clone(),
    }
}

impl Sim {
    /// Ends the fault phase: no more nemesis, operator or crashes; the network heals and
    /// becomes reliable; every crashed node (except retired ones) restarts; clients start no
    /// new operations.
    pub fn begin_liveness_phase(&mut self) {
        self.log(|| "liveness phase".to_string());
        self.faults_active = false;
        self.workload_active = false;
        self.links.heal();
        self.unreliable = false;
        for node_idx in self.active_node_idxs() {
            self.restart_idx(node_idx);
        }
    }

    /// Member nodes of the leader's membership (voters and learners).
    fn member_idxs(&self, leader_idx: usize) -> Vec<usize> {
        let Some(raft) = self.nodes[leader_idx].raft.as_ref() else {
            return Vec::new();
        };
        raft.membership()
            .members()
            .filter_map(|id| self.node_idx(id))
            .collect()
    }

    /// Liveness (FoundationDB's second phase): with the network healed and every node up, a
    /// new write commits and every member applies it within `bound_ms`.
    pub fn check_liveness(&mut self, bound_ms: u64) {
        let deadline_ms = self.now_ms + bound_ms;
        let marker = self.rng.next_u64();
        let mut proposed: Vec<LogIndex> = Vec::new();
        let mut last_proposal_ms: Option<u64> = None;
        loop {
            if let Some(leader_idx) = self.leader_idx() {
                // Propose again only while no proposal has committed (applied somewhere):
                // once one has, extra entries would only make lagging members chase the log.
                let committed = proposed
                    .iter()
                    .any(|index| self.applied_command(*index) == Some(Command::Raw(marker)));
                if !committed && last_proposal_ms.is_none_or(|t| self.now_ms >= t + MARKER_RETRY_MS) {
                    let leader = self.nodes[leader_idx].id;
                    if let Some((_, index)) = self.start(leader, marker) {
                        proposed.push(index);
                        last_proposal_ms = Some(self.now_ms);
                    }
                }
                let members = self.member_idxs(leader_idx);
                let done = proposed.iter().any(|index| {
                    self.applied_command(*index) == Some(Command::Raw(marker))
                        && members
                            .iter()
                            .all(|m| self.nodes[*m].is_up() && self.nodes[*m].applied_index >= *index)
                });
                if done {
                    return;
                }
            }
            if self.now_ms >= deadline_ms {
                self.checker.violation(
                    self.now_ms,
                    "liveness after heal",
                    format!(
                        "no new write applied by every member within {bound_ms} ms of healing \
                         (proposed at {proposed:?}){}",
                        self.describe_nodes()
                    ),
                );
            }
            self.run_for(POLL_MS);
        }
    }

    /// Lets clients finish (or give up on) what they were doing, then reads every key once
    /// more; those final reads must complete within `bound_ms`.
    pub fn finish_clients(&mut self, bound_ms: u64) {
        if self.config.workload.is_none() {
            return;
        }
        for what in ["pending client operations end", "final reads complete"] {
            if what == "final reads complete" {
                self.queue_final_reads();
            }
            let deadline_ms = self.now_ms + bound_ms;
            while !self.clients_idle() {
                if self.now_ms >= deadline_ms {
                    self.checker.violation(
                        self.now_ms,
                        &format!("liveness: {what}"),
                        format!("clients still busy after {bound_ms} ms{}", self.describe_nodes()),
                    );
                }
                self.run_for(POLL_MS);
            }
        }
    }

    /// Once writes stop, every member applies up to the leader's commit index, and all
    /// replicas then hold the same state (State Machine Safety, §5.4.3, at the level of the
    /// state machine: it also covers snapshot install and restore).
    pub fn check_replicas_converge(&mut self, bound_ms: u64) {
        let deadline_ms = self.now_ms + bound_ms;
        loop {
            if let Some(leader_idx) = self.leader_idx() {
                let commit = self.nodes[leader_idx]
                    .raft
                    .as_ref()
                    .map_or(LogIndex::ZERO, |r| r.commit_index());
                let members = self.member_idxs(leader_idx);
                let converged = members
                    .iter()
                    .all(|m| self.nodes[*m].is_up() && self.nodes[*m].applied_index == commit);
                if converged {
                    let leader_state = self.nodes[leader_idx].kv.state_hash();
                    for m in members {
                        if self.nodes[m].kv.state_hash() != leader_state {
                            self.checker.violation(
                                self.now_ms,
                                "replicas identical (§5.4.3)",
                                format!(
                                    "nodes {} and {} applied through {commit} but hold different states",
                                    self.nodes[leader_idx].id, self.nodes[m].id
                                ),
                            );
                        }
                    }
                    return;
                }
            }
            if self.now_ms >= deadline_ms {
                self.checker.violation(
                    self.now_ms,
                    "liveness: replicas converge",
                    format!(
                        "members did not all apply the leader's commit index within {bound_ms} ms{}",
                        self.describe_nodes()
                    ),
                );
            }
            self.run_for(POLL_MS);
        }
    }

    /// Linearizability of the whole client history against a sequential KV store, by
    /// `shoal-lincheck` (Wing & Gong's search with Lowe's memoization). Returns false if the
    /// check ran out of `timeout` without a verdict.
    ///
    /// Keys that receive appends are left out: between two reads every order of the appends
    /// is a different state, so the search grows factorially with the appends between reads
    /// (seconds for a hundred operations); [`History::check`] decides those keys exactly in
    /// linear time, since an append-only value's states are totally ordered by prefix.
    pub fn check_linearizable(&self, timeout: Duration) -> bool {
        let costly_keys: std::collections::BTreeSet<&str> = self
            .history
            .ops()
            .iter()
            .filter(|op| matches!(op.input, OpInput::Append { .. }))
            .map(|op| op.input.key())
            .collect();
        let operations: Vec<_> = to_lincheck(&self.history)
            .into_iter()
            .filter(|op| !costly_keys.contains(op.input.key()))
            .collect();
        match check(&KvModel, &operations, Some(timeout)) {
            Err(e) => self
                .checker
                .violation(self.now_ms, "history well-formed", format!("{e}")),
            Ok(CheckResult::Ok) => true,
            Ok(CheckResult::Timeout) => false,
            Ok(CheckResult::Illegal { violation }) => self.checker.violation(
                self.now_ms,
                "linearizability (Herlihy & Wing)",
                format!("{violation}"),
            ),
        }
    }

    /// The clients' oracle (see [`crate::history`]).
    pub fn check_history(&self) {
        if let Err(e) = self.history.check() {
            self.checker.violation(
                self.now_ms,
                "client history (appends exactly once, no stale reads)",
                e,
            );
        }
    }
}

/// The history in `shoal-lincheck`'s terms: an unknown result is an operation that never
/// returned.
pub fn to_lincheck(history: &History) -> Vec<Operation<KvInput, KvOutput>> {
    history
        .ops()
        .iter()
        .map(|op| {
            let input = match &op.input {
                OpInput::Put { key, value } => KvInput::put(key, value),
                OpInput::Append { key, value } => KvInput::append(key, value),
                OpInput::Get { key } => KvInput::get(key),
            };
            let client_id = ClientId(op.client_id);
            match (&op.result, op.return_ms) {
                (OpResult::Done, Some(return_ms)) => {
                    Operation::returned(client_id, input, op.invoke_ms, KvOutput::Done, return_ms)
                }
                (OpResult::Value(value), Some(return_ms)) => Operation::returned(
                    client_id,
                    input,
                    op.invoke_ms,
                    KvOutput::Value(value.clone()),
                    return_ms,
                ),
                _ => Operation::unknown(client_id, input, op.invoke_ms),
            }
        })
        .collect()
}
