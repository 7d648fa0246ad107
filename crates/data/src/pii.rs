//! PII redaction: e-mail addresses, phone numbers, IP addresses, payment-card
//! numbers, IBANs and (checksummed) national identity numbers are replaced by
//! placeholders such as `<EMAIL>`.
//!
//! Detection favours precision over recall: every rule asks for structure that
//! prose numbers (years, dates, prices, ISBNs, versions, plain counts) lack, and
//! where a checksum exists (Luhn for cards, mod 97 for IBANs, mod 23 for Spanish
//! DNI/NIE) it must pass. US social-security numbers carry no checksum and are
//! not detected.
//!
//! Rules run one after another on the output of the previous one, in this order:
//! e-mail, IP (v6 then v4), IBAN, payment card, national ID, phone. Placeholders
//! hold no digits, so a later rule never sees what an earlier one replaced (a
//! Luhn-valid card number is never counted as a phone number).

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::net::Ipv6Addr;
use std::ops::Range;
use std::sync::LazyLock;

/// PII redaction settings: one switch per kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PiiConfig {
    /// Whether the stage runs; resolved by the caller, [`PiiConfig::redact`] ignores it.
    pub enabled: Option<bool>,
    /// E-mail addresses.
    pub email: bool,
    /// Phone numbers (international `+`/`00` forms, `(area)` forms, trunk-`0`
    /// national forms and North-American `555-123-4567`).
    pub phone: bool,
    /// IPv4 and IPv6 addresses.
    pub ip: bool,
    /// Payment-card numbers (13–19 digits passing the Luhn check).
    pub credit_card: bool,
    /// National identity numbers that carry a checksum: Spanish DNI and NIE.
    pub national_id: bool,
    /// International bank account numbers (ISO 13616, mod-97 check).
    pub iban: bool,
}

impl Default for PiiConfig {
    fn default() -> Self {
        Self { enabled: None, email: true, phone: true, ip: true, credit_card: true, national_id: true, iban: true }
    }
}

/// A kind of personal data, with the placeholder that replaces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PiiKind {
    /// `<EMAIL>`
    Email,
    /// `<PHONE>`
    Phone,
    /// `<IP_ADDRESS>`
    Ip,
    /// `<CREDIT_CARD>`
    CreditCard,
    /// `<NATIONAL_ID>`
    NationalId,
    /// `<IBAN>`
    Iban,
}

impl PiiKind {
    /// Every kind, in the order counts are reported.
    pub const ALL: [PiiKind; 6] = [PiiKind::Email, PiiKind::Phone, PiiKind::Ip, PiiKind::CreditCard, PiiKind::NationalId, PiiKind::Iban];

    /// Short snake_case name, as used in statistics.
    pub fn name(&self) -> &'static str {
        match self {
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
            PiiKind::Ip => "ip",
            PiiKind::CreditCard => "credit_card",
            PiiKind::NationalId => "national_id",
            PiiKind::Iban => "iban",
        }
    }

    /// The text that replaces a match.
    pub fn placeholder(&self) -> &'static str {
        match self {
            PiiKind::Email => "<EMAIL>",
            PiiKind::Phone => "<PHONE>",
            PiiKind::Ip => "<IP_ADDRESS>",
            PiiKind::CreditCard => "<CREDIT_CARD>",
            PiiKind::NationalId => "<NATIONAL_ID>",
            PiiKind::Iban => "<IBAN>",
        }
    }
}

/// How many matches of each kind were replaced.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
pub struct PiiCounts {
    pub email: usize,
    pub phone: usize,
    pub ip: usize,
    pub credit_card: usize,
    pub national_id: usize,
    pub iban: usize,
}

impl PiiCounts {
    /// The count of one kind.
    pub fn get(&self, kind: PiiKind) -> usize {
        match kind {
            PiiKind::Email => self.email,
            PiiKind::Phone => self.phone,
            PiiKind::Ip => self.ip,
            PiiKind::CreditCard => self.credit_card,
            PiiKind::NationalId => self.national_id,
            PiiKind::Iban => self.iban,
        }
    }

    fn slot(&mut self, kind: PiiKind) -> &mut usize {
        match kind {
            PiiKind::Email => &mut self.email,
            PiiKind::Phone => &mut self.phone,
            PiiKind::Ip => &mut self.ip,
            PiiKind::CreditCard => &mut self.credit_card,
            PiiKind::NationalId => &mut self.national_id,
            PiiKind::Iban => &mut self.iban,
        }
    }

    /// Adds `other` into `self`, kind by kind.
    pub fn add(&mut self, other: &PiiCounts) {
        for kind in PiiKind::ALL {
            *self.slot(kind) += other.get(kind);
        }
    }

    /// All matches, every kind together.
    pub fn total(&self) -> usize {
        PiiKind::ALL.iter().map(|&k| self.get(k)).sum()
    }

    /// `(name, count)` for every kind, in [`PiiKind::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        PiiKind::ALL.iter().map(move |&k| (k.name(), self.get(k)))
    }
}

impl PiiConfig {
    /// Replaces every enabled kind of PII in `text` by its placeholder. Borrows
    /// `text` when nothing was found. Text with neither `@` nor an ASCII digit
    /// returns after one scan, without running any pattern.
    pub fn redact<'a>(&self, text: &'a str) -> (Cow<'a, str>, PiiCounts) {
        let mut counts = PiiCounts::default();
        let has_at = self.email && text.as_bytes().contains(&b'@');
        let has_digit = text.bytes().any(|b| b.is_ascii_digit());
        let mut out = Cow::Borrowed(text);
        if has_at {
            apply(&mut out, PiiKind::Email, &mut counts, find_emails);
        }
        if !has_digit {
            return (out, counts);
        }
        if self.ip {
            if out.contains(':') {
                apply(&mut out, PiiKind::Ip, &mut counts, find_ipv6);
            }
            if out.contains('.') {
                apply(&mut out, PiiKind::Ip, &mut counts, find_ipv4);
            }
        }
        if self.iban {
            apply(&mut out, PiiKind::Iban, &mut counts, find_ibans);
        }
        if self.credit_card {
            apply(&mut out, PiiKind::CreditCard, &mut counts, |t| find_in_runs(t, card_span_ok));
        }
        if self.national_id {
            apply(&mut out, PiiKind::NationalId, &mut counts, find_spanish_ids);
        }
        if self.phone {
            apply(&mut out, PiiKind::Phone, &mut counts, |t| find_in_runs(t, phone_span_ok));
        }
        (out, counts)
    }
}

/// Replaces the (sorted, disjoint) spans `find` returns by the kind's placeholder.
fn apply(out: &mut Cow<'_, str>, kind: PiiKind, counts: &mut PiiCounts, find: impl Fn(&str) -> Vec<Range<usize>>) {
    let spans = find(out);
    if spans.is_empty() {
        return;
    }
    let mut s = String::with_capacity(out.len());
    let mut last = 0;
    for r in &spans {
        s.push_str(&out[last..r.start]);
        s.push_str(kind.placeholder());
        last = r.end;
    }
    s.push_str(&out[last..]);
    *counts.slot(kind) += spans.len();
    *out = Cow::Owned(s);
}

fn compile(pattern: &str) -> Regex {
    // The patterns are constants checked by the tests; failing here is a programming error.
    Regex::new(pattern).unwrap_or_else(|e| panic!("bad PII pattern {pattern}: {e}"))
}

static EMAIL: LazyLock<Regex> =
    LazyLock::new(|| compile(r"[A-Za-z0-9][A-Za-z0-9._%+\-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"));
static IPV4: LazyLock<Regex> = LazyLock::new(|| compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}"));
static IPV6: LazyLock<Regex> = LazyLock::new(|| compile(r"[0-9A-Fa-f:]*:[0-9A-Fa-f]*:[0-9A-Fa-f:]*(?:(?:\.[0-9]{1,3}){3})?"));
static IBAN: LazyLock<Regex> = LazyLock::new(|| compile(r"[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{1,4}){3,8}"));
static SPANISH_ID: LazyLock<Regex> = LazyLock::new(|| compile(r"(?:[XYZ][- ]?[0-9]{7}|[0-9]{8}|[0-9]{2}\.[0-9]{3}\.[0-9]{3})[- ]?[A-Z]"));

fn char_before(text: &str, i: usize) -> Option<char> {
    text[..i].chars().next_back()
}

fn char_after(text: &str, i: usize) -> Option<char> {
    text[i..].chars().next()
}

fn is_word(c: Option<char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || c == '_')
}

/// `c` at `i` followed by an ASCII digit (a dot or dash inside a longer number).
fn joins_number(text: &str, i: usize) -> bool {
    text.as_bytes().get(i + 1).is_some_and(u8::is_ascii_digit)
}

fn find_emails(text: &str) -> Vec<Range<usize>> {
    EMAIL.find_iter(text).map(|m| m.range()).collect()
}

fn find_ipv4(text: &str) -> Vec<Range<usize>> {
    let b = text.as_bytes();
    IPV4.find_iter(text)
        .filter(|m| {
            let (s, e) = (m.start(), m.end());
            let before_ok = match char_before(text, s) {
                Some('.') | Some('-') => !(s >= 2 && b[s - 2].is_ascii_digit()),
                c => !is_word(c),
            };
            let after_ok = match char_after(text, e) {
                Some('.') | Some('-') => !joins_number(text, e),
                c => !is_word(c),
            };
            before_ok && after_ok && !after_version_word(text, s) && m.as_str().split('.').all(|o| o.parse::<u16>().is_ok_and(|v| v <= 255))
        })
        .map(|m| m.range())
        .collect()
}

/// The word before `i` (skipping spaces, `.` and `:`) names a version: `Driver
/// 14.0.1.0` and `Ver. 4.23.0.0` are version numbers, not addresses.
fn after_version_word(text: &str, i: usize) -> bool {
    const WORDS: [&str; 10] = ["v", "ver", "version", "build", "release", "firmware", "driver", "rev", "revision", "update"];
    let before = text[..i].trim_end_matches([' ', '.', ':']);
    let word = before.rsplit(|c: char| !c.is_alphabetic()).next().unwrap_or("");
    WORDS.iter().any(|w| w.eq_ignore_ascii_case(word))
}

fn find_ipv6(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    for m in IPV6.find_iter(text) {
        let (s, mut e) = (m.start(), m.end());
        let mut cand = m.as_str();
        // "fe80::1:" at the end of a clause: drop one trailing colon (not "::").
        if cand.ends_with(':') && !cand.ends_with("::") {
            cand = &cand[..cand.len() - 1];
            e -= 1;
        }
        if !cand.bytes().any(|b| b.is_ascii_digit()) || cand.parse::<Ipv6Addr>().is_err() {
            continue;
        }
        let before_ok = !matches!(char_before(text, s), Some(c) if c.is_alphanumeric() || matches!(c, '_' | ':' | '.'));
        let after_ok = match char_after(text, e) {
            Some('.') => !joins_number(text, e),
            c => !is_word(c),
        };
        if before_ok && after_ok {
            out.push(s..e);
        }
    }
    out
}

fn find_ibans(text: &str) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    for m in IBAN.find_iter(text) {
        if is_word(char_before(text, m.start())) {
            continue;
        }
        // Try the whole candidate, then shorter ones ending at a space (a trailing
        // upper-case word or number may have been taken in).
        let cand = m.as_str();
        let mut ends: Vec<usize> = cand.match_indices(' ').map(|(i, _)| i).collect();
        ends.push(cand.len());
        for &end in ends.iter().rev() {
            let span = &cand[..end];
            let pieces: Vec<&str> = span.split(' ').collect();
            let grouped = pieces.len() == 1
                || (pieces[0].len() == 4
                    && pieces[1..pieces.len() - 1].iter().all(|p| p.len() == 4)
                    && pieces.last().is_some_and(|p| !p.is_empty() && p.len() <= 4));
            let abs_end = m.start() + end;
            if grouped && !is_word(char_after(text, abs_end)) && iban_valid(span) {
                out.push(m.start()..abs_end);
                break;
            }
        }
    }
    out
}

/// ISO 13616: 15–34 characters, check digits 02–98, mod 97 of the rearranged number is 1.
fn iban_valid(s: &str) -> bool {
    let chars: Vec<u8> = s.bytes().filter(|&b| b != b' ').collect();
    if !(15..=34).contains(&chars.len()) {
        return false;
    }
    let check = (chars[2] - b'0') * 10 + (chars[3] - b'0');
    if !(2..=98).contains(&check) {
        return false;
    }
    let mut rem: u32 = 0;
    for &c in chars[4..].iter().chain(&chars[..4]) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            b'A'..=b'Z' => u32::from(c - b'A') + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

fn find_spanish_ids(text: &str) -> Vec<Range<usize>> {
    const LETTERS: &[u8; 23] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    SPANISH_ID
        .find_iter(text)
        .filter(|m| {
            let before_ok = match char_before(text, m.start()) {
                Some('.') | Some('-') | Some(',') | Some('/') => false,
                c => !is_word(c),
            };
            if !before_ok || is_word(char_after(text, m.end())) {
                return false;
            }
            let s = m.as_str().as_bytes();
            let mut n: u32 = match s[0] {
                b'X' => 0,
                b'Y' => 1,
                b'Z' => 2,
                _ => 0,
            };
            for &c in &s[..s.len() - 1] {
                if c.is_ascii_digit() {
                    n = n * 10 + u32::from(c - b'0');
                }
            }
            LETTERS[(n % 23) as usize] == s[s.len() - 1]
        })
        .map(|m| m.range())
        .collect()
}

// ----- digit runs: payment cards and phone numbers -----

/// A group of digits; `paren` groups are written `(123)` and their range includes the parentheses.
#[derive(Debug, Clone, Copy)]
struct Group {
    start: usize,
    end: usize,
    digits: usize,
    paren: bool,
}

/// Digit groups joined by single separators (`' '`, `-`, `.`, or nothing next to a
/// parenthesised group), optionally led by `+`.
#[derive(Debug, Default)]
struct Run {
    plus: Option<usize>,
    groups: Vec<Group>,
    /// `seps[i]` joins `groups[i]` and `groups[i + 1]`; `None` when they touch.
    seps: Vec<Option<u8>>,
    /// The text before the run may start a number (not a letter, `$`, `,`...).
    left_ok: bool,
    /// The text after the run may end a number.
    right_ok: bool,
}

fn parse_group(b: &[u8], p: usize) -> Option<Group> {
    if p >= b.len() {
        return None;
    }
    if b[p] == b'(' {
        let mut q = p + 1;
        while q < b.len() && b[q].is_ascii_digit() && q - p <= 5 {
            q += 1;
        }
        let digits = q - p - 1;
        if (1..=5).contains(&digits) && q < b.len() && b[q] == b')' {
            return Some(Group { start: p, end: q + 1, digits, paren: true });
        }
        return None;
    }
    if !b[p].is_ascii_digit() {
        return None;
    }
    let mut q = p;
    while q < b.len() && b[q].is_ascii_digit() {
        q += 1;
    }
    Some(Group { start: p, end: q, digits: q - p, paren: false })
}

/// Parses the run starting at `p` (a `+`, `(` or digit). Returns it and where it ends.
fn parse_run(text: &str, p: usize) -> (Run, usize) {
    let b = text.as_bytes();
    let mut run = Run::default();
    let mut q = p;
    if b[p] == b'+' {
        run.plus = Some(p);
        q += 1;
    }
    let Some(first) = parse_group(b, q) else {
        return (run, p + 1);
    };
    run.groups.push(first);
    q = first.end;
    loop {
        let last_paren = run.groups.last().is_some_and(|g| g.paren);
        let (sep, at) = match b.get(q) {
            Some(&c @ (b' ' | b'-' | b'.')) => (Some(c), q + 1),
            Some(b'(') => (None, q),
            Some(c) if last_paren && c.is_ascii_digit() => (None, q),
            _ => break,
        };
        match parse_group(b, at) {
            Some(g) => {
                run.seps.push(sep);
                run.groups.push(g);
                q = g.end;
            }
            None => break,
        }
    }
    let start = run.plus.unwrap_or(p);
    run.left_ok = match char_before(text, start) {
        None => true,
        Some(c) if c.is_alphanumeric() => false,
        Some(c) => !matches!(c, '_' | '.' | ',' | '-' | '/' | '\\' | '$' | '€' | '£' | '¥' | '₹' | '#' | '@' | '=' | '+' | '^' | '~'),
    };
    run.right_ok = match char_after(text, q) {
        None => true,
        Some('.') | Some(',') => !joins_number(text, q),
        Some(c) => !(c.is_alphanumeric() || matches!(c, '_' | '%' | '$' | '€' | '£' | '/' | '@')),
    };
    (run, q)
}

/// Span check: may `groups[i..=j]` stand alone inside the run? A neighbour
/// must be joined by a space that the span itself does not use as separator
/// (`4111 1111 1111 1111 1111` is one 20-digit number, not a card and a tail).
fn span_isolated(run: &Run, i: usize, j: usize, span_uses_space: bool) -> bool {
    let isolated = |s: Option<u8>| s == Some(b' ') && !span_uses_space;
    (if i == 0 { run.left_ok } else { isolated(run.seps[i - 1]) })
        && (if j + 1 == run.groups.len() { run.right_ok } else { isolated(run.seps[j]) })
}

fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (k, &d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if k % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum % 10 == 0
}

/// Payment card: 13–19 digits, a single group or ≥ 3 groups of ≥ 4 digits (the
/// last may be shorter) joined by one kind of separator (space or dash), first
/// digit 2–6 (the major networks), Luhn-valid.
fn card_span_ok(text: &str, run: &Run, i: usize, j: usize) -> bool {
    let groups = &run.groups[i..=j];
    let seps = &run.seps[i..j];
    if (i == 0 && run.plus.is_some()) || groups.iter().any(|g| g.paren) {
        return false;
    }
    let n = groups.len();
    if n == 2 || groups[..n - 1].iter().any(|g| g.digits < 4) {
        return false;
    }
    let sep = seps.first().copied().flatten();
    if !seps.iter().all(|&s| s == sep) || sep == Some(b'.') {
        return false;
    }
    let digits: Vec<u8> = text.as_bytes()[groups[0].start..groups[n - 1].end].iter().copied().filter(u8::is_ascii_digit).collect();
    (13..=19).contains(&digits.len()) && (b'2'..=b'6').contains(&digits[0]) && luhn(&digits) && span_isolated(run, i, j, sep == Some(b' '))
}

/// Phone number, one of:
/// - `+` country code (1–3 digits) and groups of ≥ 2 digits, or `+` and 8–15 digits in one group;
/// - `00` international prefix (`0034 612 345 678`), 10–15 digits;
/// - `(area)` first (`(555) 123-4567`, `(020) 7946 0958`), 9–15 digits;
/// - trunk `0` national form (`020 7946 0958`, `06 12 34 56 78`), 10–12 digits;
/// - North-American `555-123-4567` / `555.123.4567` / `1-800-555-0199`.
///
/// Every form but `+` needs at least one separator; groups other than the
/// country code have ≥ 2 digits (so ISBNs such as `0-306-40615-2` fail) and,
/// apart from those next to parentheses, the separators in the span are all alike.
fn phone_span_ok(text: &str, run: &Run, i: usize, j: usize) -> bool {
    let b = text.as_bytes();
    let groups = &run.groups[i..=j];
    let n = groups.len();
    let plus = i == 0 && run.plus.is_some();
    let total: usize = groups.iter().map(|g| g.digits).sum();
    if !(7..=15).contains(&total) || n > 8 {
        return false;
    }
    // Separators not touching a parenthesised group.
    let regular: Vec<u8> = (0..n - 1).filter(|&k| !groups[k].paren && !groups[k + 1].paren).filter_map(|k| run.seps[i + k]).collect();
    let uniform = regular.windows(2).all(|w| w[0] == w[1]);
    let uses_space = regular.contains(&b' ');
    let first = groups[0];
    let first_digits = &b[first.start + usize::from(first.paren)..first.start + usize::from(first.paren) + first.digits];
    let rest_ok = |from: usize| groups[from..].iter().all(|g| g.digits >= 2 || (g.paren && &b[g.start..g.end] == b"(0)"));
    let ok = if plus {
        if n == 1 {
            !first.paren && (8..=15).contains(&total)
        } else {
            !first.paren && first.digits <= 3 && total >= 8 && rest_ok(1) && (uniform || !regular.contains(&b'.'))
        }
    } else if n < 2 {
        false
    } else if first.paren {
        (2..=5).contains(&first.digits) && first_digits[0] != b'1' && total >= 9 && rest_ok(1) && uniform
    } else if first_digits.starts_with(b"00") {
        (4..=5).contains(&first.digits) && (10..=15).contains(&total) && rest_ok(1) && uniform
    } else if first_digits[0] == b'0' {
        (2..=5).contains(&first.digits) && (10..=12).contains(&total) && rest_ok(1) && uniform
    } else {
        let sizes: Vec<usize> = groups.iter().map(|g| g.digits).collect();
        let nanp = |area: &[u8]| (b'2'..=b'9').contains(&area[0]);
        uniform
            && groups.iter().all(|g| !g.paren)
            && (sizes == [3, 3, 4] && nanp(first_digits)
                || sizes == [1, 3, 3, 4] && first_digits == b"1" && nanp(&b[groups[1].start..groups[1].end]))
    };
    ok && span_isolated(run, i, j, uses_space)
}

/// Finds digit runs and, within each, the spans `ok` accepts: from the left, the
/// longest acceptable span starting at each group.
fn find_in_runs(text: &str, ok: fn(&str, &Run, usize, usize) -> bool) -> Vec<Range<usize>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut p = 0;
    while p < b.len() {
        let c = b[p];
        let starts = c.is_ascii_digit()
            || (c == b'+' && b.get(p + 1).is_some_and(|&d| d.is_ascii_digit() || d == b'('))
            || (c == b'(' && b.get(p + 1).is_some_and(u8::is_ascii_digit));
        if !starts {
            p += 1;
            continue;
        }
        let (run, end) = parse_run(text, p);
        let k = run.groups.len();
        let mut i = 0;
        while i < k {
            let found = (i..k.min(i + 8)).rev().find(|&j| ok(text, &run, i, j));
            match found {
                Some(j) => {
                    let start = if i == 0 { run.plus.unwrap_or(run.groups[0].start) } else { run.groups[i].start };
                    out.push(start..run.groups[j].end);
                    i = j + 1;
                }
                None => i += 1,
            }
        }
        p = end.max(p + 1);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(text: &str) -> (String, PiiCounts) {
        let (out, counts) = PiiConfig::default().redact(text);
        (out.into_owned(), counts)
    }

    fn assert_kept(text: &str) {
        let (out, counts) = redact(text);
        assert_eq!(out, text, "{text:?} should be left alone");
        assert_eq!(counts.total(), 0);
    }

    #[test]
    fn each_kind_is_redacted_and_counted() {
        let text = "Mail john.doe+tag@example.co.uk or call +44 20 7946 0958. Server 192.168.1.20 and \
                    2001:0db8:85a3:0000:0000:8a2e:0370:7334 and fe80::1. Card 4111 1111 1111 1111, \
                    DNI 12345678Z, NIE X1234567L, IBAN GB82 WEST 1234 5698 7654 32.";
        let (out, counts) = redact(text);
        assert_eq!(
            out,
            "Mail <EMAIL> or call <PHONE>. Server <IP_ADDRESS> and <IP_ADDRESS> and <IP_ADDRESS>. Card \
             <CREDIT_CARD>, DNI <NATIONAL_ID>, NIE <NATIONAL_ID>, IBAN <IBAN>."
        );
        let expected = PiiCounts { email: 1, phone: 1, ip: 3, credit_card: 1, national_id: 2, iban: 1 };
        assert_eq!(counts, expected);
        assert_eq!(counts.total(), 9);
        let named: Vec<_> = counts.iter().collect();
        assert_eq!(named[0], ("email", 1));
        assert_eq!(named[4], ("national_id", 2));
        let mut sum = PiiCounts::default();
        sum.add(&counts);
        sum.add(&counts);
        assert_eq!(sum.total(), 18);
    }

    #[test]
    fn kinds_can_be_switched_off() {
        let cfg = PiiConfig { email: false, ip: false, ..PiiConfig::default() };
        let text = "a@b.com from 10.0.0.1";
        let (out, counts) = cfg.redact(text);
        assert_eq!(out, text);
        assert_eq!(counts.total(), 0);
        let cfg: PiiConfig = serde_json::from_str(r#"{"phone": false}"#).expect("config");
        assert!(!cfg.phone && cfg.email && cfg.enabled.is_none());
        assert!(serde_json::from_str::<PiiConfig>(r#"{"ssn": true}"#).is_err());
    }

    #[test]
    fn luhn_valid_cards_only() {
        for card in ["4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111", "3782 822463 10005", "5555555555554444"] {
            let (out, counts) = redact(&format!("paid with {card} today"));
            assert_eq!(out, "paid with <CREDIT_CARD> today", "{card}");
            assert_eq!(counts.credit_card, 1);
        }
        for not_card in ["4111 1111 1111 1112", "4111111111111112", "4111 1111 1111 1111 1111"] {
            assert_kept(&format!("number {not_card} here"));
        }
    }

    #[test]
    fn phones_in_international_and_national_forms() {
        for phone in [
            "+44 20 7946 0958",
            "+34 612 345 678",
            "0034 612 345 678",
            "(555) 123-4567",
            "555-123-4567",
            "+1-202-555-0143",
            "020 7946 0958",
            "+1 (555) 123-4567",
            "+44 (0)20 7946 0958",
            "555.123.4567",
            "06 12 34 56 78",
            "+447946095800",
        ] {
            let (out, counts) = redact(&format!("Call {phone}, thanks."));
            assert_eq!(out, "Call <PHONE>, thanks.", "{phone}");
            assert_eq!(counts.phone, 1, "{phone}");
        }
    }

    #[test]
    fn ordinary_numbers_are_not_pii() {
        for text in [
            "It was 1999 when it started.",
            "Released on 2024-05-01 at 12:30.",
            "Now only $1,299.99 or 1.299,99 €.",
            "Upgrade to version 1.2.3 or 1.2.3.4.5 today.",
            "ISBN 978-3-16-148410-0 and 0-306-40615-2.",
            "The population was 12345678901 in total.",
            "Scores: 10 000 000 and 2019 2020 2021.",
            "Dates 05-01-2024 and 05.01.2024, zip 02134-1234.",
            "Meet at 12:30:45, chapter 3:16.",
            "std::vector and Class::method",
            "Octets 256.1.1.1 are not valid.",
            "LAN Driver 14.0.1.0 and Ethernet Driver Ver. 4.23.0.0 or version: 10.0.19041.1",
            "call 555-123-45678 now",
        ] {
            assert_kept(text);
        }
    }

    #[test]
    fn spanish_id_with_a_wrong_letter_is_left_alone() {
        assert_kept("DNI 12345678A");
        assert_kept("NIE X1234567A");
        let (out, counts) = redact("DNI 12.345.678-Z y 12345678-Z");
        assert_eq!(out, "DNI <NATIONAL_ID> y <NATIONAL_ID>");
        assert_eq!(counts.national_id, 2);
    }

    #[test]
    fn ibans_need_the_mod_97_check() {
        let (out, counts) = redact("IBAN DE89370400440532013000 ok");
        assert_eq!(out, "IBAN <IBAN> ok");
        assert_eq!(counts.iban, 1);
        let (out, _) = redact("to ES91 2100 0418 4502 0005 1332 ABC");
        assert_eq!(out, "to <IBAN> ABC");
        assert_kept("IBAN DE89370400440532013001 wrong");
    }

    #[test]
    fn ip_addresses() {
        let (out, counts) = redact("hosts 10.0.0.255, ::1 and ::ffff:192.168.1.1.");
        assert_eq!(out, "hosts <IP_ADDRESS>, <IP_ADDRESS> and <IP_ADDRESS>.");
        assert_eq!(counts.ip, 3);
    }

    #[test]
    fn text_without_candidates_is_borrowed() {
        let text = "Nothing personal here, just words.";
        let (out, counts) = PiiConfig::default().redact(text);
        assert!(matches!(out, Cow::Borrowed(_)));
        assert_eq!(counts, PiiCounts::default());
    }
}
