//! Benchmark helpers shared by `vidkv bench` and `examples/simd_bench.rs`: the single-thread read
//! bandwidth, a synthetic VidKV cache, and decode-attention timings of every level next to the
//! f16-cache baseline, all measured in the same run.
#![cfg(feature = "std")]

use std::time::Instant;
use std::vec::Vec;

use vidkv_core::{Codec, GroupSize, HeadDim, Result, Scheme};

use crate::attend::{HeadCache, HeadJob, attend_heads};
use crate::level::Level;

/// Attention benchmark shape (defaults: the 28/4 heads, D = 128, T = 65536).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Query heads.
    pub query_heads: usize,
    /// KV heads.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Tokens per sequence (quantized part; a multiple of G).
    pub tokens: usize,
    /// Group size G.
    pub group: usize,
    /// Distinct encoded blocks per head; the cache repeats them to reach `tokens` (the encoder
    /// is not what is measured here).
    pub distinct_blocks: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Self {
            query_heads: 28,
            kv_heads: 4,
            head_dim: 128,
            tokens: 65536,
            group: 32,
            distinct_blocks: 256,
        }
    }
}

/// One row of the attention table.
#[derive(Debug, Clone)]
pub struct Row {
    /// "vidkv" or "f16".
    pub cache: &'static str,
    /// Level.
    pub level: Level,
    /// Threads.
    pub threads: usize,
    /// Median time of one decode step over all heads, seconds.
    pub seconds: f64,
    /// Bytes the step must read.
    pub bytes: usize,
}

impl Row {
    /// Bytes per second over the bytes the step must read.
    pub fn bandwidth(&self) -> f64 {
        self.bytes as f64 / self.seconds
    }
}

/// Single-thread sequential read bandwidth (bytes/s) over a buffer of `bytes` (median of `reps`).
pub fn read_bandwidth(bytes: usize, reps: usize) -> f64 {
    let words = bytes / 8;
    let buf: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9))
        .collect();
    let mut times = Vec::new();
    let mut sink = 0u64;
    for _ in 0..reps.max(1) {
        let t = Instant::now();
        let mut acc = [0u64; 8];
        for c in buf.chunks_exact(8) {
            for i in 0..8 {
                acc[i] = acc[i].wrapping_add(c[i]);
            }
        }
        sink = sink.wrapping_add(acc.iter().fold(0, |a, &b| a ^ b));
        times.push(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(sink);
    (words * 8) as f64 / median(&mut times)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// A synthetic cache: per KV head packed blocks and the same tokens as f16.
#[derive(Debug)]
pub struct Synthetic {
    /// The codec (vidkv preset).
    pub codec: Codec,
    /// Packed keys per head.
    pub keys: Vec<Vec<u8>>,
    /// Packed values per head.
    pub values: Vec<Vec<u8>>,
    /// f16 keys per head, `[tokens, D]` LE bytes.
    pub f16_keys: Vec<Vec<u8>>,
    /// f16 values per head.
    pub f16_values: Vec<Vec<u8>>,
    /// Queries per KV head, `[hq, D]`.
    pub queries: Vec<Vec<f32>>,
    /// The shape.
    pub shape: Shape,
}

impl Synthetic {
    /// Builds the cache: keys with a few large channels (as trained models have), flatter values.
    pub fn new(shape: Shape) -> Result<Self> {
        let codec = Codec::new(
            Scheme::Vidkv.config(HeadDim::new(shape.head_dim)?, GroupSize::new(shape.group)?),
        )?;
        let (d, g) = (shape.head_dim, shape.group);
        let blocks = shape.tokens / g;
        let distinct = shape.distinct_blocks.min(blocks).max(1);
        let hq = shape.query_heads / shape.kv_heads;
        let mut rng = Rng(0x5EED);
        let mut s = Self {
            codec,
            keys: Vec::new(),
            values: Vec::new(),
            f16_keys: Vec::new(),
            f16_values: Vec::new(),
            queries: Vec::new(),
            shape,
        };
        for _ in 0..shape.kv_heads {
            let n = distinct * g;
            let k: Vec<f32> = (0..n * d)
                .map(|i| {
                    let c = i % d;
                    let big = if c % 16 == 3 { 6.0 } else { 1.0 };
                    rng.f() * big + 0.3 * (c as f32 * 0.7).sin()
                })
                .collect();
            let v: Vec<f32> = (0..n * d).map(|_| rng.f()).collect();
            let mut kb = std::vec![0u8; distinct * codec.key_block_bytes()];
            let mut vb = std::vec![0u8; distinct * codec.value_block_bytes()];
            vidkv_cpu::encode_key_blocks(&codec, &k, None, &mut kb)?;
            vidkv_cpu::encode_value_blocks(&codec, &v, &mut vb)?;
            let tile = |src: &[u8], per: usize| -> Vec<u8> {
                (0..blocks)
                    .flat_map(|b| src[(b % distinct) * per..][..per].iter().copied())
                    .collect()
            };
            s.keys.push(tile(&kb, codec.key_block_bytes()));
            s.values.push(tile(&vb, codec.value_block_bytes()));
            let f16 = |x: &[f32]| -> Vec<u8> {
                x.iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect()
            };
            s.f16_keys.push(tile(&f16(&k), g * d * 2));
            s.f16_values.push(tile(&f16(&v), g * d * 2));
            s.queries
                .push((0..hq * d).map(|_| rng.f() * 1.5).collect::<Vec<f32>>());
        }
        Ok(s)
    }

    /// Bytes one decode step reads from the packed cache (all heads).
    pub fn packed_bytes(&self) -> usize {
        self.keys.iter().chain(&self.values).map(Vec::len).sum()
    }

    /// Bytes one decode step reads from the f16 cache.
    pub fn f16_bytes(&self) -> usize {
        self.f16_keys
            .iter()
            .chain(&self.f16_values)
            .map(Vec::len)
            .sum()
    }

    /// Times the packed-cache attention (all heads) at `level` on `threads` threads.
    pub fn time_packed(&self, level: Level, threads: usize, reps: usize) -> Result<Row> {
        let d = self.shape.head_dim;
        let blocks = self.shape.tokens / self.shape.group;
        let mut outs: Vec<Vec<f32>> = self
            .queries
            .iter()
            .map(|q| std::vec![0.0; q.len()])
            .collect();
        let mut times = Vec::new();
        for _ in 0..reps.max(1) + 1 {
            let mut jobs: Vec<HeadJob<'_>> = self
                .queries
                .iter()
                .zip(outs.iter_mut())
                .enumerate()
                .map(|(h, (q, o))| HeadJob {
                    queries: q,
                    cache: HeadCache {
                        key_blocks: &self.keys[h],
                        value_blocks: &self.values[h],
                        blocks,
                        residual_keys: &[],
                        residual_values: &[],
                        residual_tokens: 0,
                    },
                    out: o,
                })
                .collect();
            let t = Instant::now();
            attend_heads(level, &self.codec, &mut jobs, threads)?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.remove(0);
        let _ = d;
        Ok(Row {
            cache: "vidkv",
            level,
            threads,
            seconds: median(&mut times),
            bytes: self.packed_bytes(),
        })
    }

    /// Times the f16-cache baseline (all heads) at `level` on `threads` threads.
    pub fn time_f16(&self, level: Level, threads: usize, reps: usize) -> Result<Row> {
        let d = self.shape.head_dim;
        let t_tokens = self.shape.tokens;
        let mut times = Vec::new();
        for _ in 0..reps.max(1) + 1 {
            let mut outs: Vec<Vec<f32>> = self
                .queries
                .iter()
                .map(|q| std::vec![0.0; q.len()])
                .collect();
            let t = Instant::now();
            let heads: Vec<(usize, &mut Vec<f32>)> = outs.iter_mut().enumerate().collect();
            let threads = threads.clamp(1, heads.len());
            let mut lists: Vec<Vec<(usize, &mut Vec<f32>)>> =
                (0..threads).map(|_| Vec::new()).collect();
            for (i, job) in heads.into_iter().enumerate() {
                lists[i % threads].push(job);
            }
            std::thread::scope(|s| {
                let hs: Vec<_> = lists
                    .into_iter()
                    .map(|list| {
                        s.spawn(move || {
                            for (h, o) in list {
                                crate::baseline::attend_f16(
                                    level,
                                    d,
                                    &self.queries[h],
                                    &self.f16_keys[h],
                                    &self.f16_values[h],
                                    t_tokens,
                                    o,
                                )?;
                            }
                            Ok::<(), vidkv_core::Error>(())
                        })
                    })
                    .collect();
                hs.into_iter()
                    .try_for_each(|h| h.join().expect("bench thread panicked"))
            })?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.remove(0);
        Ok(Row {
            cache: "f16",
            level,
            threads,
            seconds: median(&mut times),
            bytes: self.f16_bytes(),
        })
    }
}
