//! Settings of a node and of its groups, validated once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use shoal_raft::{ConfigChange, NodeId};

use crate::error::{Error, Result};
use crate::{
    ELECTION_TIMEOUT_TICKS_DEFAULT, GRPC_MESSAGE_BYTES_MAX, HEARTBEAT_INTERVAL_TICKS_DEFAULT,
    PEER_BATCH_BYTES_MAX, REQUEST_TIMEOUT_DEFAULT, SNAPSHOT_INTERVAL_ENTRIES_DEFAULT, TICK_INTERVAL_DEFAULT,
};

/// Settings of a node (one process, possibly hosting several groups).
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub id: NodeId,
    /// Where the nodes listen (`host:port`), this one included. Nodes added later announce
    /// their address in their membership change.
    pub peers: BTreeMap<NodeId, String>,
}

impl NodeOptions {
    pub fn new(id: NodeId, peers: BTreeMap<NodeId, String>) -> NodeOptions {
        NodeOptions { id, peers }
    }
}

/// Settings of one Raft group on one node.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    pub group_id: u64,
    /// This group's data directory on this node (WAL, snapshots, hard state).
    pub data_dir: PathBuf,
    /// The voters the group was created with. Every node of the group gets the same list,
    /// including a node joining later (not in the list, it starts as a learner-in-waiting):
    /// the core does not log the initial membership, so replaying the log from index 1 needs
    /// it. Recorded on first start; a restart uses the recorded list.
    pub initial_voters: Vec<NodeId>,
    /// Real time per core tick. Default 20 ms.
    pub tick_interval: Duration,
    /// Take a snapshot and compact the log after this many applied entries. Default 10 000.
    pub snapshot_interval_entries: u64,
    /// How long a proposal, read or admin request may wait. Default 5 s.
    pub request_timeout: Duration,
    /// The core's settings; `id` and `rng_seed` are filled in by the node. Defaults: heartbeat
    /// every 2 ticks, election timeout 15 ticks (300-600 ms with 20 ms ticks), the core's
    /// defaults otherwise.
    pub raft: shoal_raft::Config,
}

impl GroupConfig {
    pub fn new(
        group_id: u64,
        data_dir: impl Into<PathBuf>,
        initial_voters: impl IntoIterator<Item = NodeId>,
    ) -> GroupConfig {
        let mut raft = shoal_raft::Config::new(NodeId(0));
        raft.heartbeat_interval_ticks = HEARTBEAT_INTERVAL_TICKS_DEFAULT;
        raft.election_timeout_ticks = ELECTION_TIMEOUT_TICKS_DEFAULT;
        GroupConfig {
            group_id,
            data_dir: data_dir.into(),
            initial_voters: initial_voters.into_iter().collect(),
            tick_interval: TICK_INTERVAL_DEFAULT,
            snapshot_interval_entries: SNAPSHOT_INTERVAL_ENTRIES_DEFAULT,
            request_timeout: REQUEST_TIMEOUT_DEFAULT,
            raft,
        }
    }

    /// Checks the values against each other; the error names the bad value.
    pub fn validate(&self) -> Result<()> {
        if self.tick_interval.is_zero() {
            return Err(Error::Config("tick_interval must be > 0".into()));
        }
        if self.snapshot_interval_entries == 0 {
            return Err(Error::Config("snapshot_interval_entries must be > 0".into()));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::Config("request_timeout must be > 0".into()));
        }
        if self.initial_voters.contains(&NodeId(0)) {
            return Err(Error::Config("initial_voters must not contain node 0".into()));
        }
        // One AppendEntries carries up to message_bytes_max plus one entry that may exceed it;
        // with the rest of a peer batch it must fit a gRPC message.
        let message_bytes_max = self.raft.message_bytes_max + self.raft.entry_bytes_max + 64 * 1024;
        if message_bytes_max + PEER_BATCH_BYTES_MAX > GRPC_MESSAGE_BYTES_MAX {
            return Err(Error::Config(format!(
                "raft.message_bytes_max + raft.entry_bytes_max ({} bytes) is too large for \
                 GRPC_MESSAGE_BYTES_MAX ({GRPC_MESSAGE_BYTES_MAX} bytes)",
                self.raft.message_bytes_max + self.raft.entry_bytes_max
            )));
        }
        let mut raft = self.raft.clone();
        raft.id = NodeId(1);
        raft.validate()
            .map_err(|why| Error::Config(format!("raft: {why}")))
    }

    pub(crate) fn raft_config(&self, id: NodeId) -> shoal_raft::Config {
        let mut raft = self.raft.clone();
        raft.id = id;
        // Different groups on one node, and different incarnations of one node, must not time
        // out in lockstep: mix in the start time and process id (the shell may read clocks; the
        // core stays deterministic given its seed).
        let start_nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        raft.rng_seed = id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ self.group_id
            ^ self.raft.rng_seed
            ^ start_nanos
            ^ u64::from(std::process::id()).rotate_left(32);
        raft
    }
}

/// A single-server membership change, with the address of an added member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipChange {
    AddLearner { id: NodeId, address: String },
    AddVoter { id: NodeId, address: String },
    PromoteLearner(NodeId),
    Remove(NodeId),
}

impl MembershipChange {
    pub(crate) fn into_parts(self) -> (ConfigChange, Option<String>) {
        match self {
            MembershipChange::AddLearner { id, address } => (ConfigChange::AddLearner(id), Some(address)),
            MembershipChange::AddVoter { id, address } => (ConfigChange::AddVoter(id), Some(address)),
            MembershipChange::PromoteLearner(id) => (ConfigChange::PromoteLearner(id), None),
            MembershipChange::Remove(id) => (ConfigChange::Remove(id), None),
        }
    }
}
