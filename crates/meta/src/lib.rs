//! # shoal-meta: the coordination store
//!
//! An etcd/ZooKeeper-class service replicated by Raft: MVCC keys with revisions,
//! transactions, watches, leases (ephemeral keys), sequential keys, exactly-once client
//! sessions, compaction, divergence detection. Users see it as `shoal kv …`, `shoal lease …`;
//! the rest of Shoal keeps its state and elects its leaders in it.
//!
//! ## Layout
//!
//! - [`store`]: the replicated state machine ([`store::MetaStore`]), deterministic and free
//!   of I/O: MVCC (`store/mvcc.rs`), sessions (`store/session.rs`), snapshot format
//!   (`store/snapshot.rs`). It implements the runtime's `StateMachine`.
//! - [`server`]: the gRPC services (KV, Watch, Lease, Maintenance) on a `RaftGroup<MetaStore>`,
//!   plus the leader's background duties: lease expiry and checkpoints, automatic
//!   compaction, the divergence check.
//! - [`client`]: [`client::MetaClient`], which finds the leader, retries safely and numbers
//!   writes for exactly-once; watches that resume; the lock and election recipes.
//! - [`limits`]: every limit, with its cost.
//! - `proto/meta.proto`: the API, and the replicated commands (`Command`, `CommandReply`).

pub mod client;
pub mod limits;
pub mod server;
pub mod store;

/// Generated protobuf and gRPC types (`proto/meta.proto`).
#[allow(clippy::all)]
pub mod proto {
    tonic::include_proto!("shoal.meta.v1");
}
