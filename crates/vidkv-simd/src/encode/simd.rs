//! The vector operations the encode/decode kernels are written in, one implementation per
//! instruction set (`x86.rs`, `neon.rs`). Kernels are generic over [`Simd`] and marked
//! `#[inline(always)]`, so they compile inside each level's `#[target_feature]` entry point.
//!
//! Every arithmetic operation is one IEEE operation per lane (no fused multiply-add), so a kernel
//! that vectorises *across tokens or channels* — never reassociating a sum — produces exactly the
//! bits of the scalar backend.

/// One instruction set's `N`-lane f32 vector.
///
/// # Safety
/// Every method requires the instruction set of the implementation; pointers must be valid for
/// the `N` elements (or `N` bytes) the method reads or writes.
pub(crate) unsafe trait Simd: Copy {
    /// Lanes.
    const N: usize;
    /// The vector.
    type F: Copy;

    /// Every lane `x`.
    unsafe fn splat(x: f32) -> Self::F;
    /// `N` f32 from `p`.
    unsafe fn load(p: *const f32) -> Self::F;
    /// Writes `N` f32 to `p`.
    unsafe fn store(p: *mut f32, v: Self::F);
    /// Lane `i` is `p[i·stride]`.
    unsafe fn gather(p: *const f32, stride: usize) -> Self::F;
    /// `N` little-endian f16 at `p`, widened.
    unsafe fn load_f16(p: *const u8) -> Self::F;
    /// `N` i8 at `p`, widened to f32.
    unsafe fn load_i8(p: *const i8) -> Self::F;
    /// Transposes an `N × N` tile: `dst[i·dst_stride + j] = src[j·src_stride + i]`.
    unsafe fn transpose(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize);
    /// `a + b`.
    unsafe fn add(a: Self::F, b: Self::F) -> Self::F;
    /// `a − b`.
    unsafe fn sub(a: Self::F, b: Self::F) -> Self::F;
    /// `a · b`.
    unsafe fn mul(a: Self::F, b: Self::F) -> Self::F;
    /// `a / b`.
    unsafe fn div(a: Self::F, b: Self::F) -> Self::F;
    /// Lane-wise minimum (either zero when both are zeros).
    unsafe fn min(a: Self::F, b: Self::F) -> Self::F;
    /// Lane-wise maximum (either zero when both are zeros).
    unsafe fn max(a: Self::F, b: Self::F) -> Self::F;
    /// Rounded to the nearest f16 (ties to even, overflow to infinity) and widened back.
    unsafe fn r16(a: Self::F) -> Self::F;
    /// `|a|`.
    unsafe fn abs(a: Self::F) -> Self::F;
    /// `x` where `x > t`, else `+0`.
    unsafe fn keep_gt(x: Self::F, t: Self::F) -> Self::F;
    /// `1` where `x > t`, else `0`.
    unsafe fn count_gt(x: Self::F, t: Self::F) -> Self::F;
    /// Bit `i` set where lane `i` is `≥ 0` (`−0` included).
    unsafe fn nonneg_bits(v: Self::F) -> u64;
    /// `clamp(round_half_even(t), 0, max)` as `N` bytes at `out`.
    unsafe fn store_codes(t: Self::F, max: f32, out: *mut u8);
    /// Base-3 trit digits `1 + (x > t) − (x < −t)` as `N` bytes at `out`.
    unsafe fn store_digits(x: Self::F, t: Self::F, out: *mut u8);
}

/// A portable implementation in `[f32; 8]` arrays (the compiler vectorises what it can); used by
/// the unit tests to check the kernels against the scalar backend on any host.
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Portable;

#[cfg(test)]
// SAFETY: plain array code, no instruction-set requirement.
unsafe impl Simd for Portable {
    const N: usize = 8;
    type F = [f32; 8];

    unsafe fn splat(x: f32) -> [f32; 8] {
        [x; 8]
    }
    unsafe fn load(p: *const f32) -> [f32; 8] {
        // SAFETY: the caller passes 8 readable f32.
        unsafe { core::array::from_fn(|i| *p.add(i)) }
    }
    unsafe fn store(p: *mut f32, v: [f32; 8]) {
        // SAFETY: the caller passes 8 writable f32.
        unsafe { (0..8).for_each(|i| *p.add(i) = v[i]) }
    }
    unsafe fn gather(p: *const f32, stride: usize) -> [f32; 8] {
        // SAFETY: the caller passes 8 readable strided f32.
        unsafe { core::array::from_fn(|i| *p.add(i * stride)) }
    }
    unsafe fn load_f16(p: *const u8) -> [f32; 8] {
        // SAFETY: the caller passes 16 readable bytes.
        unsafe {
            core::array::from_fn(|i| {
                half::f16::from_le_bytes([*p.add(2 * i), *p.add(2 * i + 1)]).to_f32()
            })
        }
    }
    unsafe fn load_i8(p: *const i8) -> [f32; 8] {
        // SAFETY: the caller passes 8 readable bytes.
        unsafe { core::array::from_fn(|i| f32::from(*p.add(i))) }
    }
    unsafe fn transpose(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // SAFETY: the caller passes readable and writable 8 × 8 tiles.
        unsafe { transpose_scalar(8, src, ss, dst, ds) }
    }
    unsafe fn add(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        core::array::from_fn(|i| a[i] + b[i])
    }
    unsafe fn sub(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        core::array::from_fn(|i| a[i] - b[i])
    }
    unsafe fn mul(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        core::array::from_fn(|i| a[i] * b[i])
    }
    unsafe fn div(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        core::array::from_fn(|i| a[i] / b[i])
    }
    unsafe fn min(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        core::array::from_fn(|i| if a[i] < b[i] { a[i] } else { b[i] })
    }
    unsafe fn max(a: [f32; 8], b: [f32; 8]) -> [f32; 8] {
        core::array::from_fn(|i| if a[i] > b[i] { a[i] } else { b[i] })
    }
    unsafe fn r16(a: [f32; 8]) -> [f32; 8] {
        a.map(|x| half::f16::from_f32(x).to_f32())
    }
    unsafe fn abs(a: [f32; 8]) -> [f32; 8] {
        a.map(f32::abs)
    }
    unsafe fn keep_gt(x: [f32; 8], t: [f32; 8]) -> [f32; 8] {
        core::array::from_fn(|i| if x[i] > t[i] { x[i] } else { 0.0 })
    }
    unsafe fn count_gt(x: [f32; 8], t: [f32; 8]) -> [f32; 8] {
        core::array::from_fn(|i| if x[i] > t[i] { 1.0 } else { 0.0 })
    }
    unsafe fn nonneg_bits(v: [f32; 8]) -> u64 {
        (0..8).fold(0, |b, i| b | u64::from(v[i] >= 0.0) << i)
    }
    unsafe fn store_codes(t: [f32; 8], max: f32, out: *mut u8) {
        // SAFETY: the caller passes 8 writable bytes.
        unsafe { (0..8).for_each(|i| *out.add(i) = libm::rintf(t[i]).clamp(0.0, max) as u8) }
    }
    unsafe fn store_digits(x: [f32; 8], t: [f32; 8], out: *mut u8) {
        // SAFETY: the caller passes 8 writable bytes.
        unsafe {
            (0..8).for_each(|i| {
                *out.add(i) = 1 + u8::from(x[i] > t[i]) - u8::from(x[i] < -t[i]);
            })
        }
    }
}

/// [`Simd::transpose`] of an `n × n` tile, element by element.
///
/// # Safety
/// `src` and `dst` must be readable/writable `n × n` tiles with the given strides.
#[cfg(any(test, target_arch = "aarch64"))]
#[inline(always)]
pub(crate) unsafe fn transpose_scalar(
    n: usize,
    src: *const f32,
    ss: usize,
    dst: *mut f32,
    ds: usize,
) {
    for i in 0..n {
        for j in 0..n {
            // SAFETY: inside both tiles (caller).
            unsafe { *dst.add(i * ds + j) = *src.add(j * ss + i) };
        }
    }
}
