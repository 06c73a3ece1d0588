//! A simulated disk per node that follows the core's persistence contract (crate docs of
//! `shoal-raft`, rule 1) and loses what a real disk loses on a crash.
//!
//! Durable state is what survives a crash: the hard state, the latest complete snapshot, and
//! the log entries after it. Entry writes first go to a volatile buffer and become durable at
//! [`Disk::fsync`]; a crash drops the buffer, except that the last write may be *torn*: a
//! prefix of its entries survives (a WAL whose tail record was cut). Hard-state writes and
//! snapshot installs are atomic (write a temporary file, fsync, rename), so they are either
//! whole or absent. Chunks of a snapshot still being received are volatile until the `done`
//! chunk.
//!
//! Older snapshots stay readable (up to [`SNAPSHOTS_RETAINED_MAX`]) for transfers that began
//! before a newer one was taken (contract rule 5); restarts use only the latest.

use std::collections::VecDeque;

use shoal_raft::{Entry, HardState, LogIndex, Membership, Restore, SnapshotChunk, SnapshotMeta, Term};

use crate::rng::SimRng;

/// Older snapshots kept readable for transfers in progress. Cost: this many copies of the
/// state machine per node.
pub const SNAPSHOTS_RETAINED_MAX: usize = 4;

/// A snapshot on stable storage: its metadata and the state machine's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data: Vec<u8>,
}

/// What a node finds on its disk after a crash.
#[derive(Clone, Debug, Default)]
pub struct DurableState {
    pub hard_state: HardState,
    pub snapshot: Option<StoredSnapshot>,
    /// Contiguous entries; the first may precede the snapshot's index (a tail kept so that
    /// followers can catch up after installing an older snapshot), never follow it by a gap.
    pub entries: Vec<Entry>,
}

/// A node's disk: durable state plus the volatile write buffer.
#[derive(Clone, Debug, Default)]
pub struct Disk {
    durable: DurableState,
    /// Entries written since the last fsync; the write first discards stored entries at or
    /// after `unsynced[0].index`.
    unsynced: Vec<Entry>,
    /// A snapshot being received chunk by chunk (volatile until its `done` chunk).
    incoming_snapshot: Option<StoredSnapshot>,
    /// Snapshots older than the latest, newest last.
    retained: VecDeque<StoredSnapshot>,
    pub n_fsyncs: u64,
    pub n_torn_writes: u64,
}

impl Disk {
    pub fn new() -> Disk {
        Disk::default()
    }

    pub fn durable(&self) -> &DurableState {
        &self.durable
    }

    pub fn snapshot(&self) -> Option<&StoredSnapshot> {
        self.durable.snapshot.as_ref()
    }

    pub fn snapshot_index(&self) -> LogIndex {
        self.durable
            .snapshot
            .as_ref()
            .map_or(LogIndex::ZERO, |s| s.meta.index)
    }

    /// The last durable index (entries, or the snapshot when none follow it).
    pub fn last_index(&self) -> LogIndex {
        self.durable
            .entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    /// Does durable state hold the entry `(index, term)`, in the log or covered by the
    /// snapshot? (A snapshot covers only committed entries, so any term of an index it covers
    /// is the committed one; the caller checks terms elsewhere.)
    pub fn holds(&self, index: LogIndex, term: Term) -> bool {
        if index <= self.snapshot_index() {
            return true;
        }
        self.durable_entry(index).is_some_and(|e| e.term == term)
    }

    fn durable_entry(&self, index: LogIndex) -> Option<&Entry> {
        let first = self.durable.entries.first()?.index;
        let offset = index.0.checked_sub(first.0)?;
        self.durable.entries.get(offset as usize)
    }

    /// The snapshot `meta` describes, if it is the latest or still retained.
    pub fn readable_snapshot(&self, meta: &SnapshotMeta) -> Option<&StoredSnapshot> {
        self.durable
            .snapshot
            .iter()
            .chain(self.retained.iter().rev())
            .find(|s| s.meta == *meta)
    }

    fn replace_latest_snapshot(&mut self, snapshot: StoredSnapshot) {
        if let Some(previous) = self.durable.snapshot.replace(snapshot) {
            self.retained.push_back(previous);
            if self.retained.len() > SNAPSHOTS_RETAINED_MAX {
                self.retained.pop_front();
            }
        }
    }

    /// Writes one received snapshot chunk (contract rule 1: before the entries). A `done`
    /// chunk makes the whole snapshot durable at once and replaces the stored log by it; it is
    /// returned so the caller can check it. Errors describe a chunk the core should not have
    /// produced (a gap in offsets).
    pub fn write_snapshot_chunk(&mut self, chunk: SnapshotChunk) -> Result<Option<&StoredSnapshot>, String> {
        if chunk.offset == 0 {
            self.incoming_snapshot = Some(StoredSnapshot {
                meta: chunk.meta.clone(),
                data: Vec::new(),
            });
        }
        let Some(incoming) = self.incoming_snapshot.as_mut() else {
            return Err(format!(
                "snapshot chunk at offset {} with no snapshot started (index {})",
                chunk.offset, chunk.meta.index
            ));
        };
        if incoming.meta != chunk.meta || incoming.data.len() as u64 != chunk.offset {
            return Err(format!(
                "snapshot chunk at offset {} of index {} does not continue the snapshot of index {} \
                 holding {} bytes",
                chunk.offset,
                chunk.meta.index,
                incoming.meta.index,
                incoming.data.len()
            ));
        }
        incoming.data.extend_from_slice(&chunk.data);
        if !chunk.done {
            return Ok(None);
        }
        if let Some(snapshot) = self.incoming_snapshot.take() {
            self.durable.entries.clear();
            self.replace_latest_snapshot(snapshot);
        }
        Ok(self.durable.snapshot.as_ref())
    }

    /// Buffers entries (contract rule 1: after discarding stored entries at or after the first
    /// one). Errors describe entries that would leave a gap in the log.
    pub fn write_entries(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        for pair in entries.windows(2) {
            if pair[1].index != pair[0].index.next() {
                return Err(format!(
                    "entries to persist jump from {} to {}",
                    pair[0].index, pair[1].index
                ));
            }
        }
        let last = self.unsynced.last().map_or(self.last_index(), |e| e.index);
        if first.index > last.next() {
            return Err(format!(
                "entries to persist start at {} but the stored log ends at {last}",
                first.index
            ));
        }
        if first.index <= self.snapshot_index() {
            return Err(format!(
                "entries to persist start at {} inside the snapshot ending at {}",
                first.index,
                self.snapshot_index()
            ));
        }
        // Merge into the pending write: later entries replace earlier ones at the same index.
        if let Some(pending_first) = self.unsynced.first().map(|e| e.index) {
            if first.index <= pending_first {
                self.unsynced.clear();
            } else {
                self.unsynced.truncate((first.index.0 - pending_first.0) as usize);
            }
        }
        self.unsynced.extend(entries);
        Ok(())
    }

    /// Makes the buffered entries durable.
    pub fn fsync(&mut self) {
        self.n_fsyncs += 1;
        let unsynced = std::mem::take(&mut self.unsynced);
        self.persist(unsynced);
    }

    fn persist(&mut self, entries: Vec<Entry>) {
        let Some(first) = entries.first().map(|e| e.index) else {
            return;
        };
        match self.durable.entries.first().map(|e| e.index) {
            Some(stored_first) if stored_first < first => {
                self.durable.entries.truncate((first.0 - stored_first.0) as usize);
            }
            _ => self.durable.entries.clear(),
        }
        self.durable.entries.extend(entries);
    }

    /// Writes the hard state atomically and durably (contract rule 1: after the entries).
    pub fn write_hard_state(&mut self, hard_state: HardState) {
        self.durable.hard_state = hard_state;
    }

    /// The state machine saved a snapshot at `meta.index` (contract rule 5): it becomes the
    /// latest durable one atomically, and the log prefix through `compact_through` (at most
    /// `meta.index`) is dropped.
    pub fn save_snapshot(&mut self, meta: SnapshotMeta, data: Vec<u8>, compact_through: LogIndex) {
        if meta.index <= self.snapshot_index() {
            return;
        }
        let compact_through = compact_through.min(meta.index);
        let n_covered = self
            .durable
            .entries
            .iter()
            .take_while(|e| e.index <= compact_through)
            .count();
        self.durable.entries.drain(..n_covered);
        self.replace_latest_snapshot(StoredSnapshot { meta, data });
    }

    /// A crash: everything volatile is lost, except that with probability
    /// `torn_write_probability` a random prefix of the unsynced entries survives.
    pub fn crash(&mut self, rng: &mut SimRng, torn_write_probability: f64) {
        self.incoming_snapshot = None;
        let mut unsynced = std::mem::take(&mut self.unsynced);
        if !unsynced.is_empty() && rng.chance(torn_write_probability) {
            let n_kept = rng.range_inclusive(0, unsynced.len() as u64) as usize;
            if n_kept > 0 {
                self.n_torn_writes += 1;
                unsynced.truncate(n_kept);
                self.persist(unsynced);
            }
        }
    }

    /// What a restarting node gives `Raft::new` (contract rule 6): exactly what is stored.
    pub fn restore(&self, initial_membership: &Membership) -> Restore {
        let snapshot_index = self.snapshot_index();
        Restore {
            hard_state: self.durable.hard_state,
            snapshot: self.durable.snapshot.as_ref().map(|s| s.meta.clone()),
            entries: self
                .durable
                .entries
                .iter()
                .filter(|e| e.index > snapshot_index)
                .cloned()
                .collect(),
            initial_membership: initial_membership.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_raft::EntryKind;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            kind: EntryKind::Command,
            data: vec![index as u8],
        }
    }

    #[test]
    fn sim_disk_crash_loses_unsynced_entries() {
        // Goal: entries survive a crash only once fsynced; a later write replaces a suffix.
        let mut disk = Disk::new();
        let mut rng = SimRng::new(1);
        disk.write_entries(vec![entry(1, 1), entry(2, 1)])
            .expect("contiguous");
        disk.fsync();
        disk.write_entries(vec![entry(2, 2), entry(3, 2)])
            .expect("contiguous");
        disk.crash(&mut rng, 0.0);
        assert_eq!(disk.last_index(), LogIndex(2));
        assert!(disk.holds(LogIndex(2), Term(1)));
        disk.write_entries(vec![entry(2, 2), entry(3, 2)])
            .expect("contiguous");
        disk.fsync();
        assert!(disk.holds(LogIndex(2), Term(2)));
        assert_eq!(disk.last_index(), LogIndex(3));
        assert!(disk.write_entries(vec![entry(9, 2)]).is_err());
    }

    #[test]
    fn sim_disk_torn_write_keeps_a_prefix() {
        // Goal: a torn write keeps a prefix of the unsynced entries, never a gap or a suffix.
        let mut rng = SimRng::new(3);
        let mut seen_torn = false;
        for _ in 0..50 {
            let mut disk = Disk::new();
            disk.write_entries((1..=5).map(|i| entry(i, 1)).collect())
                .expect("contiguous");
            disk.crash(&mut rng, 1.0);
            let last = disk.last_index().0;
            seen_torn |= last > 0;
            for i in 1..=last {
                assert!(disk.holds(LogIndex(i), Term(1)));
            }
        }
        assert!(seen_torn);
    }

    #[test]
    fn sim_disk_snapshots_replace_the_log() {
        // Goal: a done chunk installs the snapshot and clears the log; a local snapshot drops
        // only the prefix it covers; chunk gaps are refused.
        let meta = SnapshotMeta {
            index: LogIndex(4),
            term: Term(2),
            membership: Membership::new([]),
        };
        let mut disk = Disk::new();
        disk.write_entries((1..=6).map(|i| entry(i, 1)).collect())
            .expect("contiguous");
        disk.fsync();
        disk.save_snapshot(meta.clone(), vec![1], meta.index);
        assert_eq!(disk.durable().entries.first().map(|e| e.index), Some(LogIndex(5)));
        let chunk = |offset: u64, data: Vec<u8>, done: bool| SnapshotChunk {
            meta: SnapshotMeta {
                index: LogIndex(10),
                ..meta.clone()
            },
            offset,
            data,
            done,
        };
        assert!(disk.write_snapshot_chunk(chunk(3, vec![1], false)).is_err());
        disk.write_snapshot_chunk(chunk(0, vec![1, 2], false))
            .expect("first chunk");
        assert!(disk.write_snapshot_chunk(chunk(1, vec![1], false)).is_err());
        disk.write_snapshot_chunk(chunk(0, vec![1, 2], false))
            .expect("restart");
        let stored = disk
            .write_snapshot_chunk(chunk(2, vec![3], true))
            .expect("last chunk")
            .expect("installed")
            .clone();
        assert_eq!(stored.data, vec![1, 2, 3]);
        assert_eq!(disk.last_index(), LogIndex(10));
        assert!(disk.durable().entries.is_empty());
    }
}
