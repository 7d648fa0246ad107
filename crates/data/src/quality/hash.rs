//! The fixed-key hashes of the repetition rules and the exception set.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

pub(super) const FX_K: u64 = 0x517c_c1b7_2722_0a95;

/// A fixed-key FxHash-style hasher (the same on every run), finished with a
/// SplitMix64 mix so that every bit of the result depends on the input.
#[derive(Default, Clone, Copy)]
pub(super) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash_bytes(self.0, bytes);
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(FX_K);
    }

    fn finish(&self) -> u64 {
        mix64(self.0)
    }
}

pub(super) type FxBuild = BuildHasherDefault<FxHasher>;
pub(super) type FxStrSet<'a> = HashSet<&'a str, FxBuild>;

pub(super) fn hash_bytes(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h.rotate_left(5) ^ w).wrapping_mul(FX_K);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        h = (h.rotate_left(5) ^ small_load(rest) ^ ((rest.len() as u64) << 59)).wrapping_mul(FX_K);
    }
    h
}

/// 1 to 8 bytes as a number that, for a given length, differs when they differ.
pub(super) fn small_load(b: &[u8]) -> u64 {
    let n = b.len();
    if n >= 4 {
        let lo = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as u64;
        let hi = u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]) as u64;
        lo | (hi << 32)
    } else {
        b[0] as u64 | (b[n / 2] as u64) << 8 | (b[n - 1] as u64) << 16
    }
}

/// SplitMix64's finaliser.
pub(super) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
