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

/// Bits of an address within one page of an [`AddrSet`].
const PAGE_BITS: u32 = 16;
/// Objects are at least 8-byte aligned and at least 24 bytes long, so no two of them start
/// in the same 8-byte granule.
const GRANULE_BITS: u32 = 3;
const WORDS: usize = 1 << (PAGE_BITS - GRANULE_BITS - 6);

/// A set of object addresses as a bitmap per 64 KiB page: the VM walk's "visited" set. A walk
/// meets objects roughly in the order they were allocated, so consecutive inserts usually hit
/// the page of the last one (no hashing), and the whole set of a big heap stays small enough
/// for the CPU caches, where a hash set of pointers would not.
#[derive(Default)]
pub struct AddrSet {
    /// page number -> its bitmap in `bitmaps`
    pages: Pages,
    bitmaps: Vec<[u64; WORDS]>,
    /// the page of the last insert, and its bitmap
    last: Option<(usize, usize)>,
}

impl AddrSet {
    /// Whether `addr` is in the set.
    pub fn contains(&self, addr: usize) -> bool {
        let page = addr >> PAGE_BITS;
        let at = match self.last {
            Some((p, at)) if p == page => Some(at),
            _ => self.pages.get(page),
        };
        let granule = (addr & ((1 << PAGE_BITS) - 1)) >> GRANULE_BITS;
        let (word, bit) = (granule >> 6, 1u64 << (granule & 63));
        at.and_then(|at| self.bitmaps.get(at))
            .and_then(|b| b.get(word))
            .is_some_and(|w| w & bit != 0)
    }

    /// Adds `addr`; true if it was not there.
    pub fn insert(&mut self, addr: usize) -> bool {
        let page = addr >> PAGE_BITS;
        let at = match self.last {
            Some((p, at)) if p == page => at,
            _ => {
                let at = match self.pages.get(page) {
                    Some(at) => at,
                    None => {
                        self.bitmaps.push([0; WORDS]);
                        let at = self.bitmaps.len() - 1;
                        self.pages.insert(page, at);
                        at
                    }
                };
                self.last = Some((page, at));
                at
            }
        };
        let granule = (addr & ((1 << PAGE_BITS) - 1)) >> GRANULE_BITS;
        let (word, bit) = (granule >> 6, 1u64 << (granule & 63));
        match self.bitmaps.get_mut(at).and_then(|b| b.get_mut(word)) {
            Some(w) if *w & bit == 0 => {
                *w |= bit;
                true
            }
            Some(_) => false,
            None => true,
        }
    }
}

impl AddrSet {
    /// Adds every address of `other`.
    pub fn extend_from(&mut self, other: &AddrSet) {
        for &(key, at) in other.pages.slots.iter().filter(|&&(key, _)| key != 0) {
            let Some(bits) = other.bitmaps.get(at) else { continue };
            for (word, &w) in bits.iter().enumerate().filter(|&(_, &w)| w != 0) {
                for bit in 0..64 {
                    if w & (1 << bit) != 0 {
                        let granule = (word << 6) | bit;
                        self.insert(((key - 1) << PAGE_BITS) | (granule << GRANULE_BITS));
                    }
                }
            }
        }
    }
}

/// An [`AddrSet`]'s page directory: page number -> bitmap index, open addressing with
/// linear probing. A set has few pages (a few hundred for a big heap), so a slot is found in a
/// multiply and a probe or two, where a general hash map spends several times that.
#[derive(Default)]
struct Pages {
    /// (page + 1, bitmap index); 0 marks a free slot
    slots: Vec<(usize, usize)>,
    len: usize,
}

impl Pages {
    fn home(&self, page: usize) -> usize {
        // the slot count is a power of two: the top bits of the product pick the slot
        let bits = self.slots.len().trailing_zeros();
        ((page as u64).wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)) as usize
    }

    fn get(&self, page: usize) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(page);
        loop {
            match self.slots.get(i & mask) {
                Some(&(key, at)) if key == page.wrapping_add(1) => return Some(at),
                Some(&(0, _)) | None => return None,
                Some(_) => i += 1,
            }
        }
    }

    /// Adds a page that is not there yet.
    fn insert(&mut self, page: usize, at: usize) {
        if (self.len + 1) * 4 > self.slots.len() {
            let old = std::mem::take(&mut self.slots);
            self.slots = vec![(0, 0); (old.len() * 2).max(16)];
            self.len = 0;
            for (key, at) in old.into_iter().filter(|&(key, _)| key != 0) {
                self.insert(key - 1, at);
            }
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(page);
        while let Some(slot) = self.slots.get_mut(i & mask) {
            if slot.0 == 0 {
                *slot = (page.wrapping_add(1), at);
                self.len += 1;
                return;
            }
            i += 1;
        }
    }
}

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
    fn addr_set_is_a_set() {
        let mut s = AddrSet::default();
        let mut reference = std::collections::HashSet::new();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for i in 0..20_000usize {
            // mostly sequential addresses, sometimes far away, all 8-aligned
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let addr = if i % 7 == 0 { (x as usize) & !7 } else { 0x5500_0000 + (i % 3000) * 24 };
            assert_eq!(s.contains(addr), reference.contains(&addr), "at {i}: {addr:#x}");
            assert_eq!(s.insert(addr), reference.insert(addr), "at {i}: {addr:#x}");
            assert!(s.contains(addr));
        }
        assert!(!s.insert(0x5500_0000));
        assert!(s.insert(0x5500_0008), "neighbouring granule");
    }

    #[test]
    fn addr_set_union() {
        let (mut a, mut b) = (AddrSet::default(), AddrSet::default());
        let xs: Vec<usize> = (0..3000usize).map(|i| 0x7700_0000 + i * 40).collect();
        for (i, &x) in xs.iter().enumerate() {
            if i % 2 == 0 {
                a.insert(x)
            } else {
                b.insert(x)
            };
        }
        b.insert(0x1234_5678);
        a.extend_from(&b);
        assert!(xs.iter().all(|&x| a.contains(x)));
        assert!(a.contains(0x1234_5678));
        assert!(!a.contains(0x7700_0008));
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
