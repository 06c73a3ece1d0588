//! The replicated state machine of the simulation: a string key-value store with put and
//! append, and a per-client table of the last applied sequence number so that a retried
//! request takes effect exactly once (as in MIT 6.824 lab 3). Gets do not enter the log:
//! they are served through `Raft::read_index` (Raft §6.4).

use std::collections::BTreeMap;

use crate::rng::Fnv64;

/// Largest key or value the codec accepts; a longer one means corrupt bytes.
const STRING_BYTES_MAX: usize = 1 << 20;

/// A write a client asks the state machine to perform.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum KvWrite {
    Put { key: String, value: String },
    Append { key: String, value: String },
}

impl KvWrite {
    pub fn key(&self) -> &str {
        match self {
            KvWrite::Put { key, .. } | KvWrite::Append { key, .. } => key,
        }
    }
}

/// What a log entry of the simulation carries.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// An opaque number, as the commands of the 6.824 Raft tests; the store ignores it.
    Raw(u64),
    /// Opaque bytes for a state machine outside the simulator (e.g. the coordination
    /// store's commands, applied by a test from the agreed log); the store ignores them.
    Blob(Vec<u8>),
    /// A client write, deduplicated by `(client_id, seq)`.
    Kv {
        client_id: u64,
        seq: u64,
        write: KvWrite,
    },
}

const TAG_RAW: u8 = 1;
const TAG_KV_PUT: u8 = 2;
const TAG_KV_APPEND: u8 = 3;
const TAG_BLOB: u8 = 4;

impl Command {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Command::Raw(value) => {
                out.push(TAG_RAW);
                out.extend_from_slice(&value.to_le_bytes());
            }
            Command::Blob(bytes) => {
                out.push(TAG_BLOB);
                out.extend_from_slice(bytes);
            }
            Command::Kv {
                client_id,
                seq,
                write,
            } => {
                let (tag, key, value) = match write {
                    KvWrite::Put { key, value } => (TAG_KV_PUT, key, value),
                    KvWrite::Append { key, value } => (TAG_KV_APPEND, key, value),
                };
                out.push(tag);
                out.extend_from_slice(&client_id.to_le_bytes());
                out.extend_from_slice(&seq.to_le_bytes());
                put_string(&mut out, key);
                put_string(&mut out, value);
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, String> {
        let mut reader = Reader { bytes, pos: 0 };
        let tag = reader.u8()?;
        let command = match tag {
            TAG_RAW => Command::Raw(reader.u64()?),
            TAG_BLOB => {
                let blob = reader.bytes[reader.pos..].to_vec();
                reader.pos = reader.bytes.len();
                Command::Blob(blob)
            }
            TAG_KV_PUT | TAG_KV_APPEND => {
                let client_id = reader.u64()?;
                let seq = reader.u64()?;
                let key = reader.string()?;
                let value = reader.string()?;
                let write = if tag == TAG_KV_PUT {
                    KvWrite::Put { key, value }
                } else {
                    KvWrite::Append { key, value }
                };
                Command::Kv {
                    client_id,
                    seq,
                    write,
                }
            }
            other => return Err(format!("unknown command tag {other}")),
        };
        reader.finish()?;
        Ok(command)
    }
}

/// What applying one command did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The write took effect now.
    Applied,
    /// The write had taken effect before (a retry): nothing changed.
    Duplicate,
    /// Not a store command (a `Raw` number).
    Ignored,
}

/// The key-value store and its deduplication table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    values: BTreeMap<String, String>,
    /// Highest applied sequence number per client (a client has one request in flight, so
    /// anything at or below it is a retry).
    last_seq: BTreeMap<u64, u64>,
}

impl KvStore {
    pub fn new() -> KvStore {
        KvStore::default()
    }

    pub fn get(&self, key: &str) -> Option<&String> {
        self.values.get(key)
    }

    /// True when `(client_id, seq)` has taken effect already.
    pub fn is_applied(&self, client_id: u64, seq: u64) -> bool {
        self.last_seq.get(&client_id).is_some_and(|last| *last >= seq)
    }

    pub fn apply(&mut self, command: &Command) -> ApplyOutcome {
        let Command::Kv {
            client_id,
            seq,
            write,
        } = command
        else {
            return ApplyOutcome::Ignored;
        };
        if self.is_applied(*client_id, *seq) {
            return ApplyOutcome::Duplicate;
        }
        self.last_seq.insert(*client_id, *seq);
        match write {
            KvWrite::Put { key, value } => {
                self.values.insert(key.clone(), value.clone());
            }
            KvWrite::Append { key, value } => {
                self.values.entry(key.clone()).or_default().push_str(value);
            }
        }
        ApplyOutcome::Applied
    }

    /// The snapshot bytes: the map and the deduplication table (both are replicated state).
    pub fn to_snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&(self.values.len() as u64).to_le_bytes());
        for (key, value) in &self.values {
            put_string(&mut out, key);
            put_string(&mut out, value);
        }
        out.extend_from_slice(&(self.last_seq.len() as u64).to_le_bytes());
        for (client_id, seq) in &self.last_seq {
            out.extend_from_slice(&client_id.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
        }
        out
    }

    pub fn from_snapshot(bytes: &[u8]) -> Result<KvStore, String> {
        let mut reader = Reader { bytes, pos: 0 };
        let mut store = KvStore::new();
        let n_values = reader.u64()?;
        for _ in 0..n_values {
            let key = reader.string()?;
            let value = reader.string()?;
            store.values.insert(key, value);
        }
        let n_clients = reader.u64()?;
        for _ in 0..n_clients {
            let client_id = reader.u64()?;
            let seq = reader.u64()?;
            store.last_seq.insert(client_id, seq);
        }
        reader.finish()?;
        Ok(store)
    }

    /// A digest of the whole state, to compare replicas.
    pub fn state_hash(&self) -> u64 {
        let mut hasher = Fnv64::new();
        hasher.write_bytes(&self.to_snapshot());
        hasher.finish()
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| format!("truncated at byte {} (wanted {n} more)", self.pos))?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut buf = [0u8; 8];
        buf.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(buf))
    }

    fn string(&mut self) -> Result<String, String> {
        let mut buf = [0u8; 4];
        buf.copy_from_slice(self.take(4)?);
        let len = u32::from_le_bytes(buf) as usize;
        if len > STRING_BYTES_MAX {
            return Err(format!("string of {len} bytes exceeds {STRING_BYTES_MAX}"));
        }
        String::from_utf8(self.take(len)?.to_vec()).map_err(|e| e.to_string())
    }

    fn finish(&self) -> Result<(), String> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(format!("{} trailing bytes", self.bytes.len() - self.pos))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(client_id: u64, seq: u64, key: &str, value: &str) -> Command {
        Command::Kv {
            client_id,
            seq,
            write: KvWrite::Append {
                key: key.into(),
                value: value.into(),
            },
        }
    }

    #[test]
    fn sim_kv_dedup_applies_a_retry_once() {
        // Goal: the same (client, seq) applied twice changes the store once (exactly-once).
        let mut kv = KvStore::new();
        assert_eq!(kv.apply(&append(1, 1, "k", "a")), ApplyOutcome::Applied);
        assert_eq!(kv.apply(&append(1, 1, "k", "a")), ApplyOutcome::Duplicate);
        assert_eq!(kv.apply(&append(1, 2, "k", "b")), ApplyOutcome::Applied);
        assert_eq!(kv.get("k").map(String::as_str), Some("ab"));
        assert_eq!(kv.apply(&Command::Raw(9)), ApplyOutcome::Ignored);
    }

    #[test]
    fn sim_kv_codecs_round_trip() {
        // Goal: commands and snapshots decode to what was encoded, and garbage is refused.
        let commands = [
            Command::Raw(42),
            append(3, 7, "key", "value"),
            Command::Kv {
                client_id: 1,
                seq: 2,
                write: KvWrite::Put {
                    key: "x".into(),
                    value: String::new(),
                },
            },
        ];
        for command in &commands {
            assert_eq!(Command::decode(&command.encode()).as_ref(), Ok(command));
        }
        assert!(Command::decode(&[9, 9]).is_err());
        let mut kv = KvStore::new();
        kv.apply(&commands[1]);
        kv.apply(&commands[2]);
        let restored = KvStore::from_snapshot(&kv.to_snapshot()).expect("valid snapshot");
        assert_eq!(restored, kv);
        assert!(KvStore::from_snapshot(&[1, 2, 3]).is_err());
    }
}
