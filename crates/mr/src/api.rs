//! The Rust programming interface: implement [`Mapper`] and [`Reducer`] (optionally
//! [`Combiner`] and [`Partitioner`]), put them in a [`crate::Job`] and build your own worker
//! binary, as a Hadoop user builds a jar.
//!
//! Keys and values are bytes; [`Emit::emit_u64`]/[`read_u64`] give the fast fixed binary
//! encoding the built-in counting apps use.

use std::io;

/// Errors a user function may return: anything, boxed. The message ends up in the job's error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where map, combine and reduce functions send their records.
pub trait Emit {
    fn emit(&mut self, key: &[u8], value: &[u8]) -> io::Result<()>;

    /// Emits a `u64` value in the fixed 8-byte little-endian encoding ([`read_u64`]).
    fn emit_u64(&mut self, key: &[u8], value: u64) -> io::Result<()> {
        self.emit(key, &value.to_le_bytes())
    }
}

/// Decodes a value written by [`Emit::emit_u64`].
pub fn read_u64(value: &[u8]) -> Result<u64, BoxError> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| format!("expected an 8-byte u64 value, got {} bytes", value.len()))?;
    Ok(u64::from_le_bytes(bytes))
}

/// A key or value type with a compact binary encoding whose byte order is the type's order
/// (so keys sort as their values do): unsigned integers big-endian, signed integers
/// big-endian with the sign bit flipped, strings and byte vectors as their bytes.
pub trait Codec: Sized {
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(bytes: &[u8]) -> Result<Self, BoxError>;
}

impl Codec for u64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.to_be_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        let b: [u8; 8] = bytes
            .try_into()
            .map_err(|_| format!("expected 8 bytes for a u64, got {}", bytes.len()))?;
        Ok(u64::from_be_bytes(b))
    }
}

impl Codec for i64 {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&((*self as u64) ^ (1 << 63)).to_be_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok((u64::decode(bytes)? ^ (1 << 63)) as i64)
    }
}

impl Codec for String {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(String::from_utf8(bytes.to_vec())?)
    }
}

impl Codec for Vec<u8> {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self);
    }
    fn decode(bytes: &[u8]) -> Result<Self, BoxError> {
        Ok(bytes.to_vec())
    }
}

/// Typed emission for any [`Emit`].
pub trait EmitTyped: Emit {
    fn emit_typed<K: Codec, V: Codec>(&mut self, key: &K, value: &V) -> io::Result<()> {
        let mut k = Vec::new();
        let mut v = Vec::new();
        key.encode(&mut k);
        value.encode(&mut v);
        self.emit(&k, &v)
    }
}

impl<E: Emit + ?Sized> EmitTyped for E {}

/// All values of one key, in no particular order. A lending iterator: each slice is valid
/// until the next call.
pub trait Values {
    fn next_value(&mut self) -> Option<&[u8]>;

    /// The next value decoded as `V`.
    fn next_typed<V: Codec>(&mut self) -> Option<Result<V, BoxError>>
    where
        Self: Sized,
    {
        self.next_value().map(V::decode)
    }
}

/// [`Values::next_typed`] for `&mut dyn Values`.
pub fn next_typed<V: Codec>(values: &mut dyn Values) -> Option<Result<V, BoxError>> {
    values.next_value().map(V::decode)
}

/// The map function. Called once per input line (without its newline).
pub trait Mapper: Send {
    /// `input` is the path of the file the line comes from.
    fn map(&mut self, input: &str, line: &[u8], out: &mut dyn Emit) -> Result<(), BoxError>;

    /// Called once after the last line of the task: emit what was aggregated in memory
    /// ("in-mapper combining").
    fn finish(&mut self, _out: &mut dyn Emit) -> Result<(), BoxError> {
        Ok(())
    }
}

/// The reduce function: called once per key, keys in sorted (byte) order. Emitted records
/// are written as `key<TAB>value` lines (just `key` when the value is empty).
pub trait Reducer: Send {
    fn reduce(&mut self, key: &[u8], values: &mut dyn Values, out: &mut dyn Emit) -> Result<(), BoxError>;
}

/// A reduce-like function run on map output before the shuffle (it must emit the same key).
pub trait Combiner: Send {
    fn combine(&mut self, key: &[u8], values: &mut dyn Values, out: &mut dyn Emit) -> Result<(), BoxError>;
}

/// Chooses a key's reduce partition in `0..n_reduce`.
pub trait Partitioner: Send + Sync {
    fn partition(&self, key: &[u8], n_reduce: u32) -> u32;
}

/// The default: `hash(key) mod R` with a stable hash (FNV-1a).
#[derive(Clone, Copy, Debug, Default)]
pub struct HashPartitioner;

impl Partitioner for HashPartitioner {
    fn partition(&self, key: &[u8], n_reduce: u32) -> u32 {
        (crate::record::fnv1a64(key) % u64::from(n_reduce)) as u32
    }
}

/// A range partitioner: partition i holds keys in `[bounds[i-1], bounds[i])`, so the
/// concatenation of the sorted partitions is globally sorted (TeraSort).
#[derive(Clone, Debug, Default)]
pub struct RangePartitioner {
    pub bounds: Vec<Vec<u8>>,
}

impl Partitioner for RangePartitioner {
    fn partition(&self, key: &[u8], n_reduce: u32) -> u32 {
        let idx = self.bounds.partition_point(|b| b.as_slice() <= key) as u32;
        idx.min(n_reduce - 1)
    }
}

/// Values over a slice of owned values (tests, small in-memory groups).
pub struct SliceValues<'a> {
    values: &'a [Vec<u8>],
    pos: usize,
}

impl<'a> SliceValues<'a> {
    pub fn new(values: &'a [Vec<u8>]) -> Self {
        Self { values, pos: 0 }
    }
}

impl Values for SliceValues<'_> {
    fn next_value(&mut self) -> Option<&[u8]> {
        let v = self.values.get(self.pos)?;
        self.pos += 1;
        Some(v)
    }
}

/// An [`Emit`] that collects records (tests).
#[derive(Default, Debug)]
pub struct VecEmit(pub Vec<(Vec<u8>, Vec<u8>)>);

impl Emit for VecEmit {
    fn emit(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.0.push((key.to_vec(), value.to_vec()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_partitioner_spreads_and_is_in_range() {
        // Goal: hash(key) mod R stays in range and spreads keys over every partition.
        let p = HashPartitioner;
        let mut counts = [0u32; 7];
        for i in 0..7000 {
            let part = p.partition(format!("key{i}").as_bytes(), 7);
            counts[part as usize] += 1;
        }
        assert!(counts.iter().all(|c| *c > 700), "{counts:?}");
    }

    #[test]
    fn typed_keys_sort_like_their_values() {
        // Goal: encoded integers and strings compare bytewise in their natural order and decode
        // back to themselves.
        let enc = |x: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            x(&mut v);
            v
        };
        let ints = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        let encoded: Vec<Vec<u8>> = ints.iter().map(|i| enc(&|o| i.encode(o))).collect();
        assert!(encoded.windows(2).all(|w| w[0] < w[1]));
        for (i, e) in ints.iter().zip(&encoded) {
            assert_eq!(i64::decode(e).unwrap(), *i);
        }
        assert!(enc(&|o| 255u64.encode(o)) < enc(&|o| 256u64.encode(o)));
        let mut out = VecEmit::default();
        out.emit_typed(&"key".to_string(), &42u64).unwrap();
        let values = vec![out.0[0].1.clone()];
        assert_eq!(
            next_typed::<u64>(&mut SliceValues::new(&values))
                .unwrap()
                .unwrap(),
            42
        );
        assert!(u64::decode(b"short").is_err());
    }

    #[test]
    fn range_partitioner_orders_partitions() {
        // Goal: with sorted bounds, a smaller key never lands in a later partition.
        let p = RangePartitioner {
            bounds: vec![b"g".to_vec(), b"p".to_vec()],
        };
        assert_eq!(p.partition(b"a", 3), 0);
        assert_eq!(p.partition(b"g", 3), 1);
        assert_eq!(p.partition(b"o", 3), 1);
        assert_eq!(p.partition(b"zz", 3), 2);
        let mut keys: Vec<&[u8]> = vec![b"zz", b"a", b"p", b"h", b"", b"g"];
        keys.sort();
        let parts: Vec<u32> = keys.iter().map(|k| p.partition(k, 3)).collect();
        assert!(parts.windows(2).all(|w| w[0] <= w[1]), "{parts:?}");
    }
}
