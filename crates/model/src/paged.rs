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
    block_tokens: usize,
    /// Every row starts at position 0: its keys are this step's own.
    fresh: bool,
    /// `[b, 1, t, keys]`; none for a decoding step attended in place.
    allowed: Option<Tensor>,
    /// `write` and `read` on the device (a device cache only).
    write_index: Option<Tensor>,
    read_index: Option<Tensor>,
}

/// Cache rows of a step plus the token ids, positions and last real index of
/// each row (ids `[b, t]`, positions `[b, t]`, last `[b]`).
pub(crate) fn plan(rows: &[PagedRow], cache: &PagedCache, device: Device) -> anyhow::Result<(PagedStep, Tensor, Tensor, Tensor)> {
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
    let to = |v: &[i64]| Tensor::from_slice(v).to(device);
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
        block_tokens: bt,
        allowed,
    };
    let (bi, ti) = (b as i64, t as i64);
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

/// The floats of a CPU tensor, in order.
fn host(x: &Tensor) -> Vec<f32> {
    let n = x.numel();
    let mut out = vec![0f32; n];
    x.copy_data(&mut out, n);
    out
}

/// One new token per row attending to its keys where they lie in the cache:
/// scores against every key of the row, a softmax, the weighted sum of the
/// values. Query head `i` reads key/value head `i / (h / kv)` (grouped-query
/// attention, as `repeat_kv`); the scale is SDPA's, `1 / sqrt(hd)`. Keys are
/// read a block at a time (its positions are consecutive rows).
///
/// # Shapes
/// `q`: `[b, h, hd]` → `[b, h, hd]`
fn decode_in_place(q: &[f32], ck: &[f32], cv: &[f32], step: &PagedStep, h: usize, kv: usize, hd: usize) -> Vec<f32> {
    // Compiled 8 floats wide where the CPU has AVX2 (the same bits as without).
    forja_kernels::wide(Decode { q, ck, cv, step, h, kv, hd })
}

/// The operands of [`decode_in_place`], run by [`forja_kernels::wide`].
struct Decode<'a> {
    q: &'a [f32],
    ck: &'a [f32],
    cv: &'a [f32],
    step: &'a PagedStep,
    h: usize,
    kv: usize,
    hd: usize,
}

impl forja_kernels::Wide for Decode<'_> {
    type Out = Vec<f32>;

    #[inline(always)]
    fn run(self) -> Vec<f32> {
        let Decode { q, ck, cv, step, h, kv, hd } = self;
        match hd {
            16 => decode_rows::<16>(q, ck, cv, step, h, kv, hd),
            32 => decode_rows::<32>(q, ck, cv, step, h, kv, hd),
            64 => decode_rows::<64>(q, ck, cv, step, h, kv, hd),
            128 => decode_rows::<128>(q, ck, cv, step, h, kv, hd),
            _ => decode_rows::<0>(q, ck, cv, step, h, kv, hd),
        }
    }
}

/// [`decode_in_place`] with the head size `HD` known when compiling (the
/// products unrolled), or `HD = 0` for any `hd`.
#[inline(always)]
fn decode_rows<const HD: usize>(q: &[f32], ck: &[f32], cv: &[f32], step: &PagedStep, h: usize, kv: usize, hd: usize) -> Vec<f32> {
    let (w, rep) = (kv * hd, h / kv);
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0f32; q.len()];
    let mut scores = Vec::new();
    for r in 0..step.b {
        let rows = &step.read[r * step.keys..r * step.keys + step.ends[r]];
        let n = rows.len();
        scores.clear();
        scores.resize(h * n, 0f32);
        let qr = &q[r * h * hd..(r + 1) * h * hd];
        for (j, key) in keys_of(rows, ck, w, step.block_tokens) {
            for i in 0..h {
                let g = i / rep;
                scores[i * n + j] = dot_n::<HD>(&qr[i * hd..(i + 1) * hd], &key[g * hd..(g + 1) * hd]) * scale;
            }
        }
        for i in 0..h {
            softmax_in_place(&mut scores[i * n..(i + 1) * n]);
        }
        let or = &mut out[r * h * hd..(r + 1) * h * hd];
        for (j, value) in keys_of(rows, cv, w, step.block_tokens) {
            for i in 0..h {
                let g = i / rep;
                axpy_n::<HD>(&mut or[i * hd..(i + 1) * hd], scores[i * n + j], &value[g * hd..(g + 1) * hd]);
            }
        }
    }
    out
}

/// The cache rows of a row's keys, in order with their index: `rows` holds
/// one cache row per position, consecutive within each block of
/// `block_tokens` positions, so each block is one slice of the cache.
#[inline(always)]
fn keys_of<'a>(rows: &'a [usize], cache: &'a [f32], w: usize, block_tokens: usize) -> impl Iterator<Item = (usize, &'a [f32])> + 'a {
    rows.chunks(block_tokens).enumerate().flat_map(move |(c, run)| {
        let first = run[0];
        cache[first * w..(first + run.len()) * w].chunks_exact(w).enumerate().map(move |(k, key)| (c * block_tokens + k, key))
    })
}

/// Softmax of `s` in place.
#[inline(always)]
fn softmax_in_place(s: &mut [f32]) {
    let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    s.iter_mut().for_each(|x| *x = exp_fast(*x - max));
    let sum: f32 = s.iter().sum();
    s.iter_mut().for_each(|x| *x /= sum);
}

/// `e^x` for `x ≤ 0` (a softmax's shifted scores), in straight-line code the
/// compiler vectorises: `x = n ln 2 + f` with `|f| ≤ ln 2 / 2`, `e^f` by its
/// degree-6 Taylor polynomial, `2^n` put into the exponent bits (relative error
/// below 1e-6, tested). Below -87 it is `e^-87` (about 1.6e-38): small enough
/// for a softmax, and no subnormal bits to build.
#[inline(always)]
fn exp_fast(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    let x = x.max(-87.0);
    let n = (x * LOG2E + ROUND) - ROUND;
    let f = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + f * (1.0 + f * (0.5 + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

/// `a · b`, in eight lanes so that the compiler vectorises it; unrolled for
/// slices of `N` floats, or of any (equal) length when `N` is 0.
#[inline(always)]
fn dot_n<const N: usize>(a: &[f32], b: &[f32]) -> f32 {
    let n = if N == 0 { a.len().min(b.len()) } else { N };
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let tail: f32 = (n / 8 * 8..n).map(|k| a[k] * b[k]).sum();
    acc.iter().sum::<f32>() + tail
}

/// `o += p · v`, in eight lanes; for slices of `N` floats, or of any (equal)
/// length when `N` is 0.
#[inline(always)]
fn axpy_n<const N: usize>(o: &mut [f32], p: f32, v: &[f32]) {
    let n = if N == 0 { o.len().min(v.len()) } else { N };
    let (o, v) = (&mut o[..n], &v[..n]);
    let mut lanes = [0f32; 8];
    for (oc, vc) in o.chunks_exact_mut(8).zip(v.chunks_exact(8)) {
        for l in 0..8 {
            lanes[l] = oc[l] + p * vc[l];
        }
        oc.copy_from_slice(&lanes);
    }
    for k in n / 8 * 8..n {
        o[k] += p * v[k];
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_fast_is_within_a_few_ulps_of_exp_over_a_softmaxs_range() {
        let mut worst = 0f32;
        for i in 0..=100_000 {
            let x = -87.0 * i as f32 / 100_000.0;
            let (got, want) = (super::exp_fast(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 1e-6, "largest relative error {worst}");
        assert_eq!(super::exp_fast(-1000.0), super::exp_fast(-87.0));
        assert_eq!(super::exp_fast(0.0), 1.0);
    }
}
