//! `RaftClient`: a gRPC client of one Raft group that finds the leader among a list of
//! endpoints and follows `NotLeader` redirects.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_raft::{LogIndex, Membership, NodeId};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::codec;
use crate::config::MembershipChange;
use crate::error::{Error, Result};
use crate::group::GroupStatus;
use crate::proto;
use crate::proto::raft_service_client::RaftServiceClient;
use crate::service::{error_from_proto, membership_change_to_proto, status_from_proto};
use crate::transport::lock;
use crate::GRPC_MESSAGE_BYTES_MAX;

/// How a [`RaftClient`] waits and retries.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Time allowed for one RPC. Default 5 s.
    pub request_timeout: Duration,
    /// Total time spent finding the leader and retrying one request. Default 10 s.
    pub retry_timeout: Duration,
    /// Pause between attempts when no leader is known, doubling up to `backoff_max`.
    /// Defaults 10 ms and 200 ms.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(10),
            backoff_min: Duration::from_millis(10),
            backoff_max: Duration::from_millis(200),
        }
    }
}

struct ClientState {
    endpoints: Vec<String>,
    leader: Option<String>,
    channels: HashMap<String, Channel>,
    next_endpoint_idx: usize,
}

/// A client of one Raft group. Cheap to clone; clones share the leader hint and connections.
///
/// Retries: a request refused before it was executed (`NotLeader`, `Busy`, `Dropped`, a
/// leadership transfer or membership change in progress) or that could not reach a server is
/// retried at the leader until `retry_timeout`. `LeadershipLost` and `Timeout` are returned:
/// a write's outcome is then unknown. A write whose connection broke after it was sent can be
/// retried and so applied twice; state machines that need exactly-once deduplicate by client
/// id and sequence number.
#[derive(Clone)]
pub struct RaftClient {
    group_id: u64,
    options: ClientOptions,
    state: Arc<Mutex<ClientState>>,
}

enum Attempt<T> {
    Done(T),
    /// The server answered with an error.
    Refused(Error),
    /// The request may not have reached a server (or no answer came).
    Unreachable(Error),
}

impl RaftClient {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>, group_id: u64) -> Result<RaftClient> {
        RaftClient::with_options(endpoints, group_id, ClientOptions::default())
    }

    pub fn with_options(
        endpoints: impl IntoIterator<Item = impl Into<String>>,
        group_id: u64,
        options: ClientOptions,
    ) -> Result<RaftClient> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(Into::into)
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument(
                "a RaftClient needs at least one endpoint (host:port)".into(),
            ));
        }
        Ok(RaftClient {
            group_id,
            options,
            state: Arc::new(Mutex::new(ClientState {
                endpoints,
                leader: None,
                channels: HashMap::new(),
                next_endpoint_idx: 0,
            })),
        })
    }

    pub fn group_id(&self) -> u64 {
        self.group_id
    }

    /// The endpoint believed to be the leader.
    pub fn leader(&self) -> Option<String> {
        lock(&self.state).leader.clone()
    }

    /// Replicates `command`; returns the state machine's reply.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>> {
        let group_id = self.group_id;
        self.call(|mut client, endpoint| {
            let command = command.clone();
            async move {
                let response = client.propose(proto::ProposeRequest { group_id, command }).await;
                match response {
                    Ok(response) => match response.into_inner() {
                        proto::ProposeResponse { error: Some(e), .. } => {
                            Attempt::Refused(error_from_proto(e, &endpoint))
                        }
                        proto::ProposeResponse { reply, .. } => Attempt::Done(reply),
                    },
                    Err(status) => Attempt::Unreachable(status_error(&endpoint, status)),
                }
            }
        })
        .await
    }

    /// A linearizable read: the state machine answers `query` (see `StateMachine::query`).
    pub async fn read(&self, query: Vec<u8>) -> Result<Vec<u8>> {
        let group_id = self.group_id;
        self.call(|mut client, endpoint| {
            let query = query.clone();
            async move {
                match client.read(proto::ReadRequest { group_id, query }).await {
                    Ok(response) => match response.into_inner() {
                        proto::ReadResponse { error: Some(e), .. } => {
                            Attempt::Refused(error_from_proto(e, &endpoint))
                        }
                        proto::ReadResponse { reply, .. } => Attempt::Done(reply),
                    },
                    Err(status) => Attempt::Unreachable(status_error(&endpoint, status)),
                }
            }
        })
        .await
    }

    /// The leader's status.
    pub async fn status(&self) -> Result<GroupStatus> {
        let group_id = self.group_id;
        self.call(|mut client, endpoint| async move {
            match client.status(proto::StatusRequest { group_id }).await {
                Ok(response) => {
                    let mut status = response.into_inner();
                    if let Some(e) = status.error.take() {
                        return Attempt::Refused(error_from_proto(e, &endpoint));
                    }
                    let status = status_from_proto(status);
                    if status.role != shoal_raft::Role::Leader {
                        return Attempt::Refused(Error::NotLeader {
                            leader_hint: status.leader,
                            leader_addr: status.leader_addr,
                        });
                    }
                    Attempt::Done(status)
                }
                Err(status) => Attempt::Unreachable(status_error(&endpoint, status)),
            }
        })
        .await
    }

    /// The status of the group on one endpoint, whatever its role (no retries).
    pub async fn status_at(&self, endpoint: &str) -> Result<GroupStatus> {
        let mut client = self.client(endpoint)?;
        let request = client.status(proto::StatusRequest {
            group_id: self.group_id,
        });
        let response = tokio::time::timeout(self.options.request_timeout, request)
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(|status| status_error(endpoint, status))?;
        let mut status = response.into_inner();
        if let Some(e) = status.error.take() {
            return Err(error_from_proto(e, endpoint));
        }
        Ok(status_from_proto(status))
    }

    /// Hands leadership to `target` and waits until the old leader sees it leading.
    pub async fn transfer_leader(&self, target: NodeId) -> Result<()> {
        let group_id = self.group_id;
        let result = self
            .call(|mut client, endpoint| async move {
                let request = proto::TransferLeaderRequest {
                    group_id,
                    target: target.0,
                };
                match client.transfer_leader(request).await {
                    Ok(response) => match response.into_inner().error {
                        Some(e) => Attempt::Refused(error_from_proto(e, &endpoint)),
                        None => Attempt::Done(()),
                    },
                    Err(status) => Attempt::Unreachable(status_error(&endpoint, status)),
                }
            })
            .await;
        if result.is_ok() {
            lock(&self.state).leader = None;
        }
        result
    }

    /// Proposes a membership change at the leader; returns its index and the new membership.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(LogIndex, Membership)> {
        let request = membership_change_to_proto(self.group_id, &change);
        if let MembershipChange::AddLearner { address, .. } | MembershipChange::AddVoter { address, .. } =
            &change
        {
            // The new member is an endpoint too (it may lead one day).
            let mut state = lock(&self.state);
            if !state.endpoints.contains(address) {
                state.endpoints.push(address.clone());
            }
        }
        self.call(|mut client, endpoint| {
            let request = request.clone();
            async move {
                match client.change_membership(request).await {
                    Ok(response) => match response.into_inner() {
                        proto::ChangeMembershipResponse { error: Some(e), .. } => {
                            Attempt::Refused(error_from_proto(e, &endpoint))
                        }
                        proto::ChangeMembershipResponse {
                            index, membership, ..
                        } => Attempt::Done((LogIndex(index), codec::membership_from_proto(membership))),
                    },
                    Err(status) => Attempt::Unreachable(status_error(&endpoint, status)),
                }
            }
        })
        .await
    }

    fn client(&self, endpoint: &str) -> Result<RaftServiceClient<Channel>> {
        let mut state = lock(&self.state);
        let channel = match state.channels.get(endpoint) {
            Some(channel) => channel.clone(),
            None => {
                let channel = Endpoint::from_shared(format!("http://{endpoint}"))
                    .map_err(|e| Error::InvalidArgument(format!("bad endpoint {endpoint:?}: {e}")))?
                    .connect_timeout(Duration::from_secs(1))
                    .tcp_nodelay(true)
                    .connect_lazy();
                state.channels.insert(endpoint.to_string(), channel.clone());
                channel
            }
        };
        Ok(RaftServiceClient::new(channel)
            .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX))
    }

    /// The leader if known, else the next endpoint in turn.
    fn pick_endpoint(&self) -> String {
        let mut state = lock(&self.state);
        if let Some(leader) = &state.leader {
            return leader.clone();
        }
        let idx = state.next_endpoint_idx % state.endpoints.len();
        state.next_endpoint_idx = idx + 1;
        state.endpoints[idx].clone()
    }

    fn forget_leader(&self, endpoint: &str) {
        let mut state = lock(&self.state);
        if state.leader.as_deref() == Some(endpoint) {
            state.leader = None;
        }
    }

    fn follow_redirect(&self, leader_addr: &str) {
        let mut state = lock(&self.state);
        if !state.endpoints.iter().any(|e| e == leader_addr) {
            state.endpoints.push(leader_addr.to_string());
        }
        state.leader = Some(leader_addr.to_string());
    }

    async fn call<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut(RaftServiceClient<Channel>, String) -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let deadline = Instant::now() + self.options.retry_timeout;
        let mut backoff = self.options.backoff_min;
        loop {
            let endpoint = self.pick_endpoint();
            let client = self.client(&endpoint)?;
            let outcome =
                match tokio::time::timeout(self.options.request_timeout, attempt(client, endpoint.clone()))
                    .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Attempt::Refused(Error::Timeout),
                };
            let error = match outcome {
                Attempt::Done(value) => {
                    lock(&self.state).leader = Some(endpoint);
                    return Ok(value);
                }
                Attempt::Refused(Error::NotLeader {
                    leader_addr: Some(leader_addr),
                    leader_hint,
                }) if leader_addr != endpoint => {
                    // Follow the redirect at once.
                    self.follow_redirect(&leader_addr);
                    if Instant::now() >= deadline {
                        return Err(Error::NotLeader {
                            leader_hint,
                            leader_addr: Some(leader_addr),
                        });
                    }
                    continue;
                }
                Attempt::Refused(error) if error.is_retryable() => {
                    self.forget_leader(&endpoint);
                    error
                }
                Attempt::Refused(error) => return Err(error),
                Attempt::Unreachable(error) => {
                    self.forget_leader(&endpoint);
                    error
                }
            };
            if Instant::now() + backoff >= deadline {
                return Err(error);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.options.backoff_max);
        }
    }
}

fn status_error(endpoint: &str, status: tonic::Status) -> Error {
    Error::Transport {
        endpoint: endpoint.to_string(),
        message: format!("{:?}: {}", status.code(), status.message()),
    }
}
