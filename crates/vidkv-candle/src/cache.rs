//! The pluggable per-layer cache behind the candle adapter.
//!
//! A [`LayerCache`] holds one layer's keys and values, `[kv_heads, tokens, head_dim]`, and answers
//! decode attention for the newest position. The adapter ([`crate::KvCacheAttention`]) only talks
//! to this trait, so a cache implementation can be swapped without touching the model:
//!
//! * [`F16Cache`] — the baseline: K/V stored as IEEE f16, attention in f32;
//! * [`BlockQuantCache`] — any vidkv scheme through the normative scalar block encoders of
//!   `vidkv-cpu`: every whole group of G tokens that leaves the 16-bit residual window is quantized
//!   **once** (never re-quantized) and immediately decoded into an f32 shadow that attention reads
//!   ("dequantize on append"). Quality is exactly that of the packed format; memory is *reported*
//!   as the packed bytes plus the f16 residual, although the shadow is what this implementation
//!   actually reads. It is the correctness reference for a fused cache, not a fast path.
//!
//! A [`CacheFactory`] makes one cache per layer; the evaluation runs one factory per scheme.

use half::f16;
use half::slice::HalfFloatSliceExt;
use vidkv_core::{ChannelMask, Codec, KeyScheme, OutlierScope, QuantConfig, Scheme};

use crate::error::{Error, Result};

/// Shape of one layer's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    /// Key/value heads.
    pub kv_heads: usize,
    /// Query heads (a multiple of `kv_heads`; query head h reads KV head `h / (q/kv)`).
    pub q_heads: usize,
    /// Head dimension D.
    pub head_dim: usize,
}

impl CacheShape {
    /// Checks that the query heads group evenly over the KV heads.
    pub fn validate(&self) -> Result<()> {
        if self.kv_heads == 0 || self.head_dim == 0 || !self.q_heads.is_multiple_of(self.kv_heads) {
            return Err(Error::Shape(format!(
                "{} query heads cannot share {} KV heads (head_dim {})",
                self.q_heads, self.kv_heads, self.head_dim
            )));
        }
        Ok(())
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.q_heads / self.kv_heads
    }
}

/// One layer's streaming K/V cache with decode attention.
pub trait LayerCache: Send {
    /// Appends `tokens` tokens. `k` and `v` are row-major `[kv_heads, tokens, head_dim]` f32
    /// (post-RoPE keys). A multi-token append is a prefill: whole groups may be quantized at once.
    fn append(&mut self, k: &[f32], v: &[f32], tokens: usize) -> Result<()>;

    /// Decode attention of one position over every cached token:
    /// `out[h] = softmax(q[h]·Kᵀ/√D) V` for each query head, `q` and `out` `[q_heads, head_dim]`.
    fn attend(&mut self, q: &[f32], out: &mut [f32]) -> Result<()>;

    /// Cached tokens.
    fn tokens(&self) -> usize;

    /// Bytes the cache's format needs for what it holds (packed blocks + 16-bit residual).
    fn memory_bytes(&self) -> usize;

    /// The dequantized keys and values, `[kv_heads, tokens, head_dim]` each — what attention sees.
    fn dequantized(&self) -> (Vec<f32>, Vec<f32>);
}

/// Makes one [`LayerCache`] per layer.
pub trait CacheFactory: Send + Sync {
    /// Name for reports (`f16`, `vidkv`, …).
    fn name(&self) -> String;
    /// A new, empty cache for `layer`.
    fn make(&self, layer: usize, shape: CacheShape) -> Result<Box<dyn LayerCache>>;
}

/// Softmax-weighted attention of `q_heads` queries over rows given by two callbacks.
/// `key(kv, t, buf)` and `value(kv, t, buf)` fill one row. Shared by the f32-row caches here.
pub(crate) struct RowAttention<'a> {
    pub shape: CacheShape,
    pub scores: &'a mut Vec<f32>,
}

impl RowAttention<'_> {
    /// `keys(kv)` / `values(kv)` return the contiguous f32 rows `[tokens, D]` of one KV head.
    pub fn run<'k>(
        &mut self,
        q: &[f32],
        out: &mut [f32],
        keys: impl Fn(usize) -> &'k [f32],
        values: impl Fn(usize) -> &'k [f32],
    ) {
        let d = self.shape.head_dim;
        let scale = 1.0 / (d as f32).sqrt();
        let group = self.shape.group();
        for h in 0..self.shape.q_heads {
            let kv = h / group;
            let qh = &q[h * d..(h + 1) * d];
            let k = keys(kv);
            let v = values(kv);
            self.scores.clear();
            self.scores
                .extend(k.chunks_exact(d).map(|row| dot(qh, row) * scale));
            let max = self
                .scores
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0f32;
            for s in self.scores.iter_mut() {
                *s = (*s - max).exp();
                sum += *s;
            }
            let o = &mut out[h * d..(h + 1) * d];
            o.fill(0.0);
            for (p, row) in self.scores.iter().zip(v.chunks_exact(d)) {
                let w = p / sum;
                o.iter_mut().zip(row).for_each(|(o, x)| *o += w * x);
            }
        }
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums let the compiler vectorise without reassociation flags.
    let mut acc = [0.0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ar.iter().zip(br) {
        s += x * y;
    }
    s
}

fn check_append(shape: &CacheShape, k: &[f32], v: &[f32], tokens: usize) -> Result<()> {
    let n = shape.kv_heads * tokens * shape.head_dim;
    if k.len() != n || v.len() != n {
        return Err(Error::Shape(format!(
            "append of {tokens} tokens needs {n} elements for K and V, got {} and {}",
            k.len(),
            v.len()
        )));
    }
    Ok(())
}

fn check_attend(shape: &CacheShape, q: &[f32], out: &[f32], tokens: usize) -> Result<()> {
    let n = shape.q_heads * shape.head_dim;
    if q.len() != n || out.len() != n {
        return Err(Error::Shape(format!(
            "attend needs {n} query and output elements, got {} and {}",
            q.len(),
            out.len()
        )));
    }
    if tokens == 0 {
        return Err(Error::Shape("attend on an empty cache".into()));
    }
    Ok(())
}

/// f16 storage per KV head, growing `[tokens, D]`.
#[derive(Debug, Clone, Default)]
struct F16Rows {
    heads: Vec<Vec<f16>>,
}

impl F16Rows {
    fn new(kv_heads: usize) -> Self {
        Self {
            heads: vec![Vec::new(); kv_heads],
        }
    }

    /// Appends `[kv_heads, tokens, D]` rows, rounding to f16.
    fn push(&mut self, rows: &[f32], tokens: usize, d: usize) {
        for (h, head) in self.heads.iter_mut().enumerate() {
            let src = &rows[h * tokens * d..(h + 1) * tokens * d];
            let start = head.len();
            head.resize(start + src.len(), f16::ZERO);
            head[start..].convert_from_f32_slice(src);
        }
    }
}

/// The f16 baseline: what a runtime does when it concatenates f16 K/V tensors.
#[derive(Debug)]
pub struct F16Cache {
    shape: CacheShape,
    k: F16Rows,
    v: F16Rows,
    tokens: usize,
    // Scratch: one head's K and V as f32, and the scores.
    kf: Vec<f32>,
    vf: Vec<f32>,
    scores: Vec<f32>,
}

impl F16Cache {
    /// An empty cache.
    pub fn new(shape: CacheShape) -> Result<Self> {
        shape.validate()?;
        Ok(Self {
            shape,
            k: F16Rows::new(shape.kv_heads),
            v: F16Rows::new(shape.kv_heads),
            tokens: 0,
            kf: Vec::new(),
            vf: Vec::new(),
            scores: Vec::new(),
        })
    }
}

impl LayerCache for F16Cache {
    fn append(&mut self, k: &[f32], v: &[f32], tokens: usize) -> Result<()> {
        check_append(&self.shape, k, v, tokens)?;
        self.k.push(k, tokens, self.shape.head_dim);
        self.v.push(v, tokens, self.shape.head_dim);
        self.tokens += tokens;
        Ok(())
    }

    fn attend(&mut self, q: &[f32], out: &mut [f32]) -> Result<()> {
        check_attend(&self.shape, q, out, self.tokens)?;
        let d = self.shape.head_dim;
        let group = self.shape.group();
        let n = self.tokens * d;
        self.kf.resize(n, 0.0);
        self.vf.resize(n, 0.0);
        // One KV head at a time: convert (F16C when the CPU has it) then attend its query heads.
        for kv in 0..self.shape.kv_heads {
            self.k.heads[kv].convert_to_f32_slice(&mut self.kf);
            self.v.heads[kv].convert_to_f32_slice(&mut self.vf);
            let sub = CacheShape {
                kv_heads: 1,
                q_heads: group,
                head_dim: d,
            };
            let (kf, vf) = (&self.kf, &self.vf);
            RowAttention {
                shape: sub,
                scores: &mut self.scores,
            }
            .run(
                &q[kv * group * d..(kv + 1) * group * d],
                &mut out[kv * group * d..(kv + 1) * group * d],
                |_| kf.as_slice(),
                |_| vf.as_slice(),
            );
        }
        Ok(())
    }

    fn tokens(&self) -> usize {
        self.tokens
    }

    fn memory_bytes(&self) -> usize {
        2 * 2 * self.shape.kv_heads * self.tokens * self.shape.head_dim
    }

    fn dequantized(&self) -> (Vec<f32>, Vec<f32>) {
        let cat = |rows: &F16Rows| rows.heads.iter().flatten().map(|x| x.to_f32()).collect();
        (cat(&self.k), cat(&self.v))
    }
}

/// Factory of [`F16Cache`]s.
#[derive(Debug, Clone, Copy, Default)]
pub struct F16Factory;

impl CacheFactory for F16Factory {
    fn name(&self) -> String {
        "f16".into()
    }

    fn make(&self, _layer: usize, shape: CacheShape) -> Result<Box<dyn LayerCache>> {
        Ok(Box::new(F16Cache::new(shape)?))
    }
}

/// Streaming policy shared by quantized caches (DESIGN §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streaming {
    /// Newest tokens kept in 16-bit (a multiple of G).
    pub residual: usize,
}

impl Default for Streaming {
    fn default() -> Self {
        Self { residual: 128 }
    }
}

/// A vidkv scheme through the scalar block encoders, dequantized on append (see module docs).
#[derive(Debug)]
pub struct BlockQuantCache {
    shape: CacheShape,
    codec: Codec,
    streaming: Streaming,
    /// Decoded quantized tokens per KV head, `[quantized, D]`.
    kq: Vec<Vec<f32>>,
    vq: Vec<Vec<f32>>,
    /// 16-bit residual per KV head, `[residual, D]`, f16-rounded values kept as f32.
    kr: Vec<Vec<f32>>,
    vr: Vec<Vec<f32>>,
    quantized: usize,
    residual: usize,
    packed_bytes: usize,
    // Scratch for attention: concatenated rows of one head.
    kcat: Vec<f32>,
    vcat: Vec<f32>,
    scores: Vec<f32>,
}

impl BlockQuantCache {
    /// An empty cache for `config` (its head_dim must match `shape`).
    pub fn new(shape: CacheShape, config: QuantConfig, streaming: Streaming) -> Result<Self> {
        shape.validate()?;
        let codec = Codec::new(config)?;
        if codec.head_dim() != shape.head_dim {
            return Err(Error::Shape(format!(
                "codec head_dim {} differs from the model's {}",
                codec.head_dim(),
                shape.head_dim
            )));
        }
        if !streaming.residual.is_multiple_of(codec.group()) {
            return Err(Error::Config(format!(
                "residual window {} is not a multiple of G = {}",
                streaming.residual,
                codec.group()
            )));
        }
        let h = shape.kv_heads;
        Ok(Self {
            shape,
            codec,
            streaming,
            kq: vec![Vec::new(); h],
            vq: vec![Vec::new(); h],
            kr: vec![Vec::new(); h],
            vr: vec![Vec::new(); h],
            quantized: 0,
            residual: 0,
            packed_bytes: 0,
            kcat: Vec::new(),
            vcat: Vec::new(),
            scores: Vec::new(),
        })
    }

    /// The codec.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Tokens in quantized blocks and in the residual.
    pub fn split(&self) -> (usize, usize) {
        (self.quantized, self.residual)
    }

    /// Quantizes the oldest `blocks · G` residual tokens of every head as one event.
    fn quantize_oldest(&mut self, blocks: usize) -> Result<()> {
        if blocks == 0 {
            return Ok(());
        }
        let d = self.shape.head_dim;
        let n = blocks * self.codec.group() * d;
        // Layer scope pools the outlier ranges over every head's tokens of this event.
        let mask: Option<ChannelMask> = match self.codec.config().keys {
            KeyScheme::Mixed(m) if m.scope == OutlierScope::Layer => {
                let heads: Vec<&[f32]> = self.kr.iter().map(|r| &r[..n]).collect();
                Some(vidkv_cpu::layer_outliers(&self.codec, &heads)?)
            }
            _ => None,
        };
        let kbytes = blocks * self.codec.key_block_bytes();
        let vbytes = blocks * self.codec.value_block_bytes();
        let mut kenc = vec![0u8; kbytes];
        let mut venc = vec![0u8; vbytes];
        let mut dec = vec![0.0f32; n];
        for h in 0..self.shape.kv_heads {
            vidkv_cpu::encode_key_blocks(&self.codec, &self.kr[h][..n], mask.as_ref(), &mut kenc)?;
            vidkv_cpu::decode_key_blocks(&self.codec, &kenc, &mut dec)?;
            self.kq[h].extend_from_slice(&dec);
            vidkv_cpu::encode_value_blocks(&self.codec, &self.vr[h][..n], &mut venc)?;
            vidkv_cpu::decode_value_blocks(&self.codec, &venc, &mut dec)?;
            self.vq[h].extend_from_slice(&dec);
            self.kr[h].drain(..n);
            self.vr[h].drain(..n);
            self.packed_bytes += kbytes + vbytes;
        }
        let t = blocks * self.codec.group();
        self.quantized += t;
        self.residual -= t;
        Ok(())
    }
}

/// Rounds to the f16 grid (what a 16-bit residual stores).
fn r16(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}

impl LayerCache for BlockQuantCache {
    fn append(&mut self, k: &[f32], v: &[f32], tokens: usize) -> Result<()> {
        check_append(&self.shape, k, v, tokens)?;
        let d = self.shape.head_dim;
        for h in 0..self.shape.kv_heads {
            let src = h * tokens * d..(h + 1) * tokens * d;
            self.kr[h].extend(k[src.clone()].iter().copied().map(r16));
            self.vr[h].extend(v[src].iter().copied().map(r16));
        }
        self.residual += tokens;
        let g = self.codec.group();
        let blocks = if tokens > 1 {
            // Prefill: quantize every whole block; the tail stays in the residual.
            self.residual / g
        } else if self.residual > self.streaming.residual {
            // Decode: the residual overflowed by one token; its oldest G tokens become a block.
            (self.residual - self.streaming.residual).div_ceil(g)
        } else {
            0
        };
        self.quantize_oldest(blocks)
    }

    fn attend(&mut self, q: &[f32], out: &mut [f32]) -> Result<()> {
        let tokens = self.quantized + self.residual;
        check_attend(&self.shape, q, out, tokens)?;
        let d = self.shape.head_dim;
        let group = self.shape.group();
        for kv in 0..self.shape.kv_heads {
            self.kcat.clear();
            self.kcat.extend_from_slice(&self.kq[kv]);
            self.kcat.extend_from_slice(&self.kr[kv]);
            self.vcat.clear();
            self.vcat.extend_from_slice(&self.vq[kv]);
            self.vcat.extend_from_slice(&self.vr[kv]);
            let sub = CacheShape {
                kv_heads: 1,
                q_heads: group,
                head_dim: d,
            };
            let (kf, vf) = (&self.kcat, &self.vcat);
            RowAttention {
                shape: sub,
                scores: &mut self.scores,
            }
            .run(
                &q[kv * group * d..(kv + 1) * group * d],
                &mut out[kv * group * d..(kv + 1) * group * d],
                |_| kf.as_slice(),
                |_| vf.as_slice(),
            );
        }
        Ok(())
    }

    fn tokens(&self) -> usize {
        self.quantized + self.residual
    }

    fn memory_bytes(&self) -> usize {
        self.packed_bytes + 2 * 2 * self.shape.kv_heads * self.residual * self.shape.head_dim
    }

    fn dequantized(&self) -> (Vec<f32>, Vec<f32>) {
        let cat = |q: &[Vec<f32>], r: &[Vec<f32>]| {
            q.iter()
                .zip(r)
                .flat_map(|(q, r)| q.iter().chain(r).copied())
                .collect()
        };
        (cat(&self.kq, &self.kr), cat(&self.vq, &self.vr))
    }
}

/// Factory of [`BlockQuantCache`]s for a named preset.
#[derive(Debug, Clone, Copy)]
pub struct BlockQuantFactory {
    /// The preset.
    pub scheme: Scheme,
    /// Group size G.
    pub group: vidkv_core::GroupSize,
    /// Residual policy.
    pub streaming: Streaming,
}

impl CacheFactory for BlockQuantFactory {
    fn name(&self) -> String {
        self.scheme.name().into()
    }

    fn make(&self, _layer: usize, shape: CacheShape) -> Result<Box<dyn LayerCache>> {
        let head_dim = vidkv_core::HeadDim::new(shape.head_dim)?;
        let config = self.scheme.config(head_dim, self.group);
        Ok(Box::new(BlockQuantCache::new(
            shape,
            config,
            self.streaming,
        )?))
    }
}
