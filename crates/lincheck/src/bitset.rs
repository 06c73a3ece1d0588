//! A fixed-size set of operation indices, one bit each: the "linearized" set of a search
//! configuration, cloned into every cache entry, so it must stay small (n / 8 bytes).

use std::hash::Hasher;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Bitset {
    words: Box<[u64]>,
}

const WORD_BITS: usize = u64::BITS as usize;

impl Bitset {
    /// An empty set able to hold the indices `0..n_bits`.
    pub(crate) fn new(n_bits: usize) -> Bitset {
        Bitset {
            words: vec![0; n_bits.div_ceil(WORD_BITS)].into_boxed_slice(),
        }
    }

    pub(crate) fn insert(&mut self, idx: usize) {
        self.words[idx / WORD_BITS] |= 1 << (idx % WORD_BITS);
    }

    pub(crate) fn remove(&mut self, idx: usize) {
        self.words[idx / WORD_BITS] &= !(1 << (idx % WORD_BITS));
    }

    pub(crate) fn contains(&self, idx: usize) -> bool {
        self.words[idx / WORD_BITS] & (1 << (idx % WORD_BITS)) != 0
    }

    pub(crate) fn words(&self) -> &[u64] {
        &self.words
    }

    pub(crate) fn hash_into(&self, hasher: &mut impl Hasher) {
        for word in self.words.iter() {
            hasher.write_u64(*word);
        }
    }
}

/// Whether every member of the set `small` is also a member of `large` (both given by
/// their words, of the same capacity).
pub(crate) fn is_subset(small: &[u64], large: &[u64]) -> bool {
    debug_assert_eq!(small.len(), large.len());
    small.iter().zip(large).all(|(mine, theirs)| mine & !theirs == 0)
}

/// The multiply-rotate hash of rustc's `FxHasher`: the cache hashes a bitset and a model
/// state for every search step, and SipHash's DoS resistance buys nothing here.
#[derive(Default)]
pub(crate) struct FxHasher {
    hash: u64,
}

const FX_SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.write_u64(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(FX_SEED);
    }

    fn write_u8(&mut self, byte: u8) {
        self.write_u64(u64::from(byte));
    }

    fn write_u32(&mut self, word: u32) {
        self.write_u64(u64::from(word));
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        self.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitset_membership_and_subset() {
        // Goal: insert/remove/contains agree across word boundaries and subset is bitwise.
        let mut small = Bitset::new(130);
        let mut large = Bitset::new(130);
        for idx in [0, 63, 64, 129] {
            large.insert(idx);
        }
        small.insert(64);
        assert!(large.contains(63) && large.contains(64) && large.contains(129));
        assert!(!large.contains(1) && !large.contains(128));
        assert!(is_subset(small.words(), large.words()));
        assert!(!is_subset(large.words(), small.words()));
        large.remove(64);
        assert!(!large.contains(64));
        assert!(!is_subset(small.words(), large.words()));
        assert!(is_subset(Bitset::new(130).words(), small.words()));
    }
}
