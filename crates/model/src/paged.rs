//! A paged KV cache for continuous batching (vLLM's PagedAttention idea, on
//! libtorch): keys and values live in fixed-size blocks of `block_tokens`
//! positions, and each sequence owns a list of blocks (its block table) that
//! grows as it does. Memory follows the tokens in flight rather than
//! sequences × context, and a block holding a full prefix can be shared by
//! several sequences (prefix caching; which blocks are shared is the caller's
//! business, see `forja-serve`'s block pool).
//!
//! Every layer keeps keys and values token by token as
//! `[blocks · block_tokens + 1, kv_head, head_dim]` (float32); the last row is
//! a scratch row that padding writes into and reads from, so a step may mix
//! rows of different lengths (a prefill of several prompts, or one new token
//! per running sequence) without touching any real entry. A row's queries see
//! their own sequence's keys up to their position (causal) and nothing else.
//!
//! On the CPU the cache is plain memory and a decoding step (one new token per
//! row) attends in place, block by block, without gathering the rows' keys
//! into a batch first: at batch 8 a gather through `index_select` made a step
//! of the serving benchmark's model 40% slower than fixed slots read as a
//! view. Steps of several tokens (prefills) gather the keys of rows that have a
//! cached past and call SDPA. On a GPU the cache is a tensor per layer,
//! gathered with `index_select`.
//!
//! One block of `context` positions per sequence is a slot cache: the layout
//! `forja-serve --kv-layout slots` uses to compare against.

use crate::gpt::{Gpt, GptConfig};
use tch::{Device, Kind, Tensor};

/// Where the keys and values live.
enum Store {
    /// Host memory, one `Vec` per layer (CPU models).
    Host { k: Vec<Vec<f32>>, v: Vec<Vec<f32>> },
    /// A tensor per layer on the model's device.
    Device { k: Vec<Tensor>, v: Vec<Tensor> },
}

/// Keys and values of every layer, in blocks.
pub struct PagedCache {
    store: Store,
    blocks: usize,
    block_tokens: usize,
    context: usize,
    /// Floats of one position of one layer (`kv_head · head_dim`).
    width: usize,
}

/// Its shape, not its (hundreds of MB of) contents.
impl std::fmt::Debug for PagedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match self.store {
            Store::Host { .. } => "host",
            Store::Device { .. } => "device",
        };
        f.debug_struct("PagedCache")
            .field("blocks", &self.blocks)
            .field("block_tokens", &self.block_tokens)
            .field("context", &self.context)
            .field("width", &self.width)
            .field("store", &place)
            .finish()
    }
}

impl PagedCache {
    /// A cache of `blocks` blocks of `block_tokens` positions each: in host
    /// memory for a CPU model, in tensors on a GPU model's device.
    pub fn new(model: &Gpt, blocks: usize, block_tokens: usize) -> anyhow::Result<Self> {
        Self::build(model, blocks, block_tokens, model.device() == Device::Cpu)
    }

    /// The same cache kept in tensors on the model's device whatever it is
    /// (what [`PagedCache::new`] does on a GPU; the tests run that path on the CPU).
    pub fn in_tensors(model: &Gpt, blocks: usize, block_tokens: usize) -> anyhow::Result<Self> {
        Self::build(model, blocks, block_tokens, false)
    }

    fn build(model: &Gpt, blocks: usize, block_tokens: usize, host: bool) -> anyhow::Result<Self> {
        let c = &model.cfg;
        anyhow::ensure!(blocks >= 1 && block_tokens >= 1, "a paged cache needs blocks of at least one position");
        let rows = blocks * block_tokens + 1;
        let width = (c.kv_heads() * c.head_dim()) as usize;
        let layers = c.n_layer as usize;
        let store = if host {
            let zeros = || (0..layers).map(|_| vec![0f32; rows * width]).collect();
            Store::Host { k: zeros(), v: zeros() }
        } else {
            let zeros =
                || (0..layers).map(|_| Tensor::zeros([rows as i64, c.kv_heads(), c.head_dim()], (Kind::Float, model.device()))).collect();
            Store::Device { k: zeros(), v: zeros() }
        };
        Ok(Self { store, blocks, block_tokens, context: c.block_size as usize, width })
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
    fn scratch(&self) -> usize {
        self.blocks * self.block_tokens
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

/// The cache rows of one step, shared by every layer.
pub(crate) struct PagedStep {
    /// Cache row of each new key, `[b * t]` (padding: the scratch row).
    write: Vec<usize>,
    /// Cache row of each key each row attends to, `[b * keys]` (past a row's
    /// end: the scratch row).
    read: Vec<usize>,
    /// Keys of each row (its past and new tokens).
    ends: Vec<usize>,
    b: usize,
    t: usize,
    keys: usize,
    /// Every row starts at position 0: its keys are this step's own.
    fresh: bool,
    /// `[b, 1, t, keys]`; none for a decoding step attended in place.
    allowed: Option<Tensor>,
    /// `write` and `read` on the device (a device cache only).
    write_index: Option<Tensor>,
    read_index: Option<Tensor>,
}

/// Cache rows of a step plus the token ids, positions and last real index of
/// each row, on the host (`device` is where the masks and indices go).
pub(crate) fn plan_rows(rows: &[PagedRow], cache: &PagedCache, device: Device) -> anyhow::Result<Plan> {
    anyhow::ensure!(!rows.is_empty(), "a step needs at least one row");
    let t = rows.iter().map(|r| r.tokens.len()).max().unwrap_or(0);
    let keys = rows.iter().map(|r| r.start + r.tokens.len()).max().unwrap_or(0);
    let b = rows.len();
    let bt = cache.block_tokens;
    let (mut ids, mut pos, mut write) = (Vec::with_capacity(b * t), Vec::with_capacity(b * t), Vec::with_capacity(b * t));
    let mut read = Vec::with_capacity(b * keys);
    let ends: Vec<usize> = rows.iter().map(|r| r.start + r.tokens.len()).collect();
    for (r, (row, &end)) in rows.iter().zip(&ends).enumerate() {
        anyhow::ensure!(!row.tokens.is_empty(), "row {r} has no tokens");
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
        let at = |p: usize| row.blocks[p / bt] as usize * bt + p % bt;
        read.extend((0..keys).map(|j| if j < end { at(j) } else { cache.scratch() }));
        for i in 0..t {
            let real = i < row.tokens.len();
            ids.push(if real { i64::from(row.tokens[i]) } else { 0 });
            pos.push(if real { (row.start + i) as i64 } else { 0 });
            write.push(if real { at(row.start + i) } else { cache.scratch() });
        }
    }
    let host = matches!(cache.store, Store::Host { .. });
    // Query i of a row sees keys up to its own position, within the row's real
    // extent (a padding query sees the whole row; its output is unused).
    let allowed = (!(host && t == 1)).then(|| {
        let mut allowed = vec![false; b * t * keys];
        for (r, (row, &end)) in rows.iter().zip(&ends).enumerate() {
            for i in 0..t {
                let upto = if i < row.tokens.len() { row.start + i + 1 } else { end };
                let base = (r * t + i) * keys;
                allowed[base..base + upto].iter_mut().for_each(|a| *a = true);
            }
        }
        Tensor::from_slice(&allowed).to(device).view([b as i64, 1, t as i64, keys as i64])
    });
    let index = |v: &[usize]| (!host).then(|| Tensor::from_slice(&v.iter().map(|&x| x as i64).collect::<Vec<_>>()).to(device));
    let last: Vec<i64> = rows.iter().map(|r| r.tokens.len() as i64 - 1).collect();
    let step = PagedStep {
        write_index: index(&write),
        read_index: index(&read),
        ends,
        fresh: rows.iter().all(|r| r.start == 0),
        write,
        read,
        b,
        t,
        keys,
        allowed,
    };
    Ok(Plan { step, ids, positions: pos, last })
}

/// A step's cache rows, and its token ids and positions (`[b · t]`) and the
/// last real index of each row (`[b]`).
pub(crate) struct Plan {
    pub(crate) step: PagedStep,
    pub(crate) ids: Vec<i64>,
    pub(crate) positions: Vec<i64>,
    pub(crate) last: Vec<i64>,
}

/// Cache rows of a step plus the token ids, positions and last real index of
/// each row as tensors on `device` (ids `[b, t]`, positions `[b, t]`, last `[b]`).
pub(crate) fn plan(rows: &[PagedRow], cache: &PagedCache, device: Device) -> anyhow::Result<(PagedStep, Tensor, Tensor, Tensor)> {
    let Plan { step, ids, positions, last } = plan_rows(rows, cache, device)?;
    let (b, t) = (step.b as i64, step.t as i64);
    let to = |v: &[i64]| Tensor::from_slice(v).to(device);
    Ok((step, to(&ids).view([b, t]), to(&positions).view([b, t]), to(&last)))
}

/// Attention of one layer over the paged cache: writes this step's keys and
/// values, then attends over each row's keys.
///
/// # Shapes
/// `q`: `[b, h, t, hd]`, `k`, `v`: `[b, kv, t, hd]` → `[b, h, t, hd]`
pub(crate) fn attend(q: &Tensor, k: &Tensor, v: &Tensor, layer: usize, cache: &mut PagedCache, step: &PagedStep) -> Tensor {
    let (b, kv, t, hd) = (k.size()[0], k.size()[1], k.size()[2], k.size()[3]);
    let flat = |z: &Tensor| z.transpose(1, 2).reshape([b * t, kv, hd]).to_kind(Kind::Float); // [b*t, kv, hd]
    let w = cache.width;
    let sdpa = |keys: &Tensor, values: &Tensor| {
        let (keys, values) = (crate::gpt::repeat_kv(keys, q.size()[1]), crate::gpt::repeat_kv(values, q.size()[1]));
        Tensor::scaled_dot_product_attention(q, &keys, &values, step.allowed.as_ref().map(Tensor::shallow_clone), 0.0, false, None, false)
    };
    match &mut cache.store {
        Store::Device { k: ck, v: cv } => {
            let (Some(write), Some(read)) = (&step.write_index, &step.read_index) else {
                unreachable!("a device cache's step has device indices")
            };
            let index = [Some(write.shallow_clone())];
            let _ = ck[layer].index_put_(&index, &flat(k), false);
            let _ = cv[layer].index_put_(&index, &flat(v), false);
            // [b, kv, keys, hd]
            let gather = |c: &Tensor| c.index_select(0, read).view([b, step.keys as i64, kv, hd]).transpose(1, 2).to_kind(q.kind());
            sdpa(&gather(&ck[layer]), &gather(&cv[layer]))
        }
        Store::Host { k: ck, v: cv } => {
            let (ck, cv) = (&mut ck[layer], &mut cv[layer]);
            for (cache, new) in [(&mut *ck, k), (&mut *cv, v)] {
                let rows = host(&flat(new));
                for (i, &row) in step.write.iter().enumerate() {
                    cache[row * w..(row + 1) * w].copy_from_slice(&rows[i * w..(i + 1) * w]);
                }
            }
            if step.t == 1 {
                let out = decode_in_place(&host(&q.to_kind(Kind::Float)), ck, cv, step, q.size()[1] as usize, kv as usize, hd as usize);
                return Tensor::from_slice(&out).view([b, q.size()[1], 1, hd]).to_kind(q.kind());
            }
            if step.fresh {
                return sdpa(k, v);
            }
            let gather = |c: &[f32]| {
                let mut rows = Vec::with_capacity(step.read.len() * w);
                for &row in &step.read {
                    rows.extend_from_slice(&c[row * w..(row + 1) * w]);
                }
                Tensor::from_slice(&rows).view([b, step.keys as i64, kv, hd]).transpose(1, 2).to_kind(q.kind())
            };
            sdpa(&gather(ck), &gather(cv))
        }
    }
}

/// A decoding step's attention on host floats: `qkv` holds each row's
/// query, key and value side by side (`[b, (h + 2 kv) · hd]`, as a fused
/// projection gives them); writes the keys and values into the cache and
/// returns the attention output `[b, h · hd]`. `None` unless the cache is in
/// host memory and every row has one token.
pub(crate) fn decode_host(qkv: &[f32], layer: usize, cache: &mut PagedCache, step: &PagedStep, h: usize, hd: usize) -> Option<Vec<f32>> {
    let w = cache.width;
    let Store::Host { k: ck, v: cv } = &mut cache.store else {
        return None;
    };
    let (qw, kv) = (h * hd, w / hd.max(1));
    let row_w = qw + 2 * w;
    if step.t != 1 || qkv.len() != step.b * row_w {
        return None;
    }
    let (ck, cv) = (&mut ck[layer], &mut cv[layer]);
    let mut q = Vec::with_capacity(step.b * qw);
    for (src, &dst) in qkv.chunks_exact(row_w).zip(&step.write) {
        q.extend_from_slice(&src[..qw]);
        ck[dst * w..(dst + 1) * w].copy_from_slice(&src[qw..qw + w]);
        cv[dst * w..(dst + 1) * w].copy_from_slice(&src[qw + w..]);
    }
    Some(decode_in_place(&q, ck, cv, step, h, kv, hd))
}

impl PagedCache {
    /// Whether the keys and values live in host memory.
    pub(crate) fn on_host(&self) -> bool {
        matches!(self.store, Store::Host { .. })
    }
}

/// The floats of a CPU tensor, in order.
fn host(x: &Tensor) -> Vec<f32> {
    let n = x.numel();
    let mut out = vec![0f32; n];
    x.copy_data(&mut out, n);
    out
}

/// One new token per row attending to its keys where they lie in the cache:
/// scores against every key of the row, a softmax, the weighted sum of the
/// values ([`forja_kernels::attend_row`]: eight keys at a time on AVX2).
/// Query head `i` reads key/value head `i / (h / kv)` (grouped-query
/// attention, as `repeat_kv`); the scale is SDPA's, `1 / sqrt(hd)`.
///
/// # Shapes
/// `q`: `[b, h, hd]` → `[b, h, hd]`
fn decode_in_place(q: &[f32], ck: &[f32], cv: &[f32], step: &PagedStep, h: usize, kv: usize, hd: usize) -> Vec<f32> {
    let mut out = vec![0f32; q.len()];
    let mut scores = Vec::new();
    for r in 0..step.b {
        let row = forja_kernels::AttentionRow {
            q: &q[r * h * hd..(r + 1) * h * hd],
            k: ck,
            v: cv,
            rows: &step.read[r * step.keys..r * step.keys + step.ends[r]],
            heads: h,
            kv_heads: kv,
            head_dim: hd,
        };
        // The plan checked every row against the cache, and the shapes are the model's.
        if let Err(e) = forja_kernels::attend_row(&row, &mut scores, &mut out[r * h * hd..(r + 1) * h * hd]) {
            unreachable!("a planned decoding step has consistent shapes: {e}")
        }
    }
    out
}
