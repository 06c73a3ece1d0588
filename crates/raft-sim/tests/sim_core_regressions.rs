//! Minimal reproductions of defects the simulator found in `shoal-raft`, each the smallest
//! scenario that shows it. All are fixed and stay as regression tests; each comment says what
//! the core did wrong and where.

use shoal_raft::{ConfigChange, LogIndex, NodeId};
use shoal_raft_sim::{Command, KvWrite, Sim, SimConfig};

fn a_follower(sim: &Sim, leader: NodeId) -> NodeId {
    sim.node_ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("three nodes")
}

/// Found by seed 0 (and most seeds with `inflight_messages_max` small): a follower holds
/// every entry the leader sent but all its acknowledgements were lost while the leader's
/// in-flight window was full. `handle_heartbeat_response` (Replicate) only probes when the
/// follower is *behind* `next_index - 1`; a follower exactly at `next_index - 1` is never
/// probed, the window never frees, and no AppendEntries is ever sent to it again: it stops
/// receiving entries and commits forever. With every follower in that state the leader
/// cannot commit at all (seed 0 ends with commit stuck at 59 for 30 s of healed network).
/// etcd frees one in-flight slot per heartbeat response when the window is full and sends
/// an append whenever `match < last_index`.
#[test]
fn sim_regression_lost_acks_with_full_window_do_not_stall_a_follower() {
    // Goal: a follower whose acknowledgements were lost while the window was full catches up.
    let mut config = SimConfig::scenario(3, 11);
    config.raft.inflight_messages_max = 1;
    let mut sim = Sim::new(config);
    let leader = sim.check_one_leader();
    sim.one(1, 3, false);
    let follower = a_follower(&sim, leader);
    sim.block_one_way(follower, leader);
    sim.one(2, 2, false);
    sim.heal();
    let index = sim.one(3, 2, false);
    let caught_up = sim.run_until(|s| s.applied_index(follower) >= index, 100);
    assert!(
        caught_up,
        "follower {follower} never received entry {index}: leader progress {:?}",
        sim.raft(leader).map(|r| r.status().progress)
    );
}

/// Found by seed 17: the leader pipelined AppendEntries to a follower that had crashed
/// (lost), filling the window, then compacted its log past the follower's `next_index - 1`.
/// When the follower returns, `handle_heartbeat_response` wants to probe at
/// `next_index - 1` but `term_at` is `None` (compacted), so it sends nothing; with the window
/// full nothing else is sent either, and the follower is never sent the snapshot it needs.
/// The fix: fall back to Probe (whose next send starts the snapshot) when the probe index
/// was compacted.
#[test]
fn sim_regression_compaction_behind_a_full_window_does_not_strand_a_follower() {
    // Goal: a follower that was down while the leader compacted past it catches up by snapshot.
    let mut config = SimConfig::scenario(3, 12);
    config.raft.inflight_messages_max = 2;
    config.snapshot_interval_entries = 5;
    let mut sim = Sim::new(config);
    let leader = sim.check_one_leader();
    sim.one(1, 3, false);
    let follower = a_follower(&sim, leader);
    sim.crash(follower);
    for cmd in 2..20 {
        sim.one(cmd, 2, false);
    }
    sim.restart(follower);
    let index = sim.one(20, 2, false);
    let caught_up = sim.run_until(|s| s.applied_index(follower) >= index, 100);
    assert!(
        caught_up,
        "follower {follower} stuck at {} while the leader's log starts at {}: progress {:?}",
        sim.applied_index(follower),
        sim.raft(leader).map_or(0, |r| r.first_index().0),
        sim.raft(leader).map(|r| r.status().progress)
    );
}

/// Found by reading `lease_valid`, confirmed here: a transfer that aborts after
/// `election_timeout_ticks` re-enabled a lease renewed by a round acknowledged *after* the
/// transfer started, while voters had elected the target regardless of their own lease
/// (TimeoutNow campaigns bypass it, §3.10): the old leader served a stale lease read.
#[test]
fn sim_regression_no_stale_lease_read_after_an_aborted_transfer() {
    // Goal: a lease read at the old leader after a transfer never misses a newer leader's commit.
    let mut config = SimConfig::scenario(3, 13);
    config.raft.read_mode = shoal_raft::ReadMode::Lease;
    config.raft.check_quorum = true;
    let mut sim = Sim::new(config);
    let leader = sim.check_one_leader();
    sim.one(1, 3, false);
    let ids = sim.node_ids();
    let others: Vec<NodeId> = ids.iter().copied().filter(|id| *id != leader).collect();
    let (target, third) = (others[0], others[1]);
    // The target falls behind, so the transfer waits for it to catch up.
    sim.block_one_way(leader, target);
    let (_, behind) = sim.start(leader, 2).expect("leader accepts");
    sim.run_until(|s| s.raft(leader).is_some_and(|r| r.commit_index() >= behind), 20);
    sim.with_raft(leader, |r| r.transfer_leadership(target))
        .expect("up")
        .expect("leader");
    sim.run_ticks(4);
    sim.heal();
    // The moment the target campaigns, nobody's messages reach the old leader any more.
    let campaigning = sim.run_until(
        |s| {
            s.raft(target)
                .is_some_and(|r| Some(r.term()) > s.raft(leader).map(|l| l.term()))
        },
        20,
    );
    assert!(campaigning, "the transfer target campaigned");
    sim.block_one_way(target, leader);
    sim.block_one_way(third, leader);
    assert!(sim.run_until(|s| s.raft(target).is_some_and(|r| r.is_leader()), 20));
    let (_, index) = sim.start(target, 3).expect("new leader accepts");
    assert!(sim.run_until(|s| s.raft(target).is_some_and(|r| r.commit_index() >= index), 20));
    // Poll the old leader for lease reads until its lease is gone.
    for _ in 0..40 {
        if let Some(read_index) = sim.read_index(leader, 0) {
            assert!(
                read_index >= index,
                "old leader {leader} served a lease read at {read_index} after {target} committed {index}"
            );
        }
        sim.run_for(25);
    }
}

/// Followers protect a leader's lease only through `in_leader_lease`, which a restart
/// forgot (`leader` is `None` after `Raft::new`), so a follower that crashed and restarted
/// within the lease voted at once for a candidate the leader could not see; the old leader
/// then served a stale lease read. Without drift or pauses, so not the documented caveat.
#[test]
fn sim_regression_no_stale_lease_read_after_a_follower_restart() {
    // Goal: a follower's restart never lets a new leader commit while the old one's lease holds.
    let mut config = SimConfig::scenario(5, 14);
    config.raft.read_mode = shoal_raft::ReadMode::Lease;
    config.raft.check_quorum = true;
    let mut sim = Sim::new(config);
    let leader = sim.check_one_leader();
    sim.one(1, 5, false);
    let others: Vec<NodeId> = sim.node_ids().into_iter().filter(|id| *id != leader).collect();
    let (f1, f2, f3, f4) = (others[0], others[1], others[2], others[3]);
    // f3 and f4 hear neither the leader nor f2; f1 hears everyone.
    for (a, b) in [(leader, f3), (leader, f4), (f2, f3), (f2, f4)] {
        sim.block_one_way(a, b);
        sim.block_one_way(b, a);
    }
    // Long enough for f3 and f4 to stop protecting the leader's lease (they no longer hear
    // it); the leader keeps renewing its lease through f1 and f2.
    sim.run_ticks(12);
    // f1 restarts and, from now on, no longer hears the old leader.
    sim.crash(f1);
    sim.block_one_way(leader, f1);
    sim.restart(f1);
    sim.with_raft(f3, |r| r.campaign()).expect("f3 is up");
    // A correct core refuses f3 until the old lease has expired; if f3 wins anyway, the
    // old leader must not serve a lease read that misses f3's commits.
    if !sim.run_until(|s| s.raft(f3).is_some_and(|r| r.is_leader()), 5) {
        return;
    }
    let (_, index) = sim.start(f3, 2).expect("new leader accepts");
    if !sim.run_until(|s| s.raft(f3).is_some_and(|r| r.commit_index() >= index), 5) {
        return;
    }
    if let Some(read_index) = sim.read_index(leader, 0) {
        assert!(
            read_index >= index,
            "old leader {leader} served a lease read at {read_index} after {f3} committed {index}"
        );
    }
}

/// Found by seeds 557 and 811 (snapshots every 2-3 entries, 17-64 byte chunks): a snapshot
/// transfer is abandoned whenever the leader compacts again. `send_snapshot_chunk` sends
/// nothing once `latest_snapshot` differs from the one being sent, and the transfer restarts
/// from offset 0 with the newer snapshot only after an election-timeout stall. When a
/// transfer takes longer than the leader's interval between snapshots, the follower never
/// completes one and lags forever. The core should finish the transfer it started (the
/// runtime keeps that snapshot readable, contract rule 5) and restart only on a real stall.
#[test]
fn sim_regression_snapshot_transfer_is_not_outpaced_by_compaction() {
    // Goal: a follower that needs a snapshot installs one while the leader keeps compacting.
    let mut config = SimConfig::scenario(3, 15);
    config.snapshot_interval_entries = 2;
    config.snapshot_chunk_bytes = 16;
    let mut sim = Sim::new(config);
    let leader = sim.check_one_leader();
    // A state of a few KiB: about 250 chunks, close to 3 s of round trips.
    let big = Command::Kv {
        client_id: 1,
        seq: 1,
        write: KvWrite::Put {
            key: "big".into(),
            value: "x".repeat(4000),
        },
    };
    sim.with_raft(leader, |r| r.propose(big.encode()))
        .expect("up")
        .expect("leader");
    sim.one(1, 3, true);
    let follower = a_follower(&sim, leader);
    sim.disconnect(follower);
    for cmd in 2..8 {
        sim.one(cmd, 2, true);
    }
    sim.connect(follower);
    // Writes keep coming, one every 400 ms: a new snapshot every 800 ms.
    let lagging_at = sim.applied_index(follower);
    let target = sim.raft(leader).map_or(LogIndex(0), |r| r.commit_index());
    for cmd in 8..100 {
        sim.start(leader, cmd);
        sim.run_for(400);
        if sim.applied_index(follower) >= target {
            break;
        }
    }
    assert!(
        sim.applied_index(follower) >= target,
        "follower {follower} stuck at {lagging_at} (leader had committed {target} when it \
         reconnected): no snapshot completed in {} ms of steady writes",
        92 * 400
    );
}

/// Found by seeds 178 and 456 (a two-voter membership): the leader appends `Remove(itself)`
/// and loses leadership before the entry commits (here a crash; check-quorum or a higher
/// term do the same). Its own log now says it is not a voter, so it never campaigns
/// (`is_voter` reads the latest, uncommitted configuration); the other voter still uses the
/// old configuration, needs its vote, and never gets it because the removed node's log is
/// longer. No leader is ever elected again. A node whose removal is not yet committed could
/// still campaign (counting votes in its latest configuration, as the dissertation's leader
/// does while it manages a cluster it is not part of, §4.2.2), or a leader could transfer
/// leadership before removing itself.
#[test]
fn sim_regression_uncommitted_self_removal_does_not_deadlock_two_voters() {
    // Goal: after a leader's uncommitted self-removal and a crash, a leader is elected again.
    let mut sim = Sim::new(SimConfig::scenario(2, 16));
    let leader = sim.check_one_leader();
    sim.one(1, 2, true);
    let other = a_follower(&sim, leader);
    sim.block_one_way(leader, other);
    sim.propose_config_change(leader, ConfigChange::Remove(leader))
        .expect("leader accepts its own removal");
    sim.crash(leader);
    sim.restart(leader);
    sim.heal();
    let elected = sim.run_until(|s| s.leader().is_some(), 100);
    assert!(elected, "no leader in 10 s{}", sim.describe_nodes());
}
