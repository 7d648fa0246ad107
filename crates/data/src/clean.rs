//! Cleaning settings and normalisation for format consistency (Unicode NFC,
//! whitespace, control characters); the rules themselves run in [`crate::web`]
//! and [`crate::corpus`].

use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

/// Cleaning settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CleanConfig {
    /// Records shorter than this (in characters, after normalisation) are rejected.
    pub min_chars: usize,
    /// Drop exact duplicates (same normalised text), keeping the first.
    pub dedup: bool,
}

impl Default for CleanConfig {
    fn default() -> Self {
        Self { min_chars: 1, dedup: true }
    }
}

/// Normalises text: NFC; `\r\n` and `\r` to `\n`; Unicode spaces to ASCII space;
/// control and zero-width characters removed (tab and newline kept); trailing
/// spaces of each line removed; runs of more than one blank line collapsed;
/// leading and trailing blank space removed.
pub fn normalize(text: &str) -> String {
    let unified = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut chars = String::with_capacity(unified.len());
    for c in unified.nfc() {
        match c {
            '\n' | '\t' => chars.push(c),
            '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}' => {}
            c if c.is_control() => {}
            c if c.is_whitespace() => chars.push(' '),
            c => chars.push(c),
        }
    }
    let mut out = String::with_capacity(chars.len());
    let mut blank_run = 0;
    for line in chars.split('\n') {
        let line = line.trim_end();
        if line.is_empty() {
            blank_run += 1;
            if blank_run > 1 {
                continue;
            }
        } else {
            blank_run = 0;
        }
        out.push_str(line);
        out.push('\n');
    }
    out.trim_matches(|c: char| c.is_whitespace()).to_string()
}
