//! Built-in apps (`wordcount`, `grep`, `indexer`, `sort`, `distinct`) written against the
//! public Rust API, so they double as its examples.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::sync::Arc;

use crate::api::{read_u64, BoxError, Combiner, Emit, Mapper, Reducer, Values};
use crate::job::Job;

/// Distinct keys a mapper aggregates in memory before it emits them ("in-mapper combining",
/// Lin & Dyer §3.1). Cost: about 64 bytes plus the key per entry, so ~100 MiB at most for
/// ordinary words.
pub const MAPPER_DISTINCT_KEYS_MAX: usize = 1 << 20;

/// The built-in apps, by CLI name.
pub const APP_NAMES: &[&str] = &["wordcount", "grep", "indexer", "sort", "distinct"];

/// A fast non-cryptographic hasher (FxHash) for in-memory aggregation; never used for
/// partitioning (see [`crate::record::fnv1a64`]).
#[derive(Default, Clone, Copy)]
pub struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().expect("8 bytes"));
            self.hash = (self.hash.rotate_left(5) ^ w).wrapping_mul(FX_SEED);
        }
        for b in chunks.remainder() {
            self.hash = (self.hash.rotate_left(5) ^ u64::from(*b)).wrapping_mul(FX_SEED);
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.hash = (self.hash.rotate_left(5) ^ u64::from(i)).wrapping_mul(FX_SEED);
    }
    fn write_u64(&mut self, i: u64) {
        self.hash = (self.hash.rotate_left(5) ^ i).wrapping_mul(FX_SEED);
    }
    fn write_u128(&mut self, i: u128) {
        self.write_u64(i as u64);
        self.write_u64((i >> 64) as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.hash = (self.hash.rotate_left(5) ^ i as u64).wrapping_mul(FX_SEED);
    }
    fn finish(&self) -> u64 {
        // The multiply leaves the best-mixed bits at the top, while hashbrown picks buckets
        // from the low bits: rotate them down (as rustc-hash 2 does).
        self.hash.rotate_left(26)
    }
}

pub type FxHashMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Calls `f` for every word of `text`: a maximal run of Unicode alphabetic characters. On
/// ASCII this is exactly what `tr -cs 'A-Za-z' '\n'` splits; invalid UTF-8 separates words.
pub fn for_each_word(text: &[u8], mut f: impl FnMut(&[u8])) {
    let n = text.len();
    let mut i = 0;
    let mut start = usize::MAX;
    while i < n {
        let b = text[i];
        let (is_letter, len) = if b < 0x80 {
            (b.is_ascii_alphabetic(), 1)
        } else {
            decode_alphabetic(&text[i..])
        };
        if is_letter {
            if start == usize::MAX {
                start = i;
            }
        } else if start != usize::MAX {
            f(&text[start..i]);
            start = usize::MAX;
        }
        i += len;
    }
    if start != usize::MAX {
        f(&text[start..n]);
    }
}

/// For a non-ASCII lead byte: whether the UTF-8 character there is alphabetic, and its length
/// (1 for an invalid sequence).
fn decode_alphabetic(s: &[u8]) -> (bool, usize) {
    let b = s[0];
    let len = match b {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return (false, 1),
    };
    if s.len() < len || !s[1..len].iter().all(|c| c & 0xC0 == 0x80) {
        return (false, 1);
    }
    match std::str::from_utf8(&s[..len]) {
        Ok(ch) => (ch.chars().next().is_some_and(char::is_alphabetic), len),
        Err(_) => (false, 1),
    }
}

/// Keys up to this long are packed into a `u128` (no heap, one-compare equality).
const SHORT_KEY_BYTES_MAX: usize = 15;

fn pack_short(key: &[u8]) -> u128 {
    debug_assert!(key.len() <= SHORT_KEY_BYTES_MAX);
    let mut bytes = [0u8; 16];
    bytes[..key.len()].copy_from_slice(key);
    bytes[15] = key.len() as u8;
    u128::from_le_bytes(bytes)
}

fn unpack_short(packed: u128) -> ([u8; 16], usize) {
    let bytes = packed.to_le_bytes();
    let len = bytes[15] as usize;
    (bytes, len)
}

/// Counts keys in memory and emits `(key, u64 count)`; flushes at [`MAPPER_DISTINCT_KEYS_MAX`].
/// Short keys (most words) live inline in a `u128`, which is what makes counting fast: no
/// pointer to chase and no `memcmp` per probe.
#[derive(Default)]
pub struct WordCounts {
    short: FxHashMap<u128, u64>,
    long: FxHashMap<Vec<u8>, u64>,
}

impl WordCounts {
    #[inline]
    pub fn add(&mut self, key: &[u8], n: u64) {
        if key.len() <= SHORT_KEY_BYTES_MAX {
            *self.short.entry(pack_short(key)).or_insert(0) += n;
        } else {
            match self.long.get_mut(key) {
                Some(c) => *c += n,
                None => {
                    self.long.insert(key.to_vec(), n);
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.short.len() + self.long.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn full(&self) -> bool {
        self.len() >= MAPPER_DISTINCT_KEYS_MAX
    }

    /// Calls `f` for every key and its count, emptying the table.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8], u64) -> io::Result<()>) -> io::Result<()> {
        for (k, v) in self.short.drain() {
            let (bytes, len) = unpack_short(k);
            f(&bytes[..len], v)?;
        }
        for (k, v) in self.long.drain() {
            f(&k, v)?;
        }
        Ok(())
    }

    fn flush(&mut self, out: &mut dyn Emit) -> Result<(), BoxError> {
        self.drain(|k, v| out.emit_u64(k, v))?;
        Ok(())
    }
}

type Counts = WordCounts;

/// `wordcount` map: words of each line, counted in memory.
#[derive(Default)]
pub struct WordCountMapper {
    counts: Counts,
}

impl Mapper for WordCountMapper {
    fn map(&mut self, _input: &str, line: &[u8], out: &mut dyn Emit) -> Result<(), BoxError> {
        let counts = &mut self.counts;
        for_each_word(line, |w| counts.add(w, 1));
        if counts.full() {
            counts.flush(out)?;
        }
        Ok(())
    }
    fn finish(&mut self, out: &mut dyn Emit) -> Result<(), BoxError> {
        self.counts.flush(out)
    }
}

/// Sums `u64` values into one `u64` (the counting apps' combiner).
pub struct SumCombiner;

impl Combiner for SumCombiner {
    fn combine(&mut self, key: &[u8], values: &mut dyn Values, out: &mut dyn Emit) -> Result<(), BoxError> {
        let mut total = 0u64;
        while let Some(v) = values.next_value() {
            total += read_u64(v)?;
        }
        out.emit_u64(key, total)?;
        Ok(())
    }
}

/// Sums `u64` values and writes `key<TAB>total`.
pub struct SumReducer;

impl Reducer for SumReducer {
    fn reduce(&mut self, key: &[u8], values: &mut dyn Values, out: &mut dyn Emit) -> Result<(), BoxError> {
        let mut total = 0u64;
        while let Some(v) = values.next_value() {
            total += read_u64(v)?;
        }
        out.emit(key, total.to_string().as_bytes())?;
        Ok(())
    }
}

/// `grep` map: counts each match of a regex.
pub struct GrepMapper {
    regex: regex::bytes::Regex,
    counts: Counts,
}

impl GrepMapper {
    pub fn new(pattern: &str) -> Result<Self, regex::Error> {
        Ok(Self {
            regex: regex::bytes::Regex::new(pattern)?,
            counts: Counts::default(),
        })
    }
}

impl Mapper for GrepMapper {
    fn map(&mut self, _input: &str, line: &[u8], out: &mut dyn Emit) -> Result<(), BoxError> {
        for m in self.regex.find_iter(line) {
            self.counts.add(m.as_bytes(), 1);
        }
        if self.counts.full() {
            self.counts.flush(out)?;
        }
        Ok(())
    }
    fn finish(&mut self, out: &mut dyn Emit) -> Result<(), BoxError> {
        self.counts.flush(out)
    }
}

/// `indexer` map: emits `(word, document)` once per word and document.
#[derive(Default)]
pub struct IndexerMapper {
    input: String,
    seen: HashSet<Vec<u8>, BuildHasherDefault<FxHasher>>,
}

impl IndexerMapper {
    fn flush(&mut self, out: &mut dyn Emit) -> Result<(), BoxError> {
        for w in self.seen.drain() {
            out.emit(&w, self.input.as_bytes())?;
        }
        Ok(())
    }
}

impl Mapper for IndexerMapper {
    fn map(&mut self, input: &str, line: &[u8], out: &mut dyn Emit) -> Result<(), BoxError> {
        if input != self.input {
            self.flush(out)?;
            self.input = input.to_string();
        }
        let seen = &mut self.seen;
        for_each_word(line, |w| {
            if !seen.contains(w) {
                seen.insert(w.to_vec());
            }
        });
        if self.seen.len() >= MAPPER_DISTINCT_KEYS_MAX {
            self.flush(out)?;
        }
        Ok(())
    }
    fn finish(&mut self, out: &mut dyn Emit) -> Result<(), BoxError> {
        self.flush(out)
    }
}

/// `indexer` reduce: `word<TAB>number of documents<TAB>doc1,doc2,…` (documents sorted).
pub struct IndexerReducer;

impl Reducer for IndexerReducer {
    fn reduce(&mut self, key: &[u8], values: &mut dyn Values, out: &mut dyn Emit) -> Result<(), BoxError> {
        let mut docs = BTreeSet::new();
        while let Some(v) = values.next_value() {
            if !docs.contains(v) {
                docs.insert(v.to_vec());
            }
        }
        let mut line = docs.len().to_string().into_bytes();
        line.push(b'\t');
        for (i, d) in docs.iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            line.extend_from_slice(d);
        }
        out.emit(key, &line)?;
        Ok(())
    }
}

/// `sort` map: each line is a record and its own key.
pub struct LineMapper;

impl Mapper for LineMapper {
    fn map(&mut self, _input: &str, line: &[u8], out: &mut dyn Emit) -> Result<(), BoxError> {
        out.emit(line, b"")?;
        Ok(())
    }
}

/// `sort` reduce: every record, duplicates kept.
pub struct IdentityReducer;

impl Reducer for IdentityReducer {
    fn reduce(&mut self, key: &[u8], values: &mut dyn Values, out: &mut dyn Emit) -> Result<(), BoxError> {
        while let Some(v) = values.next_value() {
            out.emit(key, v)?;
        }
        Ok(())
    }
}

/// `distinct` map: each distinct line once per task.
#[derive(Default)]
pub struct DistinctMapper {
    seen: HashSet<Vec<u8>, BuildHasherDefault<FxHasher>>,
}

impl Mapper for DistinctMapper {
    fn map(&mut self, _input: &str, line: &[u8], out: &mut dyn Emit) -> Result<(), BoxError> {
        if !self.seen.contains(line) {
            self.seen.insert(line.to_vec());
            if self.seen.len() >= MAPPER_DISTINCT_KEYS_MAX {
                for k in self.seen.drain() {
                    out.emit(&k, b"")?;
                }
            }
        }
        Ok(())
    }
    fn finish(&mut self, out: &mut dyn Emit) -> Result<(), BoxError> {
        for k in self.seen.drain() {
            out.emit(&k, b"")?;
        }
        Ok(())
    }
}

/// `distinct` combine and reduce: the key once.
pub struct FirstOnly;

impl Combiner for FirstOnly {
    fn combine(&mut self, key: &[u8], _values: &mut dyn Values, out: &mut dyn Emit) -> Result<(), BoxError> {
        out.emit(key, b"")?;
        Ok(())
    }
}

impl Reducer for FirstOnly {
    fn reduce(&mut self, key: &[u8], _values: &mut dyn Values, out: &mut dyn Emit) -> Result<(), BoxError> {
        out.emit(key, b"")?;
        Ok(())
    }
}

/// Parameters of the built-in apps.
#[derive(Clone, Debug, Default)]
pub struct AppParams {
    /// `grep`'s regular expression.
    pub pattern: Option<String>,
}

/// The job of a built-in app, or an error naming the valid choices.
pub fn builtin_job(name: &str, params: &AppParams) -> Result<Job, String> {
    match name {
        "wordcount" => Ok(Job::new(WordCountMapper::default, || SumReducer).combiner(|| SumCombiner)),
        "grep" => {
            let pattern = params
                .pattern
                .clone()
                .ok_or_else(|| "the grep app needs --pattern REGEX".to_string())?;
            GrepMapper::new(&pattern).map_err(|e| format!("invalid --pattern {pattern:?}: {e}"))?;
            let pattern = Arc::new(pattern);
            Ok(Job::new(
                move || GrepMapper::new(&pattern).expect("pattern checked above"),
                || SumReducer,
            )
            .combiner(|| SumCombiner))
        }
        "indexer" => Ok(Job::new(IndexerMapper::default, || IndexerReducer)),
        "sort" => Ok(Job::new(|| LineMapper, || IdentityReducer).range_partitioned()),
        "distinct" => Ok(Job::new(DistinctMapper::default, || FirstOnly).combiner(|| FirstOnly)),
        other => Err(format!(
            "unknown app {other:?}; built-in apps are {}",
            APP_NAMES.join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{SliceValues, VecEmit};

    fn words(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for_each_word(text.as_bytes(), |w| {
            out.push(String::from_utf8(w.to_vec()).unwrap())
        });
        out
    }

    #[test]
    fn words_are_maximal_alphabetic_runs() {
        // Goal: a word is a maximal run of Unicode letters, case kept, like tr -cs 'A-Za-z' on ASCII.
        assert_eq!(
            words("Hello, world! it's 42x"),
            ["Hello", "world", "it", "s", "x"]
        );
        assert_eq!(
            words("naïve café–Straße 日本語"),
            ["naïve", "café", "Straße", "日本語"]
        );
        assert_eq!(words(""), Vec::<String>::new());
        assert_eq!(words("a\u{00A0}b"), ["a", "b"]);
        let invalid = [b'a', 0xff, b'b', 0xc3];
        let mut got = Vec::new();
        for_each_word(&invalid, |w| got.push(w.to_vec()));
        assert_eq!(got, vec![b"a".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn wordcount_map_then_reduce() {
        // Goal: the wordcount functions count words and format `word<TAB>count`.
        let mut m = WordCountMapper::default();
        let mut out = VecEmit::default();
        m.map("f", b"a b a", &mut out).unwrap();
        m.finish(&mut out).unwrap();
        out.0.sort();
        assert_eq!(
            out.0,
            vec![
                (b"a".to_vec(), 2u64.to_le_bytes().to_vec()),
                (b"b".to_vec(), 1u64.to_le_bytes().to_vec())
            ]
        );
        let vals = vec![2u64.to_le_bytes().to_vec(), 5u64.to_le_bytes().to_vec()];
        let mut r = VecEmit::default();
        SumReducer
            .reduce(b"a", &mut SliceValues::new(&vals), &mut r)
            .unwrap();
        assert_eq!(r.0, vec![(b"a".to_vec(), b"7".to_vec())]);
    }

    #[test]
    fn indexer_lists_sorted_distinct_documents() {
        // Goal: the indexer emits each word once per document and lists documents sorted.
        let mut m = IndexerMapper::default();
        let mut out = VecEmit::default();
        m.map("d2", b"x y x", &mut out).unwrap();
        m.map("d1", b"x", &mut out).unwrap();
        m.finish(&mut out).unwrap();
        let xs: Vec<Vec<u8>> = out
            .0
            .iter()
            .filter(|(k, _)| k == b"x")
            .map(|(_, v)| v.clone())
            .collect();
        assert_eq!(xs.len(), 2);
        let mut r = VecEmit::default();
        IndexerReducer
            .reduce(b"x", &mut SliceValues::new(&xs), &mut r)
            .unwrap();
        assert_eq!(r.0, vec![(b"x".to_vec(), b"2\td1,d2".to_vec())]);
    }
}
