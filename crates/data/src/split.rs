//! Deterministic train/validation/test split.

use forja_core::Document;
use serde::{Deserialize, Serialize};

/// How documents are assigned to splits.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SplitMode {
    /// Each document by a seeded hash of its id: independent of input order.
    #[default]
    Random,
    /// In input order: the last `val_fraction + test_fraction` of documents (by
    /// characters), val then test, as nanoGPT splits Tiny Shakespeare.
    Tail,
}

/// Split settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SplitConfig {
    pub mode: SplitMode,
    pub val_fraction: f64,
    pub test_fraction: f64,
}

impl Default for SplitConfig {
    fn default() -> Self {
        Self { mode: SplitMode::Random, val_fraction: 0.1, test_fraction: 0.0 }
    }
}

impl SplitConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        let ok = |f: f64| (0.0..1.0).contains(&f);
        anyhow::ensure!(
            ok(self.val_fraction) && ok(self.test_fraction) && self.val_fraction + self.test_fraction < 1.0,
            "split fractions must be in [0, 1) and sum below 1 (val_fraction={}, test_fraction={})",
            self.val_fraction,
            self.test_fraction
        );
        Ok(())
    }
}

/// The three splits.
#[derive(Debug, Default)]
pub struct Splits {
    pub train: Vec<Document>,
    pub val: Vec<Document>,
    pub test: Vec<Document>,
}

/// Splits documents deterministically by `seed`.
pub fn split(docs: Vec<Document>, cfg: &SplitConfig, seed: u64) -> Splits {
    let mut out = Splits::default();
    match cfg.mode {
        SplitMode::Random => {
            for d in docs {
                let h = blake3::hash(format!("{seed}:{}", d.id).as_bytes());
                let bytes: [u8; 8] = h.as_bytes()[..8].try_into().unwrap_or([0; 8]);
                let u = (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
                if u < cfg.val_fraction {
                    out.val.push(d)
                } else if u < cfg.val_fraction + cfg.test_fraction {
                    out.test.push(d)
                } else {
                    out.train.push(d)
                }
            }
        }
        SplitMode::Tail => {
            let total: usize = docs.iter().map(|d| d.text.len()).sum();
            let train_end = ((1.0 - cfg.val_fraction - cfg.test_fraction) * total as f64) as usize;
            let val_end = ((1.0 - cfg.test_fraction) * total as f64) as usize;
            let mut seen = 0;
            for d in docs {
                let start = seen;
                seen += d.text.len();
                if start < train_end {
                    out.train.push(d)
                } else if start < val_end {
                    out.val.push(d)
                } else {
                    out.test.push(d)
                }
            }
        }
    }
    out
}
