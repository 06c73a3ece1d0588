//! The runtime's error type: what a caller of a Raft group can act on.

use shoal_raft::{LogIndex, NodeId, ProposeError, Term};

/// Why a request to a Raft group failed. Every variant says what to do next in its message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Only the leader serves this request; retry at `leader_addr` (when known).
    #[error("this node is not the leader{}; retry at the leader", leader_text(*.leader_hint, .leader_addr))]
    NotLeader {
        leader_hint: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// The node lost leadership while the command was in flight: it may or may not be applied.
    /// Retry only if the command is idempotent or deduplicated by the state machine.
    #[error(
        "leadership was lost before the command applied{}; its outcome is unknown \
         (retry only if the command is idempotent or deduplicated)",
        leader_text(*.leader_hint, .leader_addr)
    )]
    LeadershipLost {
        leader_hint: Option<NodeId>,
        leader_addr: Option<String>,
    },
    /// Another leader's entry replaced the proposal at `index`: the command was not applied.
    #[error(
        "the command was not applied: log index {index} holds an entry of term {term} instead; \
         retry at the current leader"
    )]
    Dropped { index: LogIndex, term: Term },
    /// The request did not complete in time; for a proposal, its outcome is unknown.
    #[error("the request timed out; for a write its outcome is unknown, retry if it is idempotent")]
    Timeout,
    /// A bounded queue or the uncommitted-bytes budget is full: back off and retry.
    #[error("the Raft group is overloaded (a bounded queue is full); back off and retry")]
    Busy,
    /// The group (or the whole node) is shut down or stopped after a fatal error.
    #[error("the Raft group is shut down")]
    Shutdown,
    /// Durable storage failed; the group stopped (fail-stop) and must be restarted.
    #[error("storage failure, the Raft group stopped: {0}")]
    Storage(String),
    /// The state machine failed to snapshot or restore; the group stopped.
    #[error("state machine failure, the Raft group stopped: {0}")]
    StateMachine(String),
    /// The group's loop died on a broken invariant (a bug); the group stopped and must be
    /// restarted from its durable state.
    #[error("the Raft group stopped on a broken invariant (a bug): {0}; restart the node")]
    Fatal(String),
    /// The core refused the request (too large, a membership change pending, ...).
    #[error("refused: {0}")]
    Rejected(ProposeError),
    /// A leadership transfer did not complete within two election timeouts.
    #[error("leadership transfer to node {target} did not complete; the leader is {}", leader_text_plain(*.leader))]
    TransferFailed { target: NodeId, leader: Option<NodeId> },
    /// No group with this id runs on the node.
    #[error("no Raft group {0} on this node")]
    UnknownGroup(u64),
    /// A configuration value is invalid; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A request argument is invalid; the message names it.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A remote call failed (client side): connection refused, reset, or a gRPC error.
    #[error("transport error talking to {endpoint}: {message}")]
    Transport { endpoint: String, message: String },
}

fn leader_text(leader_hint: Option<NodeId>, leader_addr: &Option<String>) -> String {
    match (leader_hint, leader_addr) {
        (Some(id), Some(addr)) => format!(" (the leader is node {id} at {addr})"),
        (Some(id), None) => format!(" (the leader is node {id}, address unknown)"),
        _ => " (no leader is known yet)".to_string(),
    }
}

fn leader_text_plain(leader: Option<NodeId>) -> String {
    leader.map_or_else(|| "unknown".to_string(), |id| format!("node {id}"))
}

impl Error {
    /// True when the request was certainly not executed and may be retried elsewhere as is.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NotLeader { .. }
                | Error::Busy
                | Error::Dropped { .. }
                | Error::Rejected(ProposeError::TransferInProgress)
                | Error::Rejected(ProposeError::ConfigChangePending)
        )
    }

    /// The leader this error points at, if any.
    pub fn leader_addr(&self) -> Option<&str> {
        match self {
            Error::NotLeader { leader_addr, .. } | Error::LeadershipLost { leader_addr, .. } => {
                leader_addr.as_deref()
            }
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
