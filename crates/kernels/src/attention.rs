//! Decoding attention: one new query per sequence against the keys and
//! values it has in a cache, read where they lie (no gather into a batch).
//!
//! The AVX2 + FMA kernel takes eight keys at a time per head, so that the
//! eight dot products are reduced across lanes together (seven shuffles and
//! adds for eight scores, where one product alone needs as many), and keeps a
//! head's output in registers while it walks the values. It needs a head size
//! that is a multiple of 8 up to 128; other sizes, and CPUs without AVX2, take
//! the portable kernel. The two add in different orders, so their results
//! agree to rounding, not bit for bit; each sequence's output depends only on
//! its own query, keys and values, never on the other rows of the batch.

use crate::{Error, Isa};

/// One query row's operands: its query, the caches and where its keys are.
#[derive(Debug, Clone, Copy)]
pub struct AttentionRow<'a> {
    /// `[heads, head_dim]`.
    pub q: &'a [f32],
    /// Keys: rows of `kv_heads · head_dim` floats, as many as the cache holds.
    pub k: &'a [f32],
    /// Values, laid out as `k`.
    pub v: &'a [f32],
    /// The cache row of each key this query attends to, in position order.
    pub rows: &'a [usize],
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionRow<'_> {
    /// Checks every length and index the kernels read through.
    fn check(&self, out: &[f32]) -> Result<(), Error> {
        let (h, kv, hd) = (self.heads, self.kv_heads, self.head_dim);
        if kv == 0 || h % kv != 0 {
            return Err(Error::Shape { what: "query heads (a multiple of the key/value heads)", expected: kv, got: h });
        }
        crate::check_len("query", h * hd, self.q.len())?;
        crate::check_len("output", h * hd, out.len())?;
        crate::check_len("values (as many as keys)", self.k.len(), self.v.len())?;
        let w = kv * hd;
        let cached = self.k.len().checked_div(w).unwrap_or(0);
        if let Some(&bad) = self.rows.iter().find(|&&r| r >= cached) {
            return Err(Error::Shape { what: "cache row (rows in the cache)", expected: cached, got: bad });
        }
        Ok(())
    }
}

/// Softmax-weighted sum of the values, per head: `out[i] = Σⱼ softmax(q[i] ·
/// k[j] / √hd)ⱼ v[j]`, query head `i` reading key/value head `i / (h / kv)`
/// (grouped-query attention). `scores` is scratch, reused across calls.
///
/// An empty `rows` gives zeros.
pub fn attend_row(a: &AttentionRow, scores: &mut Vec<f32>, out: &mut [f32]) -> Result<(), Error> {
    attend_row_with(Isa::detect(), a, scores, out)
}

/// [`attend_row`] with the kernel of `isa` (AVX-512 runs the AVX2 kernel;
/// the portable one when this CPU or the head size rules it out).
pub fn attend_row_with(isa: Isa, a: &AttentionRow, scores: &mut Vec<f32>, out: &mut [f32]) -> Result<(), Error> {
    a.check(out)?;
    let n = a.rows.len();
    scores.clear();
    scores.resize(a.heads * n, 0.0);
    if n == 0 {
        out.iter_mut().for_each(|o| *o = 0.0);
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && isa.supported() && Isa::Avx2.supported() {
        let kernel: Option<x86::Kernel> = match a.head_dim {
            8 => Some(x86::attend::<1>),
            16 => Some(x86::attend::<2>),
            32 => Some(x86::attend::<4>),
            64 => Some(x86::attend::<8>),
            128 => Some(x86::attend::<16>),
            _ => None,
        };
        if let Some(kernel) = kernel {
            // SAFETY: the CPU has AVX2 and FMA (checked just above), and `check`
            // bounded every slice and cache row the kernel reads or writes.
            unsafe { kernel(a, scores, out) };
            return Ok(());
        }
    }
    let _ = isa;
    portable(a, scores, out);
    Ok(())
}

/// The portable kernel: scores key by key, a softmax, the weighted values.
fn portable(a: &AttentionRow, scores: &mut [f32], out: &mut [f32]) {
    let (h, hd, n) = (a.heads, a.head_dim, a.rows.len());
    let (w, rep) = (a.kv_heads * hd, h / a.kv_heads);
    let scale = 1.0 / (hd as f32).sqrt();
    for (j, &row) in a.rows.iter().enumerate() {
        let key = &a.k[row * w..(row + 1) * w];
        for i in 0..h {
            let g = i / rep;
            let dot: f32 = a.q[i * hd..(i + 1) * hd].iter().zip(&key[g * hd..(g + 1) * hd]).map(|(x, y)| x * y).sum();
            scores[i * n + j] = dot * scale;
        }
    }
    out.iter_mut().for_each(|o| *o = 0.0);
    for i in 0..h {
        let g = i / rep;
        let s = &mut scores[i * n..(i + 1) * n];
        let inv = 1.0 / softmax_unnormalised(s);
        let o = &mut out[i * hd..(i + 1) * hd];
        for (&p, &row) in s.iter().zip(a.rows) {
            let value = &a.v[row * w + g * hd..row * w + (g + 1) * hd];
            o.iter_mut().zip(value).for_each(|(o, v)| *o += p * v);
        }
        o.iter_mut().for_each(|o| *o *= inv);
    }
}

/// `s ← e^(s − max s)` in place; returns the sum (at least 1).
#[inline(always)]
fn softmax_unnormalised(s: &mut [f32]) -> f32 {
    let max = max_of(s);
    s.iter_mut().for_each(|x| *x = exp_fast(*x - max));
    sum_of(s)
}

/// The largest of `s` (NaNs ignored; −∞ when empty), in eight lanes.
#[inline(always)]
fn max_of(s: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = s.chunks_exact(8);
    for c in chunks.by_ref() {
        for l in 0..8 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// The sum of `s`, in eight lanes.
#[inline(always)]
fn sum_of(s: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = s.chunks_exact(8);
    for c in chunks.by_ref() {
        for l in 0..8 {
            lanes[l] += c[l];
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// Sampling weights of a row of logits at inverse temperature `inv_t`:
/// `out[i] = e^((x[i] − max x) · inv_t)`, a softmax before its division
/// (what drawing by the inverse CDF needs). Vectorised 8 wide where the CPU
/// has AVX2; `exp` to within 1e-6 relative (`exp_fast`).
pub fn softmax_weights(x: &[f32], inv_t: f32, out: &mut Vec<f32>) {
    out.clear();
    out.resize(x.len(), 0.0);
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx2.supported() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { x86::softmax_weights(x, inv_t, out) };
        return;
    }
    weights_into(x, inv_t, out);
}

#[inline(always)]
fn weights_into(x: &[f32], inv_t: f32, out: &mut [f32]) {
    let max = max_of(x);
    out.iter_mut().zip(x).for_each(|(o, &v)| *o = exp_fast((v - max) * inv_t));
}

/// `e^x` for `x ≤ 0` (a softmax's shifted scores), in straight-line code the
/// compiler vectorises: `x = n ln 2 + f` with `|f| ≤ ln 2 / 2`, `e^f` by its
/// degree-6 Taylor polynomial, `2^n` put into the exponent bits (relative error
/// below 1e-6, tested). Below -87 it is `e^-87` (about 1.6e-38): small enough
/// for a softmax, and no subnormal bits to build.
#[inline(always)]
pub(crate) fn exp_fast(x: f32) -> f32 {
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

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::AttentionRow;
    use crate::x86::exp8;
    use std::arch::x86_64::*;

    /// A kernel for one head size: query row, scores (scratch), output.
    pub(super) type Kernel = unsafe fn(&AttentionRow, &mut [f32], &mut [f32]);

    /// Lane `k` of the result is the sum of the lanes of `s[k]`.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn reduce8(s: &[__m256; 8]) -> __m256 {
        let t0 = _mm256_hadd_ps(s[0], s[1]);
        let t1 = _mm256_hadd_ps(s[2], s[3]);
        let t2 = _mm256_hadd_ps(s[4], s[5]);
        let t3 = _mm256_hadd_ps(s[6], s[7]);
        // [s0 s1 s2 s3 | s0 s1 s2 s3] over the low and the high four lanes.
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31))
    }

    /// The sum of the lanes of `v`.
    ///
    /// # Safety
    /// The CPU has AVX2.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1)))
    }

    /// [`super::softmax_weights`] compiled for AVX2 + FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_weights(x: &[f32], inv_t: f32, out: &mut [f32]) {
        weights(x, super::max_of(x), inv_t, out)
    }

    /// `s ← e^(s − max s)` in place; returns the sum (as
    /// [`super::softmax_unnormalised`], with [`exp8`]).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn softmax_unnormalised(s: &mut [f32]) -> f32 {
        let max = super::max_of(s);
        let mut xs = s.chunks_exact_mut(8);
        let (m, mut acc) = (_mm256_set1_ps(max), _mm256_setzero_ps());
        for c in xs.by_ref() {
            // SAFETY: the chunk is 8 floats long.
            unsafe {
                let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), m));
                _mm256_storeu_ps(c.as_mut_ptr(), e);
                acc = _mm256_add_ps(acc, e);
            }
        }
        let mut sum = hsum(acc);
        for v in xs.into_remainder() {
            *v = super::exp_fast(*v - max);
            sum += *v;
        }
        sum
    }

    /// `out[i] = e^((x[i] − max) · inv_t)`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn weights(x: &[f32], max: f32, inv_t: f32, out: &mut [f32]) {
        let (m, t) = (_mm256_set1_ps(max), _mm256_set1_ps(inv_t));
        let mut xs = x.chunks_exact(8);
        let mut os = out.chunks_exact_mut(8);
        for (xc, oc) in xs.by_ref().zip(os.by_ref()) {
            // SAFETY: both chunks are 8 floats long.
            unsafe { _mm256_storeu_ps(oc.as_mut_ptr(), exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xc.as_ptr()), m), t))) };
        }
        for (o, &v) in os.into_remainder().iter_mut().zip(xs.remainder()) {
            *o = super::exp_fast((v - max) * inv_t);
        }
    }

    /// The kernel for a head size of `8 C`.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `a.check(out)` passed and `scores` is
    /// `heads × rows` long.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn attend<const C: usize>(a: &AttentionRow, scores: &mut [f32], out: &mut [f32]) {
        // SAFETY: the CPU has AVX2 and FMA (the caller's promise), and
        // `check` bounded each cache row by the cache's length, so
        // row·w + g·hd + 8c + 8 ≤ k.len() = v.len() for g < kv and c < C; the
        // query and the output are h·hd long, the scores h·n.
        unsafe {
            let (h, hd, n) = (a.heads, a.head_dim, a.rows.len());
            let (w, rep) = (a.kv_heads * hd, h / a.kv_heads);
            let scale = _mm256_set1_ps(1.0 / (hd as f32).sqrt());
            let (q, k, v, s) = (a.q.as_ptr(), a.k.as_ptr(), a.v.as_ptr(), scores.as_mut_ptr());
            let mut j = 0;
            while j + 8 <= n {
                let keys: [*const f32; 8] = std::array::from_fn(|t| k.add(a.rows[j + t] * w));
                for i in 0..h {
                    let (qi, g) = (q.add(i * hd), i / rep);
                    let mut acc = [_mm256_setzero_ps(); 8];
                    for (t, key) in keys.iter().enumerate() {
                        let kp = key.add(g * hd);
                        let mut d = _mm256_mul_ps(_mm256_loadu_ps(qi), _mm256_loadu_ps(kp));
                        for c in 1..C {
                            d = _mm256_fmadd_ps(_mm256_loadu_ps(qi.add(8 * c)), _mm256_loadu_ps(kp.add(8 * c)), d);
                        }
                        acc[t] = d;
                    }
                    _mm256_storeu_ps(s.add(i * n + j), _mm256_mul_ps(reduce8(&acc), scale));
                }
                j += 8;
            }
            for (j, &row) in a.rows.iter().enumerate().skip(j) {
                for i in 0..h {
                    let (qi, kp) = (q.add(i * hd), k.add(row * w + (i / rep) * hd));
                    let mut d = _mm256_setzero_ps();
                    for c in 0..C {
                        d = _mm256_fmadd_ps(_mm256_loadu_ps(qi.add(8 * c)), _mm256_loadu_ps(kp.add(8 * c)), d);
                    }
                    *s.add(i * n + j) = hsum(_mm256_mul_ps(d, scale));
                }
            }
            for i in 0..h {
                let g = i / rep;
                let si = &mut scores[i * n..(i + 1) * n];
                let inv = _mm256_set1_ps(1.0 / softmax_unnormalised(si));
                // Two sets of accumulators (even and odd keys) when they fit the
                // registers, so that consecutive multiply-adds do not wait on each other.
                let mut even = [_mm256_setzero_ps(); C];
                let mut odd = [_mm256_setzero_ps(); C];
                let pairs = if C <= 4 { n / 2 } else { 0 };
                for p in 0..pairs {
                    let (j0, j1) = (2 * p, 2 * p + 1);
                    let (p0, p1) = (_mm256_set1_ps(si[j0]), _mm256_set1_ps(si[j1]));
                    let (v0, v1) = (v.add(a.rows[j0] * w + g * hd), v.add(a.rows[j1] * w + g * hd));
                    for c in 0..C {
                        even[c] = _mm256_fmadd_ps(p0, _mm256_loadu_ps(v0.add(8 * c)), even[c]);
                        odd[c] = _mm256_fmadd_ps(p1, _mm256_loadu_ps(v1.add(8 * c)), odd[c]);
                    }
                }
                for (&p, &row) in si.iter().zip(a.rows).skip(2 * pairs) {
                    let (pj, vj) = (_mm256_set1_ps(p), v.add(row * w + g * hd));
                    for (c, e) in even.iter_mut().enumerate() {
                        *e = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj.add(8 * c)), *e);
                    }
                }
                for c in 0..C {
                    _mm256_storeu_ps(out.as_mut_ptr().add(i * hd + 8 * c), _mm256_mul_ps(_mm256_add_ps(even[c], odd[c]), inv));
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;
    use crate::tests::noise;

    /// The attention in float64, with the exact exponential.
    fn reference(a: &AttentionRow) -> Vec<f64> {
        let (h, hd, kv) = (a.heads, a.head_dim, a.kv_heads);
        let (w, rep) = (kv * hd, h / kv);
        let mut out = vec![0f64; h * hd];
        for i in 0..h {
            let g = i / rep;
            let s: Vec<f64> = a
                .rows
                .iter()
                .map(|&r| (0..hd).map(|d| a.q[i * hd + d] as f64 * a.k[r * w + g * hd + d] as f64).sum::<f64>() / (hd as f64).sqrt())
                .collect();
            let max = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = s.iter().map(|x| (x - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            for (p, &r) in e.iter().zip(a.rows) {
                for d in 0..hd {
                    out[i * hd + d] += p / sum * a.v[r * w + g * hd + d] as f64;
                }
            }
        }
        out
    }

    #[test]
    fn every_kernel_matches_float64_attention_on_scattered_rows() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2, Isa::Portable].into_iter().filter(|i| i.supported()).collect();
        // (heads, kv heads, head size, keys): multiples of 8 keys and not,
        // grouped-query, head sizes the fast kernel takes and one it does not.
        for &(h, kv, hd, n) in &[(4, 4, 32, 37), (4, 2, 64, 16), (8, 2, 16, 5), (2, 1, 128, 9), (3, 3, 12, 20), (1, 1, 8, 1)] {
            let cache_rows = 3 * n + 7;
            let (k, v) = (noise(cache_rows * kv * hd, 1), noise(cache_rows * kv * hd, 2));
            // Scale the query so the softmax is far from uniform.
            let q: Vec<f32> = noise(h * hd, 3).iter().map(|x| 4.0 * x).collect();
            let rows: Vec<usize> = (0..n).map(|j| (j * 7 + 3) % cache_rows).collect();
            let a = AttentionRow { q: &q, k: &k, v: &v, rows: &rows, heads: h, kv_heads: kv, head_dim: hd };
            let want = reference(&a);
            for &isa in &isas {
                let mut out = vec![f32::NAN; h * hd];
                attend_row_with(isa, &a, &mut Vec::new(), &mut out).unwrap();
                let worst = out.iter().zip(&want).map(|(x, y)| (*x as f64 - y).abs()).fold(0f64, f64::max);
                assert!(worst < 1e-5, "{} h={h} kv={kv} hd={hd} n={n}: off by {worst}", isa.name());
            }
        }
    }

    #[test]
    fn no_keys_give_zeros_and_bad_shapes_are_errors() {
        let (q, k) = (vec![1f32; 8], vec![0f32; 16]);
        let mut out = vec![f32::NAN; 8];
        let a = AttentionRow { q: &q, k: &k, v: &k, rows: &[], heads: 1, kv_heads: 1, head_dim: 8 };
        attend_row(&a, &mut Vec::new(), &mut out).unwrap();
        assert_eq!(out, vec![0f32; 8]);
        let far = AttentionRow { rows: &[2], ..a };
        assert_eq!(
            attend_row(&far, &mut Vec::new(), &mut out).unwrap_err(),
            Error::Shape { what: "cache row (rows in the cache)", expected: 2, got: 2 }
        );
        let groups = AttentionRow { heads: 3, kv_heads: 2, ..a };
        assert!(attend_row(&groups, &mut Vec::new(), &mut out).is_err());
    }

    #[test]
    fn sampling_weights_are_a_softmax_before_its_division() {
        let x: Vec<f32> = noise(4099, 9).iter().map(|v| 9.0 * v).collect();
        let mut w = Vec::new();
        softmax_weights(&x, 1.25, &mut w);
        let max = x.iter().copied().fold(f64::NEG_INFINITY, |m, v| m.max(v as f64));
        for (got, &v) in w.iter().zip(&x) {
            let want = ((v as f64 - max) * 1.25).exp();
            // f32 rounding of the scaled argument (up to ~25 here) dominates.
            assert!((*got as f64 - want).abs() <= 1e-5 * want, "{got} vs {want}");
        }
        assert_eq!(w.iter().filter(|&&v| v == 1.0).count(), 1, "the largest logit weighs 1");
        softmax_weights(&[], 1.0, &mut w);
        assert!(w.is_empty());
        // A NaN logit is ignored by the maximum and weighs next to nothing.
        softmax_weights(&[0.0, f32::NAN, 2.0], 1.0, &mut w);
        assert_eq!(w[2], 1.0);
        assert!(w[1] < 1e-30, "{}", w[1]);
    }

    #[test]
    fn exp_fast_is_within_a_few_ulps_of_exp_over_a_softmaxs_range() {
        let mut worst = 0f32;
        for i in 0..=100_000 {
            let x = -87.0 * i as f32 / 100_000.0;
            let (got, want) = (exp_fast(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 1e-6, "largest relative error {worst}");
        assert_eq!(exp_fast(-1000.0), exp_fast(-87.0));
        assert_eq!(exp_fast(0.0), 1.0);
    }
}
