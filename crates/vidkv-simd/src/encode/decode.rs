//! Decoders of mixed-precision keys (f32 arithmetic) and ternary values. The inverse transform
//! of the key lanes runs one token per vector lane; values are `q · scale`, vectorised across
//! channels. Blocks are validated with the scalar backend's checks; a damaged block makes the
//! whole call run the scalar decoder, which reports the error with its offset.

use alloc::vec;
use alloc::vec::Vec;

use vidkv_core::layout::trit_row_bytes;
use vidkv_core::pack::{MAX_TRIT_BYTE, f16_at, trits_of_byte, unpack_codes};
use vidkv_core::{ChannelMask, Codec, KeyLayout, LaneRule, Transform, ValueLayout};
use vidkv_cpu::{affine, lane_scales_of, lane_value, read_params};

use super::keys::{KeyPlan, fft, hadamard};
use super::simd::Simd;

/// Decodes key blocks into row-major f32 rows; `None` when a block fails validation.
#[inline(always)]
pub(crate) unsafe fn keys<S: Simd>(
    plan: &KeyPlan,
    codec: &Codec,
    rule: LaneRule,
    encoded: &[u8],
    out: &mut [f32],
) -> Option<()> {
    let (d, g, m) = (plan.d(), plan.g(), plan.lanes());
    let mut s = KeyDecodeScratch::<S>::new(m, g);
    for (block, rows) in encoded
        .chunks_exact(codec.key_block_bytes())
        .zip(out.chunks_exact_mut(g * d))
    {
        // SAFETY: forwarded contract.
        unsafe { key_block::<S>(plan, codec, rule, block, rows, &mut s)? };
    }
    Some(())
}

struct KeyDecodeScratch<S: Simd> {
    re: Vec<S::F>,
    im: Vec<S::F>,
    bits: Vec<u8>,
    codes: Vec<u8>,
}

impl<S: Simd> KeyDecodeScratch<S> {
    fn new(m: usize, g: usize) -> Self {
        // SAFETY: an all-zero bit pattern is a valid vector of zeros on every instruction set.
        let zero: S::F = unsafe { core::mem::zeroed() };
        Self {
            re: vec![zero; m.max(1)],
            im: vec![zero; m.max(1)],
            bits: vec![0; m * g],
            codes: vec![0; g],
        }
    }
}

#[inline(always)]
unsafe fn key_block<S: Simd>(
    plan: &KeyPlan,
    codec: &Codec,
    rule: LaneRule,
    block: &[u8],
    rows: &mut [f32],
    s: &mut KeyDecodeScratch<S>,
) -> Option<()> {
    let KeyLayout::Mixed {
        outliers,
        mask,
        outlier_params,
        lane_scales,
        outlier_codes,
        lane_bits,
        ..
    } = *codec.key_layout()
    else {
        unreachable!("plans exist only for mixed keys")
    };
    let (d, g, m) = (plan.d(), plan.g(), plan.lanes());
    let arith = codec.config().arithmetic;
    let chosen = ChannelMask::read(&block[mask.range()], d, outliers).ok()?;
    for (i, c) in chosen.outliers(d).enumerate() {
        let p = read_params(&block[outlier_params.range()], i, outlier_params.offset).ok()?;
        unpack_codes(
            2,
            &block[outlier_codes.offset + i * g / 4..][..g / 4],
            &mut s.codes,
        );
        for (t, &code) in s.codes.iter().enumerate() {
            rows[t * d + c] = affine::decode(arith, p, code);
        }
    }
    if m == 0 {
        return Some(());
    }
    let scales = lane_scales_of(&block[lane_scales.range()], lane_scales.offset).ok()?;
    unpack_codes(1, &block[lane_bits.range()], &mut s.bits);
    let normals: Vec<usize> = chosen.normals(d).collect();
    let mut lane = [0.0f32; 16];
    let mut tmp = [0.0f32; 16];
    for t0 in (0..g).step_by(S::N) {
        // SAFETY: caller's instruction set; `lane`/`tmp` hold N ≤ 16 values.
        unsafe {
            for j in 0..m {
                for (i, z) in lane.iter_mut().enumerate().take(S::N) {
                    *z = lane_value(rule, j, s.bits[j * g + t0 + i], scales[j]);
                }
                place_lane::<S>(plan, j, S::load(lane.as_ptr()), s);
            }
            match plan.transform() {
                Transform::Fft => {
                    fft::<S>(plan, &mut s.re, &mut s.im);
                    let inv = S::splat(1.0 / m as f32);
                    s.re.iter_mut().for_each(|x| *x = S::mul(*x, inv));
                }
                Transform::Hadamard => hadamard::<S>(&mut s.re[..m]),
                Transform::Identity => {}
            }
            for (n, &c) in normals.iter().enumerate() {
                S::store(tmp.as_mut_ptr(), s.re[n]);
                for i in 0..S::N {
                    rows[(t0 + i) * d + c] = tmp[i];
                }
            }
        }
    }
    Some(())
}

/// Puts lane `j`'s decoded values where the inverse transform reads them. For the DFT the input
/// is the conjugated Hermitian spectrum, bit-reversed: `x = Re FFT(conj X) / M`.
#[inline(always)]
unsafe fn place_lane<S: Simd>(plan: &KeyPlan, j: usize, z: S::F, s: &mut KeyDecodeScratch<S>) {
    let m = plan.lanes();
    if plan.transform() != Transform::Fft {
        s.re[j] = z;
        return;
    }
    let rev = plan.reversed();
    // SAFETY: caller's instruction set.
    unsafe {
        let zero = S::splat(0.0);
        let neg = S::sub(zero, z);
        let k = if j == 0 { 0 } else { j.div_ceil(2) };
        let imaginary = j > 0 && j.is_multiple_of(2);
        if imaginary {
            // X_k = … + i·z, X_{M−k} = … − i·z; conjugated: −z at k, +z at M − k.
            s.im[rev[k]] = neg;
            s.im[rev[m - k]] = z;
        } else {
            s.re[rev[k]] = z;
            if k != 0 && 2 * k != m {
                s.re[rev[m - k]] = z;
            }
            if k == 0 || 2 * k == m {
                s.im[rev[k]] = zero;
            }
        }
    }
}

/// Decodes ternary value blocks; `None` when a block fails validation.
#[inline(always)]
pub(crate) unsafe fn values<S: Simd>(codec: &Codec, encoded: &[u8], out: &mut [f32]) -> Option<()> {
    let ValueLayout::Ternary { scales, trits } = *codec.value_layout() else {
        return None;
    };
    let (d, g) = (codec.head_dim(), codec.group());
    let row_bytes = trit_row_bytes(d);
    let width = d.next_multiple_of(S::N);
    let table: Vec<[i8; 8]> = (0..=255u8)
        .map(|b| {
            let q = trits_of_byte(b);
            [q[0], q[1], q[2], q[3], q[4], 0, 0, 0]
        })
        .collect();
    let mut scale = vec![0.0f32; width];
    let mut q = vec![0i8; (5 * row_bytes + 8).max(width)];
    let mut row = vec![0.0f32; width];
    for (block, rows) in encoded
        .chunks_exact(codec.value_block_bytes())
        .zip(out.chunks_exact_mut(g * d))
    {
        for (c, sc) in scale.iter_mut().enumerate().take(d) {
            let s = f16_at(&block[scales.range()], c);
            (s.is_finite() && !s.is_sign_negative()).then_some(())?;
            *sc = s.to_f32();
        }
        let packed = &block[trits.range()];
        if packed.iter().any(|&b| b > MAX_TRIT_BYTE) {
            return None;
        }
        for (bytes, out_row) in packed.chunks_exact(row_bytes).zip(rows.chunks_exact_mut(d)) {
            for (i, &b) in bytes.iter().enumerate() {
                q[5 * i..5 * i + 8].copy_from_slice(&table[usize::from(b)]);
            }
            for c0 in (0..width).step_by(S::N) {
                // SAFETY: caller's instruction set; `q` has `5·row_bytes + 8 ≥ width` entries,
                // `scale` and `row` `width`.
                unsafe {
                    let v = S::mul(
                        S::load_i8(q.as_ptr().add(c0)),
                        S::load(scale.as_ptr().add(c0)),
                    );
                    S::store(row.as_mut_ptr().add(c0), v);
                }
            }
            out_row.copy_from_slice(&row[..d]);
        }
    }
    Some(())
}
