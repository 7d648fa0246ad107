//! Boilerplate lines: lines repeated across many documents of one source (menus,
//! footers, cookie banners), which datatrove does not have.

use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Boilerplate lines: lines (compared after trimming) repeated across many
/// documents of one source, such as menus, footers and cookie banners.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BoilerplateConfig {
    pub enabled: Option<bool>,
    /// A line is boilerplate when it occurs in at least this many documents ...
    pub min_docs: usize,
    /// ... and in at least this share of the source's documents.
    pub min_fraction: f64,
    /// Lines shorter than this (characters, after trimming) are never boilerplate:
    /// short lines ("Reply", "1.", "}") are too generic to belong to a site's template.
    pub min_chars: usize,
}

impl Default for BoilerplateConfig {
    fn default() -> Self {
        Self { enabled: None, min_docs: 3, min_fraction: 0.01, min_chars: 10 }
    }
}

impl BoilerplateConfig {
    /// The key of a line (first 8 bytes of the BLAKE3 hash of the trimmed line,
    /// the same on every run), or `None` for a line too short to count.
    pub fn line_key(&self, line: &str) -> Option<u64> {
        let t = line.trim();
        if t.is_empty() || t.chars().count() < self.min_chars.max(1) {
            return None;
        }
        let h = blake3::hash(t.as_bytes());
        let b = h.as_bytes();
        Some(u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
    }

    /// Keys of the lines that occur in at least `min_docs` documents and in at
    /// least `min_fraction` of `docs` (each line counted once per document).
    pub fn find(&self, docs: &[&str]) -> HashSet<u64> {
        let mut stats = LineStats::default();
        for doc in docs {
            stats.add(self, doc);
        }
        stats.boilerplate(self)
    }

    /// `text` without the lines whose key is in `lines`; the other lines are kept
    /// byte for byte. Returns the new text and how many lines were removed.
    pub fn strip(&self, text: &str, lines: &HashSet<u64>) -> (String, usize) {
        if lines.is_empty() {
            return (text.to_string(), 0);
        }
        let mut out = String::with_capacity(text.len());
        let mut removed = 0;
        for segment in text.split_inclusive('\n') {
            if self.line_key(segment).is_some_and(|k| lines.contains(&k)) {
                removed += 1;
            } else {
                out.push_str(segment);
            }
        }
        (out, removed)
    }
}

/// Line counts of one source's documents, fed one document at a time (the
/// `clean` stage streams them): each line counted once per document.
#[derive(Debug, Default)]
pub struct LineStats {
    pub docs: u64,
    pub counts: HashMap<u64, u32>,
}

impl LineStats {
    pub fn add(&mut self, cfg: &BoilerplateConfig, text: &str) {
        self.docs += 1;
        let mut seen = HashSet::new();
        for key in text.lines().filter_map(|l| cfg.line_key(l)) {
            if seen.insert(key) {
                *self.counts.entry(key).or_default() += 1;
            }
        }
    }

    /// The lines frequent enough to be boilerplate under `cfg`.
    pub fn boilerplate(&self, cfg: &BoilerplateConfig) -> HashSet<u64> {
        let need = (cfg.min_docs as f64).max(cfg.min_fraction * self.docs as f64);
        self.counts.iter().filter(|&(_, &n)| f64::from(n) >= need).map(|(&k, _)| k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boilerplate_lines_found_and_stripped() {
        let cfg = BoilerplateConfig::default();
        let footer = "Copyright 2024 Example Inc. All rights reserved.";
        let docs: Vec<String> = (0..6)
            .map(|i| {
                let body = format!("Article number {i} talks about topic {i} at some length.");
                match i {
                    0 => format!("{body}\nA line that only this document has."),
                    _ => format!("{body}\n  {footer}  \nShort"),
                }
            })
            .collect();
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        assert_eq!(refs.iter().filter(|d| d.contains(footer)).count(), 5);
        let found = cfg.find(&refs);
        assert_eq!(found.len(), 1);
        assert!(found.contains(&cfg.line_key(footer).expect("long line")));
        assert!(!found.contains(&cfg.line_key("A line that only this document has.").expect("long line")));
        let (text, removed) = cfg.strip(refs[1], &found);
        assert_eq!((text.as_str(), removed), ("Article number 1 talks about topic 1 at some length.\nShort", 1));
        assert_eq!(cfg.strip(refs[0], &found), (refs[0].to_string(), 0));
        assert_eq!(cfg.line_key("Short"), None);
        assert_eq!(cfg.find(&refs), found, "deterministic");
    }
}
