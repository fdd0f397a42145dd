//! Shared helpers of the fuzz targets: a configuration chosen by the first input bytes.

use vidkv_core::{
    Arithmetic, Bits, Codec, GroupSize, HeadDim, KeyScheme, LaneRule, MixedKeys, OutlierScope,
    QuantConfig, TernaryScale, Transform, ValueScheme,
};

/// Bytes consumed by [`codec_from`].
pub const CONFIG_BYTES: usize = 6;

/// A codec chosen by the first [`CONFIG_BYTES`] bytes (every option reachable), and the rest.
/// `None` when the input is too short or the combination is invalid (e.g. Hadamard on a
/// non-power-of-two lane count).
pub fn codec_from(data: &[u8]) -> Option<(Codec, &[u8])> {
    let (c, rest) = data.split_at_checked(CONFIG_BYTES)?;
    let head_dim = HeadDim::new(16 + 2 * (usize::from(c[0]) % 121)).ok()?;
    let group = GroupSize::new([32, 64, 128][usize::from(c[1] % 3)]).ok()?;
    let bits = |b: u8| if b & 1 == 0 { Bits::Two } else { Bits::Four };
    let keys = if c[2] & 1 == 0 {
        KeyScheme::PerChannel {
            bits: bits(c[2] >> 1),
        }
    } else {
        KeyScheme::Mixed(MixedKeys {
            outlier_ratio: f32::from(c[3]) / 255.0,
            scope: if c[2] & 2 == 0 {
                OutlierScope::Block
            } else {
                OutlierScope::Layer
            },
            transform: [Transform::Fft, Transform::Hadamard, Transform::Identity]
                [usize::from((c[2] >> 2) % 3)],
            lane_rule: if c[2] & 0x40 == 0 {
                LaneRule::Symmetric
            } else {
                LaneRule::PaperCompat
            },
        })
    };
    let values = match c[4] % 3 {
        0 => ValueScheme::Ternary {
            scale: [
                TernaryScale::MeanAbs,
                TernaryScale::LeastSquares,
                TernaryScale::Unit,
            ][usize::from((c[4] / 3) % 3)],
        },
        1 => ValueScheme::PerToken {
            bits: bits(c[4] / 3),
        },
        _ => ValueScheme::PerChannel {
            bits: bits(c[4] / 3),
        },
    };
    let arithmetic = if c[5] & 1 == 0 {
        Arithmetic::F32
    } else {
        Arithmetic::Reference
    };
    let codec = Codec::new(QuantConfig {
        head_dim,
        group,
        keys,
        values,
        arithmetic,
    })
    .ok()?;
    Some((codec, rest))
}
