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
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({"bench": "fsync", "count": count, "write_bytes": write_bytes,
                "fsyncs_per_s": per_s, "p50_us": p.p50_us, "p99_us": p.p99_us, "max_us": p.max_us})
        ),
        OutputFormat::Text => println!(
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
        OutputFormat::Json => println!(
            "{}",
            serde_json::json!({"bench": "raft-core", "entries": n_committed, "payload_bytes": payload_bytes,
                "seconds": elapsed.as_secs_f64(), "entries_per_s": per_s, "messages": n_messages})
        ),
        OutputFormat::Text => println!(
            "raft-core: 3 nodes, {n_committed} entries of {payload_bytes} B committed in {:.2} s: {per_s:.0} entries/s ({n_messages} messages)",
            elapsed.as_secs_f64()
        ),
    }
    Ok(())
}
