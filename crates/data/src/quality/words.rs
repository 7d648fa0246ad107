//! English words as spaCy splits them.
//!
//! datatrove splits English words with spaCy's blank `en` tokenizer (spaCy 3.8). Here
//! [`split_words`] is a re-implementation of that tokenizer's rules, returning slices of
//! the text:
//!
//! * the text is split at whitespace (Python's `str.isspace`);
//! * from each piece, prefixes are split off one at a time: `( [ { < " ' “ ‘ « $ £ € # * & % = § — – , : ; ! ?`,
//!   `+` not before a digit, `US$ C$ A$`, runs of two or more dots, `…`, symbols and emoji;
//! * then suffixes, from the end: the same punctuation and quotes (not currency, `%`, `=`, `§`), `'s`/`’s`,
//!   runs of dots, a unit, currency sign or `+` right after a digit (`10km` → `10 km`, `5%` → `5 %`), and a
//!   single `.` after a lowercase letter, a digit, punctuation, a quote, `% ² - +` or two capitals (`end.` →
//!   `end .`, but `A.` and `U.S.` stay whole);
//! * spaCy's English exceptions stay whole or split as spaCy does: abbreviations (`Mr.`, `e.g.`, `Inc.`,
//!   `a.`, ...), emoticons, `and/or`; contractions `don't` → `do n't`, `I'm` → `I 'm` (and `'ll 're 've 'd`),
//!   also without the apostrophe (`dont` → `do nt`, `gonna` → `gon na`, `cannot` → `can not`), `5pm` → `5 pm`;
//! * what is left is one word unless it looks like a URL or e-mail address (kept whole) or has an infix: a hyphen
//!   between letters (`well-known` → `well - known`), `, : < > = /` between letters, an operator between digits
//!   (`3-4` → `3 - 4`), `.` between a lowercase and a capital letter, `...`/`…`, a symbol;
//! * adjacent words of one piece that together are an exception are joined (`2004):` → `2004 ):`).
//!
//! "Letters" are spaCy's `ALPHA` list (Latin, Greek, Cyrillic, CJK, ... ranges). So `"Hello,
//! world."` gives four words (`Hello` `,` `world` `.`), and punctuation words count in
//! Gopher's word-based ratios as they do in datatrove.

use super::chars::{
    char_at, first_char, is_alpha, is_icon, is_lower, is_prefix_char, is_punct_class, is_quote, is_suffix_char, is_upper, last_char, BREAK,
    BYTE_CLASS, LETTER, MAYBE_BREAK, MAYBE_SPACE, OTHER, SPACE,
};
use super::hash::FxStrSet;
use super::pystr::is_space;
use super::tables::{BARE_CONTRACTIONS, SPECIAL_WHOLE};
use std::sync::LazyLock;

thread_local! {
    /// The last text split into words on this thread, with its words' byte spans, so
    /// that the repetition and quality rules, run one after the other on a document,
    /// split it once.
    static LAST_SPLIT: std::cell::RefCell<(String, Vec<(usize, usize)>)> = const {
        std::cell::RefCell::new((String::new(), Vec::new()))
    };
}

/// [`split_words`], reusing this thread's last split when it was of the same text.
pub(super) fn words_of(text: &str) -> Vec<&str> {
    if text.is_empty() {
        return Vec::new();
    }
    LAST_SPLIT.with(|last| {
        let mut last = last.borrow_mut();
        let (last_text, spans) = &mut *last;
        if last_text != text {
            // The text last, so that the cache never pairs a text with spans of another.
            last_text.clear();
            spans.clear();
            let base = text.as_ptr() as usize;
            for_each_word(text, &mut |w| {
                let start = w.as_ptr() as usize - base;
                spans.push((start, start + w.len()));
            });
            last_text.push_str(text);
        }
        spans.iter().map(|&(start, end)| &text[start..end]).collect()
    })
}

/// The words of `text` as spaCy's English tokenizer would split them (see the
/// module docs), as slices of `text`.
pub fn split_words(text: &str) -> Vec<&str> {
    let mut words = Vec::with_capacity(text.len() / 5 + 1);
    for_each_word(text, &mut |w| words.push(w));
    words
}

pub(super) fn for_each_word<'a>(text: &'a str, f: &mut impl FnMut(&'a str)) {
    let b = text.as_bytes();
    let mut scratch = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let space = space_len(text, i);
        if space > 0 {
            i += space;
            continue;
        }
        let start = i;
        i += ascii_letters(&b[i..]);
        let mut letters_only = true;
        while i < b.len() {
            let class = BYTE_CLASS[b[i] as usize];
            if class == LETTER {
                i += 1;
                continue;
            }
            if class != OTHER && space_len(text, i) > 0 {
                break;
            }
            letters_only = false;
            i += 1;
        }
        let chunk = &text[start..i];
        if letters_only {
            emit_letters(chunk, f);
        } else if !fast_chunk(chunk, f) {
            general_chunk(chunk, &mut scratch);
            merge_specials(chunk, &scratch, f);
            scratch.clear();
        }
    }
}

/// How many ASCII letters `b` starts with, counted eight bytes at a time.
fn ascii_letters(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut n = 0;
    while n + 8 <= b.len() {
        let w = u64::from_le_bytes([b[n], b[n + 1], b[n + 2], b[n + 3], b[n + 4], b[n + 5], b[n + 6], b[n + 7]]);
        // Lower-cased, without the high bits: each byte's high bit then says `>= 'a'`, `>= '{'`.
        let x = (w | (0x20 * ONES)) & !HIGH;
        let from_a = x + (0x80 - b'a' as u64) * ONES;
        let past_z = x + (0x80 - b'z' as u64 - 1) * ONES;
        let letters = from_a & !past_z & !w & HIGH;
        if letters != HIGH {
            return n + ((!letters & HIGH).trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    n + b[n..].iter().take_while(|c| c.is_ascii_alphabetic()).count()
}

/// Bytes of the space character at `i` (0: not a space).
fn space_len(text: &str, i: usize) -> usize {
    match BYTE_CLASS[text.as_bytes()[i] as usize] {
        SPACE | BREAK => 1,
        MAYBE_SPACE | MAYBE_BREAK => {
            let c = char_at(text, i);
            if is_space(c) {
                c.len_utf8()
            } else {
                0
            }
        }
        _ => 0,
    }
}

/// A word of ASCII letters: itself, or a bare contraction's parts.
fn emit_letters<'a>(w: &'a str, f: &mut impl FnMut(&'a str)) {
    match bare_contraction(w.as_bytes()) {
        Some(cuts) => emit_cuts(w, cuts, f),
        None => f(w),
    }
}

/// The common case without spaCy's general rules: ASCII letters or digits,
/// maybe after `"`/`(` and before simple punctuation (each its own word).
/// `false`, with nothing emitted, when the chunk needs the general rules.
fn fast_chunk<'a>(chunk: &'a str, f: &mut impl FnMut(&'a str)) -> bool {
    let b = chunk.as_bytes();
    let lead = b.iter().take_while(|&&c| c == b'"' || c == b'(').count();
    let letters = b[lead..].iter().take_while(|c| c.is_ascii_alphabetic()).count();
    let len = if letters > 0 { letters } else { b[lead..].iter().take_while(|c| c.is_ascii_digit()).count() };
    let core_end = lead + len;
    let tail = &b[core_end..];
    let emoticon_risk =
        (b[..lead].contains(&b'(') && tail.iter().any(|&c| c == b':' || c == b';')) || (letters == 0 && tail.first() == Some(&b')'));
    if len == 0 || emoticon_risk || !simple_tail(&b[..core_end], tail) {
        return false;
    }
    // spaCy's exceptions of letters and a dot are one letter, or start with a capital, or are
    // "co." or "vs."; those of letters and an apostrophe end in "in'" or are "ol'".
    let core = &chunk[lead..core_end];
    let maybe_special = match tail.first() {
        Some(b'.') => len == 1 || b[lead].is_ascii_uppercase() || matches!(core, "co" | "vs"),
        Some(b'\'') => core.ends_with("in") || matches!(core, "ol" | "Ol"),
        _ => false,
    };
    let abbreviation = letters > 0 && len < 10 && maybe_special && SPECIAL_WHOLE_SET.contains(&chunk[lead..core_end + 1]);
    let core_end = core_end + abbreviation as usize;
    (0..lead).for_each(|i| f(&chunk[i..i + 1]));
    if letters > 0 && !abbreviation {
        emit_letters(&chunk[lead..core_end], f);
    } else {
        f(&chunk[lead..core_end]);
    }
    (core_end..chunk.len()).for_each(|i| f(&chunk[i..i + 1]));
    true
}

/// Whether each byte of `tail` is a one-character suffix after `head`: `, ! ? " ' ) : ;`,
/// and `.` where spaCy splits it off; no `''`, `..` or emoticon (`:)`).
fn simple_tail(head: &[u8], tail: &[u8]) -> bool {
    let n = head.len();
    let (mut p2, mut p1) = (if n >= 2 { head[n - 2] } else { 0 }, head[n - 1]);
    let (mut colon, mut close) = (false, false);
    for &c in tail {
        let ok = match c {
            b',' | b'!' | b'?' | b'"' => true,
            b'\'' => p1 != b'\'',
            b')' => {
                close = true;
                true
            }
            b':' | b';' => {
                colon = true;
                true
            }
            b'.' => {
                p1 != b'.'
                    && (p1.is_ascii_lowercase()
                        || p1.is_ascii_digit()
                        || !p1.is_ascii_alphanumeric()
                        || (p1.is_ascii_uppercase() && p2.is_ascii_uppercase()))
            }
            _ => false,
        };
        if !ok {
            return false;
        }
        (p2, p1) = (p1, c);
    }
    !(colon && close)
}

/// spaCy's `Tokenizer._split_affixes` and `_attach_tokens` for one chunk.
fn general_chunk<'a>(chunk: &'a str, out: &mut Vec<&'a str>) {
    let mut s = chunk;
    let mut suffixes = Suffixes { inline: [""; 4], len: 0, more: Vec::new() };
    let mut special = None;
    while !s.is_empty() {
        special = special_case(s);
        if special.is_some() {
            break;
        }
        let pre = prefix_len(s);
        if pre > 0 && pre < s.len() {
            special = special_case(&s[pre..]);
            if special.is_some() {
                out.push(&s[..pre]);
                s = &s[pre..];
                break;
            }
        }
        let suf = if pre < s.len() { suffix_len(&s[pre..]) } else { 0 };
        if suf > 0 && suf < s.len() {
            special = special_case(&s[..s.len() - suf]);
            if special.is_some() {
                suffixes.push(&s[s.len() - suf..]);
                s = &s[..s.len() - suf];
                break;
            }
        }
        if pre == 0 && suf == 0 {
            break;
        }
        if pre > 0 {
            out.push(&s[..pre]);
        }
        if suf > 0 {
            suffixes.push(&s[s.len() - suf..]);
        }
        s = &s[pre..s.len() - suf];
    }
    match special {
        Some(cuts) => emit_cuts(s, cuts, &mut |w| out.push(w)),
        None if s.is_empty() => {}
        None if is_url(s) => out.push(s),
        None => split_infixes(s, out),
    }
    suffixes.emit(out);
}

/// Up to a few suffixes held back while the rest of a chunk is split.
struct Suffixes<'a> {
    inline: [&'a str; 4],
    len: usize,
    more: Vec<&'a str>,
}

impl<'a> Suffixes<'a> {
    fn push(&mut self, s: &'a str) {
        if self.len < self.inline.len() {
            self.inline[self.len] = s;
            self.len += 1;
        } else {
            self.more.push(s);
        }
    }

    /// The suffixes in text order.
    fn emit(&self, out: &mut Vec<&'a str>) {
        out.extend(self.more.iter().rev());
        out.extend(self.inline[..self.len].iter().rev());
    }
}

/// spaCy's special-case matcher: adjacent words of one chunk that together are
/// a special case (`2004):` → `2004` `):`) become one word.
fn merge_specials<'a>(chunk: &'a str, words: &[&'a str], f: &mut impl FnMut(&'a str)) {
    let offset = |w: &str| w.as_ptr() as usize - chunk.as_ptr() as usize;
    let mut i = 0;
    while i < words.len() {
        let start = offset(words[i]);
        let merged = (i + 1..words.len().min(i + 8)).rev().find_map(|j| {
            let joined = &chunk[start..offset(words[j]) + words[j].len()];
            (joined.len() <= SPECIAL_MAX_LEN && SPECIAL_WHOLE_SET.contains(joined)).then_some((j, joined))
        });
        match merged {
            Some((j, joined)) => {
                f(joined);
                i = j + 1;
            }
            None => {
                f(words[i]);
                i += 1;
            }
        }
    }
}

/// Where a special case splits: up to two byte offsets, 0 for none.
type Cuts = [usize; 2];

fn emit_cuts<'a>(s: &'a str, cuts: Cuts, f: &mut impl FnMut(&'a str)) {
    let mut start = 0;
    for cut in cuts.into_iter().filter(|&c| c > 0 && c < s.len()) {
        f(&s[start..cut]);
        start = cut;
    }
    f(&s[start..]);
}

static SPECIAL_WHOLE_SET: LazyLock<FxStrSet<'static>> = LazyLock::new(|| SPECIAL_WHOLE.iter().copied().collect());
const SPECIAL_MAX_LEN: usize = 30;

/// [`BARE_CONTRACTIONS`] as (word packed into a `u128`, cuts), sorted.
static BARE_TABLE: LazyLock<Vec<(u128, Cuts)>> = LazyLock::new(|| {
    let mut table: Vec<(u128, Cuts)> = BARE_CONTRACTIONS
        .split_whitespace()
        .map(|entry| {
            let mut cuts = [0; 2];
            let mut at = 0;
            for (k, part) in entry.split('|').take(2).enumerate() {
                at += part.len();
                cuts[k] = at;
            }
            (pack(entry.replace('|', "").as_bytes()), cuts)
        })
        .collect();
    table.sort_unstable_by_key(|e| e.0);
    table
});

/// The [`bare_sketch`]es of [`BARE_CONTRACTIONS`] as a bit set: rules out most words at once.
static BARE_SKETCHES: [u64; 64] = {
    let src = BARE_CONTRACTIONS.as_bytes();
    let mut bits = [0u64; 64];
    let mut word = [0u8; 16];
    let (mut n, mut i) = (0, 0);
    while i <= src.len() {
        let c = if i < src.len() { src[i] } else { b' ' };
        if c == b' ' {
            if n > 0 {
                let k = bare_sketch(word.split_at(n).0);
                bits[k / 64] |= 1 << (k % 64);
                n = 0;
            }
        } else if c != b'|' {
            word[n] = c;
            n += 1;
        }
        i += 1;
    }
    bits
};

/// Up to 16 bytes as a number (zero-padded).
fn pack(b: &[u8]) -> u128 {
    let mut buf = [0u8; 16];
    buf[..b.len()].copy_from_slice(b);
    u128::from_le_bytes(buf)
}

/// A 12-bit digest of a word: length, first two (the first lower-cased) and last letters.
const fn bare_sketch(b: &[u8]) -> usize {
    let h = (b.len() as u32).wrapping_mul(0x9e37_79b9)
        ^ (b[0].to_ascii_lowercase() as u32).wrapping_mul(0x85eb_ca6b)
        ^ (b[1] as u32).wrapping_mul(0xc2b2_ae35)
        ^ (b[b.len() - 1] as u32).wrapping_mul(0x27d4_eb2f);
    (h.wrapping_mul(0x1656_67b1) >> 20) as usize
}

/// Where a word of ASCII letters splits as a bare contraction (`dont` → `do nt`).
fn bare_contraction(b: &[u8]) -> Option<Cuts> {
    let n = b.len();
    if !(2..=10).contains(&n) || !matches!(b[n - 1], b't' | b'a' | b'e' | b'l' | b'd' | b's' | b'm') {
        return None;
    }
    let k = bare_sketch(b);
    if BARE_SKETCHES[k / 64] & (1 << (k % 64)) == 0 {
        return None;
    }
    let table = &*BARE_TABLE;
    let key = pack(b) | (b[0].to_ascii_lowercase() as u128);
    table.binary_search_by_key(&key, |e| e.0).ok().map(|i| table[i].1)
}

/// A spaCy special case for the whole of `s`, with its cuts.
fn special_case(s: &str) -> Option<Cuts> {
    if s.len() <= SPECIAL_MAX_LEN && SPECIAL_WHOLE_SET.contains(s) {
        return Some([0, 0]);
    }
    if let Some(at) = contraction(s) {
        return Some([at, 0]);
    }
    let digits = s.bytes().take_while(u8::is_ascii_digit).count();
    if digits > 0 {
        let hour = s[..digits].parse::<u32>().is_ok_and(|h| (1..=12).contains(&h));
        return (hour && matches!(&s[digits..], "am" | "pm" | "a.m." | "p.m.")).then_some([digits, 0]);
    }
    if s.bytes().all(|b| b.is_ascii_alphabetic()) {
        return bare_contraction(s.as_bytes());
    }
    match s {
        "y'all" => Some([2, 0]),
        "y’all" => Some(["y’".len(), 0]),
        "°C." | "°F." | "°K." | "°c." | "°f." | "°k." => Some(["°".len(), "°C".len()]),
        _ => None,
    }
}

/// Where a contraction splits: `don't` → `do` `n't`, `I'm` → `I` `'m` (and `’`),
/// for the words spaCy lists (those of [`BARE_CONTRACTIONS`] with an apostrophe).
fn contraction(s: &str) -> Option<usize> {
    const ENDINGS: [(&str, &str); 12] = [
        ("n't", "nt"),
        ("n’t", "nt"),
        ("'ll", "ll"),
        ("’ll", "ll"),
        ("'ve", "ve"),
        ("’ve", "ve"),
        ("'re", "re"),
        ("’re", "re"),
        ("'d", "d"),
        ("’d", "d"),
        ("'m", "m"),
        ("’m", "m"),
    ];
    if !s.contains(['\'', '’']) {
        return None;
    }
    let (ending, bare_ending) = ENDINGS.iter().find(|(e, _)| s.ends_with(e))?;
    let stem = &s.as_bytes()[..s.len() - ending.len()];
    let len = stem.len() + bare_ending.len();
    if stem.is_empty() || len > 16 || !stem.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let mut bare = [0u8; 16];
    bare[..stem.len()].copy_from_slice(stem);
    bare[stem.len()..len].copy_from_slice(bare_ending.as_bytes());
    let bare = &mut bare[..len];
    let known = bare_contraction(bare).is_some() || {
        // Real words spaCy leaves out of its bare forms, keeping the apostrophe ones.
        bare[0] = bare[0].to_ascii_lowercase();
        matches!(&*bare, b"ill" | b"hell" | b"shell" | b"shed" | b"were" | b"well" | b"whore")
    };
    known.then_some(stem.len())
}

/// Bytes of the prefix at the start of `s` (0: none).
fn prefix_len(s: &str) -> usize {
    let b = s.as_bytes();
    match b[0] {
        b'.' => {
            let dots = b.iter().take_while(|&&c| c == b'.').count();
            if dots >= 2 {
                dots
            } else {
                0
            }
        }
        b'+' => (!b.get(1).is_some_and(u8::is_ascii_digit)) as usize,
        b'U' if s.starts_with("US$") => 3,
        b'C' | b'A' if b.get(1) == Some(&b'$') => 2,
        _ => {
            let c = first_char(s);
            if is_prefix_char(c) {
                c.len_utf8()
            } else {
                0
            }
        }
    }
}

/// Bytes of the suffix at the end of `s` (0: none): of spaCy's suffix patterns,
/// the one that starts first.
fn suffix_len(s: &str) -> usize {
    let last = last_char(s);
    if last == '.' {
        let dots = s.bytes().rev().take_while(|&c| c == b'.').count();
        if dots >= 2 {
            return dots;
        }
        let mut before = s[..s.len() - 1].chars().rev();
        return match (before.next(), before.next()) {
            (Some(p), _) if splits_before_dot(p) => 1,
            (Some(p), Some(q)) if p.is_uppercase() && q.is_uppercase() => 1,
            (Some('F' | 'f' | 'C' | 'c' | 'K' | 'k'), Some('°')) => 1,
            _ => 0,
        };
    }
    if s.ends_with("……") {
        return "……".len();
    }
    if let Some(t) = ["'s", "'S", "’s", "’S"].iter().find(|t| s.ends_with(*t)) {
        return t.len();
    }
    let unit = unit_after_digit(s);
    if unit > 0 {
        return unit;
    }
    if is_suffix_char(last) {
        last.len_utf8()
    } else {
        0
    }
}

/// spaCy's `(?<=[0-9])(?:units|currency|\+)` suffixes: bytes of the unit.
fn unit_after_digit(s: &str) -> usize {
    let Some(d) = s.bytes().rposition(|b| b.is_ascii_digit()) else { return 0 };
    let tail = &s[d + 1..];
    let unit = matches!(
        tail,
        "km" | "km²"
            | "km³"
            | "m"
            | "m²"
            | "m³"
            | "dm"
            | "dm²"
            | "dm³"
            | "cm"
            | "cm²"
            | "cm³"
            | "mm"
            | "mm²"
            | "mm³"
            | "ha"
            | "µm"
            | "nm"
            | "yd"
            | "in"
            | "ft"
            | "kg"
            | "g"
            | "mg"
            | "µg"
            | "t"
            | "lb"
            | "oz"
            | "m/s"
            | "km/h"
            | "kmh"
            | "mph"
            | "hPa"
            | "Pa"
            | "mbar"
            | "mb"
            | "MB"
            | "kb"
            | "KB"
            | "gb"
            | "GB"
            | "tb"
            | "TB"
            | "T"
            | "G"
            | "M"
            | "K"
            | "%"
            | "+"
            | "$"
            | "£"
            | "€"
            | "¥"
            | "฿"
            | "US$"
            | "C$"
            | "A$"
            | "₽"
            | "﷼"
            | "₴"
            | "₹"
            | "₩"
            | "₪"
    );
    if unit {
        tail.len()
    } else {
        0
    }
}

/// spaCy's lookbehind for a final `.`: `[0-9 lowercase % ² - + punctuation quotes]`.
fn splits_before_dot(p: char) -> bool {
    p.is_ascii_digit() || is_lower(p) || matches!(p, '%' | '²' | '-' | '+' | '|') || is_punct_class(p) || is_quote(p)
}

/// spaCy's infixes, splitting `s` into words.
fn split_infixes<'a>(s: &'a str, out: &mut Vec<&'a str>) {
    if s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return out.push(s);
    }
    let (mut start, mut i) = (0, 0);
    let mut prev: Option<char> = None;
    while i < s.len() {
        let c = char_at(s, i);
        let len = infix_len(&s[i..], c, prev);
        if len > 0 {
            if start < i {
                out.push(&s[start..i]);
            }
            out.push(&s[i..i + len]);
            start = i + len;
            i = start;
            prev = s[..i].chars().next_back();
        } else {
            i += c.len_utf8();
            prev = Some(c);
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
}

/// Bytes of the infix at the start of `rest` (0: none); `prev` is the character before.
fn infix_len(rest: &str, c: char, prev: Option<char>) -> usize {
    let next = rest[c.len_utf8()..].chars().next();
    let prev_alpha = prev.is_some_and(is_alpha);
    let prev_digit = prev.is_some_and(|p| p.is_ascii_digit());
    let next_alpha = next.is_some_and(is_alpha);
    match c {
        '.' => {
            let dots = rest.bytes().take_while(|&b| b == b'.').count();
            if dots >= 2 {
                dots
            } else {
                let before = prev.is_some_and(|p| is_lower(p) || is_quote(p));
                (before && next.is_some_and(|n| is_upper(n) || is_quote(n))) as usize
            }
        }
        '…' => c.len_utf8(),
        '+' | '*' | '^' => (prev_digit && next.is_some_and(|n| n.is_ascii_digit() || n == '-')) as usize,
        '-' if prev_digit && next.is_some_and(|n| n.is_ascii_digit() || n == '-') => 1,
        '-' | '–' | '—' | '~' if prev_alpha || prev_digit => hyphen_len(rest, c),
        ',' => (prev_alpha && next_alpha) as usize,
        ':' | '<' | '>' | '=' | '/' => ((prev_alpha || prev_digit) && next_alpha) as usize,
        c if is_icon(c) => c.len_utf8(),
        _ => 0,
    }
}

/// spaCy's hyphens (`- – — -- --- —— ~`) followed by a letter: bytes of the first that fits.
fn hyphen_len(rest: &str, c: char) -> usize {
    let max_run = match c {
        '-' => 3,
        '—' => 2,
        _ => 1,
    };
    let mut len = 0;
    for _ in 0..max_run {
        if !rest[len..].starts_with(c) {
            break;
        }
        len += c.len_utf8();
        if rest[len..].chars().next().is_some_and(is_alpha) {
            return len;
        }
    }
    0
}

/// spaCy's `URL_MATCH`, simplified: a scheme (`xx://`), or a host name with a
/// lowercase top-level domain, then an optional port and path.
fn is_url(s: &str) -> bool {
    let rest = match s.find("://") {
        Some(p) => {
            let scheme = &s[..p];
            if scheme.len() < 2 || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_')) {
                return false;
            }
            &s[p + 3..]
        }
        None => s,
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host_port = authority.rfind('@').map_or(authority, |k| &authority[k + 1..]);
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, ""));
    let port_ok = port.is_empty() || ((2..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()));
    let Some((labels, tld)) = host.rsplit_once('.') else { return false };
    let tld_ok = (2..=63).contains(&tld.chars().count()) && tld.chars().all(is_lower);
    let label_ok = |l: &str| {
        (1..=63).contains(&l.chars().count())
            && !l.starts_with(['-', '_'])
            && !l.ends_with(['-', '_'])
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || ('\u{a1}'..='\u{ffff}').contains(&c))
    };
    port_ok && tld_ok && labels.split('.').all(label_ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::sentences::count_sentences;

    fn words(s: &str) -> Vec<&str> {
        split_words(s)
    }

    #[test]
    fn words_follow_spacy() {
        assert_eq!(words("Hello, world."), ["Hello", ",", "world", "."]);
        assert_eq!(
            words("I don't think it's $10.50, Mr. Smith!"),
            ["I", "do", "n't", "think", "it", "'s", "$", "10.50", ",", "Mr.", "Smith", "!"]
        );
        assert_eq!(
            words("A well-known e-mail (see http://example.com/a-b)."),
            ["A", "well", "-", "known", "e", "-", "mail", "(", "see", "http://example.com/a-b", ")", "."]
        );
        assert_eq!(
            words("He paid 5% of 10km... U.S. e.g. \"quoted\" end.The"),
            ["He", "paid", "5", "%", "of", "10", "km", "...", "U.S.", "e.g.", "\"", "quoted", "\"", "end", ".", "The"]
        );
        assert_eq!(
            words("I'm gonna do it at 5pm; cannot wait!!"),
            ["I", "'m", "gon", "na", "do", "it", "at", "5", "pm", ";", "can", "not", "wait", "!", "!"]
        );
        assert_eq!(words("and/or 3-4 items: a,b #tag"), ["and/or", "3", "-", "4", "items", ":", "a", ",", "b", "#", "tag"]);
        assert_eq!(count_sentences("One sentence. Two sentences! Three? \"Four.\" Five (really)."), 5);
        assert_eq!(count_sentences("Mr. Smith went home. It was late."), 2);
    }
}
