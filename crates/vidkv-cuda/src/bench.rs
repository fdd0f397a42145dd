//! The GPU benchmark behind `vidkv-cuda-bench` and `vidkv bench --backend cuda`: one decode step
//! of fused attention over the packed cache for a model's layer shape, prefill encode throughput,
//! and the device-to-device copy bandwidth they are measured against. One JSON object per line,
//! with the keys of `vidkv bench` (`backend`, `scheme`, `tokens`, `batch`, `ms_per_step`,
//! `bytes_per_step`, `gb_per_s`, `speedup_vs_f16`, …).
//!
//! Timing follows `triton.testing.do_bench`: before every timed launch a 256 MiB buffer is
//! cleared (so the cache is not served from L2), the launch is bracketed by CUDA events, and the
//! median over the repetitions is reported. `speedup_vs_f16` is against an fp16 cache of the same
//! tokens read at the measured copy bandwidth (the bound of any fp16 kernel); the comparison with
//! torch's SDPA is `scripts/sdpa_bench.py` in the same call (`scripts/h200.sh`).

use cust::event::{Event, EventFlags};
use cust::memory::DeviceBuffer;
use cust::sys as cu;
use half::f16;
use vidkv_core::outliers::ChannelRanges;
use vidkv_core::{
    Codec, DType, GroupSize, HeadDim, HeadTensor, KeyScheme, KvQuantBackend, OutlierScope, Scheme,
};

use crate::CudaBackend;
use crate::params::{AttnJob, DenseDesc};
use crate::plan::{self, EncodeAddrs};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Presets.
    pub schemes: Vec<Scheme>,
    /// Sequences per step.
    pub batches: Vec<usize>,
    /// Tokens per sequence.
    pub tokens: Vec<usize>,
    /// Timed repetitions (median).
    pub reps: usize,
    /// KV heads.
    pub kv_heads: usize,
    /// Query heads.
    pub query_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Residual window R.
    pub residual: usize,
    /// Attention sinks S.
    pub sinks: usize,
    /// Also time forced split counts ("attention-tune" lines).
    pub tune: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            schemes: vec![Scheme::Vidkv],
            batches: vec![1, 16],
            tokens: vec![4096, 16384, 65536, 131072],
            reps: 50,
            kv_heads: 4,
            query_heads: 28,
            head_dim: 128,
            residual: 128,
            sinks: 1,
            tune: false,
        }
    }
}

/// Runs the benchmark, handing each JSON line to `say`. Without a device it says so on stderr
/// and returns `Ok` ("no CUDA device: skipped").
pub fn run(a: &BenchOptions, say: &mut dyn FnMut(String)) -> Res<()> {
    let backend = match CudaBackend::new() {
        Ok(b) => b,
        Err(e) if CudaBackend::is_no_device(&e) => {
            eprintln!("no CUDA device: skipped ({e})");
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let device = backend.device_name()?;
    let copy = copy_bandwidth(&backend)?;
    say(format!(
        "{{\"kind\":\"copy\",\"backend\":\"cuda\",\"device\":\"{device}\",\"bytes\":{},\"copy_gb_per_s\":{copy:.1}}}",
        1usize << 30
    ));
    let flush = backend.alloc(256 << 20)?;
    for &scheme in &a.schemes {
        for &batch in &a.batches {
            for &tokens in &a.tokens {
                step(
                    &backend, a, scheme, batch, tokens, copy, &flush, &device, say,
                )?;
            }
        }
    }
    Ok(())
}

/// xorshift normals (sum of four uniforms), the synthetic K/V of `vidkv bench`.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn normal(&mut self) -> f32 {
        (0..4)
            .map(|_| (self.next() >> 40) as f32 / (1u64 << 24) as f32)
            .sum::<f32>()
            - 2.0
    }
}

fn addr(b: &DeviceBuffer<u8>) -> u64 {
    b.as_device_ptr().as_raw()
}

fn d2d(dst: u64, src: u64, len: usize, stream: cu::CUstream) -> Res<()> {
    // SAFETY: both ranges lie inside live device buffers of the current context (callers).
    let r = unsafe { cu::cuMemcpyDtoDAsync_v2(dst, src, len, stream) };
    if r != cu::CUresult::CUDA_SUCCESS {
        return Err(format!("cuMemcpyDtoDAsync: {r:?}").into());
    }
    Ok(())
}

/// A device buffer of `len` bytes filled by repeating `chunk`.
fn tiled(backend: &CudaBackend, chunk: &[u8], len: usize) -> Res<DeviceBuffer<u8>> {
    let buf = backend.alloc(len)?;
    let first = backend.upload(&chunk[..chunk.len().min(len)])?;
    let stream = backend.stream().as_inner();
    d2d(addr(&buf), addr(&first), first.len(), stream)?;
    let mut filled = first.len();
    while filled < len {
        let n = filled.min(len - filled);
        d2d(addr(&buf) + filled as u64, addr(&buf), n, stream)?;
        filled += n;
    }
    backend.synchronize()?;
    Ok(buf)
}

/// Median and minimum of `reps` event-timed runs of `f`, each after clearing `flush` (L2).
fn time_ms(
    backend: &CudaBackend,
    flush: &DeviceBuffer<u8>,
    reps: usize,
    mut f: impl FnMut() -> Res<()>,
) -> Res<(f64, f64)> {
    let stream = backend.stream();
    let (start, end) = (
        Event::new(EventFlags::DEFAULT)?,
        Event::new(EventFlags::DEFAULT)?,
    );
    f()?;
    backend.synchronize()?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        // SAFETY: `flush` is a live device buffer of the current context.
        let r = unsafe { cu::cuMemsetD8Async(addr(flush), 0, flush.len(), stream.as_inner()) };
        if r != cu::CUresult::CUDA_SUCCESS {
            return Err(format!("cuMemsetD8Async: {r:?}").into());
        }
        start.record(stream)?;
        f()?;
        end.record(stream)?;
        end.synchronize()?;
        times.push(f64::from(end.elapsed_time_f32(&start)?));
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0]))
}

/// Device-to-device copy bandwidth (bytes read + written per second), GB/s.
fn copy_bandwidth(backend: &CudaBackend) -> Res<f64> {
    let n = 1usize << 30;
    let (a, b) = (backend.alloc(n)?, backend.alloc(n)?);
    let stream = backend.stream().as_inner();
    let flush = backend.alloc(1)?;
    let (ms, _) = time_ms(backend, &flush, 20, || d2d(addr(&b), addr(&a), n, stream))?;
    Ok(2.0 * n as f64 / (ms * 1e-3) / 1e9)
}

#[allow(clippy::too_many_arguments)]
fn step(
    backend: &CudaBackend,
    a: &BenchOptions,
    scheme: Scheme,
    batch: usize,
    tokens: usize,
    copy_gbps: f64,
    flush: &DeviceBuffer<u8>,
    device: &str,
    say: &mut dyn FnMut(String),
) -> Res<()> {
    let d = a.head_dim;
    let codec = Codec::new(scheme.config(HeadDim::new(d)?, GroupSize::G32))?;
    let (kv, qh) = (a.kv_heads, a.query_heads);
    let group = qh / kv;
    let g = codec.group();
    // The cache state after `tokens` tokens (DESIGN §1.4, `vidkv_core::cache`): S sinks, blocks
    // while the residual exceeds max(R, G - 1), the rest in the residual window.
    let n = tokens.saturating_sub(a.sinks);
    let keep = a.residual.max(g - 1);
    let blocks = if n > keep { (n - keep).div_ceil(g) } else { 0 };
    let residual = n - blocks * g;
    let jobs = batch * kv;

    // Synthetic f16 K/V for the quantized part: a random chunk, tiled.
    let mut rng = Rng(0x5eed ^ tokens as u64);
    let chunk_tokens = 4096usize;
    let (mut kc, mut vc) = (Vec::new(), Vec::new());
    for _ in 0..chunk_tokens {
        for c in 0..d {
            let big = if c % 16 == 5 { 6.0 } else { 1.0 };
            kc.push(f16::from_f32(rng.normal() * big + 0.2 * (c % 7) as f32));
            vc.push(f16::from_f32(rng.normal() * (0.6 + 0.3 * (c % 5) as f32)));
        }
    }
    let quant_tokens = jobs * blocks * g;
    let in_bytes = quant_tokens * d * 2;
    let kin = tiled(backend, bytemuck::cast_slice(&kc), in_bytes)?;
    let vin = tiled(backend, bytemuck::cast_slice(&vc), in_bytes)?;
    let mut kblocks = backend.alloc(jobs * blocks * codec.key_block_bytes())?;
    let mut vblocks = backend.alloc(jobs * blocks * codec.value_block_bytes())?;
    let mask = match codec.config().keys {
        KeyScheme::Mixed(m) if m.scope == OutlierScope::Layer => {
            let mut r = ChannelRanges::new(d);
            let rows: Vec<f32> = kc.iter().map(|x| x.to_f32()).collect();
            r.add_rows(&rows);
            Some(r.top(
                codec.config().arithmetic,
                m.outlier_count(codec.config().head_dim),
            ))
        }
        _ => None,
    };
    // Prefill encode: the kernels alone (launched directly, so the timing holds no host work),
    // then once more through the backend for the blocks the attention reads.
    let (enc_ms, enc_ok) = if quant_tokens > 0 {
        let stream = backend.stream().as_inner();
        let slots = backend.upload(bytemuck::cast_slice(&[u64::MAX; 3]))?;
        let tw = backend.upload(bytemuck::cast_slice(&plan::twiddles(plan::lanes(&codec))))?;
        let mask_buf = match &mask {
            Some(m) => Some(backend.upload(bytemuck::cast_slice(&m.words))?),
            None => None,
        };
        let nblk = jobs * blocks;
        let addrs = |keys: bool| EncodeAddrs {
            input: addr(if keys { &kin } else { &vin }),
            out: addr(if keys { &kblocks } else { &vblocks }),
            fixed_mask: if keys {
                mask_buf.as_ref().map_or(0, addr)
            } else {
                0
            },
            excluded: 0,
            twiddles: if tw.is_empty() { 0 } else { addr(&tw) },
            errors: addr(&slots),
        };
        let mut total = 0.0;
        for keys in [true, false] {
            let launch = plan::encode_launch(&codec, keys, DType::F16, nblk, addrs(keys));
            let (ms, _) = time_ms(backend, flush, 5, || {
                // SAFETY: every address of the launch points into live buffers of this
                // backend's context sized by the plan (input, blocks, tables, error slots).
                Ok(unsafe { backend.kernels().launch(&launch, stream) }?)
            })?;
            total += ms;
        }
        let bytes = backend.download(&slots)?;
        if bytes.iter().any(|&b| b != 0xff) {
            return Err("the encoder reported bad input".into());
        }
        let input = |data| HeadTensor {
            data,
            dtype: DType::F16,
            tokens: quant_tokens,
        };
        backend.encode_keys(&codec, input(&kin), mask.as_ref(), &mut kblocks)?;
        backend.encode_values(&codec, input(&vin), &mut vblocks)?;
        (total, true)
    } else {
        (0.0, false)
    };
    drop(kin);
    drop(vin);

    // f16 rows: sinks (capacity S) and the residual ring (capacity R, starting mid-ring).
    let cap = a.residual.max(g).max(1);
    let dense = |rows: usize| -> Res<DeviceBuffer<u8>> {
        let host: Vec<f16> = (0..rows * d).map(|i| vc[i % vc.len()]).collect();
        Ok(backend.upload(bytemuck::cast_slice(&host))?)
    };
    let (sk, sv) = (dense(jobs * a.sinks.max(1))?, dense(jobs * a.sinks.max(1))?);
    let (rk, rv) = (dense(jobs * cap)?, dense(jobs * cap)?);
    let q: Vec<f32> = (0..batch * qh * d).map(|_| rng.normal()).collect();
    let qbuf = backend.upload(bytemuck::cast_slice(&q))?;
    let out = backend.alloc(q.len() * 4)?;
    let table: Vec<AttnJob> = (0..jobs)
        .map(|j| {
            let (b, h) = (j / kv, j % kv);
            let qoff = ((b * qh + h * group) * d * 4) as u64;
            AttnJob {
                queries: addr(&qbuf) + qoff,
                out: addr(&out) + qoff,
                key_blocks: addr(&kblocks) + (j * blocks * codec.key_block_bytes()) as u64,
                value_blocks: addr(&vblocks) + (j * blocks * codec.value_block_bytes()) as u64,
                dense: [
                    DenseDesc {
                        keys: addr(&sk) + (j * a.sinks.max(1) * d * 2) as u64,
                        values: addr(&sv) + (j * a.sinks.max(1) * d * 2) as u64,
                        start: 0,
                        len: a.sinks.min(tokens) as i32,
                        cap: a.sinks.max(1) as i32,
                        pad: 0,
                    },
                    DenseDesc {
                        keys: addr(&rk) + (j * cap * d * 2) as u64,
                        values: addr(&rv) + (j * cap * d * 2) as u64,
                        start: (cap / 3) as i32,
                        len: residual as i32,
                        cap: cap as i32,
                        pad: 0,
                    },
                ],
                blocks: blocks as i32,
                query_heads: group as i32,
                scale: 1.0 / (d as f32).sqrt(),
                ..AttnJob::default()
            }
        })
        .collect();
    let prepared = backend.prepare_attention(&codec, &table)?;
    let (ms, best) = time_ms(backend, flush, a.reps, || {
        Ok(backend.launch_prepared(&prepared)?)
    })?;
    let floats = |b: Vec<u8>| -> Vec<f32> {
        b.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let fast = floats(backend.download(&out)?);
    let finite = fast.iter().all(|v| v.is_finite());
    // Cross-check against the generic kernel on the same jobs (one run).
    let generic = backend.prepare_attention_with(&codec, &table, false)?;
    backend.launch_prepared(&generic)?;
    let slow = floats(backend.download(&out)?);
    let mut cross = 0.0f64;
    for (f, s) in fast.chunks(d).zip(slow.chunks(d)) {
        let scale = s.iter().fold(1e-6f64, |m, v| m.max(f64::from(v.abs())));
        for (x, y) in f.iter().zip(s) {
            cross = cross.max((f64::from(*x) - f64::from(*y)).abs() / scale);
        }
    }
    let dense_tokens = jobs * (a.sinks.min(tokens) + residual);
    let bytes = jobs * blocks * (codec.key_block_bytes() + codec.value_block_bytes())
        + dense_tokens * d * 2 * 2
        + q.len() * 4;
    let f16_bytes = jobs * tokens * d * 2 * 2 + q.len() * 4;
    let gbps = bytes as f64 / (ms * 1e-3) / 1e9;
    let f16_ms = f16_bytes as f64 / (copy_gbps * 1e9) * 1e3;
    say(format!(
        "{{\"kind\":\"attention\",\"backend\":\"cuda\",\"device\":\"{device}\",\"scheme\":\"{}\",\
         \"tokens\":{tokens},\"batch\":{batch},\"kv_heads\":{kv},\"query_heads\":{qh},\
         \"head_dim\":{d},\"blocks\":{blocks},\"residual\":{residual},\"kernel\":\"{}\",\
         \"splits\":{},\"ms_per_step\":{ms:.5},\"ms_min\":{best:.5},\"bytes_per_step\":{bytes},\
         \"gb_per_s\":{gbps:.1},\"copy_gb_per_s\":{copy_gbps:.1},\"fraction_of_copy_bw\":{:.3},\
         \"f16_bytes_per_step\":{f16_bytes},\"speedup_vs_f16\":{:.2},\"finite\":{finite},\"vs_generic_kernel_max_rel\":{cross:.2e}}}",
        scheme.name(),
        prepared.kernel.name(),
        prepared.splits,
        gbps / copy_gbps,
        f16_ms / ms,
    ));
    // Tuning rows: the same step with the number of splits forced (the default plan's line above
    // is the result; these say whether another split count would have been faster).
    if a.tune {
        let base = prepared.splits;
        let mut tried = vec![base];
        for s in [base / 2, base * 2, base * 3 / 2, base * 3, 1] {
            let s = s.max(1);
            if tried.contains(&s) || s > blocks.max(1) {
                continue;
            }
            tried.push(s);
            let p = backend.prepare_attention_tuned(&codec, &table, true, Some(s))?;
            let (tms, _) = time_ms(backend, flush, a.reps.min(20), || {
                Ok(backend.launch_prepared(&p)?)
            })?;
            say(format!(
                "{{\"kind\":\"attention-tune\",\"scheme\":\"{}\",\"tokens\":{tokens},\
                 \"batch\":{batch},\"kernel\":\"{}\",\"splits\":{},\"ms_per_step\":{tms:.5}}}",
                scheme.name(),
                p.kernel.name(),
                p.splits
            ));
        }
    }
    if enc_ok {
        let enc_bytes = 2 * in_bytes;
        let enc_gbps = enc_bytes as f64 / (enc_ms * 1e-3) / 1e9;
        say(format!(
            "{{\"kind\":\"encode\",\"backend\":\"cuda\",\"device\":\"{device}\",\"scheme\":\"{}\",\
             \"tokens\":{tokens},\"batch\":{batch},\"ms\":{enc_ms:.4},\"f16_bytes\":{enc_bytes},\
             \"prefill_gb_per_s\":{enc_gbps:.1},\"fraction_of_copy_bw\":{:.3}}}",
            scheme.name(),
            enc_gbps / copy_gbps
        ));
    }
    Ok(())
}
