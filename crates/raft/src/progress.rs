//! The leader's view of each follower (etcd's "Progress", Raft §5.3 nextIndex/matchIndex) and
//! the flow-control state machine that decides how much to send.

use std::collections::VecDeque;

use crate::types::{LogIndex, SnapshotMeta};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// Unknown follower state: one AppendEntries at a time, resumed by a response or a
    /// heartbeat response (so a lost probe costs one heartbeat interval).
    Probe,
    /// Follower known to match: pipeline AppendEntries optimistically, at most
    /// `inflight_messages_max` unacknowledged.
    Replicate,
    /// Follower needs a snapshot: chunks are streamed one at a time.
    Snapshot {
        snapshot_index: LogIndex,
        next_offset: u64,
        ticks_since_progress: u64,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Progress {
    pub match_index: LogIndex,
    pub next_index: LogIndex,
    pub state: ProgressState,
    /// In Probe: a probe is outstanding, send nothing more until it is answered.
    pub probe_sent: bool,
    /// Last index of each AppendEntries in flight (Replicate only).
    pub inflight: VecDeque<LogIndex>,
    /// Heard from since the last CheckQuorum round.
    pub recent_active: bool,
    /// Highest ReadIndex/heartbeat round this follower acknowledged.
    pub read_round_acked: u64,
    /// The last heartbeat round sent and the last index sent before it: a response to that
    /// round showing a shorter log means appends sent before the heartbeat were lost.
    pub heartbeat_sent: Option<(u64, LogIndex)>,
    /// The highest commit index this follower was told that it can use (a message's commit
    /// capped at the last index the follower is known to hold with it).
    pub commit_sent: LogIndex,
    /// The snapshot being streamed in the Snapshot state. A transfer under way finishes with
    /// the snapshot it started with even if a newer one appears (the runtime keeps it
    /// readable), so frequent compaction cannot starve a slow transfer.
    pub snapshot_meta: Option<SnapshotMeta>,
}

impl Progress {
    pub fn new(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex::ZERO,
            next_index,
            state: ProgressState::Probe,
            probe_sent: false,
            inflight: VecDeque::new(),
            recent_active: false,
            read_round_acked: 0,
            heartbeat_sent: None,
            commit_sent: LogIndex::ZERO,
            snapshot_meta: None,
        }
    }

    pub fn become_probe(&mut self) {
        self.next_index = self.match_index.next();
        self.state = ProgressState::Probe;
        self.probe_sent = false;
        self.inflight.clear();
    }

    pub fn become_replicate(&mut self) {
        self.next_index = self.match_index.next();
        self.state = ProgressState::Replicate;
        self.probe_sent = false;
        self.inflight.clear();
    }

    /// Records an acknowledgement up to `index`; false when it told us nothing new.
    pub fn update_match(&mut self, index: LogIndex) -> bool {
        let mut updated = false;
        if index > self.match_index {
            self.match_index = index;
            updated = true;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        while self.inflight.front().is_some_and(|last| *last <= index) {
            self.inflight.pop_front();
        }
        updated
    }

    /// Can another AppendEntries be sent now?
    pub fn can_send(&self, inflight_messages_max: usize) -> bool {
        match self.state {
            ProgressState::Probe => !self.probe_sent,
            ProgressState::Replicate => self.inflight.len() < inflight_messages_max,
            ProgressState::Snapshot { .. } => false,
        }
    }

    /// Bookkeeping after sending entries ending at `last_index` (or an empty probe).
    pub fn sent(&mut self, last_index: Option<LogIndex>) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                if let Some(last) = last_index {
                    self.next_index = last.next();
                    self.inflight.push_back(last);
                }
            }
            ProgressState::Snapshot { .. } => {}
        }
    }
}
