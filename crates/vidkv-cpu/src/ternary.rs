//! Ternary value channels (DESIGN §1.2): `γ = mean |x|`, `q = +1 if x > γ/2, −1 if x < −γ/2,
//! else 0`, decode `q · scale` with the scale chosen by [`TernaryScale`].

use vidkv_core::{Arithmetic, TernaryScale};

use crate::arith::{F16_MAX, mean_abs, step};

/// Codes and stored scale of one channel of one block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TernaryFit {
    /// `γ/2` as compared against (f16-rounded under reference arithmetic).
    pub threshold: f32,
    /// The scale the decoder multiplies by (before f16 rounding).
    pub scale: f32,
}

/// Threshold and scale for one channel.
pub fn fit(arith: Arithmetic, rule: TernaryScale, values: &[f32]) -> TernaryFit {
    let gamma = mean_abs(arith, values.iter().copied());
    let threshold = step(arith, 0.5 * gamma);
    let scale = match rule {
        TernaryScale::MeanAbs => gamma,
        TernaryScale::Unit => 1.0,
        TernaryScale::LeastSquares => {
            let kept = values.iter().copied().filter(|x| x.abs() > threshold);
            mean_abs(arith, kept)
        }
    };
    TernaryFit {
        threshold,
        scale: scale.min(F16_MAX),
    }
}

/// The trit of `x`.
#[inline]
pub fn encode(threshold: f32, x: f32) -> i8 {
    if x > threshold {
        1
    } else if x < -threshold {
        -1
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_worked_channel() {
        // mean |x| = (2 + 0.5 + 1 + 0.5) / 4 = 1 → threshold 0.5 (strict comparisons)
        let xs = [2.0, -0.5, -1.0, 0.5];
        let fit_ma = fit(Arithmetic::F32, TernaryScale::MeanAbs, &xs);
        assert_eq!(
            fit_ma,
            TernaryFit {
                threshold: 0.5,
                scale: 1.0
            }
        );
        let codes: Vec<i8> = xs.iter().map(|&x| encode(fit_ma.threshold, x)).collect();
        assert_eq!(codes, [1, 0, -1, 0]);
        // least squares: mean |x| over the non-zero codes = (2 + 1) / 2
        assert_eq!(
            fit(Arithmetic::F32, TernaryScale::LeastSquares, &xs).scale,
            1.5
        );
        assert_eq!(fit(Arithmetic::F32, TernaryScale::Unit, &xs).scale, 1.0);
    }

    #[test]
    fn all_zero_channel_codes_zero() {
        let f = fit(Arithmetic::Reference, TernaryScale::LeastSquares, &[0.0; 8]);
        assert_eq!(f.threshold, 0.0);
        assert_eq!(f.scale, 0.0);
        assert_eq!(encode(f.threshold, 0.0), 0);
    }

    #[test]
    fn reference_threshold_is_f16_rounded() {
        // mean |x| = 0.1 → f16(0.1) = 0.0999755859375; threshold = its half.
        let xs = [0.1f32, -0.1, 0.1, -0.1];
        let f = fit(Arithmetic::Reference, TernaryScale::MeanAbs, &xs);
        assert_eq!(f.scale, 0.099_975_586);
        assert_eq!(f.threshold, 0.049_987_793);
    }
}
