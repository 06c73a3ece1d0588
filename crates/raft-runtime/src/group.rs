//! Handles of a running group: the typed [`RaftGroup`] for applications and the untyped
//! `GroupHandle` the node's router and gRPC services use, plus what they observe of it.

use std::any::Any;
use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_raft::{ConfigChange, LogIndex, Membership, Message, NodeId, Role, SnapshotMeta, Term};
use tokio::sync::mpsc::{error::TrySendError, Sender};
use tokio::sync::{oneshot, watch};

use crate::config::MembershipChange;
use crate::error::{Error, Result};
use crate::state_machine::StateMachine;
use crate::storage::SnapshotData;
use crate::transport::{lock, Transport};
use crate::GROUP_REQUESTS_QUEUED_MAX;

// ----- observable state -----

/// A cheap, continuously published view of a group, for waiting on events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupState {
    pub term: Term,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub last_index: LogIndex,
    pub snapshot_index: LogIndex,
    pub membership: Membership,
    /// The group's loop has exited (shutdown or a fatal error).
    pub stopped: bool,
}

/// A peer's replication progress as the leader sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProgress {
    pub id: NodeId,
    pub match_index: LogIndex,
    pub next_index: LogIndex,
}

/// Everything `Status` reports about a group on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupStatus {
    pub group_id: u64,
    pub id: NodeId,
    pub term: Term,
    pub role: Role,
    pub leader: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub first_index: LogIndex,
    pub last_index: LogIndex,
    pub snapshot_index: LogIndex,
    pub membership: Membership,
    /// Leader only: every member's progress (this node included).
    pub progress: Vec<PeerProgress>,
    /// Known addresses of the members.
    pub addresses: BTreeMap<NodeId, String>,
    /// WAL fsyncs on this node for this group (one per group commit).
    pub n_fsyncs: u64,
}

// ----- the group's inputs -----

/// The result of a proposal or membership change once it applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Applied {
    pub index: LogIndex,
    pub reply: Vec<u8>,
    /// For a membership change: the membership in force after it.
    pub membership: Option<Membership>,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T>>;
/// A read runs on the group's task with the state machine, or with the reason it cannot.
pub(crate) type ReadFn = Box<dyn FnOnce(Result<&dyn StateMachine>) + Send>;

pub(crate) enum Input {
    Message(Message),
    Propose {
        command: Vec<u8>,
        reply: Reply<Applied>,
    },
    ChangeMembership {
        change: ConfigChange,
        address: Option<String>,
        reply: Reply<Applied>,
    },
    Read(ReadFn),
    ReadLocal(ReadFn),
    Status(oneshot::Sender<GroupStatus>),
    TransferLeader {
        target: NodeId,
        reply: Reply<()>,
    },
    /// Take a snapshot now (or join the one being written) and open its data.
    Snapshot(Reply<(SnapshotMeta, SnapshotData)>),
    Campaign,
    WithholdCandidacy(bool),
    Stop,
}

// ----- handles -----

pub(crate) struct GroupShared {
    pub n_fsyncs: AtomicU64,
    /// Client requests (everything but peer messages) in the inbox; bounded by
    /// `GROUP_REQUESTS_QUEUED_MAX` so clients cannot crowd out peer messages.
    pub n_requests_queued: AtomicUsize,
    pub state: watch::Sender<GroupState>,
    /// Why the loop stopped, if it stopped on an error.
    pub stop_reason: Mutex<Option<Error>>,
}

/// The untyped handle of a running group, shared by its `RaftGroup` and the node's router.
#[derive(Clone)]
pub(crate) struct GroupHandle {
    group_id: u64,
    node_id: NodeId,
    inbox: Sender<Input>,
    shared: Arc<GroupShared>,
    request_timeout: Duration,
    transport: Arc<Transport>,
}

impl GroupHandle {
    pub fn new(
        group_id: u64,
        node_id: NodeId,
        inbox: Sender<Input>,
        shared: Arc<GroupShared>,
        request_timeout: Duration,
        transport: Arc<Transport>,
    ) -> GroupHandle {
        GroupHandle {
            group_id,
            node_id,
            inbox,
            shared,
            request_timeout,
            transport,
        }
    }

    pub fn n_fsyncs(&self) -> u64 {
        self.shared.n_fsyncs.load(Ordering::Relaxed)
    }

    /// Hands a peer message to the group; drops it when the inbox is full.
    pub fn deliver(&self, message: Message) {
        if self.inbox.try_send(Input::Message(message)).is_err() {
            self.transport.count_inbound_drop();
        }
    }

    fn stopped_error(&self) -> Error {
        lock(&self.shared.stop_reason).clone().unwrap_or(Error::Shutdown)
    }

    fn submit(&self, input: Input) -> Result<()> {
        let n_queued = self.shared.n_requests_queued.fetch_add(1, Ordering::AcqRel);
        if n_queued >= GROUP_REQUESTS_QUEUED_MAX {
            self.shared.n_requests_queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Error::Busy);
        }
        let result = match self.inbox.try_send(input) {
            Ok(()) => return Ok(()),
            Err(TrySendError::Full(_)) => Err(Error::Busy),
            Err(TrySendError::Closed(_)) => Err(self.stopped_error()),
        };
        self.shared.n_requests_queued.fetch_sub(1, Ordering::AcqRel);
        result
    }

    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Input) -> Result<T> {
        let (reply, receiver) = oneshot::channel();
        self.submit(make(reply))?;
        match tokio::time::timeout(self.request_timeout, receiver).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(self.stopped_error()),
            Err(_) => Err(Error::Timeout),
        }
    }

    pub async fn propose(&self, command: Vec<u8>) -> Result<Applied> {
        self.call(|reply| Input::Propose { command, reply }).await
    }

    pub async fn change_membership(&self, change: MembershipChange) -> Result<Applied> {
        let (change, address) = change.into_parts();
        self.call(|reply| Input::ChangeMembership {
            change,
            address,
            reply,
        })
        .await
    }

    /// Runs `f` on the state machine once a linearizable read point applied.
    pub async fn read_with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn StateMachine) -> R + Send + 'static,
    ) -> Result<R> {
        self.run_read(Input::Read, f).await
    }

    /// Runs `f` on this replica's state machine now, without confirming leadership.
    pub async fn read_local_with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn StateMachine) -> R + Send + 'static,
    ) -> Result<R> {
        self.run_read(Input::ReadLocal, f).await
    }

    /// Queues a read of kind `input` (linearizable or local) and waits for `f`'s result.
    async fn run_read<R: Send + 'static>(
        &self,
        input: fn(ReadFn) -> Input,
        f: impl FnOnce(&dyn StateMachine) -> R + Send + 'static,
    ) -> Result<R> {
        self.call(|reply: Reply<R>| {
            input(Box::new(move |state_machine: Result<&dyn StateMachine>| {
                let _ = reply.send(state_machine.map(f));
            }))
        })
        .await
    }

    pub async fn query(&self, query: Vec<u8>) -> Result<Vec<u8>> {
        self.read_with(move |state_machine| state_machine.query(&query))
            .await
    }

    pub async fn status(&self) -> Result<GroupStatus> {
        let (reply, receiver) = oneshot::channel();
        self.submit(Input::Status(reply))?;
        match tokio::time::timeout(self.request_timeout, receiver).await {
            Ok(Ok(status)) => Ok(status),
            Ok(Err(_)) => Err(self.stopped_error()),
            Err(_) => Err(Error::Timeout),
        }
    }

    pub async fn transfer_leader(&self, target: NodeId) -> Result<()> {
        self.call(|reply| Input::TransferLeader { target, reply }).await
    }

    /// Waits as long as the snapshot takes: a large state takes seconds to write.
    pub async fn snapshot_now(&self) -> Result<(SnapshotMeta, SnapshotData)> {
        let (reply, receiver) = oneshot::channel();
        self.submit(Input::Snapshot(reply))?;
        receiver.await.unwrap_or_else(|_| Err(self.stopped_error()))
    }

    pub fn campaign(&self) -> Result<()> {
        self.submit(Input::Campaign)
    }

    pub fn withhold_candidacy(&self, withheld: bool) -> Result<()> {
        self.submit(Input::WithholdCandidacy(withheld))
    }

    pub fn state(&self) -> GroupState {
        self.shared.state.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<GroupState> {
        self.shared.state.subscribe()
    }

    /// Waits until the loop exited.
    pub async fn closed(&self) {
        let mut state = self.shared.state.subscribe();
        let _ = state.wait_for(|s| s.stopped).await;
    }

    /// Asks the loop to stop; it exits within about one tick.
    pub fn stop(&self) {
        // A full inbox still sees the stop soon: the loop also checks the node's token, and
        // a dropped Stop only delays the exit to the node's shutdown.
        let _ = self.inbox.try_send(Input::Stop);
    }
}

/// The concrete state machine behind a group's `dyn StateMachine`.
fn downcast<S: StateMachine>(state_machine: &dyn StateMachine) -> &S {
    let any: &dyn Any = state_machine;
    match any.downcast_ref::<S>() {
        Some(state_machine) => state_machine,
        None => unreachable!("a RaftGroup<S> always runs a state machine of type S"),
    }
}

/// A running Raft group replicating state machine `S` on this node.
pub struct RaftGroup<S> {
    handle: GroupHandle,
    _state_machine: PhantomData<fn() -> S>,
}

impl<S> Clone for RaftGroup<S> {
    fn clone(&self) -> Self {
        RaftGroup {
            handle: self.handle.clone(),
            _state_machine: PhantomData,
        }
    }
}

impl<S: StateMachine> RaftGroup<S> {
    pub(crate) fn from_handle(handle: GroupHandle) -> RaftGroup<S> {
        RaftGroup {
            handle,
            _state_machine: PhantomData,
        }
    }

    pub fn group_id(&self) -> u64 {
        self.handle.group_id
    }

    pub fn node_id(&self) -> NodeId {
        self.handle.node_id
    }

    /// Replicates `command` and answers with the state machine's reply once it applied here.
    /// Fails with `NotLeader` (certainly not applied), `Dropped` (certainly not applied),
    /// `LeadershipLost` or `Timeout` (outcome unknown).
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>> {
        self.handle.propose(command).await.map(|applied| applied.reply)
    }

    /// A linearizable read (Raft §6.4, ReadIndex): `f` sees every write acknowledged before
    /// the call. `f` runs in the group's loop, so it should be quick.
    pub async fn read<R: Send + 'static>(&self, f: impl FnOnce(&S) -> R + Send + 'static) -> Result<R> {
        self.handle
            .read_with(move |state_machine| f(downcast::<S>(state_machine)))
            .await
    }

    /// Reads this replica's state now, without confirming leadership: possibly stale (it
    /// sees what this node applied), but served by any member, leader or not.
    pub async fn read_local<R: Send + 'static>(&self, f: impl FnOnce(&S) -> R + Send + 'static) -> Result<R> {
        self.handle
            .read_local_with(move |state_machine| f(downcast::<S>(state_machine)))
            .await
    }

    pub async fn status(&self) -> Result<GroupStatus> {
        self.handle.status().await
    }

    /// Hands leadership to `target` (§3.10) and waits until this node sees it leading.
    pub async fn transfer_leader(&self, target: NodeId) -> Result<()> {
        self.handle.transfer_leader(target).await
    }

    /// Takes a durable snapshot of the state machine at its applied index now (or joins the
    /// one being written), and returns its metadata and a reader of its data: what
    /// [`StateMachine::snapshot`] wrote, checked against its CRC when read to the end. The
    /// snapshot is written on a blocking thread like the periodic ones (the group keeps
    /// replicating meanwhile), never buffered in memory; it also resets the periodic cadence.
    pub async fn snapshot_now(&self) -> Result<(SnapshotMeta, SnapshotData)> {
        self.handle.snapshot_now().await
    }

    /// Proposes a membership change and waits until it applied here; returns its log index
    /// and the membership after it.
    pub async fn change_membership(&self, change: MembershipChange) -> Result<(LogIndex, Membership)> {
        let applied = self.handle.change_membership(change).await?;
        Ok((applied.index, applied.membership.unwrap_or_default()))
    }

    /// Starts an election now instead of waiting for the election timeout.
    pub fn campaign(&self) -> Result<()> {
        self.handle.campaign()
    }

    /// Stops (`true`) or resumes this member standing for election; it still votes and
    /// replicates. For a member whose state machine the application distrusts: it must not
    /// lead. Not persisted (set it again after a restart); a leader keeps leading until it
    /// hands over with [`RaftGroup::transfer_leader`]. Needs a quorum of voters that stand.
    pub fn withhold_candidacy(&self, withheld: bool) -> Result<()> {
        self.handle.withhold_candidacy(withheld)
    }

    /// The latest published state.
    pub fn state(&self) -> GroupState {
        self.handle.state()
    }

    /// The latest published term and role, without copying the whole state (for request
    /// paths).
    pub fn term_and_role(&self) -> (Term, Role) {
        let state = self.handle.shared.state.borrow();
        (state.term, state.role)
    }

    /// A receiver that sees every published state change.
    pub fn subscribe(&self) -> watch::Receiver<GroupState> {
        self.handle.subscribe()
    }

    /// Waits until `predicate` holds for the published state, at most `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&GroupState) -> bool,
    ) -> Result<GroupState> {
        let mut state = self.handle.subscribe();
        let result = tokio::time::timeout(timeout, async {
            state.wait_for(|s| predicate(s)).await.map(|s| s.clone())
        })
        .await;
        match result {
            Ok(Ok(state)) => Ok(state),
            Ok(Err(_)) => Err(Error::Shutdown),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// WAL fsyncs of this group on this node so far.
    pub fn n_fsyncs(&self) -> u64 {
        self.handle.n_fsyncs()
    }

    /// Stops this group (not the node) and waits until its loop exited.
    pub async fn stop(&self) {
        self.handle.stop();
        self.handle.closed().await;
    }

    /// Waits until the group's loop exited.
    pub async fn closed(&self) {
        self.handle.closed().await;
    }
}
