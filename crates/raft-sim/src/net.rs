//! The simulated network: per-message random delay (hence reordering), loss, duplication,
//! and partitions, symmetric or one-way.

use std::collections::{BTreeMap, BTreeSet};

use shoal_raft::{MessageBody, NodeId};

/// How messages travel while the network is in one mode (reliable or unreliable).
#[derive(Clone, Debug, PartialEq)]
pub struct NetConfig {
    /// Every message takes a uniform delay in `[delay_ms_min, delay_ms_max]`.
    pub delay_ms_min: u64,
    pub delay_ms_max: u64,
    /// With this probability the delay is instead uniform up to `long_delay_ms_max` (as the
    /// 6.824 labrpc network does), which reorders messages across heartbeats.
    pub long_delay_probability: f64,
    pub long_delay_ms_max: u64,
    pub drop_probability: f64,
    pub duplicate_probability: f64,
}

impl NetConfig {
    /// Short delays (still reordering within a few milliseconds), no loss.
    pub fn reliable() -> NetConfig {
        NetConfig {
            delay_ms_min: 1,
            delay_ms_max: 10,
            long_delay_probability: 0.0,
            long_delay_ms_max: 0,
            drop_probability: 0.0,
            duplicate_probability: 0.0,
        }
    }

    /// The 6.824 "unreliable" network: 10% loss, some long delays, some duplicates.
    pub fn unreliable() -> NetConfig {
        NetConfig {
            delay_ms_min: 1,
            delay_ms_max: 27,
            long_delay_probability: 0.1,
            long_delay_ms_max: 700,
            drop_probability: 0.1,
            duplicate_probability: 0.05,
        }
    }
}

/// One end of a simulated connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    Node(NodeId),
    Client(u64),
}

/// Which node-to-node links are cut. Clients reach every node that is not disconnected.
#[derive(Clone, Debug, Default)]
pub struct Links {
    /// Nodes cut from everyone (nodes and clients), as 6.824's `disconnect`.
    disconnected: BTreeSet<NodeId>,
    /// When set, nodes talk only within their group; nodes in no group are isolated.
    groups: Option<BTreeMap<NodeId, usize>>,
    /// Directed links cut: `(from, to)` blocks from→to while to→from still flows.
    blocked: BTreeSet<(NodeId, NodeId)>,
}

impl Links {
    pub fn disconnect(&mut self, node: NodeId) {
        self.disconnected.insert(node);
    }

    pub fn connect(&mut self, node: NodeId) {
        self.disconnected.remove(&node);
    }

    pub fn is_disconnected(&self, node: NodeId) -> bool {
        self.disconnected.contains(&node)
    }

    /// Nodes talk only within their group from now on.
    pub fn partition(&mut self, groups: &[Vec<NodeId>]) {
        let mut group_of = BTreeMap::new();
        for (group_idx, group) in groups.iter().enumerate() {
            for node in group {
                group_of.insert(*node, group_idx);
            }
        }
        self.groups = Some(group_of);
    }

    pub fn block_one_way(&mut self, from: NodeId, to: NodeId) {
        self.blocked.insert((from, to));
    }

    /// Removes every cut: disconnections, partitions and one-way blocks.
    pub fn heal(&mut self) {
        *self = Links::default();
    }

    pub fn is_healed(&self) -> bool {
        self.disconnected.is_empty() && self.groups.is_none() && self.blocked.is_empty()
    }

    pub fn can_send(&self, from: Endpoint, to: Endpoint) -> bool {
        match (from, to) {
            (Endpoint::Node(a), Endpoint::Node(b)) => {
                if self.disconnected.contains(&a) || self.disconnected.contains(&b) {
                    return false;
                }
                if self.blocked.contains(&(a, b)) {
                    return false;
                }
                match &self.groups {
                    None => true,
                    Some(group_of) => match (group_of.get(&a), group_of.get(&b)) {
                        (Some(x), Some(y)) => x == y,
                        _ => false,
                    },
                }
            }
            (Endpoint::Node(node), Endpoint::Client(_)) | (Endpoint::Client(_), Endpoint::Node(node)) => {
                !self.disconnected.contains(&node)
            }
            (Endpoint::Client(_), Endpoint::Client(_)) => false,
        }
    }
}

/// The message kinds, in a fixed order for the counters.
pub const MESSAGE_KINDS: [&str; 11] = [
    "PreVote",
    "PreVoteResponse",
    "RequestVote",
    "RequestVoteResponse",
    "AppendEntries",
    "AppendEntriesResponse",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "InstallSnapshotResponse",
    "TimeoutNow",
];

/// The position of a message's kind in [`MESSAGE_KINDS`].
pub fn kind_idx(body: &MessageBody) -> usize {
    match body {
        MessageBody::PreVote { .. } => 0,
        MessageBody::PreVoteResponse { .. } => 1,
        MessageBody::RequestVote { .. } => 2,
        MessageBody::RequestVoteResponse { .. } => 3,
        MessageBody::AppendEntries { .. } => 4,
        MessageBody::AppendEntriesResponse { .. } => 5,
        MessageBody::Heartbeat { .. } => 6,
        MessageBody::HeartbeatResponse { .. } => 7,
        MessageBody::InstallSnapshot { .. } => 8,
        MessageBody::InstallSnapshotResponse { .. } => 9,
        MessageBody::TimeoutNow => 10,
    }
}

/// Raft messages the nodes sent (whether or not they arrived), by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MessageCounters {
    pub sent_by_kind: [u64; MESSAGE_KINDS.len()],
    pub n_dropped: u64,
    pub n_duplicated: u64,
    pub n_delivered: u64,
    pub n_client_messages: u64,
}

impl MessageCounters {
    pub fn n_sent(&self) -> u64 {
        self.sent_by_kind.iter().sum()
    }

    /// Messages of kind `kind` (a [`MessageBody::kind_name`]) sent so far.
    pub fn sent(&self, kind: &str) -> u64 {
        MESSAGE_KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |idx| self.sent_by_kind[idx])
    }

    pub fn by_kind(&self) -> BTreeMap<&'static str, u64> {
        MESSAGE_KINDS
            .iter()
            .zip(self.sent_by_kind.iter())
            .map(|(kind, n)| (*kind, *n))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_links_partition_and_one_way_blocks() {
        // Goal: groups cut across, one-way blocks cut one direction, heal restores all.
        let n = |id| Endpoint::Node(NodeId(id));
        let mut links = Links::default();
        links.partition(&[vec![NodeId(1), NodeId(2)], vec![NodeId(3)]]);
        assert!(links.can_send(n(1), n(2)));
        assert!(!links.can_send(n(1), n(3)));
        assert!(!links.can_send(n(4), n(1)), "a node in no group is isolated");
        assert!(links.can_send(Endpoint::Client(7), n(3)));
        links.heal();
        links.block_one_way(NodeId(1), NodeId(2));
        assert!(!links.can_send(n(1), n(2)));
        assert!(links.can_send(n(2), n(1)));
        links.disconnect(NodeId(3));
        assert!(!links.can_send(Endpoint::Client(7), n(3)));
        assert!(!links.can_send(n(2), n(3)));
        links.heal();
        assert!(links.is_healed());
    }

    #[test]
    fn sim_message_kinds_match_the_core_names() {
        // Goal: the counter table uses the core's own kind names, in kind_idx order.
        let body = MessageBody::TimeoutNow;
        assert_eq!(MESSAGE_KINDS[kind_idx(&body)], body.kind_name());
        let body = MessageBody::Heartbeat {
            commit: shoal_raft::LogIndex(0),
            read_round: 0,
        };
        assert_eq!(MESSAGE_KINDS[kind_idx(&body)], body.kind_name());
    }
}
