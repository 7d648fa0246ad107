//! A KV cache of fixed slots for continuous batching: sequences join and leave a
//! running batch between decoding steps, each in a slot of its own.
//!
//! Every layer keeps keys and values as `[slots, kv_head, block + 1, head_dim]`;
//! position `block` is a scratch row that padding writes into, so a step may mix
//! rows of different lengths (a prefill of several prompts, or one new token per
//! running sequence) without touching any real entry. A step's queries see their
//! own slot's keys up to their position (causal) and nothing of other slots.

use crate::gpt::Gpt;
use tch::{Device, Kind, Tensor};

/// Keys and values of every layer, by slot.
#[derive(Debug)]
pub struct SlotCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    slots: usize,
    block: usize,
}

impl SlotCache {
    /// A cache of `slots` sequences of up to `model.cfg.block_size` tokens.
    pub fn new(model: &Gpt, slots: usize) -> Self {
        let c = &model.cfg;
        // Grouped-query attention keeps only the key/value heads.
        let shape = [slots as i64, c.kv_heads(), c.block_size + 1, c.head_dim()];
        let zeros = || Tensor::zeros(shape, (Kind::Float, model.device()));
        Self {
            k: (0..c.n_layer).map(|_| zeros()).collect(),
            v: (0..c.n_layer).map(|_| zeros()).collect(),
            slots,
            block: c.block_size as usize,
        }
    }

    /// Tokens a slot can hold.
    pub fn block(&self) -> usize {
        self.block
    }
}

/// One row of a step: `tokens` go into `slot` from position `start` on (the
/// slot already holds `start` tokens of this sequence).
#[derive(Debug, Clone, Copy)]
pub struct SlotRow<'a> {
    pub slot: usize,
    pub start: usize,
    pub tokens: &'a [u32],
}

/// The index tensors of one step, shared by every layer.
pub(crate) struct SlotStep {
    pub slots: Tensor, // [b]
    /// The rows' slots are `first..first + b` in order: the cache is read as a
    /// view, without gathering.
    pub contiguous: Option<i64>,
    pub write_slot: Tensor, // [b * t]
    pub write_pos: Tensor,  // [b * t]
    pub allowed: Tensor,    // [b, 1, t, keys]
    pub keys: i64,
}

/// Index tensors of a step plus the token ids, positions and last real index of
/// each row (ids `[b, t]`, positions `[b, t]`, last `[b]`).
pub(crate) fn plan(rows: &[SlotRow], cache: &SlotCache, device: Device) -> anyhow::Result<(SlotStep, Tensor, Tensor, Tensor)> {
    anyhow::ensure!(!rows.is_empty(), "a step needs at least one row");
    let t = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
    let keys = rows.iter().map(|r| r.start + r.tokens.len()).max().unwrap_or(0);
    let b = rows.len();
    let (mut ids, mut pos, mut wslot, mut wpos) =
        (Vec::with_capacity(b * t), Vec::with_capacity(b * t), Vec::with_capacity(b * t), Vec::with_capacity(b * t));
    let mut allowed = vec![false; b * t * keys];
    for (r, row) in rows.iter().enumerate() {
        anyhow::ensure!(row.slot < cache.slots, "slot {} of a cache of {} slots", row.slot, cache.slots);
        anyhow::ensure!(!row.tokens.is_empty(), "row {r} has no tokens");
        let end = row.start + row.tokens.len();
        anyhow::ensure!(end <= cache.block, "{end} tokens exceed the model's context of {} positions", cache.block);
        for i in 0..t {
            let real = i < row.tokens.len();
            ids.push(if real { i64::from(row.tokens[i]) } else { 0 });
            pos.push(if real { (row.start + i) as i64 } else { 0 });
            wslot.push(row.slot as i64);
            wpos.push(if real { (row.start + i) as i64 } else { cache.block as i64 });
            // Query i sees keys up to its own position, within the row's real
            // extent (a padding query sees the whole row; its output is unused).
            let upto = if real { row.start + i + 1 } else { end };
            let base = (r * t + i) * keys;
            allowed[base..base + upto].iter_mut().for_each(|a| *a = true);
        }
    }
    let (bi, ti) = (b as i64, t as i64);
    let to = |v: &[i64]| Tensor::from_slice(v).to(device);
    let slots: Vec<i64> = rows.iter().map(|r| r.slot as i64).collect();
    let last: Vec<i64> = rows.iter().map(|r| r.tokens.len() as i64 - 1).collect();
    let contiguous = slots.windows(2).all(|w| w[1] == w[0] + 1).then(|| slots[0]);
    let step = SlotStep {
        contiguous,
        slots: to(&slots),
        write_slot: to(&wslot),
        write_pos: to(&wpos),
        allowed: Tensor::from_slice(&allowed).to(device).view([bi, 1, ti, keys as i64]),
        keys: keys as i64,
    };
    Ok((step, to(&ids).view([bi, ti]), to(&pos).view([bi, ti]), to(&last)))
}

/// Attention of one layer over the slot cache: writes this step's keys and
/// values, then attends over the rows' slots.
///
/// # Shapes
/// `q`: `[b, h, t, hd]`, `k`, `v`: `[b, kv, t, hd]` → `[b, h, t, hd]`
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, layer: usize, cache: &mut SlotCache, step: &SlotStep) -> Tensor {
    let (b, h, t, hd) = (k.size()[0], k.size()[1], k.size()[2], k.size()[3]);
    let flat = |z: &Tensor| z.transpose(1, 2).reshape([b * t, h, hd]).to_kind(Kind::Float); // [b*t, h, hd]
    let index = [Some(step.write_slot.shallow_clone()), None, Some(step.write_pos.shallow_clone())];
    let _ = cache.k[layer].index_put_(&index, &flat(k), false);
    let _ = cache.v[layer].index_put_(&index, &flat(v), false);
    let read = |c: &Tensor| {
        let rows = match step.contiguous {
            Some(first) => c.narrow(0, first, b),
            None => c.index_select(0, &step.slots),
        };
        let rows = rows.narrow(2, 0, step.keys).to_kind(q.kind()); // [b, kv, keys, hd]
        crate::gpt::repeat_kv(&rows, q.size()[1])
    };
    let (keys, values) = (read(&cache.k[layer]), read(&cache.v[layer]));
    Tensor::scaled_dot_product_attention(q, &keys, &values, Some(step.allowed.shallow_clone()), 0.0, false, None, false)
}
