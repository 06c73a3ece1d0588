//! A linearizability checker for histories recorded by Shoal's simulator and process tests.
//!
//! A history is *linearizable* (Herlihy & Wing, 1990) if every operation can be given a
//! single instant between its call and its return such that executing the operations one
//! at a time in the order of those instants, against a sequential [`Model`], produces
//! exactly the outputs the clients saw. [`check`] decides that question.
//!
//! # Layout
//!
//! - `lib.rs`: [`Operation`], [`Model`], [`check`], [`CheckResult`], [`Violation`],
//!   [`HistoryError`].
//! - `search.rs`: the search (below). `bitset.rs`: the linearized-set bitset and hasher.
//! - `register.rs`: [`RegisterModel`], one read/write register.
//! - `kv.rs`: [`KvModel`], a key-value store with put, get, append, compare-and-swap and
//!   delete, partitioned per key.
//! - `recorder.rs`: [`HistoryRecorder`], which turns call/return events into a history.
//!
//! **Architecture invariant:** the crate knows nothing about Raft or any other Shoal crate
//! and starts no threads; the only clock it reads is the deadline of `timeout`.
//!
//! # The algorithm
//!
//! 1. **Partition** (P-compositionality, Horn & Kroening 2015): linearizability is local
//!    (Herlihy & Wing's "locality" property), so a history over independent objects is linearizable
//!    iff each object's sub-history is. [`Model::partition`] splits the history (the KV
//!    model: one partition per key) and each part is checked on its own, smallest first.
//! 2. **Event list** (Wing & Gong 1993): every operation contributes a call entry and a
//!    return entry to one doubly linked list sorted by time (a call before a return at the
//!    same instant, so touching operations count as concurrent). Operations of unknown
//!    outcome have only a call entry, in a second list (below).
//! 3. **Depth-first search:** scan the list from its head. A call entry is a candidate to
//!    linearize next: if the model accepts its output from the current state, *lift* the
//!    operation (unlink its call and return entries), push (operation, previous state) on
//!    a stack and restart the scan from the head. Meeting a return entry means that
//!    operation had to be linearized before everything after it and no candidate worked:
//!    pop the stack, *unlift* the operation, restore the state, and continue the scan
//!    after its call entry. An empty stack at that point means "not linearizable"; an
//!    exhausted list means "linearizable".
//! 4. **Memoization** (Lowe 2017, as in Athalye's Porcupine): before descending, look up
//!    the configuration (bitset of linearized operations, model state) in a cache; the
//!    rest of the search depends on nothing else, so a configuration seen before is
//!    skipped.
//! 5. **Description:** when a partition fails, binary search over its return events finds
//!    the shortest prefix that already fails (prefixes are monotone: a linearizable prefix
//!    has linearizable prefixes). The first probes are the return the search was stuck
//!    on and the one before it, which is usually the answer.
//!
//! # Operations whose outcome is unknown
//!
//! A client that timed out does not know whether its request took effect, and may find
//! out never. Such an operation (`return_time: None`) has no return entry, that is, its
//! return is at infinity: it can be linearized at any point after its call, or never.
//! Because it never blocks the scan, the list is exhausted as soon as every operation with
//! a known outcome is linearized, whatever remains. Its output is "anything": the search
//! asks [`Model::step_unknown`] for every state the input can lead to and tries each.
//! The cache applies subsumption to these operations: a configuration whose set of
//! linearized unknown-outcome operations is a superset of a cached one's, with the same
//! known-outcome set and state, can do nothing the cached one cannot, and is pruned. To
//! meet the small sets first, the scan tries unknown-outcome candidates (kept in a list
//! of their own) only after the known-outcome ones at the same depth. The randomized
//! tests compare all of this against an exhaustive search over every order.
//!
//! # Complexity
//!
//! Deciding linearizability is NP-complete (Gibbons & Korach, 1997) and the search is
//! exponential in the worst case. Its real cost is the number of distinct configurations:
//! with at most `c` operations concurrent at any instant, the linearized set is a prefix
//! of the history plus a subset of at most `c` in-flight operations, so there are about
//! `n · 2^c · |states|` configurations, each costing O(n / 64) to hash and compare, times
//! the candidates scanned at each. Each operation of unknown outcome stays in flight until
//! the end of the history, so it adds to `c`; subsumption removes most of that cost for
//! operations that overwrite (puts, deletes, register writes, compare-and-swaps) but not
//! for non-idempotent ones like appends, whose states all differ. Memory is the cache:
//! n / 64 words and one state per configuration. The `timeout` bounds both; keep
//! partitions to a few thousand operations.
//!
//! Measured in a release build on a shared 2-core machine (`tests/randomized.rs` prints
//! these): 300 register operations from ten clients, 5% of them timed out, check in under
//! 70 ms; proving that such a history with one corrupted read fails, and finding the
//! shortest failing prefix, takes under 0.5 s; 200 operations with 25% timed out, under
//! 0.4 s. Unoptimized builds are much slower: run checks with `--release`.
//!
//! # Using it
//!
//! Record, for each operation, the client, the input, the time the client *sent* it and
//! the time it *received* the answer, all from one monotonic clock. Widening an interval
//! is always safe (it only allows more orders); narrowing it can report a false
//! violation, so take the call time before sending and the return time after receiving.
//! Any unit works, as long as it is the same for all operations.
//!
//! - **In a deterministic simulator**, use the simulated time (ticks or nanoseconds): a
//!   client records the call when it hands the request to the simulated network and the
//!   return when the response is delivered. At the end, every request still waiting for an
//!   answer (a crashed leader, a partitioned client) has an unknown outcome.
//! - **In a real-process test**, take times from one `std::time::Instant` shared by all
//!   client threads of the test process (`start.elapsed().as_nanos() as u64`), and keep
//!   the recorder behind a `Mutex`. A timeout, a reset connection or a crash of the
//!   server makes the outcome unknown. Only an error that guarantees no effect (say
//!   `NotLeader` returned before the request was proposed) may be left out of the history.
//!
//! ```
//! use shoal_lincheck::{check, CheckResult, ClientId, HistoryRecorder, KvInput, KvModel, KvOutput};
//!
//! let mut recorder = HistoryRecorder::new();
//! let put = recorder.record_call(ClientId(1), KvInput::put("x", "1"), 0);
//! let get = recorder.record_call(ClientId(2), KvInput::get("x"), 5);
//! recorder.record_return(put, KvOutput::Done, 10);
//! recorder.record_return(get, KvOutput::Value(Some("1".to_string())), 12);
//! // Client 3 timed out: its put may have happened at any time after 20, or never.
//! recorder.record_call(ClientId(3), KvInput::put("x", "2"), 20);
//!
//! let history = recorder.into_operations();
//! let result = check(&KvModel, &history, None).expect("well-formed history");
//! assert_eq!(result, CheckResult::Ok);
//! ```
//!
//! On failure, [`CheckResult::Illegal`] carries a [`Violation`] whose `Display` shows the
//! shortest failing prefix of the smallest failing partition and how far the search got.

mod bitset;
mod kv;
mod recorder;
mod register;
mod search;

use std::fmt;
use std::hash::Hash;
use std::time::{Duration, Instant};

pub use kv::{KvInput, KvModel, KvOutput};
pub use recorder::HistoryRecorder;
pub use register::{RegisterInput, RegisterModel, RegisterOutput};

use search::{event_key, search, EventKey, OpView, SearchOutcome};

/// The client (process, thread, simulated session) that issued an operation. Used only to
/// describe violations: operations of one client may overlap after a timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}", self.0)
    }
}

/// One operation of a history. Times are in any unit of one monotonic clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation<I, O> {
    pub client_id: ClientId,
    pub input: I,
    /// When the client sent the request.
    pub call_time: u64,
    /// When the client received the answer; `None` when it never did (a timeout, a crash):
    /// the operation may then take effect at any time after `call_time`, or never.
    pub return_time: Option<u64>,
    /// The answer; `Some` exactly when `return_time` is.
    pub output: Option<O>,
}

impl<I, O> Operation<I, O> {
    /// An operation whose answer arrived.
    pub fn returned(client_id: ClientId, input: I, call_time: u64, output: O, return_time: u64) -> Self {
        Operation {
            client_id,
            input,
            call_time,
            return_time: Some(return_time),
            output: Some(output),
        }
    }

    /// An operation whose answer never arrived: it may or may not have taken effect.
    pub fn unknown(client_id: ClientId, input: I, call_time: u64) -> Self {
        Operation {
            client_id,
            input,
            call_time,
            return_time: None,
            output: None,
        }
    }
}

/// The sequential specification the history is checked against.
pub trait Model {
    /// The object's state; cached by the search, so keep it small and cheap to hash.
    type State: Clone + Eq + Hash;
    type Input: Clone + fmt::Debug;
    type Output: Clone + fmt::Debug;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// The state after `input` executes on `state` and answers `output`, or `None` if that
    /// answer is impossible from `state` (including an answer of the wrong kind).
    fn step(&self, state: &Self::State, input: &Self::Input, output: &Self::Output) -> Option<Self::State>;

    /// Every state `input` can lead to from `state` when nobody saw its answer. For a
    /// deterministic object this is the one state `step` would reach with the output the
    /// object would give; a retried non-idempotent request may list several (applied once,
    /// applied twice). "Never took effect" needs no entry: the search already considers
    /// leaving the operation out. For the same reason `state` itself may be left out (an
    /// operation that changes nothing might as well never have happened): returning an
    /// empty `Vec` for reads saves an allocation per search step.
    fn step_unknown(&self, state: &Self::State, input: &Self::Input) -> Vec<Self::State>;

    /// Splits the history into independent sub-histories, as lists of indices into
    /// `history`; every index must appear in exactly one list. The default keeps one.
    fn partition(&self, history: &[Operation<Self::Input, Self::Output>]) -> Vec<Vec<usize>> {
        vec![(0..history.len()).collect()]
    }
}

/// The verdict of [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult<I, O> {
    /// Every partition is linearizable.
    Ok,
    /// A partition is not linearizable; `violation` describes the smallest one.
    Illegal { violation: Violation<I, O> },
    /// The timeout expired before every partition was decided; no violation was found in
    /// the partitions decided so far.
    Timeout,
}

impl<I, O> CheckResult<I, O> {
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    pub fn is_illegal(&self) -> bool {
        matches!(self, CheckResult::Illegal { .. })
    }

    pub fn violation(&self) -> Option<&Violation<I, O>> {
        match self {
            CheckResult::Illegal { violation } => Some(violation),
            CheckResult::Ok | CheckResult::Timeout => None,
        }
    }
}

/// Why a history is not linearizable: the smallest failing partition (by number of
/// operations), cut down to its shortest prefix that is already not linearizable.
///
/// The prefix ends at a return event: it holds the operations called before that event,
/// and those that had not returned by then appear with an unknown outcome (which is how
/// the prefix was checked). The last operation to return in it is one whose answer no
/// order explains, given everything before.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation<I, O> {
    /// Index of the partition, in the order [`Model::partition`] returned them.
    pub partition_idx: usize,
    pub n_partitions: usize,
    /// How many operations the whole partition has.
    pub n_partition_operations: usize,
    /// The failing prefix, sorted by call time.
    pub operations: Vec<Operation<I, O>>,
    /// For each of `operations`, its index in the history given to [`check`].
    pub history_idxs: Vec<usize>,
    /// The longest sequence of `operations` (indices into it) the search managed to
    /// linearize, in linearization order; empty if the timeout cut the description short.
    pub longest_linearization: Vec<usize>,
}

impl<I: fmt::Debug, O: fmt::Debug> fmt::Display for Violation<I, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "partition {} of {} is not linearizable; its shortest failing prefix has {} of its {} operations:",
            self.partition_idx,
            self.n_partitions,
            self.operations.len(),
            self.n_partition_operations,
        )?;
        for (op_idx, op) in self.operations.iter().enumerate() {
            let return_time = op.return_time.map_or("?".to_string(), |t| t.to_string());
            let output = op
                .output
                .as_ref()
                .map_or("unknown".to_string(), |o| format!("{o:?}"));
            let position = self.longest_linearization.iter().position(|&idx| idx == op_idx);
            let note = position.map_or(String::new(), |p| format!("  (linearized #{})", p + 1));
            writeln!(
                f,
                "  [{op_idx}] history[{}] {} [{}, {}] {:?} -> {}{note}",
                self.history_idxs[op_idx], op.client_id, op.call_time, return_time, op.input, output,
            )?;
        }
        write!(
            f,
            "the search linearized at most {} of them; no order explains the rest",
            self.longest_linearization.len()
        )
    }
}

/// A history that cannot be checked because it is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("operation {operation_idx} returns at {return_time}, before its call at {call_time}")]
    ReturnBeforeCall {
        operation_idx: usize,
        call_time: u64,
        return_time: u64,
    },
    #[error("operation {operation_idx} has an output but no return time")]
    OutputWithoutReturn { operation_idx: usize },
    #[error("operation {operation_idx} has a return time but no output")]
    ReturnWithoutOutput { operation_idx: usize },
}

/// Decides whether `history` is linearizable with respect to `model`.
///
/// Partitions are checked one at a time, smallest first, and the first failing one is
/// described. `timeout` bounds the whole call (search and description); `None` waits as
/// long as it takes. The clock is read every few hundred search steps, so a search that
/// ends sooner is never cut short, even by a zero timeout. Malformed histories are
/// rejected before any search.
///
/// # Panics
///
/// If [`Model::partition`] does not return every index of `history` exactly once.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    timeout: Option<Duration>,
) -> Result<CheckResult<M::Input, M::Output>, HistoryError> {
    validate(history)?;
    let deadline = timeout.and_then(|timeout| Instant::now().checked_add(timeout));
    let partitions = model.partition(history);
    let mut n_appearances = vec![0u8; history.len()];
    for &history_idx in partitions.iter().flatten() {
        assert!(
            history_idx < history.len(),
            "Model::partition returned index {history_idx} out of range"
        );
        n_appearances[history_idx] = n_appearances[history_idx].saturating_add(1);
    }
    assert!(
        n_appearances.iter().all(|&n| n == 1),
        "Model::partition must return every operation exactly once"
    );

    let mut order: Vec<usize> = (0..partitions.len()).collect();
    order.sort_by_key(|&partition_idx| partitions[partition_idx].len());
    for partition_idx in order {
        let sorted_idxs = sort_by_call(history, &partitions[partition_idx]);
        let views: Vec<_> = sorted_idxs.iter().map(|&idx| view(&history[idx])).collect();
        match search(model, &views, deadline, false) {
            SearchOutcome::Linearizable => {}
            SearchOutcome::Timeout => return Ok(CheckResult::Timeout),
            SearchOutcome::NotLinearizable { furthest_return, .. } => {
                let violation = describe(model, history, sorted_idxs, furthest_return, deadline);
                return Ok(CheckResult::Illegal {
                    violation: Violation {
                        partition_idx,
                        n_partitions: partitions.len(),
                        ..violation
                    },
                });
            }
        }
    }
    Ok(CheckResult::Ok)
}

fn validate<I, O>(history: &[Operation<I, O>]) -> Result<(), HistoryError> {
    for (operation_idx, op) in history.iter().enumerate() {
        match (op.return_time, &op.output) {
            (Some(return_time), Some(_)) if return_time < op.call_time => {
                return Err(HistoryError::ReturnBeforeCall {
                    operation_idx,
                    call_time: op.call_time,
                    return_time,
                })
            }
            (Some(_), Some(_)) | (None, None) => {}
            (None, Some(_)) => return Err(HistoryError::OutputWithoutReturn { operation_idx }),
            (Some(_), None) => return Err(HistoryError::ReturnWithoutOutput { operation_idx }),
        }
    }
    Ok(())
}

fn sort_by_call<I, O>(history: &[Operation<I, O>], idxs: &[usize]) -> Vec<usize> {
    let mut sorted = idxs.to_vec();
    sorted.sort_by_key(|&idx| (history[idx].call_time, idx));
    sorted
}

fn view<I, O>(op: &Operation<I, O>) -> OpView<'_, I, O> {
    OpView {
        input: &op.input,
        call_time: op.call_time,
        returned: op.return_time.zip(op.output.as_ref()),
    }
}

/// Finds the shortest failing prefix of a failing partition (`idxs`, sorted by call) by
/// binary search over its return events. Prefixes are monotone: if a prefix has a
/// linearization, cutting it before the first operation called after the shorter cut
/// linearizes the shorter prefix, so "not linearizable" holds from some return on.
fn describe<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    idxs: Vec<usize>,
    furthest_return: EventKey,
    deadline: Option<Instant>,
) -> Violation<M::Input, M::Output> {
    // Return events in list order, as (time, is_return, position in idxs).
    let mut cuts: Vec<EventKey> = idxs
        .iter()
        .enumerate()
        .filter_map(|(position, &idx)| history[idx].return_time.map(|t| event_key(t, true, position)))
        .collect();
    cuts.sort_unstable();
    assert!(
        !cuts.is_empty(),
        "a history without returns is always linearizable"
    );

    let prefix = |cut: EventKey| -> Vec<usize> {
        (0..idxs.len())
            .filter(|&position| event_key(history[idxs[position]].call_time, false, position) < cut)
            .collect()
    };
    let views_of = |cut: EventKey, positions: &[usize]| -> Vec<OpView<'_, M::Input, M::Output>> {
        positions
            .iter()
            .map(|&position| {
                let op = &history[idxs[position]];
                let returned_by_cut = op
                    .return_time
                    .is_some_and(|t| event_key(t, true, position) <= cut);
                OpView {
                    returned: if returned_by_cut { view(op).returned } else { None },
                    ..view(op)
                }
            })
            .collect()
    };

    // The full partition fails; find the first cut (1-based count of returns) that does.
    // Each probe is a full search and failing ones cost the most, so first try the cut at
    // the return the search was stuck on, then the one just before it: usually exactly
    // the answer, found in two probes instead of log2(returns).
    let (mut lo, mut hi) = (1, cuts.len());
    let stuck_at = cuts.partition_point(|&cut| cut < furthest_return) + 1;
    let mut guesses = vec![stuck_at.saturating_sub(1), stuck_at];
    let mut longest_at_hi: Option<Vec<usize>> = None;
    let mut timed_out = false;
    while lo < hi {
        let guess = loop {
            match guesses.pop() {
                Some(guess) if lo <= guess && guess < hi => break Some(guess),
                Some(_) => {}
                None => break None,
            }
        };
        let mid = guess.unwrap_or(lo + (hi - lo) / 2);
        let cut = cuts[mid - 1];
        match search(model, &views_of(cut, &prefix(cut)), deadline, true) {
            SearchOutcome::NotLinearizable { longest, .. } => {
                hi = mid;
                longest_at_hi = Some(longest);
            }
            SearchOutcome::Linearizable => lo = mid + 1,
            SearchOutcome::Timeout => {
                timed_out = true;
                break;
            }
        }
    }
    let cut = cuts[hi - 1];
    let positions = prefix(cut);
    let views = views_of(cut, &positions);
    let longest_linearization = match longest_at_hi {
        Some(longest) => longest,
        None if timed_out => Vec::new(),
        None => match search(model, &views, deadline, true) {
            SearchOutcome::NotLinearizable { longest, .. } => longest,
            SearchOutcome::Linearizable => unreachable!("the full partition was found not linearizable"),
            SearchOutcome::Timeout => Vec::new(),
        },
    };
    let operations = positions
        .iter()
        .zip(&views)
        .map(|(&position, op_view)| {
            let op = &history[idxs[position]];
            Operation {
                client_id: op.client_id,
                input: op.input.clone(),
                call_time: op.call_time,
                return_time: op_view.returned.map(|(t, _)| t),
                output: op_view.returned.map(|(_, output)| output.clone()),
            }
        })
        .collect();
    Violation {
        partition_idx: 0,
        n_partitions: 0,
        n_partition_operations: idxs.len(),
        operations,
        history_idxs: positions.iter().map(|&position| idxs[position]).collect(),
        longest_linearization,
    }
}
