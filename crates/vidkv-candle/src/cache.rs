//! The pluggable per-layer cache behind the candle adapter.
//!
//! A [`LayerCache`] holds one layer's keys and values, `[kv_heads, tokens, head_dim]`, and answers
//! decode attention for the newest position. The adapter ([`crate::KvCacheAttention`]) only talks
//! to this trait, so a cache implementation can be swapped without touching the model:
//!
//! * [`F16Cache`] — the baseline: K/V stored as IEEE f16, attention with `vidkv-simd`'s f16
//!   kernel (F16C + FMA / AVX-512 when the CPU has them);
//! * [`QuantCache`] — any vidkv scheme, streamed as DESIGN §1.4 says: the first `sinks` tokens stay
//!   in f16, every whole group of G tokens that leaves the 16-bit residual window is encoded
//!   **once** by the normative scalar encoders of `vidkv-cpu` (never re-quantized), and the packed
//!   blocks are all the cache keeps. Decode attention runs either
//!   * [`AttentionPath::Fused`]: `vidkv-simd`'s fused kernel directly on the packed bytes plus the
//!     f16 rows (the fast path; int8 query weights, see its docs), or
//!   * [`AttentionPath::Exact`]: exact f32 attention over a dequantized shadow decoded once when a
//!     block is made ("dequantize on append"): the quality reference for the fused path.
//!
//! A [`CacheFactory`] makes one cache per layer; the evaluation runs one factory per scheme.

use half::f16;
use half::slice::HalfFloatSliceExt;
use vidkv_core::{ChannelMask, Codec, KeyScheme, OutlierScope, QuantConfig, Scheme, ValueScheme};
use vidkv_simd::{HeadCache, Level};

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

    /// How attention is computed, for reports.
    fn describe(&self) -> String {
        String::new()
    }
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

/// f16 rows of the KV heads of one layer, `[tokens, D]` per head.
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

    /// Appends rows `src` (f32, `[tokens, D]`) to head `h`, rounding to f16.
    fn push(&mut self, h: usize, src: &[f32]) {
        let head = &mut self.heads[h];
        let start = head.len();
        head.resize(start + src.len(), f16::ZERO);
        head[start..].convert_from_f32_slice(src);
    }

    fn bytes(&self, h: usize) -> &[u8] {
        bytemuck::cast_slice(&self.heads[h])
    }
}

/// The f16 baseline: what a runtime does when it concatenates f16 K/V tensors.
#[derive(Debug)]
pub struct F16Cache {
    shape: CacheShape,
    k: F16Rows,
    v: F16Rows,
    tokens: usize,
    level: Level,
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
            level: vidkv_simd::active_level(),
        })
    }
}

impl LayerCache for F16Cache {
    fn append(&mut self, k: &[f32], v: &[f32], tokens: usize) -> Result<()> {
        check_append(&self.shape, k, v, tokens)?;
        let n = tokens * self.shape.head_dim;
        for h in 0..self.shape.kv_heads {
            self.k.push(h, &k[h * n..(h + 1) * n]);
            self.v.push(h, &v[h * n..(h + 1) * n]);
        }
        self.tokens += tokens;
        Ok(())
    }

    fn attend(&mut self, q: &[f32], out: &mut [f32]) -> Result<()> {
        check_attend(&self.shape, q, out, self.tokens)?;
        let gd = self.shape.group() * self.shape.head_dim;
        for kv in 0..self.shape.kv_heads {
            vidkv_simd::baseline::attend_f16(
                self.level,
                self.shape.head_dim,
                &q[kv * gd..(kv + 1) * gd],
                self.k.bytes(kv),
                self.v.bytes(kv),
                self.tokens,
                &mut out[kv * gd..(kv + 1) * gd],
            )?;
        }
        Ok(())
    }

    fn tokens(&self) -> usize {
        self.tokens
    }

    fn memory_bytes(&self) -> usize {
        2 * 2 * self.shape.kv_heads * self.tokens * self.shape.head_dim
    }

    fn describe(&self) -> String {
        format!("f16 ({})", self.level.name())
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

/// Streaming policy of quantized caches (DESIGN §1.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Streaming {
    /// Newest tokens kept in 16-bit, R. Once more than `max(R, G − 1)` tokens wait there, the
    /// oldest G become a block, so it holds `R − G + 1 ..= R` tokens once full.
    pub residual: usize,
    /// First tokens of the sequence kept in f16 forever ("attention sinks"); blocks start after
    /// them.
    pub sinks: usize,
}

impl Default for Streaming {
    fn default() -> Self {
        Self {
            residual: 128,
            sinks: 1,
        }
    }
}

/// How a [`QuantCache`] computes decode attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionPath {
    /// [`Self::Fused`] where `vidkv-simd` has a fused kernel for the codec (mixed-precision keys
    /// with ternary values: `vidkv`, `vidkv-paper`), [`Self::Exact`] otherwise (its generic
    /// fallback decodes every block at every step, far slower than the shadow).
    #[default]
    Auto,
    /// `vidkv-simd`'s fused kernel on the packed blocks (int8 query weights).
    Fused,
    /// Exact f32 attention over blocks decoded once when made.
    Exact,
}

#[derive(Debug, Default)]
struct QuantHead {
    /// Sinks then residual, f16 `[dense, D]`.
    dense_k: Vec<f16>,
    dense_v: Vec<f16>,
    key_blocks: Vec<u8>,
    value_blocks: Vec<u8>,
    /// Exact path only: decoded blocks, f32 `[blocks·G, D]`.
    dec_k: Vec<f32>,
    dec_v: Vec<f32>,
}

/// A vidkv scheme in a streaming cache of packed blocks (see the module docs).
#[derive(Debug)]
pub struct QuantCache {
    shape: CacheShape,
    codec: Codec,
    streaming: Streaming,
    path: AttentionPath,
    level: Level,
    heads: Vec<QuantHead>,
    sinks: usize,
    blocks: usize,
    residual: usize,
    /// Layer-scope outlier channels, chosen at the first block event and kept.
    outliers: Option<ChannelMask>,
    // Exact-path scratch.
    kcat: Vec<f32>,
    vcat: Vec<f32>,
    scores: Vec<f32>,
}

impl QuantCache {
    /// An empty cache for `config` (its head_dim must match `shape`).
    pub fn new(
        shape: CacheShape,
        config: QuantConfig,
        streaming: Streaming,
        path: AttentionPath,
    ) -> Result<Self> {
        shape.validate()?;
        let codec = Codec::new(config)?;
        if codec.head_dim() != shape.head_dim {
            return Err(Error::Shape(format!(
                "codec head_dim {} differs from the model's {}",
                codec.head_dim(),
                shape.head_dim
            )));
        }
        let path = match path {
            AttentionPath::Auto => {
                let c = codec.config();
                match (c.keys, c.values) {
                    (KeyScheme::Mixed(_), ValueScheme::Ternary { .. }) => AttentionPath::Fused,
                    // H1B-KV: attention *is* the sketch estimator; decoded keys are not the scheme.
                    (KeyScheme::SignSketch { .. }, ValueScheme::PerToken { .. }) => {
                        AttentionPath::Fused
                    }
                    _ => AttentionPath::Exact,
                }
            }
            p => p,
        };
        Ok(Self {
            shape,
            codec,
            streaming,
            path,
            level: vidkv_simd::active_level(),
            heads: (0..shape.kv_heads).map(|_| QuantHead::default()).collect(),
            sinks: 0,
            blocks: 0,
            residual: 0,
            outliers: None,
            kcat: Vec::new(),
            vcat: Vec::new(),
            scores: Vec::new(),
        })
    }

    /// The codec.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The attention path in use ([`AttentionPath::Auto`] resolved).
    pub fn path(&self) -> AttentionPath {
        self.path
    }

    /// Tokens in sinks, quantized blocks and the residual.
    pub fn split(&self) -> (usize, usize, usize) {
        (self.sinks, self.blocks * self.codec.group(), self.residual)
    }

    /// Encodes the oldest `n` blocks of the residual of every head as one event.
    fn quantize_oldest(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            return Ok(());
        }
        let d = self.shape.head_dim;
        let g = self.codec.group();
        let rows = n * g * d;
        let from = self.sinks * d;
        let as_f32 = |x: &[f16]| -> Vec<f32> {
            let mut out = vec![0.0f32; x.len()];
            x.convert_to_f32_slice(&mut out);
            out
        };
        let keys: Vec<Vec<f32>> = self
            .heads
            .iter()
            .map(|h| as_f32(&h.dense_k[from..from + rows]))
            .collect();
        if self.outliers.is_none()
            && let KeyScheme::Mixed(m) = self.codec.config().keys
            && m.scope == OutlierScope::Layer
        {
            // Layer scope: pool over every head's tokens of the first event, keep the set.
            let heads: Vec<&[f32]> = keys.iter().map(Vec::as_slice).collect();
            self.outliers = Some(vidkv_cpu::layer_outliers(&self.codec, &heads)?);
        }
        let (kb, vb) = (self.codec.key_block_bytes(), self.codec.value_block_bytes());
        for (head, k) in self.heads.iter_mut().zip(&keys) {
            let v = as_f32(&head.dense_v[from..from + rows]);
            let (ks, vs) = (head.key_blocks.len(), head.value_blocks.len());
            head.key_blocks.resize(ks + n * kb, 0);
            head.value_blocks.resize(vs + n * vb, 0);
            vidkv_cpu::encode_key_blocks(
                &self.codec,
                k,
                self.outliers.as_ref(),
                &mut head.key_blocks[ks..],
            )?;
            vidkv_cpu::encode_value_blocks(&self.codec, &v, &mut head.value_blocks[vs..])?;
            if self.path == AttentionPath::Exact {
                let mut dec = vec![0.0f32; rows];
                vidkv_cpu::decode_key_blocks(&self.codec, &head.key_blocks[ks..], &mut dec)?;
                head.dec_k.extend_from_slice(&dec);
                vidkv_cpu::decode_value_blocks(&self.codec, &head.value_blocks[vs..], &mut dec)?;
                head.dec_v.extend_from_slice(&dec);
            }
            head.dense_k.drain(from..from + rows);
            head.dense_v.drain(from..from + rows);
        }
        self.blocks += n;
        self.residual -= n * g;
        Ok(())
    }
}

impl LayerCache for QuantCache {
    fn append(&mut self, k: &[f32], v: &[f32], tokens: usize) -> Result<()> {
        check_append(&self.shape, k, v, tokens)?;
        let d = self.shape.head_dim;
        let to_sinks = self.streaming.sinks.saturating_sub(self.sinks).min(tokens);
        for (h, head) in self.heads.iter_mut().enumerate() {
            for (dst, src) in [(&mut head.dense_k, k), (&mut head.dense_v, v)] {
                let src = &src[h * tokens * d..(h + 1) * tokens * d];
                // Sinks are the sequence's first tokens, so they sit before the residual rows.
                let start = dst.len();
                dst.resize(start + src.len(), f16::ZERO);
                dst[start..].convert_from_f32_slice(src);
            }
        }
        self.sinks += to_sinks;
        self.residual += tokens - to_sinks;
        let g = self.codec.group();
        let ring = self.streaming.residual.max(g - 1);
        let n = self.residual.saturating_sub(ring).div_ceil(g);
        self.quantize_oldest(n)
    }

    fn attend(&mut self, q: &[f32], out: &mut [f32]) -> Result<()> {
        let tokens = self.tokens();
        check_attend(&self.shape, q, out, tokens)?;
        let d = self.shape.head_dim;
        let group = self.shape.group();
        let gd = group * d;
        let dense = self.sinks + self.residual;
        for kv in 0..self.shape.kv_heads {
            let head = &self.heads[kv];
            let (qh, oh) = (&q[kv * gd..(kv + 1) * gd], &mut out[kv * gd..(kv + 1) * gd]);
            match self.path {
                AttentionPath::Fused => {
                    let cache = HeadCache {
                        key_blocks: &head.key_blocks,
                        value_blocks: &head.value_blocks,
                        blocks: self.blocks,
                        residual_keys: bytemuck::cast_slice(&head.dense_k),
                        residual_values: bytemuck::cast_slice(&head.dense_v),
                        residual_tokens: dense,
                    };
                    vidkv_simd::attend_head(self.level, &self.codec, qh, &cache, oh)?;
                }
                AttentionPath::Exact | AttentionPath::Auto => {
                    let to_f32 = |dst: &mut Vec<f32>, dec: &[f32], f: &[f16]| {
                        dst.clear();
                        dst.extend_from_slice(dec);
                        let s = dst.len();
                        dst.resize(s + f.len(), 0.0);
                        f.convert_to_f32_slice(&mut dst[s..]);
                    };
                    to_f32(&mut self.kcat, &head.dec_k, &head.dense_k);
                    to_f32(&mut self.vcat, &head.dec_v, &head.dense_v);
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
                    .run(qh, oh, |_| kf.as_slice(), |_| vf.as_slice());
                }
            }
        }
        Ok(())
    }

    fn tokens(&self) -> usize {
        self.sinks + self.blocks * self.codec.group() + self.residual
    }

    fn memory_bytes(&self) -> usize {
        let packed = self.blocks * (self.codec.key_block_bytes() + self.codec.value_block_bytes());
        self.shape.kv_heads * (packed + 2 * 2 * (self.sinks + self.residual) * self.shape.head_dim)
    }

    fn describe(&self) -> String {
        match self.path {
            AttentionPath::Fused => format!("fused ({})", self.level.name()),
            _ => "exact (shadow)".into(),
        }
    }

    /// Token order: sinks, blocks, residual.
    fn dequantized(&self) -> (Vec<f32>, Vec<f32>) {
        let d = self.shape.head_dim;
        let n = self.blocks * self.codec.group() * d;
        let s = self.sinks * d;
        let (mut ko, mut vo) = (Vec::new(), Vec::new());
        for head in &self.heads {
            let mut dk = vec![0.0f32; n];
            let mut dv = vec![0.0f32; n];
            // The blocks were produced by this codec; decoding them cannot fail.
            vidkv_cpu::decode_key_blocks(&self.codec, &head.key_blocks, &mut dk)
                .expect("own key blocks decode");
            vidkv_cpu::decode_value_blocks(&self.codec, &head.value_blocks, &mut dv)
                .expect("own value blocks decode");
            for (out, dense, dec) in [(&mut ko, &head.dense_k, dk), (&mut vo, &head.dense_v, dv)] {
                out.extend(dense[..s].iter().map(|x| x.to_f32()));
                out.extend(dec);
                out.extend(dense[s..].iter().map(|x| x.to_f32()));
            }
        }
        (ko, vo)
    }
}

/// Factory of [`QuantCache`]s for a named preset.
#[derive(Debug, Clone, Copy)]
pub struct QuantFactory {
    /// The preset.
    pub scheme: Scheme,
    /// Group size G.
    pub group: vidkv_core::GroupSize,
    /// Residual and sinks.
    pub streaming: Streaming,
    /// Fused or exact attention.
    pub path: AttentionPath,
}

impl CacheFactory for QuantFactory {
    fn name(&self) -> String {
        self.scheme.name().into()
    }

    fn make(&self, _layer: usize, shape: CacheShape) -> Result<Box<dyn LayerCache>> {
        let head_dim = vidkv_core::HeadDim::new(shape.head_dim)?;
        let config = self.scheme.config(head_dim, self.group);
        Ok(Box::new(QuantCache::new(
            shape,
            config,
            self.streaming,
            self.path,
        )?))
    }
}
