//! The messages Raft peers exchange. The runtime adds a group id on the wire.

use crate::types::{Entry, LogIndex, NodeId, SnapshotMeta, Term};

/// A message from one peer to another, in `term` (the sender's current term).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MessageBody {
    /// Raft thesis §9.6: asks whether the sender could win an election at `term` (the term it
    /// would campaign in), without anyone changing term.
    PreVote {
        last_log_index: LogIndex,
        last_log_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// §5.2 RequestVote. `leadership_transfer` marks a campaign started by TimeoutNow, which
    /// voters grant even though they heard from a leader recently (§3.10).
    RequestVote {
        last_log_index: LogIndex,
        last_log_term: Term,
        leadership_transfer: bool,
    },
    RequestVoteResponse {
        granted: bool,
    },
    /// §5.3 AppendEntries with the consistency check on (prev_log_index, prev_log_term).
    AppendEntries {
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    },
    /// On success `match_index` is the last index known to match the leader. On failure
    /// `reject_index` is the prev_log_index that failed the check, and the follower sends a
    /// hint for fast backtracking (§5.3, "optimization" paragraph): `conflict_term` is the term
    /// of its entry at prev_log_index (None if its log is shorter) and `conflict_index` the
    /// first index it holds with that term (or its last index + 1).
    AppendEntriesResponse {
        success: bool,
        match_index: LogIndex,
        reject_index: LogIndex,
        conflict_index: LogIndex,
        conflict_term: Option<Term>,
    },
    /// Leader liveness and commit propagation. `commit` is at most what the follower is known
    /// to hold. `read_round` identifies the ReadIndex round this heartbeat confirms.
    Heartbeat {
        commit: LogIndex,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
        /// The follower's last log index, so the leader can resume replication to a follower
        /// that lost messages.
        last_log_index: LogIndex,
    },
    /// Raft Figure 13: one chunk of the snapshot described by `meta`, at byte `offset`.
    InstallSnapshot {
        meta: SnapshotMeta,
        offset: u64,
        data: Vec<u8>,
        done: bool,
    },
    /// `next_offset` is the byte the follower expects next; when `done` the snapshot is installed
    /// and the follower's log ends at `meta.index`. A follower that cannot use the snapshot
    /// (e.g. a gap in offsets) answers with the offset it wants.
    InstallSnapshotResponse {
        snapshot_index: LogIndex,
        next_offset: u64,
        done: bool,
    },
    /// §3.10 leadership transfer: the recipient starts an election at once.
    TimeoutNow,
}

impl MessageBody {
    /// A successful AppendEntries response: the follower matches the leader up to `match_index`.
    pub fn append_accepted(match_index: LogIndex) -> MessageBody {
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index,
            reject_index: LogIndex::ZERO,
            conflict_index: LogIndex::ZERO,
            conflict_term: None,
        }
    }

    /// A failed AppendEntries response with its fast-backtracking hint.
    pub fn append_rejected(
        reject_index: LogIndex,
        conflict_index: LogIndex,
        conflict_term: Option<Term>,
    ) -> MessageBody {
        MessageBody::AppendEntriesResponse {
            success: false,
            match_index: LogIndex::ZERO,
            reject_index,
            conflict_index,
            conflict_term,
        }
    }

    /// A short name for logs and message counters.
    pub fn kind_name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::InstallSnapshot { .. } => "InstallSnapshot",
            MessageBody::InstallSnapshotResponse { .. } => "InstallSnapshotResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }

    /// True for responses; a response never makes a node adopt a vote or start an election.
    pub fn is_response(&self) -> bool {
        matches!(
            self,
            MessageBody::PreVoteResponse { .. }
                | MessageBody::RequestVoteResponse { .. }
                | MessageBody::AppendEntriesResponse { .. }
                | MessageBody::HeartbeatResponse { .. }
                | MessageBody::InstallSnapshotResponse { .. }
        )
    }
}
