//! Value blocks: ternary (DESIGN §1.2), per-token min/max (KIVI) and per-channel min/max (§1.5).

use alloc::vec;
use alloc::vec::Vec;

use half::f16;
use vidkv_core::layout::trit_row_bytes;
use vidkv_core::pack::{f16_at, pack_codes, pack_trits, unpack_codes, unpack_trits, write_f16s};
use vidkv_core::{Bits, Codec, Error, Result, ValueLayout, ValueScheme};

use crate::blocks::{BlockIo, read_params, write_params};
use crate::{affine, ternary};

/// Encodes row-major `[blocks·G, D]` values into `out` (`blocks · value_block_bytes`).
pub fn encode_value_blocks(codec: &Codec, input: &[f32], out: &mut [u8]) -> Result<()> {
    let io = BlockIo::for_encode(codec, input, out.len(), codec.value_block_bytes())?;
    for (rows, block) in io.blocks(input, out) {
        match codec.config().values {
            ValueScheme::Ternary { scale } => encode_ternary(codec, scale, rows, block),
            ValueScheme::PerToken { bits } => encode_per_token(codec, bits, rows, block),
            ValueScheme::PerChannel { bits } => encode_per_channel(codec, bits, rows, block),
        }
    }
    Ok(())
}

/// Decodes value blocks into row-major f32 `[blocks·G, D]`.
pub fn decode_value_blocks(codec: &Codec, encoded: &[u8], out: &mut [f32]) -> Result<()> {
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

fn encode_ternary(codec: &Codec, rule: vidkv_core::TernaryScale, rows: &[f32], block: &mut [u8]) {
    let ValueLayout::Ternary { scales, trits } = *codec.value_layout() else {
        unreachable!("ternary scheme has a ternary layout")
    };
    let (d, arith) = (codec.head_dim(), codec.config().arithmetic);
    let mut q = vec![0i8; rows.len()];
    let mut column = vec![0.0f32; codec.group()];
    for c in 0..d {
        column
            .iter_mut()
            .zip(rows.iter().skip(c).step_by(d))
            .for_each(|(dst, &x)| *dst = x);
        let fit = ternary::fit(arith, rule, &column);
        write_f16s(
            [f16::from_f32(fit.scale)],
            &mut block[scales.offset + 2 * c..][..2],
        );
        for (t, &x) in column.iter().enumerate() {
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

fn encode_per_token(codec: &Codec, bits: Bits, rows: &[f32], block: &mut [u8]) {
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
        for (gi, (part, out)) in row
            .chunks(channel_group)
            .zip(out.chunks_mut(channel_group))
            .enumerate()
        {
            let p = affine::fit(arith, bits, part.iter().copied());
            write_params(&mut block[params.range()], t * groups + gi, p);
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

fn encode_per_channel(codec: &Codec, bits: Bits, rows: &[f32], block: &mut [u8]) {
    let ValueLayout::PerChannel { params, codes, .. } = *codec.value_layout() else {
        unreachable!("per-channel scheme has a per-channel layout")
    };
    let (d, arith) = (codec.head_dim(), codec.config().arithmetic);
    let mut all = vec![0u8; rows.len()];
    for c in 0..d {
        let column = || rows.iter().skip(c).step_by(d).copied();
        let p = affine::fit(arith, bits, column());
        write_params(&mut block[params.range()], c, p);
        for (t, x) in column().enumerate() {
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
