//! Byte layouts of key and value blocks (format version 1; `docs/FORMAT.md` is the prose form).
//!
//! A block holds one head's G consecutive tokens. Its size depends only on the [`QuantConfig`],
//! so blocks of a layer are fixed-size and can be addressed by index on any device. Every block is
//! a concatenation of [`Section`]s; all multi-byte fields are little-endian; codes are packed
//! LSB-first by [`crate::pack`].
//!
//! Codes are laid out for the fused attention that reads them:
//! * key codes are **channel-major** (one channel's G codes are contiguous), because a key score
//!   sums over channels for many tokens at once;
//! * value codes are **token-major** (one token's D codes are contiguous), because the value pass
//!   adds a weighted token row to a D-wide accumulator.

use bytemuck::{Pod, Zeroable};
use half::f16;
use static_assertions::{const_assert, const_assert_eq};

use crate::config::{Arithmetic, Bits, KeyScheme, QuantConfig, ValueScheme};
use crate::error::{Error, Result};
use crate::traced::TracedLayout;

/// Offset and f16 step of a min/max group: decode `lo + code·step`.
#[derive(Debug, Clone, Copy, PartialEq, Pod, Zeroable)]
#[repr(C)]
pub struct AffineParams {
    /// Offset: the group minimum, rounded to f16.
    pub lo: f16,
    /// Step between levels, `(max − min)/(2^bits − 1)`, rounded to f16.
    pub step: f16,
}

const_assert_eq!(core::mem::size_of::<AffineParams>(), 4);
const_assert_eq!(core::mem::align_of::<AffineParams>(), 2);
const_assert_eq!(core::mem::offset_of!(AffineParams, step), 2);

impl AffineParams {
    /// XQuant's endpoint calibration of a min/max group fitted with `bits`-bit codes: the codes
    /// stay those of `self`, the stored parameters move inward,
    /// `lo' = lo + η·step·(2^b − 1)`, `step' = (1 − 2η)·step` (rounded to f16; under reference
    /// arithmetic every product and sum is rounded to f16, as the PyTorch reference computes it).
    /// η = 0 returns `self` unchanged.
    pub fn calibrated(self, bits: Bits, eta: f32, arith: Arithmetic) -> Self {
        if eta == 0.0 {
            return self;
        }
        let r = |x: f32| match arith {
            Arithmetic::F32 => x,
            Arithmetic::Reference => f16::from_f32(x).to_f32(),
        };
        let (lo, step) = (self.lo.to_f32(), self.step.to_f32());
        let levels = f32::from(bits.max_code());
        // Saturate like every stored parameter: a range near the f16 limit would otherwise
        // round `L·step` (reference arithmetic) or `lo + shift` to infinity.
        const MAX: f32 = 65504.0;
        let shift = r(r(levels * step).min(MAX) * eta);
        Self {
            lo: f16::from_f32((lo + shift).clamp(-MAX, MAX)),
            step: f16::from_f32(step * (1.0 - 2.0 * eta)),
        }
    }
}

/// The outlier channels of a mixed-precision key block, one bit per channel (bit c of word c/32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Pod, Zeroable)]
#[repr(C)]
pub struct ChannelMask {
    /// Bit `c % 32` of word `c / 32` is set when channel c is an outlier.
    pub words: [u32; 8],
}

const_assert_eq!(core::mem::size_of::<ChannelMask>(), 32);
const_assert!(core::mem::size_of::<ChannelMask>() * 8 >= crate::config::HeadDim::MAX);

impl ChannelMask {
    /// A mask with exactly the given channels set (channels ≥ 256 are ignored).
    pub fn from_channels(channels: impl IntoIterator<Item = usize>) -> Self {
        let mut m = Self::default();
        for c in channels {
            if c < 256 {
                m.words[c / 32] |= 1 << (c % 32);
            }
        }
        m
    }

    /// Whether channel `c` is an outlier.
    pub fn contains(&self, c: usize) -> bool {
        c < 256 && self.words[c / 32] >> (c % 32) & 1 == 1
    }

    /// Number of set channels.
    pub fn count(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    /// Set channels below `head_dim`, ascending.
    pub fn outliers(&self, head_dim: usize) -> impl Iterator<Item = usize> + '_ {
        (0..head_dim).filter(|&c| self.contains(c))
    }

    /// Unset channels below `head_dim`, ascending: the normal channels.
    pub fn normals(&self, head_dim: usize) -> impl Iterator<Item = usize> + '_ {
        (0..head_dim).filter(|&c| !self.contains(c))
    }

    /// Bytes of the mask as stored in a block of this head_dim (whole u32 words, LE).
    pub fn stored_bytes(head_dim: usize) -> usize {
        head_dim.div_ceil(32) * 4
    }

    /// Writes the stored form into `out` (length [`Self::stored_bytes`]).
    pub fn write(&self, out: &mut [u8]) {
        for (chunk, w) in out.chunks_exact_mut(4).zip(self.words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
    }

    /// Reads the stored form; rejects bits set at or above `head_dim` and a wrong popcount.
    pub fn read(bytes: &[u8], head_dim: usize, expected_count: usize) -> Result<Self> {
        let mut m = Self::default();
        for (i, chunk) in bytes.chunks_exact(4).enumerate().take(8) {
            m.words[i] = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        let stray = (head_dim..bytes.len() * 8).any(|c| m.contains(c));
        if stray || m.count() != expected_count {
            return Err(Error::Corrupt {
                what: "outlier channel mask",
                offset: 0,
            });
        }
        Ok(m)
    }
}

/// A byte range inside a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Section {
    /// First byte, from the start of the block.
    pub offset: usize,
    /// Length in bytes.
    pub len: usize,
}

impl Section {
    /// The range, for slicing a block.
    pub fn range(self) -> core::ops::Range<usize> {
        self.offset..self.offset + self.len
    }

    fn after(prev: Section, len: usize) -> Section {
        Section {
            offset: prev.offset + prev.len,
            len,
        }
    }
}

/// Layout of a key block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyLayout {
    /// VidKV mixed precision. Sections in order: `mask` (u32 words), `outlier_params`
    /// ([`AffineParams`] per outlier channel, ascending), `lane_scales` (f16 per lane),
    /// `outlier_codes` (2-bit, channel-major, G/4 bytes per channel), `lane_bits`
    /// (1-bit, lane-major, G/8 bytes per lane).
    Mixed {
        /// Outlier channels k.
        outliers: usize,
        /// Transformed 1-bit lanes M = D − k.
        lanes: usize,
        /// Mask section.
        mask: Section,
        /// Outlier affine parameters.
        outlier_params: Section,
        /// Lane scales.
        lane_scales: Section,
        /// Outlier codes.
        outlier_codes: Section,
        /// Lane sign bits.
        lane_bits: Section,
    },
    /// Min/max per (channel, block). Sections: `params` ([`AffineParams`] per channel), `codes`
    /// (channel-major, G·bits/8 bytes per channel).
    PerChannel {
        /// Code width.
        bits: Bits,
        /// Parameters.
        params: Section,
        /// Codes.
        codes: Section,
    },
    /// H1B-KV sign sketch. Sections: `norms` (f16 `‖k_t‖` per token), `signs` (token-major,
    /// `b/8` bytes per token; bit i of token t, LSB first, is `r_i·k_t ≥ 0`).
    SignSketch {
        /// Sketch length b in bits.
        bits: usize,
        /// Norms.
        norms: Section,
        /// Sign rows.
        signs: Section,
    },
}

/// Layout of a value block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueLayout {
    /// Ternary. Sections: `scales` (f16 per channel), `trits` (token-major rows of ⌈D/5⌉ bytes,
    /// 5 trits per byte).
    Ternary {
        /// Scales.
        scales: Section,
        /// Trit rows.
        trits: Section,
    },
    /// Min/max per token over channel groups of `channel_group` channels. Sections: `params`
    /// ([`AffineParams`] per token and channel group, token-major), `codes` (token-major, flat
    /// over the block).
    PerToken {
        /// Code width.
        bits: Bits,
        /// Channels per group (the last group may be shorter).
        channel_group: usize,
        /// Parameters.
        params: Section,
        /// Codes.
        codes: Section,
    },
    /// Min/max per (channel, block). Sections: `params` ([`AffineParams`] per channel), `codes`
    /// (token-major, flat over the block).
    PerChannel {
        /// Code width.
        bits: Bits,
        /// Parameters.
        params: Section,
        /// Codes.
        codes: Section,
    },
}

/// Bytes of one token's ternary row: 5 trits per byte.
pub fn trit_row_bytes(head_dim: usize) -> usize {
    head_dim.div_ceil(5)
}

const PARAMS: usize = core::mem::size_of::<AffineParams>();

impl KeyLayout {
    fn new(config: &QuantConfig) -> Self {
        let d = config.head_dim.get();
        let g = config.group.tokens();
        match config.keys {
            KeyScheme::Mixed(m) => {
                let k = m.outlier_count(config.head_dim);
                let lanes = d - k;
                let mask = Section {
                    offset: 0,
                    len: ChannelMask::stored_bytes(d),
                };
                let outlier_params = Section::after(mask, k * PARAMS);
                let lane_scales = Section::after(outlier_params, lanes * 2);
                let outlier_codes = Section::after(lane_scales, k * g / 4);
                let lane_bits = Section::after(outlier_codes, lanes * g / 8);
                KeyLayout::Mixed {
                    outliers: k,
                    lanes,
                    mask,
                    outlier_params,
                    lane_scales,
                    outlier_codes,
                    lane_bits,
                }
            }
            KeyScheme::PerChannel { bits } => {
                let params = Section {
                    offset: 0,
                    len: d * PARAMS,
                };
                let codes = Section::after(params, d * g * bits.get() as usize / 8);
                KeyLayout::PerChannel {
                    bits,
                    params,
                    codes,
                }
            }
            KeyScheme::SignSketch { bits, .. } => {
                let norms = Section {
                    offset: 0,
                    len: g * 2,
                };
                let signs = Section::after(norms, g * bits.get() / 8);
                KeyLayout::SignSketch {
                    bits: bits.get(),
                    norms,
                    signs,
                }
            }
        }
    }

    /// Bytes of one block.
    pub fn block_bytes(&self) -> usize {
        let last = match self {
            KeyLayout::Mixed { lane_bits, .. } => lane_bits,
            KeyLayout::PerChannel { codes, .. } => codes,
            KeyLayout::SignSketch { signs, .. } => signs,
        };
        last.offset + last.len
    }
}

impl ValueLayout {
    fn new(config: &QuantConfig) -> Self {
        let d = config.head_dim.get();
        let g = config.group.tokens();
        let flat_codes = |bits: Bits| d * g * bits.get() as usize / 8;
        match config.values {
            ValueScheme::Ternary { .. } => {
                let scales = Section {
                    offset: 0,
                    len: d * 2,
                };
                let trits = Section::after(scales, g * trit_row_bytes(d));
                ValueLayout::Ternary { scales, trits }
            }
            ValueScheme::PerToken { bits } => {
                let channel_group = d.min(g);
                let params = Section {
                    offset: 0,
                    len: g * d.div_ceil(channel_group) * PARAMS,
                };
                let codes = Section::after(params, flat_codes(bits));
                ValueLayout::PerToken {
                    bits,
                    channel_group,
                    params,
                    codes,
                }
            }
            ValueScheme::PerChannel { bits } => {
                let params = Section {
                    offset: 0,
                    len: d * PARAMS,
                };
                let codes = Section::after(params, flat_codes(bits));
                ValueLayout::PerChannel {
                    bits,
                    params,
                    codes,
                }
            }
        }
    }

    /// Bytes of one block.
    pub fn block_bytes(&self) -> usize {
        let last = match self {
            ValueLayout::Ternary { trits, .. } => trits,
            ValueLayout::PerToken { codes, .. } | ValueLayout::PerChannel { codes, .. } => codes,
        };
        last.offset + last.len
    }
}

/// Writes the full block of a layer that borrows its codes: its own parameter section `own`
/// (`params.len` bytes), then the code bytes of the lender's full block `lent` (from
/// `params.len` on), into `out` (full block size). See [`Codec::borrowing`].
pub fn splice_borrowed(params: Section, own: &[u8], lent: &[u8], out: &mut [u8]) {
    out[..params.len].copy_from_slice(own);
    out[params.len..].copy_from_slice(&lent[params.len..]);
}

/// A validated configuration together with its derived block layouts: what every encode and
/// decode call takes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Codec {
    config: QuantConfig,
    keys: KeyLayout,
    traced: Option<TracedLayout>,
    values: ValueLayout,
    borrows_codes: bool,
}

impl Codec {
    /// Validates `config` and derives its layouts.
    pub fn new(config: QuantConfig) -> Result<Self> {
        config.validate()?;
        let keys = KeyLayout::new(&config);
        let slots = usize::from(config.traced_tokens);
        let traced = (slots > 0)
            .then(|| TracedLayout::after(keys.block_bytes(), slots, config.head_dim.get()));
        Ok(Self {
            config,
            keys,
            traced,
            values: ValueLayout::new(&config),
            borrows_codes: false,
        })
    }

    /// The codec of a layer that **borrows** its integer codes from another layer with the same
    /// configuration (XQuant's cross-layer sharing): its key and value blocks keep only their
    /// parameter sections (`params`, computed from the layer's own data), and decoding or
    /// attention takes the codes from the lender's blocks of the same index. Only min/max keys
    /// and values can borrow (`Error::InvalidConfig` otherwise).
    ///
    /// The layouts ([`Self::key_layout`], [`Self::value_layout`]) stay those of the lender (the
    /// `params` sections sit at the same offsets); [`Self::key_block_bytes`] and
    /// [`Self::value_block_bytes`] shrink to the parameter sections.
    pub fn borrowing(&self) -> Result<Self> {
        let affine_keys = matches!(self.keys, KeyLayout::PerChannel { .. });
        let affine_values = matches!(
            self.values,
            ValueLayout::PerToken { .. } | ValueLayout::PerChannel { .. }
        );
        if !(affine_keys && affine_values) {
            return Err(Error::InvalidConfig {
                reason: "only min/max (per-channel keys, per-token or per-channel values) layers can borrow codes",
            });
        }
        if self.traced.is_some() {
            return Err(Error::InvalidConfig {
                reason: "layers with traced tokens cannot borrow codes",
            });
        }
        Ok(Self {
            borrows_codes: true,
            ..*self
        })
    }

    /// Whether this codec's blocks borrow their codes ([`Self::borrowing`]).
    pub fn is_borrowing(&self) -> bool {
        self.borrows_codes
    }

    /// The codec of the lender's full blocks: `self` with its own codes.
    pub fn owning(&self) -> Self {
        Self {
            borrows_codes: false,
            ..*self
        }
    }

    /// Checks that `lender` can lend its codes to `self` (a borrowing codec): same
    /// configuration, and the lender owns its codes.
    pub fn check_lender(&self, lender: &Codec) -> Result<()> {
        if !self.borrows_codes {
            return Err(Error::InvalidConfig {
                reason: "lender blocks given to a layer that owns its codes",
            });
        }
        if lender.borrows_codes || lender.config != self.config {
            return Err(Error::InvalidConfig {
                reason: "the lender layer must own its codes and have the borrower's configuration",
            });
        }
        Ok(())
    }

    /// The parameter section of a key block: what a borrowing block keeps.
    pub fn key_params(&self) -> Section {
        match self.keys {
            KeyLayout::PerChannel { params, .. } => params,
            KeyLayout::Mixed { .. } | KeyLayout::SignSketch { .. } => Section {
                offset: 0,
                len: self.keys.block_bytes(),
            },
        }
    }

    /// The parameter section of a value block: what a borrowing block keeps.
    pub fn value_params(&self) -> Section {
        match self.values {
            ValueLayout::PerToken { params, .. } | ValueLayout::PerChannel { params, .. } => params,
            ValueLayout::Ternary { .. } => Section {
                offset: 0,
                len: self.values.block_bytes(),
            },
        }
    }

    /// The configuration.
    pub fn config(&self) -> &QuantConfig {
        &self.config
    }

    /// Head dimension D.
    pub fn head_dim(&self) -> usize {
        self.config.head_dim.get()
    }

    /// Tokens per block G.
    pub fn group(&self) -> usize {
        self.config.group.tokens()
    }

    /// Elements of one head-block, G·D.
    pub fn block_elements(&self) -> usize {
        self.head_dim() * self.group()
    }

    /// Key block layout.
    pub fn key_layout(&self) -> &KeyLayout {
        &self.keys
    }

    /// The traced-token part at the end of each key block (OTT), when
    /// [`QuantConfig::traced_tokens`] is non-zero.
    pub fn traced_layout(&self) -> Option<&TracedLayout> {
        self.traced.as_ref()
    }

    /// Value block layout.
    pub fn value_layout(&self) -> &ValueLayout {
        &self.values
    }

    /// Bytes of one key block: the key scheme's sections plus the traced part, if any; only the
    /// parameter section for a borrowing codec.
    pub fn key_block_bytes(&self) -> usize {
        if self.borrows_codes {
            self.key_params().len
        } else {
            self.keys.block_bytes() + self.traced.map_or(0, |t| t.bytes())
        }
    }

    /// Bytes of one value block (its parameter section only for a borrowing codec).
    pub fn value_block_bytes(&self) -> usize {
        if self.borrows_codes {
            self.value_params().len
        } else {
            self.values.block_bytes()
        }
    }

    /// Bits per key element stored for codes alone (0 for a borrowing codec); mixed keys count
    /// their 2-bit outlier codes and 1-bit lanes.
    pub fn key_code_bits(&self) -> f64 {
        let bytes = match self.keys {
            _ if self.borrows_codes => 0,
            KeyLayout::PerChannel { codes, .. } => codes.len,
            KeyLayout::Mixed {
                outlier_codes,
                lane_bits,
                ..
            } => outlier_codes.len + lane_bits.len,
            KeyLayout::SignSketch { signs, .. } => signs.len,
        };
        (bytes * 8) as f64 / self.block_elements() as f64
    }

    /// Bits per value element stored for codes alone (0 for a borrowing codec; ternary: trits).
    pub fn value_code_bits(&self) -> f64 {
        let bytes = match self.values {
            _ if self.borrows_codes => 0,
            ValueLayout::PerToken { codes, .. } | ValueLayout::PerChannel { codes, .. } => {
                codes.len
            }
            ValueLayout::Ternary { trits, .. } => trits.len,
        };
        (bytes * 8) as f64 / self.block_elements() as f64
    }

    /// All-in bits per key element (codes, scales, offsets, mask and traced rows).
    pub fn key_bits_per_element(&self) -> f64 {
        (self.key_block_bytes() * 8) as f64 / self.block_elements() as f64
    }

    /// All-in bits per value element.
    pub fn value_bits_per_element(&self) -> f64 {
        (self.value_block_bytes() * 8) as f64 / self.block_elements() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GroupSize, HeadDim, Scheme};

    fn codec(s: Scheme, d: usize, g: usize) -> Codec {
        Codec::new(s.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap())).unwrap()
    }

    #[test]
    fn vidkv_block_sizes_at_d64_g32() {
        let c = codec(Scheme::Vidkv, 64, 32);
        // mask 8 + params 32·4 + lane scales 32·2 + codes 32·8 + lane bits 32·4
        assert_eq!(c.key_block_bytes(), 8 + 128 + 64 + 256 + 128);
        // scales 64·2 + 32 rows of 13 bytes
        assert_eq!(c.value_block_bytes(), 128 + 32 * 13);
        assert!(c.key_bits_per_element() <= 2.35);
        assert!(c.value_bits_per_element() <= 2.15);
    }

    #[test]
    fn sections_tile_the_block_without_gaps() {
        for s in Scheme::ALL {
            for d in [16, 18, 64, 80, 96, 112, 128, 256] {
                for g in [32, 64, 128] {
                    let c = codec(s, d, g);
                    match *c.key_layout() {
                        KeyLayout::Mixed {
                            outliers,
                            lanes,
                            mask,
                            outlier_params,
                            lane_scales,
                            outlier_codes,
                            lane_bits,
                        } => {
                            assert_eq!(outliers + lanes, d);
                            let secs =
                                [mask, outlier_params, lane_scales, outlier_codes, lane_bits];
                            for w in secs.windows(2) {
                                assert_eq!(w[0].offset + w[0].len, w[1].offset);
                            }
                            assert_eq!(mask.offset, 0);
                        }
                        KeyLayout::PerChannel { params, codes, .. } => {
                            assert_eq!(params.offset + params.len, codes.offset);
                        }
                        KeyLayout::SignSketch { norms, signs, .. } => {
                            assert_eq!(norms.offset, 0);
                            assert_eq!(norms.offset + norms.len, signs.offset);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn h1b_block_sizes() {
        // D = 64, b = 64: 32 norms · 2 + 32 tokens · 8 bytes of signs.
        let c = codec(Scheme::H1b, 64, 32);
        assert_eq!(c.key_block_bytes(), 64 + 256);
        assert_eq!(c.key_bits_per_element(), 1.25);
        // D = 128, b = 128, G = 64: 64·2 + 64·16.
        let c = codec(Scheme::H1b, 128, 64);
        assert_eq!(c.key_block_bytes(), 128 + 1024);
        let KeyLayout::SignSketch { bits, norms, signs } = *c.key_layout() else {
            panic!("h1b keys are sign sketches")
        };
        assert_eq!(
            (bits, norms.len, signs.offset, signs.len),
            (128, 128, 128, 1024)
        );
        // Values are KIVI-4's.
        assert_eq!(
            c.value_block_bytes(),
            codec(Scheme::Kivi4, 128, 64).value_block_bytes()
        );
        // D = 80 rounds up to b = 128.
        assert_eq!(codec(Scheme::H1b, 80, 32).key_block_bytes(), 64 + 32 * 16);
    }

    #[test]
    fn kivi_per_token_groups_whole_head_when_d_le_g() {
        let c = codec(Scheme::Kivi2, 64, 128);
        let ValueLayout::PerToken {
            channel_group,
            params,
            ..
        } = *c.value_layout()
        else {
            panic!("kivi values are per token")
        };
        assert_eq!(channel_group, 64);
        assert_eq!(params.len, 128 * 4);
        let c = codec(Scheme::Kivi2, 80, 32);
        let ValueLayout::PerToken {
            channel_group,
            params,
            ..
        } = *c.value_layout()
        else {
            panic!("kivi values are per token")
        };
        assert_eq!(channel_group, 32);
        assert_eq!(params.len, 32 * 3 * 4);
    }

    #[test]
    fn mask_roundtrip_and_rejects_stray_bits() {
        let m = ChannelMask::from_channels([0, 5, 63]);
        let mut buf = [0u8; 8];
        m.write(&mut buf);
        assert_eq!(ChannelMask::read(&buf, 64, 3).unwrap(), m);
        assert!(ChannelMask::read(&buf, 64, 2).is_err());
        assert!(ChannelMask::read(&buf, 60, 3).is_err());
        assert_eq!(m.normals(64).count(), 61);
    }
}
