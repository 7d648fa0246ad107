//! Cleaning: format consistency (Unicode NFC, whitespace, control characters),
//! empty and short records, exact de-duplication.

use crate::read::RawRecord;
use forja_core::{Document, Reject};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
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

/// Counts of what each rule did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct CleanCounts {
    pub read: usize,
    pub changed_by_normalization: usize,
    pub empty: usize,
    pub too_short: usize,
    pub duplicates: usize,
    pub kept: usize,
}

/// Turns raw records into documents; every dropped record becomes a reject.
pub fn clean(records: Vec<RawRecord>, cfg: &CleanConfig, rejects: &mut Vec<Reject>) -> (Vec<Document>, CleanCounts) {
    let mut counts = CleanCounts { read: records.len(), ..Default::default() };
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut docs = Vec::with_capacity(records.len());
    for rec in records {
        let text = normalize(&rec.text);
        if text != rec.text {
            counts.changed_by_normalization += 1;
        }
        let chars = text.chars().count();
        if chars == 0 {
            counts.empty += 1;
            rejects.push(Reject::new(&rec.file, rec.position, "empty after normalization", &rec.text));
            continue;
        }
        if chars < cfg.min_chars {
            counts.too_short += 1;
            let reason = format!("shorter than min_chars={} ({chars} chars)", cfg.min_chars);
            rejects.push(Reject::new(&rec.file, rec.position, reason, &rec.text));
            continue;
        }
        let id = forja_core::hash::hash_bytes(text.as_bytes());
        let source = format!("{}:{}", rec.file, rec.position);
        if cfg.dedup {
            if let Some(first) = seen.get(&id) {
                counts.duplicates += 1;
                rejects.push(Reject::new(&rec.file, rec.position, format!("exact duplicate of {first}"), &rec.text));
                continue;
            }
            seen.insert(id.clone(), source.clone());
        }
        let meta = serde_json::Value::Object(rec.meta).to_string();
        docs.push(Document { id, text, source, lang: "und".into(), meta });
    }
    counts.kept = docs.len();
    (docs, counts)
}
