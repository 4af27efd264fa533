//! A small Bloom filter kept in memory per segment, so point reads (one
//! span, one trace) open only the segments that may hold the object.
//!
//! The filter is blocked: a key's probes all fall in one 512-bit block, one
//! cache line, so a lookup in a filter of many megabytes costs one cache
//! miss rather than one per probe. About 10 bits per key and 7 probes give a
//! false-positive rate near 1%; the precise filter, 28 bits and 14 probes,
//! about 0.002%. A key is hashed once per lookup into a [`Probe`], which then
//! tests every segment's filter.

/// 64-bit words in a block: 512 bits, one cache line.
const BLOCK_WORDS: usize = 8;
const BLOCK_BITS: u64 = (BLOCK_WORDS * 64) as u64;

#[derive(Debug, Clone)]
pub struct Bloom {
    blocks: Vec<[u64; BLOCK_WORDS]>,
    probes: u32,
}

fn fnv1a(parts: &[&str], seed: u64) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for part in parts {
        for byte in part.bytes() {
            hash ^= byte as u64;
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        // A separator so ("ab", "c") and ("a", "bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// Spreads every input bit over the output, as the finalizer of SplitMix64 does.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Returns a hash of a key's parts that stays the same across builds and
/// versions, so it may be stored.
pub fn stable_hash(parts: &[&str]) -> u64 {
    fnv1a(parts, 0)
}

/// A key's hash, computed once to probe many filters. Filters live in
/// memory only, so this may change between versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Probe(u64);

impl Probe {
    pub fn of(parts: &[&str]) -> Probe {
        Probe(mix(fnv1a(parts, 0)))
    }
}

impl Bloom {
    fn sized(keys: usize, bits_per_key: usize, probes: u32) -> Bloom {
        let blocks = (keys.max(1) * bits_per_key).div_ceil(BLOCK_BITS as usize);
        Bloom { blocks: vec![[0; BLOCK_WORDS]; blocks], probes }
    }

    pub fn with_capacity(keys: usize) -> Bloom {
        Bloom::sized(keys, 10, 7)
    }

    /// Creates a filter with nearly three times the bits per key, for keys
    /// whose false positives cost more than a skipped read. They decide
    /// which objects queries merge. They also decide which new objects a
    /// write finds in no segment, whose reads then skip the segments. With
    /// 50 segments, 20 bits per key sent 1% of those reads to a Parquet scan.
    pub fn precise_with_capacity(keys: usize) -> Bloom {
        Bloom::sized(keys, 28, 14)
    }

    /// Returns the block of a probe and its bit positions in the block.
    /// The low 32 bits of the hash, scaled to the number of blocks, pick the
    /// block. A multiplicative sequence seeded by the whole hash gives one
    /// bit per probe from its top bits.
    fn place(&self, Probe(hash): Probe) -> (usize, impl Iterator<Item = usize>) {
        let block = (((hash & 0xffff_ffff) * self.blocks.len() as u64) >> 32) as usize;
        let mut state = hash | 1;
        let bits = (0..self.probes).map(move |_| {
            state = state.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            ((state >> 32) % BLOCK_BITS) as usize
        });
        (block, bits)
    }

    pub fn insert(&mut self, parts: &[&str]) {
        let (block, bits) = self.place(Probe::of(parts));
        let bits: Vec<usize> = bits.collect();
        let block = &mut self.blocks[block];
        for bit in bits {
            block[bit / 64] |= 1 << (bit % 64);
        }
    }

    pub fn may_contain(&self, parts: &[&str]) -> bool {
        self.may_contain_probe(Probe::of(parts))
    }

    pub fn may_contain_probe(&self, probe: Probe) -> bool {
        let (block, mut bits) = self.place(probe);
        let block = &self.blocks[block];
        bits.all(|bit| block[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bloom_has_no_false_negatives_and_few_false_positives() {
        let mut bloom = Bloom::with_capacity(10_000);
        for i in 0..10_000 {
            bloom.insert(&["org", &i.to_string()]);
        }
        assert!((0..10_000).all(|i| bloom.may_contain(&["org", &i.to_string()])));
        let false_positives = (10_000..20_000).filter(|i| bloom.may_contain(&["org", &i.to_string()])).count();
        assert!(false_positives < 300, "{false_positives} false positives in 10000");
        assert!(false_positives > 0, "a filter of this size has some false positives");

        let mut precise = Bloom::precise_with_capacity(10_000);
        for i in 0..10_000 {
            precise.insert(&["org", &i.to_string()]);
        }
        assert!((0..10_000).all(|i| precise.may_contain(&["org", &i.to_string()])));
        let false_positives = (10_000..110_000).filter(|i| precise.may_contain(&["org", &i.to_string()])).count();
        assert!(false_positives < 10, "{false_positives} false positives in 100000");
    }
}
