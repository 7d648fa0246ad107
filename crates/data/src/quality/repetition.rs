//! datatrove's `GopherRepetitionFilter`: repeated lines and paragraphs, the most
//! frequent n-grams and repeated n-grams, counted over word hashes.

use super::hash::{hash_bytes, mix64, small_load, FxBuild, FxStrSet, FX_K};
use super::pystr::{py_strip, split_newline_runs};
use super::words::words_of;
use super::{on, Drop};
use serde::{Deserialize, Serialize};

/// datatrove's `GopherRepetitionFilter` (Gopher table A1).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GopherRepetitionConfig {
    pub enabled: Option<bool>,
    /// Most share of lines (split at runs of `\n`) that repeat an earlier line.
    pub dup_line_frac: Option<f64>,
    /// Most share of paragraphs (split at runs of two or more `\n`) that repeat an earlier one.
    pub dup_para_frac: Option<f64>,
    /// Most share of the text's characters in repeated lines.
    pub dup_line_char_frac: Option<f64>,
    /// Most share of the text's characters in repeated paragraphs.
    pub dup_para_char_frac: Option<f64>,
    /// `(n, most share)`: the characters of the most frequent word n-gram (joined with
    /// spaces) times its count, over the text's characters.
    pub top_n_grams: Vec<(usize, f64)>,
    /// `(n, most share)`: the characters of word n-grams that repeat an earlier one
    /// (scanned left to right, a repeat skipping its n words), over the text's characters.
    pub dup_n_grams: Vec<(usize, f64)>,
}

impl Default for GopherRepetitionConfig {
    fn default() -> Self {
        Self {
            enabled: None,
            dup_line_frac: Some(0.3),
            dup_para_frac: Some(0.3),
            dup_line_char_frac: Some(0.2),
            dup_para_char_frac: Some(0.2),
            top_n_grams: vec![(2, 0.2), (3, 0.18), (4, 0.16)],
            dup_n_grams: vec![(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)],
        }
    }
}

const TOP_GRAM_RULES: [&str; 10] = [
    "gopher_top_1_gram",
    "gopher_top_2_gram",
    "gopher_top_3_gram",
    "gopher_top_4_gram",
    "gopher_top_5_gram",
    "gopher_top_6_gram",
    "gopher_top_7_gram",
    "gopher_top_8_gram",
    "gopher_top_9_gram",
    "gopher_top_10_gram",
];

const DUP_GRAM_RULES: [&str; 10] = [
    "gopher_duplicated_1_n_grams",
    "gopher_duplicated_2_n_grams",
    "gopher_duplicated_3_n_grams",
    "gopher_duplicated_4_n_grams",
    "gopher_duplicated_5_n_grams",
    "gopher_duplicated_6_n_grams",
    "gopher_duplicated_7_n_grams",
    "gopher_duplicated_8_n_grams",
    "gopher_duplicated_9_n_grams",
    "gopher_duplicated_10_n_grams",
];

fn gram_rule(table: &[&'static str; 10], n: usize, other: &'static str) -> &'static str {
    table.get(n.wrapping_sub(1)).copied().unwrap_or(other)
}

/// Positions whose n-gram occurs at least twice in the document, for the
/// largest n counted so far: an m-gram (m >= n) elsewhere can only repeat there.
type RepeatFilter = Option<(usize, Vec<bool>)>;

impl GopherRepetitionConfig {
    /// `Ok` when the document passes every rule, else the first rule it fails.
    pub fn check(&self, text: &str) -> Result<(), Drop> {
        let text_len = text.chars().count();
        if text_len == 0 {
            return Ok(());
        }
        let mut pieces = Vec::new();
        split_newline_runs(py_strip(text), 2, &mut pieces);
        let paras = ("gopher_dup_para_frac", self.dup_para_frac, "gopher_dup_para_char_frac", self.dup_para_char_frac);
        check_duplicates(&pieces, text_len, "paragraphs", paras)?;
        pieces.clear();
        split_newline_runs(text, 1, &mut pieces);
        let lines = ("gopher_dup_line_frac", self.dup_line_frac, "gopher_dup_line_char_frac", self.dup_line_char_frac);
        check_duplicates(&pieces, text_len, "lines", lines)?;
        if self.top_n_grams.is_empty() && self.dup_n_grams.is_empty() {
            return Ok(());
        }
        let grams = Grams::new(&words_of(text));
        let filter = self.check_top_grams(&grams, text_len)?;
        self.check_dup_grams(&grams, text_len, filter)
    }

    fn check_top_grams(&self, g: &Grams, text_len: usize) -> Result<RepeatFilter, Drop> {
        let mut table = GramTable::default();
        let mut filter: RepeatFilter = None;
        for &(n, frac) in &self.top_n_grams {
            if n == 0 || g.len() < n {
                continue;
            }
            if g.most_mass(n) as f64 / text_len as f64 <= frac {
                continue; // cannot fail
            }
            let usable = filter.as_ref().filter(|(k, _)| *k <= n).map(|(_, rep)| rep.as_slice());
            let replace = usable.is_some() || filter.is_none();
            let (top, rep) = top_gram(g, n, usable, &mut table);
            let share = top as f64 / text_len as f64;
            if share > frac {
                let rule = gram_rule(&TOP_GRAM_RULES, n, "gopher_top_n_gram");
                return Err(Drop::new(rule, format!("most frequent {n}-gram covers {share:.3} of the characters > {frac}")));
            }
            if replace {
                filter = Some((n, rep));
            }
        }
        Ok(filter)
    }

    fn check_dup_grams(&self, g: &Grams, text_len: usize, filter: RepeatFilter) -> Result<(), Drop> {
        let mut table = GramTable::default();
        // If no n-gram repeats, no longer one does either.
        let mut clean_from = usize::MAX;
        for &(n, frac) in &self.dup_n_grams {
            if n == 0 {
                continue;
            }
            let usable = filter.as_ref().filter(|(k, _)| *k <= n).map(|(_, rep)| rep.as_slice());
            let dup = if n >= clean_from { 0 } else { dup_gram_chars(g, n, usable, &mut table) };
            if dup == 0 {
                clean_from = clean_from.min(n);
            }
            let share = dup as f64 / text_len as f64;
            if share > frac {
                let rule = gram_rule(&DUP_GRAM_RULES, n, "gopher_duplicated_n_n_grams");
                return Err(Drop::new(rule, format!("repeated {n}-grams cover {share:.3} of the characters > {frac}")));
            }
        }
        Ok(())
    }
}

/// datatrove's `find_duplicates` and the two fractions checked on it.
fn check_duplicates(
    items: &[&str],
    text_len: usize,
    what: &str,
    (frac_rule, frac, char_rule, char_frac): (&'static str, Option<f64>, &'static str, Option<f64>),
) -> Result<(), Drop> {
    if on(frac).is_none() && on(char_frac).is_none() {
        return Ok(());
    }
    let mut seen = FxStrSet::with_capacity_and_hasher(items.len(), FxBuild::default());
    let (mut dups, mut dup_chars) = (0usize, 0usize);
    for &item in items {
        if !seen.insert(item) {
            dups += 1;
            dup_chars += item.chars().count();
        }
    }
    let share = dups as f64 / items.len().max(1) as f64;
    if let Some(max) = on(frac).filter(|&m| share > m) {
        return Err(Drop::new(frac_rule, format!("{dups} of {} {what} repeat an earlier one ({share:.3} > {max})", items.len())));
    }
    let share = dup_chars as f64 / text_len as f64;
    if let Some(max) = on(char_frac).filter(|&m| share > m) {
        return Err(Drop::new(char_rule, format!("repeated {what} cover {share:.3} of the characters > {max}")));
    }
    Ok(())
}
/// The words of a document as hashes, with prefix sums over positions of what
/// the n-gram rules need.
struct Grams {
    hashes: Vec<u64>,
    /// Characters of words `0..i`.
    chars: Vec<usize>,
    /// Words `0..i` that occur once in the document.
    singles: Vec<usize>,
    /// `count × (characters + 1)` of words `0..i`: the n-gram at `i` times its count is
    /// at most the sum over its words (each occurs at least as often as the n-gram).
    mass: Vec<usize>,
}

impl Grams {
    /// Word counts come from a table without collision handling: a count may be too
    /// high, never too low, so `singles` and `mass` stay safe bounds.
    fn new(words: &[&str]) -> Self {
        let mut chars = Vec::with_capacity(words.len() + 1);
        chars.push(0);
        let mut total = 0;
        let hashes: Vec<u64> = words
            .iter()
            .map(|w| {
                total += if w.is_ascii() { w.len() } else { w.chars().count() };
                chars.push(total);
                word_hash(w)
            })
            .collect();
        let size = (hashes.len() * 8).next_power_of_two().clamp(64, 1 << 18);
        let mut counts = vec![0u32; size];
        hashes.iter().for_each(|&h| counts[h as usize & (size - 1)] += 1);
        let (mut singles, mut mass) = (Vec::with_capacity(hashes.len() + 1), Vec::with_capacity(hashes.len() + 1));
        let (mut one, mut m) = (0, 0);
        singles.push(0);
        mass.push(0);
        for (i, &h) in hashes.iter().enumerate() {
            let count = counts[h as usize & (size - 1)] as usize;
            one += (count == 1) as usize;
            m += count * (chars[i + 1] - chars[i] + 1);
            singles.push(one);
            mass.push(m);
        }
        Self { hashes, chars, singles, mass }
    }

    fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The n-gram at `i` as one hash.
    fn key(&self, i: usize, n: usize) -> u64 {
        let h = self.hashes[i..i + n].iter().fold(n as u64, |h, &w| (h.rotate_left(23) ^ w).wrapping_mul(FX_K));
        mix64(h)
    }

    /// Characters of the words of the n-gram at `i` (no separators).
    fn chars(&self, i: usize, n: usize) -> usize {
        self.chars[i + n] - self.chars[i]
    }

    /// Whether the n-gram at `i` may occur twice: none of its words occurs once.
    fn may_repeat(&self, i: usize, n: usize) -> bool {
        self.singles[i + n] == self.singles[i]
    }

    /// An upper bound on an n-gram's count times its length joined with spaces.
    fn most_mass(&self, n: usize) -> usize {
        (0..self.len() + 1 - n).map(|i| self.mass[i + n] - self.mass[i]).max().unwrap_or(0)
    }
}

/// A word's hash.
fn word_hash(w: &str) -> u64 {
    let b = w.as_bytes();
    let len = (b.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    match b.len() {
        0 => 0,
        1..=8 => mix64(small_load(b).wrapping_add(len)),
        _ => mix64(hash_bytes(len, b)),
    }
}

/// Open addressing from hashes to (count, first position), reused for each n.
#[derive(Default)]
struct GramTable {
    slots: Vec<Slot>,
    mask: usize,
}

#[derive(Clone, Copy, Default)]
struct Slot {
    key: u64,
    count: u32,
    first: u32,
}

impl GramTable {
    /// Empties the table, with room for `n` keys.
    fn reset(&mut self, n: usize) {
        let cap = (n * 2).next_power_of_two().max(8);
        self.slots.clear();
        self.slots.resize(cap, Slot::default());
        self.mask = cap - 1;
    }

    /// The slot of `key` (0 is taken for empty), and whether it was added (with
    /// count 0 and first position `pos`).
    fn slot(&mut self, key: u64, pos: usize) -> (usize, bool) {
        let key = key.max(1);
        let mut i = (key >> 20) as usize & self.mask;
        loop {
            let s = &mut self.slots[i];
            if s.key == key {
                return (i, false);
            }
            if s.key == 0 {
                *s = Slot { key, count: 0, first: pos as u32 };
                return (i, true);
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// Positions `0..` whose n-gram may occur twice: no word of it occurs once, and
/// `filter` (whether a shorter n-gram there occurs twice) allows it.
fn candidates<'g>(g: &'g Grams, n: usize, filter: Option<&'g [bool]>) -> impl Fn(usize) -> bool + 'g {
    move |i: usize| g.may_repeat(i, n) && filter.is_none_or(|r| r[i])
}

/// datatrove's `find_top_duplicate`: the count of the most frequent n-gram (the
/// first seen among ties) times its length joined with spaces. Also returns which
/// positions hold an n-gram that occurs twice or more.
fn top_gram(g: &Grams, n: usize, filter: Option<&[bool]>, table: &mut GramTable) -> (usize, Vec<bool>) {
    let positions = g.len() + 1 - n;
    let candidate = candidates(g, n, filter);
    let count = (0..positions).filter(|&i| candidate(i)).count();
    table.reset(count);
    // All n-grams occurring once: the first one, once.
    let (mut best, mut first) = (1u32, 0u32);
    let mut slots = vec![usize::MAX; positions];
    for i in (0..positions).filter(|&i| count > 0 && candidate(i)) {
        let (s, _) = table.slot(g.key(i, n), i);
        let slot = &mut table.slots[s];
        slot.count += 1;
        if slot.count > best || (slot.count == best && slot.first < first) {
            (best, first) = (slot.count, slot.first);
        }
        slots[i] = s;
    }
    let repeated = slots.iter().map(|&s| s != usize::MAX && table.slots[s].count >= 2).collect();
    (best as usize * (g.chars(first as usize, n) + n - 1), repeated)
}

/// datatrove's `find_all_duplicate`: characters of n-grams seen before, scanning
/// left to right and jumping over a repeat.
fn dup_gram_chars(g: &Grams, n: usize, filter: Option<&[bool]>, table: &mut GramTable) -> usize {
    let positions = (g.len() + 1).saturating_sub(n);
    let candidate = candidates(g, n, filter);
    let count = (0..positions).filter(|&i| candidate(i)).count();
    if count == 0 {
        return 0;
    }
    table.reset(count);
    let (mut i, mut chars) = (0, 0);
    while i < positions {
        if !candidate(i) {
            i += 1; // occurs once in the document: neither a repeat nor repeated later
            continue;
        }
        if table.slot(g.key(i, n), i).1 {
            i += 1;
        } else {
            chars += g.chars(i, n);
            i += n;
        }
    }
    chars
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::tests::{rule, PROSE};

    #[test]
    fn gopher_repetition_keeps_prose() {
        assert_eq!(rule(GopherRepetitionConfig::default().check(PROSE)), "kept");
        assert_eq!(rule(GopherRepetitionConfig::default().check("")), "kept");
    }

    #[test]
    fn gopher_repetition_lines_and_paragraphs() {
        let r = GopherRepetitionConfig::default();
        let menu = "Home page and contact details for the shop";
        let lines: Vec<&str> = PROSE.lines().collect();
        let dup_lines = format!("{}\n{menu}\n{menu}\n{menu}\n{menu}\n{menu}", lines.join("\n"));
        assert_eq!(rule(r.check(&dup_lines)), "gopher_dup_line_frac");
        let long = lines[0].repeat(3);
        let dup_line_chars = format!("{}\n{long}\n{long}", lines.join("\n"));
        assert_eq!(rule(r.check(&dup_line_chars)), "gopher_dup_line_char_frac");
        let dup_paras = format!("{}\n\n{menu}\n\n{menu}\n\n{menu}\n\n{menu}\n\n{menu}", lines.join("\n\n"));
        assert_eq!(rule(r.check(&dup_paras)), "gopher_dup_para_frac");
        let dup_para_chars = format!("{}\n\n{long}\n\n{long}", lines.join("\n\n"));
        assert_eq!(rule(r.check(&dup_para_chars)), "gopher_dup_para_char_frac");
        let off = GopherRepetitionConfig { dup_para_frac: None, dup_para_char_frac: None, ..Default::default() };
        assert_eq!(rule(off.check(&dup_paras)), "gopher_dup_line_frac", "blank lines are not lines");
    }

    #[test]
    fn gopher_repetition_n_grams() {
        let r = GopherRepetitionConfig::default();
        assert_eq!(rule(r.check(&"buy now ".repeat(40))), "gopher_top_2_gram");
        let distinct = |tag: &str, n: usize| (0..n).map(|i| format!("{tag}{i}")).collect::<Vec<_>>().join(" ");
        let (a, b) = (distinct("alpha", 300), distinct("beta", 150));
        assert_eq!(rule(r.check(&format!("{a} {b}"))), "kept");
        assert_eq!(rule(r.check(&format!("{a} {b} {b}"))), "gopher_duplicated_5_n_grams");
        let off = GopherRepetitionConfig { dup_n_grams: vec![(6, 0.14)], ..Default::default() };
        assert_eq!(rule(off.check(&format!("{a} {b} {b}"))), "gopher_duplicated_6_n_grams");
        let three = GopherRepetitionConfig { top_n_grams: vec![(3, 0.18)], ..Default::default() };
        assert_eq!(rule(three.check(&"buy it now ".repeat(40))), "gopher_top_3_gram");
    }

    #[test]
    fn n_gram_counts_match_datatrove() {
        let w = ["a", "b", "a", "b", "c", "a", "b"];
        let g = Grams::new(&w);
        let mut table = GramTable::default();
        // "a b" three times, 3 characters: 9.
        let (top, rep) = top_gram(&g, 2, None, &mut table);
        assert_eq!(top, 9);
        assert_eq!(rep, [true, false, true, false, false, true]);
        // All 3-grams differ except none: "a b a", "b a b", "a b c", "b c a", "c a b": first one, once.
        let (top, _) = top_gram(&g, 3, Some(&rep), &mut table);
        assert_eq!(top, 5);
        // Greedy: "ab" at 0 new, "ba" new, "ab" at 2 repeat (+2, jump to 4), "ca" new, "ab" at 5 repeat (+2).
        assert_eq!(dup_gram_chars(&g, 2, None, &mut table), 4);
        assert_eq!(dup_gram_chars(&g, 2, Some(&rep), &mut table), 4);
    }
}
