//! The state machine's snapshot format: a header, then one length-delimited protobuf record
//! per key (with its retained versions), per lease, per session and per alarm, then a
//! trailer with the record count. Streamed in both directions, so a snapshot never needs a
//! second copy of the store in memory.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufReader, BufWriter, Read, Write};

use prost::Message;

use super::mvcc::{Mvcc, Version};
use super::session::{SessionState, Sessions};
use super::{Lease, MetaStore};
use crate::proto::{AlarmMember, CommandReply, KeyValue};

const FORMAT_VERSION: u32 = 1;
/// Largest record accepted when reading (a key with many large versions can be big; this
/// bounds what a corrupt length field can make us allocate).
const RECORD_BYTES_MAX: usize = 1 << 30;

#[derive(Clone, PartialEq, Message)]
struct Header {
    #[prost(uint32, tag = "1")]
    format_version: u32,
    #[prost(int64, tag = "2")]
    current_revision: i64,
    #[prost(int64, tag = "3")]
    compact_revision: i64,
    #[prost(uint64, tag = "4")]
    epoch_term: u64,
    #[prost(uint64, tag = "5")]
    applied_index: u64,
    #[prost(uint64, tag = "6")]
    n_alarm_changes: u64,
    #[prost(uint64, repeated, tag = "7")]
    evicted_sessions: Vec<u64>,
    #[prost(uint64, tag = "8")]
    n_lease_changes: u64,
}

#[derive(Clone, PartialEq, Message)]
struct SnapshotVersion {
    #[prost(int64, tag = "1")]
    mod_revision: i64,
    #[prost(uint32, tag = "2")]
    sub: u32,
    #[prost(message, optional, tag = "3")]
    kv: Option<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct SnapshotReply {
    #[prost(uint64, tag = "1")]
    seq: u64,
    #[prost(message, optional, tag = "2")]
    reply: Option<CommandReply>,
}

#[derive(Clone, PartialEq, Message)]
struct Record {
    // A key with its versions.
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(message, repeated, tag = "2")]
    versions: Vec<SnapshotVersion>,
    // A lease.
    #[prost(int64, tag = "3")]
    lease_id: i64,
    #[prost(int64, tag = "4")]
    lease_ttl_seconds: i64,
    #[prost(int64, tag = "5")]
    lease_remaining_ms: i64,
    #[prost(bytes = "vec", repeated, tag = "6")]
    lease_keys: Vec<Vec<u8>>,
    // A session.
    #[prost(uint64, tag = "7")]
    client_id: u64,
    #[prost(uint64, tag = "8")]
    ack_below: u64,
    #[prost(uint64, tag = "9")]
    last_used_index: u64,
    #[prost(message, repeated, tag = "10")]
    replies: Vec<SnapshotReply>,
    // An alarm.
    #[prost(message, optional, tag = "11")]
    alarm: Option<AlarmMember>,
    // The trailer: records written before it.
    #[prost(uint64, tag = "12")]
    n_records: u64,
    #[prost(uint32, tag = "13")]
    kind: u32,
}

const KIND_KEY: u32 = 1;
const KIND_LEASE: u32 = 2;
const KIND_SESSION: u32 = 3;
const KIND_ALARM: u32 = 4;
const KIND_TRAILER: u32 = 5;

fn write_record(out: &mut impl Write, message: &impl Message) -> io::Result<()> {
    let bytes = message.encode_length_delimited_to_vec();
    out.write_all(&bytes)
}

fn read_record<M: Message + Default>(input: &mut impl Read) -> io::Result<M> {
    let mut len: u64 = 0;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8; 1];
        input.read_exact(&mut byte)?;
        len |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    let len = usize::try_from(len).map_err(|_| corrupt("record length overflows"))?;
    if len > RECORD_BYTES_MAX {
        return Err(corrupt(&format!("record of {len} bytes is over the limit")));
    }
    let mut buf = vec![0u8; len];
    input.read_exact(&mut buf)?;
    M::decode(buf.as_slice()).map_err(|e| corrupt(&format!("undecodable record: {e}")))
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt meta store snapshot: {what}"),
    )
}

pub(super) fn write(store: &MetaStore, out: &mut dyn Write) -> io::Result<()> {
    let mut out = BufWriter::new(out);
    write_record(
        &mut out,
        &Header {
            format_version: FORMAT_VERSION,
            current_revision: store.mvcc.current_revision(),
            compact_revision: store.mvcc.compact_revision(),
            epoch_term: store.epoch_term,
            applied_index: store.applied_index,
            n_alarm_changes: store.n_alarm_changes,
            n_lease_changes: store.n_lease_changes,
            evicted_sessions: store.sessions.evicted().copied().collect(),
        },
    )?;
    let mut n_records = 0u64;
    for (key, versions) in store.mvcc.iter_versions() {
        write_record(
            &mut out,
            &Record {
                kind: KIND_KEY,
                key: key.clone(),
                versions: versions
                    .iter()
                    .map(|v| SnapshotVersion {
                        mod_revision: v.mod_revision,
                        sub: v.sub,
                        kv: v.kv.clone(),
                    })
                    .collect(),
                ..Record::default()
            },
        )?;
        n_records += 1;
    }
    for (&id, lease) in &store.leases {
        write_record(
            &mut out,
            &Record {
                kind: KIND_LEASE,
                lease_id: id,
                lease_ttl_seconds: lease.ttl_seconds,
                lease_remaining_ms: lease.remaining_ms,
                lease_keys: lease.keys.iter().cloned().collect(),
                ..Record::default()
            },
        )?;
        n_records += 1;
    }
    let mut sessions: Vec<_> = store.sessions.iter().collect();
    sessions.sort_by_key(|(id, _)| **id);
    for (&client_id, state) in sessions {
        write_record(
            &mut out,
            &Record {
                kind: KIND_SESSION,
                client_id,
                ack_below: state.ack_below,
                last_used_index: state.last_used_index,
                replies: state
                    .replies
                    .iter()
                    .map(|(&seq, reply)| SnapshotReply {
                        seq,
                        reply: Some(reply.clone()),
                    })
                    .collect(),
                ..Record::default()
            },
        )?;
        n_records += 1;
    }
    for alarm in store.alarms.values() {
        write_record(
            &mut out,
            &Record {
                kind: KIND_ALARM,
                alarm: Some(alarm.clone()),
                ..Record::default()
            },
        )?;
        n_records += 1;
    }
    write_record(
        &mut out,
        &Record {
            kind: KIND_TRAILER,
            n_records,
            ..Record::default()
        },
    )?;
    out.flush()
}

/// The revision a snapshot holds, from its first bytes (the header record).
pub(super) fn revision_of(first_bytes: &[u8]) -> io::Result<i64> {
    let header: Header = read_record(&mut &first_bytes[..])?;
    Ok(header.current_revision)
}

pub(super) fn read(input: &mut dyn Read) -> io::Result<MetaStore> {
    let mut input = BufReader::new(input);
    let header: Header = read_record(&mut input)?;
    if header.format_version != FORMAT_VERSION {
        return Err(corrupt(&format!(
            "format version {} is not supported (this build reads {FORMAT_VERSION})",
            header.format_version
        )));
    }
    let mut keys = BTreeMap::new();
    let mut leases = BTreeMap::new();
    let mut sessions = Sessions::default();
    let mut alarms = BTreeMap::new();
    let mut n_records = 0u64;
    loop {
        let record: Record = read_record(&mut input)?;
        match record.kind {
            KIND_KEY => {
                let versions: Vec<Version> = record
                    .versions
                    .into_iter()
                    .map(|v| Version {
                        mod_revision: v.mod_revision,
                        sub: v.sub,
                        kv: v.kv,
                    })
                    .collect();
                if !versions.windows(2).all(|w| w[0].mod_revision < w[1].mod_revision) {
                    return Err(corrupt("a key's versions are out of order"));
                }
                keys.insert(record.key, versions);
            }
            KIND_LEASE => {
                leases.insert(
                    record.lease_id,
                    Lease {
                        ttl_seconds: record.lease_ttl_seconds,
                        remaining_ms: record.lease_remaining_ms,
                        keys: record.lease_keys.into_iter().collect::<BTreeSet<_>>(),
                    },
                );
            }
            KIND_SESSION => sessions.insert(
                record.client_id,
                SessionState {
                    replies: record
                        .replies
                        .into_iter()
                        .map(|r| (r.seq, r.reply.unwrap_or_default()))
                        .collect(),
                    ack_below: record.ack_below,
                    last_used_index: record.last_used_index,
                },
            ),
            KIND_ALARM => {
                let alarm = record
                    .alarm
                    .ok_or_else(|| corrupt("an alarm record without an alarm"))?;
                alarms.insert(alarm.member_id, alarm);
            }
            KIND_TRAILER => {
                if record.n_records != n_records {
                    return Err(corrupt(&format!(
                        "the trailer counts {} records but {n_records} were read",
                        record.n_records
                    )));
                }
                break;
            }
            other => return Err(corrupt(&format!("unknown record kind {other}"))),
        }
        n_records += 1;
    }
    sessions.restore_evicted(header.evicted_sessions);
    Ok(MetaStore {
        mvcc: Mvcc::from_parts(keys, header.current_revision, header.compact_revision),
        leases,
        sessions,
        epoch_term: header.epoch_term,
        alarms,
        n_alarm_changes: header.n_alarm_changes,
        n_lease_changes: header.n_lease_changes,
        applied_index: header.applied_index,
        observer: None,
        fault_reverse_values: false,
    })
}
