//! A small Bloom filter kept in memory per segment, so point reads (one
//! span, one trace) open only the segments that may hold the object. About
//! 10 bits per key and 7 probes give a false-positive rate near 1%; the
//! precise filter, 20 bits and 14 probes, about 0.01%.

#[derive(Debug, Clone)]
pub struct Bloom {
    bits: Vec<u64>,
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

/// Returns a hash of a key's parts that stays the same across builds and
/// versions, so it may be stored.
pub fn stable_hash(parts: &[&str]) -> u64 {
    fnv1a(parts, 0)
}

/// The two hashes from which a key's probe positions derive, computed once
/// to probe many filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Probe(u64, u64);

impl Probe {
    pub fn of(parts: &[&str]) -> Probe {
        Probe(fnv1a(parts, 0), fnv1a(parts, 0x9e37_79b9_7f4a_7c15) | 1)
    }
}

impl Bloom {
    pub fn with_capacity(keys: usize) -> Bloom {
        let bits = (keys.max(1) * 10).next_power_of_two();
        Bloom { bits: vec![0; bits.div_ceil(64)], probes: 7 }
    }

    /// Creates a filter with twice the bits per key, for keys whose false
    /// positives cost more than a skipped read: they decide which objects
    /// queries merge.
    pub fn precise_with_capacity(keys: usize) -> Bloom {
        let bits = (keys.max(1) * 20).next_power_of_two();
        Bloom { bits: vec![0; bits.div_ceil(64)], probes: 14 }
    }

    fn positions(&self, parts: &[&str]) -> impl Iterator<Item = usize> + '_ {
        self.probe_positions(Probe::of(parts))
    }

    fn probe_positions(&self, Probe(first, second): Probe) -> impl Iterator<Item = usize> + '_ {
        let size = (self.bits.len() * 64) as u64;
        (0..self.probes as u64).map(move |i| (first.wrapping_add(i.wrapping_mul(second)) % size) as usize)
    }

    pub fn insert(&mut self, parts: &[&str]) {
        let positions: Vec<usize> = self.positions(parts).collect();
        for position in positions {
            self.bits[position / 64] |= 1 << (position % 64);
        }
    }

    pub fn may_contain(&self, parts: &[&str]) -> bool {
        self.may_contain_probe(Probe::of(parts))
    }

    pub fn may_contain_probe(&self, probe: Probe) -> bool {
        self.probe_positions(probe).all(|position| self.bits[position / 64] & (1 << (position % 64)) != 0)
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

        let mut precise = Bloom::precise_with_capacity(10_000);
        for i in 0..10_000 {
            precise.insert(&["org", &i.to_string()]);
        }
        assert!((0..10_000).all(|i| precise.may_contain(&["org", &i.to_string()])));
        let false_positives = (10_000..110_000).filter(|i| precise.may_contain(&["org", &i.to_string()])).count();
        assert!(false_positives < 30, "{false_positives} false positives in 100000");
    }
}
