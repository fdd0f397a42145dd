//! [`Simd`] for AVX2 + FMA + F16C (8 lanes) and AVX-512 F/BW/VL/DQ (16 lanes), and the levels'
//! `#[target_feature]` entry points of the encode/decode kernels.

use core::arch::x86_64::*;

use super::simd::Simd;

const ROUND: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

/// AVX2 + FMA + F16C.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx2;

// SAFETY: every method is only reached from `#[target_feature(enable = "avx2,fma,f16c")]`
// entry points, entered after run-time detection (`level::check`).
unsafe impl Simd for Avx2 {
    const N: usize = 8;
    type F = __m256;

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m256 {
        // SAFETY: AVX is available (trait contract).
        unsafe { _mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        // SAFETY: 8 readable f32 (trait contract).
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        // SAFETY: 8 writable f32 (trait contract).
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn gather(p: *const f32, stride: usize) -> __m256 {
        // SAFETY: 8 readable strided f32 (trait contract); offsets fit i32 (blocks are small).
        unsafe {
            let idx = _mm256_mullo_epi32(
                _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                _mm256_set1_epi32(stride as i32),
            );
            _mm256_i32gather_ps::<4>(p, idx)
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> __m256 {
        // SAFETY: 16 readable bytes; F16C is available.
        unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> __m256 {
        // SAFETY: 8 readable bytes; AVX2.
        unsafe { _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(p.cast()))) }
    }
    #[inline(always)]
    unsafe fn transpose(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // SAFETY: AVX; readable and writable 8 × 8 tiles (trait contract).
        unsafe { transpose8(src, ss, dst, ds) }
    }
    #[inline(always)]
    unsafe fn add(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX.
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX.
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX.
        unsafe { _mm256_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX.
        unsafe { _mm256_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX.
        unsafe { _mm256_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: __m256, b: __m256) -> __m256 {
        // SAFETY: AVX.
        unsafe { _mm256_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn r16(a: __m256) -> __m256 {
        // SAFETY: F16C.
        unsafe { _mm256_cvtph_ps(_mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(a)) }
    }
    #[inline(always)]
    unsafe fn abs(a: __m256) -> __m256 {
        // SAFETY: AVX.
        unsafe { _mm256_andnot_ps(_mm256_set1_ps(-0.0), a) }
    }
    #[inline(always)]
    unsafe fn keep_gt(x: __m256, t: __m256) -> __m256 {
        // SAFETY: AVX.
        unsafe { _mm256_and_ps(x, _mm256_cmp_ps::<_CMP_GT_OQ>(x, t)) }
    }
    #[inline(always)]
    unsafe fn count_gt(x: __m256, t: __m256) -> __m256 {
        // SAFETY: AVX.
        unsafe { _mm256_and_ps(_mm256_set1_ps(1.0), _mm256_cmp_ps::<_CMP_GT_OQ>(x, t)) }
    }
    #[inline(always)]
    unsafe fn nonneg_bits(v: __m256) -> u64 {
        // SAFETY: AVX.
        unsafe {
            _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_GE_OQ>(v, _mm256_setzero_ps())) as u32 as u64
        }
    }
    #[inline(always)]
    unsafe fn store_codes(t: __m256, max: f32, out: *mut u8) {
        // SAFETY: AVX2; 8 writable bytes.
        unsafe {
            let r = _mm256_round_ps::<ROUND>(t);
            let c = _mm256_max_ps(_mm256_min_ps(r, _mm256_set1_ps(max)), _mm256_setzero_ps());
            store_bytes8(_mm256_cvttps_epi32(c), out);
        }
    }
    #[inline(always)]
    unsafe fn store_digits(x: __m256, t: __m256, out: *mut u8) {
        // SAFETY: AVX2; 8 writable bytes. Comparison masks are −1 where true.
        unsafe {
            let neg = _mm256_sub_ps(_mm256_setzero_ps(), t);
            let gt = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GT_OQ>(x, t));
            let lt = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(x, neg));
            let d = _mm256_add_epi32(_mm256_sub_epi32(_mm256_set1_epi32(1), gt), lt);
            store_bytes8(d, out);
        }
    }
}

/// Transposes an 8 × 8 tile of f32 (unpack, shuffle, then exchange 128-bit halves).
#[inline(always)]
unsafe fn transpose8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    // SAFETY: AVX (caller); eight readable rows of 8 at `src`, eight writable at `dst`.
    unsafe {
        let r: [__m256; 8] = core::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
        let t: [__m256; 8] = core::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm256_unpacklo_ps(a, b)
            } else {
                _mm256_unpackhi_ps(a, b)
            }
        });
        // s[0..4] from rows 0–3, s[4..8] from rows 4–7: columns (0,4), (1,5), (2,6), (3,7).
        let s: [__m256; 8] = core::array::from_fn(|i| {
            let base = i / 4 * 4;
            let (a, b) = (t[base + (i % 4) / 2], t[base + 2 + (i % 4) / 2]);
            if i % 2 == 0 {
                _mm256_shuffle_ps::<0x44>(a, b)
            } else {
                _mm256_shuffle_ps::<0xEE>(a, b)
            }
        });
        for i in 0..4 {
            _mm256_storeu_ps(
                dst.add(i * ds),
                _mm256_permute2f128_ps::<0x20>(s[i], s[i + 4]),
            );
            _mm256_storeu_ps(
                dst.add((i + 4) * ds),
                _mm256_permute2f128_ps::<0x31>(s[i], s[i + 4]),
            );
        }
    }
}

/// Narrows eight i32 in `0..=255` to bytes and writes them.
#[inline(always)]
unsafe fn store_bytes8(v: __m256i, out: *mut u8) {
    // SAFETY: AVX2 (caller); 8 writable bytes.
    unsafe {
        let w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        _mm_storel_epi64(out.cast(), _mm_packus_epi16(w, w));
    }
}

/// AVX-512 F/BW/VL/DQ.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Avx512;

// SAFETY: every method is only reached from `#[target_feature(enable = "avx512f,avx512bw,…")]`
// entry points, entered after run-time detection (`level::check`).
unsafe impl Simd for Avx512 {
    const N: usize = 16;
    type F = __m512;

    #[inline(always)]
    unsafe fn splat(x: f32) -> __m512 {
        // SAFETY: AVX-512F.
        unsafe { _mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        // SAFETY: 16 readable f32.
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        // SAFETY: 16 writable f32.
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn gather(p: *const f32, stride: usize) -> __m512 {
        // SAFETY: 16 readable strided f32; offsets fit i32 (blocks are small).
        unsafe {
            let iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
            let idx = _mm512_mullo_epi32(iota, _mm512_set1_epi32(stride as i32));
            _mm512_i32gather_ps::<4>(idx, p)
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> __m512 {
        // SAFETY: 32 readable bytes.
        unsafe { _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())) }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> __m512 {
        // SAFETY: 16 readable bytes; AVX-512F.
        unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(p.cast()))) }
    }
    #[inline(always)]
    unsafe fn transpose(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // SAFETY: AVX (implied); readable and writable 16 × 16 tiles, split into 8 × 8 ones.
        unsafe {
            for (i, j) in [(0, 0), (0, 8), (8, 0), (8, 8)] {
                transpose8(src.add(i * ss + j), ss, dst.add(j * ds + i), ds);
            }
        }
    }
    #[inline(always)]
    unsafe fn add(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F.
        unsafe { _mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F.
        unsafe { _mm512_sub_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F.
        unsafe { _mm512_mul_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F.
        unsafe { _mm512_div_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F.
        unsafe { _mm512_min_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: __m512, b: __m512) -> __m512 {
        // SAFETY: AVX-512F.
        unsafe { _mm512_max_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn r16(a: __m512) -> __m512 {
        // SAFETY: AVX-512F.
        unsafe { _mm512_cvtph_ps(_mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(a)) }
    }
    #[inline(always)]
    unsafe fn abs(a: __m512) -> __m512 {
        // SAFETY: AVX-512F.
        unsafe { _mm512_abs_ps(a) }
    }
    #[inline(always)]
    unsafe fn keep_gt(x: __m512, t: __m512) -> __m512 {
        // SAFETY: AVX-512F.
        unsafe { _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, t), x) }
    }
    #[inline(always)]
    unsafe fn count_gt(x: __m512, t: __m512) -> __m512 {
        // SAFETY: AVX-512F.
        unsafe { _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, t), _mm512_set1_ps(1.0)) }
    }
    #[inline(always)]
    unsafe fn nonneg_bits(v: __m512) -> u64 {
        // SAFETY: AVX-512F.
        unsafe { u64::from(_mm512_cmp_ps_mask::<_CMP_GE_OQ>(v, _mm512_setzero_ps())) }
    }
    #[inline(always)]
    unsafe fn store_codes(t: __m512, max: f32, out: *mut u8) {
        // SAFETY: AVX-512F; 16 writable bytes.
        unsafe {
            let r = _mm512_roundscale_ps::<ROUND>(t);
            let c = _mm512_max_ps(_mm512_min_ps(r, _mm512_set1_ps(max)), _mm512_setzero_ps());
            _mm_storeu_si128(out.cast(), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(c)));
        }
    }
    #[inline(always)]
    unsafe fn store_digits(x: __m512, t: __m512, out: *mut u8) {
        // SAFETY: AVX-512F/BW/VL; 16 writable bytes.
        unsafe {
            let neg = _mm512_sub_ps(_mm512_setzero_ps(), t);
            let gt = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(x, t);
            let lt = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, neg);
            let one = _mm_set1_epi8(1);
            let d = _mm_mask_sub_epi8(_mm_mask_add_epi8(one, gt, one, one), lt, one, one);
            // lanes with both bits cannot exist (t ≥ 0), so `one − 1` is right for `lt`.
            _mm_storeu_si128(out.cast(), d);
        }
    }
}

super::entry_points!(
    Avx2,
    "avx2,fma,f16c",
    keys_avx2,
    values_avx2,
    decode_avx2,
    affine_avx2
);
super::entry_points!(
    Avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq",
    keys_avx512,
    values_avx512,
    decode_avx512,
    affine_avx512
);
