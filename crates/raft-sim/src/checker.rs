//! Safety invariants, checked after every step of the simulation. Each check cites the
//! property of the Raft paper (Ongaro & Ousterhout, 2014, Figure 3) it verifies. A violation
//! panics with the seed and the invariant's name, so the failing run replays exactly.

use std::collections::{BTreeMap, HashMap};

use shoal_raft::{Entry, EntryKind, HardState, LogIndex, NodeId, Raft, SnapshotMeta, Term};

use crate::rng::Fnv64;

/// What identifies an entry's content: its term and a digest of its kind and data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryDigest {
    pub term: Term,
    pub hash: u64,
}

impl EntryDigest {
    pub fn of(entry: &Entry) -> EntryDigest {
        let mut hasher = Fnv64::new();
        match &entry.kind {
            EntryKind::Noop => hasher.write_u64(1),
            EntryKind::Command => hasher.write_u64(2),
            EntryKind::ConfigChange(change) => {
                let tag = match change {
                    shoal_raft::ConfigChange::AddLearner(_) => 3,
                    shoal_raft::ConfigChange::AddVoter(_) => 4,
                    shoal_raft::ConfigChange::PromoteLearner(_) => 5,
                    shoal_raft::ConfigChange::Remove(_) => 6,
                };
                hasher.write_u64(tag);
                hasher.write_u64(change.node_id().0);
            }
        }
        hasher.write_bytes(&entry.data);
        EntryDigest {
            term: entry.term,
            hash: hasher.finish(),
        }
    }
}

/// Global knowledge accumulated over a run, against which every node is checked.
#[derive(Debug)]
pub struct Checker {
    seed: u64,
    /// Election safety: the one leader of each term.
    leader_of_term: BTreeMap<Term, NodeId>,
    /// Log matching: every `(index, term)` ever persisted, with its digest and the term of the
    /// entry before it (`None` when that entry was compacted away at the time).
    log_entries: HashMap<(LogIndex, Term), (u64, Option<Term>)>,
    /// Entries known committed (by any node's commit index), by index.
    committed: Vec<Option<EntryDigest>>,
    /// For each index in `committed`: the term of the node that first saw it committed (the
    /// committing leader's term, or later), `None` when first seen applied.
    committed_in_term: Vec<Option<Term>>,
    /// Entries applied by any node, by index.
    applied: Vec<Option<EntryDigest>>,
    /// Digest of the state machine's snapshot bytes at each index a snapshot was taken.
    snapshot_digests: HashMap<LogIndex, (Term, u64)>,
    pub n_checks: u64,
}

impl Checker {
    pub fn new(seed: u64) -> Checker {
        Checker {
            seed,
            leader_of_term: BTreeMap::new(),
            log_entries: HashMap::new(),
            committed: vec![None],
            committed_in_term: vec![None],
            applied: vec![None],
            snapshot_digests: HashMap::new(),
            n_checks: 0,
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Panics with the seed, the time and the invariant's name.
    pub fn violation(&self, now_ms: u64, invariant: &str, detail: impl std::fmt::Display) -> ! {
        panic!(
            "invariant violated: {invariant} (seed {seed}, at {now_ms} ms): {detail}\n\
             replay: SHOAL_SIM_SEEDS=1 SHOAL_SIM_SEED_BASE={seed} cargo test --release -p shoal-raft-sim sim_seeds",
            seed = self.seed
        )
    }

    /// The entry known committed at `index`, if any.
    pub fn committed_at(&self, index: LogIndex) -> Option<EntryDigest> {
        self.committed.get(index.0 as usize).copied().flatten()
    }

    /// The entry applied at `index` by some node, if any.
    pub fn applied_at(&self, index: LogIndex) -> Option<EntryDigest> {
        self.applied.get(index.0 as usize).copied().flatten()
    }

    /// The highest index known committed.
    pub fn max_committed(&self) -> LogIndex {
        LogIndex(self.committed.len() as u64 - 1)
    }

    pub fn leaders(&self) -> &BTreeMap<Term, NodeId> {
        &self.leader_of_term
    }

    /// `node` is leader of `term`. Checks election safety and, on the first sight of this
    /// leader, leader completeness.
    pub fn on_leader(&mut self, now_ms: u64, raft: &Raft) {
        self.n_checks += 1;
        let (node, term) = (raft.id(), raft.term());
        match self.leader_of_term.get(&term) {
            // §5.2 Election Safety: at most one leader can be elected in a given term.
            Some(leader) if *leader != node => self.violation(
                now_ms,
                "election safety (§5.2)",
                format!("nodes {leader} and {node} are both leaders of term {term}"),
            ),
            Some(_) => {}
            None => {
                self.leader_of_term.insert(term, node);
                self.check_leader_completeness(now_ms, raft);
            }
        }
    }

    /// §5.4 Leader Completeness: if an entry is committed in a given term, it is present in
    /// the logs of the leaders of all higher-numbered terms. Checked when a leader is first
    /// seen, against every entry seen committed so far in a lower term. (A leader of a lower
    /// term may appear late: a vote granted before the voter moved on can arrive after a
    /// higher term committed entries, and that leader need not hold them.)
    fn check_leader_completeness(&self, now_ms: u64, raft: &Raft) {
        let snapshot_index = raft.first_index().prev();
        for idx in snapshot_index.0.max(1)..self.committed.len() as u64 {
            let index = LogIndex(idx);
            let Some(digest) = self.committed[idx as usize] else {
                continue;
            };
            if self.committed_in_term[idx as usize].is_none_or(|term| term >= raft.term()) {
                continue;
            }
            let held = if index == snapshot_index {
                raft.term_at(index) == Some(digest.term)
            } else {
                raft.entry(index).map(EntryDigest::of) == Some(digest)
            };
            if !held {
                self.violation(
                    now_ms,
                    "leader completeness (§5.4)",
                    format!(
                        "node {} became leader of term {} without committed entry {index} (term {}); \
                         it has term {:?} there, log {}..={}",
                        raft.id(),
                        raft.term(),
                        digest.term,
                        raft.term_at(index),
                        raft.first_index(),
                        raft.last_index()
                    ),
                );
            }
        }
    }

    /// `entries` were just handed out for persisting by `raft`, whose log now ends with them.
    pub fn on_entries_persisted(&mut self, now_ms: u64, raft: &Raft, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        let mut prev_term = raft.term_at(first.index.prev());
        for entry in entries {
            self.n_checks += 1;
            let digest = EntryDigest::of(entry);
            let record = (digest.hash, prev_term);
            let key = (entry.index, entry.term);
            match self.log_entries.get(&key).copied() {
                None => {
                    self.log_entries.insert(key, record);
                }
                Some(known) => {
                    // §5.3 Log Matching: if two logs contain an entry with the same index and
                    // term, the logs are identical in all entries up through that index. By
                    // induction it suffices that every (index, term) always carries the same
                    // data and follows the same term at index - 1.
                    let same_data = known.0 == record.0;
                    let same_prev = match (known.1, record.1) {
                        (Some(a), Some(b)) => a == b,
                        _ => true,
                    };
                    if !same_data || !same_prev {
                        self.violation(
                            now_ms,
                            "log matching (§5.3)",
                            format!(
                                "node {} persisted entry {} of term {} with (digest {:x}, previous term {:?}) \
                                 but another log has (digest {:x}, previous term {:?})",
                                raft.id(),
                                entry.index,
                                entry.term,
                                record.0,
                                record.1,
                                known.0,
                                known.1
                            ),
                        );
                    }
                    if known.1.is_none() && record.1.is_some() {
                        self.log_entries.insert(key, record);
                    }
                }
            }
            prev_term = Some(entry.term);
        }
    }

    /// `raft`'s commit index moved from `old` to `new`: its entries there are committed.
    pub fn on_commit(&mut self, now_ms: u64, raft: &Raft, old: LogIndex, new: LogIndex) {
        for idx in old.0 + 1..=new.0 {
            let index = LogIndex(idx);
            let Some(entry) = raft.entry(index) else {
                // Compacted or replaced by a snapshot: only the boundary term is known.
                if let (Some(term), Some(known)) = (raft.term_at(index), self.committed_at(index)) {
                    if term != known.term {
                        self.violation(
                            now_ms,
                            "state machine safety (§5.4.3)",
                            format!(
                                "node {} committed through a snapshot at {index} of term {term}, \
                                 but term {} is committed there",
                                raft.id(),
                                known.term
                            ),
                        );
                    }
                }
                continue;
            };
            let digest = EntryDigest::of(entry);
            self.record_committed(now_ms, raft.id(), index, digest, Some(raft.term()), "committed");
        }
    }

    fn record_committed(
        &mut self,
        now_ms: u64,
        node: NodeId,
        index: LogIndex,
        digest: EntryDigest,
        in_term: Option<Term>,
        verb: &str,
    ) {
        self.n_checks += 1;
        let idx = index.0 as usize;
        if self.committed.len() <= idx {
            self.committed.resize(idx + 1, None);
            self.committed_in_term.resize(idx + 1, None);
        }
        match self.committed[idx] {
            None => {
                self.committed[idx] = Some(digest);
                self.committed_in_term[idx] = in_term;
            }
            // §5.4.3 State Machine Safety: if a server has applied a log entry at a given index
            // to its state machine, no other server will ever apply a different log entry for
            // the same index. Committed entries are what gets applied, so they must agree too.
            Some(known) if known != digest => self.violation(
                now_ms,
                "state machine safety (§5.4.3)",
                format!(
                    "node {node} {verb} entry {index} of term {} (digest {:x}) but term {} (digest {:x}) \
                     is committed there",
                    digest.term, digest.hash, known.term, known.hash
                ),
            ),
            Some(_) => {}
        }
    }

    /// `node` applied `entry` to its state machine.
    pub fn on_apply(&mut self, now_ms: u64, node: NodeId, entry: &Entry) {
        let digest = EntryDigest::of(entry);
        let idx = entry.index.0 as usize;
        if self.applied.len() <= idx {
            self.applied.resize(idx + 1, None);
        }
        match self.applied[idx] {
            None => self.applied[idx] = Some(digest),
            // §5.4.3 State Machine Safety (see record_committed).
            Some(known) if known != digest => self.violation(
                now_ms,
                "state machine safety (§5.4.3)",
                format!(
                    "node {node} applied entry {} of term {} but another node applied term {} there",
                    entry.index, entry.term, known.term
                ),
            ),
            Some(_) => {}
        }
        self.record_committed(now_ms, node, entry.index, digest, None, "applied");
    }

    /// A snapshot of the state machine at `meta.index` has bytes with digest `data_hash`
    /// (taken locally or installed from the leader). State machine safety (§5.4.3) at the
    /// level of the state machine: every replica is in the same state after the same prefix.
    pub fn on_snapshot(&mut self, now_ms: u64, node: NodeId, meta: &SnapshotMeta, data_hash: u64, how: &str) {
        self.n_checks += 1;
        if let Some(known) = self.committed_at(meta.index) {
            if known.term != meta.term {
                self.violation(
                    now_ms,
                    "state machine safety (§5.4.3)",
                    format!(
                        "node {node} {how} a snapshot at {} of term {} but term {} is committed there",
                        meta.index, meta.term, known.term
                    ),
                );
            }
        }
        match self.snapshot_digests.get(&meta.index) {
            None => {
                self.snapshot_digests.insert(meta.index, (meta.term, data_hash));
            }
            Some(known) if *known != (meta.term, data_hash) => self.violation(
                now_ms,
                "state machine safety (§5.4.3)",
                format!(
                    "node {node} {how} a snapshot at {} whose state differs from another replica's there",
                    meta.index
                ),
            ),
            Some(_) => {}
        }
    }

    /// Figure 2: currentTerm only grows and votedFor is set at most once per term, on stable
    /// storage (a vote must never be forgotten or changed by a crash).
    pub fn on_hard_state_write(&mut self, now_ms: u64, node: NodeId, old: HardState, new: HardState) {
        self.n_checks += 1;
        if new.term < old.term {
            self.violation(
                now_ms,
                "durable term never decreases (Figure 2)",
                format!("node {node} wrote term {} over term {}", new.term, old.term),
            );
        }
        if new.term == old.term && old.vote.is_some() && new.vote != old.vote {
            self.violation(
                now_ms,
                "one durable vote per term (Figure 2, §5.2)",
                format!(
                    "node {node} changed its vote in term {} from {:?} to {:?}",
                    new.term, old.vote, new.vote
                ),
            );
        }
    }
}
