//! Intermediate records on disk and on the wire: `varint(key_len) varint(value_len) key value`,
//! LEB128 varints. A map task's output is ONE data file holding R sorted partitions back to back
//! plus an index of R entries (offset, length, records, CRC32C) — not one file per reducer,
//! which runs out of file handles at scale.

use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

/// Longest key or value accepted in intermediate data. Cost: a reader may allocate this much
/// for one record; a longer length prefix means corruption.
pub const RECORD_FIELD_BYTES_MAX: usize = 64 << 20;

const INDEX_MAGIC: &[u8; 8] = b"SHMRIDX1";

/// Stable 64-bit FNV-1a: the same in every process and on every machine (std's hasher is
/// randomly seeded, so it cannot route keys to partitions).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends one encoded record to `out`.
pub fn encode_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    put_varint(out, key.len() as u64);
    put_varint(out, value.len() as u64);
    out.extend_from_slice(key);
    out.extend_from_slice(value);
}

/// Writes records to a file, counting bytes and records and checksumming each segment.
pub struct RecordWriter<W: Write> {
    inner: W,
    scratch: Vec<u8>,
    pub bytes: u64,
    segment_start: u64,
    segment_records: u64,
    segment_crc: u32,
}

/// One partition's range in a data file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub offset: u64,
    pub len: u64,
    pub n_records: u64,
    pub crc32c: u32,
}

impl<W: Write> RecordWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            scratch: Vec::with_capacity(256),
            bytes: 0,
            segment_start: 0,
            segment_records: 0,
            segment_crc: 0,
        }
    }

    pub fn write(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.scratch.clear();
        encode_record(&mut self.scratch, key, value);
        self.inner.write_all(&self.scratch)?;
        self.segment_crc = crc32c::crc32c_append(self.segment_crc, &self.scratch);
        self.bytes += self.scratch.len() as u64;
        self.segment_records += 1;
        Ok(())
    }

    /// Ends the current segment and starts the next one at the current position.
    pub fn end_segment(&mut self) -> Segment {
        let seg = Segment {
            offset: self.segment_start,
            len: self.bytes - self.segment_start,
            n_records: self.segment_records,
            crc32c: self.segment_crc,
        };
        self.segment_start = self.bytes;
        self.segment_records = 0;
        self.segment_crc = 0;
        seg
    }

    pub fn into_inner(self) -> W {
        self.inner
    }
}

pub fn create_writer(path: &Path) -> io::Result<RecordWriter<BufWriter<File>>> {
    Ok(RecordWriter::new(BufWriter::with_capacity(
        1 << 20,
        File::create(path)?,
    )))
}

/// Reads records with its own buffer (fewer calls than `BufRead` for tiny fields).
pub struct RecordReader {
    inner: Box<dyn Read + Send>,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    /// Bytes still to read from `inner` (a segment's length), for exact framing checks.
    remaining: u64,
}

impl RecordReader {
    pub const BUFFER_BYTES: usize = 256 << 10;

    pub fn new(inner: Box<dyn Read + Send>, len: u64) -> Self {
        Self::with_buffer(inner, len, Self::BUFFER_BYTES)
    }

    pub fn with_buffer(inner: Box<dyn Read + Send>, len: u64, buffer_bytes: usize) -> Self {
        let cap = (buffer_bytes as u64).min(len.max(16)) as usize;
        Self {
            inner,
            buf: vec![0; cap],
            pos: 0,
            len: 0,
            remaining: len,
        }
    }

    pub fn from_vec(data: Vec<u8>) -> Self {
        let len = data.len();
        Self {
            inner: Box::new(io::empty()),
            buf: data,
            pos: 0,
            len,
            remaining: 0,
        }
    }

    fn fill(&mut self) -> io::Result<bool> {
        if self.pos < self.len {
            return Ok(true);
        }
        if self.remaining == 0 {
            return Ok(false);
        }
        let want = (self.buf.len() as u64).min(self.remaining) as usize;
        let n = self.inner.read(&mut self.buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "intermediate data ends inside a segment",
            ));
        }
        self.pos = 0;
        self.len = n;
        self.remaining -= n as u64;
        Ok(true)
    }

    fn byte(&mut self) -> io::Result<Option<u8>> {
        if !self.fill()? {
            return Ok(None);
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(Some(b))
    }

    fn varint(&mut self, first: Option<u8>) -> io::Result<Option<u64>> {
        let mut v: u64 = 0;
        let mut shift = 0;
        let mut next = first;
        loop {
            let b = match next.take() {
                Some(b) => b,
                None => match self.byte()? {
                    Some(b) => b,
                    None if shift == 0 => return Ok(None),
                    None => return Err(corrupt("record header cut short")),
                },
            };
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(Some(v));
            }
            shift += 7;
            if shift > 63 {
                return Err(corrupt("varint longer than 10 bytes"));
            }
        }
    }

    fn read_field(&mut self, n: usize, out: &mut Vec<u8>) -> io::Result<()> {
        if n > RECORD_FIELD_BYTES_MAX {
            return Err(corrupt("record field longer than RECORD_FIELD_BYTES_MAX"));
        }
        out.clear();
        while out.len() < n {
            if !self.fill()? {
                return Err(corrupt("record cut short"));
            }
            let take = (n - out.len()).min(self.len - self.pos);
            out.extend_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
        }
        Ok(())
    }

    /// Reads the next record into `key` and `value`; false at the end.
    pub fn next_into(&mut self, key: &mut Vec<u8>, value: &mut Vec<u8>) -> io::Result<bool> {
        let Some(key_len) = self.varint(None)? else {
            return Ok(false);
        };
        let Some(value_len) = self.varint(None)? else {
            return Err(corrupt("record header cut short"));
        };
        self.read_field(key_len as usize, key)?;
        self.read_field(value_len as usize, value)?;
        Ok(true)
    }
}

fn corrupt(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("corrupt intermediate data: {what}"),
    )
}

/// Writes a map output index next to its data file.
pub fn write_index(path: &Path, segments: &[Segment]) -> io::Result<()> {
    let mut out = Vec::with_capacity(16 + segments.len() * 28);
    out.extend_from_slice(INDEX_MAGIC);
    out.extend_from_slice(&(segments.len() as u32).to_le_bytes());
    for s in segments {
        out.extend_from_slice(&s.offset.to_le_bytes());
        out.extend_from_slice(&s.len.to_le_bytes());
        out.extend_from_slice(&s.n_records.to_le_bytes());
        out.extend_from_slice(&s.crc32c.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    let tmp = path.with_extension("index.tmp");
    std::fs::write(&tmp, &out)?;
    std::fs::rename(&tmp, path)
}

pub fn read_index(path: &Path) -> io::Result<Vec<Segment>> {
    let data = std::fs::read(path)?;
    if data.len() < 16 || &data[..8] != INDEX_MAGIC {
        return Err(corrupt("bad map output index header"));
    }
    let (body, crc) = data.split_at(data.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(corrupt("map output index checksum mismatch"));
    }
    let n = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    if body.len() != 12 + n * 28 {
        return Err(corrupt("map output index length"));
    }
    let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
    Ok((0..n)
        .map(|i| {
            let at = 12 + i * 28;
            Segment {
                offset: u64_at(at),
                len: u64_at(at + 8),
                n_records: u64_at(at + 16),
                crc32c: u32::from_le_bytes(body[at + 24..at + 28].try_into().expect("4 bytes")),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_small_buffers() {
        // Goal: records of every size survive encode/decode even when the read buffer is smaller
        // than a record, and a truncated stream is an error rather than a silent end.
        let mut data = Vec::new();
        let records: Vec<(Vec<u8>, Vec<u8>)> = (0..200)
            .map(|i| (vec![b'k'; i * 3], vec![i as u8; (i * 7) % 300]))
            .collect();
        for (k, v) in &records {
            encode_record(&mut data, k, v);
        }
        let len = data.len() as u64;
        let mut r = RecordReader::with_buffer(Box::new(io::Cursor::new(data.clone())), len, 7);
        let (mut k, mut v) = (Vec::new(), Vec::new());
        for (ek, ev) in &records {
            assert!(r.next_into(&mut k, &mut v).unwrap());
            assert_eq!((&k, &v), (ek, ev));
        }
        assert!(!r.next_into(&mut k, &mut v).unwrap());
        let cut = data.len() as u64 - 3;
        let mut r =
            RecordReader::with_buffer(Box::new(io::Cursor::new(data[..cut as usize].to_vec())), cut, 64);
        let mut err = None;
        for _ in 0..records.len() {
            match r.next_into(&mut k, &mut v) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        assert!(err.is_some(), "a truncated stream must fail");
    }

    #[test]
    fn index_round_trip_and_corruption() {
        // Goal: the index survives a round trip and a flipped byte is detected.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.index");
        let segs = vec![
            Segment {
                offset: 0,
                len: 10,
                n_records: 2,
                crc32c: 5,
            },
            Segment {
                offset: 10,
                len: 0,
                n_records: 0,
                crc32c: 0,
            },
        ];
        write_index(&path, &segs).unwrap();
        assert_eq!(read_index(&path).unwrap(), segs);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[20] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        assert!(read_index(&path).is_err());
    }

    #[test]
    fn fnv_is_stable() {
        // Goal: partitioning hashes never change between builds (known FNV-1a test vectors).
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
    }
}
