//! Hash maps and sets keyed by object addresses (`lua_topointer`, `lua_upvalueid`): the
//! engine's identity maps, hashed with one multiply instead of SipHash.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

/// Fibonacci hashing of a pointer: the low bits of an address are alignment zeros, the
/// multiply spreads the significant middle bits over the whole word.
#[derive(Default, Clone, Copy)]
pub struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
}

pub type PtrMap<V> = HashMap<usize, V, BuildHasherDefault<PtrHasher>>;
pub type PtrSet = HashSet<usize, BuildHasherDefault<PtrHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_pointers_spread_over_buckets() {
        let mut low_bits = std::collections::HashSet::new();
        for i in 0..64usize {
            let mut h = PtrHasher::default();
            h.write_usize(0x5555_0000_0000 + i * 64);
            low_bits.insert(h.finish() >> 58);
        }
        // 64 addresses 64 bytes apart must not collapse onto a few top-bit buckets.
        assert!(low_bits.len() > 24, "{}", low_bits.len());
    }

    #[test]
    fn map_round_trip() {
        let mut m: PtrMap<u32> = PtrMap::default();
        for i in 0..1000usize {
            m.insert(i * 16, i as u32);
        }
        assert_eq!(m.get(&(500 * 16)), Some(&500));
        assert_eq!(m.get(&8), None);
    }
}
