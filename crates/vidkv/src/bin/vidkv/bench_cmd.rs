//! `vidkv bench`: one decode step of attention for a model's layer shape over an f32 cache, an
//! f16 cache (the baseline every ratio is against) and the packed cache of each scheme, per
//! backend and thread count; plus encode throughput of prefill and append.

use std::io::{self, Write};

use clap::Args;
use half::f16;
use vidkv::attention::{DenseCache, attend_dense, attend_threaded};
use vidkv::bench::{EncodeRow, Rng, Shape, StepRow, fastest_ms, read_bandwidth, synthetic_kv};
use vidkv::{
    CacheConfig, Codec, HeadDim, KvCache, KvQuantBackend, Result, Salient, ScalarBackend, Scheme,
};

use crate::stdout_error;

/// `vidkv bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Tokens per sequence (repeatable). Default: 4096, 16384, 65536.
    #[arg(long = "tokens", value_name = "T")]
    pub tokens: Vec<usize>,
    /// Sequences per decode step.
    #[arg(long, default_value_t = 1, value_name = "B")]
    pub batch: usize,
    /// Thread counts (repeatable). Default: 1 and the number of CPUs.
    #[arg(long = "threads", value_name = "N")]
    pub threads: Vec<usize>,
    /// Schemes (repeatable). Default: all presets.
    #[arg(long = "scheme", value_name = "NAME")]
    pub schemes: Vec<String>,
    /// KV heads, query heads, head dimension (default: Qwen2-7B / LLaVA-OneVision-7B).
    #[arg(long, default_value_t = vidkv::bench::QWEN2_7B.kv_heads)]
    pub kv_heads: usize,
    /// Query heads.
    #[arg(long, default_value_t = vidkv::bench::QWEN2_7B.query_heads)]
    pub query_heads: usize,
    /// Head dimension.
    #[arg(long, default_value_t = vidkv::bench::QWEN2_7B.head_dim)]
    pub head_dim: usize,
    /// Decode steps timed per row; the fastest counts.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub reps: usize,
    /// Residual window R and attention sinks S of the packed caches.
    #[arg(long, default_value_t = vidkv::cache::DEFAULT_RESIDUAL)]
    pub residual: usize,
    /// Attention sinks.
    #[arg(long, default_value_t = vidkv::cache::DEFAULT_SINKS)]
    pub sinks: usize,
    /// Tokens appended one at a time for the append throughput.
    #[arg(long, default_value_t = 2048)]
    pub append_tokens: usize,
    /// Size of the buffer the read bandwidth is measured on, MiB (far larger than the caches).
    #[arg(long, default_value_t = 1024, value_name = "MIB")]
    pub bandwidth_mib: usize,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// `cpu` (the rows above, per thread count) or `cuda`: the GPU benchmark of vidkv-cuda (fused
    /// attention over the packed cache on the device, prefill encode, copy bandwidth; JSON lines;
    /// needs the `cuda` feature).
    #[arg(long, default_value = "cpu", value_name = "BACKEND")]
    pub backend: String,
    /// Traced outlier tokens per key block for every scheme (0 turns ott2's tracing off).
    #[arg(long, value_name = "N")]
    pub trace_tokens: Option<u8>,
    #[command(flatten)]
    pub sketch: crate::args::SketchArgs,
}

/// `vidkv bench --backend cuda`: `vidkv_cuda::bench` on the same shape, schemes and token counts.
#[cfg(feature = "cuda")]
fn cuda_bench(a: &BenchArgs) -> Result<()> {
    let mut schemes = crate::args::schemes(&a.schemes)?;
    if a.schemes.is_empty() {
        schemes = vec![Scheme::Vidkv];
    }
    let d = vidkv_cuda::bench::BenchOptions::default();
    let options = vidkv_cuda::bench::BenchOptions {
        schemes,
        batches: vec![a.batch],
        tokens: if a.tokens.is_empty() {
            d.tokens
        } else {
            a.tokens.clone()
        },
        reps: a.reps.max(d.reps),
        kv_heads: a.kv_heads,
        query_heads: a.query_heads,
        head_dim: a.head_dim,
        residual: a.residual,
        sinks: a.sinks,
        tune: false,
    };
    let mut out = io::stdout().lock();
    vidkv_cuda::bench::run(&options, &mut |line| {
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    })
    .map_err(|e| {
        vidkv::Error::from(vidkv_core::Error::Backend {
            backend: "cuda",
            message: e.to_string(),
        })
    })
}

#[cfg(not(feature = "cuda"))]
fn cuda_bench(_: &BenchArgs) -> Result<()> {
    Err(vidkv::Error::from(vidkv_core::Error::Unsupported {
        backend: "cuda",
        operation: "bench",
        reason: "this vidkv was built without the `cuda` feature",
    }))
}

pub fn bench(a: &BenchArgs) -> Result<()> {
    match a.backend.as_str() {
        "cpu" => {}
        "cuda" => return cuda_bench(a),
        _ => {
            return Err(vidkv::Error::from(vidkv_core::Error::InvalidConfig {
                reason: "--backend is `cpu` or `cuda`",
            }));
        }
    }
    let tokens = if a.tokens.is_empty() {
        vec![4096, 16384, 65536]
    } else {
        a.tokens.clone()
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut threads = if a.threads.is_empty() {
        vec![1, cpus]
    } else {
        a.threads.clone()
    };
    threads.dedup();
    let schemes = crate::args::schemes(&a.schemes)?;
    let shape = Shape {
        kv_heads: a.kv_heads,
        query_heads: a.query_heads,
        head_dim: a.head_dim,
    };
    let mut out = io::stdout().lock();
    let mut say = |line: String| writeln!(out, "{line}").and_then(|()| out.flush());

    // Memory-read bandwidth in this run, per thread count (a buffer far larger than any cache).
    let bandwidth: Vec<(usize, f64)> = threads
        .iter()
        .map(|&t| (t, read_bandwidth(a.bandwidth_mib << 20, t, 3)))
        .collect();
    if !a.json {
        for (t, bw) in &bandwidth {
            say(format!(
                "read bandwidth, {t} thread(s), 1 GiB buffer: {bw:.1} GB/s"
            ))
            .map_err(stdout_error)?;
        }
        say(format!(
            "shape: {} query heads / {} KV heads, D = {}; batch {}; R = {}, S = {}\n\n\
             {:<8} {:<11} {:>7} {:>7} {:>10} {:>12} {:>8} {:>8} {:>10}",
            shape.query_heads,
            shape.kv_heads,
            shape.head_dim,
            a.batch,
            a.residual,
            a.sinks,
            "backend",
            "scheme",
            "tokens",
            "threads",
            "ms/step",
            "MB/step",
            "GB/s",
            "% read",
            "vs f16"
        ))
        .map_err(stdout_error)?;
    }
    let mut encode_rows = Vec::new();
    let mut rng = Rng(0x5eed);
    for &t in &tokens {
        let data: Vec<(Vec<f32>, Vec<f32>)> = (0..a.batch)
            .map(|_| synthetic_kv(&mut rng, shape, t))
            .collect();
        let q: Vec<f32> = (0..a.batch * shape.query_heads * shape.head_dim)
            .map(|_| rng.normal())
            .collect();
        let mut o = vec![0.0f32; q.len()];
        let f32_caches: Vec<DenseCache> = data
            .iter()
            .map(|(k, v)| DenseCache::F32 {
                keys: k.clone(),
                values: v.clone(),
            })
            .collect();
        let f16_caches: Vec<DenseCache> = data
            .iter()
            .map(|(k, v)| DenseCache::F16 {
                keys: k.iter().map(|&x| f16::from_f32(x)).collect(),
                values: v.iter().map(|&x| f16::from_f32(x)).collect(),
            })
            .collect();
        let seqs: Vec<usize> = (0..a.batch).collect();
        // Dense baselines (the scalar crate's kernels), per thread count.
        let mut baselines = Vec::new();
        for &(th, _) in &bandwidth {
            for (name, dense) in [("f32", &f32_caches), ("f16", &f16_caches)] {
                let ms = fastest_ms(a.reps, || {
                    attend_dense(dense, shape.kv_heads, shape.head_dim, &q, &mut o, th)
                });
                let bytes = dense.iter().map(DenseCache::bytes).sum();
                baselines.push((th, name, ms, bytes));
            }
        }
        let mut rows = Vec::new();
        let run = Run {
            a,
            shape,
            data: &data,
            q: &q,
            seqs: &seqs,
            bandwidth: &bandwidth,
        };
        run.packed(&ScalarBackend, &schemes, &mut rows, &mut encode_rows)?;
        #[cfg(feature = "simd")]
        run.packed(
            &vidkv_simd::SimdBackend::new(),
            &schemes,
            &mut rows,
            &mut encode_rows,
        )?;
        for &(th, bw) in &bandwidth {
            let f16_ms = baselines
                .iter()
                .find(|b| b.0 == th && b.1 == "f16")
                .map_or(f64::NAN, |b| b.2);
            let dense = baselines
                .iter()
                .filter(|b| b.0 == th)
                .map(|&(_, name, ms, bytes)| ("scalar", name, ms, bytes));
            let packed = rows
                .iter()
                .filter(|r: &&(usize, &str, &str, f64, usize)| r.0 == th)
                .map(|&(_, backend, scheme, ms, bytes)| (backend, scheme, ms, bytes));
            for (backend, scheme, ms, bytes) in dense.chain(packed) {
                let gbs = bytes as f64 / (ms * 1e-3) / 1e9;
                let row = StepRow {
                    kind: "attention",
                    backend,
                    scheme,
                    tokens: t,
                    batch: a.batch,
                    threads: th,
                    kv_heads: shape.kv_heads,
                    query_heads: shape.query_heads,
                    head_dim: shape.head_dim,
                    ms_per_step: ms,
                    bytes_per_step: bytes,
                    gb_per_s: gbs,
                    read_gb_per_s: bw,
                    fraction_of_read_bw: gbs / bw,
                    speedup_vs_f16: f16_ms / ms,
                };
                let line = if a.json {
                    serde_json::to_string(&row)
                        .map_err(io::Error::other)
                        .map_err(stdout_error)?
                } else {
                    format!(
                        "{:<8} {:<11} {:>7} {:>7} {:>10.2} {:>12.1} {:>8.2} {:>7.1}% {:>9.2}×",
                        row.backend,
                        row.scheme,
                        row.tokens,
                        row.threads,
                        row.ms_per_step,
                        row.bytes_per_step as f64 / 1e6,
                        row.gb_per_s,
                        100.0 * row.fraction_of_read_bw,
                        row.speedup_vs_f16
                    )
                };
                say(line).map_err(stdout_error)?;
            }
        }
    }
    if !a.json {
        say(format!(
            "\nencode, GB/s of f16 input (K and V):\n{:<8} {:<11} {:>7} {:>10} {:>10} {:>14}",
            "backend", "scheme", "tokens", "prefill", "append", "µs/append"
        ))
        .map_err(stdout_error)?;
    }
    for r in &encode_rows {
        let line = if a.json {
            serde_json::to_string(r)
                .map_err(io::Error::other)
                .map_err(stdout_error)?
        } else {
            format!(
                "{:<8} {:<11} {:>7} {:>10.3} {:>10.3} {:>14.1}",
                r.backend,
                r.scheme,
                r.tokens,
                r.prefill_gb_per_s,
                r.append_gb_per_s,
                r.append_us_per_token
            )
        };
        say(line).map_err(stdout_error)?;
    }
    Ok(())
}

/// What every backend's packed rows of one token count share.
struct Run<'r> {
    a: &'r BenchArgs,
    shape: Shape,
    data: &'r [(Vec<f32>, Vec<f32>)],
    q: &'r [f32],
    seqs: &'r [usize],
    bandwidth: &'r [(usize, f64)],
}

impl Run<'_> {
    /// Builds each scheme's cache on `backend`, times its decode step for every thread count
    /// (rows: threads, backend, scheme, ms, bytes) and its prefill and appends.
    fn packed<B>(
        &self,
        backend: &B,
        schemes: &[Scheme],
        rows: &mut Vec<(usize, &'static str, &'static str, f64, usize)>,
        encode_rows: &mut Vec<EncodeRow>,
    ) -> Result<()>
    where
        B: KvQuantBackend + Sync,
        B::Buffer: Send + Sync,
    {
        let (a, shape) = (self.a, self.shape);
        let tokens = self.data[0].0.len() / shape.kv_heads / shape.head_dim;
        let mut o = vec![0.0f32; self.q.len()];
        for &scheme in schemes {
            let (cache, prefill_ms) = packed_cache(backend, scheme, shape, a, self.data)?;
            let (append_ms, appended) =
                append_time(backend, scheme, shape, a, &self.data[0].0, &self.data[0].1)?;
            let input = |n: usize| (n * shape.kv_heads * shape.head_dim * 2 * 2) as f64;
            encode_rows.push(EncodeRow {
                kind: "encode",
                backend: backend.name(),
                scheme: scheme.name(),
                tokens,
                prefill_gb_per_s: input(tokens * a.batch) / (prefill_ms * 1e-3) / 1e9,
                append_gb_per_s: input(appended) / (append_ms * 1e-3) / 1e9,
                append_us_per_token: append_ms * 1e3 / appended.max(1) as f64,
            });
            let m = cache.memory();
            let bytes = m.key_blocks + m.value_blocks + m.salient_blocks + m.residual + m.metadata;
            for &(th, _) in self.bandwidth {
                let mut result = Ok(());
                let ms = fastest_ms(a.reps, || {
                    if result.is_ok() {
                        result = attend_threaded(&cache, self.seqs, self.q, &mut o, th);
                    }
                });
                result?;
                rows.push((th, backend.name(), scheme.name(), ms, bytes));
            }
        }
        Ok(())
    }
}

/// Salient flags of a vidkv-stp sequence: value norms as the score.
fn salient_scores(values: &[f32], shape: Shape, tokens: usize) -> Vec<f32> {
    let d = shape.head_dim;
    (0..tokens)
        .map(|t| {
            (0..shape.kv_heads)
                .map(|h| {
                    values[(h * tokens + t) * d..][..d]
                        .iter()
                        .map(|x| x * x)
                        .sum::<f32>()
                        .sqrt()
                })
                .sum()
        })
        .collect()
}

fn config(scheme: Scheme, shape: Shape, a: &BenchArgs) -> Result<CacheConfig> {
    let options = a.sketch.apply(vidkv::SchemeOptions {
        traced_tokens: a.trace_tokens,
        ..vidkv::SchemeOptions::default()
    })?;
    let codec = Codec::new(options.config(scheme, HeadDim::new(shape.head_dim)?))?;
    Ok(CacheConfig {
        residual: a.residual,
        sinks: a.sinks,
        ..CacheConfig::new(codec, shape.kv_heads, shape.query_heads)
    })
}

/// A packed cache with every sequence prefilled, and the prefill time in ms.
fn packed_cache<'b, B: KvQuantBackend>(
    backend: &'b B,
    scheme: Scheme,
    shape: Shape,
    a: &BenchArgs,
    data: &[(Vec<f32>, Vec<f32>)],
) -> Result<(KvCache<&'b B>, f64)> {
    let mut cache = KvCache::new(backend, config(scheme, shape, a)?)?;
    let start = std::time::Instant::now();
    for (k, v) in data {
        let seq = cache.add_sequence()?;
        let tokens = k.len() / shape.kv_heads / shape.head_dim;
        let scores;
        let salient = match scheme.salient_fraction() {
            Some(fraction) => {
                scores = salient_scores(v, shape, tokens);
                Salient::Scores {
                    scores: &scores,
                    fraction,
                }
            }
            None => Salient::None,
        };
        cache.prefill(seq, k, v, salient)?;
    }
    Ok((cache, start.elapsed().as_secs_f64() * 1e3))
}

/// Time to append `append_tokens` tokens one at a time to an empty sequence (ms), and how many.
fn append_time<B: KvQuantBackend>(
    backend: &B,
    scheme: Scheme,
    shape: Shape,
    a: &BenchArgs,
    keys: &[f32],
    values: &[f32],
) -> Result<(f64, usize)> {
    let (kv, d) = (shape.kv_heads, shape.head_dim);
    let tokens = keys.len() / kv / d;
    let n = a.append_tokens.min(tokens);
    let rows = |x: &[f32], t: usize| -> Vec<f32> {
        (0..kv)
            .flat_map(|h| x[(h * tokens + t) * d..][..d].iter().copied())
            .collect()
    };
    let steps: Vec<(Vec<f32>, Vec<f32>)> =
        (0..n).map(|t| (rows(keys, t), rows(values, t))).collect();
    let mut cache = KvCache::new(backend, config(scheme, shape, a)?)?;
    let seq = cache.add_sequence()?;
    let start = std::time::Instant::now();
    for (i, (k, v)) in steps.iter().enumerate() {
        cache.append_token(seq, k, v, scheme.salient_fraction().is_some() && i % 5 == 0)?;
    }
    Ok((start.elapsed().as_secs_f64() * 1e3, n))
}
