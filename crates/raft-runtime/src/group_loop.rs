//! The loop that drives one group as a task on the tokio runtime: inputs in, one `Ready` per
//! batch out, handled in the order of the core's contract (see the crate docs). Disk work
//! that blocks (fsync, snapshot restore, log compaction) runs on the runtime's blocking
//! threads while the loop awaits it; the core, applies and reads run on the task itself, so a
//! request's hand-off to the loop and its answer are task wake-ups, not thread wake-ups.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_raft::{
    Entry, EntryKind, LogIndex, Membership, Message, NodeId, ProposeError, Raft, Ready, Role, SnapshotMeta,
    SnapshotSend, Term,
};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::mpsc::Receiver;
use tokio_util::sync::CancellationToken;

use crate::codec;
use crate::config::GroupConfig;
use crate::error::{Error, Result};
use crate::group::{Applied, GroupShared, GroupState, GroupStatus, Input, PeerProgress, ReadFn, Reply};
use crate::proto;
use crate::state_machine::StateMachine;
use crate::storage::{added_member_address, GroupStorage, SnapshotData, StoredSnapshot};
use crate::transport::{lock, Transport};
use crate::{
    BATCH_INPUTS_MAX, PENDING_READS_MAX, READY_ROUNDS_MAX, SNAPSHOT_CHUNK_BYTES_MAX, TICKS_CATCH_UP_MAX,
};

struct PendingProposal {
    term: Term,
    reply: Reply<Applied>,
}

/// A snapshot being written on a blocking thread, which holds the state machine meanwhile.
///
/// Serializing a large state takes seconds (a 290 MB store: 0.8 s); in the group's loop
/// that would stop heartbeats and cost the leader its leadership at every snapshot. Instead
/// the loop keeps running Raft (replicating, persisting, committing) and only defers applying
/// and reading until the state machine comes back.
struct SnapshotJob<S> {
    index: LogIndex,
    started: Instant,
    /// On one of the runtime's blocking threads.
    task: tokio::task::JoinHandle<(S, Result<StoredSnapshot>)>,
}

struct PendingTransfer {
    target: NodeId,
    started_tick: u64,
    reply: Reply<()>,
}

/// Owns a group's `Raft`, storage and state machine; runs as one task (see the module docs).
pub(crate) struct GroupLoop<S: StateMachine> {
    group_id: u64,
    id: NodeId,
    raft: Raft,
    /// `None` only while a blocking job holds it ([`GroupLoop::with_storage`]).
    storage: Option<GroupStorage>,
    /// `None` while a snapshot job holds it.
    state_machine: Option<S>,
    snapshot_job: Option<SnapshotJob<S>>,
    /// Committed entries waiting for the state machine to come back from a snapshot job.
    deferred_applies: VecDeque<Entry>,
    /// Local reads waiting for the same.
    deferred_local_reads: Vec<ReadFn>,
    /// Callers of `snapshot_now`, answered when the next snapshot is durable.
    snapshot_waiters: Vec<Reply<(SnapshotMeta, SnapshotData)>>,
    transport: Arc<Transport>,
    shared: Arc<GroupShared>,
    shutdown: CancellationToken,
    tick_interval: Duration,
    snapshot_interval_entries: u64,
    transfer_timeout_ticks: u64,
    /// What the state machine has applied (the core counts entries handed out).
    applied: LogIndex,
    /// Proposals by log index, answered when that index applies.
    proposals: BTreeMap<LogIndex, PendingProposal>,
    /// Reads waiting for the leader to confirm a read index, by context, with their term.
    reads_waiting_for_leader: HashMap<u64, (Term, ReadFn)>,
    /// Reads with a confirmed read index, waiting for the state machine to apply it.
    reads_waiting_for_apply: BTreeMap<LogIndex, Vec<ReadFn>>,
    n_reads: usize,
    next_read_context: u64,
    transfer: Option<PendingTransfer>,
    n_ticks: u64,
    stop_requested: bool,
    /// A durable snapshot the core's log is not yet compacted to.
    pending_compaction: Option<SnapshotMeta>,
}

/// Marks the group stopped when its loop ends, even by a panic (a broken core invariant).
///
/// A panic in the loop's `poll` drops the loop's live state while unwinding, this guard (the
/// loop's first local) before the loop itself (its parameter): the stop reason is set before
/// the pending callers' answer channels close, so they read `Fatal`, not a plain shutdown.
struct StoppedGuard(Arc<GroupShared>);

impl Drop for StoppedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut reason = lock(&self.0.stop_reason);
            if reason.is_none() {
                *reason = Some(Error::Fatal("the group's loop panicked".into()));
            }
        }
        self.0.state.send_modify(|s| s.stopped = true);
    }
}

impl<S: StateMachine> GroupLoop<S> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: &GroupConfig,
        id: NodeId,
        raft: Raft,
        storage: GroupStorage,
        state_machine: S,
        transport: Arc<Transport>,
        shared: Arc<GroupShared>,
        shutdown: CancellationToken,
    ) -> GroupLoop<S> {
        GroupLoop {
            group_id: config.group_id,
            id,
            applied: raft.applied_index(),
            raft,
            storage: Some(storage),
            state_machine: Some(state_machine),
            snapshot_job: None,
            deferred_applies: VecDeque::new(),
            deferred_local_reads: Vec::new(),
            snapshot_waiters: Vec::new(),
            transport,
            shared,
            shutdown,
            tick_interval: config.tick_interval,
            snapshot_interval_entries: config.snapshot_interval_entries,
            transfer_timeout_ticks: 2 * config.raft.election_timeout_ticks,
            proposals: BTreeMap::new(),
            reads_waiting_for_leader: HashMap::new(),
            reads_waiting_for_apply: BTreeMap::new(),
            n_reads: 0,
            next_read_context: 1,
            transfer: None,
            n_ticks: 0,
            stop_requested: false,
            pending_compaction: None,
        }
    }

    pub(crate) async fn run(mut self, mut inbox: Receiver<Input>) {
        let _stopped = StoppedGuard(self.shared.clone());
        let shutdown = self.shutdown.clone();
        let mut next_tick = Instant::now() + self.tick_interval;
        let mut more_ready = false;
        let result = loop {
            if self.stop_requested || shutdown.is_cancelled() {
                break Ok(());
            }
            // Wait for the first input or the next tick, then drain what else is there
            // (bounded): everything gathered goes into one Ready, one fsync (rule 4).
            let first = if more_ready {
                match inbox.try_recv() {
                    Ok(input) => Some(input),
                    Err(TryRecvError::Empty) => {
                        // Let the runtime's other tasks run between rounds of core work.
                        tokio::task::yield_now().await;
                        None
                    }
                    Err(TryRecvError::Disconnected) => break Ok(()),
                }
            } else {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => break Ok(()),
                    input = inbox.recv() => match input {
                        Some(input) => Some(input),
                        None => break Ok(()),
                    },
                    _ = tokio::time::sleep_until(next_tick.into()) => None,
                }
            };
            if let Some(input) = first {
                self.handle_input(input);
            }
            for _ in 1..BATCH_INPUTS_MAX {
                match inbox.try_recv() {
                    Ok(input) => self.handle_input(input),
                    Err(_) => break,
                }
            }
            let now = Instant::now();
            let mut n_ticks = 0;
            while now >= next_tick && n_ticks < TICKS_CATCH_UP_MAX {
                self.tick();
                next_tick += self.tick_interval;
                n_ticks += 1;
            }
            if now >= next_tick {
                // Far behind (a long fsync or snapshot): do not replay every missed tick.
                next_tick = now + self.tick_interval;
            }
            match self.handle_ready().await {
                Ok(more) => more_ready = more,
                Err(error) => break Err(error),
            }
        };
        // Never leave a snapshot half-written behind a stopped group.
        let result = result.and(self.finish_snapshot_job(true).await);
        let reason = match result {
            Ok(()) => Error::Shutdown,
            Err(error) => {
                tracing::error!(%error, "Raft group stopped on a fatal error");
                *lock(&self.shared.stop_reason) = Some(error.clone());
                error
            }
        };
        self.fail_everything(reason);
        tracing::info!("group stopped");
    }

    fn storage(&self) -> &GroupStorage {
        match &self.storage {
            Some(storage) => storage,
            None => unreachable!("the storage is back before the loop goes on"),
        }
    }

    fn storage_mut(&mut self) -> &mut GroupStorage {
        match &mut self.storage {
            Some(storage) => storage,
            None => unreachable!("the storage is back before the loop goes on"),
        }
    }

    /// Runs `f` with the storage on one of the runtime's blocking threads (an fsync or a
    /// restore must not stall a worker, which serves every other task); the loop awaits it,
    /// so nothing else touches the storage meanwhile.
    async fn with_storage<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut GroupStorage) -> R + Send + 'static,
    ) -> R {
        let Some(mut storage) = self.storage.take() else {
            unreachable!("one blocking storage job at a time");
        };
        let joined = tokio::task::spawn_blocking(move || {
            let result = f(&mut storage);
            (storage, result)
        })
        .await;
        match joined {
            Ok((storage, result)) => {
                self.storage = Some(storage);
                result
            }
            // A panic in the storage code ends the group as it would have ended its thread.
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => panic!("the storage job was cancelled: the runtime is shutting down"),
        }
    }

    fn handle_input(&mut self, input: Input) {
        if !matches!(input, Input::Message(_) | Input::Stop) {
            self.shared.n_requests_queued.fetch_sub(1, Ordering::AcqRel);
        }
        match input {
            Input::Message(message) => self.raft.step(message),
            Input::Propose { command, reply } => match self.raft.propose(command) {
                Ok((term, index)) => self.track_proposal(term, index, reply),
                Err(error) => {
                    let _ = reply.send(Err(self.refusal(error)));
                }
            },
            Input::ChangeMembership {
                change,
                address,
                reply,
            } => {
                let context = address.clone().unwrap_or_default().into_bytes();
                let node_id = change.node_id();
                match self.raft.propose_config_change(change, context) {
                    Ok((term, index)) => {
                        if let Some(address) = address {
                            // The new member is in the membership as soon as the entry is in
                            // the log, and this Ready already replicates to it.
                            self.transport.set_address(node_id, address);
                        }
                        self.track_proposal(term, index, reply);
                    }
                    Err(error) => {
                        let _ = reply.send(Err(self.refusal(error)));
                    }
                }
            }
            Input::Read(read) => {
                if self.n_reads >= PENDING_READS_MAX {
                    read(Err(Error::Busy));
                    return;
                }
                let context = self.next_read_context;
                self.next_read_context += 1;
                match self.raft.read_index(context) {
                    Ok(()) => {
                        self.reads_waiting_for_leader
                            .insert(context, (self.raft.term(), read));
                        self.n_reads += 1;
                    }
                    Err(error) => read(Err(self.refusal(error))),
                }
            }
            Input::ReadLocal(read) => match &self.state_machine {
                Some(state_machine) => read(Ok(state_machine)),
                None => self.deferred_local_reads.push(read),
            },
            Input::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Input::TransferLeader { target, reply } => match self.raft.transfer_leadership(target) {
                Ok(()) if target == self.id => {
                    let _ = reply.send(Ok(()));
                }
                Ok(()) => {
                    if let Some(previous) = self.transfer.take() {
                        let _ = previous.reply.send(Err(Error::TransferFailed {
                            target: previous.target,
                            leader: self.raft.leader(),
                        }));
                    }
                    self.transfer = Some(PendingTransfer {
                        target,
                        started_tick: self.n_ticks,
                        reply,
                    });
                }
                Err(error) => {
                    let _ = reply.send(Err(self.refusal(error)));
                }
            },
            Input::Snapshot(reply) => self.snapshot_waiters.push(reply),
            Input::Campaign => self.raft.campaign(),
            Input::WithholdCandidacy(withheld) => self.raft.withhold_candidacy(withheld),
            Input::Stop => self.stop_requested = true,
        }
    }

    fn track_proposal(&mut self, term: Term, index: LogIndex, reply: Reply<Applied>) {
        if let Some(previous) = self.proposals.insert(index, PendingProposal { term, reply }) {
            // Our own uncommitted entry at this index was replaced (we lost and regained
            // leadership within one batch): the old proposal is gone.
            let _ = previous.reply.send(Err(Error::Dropped { index, term }));
        }
    }

    fn leader_addr(&self, leader: Option<NodeId>) -> Option<String> {
        leader.and_then(|id| self.transport.address(id))
    }

    fn refusal(&self, error: ProposeError) -> Error {
        match error {
            ProposeError::NotLeader { leader_hint } => Error::NotLeader {
                leader_hint,
                leader_addr: self.leader_addr(leader_hint),
            },
            ProposeError::Busy { .. } => Error::Busy,
            other => Error::Rejected(other),
        }
    }

    fn tick(&mut self) {
        self.raft.tick();
        self.n_ticks += 1;
        let expired = self
            .transfer
            .as_ref()
            .is_some_and(|t| self.n_ticks - t.started_tick > self.transfer_timeout_ticks);
        if expired {
            if let Some(transfer) = self.transfer.take() {
                let _ = transfer.reply.send(Err(Error::TransferFailed {
                    target: transfer.target,
                    leader: self.raft.leader(),
                }));
            }
        }
    }

    /// Handles Readys until the core has nothing more (bounded), then reacts to role changes,
    /// takes a snapshot if due, and publishes the new state. True when the core still has work
    /// (the bound was hit): the loop then polls its inputs without waiting.
    async fn handle_ready(&mut self) -> Result<bool> {
        let mut more = true;
        for _ in 0..READY_ROUNDS_MAX {
            if !self.raft.has_ready() {
                more = false;
                break;
            }
            let ready = self.raft.take_ready();
            self.process_ready(ready).await?;
        }
        self.check_leadership();
        self.maybe_snapshot().await?;
        self.publish_state();
        Ok(more)
    }

    /// One Ready, in the order of the core's contract.
    async fn process_ready(&mut self, ready: Ready) -> Result<()> {
        let Ready {
            soft_state,
            hard_state,
            snapshot_chunks,
            entries,
            mut messages,
            send_before_persist,
            snapshot_sends,
            snapshot_install,
            committed_entries,
            read_states,
        } = ready;
        if let Some(soft_state) = soft_state {
            tracing::info!(
                term = self.raft.term().0,
                role = ?soft_state.role,
                leader = soft_state.leader.map(|id| id.0),
                "role changed"
            );
        }

        for entry in &entries {
            if let Some((id, address)) = added_member_address(entry) {
                self.transport.set_address(id, address);
            }
        }
        if send_before_persist {
            // A leader's appends: its fsync overlaps the followers' (the core's rule 1
            // exception), and nothing is fed to the core before it is done (rule 4).
            self.send_messages(std::mem::take(&mut messages));
        }

        if !snapshot_chunks.is_empty() || snapshot_install.is_some() {
            // Installing the leader's snapshot replaces the state machine: take it back first.
            self.finish_snapshot_job(true).await?;
        }

        // Rule 1: persist before sending. Snapshot chunks, then entries (one fsync for all of
        // them: group commit), then the hard state.
        if !snapshot_chunks.is_empty() || !entries.is_empty() || hard_state.is_some() {
            // The snapshot records its members' addresses (the router learned them from the
            // leader's InstallSnapshot message).
            let chunks: Vec<_> = snapshot_chunks
                .into_iter()
                .map(|chunk| {
                    let addresses = self.member_addresses(&chunk.meta.membership);
                    (chunk, addresses)
                })
                .collect();
            let n_fsyncs = self
                .with_storage(move |storage| -> Result<u64> {
                    for (chunk, addresses) in chunks {
                        storage.write_snapshot_chunk(chunk, &addresses)?;
                    }
                    if !entries.is_empty() {
                        storage.append_entries(&entries)?;
                        storage.sync()?;
                    }
                    if let Some(hard_state) = hard_state {
                        storage.write_hard_state(&hard_state)?;
                    }
                    Ok(storage.n_fsyncs())
                })
                .await?;
            self.shared.n_fsyncs.store(n_fsyncs, Ordering::Relaxed);
        }

        // Only now may anything that depends on the above leave this node.
        self.send_messages(messages);
        for send in snapshot_sends {
            self.send_snapshot_chunk(send);
        }

        // Rule 2: restore, then apply.
        if let Some(meta) = snapshot_install {
            self.install_snapshot(meta).await?;
        }
        self.deferred_applies.extend(committed_entries);
        self.apply_deferred();

        // Rule 3: reads once their index applied.
        for read_state in read_states {
            // Served just below by `release_reads` if the index already applied.
            if let Some((_, read)) = self.reads_waiting_for_leader.remove(&read_state.context) {
                self.reads_waiting_for_apply
                    .entry(read_state.index)
                    .or_default()
                    .push(read);
            }
        }
        self.release_reads();
        Ok(())
    }

    fn send_messages(&self, messages: Vec<Message>) {
        for message in messages {
            self.transport
                .send(codec::message_to_proto(self.group_id, message));
        }
    }

    fn send_snapshot_chunk(&mut self, send: SnapshotSend) {
        let (data, done) =
            match self
                .storage()
                .read_snapshot_chunk(send.meta.index, send.offset, SNAPSHOT_CHUNK_BYTES_MAX)
            {
                Ok(chunk) => chunk,
                Err(error) => {
                    // Not fatal: the core resends a stalled snapshot after an election timeout.
                    tracing::warn!(%error, peer = send.to.0, "cannot read a snapshot chunk to send");
                    return;
                }
            };
        let message = Message {
            from: self.id,
            to: send.to,
            term: send.term,
            body: shoal_raft::MessageBody::InstallSnapshot {
                meta: send.meta.clone(),
                offset: send.offset,
                data,
                done,
            },
        };
        let mut message = codec::message_to_proto(self.group_id, message);
        if let Some(proto::raft_message::Body::InstallSnapshot(body)) = message.body.as_mut() {
            body.addresses = self
                .member_addresses(&send.meta.membership)
                .into_iter()
                .map(|(id, address)| (id.0, address))
                .collect();
        }
        self.transport.send(message);
    }

    async fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<()> {
        tracing::info!(
            index = meta.index.0,
            term = meta.term.0,
            "installing snapshot from the leader"
        );
        let Some(mut state_machine) = self.state_machine.take() else {
            unreachable!("the snapshot job is finished before an install");
        };
        let index = meta.index;
        let (state_machine, restored) = self
            .with_storage(move |storage| {
                let restored = storage.restore_state_machine(index, &mut state_machine);
                (state_machine, restored)
            })
            .await;
        self.state_machine = Some(state_machine);
        restored?;
        self.applied = meta.index;
        // Proposals inside the replaced log can no longer be tracked.
        let leader = self.raft.leader();
        let leader_addr = self.leader_addr(leader);
        while let Some(entry) = self.proposals.first_entry() {
            if *entry.key() > meta.index {
                break;
            }
            let _ = entry.remove().reply.send(Err(Error::LeadershipLost {
                leader_hint: leader,
                leader_addr: leader_addr.clone(),
            }));
        }
        Ok(())
    }

    fn apply(&mut self, entry: Entry) {
        assert_eq!(
            entry.index,
            self.applied.next(),
            "committed entries must apply in order without gaps"
        );
        let index = entry.index;
        let mut membership = None;
        let reply = match &entry.kind {
            EntryKind::Command => match self.state_machine.as_mut() {
                Some(state_machine) => state_machine.apply(index, &entry.data),
                None => unreachable!("entries apply only while the loop holds the state machine"),
            },
            EntryKind::Noop => Vec::new(),
            EntryKind::ConfigChange(change) => {
                if let Some((id, address)) = added_member_address(&entry) {
                    self.transport.set_address(id, address);
                }
                tracing::info!(index = index.0, ?change, "membership change applied");
                membership = Some(self.raft.membership().clone());
                Vec::new()
            }
        };
        self.applied = index;
        let mut reply = Some(reply);
        while let Some(pending) = self.proposals.first_entry() {
            if *pending.key() > index {
                break;
            }
            let pending_index = *pending.key();
            let proposal = pending.remove();
            let result = if pending_index < index {
                // Skipped without being applied here (cannot happen without a snapshot).
                Err(Error::LeadershipLost {
                    leader_hint: self.raft.leader(),
                    leader_addr: self.leader_addr(self.raft.leader()),
                })
            } else if proposal.term == entry.term {
                Ok(Applied {
                    index,
                    reply: reply.take().unwrap_or_default(),
                    membership: membership.clone(),
                })
            } else {
                Err(Error::Dropped {
                    index,
                    term: entry.term,
                })
            };
            let _ = proposal.reply.send(result);
        }
    }

    /// Applies the committed entries waiting for the state machine, if the loop holds it.
    fn apply_deferred(&mut self) {
        if self.state_machine.is_none() {
            return;
        }
        while let Some(entry) = self.deferred_applies.pop_front() {
            self.apply(entry);
        }
    }

    fn release_reads(&mut self) {
        let Some(state_machine) = &self.state_machine else {
            return;
        };
        for read in self.deferred_local_reads.drain(..) {
            read(Ok(state_machine));
        }
        while let Some(entry) = self.reads_waiting_for_apply.first_entry() {
            if *entry.key() > self.applied {
                break;
            }
            for read in entry.remove() {
                self.n_reads -= 1;
                read(Ok(state_machine));
            }
        }
    }

    /// Fails what a lost leadership orphaned: proposals (outcome unknown), reads the core
    /// forgot (the core drops pending read indexes when the term or role changes), and
    /// resolves a leadership transfer.
    fn check_leadership(&mut self) {
        let role = self.raft.role();
        let term = self.raft.term();
        let leader = self.raft.leader();
        if role != Role::Leader {
            if !self.proposals.is_empty() {
                let leader_addr = self.leader_addr(leader);
                for (_, proposal) in std::mem::take(&mut self.proposals) {
                    let _ = proposal.reply.send(Err(Error::LeadershipLost {
                        leader_hint: leader,
                        leader_addr: leader_addr.clone(),
                    }));
                }
            }
            if let Some(transfer) = self.transfer.take() {
                let result = match leader {
                    Some(new_leader) if new_leader == transfer.target => Ok(()),
                    Some(other) => Err(Error::TransferFailed {
                        target: transfer.target,
                        leader: Some(other),
                    }),
                    None => {
                        // An election is under way; wait for its outcome.
                        self.transfer = Some(transfer);
                        return self.fail_stale_reads(role, term, leader);
                    }
                };
                let _ = transfer.reply.send(result);
            }
        }
        self.fail_stale_reads(role, term, leader);
    }

    fn fail_stale_reads(&mut self, role: Role, term: Term, leader: Option<NodeId>) {
        if self.reads_waiting_for_leader.is_empty() {
            return;
        }
        let stale: Vec<u64> = self
            .reads_waiting_for_leader
            .iter()
            .filter(|(_, (read_term, _))| role != Role::Leader || *read_term != term)
            .map(|(context, _)| *context)
            .collect();
        let leader_addr = self.leader_addr(leader);
        for context in stale {
            if let Some((_, read)) = self.reads_waiting_for_leader.remove(&context) {
                self.n_reads -= 1;
                read(Err(Error::NotLeader {
                    leader_hint: leader,
                    leader_addr: leader_addr.clone(),
                }));
            }
        }
    }

    /// Rule 5: every `snapshot_interval_entries` applied entries, snapshot the state machine
    /// durably (on a blocking thread: see [`SnapshotJob`]); then compact the core's log and drop
    /// the WAL prefix (see `maybe_compact`).
    async fn maybe_snapshot(&mut self) -> Result<()> {
        self.finish_snapshot_job(false).await?;
        self.maybe_compact().await?;
        // A snapshot asked for is not held back by a compaction still waiting for a follower
        // (one that is down could hold it for half an interval); the newer one replaces it.
        if self.snapshot_job.is_some()
            || (self.pending_compaction.is_some() && self.snapshot_waiters.is_empty())
        {
            return Ok(());
        }
        let snapshot_index = self.snapshot_index();
        if !self.snapshot_waiters.is_empty() && self.applied <= snapshot_index {
            // The latest snapshot is the current state.
            self.answer_snapshot_waiters();
            return Ok(());
        }
        if self.applied.0 < snapshot_index.0 + self.snapshot_interval_entries
            && self.snapshot_waiters.is_empty()
        {
            return Ok(());
        }
        let Some(meta) = self.raft.snapshot_meta(self.applied) else {
            // Nothing applied yet: waiters are answered once something is.
            return Ok(());
        };
        let addresses = self.member_addresses(&meta.membership);
        let pending = self.storage().begin_snapshot(&meta, &addresses)?;
        let Some(state_machine) = self.state_machine.take() else {
            unreachable!("no snapshot job is running");
        };
        let task = tokio::task::spawn_blocking(move || {
            let result = pending.write(&state_machine);
            (state_machine, result)
        });
        self.snapshot_job = Some(SnapshotJob {
            index: meta.index,
            started: Instant::now(),
            task,
        });
        Ok(())
    }

    /// Takes the state machine back from the snapshot job once it finished (waiting for it,
    /// without blocking the runtime, if `wait`), records the snapshot for compaction, and
    /// applies and serves what waited meanwhile.
    async fn finish_snapshot_job(&mut self, wait: bool) -> Result<()> {
        let Some(job) = self.snapshot_job.take_if(|job| wait || job.task.is_finished()) else {
            return Ok(());
        };
        let (state_machine, result) = match job.task.await {
            Ok(returned) => returned,
            Err(_) => return Err(Error::Fatal("the snapshot job panicked".into())),
        };
        self.state_machine = Some(state_machine);
        let stored = match result {
            Ok(stored) => stored,
            Err(error) => {
                for waiter in self.snapshot_waiters.drain(..) {
                    let _ = waiter.send(Err(error.clone()));
                }
                return Err(error);
            }
        };
        tracing::info!(
            index = job.index.0,
            elapsed_ms = job.started.elapsed().as_millis() as u64,
            n_deferred = self.deferred_applies.len(),
            "snapshot taken"
        );
        let meta = stored.meta.clone();
        if self.storage_mut().snapshot_saved(stored) {
            self.pending_compaction = Some(meta);
        }
        self.answer_snapshot_waiters();
        self.apply_deferred();
        self.release_reads();
        Ok(())
    }

    /// Index of the latest durable snapshot (zero before the first).
    fn snapshot_index(&self) -> LogIndex {
        self.storage()
            .latest_snapshot()
            .map_or(LogIndex::ZERO, |s| s.meta.index)
    }

    /// Answers `snapshot_now` callers with the latest durable snapshot.
    fn answer_snapshot_waiters(&mut self) {
        let Some(meta) = self.storage().latest_snapshot().map(|latest| latest.meta.clone()) else {
            return;
        };
        for waiter in std::mem::take(&mut self.snapshot_waiters) {
            let data = self.storage().open_snapshot_data(meta.index);
            let _ = waiter.send(data.map(|data| (meta.clone(), data)));
        }
    }

    /// The core drops every entry up to the snapshot when it compacts, so a follower only a
    /// few entries behind at that moment would need the whole snapshot. A leader therefore
    /// compacts once every member holds the snapshot's index, or at the latest half a
    /// snapshot interval later (bounding the log); other nodes compact at once.
    async fn maybe_compact(&mut self) -> Result<()> {
        let Some(meta) = &self.pending_compaction else {
            return Ok(());
        };
        let due = !self.raft.is_leader()
            || self.applied.0 >= meta.index.0 + self.snapshot_interval_entries / 2
            || self
                .raft
                .status()
                .progress
                .iter()
                .all(|(_, match_index, _)| *match_index >= meta.index);
        if !due {
            return Ok(());
        }
        let Some(meta) = self.pending_compaction.take() else {
            return Ok(());
        };
        self.raft.compact_log(meta.clone());
        let index = meta.index;
        self.with_storage(move |storage| storage.compact_log(index))
            .await?;
        tracing::debug!(index = meta.index.0, "log compacted");
        Ok(())
    }

    /// Addresses of `membership`'s members that this node knows.
    fn member_addresses(&self, membership: &Membership) -> BTreeMap<NodeId, String> {
        let addresses = self.transport.addresses();
        membership
            .members()
            .filter_map(|id| addresses.get(&id).map(|a| (id, a.clone())))
            .collect()
    }

    fn status(&self) -> GroupStatus {
        let status = self.raft.status();
        GroupStatus {
            group_id: self.group_id,
            id: self.id,
            term: status.term,
            role: status.role,
            leader: status.leader,
            leader_addr: self.leader_addr(status.leader),
            commit_index: status.commit_index,
            applied_index: self.applied,
            first_index: status.first_index,
            last_index: status.last_index,
            snapshot_index: self.snapshot_index(),
            addresses: self.member_addresses(&status.membership),
            membership: status.membership,
            progress: status
                .progress
                .into_iter()
                .map(|(id, match_index, next_index)| PeerProgress {
                    id,
                    match_index,
                    next_index,
                })
                .collect(),
            n_fsyncs: self.storage().n_fsyncs(),
        }
    }

    fn publish_state(&self) {
        let next = GroupState {
            term: self.raft.term(),
            role: self.raft.role(),
            leader: self.raft.leader(),
            commit_index: self.raft.commit_index(),
            applied_index: self.applied,
            last_index: self.raft.last_index(),
            snapshot_index: self.snapshot_index(),
            membership: self.raft.membership().clone(),
            stopped: false,
        };
        self.shared.state.send_if_modified(|state| {
            if *state == next {
                false
            } else {
                *state = next;
                true
            }
        });
    }

    fn fail_everything(&mut self, reason: Error) {
        for (_, proposal) in std::mem::take(&mut self.proposals) {
            let _ = proposal.reply.send(Err(reason.clone()));
        }
        for (_, (_, read)) in std::mem::take(&mut self.reads_waiting_for_leader) {
            read(Err(reason.clone()));
        }
        for (_, reads) in std::mem::take(&mut self.reads_waiting_for_apply) {
            for read in reads {
                read(Err(reason.clone()));
            }
        }
        for read in std::mem::take(&mut self.deferred_local_reads) {
            read(Err(reason.clone()));
        }
        for waiter in std::mem::take(&mut self.snapshot_waiters) {
            let _ = waiter.send(Err(reason.clone()));
        }
        self.n_reads = 0;
        if let Some(transfer) = self.transfer.take() {
            let _ = transfer.reply.send(Err(reason));
        }
    }
}
