//! NEON: the 256-bit register of [`crate::kernel::Isa`] is a pair of 128-bit registers with the
//! same per-half semantics as AVX2 (`tbl` for `pshufb`, `zip1/zip2` for `unpacklo/hi`). The
//! integer dot product is `sdot` (dot-product extension, through `asm!` because its intrinsic
//! is unstable) or `smull` + pairwise adds; both operands are signed, so lane codes are −1/0
//! (`cmtst`), outlier codes are shifted down to 0..3 (`ushl`) and softmax weights use 7 bits.

use core::arch::aarch64::*;

use vidkv_core::Result;

use crate::attend::{HeadCache, Residual, residual_part};
use crate::fft::Lanes;
use crate::kernel::{Isa, Plan, QuantState, quantized_part};

/// Two 128-bit halves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct V2(uint8x16_t, uint8x16_t);

/// `tbl` indices: lane register `r`, half `h`: byte `4·tt + m` ← chunk byte `4·m + r`.
const LANE_IDX: [[u8; 16]; 4] = {
    let mut t = [[0u8; 16]; 4];
    let mut r = 0;
    while r < 4 {
        let mut i = 0;
        while i < 16 {
            t[r][i] = (4 * (i % 4) + r) as u8;
            i += 1;
        }
        r += 1;
    }
    t
};

/// Bit select of lane codes, per half: byte `4·tt + m` = `1 << tt` (tt = 0..4 low, 4..8 high).
const LANE_SEL: [[u8; 16]; 2] = {
    let mut t = [[0u8; 16]; 2];
    let mut i = 0;
    while i < 32 {
        t[i / 16][i % 16] = 1 << (i / 4);
        i += 1;
    }
    t
};

/// Outlier `tbl` indices `[r][half][A/B]` (0xFF selects zero).
const OUT_IDX: [[[[u8; 16]; 2]; 2]; 4] = {
    let mut t = [[[[0u8; 16]; 2]; 2]; 4];
    let mut r = 0;
    while r < 4 {
        let mut i = 0;
        while i < 32 {
            let (tt, m) = (i / 4, i % 4);
            let src = (8 * (m % 2) + 2 * r + tt / 4) as u8;
            t[r][i / 16][0][i % 16] = if m < 2 { src } else { 0xFF };
            t[r][i / 16][1][i % 16] = if m >= 2 { src } else { 0xFF };
            i += 1;
        }
        r += 1;
    }
    t
};

/// Right shift (as a negative left shift) of outlier codes: byte `4·tt + m` = `−2·(tt mod 4)`.
const OUT_SHIFT: [i8; 16] = {
    let mut t = [0i8; 16];
    let mut i = 0;
    while i < 16 {
        t[i] = -2 * ((i / 4) % 4) as i8;
        i += 1;
    }
    t
};

macro_rules! neon_isa {
    ($name:ident, $dot:path) => {
        #[derive(Debug, Clone, Copy)]
        pub(crate) struct $name;

        impl Isa for $name {
            type V = V2;
            const LANE_QMAX: f32 = 127.0;
            const OUT_QMAX: f32 = 127.0;
            const P_MAX: f32 = 127.0;
            const LANE_CODE: [f32; 8] = [-1.0; 8];
            const OUT_CODE: [f32; 4] = [1.0; 4];
            const VAL_CHUNK: usize = 10;

            #[inline(always)]
            unsafe fn zero() -> V2 {
                // SAFETY: NEON is guaranteed by the caller.
                unsafe { V2(vdupq_n_u8(0), vdupq_n_u8(0)) }
            }
            #[inline(always)]
            unsafe fn splat(x: u32) -> V2 {
                // SAFETY: NEON is guaranteed by the caller.
                unsafe {
                    let v = vreinterpretq_u8_u32(vdupq_n_u32(x));
                    V2(v, v)
                }
            }
            #[inline(always)]
            unsafe fn store_i32(v: V2, out: &mut [i32; 8]) {
                // SAFETY: `out` is 8 writable i32.
                unsafe {
                    vst1q_s32(out.as_mut_ptr(), vreinterpretq_s32_u8(v.0));
                    vst1q_s32(out.as_mut_ptr().add(4), vreinterpretq_s32_u8(v.1));
                }
            }
            #[inline(always)]
            unsafe fn dot(acc: V2, a: V2, b: V2) -> V2 {
                // SAFETY: the caller guarantees the features `$dot` needs.
                unsafe { V2($dot(acc.0, a.0, b.0), $dot(acc.1, a.1, b.1)) }
            }
            #[inline(always)]
            unsafe fn lane_codes(chunk: *const u8, out: &mut [V2; 4]) {
                // SAFETY: 16 readable bytes at `chunk`; NEON.
                unsafe { lane_codes(chunk, out) }
            }
            #[inline(always)]
            unsafe fn outlier_codes(chunk: *const u8, out: &mut [V2; 4]) {
                // SAFETY: 32 readable bytes at `chunk`; NEON.
                unsafe { outlier_codes(chunk, out) }
            }
            #[inline(always)]
            unsafe fn interleave4(rows: [*const u8; 4], out: &mut [V2; 4]) {
                // SAFETY: 32 readable bytes at each row; NEON.
                unsafe { interleave4(rows, out) }
            }
            #[inline(always)]
            unsafe fn biased_qprime(x: V2) -> V2 {
                // SAFETY: NEON.
                unsafe { V2(qprime(x.0), qprime(x.1)) }
            }
            #[inline(always)]
            unsafe fn triple(x: V2) -> V2 {
                // SAFETY: NEON.
                unsafe {
                    V2(
                        vaddq_u8(x.0, vaddq_u8(x.0, x.0)),
                        vaddq_u8(x.1, vaddq_u8(x.1, x.1)),
                    )
                }
            }
            #[inline(always)]
            unsafe fn neg_digit(tb: V2) -> V2 {
                // SAFETY: NEON.
                unsafe { V2(neg_digit(tb.0), neg_digit(tb.1)) }
            }
        }
    };
}

neon_isa!(NeonDot, sdot);
neon_isa!(Neon, smull_dot);

/// `acc + Σ_4 a·b` per 32-bit word with `sdot`.
#[inline(always)]
unsafe fn sdot(acc: uint8x16_t, a: uint8x16_t, b: uint8x16_t) -> uint8x16_t {
    let mut acc = acc;
    // SAFETY: the caller guarantees the dot-product extension; pure register arithmetic.
    unsafe {
        core::arch::asm!(
            "sdot {0:v}.4s, {1:v}.16b, {2:v}.16b",
            inout(vreg) acc,
            in(vreg) a,
            in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// `acc + Σ_4 a·b` per 32-bit word with widening multiplies and pairwise adds (products of the
/// kernel's operands fit in 16 bits, pair sums too).
#[inline(always)]
unsafe fn smull_dot(acc: uint8x16_t, a: uint8x16_t, b: uint8x16_t) -> uint8x16_t {
    // SAFETY: NEON.
    unsafe {
        let (a, b) = (vreinterpretq_s8_u8(a), vreinterpretq_s8_u8(b));
        let lo = vmull_s8(vget_low_s8(a), vget_low_s8(b));
        let hi = vmull_high_s8(a, b);
        let pairs = vpaddq_s16(lo, hi);
        let quads = vpaddlq_s16(pairs);
        vreinterpretq_u8_s32(vaddq_s32(vreinterpretq_s32_u8(acc), quads))
    }
}

#[inline(always)]
unsafe fn lane_codes(chunk: *const u8, out: &mut [V2; 4]) {
    // SAFETY: 16 readable bytes at `chunk`; NEON.
    unsafe {
        let c = vld1q_u8(chunk);
        let (s0, s1) = (
            vld1q_u8(LANE_SEL[0].as_ptr()),
            vld1q_u8(LANE_SEL[1].as_ptr()),
        );
        for (r, o) in out.iter_mut().enumerate() {
            let v = vqtbl1q_u8(c, vld1q_u8(LANE_IDX[r].as_ptr()));
            // Both halves read the same chunk bytes (token byte r); the bit differs.
            *o = V2(vtstq_u8(v, s0), vtstq_u8(v, s1));
        }
    }
}

#[inline(always)]
unsafe fn outlier_codes(chunk: *const u8, out: &mut [V2; 4]) {
    // SAFETY: 32 readable bytes at `chunk`; NEON.
    unsafe {
        let (a, b) = (vld1q_u8(chunk), vld1q_u8(chunk.add(16)));
        let shift = vld1q_s8(OUT_SHIFT.as_ptr());
        let three = vdupq_n_u8(3);
        let half = |r: usize, h: usize| {
            let idx = &OUT_IDX[r][h];
            let v = vorrq_u8(
                vqtbl1q_u8(a, vld1q_u8(idx[0].as_ptr())),
                vqtbl1q_u8(b, vld1q_u8(idx[1].as_ptr())),
            );
            vandq_u8(vshlq_u8(v, shift), three)
        };
        for (r, o) in out.iter_mut().enumerate() {
            *o = V2(half(r, 0), half(r, 1));
        }
    }
}

#[inline(always)]
unsafe fn interleave4(rows: [*const u8; 4], out: &mut [V2; 4]) {
    // SAFETY: 32 readable bytes at each row; NEON.
    unsafe {
        let ld = |p: *const u8| (vld1q_u8(p), vld1q_u8(p.add(16)));
        let (r0, r1, r2, r3) = (ld(rows[0]), ld(rows[1]), ld(rows[2]), ld(rows[3]));
        let half = |x0: uint8x16_t, x1: uint8x16_t, x2: uint8x16_t, x3: uint8x16_t| {
            let a = vreinterpretq_u16_u8(vzip1q_u8(x0, x1));
            let b = vreinterpretq_u16_u8(vzip1q_u8(x2, x3));
            let c = vreinterpretq_u16_u8(vzip2q_u8(x0, x1));
            let d = vreinterpretq_u16_u8(vzip2q_u8(x2, x3));
            [
                vreinterpretq_u8_u16(vzip1q_u16(a, b)),
                vreinterpretq_u8_u16(vzip2q_u16(a, b)),
                vreinterpretq_u8_u16(vzip1q_u16(c, d)),
                vreinterpretq_u8_u16(vzip2q_u16(c, d)),
            ]
        };
        let lo = half(r0.0, r1.0, r2.0, r3.0);
        let hi = half(r0.1, r1.1, r2.1, r3.1);
        for o in 0..4 {
            out[o] = V2(lo[o], hi[o]);
        }
    }
}

/// `⌈256·b/243⌉ + 128` per byte: `b + mulhi(13·b + 239, 270)` with `sqdmulh` by 135.
#[inline(always)]
unsafe fn qprime(x: uint8x16_t) -> uint8x16_t {
    // SAFETY: NEON.
    unsafe {
        let f = |v: int16x8_t| {
            let y = vmlaq_n_s16(vdupq_n_s16(239), v, 13);
            vaddq_s16(v, vqdmulhq_n_s16(y, 135))
        };
        let lo = f(vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(x))));
        let hi = f(vreinterpretq_s16_u16(vmovl_high_u8(x)));
        let q = vcombine_u8(
            vmovn_u16(vreinterpretq_u16_s16(lo)),
            vmovn_u16(vreinterpretq_u16_s16(hi)),
        );
        veorq_u8(q, vdupq_n_u8(0x80))
    }
}

#[inline(always)]
unsafe fn neg_digit(tb: uint8x16_t) -> uint8x16_t {
    // SAFETY: NEON.
    unsafe {
        let t = vreinterpretq_s8_u8(tb);
        vaddq_u8(vcgtq_s8(t, vdupq_n_s8(-43)), vcgtq_s8(t, vdupq_n_s8(42)))
    }
}

/// Quantized blocks and residual with NEON + dot product.
///
/// # Safety
/// The CPU must support NEON and the dot-product extension.
#[target_feature(enable = "neon,dotprod")]
pub(crate) unsafe fn attend_dotprod(
    plan: &Plan,
    qt: &[Lanes],
    hq: usize,
    cache: &HeadCache<'_>,
    state: &mut QuantState,
    res: &mut Residual,
) -> Result<()> {
    // SAFETY: this function's target features are the ones `NeonDot` needs.
    unsafe { quantized_part::<NeonDot>(plan, qt, hq, cache, state)? };
    residual_part(qt.len(), qt, hq, cache, res);
    Ok(())
}

/// Quantized blocks and residual with NEON.
///
/// # Safety
/// The CPU must support NEON.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn attend(
    plan: &Plan,
    qt: &[Lanes],
    hq: usize,
    cache: &HeadCache<'_>,
    state: &mut QuantState,
    res: &mut Residual,
) -> Result<()> {
    // SAFETY: NEON is this function's target feature.
    unsafe { quantized_part::<Neon>(plan, qt, hq, cache, state)? };
    residual_part(qt.len(), qt, hq, cache, res);
    Ok(())
}
