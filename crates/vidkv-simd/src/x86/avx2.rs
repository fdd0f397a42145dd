//! AVX2 + FMA + F16C: the kernel's integer dot product is `pmaddubsw` + `pmaddwd`.

use core::arch::x86_64::*;

use vidkv_core::Result;

use super::tables::{LANE_IDX, LANE_SEL, OUT_IDX, OUT_SEL};
use crate::attend::{HeadCache, Residual, residual_part};
use crate::fft::Lanes;
use crate::kernel::{Isa, Plan, QuantState, quantized_part};

/// The AVX2 instruction set for [`crate::kernel`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2;

/// Shared 256-bit code builders, used by the AVX-512 level too.
pub(crate) mod ops {
    use super::*;

    #[inline(always)]
    pub unsafe fn lane_codes(chunk: *const u8, out: &mut [__m256i; 4]) {
        // SAFETY: the caller guarantees AVX2 and 16 readable bytes at `chunk`.
        unsafe {
            let c = _mm256_broadcastsi128_si256(_mm_loadu_si128(chunk.cast()));
            let sel = _mm256_loadu_si256(LANE_SEL.as_ptr().cast());
            for (r, o) in out.iter_mut().enumerate() {
                let idx = _mm256_loadu_si256(LANE_IDX[r].as_ptr().cast());
                *o = _mm256_and_si256(_mm256_shuffle_epi8(c, idx), sel);
            }
        }
    }

    #[inline(always)]
    pub unsafe fn outlier_codes(chunk: *const u8, out: &mut [__m256i; 4]) {
        // SAFETY: the caller guarantees AVX2 and 32 readable bytes at `chunk`.
        unsafe {
            let a = _mm256_broadcastsi128_si256(_mm_loadu_si128(chunk.cast()));
            let b = _mm256_broadcastsi128_si256(_mm_loadu_si128(chunk.add(16).cast()));
            let sel = _mm256_loadu_si256(OUT_SEL.as_ptr().cast());
            for (r, o) in out.iter_mut().enumerate() {
                let ia = _mm256_loadu_si256(OUT_IDX[r][0].as_ptr().cast());
                let ib = _mm256_loadu_si256(OUT_IDX[r][1].as_ptr().cast());
                let v = _mm256_or_si256(_mm256_shuffle_epi8(a, ia), _mm256_shuffle_epi8(b, ib));
                *o = _mm256_and_si256(v, sel);
            }
        }
    }

    #[inline(always)]
    pub unsafe fn interleave4(rows: [*const u8; 4], out: &mut [__m256i; 4]) {
        // SAFETY: the caller guarantees AVX2 and 32 readable bytes at each row pointer.
        unsafe {
            let r0 = _mm256_loadu_si256(rows[0].cast());
            let r1 = _mm256_loadu_si256(rows[1].cast());
            let r2 = _mm256_loadu_si256(rows[2].cast());
            let r3 = _mm256_loadu_si256(rows[3].cast());
            let a = _mm256_unpacklo_epi8(r0, r1);
            let b = _mm256_unpacklo_epi8(r2, r3);
            let c = _mm256_unpackhi_epi8(r0, r1);
            let d = _mm256_unpackhi_epi8(r2, r3);
            out[0] = _mm256_unpacklo_epi16(a, b);
            out[1] = _mm256_unpackhi_epi16(a, b);
            out[2] = _mm256_unpacklo_epi16(c, d);
            out[3] = _mm256_unpackhi_epi16(c, d);
        }
    }

    #[inline(always)]
    pub unsafe fn biased_qprime(x: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            // q' = x + mulhi(13·x + 239, 270), exact for x ≤ 242, in 16-bit lanes.
            let z = _mm256_setzero_si256();
            let half = |v: __m256i| {
                let y = _mm256_add_epi16(
                    _mm256_mullo_epi16(v, _mm256_set1_epi16(13)),
                    _mm256_set1_epi16(239),
                );
                _mm256_add_epi16(v, _mm256_mulhi_epu16(y, _mm256_set1_epi16(270)))
            };
            let lo = half(_mm256_unpacklo_epi8(x, z));
            let hi = half(_mm256_unpackhi_epi8(x, z));
            _mm256_xor_si256(_mm256_packus_epi16(lo, hi), _mm256_set1_epi8(-128))
        }
    }

    #[inline(always)]
    pub unsafe fn triple(x: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe { _mm256_add_epi8(x, _mm256_add_epi8(x, x)) }
    }

    #[inline(always)]
    pub unsafe fn neg_digit(tb: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            // t ≥ 86 ⇔ t − 128 > −43; t ≥ 171 ⇔ t − 128 > 42 (signed).
            let a = _mm256_cmpgt_epi8(tb, _mm256_set1_epi8(-43));
            let b = _mm256_cmpgt_epi8(tb, _mm256_set1_epi8(42));
            _mm256_add_epi8(a, b)
        }
    }
}

impl Isa for Avx2 {
    type V = __m256i;
    const LANE_QMAX: f32 = 127.0;
    // Codes reach 192 and `pmaddubsw` saturates a pair sum above 32767: 2·192·85 = 32640.
    const OUT_QMAX: f32 = 85.0;
    const P_MAX: f32 = 255.0;
    const LANE_CODE: [f32; 8] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0];
    const OUT_CODE: [f32; 4] = [1.0, 4.0, 16.0, 64.0];
    const VAL_CHUNK: usize = 10;

    #[inline(always)]
    unsafe fn zero() -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    unsafe fn splat(x: u32) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe { _mm256_set1_epi32(x as i32) }
    }
    #[inline(always)]
    unsafe fn store_i32(v: __m256i, out: &mut [i32; 8]) {
        // SAFETY: `out` is 32 writable bytes; the caller guarantees AVX2.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX2.
        unsafe {
            let pairs = _mm256_maddubs_epi16(a, b);
            _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
        }
    }
    #[inline(always)]
    unsafe fn lane_codes(chunk: *const u8, out: &mut [__m256i; 4]) {
        // SAFETY: forwarded contract.
        unsafe { ops::lane_codes(chunk, out) }
    }
    #[inline(always)]
    unsafe fn outlier_codes(chunk: *const u8, out: &mut [__m256i; 4]) {
        // SAFETY: forwarded contract.
        unsafe { ops::outlier_codes(chunk, out) }
    }
    #[inline(always)]
    unsafe fn interleave4(rows: [*const u8; 4], out: &mut [__m256i; 4]) {
        // SAFETY: forwarded contract.
        unsafe { ops::interleave4(rows, out) }
    }
    #[inline(always)]
    unsafe fn biased_qprime(x: __m256i) -> __m256i {
        // SAFETY: forwarded contract.
        unsafe { ops::biased_qprime(x) }
    }
    #[inline(always)]
    unsafe fn triple(x: __m256i) -> __m256i {
        // SAFETY: forwarded contract.
        unsafe { ops::triple(x) }
    }
    #[inline(always)]
    unsafe fn neg_digit(tb: __m256i) -> __m256i {
        // SAFETY: forwarded contract.
        unsafe { ops::neg_digit(tb) }
    }
}

/// Quantized blocks and residual for up to 8 queries.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn attend(
    plan: &Plan,
    qt: &[Lanes],
    hq: usize,
    cache: &HeadCache<'_>,
    state: &mut QuantState,
    res: &mut Residual,
) -> Result<()> {
    // SAFETY: this function's target features are the ones `Avx2` needs.
    unsafe { quantized_part::<Avx2>(plan, qt, hq, cache, state)? };
    residual_part(qt.len(), qt, hq, cache, res);
    Ok(())
}
