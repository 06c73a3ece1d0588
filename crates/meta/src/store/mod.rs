//! The coordination store's replicated state machine: MVCC keys, transactions, leases,
//! exactly-once sessions and alarms. Deterministic and free of I/O: the runtime feeds it
//! committed [`Command`]s in log order and it answers [`CommandReply`]s; servers read it
//! through the query methods in the group's loop.
//!
//! Rules every replica follows so that all agree (checked by the divergence detector):
//! 1. `apply` depends only on the state and the command: no clock, no randomness, no
//!    configuration that may differ between members (limits are compile-time constants).
//! 2. Time is the leader's business: leases hold their TTL and a checkpointed remaining time;
//!    the leader decides expiry and proposes [`proto::LeaseExpire`] with its term. An expiry
//!    from a term older than the last [`proto::LeaderEpoch`] is void, so a deposed leader
//!    never revokes.
//! 3. A command with a session (client id, sequence number) applies at most once: a retry
//!    gets the recorded reply.

mod mvcc;
mod session;
mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use prost::Message;
use shoal_raft::LogIndex;
use shoal_raft_runtime::StateMachine;

use crate::limits::*;
use crate::proto::{
    self, command, command_reply, compare, request_op, response_op, Command, CommandReply, ErrorCode,
    ResponseHeader,
};
use mvcc::Mvcc;
pub use mvcc::{prefix_end, Change, KeyRange, RangeEnd};
use session::{SessionCheck, Sessions};

/// What the server learns after each apply (to wake watchers and track the size quota).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AppliedInfo {
    pub applied_index: u64,
    pub revision: i64,
    pub compact_revision: i64,
    pub size_bytes: i64,
    /// Bumped whenever the alarm list changes.
    pub n_alarm_changes: u64,
    /// Bumped whenever a lease is granted or removed (the leader then resyncs its deadlines).
    pub n_lease_changes: u64,
}

type Observer = Box<dyn FnMut(AppliedInfo) + Send>;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Lease {
    pub ttl_seconds: i64,
    /// Remaining time at the last checkpoint, -1 when never checkpointed.
    pub remaining_ms: i64,
    pub keys: BTreeSet<Vec<u8>>,
}

/// The coordination store's state machine.
#[derive(Default)]
pub struct MetaStore {
    mvcc: Mvcc,
    leases: BTreeMap<i64, Lease>,
    sessions: Sessions,
    /// The newest leader term that announced itself; expiries from older terms are void.
    epoch_term: u64,
    alarms: BTreeMap<u64, proto::AlarmMember>,
    n_alarm_changes: u64,
    n_lease_changes: u64,
    applied_index: u64,
    observer: Option<Observer>,
    /// Test-only fault: store every put's value reversed (a replica that diverges).
    fault_reverse_values: bool,
}

pub fn error(code: ErrorCode, message: impl Into<String>) -> proto::Error {
    proto::Error {
        code: code as i32,
        message: message.into(),
        leader_id: 0,
        leader_addr: String::new(),
    }
}

fn reply_error(code: ErrorCode, message: impl Into<String>) -> CommandReply {
    CommandReply {
        reply: Some(command_reply::Reply::Error(error(code, message))),
    }
}

type OpResult<T> = Result<T, proto::Error>;

/// Checks a key and value against the limits (deterministic: the limits are constants).
pub fn check_key_value(key: &[u8], value_len: usize) -> OpResult<()> {
    if key.is_empty() {
        return Err(error(ErrorCode::InvalidArgument, "the key is empty"));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(error(
            ErrorCode::TooLarge,
            format!("the key is {} bytes; the limit is {KEY_BYTES_MAX}", key.len()),
        ));
    }
    if value_len > VALUE_BYTES_MAX {
        return Err(error(
            ErrorCode::TooLarge,
            format!("the value is {value_len} bytes; the limit is {VALUE_BYTES_MAX}"),
        ));
    }
    Ok(())
}

/// Refuses an encoded request of `n_bytes` over `limit` bytes (TOO_LARGE).
pub fn check_request_bytes(n_bytes: usize, limit: usize) -> Result<(), proto::Error> {
    if n_bytes > limit {
        return Err(error(
            ErrorCode::TooLarge,
            format!("the request is {n_bytes} bytes; the limit is {limit}"),
        ));
    }
    Ok(())
}

impl MetaStore {
    pub fn new() -> MetaStore {
        MetaStore::default()
    }

    /// A store that silently diverges from its peers: every value it stores is reversed.
    /// Only for testing divergence detection.
    #[doc(hidden)]
    pub fn with_divergence_fault() -> MetaStore {
        MetaStore {
            fault_reverse_values: true,
            ..MetaStore::default()
        }
    }

    /// Calls `observer` after every apply and restore (in the group's loop: keep it quick).
    pub fn set_observer(&mut self, observer: impl FnMut(AppliedInfo) + Send + 'static) {
        self.observer = Some(Box::new(observer));
        self.notify();
    }

    pub fn info(&self) -> AppliedInfo {
        AppliedInfo {
            applied_index: self.applied_index,
            revision: self.mvcc.current_revision(),
            compact_revision: self.mvcc.compact_revision(),
            size_bytes: self.mvcc.size_bytes(),
            n_alarm_changes: self.n_alarm_changes,
            n_lease_changes: self.n_lease_changes,
        }
    }

    fn notify(&mut self) {
        let info = self.info();
        if let Some(observer) = self.observer.as_mut() {
            observer(info);
        }
    }

    fn header(&self) -> ResponseHeader {
        ResponseHeader {
            revision: self.mvcc.current_revision(),
            raft_index: self.applied_index,
            member_id: 0,
            raft_term: 0,
        }
    }

    pub fn revision(&self) -> i64 {
        self.mvcc.current_revision()
    }

    pub fn compact_revision(&self) -> i64 {
        self.mvcc.compact_revision()
    }

    pub fn size_bytes(&self) -> i64 {
        self.mvcc.size_bytes()
    }

    pub fn n_keys(&self) -> i64 {
        self.mvcc.n_live_keys()
    }

    pub fn n_leases(&self) -> usize {
        self.leases.len()
    }

    pub fn epoch_term(&self) -> u64 {
        self.epoch_term
    }

    pub fn alarms(&self) -> Vec<proto::AlarmMember> {
        self.alarms.values().cloned().collect()
    }

    /// The alarm raised against `member_id`, if any.
    pub fn alarm_for(&self, member_id: u64) -> Option<&proto::AlarmMember> {
        self.alarms.get(&member_id)
    }

    // ----- apply -----

    /// Applies one encoded [`Command`] (what [`StateMachine::apply`] does, typed).
    pub fn apply_command(&mut self, index: u64, command: &[u8]) -> CommandReply {
        self.applied_index = index;
        let reply = match Command::decode(command) {
            Err(e) => reply_error(ErrorCode::InvalidArgument, format!("malformed command: {e}")),
            Ok(command) => self.apply_decoded(index, command),
        };
        self.mvcc.compaction_step();
        self.notify();
        reply
    }

    fn apply_decoded(&mut self, index: u64, command: Command) -> CommandReply {
        let session = command.session.filter(|s| s.client_id != 0);
        if let Some(session) = &session {
            match self.sessions.check(session, index) {
                SessionCheck::New => {}
                SessionCheck::Duplicate(reply) => return reply,
                SessionCheck::Expired(message) => return reply_error(ErrorCode::SessionExpired, message),
            }
        }
        let reply = match command.op {
            None => reply_error(ErrorCode::InvalidArgument, "the command has no operation"),
            Some(op) => match self.apply_op(index, op) {
                Ok(reply) => CommandReply { reply: Some(reply) },
                Err(e) => CommandReply {
                    reply: Some(command_reply::Reply::Error(e)),
                },
            },
        };
        if let Some(session) = &session {
            self.sessions.record(session, index, reply.clone());
        }
        reply
    }

    fn apply_op(&mut self, index: u64, op: command::Op) -> OpResult<command_reply::Reply> {
        use command_reply::Reply;
        match op {
            command::Op::Put(put) => {
                self.check_put(&put, &BTreeSet::new())?;
                let revision = self.mvcc.next_revision();
                let response = self.do_put(revision, 0, put);
                self.mvcc.end_revision();
                Ok(Reply::Put(proto::PutResponse {
                    header: Some(self.header()),
                    ..response
                }))
            }
            command::Op::DeleteRange(delete) => {
                let revision = self.mvcc.next_revision();
                let response = self.do_delete(revision, &mut 0, delete);
                self.mvcc.end_revision();
                Ok(Reply::DeleteRange(proto::DeleteRangeResponse {
                    header: Some(self.header()),
                    ..response
                }))
            }
            command::Op::Txn(txn) => self.apply_txn(txn).map(Reply::Txn),
            command::Op::Compact(compact) => {
                if compact.revision <= self.mvcc.compact_revision() {
                    return Err(error(
                        ErrorCode::Compacted,
                        format!(
                            "revision {} is already compacted (compacted up to {})",
                            compact.revision,
                            self.mvcc.compact_revision()
                        ),
                    ));
                }
                if compact.revision > self.mvcc.current_revision() {
                    return Err(error(
                        ErrorCode::FutureRevision,
                        format!(
                            "revision {} is in the future (the current revision is {})",
                            compact.revision,
                            self.mvcc.current_revision()
                        ),
                    ));
                }
                self.mvcc.compact(compact.revision);
                Ok(Reply::Compact(proto::CompactResponse {
                    header: Some(self.header()),
                }))
            }
            command::Op::LeaseGrant(grant) => {
                if grant.ttl_seconds < LEASE_TTL_SECONDS_MIN || grant.ttl_seconds > LEASE_TTL_SECONDS_MAX {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        format!(
                            "lease TTL {} s is out of range: it must be {LEASE_TTL_SECONDS_MIN}..={LEASE_TTL_SECONDS_MAX} s",
                            grant.ttl_seconds
                        ),
                    ));
                }
                if self.leases.len() >= LEASES_MAX {
                    return Err(error(
                        ErrorCode::TooManyRequests,
                        format!("{LEASES_MAX} leases exist, the limit; revoke unused ones"),
                    ));
                }
                let id = if grant.id != 0 {
                    if grant.id < 0 {
                        return Err(error(ErrorCode::InvalidArgument, "lease ids are positive"));
                    }
                    grant.id
                } else {
                    // The log index is unique and the same on every replica.
                    index as i64
                };
                if self.leases.contains_key(&id) {
                    return Err(error(
                        ErrorCode::LeaseExists,
                        format!("lease {id} already exists"),
                    ));
                }
                self.n_lease_changes += 1;
                self.leases.insert(
                    id,
                    Lease {
                        ttl_seconds: grant.ttl_seconds,
                        remaining_ms: -1,
                        keys: BTreeSet::new(),
                    },
                );
                Ok(Reply::LeaseGrant(proto::LeaseGrantResponse {
                    header: Some(self.header()),
                    id,
                    ttl_seconds: grant.ttl_seconds,
                }))
            }
            command::Op::LeaseRevoke(revoke) => {
                if !self.leases.contains_key(&revoke.id) {
                    return Err(lease_not_found(revoke.id));
                }
                let n_keys_deleted = self.revoke_leases(&[revoke.id]);
                Ok(Reply::LeaseRevoke(proto::LeaseRevokeResponse {
                    header: Some(self.header()),
                    n_keys_deleted,
                }))
            }
            command::Op::LeaseExpire(expire) => {
                if expire.term < self.epoch_term {
                    return Err(error(
                        ErrorCode::NotLeader,
                        format!(
                            "expiry from the leader of term {} ignored: term {} has a newer leader",
                            expire.term, self.epoch_term
                        ),
                    ));
                }
                let ids: Vec<i64> = expire
                    .ids
                    .into_iter()
                    .filter(|id| self.leases.contains_key(id))
                    .collect();
                let n_keys_deleted = self.revoke_leases(&ids);
                Ok(Reply::LeaseRevoke(proto::LeaseRevokeResponse {
                    header: Some(self.header()),
                    n_keys_deleted,
                }))
            }
            command::Op::LeaseCheckpoints(checkpoints) => {
                for checkpoint in checkpoints.checkpoints {
                    if let Some(lease) = self.leases.get_mut(&checkpoint.id) {
                        lease.remaining_ms = checkpoint.remaining_ms.max(0);
                    }
                }
                Ok(Reply::Done(self.header()))
            }
            command::Op::LeaderEpoch(epoch) => {
                self.epoch_term = self.epoch_term.max(epoch.term);
                Ok(Reply::Done(self.header()))
            }
            command::Op::Alarm(alarm) => {
                if alarm.alarm == proto::AlarmType::None as i32 {
                    self.alarms.remove(&alarm.member_id);
                } else {
                    self.alarms.insert(alarm.member_id, alarm);
                }
                self.n_alarm_changes += 1;
                Ok(Reply::Done(self.header()))
            }
        }
    }

    /// Deletes every key of `ids` and the leases, at one revision; returns the keys deleted.
    fn revoke_leases(&mut self, ids: &[i64]) -> i64 {
        let revision = self.mvcc.next_revision();
        let mut sub = 0u32;
        let mut n_deleted = 0;
        for id in ids {
            let Some(lease) = self.leases.remove(id) else {
                continue;
            };
            self.n_lease_changes += 1;
            for key in lease.keys {
                if self.mvcc.delete(revision, sub, &key).is_some() {
                    sub += 1;
                    n_deleted += 1;
                }
            }
        }
        self.mvcc.end_revision();
        n_deleted
    }

    /// Validates a put before anything changes. `written` holds keys already written by the
    /// same transaction (a key is written at most once per revision).
    fn check_put(&self, put: &proto::PutRequest, written: &BTreeSet<Vec<u8>>) -> OpResult<()> {
        check_key_value(&put.key, put.value.len())?;
        if put.lease != 0 && !self.leases.contains_key(&put.lease) {
            return Err(lease_not_found(put.lease));
        }
        if put.sequential && put.ignore_value {
            return Err(error(
                ErrorCode::InvalidArgument,
                "a sequential put creates a new key; it cannot keep a current value",
            ));
        }
        if put.ignore_value && self.mvcc.get(&put.key).is_none() {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!(
                    "ignore_value on key {:?}, which does not exist",
                    String::from_utf8_lossy(&put.key)
                ),
            ));
        }
        if !put.sequential && written.contains(&put.key) {
            return Err(error(
                ErrorCode::InvalidArgument,
                format!(
                    "key {:?} is written twice in one transaction",
                    String::from_utf8_lossy(&put.key)
                ),
            ));
        }
        Ok(())
    }

    fn do_put(&mut self, revision: i64, sub: u32, put: proto::PutRequest) -> proto::PutResponse {
        let key = if put.sequential {
            let mut key = put.key;
            key.extend_from_slice(format!("{revision:020}").as_bytes());
            key
        } else {
            put.key
        };
        let mut value = if put.ignore_value { None } else { Some(put.value) };
        if self.fault_reverse_values {
            let mut reversed =
                value.unwrap_or_else(|| self.mvcc.get(&key).map(|kv| kv.value.clone()).unwrap_or_default());
            reversed.reverse();
            value = Some(reversed);
        }
        let (prev, prev_lease) = self.mvcc.put(revision, sub, &key, value, put.lease, put.prev_kv);
        if prev_lease != 0 && prev_lease != put.lease {
            if let Some(lease) = self.leases.get_mut(&prev_lease) {
                lease.keys.remove(&key);
            }
        }
        if put.lease != 0 {
            if let Some(lease) = self.leases.get_mut(&put.lease) {
                lease.keys.insert(key.clone());
            }
        }
        proto::PutResponse {
            header: None,
            prev_kv: prev,
            key,
        }
    }

    fn do_delete(
        &mut self,
        revision: i64,
        sub: &mut u32,
        delete: proto::DeleteRangeRequest,
    ) -> proto::DeleteRangeResponse {
        let range = KeyRange::new(&delete.key, &delete.range_end);
        let mut prev_kvs = Vec::new();
        let mut deleted = 0;
        for key in self.mvcc.live_keys_in(&range) {
            if let Some(prev) = self.mvcc.delete(revision, *sub, &key) {
                *sub += 1;
                deleted += 1;
                if prev.lease != 0 {
                    if let Some(lease) = self.leases.get_mut(&prev.lease) {
                        lease.keys.remove(&key);
                    }
                }
                if delete.prev_kv {
                    prev_kvs.push(prev);
                }
            }
        }
        proto::DeleteRangeResponse {
            header: None,
            deleted,
            prev_kvs,
        }
    }

    fn apply_txn(&mut self, txn: proto::TxnRequest) -> OpResult<proto::TxnResponse> {
        let n_ops = txn.compare.len() + txn.success.len() + txn.failure.len();
        if n_ops > TXN_OPS_MAX {
            return Err(error(
                ErrorCode::TooLarge,
                format!("the transaction has {n_ops} compares and operations; the limit is {TXN_OPS_MAX}"),
            ));
        }
        let succeeded = txn.compare.iter().all(|c| self.compare_holds(c));
        let ops = if succeeded { txn.success } else { txn.failure };
        // Validate the whole branch first: a transaction applies entirely or not at all.
        let mut written = BTreeSet::new();
        let mut deleted_ranges = Vec::new();
        for op in &ops {
            match &op.request {
                Some(request_op::Request::Put(put)) => {
                    self.check_put(put, &written)?;
                    if deleted_ranges.iter().any(|r: &KeyRange| r.contains(&put.key)) {
                        return Err(error(
                            ErrorCode::InvalidArgument,
                            format!(
                                "key {:?} is both deleted and written in one transaction",
                                String::from_utf8_lossy(&put.key)
                            ),
                        ));
                    }
                    written.insert(put.key.clone());
                }
                Some(request_op::Request::DeleteRange(delete)) => {
                    let range = KeyRange::new(&delete.key, &delete.range_end);
                    if written.iter().any(|k| range.contains(k)) {
                        return Err(error(
                            ErrorCode::InvalidArgument,
                            "a transaction deletes a key it also writes",
                        ));
                    }
                    deleted_ranges.push(range);
                }
                Some(request_op::Request::Range(range)) => check_range_request(range)?,
                None => {
                    return Err(error(
                        ErrorCode::InvalidArgument,
                        "a transaction operation is empty",
                    ))
                }
            }
        }
        let revision = self.mvcc.next_revision();
        let mut sub = 0u32;
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match op.request.expect("validated above") {
                request_op::Request::Put(put) => {
                    let response = self.do_put(revision, sub, put);
                    sub += 1;
                    response_op::Response::Put(response)
                }
                request_op::Request::DeleteRange(delete) => {
                    response_op::Response::DeleteRange(self.do_delete(revision, &mut sub, delete))
                }
                request_op::Request::Range(range) => {
                    // Reads inside a transaction see its earlier writes.
                    let mut range = range;
                    range.revision = 0;
                    let response = self.range_at(&range, revision, RANGE_RESPONSE_BYTES_MAX)?;
                    response_op::Response::Range(response)
                }
            };
            responses.push(proto::ResponseOp {
                response: Some(response),
            });
        }
        self.mvcc.end_revision();
        let header = self.header();
        for response in &mut responses {
            match response.response.as_mut() {
                Some(response_op::Response::Put(r)) => r.header = Some(header),
                Some(response_op::Response::DeleteRange(r)) => r.header = Some(header),
                Some(response_op::Response::Range(r)) => r.header = Some(header),
                None => {}
            }
        }
        Ok(proto::TxnResponse {
            header: Some(header),
            succeeded,
            responses,
        })
    }

    fn compare_holds(&self, compare: &proto::Compare) -> bool {
        use std::cmp::Ordering;
        let kv = self.mvcc.get(&compare.key);
        let ordering = match compare.target_union.as_ref() {
            None => return false,
            Some(compare::TargetUnion::Value(expected)) => match kv {
                // A missing key compares false against any value (etcd semantics).
                None => return false,
                Some(kv) => kv.value.as_slice().cmp(expected.as_slice()),
            },
            Some(compare::TargetUnion::Version(n)) => kv.map_or(0, |kv| kv.version).cmp(n),
            Some(compare::TargetUnion::CreateRevision(n)) => kv.map_or(0, |kv| kv.create_revision).cmp(n),
            Some(compare::TargetUnion::ModRevision(n)) => kv.map_or(0, |kv| kv.mod_revision).cmp(n),
            Some(compare::TargetUnion::Lease(n)) => kv.map_or(0, |kv| kv.lease).cmp(n),
        };
        match compare::Result::try_from(compare.result).unwrap_or(compare::Result::Equal) {
            compare::Result::Equal => ordering == Ordering::Equal,
            compare::Result::NotEqual => ordering != Ordering::Equal,
            compare::Result::Greater => ordering == Ordering::Greater,
            compare::Result::Less => ordering == Ordering::Less,
        }
    }

    // ----- reads -----

    /// Serves a range read at `request.revision` (0: now), paginated by `limit` and by
    /// `bytes_max` (the response stops before the key that would pass it, but always holds
    /// at least one key).
    pub fn range(&self, request: &proto::RangeRequest, bytes_max: usize) -> OpResult<proto::RangeResponse> {
        check_range_request(request)?;
        let revision = if request.revision == 0 {
            self.mvcc.current_revision()
        } else {
            request.revision
        };
        if revision > self.mvcc.current_revision() {
            return Err(error(
                ErrorCode::FutureRevision,
                format!(
                    "revision {revision} is in the future (the current revision is {})",
                    self.mvcc.current_revision()
                ),
            ));
        }
        if revision < self.mvcc.compact_revision() {
            return Err(error(
                ErrorCode::Compacted,
                format!(
                    "revision {revision} was compacted (the oldest readable is {})",
                    self.mvcc.compact_revision()
                ),
            ));
        }
        let mut response = self.range_at(request, revision, bytes_max)?;
        response.header = Some(ResponseHeader {
            revision: self.mvcc.current_revision(),
            ..self.header()
        });
        Ok(response)
    }

    fn range_at(
        &self,
        request: &proto::RangeRequest,
        revision: i64,
        bytes_max: usize,
    ) -> OpResult<proto::RangeResponse> {
        let range = KeyRange::new(&request.key, &request.range_end);
        let bytes_max = match request.max_bytes {
            n if n > 0 => (n as usize).min(bytes_max),
            _ => bytes_max,
        };
        let limit = if request.limit > 0 {
            request.limit as usize
        } else {
            usize::MAX
        };
        let mut kvs = Vec::new();
        let mut bytes = 0usize;
        let mut count = 0i64;
        let mut more = false;
        self.mvcc.scan_at(&range, revision, |kv| {
            count += 1;
            if request.count_only {
                return true;
            }
            let size = kv.key.len() + if request.keys_only { 0 } else { kv.value.len() } + 48;
            if kvs.len() >= limit || (!kvs.is_empty() && bytes + size > bytes_max) {
                more = true;
                // Keep counting only for small ranges: counting is a full scan.
                return count < RANGE_COUNT_SCAN_MAX;
            }
            bytes += size;
            let mut kv = kv.clone();
            if request.keys_only {
                kv.value.clear();
            }
            kvs.push(kv);
            true
        });
        Ok(proto::RangeResponse {
            header: None,
            kvs,
            more,
            count,
        })
    }

    /// Changes for a watcher: revisions [from, to] of keys in `range`, whole revisions, about
    /// `bytes_max` at most. Errors when `from` was compacted.
    pub fn changes(&self, range: &KeyRange, from: i64, bytes_max: usize) -> OpResult<(Vec<Change>, i64)> {
        if from <= self.mvcc.compact_revision() {
            return Err(error(
                ErrorCode::Compacted,
                format!(
                    "revision {from} was compacted; watch from revision {} or later",
                    self.mvcc.compact_revision() + 1
                ),
            ));
        }
        Ok(self
            .mvcc
            .changes(range, from, self.mvcc.current_revision(), bytes_max))
    }

    pub fn hash_at(&self, revision: i64) -> OpResult<(u64, i64)> {
        let revision = if revision == 0 {
            self.mvcc.current_revision()
        } else {
            revision
        };
        if revision > self.mvcc.current_revision() {
            return Err(error(
                ErrorCode::FutureRevision,
                format!("revision {revision} is in the future"),
            ));
        }
        if revision < self.mvcc.compact_revision() {
            return Err(error(
                ErrorCode::Compacted,
                format!("revision {revision} was compacted"),
            ));
        }
        Ok((self.mvcc.hash_at(revision), revision))
    }

    /// Every lease id with its TTL and checkpointed remaining time.
    pub fn leases(&self) -> Vec<(i64, i64, i64)> {
        self.leases
            .iter()
            .map(|(&id, lease)| (id, lease.ttl_seconds, lease.remaining_ms))
            .collect()
    }

    pub fn lease_status(&self, id: i64, with_keys: bool) -> OpResult<proto::LeaseStatus> {
        let lease = self.leases.get(&id).ok_or_else(|| lease_not_found(id))?;
        Ok(proto::LeaseStatus {
            id,
            granted_ttl_seconds: lease.ttl_seconds,
            remaining_ms: -1,
            keys: if with_keys {
                lease.keys.iter().take(LEASE_KEYS_LISTED_MAX).cloned().collect()
            } else {
                Vec::new()
            },
            n_keys: lease.keys.len() as i64,
        })
    }

    /// The granted TTL of lease `id`, if it exists.
    pub fn lease_ttl_seconds(&self, id: i64) -> Option<i64> {
        self.leases.get(&id).map(|lease| lease.ttl_seconds)
    }

    pub fn has_lease(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    pub fn header_now(&self) -> ResponseHeader {
        self.header()
    }
}

/// An encoded put command without a session: what raw-Raft benchmarks and tests propose.
pub fn put_command(key: &[u8], value: &[u8]) -> Vec<u8> {
    Command {
        session: None,
        op: Some(command::Op::Put(proto::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            prev_kv: true,
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

pub(crate) fn lease_not_found(id: i64) -> proto::Error {
    error(
        ErrorCode::LeaseNotFound,
        format!("lease {id} does not exist (expired or revoked?)"),
    )
}

fn check_range_request(request: &proto::RangeRequest) -> OpResult<()> {
    if request.key.is_empty() && request.range_end.is_empty() {
        return Err(error(ErrorCode::InvalidArgument, "the key is empty"));
    }
    if request.key.len() > KEY_BYTES_MAX || request.range_end.len() > KEY_BYTES_MAX {
        return Err(error(
            ErrorCode::TooLarge,
            format!("keys are limited to {KEY_BYTES_MAX} bytes"),
        ));
    }
    if request.limit < 0 || request.revision < 0 {
        return Err(error(
            ErrorCode::InvalidArgument,
            "limit and revision cannot be negative",
        ));
    }
    Ok(())
}

impl MetaStore {
    /// The revision held by the snapshot whose data starts with `first_bytes` (its header
    /// record, at most a few KB).
    pub fn snapshot_revision(first_bytes: &[u8]) -> io::Result<i64> {
        snapshot::revision_of(first_bytes)
    }
}

impl StateMachine for MetaStore {
    fn apply(&mut self, index: LogIndex, command: &[u8]) -> Vec<u8> {
        self.apply_command(index.0, command).encode_to_vec()
    }

    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        snapshot::write(self, out)
    }

    /// The byte-level read of the runtime's `Read` RPC: an encoded [`proto::RangeRequest`],
    /// answered by an encoded [`CommandReply`] (`range` or `error`).
    fn query(&self, query: &[u8]) -> Vec<u8> {
        let reply = match proto::RangeRequest::decode(query) {
            Err(e) => command_reply::Reply::Error(error(
                ErrorCode::InvalidArgument,
                format!("malformed query: {e}"),
            )),
            Ok(request) => match self.range(&request, RANGE_RESPONSE_BYTES_MAX) {
                Ok(response) => command_reply::Reply::Range(response),
                Err(e) => command_reply::Reply::Error(e),
            },
        };
        CommandReply { reply: Some(reply) }.encode_to_vec()
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        let observer = self.observer.take();
        let fault_reverse_values = self.fault_reverse_values;
        *self = snapshot::read(input)?;
        self.observer = observer;
        self.fault_reverse_values = fault_reverse_values;
        self.notify();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
