//! What a simulation run looks like: cluster size, the cores' settings, the network, the
//! disk faults, the clients and the nemesis. [`SimConfig::scenario`] is a calm cluster for
//! hand-written scenarios; [`SimConfig::for_seed`] draws a faulty one from a seed.

use shoal_raft::{Config, NodeId, ReadMode};

use crate::net::NetConfig;
use crate::rng::SimRng;

/// Disk faults.
#[derive(Clone, Debug, PartialEq)]
pub struct DiskFaults {
    /// Chance that a node crashes while handling one `Ready` (at a random point: before
    /// writing, between write and fsync, before the hard state, mid-send, before or during
    /// apply). Active only while faults are on.
    pub crash_in_ready_probability: f64,
    /// Chance that a crash keeps a random prefix of the unsynced entries (a torn write).
    pub torn_write_probability: f64,
}

/// The simulated clients (6.824 lab 3 style): each has one request in flight.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkloadConfig {
    pub n_clients: usize,
    /// Keys `a0..` receive appends of unique tokens (checked by the oracle).
    pub n_append_keys: usize,
    /// Keys `p0..` receive puts.
    pub n_put_keys: usize,
    pub get_probability: f64,
    pub put_probability: f64,
    /// Pause between an answer and the next request, uniform in `[0, think_ms_max]`.
    pub think_ms_max: u64,
    /// A request unanswered for this long is resent to the next node.
    pub request_timeout_ms: u64,
    /// A client gives up on an operation (its outcome stays unknown) after this long. Cost:
    /// a longer budget means fewer unknown outcomes but slower runs under long faults.
    pub give_up_ms: u64,
}

impl WorkloadConfig {
    pub fn default_mix() -> WorkloadConfig {
        WorkloadConfig {
            n_clients: 3,
            n_append_keys: 2,
            n_put_keys: 1,
            get_probability: 0.3,
            put_probability: 0.1,
            think_ms_max: 50,
            request_timeout_ms: 1000,
            give_up_ms: 6000,
        }
    }
}

/// Relative weights of the nemesis' actions (zero disables one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NemesisWeights {
    pub crash: u64,
    pub partition: u64,
    pub isolate: u64,
    pub one_way: u64,
    pub heal: u64,
    pub toggle_unreliable: u64,
    /// Freeze a node (a long GC or VM pause): it neither ticks nor handles messages, which
    /// wait for it. A paused leader may serve stale lease reads by design (`ReadMode::Lease`
    /// assumes no pauses), so with lease reads only non-leaders are paused.
    pub pause: u64,
    pub nothing: u64,
}

/// The fault injector of the safety phase.
#[derive(Clone, Debug, PartialEq)]
pub struct NemesisConfig {
    /// Time between two actions, uniform in `[interval_ms_min, interval_ms_max]`.
    pub interval_ms_min: u64,
    pub interval_ms_max: u64,
    pub weights: NemesisWeights,
    /// A crashed node restarts after a uniform time in `[downtime_ms_min, downtime_ms_max]`.
    pub downtime_ms_min: u64,
    pub downtime_ms_max: u64,
    /// A paused node resumes after a uniform time in `[0, pause_ms_max]`.
    pub pause_ms_max: u64,
}

/// The operator: membership changes and leadership transfers while clients run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Add a spare as learner, promote it, remove a voter (never below the bootstrap size).
    pub membership_changes: bool,
    pub leadership_transfers: bool,
    /// Withhold one voter's candidacy (`Raft::withhold_candidacy`, as a diverged member's)
    /// or release it; only with at least 3 bootstrap voters, so the others keep a quorum.
    pub candidacy_changes: bool,
    pub interval_ms_min: u64,
    pub interval_ms_max: u64,
}

/// Everything that defines one run; the same config gives the same trace.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    /// Length of the safety phase of [`crate::run_config`] (faults on), in simulated ms.
    /// Cost: a seed's run time grows linearly with it.
    pub fault_phase_ms: u64,
    /// Nodes `1..=n_nodes` exist; `1..=n_voters` form the bootstrap membership, the others
    /// are spares for membership changes.
    pub n_nodes: usize,
    pub n_voters: usize,
    /// Settings of every core; `id` and `rng_seed` are set per node (the seed from the
    /// simulation's RNG at each start).
    pub raft: Config,
    /// Each node calls `tick()` every `tick_ms` plus its own offset in
    /// `[-tick_drift_ms, tick_drift_ms]` (bounded clock drift), with its own phase.
    pub tick_ms: u64,
    pub tick_drift_ms: u64,
    pub net: NetConfig,
    /// The network while `set_unreliable(true)`.
    pub unreliable_net: NetConfig,
    pub start_unreliable: bool,
    pub disk: DiskFaults,
    /// When > 0, messages a node receives wait in an inbox for up to this long and are
    /// stepped together before one `Ready` (group commit, contract rule 4).
    pub batch_window_ms: u64,
    /// Each node snapshots its state machine after applying every index that is a multiple
    /// of this (0: never), then compacts its log (so InstallSnapshot gets exercised).
    pub snapshot_interval_entries: u64,
    /// InstallSnapshot chunk size; small so transfers take many chunks.
    pub snapshot_chunk_bytes: usize,
    pub workload: Option<WorkloadConfig>,
    pub nemesis: Option<NemesisConfig>,
    pub operator: Option<OperatorConfig>,
    /// The runtime stops a node once its removal is committed (as a real deployment would),
    /// so a removed server cannot disrupt the cluster (dissertation §4.2.3).
    pub retire_removed_nodes: bool,
    /// Print every event to stderr (for replaying a failing seed).
    pub trace_log: bool,
}

impl SimConfig {
    /// A calm cluster of `n_voters` nodes for scenario tests: reliable network, no clients,
    /// no nemesis, no crashes unless the test asks.
    pub fn scenario(n_voters: usize, seed: u64) -> SimConfig {
        let mut raft = Config::new(NodeId(1));
        raft.election_timeout_ticks = 10;
        raft.heartbeat_interval_ticks = 1;
        raft.inflight_messages_max = 8;
        raft.message_bytes_max = 4096;
        SimConfig {
            seed,
            fault_phase_ms: 30_000,
            n_nodes: n_voters,
            n_voters,
            raft,
            tick_ms: 100,
            tick_drift_ms: 1,
            net: NetConfig::reliable(),
            unreliable_net: NetConfig::unreliable(),
            start_unreliable: false,
            disk: DiskFaults {
                crash_in_ready_probability: 0.0,
                torn_write_probability: 0.5,
            },
            batch_window_ms: 0,
            snapshot_interval_entries: 0,
            snapshot_chunk_bytes: 64,
            workload: None,
            nemesis: None,
            operator: None,
            retire_removed_nodes: true,
            trace_log: false,
        }
    }

    /// A faulty run drawn from `seed`: cluster shape, core settings, network, disk faults,
    /// workload and nemesis all vary, so the seeds together cover many combinations.
    pub fn for_seed(seed: u64) -> SimConfig {
        // A stream of its own, so the shape does not correlate with the run's own draws.
        let mut rng = SimRng::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5348_4F41_4C53_494D);
        let n_voters = [1, 3, 3, 3, 3, 3, 5, 5, 5, 7][rng.index(10)];
        let membership_changes = rng.chance(0.35);
        let leadership_transfers = rng.chance(0.35);
        let n_nodes = if membership_changes {
            n_voters + 2
        } else {
            n_voters
        };

        let mut config = SimConfig::scenario(n_voters, seed);
        config.n_nodes = n_nodes;
        let raft = &mut config.raft;
        raft.election_timeout_ticks = rng.range_inclusive(5, 15);
        raft.heartbeat_interval_ticks = rng.range_inclusive(1, 3);
        raft.pre_vote = rng.chance(0.75);
        raft.check_quorum = rng.chance(0.75);
        raft.read_mode = if rng.chance(0.2) {
            raft.check_quorum = true;
            ReadMode::Lease
        } else {
            ReadMode::ReadIndex
        };
        raft.inflight_messages_max = rng.range_inclusive(1, 8) as usize;
        raft.message_bytes_max = rng.range_inclusive(64, 1024) as usize;
        raft.apply_batch_bytes_max = rng.range_inclusive(64, 4096) as usize;
        raft.entry_bytes_max = 1024;
        raft.uncommitted_bytes_max = rng.range_inclusive(2048, 65536) as usize;

        // Lease reads are safe only while a leader's lease (election timeout minus
        // `lease_margin_ticks` of its ticks) ends before any follower's election timeout (of
        // its own ticks): with the default 10 and 2 ticks, tick periods within 100 ± 11 ms.
        // Lease seeds go up to that bound; ReadIndex must be safe under any timing, so those
        // seeds get clocks up to 20% apart.
        let lease = config.raft.read_mode == ReadMode::Lease;
        config.tick_drift_ms = if lease {
            rng.range_inclusive(0, 10)
        } else {
            rng.range_inclusive(0, 20)
        };
        config.fault_phase_ms = rng.range_inclusive(30_000, 80_000);
        config.start_unreliable = rng.chance(0.3);
        config.disk = DiskFaults {
            crash_in_ready_probability: [0.0, 0.001, 0.005][rng.index(3)],
            torn_write_probability: 0.5,
        };
        config.batch_window_ms = if rng.chance(0.5) {
            0
        } else {
            rng.range_inclusive(1, 5)
        };
        config.snapshot_interval_entries = if rng.chance(0.1) {
            0
        } else {
            [rng.range_inclusive(2, 5), rng.range_inclusive(8, 40)][rng.index(2)]
        };
        config.snapshot_chunk_bytes = rng.range_inclusive(16, 128) as usize;
        config.workload = Some(WorkloadConfig {
            n_clients: rng.range_inclusive(2, 6) as usize,
            n_append_keys: rng.range_inclusive(1, 3) as usize,
            n_put_keys: rng.range_inclusive(0, 1) as usize,
            get_probability: 0.3,
            put_probability: 0.1,
            think_ms_max: rng.range_inclusive(0, 100),
            request_timeout_ms: rng.range_inclusive(500, 1500),
            give_up_ms: 6000,
        });
        let mut weight = || rng.range_inclusive(0, 4);
        let weights = NemesisWeights {
            crash: weight(),
            partition: weight(),
            isolate: weight(),
            one_way: weight(),
            heal: weight() + 2,
            toggle_unreliable: weight(),
            pause: weight(),
            nothing: weight(),
        };
        let interval_ms_min = rng.range_inclusive(200, 1000);
        config.nemesis = Some(NemesisConfig {
            interval_ms_min,
            interval_ms_max: interval_ms_min + rng.range_inclusive(0, 2000),
            weights,
            downtime_ms_min: 50,
            downtime_ms_max: rng.range_inclusive(200, 4000),
            pause_ms_max: rng.range_inclusive(100, 3000),
        });
        // Drawn last, so the draws above (and the seeds found with them) are unchanged.
        let candidacy_changes = n_voters >= 3 && rng.chance(0.3);
        if membership_changes || leadership_transfers || candidacy_changes {
            config.operator = Some(OperatorConfig {
                membership_changes,
                leadership_transfers,
                candidacy_changes,
                interval_ms_min: 500,
                interval_ms_max: 3000,
            });
        }
        config
    }
}
