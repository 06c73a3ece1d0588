//! The coordination store's gRPC services on a Raft group, and the leader's duties.
//!
//! - Writes (put, delete, txn, compact, lease grant/revoke) become [`Command`]s proposed to
//!   the group; the reply leaves only after the command applied on this (leader) member.
//!   Before proposing, the server checks what only it may decide: request size and the size
//!   quota (so a quota never makes replicas disagree).
//! - Linearizable reads go through ReadIndex on the leader; `serializable` reads (and
//!   watches) read this member's applied state.
//! - Watches pull from the store's change feed: a watcher never buffers more than
//!   [`WATCH_BUFFER_RESPONSES_MAX`] responses, and one that stops reading for
//!   [`WATCH_SEND_STALL_MAX`] is cut off with an error naming the revision to resume from.
//! - `leader.rs`: lease deadlines, expiry and checkpoints, automatic compaction and the
//!   divergence check, run by whichever member leads.
//!
//! Errors travel as a gRPC status whose `details` hold a [`proto::Error`] (code, message,
//! leader hint); [`crate::client`] decodes them.

mod leader;
mod pipeline;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use shoal_raft::NodeId;
use shoal_raft_runtime::{Error as RaftError, GroupConfig, RaftGroup, RaftNode};
use tokio::sync::watch as tokio_watch;
use tonic::{Request, Response, Status};

use crate::limits::*;
use crate::proto::{self, command, command_reply, Command, CommandReply, ErrorCode};
use crate::store::{self, AppliedInfo, MetaStore};

pub use leader::LeaderDuties;

/// How a meta server behaves; every member may differ without harm (none of this is
/// decided inside the state machine).
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Size quota of the store's data. Default 2 GiB.
    pub quota_bytes: i64,
    /// Automatic compaction: every period, compact to the revision current one period ago.
    /// `None` turns it off. Default 1 hour.
    pub auto_compaction_period: Option<Duration>,
    /// How often the leader records leases' remaining time in the log. Default 2 s.
    pub lease_checkpoint_interval: Duration,
    /// How often the leader compares the members' state hashes. Default 1 minute.
    pub hash_check_interval: Duration,
    /// A watcher that leaves its buffer full this long is cut off. Default
    /// [`WATCH_SEND_STALL_MAX`].
    pub watch_stall_max: Duration,
    /// Leases the leader expires per second at most. Default
    /// [`LEASE_EXPIRIES_PER_SECOND_MAX`](crate::limits::LEASE_EXPIRIES_PER_SECOND_MAX).
    pub lease_expiries_per_second_max: usize,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            quota_bytes: QUOTA_BYTES_DEFAULT,
            auto_compaction_period: Some(Duration::from_secs(3600)),
            lease_checkpoint_interval: Duration::from_secs(2),
            hash_check_interval: Duration::from_secs(60),
            watch_stall_max: WATCH_SEND_STALL_MAX,
            lease_expiries_per_second_max: crate::limits::LEASE_EXPIRIES_PER_SECOND_MAX,
        }
    }
}

pub(crate) struct Inner {
    pub group: RaftGroup<MetaStore>,
    /// The node hosting the group: its shutdown ends the long-lived streams (pipelines,
    /// watches), so a server's graceful shutdown does not wait for clients to leave.
    pub node: RaftNode,
    pub node_id: NodeId,
    pub options: ServerOptions,
    pub applied: tokio_watch::Receiver<AppliedInfo>,
    /// Set when an alarm names this member: it then refuses to serve.
    pub corrupt: Mutex<Option<String>>,
    pub watches_by_connection: Mutex<HashMap<SocketAddr, usize>>,
    pub n_watches: Mutex<usize>,
    pub leases: Mutex<leader::LeaseClock>,
}

/// One member's coordination-store server. Cheap to clone.
#[derive(Clone)]
pub struct MetaServer {
    inner: Arc<Inner>,
}

impl MetaServer {
    /// Starts the store's Raft group on `node` with `store` (normally `MetaStore::new()`; its
    /// state is replaced by the group's durable state) and the leader's duties.
    pub fn start(
        node: &RaftNode,
        config: GroupConfig,
        options: ServerOptions,
        mut store: MetaStore,
    ) -> shoal_raft_runtime::Result<MetaServer> {
        let mut config = config;
        // A request at the size limit, with its envelope, must fit in one log entry.
        config.raft.entry_bytes_max = config.raft.entry_bytes_max.max(REQUEST_MESSAGE_BYTES_MAX);
        let (applied_tx, applied) = tokio_watch::channel(AppliedInfo::default());
        store.set_observer(move |info| {
            applied_tx.send_replace(info);
        });
        let group = node.start_group(config, store)?;
        let inner = Arc::new(Inner {
            node: node.clone(),
            node_id: group.node_id(),
            group,
            options,
            applied,
            corrupt: Mutex::new(None),
            watches_by_connection: Mutex::new(HashMap::new()),
            n_watches: Mutex::new(0),
            leases: Mutex::new(leader::LeaseClock::default()),
        });
        tokio::spawn(leader::run(inner.clone()));
        Ok(MetaServer { inner })
    }

    pub fn group(&self) -> &RaftGroup<MetaStore> {
        &self.inner.group
    }

    /// The gRPC services, to serve with `RaftNode::serve_with`. Their long-lived streams
    /// (pipelines, watches) end when the node shuts down (`RaftNode::shutdown`), not when the
    /// server's own shutdown signal fires: shut the node down first (or with that signal),
    /// or the server's graceful shutdown waits for the clients to leave.
    pub fn routes(&self) -> tonic::service::Routes {
        let kv = proto::kv_server::KvServer::new(self.clone())
            .max_decoding_message_size(REQUEST_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(RESPONSE_MESSAGE_BYTES_MAX);
        let watch = proto::watch_server::WatchServer::new(self.clone());
        let lease = proto::lease_server::LeaseServer::new(self.clone());
        let maintenance = proto::maintenance_server::MaintenanceServer::new(self.clone())
            .max_encoding_message_size(RESPONSE_MESSAGE_BYTES_MAX);
        tonic::service::Routes::new(kv)
            .add_service(watch)
            .add_service(lease)
            .add_service(maintenance)
    }

    fn check_serving(&self) -> Result<(), Status> {
        if let Some(reason) = lock(&self.inner.corrupt).clone() {
            return Err(status(store::error(ErrorCode::Corrupt, reason)));
        }
        Ok(())
    }

    fn header(&self, header: Option<proto::ResponseHeader>) -> proto::ResponseHeader {
        let mut header = header.unwrap_or_default();
        header.member_id = self.inner.node_id.0;
        header.raft_term = self.inner.group.term_and_role().0 .0;
        header
    }

    /// Proposes `command` and returns the store's reply (errors become statuses).
    pub(crate) async fn write(&self, command: Command) -> Result<command_reply::Reply, Status> {
        self.check_serving()?;
        let bytes = command.encode_to_vec();
        store::check_request_bytes(bytes.len(), REQUEST_BYTES_MAX).map_err(status)?;
        check_sizes(&command).map_err(status)?;
        if adds_data(&command) {
            let size_bytes = self.inner.applied.borrow().size_bytes;
            if size_bytes >= self.inner.options.quota_bytes {
                return Err(status(store::error(
                    ErrorCode::NoSpace,
                    format!(
                        "the store holds {size_bytes} bytes, over its quota of {} bytes; compact old \
                         revisions (shoal kv compact) or delete keys, then write again",
                        self.inner.options.quota_bytes
                    ),
                )));
            }
        }
        let reply = self.inner.group.propose(bytes).await.map_err(raft_status)?;
        let reply = CommandReply::decode(reply.as_slice())
            .map_err(|e| Status::internal(format!("undecodable reply from the store: {e}")))?;
        match reply.reply {
            None => Err(Status::internal("the store gave an empty reply")),
            Some(command_reply::Reply::Error(e)) => Err(status(e)),
            Some(reply) => Ok(reply),
        }
    }

    /// Refuses with NOT_LEADER (and the leader's address) unless this member leads: lease
    /// deadlines live only on the leader.
    async fn require_leader(&self) -> Result<(), Status> {
        leader::require_leader(&self.inner).await.map_err(status)
    }

    async fn read<R: Send + 'static>(
        &self,
        serializable: bool,
        f: impl FnOnce(&MetaStore) -> R + Send + 'static,
    ) -> Result<R, Status> {
        self.check_serving()?;
        let result = if serializable {
            self.inner.group.read_local(f).await
        } else {
            self.inner.group.read(f).await
        };
        result.map_err(raft_status)
    }
}

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Refuses oversized keys and values before they reach the log (the state machine checks
/// again, deterministically).
fn check_sizes(command: &Command) -> Result<(), proto::Error> {
    let check_op = |op: &proto::RequestOp| match &op.request {
        Some(proto::request_op::Request::Put(put)) => store::check_key_value(&put.key, put.value.len()),
        _ => Ok(()),
    };
    match &command.op {
        Some(command::Op::Put(put)) => store::check_key_value(&put.key, put.value.len()),
        Some(command::Op::Txn(txn)) => {
            let n_ops = txn.compare.len() + txn.success.len() + txn.failure.len();
            if n_ops > TXN_OPS_MAX {
                return Err(store::error(
                    ErrorCode::TooLarge,
                    format!(
                        "the transaction has {n_ops} compares and operations; the limit is {TXN_OPS_MAX}"
                    ),
                ));
            }
            txn.success.iter().chain(&txn.failure).try_for_each(check_op)
        }
        _ => Ok(()),
    }
}

/// Whether a command can make the store bigger (refused over the quota).
fn adds_data(command: &Command) -> bool {
    match &command.op {
        Some(command::Op::Put(_)) | Some(command::Op::LeaseGrant(_)) => true,
        Some(command::Op::Txn(txn)) => txn
            .success
            .iter()
            .chain(&txn.failure)
            .any(|op| matches!(op.request, Some(proto::request_op::Request::Put(_)))),
        _ => false,
    }
}

/// A store error as a gRPC status: a matching code, the message, and the error itself in
/// the details.
pub fn status(error: proto::Error) -> Status {
    let code = match ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Unspecified) {
        ErrorCode::InvalidArgument | ErrorCode::TooLarge => tonic::Code::InvalidArgument,
        ErrorCode::NotLeader => tonic::Code::FailedPrecondition,
        ErrorCode::Unavailable => tonic::Code::Unavailable,
        ErrorCode::UnknownOutcome => tonic::Code::Unknown,
        ErrorCode::Compacted | ErrorCode::FutureRevision => tonic::Code::OutOfRange,
        ErrorCode::LeaseNotFound => tonic::Code::NotFound,
        ErrorCode::LeaseExists => tonic::Code::AlreadyExists,
        ErrorCode::NoSpace | ErrorCode::TooManyRequests => tonic::Code::ResourceExhausted,
        ErrorCode::Corrupt => tonic::Code::DataLoss,
        ErrorCode::SessionExpired => tonic::Code::Aborted,
        ErrorCode::Internal | ErrorCode::Unspecified => tonic::Code::Internal,
    };
    let message = error.message.clone();
    Status::with_details(code, message, error.encode_to_vec().into())
}

/// A Raft runtime error as a store error: whether the request certainly did not execute
/// (`NOT_LEADER`, `UNAVAILABLE`) or may have (`UNKNOWN_OUTCOME`).
pub fn raft_error(error: RaftError) -> proto::Error {
    let text = error.to_string();
    match error {
        RaftError::NotLeader {
            leader_hint,
            leader_addr,
        } => proto::Error {
            code: ErrorCode::NotLeader as i32,
            message: text,
            leader_id: leader_hint.map_or(0, |id| id.0),
            leader_addr: leader_addr.unwrap_or_default(),
        },
        RaftError::LeadershipLost { .. } | RaftError::Timeout => {
            store::error(ErrorCode::UnknownOutcome, text)
        }
        RaftError::Rejected(shoal_raft::ProposeError::TooLarge { .. }) => {
            store::error(ErrorCode::TooLarge, text)
        }
        RaftError::Busy | RaftError::Dropped { .. } | RaftError::Shutdown | RaftError::Rejected(_) => {
            store::error(ErrorCode::Unavailable, text)
        }
        RaftError::InvalidArgument(_) => store::error(ErrorCode::InvalidArgument, text),
        _ => store::error(ErrorCode::Internal, text),
    }
}

fn raft_status(error: RaftError) -> Status {
    status(raft_error(error))
}

impl MetaServer {
    /// Proposes `op` without a session; returns the reply `pick` selects, headers filled.
    async fn write_unsessioned<T>(
        &self,
        op: command::Op,
        pick: impl FnOnce(command_reply::Reply) -> Option<T>,
    ) -> Result<Response<T>, Status> {
        let mut reply = self.write(unsessioned(op)).await?;
        set_reply_header(&mut reply, |h| self.header(h));
        into_reply(reply, pick).map(Response::new)
    }
}

fn into_reply<T>(
    reply: command_reply::Reply,
    pick: impl FnOnce(command_reply::Reply) -> Option<T>,
) -> Result<T, Status> {
    pick(reply).ok_or_else(|| Status::internal("the store answered a different operation"))
}

#[tonic::async_trait]
impl proto::kv_server::Kv for MetaServer {
    async fn range(
        &self,
        request: Request<proto::RangeRequest>,
    ) -> Result<Response<proto::RangeResponse>, Status> {
        self.range_request(request.into_inner()).await.map(Response::new)
    }

    async fn put(&self, request: Request<proto::PutRequest>) -> Result<Response<proto::PutResponse>, Status> {
        self.write_unsessioned(command::Op::Put(request.into_inner()), |r| match r {
            command_reply::Reply::Put(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn delete_range(
        &self,
        request: Request<proto::DeleteRangeRequest>,
    ) -> Result<Response<proto::DeleteRangeResponse>, Status> {
        self.write_unsessioned(command::Op::DeleteRange(request.into_inner()), |r| match r {
            command_reply::Reply::DeleteRange(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn txn(&self, request: Request<proto::TxnRequest>) -> Result<Response<proto::TxnResponse>, Status> {
        self.write_unsessioned(command::Op::Txn(request.into_inner()), |r| match r {
            command_reply::Reply::Txn(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn compact(
        &self,
        request: Request<proto::CompactRequest>,
    ) -> Result<Response<proto::CompactResponse>, Status> {
        self.write_unsessioned(command::Op::Compact(request.into_inner()), |r| match r {
            command_reply::Reply::Compact(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn write(&self, request: Request<Command>) -> Result<Response<CommandReply>, Status> {
        self.write_request(request.into_inner()).await.map(Response::new)
    }

    type PipelineStream = pipeline::ResponseStream;

    async fn pipeline(
        &self,
        request: Request<tonic::Streaming<proto::PipelineRequest>>,
    ) -> Result<Response<Self::PipelineStream>, Status> {
        // (Each request checks that this member serves.)
        Ok(Response::new(pipeline::ResponseStream::new(
            self.clone(),
            request.into_inner(),
        )))
    }
}

impl MetaServer {
    /// A range read as the `Range` RPC answers it.
    async fn range_request(&self, request: proto::RangeRequest) -> Result<proto::RangeResponse, Status> {
        let serializable = request.serializable;
        let mut response = self
            .read(serializable, move |store| {
                store.range(&request, RANGE_RESPONSE_BYTES_MAX)
            })
            .await?
            .map_err(status)?;
        response.header = Some(self.header(response.header));
        Ok(response)
    }

    /// A client's command as the `Write` RPC answers it.
    async fn write_request(&self, command: Command) -> Result<CommandReply, Status> {
        let leader_only = matches!(
            command.op,
            Some(command::Op::LeaseExpire(_))
                | Some(command::Op::LeaseCheckpoints(_))
                | Some(command::Op::LeaderEpoch(_))
                | Some(command::Op::Alarm(_))
        );
        if leader_only {
            return Err(status(store::error(
                ErrorCode::InvalidArgument,
                "lease expiry, checkpoints, epochs and alarms are proposed by the leader itself",
            )));
        }
        let mut reply = self.write(command).await?;
        if let command_reply::Reply::LeaseGrant(grant) = &reply {
            leader::start_deadline(&self.inner, grant.id, grant.ttl_seconds);
        }
        set_reply_header(&mut reply, |h| self.header(h));
        Ok(CommandReply { reply: Some(reply) })
    }
}

fn set_reply_header(
    reply: &mut command_reply::Reply,
    header: impl Fn(Option<proto::ResponseHeader>) -> proto::ResponseHeader,
) {
    match reply {
        command_reply::Reply::Put(r) => r.header = Some(header(r.header)),
        command_reply::Reply::DeleteRange(r) => r.header = Some(header(r.header)),
        command_reply::Reply::Txn(r) => r.header = Some(header(r.header)),
        command_reply::Reply::Compact(r) => r.header = Some(header(r.header)),
        command_reply::Reply::LeaseGrant(r) => r.header = Some(header(r.header)),
        command_reply::Reply::LeaseRevoke(r) => r.header = Some(header(r.header)),
        command_reply::Reply::Done(h) => *h = header(Some(*h)),
        command_reply::Reply::Range(r) => r.header = Some(header(r.header)),
        command_reply::Reply::Error(_) => {}
    }
}

fn unsessioned(op: command::Op) -> Command {
    Command {
        session: None,
        op: Some(op),
    }
}

#[tonic::async_trait]
impl proto::lease_server::Lease for MetaServer {
    async fn grant(
        &self,
        request: Request<proto::LeaseGrantRequest>,
    ) -> Result<Response<proto::LeaseGrantResponse>, Status> {
        let response = self
            .write_unsessioned(command::Op::LeaseGrant(request.into_inner()), |r| match r {
                command_reply::Reply::LeaseGrant(r) => Some(r),
                _ => None,
            })
            .await?;
        let grant = response.get_ref();
        leader::start_deadline(&self.inner, grant.id, grant.ttl_seconds);
        Ok(response)
    }

    async fn revoke(
        &self,
        request: Request<proto::LeaseRevokeRequest>,
    ) -> Result<Response<proto::LeaseRevokeResponse>, Status> {
        self.write_unsessioned(command::Op::LeaseRevoke(request.into_inner()), |r| match r {
            command_reply::Reply::LeaseRevoke(r) => Some(r),
            _ => None,
        })
        .await
    }

    async fn keep_alive(
        &self,
        request: Request<proto::LeaseKeepAliveRequest>,
    ) -> Result<Response<proto::LeaseKeepAliveResponse>, Status> {
        self.check_serving()?;
        let id = request.into_inner().id;
        let ttl_seconds = leader::keep_alive(&self.inner, id).await.map_err(status)?;
        Ok(Response::new(proto::LeaseKeepAliveResponse {
            header: Some(self.header(None)),
            id,
            ttl_seconds,
        }))
    }

    async fn time_to_live(
        &self,
        request: Request<proto::LeaseTimeToLiveRequest>,
    ) -> Result<Response<proto::LeaseTimeToLiveResponse>, Status> {
        self.require_leader().await?;
        let request = request.into_inner();
        let mut lease = self
            .read(true, move |store| store.lease_status(request.id, request.keys))
            .await?
            .map_err(status)?;
        lease.remaining_ms = leader::remaining_ms(&self.inner, lease.id);
        Ok(Response::new(proto::LeaseTimeToLiveResponse {
            header: Some(self.header(None)),
            lease: Some(lease),
        }))
    }

    async fn list(
        &self,
        _request: Request<proto::LeaseListRequest>,
    ) -> Result<Response<proto::LeaseListResponse>, Status> {
        self.require_leader().await?;
        let leases = self.read(true, |store| store.leases()).await?;
        let leases = leases
            .into_iter()
            .map(|(id, ttl_seconds, _)| proto::LeaseStatus {
                id,
                granted_ttl_seconds: ttl_seconds,
                remaining_ms: leader::remaining_ms(&self.inner, id),
                keys: Vec::new(),
                n_keys: 0,
            })
            .collect();
        Ok(Response::new(proto::LeaseListResponse {
            header: Some(self.header(None)),
            leases,
        }))
    }
}

#[tonic::async_trait]
impl proto::maintenance_server::Maintenance for MetaServer {
    async fn status(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let status_now = self.inner.group.status().await.map_err(raft_status)?;
        let (header, compact_revision, size, n_keys, n_leases, alarms) = self
            .inner
            .group
            .read_local(|s| {
                (
                    s.header_now(),
                    s.compact_revision(),
                    s.size_bytes(),
                    s.n_keys(),
                    s.n_leases() as i64,
                    s.alarms(),
                )
            })
            .await
            .map_err(raft_status)?;
        let membership = &status_now.membership;
        let members = membership
            .voters
            .iter()
            .map(|id| (id, false))
            .chain(membership.learners.iter().map(|id| (id, true)))
            .map(|(id, learner)| proto::MemberInfo {
                id: id.0,
                address: status_now.addresses.get(id).cloned().unwrap_or_default(),
                learner,
            })
            .collect();
        Ok(Response::new(proto::StatusResponse {
            header: Some(self.header(Some(header))),
            leader: status_now.leader.map_or(0, |id| id.0),
            raft_term: status_now.term.0,
            commit_index: status_now.commit_index.0,
            applied_index: status_now.applied_index.0,
            compact_revision,
            db_size_bytes: size,
            quota_bytes: self.inner.options.quota_bytes,
            members,
            alarms,
            role: status_now.role.name().to_string(),
            n_keys,
            n_leases,
        }))
    }

    async fn hash_kv(
        &self,
        request: Request<proto::HashKvRequest>,
    ) -> Result<Response<proto::HashKvResponse>, Status> {
        let revision = request.into_inner().revision;
        // A member a little behind waits to reach the revision asked about.
        let mut applied = self.inner.applied.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            applied.wait_for(|i| i.revision >= revision),
        )
        .await;
        let (hash, revision, compact_revision) = self
            .inner
            .group
            .read_local(move |s| s.hash_at(revision).map(|(h, r)| (h, r, s.compact_revision())))
            .await
            .map_err(raft_status)?
            .map_err(status)?;
        Ok(Response::new(proto::HashKvResponse {
            header: Some(self.header(None)),
            hash,
            revision,
            compact_revision,
        }))
    }

    type SnapshotStream = tokio_stream::wrappers::ReceiverStream<Result<proto::SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        _request: Request<proto::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        self.check_serving()?;
        // A durable snapshot written on a blocking thread (the group keeps replicating), then
        // streamed from its file: never a copy of the store in memory.
        let (meta, mut data) = self.inner.group.snapshot_now().await.map_err(raft_status)?;
        let raft_index = meta.index.0;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut crc = 0u32;
            let mut revision = 0;
            let mut n_remaining = data.len();
            let mut first = true;
            loop {
                let len = usize::try_from(n_remaining)
                    .map_or(SNAPSHOT_CHUNK_BYTES, |n| n.min(SNAPSHOT_CHUNK_BYTES));
                let mut chunk = vec![0u8; len];
                if let Err(e) = data.read_exact(&mut chunk) {
                    let _ =
                        tx.blocking_send(Err(Status::internal(format!("reading the snapshot failed: {e}"))));
                    return;
                }
                if first {
                    first = false;
                    revision = MetaStore::snapshot_revision(&chunk).unwrap_or(0);
                }
                n_remaining -= len as u64;
                crc = crc32c::crc32c_append(crc, &chunk);
                let done = n_remaining == 0;
                let message = proto::SnapshotChunk {
                    data: chunk,
                    done,
                    crc32c: if done { crc } else { 0 },
                    revision: if done { revision } else { 0 },
                    raft_index: if done { raft_index } else { 0 },
                };
                if tx.blocking_send(Ok(message)).is_err() || done {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }
}

/// Bytes per snapshot chunk sent to `snapshot save`.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
