//! The replicated state machine interface, and a small key-value machine for tests and
//! benchmarks.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use shoal_raft::LogIndex;

/// A deterministic state machine replicated by a Raft group.
///
/// Every replica applies the same commands in the same order, so `apply` must depend only on
/// the machine's state and the command (no clock, no randomness, no I/O whose result can
/// differ between replicas). Methods are called one at a time: `apply`, `restore` and reads
/// in the group's loop, `snapshot` on a blocking thread that holds the machine meanwhile.
pub trait StateMachine: std::any::Any + Send {
    /// Applies a committed command at `index` and returns the reply for the proposer. Called
    /// exactly once per committed command, in log order (crate contract rule 2). A command
    /// the machine cannot parse must still be handled deterministically (e.g. an error reply).
    fn apply(&mut self, index: LogIndex, command: &[u8]) -> Vec<u8>;

    /// Writes the whole state to `out`. The runtime records the index it corresponds to.
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()>;

    /// Replaces the whole state by the one `snapshot` wrote to `input`.
    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()>;

    /// Answers a read-only `query` (the byte-level read of the gRPC `Read` call; typed reads
    /// use [`crate::RaftGroup::read`]). The default knows no queries and answers empty.
    fn query(&self, query: &[u8]) -> Vec<u8> {
        let _ = query;
        Vec::new()
    }
}

/// Largest key [`KvStateMachine`] accepts; bigger ones get an error reply. Cost: keys are held
/// in memory and written to every snapshot.
pub const KV_KEY_BYTES_MAX: usize = 4 * 1024;

/// A command of [`KvStateMachine`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvCommand {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8> },
}

const KV_OP_PUT: u8 = 1;
const KV_OP_DELETE: u8 = 2;

impl KvCommand {
    /// `[op u8][key_len u32 LE][key][value]`.
    pub fn encode(&self) -> Vec<u8> {
        let (op, key, value): (u8, &[u8], &[u8]) = match self {
            KvCommand::Put { key, value } => (KV_OP_PUT, key, value),
            KvCommand::Delete { key } => (KV_OP_DELETE, key, &[]),
        };
        let mut out = Vec::with_capacity(5 + key.len() + value.len());
        out.push(op);
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(value);
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<KvCommand> {
        let (&op, rest) = bytes.split_first()?;
        let key_len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
        let key = rest.get(4..4 + key_len)?.to_vec();
        let value = rest.get(4 + key_len..)?.to_vec();
        match op {
            KV_OP_PUT => Some(KvCommand::Put { key, value }),
            KV_OP_DELETE if value.is_empty() => Some(KvCommand::Delete { key }),
            _ => None,
        }
    }
}

/// A small in-memory key-value store: `Put`/`Delete` commands reply with the previous value
/// (see [`KvStateMachine::decode_reply`]); the byte query is a key and answers its value.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStateMachine {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    n_applied: u64,
    last_applied: LogIndex,
}

/// Reply tags: `[0]` no previous value, `[1, value..]` previous value, `[2, message..]` error.
const KV_REPLY_NONE: u8 = 0;
const KV_REPLY_SOME: u8 = 1;
const KV_REPLY_ERROR: u8 = 2;

impl KvStateMachine {
    pub fn new() -> KvStateMachine {
        KvStateMachine::default()
    }

    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.data.get(key)
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Commands applied since this replica's state began (a snapshot restore carries it over).
    pub fn n_applied(&self) -> u64 {
        self.n_applied
    }

    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// Decodes a `Put`/`Delete` reply: `Ok(previous value)` or `Err(message)`.
    pub fn decode_reply(reply: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match reply.split_first() {
            Some((&KV_REPLY_NONE, _)) => Ok(None),
            Some((&KV_REPLY_SOME, value)) => Ok(Some(value.to_vec())),
            Some((&KV_REPLY_ERROR, message)) => Err(String::from_utf8_lossy(message).into_owned()),
            _ => Err("malformed reply".to_string()),
        }
    }

    fn reply_previous(previous: Option<Vec<u8>>) -> Vec<u8> {
        match previous {
            None => vec![KV_REPLY_NONE],
            Some(value) => {
                let mut out = Vec::with_capacity(1 + value.len());
                out.push(KV_REPLY_SOME);
                out.extend_from_slice(&value);
                out
            }
        }
    }

    fn reply_error(message: &str) -> Vec<u8> {
        let mut out = vec![KV_REPLY_ERROR];
        out.extend_from_slice(message.as_bytes());
        out
    }
}

impl StateMachine for KvStateMachine {
    fn apply(&mut self, index: LogIndex, command: &[u8]) -> Vec<u8> {
        self.n_applied += 1;
        self.last_applied = index;
        match KvCommand::decode(command) {
            Some(KvCommand::Put { key, .. }) | Some(KvCommand::Delete { key })
                if key.len() > KV_KEY_BYTES_MAX =>
            {
                Self::reply_error("key exceeds KV_KEY_BYTES_MAX")
            }
            Some(KvCommand::Put { key, value }) => Self::reply_previous(self.data.insert(key, value)),
            Some(KvCommand::Delete { key }) => Self::reply_previous(self.data.remove(&key)),
            None => Self::reply_error("malformed command"),
        }
    }

    /// `[n_applied u64][last_applied u64][n_keys u64]` then `[key_len u32][key][value_len u32][value]`.
    fn snapshot(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut out = io::BufWriter::new(out);
        out.write_all(&self.n_applied.to_le_bytes())?;
        out.write_all(&self.last_applied.0.to_le_bytes())?;
        out.write_all(&(self.data.len() as u64).to_le_bytes())?;
        for (key, value) in &self.data {
            out.write_all(&(key.len() as u32).to_le_bytes())?;
            out.write_all(key)?;
            out.write_all(&(value.len() as u32).to_le_bytes())?;
            out.write_all(value)?;
        }
        out.flush()
    }

    fn restore(&mut self, input: &mut dyn Read) -> io::Result<()> {
        let mut input = io::BufReader::new(input);
        let n_applied = read_u64(&mut input)?;
        let last_applied = LogIndex(read_u64(&mut input)?);
        let n_keys = read_u64(&mut input)?;
        let mut data = BTreeMap::new();
        for _ in 0..n_keys {
            let key = read_bytes(&mut input)?;
            let value = read_bytes(&mut input)?;
            data.insert(key, value);
        }
        *self = KvStateMachine {
            data,
            n_applied,
            last_applied,
        };
        Ok(())
    }

    fn query(&self, query: &[u8]) -> Vec<u8> {
        Self::reply_previous(self.data.get(query).cloned())
    }
}

fn read_u64(input: &mut impl Read) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    input.read_exact(&mut buf)?;
    Ok(u64::from_le_bytes(buf))
}

fn read_bytes(input: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_round_trips_commands_and_snapshots() {
        // Goal: commands decode to what was encoded, replies carry the previous value, and a
        // restored snapshot equals the original machine.
        let put = KvCommand::Put {
            key: b"k".to_vec(),
            value: b"v1".to_vec(),
        };
        assert_eq!(KvCommand::decode(&put.encode()), Some(put.clone()));
        let mut sm = KvStateMachine::new();
        assert_eq!(
            KvStateMachine::decode_reply(&sm.apply(LogIndex(1), &put.encode())),
            Ok(None)
        );
        let put2 = KvCommand::Put {
            key: b"k".to_vec(),
            value: b"v2".to_vec(),
        };
        assert_eq!(
            KvStateMachine::decode_reply(&sm.apply(LogIndex(2), &put2.encode())),
            Ok(Some(b"v1".to_vec()))
        );
        assert!(KvStateMachine::decode_reply(&sm.apply(LogIndex(3), b"\x09junk")).is_err());
        let mut bytes = Vec::new();
        sm.snapshot(&mut bytes).expect("snapshot to memory");
        let mut restored = KvStateMachine::new();
        restored
            .restore(&mut bytes.as_slice())
            .expect("restore from memory");
        assert_eq!(restored, sm);
        assert_eq!(
            KvStateMachine::decode_reply(&restored.query(b"k")),
            Ok(Some(b"v2".to_vec()))
        );
    }
}
