//! What the leader does besides answering requests: decide lease expiry (and record leases'
//! remaining time so the next leader keeps it), compact old revisions periodically, and
//! compare the members' state hashes.
//!
//! Lease rules:
//! 1. Only a leader whose `LeaderEpoch` command applied keeps lease deadlines; a member that
//!    is not leader forgets them, and its keep-alives answer `NOT_LEADER`.
//! 2. A new leader starts each lease's deadline at the remaining time last checkpointed in the
//!    log (the full TTL if none), but never below [`LEASE_FAILOVER_GRACE`] (capped at the
//!    TTL), so clients have time to find it: a failover neither resets leases nor expires
//!    them in a storm.
//! 3. Expiries are proposed with the leader's term (void if a newer leader exists), at most
//!    `ServerOptions::lease_expiries_per_second_max` per second (default
//!    [`LEASE_EXPIRIES_PER_SECOND_MAX`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use shoal_raft::{Role, Term};
use tokio::time::Instant;

use super::{lock, Inner, MetaServer};
use crate::limits::*;
use crate::proto::{self, command, command_reply, Command, ErrorCode};
use crate::store;

/// Least time a lease has left after a failover (capped at its TTL).
pub const LEASE_FAILOVER_GRACE: Duration = Duration::from_secs(2);
/// How often the leader looks at its duties.
const DUTY_INTERVAL: Duration = Duration::from_millis(100);
/// A proposed expiry that did not apply is retried after this long.
const EXPIRY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The leader's lease deadlines. Empty on members that do not lead.
#[derive(Default)]
pub(crate) struct LeaseClock {
    /// The term these deadlines belong to; `None` until the epoch applied.
    term: Option<Term>,
    deadlines: HashMap<i64, Instant>,
    /// Leases whose expiry was proposed, with when to retry.
    expiring: HashMap<i64, Instant>,
}

/// Runs the duties for as long as the group runs.
pub(crate) async fn run(inner: Arc<Inner>) {
    let server = MetaServer { inner: inner.clone() };
    let mut duties = LeaderDuties::default();
    let mut interval = tokio::time::interval(DUTY_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n_alarm_changes_seen = 0;
    loop {
        interval.tick().await;
        let state = inner.group.state();
        if state.stopped {
            return;
        }
        let info = *inner.applied.borrow();
        if info.n_alarm_changes != n_alarm_changes_seen {
            n_alarm_changes_seen = info.n_alarm_changes;
            let me = inner.node_id.0;
            if let Ok(alarm) = inner.group.read_local(move |s| s.alarm_for(me).cloned()).await {
                // A diverged member must not lead: it stops standing for election (it still
                // votes and replicates, so the others keep their quorum).
                if let Err(error) = inner.group.withhold_candidacy(alarm.is_some()) {
                    tracing::warn!(%error, "cannot change this member's candidacy");
                }
                *lock(&inner.corrupt) = alarm.map(|a| {
                    format!(
                        "this member's state diverged from the cluster's at revision {} ({}); it refuses \
                         to serve: stop it, wipe its data dir, and add it again as a new member",
                        a.revision, a.message
                    )
                });
            }
        }
        if state.role == Role::Leader && lock(&inner.corrupt).is_some() {
            // A diverged member refuses every request; as leader it would stop the whole
            // cluster. It hands leadership to a healthy voter (it no longer stands for
            // election, so it is not elected again).
            let me = inner.node_id;
            let target = state.membership.voters.iter().copied().find(|&id| id != me);
            if let Some(target) = target {
                if let Err(error) = inner.group.transfer_leader(target).await {
                    tracing::warn!(%error, target = target.0, "diverged leader could not hand over leadership");
                }
            }
            duties = LeaderDuties::default();
            continue;
        }
        if state.role != Role::Leader {
            let mut clock = lock(&inner.leases);
            if clock.term.is_some() || !clock.deadlines.is_empty() {
                *clock = LeaseClock::default();
            }
            duties = LeaderDuties::default();
            continue;
        }
        duties.tick(&server, state.term).await;
    }
}

/// The leader's periodic work, in one place so it can be driven step by step.
#[derive(Default)]
pub struct LeaderDuties {
    epoch_term: Option<Term>,
    last_checkpoint: Option<Instant>,
    expiries_this_second: (Option<Instant>, usize),
    /// (when, revision) samples for periodic compaction.
    revision_samples: Vec<(Instant, i64)>,
    last_hash_check: Option<Instant>,
    /// The store's lease-change count the deadlines reflect (resync when it moves).
    n_lease_changes_synced: Option<u64>,
}

impl LeaderDuties {
    async fn tick(&mut self, server: &MetaServer, term: Term) {
        let inner = &server.inner;
        if self.epoch_term != Some(term) {
            if !self.announce(server, term).await {
                return;
            }
            self.epoch_term = Some(term);
        }
        let now = Instant::now();
        self.sync_leases(server, now).await;
        self.expire_leases(server, term, now).await;
        if self
            .last_checkpoint
            .is_none_or(|t| now.duration_since(t) >= inner.options.lease_checkpoint_interval)
        {
            self.last_checkpoint = Some(now);
            checkpoint_leases(server, now).await;
        }
        if let Some(period) = inner.options.auto_compaction_period {
            self.compact_periodically(server, period, now).await;
        }
        if self
            .last_hash_check
            .is_none_or(|t| now.duration_since(t) >= inner.options.hash_check_interval)
        {
            self.last_hash_check = Some(now);
            let server = server.clone();
            tokio::spawn(async move { check_hashes(&server).await });
        }
    }

    /// Proposes this term's `LeaderEpoch`; once applied, starts the lease deadlines (rule 2).
    async fn announce(&mut self, server: &MetaServer, term: Term) -> bool {
        let epoch = command::Op::LeaderEpoch(proto::LeaderEpoch {
            term: term.0,
            leader: server.inner.node_id.0,
        });
        if propose_internal(server, epoch).await.is_err() {
            return false;
        }
        // Read the change count first: a change racing the read only causes a resync.
        let n_lease_changes = server.inner.applied.borrow().n_lease_changes;
        let leases = match server.inner.group.read_local(|s| s.leases()).await {
            Ok(leases) => leases,
            Err(_) => return false,
        };
        self.n_lease_changes_synced = Some(n_lease_changes);
        let now = Instant::now();
        let mut clock = lock(&server.inner.leases);
        clock.term = Some(term);
        clock.expiring.clear();
        clock.deadlines = leases
            .into_iter()
            .map(|(id, ttl_seconds, remaining_ms)| {
                let ttl = Duration::from_secs(ttl_seconds.max(0) as u64);
                let remaining = if remaining_ms >= 0 {
                    Duration::from_millis(remaining_ms as u64)
                } else {
                    ttl
                };
                (id, now + remaining.max(LEASE_FAILOVER_GRACE.min(ttl)))
            })
            .collect();
        tracing::info!(
            term = term.0,
            n_leases = clock.deadlines.len(),
            "leader: lease deadlines restored"
        );
        true
    }

    /// Adds leases granted since (full TTL) and drops revoked ones; reads the leases only
    /// when the store says its set of leases changed.
    async fn sync_leases(&mut self, server: &MetaServer, now: Instant) {
        let n_lease_changes = server.inner.applied.borrow().n_lease_changes;
        if self.n_lease_changes_synced == Some(n_lease_changes) {
            return;
        }
        let Ok(leases) = server.inner.group.read_local(|s| s.leases()).await else {
            return;
        };
        self.n_lease_changes_synced = Some(n_lease_changes);
        let mut clock = lock(&server.inner.leases);
        let alive: HashMap<i64, i64> = leases.iter().map(|&(id, ttl, _)| (id, ttl)).collect();
        clock.deadlines.retain(|id, _| alive.contains_key(id));
        clock.expiring.retain(|id, _| alive.contains_key(id));
        for (id, ttl_seconds) in alive {
            clock
                .deadlines
                .entry(id)
                .or_insert_with(|| now + Duration::from_secs(ttl_seconds.max(0) as u64));
        }
    }

    async fn expire_leases(&mut self, server: &MetaServer, term: Term, now: Instant) {
        let per_second_max = server.inner.options.lease_expiries_per_second_max.max(1);
        let budget = match self.expiries_this_second {
            (Some(start), n) if now.duration_since(start) < Duration::from_secs(1) => {
                per_second_max.saturating_sub(n)
            }
            _ => {
                self.expiries_this_second = (Some(now), 0);
                per_second_max
            }
        };
        if budget == 0 {
            return;
        }
        let ids: Vec<i64> = {
            let mut clock = lock(&server.inner.leases);
            let mut due: Vec<(Instant, i64)> = clock
                .deadlines
                .iter()
                .filter(|(id, deadline)| {
                    **deadline <= now && clock.expiring.get(id).is_none_or(|retry| *retry <= now)
                })
                .map(|(id, deadline)| (*deadline, *id))
                .collect();
            due.sort_unstable();
            due.truncate(budget);
            for (_, id) in &due {
                clock.expiring.insert(*id, now + EXPIRY_RETRY_AFTER);
            }
            due.into_iter().map(|(_, id)| id).collect()
        };
        if ids.is_empty() {
            return;
        }
        self.expiries_this_second.1 += ids.len();
        tracing::info!(n_leases = ids.len(), term = term.0, "leader: expiring leases");
        let _ = propose_internal(
            server,
            command::Op::LeaseExpire(proto::LeaseExpire { ids, term: term.0 }),
        )
        .await;
    }

    async fn compact_periodically(&mut self, server: &MetaServer, period: Duration, now: Instant) {
        let revision = server.inner.applied.borrow().revision;
        if self
            .revision_samples
            .last()
            .is_none_or(|(t, _)| now.duration_since(*t) >= period / 10)
        {
            self.revision_samples.push((now, revision));
        }
        // The newest sample at least one period old says where to compact.
        let Some(idx) = self
            .revision_samples
            .iter()
            .rposition(|(t, _)| now.duration_since(*t) >= period)
        else {
            return;
        };
        let (_, target) = self.revision_samples[idx];
        self.revision_samples.drain(..=idx);
        let compact_revision = server.inner.applied.borrow().compact_revision;
        if target > compact_revision {
            tracing::info!(revision = target, "leader: periodic compaction");
            let _ = propose_internal(
                server,
                command::Op::Compact(proto::CompactRequest { revision: target }),
            )
            .await;
        }
    }
}

async fn checkpoint_leases(server: &MetaServer, now: Instant) {
    let checkpoints: Vec<proto::LeaseCheckpoint> = {
        let clock = lock(&server.inner.leases);
        let mut all: BTreeMap<i64, i64> = BTreeMap::new();
        for (id, deadline) in &clock.deadlines {
            all.insert(*id, deadline.saturating_duration_since(now).as_millis() as i64);
        }
        all.into_iter()
            .map(|(id, remaining_ms)| proto::LeaseCheckpoint { id, remaining_ms })
            .collect()
    };
    for batch in checkpoints.chunks(LEASE_CHECKPOINTS_PER_COMMAND_MAX) {
        let op = command::Op::LeaseCheckpoints(proto::LeaseCheckpoints {
            checkpoints: batch.to_vec(),
        });
        if propose_internal(server, op).await.is_err() {
            return;
        }
    }
}

async fn propose_internal(
    server: &MetaServer,
    op: command::Op,
) -> Result<command_reply::Reply, tonic::Status> {
    server
        .write(Command {
            session: None,
            op: Some(op),
        })
        .await
}

/// NOT_LEADER, with the leader's address when known, unless this member leads.
pub(crate) async fn require_leader(inner: &Arc<Inner>) -> Result<(), proto::Error> {
    if inner.group.term_and_role().1 == Role::Leader {
        return Ok(());
    }
    let state = inner.group.state();
    let addr = match state.leader {
        Some(leader) => inner
            .group
            .status()
            .await
            .ok()
            .and_then(|s| s.addresses.get(&leader).cloned()),
        None => None,
    };
    Err(proto::Error {
        code: ErrorCode::NotLeader as i32,
        message: "lease deadlines live on the leader; ask the leader".to_string(),
        leader_id: state.leader.map_or(0, |id| id.0),
        leader_addr: addr.unwrap_or_default(),
    })
}

/// Keep-alive at the leader: the lease's deadline moves to now + TTL.
pub(crate) async fn keep_alive(inner: &Arc<Inner>, id: i64) -> Result<i64, proto::Error> {
    require_leader(inner).await?;
    let term = inner.group.term_and_role().0;
    let ttl = inner
        .group
        .read_local(move |s| s.lease_ttl_seconds(id))
        .await
        .map_err(super::raft_error)?
        .ok_or_else(|| store::lease_not_found(id))?;
    let mut clock = lock(&inner.leases);
    if clock.term != Some(term) {
        return Err(store::error(
            ErrorCode::Unavailable,
            "the new leader is still restoring lease deadlines; retry in a moment",
        ));
    }
    if clock.expiring.contains_key(&id) {
        return Err(store::error(
            ErrorCode::LeaseNotFound,
            format!("lease {id} expired"),
        ));
    }
    clock
        .deadlines
        .insert(id, Instant::now() + Duration::from_secs(ttl.max(0) as u64));
    Ok(ttl)
}

/// Starts a just-granted lease's deadline at once (the periodic sync would within
/// 100 ms), so its remaining time is known from the start.
pub(crate) fn start_deadline(inner: &Arc<Inner>, id: i64, ttl_seconds: i64) {
    let mut clock = lock(&inner.leases);
    if clock.term.is_some() {
        clock
            .deadlines
            .entry(id)
            .or_insert_with(|| Instant::now() + Duration::from_secs(ttl_seconds.max(0) as u64));
    }
}

/// Remaining time of a lease as this member (if leader) sees it, -1 otherwise.
pub(crate) fn remaining_ms(inner: &Arc<Inner>, id: i64) -> i64 {
    let clock = lock(&inner.leases);
    clock.deadlines.get(&id).map_or(-1, |d| {
        d.saturating_duration_since(Instant::now()).as_millis() as i64
    })
}

/// Asks every member for its state hash at the leader's revision; a member that disagrees
/// with the majority gets a CORRUPT alarm (and stops serving when it applies it).
async fn check_hashes(server: &MetaServer) {
    let Ok(status) = server.inner.group.status().await else {
        return;
    };
    let revision = server.inner.applied.borrow().revision;
    if revision == 0 {
        return;
    }
    let mut hashes: BTreeMap<u64, u64> = BTreeMap::new();
    for (id, addr) in &status.addresses {
        if !status.membership.voters.contains(id) && !status.membership.learners.contains(id) {
            continue;
        }
        let hash = if *id == server.inner.node_id {
            server
                .inner
                .group
                .read_local(move |s| s.hash_at(revision))
                .await
                .ok()
                .and_then(|r| r.ok())
                .map(|(h, _)| h)
        } else {
            remote_hash(addr, revision).await
        };
        if let Some(hash) = hash {
            hashes.insert(id.0, hash);
        }
    }
    for (member_id, message) in diverged_members(&hashes, status.membership.voters.len()) {
        tracing::error!(
            member_id,
            revision,
            "divergence: member's state hash differs from the majority's"
        );
        let alarm = proto::AlarmMember {
            member_id,
            alarm: proto::AlarmType::Corrupt as i32,
            revision,
            message,
        };
        let _ = propose_internal(server, command::Op::Alarm(alarm)).await;
    }
}

async fn remote_hash(addr: &str, revision: i64) -> Option<u64> {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5));
    let channel = endpoint.connect().await.ok()?;
    let mut client = proto::maintenance_client::MaintenanceClient::new(channel);
    let response = client
        .hash_kv(proto::HashKvRequest { revision })
        .await
        .ok()?
        .into_inner();
    (response.revision == revision).then_some(response.hash)
}

/// Members whose hash differs from one that a majority of voters share (none without such
/// a majority: then nobody can tell who is right).
pub fn diverged_members(hashes: &BTreeMap<u64, u64>, n_voters: usize) -> Vec<(u64, String)> {
    let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
    for hash in hashes.values() {
        *counts.entry(*hash).or_default() += 1;
    }
    let Some((&majority_hash, &n)) = counts.iter().max_by_key(|(_, n)| **n) else {
        return Vec::new();
    };
    if n < n_voters / 2 + 1 {
        return Vec::new();
    }
    hashes
        .iter()
        .filter(|(_, hash)| **hash != majority_hash)
        .map(|(id, hash)| {
            (
                *id,
                format!("state hash {hash:016x}, while {n} members have {majority_hash:016x}"),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_needs_a_majority_to_name_the_odd_member() {
        // Goal: the member whose hash differs from a majority's is named; without a majority
        // nobody is.
        let hashes: BTreeMap<u64, u64> = [(1, 7), (2, 7), (3, 9)].into_iter().collect();
        let odd = diverged_members(&hashes, 3);
        assert_eq!(odd.len(), 1);
        assert_eq!(odd[0].0, 3);
        let split: BTreeMap<u64, u64> = [(1, 7), (2, 9)].into_iter().collect();
        assert!(diverged_members(&split, 3).is_empty());
        let agreed: BTreeMap<u64, u64> = [(1, 7), (2, 7), (3, 7)].into_iter().collect();
        assert!(diverged_members(&agreed, 3).is_empty());
    }
}
