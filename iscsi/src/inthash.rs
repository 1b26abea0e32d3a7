//! A cheap hasher for the integer keys of the per-command maps (initiator task
//! tags, engine tokens, connection ids). SipHash, the standard library's default,
//! costs more than the rest of a map lookup for a 4-byte key and several lookups run
//! per command. A multiply with a per-map random seed is enough here: the maps are
//! bounded by the queue depth, so even keys an initiator picks to collide only make
//! its own session's lookups linear in that small bound.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

/// A map keyed by an integer, hashed with [`IntHasher`].
pub type IntMap<K, V> = HashMap<K, V, IntHashBuilder>;

/// Odd constant of Fibonacci hashing (2^64 / φ).
const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Clone, Copy, Debug)]
pub struct IntHashBuilder {
    seed: u64,
}

impl Default for IntHashBuilder {
    fn default() -> Self {
        IntHashBuilder {
            seed: RandomState::new().hash_one(0u64),
        }
    }
}

impl BuildHasher for IntHashBuilder {
    type Hasher = IntHasher;

    fn build_hasher(&self) -> IntHasher {
        IntHasher(self.seed)
    }
}

#[derive(Debug)]
pub struct IntHasher(u64);

impl Hasher for IntHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Keys of other shapes still hash correctly, a byte at a time.
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }

    fn write_u64(&mut self, n: u64) {
        let h = (self.0 ^ n).wrapping_mul(K);
        // The map takes its bucket from the low bits, which a multiply mixes
        // least: fold the high half in.
        self.0 = h ^ (h >> 32);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_apart_and_maps_work() {
        let b = IntHashBuilder::default();
        let hashes: std::collections::HashSet<u64> =
            (0u32..10_000).map(|k| b.hash_one(k)).collect();
        assert_eq!(hashes.len(), 10_000, "sequential tags do not collide");
        let mut m: IntMap<u32, u32> = IntMap::default();
        for k in 0..1000u32 {
            m.insert(k.wrapping_mul(0x1000_0001), k);
        }
        for k in 0..1000u32 {
            assert_eq!(m.get(&k.wrapping_mul(0x1000_0001)), Some(&k));
        }
        assert_eq!(m.get(&7), None);
    }
}
