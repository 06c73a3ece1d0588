//! The coordination store on an in-process cluster: real gRPC on loopback, real WAL and
//! fsync, members stopped and restarted. Each test states the guarantee it tries to break.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_meta::client::{self, recipes, ClientOptions, Error, MetaClient};
use shoal_meta::proto::{self, command, command_reply, event::EventType, ErrorCode};
use shoal_meta::server::{MetaServer, ServerOptions};
use shoal_meta::store::{prefix_end, MetaStore};
use shoal_raft::{NodeId, Role};
use shoal_raft_runtime::{GroupConfig, NodeOptions, RaftNode};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

struct Member {
    node: RaftNode,
    server: MetaServer,
    serving: JoinHandle<()>,
}

struct Cluster {
    _root: tempfile::TempDir,
    root: PathBuf,
    addresses: BTreeMap<NodeId, String>,
    options: ServerOptions,
    members: BTreeMap<NodeId, Member>,
}

impl Cluster {
    async fn start(n: u64, options: ServerOptions) -> Cluster {
        Cluster::start_with(n, options, |_| MetaStore::new()).await
    }

    async fn start_with(n: u64, options: ServerOptions, store: impl Fn(NodeId) -> MetaStore) -> Cluster {
        let root = tempfile::tempdir().expect("temp dir");
        let mut listeners = BTreeMap::new();
        let mut addresses = BTreeMap::new();
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addresses.insert(NodeId(id), listener.local_addr().expect("address").to_string());
            listeners.insert(NodeId(id), listener);
        }
        let mut cluster = Cluster {
            root: root.path().to_path_buf(),
            _root: root,
            addresses,
            options,
            members: BTreeMap::new(),
        };
        for (id, listener) in listeners {
            cluster.start_member(id, listener, store(id));
        }
        cluster
    }

    fn start_member(&mut self, id: NodeId, listener: TcpListener, store: MetaStore) {
        let node = RaftNode::new(NodeOptions::new(id, self.addresses.clone())).expect("node");
        let config = GroupConfig::new(
            1,
            self.root.join(format!("node-{id}")),
            self.addresses.keys().copied(),
        );
        let server = MetaServer::start(&node, config, self.options.clone(), store).expect("store starts");
        let routes = server.routes();
        let serving_node = node.clone();
        let serving = tokio::spawn(async move {
            let _ = serving_node
                .serve_with(listener, std::future::pending(), routes)
                .await;
        });
        self.members.insert(
            id,
            Member {
                node,
                server,
                serving,
            },
        );
    }

    async fn stop(&mut self, id: NodeId) {
        let member = self.members.remove(&id).expect("member runs");
        member.node.shutdown().await;
        member.server.group().closed().await;
        member.serving.abort();
        let _ = member.serving.await;
    }

    async fn restart(&mut self, id: NodeId) {
        let listener = TcpListener::bind(&self.addresses[&id]).await.expect("rebind");
        self.start_member(id, listener, MetaStore::new());
    }

    fn endpoints(&self) -> Vec<String> {
        self.addresses.values().cloned().collect()
    }

    fn client(&self) -> MetaClient {
        MetaClient::with_options(self.endpoints(), fast_options()).expect("client")
    }

    async fn leader(&self) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            for (id, member) in &self.members {
                if member.server.group().state().role == Role::Leader {
                    return *id;
                }
            }
            assert!(Instant::now() < deadline, "no leader within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn fast_options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(2),
        retry_timeout: Duration::from_secs(15),
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(200),
    }
}

fn put_op(key: &str, value: &str) -> proto::RequestOp {
    client::put_op(key.as_bytes(), value.as_bytes(), 0)
}

/// A plain gRPC channel to one member, for calls the client does not make.
async fn raw_channel(address: &str) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn code(e: &Error) -> Option<ErrorCode> {
    e.code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sees_every_event_once_in_order_across_member_loss() {
    // Goal: a watcher on a prefix gets every change (puts, multi-key transactions, deletes) in
    // revision order, none twice, none missing, a transaction's events in one response, and
    // correct previous values, although the member it watches on is stopped midway.
    let mut cluster = Cluster::start(3, ServerOptions::default()).await;
    let leader = cluster.leader().await;
    let writer = cluster.client();
    writer.put("w/start", "0").await.expect("first put");
    // The watcher talks to a follower first, the one we will stop.
    let watched = *cluster
        .addresses
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let mut endpoints = vec![cluster.addresses[&watched].clone()];
    endpoints.extend(
        cluster
            .endpoints()
            .into_iter()
            .filter(|e| *e != cluster.addresses[&watched]),
    );
    let watch_client = MetaClient::with_options(endpoints, fast_options()).expect("client");
    let mut watcher = watch_client
        .watch(proto::WatchRequest {
            key: b"w/".to_vec(),
            range_end: prefix_end(b"w/"),
            prev_kv: true,
            ..Default::default()
        })
        .await
        .expect("watch");
    let first_revision = watcher.next_revision();

    // The writer's own record of what changed: (revision, key, deleted).
    let mut expected: BTreeSet<(i64, String, bool)> = BTreeSet::new();
    let mut txn_revisions = BTreeSet::new();
    for i in 0..120 {
        let key = format!("w/{}", i % 10);
        if i % 17 == 5 {
            let r = writer
                .txn(proto::TxnRequest {
                    success: vec![put_op("w/t1", &i.to_string()), put_op("w/t2", &i.to_string())],
                    ..Default::default()
                })
                .await
                .expect("txn");
            let revision = r.header.expect("header").revision;
            expected.insert((revision, "w/t1".into(), false));
            expected.insert((revision, "w/t2".into(), false));
            txn_revisions.insert(revision);
        } else if i % 13 == 7 {
            let r = writer
                .delete(proto::DeleteRangeRequest {
                    key: key.clone().into_bytes(),
                    ..Default::default()
                })
                .await
                .expect("delete");
            if r.deleted == 1 {
                expected.insert((r.header.expect("header").revision, key, true));
            }
        } else {
            let r = writer.put(key.clone(), i.to_string()).await.expect("put");
            expected.insert((r.header.expect("header").revision, key, false));
        }
        writer.put("other", "noise").await.expect("noise");
        if i == 60 {
            cluster.stop(watched).await;
        }
    }

    let mut seen: Vec<(i64, String, bool)> = Vec::new();
    let mut last_value: BTreeMap<String, String> = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    while seen.len() < expected.len() {
        let response = tokio::time::timeout_at(deadline, watcher.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} events arrived", seen.len(), expected.len()))
            .expect("watch continues");
        let revisions: BTreeSet<i64> = response
            .events
            .iter()
            .map(|e| e.kv.as_ref().expect("kv").mod_revision)
            .collect();
        for event in &response.events {
            let kv = event.kv.clone().expect("kv");
            let key = String::from_utf8(kv.key.clone()).expect("utf8");
            let deleted = event.r#type == EventType::Delete as i32;
            // Previous values are what this watcher saw last for the key.
            if let Some(prev) = &event.prev_kv {
                if let Some(last) = last_value.get(&key) {
                    assert_eq!(
                        &String::from_utf8(prev.value.clone()).unwrap(),
                        last,
                        "prev_kv of {key}"
                    );
                }
            }
            if deleted {
                last_value.remove(&key);
            } else {
                last_value.insert(key.clone(), String::from_utf8(kv.value).unwrap());
            }
            seen.push((kv.mod_revision, key, deleted));
        }
        for revision in revisions.intersection(&txn_revisions) {
            let n = response
                .events
                .iter()
                .filter(|e| e.kv.as_ref().unwrap().mod_revision == *revision)
                .count();
            assert_eq!(
                n, 2,
                "the transaction at revision {revision} was split across responses"
            );
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0].0 <= w[1].0),
        "events out of revision order"
    );
    let unique: BTreeSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an event was delivered twice");
    assert_eq!(unique, expected, "events missing or invented");
    assert!(seen.iter().all(|(revision, ..)| *revision >= first_revision));
    cluster.restart(watched).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_filters_resume_and_compaction() {
    // Goal: a watch from a past revision replays exactly from it, filters drop what they
    // should, and a compacted start revision fails with COMPACTED (not silence).
    let cluster = Cluster::start(3, ServerOptions::default()).await;
    let client = cluster.client();
    let mut revisions = Vec::new();
    for i in 0..5 {
        revisions.push(
            client
                .put("k", format!("v{i}"))
                .await
                .unwrap()
                .header
                .unwrap()
                .revision,
        );
    }
    let deleted_at = client
        .delete(proto::DeleteRangeRequest {
            key: b"k".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .header
        .unwrap()
        .revision;
    let mut from_third = client
        .watch(proto::WatchRequest {
            key: b"k".to_vec(),
            start_revision: revisions[2],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut values = Vec::new();
    while values.len() < 4 {
        for e in from_third.next().await.unwrap().events {
            values.push((e.r#type, String::from_utf8(e.kv.unwrap().value).unwrap()));
        }
    }
    assert_eq!(
        values,
        vec![
            (EventType::Put as i32, "v2".into()),
            (EventType::Put as i32, "v3".into()),
            (EventType::Put as i32, "v4".into()),
            (EventType::Delete as i32, "".into())
        ]
    );
    let mut deletes_only = client
        .watch(proto::WatchRequest {
            key: b"k".to_vec(),
            start_revision: revisions[0],
            no_put: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let response = deletes_only.next().await.unwrap();
    assert_eq!(response.events.len(), 1);
    assert_eq!(response.events[0].kv.as_ref().unwrap().mod_revision, deleted_at);

    client.compact(revisions[3]).await.unwrap();
    // Watches are served by any member from what it applied: wait until all applied it.
    for endpoint in cluster.endpoints() {
        let deadline = Instant::now() + WAIT;
        while client.status_at(&endpoint).await.unwrap().compact_revision < revisions[3] {
            assert!(
                Instant::now() < deadline,
                "{endpoint} never applied the compaction"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut stale = client
        .watch(proto::WatchRequest {
            key: b"k".to_vec(),
            start_revision: revisions[1],
            ..Default::default()
        })
        .await
        .unwrap();
    let e = stale.next().await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Compacted), "{e}");
    let e = client
        .range(proto::RangeRequest {
            key: b"k".to_vec(),
            revision: revisions[1],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Compacted));
    let e = client
        .range(proto::RangeRequest {
            key: b"k".to_vec(),
            revision: 1_000_000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::FutureRevision));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_cut_off_with_an_error_and_can_resume() {
    // Goal: a watcher that stops reading costs a bounded buffer: the server cuts it off with
    // an error instead of buffering without limit, and a new watch from the last revision
    // received gets the rest.
    let options = ServerOptions {
        watch_stall_max: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let cluster = Cluster::start(1, options).await;
    let client = cluster.client();
    let base = client.put("s/0", "x").await.unwrap().header.unwrap().revision;
    let channel = raw_channel(&cluster.endpoints()[0]).await;
    let mut raw = proto::watch_client::WatchClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .watch(proto::WatchRequest {
            key: b"s/".to_vec(),
            range_end: prefix_end(b"s/"),
            start_revision: base + 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Far more than the buffer and the transport's windows hold.
    let value = "v".repeat(256 * 1024);
    let mut last_revision = 0;
    for i in 0..80 {
        last_revision = client
            .put(format!("s/{i}"), value.clone())
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut received_up_to = base;
    let mut cut_off = None;
    loop {
        match raw.message().await {
            Ok(Some(response)) => {
                if let Some(e) = response.error {
                    cut_off = Some(e.message);
                    break;
                }
                received_up_to = response.header.unwrap().revision;
            }
            Ok(None) => break,
            Err(status) => {
                cut_off = Some(status.message().to_string());
                break;
            }
        }
    }
    let message = cut_off.expect("the slow watcher was cut off");
    assert!(message.contains("resume"), "{message}");
    assert!(
        received_up_to < last_revision,
        "the watcher was cut off before the end"
    );
    let mut resumed = client
        .watch(proto::WatchRequest {
            key: b"s/".to_vec(),
            range_end: prefix_end(b"s/"),
            start_revision: received_up_to + 1,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut next = received_up_to + 1;
    while next <= last_revision {
        for event in resumed.next().await.unwrap().events {
            assert_eq!(
                event.kv.unwrap().mod_revision,
                next,
                "resumed exactly where it stopped"
            );
            next += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_keeps_its_remaining_time_across_a_leader_change() {
    // Goal: after a failover a lease is neither reset to its full TTL nor expired early: the
    // new leader continues from the checkpointed remaining time, and the lease's key vanishes
    // once that time is up.
    let options = ServerOptions {
        lease_checkpoint_interval: Duration::from_millis(200),
        ..ServerOptions::default()
    };
    let mut cluster = Cluster::start(3, options).await;
    let client = cluster.client();
    let granted_at = Instant::now();
    let lease = client.lease_grant(8).await.unwrap().id;
    client
        .put_with(proto::PutRequest {
            key: b"eph".to_vec(),
            value: b"x".to_vec(),
            lease,
            ..Default::default()
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let old_leader = cluster.leader().await;
    cluster.stop(old_leader).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    let status = loop {
        match client.lease_time_to_live(lease, false).await {
            Ok(status) if status.remaining_ms >= 0 => break status,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let elapsed_ms = granted_at.elapsed().as_millis() as i64;
    assert!(
        status.remaining_ms <= 8_000 - 2_500,
        "the lease was reset by the failover: {} ms left after {elapsed_ms} ms",
        status.remaining_ms
    );
    assert!(
        status.remaining_ms >= 1_000,
        "the lease nearly expired early: {} ms left",
        status.remaining_ms
    );
    // It expires: the key vanishes, no later than the original deadline plus the grace.
    let deadline = granted_at + Duration::from_secs(8 + 2 + 2);
    loop {
        if client.get("eph").await.unwrap().is_none() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lease outlived its time after the failover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        granted_at.elapsed() >= Duration::from_secs(7),
        "the lease expired early"
    );
    let e = client.lease_keep_alive(lease).await.unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::LeaseNotFound));
    cluster.restart(old_leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_expiries_are_rate_limited() {
    // Goal: leases that run out together (an expiry storm after an outage) are expired at most
    // `lease_expiries_per_second_max` per second: 60 leases at 20/s take at least three
    // one-second windows, the first no earlier than the leases' TTL (2 s, the least allowed).
    // The windows run whether or not anything expires, so the first batch may come at the
    // end of one: the last comes more than one second after the first, at 3 s or later.
    const PER_SECOND: usize = 20;
    const N_LEASES: usize = 60;
    let options = ServerOptions {
        lease_expiries_per_second_max: PER_SECOND,
        ..ServerOptions::default()
    };
    let cluster = Cluster::start(3, options).await;
    let client = cluster.client();
    let mut watcher = client
        .watch(proto::WatchRequest {
            key: b"storm/".to_vec(),
            range_end: prefix_end(b"storm/"),
            no_put: true,
            ..Default::default()
        })
        .await
        .expect("watch");
    let started = Instant::now();
    for i in 0..N_LEASES {
        let lease = client.lease_grant(2).await.expect("grant").id;
        client
            .put_with(proto::PutRequest {
                key: format!("storm/{i}").into_bytes(),
                value: b"x".to_vec(),
                lease,
                ..Default::default()
            })
            .await
            .expect("put");
    }
    let mut deletes_by_revision: BTreeMap<i64, usize> = BTreeMap::new();
    let mut n_deletes = 0;
    while n_deletes < N_LEASES {
        let response = tokio::time::timeout(WAIT, watcher.next())
            .await
            .expect("the leases expire")
            .expect("watch stream");
        for event in response.events {
            assert_eq!(event.r#type, EventType::Delete as i32);
            let revision = event.kv.expect("kv").mod_revision;
            *deletes_by_revision.entry(revision).or_default() += 1;
            n_deletes += 1;
        }
    }
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2 + 1),
        "{N_LEASES} leases expired within {elapsed:?} at {PER_SECOND}/s"
    );
    for (revision, n) in deletes_by_revision {
        assert!(n <= PER_SECOND, "{n} leases expired at revision {revision}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_exclusive_and_fencing_tokens_grow() {
    // Goal: contenders never hold the lock at once, and each new holder's fencing token is
    // larger than every earlier holder's.
    let cluster = Cluster::start(3, ServerOptions::default()).await;
    let held = Arc::new(AtomicBool::new(false));
    let highest_token = Arc::new(AtomicI64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = cluster.client();
        let held = held.clone();
        let highest_token = highest_token.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..3 {
                let guard = recipes::lock(&client, "locks/job", 10, Some(WAIT))
                    .await
                    .expect("lock");
                assert!(!held.swap(true, Ordering::SeqCst), "two holders at once");
                let previous = highest_token.fetch_max(guard.fencing_token(), Ordering::SeqCst);
                assert!(guard.fencing_token() > previous, "fencing token did not grow");
                tokio::time::sleep(Duration::from_millis(20)).await;
                held.store(false, Ordering::SeqCst);
                guard.release().await.expect("release");
            }
        }));
    }
    for task in tasks {
        task.await.expect("contender");
    }
    let client = cluster.client();
    let (_, left) = client.get_prefix(b"locks/job/").await.unwrap();
    assert!(left.is_empty(), "released locks leave no keys: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_has_one_leader_and_passes_on() {
    // Goal: the first campaigner leads and everyone sees it; the second leads only after the
    // first resigns.
    let cluster = Cluster::start(3, ServerOptions::default()).await;
    let a = recipes::Election::new(&cluster.client(), "elect/coordinator");
    let b = recipes::Election::new(&cluster.client(), "elect/coordinator");
    let leading_a = a.campaign(b"node-a", 10).await.unwrap();
    assert_eq!(b.leader().await.unwrap().unwrap().value, b"node-a");
    let b_task = tokio::spawn(async move {
        let leadership = b.campaign(b"node-b", 10).await.unwrap();
        (b, leadership)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b_task.is_finished(), "b leads while a still does");
    let token_a = leading_a.fencing_token();
    leading_a.resign().await.unwrap();
    let (b, leading_b) = tokio::time::timeout(WAIT, b_task).await.unwrap().unwrap();
    assert!(leading_b.fencing_token() > token_a);
    assert_eq!(b.leader().await.unwrap().unwrap().value, b"node-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_write_applies_once() {
    // Goal: the same write sent twice with the same session (a retry after a lost reply)
    // applies once: the retry gets the first reply and the revision does not move.
    let cluster = Cluster::start(3, ServerOptions::default()).await;
    let client = cluster.client();
    client.put("counter", "1").await.unwrap();
    let leader = cluster.leader().await;
    let channel = raw_channel(&cluster.addresses[&leader]).await;
    let mut kv = proto::kv_client::KvClient::new(channel);
    let cas = proto::Command {
        session: Some(proto::Session {
            client_id: 77,
            seq: 1,
            ack_below: 1,
        }),
        op: Some(command::Op::Txn(proto::TxnRequest {
            compare: vec![client::compare_value(b"counter", b"1")],
            success: vec![put_op("counter", "2")],
            failure: vec![],
        })),
    };
    let first = kv.write(cas.clone()).await.unwrap().into_inner();
    let retry = kv.write(cas).await.unwrap().into_inner();
    let (Some(command_reply::Reply::Txn(first)), Some(command_reply::Reply::Txn(retry))) =
        (first.reply, retry.reply)
    else {
        panic!("transactions answer transactions")
    };
    assert!(
        first.succeeded && retry.succeeded,
        "the retry got the first reply"
    );
    assert_eq!(first.header.unwrap().revision, retry.header.unwrap().revision);
    // (The unary Range call, which other gRPC clients use, reads it back.)
    let read = kv
        .range(proto::RangeRequest {
            key: b"counter".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (read.kvs[0].value.as_slice(), read.kvs[0].version),
        (&b"2"[..], 2)
    );
    assert_eq!(client.get("counter").await.unwrap().unwrap().value, b"2");
    assert_eq!(
        client.get("counter").await.unwrap().unwrap().version,
        2,
        "applied once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diverged_member_raises_an_alarm_and_stops_serving() {
    // Goal: a member whose state silently differs is found by the hash comparison, gets a
    // CORRUPT alarm, and refuses to serve, while the others go on — even when the diverged
    // member is the leader (it hands leadership over instead of stopping the cluster) — and
    // it stands for election no more.
    let options = ServerOptions {
        hash_check_interval: Duration::from_millis(300),
        ..ServerOptions::default()
    };
    let cluster = Cluster::start_with(3, options, |id| {
        if id == NodeId(3) {
            MetaStore::with_divergence_fault()
        } else {
            MetaStore::new()
        }
    })
    .await;
    let leader = cluster.leader().await;
    if leader != NodeId(3) {
        cluster.members[&leader]
            .server
            .group()
            .transfer_leader(NodeId(3))
            .await
            .expect("make the diverging member the leader");
    }
    let client = cluster.client();
    client.put("a", "abc").await.unwrap();
    let odd = MetaClient::with_options(vec![cluster.addresses[&NodeId(3)].clone()], fast_options()).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let status = client.status_at(&cluster.addresses[&NodeId(1)]).await.unwrap();
        if status.alarms.iter().any(|a| a.member_id == 3) {
            break;
        }
        assert!(Instant::now() < deadline, "no alarm raised: {:?}", status.alarms);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The diverged member refuses reads; the cluster still serves.
    let deadline = Instant::now() + WAIT;
    loop {
        let refused = odd
            .range(proto::RangeRequest {
                key: b"a".to_vec(),
                serializable: true,
                ..Default::default()
            })
            .await;
        match refused {
            Err(Error::Unavailable { message }) if message.contains("diverged") => break,
            other => {
                assert!(Instant::now() < deadline, "member 3 still serves: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    client.put("b", "still-writable").await.unwrap();
    assert_eq!(client.get("a").await.unwrap().unwrap().value, b"abc");
    let leader = cluster.leader().await;
    assert_ne!(leader, NodeId(3), "the diverged member handed leadership over");
    // It no longer stands for election: a transfer to it fails and the leader stays.
    let transfer = cluster.members[&leader]
        .server
        .group()
        .transfer_leader(NodeId(3))
        .await;
    assert!(
        transfer.is_err(),
        "a diverged member took leadership: {transfer:?}"
    );
    assert_ne!(cluster.leader().await, NodeId(3));
    client.put("c", "after-the-transfer").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_refuses_writes_until_space_is_freed() {
    // Goal: past the quota, writes that add data fail with NO_SPACE and deletes still work;
    // after deletes and a compaction free space, writes succeed again (never stuck).
    let options = ServerOptions {
        quota_bytes: 300 * 1024,
        ..ServerOptions::default()
    };
    let cluster = Cluster::start(3, options).await;
    let client = cluster.client();
    let value = "q".repeat(32 * 1024);
    let mut n_written = 0;
    let refused = loop {
        match client.put(format!("q/{n_written}"), value.clone()).await {
            Ok(_) => n_written += 1,
            Err(e) => break e,
        }
        assert!(n_written < 100, "the quota never applied");
    };
    assert_eq!(code(&refused), Some(ErrorCode::NoSpace), "{refused}");
    assert!(
        refused.to_string().contains("compact"),
        "the error says what to do: {refused}"
    );
    let deleted = client
        .delete(proto::DeleteRangeRequest {
            key: b"q/".to_vec(),
            range_end: prefix_end(b"q/"),
            ..Default::default()
        })
        .await
        .expect("deletes work over the quota");
    assert_eq!(deleted.deleted, n_written);
    client.compact(deleted.header.unwrap().revision).await.unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        match client.put("q/again", "small").await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "still refused after freeing space: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_snapshot_holds_the_same_state() {
    // Goal: `snapshot save` streams a checked copy (several chunks: over 1 MiB) whose restored
    // state hashes like the member's at the same revision; saving again with no write
    // between gives the same revision.
    let cluster = Cluster::start(3, ServerOptions::default()).await;
    let client = cluster.client();
    for i in 0..50 {
        client
            .put(format!("snap/{}", i % 9), i.to_string())
            .await
            .unwrap();
    }
    for i in 0..30 {
        client
            .put(format!("big/{i}"), "x".repeat(100 * 1024))
            .await
            .unwrap();
    }
    // `snapshot` may go to any member: let every one apply the last write first, so the two
    // saves below see the same revision.
    let leader = cluster.leader().await;
    let commit = client
        .status_at(&cluster.addresses[&leader])
        .await
        .unwrap()
        .commit_index;
    let deadline = Instant::now() + WAIT;
    for address in cluster.endpoints() {
        while client.status_at(&address).await.unwrap().applied_index < commit {
            assert!(Instant::now() < deadline, "{address} did not apply {commit}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let mut bytes = Vec::new();
    let (n_bytes, revision) = client.snapshot(&mut bytes).await.unwrap();
    assert_eq!(n_bytes as usize, bytes.len());
    assert!(n_bytes > 2 * 1024 * 1024, "{n_bytes} bytes");
    let mut again = Vec::new();
    let (_, revision_again) = client.snapshot(&mut again).await.unwrap();
    assert_eq!(revision_again, revision);
    let mut restored = MetaStore::new();
    shoal_raft_runtime::StateMachine::restore(&mut restored, &mut bytes.as_slice()).unwrap();
    assert_eq!(restored.revision(), revision);
    let expected = client
        .hash_kv_at(&cluster.endpoints()[0], revision)
        .await
        .unwrap();
    assert_eq!(restored.hash_at(revision).unwrap().0, expected.hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_per_connection_are_limited() {
    // Goal: one connection cannot open more than WATCHES_PER_CONNECTION_MAX watches; the next
    // is refused with TOO_MANY_REQUESTS, and closing one frees a place.
    let cluster = Cluster::start(1, ServerOptions::default()).await;
    cluster.client().put("w", "1").await.unwrap();
    let channel = raw_channel(&cluster.endpoints()[0]).await;
    let mut watch = proto::watch_client::WatchClient::new(channel);
    let request = proto::WatchRequest {
        key: b"w".to_vec(),
        ..Default::default()
    };
    let mut streams = Vec::new();
    for _ in 0..shoal_meta::limits::WATCHES_PER_CONNECTION_MAX {
        streams.push(
            watch
                .watch(request.clone())
                .await
                .expect("within the limit")
                .into_inner(),
        );
    }
    let refused = watch.watch(request.clone()).await.expect_err("over the limit");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("watch"), "{}", refused.message());
    drop(streams.pop());
    let deadline = Instant::now() + WAIT;
    while watch.watch(request.clone()).await.is_err() {
        assert!(Instant::now() < deadline, "a closed watch never freed its place");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_compaction_forgets_old_revisions() {
    // Goal: with automatic compaction every period, revisions older than one period become
    // unreadable without anyone asking, and the current state stays.
    let options = ServerOptions {
        auto_compaction_period: Some(Duration::from_millis(500)),
        ..ServerOptions::default()
    };
    let cluster = Cluster::start(1, options).await;
    let client = cluster.client();
    let first = client.put("c", "1").await.unwrap().header.unwrap().revision;
    for i in 2..10 {
        client.put("c", i.to_string()).await.unwrap();
    }
    let deadline = Instant::now() + WAIT;
    loop {
        // Keep writing so newer revisions exist to compact to.
        client.put("c", "latest").await.unwrap();
        let status = client.status_at(&cluster.endpoints()[0]).await.unwrap();
        if status.compact_revision > first {
            break;
        }
        assert!(Instant::now() < deadline, "no automatic compaction happened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = client
        .range(proto::RangeRequest {
            key: b"c".to_vec(),
            revision: first,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(ErrorCode::Compacted));
    assert_eq!(client.get("c").await.unwrap().unwrap().value, b"latest");
}

/// Sends `requests` over one pipeline to `address` and returns every answer by id.
async fn pipeline_answers(
    address: &str,
    requests: Vec<proto::PipelineRequest>,
) -> BTreeMap<u64, Vec<Option<proto::pipeline_response::Response>>> {
    let channel = raw_channel(address).await;
    let mut answers = proto::kv_client::KvClient::new(channel)
        .pipeline(tokio_stream::iter(requests))
        .await
        .expect("pipeline opens")
        .into_inner();
    let mut by_id: BTreeMap<u64, Vec<_>> = BTreeMap::new();
    // The stream ends once every request is answered (the client's side has ended).
    while let Some(answer) = tokio::time::timeout(WAIT, answers.message())
        .await
        .expect("answers in time")
        .expect("the pipeline does not break")
    {
        by_id.entry(answer.id).or_default().push(answer.response);
    }
    by_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_answers_every_request_once_under_its_id() {
    // Goal: over one pipeline, many writes and reads in flight together each get exactly one
    // answer, under their own id, with what the unary call would have answered: the reply,
    // or the store's error (too large, future revision, empty request, not the leader).
    use proto::pipeline_request::Request as Req;
    use proto::pipeline_response::Response as Resp;
    let cluster = Cluster::start(3, ServerOptions::default()).await;
    let client = cluster.client();
    client.put("p/warm", "up").await.expect("first put");
    let leader = cluster.leader().await;
    let write = |seq: u64, key: Vec<u8>| {
        Req::Write(proto::Command {
            session: Some(proto::Session {
                client_id: 4242,
                seq,
                ack_below: 1,
            }),
            op: Some(command::Op::Put(proto::PutRequest {
                key,
                value: format!("v{seq}").into_bytes(),
                ..Default::default()
            })),
        })
    };
    let range = |key: &str, revision: i64| {
        Req::Range(proto::RangeRequest {
            key: key.as_bytes().to_vec(),
            revision,
            ..Default::default()
        })
    };
    let mut requests = Vec::new();
    for i in 0..60u64 {
        requests.push((2 * i + 1, Some(write(i + 1, format!("p/{i}").into_bytes()))));
        requests.push((2 * i + 2, Some(range("p/warm", 0))));
    }
    let too_large = vec![b'k'; shoal_meta::limits::KEY_BYTES_MAX + 1];
    requests.push((1000, Some(write(1000, too_large))));
    requests.push((1001, Some(range("p/warm", 1_000_000))));
    requests.push((1002, None));
    let requests: Vec<_> = requests
        .into_iter()
        .map(|(id, request)| proto::PipelineRequest { id, request })
        .collect();
    let answers = pipeline_answers(&cluster.addresses[&leader], requests.clone()).await;
    assert_eq!(
        answers.keys().copied().collect::<Vec<_>>(),
        requests
            .iter()
            .map(|r| r.id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>(),
        "every request is answered"
    );
    let error_code = |id: u64| match &answers[&id][..] {
        [Some(Resp::Error(e))] => ErrorCode::try_from(e.code).unwrap(),
        other => panic!("request {id}: expected one error, got {other:?}"),
    };
    for i in 0..60u64 {
        match &answers[&(2 * i + 1)][..] {
            [Some(Resp::Write(proto::CommandReply {
                reply: Some(command_reply::Reply::Put(put)),
            }))] => assert!(put.header.unwrap().revision > 1),
            other => panic!("put {i}: expected one put reply, got {other:?}"),
        }
        match &answers[&(2 * i + 2)][..] {
            [Some(Resp::Range(r))] => assert_eq!(r.kvs[0].value, b"up"),
            other => panic!("read {i}: expected one range answer, got {other:?}"),
        }
    }
    assert_eq!(error_code(1000), ErrorCode::TooLarge);
    assert_eq!(error_code(1001), ErrorCode::FutureRevision);
    assert_eq!(error_code(1002), ErrorCode::InvalidArgument);
    for i in 0..60u64 {
        let kv = client
            .get(format!("p/{i}"))
            .await
            .unwrap()
            .expect("the put applied");
        assert_eq!((kv.value, kv.version), (format!("v{}", i + 1).into_bytes(), 1));
    }

    // A follower refuses writes with the leader's address, as a unary call would.
    let follower = cluster.addresses.keys().find(|id| **id != leader).unwrap();
    let answers = pipeline_answers(
        &cluster.addresses[follower],
        vec![proto::PipelineRequest {
            id: 7,
            request: Some(write(500, b"p/x".to_vec())),
        }],
    )
    .await;
    match &answers[&7][..] {
        [Some(Resp::Error(e))] => {
            assert_eq!(e.code, ErrorCode::NotLeader as i32);
            assert_eq!(e.leader_addr, cluster.addresses[&leader]);
        }
        other => panic!("expected NOT_LEADER, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_writes_from_many_tasks_apply_once_across_a_leader_stop() {
    // Goal: tasks sharing one client (so one pipeline per member) keep writing while the
    // leader is stopped: the writes in flight on the broken pipeline are retried at the new
    // leader, every write is acknowledged, and none applies twice (each key has version 1).
    let mut cluster = Cluster::start(3, ServerOptions::default()).await;
    let client = cluster.client();
    client.put("m/warm", "up").await.expect("first put");
    let leader = cluster.leader().await;
    let n_tasks = 16;
    let n_puts = 40;
    let halfway = Arc::new(tokio::sync::Barrier::new(n_tasks + 1));
    let mut tasks = Vec::new();
    for t in 0..n_tasks {
        let client = client.clone();
        let halfway = halfway.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..n_puts {
                if j == n_puts / 2 {
                    halfway.wait().await;
                }
                client
                    .put(format!("m/{t}/{j}"), format!("{t}-{j}"))
                    .await
                    .unwrap_or_else(|e| panic!("put m/{t}/{j}: {e}"));
            }
        }));
    }
    halfway.wait().await;
    cluster.stop(leader).await;
    for task in tasks {
        task.await.expect("writer");
    }
    let (_, kvs) = client.get_prefix(b"m/").await.expect("read back");
    assert_eq!(kvs.len(), n_tasks * n_puts + 1, "every acknowledged put is there");
    for kv in kvs {
        assert_eq!(kv.version, 1, "{} applied once", String::from_utf8_lossy(&kv.key));
    }
    // The stopped member ended its pipelines, so the client reaches it again once it is
    // back (not through a connection left draining).
    cluster.restart(leader).await;
    let status = client
        .status_at(&cluster.addresses[&leader])
        .await
        .expect("the restarted member answers");
    assert_eq!(status.header.expect("header").member_id, leader.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_answers_fail_alone_with_too_large() {
    // Goal: a read too large to send, and a transaction whose answer is too large to send
    // back, each fail at once with TOO_LARGE, while the writes sharing their pipeline go on.
    // (Sent as is, either would end the stream: the member refuses to decode or encode such
    // a message, and every request on the stream would then fail as unreachable and be
    // retried, the oversized one again and again.)
    let cluster = Cluster::start(3, ServerOptions::default()).await;
    let client = cluster.client();
    let value = vec![b'v'; shoal_meta::limits::VALUE_BYTES_MAX];
    for i in 0..6 {
        client
            .put(format!("big/{i}"), value.clone())
            .await
            .expect("a 1 MiB put");
    }
    let huge_read = proto::RangeRequest {
        key: vec![b'k'; shoal_meta::limits::REQUEST_BYTES_MAX + 100 * 1024],
        ..Default::default()
    };
    let refused = client.range(huge_read).await.expect_err("refused");
    assert_eq!(code(&refused), Some(ErrorCode::TooLarge), "{refused}");

    // Six 1 MiB values in one answer: over the 5 MiB an answer may take.
    let reads = (0..6)
        .map(|i| client::get_op(format!("big/{i}").as_bytes()))
        .collect();
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move { client.put(format!("o/{i}"), "x").await })
        })
        .collect();
    let started = Instant::now();
    let refused = client
        .txn(proto::TxnRequest {
            success: reads,
            ..Default::default()
        })
        .await
        .expect_err("the answer is too large");
    assert_eq!(code(&refused), Some(ErrorCode::TooLarge), "{refused}");
    assert!(
        started.elapsed() < fast_options().request_timeout,
        "refused at once, not after retries: {:?}",
        started.elapsed()
    );
    for put in writers {
        put.await.unwrap().expect("the writes beside it succeed");
    }
    for i in 0..20 {
        assert_eq!(client.get(format!("o/{i}")).await.unwrap().unwrap().version, 1);
    }
}
