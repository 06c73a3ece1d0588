//! The simulator: N cores, their disks and state machines, the network, the clients and the
//! fault injectors, all in one thread, in simulated time, driven by one seeded RNG.
//!
//! Time advances from event to event (`now_ms`); nothing happens between events. Each node
//! is driven exactly as the core's crate docs tell a runtime to: one input, then every
//! `Ready` handled completely (persist, fsync, hard state, send, restore, apply, reads)
//! before the next input. After each input the invariants of [`crate::checker`] are checked.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use shoal_raft::{
    ConfigChange, EntryKind, LogIndex, Membership, Message, MessageBody, NodeId, ProposeError, Raft, Ready,
    SnapshotSend, Term,
};

use crate::checker::Checker;
use crate::config::{NemesisConfig, SimConfig};
use crate::disk::Disk;
use crate::history::{History, OpInput, OpResult};
use crate::kv::{ApplyOutcome, Command, KvStore};
use crate::net::{kind_idx, Endpoint, Links, MessageCounters};
use crate::rng::{hash_bytes, Fnv64, SimRng};

/// `Ready`s one input may produce before the node is considered stuck (a core bug). Each
/// `Ready` drains its buffers, so a handful is normal (apply batches, compaction).
const READIES_PER_INPUT_MAX: usize = 10_000;

/// A removed node is stopped this long after its removal is seen committed, so it can still
/// answer the messages in flight (as an operator would shut it down).
const RETIRE_DELAY_MS: u64 = 500;

/// Upper bound on the chunks of one snapshot transfer (see `send_snapshot_chunk`).
const SNAPSHOT_CHUNKS_PER_TRANSFER_MAX: usize = 64;

/// A client request on the wire.
#[derive(Clone, Debug)]
pub struct ClientRequest {
    pub client_id: u64,
    /// The operation's sequence number: the same on every retry (deduplication key).
    pub seq: u64,
    pub op: OpInput,
}

/// A node's answer to a client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyBody {
    Done,
    Value(Option<String>),
    NotLeader(Option<NodeId>),
    /// Refused for now (busy, transfer in progress): retry later.
    Retry,
}

#[derive(Clone, Debug)]
pub struct ClientReply {
    pub client_id: u64,
    pub seq: u64,
    pub body: ReplyBody,
}

#[derive(Clone, Debug)]
pub(crate) enum Payload {
    Raft(Message),
    Request(ClientRequest),
    Reply(ClientReply),
}

#[derive(Clone, Debug)]
pub(crate) enum Event {
    Tick {
        node_idx: usize,
        incarnation: u64,
    },
    Deliver {
        from: Endpoint,
        to: Endpoint,
        payload: Payload,
    },
    ClientWake {
        client_idx: usize,
        generation: u64,
    },
    ClientTimeout {
        client_idx: usize,
        generation: u64,
    },
    Nemesis,
    Operator,
    Restart {
        node_idx: usize,
        incarnation: u64,
    },
    Retire {
        node_idx: usize,
    },
    /// Steps every message in the node's inbox, then handles one `Ready` (group commit).
    Drain {
        node_idx: usize,
        incarnation: u64,
    },
}

impl Event {
    fn tag(&self) -> u64 {
        match self {
            Event::Tick { .. } => 1,
            Event::Deliver { .. } => 2,
            Event::ClientWake { .. } => 3,
            Event::ClientTimeout { .. } => 4,
            Event::Nemesis => 5,
            Event::Operator => 6,
            Event::Restart { .. } => 7,
            Event::Retire { .. } => 8,
            Event::Drain { .. } => 9,
        }
    }
}

struct Queued {
    at_ms: u64,
    seq: u64,
    event: Event,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at_ms, self.seq) == (other.at_ms, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    // Reversed: BinaryHeap is a max-heap and the earliest event must come out first; ties
    // go in scheduling order, so the run is deterministic.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at_ms, other.seq).cmp(&(self.at_ms, self.seq))
    }
}

/// A read waiting for its `ReadState`, then for the state machine to reach its index.
#[derive(Clone, Debug)]
pub(crate) struct PendingRead {
    client_id: u64,
    seq: u64,
    key: String,
}

/// One simulated server: a core (absent while crashed), its disk, its state machine.
pub(crate) struct SimNode {
    pub(crate) id: NodeId,
    pub(crate) raft: Option<Raft>,
    pub(crate) disk: Disk,
    pub(crate) kv: KvStore,
    /// The state machine's applied index in this incarnation.
    pub(crate) applied_index: LogIndex,
    /// The highest index this node ever applied (across crashes), for `n_committed`.
    pub(crate) applied_index_max: LogIndex,
    pub(crate) incarnation: u64,
    tick_period_ms: u64,
    /// Last commit index and term observed while up (checked never to decrease).
    commit_seen: LogIndex,
    term_seen: Term,
    /// Writes proposed here, answered when applied: (client, seq).
    waiting_writes: BTreeSet<(u64, u64)>,
    reads: BTreeMap<u64, PendingRead>,
    reads_ready: Vec<(LogIndex, PendingRead)>,
    next_read_context: u64,
    /// Stopped for good after its removal from the membership.
    pub(crate) retired: bool,
    /// Messages received but not yet stepped (group commit, `SimConfig::batch_window_ms`).
    inbox: Vec<Message>,
    drain_scheduled: bool,
    /// While `now_ms` is below this the node is paused: no ticks, messages wait.
    paused_until_ms: u64,
    /// `ReadState`s for reads a scenario asked for directly (`Sim::read_index`).
    pub(crate) scenario_reads: BTreeMap<u64, LogIndex>,
}

impl SimNode {
    pub(crate) fn is_up(&self) -> bool {
        self.raft.is_some()
    }
}

/// A simulated client with at most one operation in flight.
pub(crate) struct SimClient {
    pub(crate) id: u64,
    next_seq: u64,
    leader_guess: usize,
    current: Option<ClientOp>,
    /// Bumped whenever a wake-up or timeout is scheduled; older ones are ignored.
    generation: u64,
    /// Keys still to read in the final check.
    final_reads: Vec<String>,
}

struct ClientOp {
    op_idx: usize,
    seq: u64,
    input: OpInput,
    n_attempts: u64,
    /// Operations of the final check never give up.
    must_finish: bool,
}

/// Counts of what happened in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    pub n_events: u64,
    pub n_crashes: u64,
    pub n_crashes_in_ready: u64,
    /// Crashes that kept a prefix of an unsynced write.
    pub n_torn_writes: u64,
    pub n_pauses: u64,
    pub n_restarts: u64,
    pub n_snapshots_taken: u64,
    pub n_snapshots_installed: u64,
    /// Chunks asked of a snapshot no longer retained (see `SNAPSHOTS_RETAINED_MAX`).
    pub n_snapshot_sends_unavailable: u64,
    pub n_config_changes_proposed: u64,
    pub n_transfers_requested: u64,
    /// Times the operator withheld a voter's candidacy.
    pub n_candidacies_withheld: u64,
    pub n_retired: u64,
}

/// The whole simulated cluster. See the crate docs for the API tour.
pub struct Sim {
    pub(crate) config: SimConfig,
    pub(crate) rng: SimRng,
    pub(crate) now_ms: u64,
    queue: BinaryHeap<Queued>,
    next_event_seq: u64,
    pub(crate) nodes: Vec<SimNode>,
    bootstrap: Membership,
    pub(crate) links: Links,
    pub(crate) unreliable: bool,
    pub(crate) counters: MessageCounters,
    pub(crate) checker: Checker,
    pub(crate) history: History,
    pub(crate) clients: Vec<SimClient>,
    trace: Fnv64,
    pub(crate) stats: SimStats,
    /// Nemesis, operator and crashes inside `Ready` run only while this is on.
    pub(crate) faults_active: bool,
    /// Clients start new operations only while this is on.
    pub(crate) workload_active: bool,
    removals_seen: BTreeSet<NodeId>,
    /// The node whose candidacy the operator withholds (set again on every restart: the core
    /// does not persist it).
    withheld: Option<NodeId>,
    /// The command first applied at each index (`None` for no-ops and membership entries).
    applied_commands: Vec<Option<Command>>,
}

impl Sim {
    /// Builds the cluster: every node starts empty with the bootstrap membership (spares too,
    /// as learners of nothing until added: a membership entry is a change, so every replica
    /// must start from the same base).
    pub fn new(config: SimConfig) -> Sim {
        assert!(
            config.n_voters >= 1 && config.n_voters <= config.n_nodes,
            "1 <= n_voters <= n_nodes"
        );
        let bootstrap = Membership::new((1..=config.n_voters as u64).map(NodeId));
        let mut sim = Sim {
            rng: SimRng::new(config.seed),
            now_ms: 0,
            queue: BinaryHeap::new(),
            next_event_seq: 0,
            nodes: Vec::new(),
            bootstrap,
            links: Links::default(),
            unreliable: config.start_unreliable,
            counters: MessageCounters::default(),
            checker: Checker::new(config.seed),
            history: History::new(),
            clients: Vec::new(),
            trace: Fnv64::new(),
            stats: SimStats::default(),
            faults_active: config.nemesis.is_some() || config.operator.is_some(),
            workload_active: config.workload.is_some(),
            removals_seen: BTreeSet::new(),
            withheld: None,
            applied_commands: Vec::new(),
            config,
        };
        for node_idx in 0..sim.config.n_nodes {
            let drift = sim.config.tick_drift_ms;
            let tick_period_ms = (sim.config.tick_ms + sim.rng.range_inclusive(0, 2 * drift))
                .saturating_sub(drift)
                .max(1);
            sim.nodes.push(SimNode {
                id: NodeId(node_idx as u64 + 1),
                raft: None,
                disk: Disk::new(),
                kv: KvStore::new(),
                applied_index: LogIndex::ZERO,
                applied_index_max: LogIndex::ZERO,
                incarnation: 0,
                tick_period_ms,
                commit_seen: LogIndex::ZERO,
                term_seen: Term(0),
                waiting_writes: BTreeSet::new(),
                reads: BTreeMap::new(),
                reads_ready: Vec::new(),
                next_read_context: 0,
                retired: false,
                inbox: Vec::new(),
                drain_scheduled: false,
                scenario_reads: BTreeMap::new(),
                paused_until_ms: 0,
            });
        }
        for node_idx in 0..sim.nodes.len() {
            sim.start_node(node_idx);
        }
        if let Some(workload) = sim.config.workload.clone() {
            for client_idx in 0..workload.n_clients {
                let leader_guess = sim.rng.index(sim.nodes.len());
                sim.clients.push(SimClient {
                    id: client_idx as u64 + 1,
                    next_seq: 1,
                    leader_guess,
                    current: None,
                    generation: 0,
                    final_reads: Vec::new(),
                });
                let delay = sim.rng.range_inclusive(0, 100);
                sim.schedule_client_wake(client_idx, delay);
            }
        }
        if let Some(nemesis) = sim.config.nemesis.clone() {
            let delay = sim
                .rng
                .range_inclusive(nemesis.interval_ms_min, nemesis.interval_ms_max);
            sim.schedule(delay, Event::Nemesis);
        }
        if let Some(operator) = sim.config.operator.clone() {
            let delay = sim
                .rng
                .range_inclusive(operator.interval_ms_min, operator.interval_ms_max);
            sim.schedule(delay, Event::Operator);
        }
        sim
    }

    // ----- the event loop -----

    pub(crate) fn schedule(&mut self, delay_ms: u64, event: Event) {
        let seq = self.next_event_seq;
        self.next_event_seq += 1;
        self.queue.push(Queued {
            at_ms: self.now_ms + delay_ms,
            seq,
            event,
        });
    }

    /// Runs every event due up to `now + duration_ms`, then sets the clock there.
    pub fn run_for(&mut self, duration_ms: u64) {
        let end_ms = self.now_ms + duration_ms;
        while self.step_until(end_ms) {}
        self.now_ms = end_ms;
    }

    /// Processes the next event if it is due at or before `end_ms`; false when none is.
    pub(crate) fn step_until(&mut self, end_ms: u64) -> bool {
        match self.queue.peek() {
            Some(next) if next.at_ms <= end_ms => {}
            _ => return false,
        }
        let Some(queued) = self.queue.pop() else {
            return false;
        };
        self.now_ms = queued.at_ms;
        self.stats.n_events += 1;
        self.trace.write_u64(queued.at_ms);
        self.trace.write_u64(queued.event.tag());
        self.dispatch(queued.event);
        true
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Tick {
                node_idx,
                incarnation,
            } => {
                if self.nodes[node_idx].incarnation != incarnation {
                    return;
                }
                if let Some(wait) = self.pause_remaining(node_idx) {
                    return self.schedule(
                        wait,
                        Event::Tick {
                            node_idx,
                            incarnation,
                        },
                    );
                }
                let was_leader = self.is_leader_idx(node_idx);
                let Some(raft) = self.nodes[node_idx].raft.as_mut() else {
                    return;
                };
                raft.tick();
                self.after_input(node_idx, was_leader);
                let node = &self.nodes[node_idx];
                if node.incarnation == incarnation && node.is_up() {
                    let period = node.tick_period_ms;
                    self.schedule(
                        period,
                        Event::Tick {
                            node_idx,
                            incarnation,
                        },
                    );
                }
            }
            Event::Deliver { from, to, payload } => self.deliver(from, to, payload),
            Event::ClientWake {
                client_idx,
                generation,
            } => {
                if self.clients[client_idx].generation == generation {
                    self.client_wake(client_idx);
                }
            }
            Event::ClientTimeout {
                client_idx,
                generation,
            } => {
                if self.clients[client_idx].generation == generation {
                    self.client_timeout(client_idx);
                }
            }
            Event::Nemesis => self.nemesis(),
            Event::Operator => self.operator(),
            Event::Restart {
                node_idx,
                incarnation,
            } => {
                if self.nodes[node_idx].incarnation == incarnation && self.faults_active {
                    self.restart_idx(node_idx);
                }
            }
            Event::Retire { node_idx } => self.retire(node_idx),
            Event::Drain {
                node_idx,
                incarnation,
            } => {
                if let Some(wait) = self.pause_remaining(node_idx) {
                    return self.schedule(
                        wait,
                        Event::Drain {
                            node_idx,
                            incarnation,
                        },
                    );
                }
                let node = &mut self.nodes[node_idx];
                if node.incarnation != incarnation {
                    return;
                }
                node.drain_scheduled = false;
                let inbox = std::mem::take(&mut node.inbox);
                let was_leader = self.is_leader_idx(node_idx);
                let Some(raft) = self.nodes[node_idx].raft.as_mut() else {
                    return;
                };
                for message in inbox {
                    raft.step(message);
                    // A batch can elect and depose a node before its Ready is taken: check each
                    // leadership as it happens (election safety, leader completeness).
                    if raft.is_leader() {
                        self.checker.on_leader(self.now_ms, raft);
                    }
                }
                self.after_input(node_idx, was_leader);
            }
        }
    }

    pub(crate) fn log(&self, what: impl FnOnce() -> String) {
        if self.config.trace_log {
            eprintln!("[{:>7} ms] {}", self.now_ms, what());
        }
    }

    // ----- node lifecycle -----

    pub(crate) fn node_idx(&self, id: NodeId) -> Option<usize> {
        let idx = (id.0 as usize).checked_sub(1)?;
        (idx < self.nodes.len()).then_some(idx)
    }

    pub(crate) fn is_leader_idx(&self, node_idx: usize) -> bool {
        self.nodes[node_idx].raft.as_ref().is_some_and(Raft::is_leader)
    }

    /// Starts (or restarts) a node from its durable state only (contract rule 6), with the
    /// state machine restored from the durable snapshot.
    fn start_node(&mut self, node_idx: usize) {
        let mut raft_config = self.config.raft.clone();
        raft_config.id = self.nodes[node_idx].id;
        raft_config.rng_seed = self.rng.next_u64();
        let restore = self.nodes[node_idx].disk.restore(&self.bootstrap);
        let withheld = self.withheld == Some(self.nodes[node_idx].id);
        let now_ms = self.now_ms;
        let node = &mut self.nodes[node_idx];
        node.kv = match node.disk.snapshot() {
            None => KvStore::new(),
            Some(stored) => match KvStore::from_snapshot(&stored.data) {
                Ok(kv) => kv,
                Err(e) => self.checker.violation(
                    now_ms,
                    "durable snapshot decodes",
                    format!("node {}: {e}", node.id),
                ),
            },
        };
        node.applied_index = node.disk.snapshot_index();
        let mut raft = match Raft::new(raft_config, restore) {
            Ok(raft) => raft,
            Err(e) => self.checker.violation(
                now_ms,
                "restart from durable state",
                format!("node {}: {e}", node.id),
            ),
        };
        raft.withhold_candidacy(withheld);
        node.commit_seen = raft.commit_index();
        node.term_seen = raft.term();
        node.waiting_writes.clear();
        node.reads.clear();
        node.reads_ready.clear();
        node.incarnation += 1;
        let incarnation = node.incarnation;
        let first_tick_ms = self.rng.range_inclusive(1, node.tick_period_ms);
        // Entries the durable hard state says are committed must be the committed ones.
        self.checker
            .on_commit(now_ms, &raft, raft.first_index().prev(), raft.commit_index());
        self.nodes[node_idx].raft = Some(raft);
        self.schedule(
            first_tick_ms,
            Event::Tick {
                node_idx,
                incarnation,
            },
        );
        self.after_input(node_idx, false);
    }

    /// Crashes a node: its core and everything volatile are gone (the disk keeps what was
    /// fsynced, maybe plus a torn prefix of the last write).
    /// How long a paused node stays paused, if it is.
    fn pause_remaining(&self, node_idx: usize) -> Option<u64> {
        let until = self.nodes[node_idx].paused_until_ms;
        (until > self.now_ms).then(|| until - self.now_ms)
    }

    /// Freezes `node_idx` for `duration_ms`: its ticks and messages wait until it resumes.
    pub(crate) fn pause_idx(&mut self, node_idx: usize, duration_ms: u64) {
        let id = self.nodes[node_idx].id;
        self.log(|| format!("node {id} paused for {duration_ms} ms"));
        self.nodes[node_idx].paused_until_ms = self.now_ms + duration_ms;
        self.stats.n_pauses += 1;
    }

    pub(crate) fn crash_idx(&mut self, node_idx: usize) {
        if !self.nodes[node_idx].is_up() {
            return;
        }
        let torn_write_probability = self.config.disk.torn_write_probability;
        let node = &mut self.nodes[node_idx];
        node.raft = None;
        let n_torn_before = node.disk.n_torn_writes;
        node.disk.crash(&mut self.rng, torn_write_probability);
        self.stats.n_torn_writes += node.disk.n_torn_writes - n_torn_before;
        node.kv = KvStore::new();
        node.applied_index = LogIndex::ZERO;
        node.waiting_writes.clear();
        node.reads.clear();
        node.reads_ready.clear();
        node.inbox.clear();
        node.drain_scheduled = false;
        node.paused_until_ms = 0;
        node.incarnation += 1;
        self.stats.n_crashes += 1;
        let id = node.id;
        self.log(|| format!("node {id} crashed"));
    }

    pub(crate) fn restart_idx(&mut self, node_idx: usize) {
        let node = &self.nodes[node_idx];
        if node.is_up() || node.retired {
            return;
        }
        self.stats.n_restarts += 1;
        let id = node.id;
        self.log(|| format!("node {id} restarts"));
        self.start_node(node_idx);
    }

    fn retire(&mut self, node_idx: usize) {
        if self.nodes[node_idx].retired {
            return;
        }
        self.crash_idx(node_idx);
        self.nodes[node_idx].retired = true;
        self.stats.n_retired += 1;
        let id = self.nodes[node_idx].id;
        self.log(|| format!("node {id} retired after its removal"));
    }

    // ----- driving one node through the contract -----

    /// After any input to a node: handle every `Ready`, then check the invariants.
    pub(crate) fn after_input(&mut self, node_idx: usize, was_leader: bool) {
        for _ in 0..READIES_PER_INPUT_MAX {
            let Some(raft) = self.nodes[node_idx].raft.as_mut() else {
                return;
            };
            if !raft.has_ready() {
                self.observe(node_idx, was_leader);
                return;
            }
            let ready = raft.take_ready();
            self.handle_ready(node_idx, ready);
        }
        let id = self.nodes[node_idx].id;
        self.checker.violation(
            self.now_ms,
            "ready settles",
            format!("node {id} still has a Ready after {READIES_PER_INPUT_MAX}"),
        );
    }

    /// Handles one `Ready` in the order of the core's contract, crashing at a random point of
    /// it with probability `crash_in_ready_probability`.
    fn handle_ready(&mut self, node_idx: usize, ready: Ready) {
        let now_ms = self.now_ms;
        let crash_point =
            if self.faults_active && self.rng.chance(self.config.disk.crash_in_ready_probability) {
                // Between write and fsync (point 1) is where torn writes happen: weigh it up.
                self.rng
                    .weighted(&[1, 3, 1, 1, 1, 1, 1])
                    .map(|point| point as u64)
            } else {
                None
            };
        let crash_here = |point: u64| crash_point == Some(point);
        let mut messages = ready.messages;
        if ready.send_before_persist {
            // A leader's appends leave before its own entries are durable (rule 1's
            // exception): a crash at any point below loses entries its followers hold.
            for message in std::mem::take(&mut messages) {
                self.send_raft(message);
            }
        }
        if crash_here(0) {
            return self.crash_in_ready(node_idx, "before persisting");
        }
        let node = &mut self.nodes[node_idx];
        let id = node.id;
        // Rule 1: snapshot chunks, then entries, fsync, then the hard state.
        for chunk in ready.snapshot_chunks {
            match node.disk.write_snapshot_chunk(chunk) {
                Err(e) => self.checker.violation(
                    now_ms,
                    "snapshot chunks arrive in order (contract rule 1)",
                    format!("node {id}: {e}"),
                ),
                Ok(Some(stored)) => {
                    let data_hash = hash_bytes(&stored.data);
                    self.checker
                        .on_snapshot(now_ms, id, &stored.meta, data_hash, "installed");
                    self.stats.n_snapshots_installed += 1;
                }
                Ok(None) => {}
            }
        }
        if !ready.entries.is_empty() {
            if let Some(raft) = node.raft.as_ref() {
                self.checker.on_entries_persisted(now_ms, raft, &ready.entries);
            }
            if let Err(e) = node.disk.write_entries(ready.entries) {
                self.checker.violation(
                    now_ms,
                    "persisted log stays contiguous (contract rule 1)",
                    format!("node {id}: {e}"),
                );
            }
        }
        if crash_here(1) {
            return self.crash_in_ready(node_idx, "between write and fsync");
        }
        let node = &mut self.nodes[node_idx];
        node.disk.fsync();
        if crash_here(2) {
            return self.crash_in_ready(node_idx, "after fsync, before the hard state");
        }
        let node = &mut self.nodes[node_idx];
        if let Some(hard_state) = ready.hard_state {
            let old = node.disk.durable().hard_state;
            self.checker.on_hard_state_write(now_ms, id, old, hard_state);
            node.disk.write_hard_state(hard_state);
        }
        if crash_here(3) {
            return self.crash_in_ready(node_idx, "after persisting, before sending");
        }
        // Then send.
        let n_to_send = if crash_here(4) {
            self.rng.range_inclusive(0, messages.len() as u64) as usize
        } else {
            messages.len()
        };
        for message in messages.into_iter().take(n_to_send) {
            self.send_raft(message);
        }
        if crash_here(4) {
            return self.crash_in_ready(node_idx, "while sending");
        }
        for send in ready.snapshot_sends {
            self.send_snapshot_chunk(node_idx, send);
        }
        if crash_here(5) {
            return self.crash_in_ready(node_idx, "before applying");
        }
        // Rule 2: restore, then apply.
        if let Some(meta) = ready.snapshot_install {
            let node = &mut self.nodes[node_idx];
            let stored = match node.disk.snapshot() {
                Some(stored) if stored.meta == meta => stored,
                _ => self.checker.violation(
                    now_ms,
                    "installed snapshot is durable (contract rule 1)",
                    format!(
                        "node {id} must restore from snapshot {} it does not hold",
                        meta.index
                    ),
                ),
            };
            node.kv = match KvStore::from_snapshot(&stored.data) {
                Ok(kv) => kv,
                Err(e) => self.checker.violation(
                    now_ms,
                    "installed snapshot decodes",
                    format!("node {id}: snapshot {}: {e}", meta.index),
                ),
            };
            node.applied_index = meta.index;
            node.applied_index_max = node.applied_index_max.max(meta.index);
        }
        let mut snapshot_to_take = None;
        let n_committed = ready.committed_entries.len();
        let crash_after = if crash_here(6) {
            Some(self.rng.range(0, n_committed as u64 + 1) as usize)
        } else {
            None
        };
        for (entry_idx, entry) in ready.committed_entries.into_iter().enumerate() {
            if crash_after == Some(entry_idx) {
                return self.crash_in_ready(node_idx, "while applying");
            }
            let node = &mut self.nodes[node_idx];
            if entry.index != node.applied_index.next() {
                self.checker.violation(
                    now_ms,
                    "entries are applied in order (contract rule 2)",
                    format!(
                        "node {id} got entry {} to apply after {}",
                        entry.index, node.applied_index
                    ),
                );
            }
            if !node.disk.holds(entry.index, entry.term) {
                self.checker.violation(
                    now_ms,
                    "applied entries are durable (contract rule 1)",
                    format!(
                        "node {id} applies entry {} of term {} not on its disk",
                        entry.index, entry.term
                    ),
                );
            }
            self.checker.on_apply(now_ms, id, &entry);
            node.applied_index = entry.index;
            node.applied_index_max = node.applied_index_max.max(entry.index);
            if entry.kind == EntryKind::Command {
                let command = match Command::decode(&entry.data) {
                    Ok(command) => command,
                    Err(e) => self.checker.violation(
                        now_ms,
                        "commands arrive intact",
                        format!("node {id} entry {}: {e}", entry.index),
                    ),
                };
                let outcome = node.kv.apply(&command);
                let idx = entry.index.0 as usize;
                if self.applied_commands.len() <= idx {
                    self.applied_commands.resize(idx + 1, None);
                }
                if self.applied_commands[idx].is_none() {
                    self.applied_commands[idx] = Some(command.clone());
                }
                if let (Command::Kv { client_id, seq, .. }, ApplyOutcome::Applied | ApplyOutcome::Duplicate) =
                    (&command, outcome)
                {
                    if node.waiting_writes.remove(&(*client_id, *seq)) {
                        let reply = ClientReply {
                            client_id: *client_id,
                            seq: *seq,
                            body: ReplyBody::Done,
                        };
                        self.transmit(
                            Endpoint::Node(id),
                            Endpoint::Client(*client_id),
                            Payload::Reply(reply),
                        );
                    }
                }
            }
            let interval = self.config.snapshot_interval_entries;
            if interval > 0 && entry.index.0 % interval == 0 {
                snapshot_to_take = Some((entry.index, self.nodes[node_idx].kv.to_snapshot()));
            }
        }
        if crash_after == Some(n_committed) {
            return self.crash_in_ready(node_idx, "after applying");
        }
        // Rule 3: reads once applied.
        let node = &mut self.nodes[node_idx];
        for read_state in ready.read_states {
            if let Some(read) = node.reads.remove(&read_state.context) {
                node.reads_ready.push((read_state.index, read));
            } else {
                node.scenario_reads.insert(read_state.context, read_state.index);
            }
        }
        self.serve_reads(node_idx);
        // Rule 5: snapshot, make it durable, then compact.
        if let Some((index, data)) = snapshot_to_take {
            self.take_snapshot(node_idx, index, data);
        }
    }

    fn crash_in_ready(&mut self, node_idx: usize, point: &str) {
        self.stats.n_crashes_in_ready += 1;
        let id = self.nodes[node_idx].id;
        self.log(|| format!("node {id} crashes in a Ready {point}"));
        self.crash_idx(node_idx);
        if let Some(nemesis) = self.config.nemesis.clone() {
            self.schedule_restart(node_idx, &nemesis);
        }
    }

    /// Restarts the crashed `node_idx` after a downtime drawn from the nemesis' range (unless
    /// it was restarted meanwhile: the event carries its incarnation).
    fn schedule_restart(&mut self, node_idx: usize, nemesis: &NemesisConfig) {
        let incarnation = self.nodes[node_idx].incarnation;
        let downtime = self
            .rng
            .range_inclusive(nemesis.downtime_ms_min, nemesis.downtime_ms_max);
        self.schedule(
            downtime,
            Event::Restart {
                node_idx,
                incarnation,
            },
        );
    }

    fn serve_reads(&mut self, node_idx: usize) {
        let node = &mut self.nodes[node_idx];
        if node.reads_ready.is_empty() {
            return;
        }
        let applied = node.applied_index;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut node.reads_ready)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        node.reads_ready = waiting;
        let id = node.id;
        for (_, read) in ready {
            let value = self.nodes[node_idx].kv.get(&read.key).cloned();
            let reply = ClientReply {
                client_id: read.client_id,
                seq: read.seq,
                body: ReplyBody::Value(value),
            };
            self.transmit(
                Endpoint::Node(id),
                Endpoint::Client(read.client_id),
                Payload::Reply(reply),
            );
        }
    }

    fn take_snapshot(&mut self, node_idx: usize, index: LogIndex, data: Vec<u8>) {
        let now_ms = self.now_ms;
        let node = &mut self.nodes[node_idx];
        let Some(raft) = node.raft.as_mut() else { return };
        let Some(meta) = raft.snapshot_meta(index) else {
            return;
        };
        self.checker
            .on_snapshot(now_ms, node.id, &meta, hash_bytes(&data), "took");
        // Compaction lags one snapshot behind, so the log keeps a tail of entries after the
        // snapshot lagging followers receive, to catch up from once it is installed.
        let previous = node.disk.snapshot().map(|s| s.meta.clone());
        let compact_through = previous.as_ref().map_or(LogIndex::ZERO, |m| m.index);
        node.disk.save_snapshot(meta, data, compact_through);
        if let Some(previous) = previous {
            raft.compact_log(previous);
        }
        self.stats.n_snapshots_taken += 1;
    }

    /// Invariants that need the node after its `Ready`s are handled.
    fn observe(&mut self, node_idx: usize, was_leader: bool) {
        let now_ms = self.now_ms;
        let node = &mut self.nodes[node_idx];
        let Some(raft) = node.raft.as_ref() else { return };
        let id = node.id;
        if raft.term() < node.term_seen {
            self.checker.violation(
                now_ms,
                "term never decreases (Figure 2)",
                format!("node {id} went from term {} to {}", node.term_seen, raft.term()),
            );
        }
        node.term_seen = raft.term();
        if raft.is_leader() {
            self.checker.on_leader(now_ms, raft);
        }
        let commit = raft.commit_index();
        if commit < node.commit_seen {
            self.checker.violation(
                now_ms,
                "commit index never decreases while up (§5.3)",
                format!("node {id} went from commit {} to {commit}", node.commit_seen),
            );
        }
        if commit == node.commit_seen {
            return;
        }
        let old_commit = node.commit_seen;
        node.commit_seen = commit;
        self.checker.on_commit(now_ms, raft, old_commit, commit);
        let leader_view = (was_leader || raft.is_leader())
            .then(|| (raft.term_at(commit), raft.membership().voters.clone()));
        let mut removed = Vec::new();
        for idx in old_commit.0 + 1..=commit.0 {
            if let Some(entry) = raft.entry(LogIndex(idx)) {
                if let EntryKind::ConfigChange(ConfigChange::Remove(node)) = &entry.kind {
                    removed.push(*node);
                }
            }
        }
        if let Some((Some(term), voters)) = leader_view {
            // §5.3 / Figure 2 ("respond after storing"): a leader counts an entry as committed
            // only once a majority of its voters hold it on stable storage, so an applied
            // entry survives any minority of crashes.
            let n_durable = voters
                .iter()
                .filter(|v| {
                    self.node_idx(**v)
                        .is_some_and(|idx| self.nodes[idx].disk.holds(commit, term))
                })
                .count();
            if n_durable < voters.len() / 2 + 1 {
                self.checker.violation(
                    now_ms,
                    "committed entries are durable on a quorum (§5.3)",
                    format!(
                        "leader {id} committed {commit} (term {term}) but only {n_durable} of voters {voters:?} hold it durably"
                    ),
                );
            }
        }
        self.trace.write_u64(id.0);
        self.trace.write_u64(commit.0);
        for node in removed {
            if self.config.retire_removed_nodes && self.removals_seen.insert(node) {
                if let Some(removed_idx) = self.node_idx(node) {
                    self.schedule(
                        RETIRE_DELAY_MS,
                        Event::Retire {
                            node_idx: removed_idx,
                        },
                    );
                }
            }
        }
    }

    // ----- network -----

    fn send_raft(&mut self, message: Message) {
        self.log(|| format!("send {}", describe_message(&message)));
        self.counters.sent_by_kind[kind_idx(&message.body)] += 1;
        self.trace.write_u64(message.from.0);
        self.trace.write_u64(message.to.0);
        self.trace.write_u64(message.term.0);
        self.trace.write_u64(kind_idx(&message.body) as u64);
        self.transmit(
            Endpoint::Node(message.from),
            Endpoint::Node(message.to),
            Payload::Raft(message),
        );
    }

    /// The leader wants a chunk of its snapshot sent (contract rule 5: the runtime reads it
    /// from the snapshot it keeps).
    fn send_snapshot_chunk(&mut self, node_idx: usize, send: SnapshotSend) {
        let node = &self.nodes[node_idx];
        let Some(stored) = node.disk.readable_snapshot(&send.meta) else {
            // Older than every retained snapshot: the core restarts the transfer with a newer
            // one after its stall timeout.
            self.stats.n_snapshot_sends_unavailable += 1;
            return;
        };
        let start = (send.offset as usize).min(stored.data.len());
        // Tiny chunks exercise multi-chunk transfers; the floor keeps a big snapshot at <= 64
        // round trips, as a real runtime's 1 MiB chunks do (one chunk is in flight at a time,
        // so 17-byte chunks of a 100 KB snapshot would outlast the liveness bound).
        let chunk_bytes = self
            .config
            .snapshot_chunk_bytes
            .max(stored.data.len() / SNAPSHOT_CHUNKS_PER_TRANSFER_MAX);
        let end = (start + chunk_bytes).min(stored.data.len());
        let message = Message {
            from: node.id,
            to: send.to,
            term: send.term,
            body: MessageBody::InstallSnapshot {
                meta: send.meta,
                offset: start as u64,
                data: stored.data[start..end].to_vec(),
                done: end == stored.data.len(),
            },
        };
        self.send_raft(message);
    }

    /// Puts a message on the simulated network: maybe dropped, maybe duplicated, each copy
    /// with its own delay.
    pub(crate) fn transmit(&mut self, from: Endpoint, to: Endpoint, payload: Payload) {
        if matches!(payload, Payload::Request(_) | Payload::Reply(_)) {
            self.counters.n_client_messages += 1;
        }
        if !self.links.can_send(from, to) {
            self.counters.n_dropped += 1;
            return;
        }
        let net = if self.unreliable {
            &self.config.unreliable_net
        } else {
            &self.config.net
        };
        let (drop_p, dup_p, long_p) = (
            net.drop_probability,
            net.duplicate_probability,
            net.long_delay_probability,
        );
        let (delay_min, delay_max, long_max) = (net.delay_ms_min, net.delay_ms_max, net.long_delay_ms_max);
        if self.rng.chance(drop_p) {
            self.counters.n_dropped += 1;
            return;
        }
        let n_copies = if self.rng.chance(dup_p) {
            self.counters.n_duplicated += 1;
            2
        } else {
            1
        };
        let mut payload = Some(payload);
        for copy in 0..n_copies {
            let delay = if self.rng.chance(long_p) {
                self.rng.range_inclusive(delay_min, long_max.max(delay_min))
            } else {
                self.rng.range_inclusive(delay_min, delay_max)
            };
            let copy_payload = if copy + 1 == n_copies {
                payload.take()
            } else {
                payload.clone()
            };
            if let Some(payload) = copy_payload {
                self.schedule(delay, Event::Deliver { from, to, payload });
            }
        }
    }

    fn deliver(&mut self, from: Endpoint, to: Endpoint, payload: Payload) {
        if !self.links.can_send(from, to) {
            // The link was cut while the message was in flight.
            self.counters.n_dropped += 1;
            return;
        }
        match to {
            Endpoint::Client(client_id) => {
                if let Payload::Reply(reply) = payload {
                    self.client_reply(client_id, reply);
                }
            }
            Endpoint::Node(id) => {
                let Some(node_idx) = self.node_idx(id) else { return };
                if !self.nodes[node_idx].is_up() {
                    self.counters.n_dropped += 1;
                    return;
                }
                if let Some(wait) = self.pause_remaining(node_idx) {
                    // A paused process reads its socket only when it resumes.
                    let jitter = self.rng.range_inclusive(0, 5);
                    return self.schedule(wait + jitter, Event::Deliver { from, to, payload });
                }
                self.counters.n_delivered += 1;
                match payload {
                    Payload::Raft(message) if self.config.batch_window_ms > 0 => {
                        self.log(|| format!("deliver (batched) {}", describe_message(&message)));
                        let node = &mut self.nodes[node_idx];
                        node.inbox.push(message);
                        if !node.drain_scheduled {
                            node.drain_scheduled = true;
                            let incarnation = node.incarnation;
                            let delay = self.rng.range_inclusive(0, self.config.batch_window_ms);
                            self.schedule(
                                delay,
                                Event::Drain {
                                    node_idx,
                                    incarnation,
                                },
                            );
                        }
                    }
                    Payload::Raft(message) => {
                        self.log(|| format!("deliver {}", describe_message(&message)));
                        let was_leader = self.is_leader_idx(node_idx);
                        if let Some(raft) = self.nodes[node_idx].raft.as_mut() {
                            raft.step(message);
                        }
                        self.after_input(node_idx, was_leader);
                    }
                    Payload::Request(request) => self.handle_request(node_idx, request),
                    Payload::Reply(_) => {}
                }
            }
        }
    }

    // ----- the server side of clients -----

    fn handle_request(&mut self, node_idx: usize, request: ClientRequest) {
        let node = &mut self.nodes[node_idx];
        let id = node.id;
        let Some(raft) = node.raft.as_mut() else { return };
        let was_leader = raft.is_leader();
        let reply_body = match &request.op {
            OpInput::Get { key } => {
                let context = node.next_read_context;
                node.next_read_context += 1;
                match raft.read_index(context) {
                    Ok(()) => {
                        node.reads.insert(
                            context,
                            PendingRead {
                                client_id: request.client_id,
                                seq: request.seq,
                                key: key.clone(),
                            },
                        );
                        None
                    }
                    Err(e) => Some(refusal(e)),
                }
            }
            OpInput::Put { key, value } | OpInput::Append { key, value } => {
                if node.kv.is_applied(request.client_id, request.seq) {
                    // Applied already (a retry after a lost answer): applied means committed.
                    Some(ReplyBody::Done)
                } else {
                    let (key, value) = (key.clone(), value.clone());
                    let write = if matches!(request.op, OpInput::Put { .. }) {
                        crate::kv::KvWrite::Put { key, value }
                    } else {
                        crate::kv::KvWrite::Append { key, value }
                    };
                    let command = Command::Kv {
                        client_id: request.client_id,
                        seq: request.seq,
                        write,
                    };
                    match raft.propose(command.encode()) {
                        Ok(_) => {
                            node.waiting_writes.insert((request.client_id, request.seq));
                            None
                        }
                        Err(e) => Some(refusal(e)),
                    }
                }
            }
        };
        if let Some(body) = reply_body {
            let reply = ClientReply {
                client_id: request.client_id,
                seq: request.seq,
                body,
            };
            self.transmit(
                Endpoint::Node(id),
                Endpoint::Client(request.client_id),
                Payload::Reply(reply),
            );
        }
        self.after_input(node_idx, was_leader);
    }

    // ----- clients -----

    fn schedule_client_wake(&mut self, client_idx: usize, delay_ms: u64) {
        let client = &mut self.clients[client_idx];
        client.generation += 1;
        let generation = client.generation;
        self.schedule(
            delay_ms,
            Event::ClientWake {
                client_idx,
                generation,
            },
        );
    }

    fn client_wake(&mut self, client_idx: usize) {
        if self.clients[client_idx].current.is_some() {
            return self.client_send(client_idx);
        }
        let Some(workload) = self.config.workload.clone() else {
            return;
        };
        let client = &mut self.clients[client_idx];
        let (input, must_finish) = if let Some(key) = client.final_reads.pop() {
            (OpInput::Get { key }, true)
        } else if self.workload_active {
            let seq = client.next_seq;
            let token = format!("c{}.{seq}", client.id);
            let roll = self.rng.unit();
            let n_keys = workload.n_append_keys + workload.n_put_keys;
            let input = if roll < workload.get_probability && n_keys > 0 {
                let key_idx = self.rng.index(n_keys);
                let key = if key_idx < workload.n_append_keys {
                    format!("a{key_idx}")
                } else {
                    format!("p{}", key_idx - workload.n_append_keys)
                };
                OpInput::Get { key }
            } else if (roll < workload.get_probability + workload.put_probability && workload.n_put_keys > 0)
                || workload.n_append_keys == 0
            {
                let key = format!("p{}", self.rng.index(workload.n_put_keys.max(1)));
                OpInput::Put { key, value: token }
            } else {
                let key = format!("a{}", self.rng.index(workload.n_append_keys));
                OpInput::Append {
                    key,
                    value: format!("{token} "),
                }
            };
            (input, false)
        } else {
            return;
        };
        let client = &mut self.clients[client_idx];
        let seq = client.next_seq;
        client.next_seq += 1;
        let op_idx = self.history.invoke(client.id, input.clone(), self.now_ms);
        client.current = Some(ClientOp {
            op_idx,
            seq,
            input,
            n_attempts: 0,
            must_finish,
        });
        self.client_send(client_idx);
    }

    fn client_send(&mut self, client_idx: usize) {
        let Some(workload) = self.config.workload.clone() else {
            return;
        };
        let client = &mut self.clients[client_idx];
        let Some(op) = client.current.as_mut() else { return };
        op.n_attempts += 1;
        let request = ClientRequest {
            client_id: client.id,
            seq: op.seq,
            op: op.input.clone(),
        };
        let to = Endpoint::Node(NodeId(client.leader_guess as u64 + 1));
        let from = Endpoint::Client(client.id);
        client.generation += 1;
        let generation = client.generation;
        self.schedule(
            workload.request_timeout_ms,
            Event::ClientTimeout {
                client_idx,
                generation,
            },
        );
        self.transmit(from, to, Payload::Request(request));
    }

    /// Gives up on the current operation when its time budget is spent (its outcome stays
    /// unknown); true if it did.
    fn client_maybe_give_up(&mut self, client_idx: usize) -> bool {
        let Some(workload) = self.config.workload.clone() else {
            return false;
        };
        let client = &mut self.clients[client_idx];
        let Some(op) = client.current.as_ref() else {
            return false;
        };
        let invoke_ms = self.history.ops()[op.op_idx].invoke_ms;
        if op.must_finish || self.now_ms < invoke_ms + workload.give_up_ms {
            return false;
        }
        client.current = None;
        let think = self.rng.range_inclusive(0, workload.think_ms_max);
        self.schedule_client_wake(client_idx, think);
        true
    }

    fn client_timeout(&mut self, client_idx: usize) {
        if self.client_maybe_give_up(client_idx) {
            return;
        }
        let n_nodes = self.nodes.len();
        let client = &mut self.clients[client_idx];
        client.leader_guess = (client.leader_guess + 1) % n_nodes;
        self.client_send(client_idx);
    }

    fn client_reply(&mut self, client_id: u64, reply: ClientReply) {
        let Some(client_idx) = (client_id as usize).checked_sub(1) else {
            return;
        };
        let Some(workload) = self.config.workload.clone() else {
            return;
        };
        let hint_idx = match &reply.body {
            ReplyBody::NotLeader(Some(hint)) => self.node_idx(*hint),
            _ => None,
        };
        let client = &mut self.clients[client_idx];
        let Some(op) = client.current.as_ref() else { return };
        if op.seq != reply.seq {
            return;
        }
        let result = match reply.body {
            ReplyBody::Done => OpResult::Done,
            ReplyBody::Value(value) => OpResult::Value(value),
            ReplyBody::NotLeader(_) => {
                let n_nodes = self.nodes.len();
                let hinted = hint_idx.filter(|h| *h != client.leader_guess);
                let backoff_ms = match hinted {
                    Some(_) => 1,
                    None => 50,
                };
                client.leader_guess = hinted.unwrap_or((client.leader_guess + 1) % n_nodes);
                if !self.client_maybe_give_up(client_idx) {
                    self.schedule_client_wake(client_idx, backoff_ms);
                }
                return;
            }
            ReplyBody::Retry => {
                if !self.client_maybe_give_up(client_idx) {
                    self.schedule_client_wake(client_idx, 50);
                }
                return;
            }
        };
        let op_idx = op.op_idx;
        client.current = None;
        self.history.complete(op_idx, result, self.now_ms);
        let think = self.rng.range_inclusive(0, workload.think_ms_max);
        self.schedule_client_wake(client_idx, think);
    }

    /// Queues a final read of every key for the first client (they never give up).
    pub(crate) fn queue_final_reads(&mut self) {
        let Some(workload) = self.config.workload.clone() else {
            return;
        };
        let Some(client) = self.clients.first_mut() else {
            return;
        };
        let mut keys: Vec<String> = (0..workload.n_append_keys).map(|k| format!("a{k}")).collect();
        keys.extend((0..workload.n_put_keys).map(|k| format!("p{k}")));
        client.final_reads = keys;
        if client.current.is_none() {
            self.schedule_client_wake(0, 0);
        }
    }

    /// True when no client has an operation in flight or a final read queued.
    pub(crate) fn clients_idle(&self) -> bool {
        self.clients
            .iter()
            .all(|c| c.current.is_none() && c.final_reads.is_empty())
    }

    // ----- faults -----

    /// Nodes the nemesis and the liveness phase care about: not retired.
    pub(crate) fn active_node_idxs(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|idx| !self.nodes[*idx].retired)
            .collect()
    }

    fn nemesis(&mut self) {
        let Some(nemesis) = self.config.nemesis.clone() else {
            return;
        };
        if !self.faults_active {
            return;
        }
        let w = &nemesis.weights;
        let weights = [
            w.crash,
            w.partition,
            w.isolate,
            w.one_way,
            w.heal,
            w.toggle_unreliable,
            w.pause,
            w.nothing,
        ];
        let active = self.active_node_idxs();
        match self.rng.weighted(&weights) {
            Some(0) => {
                let up: Vec<usize> = active
                    .iter()
                    .copied()
                    .filter(|i| self.nodes[*i].is_up())
                    .collect();
                if let Some(node_idx) = self.rng.pick(&up) {
                    self.crash_idx(node_idx);
                    self.schedule_restart(node_idx, &nemesis);
                }
            }
            Some(1) => {
                let mut ids: Vec<NodeId> = active.iter().map(|i| self.nodes[*i].id).collect();
                for i in (1..ids.len()).rev() {
                    let j = self.rng.index(i + 1);
                    ids.swap(i, j);
                }
                if ids.len() >= 2 {
                    let split = self.rng.range(1, ids.len() as u64) as usize;
                    let (a, b) = ids.split_at(split);
                    self.log(|| format!("nemesis: partition {a:?} | {b:?}"));
                    self.links.partition(&[a.to_vec(), b.to_vec()]);
                }
            }
            Some(2) => {
                if let Some(node_idx) = self.rng.pick(&active) {
                    let id = self.nodes[node_idx].id;
                    self.log(|| format!("nemesis: disconnect {id}"));
                    self.links.disconnect(id);
                }
            }
            Some(3) => {
                let n_blocks = self.rng.range_inclusive(1, 3);
                for _ in 0..n_blocks {
                    if let (Some(a), Some(b)) = (self.rng.pick(&active), self.rng.pick(&active)) {
                        if a != b {
                            let (from, to) = (self.nodes[a].id, self.nodes[b].id);
                            self.log(|| format!("nemesis: block {from} -> {to}"));
                            self.links.block_one_way(from, to);
                        }
                    }
                }
            }
            Some(4) => {
                self.log(|| "nemesis: heal".to_string());
                self.links.heal();
            }
            Some(5) => {
                self.unreliable = !self.unreliable;
            }
            Some(6) => {
                let lease = self.config.raft.read_mode == shoal_raft::ReadMode::Lease;
                let pausable: Vec<usize> = active
                    .iter()
                    .copied()
                    .filter(|idx| !(lease && self.is_leader_idx(*idx)))
                    .collect();
                if let Some(node_idx) = self.rng.pick(&pausable) {
                    let duration = self.rng.range_inclusive(0, nemesis.pause_ms_max);
                    self.pause_idx(node_idx, duration);
                }
            }
            _ => {}
        }
        let delay = self
            .rng
            .range_inclusive(nemesis.interval_ms_min, nemesis.interval_ms_max);
        self.schedule(delay, Event::Nemesis);
    }

    /// The up node that is leader in the highest term, if any.
    pub(crate) fn leader_idx(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|idx| self.is_leader_idx(*idx))
            .max_by_key(|idx| self.nodes[*idx].raft.as_ref().map(Raft::term))
    }

    fn operator(&mut self) {
        let Some(operator) = self.config.operator.clone() else {
            return;
        };
        if !self.faults_active {
            return;
        }
        if let Some(leader_idx) = self.leader_idx() {
            if operator.membership_changes && self.rng.chance(0.5) {
                self.propose_next_membership_change(leader_idx);
            }
            if operator.leadership_transfers && self.rng.chance(0.5) {
                let voters: Vec<NodeId> = self.nodes[leader_idx]
                    .raft
                    .as_ref()
                    .map(|r| {
                        r.membership()
                            .voters
                            .iter()
                            .copied()
                            .filter(|v| *v != r.id())
                            .collect()
                    })
                    .unwrap_or_default();
                if let Some(target) = self.rng.pick(&voters) {
                    let leader = self.nodes[leader_idx].id;
                    self.log(|| format!("operator: transfer leadership {leader} -> {target}"));
                    if let Some(raft) = self.nodes[leader_idx].raft.as_mut() {
                        let _ = raft.transfer_leadership(target);
                        self.stats.n_transfers_requested += 1;
                    }
                    self.after_input(leader_idx, true);
                }
            }
            if operator.candidacy_changes && self.rng.chance(0.3) {
                self.toggle_withheld_candidacy(leader_idx);
            }
        }
        let delay = self
            .rng
            .range_inclusive(operator.interval_ms_min, operator.interval_ms_max);
        self.schedule(delay, Event::Operator);
    }

    /// Withholds a random voter's candidacy (none withheld yet) or releases the one withheld.
    /// One at a time: with at least 3 voters (never fewer than the bootstrap's), the others
    /// still form a quorum that stands for election.
    fn toggle_withheld_candidacy(&mut self, leader_idx: usize) {
        let (id, withheld) = match self.withheld.take() {
            Some(id) => (id, false),
            None => {
                let voters: Vec<NodeId> = self.nodes[leader_idx]
                    .raft
                    .as_ref()
                    .map(|r| r.membership().voters.iter().copied().collect())
                    .unwrap_or_default();
                if voters.len() < 3 {
                    return;
                }
                let Some(id) = self.rng.pick(&voters) else {
                    return;
                };
                self.withheld = Some(id);
                self.stats.n_candidacies_withheld += 1;
                (id, true)
            }
        };
        self.log(|| format!("operator: node {id} withholds candidacy: {withheld}"));
        if let Some(node) = self.nodes.iter_mut().find(|n| n.id == id) {
            if let Some(raft) = node.raft.as_mut() {
                raft.withhold_candidacy(withheld);
            }
        }
    }

    /// Add a spare as learner, promote a learner, or remove a voter beyond the bootstrap size.
    fn propose_next_membership_change(&mut self, leader_idx: usize) {
        let Some(raft) = self.nodes[leader_idx].raft.as_ref() else {
            return;
        };
        let membership = raft.membership().clone();
        let change = if let Some(learner) = membership.learners.iter().next() {
            ConfigChange::PromoteLearner(*learner)
        } else if membership.voters.len() > self.config.n_voters {
            let voters: Vec<NodeId> = membership.voters.iter().copied().collect();
            match self.rng.pick(&voters) {
                Some(voter) => ConfigChange::Remove(voter),
                None => return,
            }
        } else {
            let spares: Vec<NodeId> = self
                .nodes
                .iter()
                .filter(|n| !n.retired && !membership.contains(n.id) && !self.removals_seen.contains(&n.id))
                .map(|n| n.id)
                .collect();
            match self.rng.pick(&spares) {
                Some(spare) => ConfigChange::AddLearner(spare),
                None => return,
            }
        };
        let leader = self.nodes[leader_idx].id;
        self.log(|| format!("operator: {leader} proposes {change:?}"));
        if let Some(raft) = self.nodes[leader_idx].raft.as_mut() {
            if raft.propose_config_change(change, Vec::new()).is_ok() {
                self.stats.n_config_changes_proposed += 1;
            }
        }
        self.after_input(leader_idx, true);
    }

    /// A fingerprint of everything that happened so far: events, messages, commits.
    pub fn trace_hash(&self) -> u64 {
        let mut hasher = self.trace;
        for node in &self.nodes {
            let (term, commit) = node
                .raft
                .as_ref()
                .map_or((0, 0), |r| (r.term().0, r.commit_index().0));
            hasher.write_u64(term);
            hasher.write_u64(commit);
            hasher.write_u64(node.kv.state_hash());
        }
        hasher.finish()
    }

    /// The command applied at `index` by every node that applied it.
    pub fn applied_command(&self, index: LogIndex) -> Option<Command> {
        self.applied_commands.get(index.0 as usize).cloned().flatten()
    }

    pub fn stats(&self) -> &SimStats {
        &self.stats
    }

    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The clients' history so far (for the oracle, or for `shoal-lincheck`).
    pub fn history(&self) -> &History {
        &self.history
    }

    pub fn checker(&self) -> &Checker {
        &self.checker
    }

    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Which role each node plays, for failure messages.
    pub fn describe_nodes(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            match &node.raft {
                None => out.push_str(&format!(
                    "\n  node {}: down{} (durable term {}, last index {})",
                    node.id,
                    if node.retired { " (retired)" } else { "" },
                    node.disk.durable().hard_state.term,
                    node.disk.last_index()
                )),
                Some(raft) => out.push_str(&(format!(
                    "\n  node {}: {:?} term {} leader {:?} log {}..={} commit {} applied {} voters {:?} learners {:?}{}",
                    node.id,
                    raft.role(),
                    raft.term(),
                    raft.leader(),
                    raft.first_index(),
                    raft.last_index(),
                    raft.commit_index(),
                    node.applied_index,
                    raft.membership().voters,
                    raft.membership().learners,
                    if self.links.is_disconnected(node.id) { " (disconnected)" } else { "" }
                ) + &if raft.is_leader() {
                    format!(" progress (peer, match, next) {:?}", raft.status().progress.iter().map(|(p, m, n)| (p.0, m.0, n.0)).collect::<Vec<_>>())
                } else {
                    String::new()
                })),
            }
        }
        out
    }
}

/// A one-line summary of a message for the trace log (entries by index and term only).
fn describe_message(message: &Message) -> String {
    let body = match &message.body {
        MessageBody::AppendEntries {
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit,
        } => format!(
            "AppendEntries prev ({prev_log_index}, {prev_log_term}) entries {:?} commit {leader_commit}",
            entries.iter().map(|e| (e.index.0, e.term.0)).collect::<Vec<_>>()
        ),
        MessageBody::InstallSnapshot {
            meta,
            offset,
            data,
            done,
        } => format!(
            "InstallSnapshot index {} term {} offset {offset} bytes {} done {done}",
            meta.index,
            meta.term,
            data.len()
        ),
        other => format!("{other:?}"),
    };
    format!("{} -> {} term {}: {body}", message.from, message.to, message.term)
}

fn refusal(error: ProposeError) -> ReplyBody {
    match error {
        ProposeError::NotLeader { leader_hint } => ReplyBody::NotLeader(leader_hint),
        _ => ReplyBody::Retry,
    }
}
