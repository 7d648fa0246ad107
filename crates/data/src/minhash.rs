//! Near-duplicate detection: MinHash signatures with LSH banding.
//!
//! Parameters follow datatrove's `MinhashConfig` defaults: 5-word shingles over a
//! simplified text, 14 bands ("buckets") of 8 rows ("hashes per bucket"), 64-bit
//! hashes, permutations `h ↦ (a·h + b) mod (2^61 − 1)`. Two documents are candidates when
//! all rows of at least one band agree; the probability of that for Jaccard
//! similarity `s` is `1 − (1 − s^rows)^bands` (0.924 at 0.8, 0.053 at 0.5 with the
//! defaults), with its midpoint at [`MinHashConfig::threshold`] ≈ 0.72.
//!
//! Where this differs from datatrove:
//! - words are the whitespace-separated tokens of the simplified text (datatrove runs
//!   a language word tokenizer, spaCy for English, over it; on text without
//!   punctuation that mostly splits on spaces, apart from tokenizer exceptions such
//!   as "cannot" → "can not");
//! - a shingle hash is our own 64-bit hash of the shingle's word hashes (datatrove
//!   hashes the space-joined words with xxhash64) and the permutation parameters come
//!   from splitmix64 of the seed (datatrove draws them with numpy's `RandomState`), so
//!   signatures are not bit-identical to datatrove's;
//! - as in datatrove's uint64 numpy arithmetic, `a·h + b` wraps modulo 2^64 before
//!   it is reduced modulo 2^61 − 1; the reduction here is a single fold, leaving values
//!   up to 2^61 + 6 (congruent, not always the least residue), and every `a` is odd so
//!   that the first step is a bijection (datatrove draws `a` anywhere in [1, 2^61 − 1));
//! - a document with fewer words than `shingle` is one shingle of all its words
//!   (datatrove gives it no signature and never removes it); an empty document
//!   therefore shares its signature with every other empty document.

use anyhow::{ensure, Result};
use rayon::prelude::*;
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;
use unicode_normalization::UnicodeNormalization;

/// The Mersenne prime 2^61 − 1, modulus of the permutations.
const MERSENNE: u64 = (1 << 61) - 1;

// Odd 64-bit constants (wyhash's secrets) for the word and shingle hashes.
const K0: u64 = 0xa076_1d64_78bd_642f;
const K1: u64 = 0xe703_7ed1_a0b4_28db;
const K2: u64 = 0x8ebc_6af0_9c88_c6e3;
const K3: u64 = 0x5899_65cc_7537_4cc3;

/// MinHash-LSH near-duplicate settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MinHashConfig {
    /// Whether the stage runs; resolved by the caller.
    pub enabled: Option<bool>,
    /// Words per shingle (datatrove `n_grams`).
    pub shingle: usize,
    /// Number of LSH bands (datatrove `num_buckets`).
    pub bands: usize,
    /// Hashes per band (datatrove `hashes_per_bucket`).
    pub rows: usize,
    /// Seed of the permutation parameters; must be the same for all shards.
    pub seed: u64,
}

impl Default for MinHashConfig {
    fn default() -> Self {
        Self { enabled: None, shingle: 5, bands: 14, rows: 8, seed: 1 }
    }
}

impl MinHashConfig {
    /// Checks the parameters: `shingle`, `bands` and `rows` at least 1, `bands` fits a `u32`.
    pub fn validate(&self) -> Result<()> {
        ensure!(self.shingle >= 1, "near_dedup.shingle must be at least 1 (got {})", self.shingle);
        ensure!(self.bands >= 1, "near_dedup.bands must be at least 1 (got {})", self.bands);
        ensure!(self.rows >= 1, "near_dedup.rows must be at least 1 (got {})", self.rows);
        ensure!(u32::try_from(self.bands).is_ok(), "near_dedup.bands is too large ({})", self.bands);
        ensure!(self.bands.checked_mul(self.rows).is_some_and(|n| n <= 1 << 16), "near_dedup.bands × rows is too large");
        Ok(())
    }

    /// Length of a signature: `bands × rows`.
    pub fn num_hashes(&self) -> usize {
        self.bands * self.rows
    }

    /// `(a_k, b_k)` for each of the `bands × rows` permutations, drawn in turn from
    /// splitmix64(`seed`) (top 61 bits, values ≥ 2^61 − 1 redrawn): `a_k` odd, so
    /// that `h ↦ a_k·h + b_k mod 2^64` is a bijection, `b_k` any.
    fn permutations(&self) -> (Vec<u64>, Vec<u64>) {
        let n = self.num_hashes();
        let mut rng = SplitMix64(self.seed);
        let mut draw = |odd: bool| loop {
            let v = rng.next() >> 3;
            if v < MERSENNE && (!odd || v & 1 == 1) {
                break v;
            }
        };
        let mut a = Vec::with_capacity(n);
        let mut b = Vec::with_capacity(n);
        for _ in 0..n {
            a.push(draw(true));
            b.push(draw(false));
        }
        (a, b)
    }

    /// The MinHash signature of `text`: `bands × rows` minima, band after band.
    /// Depends only on the configuration and the text.
    pub fn signature(&self, text: &str) -> Vec<u64> {
        let words = word_hashes(text);
        let n = self.shingle.max(1);
        let shingles: Vec<u64> = if words.len() < n { vec![shingle_hash(&words)] } else { words.windows(n).map(shingle_hash).collect() };
        let (a, b) = self.permutations();
        min_hashes(&a, &b, &shingles)
    }

    /// Signatures of many texts, computed in parallel on the current rayon pool; the
    /// result does not depend on the number of threads.
    pub fn signatures<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Vec<Vec<u64>> {
        texts.par_iter().map(|t| self.signature(t.as_ref())).collect()
    }

    /// One 64-bit key per band: a hash of the band index and its rows. Two
    /// documents share a key (in the same band) when that band's rows are equal.
    ///
    /// # Panics
    /// If `sig` is not `bands × rows` long.
    pub fn band_keys(&self, sig: &[u64]) -> Vec<u64> {
        assert_eq!(sig.len(), self.num_hashes(), "signature length does not match bands × rows");
        sig.chunks(self.rows.max(1))
            .enumerate()
            .map(|(band, rows)| {
                let mut h = mix64(band as u64 ^ K2);
                for &v in rows {
                    h = fold_mul(h ^ v, K1);
                }
                mix64(h ^ K3)
            })
            .collect()
    }

    /// `(1/bands)^(1/rows)`: the similarity where the LSH S-curve is steepest
    /// (≈ 0.72 for 14 × 8).
    pub fn threshold(&self) -> f64 {
        (1.0 / self.bands.max(1) as f64).powf(1.0 / self.rows.max(1) as f64)
    }
}

/// Clusters documents that share a band key (in the same band), transitively.
///
/// `keys[i]` are document `i`'s band keys, `keys[i][b]` the key of band `b`
/// (documents may have no keys, then they stay alone). Returns, for each document,
/// the smallest index in its connected component; `rep[i] == i` marks the kept
/// document of each cluster. Deterministic; memory O(n) per band.
pub fn clusters(keys: &[Vec<u64>]) -> Vec<usize> {
    let n = keys.len();
    let bands = keys.iter().map(Vec::len).max().unwrap_or(0);
    let mut uf = UnionFind::new(n);
    let mut column: Vec<(u64, usize)> = Vec::with_capacity(n);
    for band in 0..bands {
        column.clear();
        column.extend(keys.iter().enumerate().filter_map(|(i, k)| k.get(band).map(|&key| (key, i))));
        column.par_sort_unstable();
        for w in column.windows(2) {
            if w[0].0 == w[1].0 {
                uf.union(w[0].1, w[1].1);
            }
        }
    }
    uf.representatives()
}

/// [`clusters`] over band keys stored flat: document `i`'s keys are
/// `keys[i * bands..(i + 1) * bands]`.
pub fn clusters_flat(keys: &[u64], bands: usize) -> Vec<usize> {
    let n = keys.len().checked_div(bands).unwrap_or(0);
    let mut uf = UnionFind::new(n);
    let mut column: Vec<(u64, usize)> = Vec::with_capacity(n);
    for band in 0..bands {
        column.clear();
        column.extend((0..n).map(|i| (keys[i * bands + band], i)));
        column.par_sort_unstable();
        for w in column.windows(2) {
            if w[0].0 == w[1].0 {
                uf.union(w[0].1, w[1].1);
            }
        }
    }
    uf.representatives()
}

/// [`clusters`] from a flat list of `(band, key, doc)` triples in any order (e.g.
/// per-shard signature files concatenated), for documents `0..n`. Sorts `triples`.
///
/// # Panics
/// If a triple names a document `≥ n`.
pub fn clusters_from_triples(n: usize, triples: &mut [(u32, u64, u64)]) -> Vec<usize> {
    triples.par_sort_unstable();
    let mut uf = UnionFind::new(n);
    let doc = |d: u64| match usize::try_from(d) {
        Ok(d) if d < n => d,
        _ => panic!("triple names document {d}, but there are {n} documents"),
    };
    if let Some(&(_, _, d)) = triples.first() {
        doc(d);
    }
    for w in triples.windows(2) {
        let (b0, k0, d0) = w[0];
        let (b1, k1, d1) = w[1];
        let d1 = doc(d1);
        if b0 == b1 && k0 == k1 {
            uf.union(doc(d0), d1);
        }
    }
    uf.representatives()
}

/// Union-find whose roots are the smallest index of their set (a union links the
/// larger root under the smaller), with path halving.
struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        Self { parent: (0..n).collect() }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            let (lo, hi) = if ra < rb { (ra, rb) } else { (rb, ra) };
            self.parent[hi] = lo;
        }
    }

    fn representatives(mut self) -> Vec<usize> {
        (0..self.parent.len()).map(|i| self.find(i)).collect()
    }
}

// ----- text simplification (datatrove `simplify_text` with its default TextNormConfig) -----

/// datatrove's `PUNCTUATION` outside ASCII (every ASCII character that is neither
/// alphanumeric nor whitespace is in it, as are the C1 controls U+0080–U+009F).
const PUNCTUATION_NON_ASCII: &str = "—”％１〈、━【「」，】；“《„’∶´．（–？！：～«〉》）。…►»";

/// datatrove's `NUMBERS_PATTERN`: a number, with at most one decimal part.
static NUMBERS: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\p{Nd}+(?:[.,،٫⎖⎗⎘]\p{Nd}+)?").unwrap_or_else(|e| panic!("bad numbers pattern: {e}")));
static NONSPACING_MARKS: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\p{Mn}+").unwrap_or_else(|e| panic!("bad marks pattern: {e}")));

fn is_punctuation(c: char) -> bool {
    if c.is_ascii() {
        !c.is_ascii_alphanumeric()
    } else {
        ('\u{80}'..='\u{9f}').contains(&c) || PUNCTUATION_NON_ASCII.contains(c)
    }
}

/// Simplifies text as datatrove's `simplify_text` does: lowercase; every number
/// (digits with an optional `.`/`,` decimal part) becomes `0`; punctuation becomes
/// a space; whitespace runs become one space; NFD with nonspacing marks removed.
/// Words are separated by single spaces, with none at either end.
pub fn simplify_text(text: &str) -> String {
    if text.is_ascii() {
        return simplify_ascii(text.as_bytes());
    }
    simplify_chars(text).unwrap_or_else(|| simplify_general(text))
}

/// [`simplify_text`] step by step, as datatrove does it, for any text.
fn simplify_general(text: &str) -> String {
    let lower = text.to_lowercase();
    let numbered = NUMBERS.replace_all(&lower, "0");
    let mut out = String::with_capacity(numbered.len());
    let mut pending_space = false;
    for c in numbered.chars() {
        if c.is_whitespace() || is_punctuation(c) {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    if out.is_ascii() {
        return out;
    }
    let decomposed: String = out.nfd().collect();
    let stripped = NONSPACING_MARKS.replace_all(&decomposed, "");
    // A removed mark may leave two spaces together (or one at an end).
    let mut words = String::with_capacity(stripped.len());
    for w in stripped.split(' ').filter(|w| !w.is_empty()) {
        if !words.is_empty() {
            words.push(' ');
        }
        words.push_str(w);
    }
    words
}

/// [`simplify_text`] in one pass, character by character, for text whose
/// non-ASCII characters are simple: `None` (use [`simplify_general`]) on a non-ASCII
/// number character or decimal separator, on `Σ` (whose lowercase depends on
/// context), or where lowercasing and canonical decomposition give a character
/// outside [`is_plain`] other than the combining diacritics U+0300–U+036F (which
/// are nonspacing marks, removed).
fn simplify_chars(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii() {
            let emit = if c.is_ascii_digit() {
                i = skip_number(b, i);
                Some('0')
            } else {
                i += 1;
                c.is_ascii_alphabetic().then(|| char::from(c.to_ascii_lowercase()))
            };
            match emit {
                Some(ch) => {
                    if pending_space {
                        out.push(' ');
                        pending_space = false;
                    }
                    out.push(ch);
                }
                None => pending_space = !out.is_empty(),
            }
            continue;
        }
        let ch = text[i..].chars().next()?;
        i += ch.len_utf8();
        if ch.is_whitespace() || is_punctuation(ch) {
            pending_space = !out.is_empty();
            continue;
        }
        if ch.is_numeric() || matches!(ch, 'Σ' | '،' | '٫' | '⎖' | '⎗' | '⎘') {
            return None;
        }
        let mut plain = true;
        for lower in ch.to_lowercase() {
            unicode_normalization::char::decompose_canonical(lower, |d| {
                if ('\u{300}'..='\u{36f}').contains(&d) {
                    return;
                }
                plain &= is_plain(d);
                if pending_space {
                    out.push(' ');
                    pending_space = false;
                }
                out.push(d);
            });
        }
        if !plain {
            return None;
        }
    }
    Some(out)
}

/// Blocks without nonspacing marks or other combining characters (checked against
/// Python's unicodedata): ASCII, Latin, Greek, Cyrillic, Hangul jamo, general
/// punctuation, symbols, CJK punctuation, kana, CJK ideographs, full-width forms, emoji.
fn is_plain(c: char) -> bool {
    matches!(u32::from(c),
        0..=0x7f | 0xa0..=0x2ff | 0x370..=0x482 | 0x48a..=0x52f | 0x1100..=0x11ff | 0x1e00..=0x1fff
        | 0x2000..=0x20cf | 0x2100..=0x2bff | 0x3000..=0x3029 | 0x3030..=0x3098 | 0x309b..=0x30ff
        | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xff01..=0xffef | 0x1f000..=0x1faff)
}

fn simplify_ascii(b: &[u8]) -> String {
    let mut out = String::with_capacity(b.len());
    let mut pending_space = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let emit = if c.is_ascii_digit() {
            i = skip_number(b, i);
            Some('0')
        } else {
            i += 1;
            c.is_ascii_alphabetic().then(|| char::from(c.to_ascii_lowercase()))
        };
        match emit {
            Some(ch) => {
                if pending_space {
                    out.push(' ');
                    pending_space = false;
                }
                out.push(ch);
            }
            None => pending_space = !out.is_empty(),
        }
    }
    out
}

/// Hashes of the words of `simplify_text(text)`; for ASCII text without building it.
fn word_hashes(text: &str) -> Vec<u64> {
    let mut out = Vec::with_capacity(text.len() / 5);
    if !text.is_ascii() {
        out.extend(simplify_text(text).split(' ').filter(|w| !w.is_empty()).map(|w| hash_bytes(w.as_bytes())));
        return out;
    }
    let b = text.as_bytes();
    let mut word: Vec<u8> = Vec::with_capacity(64);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_digit() {
            i = skip_number(b, i);
            word.push(b'0');
            continue;
        }
        i += 1;
        if c.is_ascii_alphabetic() {
            word.push(c.to_ascii_lowercase());
        } else if !word.is_empty() {
            out.push(hash_bytes(&word));
            word.clear();
        }
    }
    if !word.is_empty() {
        out.push(hash_bytes(&word));
    }
    out
}

/// End of the number starting at `i` (an ASCII digit): digits, then at most one
/// `.` or `,` followed by more digits.
fn skip_number(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    if i + 1 < b.len() && (b[i] == b'.' || b[i] == b',') && b[i + 1].is_ascii_digit() {
        i += 1;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    i
}

// ----- hashing -----

struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
}

/// splitmix64's finaliser.
#[inline]
fn mix64(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// 64×64 → 128-bit product, halves xor-ed (wyhash's mum).
#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

/// A word's 64-bit hash (wyhash-style, 8 bytes at a time).
#[inline]
fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut h = K0 ^ (bytes.len() as u64).wrapping_mul(K3);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = fold_mul(h ^ u64::from_le_bytes(w) ^ K1, K2);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = fold_mul(h ^ u64::from_le_bytes(w) ^ K1, K3);
    }
    mix64(h)
}

/// A shingle's 64-bit hash from its words' hashes (order matters).
#[inline]
fn shingle_hash(words: &[u64]) -> u64 {
    let mut h = K3 ^ words.len() as u64;
    for &w in words {
        h = fold_mul(h ^ w, K0);
    }
    mix64(h)
}

/// `(a·h + b) mod 2^64`, folded once modulo 2^61 − 1: a value below 2^61 + 7
/// congruent to datatrove's `(a·h + b) % (2^61 − 1)` in uint64 arithmetic.
#[inline(always)]
fn permute(a: u64, b: u64, h: u64) -> u64 {
    let v = a.wrapping_mul(h).wrapping_add(b);
    (v & MERSENNE) + (v >> 61)
}

/// The signature: for each permutation `k`, the minimum of `permute(a_k, b_k, h)`
/// over the shingle hashes, four permutations per pass over the shingles.
fn min_hashes(a: &[u64], b: &[u64], shingles: &[u64]) -> Vec<u64> {
    let mut out = Vec::with_capacity(a.len());
    for (a4, b4) in a.chunks(4).zip(b.chunks(4)) {
        let mut mins = [u64::MAX; 4];
        if let (&[a0, a1, a2, a3], &[b0, b1, b2, b3]) = (a4, b4) {
            for &h in shingles {
                mins[0] = mins[0].min(permute(a0, b0, h));
                mins[1] = mins[1].min(permute(a1, b1, h));
                mins[2] = mins[2].min(permute(a2, b2, h));
                mins[3] = mins[3].min(permute(a3, b3, h));
            }
        } else {
            for ((m, &a), &b) in mins.iter_mut().zip(a4).zip(b4) {
                *m = shingles.iter().map(|&h| permute(a, b, h)).min().unwrap_or(u64::MAX);
            }
        }
        out.extend_from_slice(&mins[..a4.len()]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clusters_flat_equals_clusters() {
        let keys = vec![vec![1, 2], vec![3, 2], vec![5, 6], vec![5, 7], vec![8, 9]];
        let flat: Vec<u64> = keys.iter().flatten().copied().collect();
        assert_eq!(clusters_flat(&flat, 2), clusters(&keys));
        assert_eq!(clusters_flat(&flat, 2), vec![0, 0, 2, 2, 4]);
    }
    use std::collections::{HashMap, HashSet};

    const TEXT_A: &str = "The quick brown fox jumps over the lazy dog while the children watch from the window \
        and the old farmer counts his sheep in the long grass beside the river that runs past the mill.";
    const TEXT_B: &str = "Quarterly revenue rose sharply as the company expanded into new markets, according to \
        a statement released on Tuesday by its board of directors, who also announced a dividend increase.";

    /// A deterministic 300-word text (pseudo-random words from a small vocabulary).
    fn long_text(seed: u64, n: usize) -> Vec<String> {
        const VOCAB: [&str; 40] = [
            "river", "stone", "market", "garden", "window", "silver", "morning", "engine", "letter", "forest", "ocean", "winter", "candle",
            "pocket", "bridge", "castle", "doctor", "harbor", "island", "jacket", "kettle", "ladder", "meadow", "needle", "orange",
            "pencil", "rabbit", "saddle", "ticket", "valley", "wagon", "yellow", "anchor", "basket", "cotton", "dinner", "feather",
            "guitar", "hammer", "lemon",
        ];
        let mut rng = SplitMix64(seed);
        (0..n).map(|_| VOCAB[(rng.next() % VOCAB.len() as u64) as usize].to_string()).collect()
    }

    #[test]
    fn simplify_text_mirrors_datatrove() {
        assert_eq!(simplify_text("  Hello, World!!  It's 3.14 or 1,299.99 now\n\tOK "), "hello world it s 0 or 0 0 now ok");
        assert_eq!(simplify_text("Café «Crème» — 12,5 €, naïve"), "cafe creme 0 € naive");
        assert_eq!(simplify_text("x1.2.3y"), "x0 0y");
        assert_eq!(simplify_text(""), "");
        assert_eq!(simplify_text("٣٫٥ apples"), "0 apples");
    }

    #[test]
    fn the_one_pass_simplification_matches_the_general_one() {
        let texts = [
            "Ça va? Ünïcödé — ‘quotes’ “double” «guill» naïve ÉCOLE İstanbul Ωmega K",
            "ＡＢＣ fullwidth 한국어 日本語 カタカナ ΐ ΆΈΉ Привет ё Й",
            "e\u{301} \u{301} x\u{301}\u{323}y tab\tand\u{a0}nbsp\u{2003}em 🙂 ok",
            "£5 €10 — 3½ miles, ² ok",
            "ΣΊΣΥΦΟΣ σ",
            "١٢٣ and 1٫5",
            "नमस्ते दुनिया",
            "ﬁ ligature",
        ];
        for text in texts {
            if let Some(fast) = simplify_chars(text) {
                assert_eq!(fast, simplify_general(text), "{text:?}");
            }
        }
        assert!(simplify_chars(texts[0]).is_some() && simplify_chars(texts[1]).is_some() && simplify_chars(texts[2]).is_some());
        assert!(texts[4..].iter().all(|t| simplify_chars(t).is_none()));
    }

    #[test]
    fn streamed_word_hashes_match_the_simplified_text() {
        for text in [TEXT_A, TEXT_B, "  Hello, World!!  It's 3.14 or 1,299.99 now\n\tOK ", "x1.2.3y 9,", "Ça va? naïve 12,5", "", "..."] {
            let expected: Vec<u64> = simplify_text(text).split(' ').filter(|w| !w.is_empty()).map(|w| hash_bytes(w.as_bytes())).collect();
            assert_eq!(word_hashes(text), expected, "{text:?}");
        }
    }

    #[test]
    fn defaults_match_datatrove_and_validate() {
        let cfg = MinHashConfig::default();
        assert_eq!((cfg.shingle, cfg.bands, cfg.rows, cfg.seed), (5, 14, 8, 1));
        assert!(cfg.validate().is_ok());
        assert!((cfg.threshold() - 0.7190).abs() < 1e-3, "{}", cfg.threshold());
        for bad in [
            MinHashConfig { shingle: 0, ..cfg.clone() },
            MinHashConfig { bands: 0, ..cfg.clone() },
            MinHashConfig { rows: 0, ..cfg.clone() },
        ] {
            assert!(bad.validate().is_err());
        }
        let parsed: MinHashConfig = serde_json::from_str(r#"{"bands": 20}"#).expect("config");
        assert_eq!((parsed.bands, parsed.rows), (20, 8));
        assert!(serde_json::from_str::<MinHashConfig>(r#"{"buckets": 20}"#).is_err());
    }

    #[test]
    fn identical_texts_give_identical_signatures() {
        let cfg = MinHashConfig::default();
        let a = cfg.signature(TEXT_A);
        assert_eq!(a.len(), 112);
        assert_eq!(a, cfg.signature(TEXT_A));
        // Case, punctuation and spacing do not matter.
        assert_eq!(a, cfg.signature(&TEXT_A.to_uppercase().replace(' ', "  \n")));
        assert_ne!(a, cfg.signature(TEXT_B));
        assert_ne!(a, MinHashConfig { seed: 2, ..cfg.clone() }.signature(TEXT_A));
        assert!(a.iter().all(|&v| v < MERSENNE + 8));
        // Fewer words than a shingle: one shingle of the whole text.
        assert_eq!(cfg.signature("Hello there"), cfg.signature("hello, THERE!"));
        assert_ne!(cfg.signature("Hello there"), cfg.signature("there hello"));
    }

    #[test]
    fn one_changed_word_in_300_stays_together_unrelated_texts_do_not() {
        let cfg = MinHashConfig::default();
        let words = long_text(7, 300);
        let mut edited = words.clone();
        edited[150] = "zeppelin".to_string();
        let other = long_text(8, 300);
        let texts = [words.join(" "), edited.join(" "), other.join(" "), TEXT_A.to_string(), TEXT_B.to_string()];
        let keys: Vec<Vec<u64>> = texts.iter().map(|t| cfg.band_keys(&cfg.signature(t))).collect();
        assert_eq!(keys[0].len(), 14);
        assert_eq!(clusters(&keys), vec![0, 0, 2, 3, 4]);
    }

    #[test]
    fn chains_collapse_to_the_smallest_index() {
        // 1 ~ 3 in band 0, 3 ~ 4 in band 1: {1, 3, 4} under 1; 0 and 2 alone; 5 has no keys.
        let keys = vec![vec![10, 20], vec![11, 21], vec![12, 22], vec![11, 23], vec![14, 23], vec![]];
        assert_eq!(clusters(&keys), vec![0, 1, 2, 1, 1, 5]);
        // The same key in different bands is not a match.
        assert_eq!(clusters(&[vec![1, 2], vec![2, 1]]), vec![0, 1]);
        // a ~ b ~ c listed backwards.
        let keys = vec![vec![1, 100], vec![2, 100], vec![2, 300]];
        assert_eq!(clusters(&keys), vec![0, 0, 0]);
        let mut triples: Vec<(u32, u64, u64)> =
            keys.iter().enumerate().rev().flat_map(|(d, k)| k.iter().enumerate().map(move |(b, &key)| (b as u32, key, d as u64))).collect();
        assert_eq!(clusters_from_triples(3, &mut triples), vec![0, 0, 0]);
        assert_eq!(clusters_from_triples(4, &mut []), vec![0, 1, 2, 3]);
        assert!(clusters(&[]).is_empty());
    }

    #[test]
    fn signatures_do_not_depend_on_thread_count() {
        let cfg = MinHashConfig::default();
        let texts: Vec<String> = (0..64).map(|i| long_text(i, 50 + 7 * i as usize).join(" ")).collect();
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
            pool.install(|| {
                let sigs = cfg.signatures(&texts);
                let keys: Vec<Vec<u64>> = sigs.par_iter().map(|s| cfg.band_keys(s)).collect();
                (sigs, clusters(&keys))
            })
        };
        let one = run(1);
        assert_eq!(one, run(2));
        assert_eq!(one.0[3], cfg.signature(&texts[3]));
    }

    /// Planted near-duplicates (fixtures/near-dups, made by scripts/fixtures/make-near-dups.py).
    ///
    /// - recall: among planted (original, edited copy) pairs whose exact word-5-gram
    ///   Jaccard is ≥ 0.8, the share whose two documents end in the same cluster;
    /// - false-positive rate: the number of "negative" pairs that end in the same
    ///   cluster divided by the number of negative pairs, where the negative pairs are
    ///   (a) planted pairs with Jaccard ≤ 0.5 and (b) every pair of two distinct
    ///   original documents (the script keeps originals whose pairwise Jaccard is
    ///   below 0.1, so all of them are unrelated).
    ///
    /// Both must hold (recall ≥ 0.95, false-positive rate < 1 %). Because the planted
    /// bands straddle their targets (target ± 0.02), two stricter variants are also
    /// asserted: recall over all pairs planted at targets ≥ 0.8 (Jaccard ≥ 0.78) is
    /// ≥ 0.90 (LSH theory ≈ 0.97; 0.944–0.981 over fixtures made with seeds 0–4), and
    /// of the pairs planted at targets ≤ 0.5 (Jaccard ≤ 0.52) fewer than 5 % are
    /// clustered (theory ≈ 1.9 %: 5.3 % at 0.5, 0.09 % at 0.3, ~0 at 0.1; 0–3.3 % over
    /// seeds 0–4). All the numbers, and the share clustered per target, are printed.
    #[test]
    fn planted_near_duplicates_are_found() {
        #[derive(Deserialize)]
        struct Doc {
            id: String,
            text: String,
        }
        #[derive(Deserialize)]
        struct Pair {
            a: String,
            b: String,
            jaccard: f64,
            target: f64,
        }
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fixtures/near-dups");
        let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).expect("fixture (scripts/fixtures/make-near-dups.py)");
        let docs: Vec<Doc> = read("docs.jsonl").lines().map(|l| serde_json::from_str(l).expect("doc line")).collect();
        let pairs: Vec<Pair> = read("pairs.jsonl").lines().map(|l| serde_json::from_str(l).expect("pair line")).collect();
        let index: HashMap<&str, usize> = docs.iter().enumerate().map(|(i, d)| (d.id.as_str(), i)).collect();

        let cfg = MinHashConfig::default();
        let started = std::time::Instant::now();
        let sigs: Vec<Vec<u64>> = docs.iter().map(|d| cfg.signature(&d.text)).collect();
        let elapsed = started.elapsed().as_secs_f64();
        let keys: Vec<Vec<u64>> = sigs.iter().map(|s| cfg.band_keys(s)).collect();
        let rep = clusters(&keys);
        let together = |a: &str, b: &str| rep[index[a]] == rep[index[b]];

        let high: Vec<&Pair> = pairs.iter().filter(|p| p.jaccard >= 0.8).collect();
        let found = high.iter().filter(|p| together(&p.a, &p.b)).count();
        let recall = found as f64 / high.len() as f64;

        let low: Vec<&Pair> = pairs.iter().filter(|p| p.jaccard <= 0.5).collect();
        let low_fp = low.iter().filter(|p| together(&p.a, &p.b)).count();
        let copies: HashSet<&str> = pairs.iter().map(|p| p.b.as_str()).collect();
        let originals: Vec<usize> = docs.iter().enumerate().filter(|(_, d)| !copies.contains(d.id.as_str())).map(|(i, _)| i).collect();
        let orig_pairs = originals.len() * (originals.len() - 1) / 2;
        let mut orig_fp = 0;
        let mut per_cluster: HashMap<usize, usize> = HashMap::new();
        for &i in &originals {
            *per_cluster.entry(rep[i]).or_default() += 1;
        }
        for &m in per_cluster.values() {
            orig_fp += m * (m - 1) / 2;
        }
        let fp_rate = (low_fp + orig_fp) as f64 / (low.len() + orig_pairs) as f64;
        let share = |keep: &dyn Fn(&Pair) -> bool| {
            let set: Vec<&Pair> = pairs.iter().filter(|p| keep(p)).collect();
            (set.iter().filter(|p| together(&p.a, &p.b)).count(), set.len())
        };
        let (above_hit, above_n) = share(&|p| p.target >= 0.8);
        let (below_hit, below_n) = share(&|p| p.target <= 0.5);

        eprintln!(
            "near-dups: {} docs, {} planted pairs; signatures {:.0} docs/s (this build, 1 thread)",
            docs.len(),
            pairs.len(),
            docs.len() as f64 / elapsed
        );
        eprintln!("recall (jaccard >= 0.8): {found}/{} = {recall:.4}", high.len());
        eprintln!(
            "false positives: {low_fp}/{} planted pairs with jaccard <= 0.5 + {orig_fp}/{orig_pairs} pairs of unrelated originals = {fp_rate:.5}",
            low.len()
        );
        let (above, below) = (above_hit as f64 / above_n as f64, below_hit as f64 / below_n as f64);
        eprintln!("recall (targets >= 0.8, jaccard >= 0.78): {above_hit}/{above_n} = {above:.4}");
        eprintln!("clustered (targets <= 0.5, jaccard <= 0.52): {below_hit}/{below_n} = {below:.4}");
        let mut targets: Vec<f64> = pairs.iter().map(|p| p.target).collect();
        targets.sort_by(|a, b| b.total_cmp(a));
        targets.dedup();
        for t in targets {
            let band: Vec<&Pair> = pairs.iter().filter(|p| p.target == t).collect();
            let hit = band.iter().filter(|p| together(&p.a, &p.b)).count();
            let p_theory = 1.0 - (1.0 - t.powi(cfg.rows as i32)).powi(cfg.bands as i32);
            eprintln!("  target {t:.2}: {hit}/{} clustered (LSH probability at the target {p_theory:.3})", band.len());
        }
        assert!(recall >= 0.95, "recall {recall}");
        assert!(fp_rate < 0.01, "false-positive rate {fp_rate}");
        assert!(above >= 0.90, "recall over targets >= 0.8: {above}");
        assert!(below < 0.05, "clustered below the threshold: {below}");
    }
}
