//! Builds a history from call and return events as a simulator or test harness sees them.

use crate::{ClientId, Operation};

/// Collects operations as they are called and answered. Operations never answered keep an
/// unknown outcome, which is what a client that gave up (or a crashed server) means.
///
/// Not thread-safe by itself: real-process tests share one behind a `Mutex`, with every
/// time taken from one `Instant` (see the crate docs).
#[derive(Clone, Debug)]
pub struct HistoryRecorder<I, O> {
    operations: Vec<Operation<I, O>>,
}

impl<I, O> Default for HistoryRecorder<I, O> {
    fn default() -> Self {
        HistoryRecorder {
            operations: Vec::new(),
        }
    }
}

impl<I, O> HistoryRecorder<I, O> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client_id` sent `input` at `call_time`; returns the operation's index,
    /// to pass to [`HistoryRecorder::record_return`].
    pub fn record_call(&mut self, client_id: ClientId, input: I, call_time: u64) -> usize {
        self.operations
            .push(Operation::unknown(client_id, input, call_time));
        self.operations.len() - 1
    }

    /// Records that the operation `operation_idx` was answered `output` at `return_time`.
    ///
    /// # Panics
    ///
    /// If the operation was already answered or `return_time` is before its call: both
    /// are bugs in the harness, which would otherwise produce a false verdict.
    pub fn record_return(&mut self, operation_idx: usize, output: O, return_time: u64) {
        let op = &mut self.operations[operation_idx];
        assert!(
            op.return_time.is_none(),
            "operation {operation_idx} returned twice"
        );
        assert!(
            return_time >= op.call_time,
            "operation {operation_idx} returns at {return_time}, before its call at {}",
            op.call_time
        );
        op.return_time = Some(return_time);
        op.output = Some(output);
    }

    pub fn operations(&self) -> &[Operation<I, O>] {
        &self.operations
    }

    pub fn into_operations(self) -> Vec<Operation<I, O>> {
        self.operations
    }
}
