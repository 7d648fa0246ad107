//! Text generation with a KV cache, and sampling (temperature, top-k, top-p).
//! Kept apart from the model, as nanochat keeps its engine.

use crate::gpt::{Gpt, KvCache};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Sampling controls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SamplingConfig {
    /// 0 means greedy.
    pub temperature: f64,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1.0: all).
    pub top_p: f64,
    pub max_new_tokens: usize,
    pub seed: u64,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        Self { temperature: 0.8, top_k: 200, top_p: 1.0, max_new_tokens: 200, seed: 1337 }
    }
}

impl SamplingConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.temperature >= 0.0, "`temperature` must be >= 0.0, got {}", self.temperature);
        anyhow::ensure!(self.top_p > 0.0 && self.top_p <= 1.0, "`top_p` must be > 0.0 and <= 1.0, got {}", self.top_p);
        Ok(())
    }
}

/// Picks a token from `logits` (one row).
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut impl Rng) -> u32 {
    let argmax = || {
        logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
    };
    if cfg.temperature == 0.0 {
        return argmax();
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    if cfg.top_k > 0 {
        order.truncate(cfg.top_k);
    }
    let max = logits[order[0]] as f64;
    let mut probs: Vec<f64> = order.iter().map(|&i| ((logits[i] as f64 - max) / cfg.temperature).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if cfg.top_p < 1.0 {
        let mut acc = 0.0;
        let keep = probs.iter().position(|p| {
            acc += p;
            acc >= cfg.top_p
        });
        let keep = keep.map_or(probs.len(), |k| k + 1);
        probs.truncate(keep);
        order.truncate(keep);
    }
    let total: f64 = probs.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (p, &i) in probs.iter().zip(&order) {
        u -= p;
        if u <= 0.0 {
            return i as u32;
        }
    }
    order.last().map_or_else(argmax, |&i| i as u32)
}

/// Continues `prompt` by up to `cfg.max_new_tokens` tokens, stopping early at `stop`.
/// Uses a KV cache; when the context is full, the cache is rebuilt from the last
/// half block (positions are learned, so the window cannot just slide).
pub fn generate(model: &Gpt, prompt: &[u32], stop: Option<u32>, cfg: &SamplingConfig) -> anyhow::Result<Vec<u32>> {
    cfg.validate()?;
    anyhow::ensure!(!prompt.is_empty(), "generation needs a non-empty prompt");
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let block = model.cfg.block_size as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut tokens: Vec<u32> = prompt.to_vec();
    let mut cache = KvCache::new(model.cfg.n_layer);
    let mut feed: Vec<u32> = tail(&tokens, block).to_vec();
    let mut out = Vec::new();
    for _ in 0..cfg.max_new_tokens {
        if cache.len() as usize + feed.len() > block {
            cache = KvCache::new(model.cfg.n_layer);
            feed = tail(&tokens, block / 2).to_vec();
        }
        let ids: Vec<i64> = feed.iter().map(|&t| t as i64).collect();
        let idx = Tensor::from_slice(&ids).to(device).view([1, -1]);
        let logits = model.forward(&idx, false, Some(&mut cache)); // [1, t, vocab]
        let last = logits.select(1, -1).squeeze_dim(0).to_kind(Kind::Float).to(tch::Device::Cpu);
        let row: Vec<f32> = Vec::<f32>::try_from(&last)?;
        let next = sample(&row, cfg, &mut rng);
        if Some(next) == stop {
            break;
        }
        tokens.push(next);
        out.push(next);
        feed = vec![next];
    }
    Ok(out)
}

fn tail(tokens: &[u32], n: usize) -> &[u32] {
    &tokens[tokens.len().saturating_sub(n)..]
}
