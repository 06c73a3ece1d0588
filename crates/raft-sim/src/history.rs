//! The clients' history and a simple oracle over it.
//!
//! Every logical client operation is one [`HistoryOp`]: what was asked, when the client first
//! sent it, and when and what it answered, or [`OpResult::Unknown`] when the client gave up
//! (a timeout says nothing about whether a write took effect: "unknown", never "failed").
//! The shape matches `shoal-lincheck`'s `Operation<KvInput, KvOutput>` one to one (unknown =
//! `return_time: None, output: None`), so a full linearizability check can consume
//! [`History::ops`] directly.
//!
//! [`History::check`] is the oracle of 6.824 lab 3 made exact, for keys that only receive
//! appends of unique whitespace-free tokens (each followed by a space). Every read holds each
//! token at most once, only tokens sent before the read returned, in an order that respects
//! real time (no token after one sent only once it had returned); it holds every append
//! acknowledged before the read was sent or before any append it holds was sent; all reads
//! of a key are prefixes of one another; and a read sent after another returned sees at
//! least as much. Together these say the key's history is linearizable: order the appends as
//! the longest read holds them, then the acknowledged ones no read holds by return time, and
//! place each read after its prefix. For put-only keys it checks only that a read returns a
//! value some put sent before the read returned (`Sim::check_linearizable` does the rest).

use std::collections::{BTreeMap, HashMap, HashSet};

/// What a client asked for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpInput {
    Put { key: String, value: String },
    Append { key: String, value: String },
    Get { key: String },
}

impl OpInput {
    pub fn key(&self) -> &str {
        match self {
            OpInput::Put { key, .. } | OpInput::Append { key, .. } | OpInput::Get { key } => key,
        }
    }
}

/// What the client learned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// A put or append took effect (exactly once).
    Done,
    /// A get's answer.
    Value(Option<String>),
    /// The client gave up waiting: the operation may or may not have taken effect.
    Unknown,
}

/// One logical operation (all retries of one request are one operation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryOp {
    pub client_id: u64,
    pub input: OpInput,
    /// Simulated time the client first sent the request.
    pub invoke_ms: u64,
    /// Simulated time the answer arrived; `None` while pending or when unknown.
    pub return_ms: Option<u64>,
    pub result: OpResult,
}

/// All operations of a run, in invocation order.
#[derive(Clone, Debug, Default)]
pub struct History {
    ops: Vec<HistoryOp>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn ops(&self) -> &[HistoryOp] {
        &self.ops
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Records the call; the result is `Unknown` until [`History::complete`].
    pub fn invoke(&mut self, client_id: u64, input: OpInput, now_ms: u64) -> usize {
        self.ops.push(HistoryOp {
            client_id,
            input,
            invoke_ms: now_ms,
            return_ms: None,
            result: OpResult::Unknown,
        });
        self.ops.len() - 1
    }

    pub fn complete(&mut self, op_idx: usize, result: OpResult, now_ms: u64) {
        let op = &mut self.ops[op_idx];
        assert!(op.return_ms.is_none(), "operation {op_idx} completed twice");
        assert!(result != OpResult::Unknown, "complete with a known result");
        op.return_ms = Some(now_ms);
        op.result = result;
    }

    /// How many operations returned, and how many stayed unknown.
    pub fn counts(&self) -> (usize, usize) {
        let n_returned = self.ops.iter().filter(|op| op.return_ms.is_some()).count();
        (n_returned, self.ops.len() - n_returned)
    }

    /// The oracle described in the module docs; the error names the rule and the operations.
    pub fn check(&self) -> Result<(), String> {
        let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (op_idx, op) in self.ops.iter().enumerate() {
            by_key.entry(op.input.key()).or_default().push(op_idx);
        }
        for (key, op_idxs) in by_key {
            let has_put = op_idxs
                .iter()
                .any(|idx| matches!(self.ops[*idx].input, OpInput::Put { .. }));
            let has_append = op_idxs
                .iter()
                .any(|idx| matches!(self.ops[*idx].input, OpInput::Append { .. }));
            if has_put && has_append {
                return Err(format!(
                    "key {key:?} mixes puts and appends; the oracle needs one kind"
                ));
            }
            if has_put {
                self.check_put_key(key, &op_idxs)?;
            } else {
                self.check_append_key(key, &op_idxs)?;
            }
        }
        Ok(())
    }

    fn describe(&self, op_idx: usize) -> String {
        let op = &self.ops[op_idx];
        let returned = op.return_ms.map_or("?".to_string(), |t| t.to_string());
        format!(
            "op {op_idx} (client {}, [{}, {returned}] ms, {:?} -> {:?})",
            op.client_id, op.invoke_ms, op.input, op.result
        )
    }

    fn check_append_key(&self, key: &str, op_idxs: &[usize]) -> Result<(), String> {
        let mut token_to_op: HashMap<&str, usize> = HashMap::new();
        let mut appends = Vec::new();
        let mut reads: Vec<(usize, Vec<&str>)> = Vec::new();
        for &op_idx in op_idxs {
            let op = &self.ops[op_idx];
            match (&op.input, &op.result) {
                (OpInput::Append { value, .. }, _) => {
                    let token = value.trim();
                    if token.is_empty() || token.contains(char::is_whitespace) || !value.ends_with(' ') {
                        return Err(format!(
                            "{}: append values must be one token and a space",
                            self.describe(op_idx)
                        ));
                    }
                    if token_to_op.insert(token, op_idx).is_some() {
                        return Err(format!(
                            "{}: token {token:?} appended by two operations",
                            self.describe(op_idx)
                        ));
                    }
                    appends.push(op_idx);
                }
                (OpInput::Get { .. }, OpResult::Value(value)) => {
                    let tokens = value
                        .as_deref()
                        .map_or_else(Vec::new, |v| v.split_whitespace().collect());
                    reads.push((op_idx, tokens));
                }
                (OpInput::Get { .. }, _) | (OpInput::Put { .. }, _) => {}
            }
        }
        for (read_idx, tokens) in &reads {
            let read = &self.ops[*read_idx];
            let read_return = read.return_ms.unwrap_or(u64::MAX);
            let mut seen: HashSet<&str> = HashSet::new();
            let mut last_op_of_client: HashMap<u64, usize> = HashMap::new();
            // The latest-invoked append among the tokens so far: a later token's append must
            // not have returned before it was sent (real-time order of appends).
            let mut latest_invoked: Option<usize> = None;
            for token in tokens {
                if !seen.insert(token) {
                    return Err(format!(
                        "append applied twice: {} holds token {token:?} twice",
                        self.describe(*read_idx)
                    ));
                }
                let Some(&append_idx) = token_to_op.get(token) else {
                    return Err(format!(
                        "read of a value never written: {} holds token {token:?} nobody appended to {key:?}",
                        self.describe(*read_idx)
                    ));
                };
                let append = &self.ops[append_idx];
                if append.invoke_ms > read_return {
                    return Err(format!(
                        "read from the future: {} holds the token of {}",
                        self.describe(*read_idx),
                        self.describe(append_idx)
                    ));
                }
                if let Some(earlier_idx) = latest_invoked {
                    if append
                        .return_ms
                        .is_some_and(|t| t < self.ops[earlier_idx].invoke_ms)
                    {
                        return Err(format!(
                            "appends out of real-time order: {} holds {} after {}, which was sent \
                             only after it returned",
                            self.describe(*read_idx),
                            self.describe(append_idx),
                            self.describe(earlier_idx)
                        ));
                    }
                }
                if latest_invoked.is_none_or(|idx| append.invoke_ms > self.ops[idx].invoke_ms) {
                    latest_invoked = Some(append_idx);
                }
                if let Some(previous) = last_op_of_client.insert(append.client_id, append_idx) {
                    if previous > append_idx {
                        return Err(format!(
                            "client's appends out of order: {} holds {} after {}",
                            self.describe(*read_idx),
                            self.describe(append_idx),
                            self.describe(previous)
                        ));
                    }
                }
            }
            // An append acknowledged before the read was sent, or before any append the read
            // holds was sent, precedes something the read sees: the read must hold it too.
            let threshold_ms =
                latest_invoked.map_or(read.invoke_ms, |idx| read.invoke_ms.max(self.ops[idx].invoke_ms));
            for &append_idx in &appends {
                let append = &self.ops[append_idx];
                let acknowledged_before =
                    append.result == OpResult::Done && append.return_ms.is_some_and(|t| t < threshold_ms);
                let token = append.input_token();
                if acknowledged_before && !seen.contains(token) {
                    return Err(format!(
                        "acknowledged append lost: {} misses the token of {}",
                        self.describe(*read_idx),
                        self.describe(append_idx)
                    ));
                }
            }
        }
        // All states a key goes through are prefixes of its final value, so any two reads are
        // prefix-related: sorted by length, each must extend the one before.
        let mut by_len: Vec<&(usize, Vec<&str>)> = reads.iter().collect();
        by_len.sort_by_key(|(op_idx, tokens)| (tokens.len(), *op_idx));
        for pair in by_len.windows(2) {
            let (shorter_idx, shorter) = pair[0];
            let (longer_idx, longer) = pair[1];
            if longer[..shorter.len()] != shorter[..] {
                return Err(format!(
                    "reads disagree on the order of appends: {} and {}",
                    self.describe(*shorter_idx),
                    self.describe(*longer_idx)
                ));
            }
        }
        // Real-time order: a read sent after another returned sees at least as much.
        let mut by_return: Vec<(u64, usize, usize)> = reads
            .iter()
            .filter_map(|(op_idx, tokens)| self.ops[*op_idx].return_ms.map(|t| (t, tokens.len(), *op_idx)))
            .collect();
        by_return.sort_unstable();
        let mut by_invoke: Vec<(u64, usize, usize)> = reads
            .iter()
            .map(|(op_idx, tokens)| (self.ops[*op_idx].invoke_ms, tokens.len(), *op_idx))
            .collect();
        by_invoke.sort_unstable();
        let mut longest_returned: Option<(usize, usize)> = None;
        let mut returned_pos = 0;
        for (invoke_ms, len, op_idx) in by_invoke {
            while returned_pos < by_return.len() && by_return[returned_pos].0 < invoke_ms {
                let (_, earlier_len, earlier_idx) = by_return[returned_pos];
                if longest_returned.is_none_or(|(best, _)| earlier_len > best) {
                    longest_returned = Some((earlier_len, earlier_idx));
                }
                returned_pos += 1;
            }
            if let Some((earlier_len, earlier_idx)) = longest_returned {
                if earlier_len > len {
                    return Err(format!(
                        "stale read: {} sees less than {}, which returned before it was sent",
                        self.describe(op_idx),
                        self.describe(earlier_idx)
                    ));
                }
            }
        }
        Ok(())
    }

    fn check_put_key(&self, key: &str, op_idxs: &[usize]) -> Result<(), String> {
        for &read_idx in op_idxs {
            let read = &self.ops[read_idx];
            let OpResult::Value(value) = &read.result else {
                continue;
            };
            let read_return = read.return_ms.unwrap_or(u64::MAX);
            let mut puts = op_idxs.iter().filter_map(|idx| match &self.ops[*idx].input {
                OpInput::Put { value, .. } => Some((*idx, value)),
                _ => None,
            });
            match value {
                None => {
                    if let Some((put_idx, _)) = puts.find(|(idx, _)| {
                        let put = &self.ops[*idx];
                        put.result == OpResult::Done && put.return_ms.is_some_and(|t| t < read.invoke_ms)
                    }) {
                        return Err(format!(
                            "acknowledged put lost: {} reads nothing after {}",
                            self.describe(read_idx),
                            self.describe(put_idx)
                        ));
                    }
                }
                Some(v) => {
                    if !puts.any(|(idx, put_value)| put_value == v && self.ops[idx].invoke_ms <= read_return)
                    {
                        return Err(format!(
                            "read of a value never written: {} on {key:?}",
                            self.describe(read_idx)
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl HistoryOp {
    fn input_token(&self) -> &str {
        match &self.input {
            OpInput::Append { value, .. } | OpInput::Put { value, .. } => value.trim(),
            OpInput::Get { .. } => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(h: &mut History, client: u64, token: &str, invoke: u64, ret: Option<u64>) {
        let idx = h.invoke(
            client,
            OpInput::Append {
                key: "k".into(),
                value: format!("{token} "),
            },
            invoke,
        );
        if let Some(t) = ret {
            h.complete(idx, OpResult::Done, t);
        }
    }

    fn get(h: &mut History, client: u64, invoke: u64, ret: u64, value: Option<&str>) {
        let idx = h.invoke(client, OpInput::Get { key: "k".into() }, invoke);
        h.complete(idx, OpResult::Value(value.map(str::to_string)), ret);
    }

    #[test]
    fn sim_history_accepts_a_good_history() {
        // Goal: overlapping and unknown appends read in any valid order pass the oracle.
        let mut h = History::new();
        append(&mut h, 1, "a", 0, Some(10));
        append(&mut h, 2, "b", 5, None);
        get(&mut h, 3, 11, 20, Some("a "));
        get(&mut h, 3, 21, 30, Some("a b "));
        assert_eq!(h.check(), Ok(()));
    }

    #[test]
    fn sim_history_catches_lost_duplicated_and_stale() {
        // Goal: each rule of the oracle rejects the history that breaks it.
        let mut lost = History::new();
        append(&mut lost, 1, "a", 0, Some(10));
        get(&mut lost, 2, 11, 20, None);
        assert!(lost.check().unwrap_err().contains("acknowledged append lost"));

        let mut twice = History::new();
        append(&mut twice, 1, "a", 0, None);
        get(&mut twice, 2, 11, 20, Some("a a "));
        assert!(twice.check().unwrap_err().contains("twice"));

        let mut stale = History::new();
        append(&mut stale, 1, "a", 0, None);
        get(&mut stale, 2, 1, 5, Some("a "));
        get(&mut stale, 3, 6, 9, None);
        assert!(stale.check().unwrap_err().contains("stale read"));

        let mut order = History::new();
        append(&mut order, 1, "a", 0, None);
        append(&mut order, 2, "b", 0, None);
        get(&mut order, 3, 1, 5, Some("a b "));
        get(&mut order, 3, 6, 9, Some("b a "));
        assert!(order.check().unwrap_err().contains("disagree"));

        let mut real_time = History::new();
        append(&mut real_time, 1, "a", 0, Some(10));
        append(&mut real_time, 2, "b", 20, None);
        get(&mut real_time, 3, 5, 40, Some("b a "));
        assert!(real_time.check().unwrap_err().contains("real-time order"));

        let mut skipped = History::new();
        append(&mut skipped, 1, "a", 0, Some(10));
        append(&mut skipped, 2, "b", 20, None);
        get(&mut skipped, 3, 5, 40, Some("b "));
        assert!(skipped.check().unwrap_err().contains("acknowledged append lost"));

        let mut invented = History::new();
        get(&mut invented, 3, 1, 5, Some("z "));
        assert!(invented.check().unwrap_err().contains("never written"));
    }
}
