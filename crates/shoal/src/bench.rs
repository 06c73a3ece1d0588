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

pub fn raft_core(_global: &GlobalArgs, _entries: u64, _payload_bytes: usize) -> anyhow::Result<()> {
    anyhow::bail!("bench raft-core needs the simulator crate (not wired yet)")
}
