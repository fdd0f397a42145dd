//! The streaming KV cache of one layer (DESIGN §1.4), generic over any [`KvQuantBackend`].
//!
//! A [`KvCache`] holds a batch of sequences of one layer (`kv_heads` KV heads, `query_heads`
//! query heads sharing them, one [`Codec`]); a model keeps one cache per layer, each with its own
//! configuration. Every sequence is, in token order:
//!
//! ```text
//!  [ sinks: first S tokens, f16 ][ blocks of G tokens, quantized ][ residual window, f16 ]
//! ```
//!
//! * **Sinks.** The first `S` tokens of a sequence stay in f16 forever ([`CacheConfig::sinks`]).
//!   In real models most attention mass sits on token 0; its value vector is small, so its
//!   quantization error would dominate the output error. Blocks start after the sinks, so the
//!   sinks also stay out of the first block's statistics.
//! * **Blocks.** Token `S + i·G … S + (i+1)·G − 1` of every KV head forms block `i`. A block is
//!   encoded once, when it leaves the residual window, and never re-quantized.
//! * **Residual window.** The newest tokens stay in f16. After every token the cache quantizes the
//!   oldest G residual tokens as one block while the residual holds more than
//!   `max(R, G − 1)` tokens, so it holds between `R − G + 1` and `R` tokens once it is full
//!   (`R` = [`CacheConfig::residual`]; with `R < G` it holds `0 … G − 1`, i.e. every whole block
//!   is quantized). It is a ring: attention does not care about token order.
//! * **Prefill = appends.** [`KvCache::prefill`] of n tokens leaves exactly the state that n
//!   [`KvCache::append`] calls would (the same blocks, byte for byte, and the same residual): it
//!   quantizes all whole blocks that lie outside the residual window in one encode call per head
//!   and keeps the tail in the residual. With `R = 0` that is "all whole blocks".
//! * **Inputs are 16-bit.** Tokens arrive as f32, f16 or bf16 ([`KvElement`]) and are rounded to
//!   f16 on entry (the residual stores f16); blocks are encoded from those f16 values, which is
//!   what makes prefill and appends agree. Inputs must be finite and within the f16 range.
//!
//! **Salient tokens** (DESIGN §1.3) are marked at prefill ([`Salient`]) or per appended token.
//! Their keys are quantized like any other; their values are excluded from their value block
//! (see [`KvQuantBackend::encode_values_masked`]) and stored instead in *salient groups*: value
//! blocks of [`salient_codec`] (2-bit min/max per channel) over G consecutive salient tokens of
//! the sequence, in token order. Salient tokens past the last whole group wait in f16
//! ("pending"). A G-bit mask per block records which tokens are salient. `docs/FORMAT.md`
//! ("Salient tokens") describes the bytes. Attention and [`KvCache::dequantize`] give every
//! salient token the value of its group row, so both agree with per-token decoding, and
//! dequantization restores the original token order.
//!
//! **Layer-scope outliers.** For mixed-precision keys with [`OutlierScope::Layer`] the cache uses
//! [`CacheConfig::outliers`] when given (a calibrated set); otherwise it pools the channel ranges
//! over all heads of the first tokens it quantizes in a sequence (usually the prefill) and keeps
//! that set for the sequence. Only with a given set (or block scope) is token-by-token feeding
//! byte-identical to prefill.
//!
//! **Attention** ([`KvCache::attend`]) runs the backend's fused kernel on the packed blocks plus
//! the f16 rows, one job per (sequence, KV head) with all the query heads of its GQA group
//! (query head `h` uses KV head `h / (query_heads / kv_heads)`); [`KvCache::attend_with`] hands
//! the jobs to a caller-supplied runner (the `vidkv` facade splits them over threads).
//! [`reference_attention`] is the slow f64 reference used by tests and evaluations.

use alloc::vec;
use alloc::vec::Vec;
use core::fmt;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

use crate::backend::{
    AttentionArgs, DType, DenseRows, HeadTensor, KvQuantBackend, LenderBlocks, SalientArgs,
};
use crate::config::{Bits, KeyScheme, OutlierScope, QuantConfig, ValueScheme};
use crate::error::{Error, Result};
use crate::layout::{ChannelMask, Codec, KeyLayout, ValueLayout};
use crate::outliers::ChannelRanges;

/// Default residual window R, in tokens.
pub const DEFAULT_RESIDUAL: usize = 128;

/// Default number of attention sinks S (first tokens kept in f16): 1.
///
/// Measured with `vidkv eval --sinks S` on the SmolLM2-135M tensors (`smollm2_apache_kv`, layers
/// 0, 7, 15, 29; 256 causal queries each, R = 128), `vidkv` scheme, mean relative attention
/// output error per layer:
///
/// | S | layer 0 | layer 7 | layer 15 | layer 29 | mean | mean KL |
/// |---|---|---|---|---|---|---|
/// | 0 | 0.263 | 0.713 | 0.537 | 0.295 | 0.452 | 0.213 |
/// | 1 | 0.261 | 0.695 | 0.068 | 0.054 | 0.269 | 0.182 |
/// | 4 | 0.258 | 0.693 | 0.074 | 0.055 | 0.270 | 0.168 |
///
/// One sink removes 8× (layer 15) and 5× (layer 29) of the error, where token 0 draws most of the
/// attention; four sinks add nothing to the output error (a little to KL) for four times the
/// f16 rows. The other schemes show the same pattern.
pub const DEFAULT_SINKS: usize = 1;

/// Largest finite f16.
const F16_MAX: f32 = 65504.0;

/// An element type the cache accepts: f32, f16 or bf16. Values are rounded to f16 on entry.
pub trait KvElement: Copy {
    /// The value as f32.
    fn to_f32(self) -> f32;

    /// The elements as f16 when they already are (the cache then copies them as they are).
    fn as_f16(_x: &[Self]) -> Option<&[f16]> {
        None
    }
}

impl KvElement for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

impl KvElement for f16 {
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }

    fn as_f16(x: &[Self]) -> Option<&[f16]> {
        Some(x)
    }
}

impl KvElement for bf16 {
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

/// Configuration of one layer's cache.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CacheConfig {
    /// Block encoding of the layer.
    pub codec: Codec,
    /// KV heads.
    pub kv_heads: usize,
    /// Query heads (a multiple of `kv_heads`; query head h uses KV head h / (query_heads /
    /// kv_heads)).
    pub query_heads: usize,
    /// Residual window R in tokens (see the module docs for the exact rule).
    pub residual: usize,
    /// Attention sinks S: the first S tokens of every sequence stay in f16.
    pub sinks: usize,
    /// A fixed outlier-channel set for mixed-precision keys (calibrated or layer scope); `None`
    /// lets block scope choose per block and layer scope pool over the first quantized tokens.
    pub outliers: Option<ChannelMask>,
    /// Softmax scale applied to `q·k`; `None` means `1/√D`.
    pub scale: Option<f32>,
}

impl CacheConfig {
    /// A configuration with the default residual window and sinks.
    pub fn new(codec: Codec, kv_heads: usize, query_heads: usize) -> Self {
        Self {
            codec,
            kv_heads,
            query_heads,
            residual: DEFAULT_RESIDUAL,
            sinks: DEFAULT_SINKS,
            outliers: None,
            scale: None,
        }
    }

    /// Checks head counts and the outlier set.
    pub fn validate(&self) -> Result<()> {
        if self.kv_heads == 0
            || self.query_heads == 0
            || !self.query_heads.is_multiple_of(self.kv_heads)
        {
            return Err(Error::InvalidConfig {
                reason: "query_heads must be a non-zero multiple of kv_heads",
            });
        }
        if let (Some(mask), KeyScheme::Mixed(m)) = (self.outliers, self.codec.config().keys) {
            let d = self.codec.head_dim();
            let k = m.outlier_count(self.codec.config().head_dim);
            if mask.count() != k || mask.outliers(d).count() != k {
                return Err(Error::InvalidConfig {
                    reason: "the outlier mask must select exactly round(r·D) channels below head_dim",
                });
            }
        }
        if let Some(s) = self.scale
            && !s.is_finite()
        {
            return Err(Error::InvalidConfig {
                reason: "the softmax scale must be finite",
            });
        }
        Ok(())
    }

    /// Query heads per KV head.
    pub fn group_size(&self) -> usize {
        self.query_heads / self.kv_heads
    }

    /// The softmax scale in use.
    pub fn softmax_scale(&self) -> f32 {
        self.scale
            .unwrap_or(1.0 / libm::sqrtf(self.codec.head_dim() as f32))
    }
}

/// Which tokens of a prefill are salient (DESIGN §1.3).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Salient<'a> {
    /// None.
    #[default]
    None,
    /// These token indices (relative to the prefill's first token; any order, repeats allowed).
    Indices(&'a [usize]),
    /// The `round(fraction · n)` tokens of highest score (ties to the lower index).
    Scores {
        /// One score per token.
        scores: &'a [f32],
        /// Share of tokens to mark, within 0..=1.
        fraction: f32,
    },
}

impl Salient<'_> {
    /// One flag per token of a prefill of `tokens` tokens.
    pub fn flags(&self, tokens: usize) -> Result<Vec<bool>> {
        let mut flags = vec![false; tokens];
        match *self {
            Salient::None => {}
            Salient::Indices(indices) => {
                for &i in indices {
                    *flags.get_mut(i).ok_or(Error::InvalidConfig {
                        reason: "salient token index beyond the prefill",
                    })? = true;
                }
            }
            Salient::Scores { scores, fraction } => {
                if scores.len() != tokens {
                    return Err(Error::ShapeMismatch {
                        what: "salient scores (one per token)",
                        expected: tokens,
                        actual: scores.len(),
                    });
                }
                if !(0.0..=1.0).contains(&fraction) {
                    return Err(Error::InvalidConfig {
                        reason: "the salient fraction must be within 0..=1",
                    });
                }
                if let Some(index) = scores.iter().position(|s| !s.is_finite()) {
                    return Err(Error::NonFinite { index });
                }
                let count = libm::round(f64::from(fraction) * tokens as f64) as usize;
                let mut order: Vec<usize> = (0..tokens).collect();
                order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
                for &i in &order[..count.min(tokens)] {
                    flags[i] = true;
                }
            }
        }
        Ok(flags)
    }
}

/// The paper's salience score of each visual token: the mean dot product between its input
/// embedding and the embeddings of the text tokens (after the video). `visual` is
/// `[visual_tokens, dim]`, `text` is `[text_tokens, dim]`, both row-major.
pub fn salient_scores(visual: &[f32], text: &[f32], dim: usize) -> Result<Vec<f32>> {
    if dim == 0
        || !visual.len().is_multiple_of(dim)
        || !text.len().is_multiple_of(dim)
        || text.is_empty()
    {
        return Err(Error::ShapeMismatch {
            what: "embeddings (whole rows of dim, at least one text token)",
            expected: visual.len() / dim.max(1) * dim,
            actual: visual.len(),
        });
    }
    // mean_j (v · t_j) = v · mean_j t_j
    let n_text = (text.len() / dim) as f64;
    let mut mean = vec![0.0f64; dim];
    for row in text.chunks_exact(dim) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, &x)| *m += f64::from(x));
    }
    mean.iter_mut().for_each(|m| *m /= n_text);
    Ok(visual
        .chunks_exact(dim)
        .map(|row| {
            row.iter()
                .zip(&mean)
                .map(|(&x, m)| f64::from(x) * m)
                .sum::<f64>() as f32
        })
        .collect())
}

/// The codec of salient value groups: 2-bit min/max per channel over G salient tokens, with the
/// head_dim, G and arithmetic of `codec` (its value layout is the `pc2` value block).
pub fn salient_codec(codec: &Codec) -> Codec {
    let config = QuantConfig {
        values: ValueScheme::PerChannel { bits: Bits::Two },
        ..*codec.config()
    };
    // Only the value scheme changed, and per-channel values are valid for any head_dim and G.
    Codec::new(config).unwrap_or(*codec)
}

/// Bytes a cache holds, live (not allocated capacity). Shared by all heads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryUsage {
    /// Tokens cached (summed over sequences).
    pub tokens: usize,
    /// K and V elements those tokens stand for: `2 · kv_heads · tokens · head_dim`.
    pub elements: usize,
    /// Bytes of key blocks.
    pub key_blocks: usize,
    /// Bytes of value blocks.
    pub value_blocks: usize,
    /// Bytes of salient value groups.
    pub salient_blocks: usize,
    /// Of the block bytes above: scales, offsets and outlier masks (the rest are codes).
    pub block_metadata: usize,
    /// Bytes of f16 rows: sinks and residual window (keys and values), pending salient values.
    pub residual: usize,
    /// Cache bookkeeping outside the blocks: salient masks (G/8 bytes per block of a sequence
    /// that has salient tokens).
    pub metadata: usize,
}

impl MemoryUsage {
    /// All bytes.
    pub fn total(&self) -> usize {
        self.key_blocks + self.value_blocks + self.salient_blocks + self.residual + self.metadata
    }

    /// All-in bits per cached K/V element.
    pub fn bits_per_element(&self) -> f64 {
        if self.elements == 0 {
            0.0
        } else {
            (self.total() * 8) as f64 / self.elements as f64
        }
    }

    fn add(&mut self, o: &MemoryUsage) {
        self.tokens += o.tokens;
        self.elements += o.elements;
        self.key_blocks += o.key_blocks;
        self.value_blocks += o.value_blocks;
        self.salient_blocks += o.salient_blocks;
        self.block_metadata += o.block_metadata;
        self.residual += o.residual;
        self.metadata += o.metadata;
    }
}

/// A growable byte store in backend memory (capacity doubles; grown with
/// [`KvQuantBackend::copy_bytes`]).
struct Store<B: KvQuantBackend> {
    buf: B::Buffer,
    len: usize,
    cap: usize,
}

impl<B: KvQuantBackend> Store<B> {
    fn new(backend: &B) -> Result<Self> {
        Ok(Self {
            buf: backend.alloc(0)?,
            len: 0,
            cap: 0,
        })
    }

    fn push(&mut self, backend: &B, src: &B::Buffer, len: usize) -> Result<()> {
        if self.len + len > self.cap {
            let cap = (self.len + len).max(self.cap * 2).max(1024);
            let mut grown = backend.alloc(cap)?;
            if self.len > 0 {
                backend.copy_bytes(&self.buf, 0, &mut grown, 0, self.len)?;
            }
            self.buf = grown;
            self.cap = cap;
        }
        backend.copy_bytes(src, 0, &mut self.buf, self.len, len)?;
        self.len += len;
        Ok(())
    }

    fn push_host(&mut self, backend: &B, bytes: &[u8]) -> Result<()> {
        let src = backend.upload(bytes)?;
        self.push(backend, &src, bytes.len())
    }
}

/// f16 rows in backend memory with a host mirror.
struct Rows<B: KvQuantBackend> {
    device: B::Buffer,
    host: Vec<f16>,
}

impl<B: KvQuantBackend> Rows<B> {
    fn new(backend: &B, rows: usize, d: usize) -> Result<Self> {
        Ok(Self {
            device: backend.alloc(rows * d * 2)?,
            host: vec![f16::ZERO; rows * d],
        })
    }

    /// Sets rows `first..first + src.len()/d` on the host and the device.
    fn write(&mut self, backend: &B, first: usize, src: &[f16], d: usize) -> Result<()> {
        self.host[first * d..][..src.len()].copy_from_slice(src);
        if cfg!(target_endian = "little") {
            backend.write_bytes(&mut self.device, first * d * 2, bytemuck::cast_slice(src))
        } else {
            backend.write_bytes(&mut self.device, first * d * 2, &f16_bytes(src))
        }
    }
}

/// Per (sequence, KV head) state.
struct Head<B: KvQuantBackend> {
    keys: Store<B>,
    values: Store<B>,
    sink_k: Rows<B>,
    sink_v: Rows<B>,
    ring_k: Rows<B>,
    ring_v: Rows<B>,
    /// Salient groups, and the pending salient values (created with the first salient token).
    salient: Option<(Store<B>, Rows<B>)>,
}

/// Per-sequence state.
struct Sequence<B: KvQuantBackend> {
    tokens: usize,
    sink_len: usize,
    blocks: usize,
    ring_start: usize,
    ring_len: usize,
    ring_salient: Vec<bool>,
    /// The layer-scope outlier set once chosen.
    outliers: Option<ChannelMask>,
    /// Salient masks (G/8 bytes per block) once the sequence has salient tokens; host mirror.
    salient_masks: Option<(Store<B>, Vec<u8>)>,
    /// Salient tokens quantized so far (in blocks).
    salient_count: usize,
    heads: Vec<Head<B>>,
}

/// A batch of sequences of one layer: see the module docs.
pub struct KvCache<B: KvQuantBackend> {
    backend: B,
    config: CacheConfig,
    salient: Codec,
    ring: usize,
    sequences: Vec<Sequence<B>>,
}

impl<B: KvQuantBackend> fmt::Debug for KvCache<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KvCache")
            .field("backend", &self.backend.name())
            .field("config", &self.config)
            .field("sequences", &self.sequences.len())
            .finish()
    }
}

impl<B: KvQuantBackend> KvCache<B> {
    /// An empty cache (no sequences yet).
    pub fn new(backend: B, config: CacheConfig) -> Result<Self> {
        config.validate()?;
        let g = config.codec.group();
        Ok(Self {
            salient: salient_codec(&config.codec),
            ring: config.residual.max(g - 1),
            backend,
            config,
            sequences: Vec::new(),
        })
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The codec of the blocks.
    pub fn codec(&self) -> &Codec {
        &self.config.codec
    }

    /// Adds an empty sequence; returns its index.
    pub fn add_sequence(&mut self) -> Result<usize> {
        let d = self.config.codec.head_dim();
        let heads = (0..self.config.kv_heads)
            .map(|_| {
                Ok(Head {
                    keys: Store::new(&self.backend)?,
                    values: Store::new(&self.backend)?,
                    sink_k: Rows::new(&self.backend, self.config.sinks, d)?,
                    sink_v: Rows::new(&self.backend, self.config.sinks, d)?,
                    ring_k: Rows::new(&self.backend, self.ring, d)?,
                    ring_v: Rows::new(&self.backend, self.ring, d)?,
                    salient: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.sequences.push(Sequence {
            tokens: 0,
            sink_len: 0,
            blocks: 0,
            ring_start: 0,
            ring_len: 0,
            ring_salient: vec![false; self.ring],
            outliers: self.config.outliers,
            salient_masks: None,
            salient_count: 0,
            heads,
        });
        Ok(self.sequences.len() - 1)
    }

    /// Number of sequences.
    pub fn sequence_count(&self) -> usize {
        self.sequences.len()
    }

    /// Tokens cached for sequence `seq`.
    pub fn tokens(&self, seq: usize) -> usize {
        self.sequences.get(seq).map_or(0, |s| s.tokens)
    }

    /// Quantized blocks (per KV head) of sequence `seq`.
    pub fn blocks(&self, seq: usize) -> usize {
        self.sequences.get(seq).map_or(0, |s| s.blocks)
    }

    /// Tokens of sequence `seq` in its residual window.
    pub fn residual_tokens(&self, seq: usize) -> usize {
        self.sequences.get(seq).map_or(0, |s| s.ring_len)
    }

    /// The packed key blocks of one (sequence, KV head): `blocks · key_block_bytes` bytes.
    pub fn key_blocks(&self, seq: usize, head: usize) -> Result<Vec<u8>> {
        let h = self.head(seq, head)?;
        let mut bytes = self.backend.download(&h.keys.buf)?;
        bytes.truncate(h.keys.len);
        Ok(bytes)
    }

    /// The packed value blocks of one (sequence, KV head).
    pub fn value_blocks(&self, seq: usize, head: usize) -> Result<Vec<u8>> {
        let h = self.head(seq, head)?;
        let mut bytes = self.backend.download(&h.values.buf)?;
        bytes.truncate(h.values.len);
        Ok(bytes)
    }

    fn sequence(&self, seq: usize) -> Result<&Sequence<B>> {
        self.sequences.get(seq).ok_or(Error::InvalidConfig {
            reason: "no such sequence in the cache",
        })
    }

    fn head(&self, seq: usize, head: usize) -> Result<&Head<B>> {
        self.sequence(seq)?
            .heads
            .get(head)
            .ok_or(Error::InvalidConfig {
                reason: "no such KV head in the cache",
            })
    }

    /// Adds `n` tokens to sequence `seq`: `k` and `v` are `[kv_heads, n, head_dim]`. Leaves the
    /// state that `n` [`Self::append`] calls would (see the module docs); `salient` marks tokens
    /// of this call.
    pub fn prefill<T: KvElement>(
        &mut self,
        seq: usize,
        k: &[T],
        v: &[T],
        salient: Salient<'_>,
    ) -> Result<()> {
        let per_token = self.config.kv_heads * self.config.codec.head_dim();
        if !k.len().is_multiple_of(per_token) || v.len() != k.len() {
            return Err(Error::ShapeMismatch {
                what: "prefill keys/values ([kv_heads, tokens, head_dim] each)",
                expected: k.len() / per_token * per_token,
                actual: v.len(),
            });
        }
        let n = k.len() / per_token;
        let flags = salient.flags(n)?;
        let (k, v) = (to_f16(k)?, to_f16(v)?);
        self.extend(seq, &k, &v, n, &flags)
    }

    /// Appends one token to sequence `seq`: `k` and `v` are `[kv_heads, head_dim]`.
    pub fn append<T: KvElement>(&mut self, seq: usize, k: &[T], v: &[T]) -> Result<()> {
        self.append_token(seq, k, v, false)
    }

    /// Appends one token, marking it salient or not.
    pub fn append_token<T: KvElement>(
        &mut self,
        seq: usize,
        k: &[T],
        v: &[T],
        salient: bool,
    ) -> Result<()> {
        let per_token = self.config.kv_heads * self.config.codec.head_dim();
        if k.len() != per_token || v.len() != per_token {
            return Err(Error::ShapeMismatch {
                what: "appended key/value ([kv_heads, head_dim] each)",
                expected: per_token,
                actual: if k.len() != per_token {
                    k.len()
                } else {
                    v.len()
                },
            });
        }
        let (k, v) = (to_f16(k)?, to_f16(v)?);
        self.extend(seq, &k, &v, 1, &[salient])
    }

    /// Adds `n` tokens (`[kv_heads, n, D]` f16) to a sequence.
    fn extend(
        &mut self,
        seq: usize,
        k: &[f16],
        v: &[f16],
        n: usize,
        salient: &[bool],
    ) -> Result<()> {
        self.sequence(seq)?;
        let (d, g) = (self.config.codec.head_dim(), self.config.codec.group());
        let heads = self.config.kv_heads;

        // 1. Sinks.
        let s = &mut self.sequences[seq];
        let to_sinks = (self.config.sinks - s.sink_len).min(n);
        if to_sinks > 0 {
            let first = s.sink_len;
            for (h, head) in s.heads.iter_mut().enumerate() {
                let ks = &k[h * n * d..][..to_sinks * d];
                let vs = &v[h * n * d..][..to_sinks * d];
                head.sink_k.write(&self.backend, first, ks, d)?;
                head.sink_v.write(&self.backend, first, vs, d)?;
            }
            s.sink_len += to_sinks;
        }

        // 2. Blocks that leave the residual window.
        let m = n - to_sinks;
        let (r, cap) = (s.ring_len, self.ring);
        let total = r + m;
        let blocks = if total > cap {
            (total - cap).div_ceil(g)
        } else {
            0
        };
        let flushed = blocks * g;
        let from_ring = flushed.min(r);
        let from_chunk = flushed - from_ring;
        if blocks > 0 {
            let ring_order: Vec<usize> = (0..from_ring).map(|i| (s.ring_start + i) % cap).collect();
            let mut flags: Vec<bool> = ring_order.iter().map(|&i| s.ring_salient[i]).collect();
            flags.extend_from_slice(&salient[to_sinks..to_sinks + from_chunk]);
            let mut rows_k = Vec::with_capacity(heads);
            let mut rows_v = Vec::with_capacity(heads);
            for (h, head) in s.heads.iter().enumerate() {
                let mut kh = Vec::with_capacity(flushed * d);
                let mut vh = Vec::with_capacity(flushed * d);
                for &i in &ring_order {
                    kh.extend_from_slice(&head.ring_k.host[i * d..][..d]);
                    vh.extend_from_slice(&head.ring_v.host[i * d..][..d]);
                }
                for t in to_sinks..to_sinks + from_chunk {
                    kh.extend_from_slice(&k[(h * n + t) * d..][..d]);
                    vh.extend_from_slice(&v[(h * n + t) * d..][..d]);
                }
                rows_k.push(kh);
                rows_v.push(vh);
            }
            self.flush(seq, blocks, &rows_k, &rows_v, &flags)?;
        }

        // 3. The rest enters the ring.
        let s = &mut self.sequences[seq];
        s.ring_start = (s.ring_start + from_ring) % cap.max(1);
        s.ring_len -= from_ring;
        let incoming = to_sinks + from_chunk..n;
        debug_assert!(s.ring_len + incoming.len() <= cap);
        let first_slot = (s.ring_start + s.ring_len) % cap.max(1);
        for (i, t) in incoming.clone().enumerate() {
            s.ring_salient[(first_slot + i) % cap] = salient[t];
        }
        // At most two contiguous runs of slots.
        let mut t = incoming.start;
        while t < incoming.end {
            let slot = (s.ring_start + s.ring_len) % cap;
            let run = (incoming.end - t).min(cap - slot);
            for (h, head) in s.heads.iter_mut().enumerate() {
                let ks = &k[(h * n + t) * d..][..run * d];
                let vs = &v[(h * n + t) * d..][..run * d];
                head.ring_k.write(&self.backend, slot, ks, d)?;
                head.ring_v.write(&self.backend, slot, vs, d)?;
            }
            s.ring_len += run;
            t += run;
        }
        s.tokens += n;
        Ok(())
    }

    /// Encodes `blocks` blocks per head from f16 rows `[blocks·G, D]` and appends them.
    fn flush(
        &mut self,
        seq: usize,
        blocks: usize,
        rows_k: &[Vec<f16>],
        rows_v: &[Vec<f16>],
        flags: &[bool],
    ) -> Result<()> {
        let codec = self.config.codec;
        let (d, g) = (codec.head_dim(), codec.group());
        let backend = &self.backend;
        let s = &mut self.sequences[seq];

        // The outlier set of layer-scope keys: fixed, or pooled over these first tokens.
        let mask = match codec.config().keys {
            KeyScheme::Mixed(m) if s.outliers.is_none() && m.scope == OutlierScope::Layer => {
                let mut ranges = ChannelRanges::new(d);
                for kh in rows_k {
                    let f: Vec<f32> = kh.iter().map(|x| x.to_f32()).collect();
                    ranges.add_rows(&f);
                }
                let chosen = ranges.top(
                    codec.config().arithmetic,
                    m.outlier_count(codec.config().head_dim),
                );
                s.outliers = Some(chosen);
                Some(chosen)
            }
            KeyScheme::Mixed(_) => s.outliers,
            KeyScheme::PerChannel { .. } | KeyScheme::SignSketch { .. } => None,
        };

        let excluded: Vec<u8> = flags
            .chunks_exact(8)
            .map(|bits| {
                bits.iter()
                    .enumerate()
                    .fold(0u8, |acc, (i, &b)| acc | (u8::from(b) << i))
            })
            .collect();
        let salient_count = flags.iter().filter(|&&b| b).count();
        if salient_count > 0 && s.salient_masks.is_none() {
            let mut store = Store::new(backend)?;
            let zeros = vec![0u8; s.blocks * g / 8];
            if !zeros.is_empty() {
                store.push_host(backend, &zeros)?;
            }
            s.salient_masks = Some((store, zeros));
        }
        if let Some((store, host)) = &mut s.salient_masks {
            store.push_host(backend, &excluded)?;
            host.extend_from_slice(&excluded);
        }

        let tokens = blocks * g;
        for (h, head) in s.heads.iter_mut().enumerate() {
            let input = backend.upload(&f16_bytes(&rows_k[h]))?;
            let mut out = backend.alloc(blocks * codec.key_block_bytes())?;
            backend.encode_keys(&codec, f16_tensor(&input, tokens), mask.as_ref(), &mut out)?;
            head.keys
                .push(backend, &out, blocks * codec.key_block_bytes())?;

            let input = backend.upload(&f16_bytes(&rows_v[h]))?;
            let mut out = backend.alloc(blocks * codec.value_block_bytes())?;
            if salient_count > 0 {
                backend.encode_values_masked(
                    &codec,
                    f16_tensor(&input, tokens),
                    &excluded,
                    &mut out,
                )?;
            } else {
                backend.encode_values(&codec, f16_tensor(&input, tokens), &mut out)?;
            }
            head.values
                .push(backend, &out, blocks * codec.value_block_bytes())?;

            if salient_count == 0 {
                continue;
            }
            if head.salient.is_none() {
                head.salient = Some((Store::new(backend)?, Rows::new(backend, g, d)?));
            }
            let Some((groups, pending)) = &mut head.salient else {
                unreachable!("created above")
            };
            let already = s.salient_count;
            let mut pending_len = already % g;
            let mut pending_dirty = false;
            for (t, _) in flags.iter().enumerate().filter(|(_, b)| **b) {
                pending.host[pending_len * d..][..d].copy_from_slice(&rows_v[h][t * d..][..d]);
                pending_len += 1;
                pending_dirty = true;
                if pending_len == g {
                    let input = backend.upload(&f16_bytes(&pending.host))?;
                    let mut out = backend.alloc(self.salient.value_block_bytes())?;
                    backend.encode_values(&self.salient, f16_tensor(&input, g), &mut out)?;
                    groups.push(backend, &out, self.salient.value_block_bytes())?;
                    pending_len = 0;
                }
            }
            if pending_dirty && pending_len > 0 {
                let live = pending.host[..pending_len * d].to_vec();
                pending.write(backend, 0, &live, d)?;
            }
        }
        s.salient_count += salient_count;
        s.blocks += blocks;
        Ok(())
    }

    /// Keys and values of sequence `seq` as the cache holds them, each `[kv_heads, tokens,
    /// head_dim]` f32 in the original token order: sinks and residual as stored (f16), blocks
    /// decoded by the backend, salient tokens' values from their groups.
    pub fn dequantize(&self, seq: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        self.dequantize_with(seq, None)
    }

    /// [`Self::dequantize`] for a cache whose codec borrows its codes: the blocks decode with
    /// the codes of the same sequence's blocks in `lender` (checked as in
    /// [`Self::attend_borrowing`]).
    pub fn dequantize_borrowing(&self, lender: &Self, seq: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        self.check_lender_cache(lender, seq)?;
        self.dequantize_with(seq, Some(lender))
    }

    fn check_lender_cache(&self, lender: &Self, seq: usize) -> Result<()> {
        self.config.codec.check_lender(&lender.config.codec)?;
        let (s, l) = (self.sequence(seq)?, lender.sequence(seq)?);
        if lender.config.kv_heads != self.config.kv_heads || l.blocks != s.blocks {
            return Err(Error::InvalidConfig {
                reason: "the lender cache must have the borrower's KV heads and block count",
            });
        }
        Ok(())
    }

    /// Full blocks of a borrowing head: its parameter sections spliced with the lender's codes.
    fn spliced(
        &self,
        keys: bool,
        blocks: usize,
        own: &B::Buffer,
        lent: &B::Buffer,
    ) -> Result<B::Buffer> {
        let codec = &self.config.codec;
        let full = codec.owning();
        let (params, size) = if keys {
            (codec.key_params(), full.key_block_bytes())
        } else {
            (codec.value_params(), full.value_block_bytes())
        };
        let (own, lent) = (self.backend.download(own)?, self.backend.download(lent)?);
        let short = |what, expected, actual| Error::ShapeMismatch {
            what,
            expected,
            actual,
        };
        let own = own.get(..blocks * params.len).ok_or(short(
            "borrowing blocks",
            blocks * params.len,
            own.len(),
        ))?;
        let lent =
            lent.get(..blocks * size)
                .ok_or(short("lender blocks", blocks * size, lent.len()))?;
        let mut out = vec![0u8; blocks * size];
        for ((dst, own), lent) in out
            .chunks_exact_mut(size)
            .zip(own.chunks_exact(params.len))
            .zip(lent.chunks_exact(size))
        {
            crate::layout::splice_borrowed(params, own, lent, dst);
        }
        self.backend.upload(&out)
    }

    fn dequantize_with(&self, seq: usize, lender: Option<&Self>) -> Result<(Vec<f32>, Vec<f32>)> {
        if self.config.codec.is_borrowing() && lender.is_none() {
            return Err(Error::InvalidConfig {
                reason: "a cache that borrows its codes dequantizes with its lender (dequantize_borrowing)",
            });
        }
        let s = self.sequence(seq)?;
        let owning = self.config.codec.owning();
        let codec = &owning;
        let (d, g) = (codec.head_dim(), codec.group());
        let tokens = s.tokens;
        let mut keys = Vec::with_capacity(self.config.kv_heads * tokens * d);
        let mut values = Vec::with_capacity(self.config.kv_heads * tokens * d);
        for (h, head) in s.heads.iter().enumerate() {
            let lent = lender.map(|l| &l.sequences[seq].heads[h]);
            let spliced = match lent {
                Some(l) => Some((
                    self.spliced(true, s.blocks, &head.keys.buf, &l.keys.buf)?,
                    self.spliced(false, s.blocks, &head.values.buf, &l.values.buf)?,
                )),
                None => None,
            };
            let (key_buf, value_buf) = match &spliced {
                Some((k, v)) => (k, v),
                None => (&head.keys.buf, &head.values.buf),
            };
            let sinks = s.sink_len * d;
            keys.extend(head.sink_k.host[..sinks].iter().map(|x| x.to_f32()));
            values.extend(head.sink_v.host[..sinks].iter().map(|x| x.to_f32()));

            let block_rows = s.blocks * g * d;
            let mut out = self.backend.alloc(block_rows * 4)?;
            if s.blocks > 0 {
                self.backend
                    .decode_keys(codec, key_buf, s.blocks, &mut out)?;
                keys.extend(f32s(&self.backend.download(&out)?));
                self.backend
                    .decode_values(codec, value_buf, s.blocks, &mut out)?;
                let mut v = f32s(&self.backend.download(&out)?);
                if let (Some((_, masks)), Some((groups, pending))) =
                    (&s.salient_masks, &head.salient)
                {
                    let group_count = s.salient_count / g;
                    let mut decoded = self.backend.alloc(group_count * g * d * 4)?;
                    if group_count > 0 {
                        self.backend.decode_values(
                            &self.salient,
                            &groups.buf,
                            group_count,
                            &mut decoded,
                        )?;
                    }
                    let decoded = f32s(&self.backend.download(&decoded)?);
                    let mut rank = 0;
                    for t in 0..s.blocks * g {
                        if masks[t / 8] >> (t % 8) & 1 == 1 {
                            let dst = &mut v[t * d..][..d];
                            if rank < group_count * g {
                                dst.copy_from_slice(&decoded[rank * d..][..d]);
                            } else {
                                let p = &pending.host[(rank - group_count * g) * d..][..d];
                                dst.iter_mut().zip(p).for_each(|(y, x)| *y = x.to_f32());
                            }
                            rank += 1;
                        }
                    }
                }
                values.extend(v);
            }

            for i in 0..s.ring_len {
                let slot = (s.ring_start + i) % self.ring;
                keys.extend(head.ring_k.host[slot * d..][..d].iter().map(|x| x.to_f32()));
                values.extend(head.ring_v.host[slot * d..][..d].iter().map(|x| x.to_f32()));
            }
        }
        Ok((keys, values))
    }

    /// The f64 reference of [`Self::attend`] for sequence `seq` (`q` is `[query_heads,
    /// head_dim]`; returns `[query_heads, head_dim]`): exact softmax attention over the
    /// dequantized cache, except that the quantized tokens of sign-sketch keys are scored with
    /// the estimator fused attention uses ([`crate::sketch::reference_scores`]), not with the
    /// decoded keys. For tests and evaluations.
    pub fn reference_attend(&self, seq: usize, q: &[f32]) -> Result<Vec<f64>> {
        let s = self.sequence(seq)?;
        let (k, v) = self.dequantize(seq)?;
        let (d, n) = (self.config.codec.head_dim(), s.tokens);
        let group = self.config.group_size();
        let scale = self.config.softmax_scale();
        let mut out = Vec::with_capacity(q.len());
        for (h, qh) in q.chunks_exact(d).enumerate().take(self.config.query_heads) {
            let kv = h / group;
            let (keys, values) = (&k[kv * n * d..][..n * d], &v[kv * n * d..][..n * d]);
            let mut scores = dot_scores(keys, d, qh, scale);
            if let KeyScheme::SignSketch { .. } = self.config.codec.config().keys
                && s.blocks > 0
            {
                let est = crate::sketch::reference_scores(
                    &self.config.codec,
                    &self.key_blocks(seq, kv)?,
                    qh,
                    scale,
                )?;
                scores[s.sink_len..][..est.len()].copy_from_slice(&est);
            }
            out.extend(attention_from_scores(&scores, values, d).0);
        }
        Ok(out)
    }

    /// Fused decode attention for sequence `seq`: `q` is `[query_heads, head_dim]`, `out` the same
    /// shape. Runs the backend's [`KvQuantBackend::attend_batch`] on one job per KV head.
    pub fn attend(&self, seq: usize, q: &[f32], out: &mut [f32]) -> Result<()> {
        self.attend_with(&[seq], q, out, |backend, codec, jobs| {
            backend.attend_batch(codec, jobs)
        })
    }

    /// Fused decode attention for every sequence: `q` and `out` are `[sequences, query_heads,
    /// head_dim]`.
    pub fn attend_all(&self, q: &[f32], out: &mut [f32]) -> Result<()> {
        let seqs: Vec<usize> = (0..self.sequences.len()).collect();
        self.attend_with(&seqs, q, out, |backend, codec, jobs| {
            backend.attend_batch(codec, jobs)
        })
    }

    /// Fused decode attention for the sequences `seqs` (`q`, `out`: `[seqs.len(), query_heads,
    /// head_dim]`), handing the jobs (one per sequence and KV head, in that order) to `run`,
    /// which must run every job, e.g. split over threads.
    pub fn attend_with<F>(&self, seqs: &[usize], q: &[f32], out: &mut [f32], run: F) -> Result<()>
    where
        F: for<'a> FnOnce(&'a B, &'a Codec, Vec<AttentionArgs<'a, B::Buffer>>) -> Result<()>,
    {
        self.attend_jobs(seqs, q, out, None, run)
    }

    /// Fused decode attention for sequence `seq` of a cache whose codec **borrows** its codes
    /// (XQuant cross-layer sharing, [`Codec::borrowing`]): the codes come from the same
    /// sequence's blocks in `lender`, the cache of the lender layer (same configuration owning
    /// its codes, same KV heads, the same number of blocks in `seq`). Typed errors otherwise.
    pub fn attend_borrowing(
        &self,
        lender: &Self,
        seq: usize,
        q: &[f32],
        out: &mut [f32],
    ) -> Result<()> {
        self.check_lender_cache(lender, seq)?;
        self.attend_jobs(&[seq], q, out, Some(lender), |backend, codec, jobs| {
            backend.attend_batch(codec, jobs)
        })
    }

    fn attend_jobs<F>(
        &self,
        seqs: &[usize],
        q: &[f32],
        out: &mut [f32],
        lender: Option<&Self>,
        run: F,
    ) -> Result<()>
    where
        F: for<'a> FnOnce(&'a B, &'a Codec, Vec<AttentionArgs<'a, B::Buffer>>) -> Result<()>,
    {
        if self.config.codec.is_borrowing() && lender.is_none() {
            return Err(Error::InvalidConfig {
                reason: "a cache that borrows its codes attends with its lender (attend_borrowing)",
            });
        }
        let d = self.config.codec.head_dim();
        let group = self.config.group_size();
        let expected = seqs.len() * self.config.query_heads * d;
        if q.len() != expected || out.len() != expected {
            return Err(Error::ShapeMismatch {
                what: "attention queries/output ([sequences, query_heads, head_dim])",
                expected,
                actual: if q.len() != expected {
                    q.len()
                } else {
                    out.len()
                },
            });
        }
        let mut queries = Vec::with_capacity(seqs.len() * self.config.kv_heads);
        let mut outs = Vec::with_capacity(seqs.len() * self.config.kv_heads);
        for (i, &seq) in seqs.iter().enumerate() {
            self.sequence(seq)?;
            for h in 0..self.config.kv_heads {
                let rows = &q[(i * self.config.query_heads + h * group) * d..][..group * d];
                queries.push(self.backend.upload(&f32_bytes(rows))?);
                outs.push(self.backend.alloc(group * d * 4)?);
            }
        }
        let mut jobs = Vec::with_capacity(outs.len());
        let mut slots = queries.iter().zip(outs.iter_mut());
        for &seq in seqs {
            let s = &self.sequences[seq];
            for (h, head) in s.heads.iter().enumerate() {
                let (queries, out) = slots.next().ok_or(Error::InvalidConfig {
                    reason: "attention job count",
                })?;
                let mut job = self.job(s, head, queries, out);
                if let Some(l) = lender {
                    let lh = &l.sequences[seq].heads[h];
                    job.lender = Some(LenderBlocks {
                        key_blocks: &lh.keys.buf,
                        value_blocks: &lh.values.buf,
                    });
                }
                jobs.push(job);
            }
        }
        run(&self.backend, &self.config.codec, jobs)?;
        for (dst, buf) in out.chunks_exact_mut(group * d).zip(&outs) {
            let bytes = self.backend.download(buf)?;
            let vals = f32s(&bytes);
            if vals.len() != dst.len() {
                return Err(Error::ShapeMismatch {
                    what: "attention output bytes from the backend",
                    expected: dst.len() * 4,
                    actual: bytes.len(),
                });
            }
            dst.copy_from_slice(&vals);
        }
        Ok(())
    }

    fn job<'a>(
        &'a self,
        s: &'a Sequence<B>,
        head: &'a Head<B>,
        queries: &'a B::Buffer,
        out: &'a mut B::Buffer,
    ) -> AttentionArgs<'a, B::Buffer> {
        let g = self.config.codec.group();
        let salient = match (&s.salient_masks, &head.salient) {
            (Some((masks, _)), Some((groups, pending))) => Some(SalientArgs {
                masks: &masks.buf,
                groups: &groups.buf,
                group_count: s.salient_count / g,
                pending: &pending.device,
                pending_len: s.salient_count % g,
            }),
            _ => None,
        };
        AttentionArgs {
            queries,
            query_heads: self.config.group_size(),
            scale: self.config.softmax_scale(),
            key_blocks: &head.keys.buf,
            value_blocks: &head.values.buf,
            blocks: s.blocks,
            salient,
            sinks: (s.sink_len > 0).then_some(DenseRows {
                keys: &head.sink_k.device,
                values: &head.sink_v.device,
                start: 0,
                len: s.sink_len,
                capacity: self.config.sinks,
            }),
            residual: (s.ring_len > 0).then_some(DenseRows {
                keys: &head.ring_k.device,
                values: &head.ring_v.device,
                start: s.ring_start,
                len: s.ring_len,
                capacity: self.ring,
            }),
            out,
            lender: None,
        }
    }

    /// Live bytes of sequence `seq` (all its KV heads).
    pub fn memory_of(&self, seq: usize) -> Result<MemoryUsage> {
        let s = self.sequence(seq)?;
        let codec = &self.config.codec;
        let (d, g) = (codec.head_dim(), codec.group());
        let heads = self.config.kv_heads;
        let groups = if s.salient_masks.is_some() {
            s.salient_count / g
        } else {
            0
        };
        let pending = if s.salient_masks.is_some() {
            s.salient_count % g
        } else {
            0
        };
        let (key_meta, value_meta) = block_metadata(codec);
        let salient_meta = block_metadata(&self.salient).1;
        Ok(MemoryUsage {
            tokens: s.tokens,
            elements: 2 * heads * s.tokens * d,
            key_blocks: heads * s.blocks * codec.key_block_bytes(),
            value_blocks: heads * s.blocks * codec.value_block_bytes(),
            salient_blocks: heads * groups * self.salient.value_block_bytes(),
            block_metadata: heads * (s.blocks * (key_meta + value_meta) + groups * salient_meta),
            residual: heads * ((s.sink_len + s.ring_len) * 2 * d * 2 + pending * d * 2),
            metadata: s.salient_masks.as_ref().map_or(0, |(m, _)| m.len),
        })
    }

    /// Live bytes of the whole cache.
    pub fn memory(&self) -> MemoryUsage {
        let mut total = MemoryUsage::default();
        for seq in 0..self.sequences.len() {
            if let Ok(m) = self.memory_of(seq) {
                total.add(&m);
            }
        }
        total
    }
}

/// Bytes of scales, offsets and masks in one key block and one value block.
fn block_metadata(codec: &Codec) -> (usize, usize) {
    let keys = match *codec.key_layout() {
        KeyLayout::Mixed {
            mask,
            outlier_params,
            lane_scales,
            ..
        } => mask.len + outlier_params.len + lane_scales.len,
        KeyLayout::PerChannel { params, .. } => params.len,
        KeyLayout::SignSketch { norms, .. } => norms.len,
    };
    let values = match *codec.value_layout() {
        ValueLayout::Ternary { scales, .. } => scales.len,
        ValueLayout::PerToken { params, .. } | ValueLayout::PerChannel { params, .. } => params.len,
    };
    (keys, values)
}

fn f16_tensor<T>(data: &T, tokens: usize) -> HeadTensor<'_, T> {
    HeadTensor {
        data,
        dtype: DType::F16,
        tokens,
    }
}

/// Converts inputs to f16, rejecting NaN/inf and magnitudes beyond the f16 range.
fn to_f16<T: KvElement>(x: &[T]) -> Result<Vec<f16>> {
    if let Some(halves) = T::as_f16(x) {
        // The f32 round trip below is the identity on finite f16 (all within range).
        if let Some(index) = halves.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite { index });
        }
        return Ok(halves.to_vec());
    }
    let values: Vec<f32> = x.iter().map(|e| e.to_f32()).collect();
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { index });
    }
    if let Some(index) = values.iter().position(|v| v.abs() > F16_MAX) {
        return Err(Error::OutOfRange { index });
    }
    let mut out = vec![f16::ZERO; values.len()];
    out.convert_from_f32_slice(&values);
    Ok(out)
}

/// The little-endian bytes of f16 values.
fn f16_bytes(x: &[f16]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(x).to_vec()
    } else {
        x.iter().flat_map(|v| v.to_le_bytes()).collect()
    }
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// The slow reference: exact softmax attention in f64 for one query over `[tokens, D]` keys and
/// values (row-major f32). Returns the output and the attention weights. For tests and
/// evaluations, not for serving.
pub fn reference_attention(
    keys: &[f32],
    values: &[f32],
    head_dim: usize,
    q: &[f32],
    scale: f32,
) -> (Vec<f64>, Vec<f64>) {
    attention_from_scores(&dot_scores(keys, head_dim, q, scale), values, head_dim)
}

/// `scale·q·k` in f64 for every row of `keys`.
fn dot_scores(keys: &[f32], head_dim: usize, q: &[f32], scale: f32) -> Vec<f64> {
    keys.chunks_exact(head_dim)
        .map(|k| {
            k.iter()
                .zip(q)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum::<f64>()
                * f64::from(scale)
        })
        .collect()
}

/// Softmax attention in f64 over given (already scaled) scores, one per row of `values`.
/// Returns the output and the attention weights.
pub fn attention_from_scores(
    scores: &[f64],
    values: &[f32],
    head_dim: usize,
) -> (Vec<f64>, Vec<f64>) {
    let tokens = scores.len();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut weights: Vec<f64> = scores.iter().map(|s| libm::exp(s - max)).collect();
    let sum: f64 = weights.iter().sum();
    weights.iter_mut().for_each(|w| *w /= sum);
    let mut out = vec![0.0f64; head_dim];
    for (w, v) in weights
        .iter()
        .zip(values.chunks_exact(head_dim))
        .take(tokens)
    {
        out.iter_mut()
            .zip(v)
            .for_each(|(o, &x)| *o += w * f64::from(x));
    }
    (out, weights)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{GroupSize, HeadDim, Scheme};

    fn codec() -> Codec {
        Codec::new(Scheme::Vidkv.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap()
    }

    #[test]
    fn salient_by_indices_and_by_scores() {
        assert_eq!(
            Salient::Indices(&[0, 3, 3]).flags(5).unwrap(),
            [true, false, false, true, false]
        );
        assert!(Salient::Indices(&[5]).flags(5).is_err());
        // round(0.4 · 5) = 2 highest scores; ties go to the lower index.
        let scores = [0.5, 2.0, 0.5, 1.0, 0.5];
        let flags = Salient::Scores {
            scores: &scores,
            fraction: 0.4,
        }
        .flags(5)
        .unwrap();
        assert_eq!(flags, [false, true, false, true, false]);
        let ties = Salient::Scores {
            scores: &[1.0; 4],
            fraction: 0.5,
        };
        assert_eq!(ties.flags(4).unwrap(), [true, true, false, false]);
        assert!(
            Salient::Scores {
                scores: &scores,
                fraction: 1.5
            }
            .flags(5)
            .is_err()
        );
        assert!(
            Salient::Scores {
                scores: &scores,
                fraction: 0.2
            }
            .flags(4)
            .is_err()
        );
    }

    #[test]
    fn salient_score_is_the_mean_dot_product_with_the_text() {
        // Two visual tokens, three text tokens, dim 2.
        let visual = [1.0, 0.0, 0.0, 2.0];
        let text = [1.0, 1.0, 2.0, 0.0, 0.0, -4.0];
        let s = salient_scores(&visual, &text, 2).unwrap();
        // mean of (1, 2, 0) and of (2, 0, −8)
        assert!(
            (s[0] - 1.0).abs() < 1e-6 && (s[1] + 2.0).abs() < 1e-6,
            "{s:?}"
        );
        assert!(salient_scores(&visual, &[], 2).is_err());
        assert!(salient_scores(&visual, &text[..5], 2).is_err());
    }

    #[test]
    fn configuration_checks() {
        let c = CacheConfig::new(codec(), 4, 28);
        c.validate().unwrap();
        assert_eq!(c.group_size(), 7);
        assert!((c.softmax_scale() - 0.125).abs() < 1e-7);
        assert!(CacheConfig::new(codec(), 4, 30).validate().is_err());
        assert!(CacheConfig::new(codec(), 0, 0).validate().is_err());
        let bad_mask = CacheConfig {
            outliers: Some(ChannelMask::from_channels([1, 2])),
            ..c
        };
        assert!(bad_mask.validate().is_err());
        let sc = salient_codec(&codec());
        assert_eq!(sc.value_block_bytes(), 4 * 64 + 32 * 64 / 4);
        assert_eq!(sc.key_block_bytes(), codec().key_block_bytes());
    }

    #[test]
    fn bits_per_element_counts_every_byte() {
        let m = MemoryUsage {
            tokens: 32,
            elements: 2 * 32 * 64,
            key_blocks: 584,
            value_blocks: 544,
            ..MemoryUsage::default()
        };
        assert_eq!(m.total(), 1128);
        assert!((m.bits_per_element() - 1128.0 * 8.0 / 4096.0).abs() < 1e-12);
        assert_eq!(MemoryUsage::default().bits_per_element(), 0.0);
    }
}
