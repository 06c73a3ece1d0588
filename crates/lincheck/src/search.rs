//! The search itself: Wing & Gong's depth-first search over the entry/return event list
//! (1993), with Lowe's cache of visited configurations (2017) as in Porcupine's
//! `checkSingle`, plus subsumption for operations with an unknown outcome.
//!
//! A *configuration* is (the set of linearized operations, the model state). Whether the
//! rest of the history can still be linearized depends on nothing else, so a configuration
//! seen once never needs a second visit. Operations with a known outcome and operations
//! with an unknown one are kept in two bitsets, `known` and `unknown`, because the second
//! kind admits a stronger rule: (K, s, U) can do everything (K, s, U ∪ X) can — the ops in
//! X may be left out forever and never constrain anyone (their return is at infinity) — so
//! a configuration whose `unknown` set is a superset of a cached one with the same `known`
//! set and state is pruned. Without this rule, k pending writes of unknown outcome make
//! 2^k cache entries; with it, writes that overwrite each other collapse.
//!
//! Two lists hold the events: the main list has the calls and returns of known-outcome
//! operations, a second list the calls of unknown-outcome ones (they have no return). At
//! each depth the scan tries the known-outcome calls before the first remaining return,
//! then the unknown-outcome calls before that same return: every candidate Wing & Gong
//! would try, in an order that caches configurations with small `unknown` sets first, so
//! that subsumption prunes the larger ones met later. That order alone is not enough when
//! the search is stuck and lifts unknown-outcome operations on top of each other, so one
//! more rule applies: right after lifting an unknown-outcome operation from (K, s, U), a
//! second one is not lifted to a state that it reaches from s directly (or to s itself);
//! (K, s, U) tries that configuration, which has a smaller `unknown` set.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::mem;
use std::time::Instant;

use crate::bitset::{is_subset, Bitset, FxHasher};
use crate::Model;

/// How many search steps run between two looks at the clock. `Instant::now` costs about
/// 25 ns and a step about 100 ns–1 µs, so this keeps the clock under 1% of the time while a
/// timeout is overshot by well under a millisecond.
const DEADLINE_CHECK_INTERVAL_STEPS: u64 = 256;

/// One operation as the search sees it: `returned == None` means it may take effect at
/// any time after its call, or never.
pub(crate) struct OpView<'a, I, O> {
    pub(crate) input: &'a I,
    pub(crate) call_time: u64,
    pub(crate) returned: Option<(u64, &'a O)>,
}

pub(crate) enum SearchOutcome {
    Linearizable,
    /// `longest` holds the longest sequence of operations (indices into the searched
    /// slice) the search linearized, in order; empty unless asked for.
    NotLinearizable {
        longest: Vec<usize>,
        /// The latest return event the search was ever blocked by: usually the answer
        /// that no order explains, so a good first guess for the end of the shortest
        /// failing prefix.
        furthest_return: EventKey,
    },
    Timeout,
}

/// The order of events in the list: by time, a call before a return at the same time (so
/// operations that touch at one instant count as concurrent, the permissive reading), then
/// by operation index so the order does not depend on the sort algorithm.
pub(crate) fn event_key(time: u64, is_return: bool, op_idx: usize) -> EventKey {
    (time, is_return, op_idx)
}

/// Marks the end of a list and "no partner".
const NIL: usize = usize::MAX;
/// Sentinel whose `next` is the first remaining entry of the main list: the calls and
/// returns of operations with a known outcome.
const MAIN_HEAD: usize = 0;
/// Sentinel whose `next` is the first remaining call of an operation of unknown outcome.
/// These have no return entry (their return is at infinity) and live in a list of their
/// own so the scan can try them *after* the known-outcome candidates (see `run`).
const UNKNOWN_HEAD: usize = 1;

pub(crate) type EventKey = (u64, bool, usize);

#[derive(Clone, Copy)]
struct Entry {
    op_idx: usize,
    key: EventKey,
    is_call: bool,
    /// For a call entry of an operation with a known outcome, its return entry.
    partner: usize,
    prev: usize,
    next: usize,
}

#[derive(Clone, Copy)]
enum Slot {
    Known(usize),
    Unknown(usize),
}

/// Where the scan for the next operation to linearize stands.
#[derive(Clone, Copy)]
enum Cursor {
    /// At this entry of the main list (`NIL`: past its end).
    Main(usize),
    /// At this entry of the unknown-outcome list; only calls before `boundary`, the first
    /// remaining return of the main list, are candidates.
    Unknown { entry: usize, boundary: EventKey },
}

struct Frame<S> {
    call_entry: usize,
    state_before: S,
    /// Other states the operation could have led to (unknown outcome only), tried on
    /// backtrack before the operation is unlifted.
    alternatives: Vec<S>,
    /// The cursor's boundary when an unknown-outcome operation was lifted.
    boundary: Option<EventKey>,
}

/// The visited configurations, in flat arrays (one allocation per array, not per
/// entry): entry `i` is the words of the `known` bitset followed by those of the `unknown`
/// one at `words[i * n_words..]`, its state `states[i]`, and the next entry with the same
/// hash of (known, state) `next_in_bucket[i]`.
struct Cache<S> {
    heads: HashMap<u64, u32, BuildHasherDefault<FxHasher>>,
    n_known_words: usize,
    n_words: usize,
    words: Vec<u64>,
    states: Vec<S>,
    next_in_bucket: Vec<u32>,
}

const END_OF_BUCKET: u32 = u32::MAX;

impl<S: Eq + Hash + Clone> Cache<S> {
    fn new(known: &Bitset, unknown: &Bitset) -> Self {
        Cache {
            heads: HashMap::default(),
            n_known_words: known.words().len(),
            n_words: known.words().len() + unknown.words().len(),
            words: Vec::new(),
            states: Vec::new(),
            next_in_bucket: Vec::new(),
        }
    }

    /// Records the configuration (`known`, `state`, `unknown`) unless a cached one with
    /// the same `known` set and state and a subset of `unknown` subsumes it; returns
    /// whether it was new. Entries the new one subsumes are unlinked, so the entries of one
    /// (`known`, state) never subsume each other: finding one that subsumes the new entry
    /// and one the new entry subsumes in the same walk is impossible.
    fn insert(&mut self, known: &Bitset, state: &S, unknown: &Bitset) -> bool {
        let mut hasher = FxHasher::default();
        known.hash_into(&mut hasher);
        state.hash(&mut hasher);
        let head = self.heads.entry(hasher.finish()).or_insert(END_OF_BUCKET);
        let mut prev_idx = END_OF_BUCKET;
        let mut entry_idx = *head;
        while entry_idx != END_OF_BUCKET {
            let idx = entry_idx as usize;
            let next_idx = self.next_in_bucket[idx];
            let words = &self.words[idx * self.n_words..(idx + 1) * self.n_words];
            let (entry_known, entry_unknown) = words.split_at(self.n_known_words);
            if entry_known == known.words() && self.states[idx] == *state {
                if is_subset(entry_unknown, unknown.words()) {
                    return false;
                }
                if is_subset(unknown.words(), entry_unknown) {
                    if prev_idx == END_OF_BUCKET {
                        *head = next_idx;
                    } else {
                        self.next_in_bucket[prev_idx as usize] = next_idx;
                    }
                    entry_idx = next_idx;
                    continue;
                }
            }
            prev_idx = entry_idx;
            entry_idx = next_idx;
        }
        let new_idx = u32::try_from(self.states.len()).expect("fewer than 2^32 configurations fit in memory");
        self.words.extend_from_slice(known.words());
        self.words.extend_from_slice(unknown.words());
        self.states.push(state.clone());
        self.next_in_bucket.push(*head);
        *head = new_idx;
        true
    }
}

struct Search<'m, 'h, M: Model> {
    model: &'m M,
    ops: &'h [OpView<'h, M::Input, M::Output>],
    entries: Vec<Entry>,
    slots: Vec<Slot>,
    known: Bitset,
    unknown: Bitset,
    state: M::State,
    stack: Vec<Frame<M::State>>,
    cache: Cache<M::State>,
    record_longest: bool,
    longest: Vec<usize>,
    furthest_return: EventKey,
}

pub(crate) fn search<M: Model>(
    model: &M,
    ops: &[OpView<'_, M::Input, M::Output>],
    deadline: Option<Instant>,
    record_longest: bool,
) -> SearchOutcome {
    Search::new(model, ops, record_longest).run(deadline)
}

impl<'m, 'h, M: Model> Search<'m, 'h, M> {
    fn new(model: &'m M, ops: &'h [OpView<'h, M::Input, M::Output>], record_longest: bool) -> Self {
        let mut main_events: Vec<EventKey> = Vec::with_capacity(2 * ops.len());
        let mut unknown_events: Vec<EventKey> = Vec::new();
        let mut slots = Vec::with_capacity(ops.len());
        let (mut n_known, mut n_unknown) = (0, 0);
        for (op_idx, op) in ops.iter().enumerate() {
            match op.returned {
                Some((return_time, _)) => {
                    assert!(return_time >= op.call_time, "validated by check()");
                    main_events.push(event_key(op.call_time, false, op_idx));
                    main_events.push(event_key(return_time, true, op_idx));
                    slots.push(Slot::Known(n_known));
                    n_known += 1;
                }
                None => {
                    unknown_events.push(event_key(op.call_time, false, op_idx));
                    slots.push(Slot::Unknown(n_unknown));
                    n_unknown += 1;
                }
            }
        }
        main_events.sort_unstable();
        unknown_events.sort_unstable();

        let sentinel = Entry {
            op_idx: NIL,
            key: (0, false, NIL),
            is_call: false,
            partner: NIL,
            prev: NIL,
            next: NIL,
        };
        let mut entries = vec![sentinel; 2];
        let mut call_entry_of = vec![NIL; ops.len()];
        let mut return_entry_of = vec![NIL; ops.len()];
        for (head, events) in [(MAIN_HEAD, &main_events), (UNKNOWN_HEAD, &unknown_events)] {
            let mut prev = head;
            for &key in events.iter() {
                let (_, is_return, op_idx) = key;
                let entry_idx = entries.len();
                if is_return {
                    return_entry_of[op_idx] = entry_idx;
                } else {
                    call_entry_of[op_idx] = entry_idx;
                }
                entries[prev].next = entry_idx;
                entries.push(Entry {
                    op_idx,
                    key,
                    is_call: !is_return,
                    partner: NIL,
                    prev,
                    next: NIL,
                });
                prev = entry_idx;
            }
        }
        for op_idx in 0..ops.len() {
            entries[call_entry_of[op_idx]].partner = return_entry_of[op_idx];
        }

        let known = Bitset::new(n_known);
        let unknown = Bitset::new(n_unknown);
        Search {
            model,
            ops,
            entries,
            slots,
            cache: Cache::new(&known, &unknown),
            known,
            unknown,
            state: model.init(),
            stack: Vec::new(),
            record_longest,
            longest: Vec::new(),
            furthest_return: (0, false, 0),
        }
    }

    /// The scan tries, in list order, the known-outcome calls before the first remaining
    /// return, then the unknown-outcome calls before that return. Trying unknown ones last
    /// means configurations with fewer of them linearized are cached first, which is the
    /// order in which subsumption prunes the most.
    fn run(mut self, deadline: Option<Instant>) -> SearchOutcome {
        let initial = self.state.clone();
        let inserted = self.cache_insert(&initial);
        assert!(inserted, "the cache starts empty");
        let mut cursor = self.restart();
        let mut n_steps: u64 = 0;
        loop {
            n_steps += 1;
            if n_steps.is_multiple_of(DEADLINE_CHECK_INTERVAL_STEPS) {
                if let Some(deadline) = deadline {
                    if Instant::now() >= deadline {
                        return SearchOutcome::Timeout;
                    }
                }
            }
            cursor = match cursor {
                // The main list is exhausted: every known-outcome operation is linearized,
                // and the unknown-outcome operations still left simply never took effect.
                Cursor::Main(NIL) => return SearchOutcome::Linearizable,
                Cursor::Main(entry) if self.entries[entry].is_call => {
                    let op = &self.ops[self.entries[entry].op_idx];
                    let (_, output) = op.returned.expect("the main list holds known outcomes");
                    let lifted = match self.model.step(&self.state, op.input, output) {
                        Some(next_state) => self.try_lift(entry, next_state, Vec::new(), None),
                        None => false,
                    };
                    if lifted {
                        self.restart()
                    } else {
                        Cursor::Main(self.entries[entry].next)
                    }
                }
                // The earliest remaining return: its operation must be linearized before
                // anything that follows, and no known-outcome candidate before it worked.
                Cursor::Main(entry) => {
                    let boundary = self.entries[entry].key;
                    self.furthest_return = self.furthest_return.max(boundary);
                    Cursor::Unknown {
                        entry: self.entries[UNKNOWN_HEAD].next,
                        boundary,
                    }
                }
                Cursor::Unknown { entry, boundary } if entry != NIL && self.entries[entry].key < boundary => {
                    let op = &self.ops[self.entries[entry].op_idx];
                    let mut candidates = self.model.step_unknown(&self.state, op.input);
                    // Leaving the state unchanged is subsumed by the current configuration
                    // (which is cached): skip it without hashing.
                    candidates.retain(|candidate| *candidate != self.state);
                    // If the last step lifted another unknown-outcome operation from
                    // (K, s, U), the known set is still K, so the boundary is the same and
                    // (K, s, U) also tries this operation directly. A state it reaches from
                    // s alone (or s itself) gives a configuration with a subset of our
                    // `unknown` set, which subsumes ours: skip it. Without this, k pending
                    // puts are stacked in every order and subsets before reaching the
                    // small sets that would prune them (about 2^k configurations).
                    if let Some(Frame {
                        state_before,
                        boundary: Some(_),
                        ..
                    }) = self.stack.last()
                    {
                        if !candidates.is_empty() {
                            let direct = self.model.step_unknown(state_before, op.input);
                            candidates
                                .retain(|candidate| candidate != state_before && !direct.contains(candidate));
                        }
                    }
                    let lifted = match candidates.pop() {
                        Some(next_state) => self.try_lift(entry, next_state, candidates, Some(boundary)),
                        None => false,
                    };
                    if lifted {
                        self.restart()
                    } else {
                        Cursor::Unknown {
                            entry: self.entries[entry].next,
                            boundary,
                        }
                    }
                }
                // No candidate left at this depth: backtrack.
                Cursor::Unknown { .. } => match self.backtrack() {
                    Some(cursor) => cursor,
                    None => {
                        return SearchOutcome::NotLinearizable {
                            longest: mem::take(&mut self.longest),
                            furthest_return: self.furthest_return,
                        }
                    }
                },
            };
        }
    }

    fn restart(&self) -> Cursor {
        Cursor::Main(self.entries[MAIN_HEAD].next)
    }

    /// Linearizes the operation of `call_entry` next, leading to `next_state` or, if that
    /// configuration was already explored, to one of `alternatives`.
    fn try_lift(
        &mut self,
        call_entry: usize,
        next_state: M::State,
        mut alternatives: Vec<M::State>,
        boundary: Option<EventKey>,
    ) -> bool {
        let op_idx = self.entries[call_entry].op_idx;
        self.mark(op_idx, true);
        let mut candidate = Some(next_state);
        while let Some(next_state) = candidate {
            if self.cache_insert(&next_state) {
                let state_before = mem::replace(&mut self.state, next_state);
                self.stack.push(Frame {
                    call_entry,
                    state_before,
                    alternatives,
                    boundary,
                });
                self.lift(call_entry);
                if self.record_longest && self.stack.len() > self.longest.len() {
                    self.longest = self
                        .stack
                        .iter()
                        .map(|frame| self.entries[frame.call_entry].op_idx)
                        .collect();
                }
                return true;
            }
            candidate = alternatives.pop();
        }
        self.mark(op_idx, false);
        false
    }

    /// Undoes the last linearization step; returns where the scan continues, or `None`
    /// when there is nothing left to undo (the history is not linearizable).
    fn backtrack(&mut self) -> Option<Cursor> {
        let Frame {
            call_entry,
            state_before,
            mut alternatives,
            boundary,
        } = self.stack.pop()?;
        self.state = state_before;
        // Same operation, same position, another possible state (unknown outcome only).
        while let Some(next_state) = alternatives.pop() {
            if self.cache_insert(&next_state) {
                let state_before = mem::replace(&mut self.state, next_state);
                self.stack.push(Frame {
                    call_entry,
                    state_before,
                    alternatives,
                    boundary,
                });
                return Some(self.restart());
            }
        }
        self.mark(self.entries[call_entry].op_idx, false);
        self.unlift(call_entry);
        let entry = self.entries[call_entry].next;
        Some(match boundary {
            None => Cursor::Main(entry),
            Some(boundary) => Cursor::Unknown { entry, boundary },
        })
    }

    fn mark(&mut self, op_idx: usize, linearized: bool) {
        let (set, idx) = match self.slots[op_idx] {
            Slot::Known(idx) => (&mut self.known, idx),
            Slot::Unknown(idx) => (&mut self.unknown, idx),
        };
        assert_ne!(
            set.contains(idx),
            linearized,
            "an operation is linearized at most once"
        );
        if linearized {
            set.insert(idx);
        } else {
            set.remove(idx);
        }
    }

    fn cache_insert(&mut self, state: &M::State) -> bool {
        self.cache.insert(&self.known, state, &self.unknown)
    }

    /// Removes a call entry and its return entry from the list (Wing & Gong's "lift").
    fn lift(&mut self, call_entry: usize) {
        self.unlink(call_entry);
        let partner = self.entries[call_entry].partner;
        if partner != NIL {
            self.unlink(partner);
        }
    }

    /// Puts back what `lift` removed; lifts are undone in reverse order, so the removed
    /// entries' own `prev`/`next` still point at the right neighbours.
    fn unlift(&mut self, call_entry: usize) {
        let partner = self.entries[call_entry].partner;
        if partner != NIL {
            self.relink(partner);
        }
        self.relink(call_entry);
    }

    fn unlink(&mut self, entry: usize) {
        let Entry { prev, next, .. } = self.entries[entry];
        self.entries[prev].next = next;
        if next != NIL {
            self.entries[next].prev = prev;
        }
    }

    fn relink(&mut self, entry: usize) {
        let Entry { prev, next, .. } = self.entries[entry];
        self.entries[prev].next = entry;
        if next != NIL {
            self.entries[next].prev = entry;
        }
    }
}
