//! Min/max ("affine") codes: `lo = min`, `step = (max − lo)/(2^b − 1)`,
//! `code = clamp(round_half_even((x − lo)/step), 0, 2^b − 1)`, decode `lo + code·step`.
//!
//! Under f32 arithmetic the statistics are exact f32 and codes are computed against the stored
//! (f16-rounded) `lo` and `step`, i.e. against what the decoder will see. Under reference
//! arithmetic every step is rounded to f16 as the PyTorch reference does. A step that overflows
//! f16 (a range above 65504) is saturated to 65504, and so are `code·step` and `lo + code·step`
//! on decode, where the reference would produce inf/NaN.

use half::f16;
use vidkv_core::{AffineParams, Arithmetic, Bits};

use crate::arith::{F16_MAX, r16, round_half_even, step as round_step};

/// Fits the parameters of one group.
pub fn fit(arith: Arithmetic, bits: Bits, values: impl Iterator<Item = f32>) -> AffineParams {
    let (lo, hi) = values.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    from_bounds(arith, bits, lo, hi)
}

/// The parameters of a group whose minimum is `lo` and maximum `hi` (what [`fit`] stores).
pub fn from_bounds(arith: Arithmetic, bits: Bits, lo: f32, hi: f32) -> AffineParams {
    let levels = f32::from(bits.max_code());
    let step = match arith {
        Arithmetic::F32 => (hi - lo) / levels,
        Arithmetic::Reference => r16(round_step(arith, hi - lo).min(F16_MAX) / levels),
    };
    AffineParams {
        lo: f16::from_f32(lo),
        step: f16::from_f32(step.min(F16_MAX)),
    }
}

/// The code of `x` in a group.
#[inline]
pub fn encode(arith: Arithmetic, bits: Bits, p: AffineParams, x: f32) -> u8 {
    let (lo, step) = (p.lo.to_f32(), p.step.to_f32());
    if step == 0.0 {
        return 0;
    }
    let t = round_step(arith, round_step(arith, x - lo) / step);
    round_half_even(t).clamp(0.0, f32::from(bits.max_code())) as u8
}

/// The value of `code` in a group.
#[inline]
pub fn decode(arith: Arithmetic, p: AffineParams, code: u8) -> f32 {
    let (lo, step) = (p.lo.to_f32(), p.step.to_f32());
    let scaled = round_step(arith, f32::from(code) * step).min(F16_MAX);
    // Saturate before rounding: parameters no encoder writes (lo + code·step beyond the f16
    // range) would otherwise decode to infinity under reference arithmetic.
    round_step(arith, (scaled + lo).min(F16_MAX))
}

/// Whether stored parameters could have come from an encoder (finite, non-negative step).
pub fn plausible(p: AffineParams) -> bool {
    p.lo.is_finite() && p.step.is_finite() && !p.step.is_sign_negative()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(arith: Arithmetic, bits: Bits, xs: &[f32]) -> (AffineParams, Vec<u8>, Vec<f32>) {
        let p = fit(arith, bits, xs.iter().copied());
        let codes: Vec<u8> = xs.iter().map(|&x| encode(arith, bits, p, x)).collect();
        let dec = codes.iter().map(|&c| decode(arith, p, c)).collect();
        (p, codes, dec)
    }

    #[test]
    fn hand_worked_two_bit_group() {
        // lo = -1, step = (2 - -1)/3 = 1: levels -1, 0, 1, 2.
        let (p, codes, dec) = roundtrip(Arithmetic::F32, Bits::Two, &[-1.0, 0.4, 0.6, 2.0, 1.5]);
        assert_eq!((p.lo.to_f32(), p.step.to_f32()), (-1.0, 1.0));
        // 1.5 - (-1) = 2.5 → ties to even → 2
        assert_eq!(codes, [0, 1, 2, 3, 2]);
        assert_eq!(dec, [-1.0, 0.0, 1.0, 2.0, 1.0]);
    }

    #[test]
    fn four_bit_levels() {
        let xs: Vec<f32> = (0..16).map(|i| i as f32 * 0.5).collect();
        let (p, codes, dec) = roundtrip(Arithmetic::Reference, Bits::Four, &xs);
        assert_eq!(p.step.to_f32(), 0.5);
        assert_eq!(codes, (0..16).collect::<Vec<u8>>());
        assert_eq!(dec, xs);
    }

    #[test]
    fn constant_group_codes_zero_and_decodes_exactly() {
        for arith in [Arithmetic::F32, Arithmetic::Reference] {
            let (p, codes, dec) = roundtrip(arith, Bits::Two, &[0.75; 8]);
            assert_eq!(p.step.to_f32(), 0.0);
            assert!(codes.iter().all(|&c| c == 0));
            assert!(dec.iter().all(|&v| v == 0.75));
        }
    }

    #[test]
    fn reference_rounds_each_step_to_f16() {
        // range 1.0 / 3 → f16(0.33333) = 0.333251953125; (x - lo)/s rounded to f16 before rint.
        let xs = [0.0f32, 1.0, 0.5];
        let (p, codes, dec) = roundtrip(Arithmetic::Reference, Bits::Two, &xs);
        assert_eq!(p.step.to_f32(), 0.333_251_95);
        // 0.5 / 0.33325195 = 1.50036... → f16 1.5 → ties to even → 2
        assert_eq!(codes, [0, 3, 2]);
        assert_eq!(dec[2], r16(r16(2.0 * 0.333_251_95) + 0.0));
        // in f32 arithmetic the same point is just above the tie and also codes 2
        let (_, codes32, _) = roundtrip(Arithmetic::F32, Bits::Two, &xs);
        assert_eq!(codes32, [0, 3, 2]);
    }

    #[test]
    fn error_is_at_most_half_a_step_plus_rounding() {
        let xs: Vec<f32> = (0..64).map(|i| libm::sinf(i as f32 * 0.7) * 5.0).collect();
        let (p, _, dec) = roundtrip(Arithmetic::F32, Bits::Two, &xs);
        let bound = p.step.to_f32() / 2.0 + 5.0 * 2e-3;
        for (x, y) in xs.iter().zip(&dec) {
            assert!((x - y).abs() <= bound, "{x} {y} {bound}");
        }
    }

    #[test]
    fn huge_ranges_saturate_instead_of_overflowing() {
        let (p, codes, dec) = roundtrip(Arithmetic::Reference, Bits::Two, &[-65504.0, 65504.0]);
        assert!(p.step.is_finite());
        assert_eq!(codes, [0, 3]);
        assert!(dec.iter().all(|v| v.is_finite()));
    }
}
