//! State machine unit tests: MVCC, transactions, watches' change feed, leases, sessions,
//! compaction and snapshots.

use prost::Message;

use super::*;
use crate::limits;
use crate::proto::{command, command_reply, Command, CommandReply, KeyValue, Session};

fn put(key: &str, value: &str) -> command::Op {
    command::Op::Put(proto::PutRequest {
        key: key.into(),
        value: value.into(),
        prev_kv: true,
        ..Default::default()
    })
}

fn put_lease(key: &str, value: &str, lease: i64) -> command::Op {
    command::Op::Put(proto::PutRequest {
        key: key.into(),
        value: value.into(),
        lease,
        ..Default::default()
    })
}

fn del(key: &str, range_end: &[u8]) -> command::Op {
    command::Op::DeleteRange(proto::DeleteRangeRequest {
        key: key.into(),
        range_end: range_end.to_vec(),
        prev_kv: true,
    })
}

struct Harness {
    store: MetaStore,
    index: u64,
}

impl Harness {
    fn new() -> Harness {
        Harness {
            store: MetaStore::new(),
            index: 0,
        }
    }

    fn apply_with(&mut self, session: Option<Session>, op: command::Op) -> CommandReply {
        self.index += 1;
        let command = Command {
            session,
            op: Some(op),
        };
        let bytes = self.store.apply(LogIndex(self.index), &command.encode_to_vec());
        CommandReply::decode(bytes.as_slice()).expect("replies decode")
    }

    fn apply(&mut self, op: command::Op) -> command_reply::Reply {
        self.apply_with(None, op).reply.expect("a reply")
    }

    fn ok(&mut self, op: command::Op) -> command_reply::Reply {
        match self.apply(op) {
            command_reply::Reply::Error(e) => panic!("unexpected error {e:?}"),
            reply => reply,
        }
    }

    fn err(&mut self, op: command::Op) -> proto::Error {
        match self.apply(op) {
            command_reply::Reply::Error(e) => e,
            reply => panic!("expected an error, got {reply:?}"),
        }
    }

    fn get(&self, key: &str, revision: i64) -> Result<Vec<KeyValue>, proto::Error> {
        self.store
            .range(
                &proto::RangeRequest {
                    key: key.into(),
                    revision,
                    ..Default::default()
                },
                limits::RANGE_RESPONSE_BYTES_MAX,
            )
            .map(|r| r.kvs)
    }

    fn value(&self, key: &str) -> Option<String> {
        self.get(key, 0)
            .expect("read")
            .first()
            .map(|kv| String::from_utf8(kv.value.clone()).expect("utf8"))
    }
}

fn code(e: &proto::Error) -> ErrorCode {
    ErrorCode::try_from(e.code).expect("known code")
}

#[test]
fn revisions_versions_and_history() {
    // Goal: each change takes the next revision; create/mod revision and version follow etcd;
    // a past revision reads what was there; a delete resets the key's version.
    let mut h = Harness::new();
    h.ok(put("a", "1"));
    h.ok(put("a", "2"));
    h.ok(put("b", "x"));
    let kv = &h.get("a", 0).unwrap()[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (1, 2, 2));
    assert_eq!(h.get("a", 1).unwrap()[0].value, b"1");
    assert_eq!(h.store.revision(), 3);
    let command_reply::Reply::DeleteRange(d) = h.ok(del("a", &[])) else {
        panic!()
    };
    assert_eq!((d.deleted, d.header.unwrap().revision), (1, 4));
    assert!(h.get("a", 0).unwrap().is_empty());
    assert_eq!(h.get("a", 3).unwrap()[0].value, b"2");
    h.ok(put("a", "3"));
    let kv = &h.get("a", 0).unwrap()[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // A delete of nothing does not take a revision.
    h.ok(del("zzz", &[]));
    assert_eq!(h.store.revision(), 5);
    let e = h.get("a", 6).unwrap_err();
    assert_eq!(code(&e), ErrorCode::FutureRevision);
}

#[test]
fn ranges_prefixes_limits_and_pages() {
    // Goal: prefix and [start, end) ranges, limit, and the byte limit page the answer with
    // `more` set and at least one key per page.
    let mut h = Harness::new();
    for i in 0..10 {
        h.ok(put(&format!("k/{i}"), &"v".repeat(100)));
    }
    h.ok(put("l", "outside"));
    let request = proto::RangeRequest {
        key: b"k/".to_vec(),
        range_end: prefix_end(b"k/"),
        ..Default::default()
    };
    let all = h.store.range(&request, usize::MAX).unwrap();
    assert_eq!((all.kvs.len(), all.count, all.more), (10, 10, false));
    let limited = h
        .store
        .range(
            &proto::RangeRequest {
                limit: 3,
                ..request.clone()
            },
            usize::MAX,
        )
        .unwrap();
    assert_eq!((limited.kvs.len(), limited.count, limited.more), (3, 10, true));
    let paged = h.store.range(&request, 400).unwrap();
    assert!(paged.more && !paged.kvs.is_empty() && paged.kvs.len() < 10);
    let tiny = h.store.range(&request, 1).unwrap();
    assert_eq!(tiny.kvs.len(), 1, "a page always holds one key");
    let span = h
        .store
        .range(
            &proto::RangeRequest {
                key: b"k/3".to_vec(),
                range_end: b"k/6".to_vec(),
                ..Default::default()
            },
            usize::MAX,
        )
        .unwrap();
    assert_eq!(
        span.kvs.iter().map(|kv| kv.key.clone()).collect::<Vec<_>>(),
        vec![b"k/3".to_vec(), b"k/4".to_vec(), b"k/5".to_vec()]
    );
    assert_eq!(prefix_end(b""), vec![0]);
    assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    // Prefix delete.
    let command_reply::Reply::DeleteRange(d) = h.ok(del("k/", &prefix_end(b"k/"))) else {
        panic!()
    };
    assert_eq!(d.deleted, 10);
    assert_eq!(h.value("l").as_deref(), Some("outside"));
}

fn cas(key: &str, expected: &str, new: &str) -> command::Op {
    command::Op::Txn(proto::TxnRequest {
        compare: vec![proto::Compare {
            result: proto::compare::Result::Equal as i32,
            target: proto::compare::Target::Value as i32,
            key: key.into(),
            target_union: Some(proto::compare::TargetUnion::Value(expected.into())),
        }],
        success: vec![proto::RequestOp {
            request: Some(proto::request_op::Request::Put(proto::PutRequest {
                key: key.into(),
                value: new.into(),
                ..Default::default()
            })),
        }],
        failure: vec![proto::RequestOp {
            request: Some(proto::request_op::Request::Range(proto::RangeRequest {
                key: key.into(),
                ..Default::default()
            })),
        }],
    })
}

#[test]
fn transactions_compare_and_apply_atomically() {
    // Goal: a compare-and-swap swaps only on a match, a missing key never matches a value,
    // the else branch reads, and an invalid branch changes nothing.
    let mut h = Harness::new();
    let command_reply::Reply::Txn(t) = h.ok(cas("k", "a", "b")) else {
        panic!()
    };
    assert!(!t.succeeded, "a missing key does not equal any value");
    assert_eq!(h.store.revision(), 0);
    h.ok(put("k", "a"));
    let command_reply::Reply::Txn(t) = h.ok(cas("k", "a", "b")) else {
        panic!()
    };
    assert!(t.succeeded);
    assert_eq!(h.value("k").as_deref(), Some("b"));
    let command_reply::Reply::Txn(t) = h.ok(cas("k", "a", "c")) else {
        panic!()
    };
    assert!(!t.succeeded);
    let Some(proto::response_op::Response::Range(r)) = &t.responses[0].response else {
        panic!()
    };
    assert_eq!(r.kvs[0].value, b"b");
    // Writes of several keys share one revision; a read in the txn sees earlier writes.
    let ops = |keys: &[&str]| {
        keys.iter()
            .map(|k| proto::RequestOp {
                request: Some(proto::request_op::Request::Put(proto::PutRequest {
                    key: (*k).into(),
                    value: b"v".to_vec(),
                    ..Default::default()
                })),
            })
            .collect::<Vec<_>>()
    };
    let before = h.store.revision();
    let mut success = ops(&["x", "y"]);
    success.push(proto::RequestOp {
        request: Some(proto::request_op::Request::Range(proto::RangeRequest {
            key: b"x".to_vec(),
            ..Default::default()
        })),
    });
    let command_reply::Reply::Txn(t) = h.ok(command::Op::Txn(proto::TxnRequest {
        success,
        ..Default::default()
    })) else {
        panic!()
    };
    assert_eq!(h.store.revision(), before + 1);
    let Some(proto::response_op::Response::Range(r)) = &t.responses[2].response else {
        panic!()
    };
    assert_eq!(r.kvs.len(), 1, "the txn's read sees its own earlier write");
    // A key written twice, or a put on a lease that does not exist: nothing changes.
    let e = h.err(command::Op::Txn(proto::TxnRequest {
        success: ops(&["p", "p"]),
        ..Default::default()
    }));
    assert_eq!(code(&e), ErrorCode::InvalidArgument);
    let mut bad = ops(&["q"]);
    bad.push(proto::RequestOp {
        request: Some(proto::request_op::Request::Put(proto::PutRequest {
            key: b"r".to_vec(),
            lease: 77,
            ..Default::default()
        })),
    });
    let e = h.err(command::Op::Txn(proto::TxnRequest {
        success: bad,
        ..Default::default()
    }));
    assert_eq!(code(&e), ErrorCode::LeaseNotFound);
    assert_eq!(h.value("q"), None, "a failed transaction leaves no partial write");
    assert_eq!(h.store.revision(), before + 1);
    let e = h.err(command::Op::Txn(proto::TxnRequest {
        success: ops(&["a"; 200]),
        ..Default::default()
    }));
    assert_eq!(code(&e), ErrorCode::TooLarge);
}

#[test]
fn change_feed_is_ordered_whole_and_carries_previous_values() {
    // Goal: the change feed a watcher reads lists every change of its range in revision
    // order, never splits a revision, carries previous values, and refuses compacted starts.
    let mut h = Harness::new();
    h.ok(put("w/a", "1"));
    h.ok(put("other", "x"));
    h.ok(command::Op::Txn(proto::TxnRequest {
        success: ["w/b", "w/c"]
            .iter()
            .map(|k| proto::RequestOp {
                request: Some(proto::request_op::Request::Put(proto::PutRequest {
                    key: (*k).into(),
                    value: b"2".to_vec(),
                    ..Default::default()
                })),
            })
            .collect(),
        ..Default::default()
    }));
    h.ok(put("w/a", "3"));
    h.ok(del("w/b", &[]));
    let range = KeyRange::new(b"w/", &prefix_end(b"w/"));
    let (changes, last) = h.store.changes(&range, 1, usize::MAX).unwrap();
    let summary: Vec<(i64, String, bool)> = changes
        .iter()
        .map(|c| {
            (
                c.revision,
                String::from_utf8(c.kv.key.clone()).unwrap(),
                c.deleted,
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, "w/a".into(), false),
            (3, "w/b".into(), false),
            (3, "w/c".into(), false),
            (4, "w/a".into(), false),
            (5, "w/b".into(), true),
        ]
    );
    assert_eq!(last, 5);
    assert_eq!(changes[3].prev.as_ref().unwrap().value, b"1");
    assert_eq!(changes[4].prev.as_ref().unwrap().value, b"2");
    // A tiny byte budget still returns whole revisions: revision 3's two events together.
    let (changes, last) = h.store.changes(&range, 3, 1).unwrap();
    assert_eq!((changes.len(), last), (2, 3));
    let (changes, last) = h.store.changes(&range, 6, usize::MAX).unwrap();
    assert!(changes.is_empty() && last == 5);
    h.ok(command::Op::Compact(proto::CompactRequest { revision: 4 }));
    assert_eq!(
        code(&h.store.changes(&range, 4, usize::MAX).unwrap_err()),
        ErrorCode::Compacted
    );
    let (changes, _) = h.store.changes(&range, 5, usize::MAX).unwrap();
    assert_eq!(changes.len(), 1);
}

#[test]
fn compaction_keeps_visible_state_and_frees_space() {
    // Goal: compaction keeps what is visible at its revision, refuses older reads, frees the
    // bytes of unreachable versions, and does not change the state hash.
    let mut h = Harness::new();
    for i in 0..100 {
        h.ok(put("k", &format!("{i:0>1000}")));
    }
    h.ok(put("gone", "x"));
    h.ok(del("gone", &[]));
    let size_before = h.store.size_bytes();
    let hash_before = h.store.hash_at(0).unwrap().0;
    h.ok(command::Op::Compact(proto::CompactRequest { revision: 100 }));
    assert!(
        h.store.size_bytes() < size_before / 10,
        "{} vs {size_before}",
        h.store.size_bytes()
    );
    assert_eq!(h.store.hash_at(0).unwrap().0, hash_before);
    assert_eq!(code(&h.get("k", 99).unwrap_err()), ErrorCode::Compacted);
    assert_eq!(h.get("k", 100).unwrap()[0].version, 100);
    assert_eq!(
        code(&h.err(command::Op::Compact(proto::CompactRequest { revision: 50 }))),
        ErrorCode::Compacted
    );
    assert_eq!(
        code(&h.err(command::Op::Compact(proto::CompactRequest { revision: 1000 }))),
        ErrorCode::FutureRevision
    );
}

#[test]
fn leases_attach_keys_and_revoke_them_together() {
    // Goal: keys on a lease vanish at one revision when it is revoked or expired; moving a
    // key off a lease detaches it; an expiry from a deposed leader's term is void.
    let mut h = Harness::new();
    let command_reply::Reply::LeaseGrant(g) = h.ok(command::Op::LeaseGrant(proto::LeaseGrantRequest {
        ttl_seconds: 10,
        id: 0,
    })) else {
        panic!()
    };
    let lease = g.id;
    h.ok(put_lease("e/1", "a", lease));
    h.ok(put_lease("e/2", "b", lease));
    h.ok(put_lease("e/3", "c", lease));
    h.ok(put("e/3", "detached"));
    assert_eq!(code(&h.err(put_lease("x", "y", 999))), ErrorCode::LeaseNotFound);
    assert_eq!(
        code(&h.err(command::Op::LeaseGrant(proto::LeaseGrantRequest {
            ttl_seconds: 1,
            id: 0
        }))),
        ErrorCode::InvalidArgument
    );
    h.ok(command::Op::LeaderEpoch(proto::LeaderEpoch {
        term: 5,
        leader: 1,
    }));
    let e = h.err(command::Op::LeaseExpire(proto::LeaseExpire {
        ids: vec![lease],
        term: 4,
    }));
    assert_eq!(code(&e), ErrorCode::NotLeader);
    assert!(h.store.has_lease(lease), "a deposed leader's expiry is void");
    let revision = h.store.revision();
    let command_reply::Reply::LeaseRevoke(r) = h.ok(command::Op::LeaseExpire(proto::LeaseExpire {
        ids: vec![lease],
        term: 5,
    })) else {
        panic!()
    };
    assert_eq!(r.n_keys_deleted, 2);
    assert_eq!(
        h.store.revision(),
        revision + 1,
        "all of a lease's keys go at one revision"
    );
    assert_eq!(h.value("e/1"), None);
    assert_eq!(h.value("e/3").as_deref(), Some("detached"));
    assert!(!h.store.has_lease(lease));
    assert_eq!(
        code(&h.err(command::Op::LeaseRevoke(proto::LeaseRevokeRequest { id: lease }))),
        ErrorCode::LeaseNotFound
    );
}

#[test]
fn sequential_keys_sort_by_creation() {
    // Goal: sequential puts create distinct keys under the prefix that sort in creation order.
    let mut h = Harness::new();
    let mut keys = Vec::new();
    for _ in 0..3 {
        let command_reply::Reply::Put(p) = h.ok(command::Op::Put(proto::PutRequest {
            key: b"queue/".to_vec(),
            value: b"job".to_vec(),
            sequential: true,
            ..Default::default()
        })) else {
            panic!()
        };
        keys.push(p.key);
    }
    assert_eq!(keys[0], b"queue/00000000000000000001".to_vec());
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(sorted, keys);
    sorted.dedup();
    assert_eq!(sorted.len(), 3);
}

#[test]
fn a_retried_write_applies_once() {
    // Goal: the same (client, seq) applied twice answers the first reply and changes nothing;
    // an acknowledged sequence number retried late is refused, not applied.
    let mut h = Harness::new();
    h.ok(put("k", "a"));
    let session = |seq, ack_below| {
        Some(Session {
            client_id: 42,
            seq,
            ack_below,
        })
    };
    let first = h.apply_with(session(1, 1), cas("k", "a", "b"));
    let retry = h.apply_with(session(1, 1), cas("k", "a", "b"));
    assert_eq!(first, retry, "the retry gets the recorded reply");
    let Some(command_reply::Reply::Txn(t)) = first.reply else {
        panic!()
    };
    assert!(t.succeeded);
    assert_eq!(h.store.revision(), 2, "applied once");
    h.apply_with(session(2, 2), put("k", "c"));
    let late = h.apply_with(session(1, 2), cas("k", "c", "d"));
    assert!(
        matches!(late.reply, Some(command_reply::Reply::Error(ref e)) if code(e) == ErrorCode::SessionExpired)
    );
    assert_eq!(h.value("k").as_deref(), Some("c"));
}

#[test]
fn snapshots_restore_the_same_state() {
    // Goal: a restored snapshot has the same visible state (hash), history, leases, sessions
    // and revision counters, and keeps deduplicating.
    let mut h = Harness::new();
    let command_reply::Reply::LeaseGrant(g) = h.ok(command::Op::LeaseGrant(proto::LeaseGrantRequest {
        ttl_seconds: 30,
        id: 0,
    })) else {
        panic!()
    };
    for i in 0..50 {
        h.ok(put(&format!("k{}", i % 7), &format!("v{i}")));
    }
    h.ok(put_lease("eph", "x", g.id));
    h.ok(command::Op::Compact(proto::CompactRequest { revision: 20 }));
    h.apply_with(
        Some(Session {
            client_id: 9,
            seq: 1,
            ack_below: 1,
        }),
        put("s", "1"),
    );
    let mut bytes = Vec::new();
    h.store.snapshot(&mut bytes).unwrap();
    let mut restored = MetaStore::new();
    restored.restore(&mut bytes.as_slice()).unwrap();
    assert_eq!(restored.info(), h.store.info());
    assert_eq!(restored.hash_at(0).unwrap(), h.store.hash_at(0).unwrap());
    assert_eq!(restored.hash_at(30).unwrap(), h.store.hash_at(30).unwrap());
    assert_eq!(restored.leases(), h.store.leases());
    let range = KeyRange::new(b"k", &prefix_end(b"k"));
    assert_eq!(
        restored.changes(&range, 21, usize::MAX).unwrap(),
        h.store.changes(&range, 21, usize::MAX).unwrap()
    );
    let mut h2 = Harness {
        store: restored,
        index: h.index,
    };
    let retry = h2.apply_with(
        Some(Session {
            client_id: 9,
            seq: 1,
            ack_below: 1,
        }),
        put("s", "1"),
    );
    assert!(matches!(retry.reply, Some(command_reply::Reply::Put(_))));
    assert_eq!(
        h2.store.revision(),
        h.store.revision(),
        "the retry did not apply again"
    );
    // A truncated snapshot is refused.
    let mut broken = MetaStore::new();
    assert!(broken.restore(&mut &bytes[..bytes.len() - 3]).is_err());
}

#[test]
fn limits_are_enforced_with_clear_errors() {
    // Goal: oversized keys and values, empty keys and malformed commands get typed errors.
    let mut h = Harness::new();
    let e = h.err(put(&"k".repeat(limits::KEY_BYTES_MAX + 1), "v"));
    assert_eq!(code(&e), ErrorCode::TooLarge);
    assert!(e.message.contains("limit"), "{}", e.message);
    let e = h.err(command::Op::Put(proto::PutRequest {
        key: b"k".to_vec(),
        value: vec![0; limits::VALUE_BYTES_MAX + 1],
        ..Default::default()
    }));
    assert_eq!(code(&e), ErrorCode::TooLarge);
    assert_eq!(code(&h.err(put("", "v"))), ErrorCode::InvalidArgument);
    h.index += 1;
    let reply = CommandReply::decode(h.store.apply(LogIndex(h.index), b"\xff\xff\xff").as_slice()).unwrap();
    assert!(
        matches!(reply.reply, Some(command_reply::Reply::Error(ref e)) if code(e) == ErrorCode::InvalidArgument)
    );
    assert_eq!(h.store.revision(), 0);
}
