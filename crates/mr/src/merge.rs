//! K-way merge of sorted record streams and grouping by key (the reduce side of §3.1 step 5,
//! and the merge of a map task's spills).

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io;

use crate::api::{BoxError, Values};
use crate::record::RecordReader;

/// Most sorted runs merged at once. Cost: one read buffer
/// ([`RecordReader::BUFFER_BYTES`]) and one open file per run; more runs are merged in
/// several passes.
pub const MERGE_FAN_IN_MAX: usize = 64;

struct Head {
    key: Vec<u8>,
    value: Vec<u8>,
    src: usize,
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head {
    // Reversed: BinaryHeap is a max-heap and we want the smallest key (then lowest source,
    // for a deterministic order) on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key.cmp(&self.key).then(other.src.cmp(&self.src))
    }
}

/// Merges sorted sources into one sorted stream.
pub struct Merger {
    sources: Vec<RecordReader>,
    heap: BinaryHeap<Head>,
    spare: Vec<(Vec<u8>, Vec<u8>)>,
    error: Option<io::Error>,
}

impl Merger {
    pub fn new(sources: Vec<RecordReader>) -> io::Result<Self> {
        let mut m = Self {
            heap: BinaryHeap::with_capacity(sources.len()),
            sources,
            spare: Vec::new(),
            error: None,
        };
        for src in 0..m.sources.len() {
            m.refill(src)?;
        }
        Ok(m)
    }

    fn refill(&mut self, src: usize) -> io::Result<()> {
        let (mut key, mut value) = self.spare.pop().unwrap_or_default();
        if self.sources[src].next_into(&mut key, &mut value)? {
            self.heap.push(Head { key, value, src });
        } else {
            self.spare.push((key, value));
        }
        Ok(())
    }

    pub fn peek_key(&self) -> Option<&[u8]> {
        self.heap.peek().map(|h| h.key.as_slice())
    }

    /// The smallest record; give its buffers back with [`Merger::recycle`].
    pub fn pop(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let Some(head) = self.heap.pop() else {
            return Ok(None);
        };
        self.refill(head.src)?;
        Ok(Some((head.key, head.value)))
    }

    pub fn recycle(&mut self, kv: (Vec<u8>, Vec<u8>)) {
        if self.spare.len() < 4 {
            self.spare.push(kv);
        }
    }
}

struct MergeValues<'a> {
    merger: &'a mut Merger,
    key: &'a [u8],
    current: Option<(Vec<u8>, Vec<u8>)>,
}

impl Values for MergeValues<'_> {
    fn next_value(&mut self) -> Option<&[u8]> {
        if let Some(kv) = self.current.take() {
            self.merger.recycle(kv);
        }
        if self.merger.error.is_some() || self.merger.peek_key() != Some(self.key) {
            return None;
        }
        match self.merger.pop() {
            Ok(Some(kv)) => {
                self.current = Some(kv);
                self.current.as_ref().map(|(_, v)| v.as_slice())
            }
            Ok(None) => None,
            Err(e) => {
                self.merger.error = Some(e);
                None
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("reading sorted runs: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    User(BoxError),
}

/// Calls `f` once per distinct key, in key order, with an iterator over all its values.
pub fn for_each_group(
    merger: &mut Merger,
    mut f: impl FnMut(&[u8], &mut dyn Values) -> Result<(), BoxError>,
) -> Result<(), GroupError> {
    let mut key = Vec::new();
    loop {
        match merger.peek_key() {
            None => break,
            Some(k) => {
                assert!(
                    key.is_empty() || key.as_slice() < k,
                    "merge output must be sorted"
                );
                key.clear();
                key.extend_from_slice(k);
            }
        }
        let mut values = MergeValues {
            merger: &mut *merger,
            key: &key,
            current: None,
        };
        f(&key, &mut values).map_err(GroupError::User)?;
        // Values the function did not read still belong to this key.
        while values.next_value().is_some() {}
        if let Some(e) = merger.error.take() {
            return Err(GroupError::Io(e));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::encode_record;
    use proptest::prelude::*;

    fn run_of(mut records: Vec<(Vec<u8>, Vec<u8>)>) -> RecordReader {
        records.sort();
        let mut data = Vec::new();
        for (k, v) in &records {
            encode_record(&mut data, k, v);
        }
        RecordReader::from_vec(data)
    }

    proptest! {
        #[test]
        fn merge_groups_every_value_once(runs in prop::collection::vec(
            prop::collection::vec((prop::collection::vec(0u8..4, 0..3), any::<u8>()), 0..30), 0..6)) {
            // Goal: the merge of sorted runs calls f once per distinct key in order, with exactly
            // that key's values (as a multiset), whether or not f reads them all.
            let mut expected: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
            for run in &runs {
                for (k, v) in run {
                    expected.entry(k.clone()).or_default().push(*v);
                }
            }
            let sources = runs.into_iter().map(|r| run_of(r.into_iter().map(|(k, v)| (k, vec![v])).collect())).collect();
            let mut merger = Merger::new(sources).unwrap();
            let mut got: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
            let mut order = Vec::new();
            for_each_group(&mut merger, |k, values| {
                order.push(k.to_vec());
                let mut vs = Vec::new();
                // Skip reading values of keys starting with 3 to check the driver drains them.
                if k.first() != Some(&3) {
                    while let Some(v) = values.next_value() {
                        vs.push(v[0]);
                    }
                }
                got.insert(k.to_vec(), vs);
                Ok(())
            }).unwrap();
            prop_assert_eq!(order, expected.keys().cloned().collect::<Vec<_>>());
            for (k, mut vs) in expected {
                let mut g = got.remove(&k).unwrap();
                if k.first() == Some(&3) {
                    continue;
                }
                vs.sort();
                g.sort();
                prop_assert_eq!(g, vs);
            }
        }
    }
}
