//! [`MetaClient`]: the coordination store's Rust client.
//!
//! - Finds the leader among the endpoints and follows `NOT_LEADER` redirects.
//! - **Exactly-once writes**: each client has a random id and numbers its writes; a write is
//!   retried with the same number after a lost reply or a leader change, and the store
//!   answers a retry with the first reply instead of applying it again. So a retried CAS can
//!   never apply twice. A write that still has no answer after `retry_timeout` fails with
//!   [`Error::UnknownOutcome`] (it may or may not have applied), never silently.
//! - Watches ([`Watcher`]) resume on another member from the revision after the last one
//!   received, so a member or leader failure loses and repeats no event.
//! - [`recipes`]: a distributed lock with fencing tokens and a leader election.

mod pipeline;
pub mod recipes;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use shoal_raft_runtime::coalesce;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::limits::REQUEST_BYTES_MAX;
use crate::proto::{
    self, command, command_reply, pipeline_request, pipeline_response, Command, ErrorCode, KeyValue, Session,
};
use crate::store::{self, prefix_end};
use pipeline::Pipeline;

/// How a [`MetaClient`] waits and retries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Time allowed for one RPC. Default 5 s.
    pub request_timeout: Duration,
    /// Total time for one request, retries included. Default 10 s.
    pub retry_timeout: Duration,
    /// Pause between attempts, doubling from `backoff_min` to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
        }
    }
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The store refused the request (bad argument, lease not found, compacted revision,
    /// quota, ...): retrying as is will not help. Nothing changed.
    #[error("{message}")]
    Server { code: ErrorCode, message: String },
    /// No member could serve the request in time; a write was certainly not applied.
    #[error("no member could serve the request: {message}")]
    Unavailable { message: String },
    /// A write may or may not have applied (no answer before the deadline).
    #[error("the outcome is unknown: {message}")]
    UnknownOutcome { message: String },
    /// The endpoints list is empty or malformed.
    #[error("invalid endpoints: {0}")]
    InvalidEndpoints(String),
}

impl Error {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A connection to one member: its channel for unary and streaming calls, and the pipeline
/// that carries reads and writes, opened by the first of them.
#[derive(Clone)]
struct Conn {
    channel: Channel,
    pipeline: Arc<tokio::sync::OnceCell<Pipeline>>,
}

impl Conn {
    /// Sends a read or write over this connection's pipeline.
    async fn call(
        self,
        request: pipeline_request::Request,
    ) -> std::result::Result<pipeline_response::Response, tonic::Status> {
        let pipeline = self
            .pipeline
            .get_or_try_init(|| Pipeline::open(self.channel.clone()))
            .await?;
        pipeline.call(request).await
    }

    /// Whether this connection's pipeline has ended (a new connection is needed).
    fn pipeline_ended(&self) -> bool {
        self.pipeline.get().is_some_and(Pipeline::has_ended)
    }
}

struct State {
    leader: Option<String>,
    channels: HashMap<String, Conn>,
    next_endpoint_idx: usize,
}

struct Inner {
    endpoints: Vec<String>,
    options: ClientOptions,
    state: Mutex<State>,
    client_id: u64,
    next_seq: AtomicU64,
    unacked: Mutex<BTreeSet<u64>>,
}

/// A client of the coordination store. Cheap to clone; clones share connections, the
/// leader hint and the exactly-once session.
#[derive(Clone)]
pub struct MetaClient {
    inner: Arc<Inner>,
}

/// What one attempt at one endpoint gave.
enum Attempt<T> {
    Done(T),
    /// Refused for good (a store error that retrying will not change).
    Failed(Error),
    /// Certainly not executed; try again (elsewhere, or at `leader`).
    Retry {
        message: String,
        leader: Option<String>,
    },
    /// Maybe executed (the request may have been sent); retry only if safe.
    Unknown {
        message: String,
    },
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Decodes a status from a Shoal server into a store error (None for a transport error).
fn store_error(status: &tonic::Status) -> Option<proto::Error> {
    if status.details().is_empty() {
        return None;
    }
    proto::Error::decode(status.details()).ok()
}

fn classify<T>(status: tonic::Status) -> Attempt<T> {
    match store_error(&status) {
        Some(e) => {
            let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
            match code {
                ErrorCode::NotLeader => Attempt::Retry {
                    message: e.message,
                    leader: (!e.leader_addr.is_empty()).then_some(e.leader_addr),
                },
                ErrorCode::Unavailable | ErrorCode::Corrupt => Attempt::Retry {
                    message: e.message,
                    leader: None,
                },
                ErrorCode::UnknownOutcome => Attempt::Unknown { message: e.message },
                _ => Attempt::Failed(Error::Server {
                    code,
                    message: e.message,
                }),
            }
        }
        None => match status.code() {
            tonic::Code::InvalidArgument | tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                Attempt::Failed(Error::Server {
                    code: ErrorCode::InvalidArgument,
                    message: status.message().to_string(),
                })
            }
            _ => Attempt::Unknown {
                message: format!("{}: {}", status.code(), status.message()),
            },
        },
    }
}

impl MetaClient {
    /// A client of the members at `endpoints` (`host:port`). Connects lazily.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Result<MetaClient> {
        MetaClient::with_options(endpoints, ClientOptions::default())
    }

    pub fn with_options(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        options: ClientOptions,
    ) -> Result<MetaClient> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(Into::into)
            .map(|e| e.trim().trim_start_matches("http://").to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(Error::InvalidEndpoints(
                "no endpoints given: pass --endpoints HOST:PORT,… or set SHOAL_ENDPOINTS".to_string(),
            ));
        }
        for endpoint in &endpoints {
            let ok = endpoint
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !ok {
                return Err(Error::InvalidEndpoints(format!("{endpoint:?} is not HOST:PORT")));
            }
        }
        Ok(MetaClient {
            inner: Arc::new(Inner {
                endpoints,
                options,
                state: Mutex::new(State {
                    leader: None,
                    channels: HashMap::new(),
                    next_endpoint_idx: 0,
                }),
                client_id: rand::random::<u64>() | 1,
                next_seq: AtomicU64::new(1),
                unacked: Mutex::new(BTreeSet::new()),
            }),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    pub fn options(&self) -> &ClientOptions {
        &self.inner.options
    }

    /// The leader's address, if known.
    pub fn leader(&self) -> Option<String> {
        lock(&self.inner.state).leader.clone()
    }

    async fn channel(&self, endpoint: &str) -> std::result::Result<Channel, String> {
        self.connection(endpoint).await.map(|conn| conn.channel)
    }

    /// The connection to `endpoint`, made if there is none or its pipeline has ended.
    async fn connection(&self, endpoint: &str) -> std::result::Result<Conn, String> {
        if let Some(conn) = lock(&self.inner.state).channels.get(endpoint) {
            if !conn.pipeline_ended() {
                return Ok(conn.clone());
            }
        }
        let endpoint_settings = Endpoint::from_shared(format!("http://{endpoint}"))
            .map_err(|e| e.to_string())?
            // A member that stops answering (paused, cut off) is noticed within 15 s even while
            // nothing is waiting on it, so its pipeline's reader and socket do not linger.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = coalesce::connect(
            endpoint_settings,
            Duration::from_millis(500).min(self.inner.options.request_timeout),
        )
        .await
        .map_err(|e| format!("cannot connect to {endpoint}: {e}"))?;
        let conn = Conn {
            channel,
            pipeline: Arc::new(tokio::sync::OnceCell::new()),
        };
        lock(&self.inner.state)
            .channels
            .insert(endpoint.to_string(), conn.clone());
        Ok(conn)
    }

    fn forget_channel(&self, endpoint: &str) {
        let mut state = lock(&self.inner.state);
        state.channels.remove(endpoint);
        if state.leader.as_deref() == Some(endpoint) {
            state.leader = None;
        }
    }

    /// Where to send a leader request next: the known leader, else the endpoints in turn.
    fn pick_endpoint(&self) -> String {
        let mut state = lock(&self.inner.state);
        if let Some(leader) = &state.leader {
            return leader.clone();
        }
        let idx = state.next_endpoint_idx % self.inner.endpoints.len();
        state.next_endpoint_idx += 1;
        self.inner.endpoints[idx].clone()
    }

    /// Runs `call` at the leader (or any member when `any_member`) until it succeeds, fails
    /// for good, or `retry_timeout` passes. `safe_to_repeat`: the request may run twice (a
    /// read, or a write carrying its session).
    async fn run<T, F, Fut>(&self, any_member: bool, safe_to_repeat: bool, mut call: F) -> Result<T>
    where
        F: FnMut(Conn) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tonic::Status>>,
    {
        let deadline = Instant::now() + self.inner.options.retry_timeout;
        let mut backoff = self.inner.options.backoff_min;
        let mut maybe_sent = false;
        let mut last_message: String;
        let mut n_attempts = 0usize;
        loop {
            n_attempts += 1;
            let endpoint = if any_member {
                let mut state = lock(&self.inner.state);
                let idx = state.next_endpoint_idx % self.inner.endpoints.len();
                if n_attempts > 1 {
                    state.next_endpoint_idx += 1;
                }
                self.inner.endpoints[idx].clone()
            } else {
                self.pick_endpoint()
            };
            let attempt = match self.connection(&endpoint).await {
                Err(message) => {
                    self.forget_channel(&endpoint);
                    Attempt::Retry {
                        message,
                        leader: None,
                    }
                }
                Ok(conn) => {
                    match tokio::time::timeout(self.inner.options.request_timeout, call(conn)).await {
                        Err(_) => Attempt::Unknown {
                            message: format!(
                                "no answer from {endpoint} within {:?}",
                                self.inner.options.request_timeout
                            ),
                        },
                        Ok(Ok(value)) => Attempt::Done(value),
                        Ok(Err(status)) => classify(status),
                    }
                }
            };
            match attempt {
                Attempt::Done(value) => {
                    if !any_member {
                        lock(&self.inner.state).leader = Some(endpoint);
                    }
                    return Ok(value);
                }
                Attempt::Failed(e) => return Err(e),
                Attempt::Retry { message, leader } => {
                    last_message = message;
                    let mut state = lock(&self.inner.state);
                    if state.leader.as_deref() == Some(endpoint.as_str()) || leader.is_some() {
                        state.leader = leader.clone();
                    }
                    if leader.is_some() {
                        // Redirected: go there at once.
                        continue;
                    }
                }
                Attempt::Unknown { message } => {
                    last_message = message;
                    maybe_sent = true;
                    self.forget_channel(&endpoint);
                    if !safe_to_repeat {
                        return Err(Error::UnknownOutcome {
                            message: last_message,
                        });
                    }
                }
            }
            if Instant::now() + backoff > deadline {
                return Err(if maybe_sent {
                    Error::UnknownOutcome {
                        message: last_message,
                    }
                } else {
                    Error::Unavailable {
                        message: last_message,
                    }
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.inner.options.backoff_max);
        }
    }

    // ----- writes -----

    /// Applies one write exactly once (see the module docs) and returns the store's reply.
    pub async fn write(&self, op: command::Op) -> Result<command_reply::Reply> {
        let seq = self.inner.next_seq.fetch_add(1, Ordering::Relaxed);
        let ack_below = {
            let mut unacked = lock(&self.inner.unacked);
            unacked.insert(seq);
            *unacked.first().expect("just inserted")
        };
        let command = Command {
            session: Some(Session {
                client_id: self.inner.client_id,
                seq,
                ack_below,
            }),
            op: Some(op),
        };
        if let Err(e) = store::check_request_bytes(command.encoded_len(), REQUEST_BYTES_MAX) {
            lock(&self.inner.unacked).remove(&seq);
            return Err(Error::Server {
                code: ErrorCode::TooLarge,
                message: e.message,
            });
        }
        let result = self
            .run(false, true, |conn| {
                conn.call(pipeline_request::Request::Write(command.clone()))
            })
            .await
            .and_then(|answer| match answer {
                pipeline_response::Response::Write(reply) => Ok(reply),
                _ => Err(mismatched_answer()),
            });
        // Acknowledged only once an answer came; an unknown outcome stays unacknowledged so a
        // later retry by the caller is still deduplicated.
        if !matches!(result, Err(Error::UnknownOutcome { .. })) {
            lock(&self.inner.unacked).remove(&seq);
        }
        match result?.reply {
            Some(command_reply::Reply::Error(e)) => Err(Error::Server {
                code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal),
                message: e.message,
            }),
            Some(reply) => Ok(reply),
            None => Err(Error::Server {
                code: ErrorCode::Internal,
                message: "empty reply".to_string(),
            }),
        }
    }

    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<proto::PutResponse> {
        self.put_with(proto::PutRequest {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
        .await
    }

    pub async fn put_with(&self, request: proto::PutRequest) -> Result<proto::PutResponse> {
        match self.write(command::Op::Put(request)).await? {
            command_reply::Reply::Put(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn delete(&self, request: proto::DeleteRangeRequest) -> Result<proto::DeleteRangeResponse> {
        match self.write(command::Op::DeleteRange(request)).await? {
            command_reply::Reply::DeleteRange(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn txn(&self, request: proto::TxnRequest) -> Result<proto::TxnResponse> {
        match self.write(command::Op::Txn(request)).await? {
            command_reply::Reply::Txn(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Compare-and-swap: sets `key` to `new` only if it exists and holds `expected`.
    /// Returns whether it swapped.
    pub async fn cas(&self, key: &[u8], expected: &[u8], new: &[u8]) -> Result<bool> {
        let response = self
            .txn(proto::TxnRequest {
                compare: vec![compare_value(key, expected)],
                success: vec![put_op(key, new, 0)],
                failure: Vec::new(),
            })
            .await?;
        Ok(response.succeeded)
    }

    pub async fn compact(&self, revision: i64) -> Result<proto::CompactResponse> {
        match self
            .write(command::Op::Compact(proto::CompactRequest { revision }))
            .await?
        {
            command_reply::Reply::Compact(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    // ----- reads -----

    /// A range read: linearizable at the leader, or `serializable` from any member.
    pub async fn range(&self, request: proto::RangeRequest) -> Result<proto::RangeResponse> {
        let any_member = request.serializable;
        match self
            .run(any_member, true, |conn| {
                conn.call(pipeline_request::Request::Range(request.clone()))
            })
            .await?
        {
            pipeline_response::Response::Range(response) => Ok(response),
            _ => Err(mismatched_answer()),
        }
    }

    /// The current value of `key` (linearizable).
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>> {
        let response = self
            .range(proto::RangeRequest {
                key: key.into(),
                ..Default::default()
            })
            .await?;
        Ok(response.kvs.into_iter().next())
    }

    /// Every key under `prefix` at one revision, fetching page after page.
    pub async fn get_prefix(&self, prefix: &[u8]) -> Result<(i64, Vec<KeyValue>)> {
        let mut kvs = Vec::new();
        let mut request = proto::RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_end(prefix),
            ..Default::default()
        };
        loop {
            let response = self.range(request.clone()).await?;
            let revision = response.header.map_or(0, |h| h.revision);
            let more = response.more;
            if let Some(last) = response.kvs.last() {
                let mut next = last.key.clone();
                next.push(0);
                request.key = next;
            }
            kvs.extend(response.kvs);
            request.revision = revision;
            if !more {
                return Ok((revision, kvs));
            }
        }
    }

    // ----- leases -----

    pub async fn lease_grant(&self, ttl_seconds: i64) -> Result<proto::LeaseGrantResponse> {
        match self
            .write(command::Op::LeaseGrant(proto::LeaseGrantRequest {
                ttl_seconds,
                id: 0,
            }))
            .await?
        {
            command_reply::Reply::LeaseGrant(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn lease_revoke(&self, id: i64) -> Result<proto::LeaseRevokeResponse> {
        match self
            .write(command::Op::LeaseRevoke(proto::LeaseRevokeRequest { id }))
            .await?
        {
            command_reply::Reply::LeaseRevoke(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// Renews lease `id` for its TTL; returns the TTL.
    pub async fn lease_keep_alive(&self, id: i64) -> Result<i64> {
        self.run(false, true, |Conn { channel, .. }| async move {
            proto::lease_client::LeaseClient::new(channel)
                .keep_alive(proto::LeaseKeepAliveRequest { id })
                .await
                .map(|r| r.into_inner().ttl_seconds)
        })
        .await
    }

    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<proto::LeaseStatus> {
        self.run(false, true, |Conn { channel, .. }| async move {
            proto::lease_client::LeaseClient::new(channel)
                .time_to_live(proto::LeaseTimeToLiveRequest { id, keys })
                .await
                .map(|r| r.into_inner().lease.unwrap_or_default())
        })
        .await
    }

    pub async fn lease_list(&self) -> Result<Vec<proto::LeaseStatus>> {
        self.run(false, true, |Conn { channel, .. }| async move {
            proto::lease_client::LeaseClient::new(channel)
                .list(proto::LeaseListRequest {})
                .await
                .map(|r| r.into_inner().leases)
        })
        .await
    }

    /// Keeps lease `id` alive in the background (every third of its TTL) until the returned
    /// handle is dropped or aborted, or the lease is gone.
    pub fn spawn_keep_alive(&self, id: i64, ttl_seconds: i64) -> KeepAlive {
        let client = self.clone();
        let period = Duration::from_millis((ttl_seconds.max(1) as u64 * 1000) / 3);
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                match client.lease_keep_alive(id).await {
                    Err(Error::Server {
                        code: ErrorCode::LeaseNotFound,
                        ..
                    }) => return,
                    Err(e) => tracing::warn!(lease = id, error = %e, "lease keep-alive failed; retrying"),
                    Ok(_) => {}
                }
            }
        });
        KeepAlive { task }
    }

    // ----- maintenance -----

    /// Status of the member at `endpoint`.
    pub async fn status_at(&self, endpoint: &str) -> Result<proto::StatusResponse> {
        let channel = self
            .channel(endpoint)
            .await
            .map_err(|message| Error::Unavailable { message })?;
        let mut maintenance = proto::maintenance_client::MaintenanceClient::new(channel);
        let call = maintenance.status(proto::StatusRequest {});
        match tokio::time::timeout(self.inner.options.request_timeout, call).await {
            Err(_) => Err(Error::Unavailable {
                message: format!("{endpoint} did not answer in time"),
            }),
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(match classify::<()>(status) {
                Attempt::Failed(e) => e,
                Attempt::Retry { message, .. } | Attempt::Unknown { message } => {
                    Error::Unavailable { message }
                }
                Attempt::Done(()) => unreachable!(),
            }),
        }
    }

    pub async fn hash_kv_at(&self, endpoint: &str, revision: i64) -> Result<proto::HashKvResponse> {
        let channel = self
            .channel(endpoint)
            .await
            .map_err(|message| Error::Unavailable { message })?;
        proto::maintenance_client::MaintenanceClient::new(channel)
            .hash_kv(proto::HashKvRequest { revision })
            .await
            .map(|r| r.into_inner())
            .map_err(|status| Error::Unavailable {
                message: status.message().to_string(),
            })
    }

    /// Streams a snapshot of the store from a member to `out`; returns (bytes, revision).
    pub async fn snapshot(&self, out: &mut (impl std::io::Write + Send)) -> Result<(u64, i64)> {
        let mut stream = self
            .run(true, true, |Conn { channel, .. }| async move {
                proto::maintenance_client::MaintenanceClient::new(channel)
                    .max_decoding_message_size(64 * 1024 * 1024)
                    .snapshot(proto::SnapshotRequest {})
                    .await
                    .map(|r| r.into_inner())
            })
            .await?;
        let mut crc = 0u32;
        let mut n_bytes = 0u64;
        loop {
            let chunk = stream.message().await.map_err(|s| Error::Unavailable {
                message: format!("the snapshot stream broke: {}", s.message()),
            })?;
            let Some(chunk) = chunk else {
                return Err(Error::Unavailable {
                    message: "the snapshot stream ended before its last chunk".to_string(),
                });
            };
            crc = crc32c::crc32c_append(crc, &chunk.data);
            n_bytes += chunk.data.len() as u64;
            out.write_all(&chunk.data).map_err(|e| Error::Unavailable {
                message: format!("cannot write the snapshot: {e}"),
            })?;
            if chunk.done {
                if chunk.crc32c != crc {
                    return Err(Error::Unavailable {
                        message: "the snapshot's checksum does not match: it was damaged in transit"
                            .to_string(),
                    });
                }
                return Ok((n_bytes, chunk.revision));
            }
        }
    }

    // ----- watches -----

    /// Watches `request.key`/`range_end` from `request.start_revision` (0: from now).
    pub async fn watch(&self, mut request: proto::WatchRequest) -> Result<Watcher> {
        if request.start_revision == 0 {
            // "From now" is pinned to a revision, so a resumed watch misses nothing.
            let response = self
                .range(proto::RangeRequest {
                    key: request.key.clone(),
                    range_end: request.range_end.clone(),
                    count_only: true,
                    ..Default::default()
                })
                .await?;
            request.start_revision = response.header.map_or(0, |h| h.revision) + 1;
        }
        Ok(Watcher {
            client: self.clone(),
            next_revision: request.start_revision,
            request,
            stream: None,
        })
    }
}

/// A running background keep-alive; stops when dropped.
pub struct KeepAlive {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A watch that survives member failures: it reconnects (to another member if need be) and
/// resumes from the revision after the last one it delivered.
pub struct Watcher {
    client: MetaClient,
    request: proto::WatchRequest,
    next_revision: i64,
    stream: Option<tonic::Streaming<proto::WatchResponse>>,
}

impl Watcher {
    /// The first revision not yet delivered.
    pub fn next_revision(&self) -> i64 {
        self.next_revision
    }

    /// The next response with events (whole revisions, in order). Fails with a `COMPACTED`
    /// server error when the revision to resume from was compacted, or when no member can be
    /// reached within the retry timeout.
    pub async fn next(&mut self) -> Result<proto::WatchResponse> {
        let mut unreachable_since: Option<Instant> = None;
        loop {
            if self.stream.is_none() {
                let mut request = self.request.clone();
                request.start_revision = self.next_revision;
                let opened = self
                    .client
                    .run(true, true, |Conn { channel, .. }| {
                        let request = request.clone();
                        async move {
                            proto::watch_client::WatchClient::new(channel)
                                .max_decoding_message_size(64 * 1024 * 1024)
                                .watch(request)
                                .await
                                .map(|r| r.into_inner())
                        }
                    })
                    .await;
                match opened {
                    Ok(stream) => self.stream = Some(stream),
                    Err(e @ Error::Server { .. }) => return Err(e),
                    Err(e) => {
                        let since = *unreachable_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > self.client.inner.options.retry_timeout {
                            return Err(e);
                        }
                        continue;
                    }
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            match stream.message().await {
                Ok(Some(response)) => {
                    if let Some(error) = response.error {
                        self.stream = None;
                        let code = ErrorCode::try_from(error.code).unwrap_or(ErrorCode::Internal);
                        if code == ErrorCode::Compacted {
                            return Err(Error::Server {
                                code,
                                message: error.message,
                            });
                        }
                        continue;
                    }
                    let covered = response.header.map_or(0, |h| h.revision);
                    if let Some(last_event) = response.events.last() {
                        let last = last_event.kv.as_ref().map_or(0, |kv| kv.mod_revision);
                        self.next_revision = self.next_revision.max(last + 1);
                    }
                    self.next_revision = self.next_revision.max(covered + 1);
                    if response.events.is_empty() {
                        continue;
                    }
                    return Ok(response);
                }
                Ok(None) => {
                    self.stream = None;
                }
                Err(status) => {
                    self.stream = None;
                    if let Some(e) = store_error(&status) {
                        let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Internal);
                        if code == ErrorCode::Compacted || code == ErrorCode::InvalidArgument {
                            return Err(Error::Server {
                                code,
                                message: e.message,
                            });
                        }
                    }
                    // Another member picks up where this one stopped.
                    let mut state = lock(&self.client.inner.state);
                    state.next_endpoint_idx += 1;
                }
            }
        }
    }
}

fn mismatched_answer() -> Error {
    Error::Server {
        code: ErrorCode::Internal,
        message: "the member answered a read with a write's reply or the reverse".to_string(),
    }
}

fn unexpected(reply: command_reply::Reply) -> Error {
    Error::Server {
        code: ErrorCode::Internal,
        message: format!("the store answered another operation: {reply:?}"),
    }
}

/// A compare that holds when `key` exists with value `expected`.
pub fn compare_value(key: &[u8], expected: &[u8]) -> proto::Compare {
    proto::Compare {
        result: proto::compare::Result::Equal as i32,
        target: proto::compare::Target::Value as i32,
        key: key.to_vec(),
        target_union: Some(proto::compare::TargetUnion::Value(expected.to_vec())),
    }
}

/// A compare on `key`'s create revision (0 = the key does not exist).
pub fn compare_create_revision(key: &[u8], result: proto::compare::Result, revision: i64) -> proto::Compare {
    proto::Compare {
        result: result as i32,
        target: proto::compare::Target::Create as i32,
        key: key.to_vec(),
        target_union: Some(proto::compare::TargetUnion::CreateRevision(revision)),
    }
}

pub fn put_op(key: &[u8], value: &[u8], lease: i64) -> proto::RequestOp {
    proto::RequestOp {
        request: Some(proto::request_op::Request::Put(proto::PutRequest {
            key: key.to_vec(),
            value: value.to_vec(),
            lease,
            ..Default::default()
        })),
    }
}

pub fn get_op(key: &[u8]) -> proto::RequestOp {
    proto::RequestOp {
        request: Some(proto::request_op::Request::Range(proto::RangeRequest {
            key: key.to_vec(),
            ..Default::default()
        })),
    }
}

pub fn delete_op(key: &[u8], range_end: &[u8]) -> proto::RequestOp {
    proto::RequestOp {
        request: Some(proto::request_op::Request::DeleteRange(
            proto::DeleteRangeRequest {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                prev_kv: false,
            },
        )),
    }
}
