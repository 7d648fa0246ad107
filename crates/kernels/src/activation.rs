//! MLP activations on host floats, so that a decoding step's MLP runs from
//! one packed projection to the next without a libtorch call in between
//! (oneDNN's GELU costs about 10 µs a call at decoding sizes, most of it
//! setting up the primitive).
//!
//! The AVX2 + FMA versions evaluate 8 lanes at a time from one exponential
//! (`exp8`); the portable ones use `f32::exp`. Both are within 1e-6 of
//! the exact function in absolute terms over the range an MLP sees (tested
//! against float64), not bit-identical to each other or to libtorch.

use crate::Isa;

/// An MLP activation (the names of `forja_model::Activation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// `x Φ(x)` with the error function (exact GELU).
    GeluErf,
    /// GELU's tanh approximation (GPT-2's `gelu_new`).
    GeluTanh,
    /// `x σ(x)`.
    Silu,
    /// `max(x, 0)²`.
    Relu2,
}

/// `x ← act(x)` element by element.
pub fn activate(act: Act, x: &mut [f32]) {
    activate_with(Isa::detect(), act, x);
}

/// [`activate`] with the kernels of `isa` (AVX-512 runs the AVX2 ones; the
/// portable ones where the CPU lacks AVX2).
pub fn activate_with(isa: Isa, act: Act, x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable && Isa::Avx2.supported() {
        // SAFETY: the CPU has AVX2 and FMA (checked just above).
        unsafe { x86::activate(act, x) };
        return;
    }
    let _ = isa;
    x.iter_mut().for_each(|v| *v = scalar(act, *v));
}

/// One value, portably.
fn scalar(act: Act, x: f32) -> f32 {
    match act {
        Act::GeluErf => 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2)),
        Act::GeluTanh => 0.5 * x * (1.0 + tanh(GELU_C * (x + 0.044_715 * x * x * x))),
        Act::Silu => x / (1.0 + (-x.clamp(-87.0, 87.0)).exp()),
        Act::Relu2 => {
            let r = x.max(0.0);
            r * r
        }
    }
}

/// `√(2/π)`.
const GELU_C: f32 = 0.797_884_6;

/// Abramowitz and Stegun 7.1.26: `erf(x) = 1 − (a₁t + … + a₅t⁵) e^(−x²)`,
/// `t = 1 / (1 + p x)` for `x ≥ 0` (absolute error below 1.5e-7), odd.
const ERF_P: f32 = 0.327_591_1;
const ERF_A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152, 1.061_405_4];

fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + ERF_P * a);
    let poly = t * (ERF_A[0] + t * (ERF_A[1] + t * (ERF_A[2] + t * (ERF_A[3] + t * ERF_A[4]))));
    let y = 1.0 - poly * (-(a * a).min(87.0)).exp();
    y.copysign(x)
}

/// `tanh(y) = 1 − 2 / (1 + e^(2y))`, `y` clamped to ±9 (where tanh is ±1 in float32).
fn tanh(y: f32) -> f32 {
    let y = y.clamp(-9.0, 9.0);
    1.0 - 2.0 / (1.0 + (2.0 * y).exp())
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Act, ERF_A, ERF_P, GELU_C};
    use crate::x86::exp8;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn activate(act: Act, x: &mut [f32]) {
        let mut chunks = x.chunks_exact_mut(8);
        for c in chunks.by_ref() {
            // SAFETY: the chunk is 8 floats long.
            unsafe { _mm256_storeu_ps(c.as_mut_ptr(), lanes(act, _mm256_loadu_ps(c.as_ptr()))) };
        }
        chunks.into_remainder().iter_mut().for_each(|v| *v = super::scalar(act, *v));
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn lanes(act: Act, x: __m256) -> __m256 {
        let (half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(1.0));
        match act {
            Act::GeluErf => {
                let z = _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
                _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, erf(z)))
            }
            Act::GeluTanh => {
                let x3 = _mm256_mul_ps(_mm256_mul_ps(x, x), x);
                let y = _mm256_mul_ps(_mm256_set1_ps(GELU_C), _mm256_fmadd_ps(_mm256_set1_ps(0.044_715), x3, x));
                _mm256_mul_ps(_mm256_mul_ps(half, x), _mm256_add_ps(one, tanh(y)))
            }
            Act::Silu => {
                let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), clamp(x, -87.0, 87.0)));
                _mm256_div_ps(x, _mm256_add_ps(one, e))
            }
            Act::Relu2 => {
                let r = _mm256_max_ps(x, _mm256_setzero_ps());
                _mm256_mul_ps(r, r)
            }
        }
    }

    /// # Safety
    /// The CPU has AVX.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn clamp(x: __m256, lo: f32, hi: f32) -> __m256 {
        _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(lo)), _mm256_set1_ps(hi))
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn erf(x: __m256) -> __m256 {
        let sign = _mm256_and_ps(x, _mm256_set1_ps(-0.0));
        let a = _mm256_andnot_ps(_mm256_set1_ps(-0.0), x);
        let one = _mm256_set1_ps(1.0);
        let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(ERF_P), a, one));
        let mut poly = _mm256_set1_ps(ERF_A[4]);
        for c in [ERF_A[3], ERF_A[2], ERF_A[1], ERF_A[0]] {
            poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(c));
        }
        poly = _mm256_mul_ps(poly, t);
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_min_ps(_mm256_mul_ps(a, a), _mm256_set1_ps(87.0))));
        _mm256_or_ps(_mm256_fnmadd_ps(poly, e, one), sign)
    }

    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn tanh(y: __m256) -> __m256 {
        let one = _mm256_set1_ps(1.0);
        let e = exp8(_mm256_add_ps(clamp(y, -9.0, 9.0), clamp(y, -9.0, 9.0)));
        _mm256_sub_ps(one, _mm256_div_ps(_mm256_set1_ps(2.0), _mm256_add_ps(one, e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(act: Act, x: f64) -> f64 {
        match act {
            Act::GeluErf => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            Act::GeluTanh => 0.5 * x * (1.0 + (0.797_884_560_802_865_4 * (x + 0.044_715 * x * x * x)).tanh()),
            Act::Silu => x / (1.0 + (-x).exp()),
            Act::Relu2 => x.max(0.0).powi(2),
        }
    }

    #[test]
    fn every_activation_matches_float64_on_every_kernel() {
        let isas: Vec<Isa> = [Isa::Avx2, Isa::Portable].into_iter().filter(|i| i.supported()).collect();
        // -12 … 12 in steps of 1/1024, plus a ragged tail for the scalar path.
        let xs: Vec<f32> = (-12 * 1024..=12 * 1024 + 3).map(|i| i as f32 / 1024.0).collect();
        for act in [Act::GeluErf, Act::GeluTanh, Act::Silu, Act::Relu2] {
            for &isa in &isas {
                let mut y = xs.clone();
                activate_with(isa, act, &mut y);
                for (&x, &got) in xs.iter().zip(&y) {
                    let want = exact(act, x as f64);
                    // Absolute near zero, relative where the output is large.
                    let tol = 1e-6 * want.abs().max(1.0);
                    assert!((got as f64 - want).abs() <= tol, "{act:?} {} at {x}: {got} vs {want}", isa.name());
                }
            }
        }
    }

    #[test]
    fn large_and_odd_inputs_stay_finite_or_propagate() {
        for act in [Act::GeluErf, Act::GeluTanh, Act::Silu, Act::Relu2] {
            let mut y = vec![1e30f32, -1e30, 0.0, -0.0, 100.0, -100.0, 3.0, -3.0, 7.5];
            activate(act, &mut y);
            assert!(y[2] == 0.0 && y[3] == 0.0, "{act:?}: {y:?}");
            assert!(y[5].abs() < 1e-6, "{act:?} at -100: {}", y[5]);
            assert!((y[4] - if act == Act::Relu2 { 1e4 } else { 100.0 }).abs() < 1e-3, "{act:?} at 100: {}", y[4]);
        }
    }
}
