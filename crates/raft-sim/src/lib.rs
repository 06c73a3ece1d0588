//! # shoal-raft-sim: deterministic simulation of Shoal's Raft core
//!
//! N [`shoal_raft::Raft`] cores in one thread, in simulated time, driven by one seeded RNG
//! (FoundationDB / TigerBeetle VOPR style). Everything random — message delays, loss,
//! duplication, partitions, crashes, torn writes, client operations, the cores' own
//! election-timeout seeds — is drawn from that RNG, so a seed replays exactly;
//! [`Sim::trace_hash`] fingerprints a run to prove it.
//!
//! ## Layout
//!
//! - `sim`: [`Sim`], the event loop and the runtime of each node, which follows the core's
//!   contract to the letter: one input, then each `Ready` handled completely — snapshot
//!   chunks, entries, fsync, hard state, *then* messages; restore, apply, serve reads; take
//!   snapshots every K entries and compact.
//! - `disk`: a per-node [`Disk`] whose unsynced writes vanish on a crash, except a torn
//!   prefix of the last one.
//! - `net`: delays, drops, duplicates, symmetric and one-way partitions, message counters.
//! - `kv`: the replicated state machine, a KV store with client dedup (6.824 lab 3).
//! - `history`: the clients' [`History`] and an oracle for append/get histories.
//! - `checker`: the safety invariants, each citing its section of the Raft paper.
//! - `scenario`: the 6.824-tester-shaped API for hand-written scenarios.
//! - `seed`: [`run_seed`], one faulty run: safety phase, then liveness phase.
//! - `config`: [`SimConfig`], calm ([`SimConfig::scenario`]) or drawn from a seed
//!   ([`SimConfig::for_seed`]).
//!
//! ## API tour
//!
//! ```
//! use shoal_raft_sim::{Sim, SimConfig};
//!
//! let mut sim = Sim::new(SimConfig::scenario(3, 42));
//! let leader = sim.check_one_leader();
//! let index = sim.one(101, 3, false);          // commit a command on all 3 nodes
//! sim.disconnect(leader);                       // or crash(i), partition(&[&[1], &[2, 3]])
//! let next = sim.one(102, 2, true);
//! assert!(next > index);
//! sim.connect(leader);
//! sim.run_ticks(20);
//! assert_eq!(sim.n_committed(next).0, 3);
//! ```
//!
//! Links: `disconnect`, `connect`, `partition`, `block_one_way`, `heal`, `set_unreliable`.
//! Nodes: `crash`, `restart`, `pause`, `start`, `propose_config_change`,
//! `transfer_leadership`, `read_index`, `with_raft` (any input, then the contract and the
//! checks), `raft`, `is_up`, `is_connected`, `applied_index`, `kv_get`. Checks: `one`,
//! `n_committed`, `check_one_leader`, `check_no_leader`, `check_terms`, `rpc_count`,
//! `message_count`, `message_counts`. Time: `run_ticks`, `run_for`, `run_until`. Results:
//! `history` (ready for `shoal-lincheck`, see [`to_lincheck`]), `stats`, `trace_hash`,
//! `describe_nodes`.
//!
//! ## A seeded run ([`run_seed`])
//!
//! [`SimConfig::for_seed`] draws the cluster (1 to 7 voters, spares for membership
//! changes), the core's settings (pre-vote, check-quorum, ReadIndex or lease reads, tiny
//! in-flight windows and message sizes, election timeouts), the network, disk faults, group commit, snapshot
//! interval and chunk size, clients and the nemesis' mix (crashes, partitions, one-way
//! blocks, isolation, unreliable network, pauses). The safety phase runs with faults; the
//! liveness phase heals everything and requires a new write applied by every member within
//! [`LIVENESS_BOUND_MS`]; then clients read every key, replicas must hold identical states,
//! and the history must pass [`History::check`] and `shoal-lincheck`.
//!
//! ## Invariants (checked after every input to every node)
//!
//! Election safety (§5.2), log matching (§5.3), leader completeness (§5.4), state machine
//! safety (§5.4.3, on entries, snapshots and final replica states), commit index never
//! decreasing while up, committed entries durable on a quorum of the leader's voters,
//! applied entries durable locally, durable term monotonic and one vote per term, plus the
//! runtime contract itself (contiguous writes, chunks in order, snapshots kept to send).
//! A violation panics with the invariant's name, the seed and the replay command.
//!
//! **Architecture invariant:** the simulator uses only the core's public API and reads no
//! clock, thread RNG or environment variable (the one exception, the linearizability
//! check's wall-clock budget, only decides whether that check gives up, and is not part of
//! the trace); tests choose seeds and tracing.
//!
//! ## Runtime policy (what a real runtime must also do)
//!
//! Every node, including one added later, starts from the cluster's *bootstrap* membership:
//! membership entries are changes, so a joiner that started from an empty membership would
//! compute different configurations from the same log. A removed node is stopped once its
//! removal is committed. Compaction lags one snapshot behind, so the log keeps a tail after
//! the snapshot lagging followers receive, and the last few snapshots stay readable for
//! transfers in progress (contract rule 5).

mod checker;
mod config;
mod disk;
mod history;
mod kv;
mod net;
mod rng;
mod scenario;
mod seed;
mod sim;

pub use checker::{Checker, EntryDigest};
pub use config::{DiskFaults, NemesisConfig, NemesisWeights, OperatorConfig, SimConfig, WorkloadConfig};
pub use disk::{Disk, DurableState, StoredSnapshot};
pub use history::{History, HistoryOp, OpInput, OpResult};
pub use kv::{ApplyOutcome, Command, KvStore, KvWrite};
pub use net::{Endpoint, Links, MessageCounters, NetConfig, MESSAGE_KINDS};
pub use rng::{hash_bytes, Fnv64, SimRng};
pub use scenario::{IntoLogIndex, IntoNodeId};
pub use seed::{run_config, run_seed, to_lincheck, SeedReport, LINCHECK_TIMEOUT, LIVENESS_BOUND_MS};
pub use sim::{ClientReply, ClientRequest, ReplyBody, Sim, SimStats};
