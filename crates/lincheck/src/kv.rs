//! A key-value store, checked one key at a time: operations on different keys commute,
//! so the per-key sub-histories are independent (P-compositionality).

use std::collections::BTreeMap;

use crate::{Model, Operation};

/// A map from `String` keys to `String` values where a missing key reads as `None`.
///
/// The state is the value of *one* key: [`Model::partition`] puts every key in its own
/// partition, so `step` never sees two keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvModel;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvInput {
    /// Sets the value. Answer: [`KvOutput::Done`].
    Put { key: String, value: String },
    /// Reads the value. Answer: [`KvOutput::Value`].
    Get { key: String },
    /// Appends to the value (a missing key counts as empty). Answer: [`KvOutput::Done`].
    Append { key: String, value: String },
    /// Sets the value to `new` if it equals `expected` (`None`: the key is missing).
    /// Answer: [`KvOutput::Swapped`], whether it did.
    Cas {
        key: String,
        expected: Option<String>,
        new: String,
    },
    /// Removes the key. Answer: [`KvOutput::Done`].
    Delete { key: String },
}

impl KvInput {
    pub fn put(key: &str, value: &str) -> KvInput {
        KvInput::Put {
            key: key.to_string(),
            value: value.to_string(),
        }
    }

    pub fn get(key: &str) -> KvInput {
        KvInput::Get { key: key.to_string() }
    }

    pub fn append(key: &str, value: &str) -> KvInput {
        KvInput::Append {
            key: key.to_string(),
            value: value.to_string(),
        }
    }

    pub fn cas(key: &str, expected: Option<&str>, new: &str) -> KvInput {
        KvInput::Cas {
            key: key.to_string(),
            expected: expected.map(str::to_string),
            new: new.to_string(),
        }
    }

    pub fn delete(key: &str) -> KvInput {
        KvInput::Delete { key: key.to_string() }
    }

    /// The key the operation touches.
    pub fn key(&self) -> &str {
        match self {
            KvInput::Put { key, .. }
            | KvInput::Get { key }
            | KvInput::Append { key, .. }
            | KvInput::Cas { key, .. }
            | KvInput::Delete { key } => key,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvOutput {
    /// The answer to a put, an append or a delete.
    Done,
    /// The answer to a get.
    Value(Option<String>),
    /// The answer to a compare-and-swap.
    Swapped(bool),
}

impl KvModel {
    /// The value after `input` executes on `state`, and the answer it gives.
    fn apply(state: &Option<String>, input: &KvInput) -> (Option<String>, KvOutput) {
        match input {
            KvInput::Put { value, .. } => (Some(value.clone()), KvOutput::Done),
            KvInput::Get { .. } => (state.clone(), KvOutput::Value(state.clone())),
            KvInput::Append { value, .. } => {
                let mut appended = state.clone().unwrap_or_default();
                appended.push_str(value);
                (Some(appended), KvOutput::Done)
            }
            KvInput::Cas { expected, new, .. } if state == expected => {
                (Some(new.clone()), KvOutput::Swapped(true))
            }
            KvInput::Cas { .. } => (state.clone(), KvOutput::Swapped(false)),
            KvInput::Delete { .. } => (None, KvOutput::Done),
        }
    }
}

impl Model for KvModel {
    type State = Option<String>;
    type Input = KvInput;
    type Output = KvOutput;

    fn init(&self) -> Option<String> {
        None
    }

    // The store is deterministic: an answer is possible iff it is the one it would give.
    fn step(&self, state: &Option<String>, input: &KvInput, output: &KvOutput) -> Option<Option<String>> {
        let (next_state, expected_output) = KvModel::apply(state, input);
        (*output == expected_output).then_some(next_state)
    }

    fn step_unknown(&self, state: &Option<String>, input: &KvInput) -> Vec<Option<String>> {
        let (next_state, _) = KvModel::apply(state, input);
        // A get or a failed CAS changes nothing, so it might as well never have happened.
        if next_state == *state {
            Vec::new()
        } else {
            vec![next_state]
        }
    }

    /// One partition per key, in key order (so partition indices do not depend on hashing).
    fn partition(&self, history: &[Operation<KvInput, KvOutput>]) -> Vec<Vec<usize>> {
        let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (idx, op) in history.iter().enumerate() {
            by_key.entry(op.input.key()).or_default().push(idx);
        }
        by_key.into_values().collect()
    }
}
