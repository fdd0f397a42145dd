//! Key blocks: VidKV mixed precision (DESIGN §1.1) and per-channel min/max codes (§1.5).

use alloc::vec;
use alloc::vec::Vec;

use half::f16;
use vidkv_core::pack::{f16_at, pack_codes, unpack_codes, write_f16s};
use vidkv_core::traced::pick_traced;
use vidkv_core::{
    AffineParams, Bits, ChannelMask, Codec, Error, KeyLayout, KeyScheme, LaneRule, MixedKeys,
    OutlierScope, Result,
};

use crate::affine;
use crate::arith::{F16_MAX, mean_abs};
use crate::blocks::{BlockIo, read_params, write_params};
use crate::borrow::{self, Half};
use crate::outliers::ChannelRanges;
use crate::sketch;
use crate::transform::{LaneTransform, is_imaginary_lane};
use vidkv_core::sketch::{Projection, shared_projection};

/// Encodes row-major `[blocks·G, D]` keys into `out` (`blocks · key_block_bytes`).
///
/// `outliers` fixes the outlier channels (layer scope or calibrated); `None` selects them per
/// block, which block scope requires.
pub fn encode_key_blocks(
    codec: &Codec,
    input: &[f32],
    outliers: Option<&ChannelMask>,
    out: &mut [u8],
) -> Result<()> {
    if codec.is_borrowing() {
        return borrow::encode_params_only(codec, Half::Keys, out, |full, blocks| {
            encode_key_blocks(full, input, outliers, blocks)
        });
    }
    let io = BlockIo::for_encode(codec, input, out.len(), codec.key_block_bytes())?;
    match codec.config().keys {
        KeyScheme::Mixed(mixed) => {
            let fixed = fixed_outliers(codec, mixed, outliers)?;
            let transform = lane_transform(codec, mixed);
            for (rows, block) in io.blocks(input, out) {
                let kept = trace_tokens(codec, rows, block);
                encode_mixed(codec, &transform, fixed.as_ref(), rows, &kept, block);
            }
        }
        KeyScheme::PerChannel { bits } => {
            for (rows, block) in io.blocks(input, out) {
                let kept = trace_tokens(codec, rows, block);
                encode_per_channel(codec, bits, rows, &kept, block);
            }
        }
        KeyScheme::SignSketch { .. } => {
            let projection = sketch_projection(codec);
            for (rows, block) in io.blocks(input, out) {
                sketch::encode_block(codec, &projection, rows, block);
            }
        }
    }
    Ok(())
}

/// Chooses the block's traced tokens (OTT), writes their f16 rows and indices, and returns which
/// tokens the block's statistics keep (all of them without tracing).
fn trace_tokens(codec: &Codec, rows: &[f32], block: &mut [u8]) -> Vec<bool> {
    let mut kept = vec![true; codec.group()];
    if let Some(layout) = codec.traced_layout() {
        let traced = pick_traced(rows, codec.head_dim(), layout.slots);
        layout.write(&traced, rows, codec.head_dim(), block);
        traced.iter().for_each(|&t| kept[t] = false);
    }
    kept
}

/// Overwrites the traced tokens of a decoded block with their f16 rows (OTT).
fn restore_traced(codec: &Codec, block: &[u8], rows: &mut [f32]) -> Result<()> {
    let Some(layout) = codec.traced_layout() else {
        return Ok(());
    };
    let d = codec.head_dim();
    for (slot, t) in layout.tokens(block, codec.group())? {
        layout.row(block, slot, d, &mut rows[t * d..][..d])?;
    }
    Ok(())
}

/// Column `c` of the kept tokens of a block.
fn kept_column<'a>(
    rows: &'a [f32],
    kept: &'a [bool],
    d: usize,
    c: usize,
) -> impl Iterator<Item = f32> + 'a {
    rows.chunks_exact(d)
        .zip(kept)
        .filter(|(_, k)| **k)
        .map(move |(row, _)| row[c])
}

/// Decodes key blocks into row-major f32 `[blocks·G, D]`.
pub fn decode_key_blocks(codec: &Codec, encoded: &[u8], out: &mut [f32]) -> Result<()> {
    if codec.is_borrowing() {
        return Err(borrow::needs_lender());
    }
    let io = BlockIo::for_decode(codec, encoded.len(), codec.key_block_bytes(), out.len())?;
    match codec.config().keys {
        KeyScheme::Mixed(mixed) => {
            let transform = lane_transform(codec, mixed);
            for (i, (block, rows)) in io.blocks_mut(encoded, out).enumerate() {
                decode_mixed(codec, mixed, &transform, block, rows)
                    .and_then(|()| restore_traced(codec, block, rows))
                    .map_err(|e| io.locate(e, i))?;
            }
        }
        KeyScheme::PerChannel { .. } => {
            for (i, (block, rows)) in io.blocks_mut(encoded, out).enumerate() {
                decode_per_channel(codec, block, rows)
                    .and_then(|()| restore_traced(codec, block, rows))
                    .map_err(|e| io.locate(e, i))?;
            }
        }
        KeyScheme::SignSketch { .. } => {
            let projection = sketch_projection(codec);
            for (i, (block, rows)) in io.blocks_mut(encoded, out).enumerate() {
                sketch::decode_block(codec, &projection, block, rows)
                    .map_err(|e| io.locate(e, i))?;
            }
        }
    }
    Ok(())
}

fn sketch_projection(codec: &Codec) -> alloc::sync::Arc<Projection> {
    shared_projection(codec).expect("sign-sketch keys have a projection")
}

/// The lane transform of a mixed-key codec.
pub fn lane_transform(codec: &Codec, mixed: MixedKeys) -> LaneTransform {
    let lanes = codec.head_dim() - mixed.outlier_count(codec.config().head_dim);
    LaneTransform::new(mixed.transform, lanes)
}

fn fixed_outliers(
    codec: &Codec,
    mixed: MixedKeys,
    given: Option<&ChannelMask>,
) -> Result<Option<ChannelMask>> {
    let d = codec.head_dim();
    match given {
        Some(mask) => {
            let k = mixed.outlier_count(codec.config().head_dim);
            if mask.count() != k || mask.outliers(d).count() != k {
                return Err(Error::InvalidConfig {
                    reason: "the outlier mask must select exactly round(r·D) channels below head_dim",
                });
            }
            Ok(Some(*mask))
        }
        None if mixed.scope == OutlierScope::Layer => Err(Error::InvalidConfig {
            reason: "layer-scope keys need the pooled outlier channels (see layer_outliers)",
        }),
        None => Ok(None),
    }
}

fn encode_mixed(
    codec: &Codec,
    transform: &LaneTransform,
    fixed: Option<&ChannelMask>,
    rows: &[f32],
    kept: &[bool],
    block: &mut [u8],
) {
    let KeyLayout::Mixed {
        outliers,
        lanes,
        mask,
        outlier_params,
        lane_scales,
        outlier_codes,
        lane_bits,
    } = *codec.key_layout()
    else {
        unreachable!("mixed key scheme has a mixed layout")
    };
    let (d, g, arith) = (codec.head_dim(), codec.group(), codec.config().arithmetic);
    let chosen = fixed.copied().unwrap_or_else(|| {
        let mut ranges = ChannelRanges::new(d);
        rows.chunks_exact(d)
            .zip(kept)
            .filter(|(_, k)| **k)
            .for_each(|(row, _)| ranges.add_rows(row));
        ranges.top(arith, outliers)
    });
    chosen.write(&mut block[mask.range()]);

    let mut codes = vec![0u8; g];
    for (i, c) in chosen.outliers(d).enumerate() {
        let column = || rows.iter().skip(c).step_by(d).copied();
        let p = affine::fit(arith, Bits::Two, kept_column(rows, kept, d, c));
        let stored = p.calibrated(Bits::Two, codec.config().calibration.keys, arith);
        write_params(&mut block[outlier_params.range()], i, stored);
        codes
            .iter_mut()
            .zip(column())
            .for_each(|(code, x)| *code = affine::encode(arith, Bits::Two, p, x));
        pack_codes(
            2,
            &codes,
            &mut block[outlier_codes.offset + i * g / 4..][..g / 4],
        );
    }

    let z = transformed_lanes(transform, &chosen, d, rows);
    let mut bits = vec![0u8; g];
    for j in 0..lanes {
        let lane = || z.iter().skip(j).step_by(lanes).copied();
        // Saturate like every other stored scale: the unnormalised DFT of large inputs can
        // exceed the f16 range, and an infinite scale is what decoders reject as corrupt.
        let kept_lane = lane().zip(kept).filter(|(_, k)| **k).map(|(v, _)| v);
        let scale = mean_abs(arith, kept_lane).min(F16_MAX);
        write_f16s(
            [f16::from_f32(scale)],
            &mut block[lane_scales.offset + 2 * j..][..2],
        );
        bits.iter_mut()
            .zip(lane())
            .for_each(|(b, v)| *b = u8::from(v >= 0.0));
        pack_codes(
            1,
            &bits,
            &mut block[lane_bits.offset + j * g / 8..][..g / 8],
        );
    }
}

/// Gathers the normal channels of every token and transforms them: `[G, M]` row-major.
fn transformed_lanes(
    transform: &LaneTransform,
    mask: &ChannelMask,
    d: usize,
    rows: &[f32],
) -> Vec<f32> {
    let m = transform.len();
    let normals: Vec<usize> = mask.normals(d).collect();
    let mut x = vec![0.0f32; m];
    let mut z = vec![0.0f32; rows.len() / d * m];
    for (row, zt) in rows.chunks_exact(d).zip(z.chunks_exact_mut(m.max(1))) {
        x.iter_mut().zip(&normals).for_each(|(xi, &c)| *xi = row[c]);
        if m > 0 {
            transform.forward(&x, zt);
        }
    }
    z
}

fn decode_mixed(
    codec: &Codec,
    mixed: MixedKeys,
    transform: &LaneTransform,
    block: &[u8],
    rows: &mut [f32],
) -> Result<()> {
    let KeyLayout::Mixed {
        outliers,
        lanes,
        mask,
        outlier_params,
        lane_scales,
        outlier_codes,
        lane_bits,
    } = *codec.key_layout()
    else {
        unreachable!("mixed key scheme has a mixed layout")
    };
    let (d, g, arith) = (codec.head_dim(), codec.group(), codec.config().arithmetic);
    let chosen = ChannelMask::read(&block[mask.range()], d, outliers)?;

    let mut codes = vec![0u8; g];
    for (i, c) in chosen.outliers(d).enumerate() {
        let p = read_params(&block[outlier_params.range()], i, outlier_params.offset)?;
        unpack_codes(
            2,
            &block[outlier_codes.offset + i * g / 4..][..g / 4],
            &mut codes,
        );
        for (row, &code) in rows.chunks_exact_mut(d).zip(&codes) {
            row[c] = affine::decode(arith, p, code);
        }
    }

    let scales = lane_scales_of(&block[lane_scales.range()], lane_scales.offset)?;
    let normals: Vec<usize> = chosen.normals(d).collect();
    let (mut zt, mut xt, mut bits) = (
        vec![0.0f32; lanes],
        vec![0.0f32; lanes],
        vec![0u8; g * lanes],
    );
    for j in 0..lanes {
        unpack_codes(
            1,
            &block[lane_bits.offset + j * g / 8..][..g / 8],
            &mut bits[j * g..][..g],
        );
    }
    for (t, row) in rows.chunks_exact_mut(d).enumerate() {
        for (j, z) in zt.iter_mut().enumerate() {
            *z = lane_value(mixed.lane_rule, j, bits[j * g + t], scales[j]);
        }
        if lanes > 0 {
            transform.inverse(&zt, &mut xt);
        }
        normals.iter().zip(&xt).for_each(|(&c, &x)| row[c] = x);
    }
    Ok(())
}

/// Reads and checks the f16 lane scales (finite and non-negative, as an encoder writes them).
pub fn lane_scales_of(bytes: &[u8], offset: usize) -> Result<Vec<f32>> {
    (0..bytes.len() / 2)
        .map(|j| {
            let s = f16_at(bytes, j);
            if s.is_finite() && !s.is_sign_negative() {
                Ok(s.to_f32())
            } else {
                Err(Error::Corrupt {
                    what: "lane scale not finite and non-negative",
                    offset: offset + 2 * j,
                })
            }
        })
        .collect()
}

/// The decoded value of lane `j` with sign bit `bit` and scale `s`.
#[inline]
pub fn lane_value(rule: LaneRule, j: usize, bit: u8, s: f32) -> f32 {
    let sign = if bit == 1 { 1.0 } else { -1.0 };
    match rule {
        LaneRule::Symmetric => sign * s,
        LaneRule::PaperCompat if is_imaginary_lane(j) => sign * s * 0.5,
        LaneRule::PaperCompat => f32::from(bit) * s,
    }
}

fn encode_per_channel(codec: &Codec, bits: Bits, rows: &[f32], kept: &[bool], block: &mut [u8]) {
    let KeyLayout::PerChannel { params, codes, .. } = *codec.key_layout() else {
        unreachable!("per-channel key scheme has a per-channel layout")
    };
    let (d, g, arith) = (codec.head_dim(), codec.group(), codec.config().arithmetic);
    let per_channel = g * bits.get() as usize / 8;
    let mut column_codes = vec![0u8; g];
    for c in 0..d {
        let column = || rows.iter().skip(c).step_by(d).copied();
        let p: AffineParams = affine::fit(arith, bits, kept_column(rows, kept, d, c));
        let stored = p.calibrated(bits, codec.config().calibration.keys, arith);
        write_params(&mut block[params.range()], c, stored);
        column_codes
            .iter_mut()
            .zip(column())
            .for_each(|(code, x)| *code = affine::encode(arith, bits, p, x));
        pack_codes(
            bits.get(),
            &column_codes,
            &mut block[codes.offset + c * per_channel..][..per_channel],
        );
    }
}

fn decode_per_channel(codec: &Codec, block: &[u8], rows: &mut [f32]) -> Result<()> {
    let KeyLayout::PerChannel {
        bits,
        params,
        codes,
    } = *codec.key_layout()
    else {
        unreachable!("per-channel key scheme has a per-channel layout")
    };
    let (d, g, arith) = (codec.head_dim(), codec.group(), codec.config().arithmetic);
    let per_channel = g * bits.get() as usize / 8;
    let mut column_codes = vec![0u8; g];
    for c in 0..d {
        let p = read_params(&block[params.range()], c, params.offset)?;
        unpack_codes(
            bits.get(),
            &block[codes.offset + c * per_channel..][..per_channel],
            &mut column_codes,
        );
        for (row, &code) in rows.chunks_exact_mut(d).zip(&column_codes) {
            row[c] = affine::decode(arith, p, code);
        }
    }
    Ok(())
}
