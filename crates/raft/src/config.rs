//! Static configuration of one Raft node, validated once.

use crate::types::NodeId;

/// How the leader confirms it is still the leader before serving a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Raft §6.4: one heartbeat round acknowledged by a quorum per batch of reads. Safe whatever
    /// the clocks do.
    ReadIndex,
    /// Raft §6.4.1 leader lease: serve at once while a quorum acknowledged a heartbeat sent less
    /// than `election_timeout_ticks` ago. Safe only if no node's tick runs faster than another's
    /// by more than the margin left by `lease_margin_ticks` (bounded clock drift); a paused or
    /// clock-jumped leader can serve a stale read. Requires `check_quorum`.
    Lease,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// A follower that hears nothing for a random time in [t, 2t) ticks starts an election.
    pub election_timeout_ticks: u64,
    /// A leader sends heartbeats every this many ticks; must be well below the election timeout.
    pub heartbeat_interval_ticks: u64,
    /// Raft thesis §9.6: ask for pre-votes before bumping the term, so a node that was cut off
    /// cannot force a healthy leader to step down when it returns.
    pub pre_vote: bool,
    /// Raft thesis §6.2: a leader that has not heard from a quorum for an election timeout
    /// steps down; followers that heard from a leader recently ignore vote requests.
    pub check_quorum: bool,
    pub read_mode: ReadMode,
    /// Ticks subtracted from the lease to absorb clock drift (only for `ReadMode::Lease`).
    pub lease_margin_ticks: u64,
    /// AppendEntries messages in flight to one follower in the Replicate state. Cost: up to
    /// this many times `message_bytes_max` buffered per follower.
    pub inflight_messages_max: usize,
    /// Bytes of entries in one AppendEntries (one entry is always sent even if larger).
    pub message_bytes_max: usize,
    /// Bytes of proposals a leader accepts beyond its commit index before refusing with
    /// `ProposeError::Busy` (backpressure instead of unbounded memory).
    pub uncommitted_bytes_max: usize,
    /// Bytes of committed entries handed out in one `Ready`.
    pub apply_batch_bytes_max: usize,
    /// Largest command a proposal may carry.
    pub entry_bytes_max: usize,
    /// Seed of the only randomness in the core (election timeouts).
    pub rng_seed: u64,
}

impl Config {
    /// Defaults fit a 100 ms tick on a LAN: elections after 1-2 s of silence, heartbeats every
    /// 100 ms.
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            read_mode: ReadMode::ReadIndex,
            lease_margin_ticks: 2,
            inflight_messages_max: 256,
            message_bytes_max: 1024 * 1024,
            uncommitted_bytes_max: 64 * 1024 * 1024,
            apply_batch_bytes_max: 4 * 1024 * 1024,
            entry_bytes_max: 1024 * 1024,
            rng_seed: id.0,
        }
    }

    /// Checks the values against each other; the error names the bad value.
    pub fn validate(&self) -> Result<(), String> {
        if self.id == NodeId(0) {
            return Err("node id must be > 0 (0 means \"nobody\")".into());
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err("heartbeat_interval_ticks must be > 0".into());
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return Err(format!(
                "election_timeout_ticks ({}) must exceed heartbeat_interval_ticks ({})",
                self.election_timeout_ticks, self.heartbeat_interval_ticks
            ));
        }
        if self.read_mode == ReadMode::Lease && !self.check_quorum {
            return Err("read_mode Lease requires check_quorum".into());
        }
        if self.read_mode == ReadMode::Lease && self.lease_margin_ticks >= self.election_timeout_ticks {
            return Err("lease_margin_ticks must be below election_timeout_ticks".into());
        }
        if self.inflight_messages_max == 0 || self.message_bytes_max == 0 {
            return Err("inflight_messages_max and message_bytes_max must be > 0".into());
        }
        if self.entry_bytes_max > self.uncommitted_bytes_max {
            return Err("entry_bytes_max must not exceed uncommitted_bytes_max".into());
        }
        Ok(())
    }
}
