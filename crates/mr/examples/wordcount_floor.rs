//! The single-threaded floor for word counting, for docs/BENCHMARKS.md: read the file in large
//! blocks, split words exactly like the `wordcount` app (`for_each_word`), count them in one
//! hash map (short words packed inline, as the `wordcount` app does), print `word<TAB>count` lines sorted by word. No MapReduce, no second core.
//!
//! cargo run --release -p shoal-mr --example wordcount_floor -- FILE > counts.txt

use std::io::{Read, Write};

use shoal_mr::apps::{for_each_word, WordCounts};

fn main() -> std::io::Result<()> {
    let path = std::env::args().nth(1).expect("usage: wordcount_floor FILE");
    let started = std::time::Instant::now();
    let mut f = std::fs::File::open(&path)?;
    let mut counts = WordCounts::default();
    let mut buf = vec![0u8; 8 << 20];
    let mut carry = 0;
    loop {
        let n = f.read(&mut buf[carry..])?;
        let end = carry + n;
        // Count up to the last separator; carry a partial word into the next block.
        let cut = if n == 0 {
            end
        } else {
            buf[..end]
                .iter()
                .rposition(|b| !b.is_ascii_alphabetic() && *b < 0x80)
                .map_or(0, |p| p + 1)
        };
        for_each_word(&buf[..cut], |w| counts.add(w, 1));
        buf.copy_within(cut..end, 0);
        carry = end - cut;
        if n == 0 {
            break;
        }
        if carry == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
    let mut words: Vec<(Vec<u8>, u64)> = Vec::with_capacity(counts.len());
    counts.drain(|w, c| {
        words.push((w.to_vec(), c));
        Ok(())
    })?;
    words.sort_unstable();
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (w, c) in &words {
        out.write_all(w)?;
        writeln!(out, "\t{c}")?;
    }
    out.flush()?;
    eprintln!(
        "{} distinct words in {:.2} s",
        words.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
