//! `token_counts.json` in a model folder: how often each token id occurred in
//! the data the model was trained on. The server compares incoming prompts
//! with it (drift); nothing else depends on it.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const FILE: &str = "token_counts.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    /// Where the counts came from (`pretrain train split`, …).
    pub source: String,
    pub total: u64,
    /// `counts[id]`: occurrences of token `id`.
    pub counts: Vec<u64>,
}

impl TokenCounts {
    /// Counts of the token ids in `rows`, over a vocabulary of `vocab` ids
    /// (ids at or past it are counted at the last id).
    pub fn of<'a>(rows: impl IntoIterator<Item = &'a [u32]>, vocab: usize, source: &str) -> Self {
        let mut counts = vec![0u64; vocab.max(1)];
        let last = counts.len() - 1;
        for row in rows {
            for &id in row {
                counts[(id as usize).min(last)] += 1;
            }
        }
        Self { source: source.to_string(), total: counts.iter().sum(), counts }
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(FILE);
        crate::fsutil::atomic_write(&path, serde_json::to_string(self)?.as_bytes()).with_context(|| format!("writing {}", path.display()))
    }

    /// The folder's counts, `None` when it has none.
    pub fn read(dir: &Path) -> anyhow::Result<Option<Self>> {
        let path = dir.join(FILE);
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let c: Self = serde_json::from_str(&text).with_context(|| format!("{}: not token counts", path.display()))?;
        anyhow::ensure!(c.total == c.counts.iter().sum::<u64>(), "{}: `total` is not the sum of `counts`", path.display());
        Ok(Some(c))
    }
}
