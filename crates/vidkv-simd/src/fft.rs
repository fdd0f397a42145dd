//! The transform adjoint `w = T⁻ᵀ(q)` for many queries at once, structure-of-arrays: element
//! `n` of a row is a `[f32; W]` holding that element for `W` queries, so every operation below
//! is one SIMD operation once the caller is compiled with a vector target feature.
//!
//! For the FFT, `w_j = c_k/M · (Re X_k or Im X_k)` with `X = DFT(q)` (forward, unnormalised) and
//! `c_k` = 1 at DC and Nyquist, 2 elsewhere — the adjoint of the one-sided inverse (see
//! `vidkv_cpu::transform`). A power-of-two `M ≥ 4` uses a half-length complex FFT; other sizes
//! and Hadamard use the dense matrix, Identity is a copy.

use alloc::vec;
use alloc::vec::Vec;
use core::f64::consts::PI;

use vidkv_core::Transform;
use vidkv_cpu::transform::LaneTransform;

/// Queries per structure-of-arrays row.
pub const W: usize = 8;

/// A row element for `W` queries.
pub type Lanes = [f32; W];

/// One row element of the adjoint: the same element for several queries (and blocks).
/// `[f32; L]` is the portable row; a level may supply a register type.
pub(crate) trait Row: Copy {
    /// All zero.
    fn zero() -> Self;
    /// `self + b`.
    fn add(self, b: Self) -> Self;
    /// `self − b`.
    fn sub(self, b: Self) -> Self;
    /// `self · s`.
    fn scale(self, s: f32) -> Self;
    /// `self + a · s`.
    fn mul_add(self, a: Self, s: f32) -> Self;
}

impl<const L: usize> Row for [f32; L] {
    #[inline(always)]
    fn zero() -> Self {
        [0.0; L]
    }
    #[inline(always)]
    fn add(self, b: Self) -> Self {
        core::array::from_fn(|i| self[i] + b[i])
    }
    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        core::array::from_fn(|i| self[i] - b[i])
    }
    #[inline(always)]
    fn scale(self, s: f32) -> Self {
        core::array::from_fn(|i| self[i] * s)
    }
    #[inline(always)]
    fn mul_add(self, a: Self, s: f32) -> Self {
        core::array::from_fn(|i| self[i] + a[i] * s)
    }
}

#[inline(always)]
fn add<R: Row>(a: R, b: R) -> R {
    a.add(b)
}
#[inline(always)]
fn sub<R: Row>(a: R, b: R) -> R {
    a.sub(b)
}
#[inline(always)]
fn scale<R: Row>(a: R, s: f32) -> R {
    a.scale(s)
}
#[inline(always)]
fn mul_add<R: Row>(acc: R, a: R, s: f32) -> R {
    acc.mul_add(a, s)
}

/// Precomputed adjoint of one lane transform.
#[derive(Debug, Clone)]
pub enum Adjoint {
    /// Copy (Identity).
    Copy,
    /// Half-length complex FFT (power-of-two M ≥ 4).
    Fft {
        /// M.
        m: usize,
        /// Bit-reversal permutation of M/2.
        rev: Vec<usize>,
        /// `e^{−2πi k/M}` for k < M/2: (cos, −sin).
        tw: Vec<(f32, f32)>,
        /// `tw[k] / M`: the final untangling step with the adjoint's scaling folded in.
        tw_m: Vec<(f32, f32)>,
    },
    /// Dense `M × M` matrix, row-major: `w_j = Σ_n a[j·M + n]·q_n`.
    Dense {
        /// M.
        m: usize,
        /// The matrix.
        a: Vec<f32>,
    },
}

impl Adjoint {
    /// Builds the adjoint for `kind` on `m` lanes.
    pub fn new(kind: Transform, m: usize) -> Self {
        match kind {
            Transform::Identity => Adjoint::Copy,
            Transform::Fft if m >= 4 && m.is_power_of_two() => {
                let half = m / 2;
                let bits = half.trailing_zeros();
                let rev = (0..half)
                    .map(|i| i.reverse_bits() >> (usize::BITS - bits))
                    .collect();
                let tw: Vec<(f32, f32)> = (0..half)
                    .map(|k| {
                        let a = 2.0 * PI * k as f64 / m as f64;
                        (libm::cos(a) as f32, -libm::sin(a) as f32)
                    })
                    .collect();
                let tw_m = tw
                    .iter()
                    .map(|&(c, s)| (c / m as f32, s / m as f32))
                    .collect();
                Adjoint::Fft { m, rev, tw, tw_m }
            }
            _ => {
                let t = LaneTransform::new(kind, m);
                let mut a = vec![0.0f32; m * m];
                let (mut e, mut col) = (vec![0.0f32; m], vec![0.0f32; m]);
                for n in 0..m {
                    e.iter_mut().for_each(|v| *v = 0.0);
                    e[n] = 1.0;
                    t.inverse_adjoint(&e, &mut col);
                    for (j, &v) in col.iter().enumerate() {
                        a[j * m + n] = v;
                    }
                }
                Adjoint::Dense { m, a }
            }
        }
    }

    /// `w = T⁻ᵀ(x)` for `L` queries (8, or 16: two blocks' 8 queries side by side);
    /// `scratch` holds at least `2·M` rows.
    #[inline(always)]
    pub(crate) fn apply<R: Row>(&self, x: &[R], w: &mut [R], scratch: &mut [R]) {
        match self {
            Adjoint::Copy => w.copy_from_slice(x),
            Adjoint::Dense { m, a } => {
                for (j, wj) in w.iter_mut().enumerate().take(*m) {
                    let row = &a[j * m..][..*m];
                    let mut acc = R::zero();
                    for (xn, &c) in x.iter().zip(row) {
                        acc = mul_add(acc, *xn, c);
                    }
                    *wj = acc;
                }
            }
            Adjoint::Fft { m, rev, tw, tw_m } => {
                let t = Twiddles { rev, tw, tw_m };
                match m / 2 {
                    // Fixed sizes let the compiler unroll the stages and drop bounds checks.
                    16 => fft_adjoint_fixed::<16, R>(&t, x, w, scratch),
                    32 => fft_adjoint_fixed::<32, R>(&t, x, w, scratch),
                    64 => fft_adjoint_fixed::<64, R>(&t, x, w, scratch),
                    _ => fft_adjoint(*m, rev, tw, x, w, scratch),
                }
            }
        }
    }
}

/// The tables of a power-of-two FFT adjoint.
struct Twiddles<'a> {
    rev: &'a [usize],
    tw: &'a [(f32, f32)],
    tw_m: &'a [(f32, f32)],
}

/// [`fft_adjoint`] for `M = 2·N`, with the trivial twiddles (1 and −i) of the first two stages
/// skipped and the final scaling folded into the untangling twiddles.
#[inline(always)]
fn fft_adjoint_fixed<const N: usize, R: Row>(
    t: &Twiddles<'_>,
    x: &[R],
    w: &mut [R],
    scratch: &mut [R],
) {
    let (re, im) = scratch[..2 * N].split_at_mut(N);
    let re: &mut [R; N] = re.try_into().expect("scratch holds M rows");
    let im: &mut [R; N] = im.try_into().expect("scratch holds M rows");
    let x: &[R] = &x[..2 * N];
    let rev: &[usize] = &t.rev[..N];
    let tw: &[(f32, f32)] = &t.tw[..N];
    // Bit reversal fused with the first stage (span 1, twiddle 1).
    for p in 0..N / 2 {
        let (a, b) = (rev[2 * p], rev[2 * p + 1]);
        let (ar, ai, br, bi) = (x[2 * a], x[2 * a + 1], x[2 * b], x[2 * b + 1]);
        re[2 * p] = add(ar, br);
        im[2 * p] = add(ai, bi);
        re[2 * p + 1] = sub(ar, br);
        im[2 * p + 1] = sub(ai, bi);
    }
    let mut span = 2;
    while span < N {
        let step = 2 * N / (2 * span);
        for start in (0..N).step_by(2 * span) {
            for i in 0..span {
                let (a, b) = (start + i, start + i + span);
                let (br, bi) = (re[b], im[b]);
                let (tr, ti) = if i == 0 {
                    (br, bi)
                } else if 4 * i == 2 * span {
                    // e^{−iπ/2} = −i
                    (bi, scale(br, -1.0))
                } else {
                    let (c, s) = tw[i * step];
                    (
                        sub(scale(br, c), scale(bi, s)),
                        add(scale(br, s), scale(bi, c)),
                    )
                };
                re[b] = sub(re[a], tr);
                im[b] = sub(im[a], ti);
                re[a] = add(re[a], tr);
                im[a] = add(im[a], ti);
            }
        }
        span *= 2;
    }
    let inv_m = 1.0 / (2 * N) as f32;
    w[0] = scale(add(re[0], im[0]), inv_m);
    w[2 * N - 1] = scale(sub(re[0], im[0]), inv_m);
    for k in 1..N {
        let nk = N - k;
        // 2E = Z_k + conj Z_{N−k}, 2O = (Z_k − conj Z_{N−k})/i; w = (2/M)(E + t·O).
        let er = add(re[k], re[nk]);
        let ei = sub(im[k], im[nk]);
        let or = add(im[k], im[nk]);
        let oi = sub(re[nk], re[k]);
        let (c, s) = t.tw_m[k];
        w[2 * k - 1] = mul_add(sub(scale(or, c), scale(oi, s)), er, inv_m);
        w[2 * k] = mul_add(add(scale(or, s), scale(oi, c)), ei, inv_m);
    }
}

/// Real DFT of M points through a complex FFT of M/2 points, then the adjoint's lane scaling.
#[inline(always)]
fn fft_adjoint<R: Row>(
    m: usize,
    rev: &[usize],
    tw: &[(f32, f32)],
    x: &[R],
    w: &mut [R],
    scratch: &mut [R],
) {
    let half = m / 2;
    let (re, im) = scratch[..2 * half].split_at_mut(half);
    // z_n = x_2n + i x_2n+1, in bit-reversed order.
    for (n, &r) in rev.iter().enumerate() {
        re[r] = x[2 * n];
        im[r] = x[2 * n + 1];
    }
    // Radix-2 DIT butterflies; twiddle for span `s` at index i is e^{−2πi·i/(2s)} = tw[i·M/(2s)].
    let mut span = 1;
    while span < half {
        let step = m / (2 * span);
        for start in (0..half).step_by(2 * span) {
            for i in 0..span {
                let (c, s) = tw[i * step];
                let (a, b) = (start + i, start + i + span);
                let (br, bi) = (re[b], im[b]);
                let tr = sub(scale(br, c), scale(bi, s));
                let ti = add(scale(br, s), scale(bi, c));
                re[b] = sub(re[a], tr);
                im[b] = sub(im[a], ti);
                re[a] = add(re[a], tr);
                im[a] = add(im[a], ti);
            }
        }
        span *= 2;
    }
    // X_k = (Z_k + conj Z_{N−k})/2 − i/2 · e^{−2πik/M} (Z_k − conj Z_{N−k}), k = 0..=N.
    let inv_m = 1.0 / m as f32;
    // k = 0 and k = N (Nyquist) from Z_0: X_0 = Re Z0 + Im Z0, X_N = Re Z0 − Im Z0.
    w[0] = scale(add(re[0], im[0]), inv_m);
    w[m - 1] = scale(sub(re[0], im[0]), inv_m);
    for k in 1..half {
        let nk = half - k;
        let (zr, zi, yr, yi) = (re[k], im[k], re[nk], im[nk]);
        // E = (Z_k + conj Z_{N−k})/2, O = (Z_k − conj Z_{N−k})/(2i)
        let er = scale(add(zr, yr), 0.5);
        let ei = scale(sub(zi, yi), 0.5);
        let or = scale(add(zi, yi), 0.5);
        let oi = scale(sub(yr, zr), 0.5);
        let (c, s) = tw[k];
        // X_k = E + t·O with t = c + i s
        let xr = add(er, sub(scale(or, c), scale(oi, s)));
        let xi = add(ei, add(scale(or, s), scale(oi, c)));
        w[2 * k - 1] = scale(xr, 2.0 * inv_m);
        w[2 * k] = scale(xi, 2.0 * inv_m);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soa_adjoint_matches_the_scalar_adjoint() {
        for (kind, m) in [
            (Transform::Fft, 64),
            (Transform::Fft, 4),
            (Transform::Fft, 32),
            (Transform::Fft, 128),
            (Transform::Fft, 40),
            (Transform::Fft, 7),
            (Transform::Hadamard, 64),
            (Transform::Identity, 10),
        ] {
            let adj = Adjoint::new(kind, m);
            let t = LaneTransform::new(kind, m);
            let x: Vec<Lanes> = (0..m)
                .map(|n| core::array::from_fn(|h| libm::sinf((n * 7 + h * 3) as f32 * 0.37) * 2.0))
                .collect();
            let mut w = vec![[0.0; W]; m];
            let mut scratch = vec![[0.0; W]; 2 * m];
            adj.apply(&x, &mut w, &mut scratch);
            for h in 0..W {
                let q: Vec<f32> = x.iter().map(|r| r[h]).collect();
                let mut want = vec![0.0; m];
                t.inverse_adjoint(&q, &mut want);
                for j in 0..m {
                    assert!(
                        (w[j][h] - want[j]).abs() < 1e-5,
                        "{kind:?} m={m} h={h} j={j}: {} vs {}",
                        w[j][h],
                        want[j]
                    );
                }
            }
        }
    }
}
