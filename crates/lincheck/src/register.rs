//! One read/write register: the model of Porcupine's and Knossos's classic examples.

use std::fmt::Debug;
use std::hash::Hash;

use crate::Model;

/// A single register holding a `V`, initially `initial_value`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegisterModel<V> {
    pub initial_value: V,
}

impl<V> RegisterModel<V> {
    pub fn new(initial_value: V) -> Self {
        RegisterModel { initial_value }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterInput<V> {
    Write(V),
    Read,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOutput<V> {
    /// The answer to a write.
    Written,
    /// The answer to a read: the value seen.
    Read(V),
}

impl<V: Clone + Eq + Hash + Debug> Model for RegisterModel<V> {
    type State = V;
    type Input = RegisterInput<V>;
    type Output = RegisterOutput<V>;

    fn init(&self) -> V {
        self.initial_value.clone()
    }

    fn step(&self, state: &V, input: &RegisterInput<V>, output: &RegisterOutput<V>) -> Option<V> {
        match (input, output) {
            (RegisterInput::Write(value), RegisterOutput::Written) => Some(value.clone()),
            (RegisterInput::Read, RegisterOutput::Read(value)) => (value == state).then(|| state.clone()),
            (RegisterInput::Write(_), RegisterOutput::Read(_))
            | (RegisterInput::Read, RegisterOutput::Written) => None,
        }
    }

    fn step_unknown(&self, _state: &V, input: &RegisterInput<V>) -> Vec<V> {
        match input {
            RegisterInput::Write(value) => vec![value.clone()],
            // A read changes nothing, so it might as well never have happened.
            RegisterInput::Read => Vec::new(),
        }
    }
}
