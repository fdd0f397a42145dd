//! Ternary value blocks (DESIGN §1.2), vectorised across channels: lane `i` is channel `c0 + i`
//! and every per-channel sum runs over the tokens in order, so the bytes are the scalar
//! backend's, under both arithmetics.

use alloc::vec;
use alloc::vec::Vec;

use half::f16;
use vidkv_core::layout::trit_row_bytes;
use vidkv_core::{Arithmetic, Codec, TernaryScale, ValueLayout, ValueScheme};
use vidkv_cpu::arith::{F16_MAX, step};

use super::simd::Simd;

/// What a ternary block encoder needs, computed once per call.
#[derive(Debug)]
pub(crate) struct ValuePlan {
    d: usize,
    g: usize,
    /// Row stride of the padded rows: D rounded up to whole vectors.
    pub(crate) stride: usize,
    arith: Arithmetic,
    rule: TernaryScale,
    layout: ValueLayout,
}

impl ValuePlan {
    pub(crate) fn g(&self) -> usize {
        self.g
    }

    pub(crate) fn d(&self) -> usize {
        self.d
    }

    /// The plan for `lanes`-wide vectors, or `None` for value schemes without a kernel.
    pub(crate) fn new(codec: &Codec, lanes: usize) -> Option<Self> {
        let ValueScheme::Ternary { scale } = codec.config().values else {
            return None;
        };
        Some(Self {
            d: codec.head_dim(),
            g: codec.group(),
            stride: codec.head_dim().next_multiple_of(lanes),
            arith: codec.config().arithmetic,
            rule: scale,
            layout: *codec.value_layout(),
        })
    }
}

/// Working memory of the value kernel.
pub(crate) struct ValueScratch {
    sum: Vec<f32>,
    kept_sum: Vec<f32>,
    kept_count: Vec<f32>,
    threshold: Vec<f32>,
    kept: Vec<usize>,
    /// Base-3 digits of one row, `stride + 8` bytes (the tail stays `1`, i.e. `q = 0`).
    digits: Vec<u8>,
}

impl ValueScratch {
    pub(crate) fn new(plan: &ValuePlan) -> Self {
        Self {
            sum: vec![0.0; plan.stride],
            kept_sum: vec![0.0; plan.stride],
            kept_count: vec![0.0; plan.stride],
            threshold: vec![0.0; plan.stride],
            kept: Vec::with_capacity(plan.g),
            digits: vec![1; plan.stride + 8],
        }
    }
}

/// Encodes one block from padded rows (`G` rows of `stride` values, zero past `D`); tokens whose
/// bit is set in `excluded` (`G/8` bytes) take no part and get trit 0.
///
/// # Safety
/// The instruction set of `S`; `rows` holds `G·stride` values, `block` the value block size.
#[inline(always)]
pub(crate) unsafe fn encode_block<S: Simd>(
    plan: &ValuePlan,
    rows: &[f32],
    excluded: Option<&[u8]>,
    s: &mut ValueScratch,
    block: &mut [u8],
) {
    let ValueLayout::Ternary { scales, trits } = plan.layout else {
        unreachable!("plans exist only for ternary values")
    };
    s.kept.clear();
    s.kept
        .extend((0..plan.g).filter(|&t| excluded.is_none_or(|m| m[t / 8] >> (t % 8) & 1 == 0)));
    // SAFETY: forwarded contract.
    unsafe { sum_abs::<S>(plan, rows, s) };
    let n = s.kept.len() as f32;
    for (sum, thr) in s.sum.iter_mut().zip(s.threshold.iter_mut()) {
        // γ replaces the sum.
        *sum = if s.kept.is_empty() {
            0.0
        } else {
            step(plan.arith, *sum / n)
        };
        *thr = step(plan.arith, 0.5 * *sum);
    }
    if plan.rule == TernaryScale::LeastSquares {
        // SAFETY: forwarded contract.
        unsafe { sum_above::<S>(plan, rows, s) };
    }
    for c in 0..plan.d {
        let scale = match plan.rule {
            TernaryScale::MeanAbs => s.sum[c],
            TernaryScale::Unit => 1.0,
            TernaryScale::LeastSquares if s.kept_count[c] == 0.0 => 0.0,
            TernaryScale::LeastSquares => step(plan.arith, s.kept_sum[c] / s.kept_count[c]),
        };
        let bytes = f16::from_f32(scale.min(F16_MAX)).to_le_bytes();
        block[scales.offset + 2 * c..][..2].copy_from_slice(&bytes);
    }
    // SAFETY: forwarded contract.
    unsafe { write_trits::<S>(plan, rows, excluded, s, &mut block[trits.range()]) };
}

/// `Σ |x|` per channel over the kept tokens, in token order.
#[inline(always)]
unsafe fn sum_abs<S: Simd>(plan: &ValuePlan, rows: &[f32], s: &mut ValueScratch) {
    let w = plan.stride;
    for c0 in (0..w).step_by(S::N) {
        // SAFETY: caller's instruction set; row `t` has `stride` values.
        unsafe {
            let mut acc = S::splat(0.0);
            for &t in &s.kept {
                acc = S::add(acc, S::abs(S::load(rows.as_ptr().add(t * w + c0))));
            }
            S::store(s.sum.as_mut_ptr().add(c0), acc);
        }
    }
}

/// `Σ |x|` and the count over the kept tokens with `|x|` above the threshold, in token order.
#[inline(always)]
unsafe fn sum_above<S: Simd>(plan: &ValuePlan, rows: &[f32], s: &mut ValueScratch) {
    let w = plan.stride;
    for c0 in (0..w).step_by(S::N) {
        // SAFETY: caller's instruction set; row `t` has `stride` values.
        unsafe {
            let thr = S::load(s.threshold.as_ptr().add(c0));
            let (mut acc, mut count) = (S::splat(0.0), S::splat(0.0));
            for &t in &s.kept {
                let x = S::abs(S::load(rows.as_ptr().add(t * w + c0)));
                acc = S::add(acc, S::keep_gt(x, thr));
                count = S::add(count, S::count_gt(x, thr));
            }
            S::store(s.kept_sum.as_mut_ptr().add(c0), acc);
            S::store(s.kept_count.as_mut_ptr().add(c0), count);
        }
    }
}

/// Token-major trit rows: `+1` above the threshold, `−1` below its negation, else (and for
/// excluded tokens) `0`.
#[inline(always)]
unsafe fn write_trits<S: Simd>(
    plan: &ValuePlan,
    rows: &[f32],
    excluded: Option<&[u8]>,
    s: &mut ValueScratch,
    out: &mut [u8],
) {
    let (w, row_bytes) = (plan.stride, trit_row_bytes(plan.d));
    for (t, row_out) in out.chunks_exact_mut(row_bytes).enumerate() {
        if excluded.is_some_and(|m| m[t / 8] >> (t % 8) & 1 == 1) {
            s.digits[..w].fill(1);
        } else {
            for c0 in (0..w).step_by(S::N) {
                // SAFETY: caller's instruction set; row `t` has `stride` values and `digits`
                // `stride + 8` bytes.
                unsafe {
                    let x = S::load(rows.as_ptr().add(t * w + c0));
                    let thr = S::load(s.threshold.as_ptr().add(c0));
                    S::store_digits(x, thr, s.digits.as_mut_ptr().add(c0));
                }
            }
        }
        pack_digits(&s.digits, row_out);
    }
}

/// Five base-3 digits per byte, `d0 + 3·d1 + 9·d2 + 27·d3 + 81·d4`, from `digits` (which
/// extends at least 3 bytes past the last digit read, holding `1`).
pub(crate) fn pack_digits(digits: &[u8], out: &mut [u8]) {
    // The product's byte 4 is Σ dᵢ·3ⁱ ≤ 242; lower bytes stay below 256 (no carries).
    const WEIGHTS: u64 = 81 | 27 << 8 | 9 << 16 | 3 << 24 | 1 << 32;
    for (i, byte) in out.iter_mut().enumerate() {
        let w = u64::from_le_bytes(digits[5 * i..5 * i + 8].try_into().expect("8 bytes"));
        *byte = (w.wrapping_mul(WEIGHTS) >> 32) as u8;
    }
}
