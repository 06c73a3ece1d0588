//! Durable state of one Raft group on top of `shoal-wal`: log entries in the WAL (the raft
//! index is the WAL index), the hard state in an atomically replaced file, snapshots in the
//! snapshot store with the core's `SnapshotMeta` (plus member addresses) as their metadata.
//!
//! Layout of a group's data directory:
//!
//! ```text
//! <data_dir>/wal/          WAL segments (one record per entry, protobuf `Entry`)
//! <data_dir>/snapshots/    snapshot files (metadata: protobuf `InstallSnapshot` without data)
//! <data_dir>/hard_state    term, vote, commit (24 bytes)
//! <data_dir>/bootstrap     the voters the group was created with (protobuf `Membership`)
//! ```

use std::collections::BTreeMap;
use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::wal::{self, SnapshotStore, SnapshotWriter, Wal, WalOptions};
use shoal_raft::{
    Entry, EntryKind, HardState, LogIndex, Membership, NodeId, Restore, SnapshotChunk, SnapshotMeta, Term,
};

use crate::codec;
use crate::error::{Error, Result};
use crate::state_machine::StateMachine;

const HARD_STATE_FILE: &str = "hard_state";
const BOOTSTRAP_FILE: &str = "bootstrap";

fn storage_error(context: impl Display, error: impl Display) -> Error {
    Error::Storage(format!("{context}: {error}"))
}

/// What a group recovered from its data directory (crate contract rule 6).
pub(crate) struct Recovery {
    pub restore: Restore,
    /// Member addresses from the snapshot's metadata and from ConfigChange entries.
    pub addresses: BTreeMap<NodeId, String>,
}

/// The latest durable snapshot.
#[derive(Clone, Debug)]
pub(crate) struct StoredSnapshot {
    pub meta: SnapshotMeta,
    pub data_len: u64,
}

/// The data part of a durable snapshot (what [`StateMachine::snapshot`] wrote), read from its
/// file; reading to the end fails with [`std::io::ErrorKind::InvalidData`] if the CRC does not
/// match. The file stays readable while this is open, even if a newer snapshot replaces it.
pub struct SnapshotData {
    reader: wal::SnapshotReader,
    len: u64,
}

impl SnapshotData {
    /// Length of the data in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::io::Read for SnapshotData {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.reader.read(buf)
    }
}

/// A snapshot file being written: the state machine's data goes in, then it becomes durable.
pub(crate) struct PendingSnapshot {
    meta: SnapshotMeta,
    writer: SnapshotWriter,
}

impl PendingSnapshot {
    /// Writes `state_machine`'s data and makes the file durable (renamed into place, fsynced).
    pub fn write<S: StateMachine>(mut self, state_machine: &S) -> Result<StoredSnapshot> {
        let index = self.meta.index;
        state_machine
            .snapshot(&mut self.writer)
            .map_err(|e| Error::StateMachine(format!("writing snapshot {index}: {e}")))?;
        let info = self
            .writer
            .finish()
            .map_err(|e| storage_error(format!("finishing snapshot {index}"), e))?;
        Ok(StoredSnapshot {
            meta: self.meta,
            data_len: info.data_len,
        })
    }
}

pub(crate) struct GroupStorage {
    dir: PathBuf,
    wal: Wal,
    snapshots: SnapshotStore,
    /// A snapshot being received from the leader, chunk by chunk.
    incoming: Option<(SnapshotMeta, SnapshotWriter)>,
    latest: Option<StoredSnapshot>,
}

impl GroupStorage {
    /// Opens (or creates) the group's storage, restores `state_machine` from the latest
    /// snapshot, and returns what `Raft::new` needs. `initial_voters` is recorded on first
    /// start; a restart uses the recorded list.
    pub fn open<S: StateMachine>(
        dir: &Path,
        initial_voters: &[NodeId],
        wal_options: WalOptions,
        state_machine: &mut S,
    ) -> Result<(GroupStorage, Recovery)> {
        std::fs::create_dir_all(dir).map_err(|e| storage_error(format!("creating {}", dir.display()), e))?;
        let voters = match wal::read_file_atomic(dir, BOOTSTRAP_FILE)
            .map_err(|e| storage_error(format!("reading {}/{BOOTSTRAP_FILE}", dir.display()), e))?
        {
            Some(bytes) => codec::decode_voters(&bytes).map_err(|e| storage_error(dir.display(), e))?,
            None => {
                if initial_voters.is_empty() {
                    return Err(Error::Config(format!(
                        "{} holds no group yet and initial_voters is empty: give the voters the group \
                         was created with",
                        dir.display()
                    )));
                }
                wal::write_file_atomic(dir, BOOTSTRAP_FILE, &codec::encode_voters(initial_voters))
                    .map_err(|e| storage_error(format!("writing {}/{BOOTSTRAP_FILE}", dir.display()), e))?;
                initial_voters.to_vec()
            }
        };
        let hard_state = match wal::read_file_atomic(dir, HARD_STATE_FILE)
            .map_err(|e| storage_error(format!("reading {}/{HARD_STATE_FILE}", dir.display()), e))?
        {
            Some(bytes) => codec::decode_hard_state(&bytes).map_err(|e| storage_error(dir.display(), e))?,
            None => HardState::default(),
        };

        let snapshot_dir = dir.join("snapshots");
        let snapshots = SnapshotStore::open(&snapshot_dir)
            .map_err(|e| storage_error(format!("opening snapshots in {}", snapshot_dir.display()), e))?;
        let mut addresses = BTreeMap::new();
        let mut latest = None;
        let latest_info = snapshots
            .latest()
            .map_err(|e| storage_error(format!("reading snapshots in {}", snapshot_dir.display()), e))?;
        if let Some(info) = latest_info {
            let (meta, snapshot_addresses) = codec::decode_snapshot_record(&info.meta)
                .map_err(|e| storage_error(snapshot_dir.display(), e))?;
            assert_eq!(
                meta.index.0, info.index,
                "snapshot metadata disagrees with its file"
            );
            let mut reader = snapshots
                .open_reader(info.index)
                .map_err(|e| storage_error(format!("opening snapshot {}", info.index), e))?;
            state_machine
                .restore(&mut reader)
                .map_err(|e| Error::StateMachine(format!("restoring snapshot {}: {e}", info.index)))?;
            addresses = snapshot_addresses;
            latest = Some(StoredSnapshot {
                meta,
                data_len: info.data_len,
            });
        }

        let wal_dir = dir.join("wal");
        let (mut wal, recovered) = Wal::open(&wal_dir, wal_options)
            .map_err(|e| storage_error(format!("opening WAL in {}", wal_dir.display()), e))?;
        let snapshot_point = latest.as_ref().map(|s| (s.meta.index, s.meta.term));
        let mut entries = Vec::with_capacity(recovered.records.len());
        let mut consistent = true;
        for (index, bytes) in &recovered.records {
            let entry =
                codec::decode_entry(bytes).map_err(|e| storage_error(format!("WAL record {index}"), e))?;
            if entry.index.0 != *index {
                return Err(storage_error(
                    format!("WAL record {index}"),
                    format!("holds entry {}", entry.index),
                ));
            }
            if let Some((snapshot_index, snapshot_term)) = snapshot_point {
                if entry.index < snapshot_index {
                    continue;
                }
                if entry.index == snapshot_index {
                    // Entries after a snapshot belong to its history only if the WAL agrees with
                    // the snapshot at its index (a crash between installing a leader's snapshot
                    // and resetting the WAL leaves the old, divergent log behind).
                    consistent = entry.term == snapshot_term;
                    continue;
                }
            }
            if !consistent {
                break;
            }
            learn_address(&entry, &mut addresses);
            entries.push(entry);
        }
        let gap = match (snapshot_point, entries.first()) {
            (Some((snapshot_index, _)), Some(first)) => first.index != snapshot_index.next(),
            (None, Some(first)) => first.index != LogIndex(1),
            _ => false,
        };
        // A WAL that ends before the snapshot (a crash between installing a leader's snapshot
        // and resetting the WAL) could not be appended to after the snapshot point.
        let ends_before_snapshot = match (snapshot_point, recovered.records.last()) {
            (Some((snapshot_index, _)), Some((last, _))) => *last < snapshot_index.0,
            _ => false,
        };
        if !consistent || gap || ends_before_snapshot {
            tracing::warn!(
                dir = %dir.display(),
                "WAL entries do not continue the latest snapshot; discarding them"
            );
            entries.clear();
            wal.reset().map_err(|e| storage_error("resetting the WAL", e))?;
        }
        let snapshot = latest.as_ref().map(|s| s.meta.clone());
        let restore = Restore {
            hard_state,
            snapshot,
            entries,
            initial_membership: Membership::new(voters),
        };
        let storage = GroupStorage {
            dir: dir.to_path_buf(),
            wal,
            snapshots,
            incoming: None,
            latest,
        };
        Ok((storage, Recovery { restore, addresses }))
    }

    pub fn latest_snapshot(&self) -> Option<&StoredSnapshot> {
        self.latest.as_ref()
    }

    /// WAL fsyncs so far (each one a group commit).
    pub fn n_fsyncs(&self) -> u64 {
        self.wal.n_fsyncs()
    }

    /// Writes one received snapshot chunk (contract rule 1, follower side). A `done` chunk
    /// finishes the snapshot durably and empties the WAL: the snapshot replaces the whole log.
    /// Returns true when the chunk completed a snapshot.
    pub fn write_snapshot_chunk(
        &mut self,
        chunk: SnapshotChunk,
        addresses: &BTreeMap<NodeId, String>,
    ) -> Result<bool> {
        if chunk.offset == 0 {
            // Dropping an unfinished writer abandons the partial snapshot.
            self.incoming = None;
            let record = codec::encode_snapshot_record(&chunk.meta, addresses);
            let writer = self
                .snapshots
                .begin(chunk.meta.index.0, &record)
                .map_err(|e| storage_error(format!("starting snapshot {}", chunk.meta.index), e))?;
            self.incoming = Some((chunk.meta.clone(), writer));
        }
        let Some((meta, writer)) = self.incoming.as_mut() else {
            // The core hands out chunks only in offset order starting at 0.
            panic!(
                "snapshot chunk at offset {} of snapshot {} without its start",
                chunk.offset, chunk.meta.index
            );
        };
        assert_eq!(*meta, chunk.meta, "snapshot chunk of another snapshot");
        writer
            .write_all(&chunk.data)
            .map_err(|e| storage_error(format!("writing snapshot {}", chunk.meta.index), e))?;
        if !chunk.done {
            return Ok(false);
        }
        let Some((meta, writer)) = self.incoming.take() else {
            return Ok(false);
        };
        let info = writer
            .finish()
            .map_err(|e| storage_error(format!("finishing snapshot {}", meta.index), e))?;
        self.wal
            .reset()
            .map_err(|e| storage_error("resetting the WAL after installing a snapshot", e))?;
        self.latest = Some(StoredSnapshot {
            meta,
            data_len: info.data_len,
        });
        Ok(true)
    }

    /// Appends entries (the WAL truncates its suffix when `entries[0]` overwrites it). Not
    /// durable until [`GroupStorage::sync`].
    pub fn append_entries(&mut self, entries: &[Entry]) -> Result<()> {
        for entry in entries {
            self.wal
                .append(entry.index.0, &codec::encode_entry(entry))
                .map_err(|e| storage_error(format!("appending entry {}", entry.index), e))?;
        }
        Ok(())
    }

    /// One fsync for everything appended since the last one: group commit.
    pub fn sync(&mut self) -> Result<()> {
        self.wal.sync().map_err(|e| storage_error("syncing the WAL", e))
    }

    /// Replaces the hard-state file atomically and durably.
    pub fn write_hard_state(&mut self, hard_state: &HardState) -> Result<()> {
        wal::write_file_atomic(&self.dir, HARD_STATE_FILE, &codec::encode_hard_state(hard_state))
            .map_err(|e| storage_error(format!("writing {}/{HARD_STATE_FILE}", self.dir.display()), e))
    }

    /// Reads up to `chunk_bytes_max` of snapshot `index` from `offset`; also says whether the
    /// chunk ends the snapshot. The store keeps the two newest snapshots, so the one the core
    /// sends stays readable while a newer one waits to be compacted to. An error here is not
    /// fatal: the core resends a stalled snapshot.
    pub fn read_snapshot_chunk(
        &self,
        index: LogIndex,
        offset: u64,
        chunk_bytes_max: usize,
    ) -> Result<(Vec<u8>, bool)> {
        let data_len = match self.latest.as_ref().filter(|s| s.meta.index == index) {
            Some(latest) => latest.data_len,
            None => self
                .snapshots
                .data_len(index.0)
                .map_err(|e| storage_error(format!("reading snapshot {index}"), e))?,
        };
        let data = self
            .snapshots
            .read_chunk(index.0, offset, chunk_bytes_max)
            .map_err(|e| storage_error(format!("reading snapshot {index} at offset {offset}"), e))?;
        let done = offset + data.len() as u64 >= data_len;
        Ok((data, done))
    }

    /// Restores `state_machine` from the stored snapshot `index` (contract rule 2).
    pub fn restore_state_machine<S: StateMachine>(
        &self,
        index: LogIndex,
        state_machine: &mut S,
    ) -> Result<()> {
        let mut reader = self
            .snapshots
            .open_reader(index.0)
            .map_err(|e| storage_error(format!("opening snapshot {index}"), e))?;
        state_machine
            .restore(&mut reader)
            .map_err(|e| Error::StateMachine(format!("restoring snapshot {index}: {e}")))
    }

    /// Opens the data of the durable snapshot at `index`.
    pub fn open_snapshot_data(&self, index: LogIndex) -> Result<SnapshotData> {
        let reader = self
            .snapshots
            .open_reader(index.0)
            .map_err(|e| storage_error(format!("opening snapshot {index}"), e))?;
        Ok(SnapshotData {
            len: reader.data_len(),
            reader,
        })
    }

    /// Takes a durable snapshot of `state_machine` at `meta.index` on this thread (tests; the
    /// group's loop writes snapshots on a blocking thread).
    #[cfg(test)]
    pub fn save_snapshot<S: StateMachine>(
        &mut self,
        meta: &SnapshotMeta,
        addresses: &BTreeMap<NodeId, String>,
        state_machine: &S,
    ) -> Result<()> {
        let stored = self.begin_snapshot(meta, addresses)?.write(state_machine)?;
        self.snapshot_saved(stored);
        Ok(())
    }

    /// Starts a snapshot at `meta` whose data [`PendingSnapshot::write`] then writes, on any
    /// thread, before [`GroupStorage::snapshot_saved`] records it.
    pub fn begin_snapshot(
        &self,
        meta: &SnapshotMeta,
        addresses: &BTreeMap<NodeId, String>,
    ) -> Result<PendingSnapshot> {
        let record = codec::encode_snapshot_record(meta, addresses);
        let writer = self
            .snapshots
            .begin(meta.index.0, &record)
            .map_err(|e| storage_error(format!("starting snapshot {}", meta.index), e))?;
        Ok(PendingSnapshot {
            meta: meta.clone(),
            writer,
        })
    }

    /// Records a snapshot written by [`PendingSnapshot::write`] as the latest, unless a newer
    /// one (installed from the leader meanwhile) already is; true when it became the latest.
    pub fn snapshot_saved(&mut self, stored: StoredSnapshot) -> bool {
        let newer = self
            .latest
            .as_ref()
            .is_none_or(|latest| latest.meta.index < stored.meta.index);
        if newer {
            self.latest = Some(stored);
        }
        newer
    }

    /// Drops WAL entries up to and including `upto` (after the core compacted its log).
    pub fn compact_log(&mut self, upto: LogIndex) -> Result<()> {
        self.wal
            .compact_prefix(upto.0)
            .map_err(|e| storage_error(format!("compacting the WAL up to {upto}"), e))
    }
}

/// Creates a group's durable state in the empty directory `dir` from a state machine
/// snapshot: the log starts after index 1 (term 1), whose snapshot holds `data` and makes
/// `members` the voters. Every member of a new group seeded this way starts from the same
/// state (restoring a cluster from a backup).
pub fn seed_group_from_snapshot(
    dir: &Path,
    members: &BTreeMap<NodeId, String>,
    data: &mut dyn std::io::Read,
) -> Result<()> {
    let occupied = std::fs::read_dir(dir)
        .map(|mut d| d.next().is_some())
        .unwrap_or(false);
    if occupied {
        return Err(Error::Config(format!(
            "{} is not empty: a group is seeded only into an empty directory",
            dir.display()
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| storage_error(format!("creating {}", dir.display()), e))?;
    let voters: Vec<NodeId> = members.keys().copied().collect();
    if voters.is_empty() {
        return Err(Error::Config(
            "a seeded group needs at least one member".to_string(),
        ));
    }
    let meta = SnapshotMeta {
        index: LogIndex(1),
        term: Term(1),
        membership: Membership::new(voters.iter().copied()),
    };
    let snapshot_dir = dir.join("snapshots");
    let snapshots = SnapshotStore::open(&snapshot_dir)
        .map_err(|e| storage_error(format!("opening snapshots in {}", snapshot_dir.display()), e))?;
    let mut writer = snapshots
        .begin(1, &codec::encode_snapshot_record(&meta, members))
        .map_err(|e| storage_error("starting the seed snapshot", e))?;
    std::io::copy(data, &mut writer).map_err(|e| storage_error("copying the seed snapshot", e))?;
    writer
        .finish()
        .map_err(|e| storage_error("finishing the seed snapshot", e))?;
    let hard_state = HardState {
        term: Term(1),
        vote: None,
        commit: LogIndex(1),
    };
    wal::write_file_atomic(dir, HARD_STATE_FILE, &codec::encode_hard_state(&hard_state))
        .map_err(|e| storage_error(format!("writing {}/{HARD_STATE_FILE}", dir.display()), e))?;
    // The bootstrap file last: its presence says the directory holds a group.
    wal::write_file_atomic(dir, BOOTSTRAP_FILE, &codec::encode_voters(&voters))
        .map_err(|e| storage_error(format!("writing {}/{BOOTSTRAP_FILE}", dir.display()), e))
}

/// A ConfigChange entry that adds a member carries its address.
pub(crate) fn learn_address(entry: &Entry, addresses: &mut BTreeMap<NodeId, String>) {
    if let Some((id, address)) = added_member_address(entry) {
        addresses.insert(id, address);
    }
}

pub(crate) fn added_member_address(entry: &Entry) -> Option<(NodeId, String)> {
    match &entry.kind {
        EntryKind::ConfigChange(shoal_raft::ConfigChange::AddLearner(id))
        | EntryKind::ConfigChange(shoal_raft::ConfigChange::AddVoter(id)) => {
            let address = std::str::from_utf8(&entry.data).ok()?.trim();
            (!address.is_empty()).then(|| (*id, address.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use shoal_raft::{HardState, Term};

    use super::*;
    use crate::state_machine::{KvCommand, KvStateMachine};

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            term: Term(term),
            index: LogIndex(index),
            kind: EntryKind::Command,
            data: KvCommand::Put {
                key: format!("k{index}").into_bytes(),
                value: b"v".to_vec(),
            }
            .encode(),
        }
    }

    fn meta(index: u64, term: u64) -> SnapshotMeta {
        SnapshotMeta {
            index: LogIndex(index),
            term: Term(term),
            membership: Membership::new([NodeId(1), NodeId(2), NodeId(3)]),
        }
    }

    fn open(dir: &Path) -> (GroupStorage, Recovery, KvStateMachine) {
        let mut kv = KvStateMachine::new();
        let (storage, recovery) = GroupStorage::open(
            dir,
            &[NodeId(1), NodeId(2), NodeId(3)],
            WalOptions::default(),
            &mut kv,
        )
        .expect("storage opens");
        (storage, recovery, kv)
    }

    fn indexes(recovery: &Recovery) -> Vec<u64> {
        recovery.restore.entries.iter().map(|e| e.index.0).collect()
    }

    #[test]
    fn restart_recovers_exactly_what_was_stored() {
        // Goal: contract rule 6: hard state, latest snapshot (with the state machine restored
        // from it and the members' addresses) and the entries after it come back as stored.
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut storage, recovery, _) = open(dir.path());
        assert!(recovery.restore.entries.is_empty());
        assert_eq!(
            recovery.restore.initial_membership.voters,
            BTreeSet::from([NodeId(1), NodeId(2), NodeId(3)])
        );
        let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        storage.append_entries(&entries).expect("append");
        storage.sync().expect("sync");
        let hard_state = HardState {
            term: Term(1),
            vote: Some(NodeId(2)),
            commit: LogIndex(4),
        };
        storage.write_hard_state(&hard_state).expect("hard state");
        drop(storage);

        let (mut storage, recovery, _) = open(dir.path());
        assert_eq!(recovery.restore.hard_state, hard_state);
        assert_eq!(recovery.restore.entries, entries);
        // A snapshot at 3 of a machine that applied entries 1..=3.
        let mut kv = KvStateMachine::new();
        for e in &entries[..3] {
            kv.apply(e.index, &e.data);
        }
        let addresses = BTreeMap::from([(NodeId(4), "127.0.0.1:9".to_string())]);
        storage
            .save_snapshot(&meta(3, 1), &addresses, &kv)
            .expect("snapshot");
        storage.compact_log(LogIndex(3)).expect("compact");
        drop(storage);

        let (_, recovery, restored) = open(dir.path());
        assert_eq!(recovery.restore.snapshot, Some(meta(3, 1)));
        assert_eq!(indexes(&recovery), vec![4, 5]);
        assert_eq!(restored, kv);
        assert_eq!(
            recovery.addresses.get(&NodeId(4)).map(String::as_str),
            Some("127.0.0.1:9")
        );
    }

    #[test]
    fn received_snapshot_replaces_the_log() {
        // Goal: a follower's done chunk makes the snapshot durable and empties the WAL, and
        // entries after the snapshot can be appended at once.
        let dir = tempfile::tempdir().expect("temp dir");
        let (mut storage, _, _) = open(dir.path());
        storage
            .append_entries(&[entry(1, 1), entry(2, 1)])
            .expect("append");
        storage.sync().expect("sync");
        let mut kv = KvStateMachine::new();
        kv.apply(LogIndex(1), &entry(1, 2).data);
        let mut data = Vec::new();
        kv.snapshot(&mut data).expect("snapshot bytes");
        let (first, rest) = data.split_at(data.len() / 2);
        for (offset, chunk, done) in [(0, first, false), (first.len() as u64, rest, true)] {
            let chunk = SnapshotChunk {
                meta: meta(10, 2),
                offset,
                data: chunk.to_vec(),
                done,
            };
            assert_eq!(
                storage
                    .write_snapshot_chunk(chunk, &BTreeMap::new())
                    .expect("chunk"),
                done
            );
        }
        storage
            .append_entries(&[entry(11, 2)])
            .expect("append after the snapshot");
        storage.sync().expect("sync");
        let (data_read, done) = storage
            .read_snapshot_chunk(LogIndex(10), 0, 1 << 20)
            .expect("read");
        assert!(done);
        assert_eq!(data_read, data);
        drop(storage);

        let (_, recovery, restored) = open(dir.path());
        assert_eq!(recovery.restore.snapshot, Some(meta(10, 2)));
        assert_eq!(indexes(&recovery), vec![11]);
        assert_eq!(restored, kv);
    }

    #[test]
    fn wal_that_does_not_continue_the_snapshot_is_discarded() {
        // Goal: after a crash between storing a leader's snapshot and resetting the WAL, the
        // old log (shorter than the snapshot, or disagreeing with it at its index) is dropped
        // instead of being glued after the snapshot.
        for (wal_last, wal_term) in [(5, 1), (12, 1)] {
            let dir = tempfile::tempdir().expect("temp dir");
            let (mut storage, _, _) = open(dir.path());
            let entries: Vec<Entry> = (1..=wal_last).map(|i| entry(i, wal_term)).collect();
            storage.append_entries(&entries).expect("append");
            storage.sync().expect("sync");
            // The snapshot at 10 is of term 2: the WAL's entry 10 (if any) is of term 1.
            storage
                .save_snapshot(&meta(10, 2), &BTreeMap::new(), &KvStateMachine::new())
                .expect("snapshot");
            drop(storage);
            let (mut storage, recovery, _) = open(dir.path());
            assert!(
                indexes(&recovery).is_empty(),
                "WAL up to {wal_last} must be dropped"
            );
            storage
                .append_entries(&[entry(11, 2)])
                .expect("append after the snapshot");
            storage.sync().expect("sync");
            drop(storage);
            let (_, recovery, _) = open(dir.path());
            assert_eq!(indexes(&recovery), vec![11]);
        }
    }
}
