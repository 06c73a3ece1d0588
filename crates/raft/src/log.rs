//! The in-memory view of the replicated log: a snapshot point, the entries after it, and the
//! commit/apply/persist cursors. Durable copies live in the runtime's WAL; this module only
//! decides what the log *is* and what must be handed out next.

use crate::types::{Entry, EntryKind, LogIndex, Membership, SnapshotMeta, Term};

#[derive(Debug)]
pub(crate) struct RaftLog {
    /// The last index and term covered by the latest snapshot (0, 0 when none).
    pub snapshot_index: LogIndex,
    pub snapshot_term: Term,
    /// Entries `snapshot_index + 1 ..= last_index()`, in order.
    entries: Vec<Entry>,
    /// Highest index known committed (§5.3). Never decreases.
    pub committed: LogIndex,
    /// Highest index handed to the state machine in a `Ready`.
    pub applied: LogIndex,
    /// First index not yet handed to the runtime for persisting.
    pub unstable_from: LogIndex,
    /// Membership at `snapshot_index`, and each membership entry after it.
    base_membership: Membership,
    membership_entries: Vec<(LogIndex, Membership)>,
}

impl RaftLog {
    pub fn new(snapshot: Option<&SnapshotMeta>, initial_membership: Membership) -> RaftLog {
        let (snapshot_index, snapshot_term, base_membership) = match snapshot {
            Some(meta) => (meta.index, meta.term, meta.membership.clone()),
            None => (LogIndex::ZERO, Term(0), initial_membership),
        };
        RaftLog {
            snapshot_index,
            snapshot_term,
            entries: Vec::new(),
            committed: snapshot_index,
            applied: snapshot_index,
            unstable_from: snapshot_index.next(),
            base_membership,
            membership_entries: Vec::new(),
        }
    }

    /// Loads entries recovered from stable storage (they are already persisted).
    pub fn restore_entries(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            if entry.index <= self.snapshot_index {
                continue;
            }
            assert_eq!(entry.index, self.last_index().next(), "recovered log has a gap");
            self.push(entry);
        }
        self.unstable_from = self.last_index().next();
    }

    pub fn first_index(&self) -> LogIndex {
        self.snapshot_index.next()
    }

    pub fn last_index(&self) -> LogIndex {
        self.entries
            .last()
            .map_or(self.snapshot_index, |entry| entry.index)
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot_term, |entry| entry.term)
    }

    /// The term of the entry at `index`, if the log still knows it.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        if index == self.snapshot_index {
            return Some(self.snapshot_term);
        }
        self.entry(index).map(|entry| entry.term)
    }

    pub fn entry(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.snapshot_index || index > self.last_index() {
            return None;
        }
        self.entries.get((index.0 - self.snapshot_index.0 - 1) as usize)
    }

    pub fn matches(&self, index: LogIndex, term: Term) -> bool {
        self.term_at(index) == Some(term)
    }

    /// §5.4.1: is a log ending at (last_index, last_term) at least as up-to-date as ours?
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term() || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// The membership in force: the latest membership entry in the log, committed or not
    /// (Raft dissertation §4.1).
    pub fn membership(&self) -> &Membership {
        self.membership_entries
            .last()
            .map_or(&self.base_membership, |(_, membership)| membership)
    }

    /// The membership in force after applying every entry up to `index`.
    pub fn membership_at(&self, index: LogIndex) -> Membership {
        self.membership_entries
            .iter()
            .rev()
            .find(|(entry_index, _)| *entry_index <= index)
            .map_or_else(|| self.base_membership.clone(), |(_, m)| m.clone())
    }

    /// Index of the last membership entry, or the snapshot index.
    pub fn last_membership_index(&self) -> LogIndex {
        self.membership_entries
            .last()
            .map_or(self.snapshot_index, |(index, _)| *index)
    }

    fn push(&mut self, entry: Entry) {
        if let EntryKind::ConfigChange(change) = &entry.kind {
            // An invalid change (impossible from a correct leader) leaves membership unchanged
            // on every replica alike, so replicas never disagree.
            let next = self
                .membership()
                .apply(change)
                .unwrap_or_else(|_| self.membership().clone());
            self.membership_entries.push((entry.index, next));
        }
        self.entries.push(entry);
    }

    /// Appends entries that extend the log (leader path).
    pub fn append(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            assert_eq!(
                entry.index,
                self.last_index().next(),
                "append must extend the log"
            );
            self.push(entry);
        }
    }

    /// Removes every entry at or after `from`. Committed entries are never removed (§5.3).
    fn truncate_from(&mut self, from: LogIndex) {
        assert!(
            from > self.committed,
            "truncating committed entry {from} (commit {})",
            self.committed
        );
        let keep = (from.0 - self.snapshot_index.0 - 1) as usize;
        self.entries.truncate(keep);
        self.membership_entries.retain(|(index, _)| *index < from);
        if self.unstable_from > from {
            self.unstable_from = from;
        }
    }

    /// The follower side of AppendEntries after the consistency check passed: skips entries
    /// already present, truncates at the first conflict (§5.3 step 3), appends the rest.
    /// Returns the index of the last entry of the message.
    pub fn append_after_check(&mut self, prev_log_index: LogIndex, entries: Vec<Entry>) -> LogIndex {
        let last_new = prev_log_index.plus(entries.len() as u64);
        for entry in entries {
            if entry.index <= self.snapshot_index {
                continue;
            }
            match self.term_at(entry.index) {
                Some(term) if term == entry.term => continue,
                Some(_) => {
                    self.truncate_from(entry.index);
                    self.push(entry);
                }
                None => self.push(entry),
            }
        }
        last_new
    }

    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        let index = index.min(self.last_index());
        if index > self.committed {
            self.committed = index;
            true
        } else {
            false
        }
    }

    /// The first index of the run of entries with `term` that contains `index` (for the
    /// conflict hint), never below the first index the log holds.
    pub fn first_index_of_term_at(&self, index: LogIndex) -> LogIndex {
        let Some(term) = self.term_at(index) else {
            return index;
        };
        let mut first = index;
        while first > self.first_index() {
            match self.term_at(first.prev()) {
                Some(t) if t == term => first = first.prev(),
                _ => break,
            }
        }
        first
    }

    /// The last index at or before `upto` whose entry has `term`, if any.
    pub fn last_index_of_term(&self, term: Term, upto: LogIndex) -> Option<LogIndex> {
        let mut index = upto.min(self.last_index());
        while index >= self.snapshot_index {
            let t = self.term_at(index)?;
            if t == term {
                return Some(index);
            }
            if t < term || index == LogIndex::ZERO {
                return None;
            }
            index = index.prev();
        }
        None
    }

    /// Total `Entry::size_bytes` of the entries `from ..= to` still in the log, without
    /// copying them.
    pub fn size_bytes_between(&self, from: LogIndex, to: LogIndex) -> usize {
        let first = from.max(self.first_index());
        let last = to.min(self.last_index());
        if first > last {
            return 0;
        }
        let start = (first.0 - self.snapshot_index.0 - 1) as usize;
        let end = (last.0 - self.snapshot_index.0) as usize;
        self.entries[start..end].iter().map(Entry::size_bytes).sum()
    }

    /// Entries `from ..= last_index()`, at most `bytes_max` bytes but always at least one.
    pub fn slice(&self, from: LogIndex, bytes_max: usize) -> Vec<Entry> {
        self.slice_to(from, self.last_index(), bytes_max)
    }

    /// Entries `from ..= to`, at most `bytes_max` bytes but always at least one.
    pub fn slice_to(&self, from: LogIndex, to: LogIndex, bytes_max: usize) -> Vec<Entry> {
        let mut out = Vec::new();
        if from <= self.snapshot_index || from > to {
            return out;
        }
        let start = (from.0 - self.snapshot_index.0 - 1) as usize;
        let end = ((to.0 - self.snapshot_index.0) as usize).min(self.entries.len());
        let mut bytes = 0;
        for entry in &self.entries[start.min(end)..end] {
            bytes += entry.size_bytes();
            if !out.is_empty() && bytes > bytes_max {
                break;
            }
            out.push(entry.clone());
        }
        out
    }

    /// Drops entries up to `meta.index` after the state machine saved a snapshot there.
    pub fn compact(&mut self, meta: &SnapshotMeta) {
        if meta.index <= self.snapshot_index {
            return;
        }
        assert!(meta.index <= self.applied, "compacting past the applied index");
        assert_eq!(
            self.term_at(meta.index),
            Some(meta.term),
            "snapshot term mismatch"
        );
        let drop = (meta.index.0 - self.snapshot_index.0) as usize;
        self.base_membership = self.membership_at(meta.index);
        self.membership_entries.retain(|(index, _)| *index > meta.index);
        self.entries.drain(..drop);
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
    }

    /// Replaces the whole log by an installed snapshot (the follower side of Figure 13).
    pub fn install_snapshot(&mut self, meta: &SnapshotMeta) {
        self.entries.clear();
        self.membership_entries.clear();
        self.base_membership = meta.membership.clone();
        self.snapshot_index = meta.index;
        self.snapshot_term = meta.term;
        self.committed = meta.index;
        self.applied = meta.index;
        self.unstable_from = meta.index.next();
    }

    /// Entries not yet handed out for persisting; marks them handed out.
    pub fn take_unstable(&mut self) -> Vec<Entry> {
        let out = self.slice(self.unstable_from, usize::MAX);
        self.unstable_from = self.last_index().next();
        out
    }

    /// Committed entries not yet handed to the state machine, at most `bytes_max` bytes (but at
    /// least one); marks them applied.
    pub fn take_committed(&mut self, bytes_max: usize) -> Vec<Entry> {
        let out = self.slice_to(self.applied.next(), self.committed, bytes_max);
        if let Some(last) = out.last() {
            self.applied = last.index;
        }
        out
    }

    pub fn has_unapplied(&self) -> bool {
        self.committed > self.applied
    }

    pub fn has_unstable(&self) -> bool {
        self.unstable_from <= self.last_index()
    }
}
