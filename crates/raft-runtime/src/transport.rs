//! The gRPC transport between peers: one bounded outbound queue and one long-lived client
//! stream per peer (`RaftPeer.Send`), and the inbound side that demultiplexes messages to their
//! Raft group by `group_id`.
//!
//! Raft tolerates lost messages, so the transport never blocks a group: a full queue drops the
//! message (and counts it), a broken stream drops what was in flight, and the peer task
//! reconnects with exponential backoff.

use std::collections::{BTreeMap, HashMap};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use shoal_raft::NodeId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::codec;
use crate::node::Router;
use crate::proto;
use crate::proto::raft_peer_client::RaftPeerClient;
use crate::{
    GRPC_MESSAGE_BYTES_MAX, PEER_BATCH_BYTES_MAX, PEER_BATCH_MESSAGES_MAX, PEER_QUEUE_MESSAGES_MAX,
    PEER_STREAM_BATCHES_MAX, RECONNECT_BACKOFF_MAX, RECONNECT_BACKOFF_MIN,
};

/// How long a connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP/2 pings on idle peer connections, so a dead peer is noticed without traffic.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters of the transport, for tests, benchmarks and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportMetrics {
    /// Messages handed to a peer stream.
    pub n_messages_sent: u64,
    /// Batches (one gRPC stream item each) sent.
    pub n_batches_sent: u64,
    /// Messages dropped because a peer's bounded queue was full.
    pub n_messages_dropped_queue_full: u64,
    /// Messages dropped because the peer's address is unknown.
    pub n_messages_dropped_no_address: u64,
    /// Messages dropped because the peer was unreachable (discarded while reconnecting).
    pub n_messages_dropped_unreachable: u64,
    /// Inbound messages dropped: unknown group, malformed, or the group's inbox full.
    pub n_messages_dropped_inbound: u64,
    /// Successful connections to peers (the first one and every reconnection).
    pub n_connects: u64,
}

#[derive(Default)]
struct Counters {
    n_messages_sent: AtomicU64,
    n_batches_sent: AtomicU64,
    n_messages_dropped_queue_full: AtomicU64,
    n_messages_dropped_no_address: AtomicU64,
    n_messages_dropped_unreachable: AtomicU64,
    n_messages_dropped_inbound: AtomicU64,
    n_connects: AtomicU64,
}

struct PeerQueue {
    sender: mpsc::Sender<proto::RaftMessage>,
}

/// Outbound side of the transport, shared by every group of a node.
pub(crate) struct Transport {
    id: NodeId,
    runtime: tokio::runtime::Handle,
    shutdown: CancellationToken,
    /// Where each node listens: the static peers map, then addresses learned from membership
    /// changes and snapshots.
    addresses: RwLock<BTreeMap<NodeId, String>>,
    peers: Mutex<HashMap<NodeId, PeerQueue>>,
    counters: Arc<Counters>,
}

impl Transport {
    pub fn new(
        id: NodeId,
        runtime: tokio::runtime::Handle,
        shutdown: CancellationToken,
        peers: BTreeMap<NodeId, String>,
    ) -> Transport {
        Transport {
            id,
            runtime,
            shutdown,
            addresses: RwLock::new(peers),
            peers: Mutex::new(HashMap::new()),
            counters: Arc::new(Counters::default()),
        }
    }

    pub fn address(&self, id: NodeId) -> Option<String> {
        read_lock(&self.addresses).get(&id).cloned()
    }

    pub fn addresses(&self) -> BTreeMap<NodeId, String> {
        read_lock(&self.addresses).clone()
    }

    /// Records where `id` listens; a changed address reconnects the peer's stream.
    pub fn set_address(&self, id: NodeId, address: String) {
        if id == NodeId(0) || address.is_empty() {
            return;
        }
        let changed = {
            let mut addresses = write_lock(&self.addresses);
            let changed = addresses.get(&id) != Some(&address);
            addresses.insert(id, address);
            changed
        };
        if changed {
            // Dropping the queue ends the old peer task; the next send starts a new one.
            lock(&self.peers).remove(&id);
        }
    }

    /// Records an address only if none is known (addresses relayed by another node must not
    /// override this node's own configuration).
    pub fn learn_address(&self, id: NodeId, address: String) {
        if id == NodeId(0) || address.is_empty() {
            return;
        }
        write_lock(&self.addresses).entry(id).or_insert(address);
    }

    /// Queues `message` for its recipient without blocking; drops it when the queue is full.
    pub fn send(&self, message: proto::RaftMessage) {
        let to = NodeId(message.to);
        if to == self.id {
            return;
        }
        let mut peers = lock(&self.peers);
        let needs_task = peers.get(&to).is_none_or(|peer| peer.sender.is_closed());
        if needs_task {
            let Some(address) = self.address(to) else {
                self.counters
                    .n_messages_dropped_no_address
                    .fetch_add(1, Ordering::Relaxed);
                return;
            };
            let (sender, receiver) = mpsc::channel(PEER_QUEUE_MESSAGES_MAX);
            let peer_task = PeerTask {
                to,
                address: address.clone(),
                receiver,
                shutdown: self.shutdown.clone(),
                counters: self.counters.clone(),
            };
            let span = tracing::debug_span!("peer", node_id = self.id.0, peer = to.0);
            self.runtime.spawn(peer_task.run().instrument(span));
            peers.insert(to, PeerQueue { sender });
        }
        let Some(peer) = peers.get(&to) else { return };
        if let Err(mpsc::error::TrySendError::Full(_)) = peer.sender.try_send(message) {
            self.counters
                .n_messages_dropped_queue_full
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn count_inbound_drop(&self) {
        self.counters
            .n_messages_dropped_inbound
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn metrics(&self) -> TransportMetrics {
        let c = &self.counters;
        TransportMetrics {
            n_messages_sent: c.n_messages_sent.load(Ordering::Relaxed),
            n_batches_sent: c.n_batches_sent.load(Ordering::Relaxed),
            n_messages_dropped_queue_full: c.n_messages_dropped_queue_full.load(Ordering::Relaxed),
            n_messages_dropped_no_address: c.n_messages_dropped_no_address.load(Ordering::Relaxed),
            n_messages_dropped_unreachable: c.n_messages_dropped_unreachable.load(Ordering::Relaxed),
            n_messages_dropped_inbound: c.n_messages_dropped_inbound.load(Ordering::Relaxed),
            n_connects: c.n_connects.load(Ordering::Relaxed),
        }
    }
}

/// One peer's outbound task: connect, stream batches, reconnect with backoff.
struct PeerTask {
    to: NodeId,
    address: String,
    receiver: mpsc::Receiver<proto::RaftMessage>,
    shutdown: CancellationToken,
    counters: Arc<Counters>,
}

enum StreamEnd {
    /// The queue closed (address changed or node shut down): stop for good.
    Finished,
    /// The stream broke: reconnect.
    Broken,
}

impl PeerTask {
    async fn run(mut self) {
        let mut backoff = RECONNECT_BACKOFF_MIN;
        loop {
            let channel = tokio::select! {
                _ = self.shutdown.cancelled() => return,
                channel = connect(&self.address) => channel,
            };
            match channel {
                Ok(channel) => {
                    self.counters.n_connects.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = self.to.0, address = %self.address, "connected to peer");
                    backoff = RECONNECT_BACKOFF_MIN;
                    match self.stream(channel).await {
                        StreamEnd::Finished => return,
                        StreamEnd::Broken => {}
                    }
                }
                Err(error) => {
                    tracing::debug!(peer = self.to.0, address = %self.address, %error, "peer unreachable");
                }
            }
            // Messages queued while the peer was unreachable are stale by the time it returns;
            // Raft resends what matters, so discard them rather than deliver them late.
            if !self.discard_queued() {
                return;
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RECONNECT_BACKOFF_MAX);
        }
    }

    /// Drops every queued message; false when the queue is closed.
    fn discard_queued(&mut self) -> bool {
        loop {
            match self.receiver.try_recv() {
                Ok(_) => {
                    self.counters
                        .n_messages_dropped_unreachable
                        .fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return false,
            }
        }
    }

    async fn stream(&mut self, channel: Channel) -> StreamEnd {
        let mut client = RaftPeerClient::new(channel)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        let (stream_sender, stream_receiver) = mpsc::channel(PEER_STREAM_BATCHES_MAX);
        let mut call = pin!(client.send(ReceiverStream::new(stream_receiver)));
        loop {
            let first = tokio::select! {
                _ = self.shutdown.cancelled() => return StreamEnd::Finished,
                result = &mut call => {
                    tracing::debug!(peer = self.to.0, ?result, "peer stream ended");
                    return StreamEnd::Broken;
                }
                message = self.receiver.recv() => match message {
                    Some(message) => message,
                    None => return StreamEnd::Finished,
                },
            };
            let mut size_bytes = codec::message_size_bytes(&first);
            let mut messages = vec![first];
            while messages.len() < PEER_BATCH_MESSAGES_MAX && size_bytes < PEER_BATCH_BYTES_MAX {
                match self.receiver.try_recv() {
                    Ok(message) => {
                        size_bytes += codec::message_size_bytes(&message);
                        messages.push(message);
                    }
                    Err(_) => break,
                }
            }
            let n_messages = messages.len() as u64;
            tokio::select! {
                _ = self.shutdown.cancelled() => return StreamEnd::Finished,
                result = &mut call => {
                    tracing::debug!(peer = self.to.0, ?result, "peer stream ended");
                    self.counters.n_messages_dropped_unreachable.fetch_add(n_messages, Ordering::Relaxed);
                    return StreamEnd::Broken;
                }
                permit = stream_sender.reserve() => match permit {
                    Ok(permit) => {
                        permit.send(proto::MessageBatch { messages });
                        self.counters.n_messages_sent.fetch_add(n_messages, Ordering::Relaxed);
                        self.counters.n_batches_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => return StreamEnd::Broken,
                },
            }
        }
    }
}

async fn connect(address: &str) -> Result<Channel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(format!("http://{address}"))?
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    crate::coalesce::connect(endpoint, CONNECT_TIMEOUT).await
}

/// The inbound side: `RaftPeer.Send` streams demultiplexed to groups.
pub(crate) struct PeerService {
    pub router: Arc<Router>,
    pub shutdown: CancellationToken,
}

#[tonic::async_trait]
impl proto::raft_peer_server::RaftPeer for PeerService {
    async fn send(
        &self,
        request: Request<Streaming<proto::MessageBatch>>,
    ) -> Result<Response<proto::SendAck>, Status> {
        let mut stream = request.into_inner();
        let mut n_messages_received = 0u64;
        loop {
            // A peer stream lives as long as the connection; end it on shutdown so a graceful
            // server shutdown does not wait for peers to hang up.
            let batch = tokio::select! {
                _ = self.shutdown.cancelled() => break,
                batch = stream.message() => batch?,
            };
            let Some(batch) = batch else { break };
            for message in batch.messages {
                n_messages_received += 1;
                self.router.deliver(message);
            }
        }
        Ok(Response::new(proto::SendAck { n_messages_received }))
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; keep going.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn read_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(crate) fn write_lock<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}
