//! H1B-KV sign sketches: the seeded projection, sign packing, the SimHash score estimator and
//! the direction decode — the one implementation every backend calls (`docs/FORMAT.md`,
//! "Sign-sketch keys").
//!
//! A key `k ∈ ℝ^D` is stored as `‖k‖` (f16) and the `b` signs `s_i = [r_i·k ≥ 0]` of a fixed
//! Gaussian projection `R ∈ ℝ^{b×D}` ([`Projection`]). A query is projected and signed the same
//! way; with `h` the Hamming distance between the two sign vectors, the SimHash angle estimate
//! gives `q·k ≈ ‖q‖·‖k‖·cos(π·h/b)` ([`cos_table`]). Decoding a key ([`Projection::direction`])
//! returns `‖k‖·u/‖u‖` with `u = Rᵀ(2s − 1)`; attention does not use it.

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;

use half::f16;

use crate::config::{KeyScheme, SketchBits};
use crate::error::{Error, Result};
use crate::layout::{Codec, KeyLayout};
use crate::pack::f16_at;

/// SplitMix64 (Steele, Lea, Flood 2014): the generator of the projection's uniforms.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator whose state starts at `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform in `(0, 1]`: `((x >> 11) + 1) · 2⁻⁵³`.
    pub fn next_open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The projection `R ∈ ℝ^{b×D}` of a sign-sketch codec, f32, held transposed (`D` columns of
/// `b` entries) so that projections vectorize across rows.
///
/// Entries in row-major order (`i·D + c`) come in pairs from Box–Muller on two uniforms
/// `u1, u2` of [`SplitMix64`] seeded with the configuration's seed: `ρ = √(−2·ln u1)`,
/// `θ = 2π·u2`, entries `ρ·cos θ` then `ρ·sin θ`, all in f64 with `libm` (pure software: the
/// same bits on every platform), then rounded to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct Projection {
    bits: usize,
    dim: usize,
    /// `cols[c·b + i] = R[i][c]`.
    cols: Vec<f32>,
}

impl Projection {
    /// The projection for `bits` signs of `dim`-dimensional keys from `seed`.
    pub fn new(bits: SketchBits, seed: u32, dim: usize) -> Self {
        let n = bits.get() * dim;
        let mut rng = SplitMix64::new(u64::from(seed));
        let mut rows = Vec::with_capacity(n + 1);
        while rows.len() < n {
            let (u1, u2) = (rng.next_open01(), rng.next_open01());
            let rho = libm::sqrt(-2.0 * libm::log(u1));
            let theta = 2.0 * core::f64::consts::PI * u2;
            rows.push((rho * libm::cos(theta)) as f32);
            rows.push((rho * libm::sin(theta)) as f32);
        }
        rows.truncate(n);
        let b = bits.get();
        let mut cols = vec![0.0f32; n];
        for (i, row) in rows.chunks_exact(dim).enumerate() {
            for (c, &r) in row.iter().enumerate() {
                cols[c * b + i] = r;
            }
        }
        Self { bits: b, dim, cols }
    }

    /// The projection of a sign-sketch codec; `None` for other key schemes.
    pub fn for_codec(codec: &Codec) -> Option<Self> {
        match codec.config().keys {
            KeyScheme::SignSketch { bits, seed } => Some(Self::new(bits, seed, codec.head_dim())),
            _ => None,
        }
    }

    /// Sketch length b.
    pub fn bits(&self) -> usize {
        self.bits
    }

    /// Bytes of one packed sign row, b/8.
    pub fn row_bytes(&self) -> usize {
        self.bits / 8
    }

    /// Entry `R[i][c]`.
    pub fn entry(&self, i: usize, c: usize) -> f32 {
        self.cols[c * self.bits + i]
    }

    /// `R·x` in f64 (products exact, summed in channel order): the one definition of the
    /// projection that encoders and the query side share, so their signs agree bit for bit.
    pub fn project(&self, x: &[f32], out: &mut [f64]) {
        let out = &mut out[..self.bits];
        out.fill(0.0);
        // Each output accumulates in channel order (the definition); the loop runs across rows.
        for (col, &v) in self.cols.chunks_exact(self.bits).zip(x) {
            let v = f64::from(v);
            out.iter_mut()
                .zip(col)
                .for_each(|(o, &r)| *o += f64::from(r) * v);
        }
    }

    /// Packs the signs of `R·x` into `out` (`b/8` bytes): bit `i mod 8` of byte `⌊i/8⌋` is
    /// `r_i·x ≥ 0`.
    pub fn signs(&self, x: &[f32], scratch: &mut Vec<f64>, out: &mut [u8]) {
        scratch.resize(self.bits, 0.0);
        self.project(x, scratch);
        out.fill(0);
        for (i, &p) in scratch.iter().enumerate() {
            out[i / 8] |= u8::from(p >= 0.0) << (i % 8);
        }
    }

    /// The decoded key `norm·u/‖u‖`, `u = Rᵀ(2s − 1)` (f64, rounded to f32); zeros when `u = 0`.
    pub fn direction(&self, signs: &[u8], norm: f32, u: &mut Vec<f64>, out: &mut [f32]) {
        u.clear();
        u.resize(self.dim, 0.0);
        let sign = |i: usize| {
            if signs[i / 8] >> (i % 8) & 1 == 1 {
                1.0
            } else {
                -1.0
            }
        };
        for (a, col) in u.iter_mut().zip(self.cols.chunks_exact(self.bits)) {
            // Summed over rows in row order.
            *a = col
                .iter()
                .enumerate()
                .fold(0.0f64, |acc, (i, &r)| acc + sign(i) * f64::from(r));
        }
        let len = libm::sqrt(u.iter().map(|a| a * a).sum::<f64>());
        let k = if len > 0.0 {
            f64::from(norm) / len
        } else {
            0.0
        };
        out.iter_mut()
            .zip(u.iter())
            .for_each(|(o, &a)| *o = (a * k) as f32);
    }
}

/// The projection of a sign-sketch codec (`None` for other key schemes), shared: generating one
/// costs `b·D` transcendental evaluations (about a millisecond at `b = D = 128`), so with the
/// `std` feature the last eight distinct projections are kept in a process-wide cache and a
/// decode step does not regenerate them per call. Without `std` it is generated each time.
pub fn shared_projection(codec: &Codec) -> Option<Arc<Projection>> {
    let KeyScheme::SignSketch { bits, seed } = codec.config().keys else {
        return None;
    };
    Some(cached(bits, seed, codec.head_dim()))
}

#[cfg(feature = "std")]
fn cached(bits: SketchBits, seed: u32, dim: usize) -> Arc<Projection> {
    type Entry = ((SketchBits, u32, usize), Arc<Projection>);
    static CACHE: std::sync::Mutex<Vec<Entry>> = std::sync::Mutex::new(Vec::new());
    let key = (bits, seed, dim);
    let lookup = |cache: &Vec<Entry>| {
        cache
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, p)| p.clone())
    };
    if let Some(p) = CACHE.lock().ok().and_then(|c| lookup(&c)) {
        return p;
    }
    let p = Arc::new(Projection::new(bits, seed, dim));
    if let Ok(mut cache) = CACHE.lock()
        && lookup(&cache).is_none()
    {
        if cache.len() == 8 {
            cache.remove(0);
        }
        cache.push((key, p.clone()));
    }
    p
}

#[cfg(not(feature = "std"))]
fn cached(bits: SketchBits, seed: u32, dim: usize) -> Arc<Projection> {
    Arc::new(Projection::new(bits, seed, dim))
}

/// `cos(π·h/b)` for `h = 0 ..= b` (f64 with `libm`, rounded to f32): the score factor of a
/// Hamming distance `h`.
pub fn cos_table(bits: usize) -> Vec<f32> {
    (0..=bits)
        .map(|h| libm::cos(core::f64::consts::PI * h as f64 / bits as f64) as f32)
        .collect()
}

/// Hamming distance of two packed sign rows of equal length (whole `u64` words where possible).
#[inline]
pub fn hamming(a: &[u8], b: &[u8]) -> u32 {
    let (wa, ta) = a.as_chunks::<8>();
    let (wb, tb) = b.as_chunks::<8>();
    let words: u32 = wa
        .iter()
        .zip(wb)
        .map(|(x, y)| (u64::from_le_bytes(*x) ^ u64::from_le_bytes(*y)).count_ones())
        .sum();
    words
        + ta.iter()
            .zip(tb)
            .map(|(x, y)| (x ^ y).count_ones())
            .sum::<u32>()
}

/// Reads and checks the f16 norms of a sign-sketch key block (finite, no sign bit except −0 is
/// rejected too: encoders write `+‖k‖`). `offset` is the section's offset for error reports.
pub fn read_norms(bytes: &[u8], offset: usize, out: &mut [f32]) -> Result<()> {
    for (i, o) in out.iter_mut().enumerate() {
        let n = f16_at(bytes, i);
        if !n.is_finite() || n.is_sign_negative() {
            return Err(Error::Corrupt {
                what: "sketch norm not finite and non-negative",
                offset: offset + 2 * i,
            });
        }
        *o = n.to_f32();
    }
    Ok(())
}

/// The norm as stored: `‖x‖` computed in f64, rounded to f16 (saturating at 65504).
pub fn stored_norm(x: &[f32]) -> f16 {
    let n = libm::sqrt(x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>());
    f16::from_f64(n.min(65504.0))
}

/// The query side of the estimator: `sign(R·q)` packed and `‖q‖`.
#[derive(Debug, Clone)]
pub struct QuerySketch {
    /// Packed signs, `b/8` bytes.
    pub signs: Vec<u8>,
    /// `‖q‖` in f64.
    pub norm: f64,
}

impl QuerySketch {
    /// Sketches one query.
    pub fn new(projection: &Projection, q: &[f32]) -> Self {
        let mut signs = vec![0u8; projection.row_bytes()];
        projection.signs(q, &mut Vec::new(), &mut signs);
        let norm = libm::sqrt(q.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>());
        Self { signs, norm }
    }
}

/// The estimator in f64 over whole key blocks: `scale·‖q‖·‖k_t‖·cos(π·h_t/b)` for every token
/// of `key_blocks` (a sign-sketch codec's blocks). What fused attention computes, for tests and
/// evaluations.
pub fn reference_scores(
    codec: &Codec,
    key_blocks: &[u8],
    q: &[f32],
    scale: f32,
) -> Result<Vec<f64>> {
    let (projection, KeyLayout::SignSketch { bits, norms, signs }) =
        (shared_projection(codec), *codec.key_layout())
    else {
        return Err(Error::InvalidConfig {
            reason: "reference_scores needs sign-sketch keys",
        });
    };
    let projection = projection.expect("sign-sketch layout comes from a sign-sketch scheme");
    let query = QuerySketch::new(&projection, q);
    let (kb, g, rb) = (codec.key_block_bytes(), codec.group(), bits / 8);
    if !key_blocks.len().is_multiple_of(kb) {
        return Err(Error::ShapeMismatch {
            what: "key block bytes (whole blocks)",
            expected: key_blocks.len() / kb * kb,
            actual: key_blocks.len(),
        });
    }
    let mut n = vec![0.0f32; g];
    let mut out = Vec::with_capacity(key_blocks.len() / kb * g);
    for (b, block) in key_blocks.chunks_exact(kb).enumerate() {
        read_norms(&block[norms.range()], b * kb + norms.offset, &mut n)?;
        for (t, &nt) in n.iter().enumerate() {
            let h = hamming(&query.signs, &block[signs.offset + t * rb..][..rb]);
            let cos = libm::cos(core::f64::consts::PI * f64::from(h) / bits as f64);
            out.push(f64::from(scale) * query.norm * f64::from(nt) * cos);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_published_sequence() {
        // Seed 0: the reference outputs of splitmix64.c.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn projection_entries_are_pinned() {
        let p = Projection::new(SketchBits::B64, crate::config::DEFAULT_SKETCH_SEED, 64);
        let got = [p.entry(0, 0), p.entry(0, 1), p.entry(1, 0), p.entry(63, 63)];
        let bits: Vec<u32> = got.iter().map(|x| x.to_bits()).collect();
        assert_eq!(bits, PINNED, "entries {got:?}");
        // Roughly standard normal.
        let n = p.cols.len() as f64;
        let mean = p.cols.iter().map(|&x| f64::from(x)).sum::<f64>() / n;
        let var = p.cols.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.1, "{mean} {var}");
    }

    // Reproduced independently with Python (math.log/sqrt/cos/sin on the same uniforms).
    const PINNED: [u32; 4] = [0xbf9e_4bad, 0x3fb7_161c, 0x3d4e_b85e, 0xbef3_4a5b];

    #[test]
    fn shared_projection_is_the_generated_one() {
        use crate::config::{GroupSize, HeadDim, Scheme};
        let c = Codec::new(Scheme::H1b.config(HeadDim::new(80).unwrap(), GroupSize::G32)).unwrap();
        let a = shared_projection(&c).unwrap();
        assert_eq!(*a, Projection::for_codec(&c).unwrap());
        assert_eq!(*shared_projection(&c).unwrap(), *a);
        let v =
            Codec::new(Scheme::Vidkv.config(HeadDim::new(80).unwrap(), GroupSize::G32)).unwrap();
        assert!(shared_projection(&v).is_none());
    }

    #[test]
    fn signs_and_hamming() {
        let p = Projection::new(SketchBits::B128, 7, 16);
        let x: Vec<f32> = (0..16).map(|i| i as f32 - 7.5).collect();
        let neg: Vec<f32> = x.iter().map(|v| -v).collect();
        let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
        p.signs(&x, &mut Vec::new(), &mut a);
        p.signs(&neg, &mut Vec::new(), &mut b);
        // Opposite vectors: every sign flips (no projection is exactly zero here).
        assert_eq!(hamming(&a, &b), 128);
        assert_eq!(hamming(&a, &a), 0);
        assert_eq!(hamming(&a[..3], &b[..3]), 24);
        let t = cos_table(128);
        assert_eq!((t[0], t[128]), (1.0, -1.0));
        assert!(t[64].abs() < 1e-7);
    }

    #[test]
    fn direction_keeps_the_norm_and_points_near_the_key() {
        let p = Projection::new(SketchBits::B256, 3, 32);
        let x: Vec<f32> = (0..32).map(|i| ((i * 7) % 11) as f32 - 5.0).collect();
        let mut s = [0u8; 32];
        p.signs(&x, &mut Vec::new(), &mut s);
        let norm = stored_norm(&x).to_f32();
        let mut out = [0.0f32; 32];
        p.direction(&s, norm, &mut Vec::new(), &mut out);
        let len = out.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((len - norm).abs() < 1e-3 * norm);
        let cos = out.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>() / (len * norm);
        assert!(cos > 0.8, "cosine {cos}");
    }
}
