//! The Raft node: the whole protocol as a deterministic state machine.
//!
//! Inputs: [`Raft::tick`], [`Raft::step`] (a message from a peer), [`Raft::propose`],
//! [`Raft::propose_config_change`], [`Raft::read_index`], [`Raft::transfer_leadership`],
//! [`Raft::compact_log`]. Output: [`Raft::take_ready`], handled as the crate docs' contract says.

use std::collections::{BTreeMap, VecDeque};

use crate::config::{Config, ReadMode};
use crate::log::RaftLog;
use crate::message::{Message, MessageBody};
use crate::progress::{Progress, ProgressState};
use crate::rng::SplitMix64;
use crate::types::{
    ConfigChange, Entry, EntryKind, HardState, LogIndex, Membership, NodeId, ReadState, Role, SnapshotMeta,
    Term,
};

/// Why a request to the core was refused. Everything here is something a caller can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposeError {
    /// Only the leader accepts this; `leader_hint` is the leader this node knows of.
    NotLeader { leader_hint: Option<NodeId> },
    /// A leadership transfer is under way; retry at the new leader.
    TransferInProgress,
    /// Too many uncommitted bytes: back off and retry.
    Busy { uncommitted_bytes: usize },
    /// The command exceeds `Config::entry_bytes_max`.
    TooLarge { size_bytes: usize, max_bytes: usize },
    /// A membership change must wait for the previous one and for this leader's first commit
    /// (Raft dissertation §4.1 and the single-server-change bug fix of 2015).
    ConfigChangePending,
    /// The change is not valid for the current membership.
    InvalidConfigChange(String),
    /// A learner is promoted only once it holds every committed entry, so the new voter does not
    /// stall commits while it catches up (dissertation §4.2.1).
    LearnerBehind {
        match_index: LogIndex,
        commit_index: LogIndex,
    },
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::NotLeader {
                leader_hint: Some(id),
            } => write!(f, "not the leader; node {id} is"),
            ProposeError::NotLeader { leader_hint: None } => {
                write!(f, "not the leader; no leader is known yet")
            }
            ProposeError::TransferInProgress => write!(f, "leadership transfer in progress; retry shortly"),
            ProposeError::Busy { uncommitted_bytes } => {
                write!(
                    f,
                    "too many uncommitted proposals ({uncommitted_bytes} bytes); retry shortly"
                )
            }
            ProposeError::TooLarge {
                size_bytes,
                max_bytes,
            } => {
                write!(
                    f,
                    "command of {size_bytes} bytes exceeds the limit of {max_bytes} bytes"
                )
            }
            ProposeError::ConfigChangePending => {
                write!(
                    f,
                    "a membership change is still pending; retry when it has committed"
                )
            }
            ProposeError::InvalidConfigChange(why) => write!(f, "invalid membership change: {why}"),
            ProposeError::LearnerBehind {
                match_index,
                commit_index,
            } => write!(
                f,
                "learner holds entries up to {match_index} but the commit index is {commit_index}; \
                 retry once it has caught up"
            ),
        }
    }
}

impl std::error::Error for ProposeError {}

/// What a restarting node recovered from stable storage.
#[derive(Clone, Debug, Default)]
pub struct Restore {
    pub hard_state: HardState,
    /// The latest durable snapshot; the state machine has been restored from it.
    pub snapshot: Option<SnapshotMeta>,
    /// Durable entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// The cluster's bootstrap membership (the voters it was created with); ignored when a
    /// snapshot supplies one. Membership entries in the log are *changes* applied on top of
    /// it, so every node, including one that joins later, must pass the same bootstrap
    /// membership, never an empty or current one.
    pub initial_membership: Membership,
}

/// Volatile state the runtime may want to react to (e.g. fail proposals when leadership is lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    pub leader: Option<NodeId>,
    pub role: Role,
}

/// The leader wants chunk `offset..` of the snapshot `meta` sent to `to` in `term`: the runtime
/// reads up to its chunk size from that snapshot and sends `MessageBody::InstallSnapshot`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSend {
    pub to: NodeId,
    pub term: Term,
    pub meta: SnapshotMeta,
    pub offset: u64,
}

/// A received snapshot chunk to write (follower side). `offset == 0` starts a new snapshot
/// (discard any partial one); `done` means the snapshot is complete and installed: the runtime
/// makes it durable, replaces its whole log by it and restores the state machine from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub meta: SnapshotMeta,
    pub offset: u64,
    pub data: Vec<u8>,
    pub done: bool,
}

/// Everything the runtime must do, in the order of the crate-level contract.
#[derive(Clone, Debug, Default)]
pub struct Ready {
    pub soft_state: Option<SoftState>,
    /// Persist (atomically) before sending any message of this `Ready`.
    pub hard_state: Option<HardState>,
    /// Write in order, before `entries`; a `done` chunk replaces the whole log.
    pub snapshot_chunks: Vec<SnapshotChunk>,
    /// Append to the log, first discarding every stored entry at or after `entries[0].index`.
    pub entries: Vec<Entry>,
    /// Send after everything above is durable, unless `send_before_persist`.
    pub messages: Vec<Message>,
    /// True when `messages` may leave before `entries` are durable: a leader's appends vouch
    /// for nothing this `Ready` persists, so it writes its log in parallel with its followers
    /// (dissertation §10.2.1). Safe because the leader counts its own new entries at once but
    /// learns of a follower's acknowledgement only from a later input, which the runtime feeds
    /// only after this `Ready` is durable (rule 4): no commit can rest on an unsynced entry.
    /// Never set when the commit index already covers `entries` (a single voter).
    pub send_before_persist: bool,
    /// Snapshot chunks to read and send (leader side), also after persisting.
    pub snapshot_sends: Vec<SnapshotSend>,
    /// Set when a snapshot was installed: restore the state machine from it before applying.
    pub snapshot_install: Option<SnapshotMeta>,
    /// Apply in order, after persisting.
    pub committed_entries: Vec<Entry>,
    /// Reads that may be served once the state machine has applied `index`.
    pub read_states: Vec<ReadState>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.soft_state.is_none()
            && self.hard_state.is_none()
            && self.snapshot_chunks.is_empty()
            && self.entries.is_empty()
            && self.messages.is_empty()
            && self.snapshot_sends.is_empty()
            && self.snapshot_install.is_none()
            && self.committed_entries.is_empty()
            && self.read_states.is_empty()
    }
}

/// A node's status, for `cluster status`, tests and benchmarks.
#[derive(Clone, Debug)]
pub struct Status {
    pub id: NodeId,
    pub term: Term,
    pub vote: Option<NodeId>,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub first_index: LogIndex,
    pub last_index: LogIndex,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub membership: Membership,
    /// (peer, match_index, next_index) as the leader sees them; empty on followers.
    pub progress: Vec<(NodeId, LogIndex, LogIndex)>,
}

#[derive(Clone, Debug)]
struct PendingRead {
    context: u64,
    index: LogIndex,
    round: u64,
}

/// Rounds whose send tick is remembered for the lease; older rounds only matter for reads.
const ROUND_HISTORY_MAX: usize = 1024;

pub struct Raft {
    config: Config,
    id: NodeId,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    rng: SplitMix64,
    tick_count: u64,
    election_elapsed_ticks: u64,
    heartbeat_elapsed_ticks: u64,
    randomized_election_timeout_ticks: u64,
    /// Votes (or pre-votes) received in the current campaign.
    votes: BTreeMap<NodeId, bool>,
    /// Leader only: one entry per member, including this node.
    progress: BTreeMap<NodeId, Progress>,
    /// Leader only: index of this term's no-op; nothing is served before it commits.
    term_start_index: LogIndex,
    uncommitted_bytes: usize,
    transfer_target: Option<NodeId>,
    transfer_elapsed_ticks: u64,
    /// A TimeoutNow went out this term: voters may elect the target regardless of our lease,
    /// so lease reads are off until the next term.
    timeout_now_sent: bool,
    /// The application asked this node not to stand for election (see
    /// [`Raft::withhold_candidacy`]).
    candidacy_withheld: bool,
    read_round: u64,
    read_round_broadcast_pending: bool,
    round_sent_ticks: VecDeque<(u64, u64)>,
    lease_start_tick: Option<u64>,
    pending_reads: VecDeque<PendingRead>,
    reads_waiting_for_commit: Vec<u64>,
    latest_snapshot: Option<SnapshotMeta>,
    incoming_snapshot: Option<(SnapshotMeta, u64)>,
    // Output buffers, drained by take_ready.
    messages: Vec<Message>,
    snapshot_sends: Vec<SnapshotSend>,
    snapshot_chunks: Vec<SnapshotChunk>,
    snapshot_install: Option<SnapshotMeta>,
    read_states: Vec<ReadState>,
    persisted_hard_state: HardState,
    last_soft_state: SoftState,
}

impl Raft {
    /// Creates a node from what it recovered (`Restore::default()` plus a membership for a new
    /// cluster).
    pub fn new(config: Config, restore: Restore) -> Result<Raft, String> {
        config.validate()?;
        let mut log = RaftLog::new(restore.snapshot.as_ref(), restore.initial_membership);
        log.restore_entries(restore.entries);
        log.commit_to(restore.hard_state.commit);
        let role = if log.membership().voters.contains(&config.id) {
            Role::Follower
        } else {
            Role::Learner
        };
        let mut raft = Raft {
            id: config.id,
            rng: SplitMix64::new(config.rng_seed),
            term: restore.hard_state.term,
            vote: restore.hard_state.vote,
            role,
            leader: None,
            log,
            tick_count: 0,
            election_elapsed_ticks: 0,
            heartbeat_elapsed_ticks: 0,
            randomized_election_timeout_ticks: config.election_timeout_ticks,
            votes: BTreeMap::new(),
            progress: BTreeMap::new(),
            term_start_index: LogIndex::ZERO,
            uncommitted_bytes: 0,
            transfer_target: None,
            transfer_elapsed_ticks: 0,
            timeout_now_sent: false,
            candidacy_withheld: false,
            read_round: 0,
            read_round_broadcast_pending: false,
            round_sent_ticks: VecDeque::new(),
            lease_start_tick: None,
            pending_reads: VecDeque::new(),
            reads_waiting_for_commit: Vec::new(),
            latest_snapshot: restore.snapshot,
            incoming_snapshot: None,
            messages: Vec::new(),
            snapshot_sends: Vec::new(),
            snapshot_chunks: Vec::new(),
            snapshot_install: None,
            read_states: Vec::new(),
            persisted_hard_state: restore.hard_state,
            last_soft_state: SoftState { leader: None, role },
            config,
        };
        raft.reset_election_timer();
        Ok(raft)
    }

    // ----- accessors -----

    pub fn id(&self) -> NodeId {
        self.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn is_leader(&self) -> bool {
        self.role == Role::Leader
    }
    pub fn commit_index(&self) -> LogIndex {
        self.log.committed
    }
    pub fn applied_index(&self) -> LogIndex {
        self.log.applied
    }
    pub fn first_index(&self) -> LogIndex {
        self.log.first_index()
    }
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }
    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        self.log.entry(index)
    }
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term_at(index)
    }
    pub fn membership(&self) -> &Membership {
        self.log.membership()
    }
    pub fn config(&self) -> &Config {
        &self.config
    }
    pub fn latest_snapshot(&self) -> Option<&SnapshotMeta> {
        self.latest_snapshot.as_ref()
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.id,
            term: self.term,
            vote: self.vote,
            role: self.role,
            leader: self.leader,
            first_index: self.log.first_index(),
            last_index: self.log.last_index(),
            commit_index: self.log.committed,
            applied_index: self.log.applied,
            membership: self.log.membership().clone(),
            progress: self
                .progress
                .iter()
                .map(|(id, pr)| (*id, pr.match_index, pr.next_index))
                .collect(),
        }
    }

    /// The metadata of a snapshot the state machine would take after applying `index`: `None`
    /// unless `index` is applied and still in the log.
    pub fn snapshot_meta(&self, index: LogIndex) -> Option<SnapshotMeta> {
        if index > self.log.applied {
            return None;
        }
        let term = self.log.term_at(index)?;
        Some(SnapshotMeta {
            index,
            term,
            membership: self.log.membership_at(index),
        })
    }

    // ----- inputs -----

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.tick_count += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                self.election_elapsed_ticks += 1;
                if self.may_campaign()
                    && self.election_elapsed_ticks >= self.randomized_election_timeout_ticks
                {
                    self.election_elapsed_ticks = 0;
                    self.start_election();
                }
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed_ticks += 1;
        self.election_elapsed_ticks += 1;
        if self.transfer_target.is_some() {
            self.transfer_elapsed_ticks += 1;
            if self.transfer_elapsed_ticks >= self.config.election_timeout_ticks {
                // §3.10: abort a transfer that did not complete within an election timeout.
                self.transfer_target = None;
            }
        }
        if self.election_elapsed_ticks >= self.config.election_timeout_ticks {
            self.election_elapsed_ticks = 0;
            if self.config.check_quorum {
                let voters = &self.log.membership().voters;
                let n_active = self
                    .progress
                    .iter()
                    .filter(|(id, pr)| voters.contains(id) && (**id == self.id || pr.recent_active))
                    .count();
                if n_active < self.log.membership().quorum() {
                    // Thesis §6.2: a leader cut off from a quorum steps down, so clients go elsewhere.
                    let term = self.term;
                    self.become_follower(term, None);
                    return;
                }
                for (id, pr) in self.progress.iter_mut() {
                    pr.recent_active = *id == self.id;
                }
            }
        }
        // Snapshot transfers that made no progress (a lost chunk or response) are resumed.
        let stalled: Vec<NodeId> = self
            .progress
            .iter_mut()
            .filter_map(|(id, pr)| match &mut pr.state {
                ProgressState::Snapshot {
                    ticks_since_progress, ..
                } => {
                    *ticks_since_progress += 1;
                    (*ticks_since_progress > self.config.election_timeout_ticks).then_some(*id)
                }
                _ => None,
            })
            .collect();
        for id in stalled {
            self.send_snapshot_chunk(id, true);
        }
        if self.heartbeat_elapsed_ticks >= self.config.heartbeat_interval_ticks {
            self.heartbeat_elapsed_ticks = 0;
            self.broadcast_heartbeat();
        }
    }

    /// Starts an election now (as if the election timer fired); used to bootstrap and in tests.
    pub fn campaign(&mut self) {
        if self.may_campaign() && self.role != Role::Leader {
            self.start_election();
        }
    }

    /// Stops (or resumes) this node standing for election: while withheld it never starts
    /// one (its timer, [`Raft::campaign`], a leader's TimeoutNow), but it still votes,
    /// replicates and counts for commit. For a member the application distrusts (its state
    /// machine diverged from the others'): it must not lead. Safety is unaffected (fewer
    /// elections); liveness needs a quorum of voters that do stand. Not persisted: the
    /// application sets it again after a restart. A leader keeps leading; the application
    /// hands leadership over ([`Raft::transfer_leadership`]).
    pub fn withhold_candidacy(&mut self, withheld: bool) {
        self.candidacy_withheld = withheld;
    }

    /// Proposes a command. On success the entry sits at the returned (term, index); the client
    /// may be answered when an entry at that index with that term is applied. If a different
    /// term shows up at that index, the proposal was lost (retry, deduplicating if needed).
    pub fn propose(&mut self, data: Vec<u8>) -> Result<(Term, LogIndex), ProposeError> {
        if data.len() > self.config.entry_bytes_max {
            return Err(ProposeError::TooLarge {
                size_bytes: data.len(),
                max_bytes: self.config.entry_bytes_max,
            });
        }
        self.check_leader_accepts(data.len())?;
        let index = self.append_leader_entry(EntryKind::Command, data);
        Ok((self.term, index))
    }

    /// Proposes a single-server membership change; `context` travels in the entry's data (the
    /// runtime puts the new member's address there).
    pub fn propose_config_change(
        &mut self,
        change: ConfigChange,
        context: Vec<u8>,
    ) -> Result<(Term, LogIndex), ProposeError> {
        self.check_leader_accepts(context.len())?;
        // Dissertation §4.1: one change at a time, each only once the previous one committed,
        // and (the 2015 fix) only after this leader committed an entry of its own term.
        if self.log.last_membership_index() > self.log.committed || self.log.committed < self.term_start_index
        {
            return Err(ProposeError::ConfigChangePending);
        }
        self.log
            .membership()
            .apply(&change)
            .map_err(ProposeError::InvalidConfigChange)?;
        if let ConfigChange::PromoteLearner(id) = change {
            let match_index = self.progress.get(&id).map_or(LogIndex::ZERO, |pr| pr.match_index);
            if match_index < self.log.committed {
                return Err(ProposeError::LearnerBehind {
                    match_index,
                    commit_index: self.log.committed,
                });
            }
        }
        let index = self.append_leader_entry(EntryKind::ConfigChange(change), context);
        Ok((self.term, index))
    }

    /// Asks for a linearizable read point (§6.4). A `ReadState { context, index }` comes out in a
    /// later `Ready` once leadership is confirmed; reads that never come out (leadership lost)
    /// must be retried by the caller after its timeout.
    pub fn read_index(&mut self, context: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.log.committed < self.term_start_index {
            // §6.4 step 1: the leader's commit index is only known current once its no-op commits.
            self.reads_waiting_for_commit.push(context);
            return Ok(());
        }
        self.start_read(context);
        Ok(())
    }

    /// Hands leadership to `target` (§3.10): bring it up to date, then send TimeoutNow.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if target == self.id {
            return Ok(());
        }
        if !self.log.membership().voters.contains(&target) {
            return Err(ProposeError::InvalidConfigChange(format!(
                "node {target} is not a voter and cannot become leader"
            )));
        }
        self.transfer_target = Some(target);
        self.transfer_elapsed_ticks = 0;
        let caught_up = self
            .progress
            .get(&target)
            .is_some_and(|pr| pr.match_index == self.log.last_index());
        if caught_up {
            self.timeout_now_sent = true;
            self.send(target, MessageBody::TimeoutNow);
        }
        Ok(())
    }

    /// The state machine saved a durable snapshot described by `meta` (from
    /// [`Raft::snapshot_meta`]): entries up to `meta.index` are dropped from the log and the
    /// snapshot becomes what lagging followers receive.
    pub fn compact_log(&mut self, meta: SnapshotMeta) {
        if meta.index <= self.log.snapshot_index {
            return;
        }
        self.log.compact(&meta);
        self.latest_snapshot = Some(meta);
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, m: Message) {
        if m.to != self.id || m.from == self.id {
            return;
        }
        if m.term > self.term {
            match &m.body {
                // A pre-vote never changes anyone's term (thesis §9.6).
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::RequestVote {
                    leadership_transfer, ..
                } if self.in_leader_lease() && !leadership_transfer => {
                    // Thesis §4.2.3: a node that heard from a live leader within the minimum
                    // election timeout ignores disruptive vote requests.
                    return;
                }
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot { .. } => self.become_follower(m.term, Some(m.from)),
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match &m.body {
                MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } => {
                    // Tell a stale leader the newer term so it steps down (needed with pre-vote
                    // and check-quorum, where our higher term might otherwise never reach it).
                    self.send(
                        m.from,
                        MessageBody::append_rejected(LogIndex::ZERO, LogIndex::ZERO, None),
                    );
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { granted: false });
                }
                _ => {}
            }
            return;
        }
        let from = m.from;
        match m.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => {
                let granted = m.term > self.term
                    && !self.in_leader_lease()
                    && self.log.is_up_to_date(last_log_index, last_log_term);
                let term = if granted { m.term } else { self.term };
                self.messages.push(Message {
                    from: self.id,
                    to: from,
                    term,
                    body: MessageBody::PreVoteResponse { granted },
                });
            }
            MessageBody::RequestVote {
                last_log_index,
                last_log_term,
                ..
            } => {
                let can_vote = self.vote == Some(from) || (self.vote.is_none() && self.leader.is_none());
                let granted = can_vote && self.log.is_up_to_date(last_log_index, last_log_term);
                if granted {
                    // The vote is in the next Ready's hard state, persisted before this reply
                    // is sent (Figure 2: one vote per term, durable).
                    self.vote = Some(from);
                    self.election_elapsed_ticks = 0;
                }
                self.send(from, MessageBody::RequestVoteResponse { granted });
            }
            MessageBody::PreVoteResponse { granted } => {
                if self.role == Role::PreCandidate && (m.term == self.term.next() || !granted) {
                    self.tally_vote(from, granted);
                }
            }
            MessageBody::RequestVoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.tally_vote(from, granted);
                }
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                self.follow(from);
                self.handle_append_entries(from, prev_log_index, prev_log_term, entries, leader_commit);
            }
            MessageBody::Heartbeat { commit, read_round } => {
                self.follow(from);
                self.log.commit_to(commit);
                self.send(
                    from,
                    MessageBody::HeartbeatResponse {
                        read_round,
                        last_log_index: self.log.last_index(),
                    },
                );
            }
            MessageBody::InstallSnapshot {
                meta,
                offset,
                data,
                done,
            } => {
                self.follow(from);
                self.handle_install_snapshot(from, meta, offset, data, done);
            }
            MessageBody::TimeoutNow => {
                if self.is_voter() && !self.candidacy_withheld && self.role != Role::Leader {
                    // §3.10: campaign at once, skipping pre-vote, flagged so voters that heard
                    // from the old leader recently still vote.
                    self.become_candidate(true);
                }
            }
            MessageBody::AppendEntriesResponse {
                success,
                match_index,
                reject_index,
                conflict_index,
                conflict_term,
            } => {
                if self.role == Role::Leader {
                    self.handle_append_response(
                        from,
                        success,
                        match_index,
                        reject_index,
                        conflict_index,
                        conflict_term,
                    );
                }
            }
            MessageBody::HeartbeatResponse {
                read_round,
                last_log_index,
            } => {
                if self.role == Role::Leader {
                    self.handle_heartbeat_response(from, read_round, last_log_index);
                }
            }
            MessageBody::InstallSnapshotResponse {
                snapshot_index,
                next_offset,
                done,
            } => {
                if self.role == Role::Leader {
                    self.handle_snapshot_response(from, snapshot_index, next_offset, done);
                }
            }
        }
    }

    // ----- output -----

    /// True when `take_ready` would return work. Generates pending sends first.
    pub fn has_ready(&mut self) -> bool {
        self.flush();
        !self.messages.is_empty()
            || !self.snapshot_sends.is_empty()
            || !self.snapshot_chunks.is_empty()
            || self.snapshot_install.is_some()
            || !self.read_states.is_empty()
            || self.log.has_unstable()
            || self.log.has_unapplied()
            || self.hard_state_changed()
            || self.soft_state() != self.last_soft_state
    }

    /// Drains the work for the runtime. Everything taken is considered done by the next input:
    /// the runtime must finish handling a `Ready` before feeding the node again.
    pub fn take_ready(&mut self) -> Ready {
        self.flush();
        let soft_state = self.soft_state();
        let hard_state = self.hard_state_changed().then(|| {
            let hs = self.hard_state();
            self.persisted_hard_state = hs;
            hs
        });
        let entries = self.log.take_unstable();
        // A commit index that covers this Ready's own entries (a leader that is a quorum by
        // itself) rests on them being durable, and the messages carry it.
        let send_before_persist = self.role == Role::Leader
            && hard_state.is_none()
            && self.snapshot_chunks.is_empty()
            && entries
                .first()
                .is_none_or(|first| first.index > self.log.committed);
        let ready = Ready {
            soft_state: (soft_state != self.last_soft_state).then_some(soft_state),
            hard_state,
            send_before_persist,
            snapshot_chunks: std::mem::take(&mut self.snapshot_chunks),
            entries,
            messages: std::mem::take(&mut self.messages),
            snapshot_sends: std::mem::take(&mut self.snapshot_sends),
            snapshot_install: self.snapshot_install.take(),
            committed_entries: self.log.take_committed(self.config.apply_batch_bytes_max),
            read_states: std::mem::take(&mut self.read_states),
        };
        self.last_soft_state = soft_state;
        ready
    }

    fn soft_state(&self) -> SoftState {
        SoftState {
            leader: self.leader,
            role: self.role,
        }
    }

    fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.committed,
        }
    }

    /// Term and vote must be durable before replies; commit is persisted lazily (only with
    /// term/vote changes) because losing it is safe.
    fn hard_state_changed(&self) -> bool {
        self.term != self.persisted_hard_state.term || self.vote != self.persisted_hard_state.vote
    }

    /// Leader: sends what proposals and responses made sendable (batching: all proposals since
    /// the last flush go out in as few AppendEntries as the size limit allows).
    fn flush(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        if self.read_round_broadcast_pending {
            self.broadcast_heartbeat();
        }
        let peers: Vec<NodeId> = self
            .progress
            .keys()
            .copied()
            .filter(|id| *id != self.id)
            .collect();
        for peer in &peers {
            self.send_appends(*peer);
        }
        self.send_commit_notices(&peers);
    }

    /// Tells each follower of a commit advance it can use and that no append of this flush
    /// carried (etcd's bcastAppend after maybeCommit): otherwise a follower learns it only
    /// with the next proposal or heartbeat, and watchers and serializable reads served there
    /// lag by up to a heartbeat interval. The notice is a heartbeat of the current read round
    /// (sent after that round began, so its acknowledgement confirms the round too).
    fn send_commit_notices(&mut self, peers: &[NodeId]) {
        let committed = self.log.committed;
        let read_round = self.read_round;
        for peer in peers {
            let Some(pr) = self.progress.get_mut(peer) else {
                continue;
            };
            if pr.state != ProgressState::Replicate {
                // A probe or a snapshot transfer under way carries the commit when it lands.
                continue;
            }
            let commit = pr.match_index.min(committed);
            if commit <= pr.commit_sent {
                continue;
            }
            pr.commit_sent = commit;
            self.send(*peer, MessageBody::Heartbeat { commit, read_round });
        }
    }

    // ----- roles -----

    fn is_voter(&self) -> bool {
        self.log.membership().voters.contains(&self.id)
    }

    /// May this node start an election? A voter may; so may a node whose own removal is still
    /// uncommitted (dissertation §4.2.2): otherwise a leader that appended its removal and
    /// then failed could leave the remaining voters unable to elect anyone (they need its vote,
    /// and it holds the longer log). Votes are still counted in the latest membership.
    fn is_electable(&self) -> bool {
        self.is_voter()
            || (self.log.last_membership_index() > self.log.committed
                && self
                    .log
                    .membership_at(self.log.committed)
                    .voters
                    .contains(&self.id))
    }

    fn may_campaign(&self) -> bool {
        self.is_electable() && !self.candidacy_withheld
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed_ticks = 0;
        let base = self.config.election_timeout_ticks;
        self.randomized_election_timeout_ticks = self.rng.range(base, 2 * base);
    }

    /// Has this node heard from a leader within the minimum election timeout?
    fn in_leader_lease(&self) -> bool {
        // With lease reads a restarted node must also honour a lease it may have granted
        // before the crash (it forgot the leader), so it treats its first election timeout
        // after start as "heard from a leader".
        let leader_known = self.leader.is_some()
            || (self.config.read_mode == ReadMode::Lease
                && self.tick_count < self.config.election_timeout_ticks);
        self.config.check_quorum
            && leader_known
            && self.election_elapsed_ticks < self.config.election_timeout_ticks
    }

    fn follow(&mut self, leader: NodeId) {
        if self.role == Role::Leader {
            // Two leaders in one term would break election safety (§5.2).
            panic!(
                "node {} is leader of term {} and got a leader message from {leader}",
                self.id, self.term
            );
        }
        if self.role == Role::Candidate || self.role == Role::PreCandidate {
            let term = self.term;
            self.become_follower(term, Some(leader));
        }
        self.leader = Some(leader);
        self.election_elapsed_ticks = 0;
    }

    /// A follower's membership changes when config entries reach its log: a promoted learner
    /// starts counting and campaigning, a demoted voter stops.
    fn refresh_role(&mut self) {
        match (self.role, self.is_voter()) {
            (Role::Learner, true) => self.role = Role::Follower,
            (Role::Follower | Role::PreCandidate | Role::Candidate, false) => self.role = Role::Learner,
            _ => {}
        }
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        self.role = if self.is_voter() {
            Role::Follower
        } else {
            Role::Learner
        };
        self.leader = leader;
        self.reset_election_timer();
        self.progress.clear();
        self.votes.clear();
        self.transfer_target = None;
        self.pending_reads.clear();
        self.reads_waiting_for_commit.clear();
        self.read_round_broadcast_pending = false;
        self.lease_start_tick = None;
        self.uncommitted_bytes = 0;
    }

    fn start_election(&mut self) {
        if self.config.pre_vote {
            self.become_pre_candidate();
        } else {
            self.become_candidate(false);
        }
    }

    fn become_pre_candidate(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.progress.clear();
        self.votes.clear();
        self.reset_election_timer();
        self.votes.insert(self.id, true);
        if self.has_quorum_of_votes(true) {
            self.become_candidate(false);
            return;
        }
        let body = MessageBody::PreVote {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
        };
        let term = self.term.next();
        for voter in self.other_voters() {
            self.messages.push(Message {
                from: self.id,
                to: voter,
                term,
                body: body.clone(),
            });
        }
    }

    fn become_candidate(&mut self, leadership_transfer: bool) {
        self.term = self.term.next();
        self.vote = Some(self.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.progress.clear();
        self.votes.clear();
        self.reset_election_timer();
        self.votes.insert(self.id, true);
        if self.has_quorum_of_votes(true) {
            self.become_leader();
            return;
        }
        let body = MessageBody::RequestVote {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            leadership_transfer,
        };
        for voter in self.other_voters() {
            self.send(voter, body.clone());
        }
    }

    fn other_voters(&self) -> Vec<NodeId> {
        self.log
            .membership()
            .voters
            .iter()
            .copied()
            .filter(|id| *id != self.id)
            .collect()
    }

    fn has_quorum_of_votes(&self, granted: bool) -> bool {
        let voters = &self.log.membership().voters;
        let n = self
            .votes
            .iter()
            .filter(|(id, g)| voters.contains(id) && **g == granted)
            .count();
        n >= self.log.membership().quorum()
    }

    fn tally_vote(&mut self, from: NodeId, granted: bool) {
        self.votes.entry(from).or_insert(granted);
        if self.has_quorum_of_votes(true) {
            if self.role == Role::PreCandidate {
                self.become_candidate(false);
            } else {
                self.become_leader();
            }
        } else if self.has_quorum_of_votes(false) {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    fn become_leader(&mut self) {
        assert!(self.role == Role::Candidate, "only a candidate becomes leader");
        self.role = Role::Leader;
        self.leader = Some(self.id);
        self.votes.clear();
        self.heartbeat_elapsed_ticks = 0;
        self.election_elapsed_ticks = 0;
        self.transfer_target = None;
        self.timeout_now_sent = false;
        self.uncommitted_bytes = 0;
        self.pending_reads.clear();
        self.reads_waiting_for_commit.clear();
        self.lease_start_tick = None;
        self.round_sent_ticks.clear();
        self.progress.clear();
        let next = self.log.last_index().next();
        let members: Vec<NodeId> = self.log.membership().members().collect();
        for id in members {
            let mut pr = Progress::new(next);
            pr.recent_active = id == self.id;
            self.progress.insert(id, pr);
        }
        // §5.4.2 / §8: commit an entry of the new term to learn what is committed.
        self.term_start_index = self.append_leader_entry(EntryKind::Noop, Vec::new());
    }

    // ----- leader: log and replication -----

    fn check_leader_accepts(&self, size_bytes: usize) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader_hint: self.leader,
            });
        }
        if self.transfer_target.is_some() {
            return Err(ProposeError::TransferInProgress);
        }
        if self.uncommitted_bytes + size_bytes > self.config.uncommitted_bytes_max {
            return Err(ProposeError::Busy {
                uncommitted_bytes: self.uncommitted_bytes,
            });
        }
        Ok(())
    }

    fn append_leader_entry(&mut self, kind: EntryKind, data: Vec<u8>) -> LogIndex {
        let index = self.log.last_index().next();
        let entry = Entry {
            term: self.term,
            index,
            kind,
            data,
        };
        self.uncommitted_bytes += entry.size_bytes();
        let is_config = matches!(entry.kind, EntryKind::ConfigChange(_));
        self.log.append(vec![entry]);
        if is_config {
            self.sync_progress_with_membership();
        }
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.update_match(index);
        }
        // Entries reach stable storage before the runtime feeds the next input (crate contract
        // rule 4), and a follower's acknowledgement is such an input: the leader may count
        // itself at once even though its appends may leave first (`send_before_persist`).
        self.maybe_commit();
        index
    }

    fn sync_progress_with_membership(&mut self) {
        let membership = self.log.membership().clone();
        self.progress.retain(|id, _| membership.contains(*id));
        // Start new members at the membership entry itself, so the first probe carries it.
        let next = self.log.last_index();
        for id in membership.members() {
            self.progress.entry(id).or_insert_with(|| {
                let mut pr = Progress::new(next);
                pr.recent_active = true;
                pr
            });
        }
    }

    /// The largest value that a quorum of voters has reached (each voter's value from its
    /// progress, this node's included): the quorum-th highest. `None` without a quorum of
    /// voters in the progress map.
    fn quorum_value<T: Ord + Copy>(&self, value: impl Fn(&Progress) -> T) -> Option<T> {
        let voters = &self.log.membership().voters;
        let mut values: Vec<T> = self
            .progress
            .iter()
            .filter(|(id, _)| voters.contains(id))
            .map(|(_, pr)| value(pr))
            .collect();
        let quorum = self.log.membership().quorum();
        if values.len() < quorum {
            return None;
        }
        values.sort_unstable_by(|a, b| b.cmp(a));
        Some(values[quorum - 1])
    }

    /// §5.3/§5.4.2: commit the highest index stored on a quorum of voters, but only by
    /// counting replicas of an entry of the current term (Figure 8).
    fn maybe_commit(&mut self) {
        let Some(candidate) = self.quorum_value(|pr| pr.match_index) else {
            return;
        };
        if candidate <= self.log.committed || self.log.term_at(candidate) != Some(self.term) {
            return;
        }
        let old = self.log.committed;
        self.log.commit_to(candidate);
        self.on_commit_advanced(old);
    }

    fn on_commit_advanced(&mut self, old_commit: LogIndex) {
        let freed = self.log.size_bytes_between(old_commit.next(), self.log.committed);
        self.uncommitted_bytes = self.uncommitted_bytes.saturating_sub(freed);
        if self.log.committed >= self.term_start_index && !self.reads_waiting_for_commit.is_empty() {
            for context in std::mem::take(&mut self.reads_waiting_for_commit) {
                self.start_read(context);
            }
        }
        // A leader removed from the membership steps down once the removal committed
        // (dissertation §4.2.2); until then it keeps replicating without counting itself.
        if !self.is_voter() && self.log.last_membership_index() <= self.log.committed {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.messages.push(Message {
            from: self.id,
            to,
            term: self.term,
            body,
        });
    }

    /// Sends as many AppendEntries to `to` as its progress state allows.
    fn send_appends(&mut self, to: NodeId) {
        loop {
            let Some(pr) = self.progress.get(&to) else { return };
            if !pr.can_send(self.config.inflight_messages_max) || pr.next_index > self.log.last_index() {
                return;
            }
            if !self.send_append(to) {
                return;
            }
        }
    }

    /// Sends one AppendEntries (or starts a snapshot); false when nothing was sent.
    fn send_append(&mut self, to: NodeId) -> bool {
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        let prev_log_index = pr.next_index.prev();
        let Some(prev_log_term) = self.log.term_at(prev_log_index) else {
            // The entries this follower needs were compacted: send the snapshot instead.
            self.start_snapshot(to);
            return false;
        };
        let entries = self.log.slice(pr.next_index, self.config.message_bytes_max);
        let last = entries.last().map(|e| e.index);
        let leader_commit = self.log.committed;
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.sent(last);
            // Figure 2: the follower commits up to the last entry this message vouches for.
            pr.commit_sent = pr
                .commit_sent
                .max(leader_commit.min(last.unwrap_or(prev_log_index)));
        }
        self.send(
            to,
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            },
        );
        true
    }

    fn start_snapshot(&mut self, to: NodeId) {
        let Some(meta) = self.latest_snapshot.clone() else {
            panic!("log compacted to {} without a snapshot", self.log.snapshot_index);
        };
        if let Some(pr) = self.progress.get_mut(&to) {
            pr.snapshot_meta = Some(meta.clone());
            pr.state = ProgressState::Snapshot {
                snapshot_index: meta.index,
                next_offset: 0,
                ticks_since_progress: 0,
            };
            pr.inflight.clear();
        }
        self.snapshot_sends.push(SnapshotSend {
            to,
            term: self.term,
            meta,
            offset: 0,
        });
    }

    /// Asks the runtime to send the next chunk (or resend after a stall) to `to`.
    fn send_snapshot_chunk(&mut self, to: NodeId, after_stall: bool) {
        let term = self.term;
        let Some(pr) = self.progress.get_mut(&to) else {
            return;
        };
        let ProgressState::Snapshot {
            snapshot_index,
            next_offset,
            ticks_since_progress,
        } = &mut pr.state
        else {
            return;
        };
        *ticks_since_progress = 0;
        // After a stall (a lost chunk, or the runtime could no longer read the old snapshot)
        // move to the newest snapshot; otherwise finish the one under way.
        if let Some(latest) = self
            .latest_snapshot
            .as_ref()
            .filter(|l| after_stall && l.index != *snapshot_index)
        {
            *snapshot_index = latest.index;
            *next_offset = 0;
            pr.snapshot_meta = Some(latest.clone());
        }
        let offset = *next_offset;
        let Some(meta) = pr.snapshot_meta.clone() else {
            return;
        };
        self.snapshot_sends.push(SnapshotSend {
            to,
            term,
            meta,
            offset,
        });
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        match_index: LogIndex,
        reject_index: LogIndex,
        conflict_index: LogIndex,
        conflict_term: Option<Term>,
    ) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        if success {
            let updated = pr.update_match(match_index);
            if pr.state == ProgressState::Probe {
                pr.become_replicate();
            }
            let caught_up = pr.match_index == last_index;
            if updated {
                self.maybe_commit();
            }
            if caught_up && self.transfer_target == Some(from) {
                self.timeout_now_sent = true;
                self.send(from, MessageBody::TimeoutNow);
            }
            return;
        }
        // A rejection we already know about (stale or duplicated) changes nothing.
        let stale = match pr.state {
            ProgressState::Replicate => reject_index <= pr.match_index,
            ProgressState::Probe => reject_index != pr.next_index.prev(),
            ProgressState::Snapshot { .. } => true,
        };
        if stale {
            return;
        }
        // Fast backtracking (§5.3): skip a whole term per round trip.
        let mut next = match conflict_term {
            Some(term) => match self.log.last_index_of_term(term, reject_index) {
                Some(index) => index.next(),
                None => conflict_index,
            },
            None => conflict_index,
        };
        next = next.min(reject_index).max(pr.match_index.next());
        pr.become_probe();
        pr.next_index = next;
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64, last_log_index: LogIndex) {
        let last_index = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        pr.read_round_acked = pr.read_round_acked.max(read_round);
        match pr.state {
            ProgressState::Probe => pr.probe_sent = false,
            ProgressState::Replicate => {
                // Appends sent before this heartbeat were lost (the follower's log is shorter
                // than what we had sent), or acknowledgements were lost while the window is
                // full: an empty AppendEntries at next_index - 1 settles it. A rejection moves
                // the follower to Probe; a success acknowledges and frees the window.
                let lost_appends = pr
                    .heartbeat_sent
                    .is_some_and(|(round, sent)| round == read_round && last_log_index < sent);
                let window_full = pr.inflight.len() >= self.config.inflight_messages_max;
                if pr.match_index < last_index && (lost_appends || window_full) {
                    let prev_log_index = pr.next_index.prev();
                    match self.log.term_at(prev_log_index) {
                        Some(prev_log_term) => {
                            let leader_commit = self.log.committed;
                            self.send(
                                from,
                                MessageBody::AppendEntries {
                                    prev_log_index,
                                    prev_log_term,
                                    entries: Vec::new(),
                                    leader_commit,
                                },
                            );
                        }
                        // Compacted meanwhile: Probe, whose next send starts the snapshot.
                        None => pr.become_probe(),
                    }
                }
            }
            ProgressState::Snapshot { .. } => {}
        }
        self.release_reads();
    }

    fn handle_snapshot_response(
        &mut self,
        from: NodeId,
        snapshot_index: LogIndex,
        next_offset: u64,
        done: bool,
    ) {
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.recent_active = true;
        let ProgressState::Snapshot {
            snapshot_index: sending,
            next_offset: offset,
            ticks_since_progress,
        } = &mut pr.state
        else {
            return;
        };
        if *sending != snapshot_index {
            return;
        }
        if done {
            pr.update_match(snapshot_index);
            pr.become_probe();
            self.maybe_commit();
            return;
        }
        *offset = next_offset;
        *ticks_since_progress = 0;
        self.send_snapshot_chunk(from, false);
    }

    // ----- leader: reads -----

    fn start_read(&mut self, context: u64) {
        let committed = self.log.committed;
        let single_voter = self.log.membership().voters.len() == 1 && self.is_voter();
        if single_voter || (self.config.read_mode == ReadMode::Lease && self.lease_valid()) {
            self.read_states.push(ReadState {
                context,
                index: committed,
            });
            return;
        }
        self.pending_reads.push_back(PendingRead {
            context,
            index: committed,
            round: self.read_round + 1,
        });
        self.read_round_broadcast_pending = true;
    }

    fn lease_valid(&self) -> bool {
        let lease_ticks = self.config.election_timeout_ticks - self.config.lease_margin_ticks;
        self.transfer_target.is_none()
            && !self.timeout_now_sent
            && self
                .lease_start_tick
                .is_some_and(|start| self.tick_count < start + lease_ticks)
    }

    fn broadcast_heartbeat(&mut self) {
        self.read_round += 1;
        self.read_round_broadcast_pending = false;
        self.round_sent_ticks
            .push_back((self.read_round, self.tick_count));
        if self.round_sent_ticks.len() > ROUND_HISTORY_MAX {
            self.round_sent_ticks.pop_front();
        }
        if let Some(pr) = self.progress.get_mut(&self.id) {
            pr.read_round_acked = self.read_round;
        }
        let committed = self.log.committed;
        let round = self.read_round;
        let peers: Vec<(NodeId, LogIndex)> = self
            .progress
            .iter_mut()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, pr)| {
                pr.heartbeat_sent = Some((round, pr.next_index.prev()));
                let commit = pr.match_index.min(committed);
                pr.commit_sent = pr.commit_sent.max(commit);
                (*id, commit)
            })
            .collect();
        for (peer, commit) in peers {
            self.send(
                peer,
                MessageBody::Heartbeat {
                    commit,
                    read_round: round,
                },
            );
        }
        self.release_reads();
    }

    /// Releases reads whose round a quorum of voters acknowledged (§6.4 step 3), and renews
    /// the lease from the send time of that round.
    fn release_reads(&mut self) {
        let Some(quorum_round) = self.quorum_value(|pr| pr.read_round_acked) else {
            return;
        };
        // Rounds are remembered in increasing order: a binary search, not a scan of up to
        // ROUND_HISTORY_MAX rounds on every acknowledgement (4% of a leader's CPU under reads).
        if let Ok(idx) = self
            .round_sent_ticks
            .binary_search_by_key(&quorum_round, |(round, _)| *round)
        {
            let tick = self.round_sent_ticks[idx].1;
            self.lease_start_tick = Some(self.lease_start_tick.map_or(tick, |t| t.max(tick)));
        }
        while self
            .pending_reads
            .front()
            .is_some_and(|read| read.round <= quorum_round)
        {
            if let Some(read) = self.pending_reads.pop_front() {
                self.read_states.push(ReadState {
                    context: read.context,
                    index: read.index,
                });
            }
        }
    }

    // ----- follower -----

    fn handle_append_entries(
        &mut self,
        from: NodeId,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) {
        let (mut prev_log_index, mut prev_log_term, mut entries) = (prev_log_index, prev_log_term, entries);
        let committed = self.log.committed;
        if prev_log_index < committed {
            // Everything up to our commit index matches the leader already (§5.4 leader
            // completeness), so skip those entries and check from the commit index.
            let n_skip = (committed.0 - prev_log_index.0) as usize;
            if entries.len() > n_skip {
                entries.drain(..n_skip);
                prev_log_index = committed;
                prev_log_term = self.log.term_at(committed).unwrap_or(Term(0));
            }
        }
        if prev_log_index < committed {
            self.send(from, MessageBody::append_accepted(committed));
            return;
        }
        if self.log.matches(prev_log_index, prev_log_term) {
            let last_new = self.log.append_after_check(prev_log_index, entries);
            self.log.commit_to(leader_commit.min(last_new));
            self.refresh_role();
            self.send(from, MessageBody::append_accepted(last_new));
            return;
        }
        let (conflict_index, conflict_term) = if prev_log_index > self.log.last_index() {
            (self.log.last_index().next(), None)
        } else {
            (
                self.log.first_index_of_term_at(prev_log_index),
                self.log.term_at(prev_log_index),
            )
        };
        self.send(
            from,
            MessageBody::append_rejected(prev_log_index, conflict_index, conflict_term),
        );
    }

    fn handle_install_snapshot(
        &mut self,
        from: NodeId,
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    ) {
        let snapshot_index = meta.index;
        if meta.index <= self.log.committed || self.log.matches(meta.index, meta.term) {
            // We hold everything the snapshot covers already (Figure 13 step 6).
            self.log.commit_to(meta.index);
            self.incoming_snapshot = None;
            self.send(
                from,
                MessageBody::InstallSnapshotResponse {
                    snapshot_index,
                    next_offset: 0,
                    done: true,
                },
            );
            return;
        }
        if offset == 0 {
            self.incoming_snapshot = Some((meta.clone(), 0));
        }
        let expected = match &self.incoming_snapshot {
            Some((incoming, next)) if *incoming == meta => *next,
            _ => 0,
        };
        if expected != offset {
            self.send(
                from,
                MessageBody::InstallSnapshotResponse {
                    snapshot_index,
                    next_offset: expected,
                    done: false,
                },
            );
            return;
        }
        let next_offset = offset + data.len() as u64;
        self.snapshot_chunks.push(SnapshotChunk {
            meta: meta.clone(),
            offset,
            data,
            done,
        });
        if done {
            self.log.install_snapshot(&meta);
            self.incoming_snapshot = None;
            self.latest_snapshot = Some(meta.clone());
            self.snapshot_install = Some(meta);
            self.refresh_role();
        } else {
            self.incoming_snapshot = Some((meta, next_offset));
        }
        self.send(
            from,
            MessageBody::InstallSnapshotResponse {
                snapshot_index,
                next_offset,
                done,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn election_elapsed_for_tests_add(&mut self, ticks: u64) {
        self.election_elapsed_ticks += ticks;
    }
}
