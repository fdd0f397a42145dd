//! Fused decode attention on H1B-KV caches: sign-sketch keys + 4-bit per-token values.
//!
//! Per block of G tokens, shared by the query heads of a GQA group:
//! * **keys** — Hamming distances between `sign(R·q)` (once per call) and every token's signs:
//!   XOR and population count over `u64` words, eight words per instruction with AVX-512
//!   VPOPCNTDQ (`vpopcntq`) where present, else `count_ones` compiled to POPCNT (x86) or `cnt`
//!   (NEON); the rest of the AVX-512 path is compiled for AVX2 (256-bit code measured ~1.5×
//!   faster than 512-bit code for this kernel's value pass on the development machine); the score is `scale·‖q‖·‖k_t‖·cos(π·h/b)` from a table — the estimator of
//!   [`vidkv_core::sketch`], exactly as the scalar backend computes it;
//! * online softmax in f32;
//! * **values** — codes unpacked once per block to f32 `[G, D]`; per query and channel group a
//!   weighted sum over tokens with weights `p_t·step_{t,g}`, plus `Σ_t p_t·lo_{t,g}` per group —
//!   plain f32 loops compiled inside the level's `#[target_feature]` entry point, so they are
//!   vectorized for that level (FMA on AVX2/AVX-512, NEON).
//!
//! Nothing is decoded to a cache-sized buffer. Accuracy: f32 summation order only (the scores
//! are the scalar backend's to the last bit; outputs agree with it to ~1e-6).

use alloc::vec;
use alloc::vec::Vec;

use vidkv_core::sketch::{QuerySketch, cos_table, read_norms, shared_projection};
use vidkv_core::{AffineParams, Codec, Error, KeyLayout, Result, ValueLayout};

use crate::attend::HeadCache;
use crate::level::Level;
use crate::math::{exp_approx, f16_bits_to_f32};

/// How the Hamming distances of one block are computed.
trait Popcount {
    /// `out[t] = popcount(signs_t XOR query)` for the `out.len()` tokens of `signs`
    /// (token-major rows of `query.len()` words).
    ///
    /// # Safety
    /// The CPU must support the implementation's target features.
    unsafe fn distances(query: &[u64], signs: &[u64], out: &mut [u32]);
}

/// `count_ones` per word: POPCNT / `cnt` inside the level's target features.
struct Words;

impl Popcount for Words {
    #[inline(always)]
    unsafe fn distances(query: &[u64], signs: &[u64], out: &mut [u32]) {
        let nw = query.len();
        for (o, row) in out.iter_mut().zip(signs.chunks_exact(nw)) {
            *o = row
                .iter()
                .zip(query)
                .map(|(a, b)| (a ^ b).count_ones())
                .sum();
        }
    }
}

/// AVX-512 VPOPCNTDQ: eight words per `vpopcntq`. Rows of 1, 2 or 4 words tile a 512-bit
/// register, so the query pattern is the same for every load.
#[cfg(target_arch = "x86_64")]
struct Vpopcnt;

#[cfg(target_arch = "x86_64")]
impl Popcount for Vpopcnt {
    #[inline(always)]
    unsafe fn distances(query: &[u64], signs: &[u64], out: &mut [u32]) {
        // SAFETY: forwarded from the caller (AVX-512F + VPOPCNTDQ).
        unsafe { vpopcnt_distances(query, signs, out) }
    }
}

/// The VPOPCNTDQ distance pass, kept out of line: the rest of the kernel runs on 256-bit
/// vectors (AVX2 code generation measured faster for the value pass on this kernel).
///
/// # Safety
/// The CPU must support AVX-512F and VPOPCNTDQ.
#[cfg(target_arch = "x86_64")]
#[inline(never)]
#[target_feature(enable = "avx512f,avx512vpopcntdq")]
unsafe fn vpopcnt_distances(query: &[u64], signs: &[u64], out: &mut [u32]) {
    use core::arch::x86_64::*;
    let nw = query.len();
    let pattern: [u64; 8] = core::array::from_fn(|i| query[i % nw]);
    let mut counts = [0u64; 8];
    // SAFETY: AVX-512F + VPOPCNTDQ by this function's contract; every load and store covers 8
    // words of an 8-word chunk or array.
    unsafe {
        let q = _mm512_loadu_si512(pattern.as_ptr().cast());
        for (chunk, o) in signs.chunks_exact(8).zip(out.chunks_mut(8 / nw)) {
            let x = _mm512_xor_si512(_mm512_loadu_si512(chunk.as_ptr().cast()), q);
            _mm512_storeu_si512(counts.as_mut_ptr().cast(), _mm512_popcnt_epi64(x));
            for (i, o) in o.iter_mut().enumerate() {
                *o = counts[i * nw..][..nw].iter().sum::<u64>() as u32;
            }
        }
    }
    let done = signs.len() / 8 * 8;
    // SAFETY: plain integer code.
    unsafe { Words::distances(query, &signs[done..], &mut out[done / nw..]) };
}

/// Whether `codec` is a sign-sketch + per-token-values configuration this module runs (the
/// `h1b` preset and its `--sketch-bits`/`--seed` variants).
pub(crate) fn handles(codec: &Codec) -> bool {
    matches!(codec.key_layout(), KeyLayout::SignSketch { .. })
        && matches!(codec.value_layout(), ValueLayout::PerToken { .. })
}

/// Whether `codec` has sign-sketch keys (whatever its values).
pub(crate) fn sketch_keys(codec: &Codec) -> bool {
    matches!(codec.key_layout(), KeyLayout::SignSketch { .. })
}

/// Fused attention for `queries` (`[hq, D]`) over one head's cache; shapes already checked.
pub(crate) fn attend(
    level: Level,
    codec: &Codec,
    queries: &[f32],
    cache: &HeadCache<'_>,
    out: &mut [f32],
) -> Result<()> {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if crate::level::features().avx512vpopcntdq => {
            // SAFETY: AVX-512 with VPOPCNTDQ was detected.
            unsafe { x86::attend_vpopcnt(codec, queries, cache, out) }
        }
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        Level::Avx512 | Level::Avx2 if std::arch::is_x86_feature_detected!("popcnt") => {
            // SAFETY: the level (AVX2 + FMA + F16C) was checked by the caller, POPCNT detected.
            unsafe { x86::attend_avx2(codec, queries, cache, out) }
        }
        #[cfg(target_arch = "aarch64")]
        Level::Neon => {
            // SAFETY: NEON was checked by the caller.
            unsafe { arm::attend_neon(codec, queries, cache, out) }
        }
        // SAFETY: `Words` needs no target feature.
        _ => unsafe { attend_with::<Words>(codec, queries, cache, out) },
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    #[target_feature(enable = "avx2,fma,f16c,popcnt")]
    pub unsafe fn attend_vpopcnt(
        codec: &Codec,
        queries: &[f32],
        cache: &HeadCache<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        // SAFETY: the caller detected AVX-512F + VPOPCNTDQ, which `Vpopcnt` needs.
        unsafe { attend_with::<Vpopcnt>(codec, queries, cache, out) }
    }

    #[cfg(feature = "std")]
    #[target_feature(enable = "avx2,fma,f16c,popcnt")]
    pub unsafe fn attend_avx2(
        codec: &Codec,
        queries: &[f32],
        cache: &HeadCache<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        // SAFETY: `Words` needs no target feature; this function only widens what LLVM may use.
        unsafe { attend_with::<Words>(codec, queries, cache, out) }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;

    #[target_feature(enable = "neon")]
    pub unsafe fn attend_neon(
        codec: &Codec,
        queries: &[f32],
        cache: &HeadCache<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        // SAFETY: `Words` needs no target feature; this function only widens what LLVM may use.
        unsafe { attend_with::<Words>(codec, queries, cache, out) }
    }
}

/// The query side: sign words, `scale·‖q‖`, the cosine table.
struct Queries {
    words: Vec<u64>,
    qnorm: Vec<f32>,
    cos: Vec<f32>,
    nw: usize,
}

impl Queries {
    fn new(codec: &Codec, queries: &[f32], scale: f32) -> Self {
        let projection = shared_projection(codec).expect("sign-sketch codec");
        let d = codec.head_dim();
        let nw = projection.bits() / 64;
        let mut words = Vec::with_capacity(queries.len() / d * nw);
        let mut qnorm = Vec::with_capacity(queries.len() / d);
        for q in queries.chunks_exact(d) {
            let sk = QuerySketch::new(&projection, q);
            words.extend(
                sk.signs
                    .as_chunks::<8>()
                    .0
                    .iter()
                    .map(|w| u64::from_le_bytes(*w)),
            );
            qnorm.push((f64::from(scale) * sk.norm) as f32);
        }
        Self {
            words,
            qnorm,
            cos: cos_table(projection.bits()),
            nw,
        }
    }
}

/// Online-softmax state and per-block scratch.
pub(crate) struct State {
    pub(crate) m: Vec<f32>,
    pub(crate) l: Vec<f32>,
    pub(crate) acc: Vec<f32>,
    /// `[hq, G]` scores, then weights.
    pub(crate) p: Vec<f32>,
}

impl State {
    pub(crate) fn new(hq: usize, d: usize, g: usize) -> Self {
        Self {
            m: vec![f32::NEG_INFINITY; hq],
            l: vec![0.0; hq],
            acc: vec![0.0; hq * d],
            p: vec![0.0; hq * g],
        }
    }

    /// Turns the first `n` scores of each query's row (stride `g`) into weights.
    #[inline(always)]
    /// Writes the normalised outputs `acc / l` per query (zero where nothing was attended).
    pub(crate) fn finish(&self, d: usize, out: &mut [f32]) {
        for ((o, &l), a) in out
            .chunks_exact_mut(d)
            .zip(&self.l)
            .zip(self.acc.chunks_exact(d))
        {
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            o.iter_mut().zip(a).for_each(|(o, &a)| *o = a * inv);
        }
    }

    pub(crate) fn absorb(&mut self, d: usize, g: usize, n: usize) {
        for q in 0..self.m.len() {
            let s = &mut self.p[q * g..][..n];
            let block_max = s.iter().fold(f32::NEG_INFINITY, |a, &x| a.max(x));
            if block_max > self.m[q] {
                let corr = if self.m[q] == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp_approx(self.m[q] - block_max)
                };
                self.l[q] *= corr;
                self.acc[q * d..][..d].iter_mut().for_each(|a| *a *= corr);
                self.m[q] = block_max;
            }
            let m = self.m[q];
            s.iter_mut().for_each(|x| *x = exp_approx(*x - m));
            self.l[q] += s.iter().sum::<f32>();
        }
    }
}

/// The whole job with one [`Popcount`]; inlined into each level's entry point.
///
/// # Safety
/// The CPU must support `P`'s target features.
#[inline(always)]
unsafe fn attend_with<P: Popcount>(
    codec: &Codec,
    queries: &[f32],
    cache: &HeadCache<'_>,
    out: &mut [f32],
) -> Result<()> {
    let (d, g) = (codec.head_dim(), codec.group());
    let hq = queries.len() / d;
    let scale = 1.0 / libm::sqrtf(d as f32);
    let qs = Queries::new(codec, queries, scale);
    let mut st = State::new(hq, d, g);
    let mut blocks = Blocks::new(codec);
    let (kb, vb) = (codec.key_block_bytes(), codec.value_block_bytes());
    for b in 0..cache.blocks {
        let kblock = &cache.key_blocks[b * kb..][..kb];
        // SAFETY: forwarded from the caller.
        unsafe { blocks.scores::<P>(codec, &qs, kblock, &mut st.p) }
            .map_err(|e| locate(e, b * kb))?;
        st.absorb(d, g, g);
        let vblock = &cache.value_blocks[b * vb..][..vb];
        blocks
            .values(codec, vblock, &st.p, &mut st.acc)
            .map_err(|e| locate(e, b * vb))?;
    }
    residual(d, g, scale, queries, cache, &mut st);
    st.finish(d, out);
    Ok(())
}

pub(crate) fn locate(e: Error, base: usize) -> Error {
    match e {
        Error::Corrupt { what, offset } => Error::Corrupt {
            what,
            offset: base + offset,
        },
        other => other,
    }
}

/// Per-block scratch of the key and value passes.
struct Blocks {
    words: Vec<u64>,
    dist: Vec<u32>,
    norms: Vec<f32>,
    codes: Vec<f32>,
    lo: Vec<f32>,
    step: Vec<f32>,
    weights: Vec<f32>,
}

impl Blocks {
    fn new(codec: &Codec) -> Self {
        let (d, g) = (codec.head_dim(), codec.group());
        let groups = match *codec.value_layout() {
            ValueLayout::PerToken { channel_group, .. } => d.div_ceil(channel_group),
            _ => 1,
        };
        Self {
            words: Vec::new(),
            dist: vec![0; g],
            norms: vec![0.0; g],
            codes: vec![0.0; g * d],
            lo: vec![0.0; g * groups],
            step: vec![0.0; g * groups],
            weights: vec![0.0; g],
        }
    }

    /// Scores of every query for the block's tokens, `[hq, G]`.
    ///
    /// # Safety
    /// The CPU must support `P`'s target features.
    #[inline(always)]
    unsafe fn scores<P: Popcount>(
        &mut self,
        codec: &Codec,
        qs: &Queries,
        block: &[u8],
        p: &mut [f32],
    ) -> Result<()> {
        let KeyLayout::SignSketch { norms, signs, .. } = *codec.key_layout() else {
            unreachable!("sign-sketch codec")
        };
        let g = codec.group();
        read_norms(&block[norms.range()], norms.offset, &mut self.norms)?;
        self.words.clear();
        self.words.extend(
            block[signs.range()]
                .as_chunks::<8>()
                .0
                .iter()
                .map(|w| u64::from_le_bytes(*w)),
        );
        for (q, (qw, row)) in qs
            .words
            .chunks_exact(qs.nw)
            .zip(p.chunks_exact_mut(g))
            .enumerate()
        {
            // SAFETY: forwarded from the caller.
            unsafe { P::distances(qw, &self.words, &mut self.dist) };
            let qn = qs.qnorm[q];
            for ((s, &h), &n) in row.iter_mut().zip(&self.dist).zip(&self.norms) {
                *s = qn * n * qs.cos[h as usize];
            }
        }
        Ok(())
    }

    /// Adds the block's weighted values (`p`: `[hq, G]` weights) to `acc` (`[hq, D]`).
    #[inline(always)]
    fn values(&mut self, codec: &Codec, block: &[u8], p: &[f32], acc: &mut [f32]) -> Result<()> {
        let ValueLayout::PerToken {
            bits,
            channel_group,
            params,
            codes,
        } = *codec.value_layout()
        else {
            return Err(Error::Unsupported {
                backend: "simd",
                operation: "attend",
                reason: "sign-sketch keys are fused with per-token values only",
            });
        };
        let (d, g) = (codec.head_dim(), codec.group());
        let groups = d.div_ceil(channel_group);
        for (i, pair) in block[params.range()].chunks_exact(4).enumerate() {
            let pr = AffineParams {
                lo: half::f16::from_le_bytes([pair[0], pair[1]]),
                step: half::f16::from_le_bytes([pair[2], pair[3]]),
            };
            if !(pr.lo.is_finite() && pr.step.is_finite() && !pr.step.is_sign_negative()) {
                return Err(Error::Corrupt {
                    what: "affine parameters not finite or step negative",
                    offset: params.offset + 4 * i,
                });
            }
            // Group-major, so that a group's weights are one contiguous pass over tokens.
            let (t, gi) = (i / groups, i % groups);
            self.lo[gi * g + t] = f16_bits_to_f32(pr.lo.to_bits());
            self.step[gi * g + t] = f16_bits_to_f32(pr.step.to_bits());
        }
        unpack(bits.get(), &block[codes.range()], &mut self.codes);
        for (pq, aq) in p.chunks_exact(g).zip(acc.chunks_exact_mut(d)) {
            for gi in 0..groups {
                let span = gi * channel_group..((gi + 1) * channel_group).min(d);
                let (lo, step) = (&self.lo[gi * g..][..g], &self.step[gi * g..][..g]);
                self.weights
                    .iter_mut()
                    .zip(pq)
                    .zip(step)
                    .for_each(|((w, &p), &s)| *w = p * s);
                let lo_sum: f32 = pq.iter().zip(lo).map(|(&p, &l)| p * l).sum();
                let out = &mut aq[span.clone()];
                vidkv_cpu::attention::accumulate_tokens(
                    &self.weights,
                    &self.codes[span.start..],
                    d,
                    out,
                );
                out.iter_mut().for_each(|o| *o += lo_sum);
            }
        }
        Ok(())
    }
}

/// The two 4-bit codes of a byte, as floats.
static NIBBLES: [[f32; 2]; 256] = {
    let mut t = [[0.0f32; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = [(b & 15) as f32, (b >> 4) as f32];
        b += 1;
    }
    t
};

/// Unpacks 2- or 4-bit codes (LSB first) to f32.
#[inline(always)]
fn unpack(bits: u32, bytes: &[u8], out: &mut [f32]) {
    if bits == 4 {
        for (o, &b) in out.chunks_exact_mut(2).zip(bytes) {
            o.copy_from_slice(&NIBBLES[usize::from(b)]);
        }
    } else {
        for (o, &b) in out.chunks_exact_mut(4).zip(bytes) {
            for (i, o) in o.iter_mut().enumerate() {
                *o = f32::from((b >> (2 * i)) & 3);
            }
        }
    }
}

/// The f16 residual tokens: exact scores `scale·q·k`, through the same online softmax.
#[inline(always)]
pub(crate) fn residual(
    d: usize,
    g: usize,
    scale: f32,
    queries: &[f32],
    cache: &HeadCache<'_>,
    st: &mut State,
) {
    let mut krow = vec![0.0f32; d];
    let mut vrows = vec![0.0f32; g * d];
    let mut t0 = 0;
    while t0 < cache.residual_tokens {
        let n = (cache.residual_tokens - t0).min(g);
        for t in 0..n {
            for (c, k) in krow.iter_mut().enumerate() {
                *k = f16_at(cache.residual_keys, (t0 + t) * d + c);
            }
            for (q, qrow) in queries.chunks_exact(d).enumerate() {
                let dot: f32 = qrow.iter().zip(&krow).map(|(a, b)| a * b).sum();
                st.p[q * g + t] = dot * scale;
            }
            for (c, v) in vrows[t * d..][..d].iter_mut().enumerate() {
                *v = f16_at(cache.residual_values, (t0 + t) * d + c);
            }
        }
        st.absorb(d, g, n);
        for (q, aq) in st.acc.chunks_exact_mut(d).enumerate() {
            vidkv_cpu::attention::accumulate_tokens(&st.p[q * g..][..n], &vrows, d, aq);
        }
        t0 += n;
    }
}

#[inline(always)]
fn f16_at(bytes: &[u8], i: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]))
}
