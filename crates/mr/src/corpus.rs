//! A deterministic text corpus for tests and benchmarks (`shoal gen text`): words drawn from a
//! Zipf distribution (s = 1) over a seeded vocabulary, so word frequencies look like natural
//! language. The same seed and size give the same bytes on every machine.

use std::io::{self, Write};

/// Distinct words in the vocabulary. Cost: the vocabulary and its CDF live in memory
/// (about 1 MiB).
pub const VOCABULARY_WORDS: usize = 50_000;

/// SplitMix64: tiny, fast, and stable across versions (the output must never change).
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

pub struct TextGenerator {
    rng: SplitMix64,
    words: Vec<Vec<u8>>,
    cdf: Vec<u64>,
}

impl TextGenerator {
    pub fn new(seed: u64) -> Self {
        let mut rng = SplitMix64::new(seed);
        let mut words = Vec::with_capacity(VOCABULARY_WORDS);
        for i in 0..VOCABULARY_WORDS {
            let len = 1 + (rng.below(6) + rng.below(6)) as usize;
            let mut w: Vec<u8> = (0..len).map(|_| b'a' + rng.below(26) as u8).collect();
            // Some capitalised words: case is kept, so "The" and "the" are different words.
            if i % 7 == 0 {
                w[0] = w[0].to_ascii_uppercase();
            }
            words.push(w);
        }
        let mut cdf = Vec::with_capacity(VOCABULARY_WORDS);
        let mut total = 0.0f64;
        for rank in 1..=VOCABULARY_WORDS {
            total += 1.0 / rank as f64;
            cdf.push(total);
        }
        let scale = u64::MAX as f64 / total;
        let cdf = cdf.into_iter().map(|c| (c * scale) as u64).collect();
        Self { rng, words, cdf }
    }

    fn word_idx(&mut self) -> usize {
        let x = self.rng.next_u64();
        self.cdf.partition_point(|c| *c < x).min(self.words.len() - 1)
    }

    /// Writes exactly `size_bytes` bytes of text lines (the last line may be cut).
    pub fn write(&mut self, out: &mut impl Write, size_bytes: u64) -> io::Result<()> {
        let mut written = 0u64;
        let mut line = Vec::with_capacity(256);
        while written < size_bytes {
            line.clear();
            let n_words = 4 + self.rng.below(12);
            for i in 0..n_words {
                if i > 0 {
                    line.push(match self.rng.below(20) {
                        0 => b',',
                        1 => b'-',
                        _ => b' ',
                    });
                    if line.last() == Some(&b',') {
                        line.push(b' ');
                    }
                }
                let idx = self.word_idx();
                line.extend_from_slice(&self.words[idx]);
            }
            line.push(if self.rng.below(4) == 0 { b'.' } else { b' ' });
            line.push(b'\n');
            let take = (size_bytes - written).min(line.len() as u64) as usize;
            out.write_all(&line[..take])?;
            written += take as u64;
        }
        Ok(())
    }
}

/// Bytes per record of [`write_records`].
pub const RECORD_BYTES: u64 = 100;

/// Writes `size_bytes / 100` records in the spirit of gensort's ASCII format: a 10-byte random
/// printable key, two spaces, the 32-hex-digit record number, two spaces, 53 filler bytes and
/// `\n` (100 bytes). `LC_ALL=C sort` and the `sort` app order them by key.
pub fn write_records(out: &mut impl Write, seed: u64, size_bytes: u64) -> io::Result<()> {
    let mut rng = SplitMix64::new(seed);
    let mut rec = Vec::with_capacity(RECORD_BYTES as usize);
    for n in 0..size_bytes / RECORD_BYTES {
        rec.clear();
        for _ in 0..10 {
            // Printable ASCII from '!' to '~' (no space, tab or newline).
            rec.push(b'!' + rng.below(94) as u8);
        }
        rec.extend_from_slice(format!("  {n:032X}  ").as_bytes());
        let filler = b'A' + (n % 26) as u8;
        rec.resize(RECORD_BYTES as usize - 1, filler);
        rec.push(b'\n');
        out.write_all(&rec)?;
    }
    Ok(())
}

/// Parses sizes like `512`, `64KiB`, `128MiB`, `1GiB`, `1.5G` (K/M/G/T are powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid size {text:?} (try 4096, 64MiB, 1GiB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {text:?} (use B, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    Ok((value * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_and_exact_size() {
        // Goal: the corpus is deterministic per seed, different across seeds, and exactly sized.
        let gen = |seed, size| {
            let mut out = Vec::new();
            TextGenerator::new(seed).write(&mut out, size).unwrap();
            out
        };
        assert_eq!(gen(1, 10_000), gen(1, 10_000));
        assert_ne!(gen(1, 10_000), gen(2, 10_000));
        assert_eq!(gen(3, 12_345).len(), 12_345);
    }

    #[test]
    fn records_are_100_bytes_with_printable_keys() {
        // Goal: gen records writes whole 100-byte lines whose 10-byte keys hold no separator.
        let mut out = Vec::new();
        write_records(&mut out, 5, 1050).unwrap();
        assert_eq!(out.len(), 1000);
        for rec in out.chunks(100) {
            assert_eq!(rec[99], b'\n');
            assert!(rec[..10].iter().all(|b| b.is_ascii_graphic()));
            assert!(!rec[..99].contains(&b'\n'));
        }
    }

    #[test]
    fn sizes_parse() {
        // Goal: human sizes parse in binary units and bad ones say what to write instead.
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1.5K").unwrap(), 1536);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert!(parse_size("12 parsecs").unwrap_err().contains("unit"));
    }
}
