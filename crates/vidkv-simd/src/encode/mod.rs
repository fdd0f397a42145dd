//! SIMD encoders (issue 7): mixed-precision keys and ternary values, written once over the
//! [`simd::Simd`] vector operations and compiled per instruction set (`x86.rs`: AVX2, AVX-512;
//! `neon.rs`: NEON) — one module per instruction set, as rustfft does.
//!
//! The kernels produce the scalar backend's bytes exactly: statistics are summed in the same
//! order (vectorised across channels or across tokens, never reassociated), codes are compared
//! and rounded with the same IEEE operations. A call they do not cover — another scheme,
//! reference-arithmetic keys, a non-power-of-two DFT, bad shapes or non-finite input (whose
//! typed error the scalar backend reports) — returns `None` and runs the scalar code.

use alloc::vec;
use alloc::vec::Vec;

use vidkv_core::{ChannelMask, Codec, DType, HeadTensor};

use crate::level::Level;

mod affine;
mod decode;
mod keys;
mod simd;
mod values;

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "aarch64")]
mod neon;

use affine::{AffinePlan, AffineScratch};
use keys::{KeyPlan, KeyScratch};
use simd::Simd;
use values::{ValuePlan, ValueScratch};

/// A call's input, validated: whole blocks, finite, within the f16 range.
pub(crate) enum Source<'a> {
    /// Little-endian f16 (converted block by block in the kernel).
    F16(&'a [u8]),
    /// Already converted (f32 or bf16 input, or reference rounding applied).
    F32(Vec<f32>),
}

impl<'a> Source<'a> {
    /// The input of an encode call producing `out_len` bytes of `block_bytes` blocks, or `None`
    /// when the scalar backend must run (it reports the error).
    fn new(
        codec: &Codec,
        input: &HeadTensor<'a, Vec<u8>>,
        out_len: usize,
        block_bytes: usize,
    ) -> Option<Self> {
        let (d, g) = (codec.head_dim(), codec.group());
        let shape_ok = input.tokens.is_multiple_of(g)
            && input.data.len() == input.tokens * d * input.dtype.size()
            && out_len == input.tokens / g * block_bytes;
        if !shape_ok {
            return None;
        }
        match input.dtype {
            // Checked block by block in the kernel (`Source::block`), while the bytes are hot.
            DType::F16 => Some(Source::F16(input.data)),
            _ => vidkv_cpu::to_f32(input.dtype, input.data, codec.config().arithmetic)
                .ok()
                .map(Source::F32),
        }
    }

    /// Rows of block `b` (`g` rows of `d` values) into `rows`, each row `stride` long; `None`
    /// when the block holds an infinity or NaN.
    #[inline(always)]
    unsafe fn block<S: Simd>(
        &self,
        b: usize,
        g: usize,
        d: usize,
        stride: usize,
        rows: &mut [f32],
    ) -> Option<()> {
        let n = g * d;
        match self {
            Source::F16(bytes) => {
                let src = &bytes[2 * b * n..][..2 * n];
                if !f16_all_finite(src) {
                    return None;
                }
                if stride == d {
                    // SAFETY: caller's instruction set; `n` is a multiple of N (G is).
                    unsafe { widen::<S>(src, &mut rows[..n]) };
                } else {
                    for (row_in, row_out) in
                        src.chunks_exact(2 * d).zip(rows.chunks_exact_mut(stride))
                    {
                        // SAFETY: as above, on the whole vectors of the row.
                        unsafe { widen::<S>(row_in, &mut row_out[..d]) };
                    }
                }
            }
            Source::F32(values) => {
                for (row_in, row_out) in values[b * n..][..n]
                    .chunks_exact(d)
                    .zip(rows.chunks_exact_mut(stride))
                {
                    row_out[..d].copy_from_slice(row_in);
                }
            }
        }
        Some(())
    }
}

/// Whether no f16 is an infinity or NaN (exponent bits all set): per 16-bit lane,
/// `(h & 0x7c00) + 0x0400` reaches bit 15 exactly then, without carries between lanes.
fn f16_all_finite(bytes: &[u8]) -> bool {
    const EXP: u64 = 0x7c00_7c00_7c00_7c00;
    const ONE: u64 = 0x0400_0400_0400_0400;
    const TOP: u64 = 0x8000_8000_8000_8000;
    let (words, tail) = bytes.as_chunks::<8>();
    let flagged = words
        .iter()
        .fold(0u64, |acc, w| acc | ((u64::from_le_bytes(*w) & EXP) + ONE));
    flagged & TOP == 0 && tail.chunks_exact(2).all(|h| h[1] & 0x7c != 0x7c)
}

/// f16 bytes to f32: whole vectors, then the tail one by one.
#[inline(always)]
unsafe fn widen<S: Simd>(src: &[u8], dst: &mut [f32]) {
    let whole = dst.len() / S::N * S::N;
    for i in (0..whole).step_by(S::N) {
        // SAFETY: caller's instruction set; `2·N` bytes and `N` values from `i`.
        unsafe {
            S::store(
                dst.as_mut_ptr().add(i),
                S::load_f16(src.as_ptr().add(2 * i)),
            )
        };
    }
    for i in whole..dst.len() {
        dst[i] = half::f16::from_le_bytes([src[2 * i], src[2 * i + 1]]).to_f32();
    }
}

/// Whether the SIMD kernels know `codec`'s byte layout and encoder: no traced tokens, no
/// borrowed codes, no 1-bit min/max groups, no sign-sketch keys, and (for encoding) no XQuant
/// calibration. Everything else runs the scalar code.
fn kernel_config(codec: &Codec, encoding: bool) -> bool {
    use vidkv_core::{Bits, Calibration, KeyScheme, ValueScheme};
    let cfg = codec.config();
    let one_bit = matches!(cfg.keys, KeyScheme::PerChannel { bits: Bits::One })
        || matches!(
            cfg.values,
            ValueScheme::PerToken { bits: Bits::One } | ValueScheme::PerChannel { bits: Bits::One }
        );
    let calibrated = encoding && cfg.calibration != Calibration::NONE;
    let sketch = matches!(cfg.keys, KeyScheme::SignSketch { .. });
    !(cfg.traced_tokens > 0 || codec.is_borrowing() || one_bit || sketch || calibrated)
}

/// Encodes keys at `level`; `None` runs the scalar backend (see the module documentation).
pub(crate) fn encode_keys(
    level: Level,
    codec: &Codec,
    input: &HeadTensor<'_, Vec<u8>>,
    outliers: Option<&ChannelMask>,
    out: &mut [u8],
) -> Option<()> {
    if !kernel_config(codec, true) {
        return None;
    }
    if matches!(
        codec.config().keys,
        vidkv_core::KeyScheme::PerChannel { .. }
    ) {
        return encode_affine(level, codec, true, input, None, out);
    }
    let plan = KeyPlan::new(codec, outliers)?;
    let src = Source::new(codec, input, out.len(), codec.key_block_bytes())?;
    let bytes = codec.key_block_bytes();
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a backend's level is checked against the CPU when it is chosen.
        Level::Avx512 => unsafe { x86::keys_avx512(&plan, &src, bytes, out)? },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86::keys_avx2(&plan, &src, bytes, out)? },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        Level::Neon => unsafe { neon::keys_neon(&plan, &src, bytes, out)? },
        _ => return None,
    }
    Some(())
}

/// Per-channel min/max keys or values at `level`; `None` runs the scalar backend.
fn encode_affine(
    level: Level,
    codec: &Codec,
    keys: bool,
    input: &HeadTensor<'_, Vec<u8>>,
    excluded: Option<&[u8]>,
    out: &mut [u8],
) -> Option<()> {
    let bytes = if keys {
        codec.key_block_bytes()
    } else {
        codec.value_block_bytes()
    };
    let src = Source::new(codec, input, out.len(), bytes)?;
    let plan = |lanes| {
        if keys {
            AffinePlan::keys(codec, lanes)
        } else {
            AffinePlan::values(codec, lanes).or_else(|| AffinePlan::per_token(codec, lanes))
        }
    };
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a backend's level is checked against the CPU when it is chosen.
        Level::Avx512 => unsafe {
            x86::affine_avx512(&plan(x86::Avx512::N)?, &src, excluded, bytes, out)?
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe {
            x86::affine_avx2(&plan(x86::Avx2::N)?, &src, excluded, bytes, out)?
        },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        Level::Neon => unsafe {
            neon::affine_neon(&plan(neon::Neon::N)?, &src, excluded, bytes, out)?
        },
        _ => return None,
    }
    Some(())
}

/// Encodes values at `level`, leaving out the tokens flagged in `excluded` (`G/8` bytes per
/// block); `None` runs the scalar backend.
pub(crate) fn encode_values(
    level: Level,
    codec: &Codec,
    input: &HeadTensor<'_, Vec<u8>>,
    excluded: Option<&[u8]>,
    out: &mut [u8],
) -> Option<()> {
    if !kernel_config(codec, true) {
        return None;
    }
    let blocks = input.tokens / codec.group();
    if excluded.is_some_and(|m| m.len() != blocks * codec.group() / 8) {
        return None;
    }
    if !matches!(
        codec.config().values,
        vidkv_core::ValueScheme::Ternary { .. }
    ) {
        return encode_affine(level, codec, false, input, excluded, out);
    }
    let src = Source::new(codec, input, out.len(), codec.value_block_bytes())?;
    let bytes = codec.value_block_bytes();
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => {
            let plan = ValuePlan::new(codec, x86::Avx512::N)?;
            // SAFETY: a backend's level is checked against the CPU when it is chosen.
            unsafe { x86::values_avx512(&plan, &src, excluded, bytes, out)? }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            let plan = ValuePlan::new(codec, x86::Avx2::N)?;
            // SAFETY: as above.
            unsafe { x86::values_avx2(&plan, &src, excluded, bytes, out)? }
        }
        #[cfg(target_arch = "aarch64")]
        Level::Neon => {
            let plan = ValuePlan::new(codec, neon::Neon::N)?;
            // SAFETY: as above.
            unsafe { neon::values_neon(&plan, &src, excluded, bytes, out)? }
        }
        _ => return None,
    }
    Some(())
}

/// Decodes `blocks` key or value blocks at `level` into f32 bytes; `None` runs the scalar
/// backend (other schemes, non-power-of-two DFTs, bad sizes, damaged blocks).
pub(crate) fn decode(
    level: Level,
    codec: &Codec,
    keys: bool,
    encoded: &[u8],
    blocks: usize,
    out: &mut [u8],
) -> Option<()> {
    if !kernel_config(codec, false) {
        return None;
    }
    let block_bytes = if keys {
        codec.key_block_bytes()
    } else {
        codec.value_block_bytes()
    };
    let encoded = encoded.get(..blocks * block_bytes)?;
    let n = blocks * codec.block_elements();
    if out.len() != 4 * n {
        return None;
    }
    let plan = if keys {
        Some(KeyPlan::for_decode(codec)?)
    } else {
        None
    };
    let rule = match codec.config().keys {
        vidkv_core::KeyScheme::Mixed(m) => m.lane_rule,
        vidkv_core::KeyScheme::PerChannel { .. } | vidkv_core::KeyScheme::SignSketch { .. } => {
            vidkv_core::LaneRule::Symmetric
        }
    };
    let mut rows = vec![0.0f32; n];
    let plan = plan.as_ref();
    match level {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a backend's level is checked against the CPU when it is chosen.
        Level::Avx512 => unsafe { x86::decode_avx512(plan, codec, rule, encoded, &mut rows)? },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Level::Avx2 => unsafe { x86::decode_avx2(plan, codec, rule, encoded, &mut rows)? },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: as above.
        Level::Neon => unsafe { neon::decode_neon(plan, codec, rule, encoded, &mut rows)? },
        _ => return None,
    }
    for (chunk, v) in out.chunks_exact_mut(4).zip(&rows) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    Some(())
}

/// A decoder over all blocks: keys with a plan, values without.
#[inline(always)]
unsafe fn run_decode<S: Simd>(
    plan: Option<&KeyPlan>,
    codec: &Codec,
    rule: vidkv_core::LaneRule,
    encoded: &[u8],
    rows: &mut [f32],
) -> Option<()> {
    // SAFETY: caller's instruction set, forwarded.
    unsafe {
        match plan {
            Some(plan) => decode::keys::<S>(plan, codec, rule, encoded, rows),
            None => decode::values::<S>(codec, encoded, rows),
        }
    }
}

/// The key encoder over all blocks of a call.
#[inline(always)]
unsafe fn run_keys<S: Simd>(
    plan: &KeyPlan,
    src: &Source<'_>,
    block_bytes: usize,
    out: &mut [u8],
) -> Option<()> {
    let (g, d) = (plan.g(), plan.d());
    let mut rows = vec![0.0f32; g * d];
    // SAFETY: caller's instruction set, forwarded.
    unsafe {
        let mut scratch = KeyScratch::<S>::new(plan);
        for (b, block) in out.chunks_exact_mut(block_bytes).enumerate() {
            src.block::<S>(b, g, d, d, &mut rows)?;
            keys::encode_block::<S>(plan, &rows, &mut scratch, block);
        }
    }
    Some(())
}

/// The value encoder over all blocks of a call.
#[inline(always)]
unsafe fn run_values<S: Simd>(
    plan: &ValuePlan,
    src: &Source<'_>,
    excluded: Option<&[u8]>,
    block_bytes: usize,
    out: &mut [u8],
) -> Option<()> {
    let (g, d) = (plan.g(), plan.d());
    let mut rows = vec![0.0f32; g * plan.stride];
    let mut scratch = ValueScratch::new(plan);
    for (b, block) in out.chunks_exact_mut(block_bytes).enumerate() {
        let mask = excluded.map(|m| &m[b * g / 8..][..g / 8]);
        // SAFETY: caller's instruction set, forwarded.
        unsafe {
            src.block::<S>(b, g, d, plan.stride, &mut rows)?;
            values::encode_block::<S>(plan, &rows, mask, &mut scratch, block);
        }
    }
    Some(())
}

/// The per-channel min/max encoder over all blocks of a call.
#[inline(always)]
unsafe fn run_affine<S: Simd>(
    plan: &AffinePlan,
    src: &Source<'_>,
    excluded: Option<&[u8]>,
    block_bytes: usize,
    out: &mut [u8],
) -> Option<()> {
    let (g, d) = (plan.g(), plan.d());
    let mut rows = vec![0.0f32; g * plan.stride];
    let mut scratch = AffineScratch::new(plan);
    for (b, block) in out.chunks_exact_mut(block_bytes).enumerate() {
        let mask = excluded.map(|m| &m[b * g / 8..][..g / 8]);
        // SAFETY: caller's instruction set, forwarded.
        unsafe {
            src.block::<S>(b, g, d, plan.stride, &mut rows)?;
            affine::encode_block::<S>(plan, &rows, mask, &mut scratch, block);
        }
    }
    Some(())
}

/// Declares a level's `#[target_feature]` entry points of the encoders.
macro_rules! entry_points {
    ($isa:ty, $features:literal, $keys:ident, $values:ident, $decode:ident, $affine:ident) => {
        /// Per-channel min/max encoder entry point.
        ///
        /// # Safety
        /// The CPU must have the level's instruction set.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $affine(
            plan: &super::AffinePlan,
            src: &super::Source<'_>,
            excluded: Option<&[u8]>,
            block_bytes: usize,
            out: &mut [u8],
        ) -> Option<()> {
            // SAFETY: the features are enabled here.
            unsafe { super::run_affine::<$isa>(plan, src, excluded, block_bytes, out) }
        }

        /// Decoder entry point.
        ///
        /// # Safety
        /// The CPU must have the level's instruction set.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $decode(
            plan: Option<&super::KeyPlan>,
            codec: &vidkv_core::Codec,
            rule: vidkv_core::LaneRule,
            encoded: &[u8],
            rows: &mut [f32],
        ) -> Option<()> {
            // SAFETY: the features are enabled here.
            unsafe { super::run_decode::<$isa>(plan, codec, rule, encoded, rows) }
        }

        /// Key encoder entry point.
        ///
        /// # Safety
        /// The CPU must have the level's instruction set.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $keys(
            plan: &super::KeyPlan,
            src: &super::Source<'_>,
            block_bytes: usize,
            out: &mut [u8],
        ) -> Option<()> {
            // SAFETY: the features are enabled here.
            unsafe { super::run_keys::<$isa>(plan, src, block_bytes, out) }
        }

        /// Value encoder entry point.
        ///
        /// # Safety
        /// The CPU must have the level's instruction set.
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $values(
            plan: &super::ValuePlan,
            src: &super::Source<'_>,
            excluded: Option<&[u8]>,
            block_bytes: usize,
            out: &mut [u8],
        ) -> Option<()> {
            // SAFETY: the features are enabled here.
            unsafe { super::run_values::<$isa>(plan, src, excluded, block_bytes, out) }
        }
    };
}
pub(crate) use entry_points;

#[cfg(test)]
mod tests;
