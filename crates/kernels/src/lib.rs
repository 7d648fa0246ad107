//! forja-kernels: CPU kernels libtorch has no fast path for.
//!
//! [`Int8Matrix`]: a projection's weights quantized per output channel to
//! int8 (symmetric, `w ≈ scale[o] · q[o, i]`, `q` in −127…127), as llama.cpp's
//! and bitsandbytes' CPU paths hold them. Decoding on a CPU reads every weight
//! once per token, so a quarter of the bytes is the point; what the product
//! costs after that is widening the weights. Each row of activations is
//! rounded to 16-bit integers with one scale for the row ([`quantize_activations`]:
//! at most 1/65534 of the row's largest magnitude off, where float32 keeps 24
//! bits), and the kernels multiply integers by integers: AVX-512 VNNI's
//! `vpdpwssd` (or AVX2's `vpmaddwd`) adds two 16 × 16-bit products per lane
//! in one instruction, where a float32 product would first convert each weight
//! to a float. The sums are exact integers, so every instruction set gives
//! the same floats. [`F32Matrix`]: float32 weights in the same layout.
//!
//! The weights are packed 64 output channels at a time, the 64 channels'
//! weights of one input (int8: of two inputs) next to each other, so a kernel
//! keeps 64 outputs × up to 4 rows of accumulators in registers and never
//! reduces across lanes. The instruction set is chosen once at run time
//! ([`Isa::detect`]): AVX-512 (VNNI for int8), AVX2 + FMA, or portable Rust.
//! Each row's sum runs over the inputs in order whatever the number of rows,
//! so a row's output does not depend on the batch it is in (decoding one
//! sequence or eight gives each the same logits).

use std::fmt;
use std::sync::OnceLock;

mod activation;
mod attention;
pub use activation::{activate, activate_with, Act};
pub use attention::{attend_row, attend_row_with, softmax_weights, AttentionRow};

/// Output channels per packed group (four AVX-512 registers of float32).
const GROUP: usize = 64;

/// Why a matrix cannot be quantized or packed.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// Slice lengths that do not match the stated shape.
    Shape { what: &'static str, expected: usize, got: usize },
    /// A weight that is NaN or infinite (its output channel named).
    NotFinite { row: usize },
    /// A scale that is negative or not finite.
    BadScale { row: usize },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape { what, expected, got } => write!(f, "{what}: expected {expected} values, got {got}"),
            Error::NotFinite { row } => write!(f, "output channel {row} has a weight that is not finite"),
            Error::BadScale { row } => write!(f, "output channel {row} has a scale that is negative or not finite"),
        }
    }
}

impl std::error::Error for Error {}

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The best this CPU supports (detected once).
    pub fn detect() -> Self {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                if AVX512_BUILT && std::arch::is_x86_feature_detected!("avx512f") {
                    return Isa::Avx512;
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    return Isa::Avx2;
                }
            }
            Isa::Portable
        })
    }

    /// Whether this CPU can run kernels of `self`.
    pub fn supported(self) -> bool {
        matches!((self, Self::detect()), (Isa::Portable, _) | (_, Isa::Avx512) | (Isa::Avx2, Isa::Avx2))
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Rows one kernel call handles (what fits the registers).
    fn rows(self) -> usize {
        match self {
            Isa::Avx512 | Isa::Portable => 4,
            Isa::Avx2 => 2,
        }
    }
}

/// Whether the AVX-512 kernels are compiled in: their intrinsics are stable
/// from Rust 1.89, and forja builds with Debian's 1.85 too (AVX2 there).
#[rustversion::since(1.89)]
const AVX512_BUILT: bool = true;
#[rustversion::before(1.89)]
const AVX512_BUILT: bool = false;

/// Per-output-channel symmetric int8 quantization of `w` (`[n_out, n_in]`,
/// row-major): `scale[o] = max_i |w[o, i]| / 127`, `q[o, i] = round(w[o, i] /
/// scale[o])`. A channel of zeros gets scale 0.
pub fn quantize_rows(w: &[f32], n_out: usize, n_in: usize) -> Result<(Vec<i8>, Vec<f32>), Error> {
    check_len("weights", n_out * n_in, w.len())?;
    let mut q = Vec::with_capacity(w.len());
    let mut scale = Vec::with_capacity(n_out);
    for (o, row) in w.chunks_exact(n_in.max(1)).enumerate().take(n_out) {
        if row.iter().any(|v| !v.is_finite()) {
            return Err(Error::NotFinite { row: o });
        }
        let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
        let s = max / 127.0;
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        // Dividing (not multiplying by `inv`) keeps q exact on a round trip
        // through `q · scale`; `inv` only decides the zero channel.
        q.extend(row.iter().map(|&v| if inv == 0.0 { 0 } else { (v / s).round().clamp(-127.0, 127.0) as i8 }));
        scale.push(s);
    }
    Ok((q, scale))
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), Error> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::Shape { what, expected, got })
    }
}

/// A weight type the kernels read: int8 (scaled per channel) or float32.
pub trait Weight: Copy + Default + Send + Sync + 'static {
    /// Inputs of one channel stored side by side in the packed layout (the
    /// int8 kernels multiply pairs of 16-bit integers at a time).
    const STEP: usize;
    /// The product of `m` and the `rows` rows of `x` into `y` with the
    /// kernels of `isa` (a supported one; lengths checked by the caller).
    #[doc(hidden)]
    fn product(m: &Packed<Self>, isa: Isa, x: &[f32], rows: usize, y: &mut [f32]);
}

impl Weight for i8 {
    const STEP: usize = 2;

    fn product(m: &Packed<Self>, isa: Isa, x: &[f32], rows: usize, y: &mut [f32]) {
        let n_pad = m.n_in.next_multiple_of(2);
        let (xq, xscale) = quantize_activations(x, m.n_in, n_pad);
        let kernel = Int8Kernel::of(isa);
        tiles(m, rows, kernel.rows(), y, |g, w, r0, r, out| {
            let at = g * GROUP;
            let group = Int8Group {
                w,
                n_in: n_pad,
                x: &xq[r0 * n_pad..(r0 + r) * n_pad],
                xscale: &xscale[r0..r0 + r],
                scale: &m.scale[at..at + GROUP],
                bias: &m.bias[at..at + GROUP],
            };
            kernel.run(&group, r, out);
        });
    }
}

impl Weight for f32 {
    const STEP: usize = 1;

    fn product(m: &Packed<Self>, isa: Isa, x: &[f32], rows: usize, y: &mut [f32]) {
        tiles(m, rows, isa.rows(), y, |g, w, r0, r, out| {
            let at = g * GROUP;
            let group = Group {
                w,
                n_in: m.n_in,
                x: &x[r0 * m.n_in..(r0 + r) * m.n_in],
                scale: &m.scale[at..at + GROUP],
                bias: &m.bias[at..at + GROUP],
            };
            f32_group(isa, &group, r, out);
        });
    }
}

/// Weights of a projection `y = x Wᵀ (+ b)` packed for the kernels: 64
/// output channels per group, the 64 channels' weights of one input (int8:
/// of two inputs, channel by channel) side by side.
#[derive(Clone)]
pub struct Packed<E: Weight> {
    n_in: usize,
    n_out: usize,
    /// `[groups][n_in / STEP][64][STEP]`: group `g`, inputs `STEP·j …`,
    /// channel `64 g + k` (`n_in` padded to whole steps with zeros).
    packed: Vec<E>,
    /// Per channel, padded to whole groups with zeros (ones for float32).
    scale: Vec<f32>,
    /// The bias (zeros without one), padded as `scale`.
    bias: Vec<f32>,
}

/// Int8 weights with one float32 scale per output channel.
pub type Int8Matrix = Packed<i8>;
/// Float32 weights, packed once so that no product packs them again (what
/// a BLAS GEMM does on every call, most of its time at a few rows).
pub type F32Matrix = Packed<f32>;

impl<E: Weight> fmt::Debug for Packed<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Packed<{}> [{}, {}] ({} bytes)", std::any::type_name::<E>(), self.n_out, self.n_in, self.bytes())
    }
}

impl Int8Matrix {
    /// Packs quantized weights `q` (`[n_out, n_in]`, row-major) with their
    /// per-channel `scale` and an optional `bias` (`[n_out]`).
    pub fn new(q: &[i8], scale: &[f32], bias: Option<&[f32]>, n_out: usize, n_in: usize) -> Result<Self, Error> {
        check_len("int8 weights", n_out * n_in, q.len())?;
        check_len("scales", n_out, scale.len())?;
        if let Some(row) = scale.iter().position(|s| !s.is_finite() || *s < 0.0) {
            return Err(Error::BadScale { row });
        }
        Self::pack(q, scale, bias, n_out, n_in)
    }

    /// Quantizes float32 weights (`[n_out, n_in]`, row-major) and packs them.
    pub fn quantize(w: &[f32], bias: Option<&[f32]>, n_out: usize, n_in: usize) -> Result<Self, Error> {
        let (q, scale) = quantize_rows(w, n_out, n_in)?;
        Self::new(&q, &scale, bias, n_out, n_in)
    }
}

impl F32Matrix {
    /// Packs float32 weights `w` (`[n_out, n_in]`, row-major) and an optional `bias`.
    pub fn new(w: &[f32], bias: Option<&[f32]>, n_out: usize, n_in: usize) -> Result<Self, Error> {
        check_len("weights", n_out * n_in, w.len())?;
        Self::pack(w, &vec![1.0; n_out], bias, n_out, n_in)
    }
}

impl<E: Weight> Packed<E> {
    fn pack(w: &[E], scale: &[f32], bias: Option<&[f32]>, n_out: usize, n_in: usize) -> Result<Self, Error> {
        if let Some(b) = bias {
            check_len("bias", n_out, b.len())?;
        }
        let (groups, n_pad) = (n_out.div_ceil(GROUP), n_in.next_multiple_of(E::STEP));
        let mut packed = vec![E::default(); groups * n_pad * GROUP];
        for (o, row) in w.chunks_exact(n_in.max(1)).enumerate().take(n_out) {
            let (g, k) = (o / GROUP, o % GROUP);
            for (i, &v) in row.iter().enumerate() {
                packed[((g * n_pad + i - i % E::STEP) * GROUP) + k * E::STEP + i % E::STEP] = v;
            }
        }
        let pad = |v: &[f32]| {
            let mut out = v.to_vec();
            out.resize(groups * GROUP, 0.0);
            out
        };
        let bias = bias.map_or_else(|| vec![0.0; groups * GROUP], pad);
        Ok(Self { n_in, n_out, packed, scale: pad(scale), bias })
    }

    pub fn n_in(&self) -> usize {
        self.n_in
    }

    pub fn n_out(&self) -> usize {
        self.n_out
    }

    /// Bytes the packed weights, scales and bias take.
    pub fn bytes(&self) -> usize {
        self.packed.len() * std::mem::size_of::<E>() + 4 * (self.scale.len() + self.bias.len())
    }

    /// `y[r, o] = scale[o] · Σᵢ w[o, i] · x[r, i] + bias[o]` for every row `r`
    /// of `x` (`[rows, n_in]`, row-major) into `y` (`[rows, n_out]`), with the
    /// best kernel this CPU runs. Int8 weights multiply the row rounded to
    /// 16-bit integers (see [`quantize_activations`]).
    ///
    /// # Panics
    /// When `x` is not whole rows of `n_in` or `y` is not `rows × n_out` long.
    pub fn matmul(&self, x: &[f32], y: &mut [f32]) {
        self.matmul_with(Isa::detect(), x, y);
    }

    /// [`Packed::matmul`] with the kernels of `isa` (the portable ones
    /// when this CPU lacks it).
    ///
    /// # Panics
    /// As [`Packed::matmul`].
    pub fn matmul_with(&self, isa: Isa, x: &[f32], y: &mut [f32]) {
        let isa = if isa.supported() { isa } else { Isa::Portable };
        let n_in = self.n_in.max(1);
        assert!(x.len() % n_in == 0, "packed matmul: {} inputs is not whole rows of {}", x.len(), self.n_in);
        let rows = if self.n_in == 0 { 0 } else { x.len() / n_in };
        assert_eq!(y.len(), rows * self.n_out, "packed matmul: output of {} values for {rows} rows × {}", y.len(), self.n_out);
        if self.n_in == 0 {
            y.iter_mut().zip(&self.bias).for_each(|(v, b)| *v = *b);
            return;
        }
        E::product(self, isa, x, rows, y);
    }
}

/// Calls `kernel(g, w, r0, r, tile)` for every group `g` (its packed
/// weights `w`) and block of `r ≤ block` rows from `r0`, and copies each
/// tile's outputs (`[r][64]`) that are channels into `y`.
fn tiles<E: Weight>(
    m: &Packed<E>,
    rows: usize,
    block: usize,
    y: &mut [f32],
    mut kernel: impl FnMut(usize, &[E], usize, usize, &mut [f32]),
) {
    let per_group = m.n_in.next_multiple_of(E::STEP) * GROUP;
    let mut tile = [0f32; 4 * GROUP];
    for (g, w) in m.packed.chunks_exact(per_group).enumerate() {
        let valid = (m.n_out - g * GROUP).min(GROUP);
        let mut r0 = 0;
        while r0 < rows {
            let r = (rows - r0).min(block);
            kernel(g, w, r0, r, &mut tile[..r * GROUP]);
            for rr in 0..r {
                let dst = (r0 + rr) * m.n_out + g * GROUP;
                y[dst..dst + valid].copy_from_slice(&tile[rr * GROUP..rr * GROUP + valid]);
            }
            r0 += r;
        }
    }
}

/// The largest 16-bit activation: a row's largest magnitude maps to it.
const X_MAX: f32 = 32767.0;
/// Pairs of inputs summed in 32-bit integers before the sum moves to
/// float32: `2 · 128 · 32767 · 256 < 2³¹`, so no int8 weight (even −128)
/// and no activation can overflow it.
const CHUNK: usize = 256;

/// Rounds each row of `x` (`n_in` wide) to 16-bit integers, `x[r, i] ≈
/// s[r] · q[r, i]` with `s[r] = max_i |x[r, i]| / 32767` (to nearest, ties
/// to even: the error is at most 1/65534 of the row's largest magnitude), each
/// row padded with zeros to `n_pad`. A row with a value that is not finite
/// gets the scale NaN (its outputs are NaN, as float32 products would be).
/// The int8 kernels multiply these integers by the weights' exactly, so a
/// product is one rounding per row and channel whatever the instruction set.
pub fn quantize_activations(x: &[f32], n_in: usize, n_pad: usize) -> (Vec<i16>, Vec<f32>) {
    // Adding 1.5 · 2²³ to |v| < 2²² rounds it to the nearest integer (ties
    // to even), which then sits in the low bits of the sum.
    const ROUND: f32 = 12_582_912.0;
    const LANES: usize = 16;
    let rows = x.len() / n_in.max(1);
    let mut q = vec![0i16; rows * n_pad];
    let mut s = Vec::with_capacity(rows);
    for (row, out) in x.chunks_exact(n_in.max(1)).zip(q.chunks_exact_mut(n_pad.max(1))) {
        // Largest magnitude and whether any value is not finite, by lanes (vectorised).
        let (mut max, mut bad) = ([0f32; LANES], [false; LANES]);
        for chunk in row.chunks(LANES) {
            for (k, &v) in chunk.iter().enumerate() {
                let a = v.abs();
                max[k] = if a > max[k] { a } else { max[k] };
                bad[k] |= !v.is_finite();
            }
        }
        if bad.contains(&true) {
            s.push(f32::NAN);
            continue;
        }
        let max = max.iter().fold(0f32, |m, &v| if v > m { v } else { m });
        let inv = if max > 0.0 { X_MAX / max } else { 0.0 };
        for (o, &v) in out.iter_mut().zip(row) {
            // |v · inv| ≤ 32767 (rounded up by at most an ulp): the difference of the bits is the integer.
            *o = ((v * inv + ROUND).to_bits() as i32 - ROUND.to_bits() as i32) as i16;
        }
        s.push(max / X_MAX);
    }
    (q, s)
}

/// One group's operands for the float32 kernels: `w` is `[n_in][64]`, `x`
/// is `[r][n_in]`, `scale` and `bias` 64 long (lengths checked by [`f32_group`]).
#[doc(hidden)]
pub struct Group<'a> {
    w: &'a [f32],
    n_in: usize,
    x: &'a [f32],
    scale: &'a [f32],
    bias: &'a [f32],
}

/// One group's operands for the int8 kernels: `w` is `[n_in / 2][64][2]`,
/// `x` is `[r][n_in]` (16-bit, `n_in` even), `xscale` `r` long, `scale` and
/// `bias` 64 long (lengths checked by [`Int8Kernel::run`]).
#[doc(hidden)]
pub struct Int8Group<'a> {
    w: &'a [i8],
    n_in: usize,
    x: &'a [i16],
    xscale: &'a [f32],
    scale: &'a [f32],
    bias: &'a [f32],
}

/// 64 float32 outputs of `r` rows (1 ≤ r ≤ `isa.rows()`) into `out` (`[r][64]`).
fn f32_group(isa: Isa, g: &Group, r: usize, out: &mut [f32]) {
    assert!(g.w.len() == g.n_in * GROUP && g.x.len() == r * g.n_in && g.scale.len() == GROUP && g.bias.len() == GROUP);
    assert!(out.len() == r * GROUP && (1..=isa.rows()).contains(&r));
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked that the CPU has AVX-512F; the
        // lengths the kernel reads and writes are asserted above.
        Isa::Avx512 => unsafe { x86::avx512_rows_f32(g, r, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `supported()` checked AVX2 and FMA; lengths as above.
        Isa::Avx2 => unsafe { x86::avx2_rows_f32(g, r, out) },
        _ => portable_f32(g, r, out),
    }
}

fn portable_f32(g: &Group, r: usize, out: &mut [f32]) {
    for rr in 0..r {
        let mut acc = [0f32; GROUP];
        let xr = &g.x[rr * g.n_in..(rr + 1) * g.n_in];
        for (&xi, wi) in xr.iter().zip(g.w.chunks_exact(GROUP)) {
            for (a, &w) in acc.iter_mut().zip(wi) {
                *a += w * xi;
            }
        }
        for (k, a) in acc.iter().enumerate() {
            out[rr * GROUP + k] = a * g.scale[k] + g.bias[k];
        }
    }
}

/// The int8 kernel a product runs with: every one sums the same integers
/// in the same chunks, so all give the same floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Int8Kernel {
    /// AVX-512 VNNI (`vpdpwssd`), 4 rows a call.
    Vnni,
    /// AVX2 (`vpmaddwd`), 2 rows a call.
    Avx2,
    Portable,
}

impl Int8Kernel {
    fn of(isa: Isa) -> Self {
        match isa {
            // The VNNI kernel is compiled where the AVX-512 ones are.
            Isa::Avx512 if AVX512_BUILT && vnni() => Self::Vnni,
            Isa::Avx512 | Isa::Avx2 => Self::Avx2,
            Isa::Portable => Self::Portable,
        }
    }

    fn rows(self) -> usize {
        match self {
            Self::Vnni | Self::Portable => 4,
            Self::Avx2 => 2,
        }
    }

    /// 64 outputs of `r` rows (1 ≤ r ≤ `self.rows()`) into `out` (`[r][64]`).
    fn run(self, g: &Int8Group, r: usize, out: &mut [f32]) {
        assert!(g.n_in % 2 == 0 && g.w.len() == g.n_in * GROUP && g.x.len() == r * g.n_in && g.xscale.len() == r);
        assert!(g.scale.len() == GROUP && g.bias.len() == GROUP && out.len() == r * GROUP && (1..=self.rows()).contains(&r));
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `of` picked it on a CPU with AVX-512F, BW and VNNI; the
            // lengths the kernel reads and writes are asserted above.
            Self::Vnni => unsafe { x86::vnni_rows_i8(g, r, out) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `of` picked it for an ISA `supported()` says has AVX2; lengths as above.
            Self::Avx2 => unsafe { x86::avx2_rows_i8(g, r, out) },
            _ => portable_i8(g, r, out),
        }
    }
}

/// Whether this CPU has the AVX-512 VNNI kernel's instructions.
fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
            && std::arch::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn portable_i8(g: &Int8Group, r: usize, out: &mut [f32]) {
    for rr in 0..r {
        let xr = &g.x[rr * g.n_in..(rr + 1) * g.n_in];
        let mut sum = [0f32; GROUP];
        for (xs, ws) in xr.chunks(2 * CHUNK).zip(g.w.chunks(2 * CHUNK * GROUP)) {
            let mut acc = [0i32; GROUP];
            for (xp, wp) in xs.chunks_exact(2).zip(ws.chunks_exact(2 * GROUP)) {
                for (a, wk) in acc.iter_mut().zip(wp.chunks_exact(2)) {
                    *a += wk[0] as i32 * xp[0] as i32 + wk[1] as i32 * xp[1] as i32;
                }
            }
            sum.iter_mut().zip(acc).for_each(|(s, a)| *s += a as f32);
        }
        for (k, s) in sum.iter().enumerate() {
            out[rr * GROUP + k] = (s * g.scale[k]).mul_add(g.xscale[rr], g.bias[k]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Group, Int8Group, CHUNK, GROUP};
    use std::arch::x86_64::*;

    /// The AVX-512 float32 kernel for `r` rows (1 to 4).
    ///
    /// # Safety
    /// The CPU has AVX-512F; `g` and `out` have the lengths [`super::f32_group`] asserts.
    #[rustversion::since(1.89)]
    pub(super) unsafe fn avx512_rows_f32(g: &Group, r: usize, out: &mut [f32]) {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            match r {
                1 => avx512_f32::<1>(g, out),
                2 => avx512_f32::<2>(g, out),
                3 => avx512_f32::<3>(g, out),
                _ => avx512_f32::<4>(g, out),
            }
        }
    }

    /// Never called: [`super::Isa::detect`] does not pick AVX-512
    /// when this compiler has no stable AVX-512 intrinsics.
    ///
    /// # Safety
    /// None needed; unsafe to match the other definition.
    #[rustversion::before(1.89)]
    pub(super) unsafe fn avx512_rows_f32(g: &Group, r: usize, out: &mut [f32]) {
        super::portable_f32(g, r, out)
    }

    /// # Safety
    /// As the function above.
    #[rustversion::since(1.89)]
    #[allow(clippy::incompatible_msrv)] // compiled only from Rust 1.89 (rustversion)
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512_f32<const R: usize>(g: &Group, out: &mut [f32]) {
        let (w, x) = (g.w.as_ptr(), g.x.as_ptr());
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for i in 0..g.n_in {
            let mut ws = [_mm512_setzero_ps(); 4];
            for (k, v) in ws.iter_mut().enumerate() {
                // SAFETY: i < n_in and k < 4: 16 weights inside the 64 of input i.
                *v = unsafe { _mm512_loadu_ps(w.add(i * GROUP + 16 * k)) };
            }
            for (r, a) in acc.iter_mut().enumerate() {
                // SAFETY: r < R rows of n_in inputs each.
                let xb = _mm512_set1_ps(unsafe { *x.add(r * g.n_in + i) });
                for k in 0..4 {
                    a[k] = _mm512_fmadd_ps(ws[k], xb, a[k]);
                }
            }
        }
        for (r, a) in acc.iter().enumerate() {
            for (k, v) in a.iter().enumerate() {
                // SAFETY: scale and bias are 64 long, out is R × 64: 16 k + 16 ≤ 64.
                unsafe {
                    let s = _mm512_loadu_ps(g.scale.as_ptr().add(16 * k));
                    let b = _mm512_loadu_ps(g.bias.as_ptr().add(16 * k));
                    _mm512_storeu_ps(out.as_mut_ptr().add(r * GROUP + 16 * k), _mm512_fmadd_ps(*v, s, b));
                }
            }
        }
    }

    /// The AVX2 float32 kernel for `r` rows (1 or 2).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `g` and `out` have the lengths [`super::f32_group`] asserts.
    pub(super) unsafe fn avx2_rows_f32(g: &Group, r: usize, out: &mut [f32]) {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            match r {
                1 => avx2_f32::<1>(g, out),
                _ => avx2_f32::<2>(g, out),
            }
        }
    }

    /// Two halves of 32 outputs each, so that the accumulators fit AVX2's 16 registers.
    ///
    /// # Safety
    /// As the function above.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_f32<const R: usize>(g: &Group, out: &mut [f32]) {
        let (w, x) = (g.w.as_ptr(), g.x.as_ptr());
        for half in 0..2 {
            let mut acc = [[_mm256_setzero_ps(); 4]; R];
            for i in 0..g.n_in {
                let mut ws = [_mm256_setzero_ps(); 4];
                for (k, v) in ws.iter_mut().enumerate() {
                    // SAFETY: i < n_in; 32 h + 8 k + 8 ≤ 64 weights of input i.
                    *v = unsafe { _mm256_loadu_ps(w.add(i * GROUP + 32 * half + 8 * k)) };
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: r < R rows of n_in inputs each.
                    let xb = _mm256_set1_ps(unsafe { *x.add(r * g.n_in + i) });
                    for k in 0..4 {
                        a[k] = _mm256_fmadd_ps(ws[k], xb, a[k]);
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                for (k, v) in a.iter().enumerate() {
                    let at = 32 * half + 8 * k;
                    // SAFETY: at + 8 ≤ 64 within scale, bias and row r of out.
                    unsafe {
                        let s = _mm256_loadu_ps(g.scale.as_ptr().add(at));
                        let b = _mm256_loadu_ps(g.bias.as_ptr().add(at));
                        _mm256_storeu_ps(out.as_mut_ptr().add(r * GROUP + at), _mm256_fmadd_ps(*v, s, b));
                    }
                }
            }
        }
    }

    /// The AVX-512 VNNI int8 kernel for `r` rows (1 to 4).
    ///
    /// # Safety
    /// The CPU has AVX-512F, BW and VNNI; `g` and `out` have the lengths
    /// [`super::Int8Kernel::run`] asserts.
    #[rustversion::since(1.89)]
    pub(super) unsafe fn vnni_rows_i8(g: &Int8Group, r: usize, out: &mut [f32]) {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            match r {
                1 => vnni_i8::<1>(g, out),
                2 => vnni_i8::<2>(g, out),
                3 => vnni_i8::<3>(g, out),
                _ => vnni_i8::<4>(g, out),
            }
        }
    }

    /// Never called: VNNI is not picked when this compiler has no stable
    /// AVX-512 intrinsics.
    ///
    /// # Safety
    /// None needed; unsafe to match the other definition.
    #[rustversion::before(1.89)]
    pub(super) unsafe fn vnni_rows_i8(g: &Int8Group, r: usize, out: &mut [f32]) {
        super::portable_i8(g, r, out)
    }

    /// Per pair of inputs: the 128 weights (64 channels × 2) widen to 16
    /// bits in four registers, and `vpdpwssd` adds both products of each
    /// channel to its 32-bit sum; every [`CHUNK`] pairs the sums move to float32.
    ///
    /// # Safety
    /// As the function above.
    #[rustversion::since(1.89)]
    #[allow(clippy::incompatible_msrv)] // compiled only from Rust 1.89 (rustversion)
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn vnni_i8<const R: usize>(g: &Int8Group, out: &mut [f32]) {
        let (w, x, pairs) = (g.w.as_ptr(), g.x.as_ptr(), g.n_in / 2);
        let mut sum = [[_mm512_setzero_ps(); 4]; R];
        let mut p0 = 0;
        while p0 < pairs {
            let end = (p0 + CHUNK).min(pairs);
            let mut acc = [[_mm512_setzero_si512(); 4]; R];
            for p in p0..end {
                let mut ws = [_mm512_setzero_si512(); 4];
                for (k, v) in ws.iter_mut().enumerate() {
                    // SAFETY: p < n_in / 2 and k < 4: 32 bytes inside pair p's 128.
                    *v = unsafe { _mm512_cvtepi8_epi16(_mm256_loadu_si256(w.add(p * 2 * GROUP + 32 * k).cast())) };
                }
                for (r, a) in acc.iter_mut().enumerate() {
                    // SAFETY: r < R rows of n_in 16-bit inputs; 2 p + 1 < n_in.
                    let xb = _mm512_set1_epi32(unsafe { x.add(r * g.n_in + 2 * p).cast::<i32>().read_unaligned() });
                    for k in 0..4 {
                        a[k] = _mm512_dpwssd_epi32(a[k], ws[k], xb);
                    }
                }
            }
            for (s, a) in sum.iter_mut().zip(&acc) {
                for k in 0..4 {
                    s[k] = _mm512_add_ps(s[k], _mm512_cvtepi32_ps(a[k]));
                }
            }
            p0 = end;
        }
        for (r, s) in sum.iter().enumerate() {
            let xs = _mm512_set1_ps(g.xscale[r]);
            for (k, v) in s.iter().enumerate() {
                // SAFETY: scale and bias are 64 long, out is R × 64: 16 k + 16 ≤ 64.
                unsafe {
                    let c = _mm512_loadu_ps(g.scale.as_ptr().add(16 * k));
                    let b = _mm512_loadu_ps(g.bias.as_ptr().add(16 * k));
                    _mm512_storeu_ps(out.as_mut_ptr().add(r * GROUP + 16 * k), _mm512_fmadd_ps(_mm512_mul_ps(*v, c), xs, b));
                }
            }
        }
    }

    /// The AVX2 int8 kernel for `r` rows (1 or 2).
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA; `g` and `out` have the lengths
    /// [`super::Int8Kernel::run`] asserts.
    pub(super) unsafe fn avx2_rows_i8(g: &Int8Group, r: usize, out: &mut [f32]) {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            match r {
                1 => avx2_i8::<1>(g, out),
                _ => avx2_i8::<2>(g, out),
            }
        }
    }

    /// As the VNNI kernel with `vpmaddwd` and an add, in two halves of 32
    /// channels (AVX2's 16 registers).
    ///
    /// # Safety
    /// As the function above.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2_i8<const R: usize>(g: &Int8Group, out: &mut [f32]) {
        let (w, x, pairs) = (g.w.as_ptr(), g.x.as_ptr(), g.n_in / 2);
        for half in 0..2 {
            let mut sum = [[_mm256_setzero_ps(); 4]; R];
            let mut p0 = 0;
            while p0 < pairs {
                let end = (p0 + CHUNK).min(pairs);
                let mut acc = [[_mm256_setzero_si256(); 4]; R];
                for p in p0..end {
                    let mut ws = [_mm256_setzero_si256(); 4];
                    for (k, v) in ws.iter_mut().enumerate() {
                        // SAFETY: p < n_in / 2; 64 h + 16 k + 16 ≤ 128 bytes of pair p.
                        *v = unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(p * 2 * GROUP + 64 * half + 16 * k).cast())) };
                    }
                    for (r, a) in acc.iter_mut().enumerate() {
                        // SAFETY: r < R rows of n_in 16-bit inputs; 2 p + 1 < n_in.
                        let xb = _mm256_set1_epi32(unsafe { x.add(r * g.n_in + 2 * p).cast::<i32>().read_unaligned() });
                        for k in 0..4 {
                            a[k] = _mm256_add_epi32(a[k], _mm256_madd_epi16(ws[k], xb));
                        }
                    }
                }
                for (s, a) in sum.iter_mut().zip(&acc) {
                    for k in 0..4 {
                        s[k] = _mm256_add_ps(s[k], _mm256_cvtepi32_ps(a[k]));
                    }
                }
                p0 = end;
            }
            for (r, s) in sum.iter().enumerate() {
                let xs = _mm256_set1_ps(g.xscale[r]);
                for (k, v) in s.iter().enumerate() {
                    let at = 32 * half + 8 * k;
                    // SAFETY: at + 8 ≤ 64 within scale, bias and row r of out.
                    unsafe {
                        let c = _mm256_loadu_ps(g.scale.as_ptr().add(at));
                        let b = _mm256_loadu_ps(g.bias.as_ptr().add(at));
                        _mm256_storeu_ps(out.as_mut_ptr().add(r * GROUP + at), _mm256_fmadd_ps(_mm256_mul_ps(*v, c), xs, b));
                    }
                }
            }
        }
    }

    /// `e^x` lane by lane, as `attention::exp_fast` (NaN and below -87:
    /// `e^-87`; above 88: `e^88`), with fused multiply-adds.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
        // `max(x, -87)` gives its second operand when x is NaN.
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.0));
        let n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        let f = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let f = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), f);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(c));
        }
        let two_n = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
        _mm256_mul_ps(p, _mm256_castsi256_ps(two_n))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests fail loudly on purpose
mod tests {
    use super::*;

    /// Deterministic pseudo-random floats in [-1, 1) (xorshift).
    pub(crate) fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// The product in float64 from the unpacked int8 weights and the rows
    /// as the int8 kernels round them (16-bit integers times a row scale).
    fn reference(q: &[i8], scale: &[f32], bias: &[f32], x: &[f32], n_out: usize, n_in: usize) -> Vec<f64> {
        let rows = x.len() / n_in;
        let (xq, xs) = quantize_activations(x, n_in, n_in);
        let mut y = vec![0f64; rows * n_out];
        for r in 0..rows {
            for o in 0..n_out {
                let dot: f64 = (0..n_in).map(|i| q[o * n_in + i] as f64 * xq[r * n_in + i] as f64).sum();
                y[r * n_out + o] = dot * xs[r] as f64 * scale[o] as f64 + bias[o] as f64;
            }
        }
        y
    }

    #[test]
    fn every_int8_kernel_gives_the_same_floats_as_the_unpacked_product_on_odd_shapes() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2, Isa::Portable].into_iter().filter(|i| i.supported()).collect();
        for &(n_out, n_in, rows) in &[(64, 128, 1), (130, 33, 5), (7, 1, 3), (384, 128, 8), (4099, 96, 2), (70, 1200, 3)] {
            let w = noise(n_out * n_in, 1);
            let bias = noise(n_out, 2);
            let x: Vec<f32> = noise(rows * n_in, 3).iter().enumerate().map(|(k, v)| v * (1 + k % 5) as f32).collect();
            let (q, scale) = quantize_rows(&w, n_out, n_in).unwrap();
            let m = Int8Matrix::new(&q, &scale, Some(&bias), n_out, n_in).unwrap();
            let want = reference(&q, &scale, &bias, &x, n_out, n_in);
            let mut first: Option<Vec<f32>> = None;
            for &isa in &isas {
                let mut y = vec![f32::NAN; rows * n_out];
                m.matmul_with(isa, &x, &mut y);
                let worst = y.iter().zip(&want).map(|(a, b)| (*a as f64 - b).abs() / b.abs().max(1.0)).fold(0f64, f64::max);
                assert!(worst < 1e-5, "{} [{n_out}×{n_in}] × {rows} rows: off by {worst}", isa.name());
                // Integer sums: the instruction set changes no bit.
                match &first {
                    None => first = Some(y),
                    Some(f) => assert!(f.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()), "{} differs", isa.name()),
                }
            }
        }
    }

    #[test]
    fn rounding_the_rows_to_16_bits_moves_an_int8_product_by_at_most_its_bound() {
        let (n_out, n_in, rows) = (96, 300, 4);
        let (q, scale) = quantize_rows(&noise(n_out * n_in, 21), n_out, n_in).unwrap();
        let mut x = noise(rows * n_in, 22);
        x[7] = 40.0; // an outlier sets row 0's step
        let m = Int8Matrix::new(&q, &scale, None, n_out, n_in).unwrap();
        let mut y = vec![0f32; rows * n_out];
        m.matmul(&x, &mut y);
        for r in 0..rows {
            let row = &x[r * n_in..(r + 1) * n_in];
            let step = row.iter().fold(0f32, |a, v| a.max(v.abs())) as f64 / 32767.0;
            for o in 0..n_out {
                let w = &q[o * n_in..(o + 1) * n_in];
                let exact: f64 = w.iter().zip(row).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale[o] as f64;
                // Each input moves by at most half a step.
                let bound = w.iter().map(|a| a.unsigned_abs() as f64).sum::<f64>() * scale[o] as f64 * step / 2.0;
                let got = y[r * n_out + o] as f64;
                assert!((got - exact).abs() <= bound + 1e-5, "row {r} out {o}: {got} vs {exact} (bound {bound})");
            }
        }
        let (xq, xs) = quantize_activations(&[0.5, -1.0, 0.25, 0.0, 0.0, 0.0, f32::NAN, 1.0], 2, 2);
        assert_eq!(&xq[..6], &[16384, -32767, 32767, 0, 0, 0], "ties to even; a zero row stays zero");
        assert_eq!(xs[0], 1.0 / 32767.0);
        assert!(xs[3].is_nan(), "a row with NaN has a NaN scale");
        let mut out = vec![0f32; 4 * n_out];
        m.matmul(&[&[f32::NAN][..], &vec![0.5; n_in - 1], &vec![0.5; n_in]].concat()[..2 * n_in], &mut out[..2 * n_out]);
        assert!(out[..n_out].iter().all(|v| v.is_nan()) && out[n_out..2 * n_out].iter().all(|v| v.is_finite()));
    }

    #[test]
    fn packed_float32_matches_the_float64_product_and_is_batch_independent() {
        let isas: Vec<Isa> = [Isa::Avx512, Isa::Avx2, Isa::Portable].into_iter().filter(|i| i.supported()).collect();
        for &(n_out, n_in, rows) in &[(130, 33, 5), (384, 128, 8), (7, 1, 3)] {
            let (w, bias, x) = (noise(n_out * n_in, 11), noise(n_out, 12), noise(rows * n_in, 13));
            let m = F32Matrix::new(&w, Some(&bias), n_out, n_in).unwrap();
            for &isa in &isas {
                let mut y = vec![f32::NAN; rows * n_out];
                m.matmul_with(isa, &x, &mut y);
                for r in 0..rows {
                    for o in 0..n_out {
                        let want: f64 = (0..n_in).map(|i| w[o * n_in + i] as f64 * x[r * n_in + i] as f64).sum::<f64>() + bias[o] as f64;
                        let got = y[r * n_out + o] as f64;
                        assert!((got - want).abs() < 1e-4, "{} [{n_out}×{n_in}] row {r} out {o}: {got} vs {want}", isa.name());
                    }
                    let mut one = vec![0f32; n_out];
                    m.matmul_with(isa, &x[r * n_in..(r + 1) * n_in], &mut one);
                    assert_eq!(one, y[r * n_out..(r + 1) * n_out], "{} row {r} alone", isa.name());
                }
            }
        }
    }

    #[test]
    fn quantizing_keeps_each_weight_within_half_a_step() {
        let (n_out, n_in) = (37, 50);
        let mut w = noise(n_out * n_in, 4);
        w[5 * n_in..6 * n_in].iter_mut().for_each(|v| *v = 0.0); // a channel of zeros
        let (q, scale) = quantize_rows(&w, n_out, n_in).unwrap();
        assert_eq!(scale[5], 0.0);
        for o in 0..n_out {
            let max = w[o * n_in..(o + 1) * n_in].iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(q[o * n_in..(o + 1) * n_in].iter().all(|v| *v >= -127), "channel {o} uses -128");
            if max > 0.0 {
                assert_eq!(q[o * n_in..(o + 1) * n_in].iter().map(|v| v.unsigned_abs()).max(), Some(127), "channel {o}");
            }
            for i in 0..n_in {
                let err = (q[o * n_in + i] as f32 * scale[o] - w[o * n_in + i]).abs();
                assert!(err <= scale[o] * 0.5 + 1e-7, "w[{o}, {i}] off by {err} at scale {}", scale[o]);
            }
        }
    }

    #[test]
    fn quantizing_the_dequantized_weights_gives_the_same_int8_and_scales() {
        let (n_out, n_in) = (300, 64);
        let w: Vec<f32> = noise(n_out * n_in, 5).iter().enumerate().map(|(k, v)| v * (1 + k % 17) as f32 * 0.013).collect();
        let (q, scale) = quantize_rows(&w, n_out, n_in).unwrap();
        let back: Vec<f32> = q.iter().enumerate().map(|(k, v)| *v as f32 * scale[k / n_in]).collect();
        assert_eq!(quantize_rows(&back, n_out, n_in).unwrap(), (q, scale));
    }

    #[test]
    fn a_row_gives_the_same_output_alone_or_in_a_batch() {
        let (n_out, n_in) = (200, 72);
        let m = Int8Matrix::quantize(&noise(n_out * n_in, 6), None, n_out, n_in).unwrap();
        let x = noise(7 * n_in, 7);
        let mut batch = vec![0f32; 7 * n_out];
        m.matmul(&x, &mut batch);
        for r in 0..7 {
            let mut one = vec![0f32; n_out];
            m.matmul(&x[r * n_in..(r + 1) * n_in], &mut one);
            assert_eq!(one, batch[r * n_out..(r + 1) * n_out], "row {r}");
        }
    }

    #[test]
    fn bad_input_is_an_error_naming_it() {
        let mut w = noise(4 * 3, 8);
        w[7] = f32::NAN;
        assert_eq!(quantize_rows(&w, 4, 3), Err(Error::NotFinite { row: 2 }));
        assert_eq!(quantize_rows(&w, 5, 3).unwrap_err(), Error::Shape { what: "weights", expected: 15, got: 12 });
        let e = Int8Matrix::new(&[1, 2], &[0.1, -1.0], None, 2, 1).unwrap_err();
        assert_eq!(e.to_string(), "output channel 1 has a scale that is negative or not finite");
    }
}
