//! Benchmarks: they print figures; docs/BENCHMARKS.md records them with the exact command.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::{GlobalArgs, OutputFormat};

/// Latency percentiles of a sample, in microseconds.
pub struct Percentiles {
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

pub fn percentiles(samples: &mut [Duration]) -> Percentiles {
    samples.sort_unstable();
    let at = |q: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[idx].as_secs_f64() * 1e6
    };
    Percentiles {
        p50_us: at(0.50),
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

/// Write `write_bytes` then fdatasync, `count` times, in a temporary file under `dir`.
pub fn fsync(global: &GlobalArgs, dir: &Path, count: u64, write_bytes: usize) -> anyhow::Result<()> {
    let mut file =
        tempfile::tempfile_in(dir).with_context(|| format!("creating a file in {}", dir.display()))?;
    let block = vec![0xA5u8; write_bytes];
    let mut samples = Vec::with_capacity(count as usize);
    let started = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        file.write_all(&block).context("writing")?;
        file.sync_data().context("fsync")?;
        samples.push(t.elapsed());
    }
    let total = started.elapsed();
    let p = percentiles(&mut samples);
    let per_s = count as f64 / total.as_secs_f64();
    match global.output {
        OutputFormat::Json => outln!(
            "{}",
            serde_json::json!({"bench": "fsync", "count": count, "write_bytes": write_bytes,
                "fsyncs_per_s": per_s, "p50_us": p.p50_us, "p99_us": p.p99_us, "max_us": p.max_us})
        ),
        OutputFormat::Text => outln!(
            "fsync: {count} x ({write_bytes} B write + fdatasync) in {}: {per_s:.0}/s, p50 {:.0} us, p99 {:.0} us, max {:.0} us",
            dir.display(),
            p.p50_us,
            p.p99_us,
            p.max_us
        ),
    }
    Ok(())
}

/// A 3-node group of cores with a perfect in-memory network (no disk, no sockets): measures
/// the protocol's own CPU cost per committed entry.
pub fn raft_core(global: &GlobalArgs, entries: u64, payload_bytes: usize) -> anyhow::Result<()> {
    use shoal_raft::{Config, Membership, NodeId, Raft, Restore};
    const PROPOSALS_PER_ROUND: u64 = 512;
    let membership = Membership::new([NodeId(1), NodeId(2), NodeId(3)]);
    let mut nodes: Vec<Raft> = (1..=3)
        .map(|id| {
            let mut config = Config::new(NodeId(id));
            config.rng_seed = id;
            Raft::new(
                config,
                Restore {
                    initial_membership: membership.clone(),
                    ..Restore::default()
                },
            )
            .map_err(|e| anyhow::anyhow!(e))
        })
        .collect::<anyhow::Result<_>>()?;
    nodes[0].campaign();
    let payload = vec![0x5Au8; payload_bytes];
    let started = Instant::now();
    let mut n_committed = 0u64;
    let mut n_proposed = 0u64;
    let mut n_messages = 0u64;
    while n_committed < entries {
        if nodes[0].is_leader() {
            while n_proposed < entries && n_proposed - n_committed.min(n_proposed) < 4 * PROPOSALS_PER_ROUND {
                if nodes[0].propose(payload.clone()).is_err() {
                    break;
                }
                n_proposed += 1;
            }
        }
        let mut in_flight = Vec::new();
        for node in nodes.iter_mut() {
            let ready = node.take_ready();
            if node.id() == NodeId(1) {
                n_committed += ready
                    .committed_entries
                    .iter()
                    .filter(|e| e.kind == shoal_raft::EntryKind::Command)
                    .count() as u64;
            }
            in_flight.extend(ready.messages);
        }
        n_messages += in_flight.len() as u64;
        // Compact like a real node would, so the log does not grow without bound.
        for node in nodes.iter_mut() {
            let applied = node.applied_index();
            if applied.0 - node.first_index().0 > 100_000 {
                if let Some(meta) = node.snapshot_meta(applied) {
                    node.compact_log(meta);
                }
            }
        }
        for message in in_flight {
            let to = message.to.0 as usize - 1;
            nodes[to].step(message);
        }
    }
    let elapsed = started.elapsed();
    let per_s = n_committed as f64 / elapsed.as_secs_f64();
    match global.output {
        OutputFormat::Json => outln!(
            "{}",
            serde_json::json!({"bench": "raft-core", "entries": n_committed, "payload_bytes": payload_bytes,
                "seconds": elapsed.as_secs_f64(), "entries_per_s": per_s, "messages": n_messages})
        ),
        OutputFormat::Text => outln!(
            "raft-core: 3 nodes, {n_committed} entries of {payload_bytes} B committed in {:.2} s: {per_s:.0} entries/s ({n_messages} messages)",
            elapsed.as_secs_f64()
        ),
    }
    Ok(())
}

/// Proposals/s and commit latency (client-observed: propose → applied on the leader → reply)
/// against a running cluster, one level of concurrency after another.
pub fn raft_cluster(
    global: &GlobalArgs,
    proposers: &[usize],
    duration: Duration,
    payload_bytes: usize,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    runtime.block_on(async {
        let client = crate::cluster::client(global)?;
        let status = client.status().await.context("reaching the cluster")?;
        let fsyncs_before = client.status_at(status.leader_addr.as_deref().unwrap_or(&global.endpoints[0])).await?.n_fsyncs;
        let mut rows = Vec::new();
        for &n_proposers in proposers {
            let deadline = Instant::now() + duration;
            let mut tasks = Vec::new();
            for proposer in 0..n_proposers {
                let client = client.clone();
                let value = vec![b'v'; payload_bytes];
                tasks.push(tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    let mut n_errors = 0u64;
                    let key = format!("bench/{proposer}").into_bytes();
                    while Instant::now() < deadline {
                        let command = shoal_meta::store::put_command(&key, &value);
                        let started = Instant::now();
                        match client.propose(command).await {
                            Ok(_) => latencies.push(started.elapsed()),
                            Err(_) => n_errors += 1,
                        }
                    }
                    (latencies, n_errors)
                }));
            }
            let started = Instant::now();
            let mut latencies = Vec::new();
            let mut n_errors = 0;
            for task in tasks {
                let (l, e) = task.await.context("proposer task")?;
                latencies.extend(l);
                n_errors += e;
            }
            let elapsed = started.elapsed();
            let n_ok = latencies.len();
            let p = percentiles(&mut latencies);
            let per_s = n_ok as f64 / elapsed.as_secs_f64();
            rows.push(serde_json::json!({"proposers": n_proposers, "proposals": n_ok, "errors": n_errors,
                "proposals_per_s": per_s, "p50_us": p.p50_us, "p99_us": p.p99_us, "max_us": p.max_us}));
            if global.output == OutputFormat::Text {
                outln!(
                    "{n_proposers:>4} proposers: {per_s:>8.0} proposals/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms  ({n_ok} ok, {n_errors} errors)",
                    p.p50_us / 1e3,
                    p.p99_us / 1e3,
                    p.max_us / 1e3
                );
            }
        }
        let status = client.status().await?;
        let fsyncs_after = client.status_at(status.leader_addr.as_deref().unwrap_or(&global.endpoints[0])).await?.n_fsyncs;
        match global.output {
            OutputFormat::Json => outln!(
                "{}",
                serde_json::json!({"bench": "raft", "payload_bytes": payload_bytes, "levels": rows,
                    "leader_fsyncs": fsyncs_after.saturating_sub(fsyncs_before)})
            ),
            OutputFormat::Text => outln!(
                "leader fsyncs during the run: {}",
                fsyncs_after.saturating_sub(fsyncs_before)
            ),
        }
        anyhow::Ok(())
    })
}

/// A `shoal server` child process that is killed when dropped.
struct ServerProcess {
    child: Option<std::process::Child>,
    args: Vec<String>,
}

impl ServerProcess {
    fn spawn(args: Vec<String>) -> anyhow::Result<ServerProcess> {
        let exe = std::env::current_exe().context("finding the shoal binary")?;
        let child = std::process::Command::new(exe)
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("spawning shoal server")?;
        Ok(ServerProcess {
            child: Some(child),
            args,
        })
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        *self = ServerProcess::spawn(self.args.clone())?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Leader failover: from SIGKILL of the leader process to the first commit by the new leader.
pub fn failover(global: &GlobalArgs, trials: usize, data_dir: Option<&Path>) -> anyhow::Result<()> {
    use shoal_raft_runtime::{ClientOptions, RaftClient};
    let temp = tempfile::tempdir().context("creating a temporary directory")?;
    let base = data_dir.unwrap_or(temp.path()).to_path_buf();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<anyhow::Result<_>>()?;
    let endpoints: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let peers = crate::server::peers_arg(&endpoints);
    let mut servers: Vec<ServerProcess> = (0..3)
        .map(|i| {
            ServerProcess::spawn(vec![
                "server".into(),
                "--id".into(),
                (i + 1).to_string(),
                "--data-dir".into(),
                base.join(format!("node-{}", i + 1)).to_string_lossy().to_string(),
                "--listen".into(),
                endpoints[i].clone(),
                "--peers".into(),
                peers.clone(),
            ])
        })
        .collect::<anyhow::Result<_>>()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")?;
    let mut samples = Vec::new();
    runtime.block_on(async {
        let fast = ClientOptions {
            request_timeout: Duration::from_millis(300),
            retry_timeout: Duration::from_millis(300),
            backoff_min: Duration::from_millis(1),
            backoff_max: Duration::from_millis(2),
        };
        let client = RaftClient::with_options(endpoints.clone(), crate::server::META_GROUP_ID, fast.clone())?;
        let put = |client: RaftClient| async move {
            client
                .propose(shoal_meta::store::put_command(b"failover", b"x"))
                .await
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while put(client.clone()).await.is_err() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the cluster did not elect a leader within 30 s"
            );
        }
        for trial in 0..trials {
            let status = client.status().await.context("status")?;
            let leader = status.leader.context("no leader")?;
            let leader_idx = leader.0 as usize - 1;
            servers[leader_idx].kill();
            let killed_at = Instant::now();
            let survivors: Vec<String> = endpoints
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != leader_idx)
                .map(|(_, e)| e.clone())
                .collect();
            let survivor_client =
                RaftClient::with_options(survivors, crate::server::META_GROUP_ID, fast.clone())?;
            loop {
                if put(survivor_client.clone()).await.is_ok() {
                    break;
                }
                anyhow::ensure!(
                    killed_at.elapsed() < Duration::from_secs(30),
                    "no commit 30 s after the kill"
                );
            }
            let took = killed_at.elapsed();
            samples.push(took);
            if global.output == OutputFormat::Text {
                outln!(
                    "trial {:>2}: killed leader {leader}, new leader committed after {:.0} ms",
                    trial + 1,
                    took.as_secs_f64() * 1e3
                );
            }
            servers[leader_idx].restart()?;
            // Wait until the restarted node has caught up before the next trial.
            let target = survivor_client.status().await?.commit_index;
            let restarted = endpoints[leader_idx].clone();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(s) = client.status_at(&restarted).await {
                    if s.applied_index >= target {
                        break;
                    }
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "restarted node {leader} did not catch up"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        anyhow::Ok(())
    })?;
    let p = percentiles(&mut samples);
    match global.output {
        OutputFormat::Json => outln!(
            "{}",
            serde_json::json!({"bench": "failover", "trials": trials, "p50_ms": p.p50_us / 1e3,
                "p99_ms": p.p99_us / 1e3, "max_ms": p.max_us / 1e3})
        ),
        OutputFormat::Text => outln!(
            "failover over {trials} trials: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
            p.p50_us / 1e3,
            p.p99_us / 1e3,
            p.max_us / 1e3
        ),
    }
    Ok(())
}
