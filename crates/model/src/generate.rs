//! Text generation with a KV cache, and sampling (temperature, top-k, top-p).
//! Kept apart from the model, as nanochat keeps its engine.

use crate::gpt::{Gpt, KvCache};
use crate::lm::LanguageModel;
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
    let argmax = || argmax(logits);
    if cfg.temperature == 0.0 {
        return argmax();
    }
    // Only top-p needs the kept tokens in order; top-k needs a partition, and
    // plain sampling neither (a sort of a 50k vocabulary per token costs ~1 ms).
    let desc = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]);
    let mut order: Vec<usize> = (0..logits.len()).collect();
    if cfg.top_k > 0 && cfg.top_k < order.len() {
        order.select_nth_unstable_by(cfg.top_k - 1, desc);
        order.truncate(cfg.top_k);
    }
    if cfg.top_p < 1.0 {
        order.sort_unstable_by(desc);
    }
    let Some(max) = order.iter().map(|&i| logits[i]).max_by(f32::total_cmp) else {
        return argmax();
    };
    let max = max as f64;
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
    order.get(draw(&probs, rng)).map_or_else(argmax, |&i| i as u32)
}

/// The position of the largest logit in `f32::total_cmp`'s order, the last
/// one on a tie (as `Iterator::max_by` picks it); 0 for no logits. Greedy
/// decoding runs it on every token: sixteen lanes keep their largest value
/// and its position (vectorised), and only logits with a NaN or a largest
/// value of zero (where ±0 are told apart) take the element-by-element walk.
pub fn argmax(logits: &[f32]) -> u32 {
    const LANES: usize = 16;
    let walk = || logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
    let (mut best, mut at, mut nan) = ([f32::NEG_INFINITY; LANES], [0u32; LANES], [false; LANES]);
    let chunks = logits.chunks_exact(LANES);
    let tail = chunks.remainder();
    for (c, chunk) in chunks.enumerate() {
        for (k, &v) in chunk.iter().enumerate() {
            let take = v >= best[k];
            best[k] = if take { v } else { best[k] };
            at[k] = if take { (c * LANES + k) as u32 } else { at[k] };
            nan[k] |= v.is_nan();
        }
    }
    let (mut m, mut i, mut any_nan) = (f32::NEG_INFINITY, None, nan.contains(&true));
    let lanes = best.iter().zip(&at).map(|(&v, &a)| (v, a as usize));
    let rest = tail.iter().enumerate().map(|(k, &v)| (v, logits.len() - tail.len() + k));
    for (v, a) in lanes.chain(rest) {
        any_nan |= v.is_nan();
        if v > m || (v == m && i.is_none_or(|j| a > j)) {
            (m, i) = (v, Some(a));
        }
    }
    match i {
        Some(i) if !any_nan && m != 0.0 && m > f32::NEG_INFINITY => i as u32,
        _ => walk(),
    }
}

/// A position drawn with probability proportional to `weights[i]` (inverse
/// CDF over one uniform draw); weights need not sum to 1.
///
/// The CDF is walked a block of 64 weights at a time (each block's sum in
/// four lanes, which the compiler vectorises) and only the block the draw
/// lands in is scanned weight by weight: a 4096-token vocabulary costs a
/// few hundred additions in sequence instead of two chains of 4096.
pub fn draw<W: Copy + Into<f64>>(weights: &[W], rng: &mut impl Rng) -> usize {
    const BLOCK: usize = 64;
    let sums: Vec<f64> = weights.chunks(BLOCK).map(lane_sum).collect();
    let total: f64 = sums.iter().sum();
    let mut u = rng.random::<f64>() * total;
    for (b, &s) in sums.iter().enumerate() {
        if u - s > 0.0 {
            u -= s;
            continue;
        }
        for (i, &w) in weights[b * BLOCK..].iter().take(BLOCK).enumerate() {
            u -= w.into();
            if u <= 0.0 {
                return b * BLOCK + i;
            }
        }
        // Rounding left a sliver of `u` past this block: on to the next.
    }
    weights.iter().rposition(|&w| w.into() > 0.0).unwrap_or(0)
}

/// The sum of `w` in four lanes (vectorised), then across them.
fn lane_sum<W: Copy + Into<f64>>(w: &[W]) -> f64 {
    let mut lanes = [0f64; 4];
    let mut quads = w.chunks_exact(4);
    for q in quads.by_ref() {
        for (l, &x) in lanes.iter_mut().zip(q) {
            *l += x.into();
        }
    }
    lanes.iter().sum::<f64>() + quads.remainder().iter().map(|&x| x.into()).sum::<f64>()
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
        let logits = model.forward(&idx, false, Some(&mut cache))?; // [1, t, vocab]
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

/// One continuation of a batched generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// New tokens (the stop token, if met, is not included).
    pub tokens: Vec<u32>,
    /// Log-probability of each new token under the model (temperature 1, before
    /// top-k/top-p), as PPO rollouts need.
    pub logprobs: Vec<f32>,
    /// Whether generation ended at a stop token (else at the token limit).
    pub stopped: bool,
}

/// Continues several prompts at once over one KV cache: prompts are left-padded
/// to the same length, each row with its own positions and a key-padding mask,
/// and each row samples from its own generator (`seed + row`, so row 0 draws as
/// [`generate`] does). Stops a row at any token of `stop`. The prompt plus the
/// new tokens must fit the context: `max_new_tokens` is cut to what is left, and
/// a prompt that fills the context is an error naming the limit.
pub fn generate_batch(model: &Gpt, prompts: &[Vec<u32>], stop: &[u32], cfg: &SamplingConfig) -> anyhow::Result<Vec<Generated>> {
    cfg.validate()?;
    anyhow::ensure!(!prompts.is_empty(), "generation needs at least one prompt");
    anyhow::ensure!(prompts.iter().all(|p| !p.is_empty()), "generation needs non-empty prompts");
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let block = model.cfg.block_size as usize;
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    anyhow::ensure!(longest < block, "a prompt of {longest} tokens leaves no room in the model's context of {block} positions");
    let max_new = cfg.max_new_tokens.min(block - longest);
    let b = prompts.len();
    let (mut ids, mut pos, mut keys) = (Vec::with_capacity(b * longest), Vec::with_capacity(b * longest), Vec::with_capacity(b * longest));
    for p in prompts {
        let pad = longest - p.len();
        for j in 0..longest {
            ids.push(if j < pad { 0 } else { i64::from(p[j - pad]) });
            pos.push(j.saturating_sub(pad) as i64);
            keys.push(j >= pad);
        }
    }
    let as_tensor = |v: &[i64]| Tensor::from_slice(v).to(device).view([b as i64, -1]);
    let mut key_mask = Tensor::from_slice(&keys).to(device).view([b as i64, -1]);
    let mut cache = KvCache::new(model.cfg.n_layer);
    let mut hidden = model.hidden_padded(&as_tensor(&ids), &as_tensor(&pos), &key_mask, &mut cache)?;
    let mut next_pos: Vec<i64> = prompts.iter().map(|p| p.len() as i64).collect();
    let mut rngs: Vec<ChaCha8Rng> = (0..b).map(|i| ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(i as u64))).collect();
    let mut out = vec![Generated { tokens: Vec::new(), logprobs: Vec::new(), stopped: false }; b];
    for _ in 0..max_new {
        let logits = model.lm_head(&hidden.select(1, -1)); // [b, vocab]
        let logp = logits.log_softmax(-1, Kind::Float).to(tch::Device::Cpu);
        let rows: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&logits.to_kind(Kind::Float).to(tch::Device::Cpu))?;
        let logp: Vec<Vec<f32>> = Vec::<Vec<f32>>::try_from(&logp)?;
        let mut feed = Vec::with_capacity(b);
        for (i, row) in rows.iter().enumerate() {
            let g = &mut out[i];
            if g.stopped {
                feed.push(0);
                continue;
            }
            let next = sample(row, cfg, &mut rngs[i]);
            if stop.contains(&next) {
                g.stopped = true;
            } else {
                g.tokens.push(next);
                g.logprobs.push(logp[i][next as usize]);
            }
            feed.push(i64::from(next));
        }
        if out.iter().all(|g| g.stopped) {
            break;
        }
        let ones = Tensor::ones([b as i64, 1], (Kind::Bool, device));
        key_mask = Tensor::cat(&[&key_mask, &ones], 1);
        let positions = as_tensor(&next_pos);
        next_pos.iter_mut().for_each(|p| *p += 1);
        hidden = model.hidden_padded(&as_tensor(&feed), &positions, &key_mask, &mut cache)?;
    }
    Ok(out)
}

/// Generation for any causal language model without a cache (each token runs
/// the model over the last `context` tokens): the LSTM baseline's samples.
pub fn generate_uncached(model: &dyn LanguageModel, prompt: &[u32], stop: Option<u32>, cfg: &SamplingConfig) -> anyhow::Result<Vec<u32>> {
    cfg.validate()?;
    anyhow::ensure!(!prompt.is_empty(), "generation needs a non-empty prompt");
    let _guard = tch::no_grad_guard();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut tokens: Vec<u32> = prompt.to_vec();
    let mut out = Vec::new();
    for _ in 0..cfg.max_new_tokens {
        let window: Vec<i64> = tail(&tokens, model.context() as usize).iter().map(|&t| i64::from(t)).collect();
        let idx = Tensor::from_slice(&window).to(model.device()).view([1, -1]);
        let logits = model.logits(&idx, false)?.select(1, -1).squeeze_dim(0).to(tch::Device::Cpu);
        let next = sample(&Vec::<f32>::try_from(&logits)?, cfg, &mut rng);
        if Some(next) == stop {
            break;
        }
        tokens.push(next);
        out.push(next);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_picks_what_max_by_total_cmp_picks() {
        use rand::SeedableRng;
        let walk = |x: &[f32]| x.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32);
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for n in [0usize, 1, 5, 16, 17, 100, 4096, 50_257] {
            for case in 0..6 {
                // Few distinct values, so that ties are common.
                let mut x: Vec<f32> = (0..n).map(|_| (rng.random_range(0..7) as f32 - 3.0) * 0.5).collect();
                match case {
                    1 => x.iter_mut().for_each(|v| *v = v.min(0.0)), // the largest is 0.0
                    2 if n > 3 => x[n / 2] = f32::NAN,
                    3 if n > 3 => (x[1], x[n - 1]) = (-0.0, 0.0),
                    4 => x.iter_mut().for_each(|v| *v = f32::NEG_INFINITY),
                    5 if n > 2 => x[n - 2] = f32::INFINITY,
                    _ => {}
                }
                assert_eq!(argmax(&x), walk(&x), "{n} logits, case {case}");
            }
        }
    }

    /// The inverse CDF walked weight by weight, as `draw` did before blocks.
    fn draw_in_sequence(weights: &[f32], rng: &mut impl Rng) -> usize {
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let mut u = rng.random::<f64>() * total;
        for (i, &w) in weights.iter().enumerate() {
            u -= f64::from(w);
            if u <= 0.0 {
                return i;
            }
        }
        weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
    }

    #[test]
    fn drawing_by_blocks_picks_what_the_weight_by_weight_walk_picks() {
        let mut gen = ChaCha8Rng::seed_from_u64(7);
        // A peaked softmax over 4099 tokens (blocks and a ragged tail), zeros included.
        let weights: Vec<f32> = (0..4099).map(|i| if i % 13 == 0 { 0.0 } else { (gen.random::<f32>() * 12.0 - 12.0).exp() }).collect();
        let (mut a, mut b) = (ChaCha8Rng::seed_from_u64(1), ChaCha8Rng::seed_from_u64(1));
        let mut counts = vec![0usize; weights.len()];
        for _ in 0..20_000 {
            let (x, y) = (draw(&weights, &mut a), draw_in_sequence(&weights, &mut b));
            assert_eq!(x, y);
            counts[x] += 1;
        }
        assert!(counts.iter().step_by(13).all(|&c| c == 0), "a zero weight was drawn");
        assert_eq!(draw(&[0.0f32, 0.0, 2.0], &mut a), 2);
        assert_eq!(draw(&[0.5f64; 1], &mut a), 0);
    }
}
