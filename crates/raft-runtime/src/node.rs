//! A node (one process): hosts Raft groups, routes peer messages and client requests to them
//! by group id, and serves both over one gRPC listener.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};

use shoal_raft::{LogIndex, NodeId, Raft};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::coalesce::CoalescingIo;
use crate::codec;
use crate::config::{GroupConfig, NodeOptions};
use crate::error::{Error, Result};
use crate::group::{GroupHandle, GroupShared, GroupState, RaftGroup};
use crate::group_loop::GroupLoop;
use crate::proto;
use crate::service::ClientService;
use crate::state_machine::StateMachine;
use crate::storage::GroupStorage;
use crate::transport::{read_lock, write_lock, PeerService, Transport, TransportMetrics};
use crate::{GROUP_INBOX_INPUTS_MAX, GRPC_MESSAGE_BYTES_MAX};

/// Routes inbound messages and client requests to groups by id.
pub(crate) struct Router {
    groups: RwLock<HashMap<u64, GroupHandle>>,
    transport: Arc<Transport>,
}

impl Router {
    pub fn deliver(&self, message: proto::RaftMessage) {
        let (group_id, message, addresses) = match codec::message_from_proto(message) {
            Ok(decoded) => decoded,
            Err(error) => {
                tracing::debug!(%error, "dropping malformed peer message");
                self.transport.count_inbound_drop();
                return;
            }
        };
        for (id, address) in addresses {
            self.transport.learn_address(id, address);
        }
        match read_lock(&self.groups).get(&group_id) {
            Some(group) => group.deliver(message),
            None => self.transport.count_inbound_drop(),
        }
    }

    pub fn group(&self, group_id: u64) -> Result<GroupHandle> {
        read_lock(&self.groups)
            .get(&group_id)
            .cloned()
            .ok_or(Error::UnknownGroup(group_id))
    }
}

struct NodeInner {
    id: NodeId,
    transport: Arc<Transport>,
    router: Arc<Router>,
    shutdown: CancellationToken,
}

/// One process's Raft runtime: hosts groups, serves peers and clients over gRPC.
#[derive(Clone)]
pub struct RaftNode {
    inner: Arc<NodeInner>,
}

impl RaftNode {
    /// Creates a node; call from within a tokio runtime (peer streams run on it).
    pub fn new(options: NodeOptions) -> Result<RaftNode> {
        if options.id == NodeId(0) {
            return Err(Error::Config("node id must be > 0 (0 means \"nobody\")".into()));
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("RaftNode::new must be called within a tokio runtime".into()))?;
        let shutdown = CancellationToken::new();
        let transport = Arc::new(Transport::new(
            options.id,
            runtime,
            shutdown.clone(),
            options.peers,
        ));
        let router = Arc::new(Router {
            groups: RwLock::new(HashMap::new()),
            transport: transport.clone(),
        });
        Ok(RaftNode {
            inner: Arc::new(NodeInner {
                id: options.id,
                transport,
                router,
                shutdown,
            }),
        })
    }

    pub fn id(&self) -> NodeId {
        self.inner.id
    }

    /// Opens the group's storage, restores its state machine, and starts its loop as a task
    /// on the current tokio runtime (an error outside one).
    pub fn start_group<S: StateMachine>(
        &self,
        config: GroupConfig,
        mut state_machine: S,
    ) -> Result<RaftGroup<S>> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Config("a group must be started inside a tokio runtime".into()))?;
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Shutdown);
        }
        if read_lock(&self.inner.router.groups).contains_key(&config.group_id) {
            return Err(Error::Config(format!(
                "group {} already runs on node {}",
                config.group_id, self.inner.id
            )));
        }
        let (storage, recovery) = GroupStorage::open(
            &config.data_dir,
            &config.initial_voters,
            crate::wal::WalOptions::default(),
            &mut state_machine,
        )?;
        for (id, address) in recovery.addresses {
            // The operator's current peers map wins over addresses recorded in the past.
            self.inner.transport.learn_address(id, address);
        }
        let raft = Raft::new(config.raft_config(self.inner.id), recovery.restore).map_err(Error::Config)?;
        let (inbox, inbox_receiver) = tokio::sync::mpsc::channel(GROUP_INBOX_INPUTS_MAX);
        let snapshot_index = storage.latest_snapshot().map_or(LogIndex::ZERO, |s| s.meta.index);
        let (state, _) = watch::channel(GroupState {
            term: raft.term(),
            role: raft.role(),
            leader: raft.leader(),
            commit_index: raft.commit_index(),
            applied_index: raft.applied_index(),
            last_index: raft.last_index(),
            snapshot_index,
            membership: raft.membership().clone(),
            stopped: false,
        });
        let shared = Arc::new(GroupShared {
            n_fsyncs: AtomicU64::new(storage.n_fsyncs()),
            n_requests_queued: AtomicUsize::new(0),
            state,
            stop_reason: Mutex::new(None),
        });
        let handle = GroupHandle::new(
            config.group_id,
            self.inner.id,
            inbox,
            shared.clone(),
            config.request_timeout,
            self.inner.transport.clone(),
        );
        let group_loop = GroupLoop::new(
            &config,
            self.inner.id,
            raft,
            storage,
            state_machine,
            self.inner.transport.clone(),
            shared.clone(),
            self.inner.shutdown.clone(),
        );
        let span = tracing::info_span!("raft", node_id = self.inner.id.0, group_id = config.group_id);
        runtime.spawn(group_loop.run(inbox_receiver).instrument(span));
        write_lock(&self.inner.router.groups).insert(config.group_id, handle.clone());
        tracing::info!(
            node_id = self.inner.id.0,
            group_id = config.group_id,
            "group started"
        );
        Ok(RaftGroup::from_handle(handle))
    }

    /// Ids of the groups running here.
    pub fn group_ids(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = read_lock(&self.inner.router.groups).keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// Serves the peer transport and the client API on `listener` until `shutdown` resolves or
    /// the node shuts down. Takes the listener so tests can bind port 0.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        self.serve_with(listener, shutdown, tonic::service::Routes::default())
            .await
    }

    /// Like [`RaftNode::serve`], with the services of `routes` (a state machine's own API)
    /// on the same listener.
    pub async fn serve_with(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
        routes: tonic::service::Routes,
    ) -> Result<()> {
        let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        // Long-lived peer streams and waiting requests end when this token fires, so the
        // graceful shutdown below does not wait for them.
        let server_token = self.inner.shutdown.child_token();
        let peer_service = proto::raft_peer_server::RaftPeerServer::new(PeerService {
            router: self.inner.router.clone(),
            shutdown: server_token.clone(),
        })
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        let client_service = proto::raft_service_server::RaftServiceServer::new(ClientService {
            router: self.inner.router.clone(),
            shutdown: server_token.clone(),
        })
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
        let signal = {
            let server_token = server_token.clone();
            async move {
                tokio::select! {
                    _ = shutdown => server_token.cancel(),
                    _ = server_token.cancelled() => {}
                }
            }
        };
        tracing::info!(node_id = self.inner.id.0, address = %local, "serving Raft peers and clients");
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_routes(routes.add_service(peer_service).add_service(client_service))
            // tonic sets TCP_NODELAY only on listeners it binds itself: without it, small replies
            // wait ~40 ms for Nagle's algorithm.
            .serve_with_incoming_shutdown(
                tokio_stream::StreamExt::map(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    |stream| stream.map(CoalescingIo::new),
                ),
                signal,
            )
            .await
            .map_err(|e| Error::Transport {
                endpoint: local,
                message: e.to_string(),
            })
    }

    /// Stops every group, peer stream and server of this node and waits for the groups'
    /// loops to exit (their storage is closed when this returns). Long-lived streams of the
    /// services on this node end on [`RaftNode::cancelled`], so a server's graceful shutdown
    /// does not wait for them. Safe to call again, also after a call was dropped midway (as
    /// a server's shutdown signal may be): a group leaves the node only once it has stopped.
    pub async fn shutdown(&self) {
        self.inner.shutdown.cancel();
        let groups: Vec<(u64, GroupHandle)> = read_lock(&self.inner.router.groups)
            .iter()
            .map(|(id, group)| (*id, group.clone()))
            .collect();
        for (_, group) in &groups {
            group.stop();
        }
        for (_, group) in &groups {
            group.closed().await;
        }
        let mut routed = write_lock(&self.inner.router.groups);
        for (id, _) in &groups {
            routed.remove(id);
        }
    }

    /// Resolves when the node is shut down.
    pub async fn cancelled(&self) {
        self.inner.shutdown.cancelled().await;
    }

    pub fn transport_metrics(&self) -> TransportMetrics {
        self.inner.transport.metrics()
    }

    /// WAL fsyncs of all groups on this node.
    pub fn n_fsyncs(&self) -> u64 {
        read_lock(&self.inner.router.groups)
            .values()
            .map(GroupHandle::n_fsyncs)
            .sum()
    }

    /// Known peer addresses (static map plus learned ones).
    pub fn addresses(&self) -> BTreeMap<NodeId, String> {
        self.inner.transport.addresses()
    }
}
