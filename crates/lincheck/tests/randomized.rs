//! Randomized tests: histories produced by simulating real atomic objects must pass, the
//! same histories with one answer corrupted must fail, and on small random histories the
//! checker must agree with an exhaustive search over every order. Every case is driven by
//! one seed, printed on failure, that replays it exactly.

use std::time::{Duration, Instant};

use shoal_lincheck::{
    check, CheckResult, ClientId, KvInput, KvModel, KvOutput, Model, Operation, RegisterInput, RegisterModel,
    RegisterOutput,
};

/// Generous bound for one check of a few hundred operations: it takes milliseconds, but
/// the machine is shared, so the bound only catches a search that went exponential.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// SplitMix64 (Steele et al., 2014), as in `shoal-raft`: the same sequence everywhere.
struct Rng {
    state: u64,
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng { state: seed }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[low, high)`.
    fn range(&mut self, low: u64, high: u64) -> u64 {
        assert!(low < high);
        low + self.next_u64() % (high - low)
    }

    fn percent(&mut self, percent: u64) -> bool {
        self.range(0, 100) < percent
    }
}

struct SimulationOptions {
    n_clients: u64,
    n_operations_per_client: u64,
    /// Chance that a client times out and never learns the answer.
    unknown_percent: u64,
}

/// One operation planned by the simulated clients before its answer is known.
struct Planned<I> {
    client_id: ClientId,
    input: I,
    call_time: u64,
    return_time: u64,
    /// Where it takes effect, or `None` for a timed-out request that was lost.
    effect_point: Option<(u64, u64)>,
    outcome_known: bool,
}

/// Runs `n_clients` sequential clients against a real atomic object: each operation takes
/// effect at a random instant inside its interval, in that order, through `apply`. An
/// operation whose client times out keeps an unknown outcome and takes effect or is lost
/// with equal chance; the client moves on either way.
fn simulate<I: Clone, O, S>(
    rng: &mut Rng,
    options: &SimulationOptions,
    mut choose_input: impl FnMut(&mut Rng) -> I,
    mut state: S,
    mut apply: impl FnMut(&mut S, &I) -> O,
) -> Vec<Operation<I, O>> {
    let mut planned = Vec::new();
    for client in 0..options.n_clients {
        let mut time = rng.range(0, 20);
        for _ in 0..options.n_operations_per_client {
            let call_time = time;
            let return_time = call_time + rng.range(0, 40);
            let outcome_known = !rng.percent(options.unknown_percent);
            let takes_effect = outcome_known || rng.percent(50);
            let effect_point = takes_effect.then(|| (rng.range(call_time, return_time + 1), rng.next_u64()));
            planned.push(Planned {
                client_id: ClientId(client),
                input: choose_input(rng),
                call_time,
                return_time,
                effect_point,
                outcome_known,
            });
            time = return_time + rng.range(0, 20);
        }
    }
    let mut order: Vec<usize> = (0..planned.len())
        .filter(|&idx| planned[idx].effect_point.is_some())
        .collect();
    order.sort_by_key(|&idx| planned[idx].effect_point);
    let mut outputs: Vec<Option<O>> = planned.iter().map(|_| None).collect();
    for idx in order {
        outputs[idx] = Some(apply(&mut state, &planned[idx].input));
    }
    planned
        .into_iter()
        .zip(outputs)
        .map(|(plan, output)| match output {
            Some(output) if plan.outcome_known => Operation::returned(
                plan.client_id,
                plan.input,
                plan.call_time,
                output,
                plan.return_time,
            ),
            _ => Operation::unknown(plan.client_id, plan.input, plan.call_time),
        })
        .collect()
}

fn simulate_register(
    seed: u64,
    options: &SimulationOptions,
) -> Vec<Operation<RegisterInput<u64>, RegisterOutput<u64>>> {
    let mut rng = Rng::new(seed);
    let mut next_value = 0;
    simulate(
        &mut rng,
        options,
        |rng| {
            if rng.percent(40) {
                next_value += 1;
                RegisterInput::Write(next_value)
            } else {
                RegisterInput::Read
            }
        },
        0,
        |register, input| match input {
            RegisterInput::Write(value) => {
                *register = *value;
                RegisterOutput::Written
            }
            RegisterInput::Read => RegisterOutput::Read(*register),
        },
    )
}

fn simulate_kv(seed: u64, options: &SimulationOptions) -> Vec<Operation<KvInput, KvOutput>> {
    let mut rng = Rng::new(seed);
    let mut next_value = 0;
    let mut last_value = String::new();
    let keys = ["a", "b", "c", "d"];
    let map: std::collections::BTreeMap<String, String> = Default::default();
    simulate(
        &mut rng,
        options,
        |rng| {
            let key = keys[rng.range(0, keys.len() as u64) as usize];
            next_value += 1;
            let value = format!("v{next_value};");
            let previous = std::mem::replace(&mut last_value, value.clone());
            match rng.range(0, 10) {
                0..=1 => KvInput::put(key, &value),
                2..=5 => KvInput::get(key),
                6..=7 => KvInput::append(key, &value),
                8 => KvInput::cas(key, Some(&previous), &value),
                _ => KvInput::delete(key),
            }
        },
        map,
        |map, input| match input {
            KvInput::Put { key, value } => {
                map.insert(key.clone(), value.clone());
                KvOutput::Done
            }
            KvInput::Get { key } => KvOutput::Value(map.get(key).cloned()),
            KvInput::Append { key, value } => {
                map.entry(key.clone()).or_default().push_str(value);
                KvOutput::Done
            }
            KvInput::Cas { key, expected, new } => {
                let swapped = map.get(key) == expected.as_ref();
                if swapped {
                    map.insert(key.clone(), new.clone());
                }
                KvOutput::Swapped(swapped)
            }
            KvInput::Delete { key } => {
                map.remove(key);
                KvOutput::Done
            }
        },
    )
}

/// Checks a history that must pass, and returns how long it took.
fn expect_ok<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>], seed: u64) -> Duration
where
    M::Input: PartialEq,
    M::Output: PartialEq,
{
    let start = Instant::now();
    let result = check(model, history, Some(CHECK_TIMEOUT)).expect("well-formed history");
    let elapsed = start.elapsed();
    match result {
        CheckResult::Ok => elapsed,
        CheckResult::Illegal { violation } => {
            panic!("seed {seed}: a real execution was rejected:\n{violation}")
        }
        CheckResult::Timeout => panic!("seed {seed}: no verdict within {CHECK_TIMEOUT:?}"),
    }
}

const REGISTER_OPTIONS: SimulationOptions = SimulationOptions {
    n_clients: 10,
    n_operations_per_client: 30,
    unknown_percent: 5,
};

#[test]
fn simulated_register_histories_are_linearizable() {
    // Goal: every history of a real atomic register (300 operations, 10 clients, some
    // timeouts) passes, each in well under a second.
    let mut slowest = Duration::ZERO;
    for seed in 0..40 {
        let history = simulate_register(seed, &REGISTER_OPTIONS);
        slowest = slowest.max(expect_ok(&RegisterModel::new(0), &history, seed));
    }
    println!("slowest register check: {slowest:?}");
}

#[test]
fn corrupted_register_read_is_illegal() {
    // Goal: replacing one read's answer by a value never written makes every history
    // fail, and the report's shortest failing prefix ends with that read.
    let mut slowest = Duration::ZERO;
    for seed in 0..40 {
        let mut history = simulate_register(seed, &REGISTER_OPTIONS);
        let mut rng = Rng::new(seed ^ 0xC0FFEE);
        let reads: Vec<usize> = (0..history.len())
            .filter(|&idx| history[idx].input == RegisterInput::Read && history[idx].output.is_some())
            .collect();
        let corrupted_idx = reads[rng.range(0, reads.len() as u64) as usize];
        history[corrupted_idx].output = Some(RegisterOutput::Read(u64::MAX));

        let start = Instant::now();
        let result =
            check(&RegisterModel::new(0), &history, Some(CHECK_TIMEOUT)).expect("well-formed history");
        slowest = slowest.max(start.elapsed());
        let CheckResult::Illegal { violation } = result else {
            panic!("seed {seed}: corrupted read {corrupted_idx} not detected: {result:?}");
        };
        let position = violation
            .history_idxs
            .iter()
            .position(|&idx| idx == corrupted_idx)
            .unwrap_or_else(|| panic!("seed {seed}: corrupted read missing from\n{violation}"));
        let corrupted_return_time = violation.operations[position].return_time;
        assert!(corrupted_return_time.is_some(), "seed {seed}:\n{violation}");
        assert!(
            violation
                .operations
                .iter()
                .all(|op| op.return_time <= corrupted_return_time),
            "seed {seed}: the prefix should end at the corrupted read:\n{violation}"
        );
    }
    println!("slowest check and description of a corrupted register history: {slowest:?}");
}

const KV_OPTIONS: SimulationOptions = SimulationOptions {
    n_clients: 10,
    n_operations_per_client: 40,
    unknown_percent: 5,
};

#[test]
fn simulated_kv_histories_are_linearizable() {
    // Goal: every history of a real key-value store with all five operations passes.
    let mut slowest = Duration::ZERO;
    for seed in 0..40 {
        let history = simulate_kv(seed, &KV_OPTIONS);
        slowest = slowest.max(expect_ok(&KvModel, &history, seed));
    }
    println!("slowest kv check: {slowest:?}");
}

#[test]
fn corrupted_kv_get_is_illegal() {
    // Goal: one get answering a value never written makes the history fail, and the
    // violation is reported on that get's key.
    let mut slowest = Duration::ZERO;
    for seed in 0..40 {
        let mut history = simulate_kv(seed, &KV_OPTIONS);
        let mut rng = Rng::new(seed ^ 0xC0FFEE);
        let gets: Vec<usize> = (0..history.len())
            .filter(|&idx| matches!(history[idx].input, KvInput::Get { .. }) && history[idx].output.is_some())
            .collect();
        let corrupted_idx = gets[rng.range(0, gets.len() as u64) as usize];
        history[corrupted_idx].output = Some(KvOutput::Value(Some("never written".to_string())));

        let start = Instant::now();
        let result = check(&KvModel, &history, Some(CHECK_TIMEOUT)).expect("well-formed history");
        slowest = slowest.max(start.elapsed());
        let CheckResult::Illegal { violation } = result else {
            panic!("seed {seed}: corrupted get {corrupted_idx} not detected: {result:?}");
        };
        assert!(
            violation.history_idxs.contains(&corrupted_idx),
            "seed {seed}:\n{violation}"
        );
        let key = history[corrupted_idx].input.key();
        assert!(
            violation.operations.iter().all(|op| op.input.key() == key),
            "seed {seed}:\n{violation}"
        );
    }
    println!("slowest check and description of a corrupted kv history: {slowest:?}");
}

#[test]
fn many_unknown_writes_stay_fast() {
    // Goal: subsumption keeps pending writes of unknown outcome from making the search
    // exponential: a quarter of 200 register operations time out.
    let options = SimulationOptions {
        n_clients: 10,
        n_operations_per_client: 20,
        unknown_percent: 25,
    };
    let mut slowest = Duration::ZERO;
    for seed in 0..10 {
        let history = simulate_register(seed, &options);
        slowest = slowest.max(expect_ok(&RegisterModel::new(0), &history, seed));
    }
    println!("slowest check with 25% unknown outcomes: {slowest:?}");
}

/// A counter whose client library retries increments after a timeout: an increment of
/// unknown outcome may have been applied once or twice (or never). The one model here
/// where `step_unknown` returns several states.
struct RetriedCounterModel;

#[derive(Clone, Debug, PartialEq, Eq)]
enum CounterInput {
    Increment,
    Read,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum CounterOutput {
    Incremented,
    Read(u64),
}

impl Model for RetriedCounterModel {
    type State = u64;
    type Input = CounterInput;
    type Output = CounterOutput;

    fn init(&self) -> u64 {
        0
    }

    fn step(&self, state: &u64, input: &CounterInput, output: &CounterOutput) -> Option<u64> {
        match (input, output) {
            (CounterInput::Increment, CounterOutput::Incremented) => Some(state + 1),
            (CounterInput::Read, CounterOutput::Read(value)) => (value == state).then_some(*state),
            _ => None,
        }
    }

    fn step_unknown(&self, state: &u64, input: &CounterInput) -> Vec<u64> {
        match input {
            CounterInput::Increment => vec![state + 1, state + 2],
            CounterInput::Read => vec![*state],
        }
    }
}

/// Decides linearizability by trying every order of every subset of unknown-outcome
/// operations: exponential, obviously correct, independent of the search under test.
fn linearizable_by_brute_force<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> bool {
    fn extend<M: Model>(
        model: &M,
        history: &[Operation<M::Input, M::Output>],
        done: &mut [bool],
        state: &M::State,
    ) -> bool {
        if (0..history.len()).all(|idx| done[idx] || history[idx].return_time.is_none()) {
            return true;
        }
        for next in 0..history.len() {
            // `next` may go now only if no pending operation returned before it was called.
            let must_wait = (0..history.len()).any(|other| {
                !done[other]
                    && history[other]
                        .return_time
                        .is_some_and(|t| t < history[next].call_time)
            });
            if done[next] || must_wait {
                continue;
            }
            let op = &history[next];
            let next_states = match &op.output {
                Some(output) => model.step(state, &op.input, output).into_iter().collect(),
                None => model.step_unknown(state, &op.input),
            };
            for next_state in next_states {
                done[next] = true;
                let found = extend(model, history, done, &next_state);
                done[next] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }
    extend(model, history, &mut vec![false; history.len()], &model.init())
}

/// A random history (not an execution: answers are drawn at random from a small domain,
/// so both verdicts are common) of up to `n_operations_max` operations on few clients.
fn random_history<I, O>(
    rng: &mut Rng,
    n_operations_max: u64,
    mut choose: impl FnMut(&mut Rng) -> (I, O),
) -> Vec<Operation<I, O>> {
    let n_operations = rng.range(1, n_operations_max + 1);
    (0..n_operations)
        .map(|client| {
            let call_time = rng.range(0, 20);
            let (input, output) = choose(rng);
            if rng.percent(30) {
                Operation::unknown(ClientId(client), input, call_time)
            } else {
                Operation::returned(
                    ClientId(client),
                    input,
                    call_time,
                    output,
                    call_time + rng.range(0, 10),
                )
            }
        })
        .collect()
}

/// Compares `check` with the brute force on `n_cases` random histories; returns how many
/// were linearizable, so callers can make sure both verdicts were exercised.
fn compare_with_brute_force<M: Model>(
    model: &M,
    n_cases: u64,
    mut generate: impl FnMut(&mut Rng) -> Vec<Operation<M::Input, M::Output>>,
) -> u64 {
    let mut n_linearizable = 0;
    for seed in 0..n_cases {
        let history = generate(&mut Rng::new(seed));
        let expected = linearizable_by_brute_force(model, &history);
        let result = check(model, &history, Some(CHECK_TIMEOUT)).expect("well-formed history");
        assert!(!matches!(result, CheckResult::Timeout), "seed {seed}: timeout");
        assert_eq!(
            result.is_ok(),
            expected,
            "seed {seed}: check says {}, brute force says {expected}, history {history:#?}",
            result.is_ok()
        );
        if let Some(violation) = result.violation() {
            assert!(
                !linearizable_by_brute_force(model, &violation.operations),
                "seed {seed}: the reported prefix is linearizable:\n{violation:?}"
            );
        }
        n_linearizable += u64::from(expected);
    }
    n_linearizable
}

const N_BRUTE_FORCE_CASES: u64 = 3_000;

#[test]
fn register_search_agrees_with_brute_force() {
    // Goal: on small random register histories with unknown outcomes, the search (lift,
    // cache, subsumption) gives exactly the brute force's verdict.
    let n_linearizable = compare_with_brute_force(&RegisterModel::new(0u8), N_BRUTE_FORCE_CASES, |rng| {
        random_history(rng, 8, |rng| {
            let value = rng.range(0, 3) as u8;
            if rng.percent(50) {
                (RegisterInput::Write(value), RegisterOutput::Written)
            } else {
                (RegisterInput::Read, RegisterOutput::Read(value))
            }
        })
    });
    assert!(
        (300..N_BRUTE_FORCE_CASES - 300).contains(&n_linearizable),
        "{n_linearizable}"
    );
}

#[test]
fn kv_search_agrees_with_brute_force() {
    // Goal: same as for the register, with non-idempotent appends and CASes on one key.
    let n_linearizable = compare_with_brute_force(&KvModel, N_BRUTE_FORCE_CASES, |rng| {
        random_history(rng, 7, |rng| {
            let value = ["a", "b"][rng.range(0, 2) as usize];
            let seen =
                [None, Some("a"), Some("b"), Some("ab"), Some("ba"), Some("aa")][rng.range(0, 6) as usize];
            match rng.range(0, 5) {
                0 => (KvInput::put("k", value), KvOutput::Done),
                1 => (KvInput::get("k"), KvOutput::Value(seen.map(str::to_string))),
                2 => (KvInput::append("k", value), KvOutput::Done),
                3 => (KvInput::cas("k", seen, value), KvOutput::Swapped(rng.percent(50))),
                _ => (KvInput::delete("k"), KvOutput::Done),
            }
        })
    });
    assert!(
        (300..N_BRUTE_FORCE_CASES - 300).contains(&n_linearizable),
        "{n_linearizable}"
    );
}

#[test]
fn nondeterministic_model_search_agrees_with_brute_force() {
    // Goal: when an unknown outcome can lead to several states, every one is explored.
    let n_linearizable = compare_with_brute_force(&RetriedCounterModel, N_BRUTE_FORCE_CASES, |rng| {
        random_history(rng, 8, |rng| {
            if rng.percent(50) {
                (CounterInput::Increment, CounterOutput::Incremented)
            } else {
                (CounterInput::Read, CounterOutput::Read(rng.range(0, 5)))
            }
        })
    });
    assert!(
        (300..N_BRUTE_FORCE_CASES - 300).contains(&n_linearizable),
        "{n_linearizable}"
    );
}
