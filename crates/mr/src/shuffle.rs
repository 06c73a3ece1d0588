//! The shuffle in bounded memory.
//!
//! Map side ([`MapOutputBuffer`]): emitted records go to an in-memory buffer; when it reaches
//! its budget it is sorted by (partition, key), combined, and spilled to a local file with one
//! segment per partition. At the end the spills are merged (combining again) into ONE data
//! file and an offset index (§3.1 step 4; Hadoop's map-side sort and spill).
//!
//! Reduce side ([`ReduceInputs`]): fetched partitions are kept in memory up to a budget and
//! merged to sorted runs on local disk past it; reduce then streams a k-way merge of all runs
//! (an external merge sort for partitions larger than memory).

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::api::{Combiner, Emit, Partitioner, Values};
use crate::merge::{for_each_group, GroupError, Merger, MERGE_FAN_IN_MAX};
use crate::record::{self, RecordReader, RecordWriter, Segment};

/// Pulls the next record of a sorted run (owned, for a combiner running in another thread).
pub type RecordSource<'a> = dyn FnMut() -> io::Result<Option<(Vec<u8>, Vec<u8>)>> + Send + 'a;
/// Takes a combiner's output records.
pub type RecordSink<'a> = dyn FnMut(&[u8], &[u8]) -> io::Result<()> + 'a;

/// A combiner that sees a whole sorted partition of a spill at once (a streaming command
/// reads it on stdin). It must write records in key order.
pub trait PartitionCombiner: Send {
    fn combine_partition(&mut self, input: &mut RecordSource<'_>, out: &mut RecordSink<'_>)
        -> io::Result<()>;
}

/// How map output is combined before it is written.
pub enum MapCombiner {
    /// Called once per key.
    Keyed(Box<dyn Combiner>),
    /// Called once per sorted partition run.
    Partition(Box<dyn PartitionCombiner>),
}

/// Writes a partition combiner's output, refusing keys out of order.
fn write_sorted<W: Write>(
    w: &mut RecordWriter<W>,
    last: &mut Option<Vec<u8>>,
    key: &[u8],
    value: &[u8],
) -> io::Result<()> {
    if let Some(l) = last.as_deref() {
        if key < l {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the combiner wrote key {:?} after {:?}; combiner output must stay sorted by key",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(l)
                ),
            ));
        }
    }
    *last = Some(key.to_vec());
    w.write(key, value)
}

/// Memory accounted per buffered record besides its bytes (the sort entry).
const ENTRY_OVERHEAD_BYTES: usize = std::mem::size_of::<Entry>();

#[derive(Clone, Copy, Debug)]
struct Entry {
    partition: u32,
    offset: u32,
    key_len: u32,
    value_len: u32,
}

/// A sorted file with one segment per partition.
#[derive(Debug)]
struct Spill {
    path: PathBuf,
    segments: Vec<Segment>,
}

/// Counters of one map task's output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MapOutputStats {
    pub records_emitted: u64,
    pub records_written: u64,
    pub bytes_written: u64,
    pub n_spills: u64,
}

/// Where a finished map task's output is.
#[derive(Debug)]
pub struct MapOutputFiles {
    pub data: PathBuf,
    pub index: PathBuf,
    pub segments: Vec<Segment>,
}

pub struct MapOutputBuffer<'a> {
    dir: PathBuf,
    name: String,
    n_reduce: u32,
    budget_bytes: usize,
    partitioner: &'a dyn Partitioner,
    combiner: Option<MapCombiner>,
    arena: Vec<u8>,
    entries: Vec<Entry>,
    spills: Vec<Spill>,
    pub stats: MapOutputStats,
}

impl<'a> MapOutputBuffer<'a> {
    /// `name` prefixes every file this buffer writes in `dir` (e.g. `map-00003-1`).
    pub fn new(
        dir: &Path,
        name: &str,
        n_reduce: u32,
        budget_bytes: usize,
        partitioner: &'a dyn Partitioner,
        combiner: Option<MapCombiner>,
    ) -> Self {
        // The arena is addressed with u32 offsets.
        let budget_bytes = budget_bytes.clamp(4 << 10, u32::MAX as usize / 2);
        Self {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            n_reduce,
            budget_bytes,
            partitioner,
            combiner,
            arena: Vec::new(),
            entries: Vec::new(),
            spills: Vec::new(),
            stats: MapOutputStats::default(),
        }
    }

    fn buffered_bytes(&self) -> usize {
        self.arena.len() + self.entries.len() * ENTRY_OVERHEAD_BYTES
    }

    fn spill(&mut self) -> io::Result<()> {
        let arena = &self.arena;
        self.entries.sort_unstable_by(|a, b| {
            a.partition.cmp(&b.partition).then_with(|| {
                let ka = &arena[a.offset as usize..(a.offset + a.key_len) as usize];
                let kb = &arena[b.offset as usize..(b.offset + b.key_len) as usize];
                ka.cmp(kb)
            })
        });
        let path = self.dir.join(format!("{}.spill{}", self.name, self.spills.len()));
        let mut w = record::create_writer(&path)?;
        let mut segments = Vec::with_capacity(self.n_reduce as usize);
        let mut i = 0;
        for partition in 0..self.n_reduce {
            let start = i;
            while i < self.entries.len() && self.entries[i].partition == partition {
                i += 1;
            }
            let part = &self.entries[start..i];
            match self.combiner.as_mut() {
                Some(MapCombiner::Partition(c)) if !part.is_empty() => {
                    let mut next = 0;
                    let mut input = || {
                        let Some(e) = part.get(next) else { return Ok(None) };
                        next += 1;
                        Ok(Some((
                            entry_key(arena, e).to_vec(),
                            entry_value(arena, e).to_vec(),
                        )))
                    };
                    let mut last = None;
                    c.combine_partition(&mut input, &mut |k, v| write_sorted(&mut w, &mut last, k, v))?;
                }
                Some(MapCombiner::Keyed(c)) => {
                    let mut j = 0;
                    while j < part.len() {
                        let key = entry_key(arena, &part[j]);
                        let mut k = j + 1;
                        while k < part.len() && entry_key(arena, &part[k]) == key {
                            k += 1;
                        }
                        let mut values = EntryValues {
                            arena,
                            entries: &part[j..k],
                        };
                        let mut out = CheckedEmit { key, w: &mut w, n: 0 };
                        c.combine(key, &mut values, &mut out).map_err(io::Error::other)?;
                        j = k;
                    }
                }
                _ => {
                    for e in part {
                        w.write(entry_key(arena, e), entry_value(arena, e))?;
                    }
                }
            }
            segments.push(w.end_segment());
        }
        w.into_inner().flush()?;
        self.spills.push(Spill { path, segments });
        self.stats.n_spills += 1;
        self.arena.clear();
        self.entries.clear();
        Ok(())
    }

    /// Sorts, combines and merges everything into the task's one data file plus index.
    pub fn finish(mut self) -> Result<(MapOutputFiles, MapOutputStats), GroupError> {
        if !self.entries.is_empty() || self.spills.is_empty() {
            self.spill()?;
        }
        while self.spills.len() > 1 {
            // Intermediate passes bound the fan-in; the last pass writes the final file.
            let n = self.spills.len().min(MERGE_FAN_IN_MAX);
            let group: Vec<Spill> = self.spills.drain(..n).collect();
            let path = self
                .dir
                .join(format!("{}.merge{}", self.name, self.stats.n_spills));
            self.stats.n_spills += 1;
            let merged = merge_spills(&group, &path, self.n_reduce, &mut self.combiner)?;
            for s in &group {
                let _ = std::fs::remove_file(&s.path);
            }
            self.spills.insert(0, merged);
        }
        let spill = self.spills.pop().expect("one spill left");
        let data = self.dir.join(format!("{}.data", self.name));
        let index = self.dir.join(format!("{}.index", self.name));
        std::fs::rename(&spill.path, &data)?;
        record::write_index(&index, &spill.segments)?;
        self.stats.records_written = spill.segments.iter().map(|s| s.n_records).sum();
        self.stats.bytes_written = spill.segments.iter().map(|s| s.len).sum();
        Ok((
            MapOutputFiles {
                data,
                index,
                segments: spill.segments,
            },
            self.stats,
        ))
    }
}

impl Emit for MapOutputBuffer<'_> {
    fn emit(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if key.len() > record::RECORD_FIELD_BYTES_MAX || value.len() > record::RECORD_FIELD_BYTES_MAX {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "record too large: key {} bytes, value {} bytes (limit {} each)",
                    key.len(),
                    value.len(),
                    record::RECORD_FIELD_BYTES_MAX
                ),
            ));
        }
        let needed = key.len() + value.len() + ENTRY_OVERHEAD_BYTES;
        if !self.entries.is_empty() && self.buffered_bytes() + needed > self.budget_bytes {
            self.spill()?;
        }
        let partition = self.partitioner.partition(key, self.n_reduce);
        assert!(
            partition < self.n_reduce,
            "partitioner returned {partition} for R = {}",
            self.n_reduce
        );
        let offset = self.arena.len() as u32;
        self.arena.extend_from_slice(key);
        self.arena.extend_from_slice(value);
        self.entries.push(Entry {
            partition,
            offset,
            key_len: key.len() as u32,
            value_len: value.len() as u32,
        });
        self.stats.records_emitted += 1;
        Ok(())
    }
}

fn entry_key<'x>(arena: &'x [u8], e: &Entry) -> &'x [u8] {
    &arena[e.offset as usize..(e.offset + e.key_len) as usize]
}

fn entry_value<'x>(arena: &'x [u8], e: &Entry) -> &'x [u8] {
    let start = (e.offset + e.key_len) as usize;
    &arena[start..start + e.value_len as usize]
}

struct EntryValues<'x> {
    arena: &'x [u8],
    entries: &'x [Entry],
}

impl Values for EntryValues<'_> {
    fn next_value(&mut self) -> Option<&[u8]> {
        let (first, rest) = self.entries.split_first()?;
        self.entries = rest;
        Some(entry_value(self.arena, first))
    }
}

/// Writes a combiner's output, refusing a different key (it would break the sort order).
struct CheckedEmit<'k, 'w, W: Write> {
    key: &'k [u8],
    w: &'w mut RecordWriter<W>,
    n: u64,
}

impl<W: Write> Emit for CheckedEmit<'_, '_, W> {
    fn emit(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if key != self.key {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the combiner emitted key {:?} while combining key {:?}; a combiner must keep the key",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(self.key)
                ),
            ));
        }
        self.n += 1;
        self.w.write(key, value)
    }
}

fn open_segment(path: &Path, seg: &Segment) -> io::Result<RecordReader> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(seg.offset))?;
    Ok(RecordReader::new(Box::new(f.take(seg.len)), seg.len))
}

fn merge_spills(
    spills: &[Spill],
    path: &Path,
    n_reduce: u32,
    combiner: &mut Option<MapCombiner>,
) -> Result<Spill, GroupError> {
    let mut w = record::create_writer(path)?;
    let mut segments = Vec::with_capacity(n_reduce as usize);
    for p in 0..n_reduce as usize {
        let sources = spills
            .iter()
            .filter(|s| s.segments[p].len > 0)
            .map(|s| open_segment(&s.path, &s.segments[p]))
            .collect::<io::Result<Vec<_>>>()?;
        let mut merger = Merger::new(sources)?;
        match combiner.as_mut() {
            Some(MapCombiner::Keyed(c)) => for_each_group(&mut merger, |key, values| {
                let mut out = CheckedEmit { key, w: &mut w, n: 0 };
                c.combine(key, values, &mut out)
            })?,
            Some(MapCombiner::Partition(c)) if merger.peek_key().is_some() => {
                let mut input = || merger.pop();
                let mut last = None;
                c.combine_partition(&mut input, &mut |k, v| write_sorted(&mut w, &mut last, k, v))?;
            }
            _ => {
                while let Some(kv) = merger.pop()? {
                    w.write(&kv.0, &kv.1)?;
                    merger.recycle(kv);
                }
            }
        }
        segments.push(w.end_segment());
    }
    w.into_inner().flush()?;
    Ok(Spill {
        path: path.to_path_buf(),
        segments,
    })
}

/// A reduce task's fetched inputs, in bounded memory.
pub struct ReduceInputs {
    dir: PathBuf,
    name: String,
    budget_bytes: usize,
    in_memory: Vec<Vec<u8>>,
    in_memory_bytes: usize,
    runs: Vec<(PathBuf, u64)>,
    pub n_runs_written: u64,
}

impl ReduceInputs {
    pub fn new(dir: &Path, name: &str, budget_bytes: usize) -> Self {
        Self {
            dir: dir.to_path_buf(),
            name: name.to_string(),
            budget_bytes: budget_bytes.max(4 << 10),
            in_memory: Vec::new(),
            in_memory_bytes: 0,
            runs: Vec::new(),
            n_runs_written: 0,
        }
    }

    /// Whether a fetched segment of `len` bytes should go straight to disk.
    pub fn wants_file(&self, len: u64) -> bool {
        len > (self.budget_bytes / 4) as u64
    }

    /// A path for a segment fetched straight to disk; pass it to [`ReduceInputs::add_file`].
    pub fn next_run_path(&mut self) -> PathBuf {
        self.n_runs_written += 1;
        self.dir.join(format!("{}.run{}", self.name, self.n_runs_written))
    }

    pub fn add_file(&mut self, path: PathBuf, len: u64) -> io::Result<()> {
        self.runs.push((path, len));
        self.compact_runs()
    }

    /// A sorted segment fetched into memory.
    pub fn add_segment(&mut self, data: Vec<u8>) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        self.in_memory_bytes += data.len();
        self.in_memory.push(data);
        if self.in_memory_bytes > self.budget_bytes || self.in_memory.len() >= MERGE_FAN_IN_MAX {
            let sources = std::mem::take(&mut self.in_memory)
                .into_iter()
                .map(RecordReader::from_vec)
                .collect();
            self.in_memory_bytes = 0;
            let path = self.next_run_path();
            let len = merge_to_file(sources, &path)?;
            self.runs.push((path, len));
            self.compact_runs()?;
        }
        Ok(())
    }

    fn compact_runs(&mut self) -> io::Result<()> {
        while self.runs.len() >= MERGE_FAN_IN_MAX {
            let group: Vec<(PathBuf, u64)> = self.runs.drain(..MERGE_FAN_IN_MAX).collect();
            let sources = group
                .iter()
                .map(|(p, len)| {
                    open_segment(
                        p,
                        &Segment {
                            offset: 0,
                            len: *len,
                            n_records: 0,
                            crc32c: 0,
                        },
                    )
                })
                .collect::<io::Result<Vec<_>>>()?;
            let path = self.next_run_path();
            let len = merge_to_file(sources, &path)?;
            for (p, _) in &group {
                let _ = std::fs::remove_file(p);
            }
            self.runs.push((path, len));
        }
        Ok(())
    }

    /// The merge of everything fetched.
    pub fn into_merger(self) -> io::Result<Merger> {
        let mut sources = Vec::with_capacity(self.runs.len() + self.in_memory.len());
        for (p, len) in &self.runs {
            sources.push(open_segment(
                p,
                &Segment {
                    offset: 0,
                    len: *len,
                    n_records: 0,
                    crc32c: 0,
                },
            )?);
        }
        sources.extend(self.in_memory.into_iter().map(RecordReader::from_vec));
        Merger::new(sources)
    }
}

fn merge_to_file(sources: Vec<RecordReader>, path: &Path) -> io::Result<u64> {
    let mut merger = Merger::new(sources)?;
    let mut w = RecordWriter::new(BufWriter::with_capacity(1 << 20, File::create(path)?));
    while let Some(kv) = merger.pop()? {
        w.write(&kv.0, &kv.1)?;
        merger.recycle(kv);
    }
    let len = w.bytes;
    w.into_inner().flush()?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{read_u64, BoxError, HashPartitioner};
    use std::collections::BTreeMap;

    struct Sum;
    impl Combiner for Sum {
        fn combine(
            &mut self,
            key: &[u8],
            values: &mut dyn Values,
            out: &mut dyn Emit,
        ) -> Result<(), BoxError> {
            let mut n = 0;
            while let Some(v) = values.next_value() {
                n += read_u64(v)?;
            }
            out.emit_u64(key, n)?;
            Ok(())
        }
    }

    fn read_partition(files: &MapOutputFiles, p: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut r = open_segment(&files.data, &files.segments[p]).unwrap();
        let (mut k, mut v) = (Vec::new(), Vec::new());
        let mut out = Vec::new();
        while r.next_into(&mut k, &mut v).unwrap() {
            out.push((k.clone(), v.clone()));
        }
        out
    }

    fn words(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("w{}", (i * 7919) % 1000)).collect()
    }

    #[test]
    fn small_budget_spills_and_merges_into_one_sorted_file_per_partition() {
        // Goal: with a budget far below the data, the map side spills many times, and the final
        // single data file holds each partition sorted, every record in its hash partition, and
        // with a combiner the counts still add up.
        for with_combiner in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let combiner = if with_combiner {
                Some(MapCombiner::Keyed(Box::new(Sum)))
            } else {
                None
            };
            let mut buf =
                MapOutputBuffer::new(dir.path(), "map-00000-0", 3, 4 << 10, &HashPartitioner, combiner);
            let mut expected: BTreeMap<String, u64> = BTreeMap::new();
            for w in words(20_000) {
                buf.emit_u64(w.as_bytes(), 1).unwrap();
                *expected.entry(w).or_default() += 1;
            }
            let (files, stats) = buf.finish().unwrap();
            assert!(
                stats.n_spills > MERGE_FAN_IN_MAX as u64,
                "expected many spills, got {}",
                stats.n_spills
            );
            assert_eq!(files.segments.len(), 3);
            let mut got: BTreeMap<String, u64> = BTreeMap::new();
            for p in 0..3 {
                let recs = read_partition(&files, p);
                assert!(
                    recs.windows(2).all(|w| w[0].0 <= w[1].0),
                    "partition {p} not sorted"
                );
                for (k, v) in recs {
                    assert_eq!(HashPartitioner.partition(&k, 3), p as u32);
                    *got.entry(String::from_utf8(k).unwrap()).or_default() += read_u64(&v).unwrap();
                }
            }
            assert_eq!(got, expected);
            // Only the data file and its index remain.
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            assert_eq!(names, vec!["map-00000-0.data", "map-00000-0.index"]);
            assert_eq!(record::read_index(&files.index).unwrap(), files.segments);
        }
    }

    #[test]
    fn reduce_inputs_larger_than_memory_merge_externally() {
        // Goal: a reduce partition far larger than the memory budget is merged through on-disk
        // runs, and every record comes out once, sorted.
        let dir = tempfile::tempdir().unwrap();
        let mut inputs = ReduceInputs::new(dir.path(), "reduce-0", 4 << 10);
        let mut all = Vec::new();
        for seg in 0..700u32 {
            let mut recs: Vec<Vec<u8>> = (0..100u32)
                .map(|i| format!("{:06}", (i * 31 + seg * 17) % 5000).into_bytes())
                .collect();
            recs.sort();
            let mut data = Vec::new();
            for r in &recs {
                record::encode_record(&mut data, r, b"");
            }
            all.extend(recs);
            inputs.add_segment(data).unwrap();
        }
        assert!(inputs.n_runs_written > MERGE_FAN_IN_MAX as u64);
        let mut merger = inputs.into_merger().unwrap();
        let mut got = Vec::new();
        while let Some((k, _)) = merger.pop().unwrap() {
            got.push(k);
        }
        all.sort();
        assert_eq!(got, all);
    }
}
