//! Conversions between the core's types and their protobuf forms (`proto/raft.proto`), used on
//! the wire and on disk (WAL records, the hard-state file, snapshot metadata).

use std::collections::BTreeMap;

use prost::Message as _;
use shoal_raft::{
    ConfigChange, Entry, EntryKind, HardState, LogIndex, Membership, Message, MessageBody, NodeId,
    SnapshotMeta, Term,
};

use crate::proto;
use crate::proto::raft_message::Body;

/// A record or message that does not decode into a valid core value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed {what}: {why}")]
pub struct DecodeError {
    pub what: &'static str,
    pub why: String,
}

fn malformed(what: &'static str, why: impl Into<String>) -> DecodeError {
    DecodeError {
        what,
        why: why.into(),
    }
}

// ----- entries and membership -----

pub fn config_change_to_proto(change: &ConfigChange) -> proto::ConfigChange {
    let (kind, id) = match change {
        ConfigChange::AddLearner(id) => (proto::ConfigChangeKind::AddLearner, id),
        ConfigChange::AddVoter(id) => (proto::ConfigChangeKind::AddVoter, id),
        ConfigChange::PromoteLearner(id) => (proto::ConfigChangeKind::PromoteLearner, id),
        ConfigChange::Remove(id) => (proto::ConfigChangeKind::Remove, id),
    };
    proto::ConfigChange {
        kind: kind as i32,
        node_id: id.0,
    }
}

pub fn config_change_from_proto(change: &proto::ConfigChange) -> Result<ConfigChange, DecodeError> {
    let id = NodeId(change.node_id);
    if id == NodeId(0) {
        return Err(malformed("config change", "node id 0"));
    }
    match proto::ConfigChangeKind::try_from(change.kind) {
        Ok(proto::ConfigChangeKind::AddLearner) => Ok(ConfigChange::AddLearner(id)),
        Ok(proto::ConfigChangeKind::AddVoter) => Ok(ConfigChange::AddVoter(id)),
        Ok(proto::ConfigChangeKind::PromoteLearner) => Ok(ConfigChange::PromoteLearner(id)),
        Ok(proto::ConfigChangeKind::Remove) => Ok(ConfigChange::Remove(id)),
        Err(_) => Err(malformed(
            "config change",
            format!("unknown kind {}", change.kind),
        )),
    }
}

pub fn entry_to_proto(entry: &Entry) -> proto::Entry {
    let (kind, config_change) = match &entry.kind {
        EntryKind::Noop => (proto::EntryKind::Noop, None),
        EntryKind::Command => (proto::EntryKind::Command, None),
        EntryKind::ConfigChange(change) => (
            proto::EntryKind::ConfigChange,
            Some(config_change_to_proto(change)),
        ),
    };
    proto::Entry {
        term: entry.term.0,
        index: entry.index.0,
        kind: kind as i32,
        config_change,
        data: entry.data.clone(),
    }
}

pub fn entry_from_proto(entry: proto::Entry) -> Result<Entry, DecodeError> {
    let kind = match proto::EntryKind::try_from(entry.kind) {
        Ok(proto::EntryKind::Noop) => EntryKind::Noop,
        Ok(proto::EntryKind::Command) => EntryKind::Command,
        Ok(proto::EntryKind::ConfigChange) => {
            let change = entry
                .config_change
                .as_ref()
                .ok_or_else(|| malformed("entry", "config change entry without a change"))?;
            EntryKind::ConfigChange(config_change_from_proto(change)?)
        }
        Err(_) => return Err(malformed("entry", format!("unknown kind {}", entry.kind))),
    };
    if entry.index == 0 {
        return Err(malformed("entry", "index 0"));
    }
    Ok(Entry {
        term: Term(entry.term),
        index: LogIndex(entry.index),
        kind,
        data: entry.data,
    })
}

/// One WAL record: the protobuf `Entry`.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    entry_to_proto(entry).encode_to_vec()
}

pub fn decode_entry(bytes: &[u8]) -> Result<Entry, DecodeError> {
    let entry = proto::Entry::decode(bytes).map_err(|e| malformed("WAL entry", e.to_string()))?;
    entry_from_proto(entry)
}

pub fn membership_to_proto(membership: &Membership) -> proto::Membership {
    proto::Membership {
        voters: membership.voters.iter().map(|id| id.0).collect(),
        learners: membership.learners.iter().map(|id| id.0).collect(),
    }
}

pub fn membership_from_proto(membership: Option<proto::Membership>) -> Membership {
    let membership = membership.unwrap_or_default();
    Membership {
        voters: membership.voters.into_iter().map(NodeId).collect(),
        learners: membership.learners.into_iter().map(NodeId).collect(),
    }
}

pub fn snapshot_meta_to_proto(meta: &SnapshotMeta) -> proto::SnapshotMeta {
    proto::SnapshotMeta {
        index: meta.index.0,
        term: meta.term.0,
        membership: Some(membership_to_proto(&meta.membership)),
    }
}

pub fn snapshot_meta_from_proto(meta: Option<proto::SnapshotMeta>) -> SnapshotMeta {
    let meta = meta.unwrap_or_default();
    SnapshotMeta {
        index: LogIndex(meta.index),
        term: Term(meta.term),
        membership: membership_from_proto(meta.membership),
    }
}

// ----- disk records -----

/// The hard-state file: term, vote (0 = none) and commit as three little-endian u64 (24 bytes,
/// so a wrong length is caught).
pub fn encode_hard_state(hs: &HardState) -> Vec<u8> {
    let mut out = Vec::with_capacity(24);
    out.extend_from_slice(&hs.term.0.to_le_bytes());
    out.extend_from_slice(&hs.vote.map_or(0, |id| id.0).to_le_bytes());
    out.extend_from_slice(&hs.commit.0.to_le_bytes());
    out
}

pub fn decode_hard_state(bytes: &[u8]) -> Result<HardState, DecodeError> {
    if bytes.len() != 24 {
        return Err(malformed(
            "hard state",
            format!("{} bytes, expected 24", bytes.len()),
        ));
    }
    let word = |i: usize| {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(&bytes[i * 8..i * 8 + 8]);
        u64::from_le_bytes(buf)
    };
    let vote = word(1);
    Ok(HardState {
        term: Term(word(0)),
        vote: (vote != 0).then_some(NodeId(vote)),
        commit: LogIndex(word(2)),
    })
}

/// What the runtime stores as a snapshot's metadata: the core's `SnapshotMeta` plus the
/// addresses of the members (so they survive the compaction of their ConfigChange entries).
pub fn encode_snapshot_record(meta: &SnapshotMeta, addresses: &BTreeMap<NodeId, String>) -> Vec<u8> {
    proto::InstallSnapshot {
        meta: Some(snapshot_meta_to_proto(meta)),
        offset: 0,
        data: Vec::new(),
        done: true,
        addresses: addresses.iter().map(|(id, addr)| (id.0, addr.clone())).collect(),
    }
    .encode_to_vec()
}

pub fn decode_snapshot_record(bytes: &[u8]) -> Result<(SnapshotMeta, BTreeMap<NodeId, String>), DecodeError> {
    let record =
        proto::InstallSnapshot::decode(bytes).map_err(|e| malformed("snapshot metadata", e.to_string()))?;
    let addresses = record
        .addresses
        .into_iter()
        .map(|(id, addr)| (NodeId(id), addr))
        .collect();
    Ok((snapshot_meta_from_proto(record.meta), addresses))
}

/// The bootstrap membership file: the voters of the group when it was created.
pub fn encode_voters(voters: &[NodeId]) -> Vec<u8> {
    proto::Membership {
        voters: voters.iter().map(|id| id.0).collect(),
        learners: Vec::new(),
    }
    .encode_to_vec()
}

pub fn decode_voters(bytes: &[u8]) -> Result<Vec<NodeId>, DecodeError> {
    let membership =
        proto::Membership::decode(bytes).map_err(|e| malformed("bootstrap membership", e.to_string()))?;
    Ok(membership.voters.into_iter().map(NodeId).collect())
}

// ----- peer messages -----

/// Encodes a core message for group `group_id`. `InstallSnapshot` carries no addresses here;
/// the sender adds them.
pub fn message_to_proto(group_id: u64, message: Message) -> proto::RaftMessage {
    let body = match message.body {
        MessageBody::PreVote {
            last_log_index,
            last_log_term,
        } => Body::PreVote(proto::PreVote {
            last_log_index: last_log_index.0,
            last_log_term: last_log_term.0,
        }),
        MessageBody::PreVoteResponse { granted } => Body::PreVoteResponse(proto::PreVoteResponse { granted }),
        MessageBody::RequestVote {
            last_log_index,
            last_log_term,
            leadership_transfer,
        } => Body::RequestVote(proto::RequestVote {
            last_log_index: last_log_index.0,
            last_log_term: last_log_term.0,
            leadership_transfer,
        }),
        MessageBody::RequestVoteResponse { granted } => {
            Body::RequestVoteResponse(proto::RequestVoteResponse { granted })
        }
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => Body::AppendEntries(proto::AppendEntries {
            prev_log_index: prev_log_index.0,
            prev_log_term: prev_log_term.0,
            entries: entries.iter().map(entry_to_proto).collect(),
            leader_commit: leader_commit.0,
        }),
        MessageBody::AppendEntriesResponse {
            success,
            match_index,
            reject_index,
            conflict_index,
            conflict_term,
        } => Body::AppendEntriesResponse(proto::AppendEntriesResponse {
            success,
            match_index: match_index.0,
            reject_index: reject_index.0,
            conflict_index: conflict_index.0,
            conflict_term: conflict_term.map(|t| t.0),
        }),
        MessageBody::Heartbeat { commit, read_round } => Body::Heartbeat(proto::Heartbeat {
            commit: commit.0,
            read_round,
        }),
        MessageBody::HeartbeatResponse {
            read_round,
            last_log_index,
        } => Body::HeartbeatResponse(proto::HeartbeatResponse {
            read_round,
            last_log_index: last_log_index.0,
        }),
        MessageBody::InstallSnapshot {
            meta,
            offset,
            data,
            done,
        } => Body::InstallSnapshot(proto::InstallSnapshot {
            meta: Some(snapshot_meta_to_proto(&meta)),
            offset,
            data,
            done,
            addresses: Default::default(),
        }),
        MessageBody::InstallSnapshotResponse {
            snapshot_index,
            next_offset,
            done,
        } => Body::InstallSnapshotResponse(proto::InstallSnapshotResponse {
            snapshot_index: snapshot_index.0,
            next_offset,
            done,
        }),
        MessageBody::TimeoutNow => Body::TimeoutNow(proto::TimeoutNow {}),
    };
    proto::RaftMessage {
        group_id,
        from: message.from.0,
        to: message.to.0,
        term: message.term.0,
        body: Some(body),
    }
}

/// Decodes a wire message into its group id, the core message, and (for `InstallSnapshot`)
/// the addresses the sender attached.
pub fn message_from_proto(
    message: proto::RaftMessage,
) -> Result<(u64, Message, BTreeMap<NodeId, String>), DecodeError> {
    let mut addresses = BTreeMap::new();
    let body = match message.body {
        None => return Err(malformed("message", "no body")),
        Some(Body::PreVote(m)) => MessageBody::PreVote {
            last_log_index: LogIndex(m.last_log_index),
            last_log_term: Term(m.last_log_term),
        },
        Some(Body::PreVoteResponse(m)) => MessageBody::PreVoteResponse { granted: m.granted },
        Some(Body::RequestVote(m)) => MessageBody::RequestVote {
            last_log_index: LogIndex(m.last_log_index),
            last_log_term: Term(m.last_log_term),
            leadership_transfer: m.leadership_transfer,
        },
        Some(Body::RequestVoteResponse(m)) => MessageBody::RequestVoteResponse { granted: m.granted },
        Some(Body::AppendEntries(m)) => {
            let entries = m
                .entries
                .into_iter()
                .map(entry_from_proto)
                .collect::<Result<Vec<_>, _>>()?;
            let contiguous = entries
                .iter()
                .enumerate()
                .all(|(i, e)| e.index.0 == m.prev_log_index + 1 + i as u64);
            if !contiguous {
                return Err(malformed(
                    "AppendEntries",
                    "entries do not follow prev_log_index contiguously",
                ));
            }
            MessageBody::AppendEntries {
                prev_log_index: LogIndex(m.prev_log_index),
                prev_log_term: Term(m.prev_log_term),
                entries,
                leader_commit: LogIndex(m.leader_commit),
            }
        }
        Some(Body::AppendEntriesResponse(m)) => MessageBody::AppendEntriesResponse {
            success: m.success,
            match_index: LogIndex(m.match_index),
            reject_index: LogIndex(m.reject_index),
            conflict_index: LogIndex(m.conflict_index),
            conflict_term: m.conflict_term.map(Term),
        },
        Some(Body::Heartbeat(m)) => MessageBody::Heartbeat {
            commit: LogIndex(m.commit),
            read_round: m.read_round,
        },
        Some(Body::HeartbeatResponse(m)) => MessageBody::HeartbeatResponse {
            read_round: m.read_round,
            last_log_index: LogIndex(m.last_log_index),
        },
        Some(Body::InstallSnapshot(m)) => {
            addresses = m
                .addresses
                .into_iter()
                .filter(|(id, addr)| *id != 0 && !addr.is_empty())
                .map(|(id, addr)| (NodeId(id), addr))
                .collect();
            MessageBody::InstallSnapshot {
                meta: snapshot_meta_from_proto(m.meta),
                offset: m.offset,
                data: m.data,
                done: m.done,
            }
        }
        Some(Body::InstallSnapshotResponse(m)) => MessageBody::InstallSnapshotResponse {
            snapshot_index: LogIndex(m.snapshot_index),
            next_offset: m.next_offset,
            done: m.done,
        },
        Some(Body::TimeoutNow(_)) => MessageBody::TimeoutNow,
    };
    if message.from == 0 || message.to == 0 {
        return Err(malformed("message", "from or to is node 0"));
    }
    Ok((
        message.group_id,
        Message {
            from: NodeId(message.from),
            to: NodeId(message.to),
            term: Term(message.term),
            body,
        },
        addresses,
    ))
}

/// Bytes a wire message costs, for batching limits.
pub fn message_size_bytes(message: &proto::RaftMessage) -> usize {
    message.encoded_len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_body() -> Vec<MessageBody> {
        let meta = SnapshotMeta {
            index: LogIndex(7),
            term: Term(3),
            membership: Membership {
                voters: [NodeId(1), NodeId(2)].into_iter().collect(),
                learners: [NodeId(4)].into_iter().collect(),
            },
        };
        let entries = vec![
            Entry {
                term: Term(2),
                index: LogIndex(5),
                kind: EntryKind::Noop,
                data: Vec::new(),
            },
            Entry {
                term: Term(2),
                index: LogIndex(6),
                kind: EntryKind::Command,
                data: b"cmd".to_vec(),
            },
            Entry {
                term: Term(3),
                index: LogIndex(7),
                kind: EntryKind::ConfigChange(ConfigChange::AddLearner(NodeId(4))),
                data: b"127.0.0.1:9".to_vec(),
            },
        ];
        vec![
            MessageBody::PreVote {
                last_log_index: LogIndex(3),
                last_log_term: Term(2),
            },
            MessageBody::PreVoteResponse { granted: true },
            MessageBody::RequestVote {
                last_log_index: LogIndex(3),
                last_log_term: Term(2),
                leadership_transfer: true,
            },
            MessageBody::RequestVoteResponse { granted: false },
            MessageBody::AppendEntries {
                prev_log_index: LogIndex(4),
                prev_log_term: Term(1),
                entries,
                leader_commit: LogIndex(5),
            },
            MessageBody::AppendEntriesResponse {
                success: false,
                match_index: LogIndex(0),
                reject_index: LogIndex(9),
                conflict_index: LogIndex(4),
                conflict_term: Some(Term(1)),
            },
            MessageBody::AppendEntriesResponse {
                success: true,
                match_index: LogIndex(9),
                reject_index: LogIndex(0),
                conflict_index: LogIndex(0),
                conflict_term: None,
            },
            MessageBody::Heartbeat {
                commit: LogIndex(4),
                read_round: 12,
            },
            MessageBody::HeartbeatResponse {
                read_round: 12,
                last_log_index: LogIndex(9),
            },
            MessageBody::InstallSnapshot {
                meta,
                offset: 1024,
                data: vec![1, 2, 3],
                done: true,
            },
            MessageBody::InstallSnapshotResponse {
                snapshot_index: LogIndex(7),
                next_offset: 1027,
                done: true,
            },
            MessageBody::TimeoutNow,
        ]
    }

    #[test]
    fn every_message_body_round_trips() {
        // Goal: each MessageBody variant survives encode + decode unchanged, with its group id.
        for body in every_body() {
            let message = Message {
                from: NodeId(1),
                to: NodeId(2),
                term: Term(3),
                body,
            };
            let bytes = message_to_proto(42, message.clone()).encode_to_vec();
            let decoded = proto::RaftMessage::decode(bytes.as_slice()).expect("decodes");
            let (group_id, back, _) = message_from_proto(decoded).expect("valid");
            assert_eq!(group_id, 42);
            assert_eq!(back, message);
        }
    }

    #[test]
    fn disk_records_round_trip() {
        // Goal: hard state, WAL entries, snapshot metadata and the bootstrap voters decode to
        // what was written.
        let hs = HardState {
            term: Term(9),
            vote: Some(NodeId(2)),
            commit: LogIndex(77),
        };
        assert_eq!(decode_hard_state(&encode_hard_state(&hs)), Ok(hs));
        let none = HardState::default();
        assert_eq!(decode_hard_state(&encode_hard_state(&none)), Ok(none));
        let MessageBody::AppendEntries { entries, .. } = &every_body()[4] else {
            unreachable!()
        };
        for entry in entries {
            assert_eq!(decode_entry(&encode_entry(entry)).as_ref(), Ok(entry));
        }
        let MessageBody::InstallSnapshot { meta, .. } = &every_body()[9] else {
            unreachable!()
        };
        let addresses: BTreeMap<NodeId, String> =
            [(NodeId(4), "127.0.0.1:9".to_string())].into_iter().collect();
        assert_eq!(
            decode_snapshot_record(&encode_snapshot_record(meta, &addresses)),
            Ok((meta.clone(), addresses))
        );
        let voters = vec![NodeId(1), NodeId(2), NodeId(3)];
        assert_eq!(decode_voters(&encode_voters(&voters)), Ok(voters));
    }
}
