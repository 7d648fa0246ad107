//! Python's string semantics as datatrove relies on them: `str.isspace`, `strip`,
//! `splitlines` and `re.split` at runs of newlines.

use super::chars::{BREAK, BYTE_CLASS, MAYBE_BREAK};

/// Python's `str.isspace`.
pub(super) fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

pub(super) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_space)
}

pub(super) fn py_lstrip(s: &str) -> &str {
    s.trim_start_matches(is_space)
}

pub(super) fn py_rstrip(s: &str) -> &str {
    s.trim_end_matches(is_space)
}

/// Python's `str.splitlines()`: lines without their ends; no empty last line.
pub(super) struct PyLines<'a>(pub(super) Option<&'a str>);

impl<'a> Iterator for PyLines<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.0.filter(|r| !r.is_empty())?;
        let b = rest.as_bytes();
        let mut i = 0;
        while let Some(k) = next_maybe_break(&b[i..]) {
            i += k;
            let end = match b[i] {
                b'\r' if b.get(i + 1) == Some(&b'\n') => 2,
                0xc2 if b.get(i + 1) == Some(&0x85) => 2,
                0xe2 if b.get(i + 1) == Some(&0x80) && matches!(b.get(i + 2), Some(0xa8 | 0xa9)) => 3,
                0xc2 | 0xe2 => 0,
                _ => 1,
            };
            if end > 0 {
                self.0 = Some(&rest[i + end..]);
                return Some(&rest[..i]);
            }
            i += 1;
        }
        self.0 = None;
        Some(rest)
    }
}

/// Where the next byte that may start a line break is: ASCII controls, and the
/// lead byte of U+0085, U+2028, U+2029. Skips eight plain ASCII bytes at a time.
fn next_maybe_break(b: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i + 8 <= b.len() {
        let w = u64::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3], b[i + 4], b[i + 5], b[i + 6], b[i + 7]]);
        // A high bit here: a byte below 0x20 or above 0x7f in the block.
        if (w.wrapping_sub(0x20 * ONES) & !w & HIGH) | (w & HIGH) != 0 {
            if let Some(k) = b[i..i + 8].iter().position(|&c| matches!(BYTE_CLASS[c as usize], MAYBE_BREAK | BREAK)) {
                return Some(i + k);
            }
        }
        i += 8;
    }
    b[i..].iter().position(|&c| matches!(BYTE_CLASS[c as usize], MAYBE_BREAK | BREAK)).map(|k| i + k)
}

/// Pieces of `text` between runs of at least `min_run` `\n` (Python's
/// `re.split(r"\n{min_run,}", text)`: empty pieces included).
pub(super) fn split_newline_runs<'a>(text: &'a str, min_run: usize, out: &mut Vec<&'a str>) {
    let b = text.as_bytes();
    let (mut start, mut i) = (0, 0);
    while let Some(k) = text[i..].find('\n') {
        let run_start = i + k;
        let run = b[run_start..].iter().take_while(|&&c| c == b'\n').count();
        i = run_start + run;
        if run >= min_run {
            out.push(&text[start..run_start]);
            start = i;
        }
    }
    out.push(&text[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_lines_and_splits() {
        assert_eq!(PyLines(Some("a\r\nb\rc\n\nd\n")).collect::<Vec<_>>(), ["a", "b", "c", "", "d"]);
        assert_eq!(PyLines(Some("")).count(), 0);
        let mut out = Vec::new();
        split_newline_runs("\na\n\nb\nc\n", 2, &mut out);
        assert_eq!(out, ["\na", "b\nc\n"]);
        out.clear();
        split_newline_runs("\na\n\nb\n", 1, &mut out);
        assert_eq!(out, ["", "a", "b", ""]);
    }
}
