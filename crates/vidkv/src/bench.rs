//! The pieces of `vidkv bench`: synthetic caches of a model's layer shape, the memory-read
//! bandwidth the machine reaches in the same run, timing, and the rows it prints.
//!
//! One decode step is one query token: `query_heads` queries attend over every KV head of every
//! sequence of the batch. Times are the fastest of several steps (benchmarks on a shared machine:
//! the minimum is the least disturbed run). Bytes per step are the bytes the kernel must read:
//! the whole dense cache for the baselines; blocks, salient groups and masks, sinks and residual
//! for the fused kernel.

use std::time::Instant;

use serde::Serialize;

/// A layer's attention shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// KV heads.
    pub kv_heads: usize,
    /// Query heads.
    pub query_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
}

/// LLaVA-OneVision-7B's language model (Qwen2-7B): 28 query heads, 4 KV heads, D = 128.
pub const QWEN2_7B: Shape = Shape {
    kv_heads: 4,
    query_heads: 28,
    head_dim: 128,
};

/// Deterministic pseudo-random numbers (xorshift64).
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    /// Uniform in [−1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }

    /// Roughly normal (sum of four uniforms), unit variance.
    pub fn normal(&mut self) -> f32 {
        (self.uniform() + self.uniform() + self.uniform() + self.uniform()) * 0.866
    }
}

/// Synthetic `[kv_heads, tokens, D]` keys and values shaped like real ones: keys have a few
/// channels (one in 16) several times larger than the rest and a per-channel offset; values are
/// flat with channel scales within 2.5×.
pub fn synthetic_kv(rng: &mut Rng, shape: Shape, tokens: usize) -> (Vec<f32>, Vec<f32>) {
    let (kv, d) = (shape.kv_heads, shape.head_dim);
    let mut keys = Vec::with_capacity(kv * tokens * d);
    let mut values = Vec::with_capacity(kv * tokens * d);
    for _ in 0..kv * tokens {
        for c in 0..d {
            let big = if c % 16 == 5 { 6.0 } else { 1.0 };
            keys.push(rng.normal() * big + 0.2 * (c % 7) as f32);
            values.push(rng.normal() * (0.6 + 0.3 * (c % 5) as f32));
        }
    }
    (keys, values)
}

/// The fastest of `reps` runs of `f`, in milliseconds (one warm-up run first).
pub fn fastest_ms(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// Sequential read bandwidth in GB/s: `threads` threads each sum their share of a `bytes`-byte
/// buffer (eight independent u64 sums, the loop a compiler streams); the fastest of `reps` passes.
pub fn read_bandwidth(bytes: usize, threads: usize, reps: usize) -> f64 {
    let words: Vec<u64> = (0..bytes / 8).map(|i| i as u64).collect();
    let threads = threads.max(1);
    let chunk = words.len().div_ceil(threads);
    let mut sink = 0u64;
    let ms = fastest_ms(reps, || {
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = words
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        let mut acc = [0u64; 8];
                        let (chunks, rest) = part.as_chunks::<8>();
                        for c in chunks {
                            for i in 0..8 {
                                acc[i] = acc[i].wrapping_add(c[i]);
                            }
                        }
                        acc.iter().chain(rest).fold(0u64, |a, &b| a.wrapping_add(b))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        sink = sink.wrapping_add(sums.iter().fold(0u64, |a, &b| a.wrapping_add(b)));
    });
    std::hint::black_box(sink);
    bytes as f64 / (ms * 1e-3) / 1e9
}

/// One decode-step line of `vidkv bench`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    /// Always `"attention"`.
    pub kind: &'static str,
    /// Backend (`scalar` for the dense baselines, which are the scalar crate's kernels).
    pub backend: &'static str,
    /// Scheme name, or `f32` / `f16` for the dense baselines.
    pub scheme: &'static str,
    /// Tokens per sequence T.
    pub tokens: usize,
    /// Sequences in the batch.
    pub batch: usize,
    /// Threads.
    pub threads: usize,
    /// KV heads, query heads, head dimension.
    pub kv_heads: usize,
    /// Query heads.
    pub query_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Fastest decode step, in ms.
    pub ms_per_step: f64,
    /// Bytes a step reads.
    pub bytes_per_step: usize,
    /// `bytes_per_step / time`, GB/s.
    pub gb_per_s: f64,
    /// Read bandwidth measured in this run with the same thread count, GB/s.
    pub read_gb_per_s: f64,
    /// `gb_per_s / read_gb_per_s`.
    pub fraction_of_read_bw: f64,
    /// Time of the f16 baseline (same tokens, batch and threads) over this row's time.
    pub speedup_vs_f16: f64,
}

/// One encode line of `vidkv bench`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EncodeRow {
    /// Always `"encode"`.
    pub kind: &'static str,
    /// Backend.
    pub backend: &'static str,
    /// Scheme name.
    pub scheme: &'static str,
    /// Tokens per sequence of the prefill.
    pub tokens: usize,
    /// Prefill throughput in GB/s of f16 input (keys and values).
    pub prefill_gb_per_s: f64,
    /// Append throughput (one token at a time, blocks encoded as they leave the residual
    /// window), GB/s of f16 input.
    pub append_gb_per_s: f64,
    /// Mean time of one append (all KV heads of one layer), microseconds.
    pub append_us_per_token: f64,
}
