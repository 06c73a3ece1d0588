//! # shoal-raft: the Raft consensus core, sans-IO
//!
//! A deterministic implementation of Raft (Ongaro & Ousterhout, 2014; Ongaro's dissertation,
//! 2014) in the style of etcd-io/raft: no clock, socket, file, thread or thread RNG inside.
//! Time is [`Raft::tick`], the network is [`Raft::step`] and [`Ready::messages`], the disk is
//! [`Ready::entries`] / [`Ready::hard_state`] / [`Ready::snapshot_chunks`], and the only
//! randomness is a [`SplitMix64`] seeded from [`Config::rng_seed`].
//!
//! ## Layout
//!
//! - `types`: ids (`NodeId`, `Term`, `LogIndex`), `Entry`, `HardState`, `Membership`.
//! - `message`: the RPCs of Figure 2 plus PreVote, Heartbeat, InstallSnapshot chunks, TimeoutNow.
//! - `log`: the in-memory log between the snapshot point and the last index.
//! - `progress`: the leader's per-follower flow control (probe / replicate / snapshot).
//! - `raft`: the node itself; `config`: its validated settings.
//!
//! ## The contract with the runtime
//!
//! After feeding inputs, the runtime calls [`Raft::take_ready`] and handles the [`Ready`]
//! completely, in this order, before feeding the node again:
//!
//! 1. **Persist before sending.** Write `snapshot_chunks` (a `done` chunk makes the snapshot
//!    durable and replaces the stored log by it), then `entries` (first discarding stored
//!    entries at or after `entries[0].index`) and fsync them, then `hard_state` (atomically and
//!    durably; written after the entries because its commit index refers to them). Only then
//!    send `messages` and `snapshot_sends`. A vote, an acknowledgement or a leader's own match
//!    index that reached another node must never be forgotten by a crash. The one exception:
//!    when [`Ready::send_before_persist`] is set (a leader's appends), `messages` may be sent
//!    first, so the leader's fsync overlaps its followers' (dissertation §10.2.1); the `Ready`
//!    must still be durable before the next input (rule 4), which is what keeps it safe.
//! 2. **Restore, then apply.** If `snapshot_install` is set, restore the state machine from that
//!    snapshot; then apply `committed_entries` in order (ignoring `Noop` entries).
//! 3. **Reads after apply.** Serve a [`ReadState`] only once the state machine has applied its
//!    `index`.
//! 4. **One Ready at a time.** Everything taken is assumed done by the next input. A runtime
//!    may batch many inputs (proposals, messages, ticks) before one `take_ready`: that is group
//!    commit, one fsync for all of them.
//! 5. **Snapshots.** To compact, take a snapshot at an applied index with the metadata from
//!    [`Raft::snapshot_meta`], make it durable, then call [`Raft::compact_log`] and drop the
//!    WAL prefix. Keep that snapshot readable while the core may ask to send it.
//! 6. **Restart.** Give [`Raft::new`] the hard state, the latest snapshot's metadata (with the
//!    state machine restored from it) and the entries after it, exactly as stored.
//!
//! The core asserts its own invariants (never truncate a committed entry, never two leaders in
//! a term) and panics when one breaks: a broken invariant is a bug, and restarting from durable
//! state is safer than serving wrong data.

mod config;
mod log;
mod message;
mod progress;
mod raft;
mod rng;
#[cfg(test)]
mod tests;
mod types;

pub use config::{Config, ReadMode};
pub use message::{Message, MessageBody};
pub use raft::{ProposeError, Raft, Ready, Restore, SnapshotChunk, SnapshotSend, SoftState, Status};
pub use rng::SplitMix64;
pub use types::{
    ConfigChange, Entry, EntryKind, HardState, LogIndex, Membership, NodeId, ReadState, Role, SnapshotMeta,
    Term,
};
