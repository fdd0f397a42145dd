//! The two arithmetics of DESIGN §1.6, as small helpers every quantizer uses.
//!
//! Reference arithmetic rounds every elementwise step to f16. Computing a single `+ − × ÷` of f16
//! operands in f32 and rounding once to f16 is correctly rounded (f32 has ≥ 2·11 + 2 significand
//! bits, so double rounding is innocuous), which is what PyTorch does for f16 tensors.

use half::f16;
use vidkv_core::Arithmetic;

/// Rounds to the nearest f16 value (ties to even), returned as f32.
#[inline]
pub fn r16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

/// Largest finite f16 value.
pub const F16_MAX: f32 = 65504.0;

/// Round half to even, as `torch.round`.
#[inline]
pub fn round_half_even(x: f32) -> f32 {
    libm::rintf(x)
}

/// Rounds a step's result under the given arithmetic: identity for f32, to f16 for reference.
#[inline]
pub fn step(arith: Arithmetic, x: f32) -> f32 {
    match arith {
        Arithmetic::F32 => x,
        Arithmetic::Reference => r16(x),
    }
}

/// `Σ|x| / n` with an f32 sum; rounded to f16 under reference arithmetic.
pub fn mean_abs(arith: Arithmetic, values: impl Iterator<Item = f32>) -> f32 {
    let (sum, n) = values.fold((0.0f32, 0usize), |(s, n), v| (s + v.abs(), n + 1));
    if n == 0 {
        0.0
    } else {
        step(arith, sum / n as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_even_matches_torch() {
        assert_eq!(round_half_even(0.5), 0.0);
        assert_eq!(round_half_even(1.5), 2.0);
        assert_eq!(round_half_even(2.5), 2.0);
        assert_eq!(round_half_even(-0.5), -0.0);
        assert_eq!(round_half_even(2.4999), 2.0);
    }

    #[test]
    fn r16_rounds_to_nearest_even() {
        // 1 + 2^-11 lies halfway between 1 and 1 + 2^-10: ties to even gives 1.
        assert_eq!(r16(1.0 + 1.0 / 2048.0), 1.0);
        assert_eq!(r16(1.0 + 3.0 / 2048.0), 1.0 + 2.0 / 1024.0);
        assert_eq!(r16(70000.0), f32::INFINITY);
    }
}
