//! The MIT 6.824 Raft lab tests (2A-2D), each as its own named test on the deterministic
//! simulator, plus membership change under load. Indices are not assumed contiguous beyond
//! what one leader produces: every new leader appends a no-op.

mod sim_labs {
    use shoal_raft::{ConfigChange, NodeId, Role};
    use shoal_raft_sim::{Sim, SimConfig, SimRng};

    fn others(sim: &Sim, node: NodeId) -> Vec<NodeId> {
        sim.node_ids().into_iter().filter(|id| *id != node).collect()
    }

    fn with_snapshots(n: usize, seed: u64, every: u64) -> SimConfig {
        let mut config = SimConfig::scenario(n, seed);
        config.snapshot_interval_entries = every;
        config
    }

    #[test]
    fn sim_many_elections() {
        // Goal: with 7 nodes and 3 random ones cut off at a time, a single leader is always
        // elected, ten times over (6.824 TestManyElections2A).
        let mut sim = Sim::new(SimConfig::scenario(7, 20));
        let mut rng = SimRng::new(20);
        sim.check_one_leader();
        let ids = sim.node_ids();
        for _ in 0..10 {
            let cut: Vec<NodeId> = (0..3).map(|_| ids[rng.index(ids.len())]).collect();
            for id in &cut {
                sim.disconnect(*id);
            }
            sim.check_one_leader();
            for id in &cut {
                sim.connect(*id);
            }
        }
        sim.check_one_leader();
    }

    #[test]
    fn sim_agreement_despite_follower_disconnection() {
        // Goal: a majority keeps committing while a follower is gone; the follower catches up
        // when it returns (6.824 TestFailAgree2B).
        let mut sim = Sim::new(SimConfig::scenario(3, 21));
        sim.one(101, 3, false);
        let leader = sim.check_one_leader();
        let follower = others(&sim, leader)[0];
        sim.disconnect(follower);
        for cmd in 102..=105 {
            sim.one(cmd, 2, false);
        }
        sim.connect(follower);
        let index = sim.one(106, 3, true);
        sim.one(107, 3, true);
        assert_eq!(sim.n_committed(index).0, 3);
    }

    #[test]
    fn sim_no_agreement_without_majority() {
        // Goal: with 3 of 5 followers gone nothing commits; after they return the log moves on
        // and the uncommitted entry may be replaced (6.824 TestFailNoAgree2B).
        let mut sim = Sim::new(SimConfig::scenario(5, 22));
        sim.one(10, 5, false);
        let leader = sim.check_one_leader();
        for follower in others(&sim, leader).into_iter().take(3) {
            sim.disconnect(follower);
        }
        let (_, index) = sim.start(leader, 20).expect("leader accepts");
        sim.run_ticks(20);
        assert_eq!(sim.n_committed(index).0, 0, "committed without a majority");
        for id in sim.node_ids() {
            sim.connect(id);
        }
        sim.one(1000, 5, true);
    }

    #[test]
    fn sim_concurrent_starts() {
        // Goal: commands started together at one leader all commit, each at its own index
        // (6.824 TestConcurrentStarts2B).
        let mut sim = Sim::new(SimConfig::scenario(3, 23));
        sim.one(1, 3, false);
        let leader = sim.check_one_leader();
        let indices: Vec<_> = (100..105)
            .map(|cmd| sim.start(leader, cmd).expect("leader").1)
            .collect();
        let mut sorted = indices.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), 5, "distinct indices");
        let last = *indices.iter().max().expect("five");
        assert!(sim.run_until(|s| s.n_committed(last).0 == 3, 30));
        for index in indices {
            assert_eq!(sim.n_committed(index).0, 3);
        }
    }

    #[test]
    fn sim_rejoin_of_partitioned_leader() {
        // Goal: a partitioned leader that accepted entries nobody else has rejoins, has them
        // overwritten, and the cluster agrees (6.824 TestRejoin2B).
        let mut sim = Sim::new(SimConfig::scenario(3, 24));
        sim.one(101, 3, true);
        let leader1 = sim.check_one_leader();
        sim.disconnect(leader1);
        for cmd in 102..=104 {
            sim.start(leader1, cmd);
        }
        sim.one(103, 2, true);
        let leader2 = sim.check_one_leader();
        sim.disconnect(leader2);
        sim.connect(leader1);
        sim.one(104, 2, true);
        sim.connect(leader2);
        sim.one(105, 3, true);
    }

    #[test]
    fn sim_fast_backup_over_long_divergent_logs() {
        // Goal: followers with 50-entry divergent suffixes are repaired quickly: the conflict
        // hints skip whole terms, so repair costs a few messages, not one per entry
        // (6.824 TestBackup2B, plus a message-count bound).
        let mut sim = Sim::new(SimConfig::scenario(5, 25));
        let mut rng = SimRng::new(25);
        sim.one(rng.range(0, 10_000), 5, true);
        let leader1 = sim.check_one_leader();
        let rest = others(&sim, leader1);
        // Leader and one follower in a minority: 50 entries that never commit.
        for id in &rest[1..] {
            sim.disconnect(*id);
        }
        for _ in 0..50 {
            sim.start(leader1, rng.range(0, 10_000));
        }
        sim.run_ticks(5);
        sim.disconnect(leader1);
        sim.disconnect(rest[0]);
        // The other three commit 50 entries.
        for id in &rest[1..] {
            sim.connect(*id);
        }
        for _ in 0..50 {
            sim.one(rng.range(0, 10_000), 3, true);
        }
        // Their leader loses one follower and appends 50 more that never commit.
        let leader2 = sim.check_one_leader();
        let other = *rest[1..].iter().find(|id| **id != leader2).expect("a follower");
        sim.disconnect(other);
        for _ in 0..50 {
            sim.start(leader2, rng.range(0, 10_000));
        }
        sim.run_ticks(5);
        // Bring back the original pair; with `other` they form a majority.
        for id in sim.node_ids() {
            sim.disconnect(id);
        }
        sim.connect(leader1);
        sim.connect(rest[0]);
        sim.connect(other);
        for _ in 0..50 {
            sim.one(rng.range(0, 10_000), 3, true);
        }
        // Everyone together: the stale leader2 and its follower repair 50-entry divergences.
        // One AppendEntries per entry would be 100+ messages; hints make it a handful.
        let appends_before = sim.message_count("AppendEntries");
        for id in sim.node_ids() {
            sim.connect(id);
        }
        let index = sim.one(rng.range(0, 10_000), 5, true);
        assert_eq!(sim.n_committed(index).0, 5);
        let appends = sim.message_count("AppendEntries") - appends_before;
        assert!(
            appends < 30,
            "repair took {appends} AppendEntries (heartbeats are separate messages)"
        );
    }

    #[test]
    fn sim_rpc_count_bounds() {
        // Goal: an election, ten agreements and an idle second cost a bounded number of
        // messages (6.824 TestCount2B).
        let mut sim = Sim::new(SimConfig::scenario(3, 26));
        let leader = sim.check_one_leader();
        let election = sim.rpc_count();
        assert!(election <= 60, "election took {election} messages");
        let before = sim.rpc_count();
        let term = sim.check_terms();
        for cmd in 1..=10 {
            sim.one(cmd, 3, false);
        }
        assert_eq!(sim.check_terms(), term, "no election during agreement");
        let agreement = sim.rpc_count() - before;
        // One append and one response per follower per command, heartbeats while waiting.
        assert!(
            agreement <= 10 * 2 * 2 + 200,
            "ten agreements took {agreement} messages"
        );
        let before = sim.rpc_count();
        sim.run_ticks(10);
        let idle = sim.rpc_count() - before;
        // Heartbeat every tick to 2 followers, plus responses: 40, and nothing else.
        assert!(idle <= 44, "an idle second took {idle} messages");
        assert_eq!(sim.leader(), Some(leader));
    }

    #[test]
    fn sim_persistence_across_crashes_of_all_and_of_the_leader() {
        // Goal: committed entries survive crashes of every node and of leaders
        // (6.824 TestPersist12C).
        let mut sim = Sim::new(SimConfig::scenario(3, 27));
        sim.one(11, 3, true);
        for id in sim.node_ids() {
            sim.crash(id);
        }
        for id in sim.node_ids() {
            sim.restart(id);
        }
        sim.one(12, 3, true);
        let leader1 = sim.check_one_leader();
        sim.crash(leader1);
        sim.restart(leader1);
        sim.one(13, 3, true);
        let leader2 = sim.check_one_leader();
        sim.crash(leader2);
        sim.one(14, 2, true);
        sim.restart(leader2);
        let index = sim.one(15, 3, true);
        let leader3 = sim.check_one_leader();
        let follower = others(&sim, leader3)[0];
        sim.crash(follower);
        sim.one(16, 2, true);
        sim.restart(follower);
        sim.one(17, 3, true);
        assert_eq!(sim.n_committed(index).0, 3);
    }

    #[test]
    fn sim_persistence_with_rotating_crashes() {
        // Goal: five nodes, crashing and restarting different majorities in turn, never lose
        // a committed entry (6.824 TestPersist22C).
        let mut sim = Sim::new(SimConfig::scenario(5, 28));
        let ids = sim.node_ids();
        let mut index = 1;
        for iteration in 0..5 {
            sim.one(10 + index, 5, true);
            index += 1;
            let leader = sim.check_one_leader();
            let pos = ids.iter().position(|id| *id == leader).expect("member");
            let (a, b) = (ids[(pos + 1) % 5], ids[(pos + 2) % 5]);
            sim.crash(a);
            sim.crash(b);
            sim.one(10 + index, 3, true);
            index += 1;
            let (c, d, e) = (ids[pos], ids[(pos + 3) % 5], ids[(pos + 4) % 5]);
            sim.crash(c);
            sim.crash(d);
            sim.crash(e);
            sim.restart(a);
            sim.restart(b);
            sim.run_ticks(10);
            sim.restart(d);
            sim.one(10 + index, 3, true);
            index += 1;
            sim.restart(c);
            sim.restart(e);
            assert!(iteration < 5);
        }
        sim.one(1000, 5, true);
    }

    #[test]
    fn sim_persistence_of_partitioned_leader_and_follower() {
        // Goal: a leader and a follower cut off and crashed come back from disk and the
        // cluster reaches agreement (6.824 TestPersist32C).
        let mut sim = Sim::new(SimConfig::scenario(3, 29));
        sim.one(101, 3, true);
        let leader = sim.check_one_leader();
        let follower = others(&sim, leader)[0];
        sim.disconnect(follower);
        sim.one(102, 2, true);
        sim.crash(leader);
        sim.crash(others(&sim, leader)[1]);
        sim.connect(follower);
        sim.restart(leader);
        sim.one(103, 2, true);
        sim.restart(others(&sim, leader)[1]);
        sim.one(104, 3, true);
    }

    fn figure8(seed: u64, unreliable: bool) {
        let n = 5usize;
        let mut sim = Sim::new(SimConfig::scenario(n, seed));
        let mut rng = SimRng::new(seed);
        sim.set_unreliable(unreliable);
        sim.one(rng.range(0, 10_000), 1, true);
        let ids = sim.node_ids();
        let mut n_up = n;
        for _ in 0..200 {
            let mut leader = None;
            for id in &ids {
                if sim.start(*id, rng.range(0, 10_000)).is_some() {
                    leader = Some(*id);
                }
            }
            if rng.range(0, 1000) < 100 {
                let pause = rng.range(0, 1000);
                sim.run_for(pause);
            } else {
                let pause = rng.range(0, 13);
                sim.run_for(pause);
            }
            if let Some(leader) = leader {
                sim.crash(leader);
                n_up -= 1;
            }
            if n_up < 3 {
                let id = ids[rng.index(n)];
                if !sim.is_up(id) {
                    sim.restart(id);
                    n_up += 1;
                }
            }
        }
        for id in &ids {
            if !sim.is_up(*id) {
                sim.restart(*id);
            }
        }
        sim.set_unreliable(false);
        sim.one(rng.range(0, 10_000), n, true);
    }

    #[test]
    fn sim_figure8() {
        // Goal: leaders crashing right after appending, over and over, never get an old-term
        // entry committed by counting replicas, and the cluster agrees at the end
        // (Raft Figure 8; 6.824 TestFigure82C). The simulator's checker would flag any
        // committed entry that is later lost.
        figure8(30, false);
    }

    #[test]
    fn sim_figure8_with_unreliable_network() {
        // Goal: the same with message loss, delay and duplication.
        figure8(31, true);
    }

    #[test]
    fn sim_unreliable_agreement() {
        // Goal: many commands from several starts commit despite an unreliable network
        // (6.824 TestUnreliableAgree2C).
        let mut sim = Sim::new(SimConfig::scenario(5, 32));
        sim.set_unreliable(true);
        for iteration in 1..30 {
            for j in 0..4 {
                let leader = sim.leader();
                if let Some(leader) = leader {
                    sim.start(leader, 100 * iteration + j);
                }
            }
            sim.one(iteration, 1, true);
        }
        sim.set_unreliable(false);
        sim.one(100, 5, true);
    }

    fn churn(seed: u64, unreliable: bool) {
        let n = 5usize;
        let mut sim = Sim::new(SimConfig::scenario(n, seed));
        let mut rng = SimRng::new(seed);
        sim.set_unreliable(unreliable);
        let ids = sim.node_ids();
        let mut started = Vec::new();
        for _ in 0..150 {
            for id in &ids {
                let cmd = rng.range(1, 1_000_000);
                if let Some((_, index)) = sim.start(*id, cmd) {
                    started.push((index, cmd));
                }
            }
            let roll = rng.range(0, 1000);
            let id = ids[rng.index(n)];
            // Mostly keep a healthy majority, so that commands commit between the faults.
            let n_healthy = ids
                .iter()
                .filter(|i| sim.is_up(**i) && sim.is_connected(**i))
                .count();
            let may_break = n_healthy > 3 || rng.range(0, 10) == 0;
            if roll < 200 && may_break {
                sim.disconnect(id);
            } else if roll < 500 {
                sim.connect(id);
            } else if roll < 700 && may_break {
                sim.crash(id);
            } else if roll < 900 && !sim.is_up(id) {
                sim.restart(id);
            }
            sim.run_for(rng.range(0, 300));
        }
        for id in &ids {
            if !sim.is_up(*id) {
                sim.restart(*id);
            }
            sim.connect(*id);
        }
        sim.set_unreliable(false);
        let last = sim.one(rng.range(1, 1_000_000), n, true);
        assert!(sim.run_until(|s| s.n_committed(last).0 == n, 50));
        // Every committed index holds the same command on all nodes (the checker asserts it
        // as they apply); at least some of the churned commands made it.
        let n_committed = started
            .iter()
            .filter(|(index, _)| sim.n_committed(*index).0 == n)
            .count();
        assert!(
            n_committed > 0,
            "nothing committed during churn: {} started, last {last}{}",
            started.len(),
            sim.describe_nodes()
        );
    }

    #[test]
    fn sim_reliable_churn() {
        // Goal: random crashes, restarts and disconnections while commands flow never break
        // safety, and the cluster agrees once it settles (6.824 TestReliableChurn2C).
        churn(33, false);
    }

    #[test]
    fn sim_unreliable_churn() {
        // Goal: the same on an unreliable network (6.824 TestUnreliableChurn2C).
        churn(34, true);
    }

    #[test]
    fn sim_snapshot_basic() {
        // Goal: the log is compacted behind snapshots while the cluster keeps agreeing
        // (6.824 TestSnapshotBasic2D).
        let mut sim = Sim::new(with_snapshots(3, 35, 10));
        for cmd in 1..=60 {
            sim.one(cmd, 3, false);
        }
        let leader = sim.check_one_leader();
        let first = sim.raft(leader).map_or(0, |r| r.first_index().0);
        assert!(first > 40, "log not compacted: first index {first}");
    }

    fn snapshot_install(seed: u64, unreliable: bool, crash: bool) {
        let mut sim = Sim::new(with_snapshots(3, seed, 10));
        sim.set_unreliable(unreliable);
        sim.one(1, 3, true);
        for round in 0..5 {
            let leader = sim.check_one_leader();
            let victim = others(&sim, leader)[round % 2];
            if crash {
                sim.crash(victim);
            } else {
                sim.disconnect(victim);
            }
            for cmd in 0..30 {
                sim.one(1000 * (round as u64 + 1) + cmd, 2, true);
            }
            if crash {
                sim.restart(victim);
            } else {
                sim.connect(victim);
            }
            sim.one(999_000 + round as u64, 3, true);
        }
        sim.set_unreliable(false);
        sim.one(5, 3, true);
        assert!(
            sim.message_count("InstallSnapshot") > 0,
            "no follower needed a snapshot"
        );
    }

    #[test]
    fn sim_snapshot_install() {
        // Goal: a follower cut off while the leader compacted past it catches up through
        // InstallSnapshot (6.824 TestSnapshotInstall2D).
        snapshot_install(36, false, false);
    }

    #[test]
    fn sim_snapshot_install_unreliable() {
        // Goal: the same with loss, delay and duplication of snapshot chunks
        // (6.824 TestSnapshotInstallUnreliable2D).
        snapshot_install(37, true, false);
    }

    #[test]
    fn sim_snapshot_install_after_crash() {
        // Goal: a crashed follower restarts from its own snapshot and log and catches up by
        // InstallSnapshot (6.824 TestSnapshotInstallCrash2D).
        snapshot_install(38, false, true);
    }

    #[test]
    fn sim_membership_change_under_load() {
        // Goal: while commands commit, a learner is added, catches up, is promoted, and a
        // voter (the leader itself at one point) is removed; every change commits and the
        // cluster keeps agreeing.
        let mut config = with_snapshots(3, 39, 20);
        config.n_nodes = 5;
        let mut sim = Sim::new(config);
        let mut cmd = 1;
        let mut load = |sim: &mut Sim, n: u64| {
            for _ in 0..n {
                sim.one(cmd, 1, true);
                cmd += 1;
            }
        };
        load(&mut sim, 10);
        let leader = sim.check_one_leader();
        let spare = NodeId(4);
        sim.propose_config_change(leader, ConfigChange::AddLearner(spare))
            .expect("add learner");
        load(&mut sim, 30);
        assert!(sim.run_until(|s| s.raft(spare).is_some_and(|r| r.role() == Role::Learner), 50));
        // Promotion is refused until the learner holds every committed entry.
        let promoted = sim.run_until(|s| s.raft(spare).is_some_and(|r| r.commit_index().0 > 30), 100);
        assert!(promoted, "learner caught up{}", sim.describe_nodes());
        let mut done = false;
        for _ in 0..50 {
            let leader = sim.check_one_leader();
            if sim
                .propose_config_change(leader, ConfigChange::PromoteLearner(spare))
                .is_ok()
            {
                done = true;
                break;
            }
            sim.run_ticks(2);
        }
        assert!(done, "promotion accepted");
        load(&mut sim, 10);
        assert!(sim.run_until(
            |s| s
                .raft(spare)
                .is_some_and(|r| r.role() == Role::Follower || r.is_leader()),
            50
        ));
        // Remove the current leader: it steps down once the removal commits.
        let leader = sim.check_one_leader();
        let mut removed = false;
        for _ in 0..50 {
            if sim
                .propose_config_change(leader, ConfigChange::Remove(leader))
                .is_ok()
            {
                removed = true;
                break;
            }
            sim.run_ticks(2);
        }
        assert!(removed, "removal accepted");
        load(&mut sim, 10);
        let new_leader = sim.check_one_leader();
        assert_ne!(new_leader, leader);
        let membership = sim.raft(new_leader).expect("up").membership().clone();
        assert!(membership.voters.contains(&spare));
        assert!(!membership.voters.contains(&leader));
        assert_eq!(membership.voters.len(), 3);
        let index = sim.one(cmd + 1, 3, true);
        assert!(sim.n_committed(index).0 >= 3);
    }
}
