//! Baseline: decode attention over a plain f16 cache (llama.cpp's layout, `[T, D]` rows per KV
//! head), the fair comparison for the packed kernel: F16C conversion, FMA, each K/V row read and
//! converted once for all query heads of the GQA group, online softmax over chunks of 32 tokens.

use core::arch::x86_64::*;

use crate::math::exp_approx;

const CHUNK: usize = 32;

macro_rules! f16_kernel {
    ($name:ident, $features:literal, $lanes:expr, $vec:ty, $cvt:expr, $fmadd:expr, $set1:expr,
     $zero:expr, $load:expr, $store:expr, $reduce:expr) => {
        /// Attention of `hq` queries over `t` f16 rows (`k`, `v`: LE f16 `[t, d]`).
        ///
        /// # Safety
        /// The CPU must support the listed target features; `d` is a multiple of the lane count.
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = $features)]
        pub(crate) unsafe fn $name(
            d: usize,
            q: &[f32],
            hq: usize,
            k: &[u8],
            v: &[u8],
            t: usize,
            scale: f32,
            out: &mut [f32],
        ) {
            const L: usize = $lanes;
            let nv = d / L;
            let mut kf = alloc::vec![0.0f32; CHUNK * d];
            let mut vf = alloc::vec![0.0f32; CHUNK * d];
            let mut o = alloc::vec![0.0f32; hq * d];
            let mut m = alloc::vec![f32::NEG_INFINITY; hq];
            let mut l = alloc::vec![0.0f32; hq];
            let mut s = [0.0f32; CHUNK];
            let qs: alloc::vec::Vec<f32> = q.iter().map(|x| x * scale).collect();
            let mut start = 0;
            while start < t {
                let n = CHUNK.min(t - start);
                // SAFETY: every pointer below stays inside `k`, `v`, `kf`, `vf`, `qs` or `o`
                // (rows `start..start + n` of `d` elements); target features as declared.
                unsafe {
                    let kp = k.as_ptr().add(2 * start * d);
                    let vp = v.as_ptr().add(2 * start * d);
                    for i in 0..n * nv {
                        $store(kf.as_mut_ptr().add(i * L), $cvt(kp.add(2 * i * L)));
                        $store(vf.as_mut_ptr().add(i * L), $cvt(vp.add(2 * i * L)));
                    }
                    for h in 0..hq {
                        let qh = qs.as_ptr().add(h * d);
                        for (tt, st) in s.iter_mut().enumerate().take(n) {
                            let kr = kf.as_ptr().add(tt * d);
                            let mut a0: $vec = $zero;
                            let mut a1: $vec = $zero;
                            let mut j = 0;
                            while j + 1 < nv {
                                a0 = $fmadd($load(qh.add(j * L)), $load(kr.add(j * L)), a0);
                                a1 = $fmadd(
                                    $load(qh.add((j + 1) * L)),
                                    $load(kr.add((j + 1) * L)),
                                    a1,
                                );
                                j += 2;
                            }
                            if j < nv {
                                a0 = $fmadd($load(qh.add(j * L)), $load(kr.add(j * L)), a0);
                            }
                            *st = $reduce(a0, a1);
                        }
                        let bmax = s[..n].iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
                        let mn = m[h].max(bmax);
                        let corr = exp_approx(m[h] - mn);
                        m[h] = mn;
                        let mut psum = 0.0;
                        for x in s[..n].iter_mut() {
                            *x = exp_approx(*x - mn);
                            psum += *x;
                        }
                        l[h] = l[h] * corr + psum;
                        let oh = o.as_mut_ptr().add(h * d);
                        let cv = $set1(corr);
                        // Accumulate in registers, 8 vectors at a time.
                        let mut j0 = 0;
                        while j0 < nv {
                            let w = 8.min(nv - j0);
                            let mut acc = [$zero; 8];
                            for (jj, a) in acc.iter_mut().enumerate().take(w) {
                                *a = $crate::x86::f16attn::mul(
                                    $load(oh.add((j0 + jj) * L)),
                                    cv,
                                );
                            }
                            for (tt, &p) in s[..n].iter().enumerate() {
                                let pv = $set1(p);
                                let vr = vf.as_ptr().add(tt * d + j0 * L);
                                for (jj, a) in acc.iter_mut().enumerate().take(w) {
                                    *a = $fmadd(pv, $load(vr.add(jj * L)), *a);
                                }
                            }
                            for (jj, a) in acc.iter().enumerate().take(w) {
                                $store(oh.add((j0 + jj) * L), *a);
                            }
                            j0 += w;
                        }
                    }
                }
                start += n;
            }
            for h in 0..hq {
                let inv = if l[h] > 0.0 { 1.0 / l[h] } else { 0.0 };
                for (dst, &x) in out[h * d..][..d].iter_mut().zip(&o[h * d..][..d]) {
                    *dst = x * inv;
                }
            }
        }
    };
}

/// Multiplication on either register width.
pub(crate) trait Mul: Sized {
    /// `a · b`.
    unsafe fn mul(self, b: Self) -> Self;
}

impl Mul for __m256 {
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        // SAFETY: AVX is implied by the calling kernel's features.
        unsafe { _mm256_mul_ps(self, b) }
    }
}

impl Mul for __m512 {
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        // SAFETY: AVX-512F is implied by the calling kernel's features.
        unsafe { _mm512_mul_ps(self, b) }
    }
}

#[inline(always)]
pub(crate) unsafe fn mul<V: Mul>(a: V, b: V) -> V {
    // SAFETY: forwarded contract.
    unsafe { a.mul(b) }
}

#[inline(always)]
unsafe fn hsum256(a: __m256, b: __m256) -> f32 {
    // SAFETY: AVX is implied by the calling kernel's features.
    unsafe {
        let s = _mm256_add_ps(a, b);
        let x = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        let x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        let x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
        _mm_cvtss_f32(x)
    }
}

f16_kernel!(
    attend_f16_avx2,
    "avx2,fma,f16c",
    8,
    __m256,
    |p: *const u8| _mm256_cvtph_ps(_mm_loadu_si128(p.cast())),
    |a, b, c| _mm256_fmadd_ps(a, b, c),
    |x| _mm256_set1_ps(x),
    _mm256_setzero_ps(),
    |p: *const f32| _mm256_loadu_ps(p),
    |p: *mut f32, v| _mm256_storeu_ps(p, v),
    |a, b| hsum256(a, b)
);

f16_kernel!(
    attend_f16_avx512,
    "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq",
    16,
    __m512,
    |p: *const u8| _mm512_cvtph_ps(_mm256_loadu_si256(p.cast())),
    |a, b, c| _mm512_fmadd_ps(a, b, c),
    |x| _mm512_set1_ps(x),
    _mm512_setzero_ps(),
    |p: *const f32| _mm512_loadu_ps(p),
    |p: *mut f32, v| _mm512_storeu_ps(p, v),
    |a, b| _mm512_reduce_add_ps(_mm512_add_ps(a, b))
);
