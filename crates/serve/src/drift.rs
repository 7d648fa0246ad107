//! Drift of incoming prompts: the distribution of prompt tokens over a sliding
//! window against the training tokens' distribution recorded in the model
//! folder (`token_counts.json`), by population stability index and
//! Jensen–Shannon divergence.
//!
//! Tokens are grouped into bins of equal training mass (token ids sorted by
//! training frequency, cut into `bins` quantiles), plus one bin for tokens never
//! seen in training, the usual way PSI is taken over a reference's quantiles.

use forja_core::token_counts::TokenCounts;
use std::collections::VecDeque;
use std::path::Path;

/// Probabilities are floored here before logarithms (an empty bin would make
/// PSI infinite).
const FLOOR: f64 = 1e-4;

/// The training distribution, binned.
#[derive(Debug, Clone)]
pub struct Reference {
    /// `bin_of[token]`.
    bin_of: Vec<u16>,
    /// Training mass of each bin (the last is the never-seen bin).
    expected: Vec<f64>,
}

impl Reference {
    /// From training counts, cut into `bins` quantile bins (+ the unseen bin).
    pub fn from_counts(counts: &[u64], bins: usize) -> Self {
        let bins = bins.clamp(2, 1000);
        let total: u64 = counts.iter().sum();
        let mut order: Vec<usize> = (0..counts.len()).collect();
        order.sort_by(|&a, &b| counts[b].cmp(&counts[a]).then(a.cmp(&b)));
        let mut bin_of = vec![bins as u16; counts.len()];
        let mut mass = vec![0u64; bins + 1];
        let mut before = 0u64;
        for &id in &order {
            if counts[id] == 0 {
                break;
            }
            let bin = ((before as f64 / total.max(1) as f64) * bins as f64) as usize;
            let bin = bin.min(bins - 1);
            bin_of[id] = bin as u16;
            mass[bin] += counts[id];
            before += counts[id];
        }
        let expected = mass.iter().map(|&m| m as f64 / total.max(1) as f64).collect();
        Self { bin_of, expected }
    }

    /// The folder's reference, when it records its training tokens.
    pub fn read(dir: &Path, vocab: usize) -> anyhow::Result<Option<Self>> {
        let Some(c) = TokenCounts::read(dir)? else { return Ok(None) };
        let mut counts = c.counts;
        counts.resize(vocab.max(counts.len()), 0);
        Ok(Some(Self::from_counts(&counts, 20)))
    }

    fn bin(&self, token: u32) -> usize {
        self.bin_of.get(token as usize).map_or(self.expected.len() - 1, |&b| b as usize)
    }
}

fn smooth(p: &[f64]) -> Vec<f64> {
    let floored: Vec<f64> = p.iter().map(|&x| x.max(FLOOR)).collect();
    let sum: f64 = floored.iter().sum();
    floored.iter().map(|x| x / sum).collect()
}

/// Population stability index, Σ (a − e) ln(a / e).
pub fn psi(actual: &[f64], expected: &[f64]) -> f64 {
    let (a, e) = (smooth(actual), smooth(expected));
    a.iter().zip(&e).map(|(a, e)| (a - e) * (a / e).ln()).sum()
}

/// Jensen–Shannon divergence in bits (0 for equal distributions, at most 1).
pub fn jensen_shannon(p: &[f64], q: &[f64]) -> f64 {
    let kl = |x: &[f64], m: &[f64]| x.iter().zip(m).filter(|(a, _)| **a > 0.0).map(|(a, b)| a * (a / b).log2()).sum::<f64>();
    let m: Vec<f64> = p.iter().zip(q).map(|(a, b)| (a + b) / 2.0).collect();
    (0.5 * kl(p, &m) + 0.5 * kl(q, &m)).max(0.0)
}

/// Settings of the drift monitor.
#[derive(Debug, Clone)]
pub struct DriftConfig {
    /// Prompt tokens in the sliding window.
    pub window: usize,
    /// Tokens the window needs before drift is reported.
    pub min_tokens: usize,
    /// PSI above which a warning is logged (0.2 is the usual "significant shift").
    pub psi_threshold: f64,
}

/// One reading of the monitor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    pub psi: f64,
    pub js: f64,
    pub tokens: usize,
}

/// The sliding window of prompt tokens.
pub struct Drift {
    cfg: DriftConfig,
    reference: Option<Reference>,
    window: VecDeque<u16>,
    counts: Vec<u64>,
}

impl Drift {
    pub fn new(cfg: DriftConfig, reference: Option<Reference>) -> Self {
        let bins = reference.as_ref().map_or(0, |r| r.expected.len());
        Self { cfg, reference, window: VecDeque::new(), counts: vec![0; bins] }
    }

    /// Starts over against another model's reference.
    pub fn reset(&mut self, reference: Option<Reference>) {
        *self = Self::new(self.cfg.clone(), reference);
    }

    pub fn enabled(&self) -> bool {
        self.reference.is_some()
    }

    /// Adds a prompt's tokens; returns the current reading once the window
    /// holds enough tokens.
    pub fn observe(&mut self, tokens: &[u32]) -> Option<Reading> {
        let reference = self.reference.as_ref()?;
        for &t in tokens {
            let b = reference.bin(t);
            self.window.push_back(b as u16);
            self.counts[b] += 1;
            if self.window.len() > self.cfg.window {
                if let Some(old) = self.window.pop_front() {
                    self.counts[old as usize] -= 1;
                }
            }
        }
        self.reading()
    }

    pub fn reading(&self) -> Option<Reading> {
        let reference = self.reference.as_ref()?;
        let n = self.window.len();
        if n < self.cfg.min_tokens.max(1) {
            return None;
        }
        let actual: Vec<f64> = self.counts.iter().map(|&c| c as f64 / n as f64).collect();
        Some(Reading { psi: psi(&actual, &reference.expected), js: jensen_shannon(&actual, &reference.expected), tokens: n })
    }

    pub fn threshold(&self) -> f64 {
        self.cfg.psi_threshold
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_distributions_have_no_drift_and_shifted_ones_do() {
        let p = [0.25, 0.25, 0.5];
        assert!(psi(&p, &p).abs() < 1e-12);
        assert!(jensen_shannon(&p, &p).abs() < 1e-12);
        let q = [0.7, 0.2, 0.1];
        assert!(psi(&q, &p) > 0.2);
        let js = jensen_shannon(&q, &p);
        assert!(js > 0.05 && js <= 1.0, "{js}");
        assert!((jensen_shannon(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn bins_hold_equal_training_mass_and_unseen_tokens_their_own() {
        let counts = [40, 30, 10, 10, 5, 5, 0, 0];
        let r = Reference::from_counts(&counts, 4);
        assert_eq!(r.expected.len(), 5);
        assert_eq!(r.bin(6), 4);
        assert_eq!(r.bin(1000), 4, "ids past the vocabulary are unseen");
        assert!((r.expected.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let cfg = DriftConfig { window: 100, min_tokens: 10, psi_threshold: 0.2 };
        let mut d = Drift::new(cfg, Some(r));
        // Prompts like the training data: little drift.
        let like: Vec<u32> = (0..100).map(|i| [0, 0, 0, 0, 1, 1, 1, 2, 3, 4][i % 10]).collect();
        let calm = d.observe(&like).expect("a full window");
        assert!(calm.psi < 0.1, "{calm:?}");
        // Only rare and unseen tokens: the window slides over to them.
        let shifted: Vec<u32> = (0..100).map(|i| [5, 6, 7][i % 3]).collect();
        let hot = d.observe(&shifted).expect("a full window");
        assert!(hot.psi > 1.0 && hot.js > 0.5 && hot.tokens == 100, "{hot:?}");
    }
}
