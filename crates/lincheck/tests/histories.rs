//! Hand-written histories with known verdicts: the classic examples of Herlihy & Wing,
//! Knossos and Porcupine, on the register and key-value models.

use std::time::{Duration, Instant};

use shoal_lincheck::{
    check, CheckResult, ClientId, HistoryError, HistoryRecorder, KvInput, KvModel, KvOutput, Operation,
    RegisterInput, RegisterModel, RegisterOutput,
};

type RegisterOp = Operation<RegisterInput<u64>, RegisterOutput<u64>>;
type KvOp = Operation<KvInput, KvOutput>;

fn write(client: u64, value: u64, call_time: u64, return_time: u64) -> RegisterOp {
    Operation::returned(
        ClientId(client),
        RegisterInput::Write(value),
        call_time,
        RegisterOutput::Written,
        return_time,
    )
}

fn write_unknown(client: u64, value: u64, call_time: u64) -> RegisterOp {
    Operation::unknown(ClientId(client), RegisterInput::Write(value), call_time)
}

fn read(client: u64, value: u64, call_time: u64, return_time: u64) -> RegisterOp {
    Operation::returned(
        ClientId(client),
        RegisterInput::Read,
        call_time,
        RegisterOutput::Read(value),
        return_time,
    )
}

fn check_register(history: &[RegisterOp]) -> CheckResult<RegisterInput<u64>, RegisterOutput<u64>> {
    check(&RegisterModel::new(0), history, None).expect("well-formed history")
}

fn kv(client: u64, input: KvInput, call_time: u64, output: KvOutput, return_time: u64) -> KvOp {
    Operation::returned(ClientId(client), input, call_time, output, return_time)
}

fn value(text: &str) -> KvOutput {
    KvOutput::Value(Some(text.to_string()))
}

fn check_kv(history: &[KvOp]) -> CheckResult<KvInput, KvOutput> {
    check(&KvModel, history, None).expect("well-formed history")
}

#[test]
fn empty_history_is_linearizable() {
    // Goal: nothing happened, so nothing can be wrong.
    assert_eq!(check_register(&[]), CheckResult::Ok);
    assert_eq!(check_kv(&[]), CheckResult::Ok);
}

#[test]
fn sequential_write_then_read_is_linearizable() {
    // Goal: the trivial sequential history passes, including a read of the initial value.
    let history = [read(1, 0, 0, 1), write(1, 5, 2, 3), read(2, 5, 4, 5)];
    assert_eq!(check_register(&history), CheckResult::Ok);
}

#[test]
fn stale_read_after_completed_write_is_illegal() {
    // Goal: a read that starts after a write completed must not see the older value.
    let history = [write(1, 1, 0, 10), read(2, 0, 20, 30)];
    let result = check_register(&history);
    let violation = result.violation().expect("a stale read is not linearizable");
    assert_eq!(violation.history_idxs, vec![0, 1]);
    assert_eq!(violation.longest_linearization, vec![0]);
    let text = violation.to_string();
    assert!(text.contains("Read(0)"), "{text}");
}

#[test]
fn touching_intervals_count_as_concurrent() {
    // Goal: a read called at the very instant a write returns may be ordered before it.
    let history = [write(1, 1, 0, 10), read(2, 0, 10, 20)];
    assert_eq!(check_register(&history), CheckResult::Ok);
}

#[test]
fn concurrent_writes_may_be_read_in_either_order() {
    // Goal: two overlapping writes may take effect in either order, so a later read may
    // see either value.
    for seen in [1, 2] {
        let history = [write(1, 1, 0, 10), write(2, 2, 5, 15), read(3, seen, 20, 30)];
        assert_eq!(check_register(&history), CheckResult::Ok, "read saw {seen}");
    }
}

#[test]
fn concurrent_writes_settle_on_one_order() {
    // Goal: once both overlapping writes completed, two sequential reads cannot see the
    // winner flip.
    let history = [
        write(1, 1, 0, 10),
        write(2, 2, 5, 15),
        read(3, 2, 20, 30),
        read(3, 1, 40, 50),
    ];
    assert!(check_register(&history).is_illegal());
}

#[test]
fn read_concurrent_with_write_may_see_old_or_new_value() {
    // Goal: a read overlapping a write may be ordered on either side of it.
    for seen in [0, 1] {
        let history = [write(1, 1, 0, 100), read(2, seen, 10, 20)];
        assert_eq!(check_register(&history), CheckResult::Ok, "read saw {seen}");
    }
}

#[test]
fn new_then_old_read_is_illegal() {
    // Goal: once a read saw the new value, a later read must not see the old one, even
    // while the write is still in progress; the other way round is fine.
    let new_then_old = [write(1, 1, 0, 100), read(2, 1, 10, 20), read(3, 0, 30, 40)];
    let result = check_register(&new_then_old);
    let violation = result.violation().expect("new-old inversion is not linearizable");
    assert_eq!(violation.history_idxs, vec![0, 1, 2]);
    assert_eq!(
        violation.operations[0].return_time, None,
        "the write had not returned by the cut"
    );

    let old_then_new = [write(1, 1, 0, 100), read(2, 0, 10, 20), read(3, 1, 30, 40)];
    assert_eq!(check_register(&old_then_new), CheckResult::Ok);
}

#[test]
fn read_of_value_never_written_is_illegal() {
    // Goal: a value nobody wrote cannot be read.
    let history = [write(1, 1, 0, 10), read(2, 7, 5, 15)];
    assert!(check_register(&history).is_illegal());
}

#[test]
fn unknown_write_may_or_may_not_take_effect() {
    // Goal: a write whose client timed out may have applied or not; both readings pass.
    for seen in [0, 1] {
        let history = [write_unknown(1, 1, 0), read(2, seen, 10, 20)];
        assert_eq!(check_register(&history), CheckResult::Ok, "read saw {seen}");
    }
    // Long after the call, the write still may never have happened.
    let never = [
        write_unknown(1, 1, 0),
        read(2, 0, 1_000, 1_010),
        read(2, 0, 2_000, 2_010),
    ];
    assert_eq!(check_register(&never), CheckResult::Ok);
}

#[test]
fn unknown_write_may_take_effect_late() {
    // Goal: an unknown-outcome write can take effect any time after its call, even after
    // reads that did not see it.
    let history = [
        write_unknown(1, 1, 0),
        read(2, 0, 10, 20),
        read(2, 0, 30, 40),
        read(3, 1, 50, 60),
    ];
    assert_eq!(check_register(&history), CheckResult::Ok);
}

#[test]
fn unknown_write_cannot_be_undone() {
    // Goal: once a read saw the unknown write's value, a later read cannot see the old one.
    let history = [write_unknown(1, 1, 0), read(2, 1, 10, 20), read(3, 0, 30, 40)];
    assert!(check_register(&history).is_illegal());
}

#[test]
fn unknown_write_cannot_take_effect_before_its_call() {
    // Goal: an unknown outcome widens the interval only forward in time.
    let history = [read(2, 1, 0, 10), write_unknown(1, 1, 20)];
    assert!(check_register(&history).is_illegal());
}

#[test]
fn unknown_write_overlaps_later_operations_of_its_client() {
    // Goal: after a timeout the client moves on; its later write may be overwritten by
    // the earlier, still-pending one.
    let history = [write_unknown(1, 1, 0), write(1, 2, 10, 20), read(2, 1, 30, 40)];
    assert_eq!(check_register(&history), CheckResult::Ok);
}

#[test]
fn cas_cannot_succeed_twice_from_the_same_value() {
    // Goal: two concurrent create-if-absent CASes cannot both win; one win and one loss can.
    let both_win = [
        kv(1, KvInput::cas("k", None, "a"), 0, KvOutput::Swapped(true), 10),
        kv(2, KvInput::cas("k", None, "b"), 0, KvOutput::Swapped(true), 10),
    ];
    assert!(check_kv(&both_win).is_illegal());

    let one_wins = [
        kv(1, KvInput::cas("k", None, "a"), 0, KvOutput::Swapped(true), 10),
        kv(2, KvInput::cas("k", None, "b"), 0, KvOutput::Swapped(false), 10),
        kv(3, KvInput::get("k"), 20, value("a"), 30),
    ];
    assert_eq!(check_kv(&one_wins), CheckResult::Ok);
}

#[test]
fn cas_failure_and_success_agree_with_reads() {
    // Goal: a CAS fails only if the value differs, and a successful CAS is visible to
    // every later read.
    let put = kv(1, KvInput::put("k", "a"), 0, KvOutput::Done, 10);
    let failed_on_match = [
        put.clone(),
        kv(
            2,
            KvInput::cas("k", Some("a"), "b"),
            20,
            KvOutput::Swapped(false),
            30,
        ),
    ];
    assert!(check_kv(&failed_on_match).is_illegal());

    let swapped = kv(
        2,
        KvInput::cas("k", Some("a"), "b"),
        20,
        KvOutput::Swapped(true),
        30,
    );
    let reads_old = [
        put.clone(),
        swapped.clone(),
        kv(3, KvInput::get("k"), 40, value("a"), 50),
    ];
    assert!(check_kv(&reads_old).is_illegal());
    let reads_new = [put, swapped, kv(3, KvInput::get("k"), 40, value("b"), 50)];
    assert_eq!(check_kv(&reads_new), CheckResult::Ok);
}

#[test]
fn unknown_cas_may_or_may_not_swap() {
    // Goal: a CAS of unknown outcome is "applied if it matched" or "never applied".
    let put = kv(1, KvInput::put("k", "a"), 0, KvOutput::Done, 10);
    let cas = Operation::unknown(ClientId(2), KvInput::cas("k", Some("a"), "b"), 20);
    for seen in ["a", "b"] {
        let history = [
            put.clone(),
            cas.clone(),
            kv(3, KvInput::get("k"), 40, value(seen), 50),
        ];
        assert_eq!(check_kv(&history), CheckResult::Ok, "get saw {seen}");
    }
    // It never matched, so it can never have produced "c".
    let mismatched = Operation::unknown(ClientId(2), KvInput::cas("k", Some("x"), "c"), 20);
    let history = [put, mismatched, kv(3, KvInput::get("k"), 40, value("c"), 50)];
    assert!(check_kv(&history).is_illegal());
}

#[test]
fn concurrent_appends_apply_in_some_order() {
    // Goal: overlapping appends both apply, in either order, but neither may be lost.
    let appends = [
        kv(1, KvInput::append("k", "a"), 0, KvOutput::Done, 10),
        kv(2, KvInput::append("k", "b"), 0, KvOutput::Done, 10),
    ];
    for (seen, linearizable) in [
        ("ab", true),
        ("ba", true),
        ("a", false),
        ("b", false),
        ("aab", false),
    ] {
        let mut history = appends.to_vec();
        history.push(kv(3, KvInput::get("k"), 20, value(seen), 30));
        assert_eq!(check_kv(&history).is_ok(), linearizable, "get saw {seen}");
    }
}

#[test]
fn unknown_append_applies_at_most_once() {
    // Goal: an append of unknown outcome may be missing from reads but not doubled.
    let append = Operation::unknown(ClientId(1), KvInput::append("k", "a"), 0);
    for (seen, linearizable) in [(None, true), (Some("a"), true), (Some("aa"), false)] {
        let output = KvOutput::Value(seen.map(str::to_string));
        let history = [append.clone(), kv(2, KvInput::get("k"), 10, output, 20)];
        assert_eq!(check_kv(&history).is_ok(), linearizable, "get saw {seen:?}");
    }
}

#[test]
fn delete_makes_the_key_missing() {
    // Goal: after a completed delete a get sees no value, and a missing key is not "".
    let prefix = [
        kv(1, KvInput::put("k", "a"), 0, KvOutput::Done, 10),
        kv(1, KvInput::delete("k"), 20, KvOutput::Done, 30),
    ];
    for (output, linearizable) in [
        (KvOutput::Value(None), true),
        (value("a"), false),
        (value(""), false),
    ] {
        let mut history = prefix.to_vec();
        history.push(kv(2, KvInput::get("k"), 40, output.clone(), 50));
        assert_eq!(
            check_kv(&history).is_ok(),
            linearizable,
            "get answered {output:?}"
        );
    }
}

#[test]
fn answer_of_the_wrong_kind_is_illegal() {
    // Goal: a put answered like a get cannot be explained by any order.
    let history = [kv(1, KvInput::put("k", "a"), 0, KvOutput::Value(None), 10)];
    assert!(check_kv(&history).is_illegal());
}

#[test]
fn violation_names_the_failing_key_only() {
    // Goal: keys are checked separately, and the violation shows only the failing key's
    // operations, with their indices in the original history.
    let history = [
        kv(1, KvInput::put("a", "1"), 0, KvOutput::Done, 10),
        kv(2, KvInput::put("b", "1"), 0, KvOutput::Done, 10),
        kv(1, KvInput::get("a"), 20, value("1"), 30),
        kv(2, KvInput::get("b"), 20, KvOutput::Value(None), 30),
        kv(3, KvInput::get("c"), 20, KvOutput::Value(None), 30),
    ];
    let result = check_kv(&history);
    let violation = result.violation().expect("the stale get on b is illegal");
    assert_eq!(violation.partition_idx, 1, "partitions are in key order: a, b, c");
    assert_eq!(violation.n_partitions, 3);
    assert_eq!(violation.history_idxs, vec![1, 3]);
    assert!(violation.operations.iter().all(|op| op.input.key() == "b"));
}

#[test]
fn violation_is_cut_to_the_shortest_failing_prefix() {
    // Goal: operations after the first unexplainable answer are left out of the report,
    // and the answer that breaks it returns last in the prefix.
    let mut history = Vec::new();
    for step in 0..10 {
        let time = step * 100;
        history.push(write(1, step + 1, time, time + 10));
        history.push(read(2, step + 1, time + 20, time + 30));
    }
    let stale_idx = history.len();
    history.push(read(3, 3, 2_000, 2_010));
    for step in 0..10 {
        let time = 3_000 + step * 100;
        history.push(write(1, 100 + step, time, time + 10));
    }
    let result = check_register(&history);
    let violation = result.violation().expect("the stale read is illegal");
    assert_eq!(violation.n_partition_operations, history.len());
    assert_eq!(violation.operations.len(), stale_idx + 1);
    assert_eq!(violation.history_idxs.last(), Some(&stale_idx));
    assert_eq!(violation.longest_linearization.len(), stale_idx);
}

#[test]
fn malformed_histories_are_rejected() {
    // Goal: inconsistent operations are reported with their index instead of checked.
    let backwards = [read(1, 0, 0, 1), read(1, 0, 10, 5)];
    assert_eq!(
        check(&RegisterModel::new(0), &backwards, None),
        Err(HistoryError::ReturnBeforeCall {
            operation_idx: 1,
            call_time: 10,
            return_time: 5
        })
    );
    let mut output_only = write_unknown(1, 1, 0);
    output_only.output = Some(RegisterOutput::Written);
    assert_eq!(
        check(&RegisterModel::new(0), &[output_only], None),
        Err(HistoryError::OutputWithoutReturn { operation_idx: 0 })
    );
    let mut return_only = write_unknown(1, 1, 0);
    return_only.return_time = Some(3);
    assert_eq!(
        check(&RegisterModel::new(0), &[return_only], None),
        Err(HistoryError::ReturnWithoutOutput { operation_idx: 0 })
    );
}

#[test]
fn exponential_search_times_out() {
    // Goal: the timeout bounds the search. Forty unknown appends of distinct strings
    // reach 2^40 distinct states, and a get of a value no subset explains forces them all.
    let mut history: Vec<KvOp> = (0..40)
        .map(|client| Operation::unknown(ClientId(client), KvInput::append("k", &format!("<{client}>")), 0))
        .collect();
    history.push(kv(99, KvInput::get("k"), 10, value("never"), 20));
    let result = check(&KvModel, &history, Some(Duration::from_millis(50))).expect("well-formed history");
    assert_eq!(result, CheckResult::Timeout);
}

#[test]
fn unread_unknown_puts_do_not_double_the_search() {
    // Goal: pending puts of unknown outcome that nobody reads cost linear, not 2^k, time
    // when the search gets stuck (here the get forces `a` after `b`). Stacking them on top
    // of each other used to cache {u1, u2} before {u2}, so subsumption never pruned:
    // k = 20 took seconds in release, k = 24 about a minute.
    let mut history: Vec<KvOp> = (0..24u64)
        .map(|i| Operation::unknown(ClientId(100 + i), KvInput::put("x", &format!("u{i}")), 0))
        .collect();
    history.push(kv(1, KvInput::put("x", "a"), 1, KvOutput::Done, 10));
    history.push(kv(2, KvInput::put("x", "b"), 2, KvOutput::Done, 11));
    history.push(kv(3, KvInput::get("x"), 12, value("a"), 13));
    let start = Instant::now();
    assert_eq!(check_kv(&history), CheckResult::Ok);
    // A get of a value nobody wrote must explore every remaining choice and still fail fast.
    let last = history.len() - 1;
    history[last].output = Some(value("never"));
    assert!(check_kv(&history).is_illegal());
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}

#[test]
fn recorder_leaves_unanswered_operations_unknown() {
    // Goal: the recorder fills in returns and keeps unanswered calls as unknown outcomes.
    let mut recorder = HistoryRecorder::new();
    let answered = recorder.record_call(ClientId(1), RegisterInput::Write(1), 0);
    recorder.record_call(ClientId(2), RegisterInput::Write(2), 1);
    recorder.record_return(answered, RegisterOutput::Written, 5);
    assert_eq!(
        recorder.into_operations(),
        vec![write(1, 1, 0, 5), write_unknown(2, 2, 1)]
    );
}

#[test]
#[should_panic(expected = "returned twice")]
fn recorder_rejects_a_second_return() {
    // Goal: a harness bug (two answers to one call) fails loudly instead of being checked.
    let mut recorder: HistoryRecorder<RegisterInput<u64>, RegisterOutput<u64>> = HistoryRecorder::new();
    let op = recorder.record_call(ClientId(1), RegisterInput::Read, 0);
    recorder.record_return(op, RegisterOutput::Read(0), 1);
    recorder.record_return(op, RegisterOutput::Read(0), 2);
}
