//! The client-facing gRPC service (`RaftService`): propose, read, status, leadership transfer
//! and membership changes, routed to a group by id. Errors travel in-band as `ErrorInfo`, so a
//! client can follow a `NotLeader` redirect without parsing text.

use std::future::Future;
use std::sync::Arc;

use shoal_raft::{LogIndex, NodeId, ProposeError, Role, Term};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::codec;
use crate::config::MembershipChange;
use crate::error::Error;
use crate::group::{GroupStatus, PeerProgress};
use crate::node::Router;
use crate::proto;
use crate::proto::ErrorCode;

pub(crate) struct ClientService {
    pub router: Arc<Router>,
    pub shutdown: CancellationToken,
}

impl ClientService {
    /// Runs a request, cut short by the server's shutdown.
    async fn run<T>(&self, request: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        tokio::select! {
            _ = self.shutdown.cancelled() => Err(Error::Shutdown),
            result = request => result,
        }
    }
}

#[tonic::async_trait]
impl proto::raft_service_server::RaftService for ClientService {
    async fn propose(
        &self,
        request: Request<proto::ProposeRequest>,
    ) -> Result<Response<proto::ProposeResponse>, Status> {
        let request = request.into_inner();
        let result = self
            .run(async {
                let group = self.router.group(request.group_id)?;
                group.propose(request.command).await
            })
            .await;
        Ok(Response::new(match result {
            Ok(applied) => proto::ProposeResponse {
                reply: applied.reply,
                index: applied.index.0,
                error: None,
            },
            Err(error) => proto::ProposeResponse {
                error: Some(error_to_proto(&error)),
                ..Default::default()
            },
        }))
    }

    async fn read(
        &self,
        request: Request<proto::ReadRequest>,
    ) -> Result<Response<proto::ReadResponse>, Status> {
        let request = request.into_inner();
        let result = self
            .run(async {
                let group = self.router.group(request.group_id)?;
                group.query(request.query).await
            })
            .await;
        Ok(Response::new(match result {
            Ok(reply) => proto::ReadResponse { reply, error: None },
            Err(error) => proto::ReadResponse {
                reply: Vec::new(),
                error: Some(error_to_proto(&error)),
            },
        }))
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusResponse>, Status> {
        let request = request.into_inner();
        let result = self
            .run(async {
                let group = self.router.group(request.group_id)?;
                group.status().await
            })
            .await;
        Ok(Response::new(match result {
            Ok(status) => status_to_proto(&status),
            Err(error) => proto::StatusResponse {
                group_id: request.group_id,
                error: Some(error_to_proto(&error)),
                ..Default::default()
            },
        }))
    }

    async fn transfer_leader(
        &self,
        request: Request<proto::TransferLeaderRequest>,
    ) -> Result<Response<proto::TransferLeaderResponse>, Status> {
        let request = request.into_inner();
        let result = self
            .run(async {
                if request.target == 0 {
                    return Err(Error::InvalidArgument("target must be a node id > 0".into()));
                }
                let group = self.router.group(request.group_id)?;
                group.transfer_leader(NodeId(request.target)).await
            })
            .await;
        Ok(Response::new(proto::TransferLeaderResponse {
            error: result.err().map(|e| error_to_proto(&e)),
        }))
    }

    async fn change_membership(
        &self,
        request: Request<proto::ChangeMembershipRequest>,
    ) -> Result<Response<proto::ChangeMembershipResponse>, Status> {
        let request = request.into_inner();
        let result = self
            .run(async {
                let change = membership_change_from_proto(&request)?;
                let group = self.router.group(request.group_id)?;
                group.change_membership(change).await
            })
            .await;
        Ok(Response::new(match result {
            Ok(applied) => proto::ChangeMembershipResponse {
                index: applied.index.0,
                membership: applied.membership.as_ref().map(codec::membership_to_proto),
                error: None,
            },
            Err(error) => proto::ChangeMembershipResponse {
                error: Some(error_to_proto(&error)),
                ..Default::default()
            },
        }))
    }
}

pub(crate) fn membership_change_from_proto(
    request: &proto::ChangeMembershipRequest,
) -> Result<MembershipChange, Error> {
    if request.node_id == 0 {
        return Err(Error::InvalidArgument("node_id must be > 0".into()));
    }
    let id = NodeId(request.node_id);
    let address = request.address.trim().to_string();
    let needs_address = |address: String| {
        if address.is_empty() {
            Err(Error::InvalidArgument(format!(
                "adding node {id} needs its address (host:port)"
            )))
        } else {
            Ok(address)
        }
    };
    match proto::ConfigChangeKind::try_from(request.kind) {
        Ok(proto::ConfigChangeKind::AddLearner) => Ok(MembershipChange::AddLearner {
            id,
            address: needs_address(address)?,
        }),
        Ok(proto::ConfigChangeKind::AddVoter) => Ok(MembershipChange::AddVoter {
            id,
            address: needs_address(address)?,
        }),
        Ok(proto::ConfigChangeKind::PromoteLearner) => Ok(MembershipChange::PromoteLearner(id)),
        Ok(proto::ConfigChangeKind::Remove) => Ok(MembershipChange::Remove(id)),
        Err(_) => Err(Error::InvalidArgument(format!(
            "unknown membership change kind {}",
            request.kind
        ))),
    }
}

pub(crate) fn membership_change_to_proto(
    group_id: u64,
    change: &MembershipChange,
) -> proto::ChangeMembershipRequest {
    let (kind, id, address) = match change {
        MembershipChange::AddLearner { id, address } => {
            (proto::ConfigChangeKind::AddLearner, *id, address.clone())
        }
        MembershipChange::AddVoter { id, address } => {
            (proto::ConfigChangeKind::AddVoter, *id, address.clone())
        }
        MembershipChange::PromoteLearner(id) => (proto::ConfigChangeKind::PromoteLearner, *id, String::new()),
        MembershipChange::Remove(id) => (proto::ConfigChangeKind::Remove, *id, String::new()),
    };
    proto::ChangeMembershipRequest {
        group_id,
        kind: kind as i32,
        node_id: id.0,
        address,
    }
}

pub(crate) fn status_to_proto(status: &GroupStatus) -> proto::StatusResponse {
    proto::StatusResponse {
        group_id: status.group_id,
        id: status.id.0,
        term: status.term.0,
        role: status.role.name().to_string(),
        leader: status.leader.map_or(0, |id| id.0),
        leader_addr: status.leader_addr.clone().unwrap_or_default(),
        commit_index: status.commit_index.0,
        applied_index: status.applied_index.0,
        first_index: status.first_index.0,
        last_index: status.last_index.0,
        snapshot_index: status.snapshot_index.0,
        membership: Some(codec::membership_to_proto(&status.membership)),
        progress: status
            .progress
            .iter()
            .map(|p| proto::PeerProgress {
                node_id: p.id.0,
                match_index: p.match_index.0,
                next_index: p.next_index.0,
            })
            .collect(),
        addresses: status
            .addresses
            .iter()
            .map(|(id, address)| (id.0, address.clone()))
            .collect(),
        n_fsyncs: status.n_fsyncs,
        error: None,
    }
}

pub(crate) fn status_from_proto(status: proto::StatusResponse) -> GroupStatus {
    GroupStatus {
        group_id: status.group_id,
        id: NodeId(status.id),
        term: Term(status.term),
        role: Role::from_name(&status.role).unwrap_or(Role::Follower),
        leader: (status.leader != 0).then_some(NodeId(status.leader)),
        leader_addr: (!status.leader_addr.is_empty()).then_some(status.leader_addr),
        commit_index: LogIndex(status.commit_index),
        applied_index: LogIndex(status.applied_index),
        first_index: LogIndex(status.first_index),
        last_index: LogIndex(status.last_index),
        snapshot_index: LogIndex(status.snapshot_index),
        membership: codec::membership_from_proto(status.membership),
        progress: status
            .progress
            .into_iter()
            .map(|p| PeerProgress {
                id: NodeId(p.node_id),
                match_index: LogIndex(p.match_index),
                next_index: LogIndex(p.next_index),
            })
            .collect(),
        addresses: status
            .addresses
            .into_iter()
            .map(|(id, address)| (NodeId(id), address))
            .collect(),
        n_fsyncs: status.n_fsyncs,
    }
}

fn leader_fields(leader_hint: Option<NodeId>, leader_addr: &Option<String>) -> (u64, String) {
    (
        leader_hint.map_or(0, |id| id.0),
        leader_addr.clone().unwrap_or_default(),
    )
}

pub(crate) fn error_to_proto(error: &Error) -> proto::ErrorInfo {
    let mut info = proto::ErrorInfo {
        message: error.to_string(),
        ..Default::default()
    };
    let code = match error {
        Error::NotLeader {
            leader_hint,
            leader_addr,
        } => {
            (info.leader_hint, info.leader_addr) = leader_fields(*leader_hint, leader_addr);
            ErrorCode::NotLeader
        }
        Error::LeadershipLost {
            leader_hint,
            leader_addr,
        } => {
            (info.leader_hint, info.leader_addr) = leader_fields(*leader_hint, leader_addr);
            ErrorCode::LeadershipLost
        }
        Error::Dropped { index, term } => {
            info.index = index.0;
            info.term = term.0;
            ErrorCode::Dropped
        }
        Error::Timeout => ErrorCode::Timeout,
        Error::Busy => ErrorCode::Busy,
        Error::Shutdown => ErrorCode::Shutdown,
        Error::Storage(detail) => {
            info.detail = detail.clone();
            ErrorCode::Storage
        }
        Error::StateMachine(detail) => {
            info.detail = detail.clone();
            ErrorCode::StateMachine
        }
        Error::Fatal(detail) => {
            info.detail = detail.clone();
            ErrorCode::Fatal
        }
        Error::TransferFailed { target, leader } => {
            info.index = target.0;
            info.leader_hint = leader.map_or(0, |id| id.0);
            ErrorCode::TransferFailed
        }
        Error::UnknownGroup(group_id) => {
            info.index = *group_id;
            ErrorCode::UnknownGroup
        }
        Error::Config(detail) => {
            info.detail = detail.clone();
            ErrorCode::Config
        }
        Error::InvalidArgument(detail) => {
            info.detail = detail.clone();
            ErrorCode::InvalidArgument
        }
        Error::Transport { .. } => ErrorCode::Unspecified,
        Error::Rejected(refusal) => match refusal {
            ProposeError::NotLeader { leader_hint } => {
                info.leader_hint = leader_hint.map_or(0, |id| id.0);
                ErrorCode::NotLeader
            }
            ProposeError::Busy { .. } => ErrorCode::Busy,
            ProposeError::TransferInProgress => ErrorCode::TransferInProgress,
            ProposeError::TooLarge {
                size_bytes,
                max_bytes,
            } => {
                info.size_bytes = *size_bytes as u64;
                info.max_bytes = *max_bytes as u64;
                ErrorCode::TooLarge
            }
            ProposeError::ConfigChangePending => ErrorCode::ConfigChangePending,
            ProposeError::InvalidConfigChange(why) => {
                info.detail = why.clone();
                ErrorCode::InvalidConfigChange
            }
            ProposeError::LearnerBehind {
                match_index,
                commit_index,
            } => {
                info.index = match_index.0;
                info.term = commit_index.0;
                ErrorCode::LearnerBehind
            }
        },
    };
    info.code = code as i32;
    info
}

/// Rebuilds the error a server reported; `endpoint` names the server for unknown codes.
pub(crate) fn error_from_proto(info: proto::ErrorInfo, endpoint: &str) -> Error {
    let leader_hint = (info.leader_hint != 0).then_some(NodeId(info.leader_hint));
    let leader_addr = (!info.leader_addr.is_empty()).then_some(info.leader_addr.clone());
    match ErrorCode::try_from(info.code).unwrap_or(ErrorCode::Unspecified) {
        ErrorCode::NotLeader => Error::NotLeader {
            leader_hint,
            leader_addr,
        },
        ErrorCode::LeadershipLost => Error::LeadershipLost {
            leader_hint,
            leader_addr,
        },
        ErrorCode::Dropped => Error::Dropped {
            index: LogIndex(info.index),
            term: Term(info.term),
        },
        ErrorCode::Timeout => Error::Timeout,
        ErrorCode::Busy => Error::Busy,
        ErrorCode::Shutdown => Error::Shutdown,
        ErrorCode::Storage => Error::Storage(info.detail),
        ErrorCode::StateMachine => Error::StateMachine(info.detail),
        ErrorCode::Fatal => Error::Fatal(info.detail),
        ErrorCode::TransferFailed => Error::TransferFailed {
            target: NodeId(info.index),
            leader: leader_hint,
        },
        ErrorCode::UnknownGroup => Error::UnknownGroup(info.index),
        ErrorCode::Config => Error::Config(info.detail),
        ErrorCode::InvalidArgument => Error::InvalidArgument(info.detail),
        ErrorCode::TransferInProgress => Error::Rejected(ProposeError::TransferInProgress),
        ErrorCode::TooLarge => Error::Rejected(ProposeError::TooLarge {
            size_bytes: info.size_bytes as usize,
            max_bytes: info.max_bytes as usize,
        }),
        ErrorCode::ConfigChangePending => Error::Rejected(ProposeError::ConfigChangePending),
        ErrorCode::InvalidConfigChange => Error::Rejected(ProposeError::InvalidConfigChange(info.detail)),
        ErrorCode::LearnerBehind => Error::Rejected(ProposeError::LearnerBehind {
            match_index: LogIndex(info.index),
            commit_index: LogIndex(info.term),
        }),
        ErrorCode::Unspecified => Error::Transport {
            endpoint: endpoint.to_string(),
            message: info.message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_survive_the_wire() {
        // Goal: every error a server reports is rebuilt exactly by the client.
        let errors = vec![
            Error::NotLeader {
                leader_hint: Some(NodeId(2)),
                leader_addr: Some("127.0.0.1:7".into()),
            },
            Error::NotLeader {
                leader_hint: None,
                leader_addr: None,
            },
            Error::LeadershipLost {
                leader_hint: Some(NodeId(3)),
                leader_addr: None,
            },
            Error::Dropped {
                index: LogIndex(9),
                term: Term(4),
            },
            Error::Timeout,
            Error::Busy,
            Error::Shutdown,
            Error::Storage("disk full".into()),
            Error::StateMachine("bad snapshot".into()),
            Error::Fatal("panicked".into()),
            Error::TransferFailed {
                target: NodeId(2),
                leader: Some(NodeId(1)),
            },
            Error::UnknownGroup(7),
            Error::Config("tick".into()),
            Error::InvalidArgument("node_id".into()),
            Error::Rejected(ProposeError::TransferInProgress),
            Error::Rejected(ProposeError::TooLarge {
                size_bytes: 10,
                max_bytes: 5,
            }),
            Error::Rejected(ProposeError::ConfigChangePending),
            Error::Rejected(ProposeError::InvalidConfigChange(
                "node 4 is already a member".into(),
            )),
            Error::Rejected(ProposeError::LearnerBehind {
                match_index: LogIndex(3),
                commit_index: LogIndex(8),
            }),
        ];
        for error in errors {
            assert_eq!(error_from_proto(error_to_proto(&error), "x"), error);
        }
    }
}
