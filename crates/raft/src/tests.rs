//! Unit tests of the core: feed events, assert the exact state and messages that come out.

use crate::*;

fn config(id: u64) -> Config {
    let mut c = Config::new(NodeId(id));
    c.election_timeout_ticks = 10;
    c.heartbeat_interval_ticks = 1;
    c.inflight_messages_max = 4;
    c.message_bytes_max = 1000;
    c
}

fn node_with(cfg: Config, voters: &[u64]) -> Raft {
    let restore = Restore {
        initial_membership: Membership::new(voters.iter().map(|id| NodeId(*id))),
        ..Restore::default()
    };
    Raft::new(cfg, restore).expect("valid config")
}

fn node(id: u64, voters: &[u64]) -> Raft {
    node_with(config(id), voters)
}

fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(term),
        body,
    }
}

/// Routes messages between nodes until quiet (a perfect network); returns messages sent.
fn deliver_all(nodes: &mut [Raft]) -> usize {
    let mut n_sent = 0;
    loop {
        let mut in_flight = Vec::new();
        for n in nodes.iter_mut() {
            in_flight.extend(n.take_ready().messages);
        }
        if in_flight.is_empty() {
            return n_sent;
        }
        n_sent += in_flight.len();
        for m in in_flight {
            if let Some(target) = nodes.iter_mut().find(|n| n.id() == m.to) {
                target.step(m);
            }
        }
    }
}

/// Three nodes with node 1 elected leader and its no-op committed everywhere.
fn three_with_leader() -> Vec<Raft> {
    let mut nodes: Vec<Raft> = (1..=3).map(|id| node(id, &[1, 2, 3])).collect();
    nodes[0].campaign();
    deliver_all(&mut nodes);
    // One heartbeat round propagates the commit index.
    nodes[0].tick();
    deliver_all(&mut nodes);
    assert_eq!(nodes[0].role(), Role::Leader);
    nodes
}

fn bodies_to(ready: &Ready, to: u64) -> Vec<MessageBody> {
    ready
        .messages
        .iter()
        .filter(|m| m.to == NodeId(to))
        .map(|m| m.body.clone())
        .collect()
}

#[test]
fn election_timeout_starts_pre_vote_without_changing_term() {
    // Goal: a follower whose timer fires asks for pre-votes at term+1 and keeps its own term (§9.6).
    let mut n = node(1, &[1, 2, 3]);
    for _ in 0..20 {
        n.tick();
    }
    assert_eq!(n.role(), Role::PreCandidate);
    assert_eq!(n.term(), Term(0));
    let ready = n.take_ready();
    assert!(
        ready.hard_state.is_none(),
        "pre-vote must not touch the hard state"
    );
    let pre_votes: Vec<_> = ready.messages.iter().filter(|m| m.term == Term(1)).collect();
    assert_eq!(pre_votes.len(), 2);
    for m in pre_votes {
        assert_eq!(
            m.body,
            MessageBody::PreVote {
                last_log_index: LogIndex(0),
                last_log_term: Term(0)
            }
        );
    }
}

#[test]
fn pre_vote_quorum_starts_real_election_with_persisted_vote() {
    // Goal: after a quorum of pre-votes the node bumps its term, votes for itself, and the vote
    // is in the same Ready's hard state as the RequestVote messages (persist before send).
    let mut n = node(1, &[1, 2, 3]);
    n.campaign();
    n.take_ready();
    n.step(msg(2, 1, 1, MessageBody::PreVoteResponse { granted: true }));
    assert_eq!(n.role(), Role::Candidate);
    let ready = n.take_ready();
    assert_eq!(
        ready.hard_state.map(|hs| (hs.term, hs.vote)),
        Some((Term(1), Some(NodeId(1))))
    );
    assert_eq!(
        bodies_to(&ready, 2),
        vec![MessageBody::RequestVote {
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
            leadership_transfer: false
        }]
    );
}

#[test]
fn vote_only_for_up_to_date_candidate_and_once_per_term() {
    // Goal: §5.4.1 and Figure 2: reject a candidate with a stale log, grant one vote per term.
    let mut nodes = three_with_leader();
    let mut follower = nodes.remove(2);
    assert_eq!(follower.last_index(), LogIndex(1));
    // Stale candidate (empty log) at a higher term: rejected although the term is adopted.
    follower.tick_until_lease_expires();
    follower.step(msg(
        2,
        3,
        5,
        MessageBody::RequestVote {
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
            leadership_transfer: false,
        },
    ));
    let ready = follower.take_ready();
    assert_eq!(follower.term(), Term(5));
    assert_eq!(
        bodies_to(&ready, 2),
        vec![MessageBody::RequestVoteResponse { granted: false }]
    );
    // Up-to-date candidate 1 gets the vote; candidate 2 in the same term does not.
    let up_to_date = MessageBody::RequestVote {
        last_log_index: LogIndex(1),
        last_log_term: Term(1),
        leadership_transfer: false,
    };
    follower.step(msg(1, 3, 5, up_to_date.clone()));
    let ready = follower.take_ready();
    assert_eq!(ready.hard_state.map(|hs| hs.vote), Some(Some(NodeId(1))));
    assert_eq!(
        bodies_to(&ready, 1),
        vec![MessageBody::RequestVoteResponse { granted: true }]
    );
    follower.step(msg(2, 3, 5, up_to_date));
    assert_eq!(
        bodies_to(&follower.take_ready(), 2),
        vec![MessageBody::RequestVoteResponse { granted: false }]
    );
}

impl Raft {
    /// Test helper: lets the follower's "heard from the leader" lease run out.
    fn tick_until_lease_expires(&mut self) {
        // Advances only the election timer (no tick), so no campaign starts.
        let ticks = self.config().election_timeout_ticks;
        self.election_elapsed_for_tests_add(ticks);
    }
}

#[test]
fn new_leader_appends_noop_and_replicates_it() {
    // Goal: §8 — a new leader's first entry is a no-op of its term, sent to every follower.
    let mut n = node(1, &[1, 2, 3]);
    n.campaign();
    n.take_ready();
    n.step(msg(2, 1, 1, MessageBody::PreVoteResponse { granted: true }));
    n.take_ready();
    n.step(msg(2, 1, 1, MessageBody::RequestVoteResponse { granted: true }));
    assert_eq!(n.role(), Role::Leader);
    let ready = n.take_ready();
    assert_eq!(ready.entries.len(), 1);
    assert_eq!(ready.entries[0].kind, EntryKind::Noop);
    assert_eq!(ready.entries[0].term, Term(1));
    for peer in [2, 3] {
        assert_eq!(
            bodies_to(&ready, peer),
            vec![MessageBody::AppendEntries {
                prev_log_index: LogIndex(0),
                prev_log_term: Term(0),
                entries: ready.entries.clone(),
                leader_commit: LogIndex(0),
            }]
        );
    }
}

#[test]
fn proposals_are_batched_into_one_append_per_follower() {
    // Goal: many proposals between two Readys leave as one AppendEntries per follower (batching).
    let mut nodes = three_with_leader();
    let leader = &mut nodes[0];
    for i in 0..10u8 {
        leader.propose(vec![i]).expect("leader accepts");
    }
    let ready = leader.take_ready();
    assert_eq!(ready.entries.len(), 10);
    for peer in [2, 3] {
        let appends = bodies_to(&ready, peer);
        assert_eq!(appends.len(), 1);
        let MessageBody::AppendEntries {
            entries,
            prev_log_index,
            ..
        } = &appends[0]
        else {
            panic!("expected AppendEntries, got {:?}", appends[0]);
        };
        assert_eq!(*prev_log_index, LogIndex(1));
        assert_eq!(entries.len(), 10);
    }
}

#[test]
fn message_size_and_inflight_window_are_bounded() {
    // Goal: each AppendEntries stays under message_bytes_max, and at most inflight_messages_max
    // are outstanding to a follower in Replicate; an ack opens the window again.
    let mut nodes = three_with_leader();
    let leader = &mut nodes[0];
    for _ in 0..40 {
        leader.propose(vec![7u8; 200]).expect("leader accepts");
    }
    let ready = leader.take_ready();
    let appends = bodies_to(&ready, 2);
    assert_eq!(appends.len(), 4, "window of 4 messages");
    let mut last = LogIndex(0);
    for body in &appends {
        let MessageBody::AppendEntries { entries, .. } = body else {
            panic!("not an append")
        };
        let bytes: usize = entries.iter().map(Entry::size_bytes).sum();
        assert!(bytes <= 1000, "message of {bytes} bytes");
        last = entries.last().expect("non-empty").index;
    }
    leader.step(msg(
        2,
        1,
        1,
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index: last,
            reject_index: LogIndex(0),
            conflict_index: LogIndex(0),
            conflict_term: None,
        },
    ));
    assert!(!bodies_to(&leader.take_ready(), 2).is_empty(), "window reopened");
}

#[test]
fn commit_counts_only_current_term_entries() {
    // Goal: Figure 8 — an old-term entry on a majority is not committed by counting; it commits
    // only together with an entry of the leader's own term.
    let mut restore = Restore {
        initial_membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
        ..Restore::default()
    };
    restore.hard_state.term = Term(2);
    restore.entries = vec![Entry {
        term: Term(2),
        index: LogIndex(1),
        kind: EntryKind::Command,
        data: vec![1],
    }];
    let mut leader = Raft::new(config(1), restore).expect("config");
    leader.campaign();
    leader.take_ready();
    leader.step(msg(2, 1, 3, MessageBody::PreVoteResponse { granted: true }));
    leader.take_ready();
    leader.step(msg(2, 1, 3, MessageBody::RequestVoteResponse { granted: true }));
    assert_eq!(leader.role(), Role::Leader);
    assert_eq!(leader.term(), Term(3));
    leader.take_ready();
    // Follower 2 acknowledges index 1 (the term-2 entry) only: no commit.
    leader.step(msg(
        2,
        1,
        3,
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index: LogIndex(1),
            reject_index: LogIndex(0),
            conflict_index: LogIndex(0),
            conflict_term: None,
        },
    ));
    assert_eq!(leader.commit_index(), LogIndex(0));
    // Acknowledging the term-3 no-op at index 2 commits both.
    leader.step(msg(
        2,
        1,
        3,
        MessageBody::AppendEntriesResponse {
            success: true,
            match_index: LogIndex(2),
            reject_index: LogIndex(0),
            conflict_index: LogIndex(0),
            conflict_term: None,
        },
    ));
    assert_eq!(leader.commit_index(), LogIndex(2));
    let committed = leader.take_ready().committed_entries;
    assert_eq!(
        committed.iter().map(|e| e.index).collect::<Vec<_>>(),
        vec![LogIndex(1), LogIndex(2)]
    );
}

#[test]
fn follower_rejection_carries_conflict_hint() {
    // Goal: a follower whose entry at prev_log_index has another term answers with that term and
    // the first index of it, so the leader skips the whole term in one round trip.
    let mut restore = Restore {
        initial_membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
        ..Restore::default()
    };
    restore.hard_state.term = Term(3);
    restore.entries = (1..=6)
        .map(|i| Entry {
            term: Term(if i <= 2 { 1 } else { 2 }),
            index: LogIndex(i),
            kind: EntryKind::Command,
            data: vec![],
        })
        .collect();
    let mut follower = Raft::new(config(2), restore).expect("config");
    follower.step(msg(
        1,
        2,
        3,
        MessageBody::AppendEntries {
            prev_log_index: LogIndex(6),
            prev_log_term: Term(3),
            entries: vec![],
            leader_commit: LogIndex(0),
        },
    ));
    assert_eq!(
        bodies_to(&follower.take_ready(), 1),
        vec![MessageBody::AppendEntriesResponse {
            success: false,
            match_index: LogIndex(0),
            reject_index: LogIndex(6),
            conflict_index: LogIndex(3),
            conflict_term: Some(Term(2)),
        }]
    );
    // A prev_log_index past the end: the hint is the follower's last index + 1.
    follower.step(msg(
        1,
        2,
        3,
        MessageBody::AppendEntries {
            prev_log_index: LogIndex(20),
            prev_log_term: Term(3),
            entries: vec![],
            leader_commit: LogIndex(0),
        },
    ));
    let ready = follower.take_ready();
    let MessageBody::AppendEntriesResponse {
        conflict_index,
        conflict_term,
        ..
    } = &bodies_to(&ready, 1)[0]
    else {
        panic!("expected a response");
    };
    assert_eq!((*conflict_index, *conflict_term), (LogIndex(7), None));
}

#[test]
fn follower_truncates_conflicting_suffix_and_reports_it() {
    // Goal: §5.3 step 3 — conflicting entries are replaced, and the Ready's entries start at the
    // first replaced index so the runtime truncates its WAL there.
    let mut restore = Restore {
        initial_membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
        ..Restore::default()
    };
    restore.hard_state.term = Term(2);
    restore.entries = (1..=3)
        .map(|i| Entry {
            term: Term(1),
            index: LogIndex(i),
            kind: EntryKind::Command,
            data: vec![i as u8],
        })
        .collect();
    let mut follower = Raft::new(config(2), restore).expect("config");
    let new_entry = Entry {
        term: Term(2),
        index: LogIndex(2),
        kind: EntryKind::Command,
        data: vec![9],
    };
    follower.step(msg(
        1,
        2,
        2,
        MessageBody::AppendEntries {
            prev_log_index: LogIndex(1),
            prev_log_term: Term(1),
            entries: vec![new_entry.clone()],
            leader_commit: LogIndex(2),
        },
    ));
    let ready = follower.take_ready();
    assert_eq!(ready.entries, vec![new_entry]);
    assert_eq!(follower.last_index(), LogIndex(2));
    assert_eq!(ready.committed_entries.len(), 2);
}

#[test]
fn leader_uses_conflict_hint_to_skip_terms() {
    // Goal: on a rejection with conflict_term the leader jumps next_index past that term.
    let mut nodes = three_with_leader();
    let leader = &mut nodes[0];
    for _ in 0..3 {
        leader.propose(vec![1]).expect("accepts");
    }
    leader.take_ready();
    // Follower 2 claims a conflict at prev 4 with a term the leader never had: next = conflict_index.
    leader.step(msg(
        2,
        1,
        1,
        MessageBody::AppendEntriesResponse {
            success: false,
            match_index: LogIndex(0),
            reject_index: LogIndex(4),
            conflict_index: LogIndex(2),
            conflict_term: Some(Term(0)),
        },
    ));
    let appends = bodies_to(&leader.take_ready(), 2);
    assert_eq!(appends.len(), 1, "probe sends exactly one append");
    let MessageBody::AppendEntries { prev_log_index, .. } = &appends[0] else {
        panic!("not an append")
    };
    assert_eq!(
        *prev_log_index,
        LogIndex(1),
        "match 1 bounds next_index from below"
    );
}

#[test]
fn follower_in_lease_ignores_disruptive_vote_requests() {
    // Goal: with check-quorum a follower that heard from the leader recently ignores a RequestVote
    // at a higher term (no term change, no reply), so a rejoining node cannot depose the leader.
    let mut nodes = three_with_leader();
    let follower = &mut nodes[1];
    follower.step(msg(
        3,
        2,
        9,
        MessageBody::RequestVote {
            last_log_index: LogIndex(5),
            last_log_term: Term(5),
            leadership_transfer: false,
        },
    ));
    assert_eq!(follower.term(), Term(1));
    assert!(follower.take_ready().messages.is_empty());
    // A pre-vote is refused too.
    follower.step(msg(
        3,
        2,
        2,
        MessageBody::PreVote {
            last_log_index: LogIndex(5),
            last_log_term: Term(5),
        },
    ));
    assert_eq!(
        bodies_to(&follower.take_ready(), 3),
        vec![MessageBody::PreVoteResponse { granted: false }]
    );
    assert_eq!(follower.term(), Term(1));
}

#[test]
fn leader_without_quorum_steps_down() {
    // Goal: check-quorum — a leader hearing from no follower for an election timeout steps down.
    let mut nodes = three_with_leader();
    let leader = &mut nodes[0];
    for _ in 0..25 {
        leader.tick();
        leader.take_ready();
    }
    assert_eq!(leader.role(), Role::Follower);
    assert_eq!(leader.leader(), None);
}

#[test]
fn read_index_waits_for_quorum_heartbeat_round() {
    // Goal: §6.4 — a read is released only after a quorum acknowledged a heartbeat sent after
    // the request, at the commit index of the time of the request.
    let mut nodes = three_with_leader();
    let leader = &mut nodes[0];
    leader.read_index(42).expect("leader");
    let ready = leader.take_ready();
    assert!(ready.read_states.is_empty());
    let hb = bodies_to(&ready, 2);
    let Some(MessageBody::Heartbeat { read_round, .. }) = hb.first().cloned() else {
        panic!("expected a heartbeat, got {hb:?}");
    };
    // An acknowledgement of an older round does not release it.
    leader.step(msg(
        2,
        1,
        1,
        MessageBody::HeartbeatResponse {
            read_round: read_round - 1,
            last_log_index: LogIndex(1),
        },
    ));
    assert!(leader.take_ready().read_states.is_empty());
    leader.step(msg(
        2,
        1,
        1,
        MessageBody::HeartbeatResponse {
            read_round,
            last_log_index: LogIndex(1),
        },
    ));
    assert_eq!(
        leader.take_ready().read_states,
        vec![ReadState {
            context: 42,
            index: LogIndex(1)
        }]
    );
    // Not the leader: refused with a hint.
    assert_eq!(
        nodes[1].read_index(1),
        Err(ProposeError::NotLeader {
            leader_hint: Some(NodeId(1))
        })
    );
}

#[test]
fn lease_read_is_served_without_a_round_while_lease_holds() {
    // Goal: ReadMode::Lease serves at once after a recent quorum-acknowledged heartbeat and
    // falls back to a round once the lease ran out.
    let mut nodes: Vec<Raft> = (1..=3)
        .map(|id| {
            let mut c = config(id);
            c.read_mode = ReadMode::Lease;
            node_with(c, &[1, 2, 3])
        })
        .collect();
    // In lease mode a freshly started node honours a lease it may have granted before a
    // restart: it refuses votes for its first election timeout.
    nodes[1].campaign();
    assert_eq!(bodies_to(&nodes[1].take_ready(), 1).len(), 1);
    nodes[0].step(msg(
        2,
        1,
        1,
        MessageBody::PreVote {
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
        },
    ));
    assert_eq!(
        bodies_to(&nodes[0].take_ready(), 2),
        vec![MessageBody::PreVoteResponse { granted: false }]
    );
    for node in nodes.iter_mut() {
        for _ in 0..10 {
            node.tick();
        }
        node.take_ready();
    }
    nodes[0].campaign();
    deliver_all(&mut nodes);
    nodes[0].tick();
    deliver_all(&mut nodes);
    nodes[0].read_index(7).expect("leader");
    let ready = nodes[0].take_ready();
    assert_eq!(
        ready.read_states,
        vec![ReadState {
            context: 7,
            index: LogIndex(1)
        }]
    );
    assert!(ready.messages.is_empty(), "no heartbeat round needed");
}

#[test]
fn config_change_waits_for_own_term_commit_and_previous_change() {
    // Goal: single-server changes one at a time, only after the leader's no-op committed.
    let mut n = node(1, &[1]);
    n.campaign();
    // Single voter: elected and no-op committed at once.
    assert_eq!(n.role(), Role::Leader);
    assert_eq!(n.commit_index(), LogIndex(1));
    let mut nodes = three_with_leader();
    let leader = &mut nodes[0];
    leader
        .propose_config_change(ConfigChange::AddLearner(NodeId(4)), b"addr4".to_vec())
        .expect("first change");
    assert_eq!(
        leader.propose_config_change(ConfigChange::AddLearner(NodeId(5)), vec![]),
        Err(ProposeError::ConfigChangePending)
    );
    assert!(
        leader.membership().learners.contains(&NodeId(4)),
        "takes effect when appended"
    );
    assert!(matches!(
        leader.propose_config_change(ConfigChange::PromoteLearner(NodeId(9)), vec![]),
        Err(ProposeError::ConfigChangePending) | Err(ProposeError::InvalidConfigChange(_))
    ));
    // The new learner gets appends, and does not count for commit.
    let ready = leader.take_ready();
    assert!(!bodies_to(&ready, 4).is_empty());
}

#[test]
fn learner_never_campaigns() {
    // Goal: a learner follows but never starts an election, whatever the time.
    let mut learner = node_with(config(4), &[1, 2, 3]);
    assert_eq!(learner.role(), Role::Learner);
    for _ in 0..100 {
        learner.tick();
    }
    assert!(learner.take_ready().messages.is_empty());
}

#[test]
fn a_node_withholding_candidacy_never_campaigns_but_still_votes() {
    // Goal: a withheld node starts no election by its timer, by campaign() or by a leader's
    // TimeoutNow, yet grants its vote and lets the others elect a leader; released, it
    // campaigns again.
    let mut nodes = three_with_leader();
    nodes[2].withhold_candidacy(true);
    nodes[0].transfer_leadership(NodeId(3)).expect("leader");
    let ready = nodes[0].take_ready();
    let timeout_now = ready
        .messages
        .into_iter()
        .find(|m| m.to == NodeId(3) && m.body == MessageBody::TimeoutNow)
        .expect("the leader sends TimeoutNow to an up-to-date target");
    nodes[2].step(timeout_now);
    nodes[2].campaign();
    for _ in 0..100 {
        nodes[2].tick();
    }
    assert_eq!(nodes[2].role(), Role::Follower);
    let term = nodes[2].term();
    assert!(
        nodes[2].take_ready().messages.iter().all(|m| !matches!(
            m.body,
            MessageBody::PreVote { .. } | MessageBody::RequestVote { .. }
        )),
        "a withheld node asks for no votes"
    );
    // Node 2 campaigns (the leader is gone); node 3's vote makes it leader.
    nodes.remove(0);
    nodes[0].campaign();
    deliver_all(&mut nodes);
    assert_eq!(nodes[0].role(), Role::Leader, "node 2 won with node 3's vote");
    assert_eq!(nodes[1].role(), Role::Follower);
    assert!(nodes[1].term() > term);
    // Released, it stands again: alone (node 2 gone too) its timer starts a pre-vote.
    let mut alone = nodes.remove(1);
    alone.withhold_candidacy(false);
    for _ in 0..100 {
        alone.tick();
    }
    assert_eq!(alone.role(), Role::PreCandidate);
}

#[test]
fn transfer_sends_timeout_now_and_target_campaigns_past_lease() {
    // Goal: §3.10 — transfer to an up-to-date follower sends TimeoutNow; its RequestVote carries
    // the transfer flag so a voter in lease still votes; proposals are refused meanwhile.
    let mut nodes = three_with_leader();
    nodes[0].transfer_leadership(NodeId(2)).expect("leader");
    assert_eq!(nodes[0].propose(vec![1]), Err(ProposeError::TransferInProgress));
    let ready = nodes[0].take_ready();
    assert_eq!(bodies_to(&ready, 2), vec![MessageBody::TimeoutNow]);
    nodes[1].step(
        ready
            .messages
            .into_iter()
            .find(|m| m.to == NodeId(2))
            .expect("timeout now"),
    );
    assert_eq!(nodes[1].role(), Role::Candidate);
    let ready = nodes[1].take_ready();
    let to_3 = bodies_to(&ready, 3);
    assert!(matches!(
        to_3[0],
        MessageBody::RequestVote {
            leadership_transfer: true,
            ..
        }
    ));
    for m in ready.messages {
        let to = m.to.0 as usize - 1;
        nodes[to].step(m);
    }
    deliver_all(&mut nodes);
    assert_eq!(nodes[1].role(), Role::Leader);
    assert_eq!(nodes[0].role(), Role::Follower);
}

#[test]
fn lagging_follower_gets_snapshot_after_compaction() {
    // Goal: once the entries a follower needs are compacted the leader streams the snapshot in
    // chunks (offsets from the follower's answers), and the follower installs it when done.
    let mut nodes = three_with_leader();
    let mut lagging = nodes.pop().expect("node 3");
    for i in 0..5u8 {
        nodes[0].propose(vec![i]).expect("accepts");
    }
    deliver_all(&mut nodes);
    let applied = nodes[0].applied_index();
    assert_eq!(applied, LogIndex(6));
    let meta = nodes[0].snapshot_meta(applied).expect("applied index in log");
    nodes[0].compact_log(meta.clone());
    assert_eq!(nodes[0].first_index(), LogIndex(7));
    // Node 3 comes back knowing only index 1 and rejects the leader's latest append.
    nodes[0].step(msg(
        3,
        1,
        1,
        MessageBody::AppendEntriesResponse {
            success: false,
            match_index: LogIndex(0),
            reject_index: LogIndex(6),
            conflict_index: LogIndex(2),
            conflict_term: None,
        },
    ));
    let ready = nodes[0].take_ready();
    assert_eq!(
        ready.snapshot_sends,
        vec![SnapshotSend {
            to: NodeId(3),
            term: Term(1),
            meta: meta.clone(),
            offset: 0
        }]
    );
    // First chunk; the follower asks for the next offset.
    lagging.step(msg(
        1,
        3,
        1,
        MessageBody::InstallSnapshot {
            meta: meta.clone(),
            offset: 0,
            data: vec![1, 2, 3],
            done: false,
        },
    ));
    let ready = lagging.take_ready();
    assert_eq!(ready.snapshot_chunks.len(), 1);
    assert_eq!(
        bodies_to(&ready, 1),
        vec![MessageBody::InstallSnapshotResponse {
            snapshot_index: LogIndex(6),
            next_offset: 3,
            done: false
        }]
    );
    nodes[0].step(ready.messages.into_iter().next().expect("response"));
    let ready = nodes[0].take_ready();
    assert_eq!(ready.snapshot_sends[0].offset, 3);
    // A chunk at the wrong offset is refused with the expected offset.
    lagging.step(msg(
        1,
        3,
        1,
        MessageBody::InstallSnapshot {
            meta: meta.clone(),
            offset: 9,
            data: vec![],
            done: true,
        },
    ));
    assert_eq!(
        bodies_to(&lagging.take_ready(), 1),
        vec![MessageBody::InstallSnapshotResponse {
            snapshot_index: LogIndex(6),
            next_offset: 3,
            done: false
        }]
    );
    lagging.step(msg(
        1,
        3,
        1,
        MessageBody::InstallSnapshot {
            meta: meta.clone(),
            offset: 3,
            data: vec![4],
            done: true,
        },
    ));
    let ready = lagging.take_ready();
    assert_eq!(ready.snapshot_install, Some(meta.clone()));
    assert!(ready.snapshot_chunks[0].done);
    assert_eq!(lagging.commit_index(), LogIndex(6));
    assert_eq!(lagging.last_index(), LogIndex(6));
    nodes[0].step(ready.messages.into_iter().next().expect("response"));
    nodes[0].propose(vec![9]).expect("accepts");
    let ready = nodes[0].take_ready();
    let appends = bodies_to(&ready, 3);
    assert!(
        matches!(
            appends.first(),
            Some(MessageBody::AppendEntries {
                prev_log_index: LogIndex(6),
                ..
            })
        ),
        "replication resumes after the snapshot: {appends:?}"
    );
}

#[test]
fn proposals_are_bounded_by_size_and_uncommitted_bytes() {
    // Goal: an oversized command is refused, and a leader that cannot commit pushes back with Busy.
    let mut c = config(1);
    c.entry_bytes_max = 100;
    c.uncommitted_bytes_max = 1000;
    let mut nodes = vec![node_with(c, &[1, 2, 3]), node(2, &[1, 2, 3]), node(3, &[1, 2, 3])];
    nodes[0].campaign();
    deliver_all(&mut nodes);
    let leader = &mut nodes[0];
    assert_eq!(
        leader.propose(vec![0; 101]),
        Err(ProposeError::TooLarge {
            size_bytes: 101,
            max_bytes: 100
        })
    );
    let mut n_accepted = 0;
    while leader.propose(vec![0; 100]).is_ok() {
        n_accepted += 1;
        assert!(n_accepted < 100, "never pushed back");
    }
    assert!(matches!(
        leader.propose(vec![0; 100]),
        Err(ProposeError::Busy { .. })
    ));
}

#[test]
fn learner_catches_up_then_is_promoted_and_counts_for_commit() {
    // Goal: a learner added while serving receives the log, is refused promotion while behind,
    // and once promoted becomes a voter that campaigns and counts in quorums.
    let mut nodes = three_with_leader();
    nodes.push(node_with(config(4), &[1, 2, 3]));
    for i in 0..3u8 {
        nodes[0].propose(vec![i]).expect("accepts");
    }
    deliver_all(&mut nodes);
    nodes[0]
        .propose_config_change(ConfigChange::AddLearner(NodeId(4)), vec![])
        .expect("add learner");
    // Before anything reaches node 4, promotion is refused (pending change, then behind).
    assert_eq!(
        nodes[0].propose_config_change(ConfigChange::PromoteLearner(NodeId(4)), vec![]),
        Err(ProposeError::ConfigChangePending)
    );
    // Deliver while node 4 is unreachable: the change commits on the voters alone.
    let mut voters: Vec<Raft> = nodes.drain(..3).collect();
    deliver_all(&mut voters);
    assert!(matches!(
        voters[0].propose_config_change(ConfigChange::PromoteLearner(NodeId(4)), vec![]),
        Err(ProposeError::LearnerBehind { .. })
    ));
    voters.append(&mut nodes);
    let mut nodes = voters;
    // Heartbeat responses resume the probe; node 4 catches up.
    nodes[0].tick();
    deliver_all(&mut nodes);
    assert_eq!(nodes[3].last_index(), nodes[0].last_index());
    assert_eq!(nodes[3].role(), Role::Learner);
    nodes[0]
        .propose_config_change(ConfigChange::PromoteLearner(NodeId(4)), vec![])
        .expect("promote");
    deliver_all(&mut nodes);
    nodes[0].tick();
    deliver_all(&mut nodes);
    assert_eq!(nodes[3].role(), Role::Follower);
    assert_eq!(nodes[0].membership().voters.len(), 4);
    // With 4 voters a quorum is 3: leader + node 4 alone cannot commit.
    let mut two: Vec<Raft> = vec![nodes.remove(0), nodes.remove(2)];
    let (_, index) = two[0].propose(vec![42]).expect("accepts");
    deliver_all(&mut two);
    assert!(two[0].commit_index() < index);
}

#[test]
fn leader_appends_may_leave_before_persisting_unless_the_commit_rests_on_them() {
    // Goal: §10.2.1 is used only where it is safe: a leader's appends are marked sendable before
    // its fsync, a follower's acknowledgement and a candidate's vote request never are, and a
    // single voter (whose commit index covers its own new entries) persists first.
    let mut nodes = three_with_leader();
    nodes[0].propose(b"x".to_vec()).expect("leader");
    let ready = nodes[0].take_ready();
    assert_eq!(ready.entries.len(), 1);
    assert!(
        !bodies_to(&ready, 2).is_empty(),
        "the entry goes to the followers"
    );
    assert!(ready.send_before_persist, "a leader's appends overlap its fsync");
    for m in ready.messages {
        if m.to == NodeId(2) {
            nodes[1].step(m);
        }
    }
    let ack = nodes[1].take_ready();
    assert_eq!(ack.entries.len(), 1);
    assert!(!ack.messages.is_empty());
    assert!(
        !ack.send_before_persist,
        "a follower acknowledges only what is durable"
    );

    let mut voter = node(3, &[1, 2, 3]);
    voter.step(msg(
        2,
        3,
        5,
        MessageBody::RequestVote {
            last_log_index: LogIndex(0),
            last_log_term: Term(0),
            leadership_transfer: false,
        },
    ));
    let ready = voter.take_ready();
    assert!(ready.hard_state.is_some_and(|hs| hs.vote == Some(NodeId(2))));
    assert!(!ready.send_before_persist, "a vote is granted only once durable");

    let mut single = node(1, &[1]);
    single.campaign();
    let _ = single.take_ready();
    single.propose(b"y".to_vec()).expect("leader");
    let ready = single.take_ready();
    assert_eq!(single.role(), Role::Leader);
    assert_eq!(ready.entries.len(), 1);
    assert!(single.commit_index() >= ready.entries[0].index, "commits at once");
    assert!(
        !ready.send_before_persist,
        "the commit index rests on these entries"
    );
}

#[test]
fn followers_hear_of_a_commit_at_once_not_at_the_next_heartbeat() {
    // Goal: when acknowledgements advance the leader's commit index and no append is going out
    // to carry it, the leader tells the followers in the same round (no tick needed), so reads
    // and watches served by a follower do not lag by a heartbeat interval.
    let mut nodes = three_with_leader();
    let (_, index) = nodes[0].propose(b"x".to_vec()).expect("leader");
    let ready = nodes[0].take_ready();
    for m in ready.messages {
        let to = m.to.0 as usize - 1;
        nodes[to].step(m);
    }
    let mut acks = Vec::new();
    for follower in &mut nodes[1..] {
        let ready = follower.take_ready();
        assert!(follower.commit_index() < index, "not committed before the acks");
        acks.extend(ready.messages);
    }
    for ack in acks {
        nodes[0].step(ack);
    }
    assert_eq!(nodes[0].commit_index(), index);
    let ready = nodes[0].take_ready();
    for to in [2, 3] {
        let commits: Vec<LogIndex> = bodies_to(&ready, to)
            .into_iter()
            .filter_map(|body| match body {
                MessageBody::Heartbeat { commit, .. } => Some(commit),
                MessageBody::AppendEntries { leader_commit, .. } => Some(leader_commit),
                _ => None,
            })
            .collect();
        assert_eq!(
            commits,
            vec![index],
            "node {to} is told the new commit index once"
        );
    }
    for m in ready.messages {
        let to = m.to.0 as usize - 1;
        nodes[to].step(m);
    }
    for follower in &nodes[1..] {
        assert_eq!(follower.commit_index(), index);
    }
    // Told once: with nothing new, the next round sends no notice.
    deliver_all(&mut nodes);
    assert!(nodes[0].take_ready().messages.is_empty());
}
