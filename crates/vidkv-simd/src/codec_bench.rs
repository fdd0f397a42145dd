//! Encode, decode and append timings of every level next to the scalar backend, in one run
//! (`examples/simd_bench.rs`). Single thread: the encoders run one call per head.
#![cfg(feature = "std")]

use std::time::Instant;
use std::vec::Vec;

use half::f16;
use vidkv_core::{
    CacheConfig, Codec, DType, GroupSize, HeadDim, HeadTensor, KvCache, KvQuantBackend, Result,
    Scheme,
};

use crate::backend::SimdBackend;
use crate::level::Level;

/// One level's row of the codec table.
#[derive(Debug, Clone)]
pub struct CodecRow {
    /// Level (`Scalar` is the scalar backend).
    pub level: Level,
    /// Encode (keys + values), GB/s of f16 input.
    pub encode_gb_s: f64,
    /// Decode (keys + values), GB/s of f16-equivalent output (2 bytes per element).
    pub decode_gb_s: f64,
    /// Append through [`KvCache`], µs per token per layer (all KV heads), amortised.
    pub append_us: f64,
    /// Whether the level's encoded bytes equal the scalar backend's.
    pub identical: bool,
}

/// Keys with a few large channels (as trained models have), flatter values, as f16 bytes.
pub fn synthetic_f16(tokens: usize, d: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let mut k = Vec::with_capacity(2 * tokens * d);
    let mut v = Vec::with_capacity(2 * tokens * d);
    for i in 0..tokens * d {
        let c = i % d;
        let big = if c % 16 == 3 { 6.0 } else { 1.0 };
        let key = next() * big + 0.3 * (c as f32 * 0.7).sin();
        k.extend_from_slice(&f16::from_f32(key).to_le_bytes());
        v.extend_from_slice(&f16::from_f32(next()).to_le_bytes());
    }
    (k, v)
}

/// A clock: on Linux the calling thread's on-CPU time (`/proc/thread-self/schedstat`), which
/// other processes on a shared machine do not inflate; elsewhere wall time. The kernel accounts
/// the running slice at scheduler ticks (a few ms), so timed spans are made ≥ 100 ms
/// ([`per_call`]).
struct Clock(Instant, Option<u64>);

impl Clock {
    fn start() -> Self {
        Self(Instant::now(), cpu_ns())
    }

    fn seconds(&self) -> f64 {
        match (self.1, cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 * 1e-9,
            _ => self.0.elapsed().as_secs_f64(),
        }
    }
}

fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Whether the timings are on-CPU time (else wall time).
pub fn cpu_time_available() -> bool {
    cpu_ns().is_some()
}

/// Seconds per call of `f`: median over `reps` samples, each repeating `f` for ≥ 100 ms.
fn per_call(reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let wall = Instant::now();
    f()?;
    let once = wall.elapsed().as_secs_f64().max(1e-6);
    let k = (0.1 / once).ceil().max(1.0) as usize;
    let mut times = Vec::new();
    for _ in 0..reps.max(1) {
        let t = Clock::start();
        for _ in 0..k {
            f()?;
        }
        times.push(t.seconds() / k as f64);
    }
    Ok(median(&mut times))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `scheme` (D = `d`, G = 32) at every available level: encode and decode of `tokens`
/// tokens of one head, and `appends` single-token appends of `kv_heads` heads.
pub fn codec_table(
    scheme: Scheme,
    d: usize,
    tokens: usize,
    kv_heads: usize,
    appends: usize,
    reps: usize,
) -> Result<Vec<CodecRow>> {
    let codec = Codec::new(scheme.config(HeadDim::new(d)?, GroupSize::G32))?;
    let tokens = tokens / 32 * 32;
    let (k, v) = synthetic_f16(tokens, d, 0x5EED);
    let mut rows = Vec::new();
    let mut reference: Option<(Vec<u8>, Vec<u8>)> = None;
    for level in Level::available().filter(|l| *l != Level::Neon || cfg!(target_arch = "aarch64")) {
        let backend = SimdBackend::with_level(level)?;
        let (kb, vb, encode) = time_encode(&backend, &codec, &k, &v, tokens, reps)?;
        let decode = time_decode(&backend, &codec, &kb, &vb, tokens, reps)?;
        let append_us = time_append(backend, codec, kv_heads, appends, &k, &v)?;
        let identical = reference
            .as_ref()
            .is_none_or(|(rk, rv)| *rk == kb && *rv == vb);
        if reference.is_none() {
            reference = Some((kb, vb));
        }
        let bytes = 2.0 * 2.0 * (tokens * d) as f64;
        rows.push(CodecRow {
            level,
            encode_gb_s: bytes / encode / 1e9,
            decode_gb_s: bytes / decode / 1e9,
            append_us,
            identical,
        });
    }
    Ok(rows)
}

type Encoded = (Vec<u8>, Vec<u8>, f64);

fn time_encode(
    backend: &SimdBackend,
    codec: &Codec,
    k: &[u8],
    v: &[u8],
    tokens: usize,
    reps: usize,
) -> Result<Encoded> {
    let blocks = tokens / codec.group();
    let (k, v) = (k.to_vec(), v.to_vec());
    let mut kb = std::vec![0u8; blocks * codec.key_block_bytes()];
    let mut vb = std::vec![0u8; blocks * codec.value_block_bytes()];
    let tensor = |data| HeadTensor {
        data,
        dtype: DType::F16,
        tokens,
    };
    let seconds = per_call(reps, || {
        backend.encode_keys(codec, tensor(&k), None, &mut kb)?;
        backend.encode_values(codec, tensor(&v), &mut vb)
    })?;
    Ok((kb, vb, seconds))
}

fn time_decode(
    backend: &SimdBackend,
    codec: &Codec,
    kb: &Vec<u8>,
    vb: &Vec<u8>,
    tokens: usize,
    reps: usize,
) -> Result<f64> {
    let blocks = tokens / codec.group();
    let mut out = std::vec![0u8; tokens * codec.head_dim() * 4];
    per_call(reps, || {
        backend.decode_keys(codec, kb, blocks, &mut out)?;
        backend.decode_values(codec, vb, blocks, &mut out)
    })
}

/// Mean µs of one append (all heads of a layer) over `appends` tokens from an empty cache.
fn time_append(
    backend: SimdBackend,
    codec: Codec,
    kv_heads: usize,
    appends: usize,
    k: &[u8],
    v: &[u8],
) -> Result<f64> {
    let d = codec.head_dim();
    let halves = |bytes: &[u8]| -> Vec<f16> {
        bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect()
    };
    let (k, v) = (halves(k), halves(v));
    let tokens = k.len() / d;
    let mut cache = KvCache::new(backend, CacheConfig::new(codec, kv_heads, kv_heads))?;
    let seq = cache.add_sequence()?;
    let step: Vec<(Vec<f16>, Vec<f16>)> = (0..appends)
        .map(|i| {
            let rows = |x: &[f16]| -> Vec<f16> {
                (0..kv_heads)
                    .flat_map(|h| x[((i + h * 97) % tokens) * d..][..d].iter().copied())
                    .collect()
            };
            (rows(&k), rows(&v))
        })
        .collect();
    let t = Clock::start();
    for (kt, vt) in &step {
        cache.append(seq, kt, vt)?;
    }
    Ok(t.seconds() * 1e6 / appends as f64)
}
