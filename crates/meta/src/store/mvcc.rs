//! Multi-version key-value data: every change gets the next revision, every key keeps the
//! versions it had since the last compaction, reads can ask for any retained revision.
//!
//! Invariants (asserted where cheap):
//! - A key's versions are in strictly increasing `mod_revision` order; a tombstone (delete)
//!   is never the first version of a key, and two tombstones are never adjacent.
//! - `revisions[r]` lists exactly the keys that changed at revision `r`, in sub-revision
//!   order, for every retained `r`.
//! - `current_revision >= compact_revision`; reads below `compact_revision` are refused.
//! - Versions older than the one visible at `compact_revision` are unreachable; they are
//!   removed a bounded batch at a time ([`COMPACTION_KEYS_PER_STEP_MAX`]), so a large
//!   compaction never stalls the apply loop.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::proto::KeyValue;

/// Keys whose old versions one compaction step removes. Cost: the step runs inside one
/// apply; 10k keys take about a millisecond.
pub const COMPACTION_KEYS_PER_STEP_MAX: usize = 10_000;

/// Bytes charged per stored version on top of its key and value (index entries, revision
/// map). Used for the size quota; close to what the structures cost in memory.
pub const VERSION_OVERHEAD_BYTES: i64 = 96;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Version {
    pub mod_revision: i64,
    /// Position of the change within its revision (a transaction changes several keys).
    pub sub: u32,
    /// `None` for a deletion (tombstone).
    pub kv: Option<KeyValue>,
}

/// A change of one key at one revision, as watchers see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    pub revision: i64,
    /// The key after the change; for a deletion only `key` and `mod_revision` are set.
    pub kv: KeyValue,
    pub deleted: bool,
    /// The version before the change, if it is still retained.
    pub prev: Option<KeyValue>,
}

/// Which keys a request covers, etcd style: `range_end` empty = just `key`; `range_end` =
/// "\0" = every key >= `key`; otherwise [key, range_end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Vec<u8>,
    pub end: RangeEnd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RangeEnd {
    Single,
    Unbounded,
    Excluded(Vec<u8>),
}

impl KeyRange {
    pub fn new(key: &[u8], range_end: &[u8]) -> KeyRange {
        let end = if range_end.is_empty() {
            RangeEnd::Single
        } else if range_end == [0] {
            RangeEnd::Unbounded
        } else {
            RangeEnd::Excluded(range_end.to_vec())
        };
        KeyRange {
            start: key.to_vec(),
            end,
        }
    }

    pub fn single(key: &[u8]) -> KeyRange {
        KeyRange::new(key, &[])
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            RangeEnd::Single => key == self.start.as_slice(),
            RangeEnd::Unbounded => key >= self.start.as_slice(),
            RangeEnd::Excluded(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }

    fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        match &self.end {
            RangeEnd::Single => (Bound::Included(&self.start[..]), Bound::Included(&self.start[..])),
            RangeEnd::Unbounded => (Bound::Included(&self.start[..]), Bound::Unbounded),
            RangeEnd::Excluded(end) => {
                if end.as_slice() <= self.start.as_slice() {
                    // Empty range; BTreeMap::range panics on start > end.
                    (Bound::Included(&self.start[..]), Bound::Excluded(&self.start[..]))
                } else {
                    (Bound::Included(&self.start[..]), Bound::Excluded(&end[..]))
                }
            }
        }
    }
}

/// The end of the range of every key starting with `prefix` ("\0" for the empty prefix).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Mvcc {
    keys: BTreeMap<Vec<u8>, Vec<Version>>,
    revisions: BTreeMap<i64, Vec<Vec<u8>>>,
    current_revision: i64,
    compact_revision: i64,
    /// Keys at or after this one still hold versions older than `compact_revision`.
    compaction_cursor: Option<Vec<u8>>,
    size_bytes: i64,
    n_live_keys: i64,
}

fn version_size(key: &[u8], kv: &Option<KeyValue>) -> i64 {
    key.len() as i64 + kv.as_ref().map_or(0, |kv| kv.value.len() as i64) + VERSION_OVERHEAD_BYTES
}

/// The version visible at `revision`: the newest with `mod_revision <= revision`.
fn visible_at(versions: &[Version], revision: i64) -> Option<&Version> {
    let n_at_or_before = versions.partition_point(|v| v.mod_revision <= revision);
    n_at_or_before.checked_sub(1).map(|idx| &versions[idx])
}

impl Mvcc {
    pub fn current_revision(&self) -> i64 {
        self.current_revision
    }

    pub fn compact_revision(&self) -> i64 {
        self.compact_revision
    }

    pub fn size_bytes(&self) -> i64 {
        self.size_bytes
    }

    pub fn n_live_keys(&self) -> i64 {
        self.n_live_keys
    }

    /// The live version of `key` now.
    pub fn get(&self, key: &[u8]) -> Option<&KeyValue> {
        self.keys.get(key)?.last()?.kv.as_ref()
    }

    /// Keys in `range` visible at `revision`, in key order, calling `visit` until it returns
    /// false.
    pub fn scan_at(&self, range: &KeyRange, revision: i64, mut visit: impl FnMut(&KeyValue) -> bool) {
        for (_, versions) in self.keys.range::<[u8], _>(range.bounds()) {
            if let Some(Version { kv: Some(kv), .. }) = visible_at(versions, revision) {
                if !visit(kv) {
                    return;
                }
            }
        }
    }

    /// Live keys in `range` now (for deletes and lease revocation).
    pub fn live_keys_in(&self, range: &KeyRange) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        for (key, versions) in self.keys.range::<[u8], _>(range.bounds()) {
            if matches!(versions.last(), Some(Version { kv: Some(_), .. })) {
                keys.push(key.clone());
            }
        }
        keys
    }

    /// Starts a new revision; changes are recorded with [`Mvcc::put`] / [`Mvcc::delete`] and
    /// sealed by [`Mvcc::end_revision`]. Returns the new revision's number.
    pub fn next_revision(&self) -> i64 {
        self.current_revision + 1
    }

    /// Puts `key` at `revision` (= `next_revision()`), position `sub` in it: `value`, or with `None` the key's current value (an absent
    /// key gets an empty one). Returns the previous version when `want_prev` (the request
    /// asked for it), and the previous version's lease (0 when the key was absent or had none).
    ///
    /// Cost: one map lookup for a key that exists (two for a new one); the previous version
    /// is cloned only when asked for.
    pub fn put(
        &mut self,
        revision: i64,
        sub: u32,
        key: &[u8],
        value: Option<Vec<u8>>,
        lease: i64,
        want_prev: bool,
    ) -> (Option<KeyValue>, i64) {
        assert_eq!(
            revision,
            self.current_revision + 1,
            "changes go to the next revision"
        );
        let versions = match self.keys.get_mut(key) {
            Some(versions) => versions,
            None => self.keys.entry(key.to_vec()).or_default(),
        };
        let prev = versions.last().and_then(|v| v.kv.as_ref());
        assert!(
            versions.last().is_none_or(|v| v.mod_revision < revision),
            "a key changes at most once per revision"
        );
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.map_or(1, |p| p.version + 1),
            value: match value {
                Some(value) => value,
                None => prev.map(|p| p.value.clone()).unwrap_or_default(),
            },
            lease,
        };
        let prev_lease = prev.map_or(0, |p| p.lease);
        if prev.is_none() {
            self.n_live_keys += 1;
        }
        let prev = if want_prev { prev.cloned() } else { None };
        let stored = Some(kv);
        self.size_bytes += version_size(key, &stored);
        versions.push(Version {
            mod_revision: revision,
            sub,
            kv: stored,
        });
        self.revisions.entry(revision).or_default().push(key.to_vec());
        (prev, prev_lease)
    }

    /// Deletes live `key` at `revision`; returns its last value (None if it was not live).
    pub fn delete(&mut self, revision: i64, sub: u32, key: &[u8]) -> Option<KeyValue> {
        assert_eq!(
            revision,
            self.current_revision + 1,
            "changes go to the next revision"
        );
        let versions = self.keys.get_mut(key)?;
        let prev = versions.last()?.kv.clone()?;
        assert!(versions.last().is_none_or(|v| v.mod_revision < revision));
        self.n_live_keys -= 1;
        self.size_bytes += version_size(key, &None);
        versions.push(Version {
            mod_revision: revision,
            sub,
            kv: None,
        });
        self.revisions.entry(revision).or_default().push(key.to_vec());
        Some(prev)
    }

    /// Seals the next revision if anything changed in it; returns whether it did.
    pub fn end_revision(&mut self) -> bool {
        let revision = self.current_revision + 1;
        if self.revisions.contains_key(&revision) {
            self.current_revision = revision;
            true
        } else {
            false
        }
    }

    /// Makes revisions below `revision` unreadable and schedules their removal.
    pub fn compact(&mut self, revision: i64) {
        assert!(revision > self.compact_revision && revision <= self.current_revision);
        self.compact_revision = revision;
        // The revision map's old part goes at once (O(log n) split; dropping it is the cost,
        // done on another thread so the apply loop does not pay for it).
        let kept = self.revisions.split_off(&(revision + 1));
        let dropped = std::mem::replace(&mut self.revisions, kept);
        if dropped.len() > 1024 {
            std::thread::spawn(move || drop(dropped));
        }
        self.compaction_cursor = Some(Vec::new());
        self.compaction_step();
    }

    /// Removes unreachable versions from at most [`COMPACTION_KEYS_PER_STEP_MAX`] keys;
    /// returns true while work remains. Called after every apply.
    pub fn compaction_step(&mut self) -> bool {
        let Some(cursor) = self.compaction_cursor.take() else {
            return false;
        };
        let compact = self.compact_revision;
        let mut emptied = Vec::new();
        let mut next_cursor = None;
        let mut freed = 0i64;
        for (n_visited, (key, versions)) in self.keys.range_mut(cursor..).enumerate() {
            if n_visited == COMPACTION_KEYS_PER_STEP_MAX {
                next_cursor = Some(key.clone());
                break;
            }
            // Keep the version visible at `compact` unless it is a tombstone.
            let n_at_or_before = versions.partition_point(|v| v.mod_revision <= compact);
            let mut n_remove = n_at_or_before.saturating_sub(1);
            if let Some(visible) = n_at_or_before.checked_sub(1).map(|idx| &versions[idx]) {
                if visible.kv.is_none() {
                    n_remove = n_at_or_before;
                }
            }
            for removed in versions.drain(..n_remove) {
                freed += version_size(key, &removed.kv);
            }
            if versions.is_empty() {
                emptied.push(key.clone());
            }
        }
        for key in emptied {
            self.keys.remove(&key);
        }
        self.size_bytes -= freed;
        self.compaction_cursor = next_cursor;
        self.compaction_cursor.is_some()
    }

    /// Every change with revision in [from, to], in revision then sub-revision order, of keys
    /// in `range`; stops after the revision in which `bytes_max` is reached (a revision is
    /// never split). Returns the changes and the last revision covered.
    pub fn changes(&self, range: &KeyRange, from: i64, to: i64, bytes_max: usize) -> (Vec<Change>, i64) {
        let mut changes = Vec::new();
        let mut bytes = 0usize;
        let mut last = from - 1;
        if from > to {
            return (changes, last);
        }
        for (&revision, keys) in self.revisions.range(from..=to) {
            for key in keys.iter().filter(|k| range.contains(k)) {
                let versions = &self.keys[key];
                let idx = versions
                    .binary_search_by_key(&revision, |v| v.mod_revision)
                    .expect("the revision map names only retained versions");
                let version = &versions[idx];
                let prev = idx.checked_sub(1).and_then(|p| versions[p].kv.clone());
                let (kv, deleted) = match &version.kv {
                    Some(kv) => (kv.clone(), false),
                    None => (
                        KeyValue {
                            key: key.clone(),
                            mod_revision: revision,
                            ..KeyValue::default()
                        },
                        true,
                    ),
                };
                bytes += kv.key.len() + kv.value.len() + prev.as_ref().map_or(0, |p| p.value.len());
                changes.push(Change {
                    revision,
                    kv,
                    deleted,
                    prev,
                });
            }
            last = revision;
            if bytes >= bytes_max {
                break;
            }
        }
        if last < to && bytes < bytes_max {
            last = to;
        }
        (changes, last)
    }

    /// A hash of the state visible at `revision` (every live key with its metadata and value):
    /// equal on members that agree, whatever their compaction progress.
    pub fn hash_at(&self, revision: i64) -> u64 {
        let mut hash = Fnv64::new();
        for (key, versions) in &self.keys {
            if let Some(Version { kv: Some(kv), .. }) = visible_at(versions, revision) {
                hash.write(&(key.len() as u64).to_le_bytes());
                hash.write(key);
                for n in [kv.create_revision, kv.mod_revision, kv.version, kv.lease] {
                    hash.write(&n.to_le_bytes());
                }
                hash.write(&(kv.value.len() as u64).to_le_bytes());
                hash.write(&kv.value);
            }
        }
        hash.finish()
    }

    /// Every key with its retained versions, for snapshots.
    pub(crate) fn iter_versions(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<Version>)> {
        self.keys.iter()
    }

    /// Rebuilds the store from a snapshot's parts.
    pub(crate) fn from_parts(
        keys: BTreeMap<Vec<u8>, Vec<Version>>,
        current_revision: i64,
        compact_revision: i64,
    ) -> Mvcc {
        let mut by_revision: BTreeMap<i64, Vec<(u32, Vec<u8>)>> = BTreeMap::new();
        let mut size_bytes = 0;
        let mut n_live_keys = 0;
        for (key, versions) in &keys {
            for version in versions {
                size_bytes += version_size(key, &version.kv);
                if version.mod_revision > compact_revision {
                    by_revision
                        .entry(version.mod_revision)
                        .or_default()
                        .push((version.sub, key.clone()));
                }
            }
            if matches!(versions.last(), Some(Version { kv: Some(_), .. })) {
                n_live_keys += 1;
            }
        }
        let revisions = by_revision
            .into_iter()
            .map(|(revision, mut keys)| {
                keys.sort();
                (revision, keys.into_iter().map(|(_, key)| key).collect())
            })
            .collect();
        Mvcc {
            keys,
            revisions,
            current_revision,
            compact_revision,
            compaction_cursor: (compact_revision > 0).then(Vec::new),
            size_bytes,
            n_live_keys,
        }
    }
}

/// FNV-1a, 64 bits: a stable hash (same on every build and platform) for comparing members.
struct Fnv64(u64);

impl Fnv64 {
    fn new() -> Fnv64 {
        Fnv64(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
