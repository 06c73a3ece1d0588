//! `shoal demo`: a local 3-member coordination store in this process, on loopback ports with
//! real fsync, narrated step by step: election; writes, a compare-and-swap, a watch and an
//! ephemeral key on a lease; the leader's crash while a client keeps writing; re-election;
//! the watch and the lease surviving it; the old leader's restart and catch-up; and a final
//! check that every member holds the same state (equal state hashes at one revision). Then
//! MapReduce in separate processes: a word count whose worker is killed with SIGKILL mid-job
//! and whose output still counts every word of the corpus exactly once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use shoal_meta::client::{ClientOptions, MetaClient};
use shoal_meta::proto;
use shoal_meta::server::{MetaServer, ServerOptions};
use shoal_meta::store::{prefix_end, MetaStore};
use shoal_raft::{NodeId, Role};
use shoal_raft_runtime::{NodeOptions, RaftNode, TICK_INTERVAL_DEFAULT};

use crate::cli::DemoArgs;
use crate::server::group_config;

const N_NODES: u64 = 3;
const WAIT_MAX: Duration = Duration::from_secs(10);

struct Member {
    node: RaftNode,
    server: MetaServer,
    serving: tokio::task::JoinHandle<()>,
}

async fn start_member(
    id: NodeId,
    peers: &BTreeMap<NodeId, String>,
    data_dir: &Path,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<Member> {
    let node = RaftNode::new(NodeOptions::new(id, peers.clone()))?;
    let config = group_config(
        &data_dir.join(format!("node-{id}")),
        peers.keys().copied(),
        TICK_INTERVAL_DEFAULT,
    );
    let server = MetaServer::start(&node, config, ServerOptions::default(), MetaStore::new())?;
    let routes = server.routes();
    let serving_node = node.clone();
    let serving = tokio::spawn(async move {
        let _ = serving_node
            .serve_with(listener, std::future::pending(), routes)
            .await;
    });
    Ok(Member {
        node,
        server,
        serving,
    })
}

fn say(started: Instant, text: &str) {
    outln!("[{:>6.3} s] {text}", started.elapsed().as_secs_f64());
}

async fn wait_for_leader(members: &BTreeMap<NodeId, Member>, not: Option<NodeId>) -> anyhow::Result<NodeId> {
    let deadline = Instant::now() + WAIT_MAX;
    loop {
        for (id, member) in members {
            if member.server.group().state().role == Role::Leader && Some(*id) != not {
                return Ok(*id);
            }
        }
        if Instant::now() > deadline {
            bail!("no leader elected within {WAIT_MAX:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
        "Shoal demo: a 3-member coordination store (Raft + MVCC) on loopback, data in {}",
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
            &format!(
                "member {id} started on {} (write-ahead log with fsync)",
                peers[&id]
            ),
        );
    }
    let endpoints: Vec<String> = peers.values().cloned().collect();
    let client = MetaClient::with_options(
        endpoints.clone(),
        ClientOptions {
            request_timeout: Duration::from_secs(1),
            retry_timeout: WAIT_MAX,
            ..ClientOptions::default()
        },
    )?;

    let leader = wait_for_leader(&members, None).await?;
    let term = members[&leader].server.group().state().term;
    say(
        started,
        &format!("member {leader} won the election for term {term} (pre-vote, then a vote)"),
    );

    // A watcher on config/, which will have to survive the leader's crash.
    let mut watcher = client
        .watch(proto::WatchRequest {
            key: b"config/".to_vec(),
            range_end: prefix_end(b"config/"),
            ..Default::default()
        })
        .await
        .context("watch")?;
    let n_events = Arc::new(AtomicU64::new(0));
    let watch_task = {
        let n_events = n_events.clone();
        tokio::spawn(async move {
            loop {
                match watcher.next().await {
                    Ok(response) => {
                        n_events.fetch_add(response.events.len() as u64, Ordering::Relaxed);
                    }
                    Err(e) => return Err::<(), _>(e),
                }
            }
        })
    };
    say(
        started,
        "a client watches config/ (every change, in order, exactly once)",
    );

    let put = client.put("config/db", "postgres://db-1").await.context("put")?;
    say(
        started,
        &format!(
            "put config/db at revision {} (committed on a quorum, fsynced)",
            put.header.map_or(0, |h| h.revision)
        ),
    );
    let swapped = client
        .cas(b"config/db", b"postgres://db-1", b"postgres://db-2")
        .await
        .context("cas")?;
    let refused = client
        .cas(b"config/db", b"postgres://db-1", b"postgres://db-3")
        .await
        .context("cas")?;
    say(
        started,
        &format!("compare-and-swap db-1 -> db-2: {swapped}; a second one expecting db-1 again: {refused}"),
    );
    let lease = client.lease_grant(10).await.context("lease grant")?.id;
    client
        .put_with(proto::PutRequest {
            key: b"workers/w1".to_vec(),
            value: b"alive".to_vec(),
            lease,
            ..Default::default()
        })
        .await
        .context("put with lease")?;
    say(
        started,
        &format!("workers/w1 is attached to lease {lease} (TTL 10 s): it vanishes if not kept alive"),
    );

    let count = 1000;
    let t = Instant::now();
    let mut handles = Vec::new();
    for i in 0..count {
        let client = client.clone();
        handles.push(tokio::spawn(async move {
            client.put(format!("batch/{i}"), "x").await
        }));
    }
    for handle in handles {
        handle.await.context("writer task")?.context("put")?;
    }
    let fsyncs = members[&leader].server.group().n_fsyncs();
    say(
        started,
        &format!(
            "{count} concurrent puts committed in {:.0} ms (group commit: the leader has fsynced {fsyncs} times in all)",
            t.elapsed().as_secs_f64() * 1e3
        ),
    );

    // A client keeps writing config/ while the leader crashes.
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            for i in 0..40 {
                client.put(format!("config/tick/{i}"), i.to_string()).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    say(
        started,
        &format!("crashing the leader, member {leader}, while a client keeps writing"),
    );
    let crashed_at = Instant::now();
    let old = members.remove(&leader).context("leader present")?;
    old.serving.abort();
    old.node.shutdown().await;
    let new_leader = wait_for_leader(&members, Some(leader)).await?;
    let new_term = members[&new_leader].server.group().state().term;
    say(
        started,
        &format!(
            "member {new_leader} elected for term {new_term} {:.0} ms after the crash",
            crashed_at.elapsed().as_secs_f64() * 1e3
        ),
    );
    writer
        .await
        .context("writer task")?
        .context("a write during the failover")?;
    let (_, ticks) = client
        .get_prefix(b"config/tick/")
        .await
        .context("reading the ticks")?;
    let n_once = ticks.iter().filter(|kv| kv.version == 1).count();
    say(
        started,
        &format!(
            "the writing client finished its 40 puts through the failover; {} keys, {n_once} written exactly once",
            ticks.len()
        ),
    );
    if ticks.len() != 40 || n_once != 40 {
        bail!(
            "a write during the failover was lost or applied twice: {} keys, {n_once} at version 1",
            ticks.len()
        );
    }
    let lease_left = client
        .lease_time_to_live(lease, false)
        .await
        .context("lease ttl")?;
    say(
        started,
        &format!(
            "lease {lease} kept its remaining time across the failover: {:.1} s left (not reset to 10 s)",
            lease_left.remaining_ms as f64 / 1000.0
        ),
    );

    say(
        started,
        &format!("restarting member {leader} from its data directory"),
    );
    let listener = loop {
        match tokio::net::TcpListener::bind(&peers[&leader]).await {
            Ok(listener) => break listener,
            Err(_) if crashed_at.elapsed() < WAIT_MAX => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => return Err(e).context("re-binding the old leader's port"),
        }
    };
    members.insert(leader, start_member(leader, &peers, data_dir, listener).await?);
    let target = members[&new_leader].server.group().state().commit_index;
    members[&leader]
        .server
        .group()
        .wait_for(WAIT_MAX, |s| s.applied_index >= target)
        .await
        .context("the restarted member catching up")?;
    say(
        started,
        &format!("member {leader} caught up to log index {target} as a follower"),
    );

    let expected_events = 2 + 40;
    let deadline = Instant::now() + WAIT_MAX;
    while n_events.load(Ordering::Relaxed) < expected_events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen = n_events.load(Ordering::Relaxed);
    watch_task.abort();
    say(
        started,
        &format!(
            "the watcher received {seen} of {expected_events} config/ events, across the crash, none twice"
        ),
    );

    let revision = client
        .get("config/db")
        .await?
        .map_or(0, |kv| kv.mod_revision)
        .max(
            client
                .range(proto::RangeRequest {
                    key: b"config/".to_vec(),
                    range_end: prefix_end(b"config/"),
                    count_only: true,
                    ..Default::default()
                })
                .await?
                .header
                .map_or(0, |h| h.revision),
        );
    let mut hashes = Vec::new();
    for (id, addr) in &peers {
        let hash = client.hash_kv_at(addr, revision).await.context("hash")?;
        say(
            started,
            &format!(
                "member {id}: state hash at revision {revision} = {:016x}",
                hash.hash
            ),
        );
        hashes.push(hash.hash);
    }
    let value = client
        .get("config/db")
        .await?
        .map(|kv| String::from_utf8_lossy(&kv.value).to_string());
    say(started, &format!("linearizable read of config/db: {value:?}"));
    for member in members.values() {
        member.serving.abort();
        member.node.shutdown().await;
    }
    if seen != expected_events || hashes.windows(2).any(|w| w[0] != w[1]) {
        bail!("the demo found a problem: {seen} of {expected_events} events, hashes {hashes:x?}");
    }
    say(
        started,
        "every member holds the same state: the store survived the loss of its leader",
    );
    word_count_with_a_killed_worker(started, data_dir).await
}

/// Words as the built-in word count defines them: maximal runs of alphabetic characters.
fn count_words(text: &str) -> u64 {
    text.split(|c: char| !c.is_alphabetic())
        .filter(|w| !w.is_empty())
        .count() as u64
}

/// MapReduce in separate processes: a coordinator and three workers count the words of a
/// generated corpus; one worker is killed with SIGKILL mid-job; its tasks run again
/// elsewhere and the output still counts every word of the corpus exactly once.
async fn word_count_with_a_killed_worker(started: Instant, data_dir: &Path) -> anyhow::Result<()> {
    use std::process::{Command, Stdio};
    let exe = std::env::current_exe().context("finding the shoal binary")?;
    let corpus = data_dir.join("corpus.txt");
    let output_dir = data_dir.join("counts");
    let status = Command::new(&exe)
        .args(["gen", "text", "--size", "64MiB", "--seed", "7", "--output"])
        .arg(&corpus)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("generating the corpus")?;
    if !status.success() {
        bail!("shoal gen text failed ({status})");
    }
    let address = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .to_string();
    let mut coordinator = Command::new(&exe)
        .args([
            "mr",
            "coordinator",
            "--listen",
            &address,
            "--app",
            "wordcount",
            "--task-timeout",
            "2s",
        ])
        .args(["--split-size", "4MiB", "--reducers", "4", "--output"])
        .arg(&output_dir)
        .arg(&corpus)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the MapReduce coordinator")?;
    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(
            Command::new(&exe)
                .args(["mr", "worker", "--coordinator", &address])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting a MapReduce worker")?,
        );
    }
    say(
        started,
        "MapReduce: word count of a 64 MiB generated corpus in 16 map tasks, 1 coordinator + 3 worker processes",
    );
    let job_started = Instant::now();
    tokio::time::sleep(Duration::from_millis(400)).await;
    workers[1].kill().context("killing a worker")?;
    let _ = workers[1].wait();
    say(started, "killed worker 2 with SIGKILL in the middle of the job");
    let status = tokio::task::spawn_blocking(move || coordinator.wait())
        .await
        .context("waiting for the coordinator")?
        .context("waiting for the coordinator")?;
    for worker in &mut workers {
        let _ = worker.kill();
        let _ = worker.wait();
    }
    if !status.success() {
        bail!("the word count job failed ({status})");
    }
    let mut n_counted = 0u64;
    let mut n_distinct = 0u64;
    for entry in std::fs::read_dir(&output_dir).context("reading the job's output")? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("part-r-"))
        {
            continue;
        }
        for line in std::fs::read_to_string(&path)?.lines() {
            let (_, count) = line.rsplit_once('\t').context("an output line without a tab")?;
            n_counted += count.parse::<u64>().context("an output count")?;
            n_distinct += 1;
        }
    }
    let n_words = count_words(&std::fs::read_to_string(&corpus).context("reading the corpus")?);
    say(
        started,
        &format!(
            "the job finished in {:.1} s despite the lost worker: {n_distinct} distinct words, {n_counted} in all (the corpus holds {n_words})",
            job_started.elapsed().as_secs_f64()
        ),
    );
    if n_counted != n_words {
        bail!("the word count is wrong: {n_counted} counted, {n_words} in the corpus");
    }
    say(
        started,
        "every word counted exactly once: MapReduce survived the loss of a worker",
    );
    Ok(())
}
