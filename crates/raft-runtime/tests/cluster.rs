//! Real clusters in one process: nodes on loopback ports with temporary data directories,
//! talking gRPC. No sleeps as synchronisation: every wait is on a published state change or
//! a poll with a deadline.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shoal_raft::{LogIndex, NodeId, ProposeError, Role};
use shoal_raft_runtime::{
    ClientOptions, Error, GroupConfig, GroupState, KvCommand, KvStateMachine, MembershipChange, NodeOptions,
    RaftClient, RaftGroup, RaftNode,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const GROUP: u64 = 1;
/// Generous: tests share two cores with other builds.
const WAIT: Duration = Duration::from_secs(20);

fn put(key: &str, value: &str) -> Vec<u8> {
    KvCommand::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
    .encode()
}

struct TestNode {
    node: RaftNode,
    groups: BTreeMap<u64, RaftGroup<KvStateMachine>>,
    server: JoinHandle<Result<(), Error>>,
}

impl TestNode {
    fn group(&self) -> &RaftGroup<KvStateMachine> {
        &self.groups[&GROUP]
    }
}

struct Cluster {
    _root: tempfile::TempDir,
    root: PathBuf,
    addresses: BTreeMap<NodeId, String>,
    initial_voters: Vec<NodeId>,
    group_ids: Vec<u64>,
    snapshot_interval_entries: u64,
    nodes: BTreeMap<NodeId, TestNode>,
}

/// Logs to the test's output; `SHOAL_LOG=debug` shows the runtime's events.
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl Cluster {
    /// Starts `n` voters hosting the groups `group_ids`.
    async fn start(n: u64, group_ids: &[u64], snapshot_interval_entries: u64) -> Cluster {
        init_tracing();
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
            initial_voters: (1..=n).map(NodeId).collect(),
            group_ids: group_ids.to_vec(),
            snapshot_interval_entries,
            nodes: BTreeMap::new(),
        };
        for (id, listener) in listeners {
            cluster.start_node(id, listener);
        }
        cluster
    }

    fn data_dir(&self, id: NodeId, group_id: u64) -> PathBuf {
        self.root
            .join(format!("node-{id}"))
            .join(format!("group-{group_id}"))
    }

    fn start_node(&mut self, id: NodeId, listener: TcpListener) {
        let node = RaftNode::new(NodeOptions::new(id, self.addresses.clone())).expect("node");
        let mut groups = BTreeMap::new();
        for group_id in self.group_ids.clone() {
            let mut config =
                GroupConfig::new(group_id, self.data_dir(id, group_id), self.initial_voters.clone());
            config.snapshot_interval_entries = self.snapshot_interval_entries;
            let group = node
                .start_group(config, KvStateMachine::new())
                .expect("group starts");
            groups.insert(group_id, group);
        }
        let server = {
            let node = node.clone();
            tokio::spawn(async move { node.serve(listener, std::future::pending()).await })
        };
        self.nodes.insert(id, TestNode { node, groups, server });
    }

    /// Starts a node that is not (yet) a member: a joiner.
    async fn start_joiner(&mut self, id: NodeId) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        self.addresses
            .insert(id, listener.local_addr().expect("address").to_string());
        self.start_node(id, listener);
    }

    async fn stop(&mut self, id: NodeId) {
        let node = self.nodes.remove(&id).expect("running node");
        node.node.shutdown().await;
        node.server
            .await
            .expect("server task")
            .expect("server stops cleanly");
    }

    async fn restart(&mut self, id: NodeId) {
        let address = self.addresses[&id].clone();
        let listener = TcpListener::bind(&address).await.expect("rebind the same port");
        self.start_node(id, listener);
    }

    fn node(&self, id: NodeId) -> &TestNode {
        &self.nodes[&id]
    }

    fn endpoints(&self) -> Vec<String> {
        self.addresses.values().cloned().collect()
    }

    /// Waits until one running node leads `group_id` and every other running member agrees.
    async fn leader_of(&self, group_id: u64) -> NodeId {
        let deadline = Instant::now() + WAIT;
        loop {
            let states: Vec<(NodeId, GroupState)> = self
                .nodes
                .iter()
                .map(|(id, n)| (*id, n.groups[&group_id].state()))
                .collect();
            let leaders: Vec<&(NodeId, GroupState)> =
                states.iter().filter(|(_, s)| s.role == Role::Leader).collect();
            if let [(leader, leader_state)] = leaders.as_slice() {
                let agreed = states
                    .iter()
                    .filter(|(id, _)| leader_state.membership.contains(*id))
                    .all(|(_, s)| s.leader == Some(*leader) && s.term == leader_state.term);
                if agreed {
                    return *leader;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no agreed leader of group {group_id}: {states:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn leader(&self) -> NodeId {
        self.leader_of(GROUP).await
    }

    /// Proposes at the current leader, retrying while leadership settles.
    async fn propose(&self, command: Vec<u8>) -> Vec<u8> {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.leader().await;
            match self.node(leader).group().propose(command.clone()).await {
                Ok(reply) => return reply,
                Err(error) => {
                    assert!(Instant::now() < deadline, "proposal keeps failing: {error}");
                    assert!(
                        matches!(
                            error,
                            Error::NotLeader { .. } | Error::LeadershipLost { .. } | Error::Dropped { .. }
                        ),
                        "unexpected proposal error: {error}"
                    );
                }
            }
        }
    }

    /// Waits until every running member applied `index` of the main group.
    async fn wait_applied(&self, index: LogIndex) {
        for (id, node) in &self.nodes {
            node.group()
                .wait_for(WAIT, |s| s.applied_index >= index)
                .await
                .unwrap_or_else(|e| panic!("node {id} did not apply {index}: {e}"));
        }
    }

    async fn kv_contents(&self, id: NodeId) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.node(id)
            .group()
            .read_local(|kv| {
                (0..1000)
                    .filter_map(|i| {
                        let key = format!("k{i}").into_bytes();
                        kv.get(&key).map(|v| (key, v.clone()))
                    })
                    .collect()
            })
            .await
            .expect("local read")
    }

    async fn shutdown(mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}

fn reply_value(reply: &[u8]) -> Option<Vec<u8>> {
    KvStateMachine::decode_reply(reply).expect("a put reply")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_elected_and_proposals_commit_with_replies() {
    // Goal: three nodes elect one leader; proposals commit, are answered with the state
    // machine's reply, and are applied on every node; concurrent proposals share fsyncs.
    let cluster = Cluster::start(3, &[GROUP], 10_000).await;
    let leader = cluster.leader().await;
    assert_eq!(reply_value(&cluster.propose(put("k1", "a")).await), None);
    assert_eq!(
        reply_value(&cluster.propose(put("k1", "b")).await),
        Some(b"a".to_vec())
    );

    // 200 concurrent proposals: group commit means far fewer fsyncs than proposals.
    let group = cluster.node(leader).group().clone();
    let fsyncs_before = group.n_fsyncs();
    let proposals: Vec<_> = (0..200)
        .map(|i| {
            let group = group.clone();
            tokio::spawn(async move { group.propose(put(&format!("k{}", 100 + i), "x")).await })
        })
        .collect();
    for proposal in proposals {
        let reply = proposal.await.expect("task").expect("committed");
        assert_eq!(reply_value(&reply), None);
    }
    let n_fsyncs = group.n_fsyncs() - fsyncs_before;
    assert!(n_fsyncs < 200, "200 concurrent proposals took {n_fsyncs} fsyncs");

    let status = group.status().await.expect("status");
    assert_eq!(status.role, Role::Leader);
    assert_eq!(status.progress.len(), 3);
    cluster.wait_applied(status.commit_index).await;
    let expected = cluster.kv_contents(leader).await;
    assert_eq!(expected.len(), 201);
    for id in [NodeId(1), NodeId(2), NodeId(3)] {
        assert_eq!(cluster.kv_contents(id).await, expected, "node {id} differs");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leader_takes_over_after_leader_shutdown() {
    // Goal: when the leader stops, another node is elected and commits new proposals, and
    // nothing acknowledged before is lost.
    let mut cluster = Cluster::start(3, &[GROUP], 10_000).await;
    cluster.propose(put("k1", "before")).await;
    let old_leader = cluster.leader().await;
    let started = Instant::now();
    cluster.stop(old_leader).await;
    let new_leader = cluster.leader().await;
    let failover = started.elapsed();
    assert_ne!(new_leader, old_leader);
    assert_eq!(
        reply_value(&cluster.propose(put("k1", "after")).await),
        Some(b"before".to_vec())
    );
    eprintln!("failover took {failover:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_recovers_from_its_data_dir_and_catches_up() {
    // Goal: a stopped follower restarted from its data dir keeps what it had and catches up
    // with what was committed while it was down.
    let mut cluster = Cluster::start(3, &[GROUP], 10_000).await;
    for i in 0..10 {
        cluster.propose(put(&format!("k{i}"), "1")).await;
    }
    let leader = cluster.leader().await;
    let follower = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let commit = cluster.node(leader).group().state().commit_index;
    cluster.wait_applied(commit).await;
    cluster.stop(follower).await;
    for i in 10..30 {
        cluster.propose(put(&format!("k{i}"), "2")).await;
    }
    cluster.restart(follower).await;
    let commit = cluster.node(cluster.leader().await).group().state().commit_index;
    cluster.wait_applied(commit).await;
    assert_eq!(
        cluster.kv_contents(follower).await,
        cluster.kv_contents(leader).await
    );
    assert_eq!(cluster.kv_contents(follower).await.len(), 30);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_far_behind_catches_up_by_snapshot() {
    // Goal: after the leader compacted its log past what a stopped follower holds, the
    // restarted follower is brought up to date by an InstallSnapshot stream and the state
    // machine restored from it.
    let mut cluster = Cluster::start(3, &[GROUP], 16).await;
    let leader = cluster.leader().await;
    let follower = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    cluster.propose(put("k0", "early")).await;
    let commit = cluster.node(leader).group().state().commit_index;
    cluster.wait_applied(commit).await;
    cluster.stop(follower).await;
    for i in 1..100 {
        cluster.propose(put(&format!("k{i}"), "late")).await;
    }
    let leader = cluster.leader().await;
    let leader_state = cluster.node(leader).group().state();
    assert!(
        leader_state.snapshot_index > commit.plus(1),
        "the leader must have compacted past the follower's log: {leader_state:?}"
    );
    cluster.restart(follower).await;
    let commit = cluster.node(leader).group().state().commit_index;
    cluster.wait_applied(commit).await;
    let follower_state = cluster.node(follower).group().state();
    assert!(
        follower_state.snapshot_index > LogIndex::ZERO,
        "the follower should hold a snapshot: {follower_state:?}"
    );
    assert_eq!(
        cluster.kv_contents(follower).await,
        cluster.kv_contents(leader).await
    );
    assert_eq!(cluster.kv_contents(follower).await.len(), 100);
    // The installed snapshot survives a restart too.
    cluster.stop(follower).await;
    cluster.restart(follower).await;
    cluster.wait_applied(commit).await;
    assert_eq!(cluster.kv_contents(follower).await.len(), 100);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_on_demand_is_not_held_back_by_a_follower_that_is_down() {
    // Goal: with a follower down, the leader defers compacting its log past a new snapshot
    // (the follower would then need the whole snapshot) for up to half an interval. A
    // snapshot asked for meanwhile (`cluster snapshot save`) is taken at once and holds the
    // state at the applied index, instead of waiting for writes that may never come.
    let interval = 40;
    let mut cluster = Cluster::start(3, &[GROUP], interval).await;
    let leader = cluster.leader().await;
    let follower = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    cluster.stop(follower).await;
    let mut i = 0;
    while cluster.node(leader).group().state().snapshot_index == LogIndex::ZERO {
        cluster.propose(put(&format!("k{i}"), "v")).await;
        i += 1;
        assert!(i < 10 * interval, "no periodic snapshot after {i} writes");
    }
    // A few more writes, fewer than half an interval: the compaction is still pending.
    for _ in 0..5 {
        cluster.propose(put(&format!("k{i}"), "v")).await;
        i += 1;
    }
    assert_eq!(cluster.leader().await, leader);
    let status = cluster.node(leader).group().status().await.expect("status");
    let periodic = cluster.node(leader).group().state().snapshot_index;
    assert!(
        status.first_index <= periodic,
        "the leader must not have compacted past the stopped follower yet: {status:?}"
    );
    let (meta, mut data) = tokio::time::timeout(
        Duration::from_secs(5),
        cluster.node(leader).group().snapshot_now(),
    )
    .await
    .expect("a snapshot on demand does not wait for the follower")
    .expect("snapshot now");
    let applied = cluster.node(leader).group().state().applied_index;
    assert!(
        meta.index > periodic,
        "a new snapshot, not the periodic one: {meta:?}"
    );
    assert_eq!(meta.index, applied);
    let mut restored = KvStateMachine::new();
    shoal_raft_runtime::StateMachine::restore(&mut restored, &mut data).expect("restores");
    assert_eq!(restored.len(), i as usize);
    // The stopped follower still catches up (by the snapshot if the log was compacted).
    cluster.restart(follower).await;
    cluster.wait_applied(applied).await;
    assert_eq!(
        cluster.kv_contents(follower).await,
        cluster.kv_contents(leader).await
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_add_learner_promote_and_remove() {
    // Goal: a new node joins as a learner (its address travels in the ConfigChange entry),
    // catches up, is promoted to voter, and an old voter is removed; the group keeps
    // committing throughout.
    let mut cluster = Cluster::start(3, &[GROUP], 10_000).await;
    for i in 0..5 {
        cluster.propose(put(&format!("k{i}"), "v")).await;
    }
    let new_id = NodeId(4);
    cluster.start_joiner(new_id).await;
    assert_eq!(cluster.node(new_id).group().state().role, Role::Learner);
    let leader = cluster.leader().await;
    let address = cluster.addresses[&new_id].clone();
    let (_, membership) = cluster
        .node(leader)
        .group()
        .change_membership(MembershipChange::AddLearner { id: new_id, address })
        .await
        .expect("learner added");
    assert!(membership.learners.contains(&new_id));
    let commit = cluster.node(leader).group().state().commit_index;
    cluster
        .node(new_id)
        .group()
        .wait_for(WAIT, |s| s.applied_index >= commit)
        .await
        .expect("the learner catches up");
    assert_eq!(cluster.kv_contents(new_id).await.len(), 5);

    // Promote; the core refuses while the learner lags, so retry until it is accepted.
    let deadline = Instant::now() + WAIT;
    let membership = loop {
        let leader = cluster.leader().await;
        match cluster
            .node(leader)
            .group()
            .change_membership(MembershipChange::PromoteLearner(new_id))
            .await
        {
            Ok((_, membership)) => break membership,
            Err(Error::Rejected(ProposeError::LearnerBehind { .. } | ProposeError::ConfigChangePending)) => {
                assert!(Instant::now() < deadline, "the learner never caught up");
                tokio::task::yield_now().await;
            }
            Err(error) => panic!("promotion failed: {error}"),
        }
    };
    assert!(membership.voters.contains(&new_id));
    cluster
        .node(new_id)
        .group()
        .wait_for(WAIT, |s| s.role == Role::Follower || s.role == Role::Leader)
        .await
        .expect("the promoted learner becomes a voter");

    // Remove a voter other than the leader.
    let leader = cluster.leader().await;
    let removed = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let (_, membership) = cluster
        .node(leader)
        .group()
        .change_membership(MembershipChange::Remove(removed))
        .await
        .expect("voter removed");
    assert!(!membership.contains(removed));
    assert_eq!(membership.voters.len(), 3);
    cluster.stop(removed).await;
    assert_eq!(
        reply_value(&cluster.propose(put("k0", "after")).await),
        Some(b"v".to_vec())
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_transfer_hands_over_to_the_target() {
    // Goal: TransferLeader makes the chosen follower the leader, and it commits.
    let cluster = Cluster::start(3, &[GROUP], 10_000).await;
    cluster.propose(put("k1", "a")).await;
    let leader = cluster.leader().await;
    let target = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    cluster
        .node(leader)
        .group()
        .transfer_leader(target)
        .await
        .expect("transfer completes");
    assert_eq!(cluster.leader().await, target);
    assert_eq!(
        reply_value(&cluster.propose(put("k1", "b")).await),
        Some(b"a".to_vec())
    );
    // Transfer back through the gRPC client.
    let client = RaftClient::new(cluster.endpoints(), GROUP).expect("client");
    client.transfer_leader(leader).await.expect("transfer back");
    assert_eq!(cluster.leader().await, leader);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_read_sees_the_last_acknowledged_write() {
    // Goal: a ReadIndex read issued after a write was acknowledged sees it, on the leader and
    // through the gRPC client; followers refuse linearizable reads with a redirect.
    let cluster = Cluster::start(3, &[GROUP], 10_000).await;
    let leader = cluster.leader().await;
    for i in 0..20 {
        let value = format!("v{i}");
        cluster.propose(put("k1", &value)).await;
        let read = cluster
            .node(leader)
            .group()
            .read(|kv| kv.get(b"k1").cloned())
            .await
            .expect("read");
        assert_eq!(read, Some(value.into_bytes()));
    }
    let follower = [NodeId(1), NodeId(2), NodeId(3)]
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    match cluster.node(follower).group().read(|_| ()).await {
        Err(Error::NotLeader {
            leader_hint: Some(hint),
            leader_addr: Some(_),
        }) => assert_eq!(hint, leader),
        other => panic!("a follower must redirect reads, got {other:?}"),
    }

    // Through gRPC, starting at a follower so the client must follow the redirect.
    let mut endpoints = vec![cluster.addresses[&follower].clone()];
    endpoints.extend(cluster.endpoints());
    let client = RaftClient::with_options(endpoints, GROUP, ClientOptions::default()).expect("client");
    let reply = client.propose(put("k2", "grpc")).await.expect("propose via gRPC");
    assert_eq!(reply_value(&reply), None);
    assert_eq!(
        client.leader().as_deref(),
        Some(cluster.addresses[&leader].as_str())
    );
    let read = client.read(b"k2".to_vec()).await.expect("read via gRPC");
    assert_eq!(KvStateMachine::decode_reply(&read), Ok(Some(b"grpc".to_vec())));
    let status = client.status().await.expect("status via gRPC");
    assert_eq!(status.leader, Some(leader));
    assert_eq!(status.membership.voters.len(), 3);
    assert!(status.n_fsyncs > 0);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_share_nodes_and_transport() {
    // Goal: multi-raft: two groups on the same three nodes elect leaders and commit
    // independently over the shared transport (messages demultiplexed by group id).
    let cluster = Cluster::start(3, &[1, 2], 10_000).await;
    for group_id in [1, 2] {
        let leader = cluster.leader_of(group_id).await;
        let group = &cluster.node(leader).groups[&group_id];
        let reply = group
            .propose(put("k1", &format!("group {group_id}")))
            .await
            .expect("committed");
        assert_eq!(reply_value(&reply), None);
    }
    for group_id in [1u64, 2] {
        let leader = cluster.leader_of(group_id).await;
        let value = cluster.node(leader).groups[&group_id]
            .read(|kv| kv.get(b"k1").cloned())
            .await
            .expect("read");
        assert_eq!(value, Some(format!("group {group_id}").into_bytes()));
    }
    let dirs: Vec<bool> = [1u64, 2]
        .iter()
        .map(|g| Path::new(&cluster.data_dir(NodeId(1), *g)).exists())
        .collect();
    assert_eq!(dirs, vec![true, true]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_voter_group_commits_alone() {
    // Goal: a group of one voter elects itself and commits with its own fsyncs only.
    let cluster = Cluster::start(1, &[GROUP], 10_000).await;
    assert_eq!(cluster.leader().await, NodeId(1));
    assert_eq!(reply_value(&cluster.propose(put("k1", "a")).await), None);
    let group = cluster.node(NodeId(1)).group();
    assert_eq!(
        group.read(|kv| kv.get(b"k1").cloned()).await.expect("read"),
        Some(b"a".to_vec())
    );
    assert!(group.n_fsyncs() >= 2, "the no-op and the put were fsynced");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_proposal_fails_when_leadership_is_lost() {
    // Goal: a leader cut off from its quorum steps down (check-quorum, Raft thesis §6.2) and
    // fails its pending proposal with LeadershipLost instead of leaving the caller hanging.
    let mut cluster = Cluster::start(3, &[GROUP], 10_000).await;
    cluster.propose(put("k1", "a")).await;
    let leader = cluster.leader().await;
    for id in [NodeId(1), NodeId(2), NodeId(3)] {
        if id != leader {
            cluster.stop(id).await;
        }
    }
    let result = cluster.node(leader).group().propose(put("k1", "b")).await;
    assert!(
        matches!(result, Err(Error::LeadershipLost { .. })),
        "expected LeadershipLost, got {result:?}"
    );
    cluster
        .node(leader)
        .group()
        .wait_for(WAIT, |s| s.role != Role::Leader)
        .await
        .expect("the old leader publishes its step-down");
    cluster.shutdown().await;
}

/// A [`KvStateMachine`] whose snapshots take as long as a large state's would.
struct SlowSnapshots {
    kv: KvStateMachine,
    delay_ms: Arc<AtomicU64>,
}

impl shoal_raft_runtime::StateMachine for SlowSnapshots {
    fn apply(&mut self, index: LogIndex, command: &[u8]) -> Vec<u8> {
        self.kv.apply(index, command)
    }

    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::Relaxed)));
        self.kv.snapshot(out)
    }

    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.kv.restore(input)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_snapshot_neither_costs_leadership_nor_stops_writes_for_good() {
    // Goal: a snapshot that takes longer than an election timeout (a large state) does not
    // stop the leader's heartbeats: the term stays the same through several snapshots, writes
    // proposed during one complete when it ends, and every member ends with the same state.
    // Only the leader's snapshots are slow: were the followers frozen as long, they could not
    // time out either.
    init_tracing();
    let delay = Duration::from_millis(1500);
    let mut listeners = BTreeMap::new();
    let mut addresses = BTreeMap::new();
    for id in 1..=3 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        addresses.insert(NodeId(id), listener.local_addr().expect("address").to_string());
        listeners.insert(NodeId(id), listener);
    }
    let root = tempfile::tempdir().expect("temp dir");
    let mut groups = BTreeMap::new();
    let mut delays = BTreeMap::new();
    let mut nodes = Vec::new();
    for (id, listener) in listeners {
        let node = RaftNode::new(NodeOptions::new(id, addresses.clone())).expect("node");
        let mut config = GroupConfig::new(
            GROUP,
            root.path().join(format!("node-{id}")),
            addresses.keys().copied(),
        );
        config.snapshot_interval_entries = 20;
        let delay_ms = Arc::new(AtomicU64::new(0));
        delays.insert(id, delay_ms.clone());
        let machine = SlowSnapshots {
            kv: KvStateMachine::new(),
            delay_ms,
        };
        groups.insert(id, node.start_group(config, machine).expect("group starts"));
        let serving = node.clone();
        tokio::spawn(async move { serving.serve(listener, std::future::pending()).await });
        nodes.push(node);
    }
    let deadline = Instant::now() + WAIT;
    let (leader, term) = loop {
        if let Some((id, group)) = groups.iter().find(|(_, g)| g.state().role == Role::Leader) {
            break (*id, group.state().term);
        }
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    delays[&leader].store(delay.as_millis() as u64, Ordering::Relaxed);
    let started = Instant::now();
    for i in 0..70 {
        let proposed = Instant::now();
        groups[&leader]
            .propose(put(&format!("k{i}"), "v"))
            .await
            .unwrap_or_else(|e| panic!("write {i} failed (a snapshot cost the leadership?): {e}"));
        assert!(
            proposed.elapsed() < delay + Duration::from_secs(1),
            "write {i} waited {:?}",
            proposed.elapsed()
        );
    }
    assert!(
        started.elapsed() >= delay * 2,
        "70 writes cross at least two snapshots of 1.5 s each: took {:?}",
        started.elapsed()
    );
    for (id, group) in &groups {
        assert_eq!(group.state().term, term, "node {id} saw an election");
        assert!(
            group.state().snapshot_index.0 >= 40,
            "node {id} took its snapshots"
        );
    }
    // Every member converges on the same 70 keys (the followers apply the last entries a
    // moment after the leader answered).
    let deadline = Instant::now() + WAIT;
    for (id, group) in &groups {
        loop {
            let n_keys = group.read_local(|m| m.kv.len()).await.expect("local read");
            if n_keys == 70 {
                break;
            }
            assert!(Instant::now() < deadline, "node {id} holds {n_keys} keys, not 70");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let leader_kv = groups[&leader].read_local(|m| m.kv.clone()).await.expect("read");
    for (id, group) in &groups {
        let kv = group.read_local(|m| m.kv.clone()).await.expect("read");
        assert_eq!(kv, leader_kv, "node {id} differs from the leader");
    }
    // A snapshot on demand (what `cluster snapshot save` streams) holds the same state.
    let (meta, mut data) = groups[&leader].snapshot_now().await.expect("snapshot now");
    assert_eq!(meta.index, groups[&leader].state().applied_index);
    let mut restored = KvStateMachine::new();
    shoal_raft_runtime::StateMachine::restore(&mut restored, &mut data).expect("restores");
    assert_eq!(restored, leader_kv);
    for node in nodes {
        node.shutdown().await;
    }
}

/// A [`KvStateMachine`] that panics when it applies `boom` (a bug in a state machine).
struct PanicsOnBoom(KvStateMachine);

impl shoal_raft_runtime::StateMachine for PanicsOnBoom {
    fn apply(&mut self, index: LogIndex, command: &[u8]) -> Vec<u8> {
        assert_ne!(command, b"boom", "the state machine cannot apply boom");
        self.0.apply(index, command)
    }

    fn snapshot(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        self.0.snapshot(out)
    }

    fn restore(&mut self, input: &mut dyn std::io::Read) -> std::io::Result<()> {
        self.0.restore(input)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_loop_stops_the_group_with_a_fatal_error() {
    // Goal: a panic in the group's loop (here the state machine's apply) stops the group,
    // its pending proposer gets `Fatal` (not a plain shutdown, which would say nothing), later
    // calls get the same, and the node's other work goes on.
    init_tracing();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addresses = BTreeMap::from([(NodeId(1), listener.local_addr().expect("address").to_string())]);
    let root = tempfile::tempdir().expect("temp dir");
    let node = RaftNode::new(NodeOptions::new(NodeId(1), addresses)).expect("node");
    let config = GroupConfig::new(GROUP, root.path().join("group"), [NodeId(1)]);
    let group = node
        .start_group(config, PanicsOnBoom(KvStateMachine::new()))
        .expect("group starts");
    group
        .wait_for(WAIT, |s| s.role == Role::Leader)
        .await
        .expect("a single voter leads");
    group
        .propose(put("k", "v"))
        .await
        .expect("a normal write applies");
    match group.propose(b"boom".to_vec()).await {
        Err(Error::Fatal(message)) => assert!(message.contains("panicked"), "{message}"),
        other => panic!("the proposer must learn of the panic, got {other:?}"),
    }
    group.closed().await;
    assert!(group.state().stopped);
    assert!(matches!(group.propose(put("k", "w")).await, Err(Error::Fatal(_))));
    // The runtime is unharmed: another group starts and commits on the same node.
    let other = node
        .start_group(
            GroupConfig::new(GROUP + 1, root.path().join("other"), [NodeId(1)]),
            KvStateMachine::new(),
        )
        .expect("another group starts");
    other
        .wait_for(WAIT, |s| s.role == Role::Leader)
        .await
        .expect("it leads");
    other.propose(put("k", "v")).await.expect("and commits");
    node.shutdown().await;
}
