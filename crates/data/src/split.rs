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
    let total = docs.iter().map(|d| d.text.len()).sum();
    let mut splitter = Splitter::new(cfg, seed, total);
    let mut out = Splits::default();
    for d in docs {
        match splitter.assign(&d.id, d.text.len()) {
            0 => out.train.push(d),
            1 => out.val.push(d),
            _ => out.test.push(d),
        }
    }
    out
}

/// Index of a split in [`crate::stages::SPLITS`] order.
pub type SplitIndex = usize;

/// Assigns documents to splits one at a time, in input order, with the same
/// result as [`split`]: `Random` by a seeded hash of the id, `Tail` by the
/// running character count against the total (known in advance).
pub struct Splitter {
    cfg: SplitConfig,
    seed: u64,
    total_chars: usize,
    seen: usize,
}

impl Splitter {
    /// `total_chars`: the characters (bytes of UTF-8) of all documents to be
    /// assigned; only `Tail` uses it.
    pub fn new(cfg: &SplitConfig, seed: u64, total_chars: usize) -> Self {
        Self { cfg: cfg.clone(), seed, total_chars, seen: 0 }
    }

    pub fn assign(&mut self, id: &str, text_len: usize) -> SplitIndex {
        let (v, t) = (self.cfg.val_fraction, self.cfg.test_fraction);
        match self.cfg.mode {
            SplitMode::Random => {
                let u = unit_hash(self.seed, id);
                if u < v {
                    1
                } else if u < v + t {
                    2
                } else {
                    0
                }
            }
            SplitMode::Tail => {
                let start = self.seen;
                self.seen += text_len;
                let total = self.total_chars as f64;
                if start < ((1.0 - v - t) * total) as usize {
                    0
                } else if start < ((1.0 - t) * total) as usize {
                    1
                } else {
                    2
                }
            }
        }
    }
}

/// A uniform number in [0, 1) from a seeded hash of `id`.
pub fn unit_hash(seed: u64, id: &str) -> f64 {
    let h = blake3::hash(format!("{seed}:{id}").as_bytes());
    let bytes: [u8; 8] = h.as_bytes()[..8].try_into().unwrap_or([0; 8]);
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}
