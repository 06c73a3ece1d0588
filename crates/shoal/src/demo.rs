//! `shoal demo`: a local 3-node Raft cluster in this process, on loopback ports with real
//! fsync, narrated step by step: election, commits, the leader's crash, re-election, the old
//! leader's restart and catch-up, and a final check that every node holds the same data.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shoal_raft::{NodeId, Role};
use shoal_raft_runtime::{
    KvCommand, KvStateMachine, NodeOptions, RaftGroup, RaftNode, TICK_INTERVAL_DEFAULT,
};

use crate::cli::DemoArgs;
use crate::server::group_config;

const N_NODES: u64 = 3;
const WAIT_MAX: Duration = Duration::from_secs(10);

struct Member {
    node: RaftNode,
    group: RaftGroup<KvStateMachine>,
    server: tokio::task::JoinHandle<()>,
}

async fn start_member(
    id: NodeId,
    peers: &BTreeMap<NodeId, String>,
    data_dir: &Path,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<Member> {
    let node = RaftNode::new(NodeOptions::new(id, peers.clone()))?;
    let group = node.start_group(
        group_config(
            &data_dir.join(format!("node-{id}")),
            peers.keys().copied(),
            TICK_INTERVAL_DEFAULT,
        ),
        KvStateMachine::new(),
    )?;
    let serving = node.clone();
    let server = tokio::spawn(async move {
        let _ = serving.serve(listener, std::future::pending()).await;
    });
    Ok(Member { node, group, server })
}

fn say(started: Instant, text: &str) {
    outln!("[{:>6.3} s] {text}", started.elapsed().as_secs_f64());
}

async fn wait_for_leader(members: &BTreeMap<NodeId, Member>, not: Option<NodeId>) -> anyhow::Result<NodeId> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        for (id, member) in members {
            let state = member.group.state();
            if state.role == Role::Leader && Some(*id) != not {
                return Ok(*id);
            }
        }
        if Instant::now() > deadline {
            bail!("no leader elected within {WAIT_MAX:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn put(group: &RaftGroup<KvStateMachine>, key: &str, value: &str) -> anyhow::Result<()> {
    let command = KvCommand::Put {
        key: key.as_bytes().to_vec(),
        value: value.as_bytes().to_vec(),
    }
    .encode();
    group
        .propose(command)
        .await
        .with_context(|| format!("put {key}"))?;
    Ok(())
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp;
    let data_dir: PathBuf = match args.data_dir {
        Some(dir) => dir,
        None => {
            temp = tempfile::tempdir().context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(demo(&data_dir))
}

async fn demo(data_dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    outln!(
        "Shoal demo: a 3-node Raft cluster on loopback, data in {}",
        data_dir.display()
    );
    let mut listeners = BTreeMap::new();
    let mut peers = BTreeMap::new();
    for id in 1..=N_NODES {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding a loopback port")?;
        peers.insert(NodeId(id), listener.local_addr()?.to_string());
        listeners.insert(NodeId(id), listener);
    }
    let mut members = BTreeMap::new();
    for (id, listener) in listeners {
        members.insert(id, start_member(id, &peers, data_dir, listener).await?);
        say(
            started,
            &format!("node {id} started on {} (write-ahead log with fsync)", peers[&id]),
        );
    }

    let leader = wait_for_leader(&members, None).await?;
    let term = members[&leader].group.state().term;
    say(
        started,
        &format!("node {leader} won the election for term {term} (pre-vote, then a vote)"),
    );

    for i in 1..=5 {
        put(
            &members[&leader].group,
            &format!("greeting/{i}"),
            &format!("hello #{i}"),
        )
        .await?;
    }
    let commit = members[&leader].group.status().await?.commit_index;
    say(
        started,
        &format!("5 writes committed on a quorum and applied; commit index {commit}"),
    );

    let count = 1000;
    let t = Instant::now();
    let mut handles = Vec::new();
    for i in 0..count {
        let group = members[&leader].group.clone();
        handles.push(tokio::spawn(async move {
            put(&group, &format!("batch/{i}"), "x").await
        }));
    }
    for handle in handles {
        handle.await.context("writer task")??;
    }
    let fsyncs = members[&leader].group.n_fsyncs();
    say(
        started,
        &format!(
            "{count} concurrent writes committed in {:.0} ms (group commit: the leader has fsynced {fsyncs} times in all)",
            t.elapsed().as_secs_f64() * 1e3
        ),
    );

    say(
        started,
        &format!("crashing the leader, node {leader} (its server and Raft loop stop)"),
    );
    let crashed_at = Instant::now();
    let old = members.remove(&leader).context("leader present")?;
    old.server.abort();
    old.node.shutdown().await;
    let new_leader = wait_for_leader(&members, Some(leader)).await?;
    let new_term = members[&new_leader].group.state().term;
    say(
        started,
        &format!(
            "node {new_leader} elected for term {new_term} {:.0} ms after the crash",
            crashed_at.elapsed().as_secs_f64() * 1e3
        ),
    );
    put(&members[&new_leader].group, "after-failover", "still here").await?;
    say(
        started,
        &format!(
            "first write under the new leader committed {:.0} ms after the crash (quorum: 2 of 3)",
            crashed_at.elapsed().as_secs_f64() * 1e3
        ),
    );

    say(
        started,
        &format!("restarting node {leader} from its data directory"),
    );
    let listener = loop {
        match tokio::net::TcpListener::bind(&peers[&leader]).await {
            Ok(listener) => break listener,
            Err(_) if crashed_at.elapsed() < WAIT_MAX => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Err(e).context("re-binding the old leader's port"),
        }
    };
    members.insert(leader, start_member(leader, &peers, data_dir, listener).await?);
    let target = members[&new_leader].group.state().commit_index;
    members[&leader]
        .group
        .wait_for(WAIT_MAX, |s| s.applied_index >= target)
        .await
        .context("the restarted node catching up")?;
    say(
        started,
        &format!("node {leader} caught up to index {target} as a follower"),
    );

    let mut views = Vec::new();
    for (id, member) in &members {
        let view = member
            .group
            .read_local(|sm: &KvStateMachine| {
                (
                    sm.len(),
                    sm.get(b"after-failover").cloned(),
                    sm.get(b"greeting/1").cloned(),
                )
            })
            .await?;
        views.push((*id, member.group.state().applied_index, view));
    }
    let reference = &views[0].2;
    let all_same = views.iter().all(|(_, _, view)| view == reference);
    for (id, applied, (n_keys, _, _)) in &views {
        say(
            started,
            &format!("node {id}: applied index {applied}, {n_keys} keys"),
        );
    }
    let linear = members[&new_leader]
        .group
        .read(|sm: &KvStateMachine| sm.get(b"after-failover").cloned())
        .await?;
    say(
        started,
        &format!(
            "linearizable read (ReadIndex) of after-failover: {:?}",
            linear.map(|v| String::from_utf8_lossy(&v).to_string())
        ),
    );
    for member in members.values() {
        member.server.abort();
        member.node.shutdown().await;
    }
    if !all_same {
        bail!("the nodes disagree: {views:?}");
    }
    say(
        started,
        "every node holds the same data: the cluster survived its leader's crash",
    );
    Ok(())
}
