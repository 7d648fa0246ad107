//! The `preferences` stage: preference pairs from files into the
//! `preferences` artifact, split into train and held-out pairs, with rejects.
//!
//! Accepted, line by line in JSONL (a UTF-8 byte-order mark is skipped):
//! - HH-RLHF: `{"chosen": DIALOGUE, "rejected": DIALOGUE}`, two dialogues
//!   that share everything up to their last `\n\nAssistant:`; the shared part
//!   is the prompt, the two last assistant turns the answers;
//! - `{"prompt", "chosen", "rejected"}` with optional `annotator`, `source`;
//!
//! and `preferences` Arrow artifacts (the `label` stage's, the server's
//! feedback) as they are. A malformed pair becomes a reject naming the file,
//! the line and the problem; the split (train / val / test) is by a hash of
//! the prompt, so one prompt's pairs never straddle two splits.

use crate::text::ASSISTANT;
use forja_core::artifacts::Artifact;
use forja_core::stage::{outputs, port, OutDir, OutputSpec, StageCtx};
use forja_core::{Preference, Reject};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImportConfig {
    /// Share of prompts held out as `val` (by a hash of the prompt).
    pub val_fraction: f64,
    /// Share of prompts held out as `test`, apart from `val` (pairs for a
    /// judge trained on `val`, or prompts no model saw).
    pub test_fraction: f64,
    /// Keep at most this many pairs per split after the split (0: all).
    pub max_train: usize,
    pub max_val: usize,
    pub max_test: usize,
    /// Annotator recorded for pairs that do not name one.
    pub annotator: String,
}

impl Default for ImportConfig {
    fn default() -> Self {
        Self { val_fraction: 0.1, test_fraction: 0.0, max_train: 0, max_val: 0, max_test: 0, annotator: "unknown".into() }
    }
}

pub const TRAIN: OutputSpec = OutputSpec { name: "train", path: "train.arrow", kind: port::PREFERENCES };
pub const VAL: OutputSpec = OutputSpec { name: "val", path: "val.arrow", kind: port::PREFERENCES };
pub const TEST: OutputSpec = OutputSpec { name: "test", path: "test.arrow", kind: port::PREFERENCES };
pub const REJECTS: OutputSpec = OutputSpec { name: "rejects", path: "rejects.arrow", kind: port::REJECTS };
pub const OUTPUTS: [OutputSpec; 5] = [TRAIN, VAL, TEST, REJECTS, outputs::REPORT];

/// One JSONL record: either form.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    prompt: Option<String>,
    chosen: String,
    rejected: String,
    annotator: Option<String>,
    source: Option<String>,
}

/// An HH-RLHF pair split into prompt and answers.
pub fn split_hh(chosen: &str, rejected: &str) -> Result<(String, String, String), String> {
    let cut = |d: &str, which: &str| -> Result<(String, String), String> {
        let at = d.rfind(ASSISTANT).ok_or_else(|| format!("the {which} dialogue has no `Assistant:` turn"))?;
        let end = at + ASSISTANT.len();
        Ok((d[..end].to_string(), d[end..].trim().to_string()))
    };
    let (pc, c) = cut(chosen, "chosen")?;
    let (pr, r) = cut(rejected, "rejected")?;
    if pc != pr {
        return Err("the chosen and rejected dialogues differ before their last assistant turn".into());
    }
    Ok((pc, c, r))
}

/// Checks one record and makes it a pair.
fn pair_of(line: &str, file: &str, default_annotator: &str) -> Result<Preference, String> {
    let r: Record = serde_json::from_str(line).map_err(|e| format!("not a preference record: {e}"))?;
    let (prompt, chosen, rejected) = match r.prompt {
        Some(p) => (p, r.chosen.trim().to_string(), r.rejected.trim().to_string()),
        None => split_hh(&r.chosen, &r.rejected)?,
    };
    if prompt.trim().is_empty() {
        return Err("empty prompt".into());
    }
    if chosen.is_empty() || rejected.is_empty() {
        return Err(format!("empty {} answer", if chosen.is_empty() { "chosen" } else { "rejected" }));
    }
    if chosen == rejected {
        return Err("chosen and rejected answers are identical".into());
    }
    Ok(Preference {
        prompt,
        chosen,
        rejected,
        annotator: r.annotator.unwrap_or_else(|| default_annotator.to_string()),
        source: r.source.unwrap_or_else(|| file.to_string()),
    })
}

/// Reads pairs from JSONL or a `preferences` artifact.
pub fn read_pairs(path: &Path, default_annotator: &str, rejects: &mut Vec<Reject>) -> anyhow::Result<Vec<Preference>> {
    if path.extension().is_some_and(|e| e == "arrow") {
        return Ok(Preference::read(path)?);
    }
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let file = path.display().to_string();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match pair_of(line, &file, default_annotator) {
            Ok(p) => out.push(p),
            Err(reason) => rejects.push(Reject::new(&file, i as u64 + 1, reason, line)),
        }
    }
    Ok(out)
}

/// Where a prompt's stable hash falls in [0, 1): its split is fixed by it.
pub fn position(prompt: &str) -> f64 {
    blake3_u64(prompt) as f64 / u64::MAX as f64
}

fn blake3_u64(s: &str) -> u64 {
    let hex = forja_core::hash::hash_bytes(s.as_bytes());
    u64::from_str_radix(&hex[..16], 16).unwrap_or(0)
}

/// What a run read and wrote.
#[derive(Debug, Clone, Serialize)]
pub struct ImportSummary {
    pub read: usize,
    pub train: usize,
    pub val: usize,
    pub test: usize,
    pub rejected: usize,
    pub capped: usize,
}

pub fn run(cfg: &ImportConfig, files: &[PathBuf], out: &OutDir, ctx: &StageCtx) -> anyhow::Result<ImportSummary> {
    let (v, t) = (cfg.val_fraction, cfg.test_fraction);
    anyhow::ensure!(v >= 0.0 && t >= 0.0 && v + t <= 1.0, "val_fraction and test_fraction must be >= 0 with a sum <= 1, got {v} and {t}");
    anyhow::ensure!(!files.is_empty(), "no input files");
    let mut rejects = Vec::new();
    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for f in files {
        for p in read_pairs(f, &cfg.annotator, &mut rejects)? {
            match position(&p.prompt) {
                x if x < t => test.push(p),
                x if x < t + v => val.push(p),
                _ => train.push(p),
            }
        }
    }
    let read = train.len() + val.len() + test.len() + rejects.len();
    let mut capped = 0;
    for (rows, max) in [(&mut train, cfg.max_train), (&mut val, cfg.max_val), (&mut test, cfg.max_test)] {
        if max > 0 && rows.len() > max {
            capped += rows.len() - max;
            rows.truncate(max);
        }
    }
    anyhow::ensure!(!train.is_empty(), "no usable training pair in {} file(s) ({} rejected)", files.len(), rejects.len());
    Preference::write(&out.path(&TRAIN), &ctx.name, &ctx.config_hash, &train)?;
    Preference::write(&out.path(&VAL), &ctx.name, &ctx.config_hash, &val)?;
    Preference::write(&out.path(&TEST), &ctx.name, &ctx.config_hash, &test)?;
    Reject::write(&out.path(&REJECTS), &ctx.name, &ctx.config_hash, &rejects)?;
    let s = ImportSummary { read, train: train.len(), val: val.len(), test: test.len(), rejected: rejects.len(), capped };
    anyhow::ensure!(s.read == s.train + s.val + s.test + s.rejected + s.capped, "records read != kept + rejected + capped");
    let mut md = format!(
        "# Preferences `{}`\n\n| | |\n|---|---|\n| records read | {} |\n| train pairs | {} |\n| val pairs | {} |\n| test pairs | {} |\n| rejected | {} |\n| left out by max_train / max_val / max_test | {} |\n\n",
        ctx.name, s.read, s.train, s.val, s.test, s.rejected, s.capped
    );
    let mut reasons: std::collections::BTreeMap<&str, usize> = Default::default();
    for r in &rejects {
        *reasons.entry(r.reason.as_str()).or_default() += 1;
    }
    if !reasons.is_empty() {
        md += "| reject reason | count |\n|---|---|\n";
        for (reason, n) in reasons {
            md += &format!("| {reason} | {n} |\n");
        }
    }
    forja_core::fsutil::atomic_write(&out.path(&outputs::REPORT), md.as_bytes())?;
    println!("{}: {} train pairs, {} val, {} test, {} rejected", ctx.name, s.train, s.val, s.test, s.rejected);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hh_pairs_split_at_the_last_assistant_turn() {
        let c = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: Sure, here.";
        let r = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: help?\n\nAssistant: No.";
        let (p, a, b) = split_hh(c, r).expect("valid");
        assert!(p.ends_with("help?\n\nAssistant:"));
        assert_eq!((a.as_str(), b.as_str()), ("Sure, here.", "No."));
        assert!(split_hh("\n\nHuman: x", r).is_err());
        assert!(split_hh("\n\nHuman: other\n\nAssistant: a", r).is_err());
    }

    #[test]
    fn malformed_records_become_rejects() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("p.jsonl");
        let lines = [
            "\u{feff}{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"b\"}",
            "{not json",
            "{\"prompt\": \"q\", \"chosen\": \"a\", \"rejected\": \"a\"}",
            "{\"chosen\": \"\\n\\nHuman: q\\n\\nAssistant: x\", \"rejected\": \"\\n\\nHuman: q\\n\\nAssistant: y\"}",
            "{\"chosen\": \"no turns\", \"rejected\": \"none\"}",
            "{\"prompt\": \"q\", \"chosen\": \"a\"}",
        ];
        std::fs::write(&f, lines.join("\n")).expect("write");
        let mut rejects = Vec::new();
        let pairs = read_pairs(&f, "x", &mut rejects).expect("read");
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[1].chosen, "x");
        let pos: Vec<u64> = rejects.iter().map(|r| r.position).collect();
        assert_eq!(pos, [2, 3, 5, 6]);
        assert!(rejects[1].reason.contains("identical"), "{}", rejects[1].reason);
    }
}
