//! Hand-written scenarios in the shape of the 6.824 Raft tests, on the simulator's
//! tester-like API. Indices are not assumed contiguous: every new leader appends a no-op.

mod sim_scenarios {
    use shoal_raft::{LogIndex, NodeId};
    use shoal_raft_sim::{Command, Sim, SimConfig, SimRng};

    fn others(sim: &Sim, node: NodeId) -> Vec<NodeId> {
        sim.node_ids().into_iter().filter(|id| *id != node).collect()
    }

    #[test]
    fn sim_initial_election() {
        // Goal: three nodes elect one leader, then keep it and its term while nothing fails.
        let mut sim = Sim::new(SimConfig::scenario(3, 1));
        sim.check_one_leader();
        sim.run_ticks(5);
        let term1 = sim.check_terms();
        assert!(term1.0 >= 1, "a leader was elected, so the term advanced");
        sim.run_ticks(20);
        let term2 = sim.check_terms();
        assert_eq!(term1, term2, "no election without failures");
        sim.check_one_leader();
        assert!(sim.message_count("Heartbeat") > 0);
        assert!(sim.rpc_count() >= sim.message_count("Heartbeat"));
    }

    #[test]
    fn sim_reelection() {
        // Goal: a new leader is elected when the leader is cut off, none without a quorum,
        // and the old leader rejoins as a follower.
        let mut sim = Sim::new(SimConfig::scenario(3, 2));
        let leader1 = sim.check_one_leader();
        sim.disconnect(leader1);
        let leader2 = sim.check_one_leader();
        assert_ne!(leader1, leader2);
        sim.connect(leader1);
        let leader3 = sim.check_one_leader();
        let follower = others(&sim, leader3)[0];
        sim.disconnect(leader3);
        sim.disconnect(follower);
        sim.run_ticks(30);
        sim.check_no_leader();
        sim.connect(follower);
        sim.check_one_leader();
        sim.connect(leader3);
        sim.check_one_leader();
    }

    #[test]
    fn sim_basic_agreement() {
        // Goal: commands commit on every node at consecutive indices, and nothing is
        // committed before it is proposed (6.824 TestBasicAgree2B).
        let mut sim = Sim::new(SimConfig::scenario(5, 3));
        let leader = sim.check_one_leader();
        // The leader's no-op comes first.
        let noop = sim.raft(leader).map_or(LogIndex(0), |r| r.last_index());
        assert!(sim.run_until(|s| s.n_committed(noop).0 == 5, 10));
        let mut last = noop;
        for cmd in 1..=5u64 {
            assert_eq!(sim.n_committed(last.next()).0, 0, "committed before start()");
            let index = sim.one(cmd * 100, 5, false);
            assert_eq!(index, last.next(), "one leader, so consecutive indices");
            assert_eq!(sim.n_committed(index), (5, Some(Command::Raw(cmd * 100))));
            last = index;
        }
    }

    #[test]
    fn sim_one_way_partition() {
        // Goal: a leader that can send but not hear back loses leadership (check-quorum) and
        // the majority keeps committing; after healing every node catches up.
        let mut sim = Sim::new(SimConfig::scenario(3, 4));
        let leader = sim.check_one_leader();
        sim.one(1, 3, false);
        for other in others(&sim, leader) {
            sim.block_one_way(other, leader);
        }
        sim.run_ticks(40);
        let new_leader = sim.check_one_leader();
        assert_ne!(new_leader, leader);
        let index = sim.one(2, 2, true);
        sim.heal();
        assert!(
            sim.run_until(|s| s.n_committed(index).0 == 3, 50),
            "every node applies after heal"
        );
    }

    #[test]
    fn sim_figure8_unreliable() {
        // Goal: under loss, long delays, duplicates and repeated leader cuts, the cluster
        // agrees on a final command once healed (6.824 TestFigure8Unreliable2C).
        let n = 5usize;
        let mut sim = Sim::new(SimConfig::scenario(n, 5));
        let mut rng = SimRng::new(5);
        sim.set_unreliable(true);
        sim.one(rng.range(0, 10_000), 1, true);
        let ids = sim.node_ids();
        let mut n_up = n;
        for _ in 0..300 {
            let mut leader = None;
            for id in &ids {
                if sim.start(*id, rng.range(0, 10_000)).is_some() && sim.is_connected(*id) {
                    leader = Some(*id);
                }
            }
            if rng.range(0, 1000) < 100 {
                let pause = rng.range(0, 500);
                sim.run_for(pause);
            } else {
                let pause = rng.range(0, 13);
                sim.run_for(pause);
            }
            if let Some(leader) = leader {
                if rng.range(0, 1000) < (n_up as u64) * 1000 / 2 / n as u64 {
                    sim.disconnect(leader);
                    n_up -= 1;
                }
            }
            if n_up < 3 {
                let id = ids[rng.index(n)];
                if !sim.is_connected(id) {
                    sim.connect(id);
                    n_up += 1;
                }
            }
        }
        sim.heal();
        sim.set_unreliable(false);
        sim.one(rng.range(0, 10_000), n, true);
    }
}
