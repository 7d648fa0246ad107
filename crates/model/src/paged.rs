//! A paged KV cache for continuous batching (vLLM's PagedAttention idea, on
//! libtorch): keys and values live in fixed-size blocks of `block_tokens`
//! positions, and each sequence owns a list of blocks (its block table) that
//! grows as it does. Memory follows the tokens in flight rather than
//! sequences × context, and a block holding a full prefix can be shared by
//! several sequences (prefix caching; which blocks are shared is the caller's
//! business, see `forja-serve`'s block pool).
//!
//! Every layer keeps keys and values token by token as
//! `[blocks · block_tokens + 1, kv_head, head_dim]`; the last row is a scratch
//! row that padding writes into and reads from, so a step may mix rows of
//! different lengths (a prefill of several prompts, or one new token per
//! running sequence) without touching any real entry. A step gathers each
//! row's keys through its block table; its queries see their own sequence's
//! keys up to their position (causal) and nothing else.
//!
//! One block of `context` positions per sequence is a slot cache: the layout
//! `forja-serve --kv-layout slots` uses to compare against.

use crate::gpt::{Gpt, GptConfig};
use tch::{Device, Kind, Tensor};

/// Keys and values of every layer, in blocks.
#[derive(Debug)]
pub struct PagedCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    blocks: usize,
    block_tokens: usize,
    context: usize,
}

impl PagedCache {
    /// A cache of `blocks` blocks of `block_tokens` positions each.
    pub fn new(model: &Gpt, blocks: usize, block_tokens: usize) -> anyhow::Result<Self> {
        let c = &model.cfg;
        anyhow::ensure!(blocks >= 1 && block_tokens >= 1, "a paged cache needs blocks of at least one position");
        let rows = (blocks * block_tokens + 1) as i64;
        let shape = [rows, c.kv_heads(), c.head_dim()];
        let zeros = || Tensor::zeros(shape, (Kind::Float, model.device()));
        Ok(Self {
            k: (0..c.n_layer).map(|_| zeros()).collect(),
            v: (0..c.n_layer).map(|_| zeros()).collect(),
            blocks,
            block_tokens,
            context: c.block_size as usize,
        })
    }

    /// Bytes of keys and values one token takes in every layer (float32).
    pub fn bytes_per_token(cfg: &GptConfig) -> usize {
        2 * cfg.n_layer as usize * (cfg.kv_heads() * cfg.head_dim()) as usize * 4
    }

    /// Blocks in the cache.
    pub fn blocks(&self) -> usize {
        self.blocks
    }

    /// Positions per block.
    pub fn block_tokens(&self) -> usize {
        self.block_tokens
    }

    /// Tokens one sequence can hold (the model's context).
    pub fn context(&self) -> usize {
        self.context
    }

    /// The scratch row.
    fn scratch(&self) -> i64 {
        (self.blocks * self.block_tokens) as i64
    }
}

/// One row of a step: `tokens` go into the sequence whose block table is
/// `blocks` from position `start` on (the cache already holds its first
/// `start` tokens). The table must cover `start + tokens.len()` positions.
#[derive(Debug, Clone, Copy)]
pub struct PagedRow<'a> {
    pub blocks: &'a [u32],
    pub start: usize,
    pub tokens: &'a [u32],
}

/// The index tensors of one step, shared by every layer.
pub(crate) struct PagedStep {
    pub write: Tensor,   // [b * t]: cache row of each new key
    pub read: Tensor,    // [b * keys]: cache row of each key a row attends to
    pub allowed: Tensor, // [b, 1, t, keys]
    pub keys: i64,
}

/// Index tensors of a step plus the token ids, positions and last real index of
/// each row (ids `[b, t]`, positions `[b, t]`, last `[b]`).
pub(crate) fn plan(rows: &[PagedRow], cache: &PagedCache, device: Device) -> anyhow::Result<(PagedStep, Tensor, Tensor, Tensor)> {
    anyhow::ensure!(!rows.is_empty(), "a step needs at least one row");
    let t = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
    let keys = rows.iter().map(|r| r.start + r.tokens.len()).max().unwrap_or(0);
    let b = rows.len();
    let bt = cache.block_tokens;
    let (mut ids, mut pos, mut write) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t), Vec::with_capacity(b * t));
    let mut read = Vec::with_capacity(b * keys);
    let mut allowed = vec![false; b * t * keys];
    for (r, row) in rows.iter().enumerate() {
        anyhow::ensure!(!row.tokens.is_empty(), "row {r} has no tokens");
        let end = row.start + row.tokens.len();
        anyhow::ensure!(end <= cache.context, "{end} tokens exceed the model's context of {} positions", cache.context);
        anyhow::ensure!(
            end <= row.blocks.len() * bt,
            "row {r}: {end} positions need {} blocks of {bt}, its table has {}",
            end.div_ceil(bt),
            row.blocks.len()
        );
        if let Some(&bad) = row.blocks.iter().find(|&&blk| blk as usize >= cache.blocks) {
            anyhow::bail!("row {r}: block {bad} of a cache of {} blocks", cache.blocks);
        }
        let at = |p: usize| i64::from(row.blocks[p / bt]) * bt as i64 + (p % bt) as i64;
        read.extend((0..keys).map(|j| if j < end { at(j) } else { cache.scratch() }));
        for i in 0..t {
            let real = i < row.tokens.len();
            ids.push(if real { i64::from(row.tokens[i]) } else { 0 });
            pos.push(if real { (row.start + i) as i64 } else { 0 });
            write.push(if real { at(row.start + i) } else { cache.scratch() });
            // Query i sees keys up to its own position, within the row's real
            // extent (a padding query sees the whole row; its output is unused).
            let upto = if real { row.start + i + 1 } else { end };
            let base = (r * t + i) * keys;
            allowed[base..base + upto].iter_mut().for_each(|a| *a = true);
        }
    }
    let (bi, ti) = (b as i64, t as i64);
    let to = |v: &[i64]| Tensor::from_slice(v).to(device);
    let last: Vec<i64> = rows.iter().map(|r| r.tokens.len() as i64 - 1).collect();
    let step = PagedStep {
        write: to(&write),
        read: to(&read),
        allowed: Tensor::from_slice(&allowed).to(device).view([bi, 1, ti, keys as i64]),
        keys: keys as i64,
    };
    Ok((step, to(&ids).view([bi, ti]), to(&pos).view([bi, ti]), to(&last)))
}

/// Attention of one layer over the paged cache: writes this step's keys and
/// values, then attends over each row's keys.
///
/// # Shapes
/// `q`: `[b, h, t, hd]`, `k`, `v`: `[b, kv, t, hd]` → `[b, h, t, hd]`
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, layer: usize, cache: &mut PagedCache, step: &PagedStep) -> Tensor {
    let (b, kv, t, hd) = (k.size()[0], k.size()[1], k.size()[2], k.size()[3]);
    let flat = |z: &Tensor| z.transpose(1, 2).reshape([b * t, kv, hd]).to_kind(Kind::Float); // [b*t, kv, hd]
    let index = [Some(step.write.shallow_clone())];
    let _ = cache.k[layer].index_put_(&index, &flat(k), false);
    let _ = cache.v[layer].index_put_(&index, &flat(v), false);
    let read = |c: &Tensor| {
        let rows = c.index_select(0, &step.read).view([b, step.keys, kv, hd]).transpose(1, 2).to_kind(q.kind()); // [b, kv, keys, hd]
        crate::gpt::repeat_kv(&rows, q.size()[1])
    };
    let (keys, values) = (read(&cache.k[layer]), read(&cache.v[layer]));
    Tensor::scaled_dot_product_attention(q, &keys, &values, Some(step.allowed.shallow_clone()), 0.0, false, None, false)
}
