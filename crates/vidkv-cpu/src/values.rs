//! Value blocks: ternary (DESIGN §1.2), per-token min/max (KIVI) and per-channel min/max (§1.5).

use alloc::vec;
use alloc::vec::Vec;

use half::f16;
use vidkv_core::layout::trit_row_bytes;
use vidkv_core::pack::{f16_at, pack_codes, pack_trits, unpack_codes, unpack_trits, write_f16s};
use vidkv_core::{AffineParams, Bits, Codec, Error, Result, ValueLayout, ValueScheme};

use crate::blocks::{BlockIo, read_params, write_params};
use crate::borrow::{self, Half};
use crate::{affine, ternary};

/// Encodes row-major `[blocks·G, D]` values into `out` (`blocks · value_block_bytes`).
pub fn encode_value_blocks(codec: &Codec, input: &[f32], out: &mut [u8]) -> Result<()> {
    encode_value_blocks_masked(codec, input, None, out)
}

/// Encodes value blocks with the tokens flagged in `excluded` (`G/8` bytes per block, LSB first)
/// left out: they take no part in the block's statistics and are written as "no value" (ternary
/// code 0; per-channel code 0; per-token zero parameters and codes). The streaming cache stores
/// salient tokens' values elsewhere. `None`, or no bit set, gives the bytes of
/// [`encode_value_blocks`].
pub fn encode_value_blocks_masked(
    codec: &Codec,
    input: &[f32],
    excluded: Option<&[u8]>,
    out: &mut [u8],
) -> Result<()> {
    if codec.is_borrowing() {
        return borrow::encode_params_only(codec, Half::Values, out, |full, blocks| {
            encode_value_blocks_masked(full, input, excluded, blocks)
        });
    }
    let io = BlockIo::for_encode(codec, input, out.len(), codec.value_block_bytes())?;
    let mask_bytes = codec.group() / 8;
    let blocks = input.len() / codec.block_elements();
    if let Some(mask) = excluded
        && mask.len() != blocks * mask_bytes
    {
        return Err(Error::ShapeMismatch {
            what: "excluded-token masks (G/8 bytes per block)",
            expected: blocks * mask_bytes,
            actual: mask.len(),
        });
    }
    for (i, (rows, block)) in io.blocks(input, out).enumerate() {
        let mask = excluded.map(|m| &m[i * mask_bytes..][..mask_bytes]);
        let keep = |t: usize| mask.is_none_or(|m| m[t / 8] >> (t % 8) & 1 == 0);
        match codec.config().values {
            ValueScheme::Ternary { scale } => encode_ternary(codec, scale, rows, &keep, block),
            ValueScheme::PerToken { bits } => encode_per_token(codec, bits, rows, &keep, block),
            ValueScheme::PerChannel { bits } => encode_per_channel(codec, bits, rows, &keep, block),
        }
    }
    Ok(())
}

/// Decodes value blocks into row-major f32 `[blocks·G, D]`.
pub fn decode_value_blocks(codec: &Codec, encoded: &[u8], out: &mut [f32]) -> Result<()> {
    if codec.is_borrowing() {
        return Err(borrow::needs_lender());
    }
    let io = BlockIo::for_decode(codec, encoded.len(), codec.value_block_bytes(), out.len())?;
    for (i, (block, rows)) in io.blocks_mut(encoded, out).enumerate() {
        let decoded = match codec.value_layout() {
            ValueLayout::Ternary { .. } => decode_ternary(codec, block, rows),
            ValueLayout::PerToken { .. } => decode_per_token(codec, block, rows),
            ValueLayout::PerChannel { .. } => decode_per_channel(codec, block, rows),
        };
        decoded.map_err(|e| io.locate(e, i))?;
    }
    Ok(())
}

fn encode_ternary(
    codec: &Codec,
    rule: vidkv_core::TernaryScale,
    rows: &[f32],
    keep: &dyn Fn(usize) -> bool,
    block: &mut [u8],
) {
    let ValueLayout::Ternary { scales, trits } = *codec.value_layout() else {
        unreachable!("ternary scheme has a ternary layout")
    };
    let (d, arith) = (codec.head_dim(), codec.config().arithmetic);
    let kept: Vec<usize> = (0..codec.group()).filter(|&t| keep(t)).collect();
    let mut q = vec![0i8; rows.len()];
    let mut column = vec![0.0f32; kept.len()];
    for c in 0..d {
        column
            .iter_mut()
            .zip(&kept)
            .for_each(|(dst, &t)| *dst = rows[t * d + c]);
        let fit = ternary::fit(arith, rule, &column);
        write_f16s(
            [f16::from_f32(fit.scale)],
            &mut block[scales.offset + 2 * c..][..2],
        );
        for (&t, &x) in kept.iter().zip(&column) {
            q[t * d + c] = ternary::encode(fit.threshold, x);
        }
    }
    let row_bytes = trit_row_bytes(d);
    for (row, out) in q
        .chunks_exact(d)
        .zip(block[trits.range()].chunks_exact_mut(row_bytes))
    {
        pack_trits(row, out);
    }
}

fn decode_ternary(codec: &Codec, block: &[u8], rows: &mut [f32]) -> Result<()> {
    let ValueLayout::Ternary { scales, trits } = *codec.value_layout() else {
        unreachable!("ternary scheme has a ternary layout")
    };
    let d = codec.head_dim();
    let scale: Vec<f32> = (0..d)
        .map(|c| {
            let s = f16_at(&block[scales.range()], c);
            if s.is_finite() && !s.is_sign_negative() {
                Ok(s.to_f32())
            } else {
                Err(Error::Corrupt {
                    what: "ternary scale not finite and non-negative",
                    offset: scales.offset + 2 * c,
                })
            }
        })
        .collect::<Result<_>>()?;
    let row_bytes = trit_row_bytes(d);
    let mut q = vec![0i8; d];
    for (t, (bytes, row)) in block[trits.range()]
        .chunks_exact(row_bytes)
        .zip(rows.chunks_exact_mut(d))
        .enumerate()
    {
        unpack_trits(bytes, &mut q).map_err(|_| Error::Corrupt {
            what: "trit byte above 242",
            offset: trits.offset + t * row_bytes,
        })?;
        row.iter_mut()
            .zip(&q)
            .zip(&scale)
            .for_each(|((v, &qi), &s)| *v = f32::from(qi) * s);
    }
    Ok(())
}

fn encode_per_token(
    codec: &Codec,
    bits: Bits,
    rows: &[f32],
    keep: &dyn Fn(usize) -> bool,
    block: &mut [u8],
) {
    let ValueLayout::PerToken {
        channel_group,
        params,
        codes,
        ..
    } = *codec.value_layout()
    else {
        unreachable!("per-token scheme has a per-token layout")
    };
    let (d, arith) = (codec.head_dim(), codec.config().arithmetic);
    let groups = d.div_ceil(channel_group);
    let mut all = vec![0u8; rows.len()];
    for (t, (row, out)) in rows
        .chunks_exact(d)
        .zip(all.chunks_exact_mut(d))
        .enumerate()
    {
        if !keep(t) {
            // An excluded token: zero parameters, codes 0.
            for gi in 0..groups {
                let zero = AffineParams {
                    lo: f16::ZERO,
                    step: f16::ZERO,
                };
                write_params(&mut block[params.range()], t * groups + gi, zero);
            }
            continue;
        }
        for (gi, (part, out)) in row
            .chunks(channel_group)
            .zip(out.chunks_mut(channel_group))
            .enumerate()
        {
            let p = affine::fit(arith, bits, part.iter().copied());
            let stored = p.calibrated(bits, codec.config().calibration.values, arith);
            write_params(&mut block[params.range()], t * groups + gi, stored);
            out.iter_mut()
                .zip(part)
                .for_each(|(code, &x)| *code = affine::encode(arith, bits, p, x));
        }
    }
    pack_codes(bits.get(), &all, &mut block[codes.range()]);
}

fn decode_per_token(codec: &Codec, block: &[u8], rows: &mut [f32]) -> Result<()> {
    let ValueLayout::PerToken {
        bits,
        channel_group,
        params,
        codes,
    } = *codec.value_layout()
    else {
        unreachable!("per-token scheme has a per-token layout")
    };
    let (d, arith) = (codec.head_dim(), codec.config().arithmetic);
    let groups = d.div_ceil(channel_group);
    let mut all = vec![0u8; rows.len()];
    unpack_codes(bits.get(), &block[codes.range()], &mut all);
    for (t, (row, row_codes)) in rows
        .chunks_exact_mut(d)
        .zip(all.chunks_exact(d))
        .enumerate()
    {
        for (gi, (part, part_codes)) in row
            .chunks_mut(channel_group)
            .zip(row_codes.chunks(channel_group))
            .enumerate()
        {
            let p = read_params(&block[params.range()], t * groups + gi, params.offset)?;
            part.iter_mut()
                .zip(part_codes)
                .for_each(|(v, &code)| *v = affine::decode(arith, p, code));
        }
    }
    Ok(())
}

fn encode_per_channel(
    codec: &Codec,
    bits: Bits,
    rows: &[f32],
    keep: &dyn Fn(usize) -> bool,
    block: &mut [u8],
) {
    let ValueLayout::PerChannel { params, codes, .. } = *codec.value_layout() else {
        unreachable!("per-channel scheme has a per-channel layout")
    };
    let (d, arith) = (codec.head_dim(), codec.config().arithmetic);
    let kept: Vec<usize> = (0..codec.group()).filter(|&t| keep(t)).collect();
    let mut all = vec![0u8; rows.len()];
    for c in 0..d {
        let column = || kept.iter().map(|&t| rows[t * d + c]);
        // Every token excluded: zero parameters (the fit of nothing).
        let p = if kept.is_empty() {
            AffineParams {
                lo: f16::ZERO,
                step: f16::ZERO,
            }
        } else {
            affine::fit(arith, bits, column())
        };
        let stored = p.calibrated(bits, codec.config().calibration.values, arith);
        write_params(&mut block[params.range()], c, stored);
        for (&t, x) in kept.iter().zip(column()) {
            all[t * d + c] = affine::encode(arith, bits, p, x);
        }
    }
    pack_codes(bits.get(), &all, &mut block[codes.range()]);
}

fn decode_per_channel(codec: &Codec, block: &[u8], rows: &mut [f32]) -> Result<()> {
    let ValueLayout::PerChannel {
        bits,
        params,
        codes,
    } = *codec.value_layout()
    else {
        unreachable!("per-channel scheme has a per-channel layout")
    };
    let (d, arith) = (codec.head_dim(), codec.config().arithmetic);
    let p: Vec<_> = (0..d)
        .map(|c| read_params(&block[params.range()], c, params.offset))
        .collect::<Result<_>>()?;
    let mut all = vec![0u8; rows.len()];
    unpack_codes(bits.get(), &block[codes.range()], &mut all);
    for (row, row_codes) in rows.chunks_exact_mut(d).zip(all.chunks_exact(d)) {
        for ((v, &code), &pc) in row.iter_mut().zip(row_codes).zip(&p) {
            *v = affine::decode(arith, pc, code);
        }
    }
    Ok(())
}
