//! Quantization settings: what to compute, validated once, shared by every backend.
//!
//! A [`QuantConfig`] fully determines the byte layout of key and value blocks (see
//! [`crate::layout`]); backends never make layout decisions of their own.

use crate::error::{Error, Result};

/// Attention head dimension: any even number from 16 to 256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HeadDim(u16);

impl HeadDim {
    /// Smallest supported head_dim.
    pub const MIN: usize = 16;
    /// Largest supported head_dim (a [`crate::ChannelMask`] holds 256 bits).
    pub const MAX: usize = 256;

    /// Validates `d`.
    pub fn new(d: usize) -> Result<Self> {
        if d.is_multiple_of(2) && (Self::MIN..=Self::MAX).contains(&d) {
            Ok(Self(d as u16))
        } else {
            Err(Error::UnsupportedHeadDim { head_dim: d })
        }
    }

    /// The dimension as a `usize`.
    pub fn get(self) -> usize {
        usize::from(self.0)
    }
}

/// Tokens per quantization block (G). Statistics are per head and per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum GroupSize {
    /// 32 tokens (the paper's default).
    G32 = 32,
    /// 64 tokens.
    G64 = 64,
    /// 128 tokens.
    G128 = 128,
}

impl GroupSize {
    /// Validates a token count.
    pub fn new(g: usize) -> Result<Self> {
        match g {
            32 => Ok(Self::G32),
            64 => Ok(Self::G64),
            128 => Ok(Self::G128),
            _ => Err(Error::UnsupportedGroupSize { group: g }),
        }
    }

    /// Tokens per block.
    pub fn tokens(self) -> usize {
        self as usize
    }
}

/// Width of a min/max (affine) code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Bits {
    /// 1 bit: 2 levels, `lo` and `lo + step` (XQuant's 1-bit groups).
    One = 1,
    /// 2 bits: 4 levels.
    Two = 2,
    /// 4 bits: 16 levels.
    Four = 4,
}

impl Bits {
    /// Validates a bit width.
    pub fn new(bits: u32) -> Result<Self> {
        match bits {
            1 => Ok(Self::One),
            2 => Ok(Self::Two),
            4 => Ok(Self::Four),
            _ => Err(Error::InvalidConfig {
                reason: "affine codes must be 1, 2 or 4 bits wide",
            }),
        }
    }

    /// Bits per code.
    pub fn get(self) -> u32 {
        self as u32
    }

    /// Largest code, `2^bits − 1`.
    pub fn max_code(self) -> u8 {
        (1u8 << self.get()) - 1
    }
}

/// How statistics and codes are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Arithmetic {
    /// f32 statistics from the input; only stored scales/offsets are rounded to f16. Most accurate.
    #[default]
    F32,
    /// The published PyTorch reference on f16 tensors: every elementwise step rounded to f16
    /// (DESIGN §1.6), so codes and decoded values match it bit for bit.
    Reference,
}

/// Over which tokens the outlier-channel ranges are pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutlierScope {
    /// Range pooled over all heads and all quantized tokens of a tensor (the paper's choice).
    Layer,
    /// Range per head and per block.
    Block,
}

/// Transform applied to the normal (non-outlier) key channels before 1-bit coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transform {
    /// One-sided real DFT along channels (the paper).
    Fft,
    /// Orthonormal Walsh–Hadamard (needs a power-of-two number of normal channels).
    Hadamard,
    /// No transform.
    Identity,
}

/// How a 1-bit lane is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LaneRule {
    /// `ẑ = (2·bit − 1)·s` (vidkv's default).
    Symmetric,
    /// The reference code's rule: real-part lanes `bit·s`, imaginary-part lanes `(2·bit − 1)·s/2`.
    PaperCompat,
}

/// VidKV mixed-precision keys: 2-bit outlier channels plus 1-bit transformed normal channels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MixedKeys {
    /// Share r of channels stored at 2 bits; `k = round(r·D)`.
    pub outlier_ratio: f32,
    /// Where the outlier ranges are measured.
    pub scope: OutlierScope,
    /// Transform of the normal channels.
    pub transform: Transform,
    /// Decode rule of the 1-bit lanes.
    pub lane_rule: LaneRule,
}

impl MixedKeys {
    /// vidkv's default: r = 0.5, block scope, FFT, symmetric lanes.
    pub const DEFAULT: Self = Self {
        outlier_ratio: 0.5,
        scope: OutlierScope::Block,
        transform: Transform::Fft,
        lane_rule: LaneRule::Symmetric,
    };

    /// Number of outlier channels for a given head_dim.
    pub fn outlier_count(&self, head_dim: HeadDim) -> usize {
        libm::roundf(self.outlier_ratio * head_dim.get() as f32) as usize
    }
}

/// Length b of an H1B-KV sign sketch: bits per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum SketchBits {
    /// 64 bits.
    B64 = 64,
    /// 128 bits.
    B128 = 128,
    /// 256 bits.
    B256 = 256,
}

impl SketchBits {
    /// Validates a sketch length.
    pub fn new(bits: usize) -> Result<Self> {
        match bits {
            64 => Ok(Self::B64),
            128 => Ok(Self::B128),
            256 => Ok(Self::B256),
            _ => Err(Error::InvalidConfig {
                reason: "sketch bits must be 64, 128 or 256",
            }),
        }
    }

    /// The smallest supported length that is at least `head_dim` (one bit per key element at
    /// D = 64, 128, 256).
    pub fn for_head_dim(head_dim: HeadDim) -> Self {
        match head_dim.get() {
            ..=64 => Self::B64,
            65..=128 => Self::B128,
            _ => Self::B256,
        }
    }

    /// Bits per key.
    pub fn get(self) -> usize {
        self as usize
    }
}

/// Seed of the H1B-KV projection used by the `h1b` preset.
pub const DEFAULT_SKETCH_SEED: u32 = 0x4831_424B; // "H1BK"

/// How keys are quantized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KeyScheme {
    /// VidKV "1 + r" bits.
    Mixed(MixedKeys),
    /// Min/max codes per (channel, block): KIVI keys, and the uniform per-channel baseline.
    PerChannel {
        /// Code width.
        bits: Bits,
    },
    /// H1B-KV one-bit sketched keys: each key is stored as its norm (f16) and the signs of a
    /// seeded Gaussian projection `sign(R·k)`, `R ∈ ℝ^{b×D}` (see [`crate::sketch`]).
    SignSketch {
        /// Sketch length b.
        bits: SketchBits,
        /// Seed of the projection R.
        seed: u32,
    },
}

/// Scale stored for a ternary value channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TernaryScale {
    /// `γ = mean |x|` (the paper's text).
    MeanAbs,
    /// Mean |x| over the non-zero codes: the least-squares scale for the chosen codes.
    LeastSquares,
    /// 1.0: what the reference code applies.
    Unit,
}

/// How values are quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueScheme {
    /// VidKV "1.58" bits: {−1, 0, +1} per channel and block, 5 trits per byte.
    Ternary {
        /// Which scale the encoder stores.
        scale: TernaryScale,
    },
    /// KIVI values: min/max codes per token over groups of G consecutive channels.
    PerToken {
        /// Code width.
        bits: Bits,
    },
    /// Min/max codes per (channel, block).
    PerChannel {
        /// Code width.
        bits: Bits,
    },
}

/// XQuant's data-free calibration of min/max groups: with η > 0 the encoder keeps the codes of
/// the plain min/max quantizer and stores pulled-in parameters `lo' = lo + η·step·(2^b − 1)`,
/// `step' = (1 − 2η)·step`, so the outermost levels move inside the range. Decoding is unchanged
/// (`lo' + code·step'`). η = 0 is the plain quantizer.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Calibration {
    /// η for the min/max groups of keys (per-channel keys and the outlier channels of mixed keys).
    pub keys: f32,
    /// η for the min/max groups of values (per-token and per-channel values).
    pub values: f32,
}

impl Calibration {
    /// No calibration (η = 0 everywhere).
    pub const NONE: Self = Self {
        keys: 0.0,
        values: 0.0,
    };
}

/// Everything that determines how one layer's K/V is encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantConfig {
    /// Head dimension D.
    pub head_dim: HeadDim,
    /// Tokens per block G.
    pub group: GroupSize,
    /// Key scheme.
    pub keys: KeyScheme,
    /// Value scheme.
    pub values: ValueScheme,
    /// Arithmetic of the encoder.
    pub arithmetic: Arithmetic,
    /// Endpoint calibration of min/max groups (XQuant); [`Calibration::NONE`] by default.
    pub calibration: Calibration,
    /// Tokens per key block traced as outliers (OTT): excluded from the block's key statistics
    /// and kept in f16 in the block. 0 = no tracing.
    pub traced_tokens: u8,
}

impl QuantConfig {
    /// A configuration without calibration and without traced tokens.
    pub fn new(
        head_dim: HeadDim,
        group: GroupSize,
        keys: KeyScheme,
        values: ValueScheme,
        arithmetic: Arithmetic,
    ) -> Self {
        Self {
            head_dim,
            group,
            keys,
            values,
            arithmetic,
            calibration: Calibration::NONE,
            traced_tokens: 0,
        }
    }

    /// Checks the combination: outlier ratio in [0, 1], Hadamard on a power-of-two lane count.
    pub fn validate(&self) -> Result<()> {
        for eta in [self.calibration.keys, self.calibration.values] {
            if !(0.0..0.5).contains(&eta) {
                return Err(Error::InvalidConfig {
                    reason: "calibration eta must be within 0..0.5",
                });
            }
        }
        if usize::from(self.traced_tokens) > self.group.tokens() / 4 {
            return Err(Error::InvalidConfig {
                reason: "at most G/4 traced tokens per block",
            });
        }
        if matches!(self.keys, KeyScheme::SignSketch { .. })
            && (self.traced_tokens > 0 || self.calibration.keys != 0.0)
        {
            return Err(Error::InvalidConfig {
                reason: "sign-sketch keys have no traced tokens and no key calibration",
            });
        }
        if let KeyScheme::Mixed(m) = self.keys {
            if !(0.0..=1.0).contains(&m.outlier_ratio) {
                return Err(Error::InvalidConfig {
                    reason: "outlier ratio must be within 0..=1",
                });
            }
            let lanes = self.head_dim.get() - m.outlier_count(self.head_dim);
            if m.transform == Transform::Hadamard && lanes > 0 && !lanes.is_power_of_two() {
                return Err(Error::InvalidConfig {
                    reason: "the Hadamard transform needs a power-of-two number of normal channels",
                });
            }
            if m.lane_rule == LaneRule::PaperCompat && m.transform != Transform::Fft {
                return Err(Error::InvalidConfig {
                    reason: "the PaperCompat lane rule is defined for the Fft transform only",
                });
            }
        }
        Ok(())
    }
}

/// The named presets used by `vidkv eval` and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// vidkv: r = 0.5, FFT, symmetric lanes, block scope; ternary values with the least-squares
    /// scale; f32 arithmetic.
    Vidkv,
    /// What the paper's reference code computes (layer scope, PaperCompat, unit value scale,
    /// reference arithmetic).
    VidkvPaper,
    /// KIVI 2-bit (keys per channel, values per token).
    Kivi2,
    /// KIVI 4-bit.
    Kivi4,
    /// Uniform per-channel 2-bit keys and values.
    Pc2,
    /// [`Scheme::Vidkv`] with salient tokens (DESIGN §1.3): the fraction
    /// [`Scheme::salient_fraction`] of tokens (p = 0.2) keep 2-bit values. The block encoding is
    /// vidkv's; which tokens are salient is the caller's input to the streaming cache.
    VidkvStp,
    /// KIVI 2-bit ([`Scheme::Kivi2`]) with outlier-token tracing (OTT): per key block the
    /// [`Scheme::traced_slots`] tokens that stretch the channel ranges most are kept in f16 and
    /// left out of the block's key statistics.
    Ott2,
    /// H1B-KV: keys as one-bit sign sketches (b = the smallest of 64/128/256 that is ≥ D, seed
    /// [`DEFAULT_SKETCH_SEED`]) plus f16 norms, values 4-bit per token (KIVI-4 values); f32
    /// arithmetic. The published method fine-tunes the model for it; we use it without
    /// fine-tuning.
    H1b,
    /// XQuant (Yang et al., EMNLP 2025) without cross-layer sharing: KIVI's layout with the
    /// AsymKV split XQuant builds on — keys 2-bit per channel, values 1-bit per token — and
    /// endpoint calibration η ([`Scheme::XQUANT_CALIBRATION`]); f32 arithmetic. Cross-layer
    /// code sharing is a per-layer choice on top ([`crate::Codec::borrowing`]).
    Xquant,
}

impl Scheme {
    /// The calibration of [`Scheme::Xquant`], the best of XQuant's η sets on the real tensors
    /// (`docs/EVAL.md`).
    pub const XQUANT_CALIBRATION: Calibration = Calibration {
        keys: 0.045,
        values: 1.0 / 6.0,
    };

    /// All presets, in report order.
    pub const ALL: [Scheme; 9] = [
        Scheme::Vidkv,
        Scheme::VidkvPaper,
        Scheme::Kivi2,
        Scheme::Kivi4,
        Scheme::Pc2,
        Scheme::VidkvStp,
        Scheme::Ott2,
        Scheme::H1b,
        Scheme::Xquant,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Vidkv => "vidkv",
            Scheme::VidkvPaper => "vidkv-paper",
            Scheme::Kivi2 => "kivi2",
            Scheme::Kivi4 => "kivi4",
            Scheme::Pc2 => "pc2",
            Scheme::VidkvStp => "vidkv-stp",
            Scheme::Ott2 => "ott2",
            Scheme::H1b => "h1b",
            Scheme::Xquant => "xquant",
        }
    }

    /// Traced tokens per key block of this preset for blocks of `group` tokens:
    /// `max(1, round(0.015·G))` for [`Scheme::Ott2`] (1, 1 and 2 for G = 32, 64, 128), 0 for the
    /// others.
    pub fn traced_slots(self, group: GroupSize) -> u8 {
        match self {
            Scheme::Ott2 => libm::roundf(0.015 * group.tokens() as f32).max(1.0) as u8,
            _ => 0,
        }
    }

    /// Share of tokens marked salient, for the presets that use salient tokens.
    pub fn salient_fraction(self) -> Option<f32> {
        match self {
            Scheme::VidkvStp => Some(0.2),
            _ => None,
        }
    }

    /// Parses a preset name.
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or(Error::InvalidConfig {
                reason: "unknown scheme name",
            })
    }

    /// The configuration of this preset for a head_dim and group size.
    pub fn config(self, head_dim: HeadDim, group: GroupSize) -> QuantConfig {
        let (keys, values, arithmetic) = match self {
            Scheme::Vidkv | Scheme::VidkvStp => (
                KeyScheme::Mixed(MixedKeys::DEFAULT),
                ValueScheme::Ternary {
                    scale: TernaryScale::LeastSquares,
                },
                Arithmetic::F32,
            ),
            Scheme::VidkvPaper => (
                KeyScheme::Mixed(MixedKeys {
                    outlier_ratio: 0.5,
                    scope: OutlierScope::Layer,
                    transform: Transform::Fft,
                    lane_rule: LaneRule::PaperCompat,
                }),
                ValueScheme::Ternary {
                    scale: TernaryScale::Unit,
                },
                Arithmetic::Reference,
            ),
            Scheme::Kivi2 | Scheme::Ott2 => (
                KeyScheme::PerChannel { bits: Bits::Two },
                ValueScheme::PerToken { bits: Bits::Two },
                Arithmetic::Reference,
            ),
            Scheme::Kivi4 => (
                KeyScheme::PerChannel { bits: Bits::Four },
                ValueScheme::PerToken { bits: Bits::Four },
                Arithmetic::Reference,
            ),
            Scheme::Pc2 => (
                KeyScheme::PerChannel { bits: Bits::Two },
                ValueScheme::PerChannel { bits: Bits::Two },
                Arithmetic::Reference,
            ),
            Scheme::H1b => (
                KeyScheme::SignSketch {
                    bits: SketchBits::for_head_dim(head_dim),
                    seed: DEFAULT_SKETCH_SEED,
                },
                ValueScheme::PerToken { bits: Bits::Four },
                Arithmetic::F32,
            ),
            Scheme::Xquant => {
                return QuantConfig {
                    calibration: Self::XQUANT_CALIBRATION,
                    ..QuantConfig::new(
                        head_dim,
                        group,
                        KeyScheme::PerChannel { bits: Bits::Two },
                        ValueScheme::PerToken { bits: Bits::One },
                        Arithmetic::F32,
                    )
                };
            }
        };
        QuantConfig {
            traced_tokens: self.traced_slots(group),
            ..QuantConfig::new(head_dim, group, keys, values, arithmetic)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_dim_accepts_even_16_to_256_only() {
        for d in [16, 18, 64, 80, 96, 112, 128, 256] {
            assert_eq!(HeadDim::new(d).unwrap().get(), d);
        }
        for d in [0, 14, 15, 65, 257, 258, 512] {
            assert_eq!(
                HeadDim::new(d),
                Err(Error::UnsupportedHeadDim { head_dim: d })
            );
        }
    }

    #[test]
    fn group_size_accepts_32_64_128_only() {
        assert_eq!(GroupSize::new(64).unwrap().tokens(), 64);
        assert!(GroupSize::new(16).is_err());
        assert!(GroupSize::new(0).is_err());
    }

    #[test]
    fn every_preset_validates_on_common_head_dims() {
        for d in [64, 80, 96, 128, 256] {
            for s in Scheme::ALL {
                s.config(HeadDim::new(d).unwrap(), GroupSize::G32)
                    .validate()
                    .unwrap();
                assert_eq!(Scheme::from_name(s.name()).unwrap(), s);
            }
        }
    }

    #[test]
    fn sketch_bits_validate_and_follow_head_dim() {
        for b in [64, 128, 256] {
            assert_eq!(SketchBits::new(b).unwrap().get(), b);
        }
        for b in [0, 32, 100, 512] {
            assert!(SketchBits::new(b).is_err());
        }
        for (d, b) in [
            (16, 64),
            (64, 64),
            (66, 128),
            (128, 128),
            (130, 256),
            (256, 256),
        ] {
            let c = Scheme::H1b.config(HeadDim::new(d).unwrap(), GroupSize::G32);
            assert_eq!(
                c.keys,
                KeyScheme::SignSketch {
                    bits: SketchBits::new(b).unwrap(),
                    seed: DEFAULT_SKETCH_SEED
                }
            );
        }
        let mut c = Scheme::H1b.config(HeadDim::new(64).unwrap(), GroupSize::G32);
        c.traced_tokens = 1;
        assert!(c.validate().is_err());
    }

    #[test]
    fn hadamard_needs_power_of_two_lanes() {
        let mut c = Scheme::Vidkv.config(HeadDim::new(80).unwrap(), GroupSize::G32);
        c.keys = KeyScheme::Mixed(MixedKeys {
            transform: Transform::Hadamard,
            ..MixedKeys::DEFAULT
        });
        assert!(matches!(c.validate(), Err(Error::InvalidConfig { .. })));
        c.head_dim = HeadDim::new(64).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn outlier_ratio_out_of_range_is_rejected() {
        let mut c = Scheme::Vidkv.config(HeadDim::new(64).unwrap(), GroupSize::G32);
        for r in [-0.1, 1.5, f32::NAN] {
            c.keys = KeyScheme::Mixed(MixedKeys {
                outlier_ratio: r,
                ..MixedKeys::DEFAULT
            });
            assert!(c.validate().is_err());
        }
    }
}
