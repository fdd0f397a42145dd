//! Branch-free scalar helpers that vectorize when inlined into a `#[target_feature]` loop.

/// f16 bits to f32, exact for every value (subnormals, infinities, NaN).
#[inline(always)]
pub fn f16_bits_to_f32(h: u16) -> f32 {
    let h = u32::from(h);
    let sign = (h & 0x8000) << 16;
    let mag = (h & 0x7fff) << 13;
    // Scaling by 2^112 rebiases the exponent and normalizes subnormals.
    let v = f32::from_bits(mag) * f32::from_bits(0x7780_0000);
    let bits = if h & 0x7c00 == 0x7c00 {
        mag | 0x7f80_0000
    } else {
        v.to_bits()
    };
    f32::from_bits(bits | sign)
}

/// Rounds `x` (|x| < 2^22) to the nearest integer and returns its two's-complement bits, with
/// float operations only (vectorizes without saturating-cast fix-ups).
#[inline(always)]
pub fn round_bits(x: f32) -> u32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC).to_bits().wrapping_sub(MAGIC.to_bits())
}

/// `e^x` to about 2 ulp of f32 for x ≤ 0 (and 0 below −87, including −∞).
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    // x = n·ln2 + r, |r| ≤ ln2/2
    const MAGIC: f32 = 12_582_912.0;
    let nf = (x * core::f32::consts::LOG2_E + MAGIC) - MAGIC;
    let n = round_bits(nf);
    let r = x - nf * 0.693_145_75 - nf * 1.428_606_8e-6;
    // Minimax polynomial for e^r on [−ln2/2, ln2/2].
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (0.166_666_6
                    + r * (0.041_666_41 + r * (0.008_333_452 + r * 0.001_393_874_6)))));
    // n ≥ −126 here, so n + 127 > 0.
    let scale = f32::from_bits(n.wrapping_add(127) << 23);
    let v = p * scale;
    if x <= -87.0 { 0.0 } else { v }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_matches_half_for_every_bit_pattern() {
        for h in 0..=u16::MAX {
            let want = half::f16::from_bits(h).to_f32();
            let got = f16_bits_to_f32(h);
            if want.is_nan() {
                assert!(got.is_nan(), "{h:#x}");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{h:#x}");
            }
        }
    }

    #[test]
    fn exp_is_accurate_on_the_softmax_range() {
        let mut x = -90.0f32;
        while x <= 0.0 {
            let (got, want) = (exp_approx(x), libm::expf(x));
            assert!(
                (got - want).abs() <= 4e-7 * want + 1e-37,
                "{x}: {got} vs {want}"
            );
            x += 0.0137;
        }
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(0.0), 1.0);
    }

    #[test]
    fn rounding_is_to_nearest() {
        for (x, want) in [
            (2.4f32, 2i32),
            (2.6, 3),
            (-2.6, -3),
            (127.0, 127),
            (-0.4, 0),
        ] {
            assert_eq!(round_bits(x) as i32, want);
        }
        assert_eq!(round_bits(-127.2) as u8 as i8, -127);
    }
}
