//! Fused decode attention on host slices: one KV head and the query heads that share it (GQA).
//!
//! `out[h] = softmax(q_h·Kᵀ/√D)·V` over the packed blocks and the f16 residual. The SIMD levels
//! run [`crate::kernel`] on VidKV mixed keys + ternary values (int8 weights, f32 softmax; within
//! the tolerance documented on [`attend_head`]); H1B-KV sign-sketch keys run the fused popcount
//! kernel of `sketch.rs` at every level (also [`Level::Scalar`]) when their values are per-token
//! min/max (as in the `h1b` preset); per-channel min/max keys with min/max values (KIVI, `pc2`,
//! `xquant`, `ott2`) run the fused f32 kernel of `minmax.rs` above [`Level::Scalar`] (f32
//! decode `lo + code·step`, so within f16 rounding of the decoded cache); every other
//! configuration, and [`Level::Scalar`], decodes with the scalar backend and computes exact f32 attention (for
//! sign-sketch keys [`reference_attend`] scores blocks with the same estimator, in f64).

use alloc::vec;
use alloc::vec::Vec;

use vidkv_core::{Codec, Error, Result};

use crate::fft::{Lanes, W};
use crate::kernel::{Plan, QuantState, slot_count, slots_to_channels};
use crate::level::{self, Level};
use crate::math::{exp_approx, f16_bits_to_f32};

/// One KV head's cache as host bytes, as the streaming cache keeps it.
#[derive(Debug, Clone, Copy)]
pub struct HeadCache<'a> {
    /// `blocks` packed key blocks.
    pub key_blocks: &'a [u8],
    /// `blocks` packed value blocks.
    pub value_blocks: &'a [u8],
    /// Number of quantized blocks.
    pub blocks: usize,
    /// LE f16 keys of the unquantized tokens, `[residual_tokens, D]`.
    pub residual_keys: &'a [u8],
    /// LE f16 values of the unquantized tokens.
    pub residual_values: &'a [u8],
    /// Number of unquantized tokens.
    pub residual_tokens: usize,
}

fn shape(what: &'static str, expected: usize, actual: usize) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            what,
            expected,
            actual,
        })
    }
}

fn check_shapes(codec: &Codec, queries: &[f32], cache: &HeadCache<'_>, out: &[f32]) -> Result<()> {
    let d = codec.head_dim();
    if !queries.len().is_multiple_of(d) {
        return Err(Error::ShapeMismatch {
            what: "queries (whole rows of head_dim)",
            expected: queries.len() / d * d,
            actual: queries.len(),
        });
    }
    shape("attention output", queries.len(), out.len())?;
    shape(
        "key blocks bytes",
        cache.blocks * codec.key_block_bytes(),
        cache.key_blocks.len(),
    )?;
    shape(
        "value blocks bytes",
        cache.blocks * codec.value_block_bytes(),
        cache.value_blocks.len(),
    )?;
    shape(
        "residual key bytes",
        cache.residual_tokens * d * 2,
        cache.residual_keys.len(),
    )?;
    shape(
        "residual value bytes",
        cache.residual_tokens * d * 2,
        cache.residual_values.len(),
    )?;
    if let Some(i) = queries.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { index: i });
    }
    Ok(())
}

/// Fused decode attention for the query heads `queries` (`[hq, D]` f32) sharing one KV head.
///
/// Tolerance of the SIMD levels against exact f32 attention on the same bytes: the query-side
/// weights are quantized to int8 per block (relative error ≲ 1/254 of the block's largest
/// weight) and the softmax weights to 8 bits (7 on NEON) per block, so scores carry an absolute
/// error of roughly `0.01·max|score contribution|` and outputs a relative error of about 1e-2 of
/// the output norm on real data; the conformance tolerance is stated where it is checked.
pub fn attend_head(
    level: Level,
    codec: &Codec,
    queries: &[f32],
    cache: &HeadCache<'_>,
    out: &mut [f32],
) -> Result<()> {
    level::check(level)?;
    check_shapes(codec, queries, cache, out)?;
    if crate::sketch::handles(codec) {
        return crate::sketch::attend(level, codec, queries, cache, out);
    }
    if level != Level::Scalar && crate::minmax::handles(codec) {
        return crate::minmax::attend(level, codec, queries, cache, out);
    }
    let d = codec.head_dim();
    let plan = match level {
        Level::Scalar => None,
        _ => Plan::new(codec, wide_kernel(level)),
    };
    let Some(plan) = plan else {
        return reference_attend(codec, queries, cache, out);
    };
    let inv_sqrt_d = 1.0 / libm::sqrtf(d as f32);
    for (qc, oc) in queries.chunks(W * d).zip(out.chunks_mut(W * d)) {
        let hq = qc.len() / d;
        let mut qt = vec![[0.0f32; W]; d];
        for (h, row) in qc.chunks_exact(d).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                qt[c][h] = v * inv_sqrt_d;
            }
        }
        let mut state = QuantState {
            m: [f32::NEG_INFINITY; W],
            l: [0.0; W],
            o_slots: vec![0.0; W * slot_count(&plan)],
        };
        let mut res = Residual::new(d);
        run_level(level, &plan, &qt, hq, cache, &mut state, &mut res)?;
        let slots = slot_count(&plan);
        for (h, o) in oc.chunks_exact_mut(d).enumerate() {
            let mut quant = vec![0.0f32; d];
            slots_to_channels(&plan, &state.o_slots[h * slots..][..slots], &mut quant);
            merge(
                (state.m[h], state.l[h], &quant),
                (res.m[h], res.l[h], &res.o[h * d..][..d]),
                o,
            );
        }
    }
    Ok(())
}

/// Softmax state of the residual tokens for up to `W` queries.
#[derive(Debug)]
pub(crate) struct Residual {
    pub m: [f32; W],
    pub l: [f32; W],
    pub o: Vec<f32>,
}

impl Residual {
    pub fn new(d: usize) -> Self {
        Self {
            m: [f32::NEG_INFINITY; W],
            l: [0.0; W],
            o: vec![0.0; W * d],
        }
    }
}

/// Exact f32 attention over the f16 residual (inlined into each level's entry point).
#[inline(always)]
pub(crate) fn residual_part(
    d: usize,
    qt: &[Lanes],
    hq: usize,
    cache: &HeadCache<'_>,
    res: &mut Residual,
) {
    let r = cache.residual_tokens;
    if r == 0 {
        return;
    }
    let mut krow = vec![0.0f32; d];
    let mut scores = vec![[0.0f32; W]; r];
    for (t, s) in scores.iter_mut().enumerate() {
        for (c, k) in krow.iter_mut().enumerate() {
            let b = &cache.residual_keys[2 * (t * d + c)..];
            *k = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
        }
        let mut acc = [0.0f32; W];
        for (q, &k) in qt.iter().zip(&krow) {
            for h in 0..W {
                acc[h] += q[h] * k;
            }
        }
        *s = acc;
    }
    for h in 0..hq {
        let m = scores.iter().fold(f32::NEG_INFINITY, |a, s| a.max(s[h]));
        res.m[h] = m;
        res.l[h] = 0.0;
    }
    let mut vrow = vec![0.0f32; d];
    for (t, s) in scores.iter().enumerate() {
        for (c, v) in vrow.iter_mut().enumerate() {
            let b = &cache.residual_values[2 * (t * d + c)..];
            *v = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
        }
        for h in 0..hq {
            let p = exp_approx(s[h] - res.m[h]);
            res.l[h] += p;
            for (o, &v) in res.o[h * d..][..d].iter_mut().zip(&vrow) {
                *o += p * v;
            }
        }
    }
}

/// Combines two partial softmax states into the normalized output.
fn merge(a: (f32, f32, &[f32]), b: (f32, f32, &[f32]), out: &mut [f32]) {
    let m = a.0.max(b.0);
    if m == f32::NEG_INFINITY {
        out.iter_mut().for_each(|o| *o = 0.0);
        return;
    }
    let (fa, fb) = (exp_approx(a.0 - m), exp_approx(b.0 - m));
    let l = a.1 * fa + b.1 * fb;
    let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
    for ((o, &x), &y) in out.iter_mut().zip(a.2).zip(b.2) {
        *o = (x * fa + y * fb) * inv;
    }
}

/// Whether `level` runs the 512-bit kernel (its value-slot layout is part of the plan).
fn wide_kernel(level: Level) -> bool {
    #[cfg(target_arch = "x86_64")]
    if level == Level::Avx512 {
        return crate::x86::vnni512::supported();
    }
    let _ = level;
    false
}

fn run_level(
    level: Level,
    plan: &Plan,
    qt: &[Lanes],
    hq: usize,
    cache: &HeadCache<'_>,
    state: &mut QuantState,
    res: &mut Residual,
) -> Result<()> {
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 => {
            // SAFETY: `attend_head` checked that the CPU supports the AVX2 level.
            unsafe { crate::x86::avx2::attend(plan, qt, hq, cache, state, res) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if plan.wide => {
            // SAFETY: `plan.wide` is set only where `vnni512::supported()` (AVX-512, VNNI, VBMI).
            unsafe { crate::x86::vnni512::attend(plan, qt, hq, cache, state, res) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if level::features().avx512vnni => {
            // SAFETY: the AVX-512 level and VNNI were detected.
            unsafe { crate::x86::avx512::attend_vnni(plan, qt, hq, cache, state, res) }
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 => {
            // SAFETY: the AVX-512 level was detected.
            unsafe { crate::x86::avx512::attend(plan, qt, hq, cache, state, res) }
        }
        #[cfg(target_arch = "aarch64")]
        Level::Neon if level::features().dotprod => {
            // SAFETY: NEON with the dot-product extension was detected.
            unsafe { crate::aarch64::neon::attend_dotprod(plan, qt, hq, cache, state, res) }
        }
        #[cfg(target_arch = "aarch64")]
        Level::Neon => {
            // SAFETY: NEON was detected.
            unsafe { crate::aarch64::neon::attend(plan, qt, hq, cache, state, res) }
        }
        _ => Err(Error::Unsupported {
            backend: level.name(),
            operation: "attend",
            reason: "this level is not compiled for this target",
        }),
    }
}

/// Exact f32 attention on the decoded cache (scalar backend decoders): the scalar level, and the
/// fallback for configurations the kernels do not cover.
pub fn reference_attend(
    codec: &Codec,
    queries: &[f32],
    cache: &HeadCache<'_>,
    out: &mut [f32],
) -> Result<()> {
    check_shapes(codec, queries, cache, out)?;
    let d = codec.head_dim();
    let n = cache.blocks * codec.group();
    let total = n + cache.residual_tokens;
    let mut keys = vec![0.0f32; total * d];
    let mut values = vec![0.0f32; total * d];
    vidkv_cpu::decode_key_blocks(codec, cache.key_blocks, &mut keys[..n * d])?;
    vidkv_cpu::decode_value_blocks(codec, cache.value_blocks, &mut values[..n * d])?;
    for (i, (k, v)) in keys[n * d..]
        .iter_mut()
        .zip(values[n * d..].iter_mut())
        .enumerate()
    {
        let kb = &cache.residual_keys[2 * i..];
        let vb = &cache.residual_values[2 * i..];
        *k = f16_bits_to_f32(u16::from_le_bytes([kb[0], kb[1]]));
        *v = f16_bits_to_f32(u16::from_le_bytes([vb[0], vb[1]]));
    }
    let scale = 1.0 / libm::sqrt(d as f64);
    for (q, o) in queries.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mut scores: Vec<f64> = keys
            .chunks_exact(d)
            .map(|k| q.iter().zip(k).map(|(a, b)| f64::from(a * b)).sum::<f64>() * scale)
            .collect();
        if crate::sketch::sketch_keys(codec) {
            // Sign-sketch keys are scored with the estimator, not with the decoded keys.
            let est = vidkv_core::sketch::reference_scores(
                codec,
                cache.key_blocks,
                q,
                1.0 / libm::sqrtf(d as f32),
            )?;
            scores[..n].copy_from_slice(&est);
        }
        let m = scores.iter().fold(f64::NEG_INFINITY, |a, &s| a.max(s));
        let mut acc = vec![0.0f64; d];
        let mut l = 0.0f64;
        for (s, v) in scores.iter().zip(values.chunks_exact(d)) {
            let p = libm::exp(s - m);
            l += p;
            acc.iter_mut()
                .zip(v)
                .for_each(|(a, &x)| *a += p * f64::from(x));
        }
        for (o, a) in o.iter_mut().zip(&acc) {
            *o = if l > 0.0 { (a / l) as f32 } else { 0.0 };
        }
    }
    Ok(())
}

/// One unit of parallel work: a KV head of one sequence with its query heads.
#[derive(Debug)]
pub struct HeadJob<'a> {
    /// `[hq, D]` f32 queries.
    pub queries: &'a [f32],
    /// The head's cache.
    pub cache: HeadCache<'a>,
    /// `[hq, D]` f32 output.
    pub out: &'a mut [f32],
}

/// Runs [`attend_head`] for many (sequence, KV head) jobs on up to `threads` threads
/// (`std::thread::scope`; jobs are dealt round-robin). `threads ≤ 1` runs on the caller.
#[cfg(feature = "std")]
pub fn attend_heads(
    level: Level,
    codec: &Codec,
    jobs: &mut [HeadJob<'_>],
    threads: usize,
) -> Result<()> {
    let threads = threads.clamp(1, jobs.len().max(1));
    if threads == 1 {
        for j in jobs.iter_mut() {
            attend_head(level, codec, j.queries, &j.cache, j.out)?;
        }
        return Ok(());
    }
    let mut lists: Vec<Vec<&mut HeadJob<'_>>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, j) in jobs.iter_mut().enumerate() {
        lists[i % threads].push(j);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = lists
            .into_iter()
            .map(|list| {
                s.spawn(move || {
                    for j in list {
                        attend_head(level, codec, j.queries, &j.cache, j.out)?;
                    }
                    Ok::<(), Error>(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })
}
