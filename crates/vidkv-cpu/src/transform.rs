//! Transforms of the normal key channels: one-sided real DFT, orthonormal Walsh–Hadamard,
//! identity. Each has a forward map (encode), an inverse (decode) and, for fused attention, the
//! adjoint of the inverse (`q · T⁻¹(ẑ) = T⁻ᵀ(q) · ẑ`).
//!
//! The one-sided DFT of M reals is stored as exactly M reals:
//! `[Re X0, Re X1, Im X1, …, Re X(M/2−1), Im X(M/2−1), Re X(M/2)]` for even M, and
//! `[Re X0, Re X1, Im X1, …, Re X((M−1)/2), Im X((M−1)/2)]` for odd M. The forward DFT is
//! unnormalised (as numpy/torch `fft`); the inverse carries the 1/M factor.

use alloc::vec;
use alloc::vec::Vec;
use core::f64::consts::PI;

use vidkv_core::Transform;

/// Whether lane `j` of a one-sided spectrum holds an imaginary part.
pub fn is_imaginary_lane(j: usize) -> bool {
    j > 0 && j.is_multiple_of(2)
}

/// A transform of fixed length M with its precomputed tables.
#[derive(Debug, Clone)]
pub struct LaneTransform {
    kind: Transform,
    len: usize,
    /// `cos(2πi/M)` and `sin(2πi/M)` for i in 0..M (DFT only).
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The bit-reversal permutation (power-of-two DFT only).
    reversed: Vec<u32>,
    /// Twiddles by stage: entries `half..2·half` are `cos(πi/half)`, `−sin(πi/half)`.
    stage_cos: Vec<f32>,
    stage_sin: Vec<f32>,
    /// Per lane j: bin k, mirror bin (M − k) mod M, imaginary part or not, and `weight(k)/(2M)`.
    split: Vec<(u32, u32, bool, f32)>,
}

impl LaneTransform {
    /// Builds the transform of `len` lanes (Hadamard requires a power of two; validated by
    /// `QuantConfig::validate`).
    pub fn new(kind: Transform, len: usize) -> Self {
        let (cos, sin) = if kind == Transform::Fft {
            (0..len)
                .map(|i| {
                    let a = 2.0 * PI * i as f64 / len as f64;
                    (libm::cos(a) as f32, libm::sin(a) as f32)
                })
                .unzip()
        } else {
            (Vec::new(), Vec::new())
        };
        let reversed = if kind == Transform::Fft && len.is_power_of_two() && len > 1 {
            let bits = len.trailing_zeros();
            (0..len)
                .map(|n| (n.reverse_bits() >> (usize::BITS - bits)) as u32)
                .collect()
        } else {
            alloc::vec![0; len.min(1)]
        };
        let (mut stage_cos, mut stage_sin) =
            (alloc::vec![0.0; len.max(1)], alloc::vec![0.0; len.max(1)]);
        let mut split = Vec::new();
        if kind == Transform::Fft && len.is_power_of_two() {
            let mut half = 1;
            while half < len {
                for i in 0..half {
                    stage_cos[half + i] = cos[i * len / (2 * half)];
                    stage_sin[half + i] = -sin[i * len / (2 * half)];
                }
                half *= 2;
            }
            split = (0..len)
                .map(|j| {
                    let (k, imaginary) = lane_bin(j);
                    let scale = (bin_weight(k, len) / len as f64 * 0.5) as f32;
                    (k as u32, ((len - k) % len) as u32, imaginary, scale)
                })
                .collect();
        }
        Self {
            kind,
            len,
            cos,
            sin,
            reversed,
            stage_cos,
            stage_sin,
            split,
        }
    }

    /// Number of lanes M.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether M = 0 (every channel is an outlier).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The transform kind.
    pub fn kind(&self) -> Transform {
        self.kind
    }

    /// The DFT table `(cos(2πi/M), sin(2πi/M))` for i < M as the forward transform uses it, so
    /// that other backends run bit-identical butterflies (empty for Hadamard and Identity).
    pub fn dft_table(&self) -> (&[f32], &[f32]) {
        (&self.cos, &self.sin)
    }

    /// `z = T(x)` for one row of M values.
    pub fn forward(&self, x: &[f32], z: &mut [f32]) {
        match self.kind {
            Transform::Identity => z.copy_from_slice(x),
            Transform::Hadamard => {
                z.copy_from_slice(x);
                hadamard_orthonormal(z);
            }
            Transform::Fft if self.len.is_power_of_two() => self.forward_radix2(x, z),
            Transform::Fft => self.forward_direct(x, z),
        }
    }

    /// `x = T⁻¹(z)` for one row of M values.
    pub fn inverse(&self, z: &[f32], x: &mut [f32]) {
        match self.kind {
            Transform::Identity => x.copy_from_slice(z),
            Transform::Hadamard => {
                x.copy_from_slice(z);
                hadamard_orthonormal(x);
            }
            Transform::Fft => self.inverse_direct(z, x),
        }
    }

    /// `w = T⁻ᵀ(q)`: the weights that make `q · T⁻¹(z) = w · z` for every z.
    pub fn inverse_adjoint(&self, q: &[f32], w: &mut [f32]) {
        match self.kind {
            Transform::Identity => w.copy_from_slice(q),
            Transform::Hadamard => {
                w.copy_from_slice(q);
                hadamard_orthonormal(w);
            }
            Transform::Fft => {
                // Column j of T⁻¹ is the inverse of the unit spectrum e_j; its dot with q is w_j.
                let m = self.len;
                for (j, wj) in w.iter_mut().enumerate() {
                    let (k, imaginary) = lane_bin(j);
                    let weight = bin_weight(k, m);
                    let mut acc = 0.0f64;
                    for (n, &qn) in q.iter().enumerate() {
                        let idx = (k * n) % m;
                        let basis = if imaginary {
                            -self.sin[idx]
                        } else {
                            self.cos[idx]
                        };
                        acc += f64::from(qn) * f64::from(basis);
                    }
                    *wj = (acc * weight / m as f64) as f32;
                }
            }
        }
    }

    fn forward_direct(&self, x: &[f32], z: &mut [f32]) {
        let m = self.len;
        for (j, zj) in z.iter_mut().enumerate() {
            let (k, imaginary) = lane_bin(j);
            let mut acc = 0.0f64;
            for (n, &xn) in x.iter().enumerate() {
                let idx = (k * n) % m;
                acc += if imaginary {
                    -f64::from(xn) * f64::from(self.sin[idx])
                } else {
                    f64::from(xn) * f64::from(self.cos[idx])
                };
            }
            *zj = acc as f32;
        }
    }

    /// Iterative radix-2 complex FFT of the real row, then one-sided packing.
    fn forward_radix2(&self, x: &[f32], z: &mut [f32]) {
        let m = self.len;
        let mut re = vec![0.0f32; m];
        let mut im = vec![0.0f32; m];
        let bits = m.trailing_zeros();
        for (n, &xn) in x.iter().enumerate() {
            let r = if bits == 0 {
                0
            } else {
                n.reverse_bits() >> (usize::BITS - bits)
            };
            re[r] = xn;
        }
        let mut half = 1;
        while half < m {
            let stride = m / (2 * half);
            for start in (0..m).step_by(2 * half) {
                for i in 0..half {
                    let (c, s) = (self.cos[i * stride], -self.sin[i * stride]);
                    let (a, b) = (start + i, start + i + half);
                    let tr = re[b] * c - im[b] * s;
                    let ti = re[b] * s + im[b] * c;
                    re[b] = re[a] - tr;
                    im[b] = im[a] - ti;
                    re[a] += tr;
                    im[a] += ti;
                }
            }
            half *= 2;
        }
        for (j, zj) in z.iter_mut().enumerate() {
            let (k, imaginary) = lane_bin(j);
            *zj = if imaginary { im[k] } else { re[k] };
        }
    }

    /// [`Self::inverse_adjoint`] of eight query rows at once, in lanes: `q[n][r]` is entry n of
    /// row r, and `w[j][r]` receives entry j of row r's weights. For a power-of-two FFT length the
    /// rows are paired into four complex sequences (row `2i` real, `2i + 1` imaginary) that run
    /// side by side in `[f32; 4]` lanes, so that each butterfly is one vector operation; the
    /// Hadamard transform runs on the eight lanes directly. This is what fused attention runs
    /// once per block-scope outlier mask. `scratch` is resized as needed.
    pub fn inverse_adjoint_lanes(
        &self,
        q: &[[f32; 8]],
        w: &mut [[f32; 8]],
        scratch: &mut Vec<f32>,
    ) {
        let m = self.len;
        match self.kind {
            Transform::Identity => w[..m].copy_from_slice(&q[..m]),
            Transform::Hadamard => {
                w[..m].copy_from_slice(&q[..m]);
                hadamard_lanes(&mut w[..m]);
            }
            Transform::Fft if m.is_power_of_two() => {
                scratch.clear();
                scratch.resize(8 * m, 0.0);
                let (quads, _) = scratch.as_chunks_mut::<4>();
                let (re, im) = quads.split_at_mut(m);
                for (&at, row) in self.reversed.iter().zip(q) {
                    re[at as usize] = [row[0], row[2], row[4], row[6]];
                    im[at as usize] = [row[1], row[3], row[5], row[7]];
                }
                self.fft_lanes(re, im);
                // Split X = A + iB into the spectra of the two real rows:
                // A_k = (X_k + conj X_{M−k})/2, B_k = (X_k − conj X_{M−k})/(2i).
                for (out, &(k, kk, imaginary, scale)) in w.iter_mut().zip(&self.split) {
                    let (xr, xi) = (re[k as usize], im[k as usize]);
                    let (yr, yi) = (re[kk as usize], im[kk as usize]);
                    let (a, b): ([f32; 4], [f32; 4]) = if imaginary {
                        (
                            core::array::from_fn(|p| xi[p] - yi[p]),
                            core::array::from_fn(|p| yr[p] - xr[p]),
                        )
                    } else {
                        (
                            core::array::from_fn(|p| xr[p] + yr[p]),
                            core::array::from_fn(|p| xi[p] + yi[p]),
                        )
                    };
                    *out = core::array::from_fn(|r| {
                        let v = if r % 2 == 0 { a[r / 2] } else { b[r / 2] };
                        v * scale
                    });
                }
            }
            Transform::Fft => {
                // Any other length: the direct adjoint, row by row.
                scratch.clear();
                scratch.resize(2 * m, 0.0);
                let (col, out) = scratch.split_at_mut(m);
                for r in 0..8 {
                    for (c, row) in col.iter_mut().zip(q) {
                        *c = row[r];
                    }
                    self.inverse_adjoint(col, out);
                    for (row, &x) in w.iter_mut().zip(out.iter()) {
                        row[r] = x;
                    }
                }
            }
        }
    }

    /// In-place radix-2 FFT of four interleaved complex sequences (bit-reversed input).
    fn fft_lanes(&self, re: &mut [[f32; 4]], im: &mut [[f32; 4]]) {
        let m = self.len;
        let mut half = 1;
        while half < m {
            let (tc, ts) = (
                &self.stage_cos[half..2 * half],
                &self.stage_sin[half..2 * half],
            );
            for (br, bi) in re
                .chunks_exact_mut(2 * half)
                .zip(im.chunks_exact_mut(2 * half))
            {
                let (ra, rb) = br.split_at_mut(half);
                let (ia, ib) = bi.split_at_mut(half);
                let lanes = ra
                    .iter_mut()
                    .zip(rb)
                    .zip(ia.iter_mut().zip(ib))
                    .zip(tc.iter().zip(ts));
                for (((ra, rb), (ia, ib)), (&c, &s)) in lanes {
                    let (xa, xb, ya, yb) = (*ra, *rb, *ia, *ib);
                    let tr: [f32; 4] = core::array::from_fn(|p| xb[p] * c - yb[p] * s);
                    let ti: [f32; 4] = core::array::from_fn(|p| xb[p] * s + yb[p] * c);
                    *rb = core::array::from_fn(|p| xa[p] - tr[p]);
                    *ib = core::array::from_fn(|p| ya[p] - ti[p]);
                    *ra = core::array::from_fn(|p| xa[p] + tr[p]);
                    *ia = core::array::from_fn(|p| ya[p] + ti[p]);
                }
            }
            half *= 2;
        }
    }

    fn inverse_direct(&self, z: &[f32], x: &mut [f32]) {
        let m = self.len;
        for (n, xn) in x.iter_mut().enumerate() {
            let mut acc = 0.0f64;
            for (j, &zj) in z.iter().enumerate() {
                let (k, imaginary) = lane_bin(j);
                let idx = (k * n) % m;
                let basis = if imaginary {
                    -self.sin[idx]
                } else {
                    self.cos[idx]
                };
                acc += bin_weight(k, m) * f64::from(zj) * f64::from(basis);
            }
            *xn = (acc / m as f64) as f32;
        }
    }
}

/// Frequency bin of lane `j` and whether the lane is its imaginary part.
fn lane_bin(j: usize) -> (usize, bool) {
    if j == 0 {
        (0, false)
    } else {
        (j.div_ceil(2), is_imaginary_lane(j))
    }
}

/// How often a one-sided bin appears in the two-sided spectrum (1 for DC and Nyquist, else 2).
fn bin_weight(k: usize, m: usize) -> f64 {
    if k == 0 || 2 * k == m { 1.0 } else { 2.0 }
}

/// [`hadamard_orthonormal`] of eight rows held in lanes.
fn hadamard_lanes(v: &mut [[f32; 8]]) {
    let n = v.len();
    let mut h = 1;
    while h < n {
        for block in v.chunks_exact_mut(2 * h) {
            let (lo, hi) = block.split_at_mut(h);
            for (a, b) in lo.iter_mut().zip(hi.iter_mut()) {
                let (x, y) = (*a, *b);
                *a = core::array::from_fn(|r| x[r] + y[r]);
                *b = core::array::from_fn(|r| x[r] - y[r]);
            }
        }
        h *= 2;
    }
    let norm = 1.0 / libm::sqrtf(n as f32);
    v.iter_mut().for_each(|x| *x = x.map(|e| e * norm));
}

/// In-place orthonormal fast Walsh–Hadamard transform (its own inverse).
fn hadamard_orthonormal(v: &mut [f32]) {
    let n = v.len();
    let mut h = 1;
    while h < n {
        for start in (0..n).step_by(2 * h) {
            for i in start..start + h {
                let (a, b) = (v[i], v[i + h]);
                v[i] = a + b;
                v[i + h] = a - b;
            }
        }
        h *= 2;
    }
    let norm = 1.0 / libm::sqrtf(n as f32);
    v.iter_mut().for_each(|x| *x *= norm);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(m: usize, seed: u32) -> Vec<f32> {
        (0..m)
            .map(|i| libm::sinf((i as u32 * 7 + seed) as f32 * 0.37) * 3.0 + i as f32 * 0.01)
            .collect()
    }

    /// Naive complex DFT, the definition.
    fn naive_dft(x: &[f32]) -> Vec<(f64, f64)> {
        let m = x.len();
        (0..m)
            .map(|k| {
                x.iter().enumerate().fold((0.0, 0.0), |(re, im), (n, &v)| {
                    let a = -2.0 * PI * (k * n) as f64 / m as f64;
                    (
                        re + f64::from(v) * libm::cos(a),
                        im + f64::from(v) * libm::sin(a),
                    )
                })
            })
            .collect()
    }

    fn one_sided(full: &[(f64, f64)]) -> Vec<f64> {
        (0..full.len())
            .map(|j| {
                let (k, imag) = lane_bin(j);
                if imag { full[k].1 } else { full[k].0 }
            })
            .collect()
    }

    #[test]
    fn fft_matches_naive_dft_for_even_and_odd_lengths() {
        for m in [1, 2, 3, 4, 6, 8, 10, 16, 30, 32, 40, 48, 64, 96, 128] {
            let x = row(m, m as u32);
            let want = one_sided(&naive_dft(&x));
            let t = LaneTransform::new(Transform::Fft, m);
            let mut z = vec![0.0; m];
            t.forward(&x, &mut z);
            let scale = want.iter().fold(1.0f64, |a, v| a.max(v.abs()));
            for (a, b) in z.iter().zip(&want) {
                assert!(
                    (f64::from(*a) - b).abs() < 1e-5 * scale,
                    "m={m}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn inverse_undoes_forward_for_every_transform() {
        for (kind, sizes) in [
            (Transform::Fft, &[2usize, 3, 5, 8, 10, 32, 40, 64][..]),
            (Transform::Hadamard, &[1, 2, 8, 32, 64, 128][..]),
            (Transform::Identity, &[3, 32][..]),
        ] {
            for &m in sizes {
                let t = LaneTransform::new(kind, m);
                let x = row(m, 3);
                let (mut z, mut back) = (vec![0.0; m], vec![0.0; m]);
                t.forward(&x, &mut z);
                t.inverse(&z, &mut back);
                for (a, b) in x.iter().zip(&back) {
                    assert!((a - b).abs() < 1e-4, "{kind:?} m={m}: {a} vs {b}");
                }
            }
        }
    }

    #[test]
    fn adjoint_moves_the_inverse_onto_the_query() {
        for (kind, m) in [
            (Transform::Fft, 32),
            (Transform::Fft, 40),
            (Transform::Fft, 7),
            (Transform::Hadamard, 64),
        ] {
            let t = LaneTransform::new(kind, m);
            let (q, z) = (row(m, 1), row(m, 9));
            let mut x = vec![0.0; m];
            t.inverse(&z, &mut x);
            let mut w = vec![0.0; m];
            t.inverse_adjoint(&q, &mut w);
            let lhs: f32 = q.iter().zip(&x).map(|(a, b)| a * b).sum();
            let rhs: f32 = w.iter().zip(&z).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0),
                "{kind:?} {m}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn adjoint_in_lanes_equals_the_direct_one() {
        for (kind, m) in [
            (Transform::Fft, 1),
            (Transform::Fft, 2),
            (Transform::Fft, 4),
            (Transform::Fft, 32),
            (Transform::Fft, 64),
            (Transform::Fft, 48),
            (Transform::Fft, 9),
            (Transform::Hadamard, 32),
            (Transform::Identity, 5),
        ] {
            let t = LaneTransform::new(kind, m);
            let rows: Vec<Vec<f32>> = (0..8).map(|r| row(m, r * 5 + 1)).collect();
            let lanes: Vec<[f32; 8]> = (0..m)
                .map(|n| core::array::from_fn(|r| rows[r][n]))
                .collect();
            let mut got = vec![[0.0f32; 8]; m];
            t.inverse_adjoint_lanes(&lanes, &mut got, &mut Vec::new());
            for (r, qr) in rows.iter().enumerate() {
                let mut want = vec![0.0; m];
                t.inverse_adjoint(qr, &mut want);
                for (j, x) in want.iter().enumerate() {
                    let y = got[j][r];
                    assert!(
                        (x - y).abs() < 1e-5 * (1.0 + x.abs()),
                        "{kind:?} m={m} row={r}: {x} vs {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn hadamard_of_unit_vector_is_flat() {
        let t = LaneTransform::new(Transform::Hadamard, 4);
        let mut z = [0.0; 4];
        t.forward(&[1.0, 0.0, 0.0, 0.0], &mut z);
        assert_eq!(z, [0.5; 4]);
        t.forward(&[0.0, 1.0, 0.0, 0.0], &mut z);
        assert_eq!(z, [0.5, -0.5, 0.5, -0.5]);
    }
}
