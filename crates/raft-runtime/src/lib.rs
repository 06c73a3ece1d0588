//! # shoal-raft-runtime: the async shell around the Raft core
//!
//! The core (`shoal-raft`) is sans-IO: ticks and messages in, a [`shoal_raft::Ready`] out.
//! This crate gives it a clock, a disk and a network, and runs replicated
//! [`StateMachine`]s on it:
//!
//! - [`RaftNode`]: one per process. Hosts any number of Raft groups (multi-raft), serves the
//!   peer transport and the client API on one gRPC listener ([`RaftNode::serve`] takes the
//!   listener and a shutdown signal, so tests bind port 0).
//! - [`RaftGroup`]: a running group: [`RaftGroup::propose`], [`RaftGroup::read`],
//!   [`RaftGroup::status`], [`RaftGroup::transfer_leader`], [`RaftGroup::change_membership`],
//!   and [`RaftGroup::wait_for`] to await state changes.
//! - [`RaftClient`]: a gRPC client that finds the leader among endpoints and follows redirects.
//!
//! ## Layout
//!
//! - `node`: [`RaftNode`] and the router that demultiplexes by group id; `group`: the
//!   [`RaftGroup`] handle and what it observes ([`GroupState`], [`GroupStatus`]);
//!   `group_loop`: the loop that drives one group; `config`: [`NodeOptions`], [`GroupConfig`];
//!   `storage`: the group's WAL, hard state and snapshots on `shoal-wal`; `transport`: peer
//!   streams and the inbound side; `service`: the client-facing gRPC service; `client`:
//!   [`RaftClient`]; `codec`: core types to and from protobuf (wire and disk);
//!   `state_machine`: the [`StateMachine`] trait and [`KvStateMachine`]; `error`: [`Error`].
//! - `proto/raft.proto`: `RaftPeer.Send(stream MessageBatch)` between peers (every message
//!   carries its `group_id`) and `RaftService` (Propose, Read, Status, TransferLeader,
//!   ChangeMembership) for clients. Compiled by `build.rs` with `protox` (no system `protoc`).
//!
//! ## Threading
//!
//! Each group runs as one tokio task (its *loop*) that owns its `Raft`, its storage and its
//! state machine; nothing else touches them. It receives inputs on a bounded queue (peer
//! messages, proposals, reads, admin requests) and answers through oneshot channels, so a
//! request's hand-off and its answer are task wake-ups on the same runtime, not thread
//! wake-ups (measured: a third of a serializable read's server CPU went to the thread
//! hand-offs when each group had its own thread; docs/BENCHMARKS.md). Disk work that blocks
//! (the WAL write and fsync of a `Ready`, restoring a snapshot, compacting the WAL) runs on
//! the runtime's blocking threads while the loop awaits it: workers never wait for a disk,
//! and groups never wait for each other's disks. Snapshots are written on a blocking thread
//! too, for as long as they take. `apply` and reads run on the loop's task, so they should be
//! quick. Peer streams, the gRPC servers and the clients are tokio tasks; the loop hands
//! outbound messages to per-peer bounded queues without blocking.
//!
//! ## The loop of a group
//!
//! 1. Wait for the first input or the next tick ([`GroupConfig::tick_interval`], default
//!    20 ms); then drain every input already queued, at most [`BATCH_INPUTS_MAX`]; feed each to
//!    the core (`step`, `propose`, `read_index`, ...). Tick the core for every elapsed interval
//!    (at most [`TICKS_CATCH_UP_MAX`] at once).
//! 2. Take **one** `Ready` for the whole batch (core contract rule 4: group commit) and handle it
//!    completely, in the contract's order:
//!    - rule 1, *persist before send*: write `snapshot_chunks` (offset 0 starts a snapshot, a
//!      `done` chunk finishes it durably and resets the WAL), append `entries` to the WAL (the
//!      raft index is the WAL index; an overwrite truncates the suffix) and fsync **once**, then
//!      replace the hard-state file atomically; only then hand `messages` to the transport and
//!      read and send the chunks of `snapshot_sends` (`InstallSnapshot`, [`SNAPSHOT_CHUNK_BYTES_MAX`]
//!      each);
//!    - rule 2, *restore then apply*: restore the state machine from an installed snapshot,
//!      then apply `committed_entries` in order and answer each proposal whose (term, index)
//!      applied with the state machine's reply (`Dropped` when another term's entry landed
//!      there);
//!    - rule 3, *reads after apply*: a read runs once its `ReadState` index has applied.
//!
//!    Repeat while the core has more (bounded by [`READY_ROUNDS_MAX`]).
//! 3. If this node is no longer the leader, fail its pending proposals with `LeadershipLost`
//!    (their outcome is unknown) and its unconfirmed reads with `NotLeader`.
//! 4. Rule 5, *snapshots*: after [`GroupConfig::snapshot_interval_entries`] applied entries,
//!    write a snapshot of the state machine at the applied index with the core's
//!    `snapshot_meta` (plus member addresses) durably, then `Raft::compact_log`, then
//!    `Wal::compact_prefix`. Followers compact at once; a leader waits until every member
//!    holds the snapshot's index (or half an interval more entries applied), because the core
//!    drops the whole prefix and a follower only slightly behind would otherwise need the
//!    whole snapshot. The store keeps the two newest snapshots, so the one the core is sending
//!    stays readable. The snapshot is written on a blocking thread that holds the state
//!    machine meanwhile: the loop keeps replicating and committing, and applies and local
//!    reads wait for it.
//! 5. Publish a [`GroupState`] (term, role, leader, commit, applied, ...) on a watch channel.
//!
//! Rule 6, *restart*: [`RaftNode::start_group`] reads the hard state, the latest snapshot
//! (restoring the state machine from it) and the WAL entries after it, and gives exactly these
//! to `Raft::new`. WAL entries that do not continue the snapshot (a crash between installing a
//! leader's snapshot and resetting the WAL) are discarded.
//!
//! A storage error is fatal for the group (fail-stop): the loop stops, pending requests fail
//! with [`Error::Storage`], and the group must be restarted from its durable state. A broken
//! core invariant (a panic in the group's loop) stops the group likewise ([`Error::Fatal`]).
//!
//! ## Requests and their errors
//!
//! A proposal is answered with the state machine's reply once its (term, index) applied on this
//! node. It fails with `NotLeader` (refused, with the leader's id and address when known),
//! `Busy` (a bounded queue or the core's uncommitted-bytes budget is full), `Dropped` (another
//! term's entry landed at its index: certainly not applied), `LeadershipLost` or `Timeout`
//! (outcome unknown). A read ([`RaftGroup::read`]) asks the core for a read index (ReadIndex,
//! Raft §6.4), waits until it applied, then runs the closure in the group's loop;
//! [`RaftGroup::read_local`] reads this replica's state at once (possibly stale). Over gRPC,
//! reads go through [`StateMachine::query`].
//!
//! ## Membership and addresses
//!
//! Peer addresses come from [`NodeOptions::peers`] and from the data of ConfigChange entries
//! (an added member's `host:port`); snapshots record the members' addresses, and
//! `InstallSnapshot` messages carry them, so they survive log compaction. A node joining an
//! existing group is started with the group's original [`GroupConfig::initial_voters`] (it is
//! not among them, so it waits as a learner) and added with
//! [`MembershipChange::AddLearner`], then promoted.
//!
//! ## Limits
//!
//! Every queue and batch is bounded; the constants below state their cost. The core adds its
//! own (`shoal_raft::Config`: in-flight messages, message bytes, uncommitted bytes, entry size).

mod client;
pub mod coalesce;
mod codec;
mod config;
mod error;
mod group;
mod group_loop;
mod node;
mod service;
mod state_machine;
mod storage;
mod transport;

use std::time::Duration;

/// Generated protobuf and gRPC types (`proto/raft.proto`).
pub mod proto {
    tonic::include_proto!("shoal.raft.v1");
}

use shoal_wal as wal;

pub use client::{ClientOptions, RaftClient};
pub use codec::DecodeError;
pub use config::{GroupConfig, MembershipChange, NodeOptions};
pub use error::{Error, Result};
pub use group::{GroupState, GroupStatus, PeerProgress, RaftGroup};
pub use node::RaftNode;
pub use state_machine::{KvCommand, KvStateMachine, StateMachine, KV_KEY_BYTES_MAX};
pub use storage::{seed_group_from_snapshot, SnapshotData};
pub use transport::TransportMetrics;

// ----- defaults -----

/// Real time per core tick.
pub const TICK_INTERVAL_DEFAULT: Duration = Duration::from_millis(20);
/// Heartbeats every 2 ticks (40 ms).
pub const HEARTBEAT_INTERVAL_TICKS_DEFAULT: u64 = 2;
/// Elections after 15-30 ticks (300-600 ms) without a leader: failover well under a second.
pub const ELECTION_TIMEOUT_TICKS_DEFAULT: u64 = 15;
/// Entries applied between two snapshots.
pub const SNAPSHOT_INTERVAL_ENTRIES_DEFAULT: u64 = 10_000;
/// How long a request may wait for its answer.
pub const REQUEST_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);

// ----- limits -----

/// Inputs (peer messages, proposals, reads, admin requests) queued for one group. Cost: each
/// may hold a message of up to a few MiB, so the worst case is large, but a full queue only
/// arises when the group's disk is far slower than its clients; past it proposals get
/// `Error::Busy` and peer messages are dropped (Raft resends).
pub const GROUP_INBOX_INPUTS_MAX: usize = 4096;
/// Client requests (proposals, reads, admin) queued for one group, part of
/// `GROUP_INBOX_INPUTS_MAX`: the rest stays free for peer messages, so a flood of clients cannot
/// make a leader drop its followers' acknowledgements and lose its quorum. Past it: `Busy`.
pub const GROUP_REQUESTS_QUEUED_MAX: usize = GROUP_INBOX_INPUTS_MAX / 2;
/// Inputs drained into one Ready (one fsync). Cost: latency of the first input in a batch grows
/// with the batch; larger batches amortise the fsync better.
pub const BATCH_INPUTS_MAX: usize = 1024;
/// Readys handled back to back before the loop looks at its inputs again (a Ready holds at most
/// `apply_batch_bytes_max` of committed entries). Cost: input latency while catching up.
pub const READY_ROUNDS_MAX: usize = 64;
/// Ticks replayed at once after the loop fell behind (a long fsync or snapshot); beyond this,
/// missed ticks are skipped so a stall does not fire a burst of elections.
pub const TICKS_CATCH_UP_MAX: u32 = 3;
/// Reads waiting for a read index or for it to apply, per group. Cost: one closure each.
pub const PENDING_READS_MAX: usize = 16 * 1024;
/// Bytes of snapshot data in one `InstallSnapshot` message. Cost: one chunk in memory per
/// message in flight; the leader sends one chunk per round trip.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Messages queued for one peer. Cost: up to this many messages in memory per peer (each up to
/// `message_bytes_max`); past it messages are dropped and counted.
pub const PEER_QUEUE_MESSAGES_MAX: usize = 4096;
/// Messages in one gRPC stream item (`MessageBatch`).
pub const PEER_BATCH_MESSAGES_MAX: usize = 512;
/// Bytes after which a batch is closed (one message may overshoot it).
pub const PEER_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Batches buffered in one peer stream before the sender waits for HTTP/2 flow control.
pub const PEER_STREAM_BATCHES_MAX: usize = 8;
/// Largest gRPC message accepted or sent (peer batches, proposals, replies). Cost: a peer or
/// client can make a server buffer this much per request.
pub const GRPC_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// First pause before reconnecting to an unreachable peer; doubles each failure.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(20);
/// Longest pause between reconnection attempts (a peer back up is reached within this).
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
