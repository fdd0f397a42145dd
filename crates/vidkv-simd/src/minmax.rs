//! Fused decode attention on min/max caches (KIVI-style): per-channel min/max keys with
//! per-token or per-channel min/max values (presets `kivi2`, `kivi4`, `pc2`, `xquant`, `ott2`).
//!
//! Per block of G tokens, shared by the query heads of a GQA group:
//! * **keys** — `score_t = Σ_c q_c·lo_c + Σ_c (q_c·step_c)·code_{c,t}`: the weights
//!   `w_c = scale·q_c·step_c` and the constant once per head and block, the channel-major codes
//!   unpacked once per block to f32 `[D, G]`, then per head a G-wide weighted sum over channels;
//! * **traced tokens** (OTT) — their scores are replaced by exact dots with their f16 rows;
//! * online softmax in f32 (shared with `sketch.rs`);
//! * **values** — codes unpacked once per block to f32 `[G, D]`; per-token values: per query and
//!   channel group a weighted sum over tokens with weights `p_t·step_{t,g}` plus
//!   `Σ_t p_t·lo_{t,g}`; per-channel values: `lo_c·Σp + step_c·Σ_t p_t·code_{t,c}`.
//!
//! The loops are plain f32 code inlined into each level's `#[target_feature]` entry point, so
//! LLVM vectorizes them for that level (FMA on AVX2/AVX-512, NEON). Parameters are checked as the
//! scalar backend checks them (same [`Error::Corrupt`] messages). Accuracy: f32 summation order
//! only.

use alloc::vec;
use alloc::vec::Vec;

use vidkv_core::{Codec, Error, KeyLayout, Result, Section, ValueLayout};

use crate::attend::HeadCache;
use crate::level::Level;
use crate::math::f16_bits_to_f32;
use crate::sketch::{State, locate, residual};

const BAD_PARAMS: &str = "affine parameters not finite or step negative";

/// Whether `codec` is a min/max configuration this module runs: per-channel keys and per-token
/// or per-channel values (borrowing layers and salient tokens are the caller's business).
pub(crate) fn handles(codec: &Codec) -> bool {
    matches!(codec.key_layout(), KeyLayout::PerChannel { .. })
        && matches!(
            codec.value_layout(),
            ValueLayout::PerToken { .. } | ValueLayout::PerChannel { .. }
        )
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
        Level::Avx512 => {
            // SAFETY: the caller checked the level (AVX-512F/BW/VL/DQ).
            unsafe { x86::attend_avx512(codec, queries, cache, out) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            // SAFETY: the caller checked the level (AVX2 + FMA + F16C).
            unsafe { x86::attend_avx2(codec, queries, cache, out) }
        }
        #[cfg(target_arch = "aarch64")]
        Level::Neon => {
            // SAFETY: the caller checked the level (NEON).
            unsafe { arm::attend_neon(codec, queries, cache, out) }
        }
        _ => attend_with(codec, queries, cache, out),
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    /// # Safety
    /// The CPU must support AVX-512F/BW/VL/DQ, FMA and F16C.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
    pub unsafe fn attend_avx512(
        codec: &Codec,
        queries: &[f32],
        cache: &HeadCache<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        attend_with(codec, queries, cache, out)
    }

    /// # Safety
    /// The CPU must support AVX2, FMA and F16C.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn attend_avx2(
        codec: &Codec,
        queries: &[f32],
        cache: &HeadCache<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        attend_with(codec, queries, cache, out)
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;

    /// # Safety
    /// The CPU must support NEON.
    #[target_feature(enable = "neon")]
    pub unsafe fn attend_neon(
        codec: &Codec,
        queries: &[f32],
        cache: &HeadCache<'_>,
        out: &mut [f32],
    ) -> Result<()> {
        attend_with(codec, queries, cache, out)
    }
}

/// The whole job; inlined into each level's entry point.
#[inline(always)]
fn attend_with(
    codec: &Codec,
    queries: &[f32],
    cache: &HeadCache<'_>,
    out: &mut [f32],
) -> Result<()> {
    let (d, g) = (codec.head_dim(), codec.group());
    let hq = queries.len() / d;
    let scale = 1.0 / libm::sqrtf(d as f32);
    let scaled: Vec<f32> = queries.iter().map(|&x| x * scale).collect();
    let mut st = State::new(hq, d, g);
    let mut blocks = Blocks::new(codec, hq);
    let (kb, vb) = (codec.key_block_bytes(), codec.value_block_bytes());
    for b in 0..cache.blocks {
        let kblock = &cache.key_blocks[b * kb..][..kb];
        blocks
            .scores(codec, &scaled, kblock, &mut st.p)
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

/// Per-block scratch of the key and value passes.
struct Blocks {
    /// Unpacked codes of one block (keys `[D, G]`, then values `[G, D]`).
    codes: Vec<f32>,
    lo: Vec<f32>,
    step: Vec<f32>,
    /// Per-token value parameters, group-major `[groups, G]`.
    lo_t: Vec<f32>,
    step_t: Vec<f32>,
    ones: Vec<f32>,
    /// `[hq, D]` key code weights `scale·q_c·step_c`.
    weights: Vec<f32>,
    /// Token weights of one value group, and one query's weighted code sums.
    token_w: Vec<f32>,
    sums: Vec<f32>,
    traced: Vec<(usize, usize)>,
    traced_row: Vec<f32>,
}

impl Blocks {
    fn new(codec: &Codec, hq: usize) -> Self {
        let (d, g) = (codec.head_dim(), codec.group());
        let params = match *codec.value_layout() {
            ValueLayout::PerToken { channel_group, .. } => g * d.div_ceil(channel_group),
            _ => d,
        };
        Self {
            codes: vec![0.0; g * d],
            lo: vec![0.0; params.max(d)],
            step: vec![0.0; params.max(d)],
            lo_t: vec![0.0; params],
            step_t: vec![0.0; params],
            ones: vec![1.0; g],
            weights: vec![0.0; hq * d],
            token_w: vec![0.0; g],
            sums: vec![0.0; d],
            traced: Vec::new(),
            traced_row: vec![0.0; d],
        }
    }

    /// Scores of every (scaled) query for the block's tokens, `[hq, G]`.
    #[inline(always)]
    fn scores(&mut self, codec: &Codec, q: &[f32], block: &[u8], p: &mut [f32]) -> Result<()> {
        let KeyLayout::PerChannel {
            bits,
            params,
            codes,
        } = *codec.key_layout()
        else {
            unreachable!("per-channel keys")
        };
        let (d, g) = (codec.head_dim(), codec.group());
        read_pairs(block, params, d, &mut self.lo, &mut self.step, 2)?;
        unpack(bits.get(), &block[codes.range()], &mut self.codes[..d * g]);
        for ((qrow, w), row) in q
            .chunks_exact(d)
            .zip(self.weights.chunks_exact_mut(d))
            .zip(p.chunks_exact_mut(g))
        {
            let constant = dot(qrow, &self.lo[..d]);
            w.iter_mut()
                .zip(qrow)
                .zip(&self.step[..d])
                .for_each(|((w, &q), &s)| *w = q * s);
            row.fill(constant);
            fma_rows(w, &self.codes, g, row);
        }
        self.patch_traced(codec, q, block, p)
    }

    /// Replaces the traced tokens' scores (OTT) by exact dots with their f16 rows.
    #[inline(always)]
    fn patch_traced(
        &mut self,
        codec: &Codec,
        q: &[f32],
        block: &[u8],
        p: &mut [f32],
    ) -> Result<()> {
        let Some(layout) = codec.traced_layout() else {
            return Ok(());
        };
        let (d, g) = (codec.head_dim(), codec.group());
        layout.tokens_into(block, g, &mut self.traced)?;
        for &(slot, t) in &self.traced {
            layout.row(block, slot, d, &mut self.traced_row)?;
            for (qrow, row) in q.chunks_exact(d).zip(p.chunks_exact_mut(g)) {
                row[t] = dot(qrow, &self.traced_row);
            }
        }
        Ok(())
    }

    /// Adds the block's weighted values (`p`: `[hq, G]` weights) to `acc` (`[hq, D]`).
    #[inline(always)]
    fn values(&mut self, codec: &Codec, block: &[u8], p: &[f32], acc: &mut [f32]) -> Result<()> {
        let (d, g) = (codec.head_dim(), codec.group());
        match *codec.value_layout() {
            ValueLayout::PerToken {
                bits,
                channel_group,
                params,
                codes,
            } => {
                let groups = d.div_ceil(channel_group);
                let n = g * groups;
                read_pairs(block, params, n, &mut self.lo, &mut self.step, 4)?;
                // Group-major, so that a group's parameters are contiguous over tokens.
                transpose(&self.lo[..n], groups, &mut self.lo_t[..n]);
                transpose(&self.step[..n], groups, &mut self.step_t[..n]);
                unpack(bits.get(), &block[codes.range()], &mut self.codes[..g * d]);
                for (pq, aq) in p.chunks_exact(g).zip(acc.chunks_exact_mut(d)) {
                    for gi in 0..groups {
                        let span = gi * channel_group..((gi + 1) * channel_group).min(d);
                        let (lo, step) = (&self.lo_t[gi * g..][..g], &self.step_t[gi * g..][..g]);
                        self.token_w
                            .iter_mut()
                            .zip(pq)
                            .zip(step)
                            .for_each(|((w, &pt), &s)| *w = pt * s);
                        let lo_sum = dot(pq, lo);
                        let out = &mut aq[span.clone()];
                        fma_rows(&self.token_w, &self.codes[span.start..], d, out);
                        out.iter_mut().for_each(|o| *o += lo_sum);
                    }
                }
            }
            ValueLayout::PerChannel {
                bits,
                params,
                codes,
            } => {
                read_pairs(block, params, d, &mut self.lo, &mut self.step, 2)?;
                unpack(bits.get(), &block[codes.range()], &mut self.codes[..g * d]);
                for (pq, aq) in p.chunks_exact(g).zip(acc.chunks_exact_mut(d)) {
                    self.sums.fill(0.0);
                    fma_rows(pq, &self.codes, d, &mut self.sums);
                    let psum = dot(pq, &self.ones[..g]);
                    for (((a, &s), &lo), &step) in
                        aq.iter_mut().zip(&self.sums).zip(&self.lo).zip(&self.step)
                    {
                        *a += lo * psum + step * s;
                    }
                }
            }
            ValueLayout::Ternary { .. } => {
                return Err(Error::Unsupported {
                    backend: "simd",
                    operation: "attend",
                    reason: "min/max keys are fused with min/max values only",
                });
            }
        }
        Ok(())
    }
}

/// Reads `n` affine pairs of `params` into `lo`/`step`, rejecting non-finite values and negative
/// steps as the scalar backend does; the error offset is that of the bad f16 (`unit` 2, as for
/// per-channel parameters) or of its pair (`unit` 4, as for per-token parameters).
#[inline(always)]
fn read_pairs(
    block: &[u8],
    params: Section,
    n: usize,
    lo: &mut [f32],
    step: &mut [f32],
    unit: usize,
) -> Result<()> {
    let bytes = &block[params.range()][..4 * n];
    let mut bad = false;
    for ((pair, lo), step) in bytes.chunks_exact(4).zip(&mut lo[..n]).zip(&mut step[..n]) {
        let l = u16::from_le_bytes([pair[0], pair[1]]);
        let s = u16::from_le_bytes([pair[2], pair[3]]);
        bad |= l & 0x7c00 == 0x7c00 || s & 0x7c00 == 0x7c00 || s & 0x8000 != 0;
        *lo = f16_bits_to_f32(l);
        *step = f16_bits_to_f32(s);
    }
    if !bad {
        return Ok(());
    }
    let halves = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]));
    let i = halves
        .enumerate()
        .position(|(i, h)| h & 0x7c00 == 0x7c00 || (i % 2 == 1 && h & 0x8000 != 0))
        .unwrap_or(0);
    Err(Error::Corrupt {
        what: BAD_PARAMS,
        offset: params.offset + if unit == 2 { 2 * i } else { 4 * (i / 2) },
    })
}

/// Code tables: the `N = 8 / bits` codes of a byte (LSB first) as floats.
const fn table<const N: usize>() -> [[f32; N]; 256] {
    let bits = 8 / N;
    let mask = (1usize << bits) - 1;
    let mut t = [[0.0f32; N]; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < N {
            t[b][i] = ((b >> (bits * i)) & mask) as f32;
            i += 1;
        }
        b += 1;
    }
    t
}

static CODES1: [[f32; 8]; 256] = table::<8>();
static CODES2: [[f32; 4]; 256] = table::<4>();
static CODES4: [[f32; 2]; 256] = table::<2>();

/// Unpacks `out.len()` codes of `bits` bits (LSB first; a whole number of bytes) to f32.
#[inline(always)]
fn unpack(bits: u32, bytes: &[u8], out: &mut [f32]) {
    match bits {
        4 => unpack_with(&CODES4, bytes, out),
        2 => unpack_with(&CODES2, bytes, out),
        _ => unpack_with(&CODES1, bytes, out),
    }
}

#[inline(always)]
fn unpack_with<const N: usize>(table: &[[f32; N]; 256], bytes: &[u8], out: &mut [f32]) {
    for (o, &b) in out.as_chunks_mut::<N>().0.iter_mut().zip(bytes) {
        *o = table[usize::from(b)];
    }
}

/// `a·b + c`, fused where `std` provides it (a single FMA instruction inside the levels'
/// target features; Rust never contracts `a * b + c` by itself).
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(feature = "std")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(feature = "std"))]
    {
        a * b + c
    }
}

/// `out[c] += Σ_t w[t]·rows[t·stride + c]` for `c < out.len()`, in register-sized chunks of
/// `out` (the accumulators stay in registers while the rows stream by), with fused
/// multiply-adds.
#[inline(always)]
fn fma_rows(w: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let n = out.len();
    let mut c = 0;
    while c + 32 <= n {
        fma_chunk::<32>(w, rows, stride, c, out);
        c += 32;
    }
    while c + 8 <= n {
        fma_chunk::<8>(w, rows, stride, c, out);
        c += 8;
    }
    for c in c..n {
        out[c] = w
            .iter()
            .enumerate()
            .fold(out[c], |a, (t, &wt)| fma(wt, rows[t * stride + c], a));
    }
}

#[inline(always)]
fn fma_chunk<const N: usize>(w: &[f32], rows: &[f32], stride: usize, c: usize, out: &mut [f32]) {
    let out: &mut [f32; N] = (&mut out[c..c + N]).try_into().expect("chunk of N");
    let mut acc = *out;
    for (t, &wt) in w.iter().enumerate() {
        let r: &[f32; N] = rows[t * stride + c..][..N].try_into().expect("chunk of N");
        for i in 0..N {
            acc[i] = fma(wt, r[i], acc[i]);
        }
    }
    *out = acc;
}

/// `Σ a_i·b_i` over eight independent partial sums (vectorizes; a single running f32 sum
/// cannot be reordered by the compiler).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.as_chunks::<8>(), b.as_chunks::<8>());
    for (x, y) in ca.0.iter().zip(cb.0) {
        for i in 0..8 {
            acc[i] = fma(x[i], y[i], acc[i]);
        }
    }
    let tail: f32 = ca.1.iter().zip(cb.1).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `[rows, cols]` row-major `src` into `[cols, rows]` `dst`.
#[inline(always)]
fn transpose(src: &[f32], cols: usize, dst: &mut [f32]) {
    let rows = src.len() / cols;
    for (r, row) in src.chunks_exact(cols).enumerate() {
        for (c, &x) in row.iter().enumerate() {
            dst[c * rows + r] = x;
        }
    }
}
