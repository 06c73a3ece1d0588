//! Seeded fault runs of the whole cluster: a safety phase with crashes (also inside a
//! `Ready`, with torn writes), partitions, an unreliable network, membership changes and
//! leadership transfers while clients run; then a liveness phase; then the clients' oracle.
//!
//! `SHOAL_SIM_SEED_BASE` (default 0) and `SHOAL_SIM_SEEDS` (default 1000) choose the seeds;
//! `SHOAL_SIM_TRACE=1` prints every event (use it with one seed).

use std::panic::{self, AssertUnwindSafe};
use std::time::Instant;

use shoal_raft_sim::{run_config, run_seed, SimConfig, SimStats};

/// A run that finds this many failing seeds stops there (each prints its own panic).
const FAILURES_MAX: usize = 10;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

#[test]
fn sim_seeds_with_faults() {
    // Goal: every seed passes all invariants, the liveness phase and the client oracle.
    let seed_base = env_u64("SHOAL_SIM_SEED_BASE", 0);
    let n_seeds = env_u64("SHOAL_SIM_SEEDS", 1000);
    let trace_log = std::env::var_os("SHOAL_SIM_TRACE").is_some();
    let started = Instant::now();
    let mut failing_seeds = Vec::new();
    let (mut n_ops, mut n_unknown, mut n_messages) = (0, 0, 0);
    let mut totals = SimStats::default();
    let mut sim_ms = 0;
    let mut n_lincheck_timeouts = 0;
    for seed in seed_base..seed_base + n_seeds {
        let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
            let mut config = SimConfig::for_seed(seed);
            config.trace_log = trace_log;
            run_config(config)
        }));
        match outcome {
            Ok(report) => {
                n_ops += report.n_ops;
                n_unknown += report.n_ops_unknown;
                n_messages += report.n_messages;
                let stats = &report.stats;
                totals.n_crashes += stats.n_crashes;
                totals.n_crashes_in_ready += stats.n_crashes_in_ready;
                totals.n_torn_writes += stats.n_torn_writes;
                totals.n_pauses += stats.n_pauses;
                totals.n_snapshots_installed += stats.n_snapshots_installed;
                totals.n_config_changes_proposed += stats.n_config_changes_proposed;
                totals.n_transfers_requested += stats.n_transfers_requested;
                totals.n_candidacies_withheld += stats.n_candidacies_withheld;
                sim_ms += report.sim_ms;
                n_lincheck_timeouts += u64::from(report.lincheck_timed_out);
            }
            Err(_) => {
                eprintln!(
                    "failing seed: {seed}\nreplay: SHOAL_SIM_SEEDS=1 SHOAL_SIM_SEED_BASE={seed} \
                     cargo test --release -p shoal-raft-sim sim_seeds (add SHOAL_SIM_TRACE=1 for every event)"
                );
                failing_seeds.push(seed);
                if failing_seeds.len() >= FAILURES_MAX {
                    break;
                }
            }
        }
    }
    eprintln!(
        "sim_seeds_with_faults: {n_seeds} seeds from {seed_base} in {:.1} s ({:.0} simulated s): \
         {n_ops} client ops ({n_unknown} unknown), {n_messages} messages, {} crashes ({} inside a \
         Ready, {} torn writes), {} pauses, {} snapshots installed, {} membership changes and {} \
         transfers proposed, {} candidacies withheld, {n_lincheck_timeouts} linearizability checks timed out",
        started.elapsed().as_secs_f64(),
        sim_ms as f64 / 1000.0,
        totals.n_crashes,
        totals.n_crashes_in_ready,
        totals.n_torn_writes,
        totals.n_pauses,
        totals.n_snapshots_installed,
        totals.n_config_changes_proposed,
        totals.n_transfers_requested,
        totals.n_candidacies_withheld,
    );
    assert!(failing_seeds.is_empty(), "failing seeds: {failing_seeds:?}");
}

#[test]
fn sim_same_seed_same_trace() {
    // Goal: one seed run twice gives the identical trace, so any failure replays exactly.
    let first = run_seed(7);
    let second = run_seed(7);
    assert_eq!(first.trace_hash, second.trace_hash);
    assert_eq!(first.stats, second.stats);
    assert_eq!(first.n_ops, second.n_ops);
}

#[test]
fn sim_different_seeds_differ() {
    // Goal: different seeds explore different runs (the seed really drives the run).
    let hashes: Vec<u64> = (100..104).map(|seed| run_seed(seed).trace_hash).collect();
    for (i, a) in hashes.iter().enumerate() {
        for b in &hashes[i + 1..] {
            assert_ne!(a, b);
        }
    }
}
