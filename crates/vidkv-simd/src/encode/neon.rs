//! [`Simd`] for aarch64 Advanced SIMD (4 lanes) and the NEON entry points of the encoders.

use core::arch::aarch64::*;

use super::simd::Simd;

/// NEON.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Neon;

// SAFETY: every method is only reached from `#[target_feature(enable = "neon")]` entry points,
// entered after run-time detection (`level::check`).
unsafe impl Simd for Neon {
    const N: usize = 4;
    type F = float32x4_t;

    #[inline(always)]
    unsafe fn splat(x: f32) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vdupq_n_f32(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> float32x4_t {
        // SAFETY: 4 readable f32.
        unsafe { vld1q_f32(p) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: float32x4_t) {
        // SAFETY: 4 writable f32.
        unsafe { vst1q_f32(p, v) }
    }
    #[inline(always)]
    unsafe fn gather(p: *const f32, stride: usize) -> float32x4_t {
        // SAFETY: 4 readable strided f32.
        unsafe {
            let a = [*p, *p.add(stride), *p.add(2 * stride), *p.add(3 * stride)];
            vld1q_f32(a.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> float32x4_t {
        // SAFETY: 8 readable bytes.
        unsafe {
            let a: [f32; 4] = core::array::from_fn(|i| {
                half::f16::from_le_bytes([*p.add(2 * i), *p.add(2 * i + 1)]).to_f32()
            });
            vld1q_f32(a.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> float32x4_t {
        // SAFETY: 4 readable bytes.
        unsafe {
            let a: [f32; 4] = core::array::from_fn(|i| f32::from(*p.add(i)));
            vld1q_f32(a.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn transpose(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // SAFETY: readable and writable 4 × 4 tiles (trait contract).
        unsafe { super::simd::transpose_scalar(4, src, ss, dst, ds) }
    }
    #[inline(always)]
    unsafe fn add(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vaddq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn sub(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vsubq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vmulq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn div(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vdivq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn min(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vminq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn max(a: float32x4_t, b: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vmaxq_f32(a, b) }
    }
    #[inline(always)]
    unsafe fn r16(a: float32x4_t) -> float32x4_t {
        // SAFETY: NEON; a 4-element array round trip.
        unsafe {
            let mut x = [0.0f32; 4];
            vst1q_f32(x.as_mut_ptr(), a);
            let r = x.map(|v| half::f16::from_f32(v).to_f32());
            vld1q_f32(r.as_ptr())
        }
    }
    #[inline(always)]
    unsafe fn abs(a: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vabsq_f32(a) }
    }
    #[inline(always)]
    unsafe fn keep_gt(x: float32x4_t, t: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe { vreinterpretq_f32_u32(vandq_u32(vcgtq_f32(x, t), vreinterpretq_u32_f32(x))) }
    }
    #[inline(always)]
    unsafe fn count_gt(x: float32x4_t, t: float32x4_t) -> float32x4_t {
        // SAFETY: NEON.
        unsafe {
            let one = vreinterpretq_u32_f32(vdupq_n_f32(1.0));
            vreinterpretq_f32_u32(vandq_u32(vcgtq_f32(x, t), one))
        }
    }
    #[inline(always)]
    unsafe fn nonneg_bits(v: float32x4_t) -> u64 {
        // SAFETY: NEON.
        unsafe {
            let m = vcgezq_f32(v);
            let weights = vld1q_u32([1u32, 2, 4, 8].as_ptr());
            u64::from(vaddvq_u32(vandq_u32(m, weights)))
        }
    }
    #[inline(always)]
    unsafe fn store_codes(t: float32x4_t, max: f32, out: *mut u8) {
        // SAFETY: NEON; 4 writable bytes.
        unsafe {
            let r = vrndnq_f32(t);
            let c = vmaxq_f32(vminq_f32(r, vdupq_n_f32(max)), vdupq_n_f32(0.0));
            let mut a = [0u32; 4];
            vst1q_u32(a.as_mut_ptr(), vcvtq_u32_f32(c));
            (0..4).for_each(|i| *out.add(i) = a[i] as u8);
        }
    }
    #[inline(always)]
    unsafe fn store_digits(x: float32x4_t, t: float32x4_t, out: *mut u8) {
        // SAFETY: NEON; 4 writable bytes. Comparison masks are all ones (−1) where true.
        unsafe {
            let gt = vreinterpretq_s32_u32(vcgtq_f32(x, t));
            let lt = vreinterpretq_s32_u32(vcltq_f32(x, vnegq_f32(t)));
            let d = vaddq_s32(vsubq_s32(vdupq_n_s32(1), gt), lt);
            let mut a = [0i32; 4];
            vst1q_s32(a.as_mut_ptr(), d);
            (0..4).for_each(|i| *out.add(i) = a[i] as u8);
        }
    }
}

super::entry_points!(
    Neon,
    "neon",
    keys_neon,
    values_neon,
    decode_neon,
    affine_neon
);
