//! AVX-512 (F/BW/VL/DQ): the 256-bit kernel with 32 vector registers, and with VNNI the integer
//! dot product is one `vpdpbusd` (no saturation, so outlier weights use the full int8 range).

use core::arch::x86_64::*;

use vidkv_core::Result;

use super::avx2::{Avx2, ops};
use crate::attend::{HeadCache, Residual, residual_part};
use crate::fft::Lanes;
use crate::kernel::{Isa, Plan, QuantState, quantized_part};

/// AVX-512 with VNNI for [`crate::kernel`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512Vnni;

impl Isa for Avx512Vnni {
    type V = __m256i;
    const LANE_QMAX: f32 = 127.0;
    const OUT_QMAX: f32 = 127.0;
    const P_MAX: f32 = 255.0;
    const LANE_CODE: [f32; 8] = Avx2::LANE_CODE;
    const OUT_CODE: [f32; 4] = Avx2::OUT_CODE;
    const VAL_CHUNK: usize = 20;

    #[inline(always)]
    unsafe fn zero() -> __m256i {
        // SAFETY: the caller guarantees AVX-512.
        unsafe { _mm256_setzero_si256() }
    }
    #[inline(always)]
    unsafe fn splat(x: u32) -> __m256i {
        // SAFETY: the caller guarantees AVX-512.
        unsafe { _mm256_set1_epi32(x as i32) }
    }
    #[inline(always)]
    unsafe fn store_i32(v: __m256i, out: &mut [i32; 8]) {
        // SAFETY: `out` is 32 writable bytes.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) }
    }
    #[inline(always)]
    unsafe fn dot(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
        // SAFETY: the caller guarantees AVX-512 VL and VNNI.
        unsafe { _mm256_dpbusd_epi32(acc, a, b) }
    }
    #[inline(always)]
    unsafe fn lane_codes(chunk: *const u8, out: &mut [__m256i; 4]) {
        // SAFETY: forwarded contract (AVX-512 implies AVX2 here).
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

/// Quantized blocks and residual with AVX-512 + VNNI.
///
/// # Safety
/// The CPU must support the AVX-512 level and AVX-512 VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")]
pub(crate) unsafe fn attend_vnni(
    plan: &Plan,
    qt: &[Lanes],
    hq: usize,
    cache: &HeadCache<'_>,
    state: &mut QuantState,
    res: &mut Residual,
) -> Result<()> {
    // SAFETY: this function's target features are the ones `Avx512Vnni` needs.
    unsafe { quantized_part::<Avx512Vnni>(plan, qt, hq, cache, state)? };
    residual_part(qt.len(), qt, hq, cache, res);
    Ok(())
}

/// Quantized blocks and residual with AVX-512 without VNNI (`pmaddubsw` dot products).
///
/// # Safety
/// The CPU must support the AVX-512 level.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")]
pub(crate) unsafe fn attend(
    plan: &Plan,
    qt: &[Lanes],
    hq: usize,
    cache: &HeadCache<'_>,
    state: &mut QuantState,
    res: &mut Residual,
) -> Result<()> {
    // SAFETY: AVX-512 implies the AVX2 features `Avx2` needs.
    unsafe { quantized_part::<Avx2>(plan, qt, hq, cache, state)? };
    residual_part(qt.len(), qt, hq, cache, res);
    Ok(())
}
