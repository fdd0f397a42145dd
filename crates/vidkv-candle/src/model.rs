//! A LLaMA-architecture forward pass over a GGUF file, written with candle ops (weights through
//! candle's quantized loaders), whose attention goes through [`KvCacheAttention`].
//!
//! Channel order. llama.cpp's converter permutes the rows of `attn_q`/`attn_k` so that RoPE can
//! rotate adjacent channel pairs (2i, 2i+1) ("interleaved"); Hugging Face models rotate channel i
//! with i + D/2 (`rotate_half`). Both give the same attention scores, but they present the cache
//! with different key channel orders. Per-channel schemes (KIVI, pc2, outlier channels) do not
//! care; vidkv's FFT over the normal channels does, because it transforms them *in ascending
//! channel order*. [`ChannelOrder::Hf`] (the default) un-permutes the GGUF rows (an exact
//! permutation of whole quantized rows) so that the cache sees the keys exactly as the paper's
//! Hugging Face models produce them.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{D, DType, Device, Module, Tensor};

use crate::attention::{KvCacheAttention, full_attention};
use crate::cache::CacheShape;
use crate::error::{Error, Result};

/// Model hyper-parameters read from the GGUF metadata.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlamaConfig {
    /// Transformer blocks.
    pub layers: usize,
    /// Hidden size.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// RoPE base θ.
    pub rope_theta: f32,
    /// RMSNorm ε.
    pub rms_eps: f64,
    /// Vocabulary size.
    pub vocab: usize,
    /// Training context length.
    pub context: usize,
}

impl LlamaConfig {
    /// The cache shape of one layer.
    pub fn cache_shape(&self) -> CacheShape {
        CacheShape {
            kv_heads: self.kv_heads,
            q_heads: self.heads,
            head_dim: self.head_dim,
        }
    }
}

/// How the GGUF's matrices are run. candle 0.11 has no SIMD kernel for Q4_1 (its `vec_dot` is the
/// generic scalar loop), so a Q4_1 file runs ~10× slower than the same model in Q8_0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightMode {
    /// The file's Q4_1 rows with an exact f32 single-token product of this crate (decode), and
    /// dequantized f32 matmuls for prefill: exactly the file's weights, the fastest mode.
    #[default]
    Q41,
    /// Dequantized to f32 once at load: exactly the file's weights, f32 matmuls.
    F32,
    /// Re-quantized to Q8_0 at load (SIMD kernels; weights within Q8_0 rounding of the file's).
    Q8,
    /// As stored (Q4_1 through candle's scalar kernel).
    Native,
}

/// Which key channel order the model presents to the cache (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelOrder {
    /// Hugging Face order (`rotate_half`; channel i pairs with i + D/2).
    #[default]
    Hf,
    /// The GGUF file's order (interleaved RoPE; channel 2i pairs with 2i + 1).
    Gguf,
}

enum Linear {
    /// f32 weights: `Wᵀ` `[in, out]` as a tensor for prefill matmuls, and `W` `[out, in]` as
    /// rows for the single-token decode product (candle's gemm repacks the matrix on every
    /// M = 1 call, which makes decode several times slower than a plain row-dot gemv).
    F32 {
        wt: Tensor,
        rows: Vec<f32>,
    },
    /// Q4_1 rows `[out, in/32 blocks]` as stored (d: f16, m: f16, 16 bytes of nibbles per
    /// block) for an exact single-token product (`d·Σq·x + m·Σx` in f32, 6.6× less memory
    /// traffic than f32 rows), and `Wᵀ` dequantized for prefill matmuls.
    Q41 {
        wt: Tensor,
        blocks: Vec<u8>,
    },
    Quantized(QMatMul),
}

impl Linear {
    fn f32(w: Tensor) -> Result<Self> {
        Ok(Linear::F32 {
            rows: w.flatten_all()?.to_vec1::<f32>()?,
            wt: w.t()?.contiguous()?,
        })
    }

    fn q41(t: QTensor, device: &Device) -> Result<Self> {
        Ok(Linear::Q41 {
            blocks: t.data()?.into_owned(),
            wt: t.dequantize(device)?.t()?.contiguous()?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Linear::Q41 { blocks, .. } if x.dim(0)? == 1 && x.device().is_cpu() => {
                let xv = x.flatten_all()?.to_vec1::<f32>()?;
                let out = blocks.len() / (xv.len() / 32 * Q41_BLOCK);
                let mut y = vec![0.0f32; out];
                gemv_q41(blocks, &xv, &mut y);
                Tensor::from_vec(y, (1, out), x.device())?
            }
            Linear::Q41 { wt, .. } => x.matmul(wt)?,
            Linear::F32 { rows, .. } if x.dim(0)? == 1 && x.device().is_cpu() => {
                let xv = x.flatten_all()?.to_vec1::<f32>()?;
                let out = rows.len() / xv.len();
                let mut y = vec![0.0f32; out];
                gemv(rows, &xv, &mut y);
                Tensor::from_vec(y, (1, out), x.device())?
            }
            Linear::F32 { wt, .. } => x.matmul(wt)?,
            Linear::Quantized(q) => q.forward(x)?,
        })
    }
}

const Q41_BLOCK: usize = 20;

/// `y = W x` for Q4_1 rows `W` (`y.len()` rows of `x.len() / 32` blocks), exact in f32.
fn gemv_q41(w: &[u8], x: &[f32], y: &mut [f32]) {
    use rayon::prelude::*;
    let nb = x.len() / 32;
    let row = nb * Q41_BLOCK;
    let sums: Vec<f32> = x.chunks_exact(32).map(|c| c.iter().sum()).collect();
    y.par_chunks_mut(64)
        .zip(w.par_chunks(64 * row))
        .for_each(|(ys, ws)| {
            for (yi, r) in ys.iter_mut().zip(ws.chunks_exact(row)) {
                let mut acc = 0.0f32;
                for ((b, xs), s) in r.chunks_exact(Q41_BLOCK).zip(x.chunks_exact(32)).zip(&sums) {
                    let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
                    let m = half::f16::from_le_bytes([b[2], b[3]]).to_f32();
                    let qs: &[u8; 16] = b[4..20].try_into().unwrap();
                    let xs: &[f32; 32] = xs.try_into().unwrap();
                    let mut lo = [0.0f32; 16];
                    for j in 0..16 {
                        lo[j] =
                            f32::from(qs[j] & 0x0F) * xs[j] + f32::from(qs[j] >> 4) * xs[j + 16];
                    }
                    acc += d * lo.iter().sum::<f32>() + m * s;
                }
                *yi = acc;
            }
        });
}

/// `y = W x` for row-major `W` `[y.len(), x.len()]`, rows split over rayon's threads.
fn gemv(w: &[f32], x: &[f32], y: &mut [f32]) {
    use rayon::prelude::*;
    let k = x.len();
    y.par_chunks_mut(64)
        .zip(w.par_chunks(64 * k))
        .for_each(|(ys, ws)| {
            for (yi, row) in ys.iter_mut().zip(ws.chunks_exact(k)) {
                *yi = dot(row, x);
            }
        });
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (ac, ar) = a.split_at(a.len() / 16 * 16);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(16).zip(bc.chunks_exact(16)) {
        // Fixed-size views let the compiler drop bounds checks and vectorise.
        let (x, y): (&[f32; 16], &[f32; 16]) = (x.try_into().unwrap(), y.try_into().unwrap());
        for i in 0..16 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + ar.iter().zip(br).map(|(x, y)| x * y).sum::<f32>()
}

struct Block {
    attn_norm: Tensor,
    wq: Linear,
    wk: Linear,
    wv: Linear,
    wo: Linear,
    ffn_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The model.
pub struct Llama {
    config: LlamaConfig,
    order: ChannelOrder,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
    lm_head: QMatMul,
    cos: Tensor,
    sin: Tensor,
    device: Device,
}

impl std::fmt::Debug for Llama {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama")
            .field("config", &self.config)
            .field("order", &self.order)
            .finish_non_exhaustive()
    }
}

fn meta<'a>(ct: &'a Content, key: &str) -> Result<&'a Value> {
    ct.metadata
        .get(key)
        .ok_or_else(|| Error::Config(format!("GGUF metadata lacks {key}")))
}

fn meta_usize(ct: &Content, key: &str) -> Result<usize> {
    Ok(meta(ct, key)?.to_u32()? as usize)
}

/// Reorders the rows of a q/k projection from llama.cpp's interleaved order back to Hugging
/// Face's: within each head, HF row `j·D/2 + i` is GGUF row `2i + j`. Moves whole rows of
/// quantized blocks, so the weights are bit-identical.
fn unpermute_rows(t: QTensor, heads: usize, device: &Device) -> Result<QTensor> {
    let (rows, cols) = t.shape().dims2()?;
    let dtype = t.dtype();
    let data = t.data()?;
    let row_bytes = data.len() / rows;
    let hd = rows / heads;
    let half = hd / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let dst = h * hd + j * half + i;
                let src = h * hd + 2 * i + j;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(std::borrow::Cow::Owned(out), device, dtype)?;
    Ok(QTensor::new(storage, (rows, cols))?)
}

impl Llama {
    /// Loads a LLaMA-architecture GGUF file onto `device`.
    pub fn load(
        path: &Path,
        device: &Device,
        order: ChannelOrder,
        weights: WeightMode,
    ) -> Result<Self> {
        let mut file = File::open(path)
            .map_err(|e| Error::Config(format!("cannot open {}: {e}", path.display())))?;
        let ct = Content::read(&mut file)?;
        Self::from_content(&ct, &mut file, device, order, weights)
    }

    /// Builds the model from parsed GGUF content and its reader.
    pub fn from_content<R: std::io::Read + std::io::Seek>(
        ct: &Content,
        reader: &mut R,
        device: &Device,
        order: ChannelOrder,
        weights: WeightMode,
    ) -> Result<Self> {
        let matmul = |t: QTensor| -> Result<Linear> {
            Ok(match weights {
                WeightMode::Native => Linear::Quantized(QMatMul::from_qtensor(t)?),
                WeightMode::Q41 if t.dtype() == GgmlDType::Q4_1 => Linear::q41(t, device)?,
                WeightMode::Q41 => Linear::f32(t.dequantize(device)?)?,
                // Stored transposed, `[in, out]` contiguous: `x · Wᵀ` without a per-call repack.
                WeightMode::F32 => Linear::f32(t.dequantize(device)?)?,
                WeightMode::Q8 => Linear::Quantized(QMatMul::from_qtensor(QTensor::quantize(
                    &t.dequantize(device)?,
                    GgmlDType::Q8_0,
                )?)?),
            })
        };
        let arch = meta(ct, "general.architecture")?.to_string()?.clone();
        if arch != "llama" {
            return Err(Error::Config(format!(
                "architecture {arch}, expected llama"
            )));
        }
        let heads = meta_usize(ct, "llama.attention.head_count")?;
        let hidden = meta_usize(ct, "llama.embedding_length")?;
        let config = LlamaConfig {
            layers: meta_usize(ct, "llama.block_count")?,
            hidden,
            heads,
            kv_heads: meta_usize(ct, "llama.attention.head_count_kv")?,
            head_dim: hidden / heads,
            rope_theta: meta(ct, "llama.rope.freq_base")?.to_f32()?,
            rms_eps: f64::from(meta(ct, "llama.attention.layer_norm_rms_epsilon")?.to_f32()?),
            vocab: meta_usize(ct, "llama.vocab_size")?,
            context: meta_usize(ct, "llama.context_length")?,
        };
        let mut qt = |name: &str| ct.tensor(reader, name, device);
        let embed_q = qt("token_embd.weight")?;
        let embed = embed_q.dequantize(device)?;
        let lm_head = match qt("output.weight") {
            Ok(w) => QMatMul::from_qtensor(w)?,
            Err(_) => QMatMul::from_qtensor(embed_q)?, // tied embeddings
        };
        let norm = qt("output_norm.weight")?.dequantize(device)?;
        let mut blocks = Vec::with_capacity(config.layers);
        for l in 0..config.layers {
            let p = format!("blk.{l}");
            let mut q = qt(&format!("{p}.attn_q.weight"))?;
            let mut k = qt(&format!("{p}.attn_k.weight"))?;
            if order == ChannelOrder::Hf {
                q = unpermute_rows(q, config.heads, device)?;
                k = unpermute_rows(k, config.kv_heads, device)?;
            }
            blocks.push(Block {
                attn_norm: qt(&format!("{p}.attn_norm.weight"))?.dequantize(device)?,
                wq: matmul(q)?,
                wk: matmul(k)?,
                wv: matmul(qt(&format!("{p}.attn_v.weight"))?)?,
                wo: matmul(qt(&format!("{p}.attn_output.weight"))?)?,
                ffn_norm: qt(&format!("{p}.ffn_norm.weight"))?.dequantize(device)?,
                gate: matmul(qt(&format!("{p}.ffn_gate.weight"))?)?,
                up: matmul(qt(&format!("{p}.ffn_up.weight"))?)?,
                down: matmul(qt(&format!("{p}.ffn_down.weight"))?)?,
            });
        }
        let (cos, sin) = rope_tables(&config, device)?;
        Ok(Self {
            config,
            order,
            embed,
            blocks,
            norm,
            lm_head,
            cos,
            sin,
            device: device.clone(),
        })
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Runs `tokens` at positions `pos..` through the model with `cache` (prefill when more than
    /// one token, see [`KvCacheAttention::attention`]). Returns the logits of the last position
    /// (`[vocab]`, f32) and the time spent in the cache's attention step.
    pub fn forward(
        &self,
        tokens: &[u32],
        pos: usize,
        cache: &mut KvCacheAttention,
    ) -> Result<(Tensor, Duration)> {
        let mut attn_time = Duration::ZERO;
        let logits = self.run(tokens, pos, &mut |layer, q, k, v| {
            let t = Instant::now();
            let y = cache.attention(layer, q, k, v);
            attn_time += t.elapsed();
            y
        })?;
        Ok((logits, attn_time))
    }

    /// A prefill of `tokens` from position 0, computed once at full precision, whose keys and
    /// values are appended to every cache in `caches` (one per scheme). Returns the logits of
    /// the last position.
    pub fn prefill_shared(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCacheAttention],
    ) -> Result<Tensor> {
        let group = self.config.heads / self.config.kv_heads;
        self.run(tokens, 0, &mut |layer, q, k, v| {
            for c in caches.iter_mut() {
                if c.tokens() != 0 && layer == 0 {
                    return Err(Error::Config("prefill_shared needs empty caches".into()));
                }
                c.append(layer, k, v)?;
            }
            full_attention(q, k, v, group, 0)
        })
    }

    /// The keys (post-RoPE) and values every layer produces for `tokens` from position 0,
    /// `[1, kv_heads, seq, D]` each, e.g. to compare with a reference forward.
    pub fn kv_dump(&self, tokens: &[u32]) -> Result<Vec<(Tensor, Tensor)>> {
        let group = self.config.heads / self.config.kv_heads;
        let mut out = Vec::new();
        self.run(tokens, 0, &mut |_, q, k, v| {
            out.push((k.clone(), v.clone()));
            full_attention(q, k, v, group, 0)
        })?;
        Ok(out)
    }

    /// Queries, keys (both post-RoPE) and values of every layer for `tokens` from position 0,
    /// `[1, heads or kv_heads, seq, D]` each: what `vidkv-dump-kv` writes to safetensors.
    pub fn qkv_dump(&self, tokens: &[u32]) -> Result<Vec<[Tensor; 3]>> {
        let group = self.config.heads / self.config.kv_heads;
        let mut out = Vec::new();
        self.run(tokens, 0, &mut |_, q, k, v| {
            out.push([q.clone(), k.clone(), v.clone()]);
            full_attention(q, k, v, group, 0)
        })?;
        Ok(out)
    }

    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        tokens: &[u32],
        pos: usize,
        attention: &mut dyn FnMut(usize, &Tensor, &Tensor, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let c = &self.config;
        let s = tokens.len();
        if s == 0 || pos + s > c.context {
            return Err(Error::Shape(format!(
                "{s} tokens at position {pos} (context {})",
                c.context
            )));
        }
        let ids = Tensor::new(tokens, &self.device)?;
        let mut x = self.embed.index_select(&ids, 0)?; // [S, hidden]
        let cos = self.cos.narrow(0, pos, s)?;
        let sin = self.sin.narrow(0, pos, s)?;
        for (l, b) in self.blocks.iter().enumerate() {
            let h = rms_norm(&x, &b.attn_norm, c.rms_eps)?;
            let q = b.wq.forward(&h)?;
            let k = b.wk.forward(&h)?;
            let v = b.wv.forward(&h)?;
            // [S, H·D] → [1, H, S, D]
            let split = |t: Tensor, heads: usize| -> Result<Tensor> {
                Ok(t.reshape((1, s, heads, c.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let q = self.rope(&split(q, c.heads)?, &cos, &sin)?;
            let k = self.rope(&split(k, c.kv_heads)?, &cos, &sin)?;
            let v = split(v, c.kv_heads)?;
            let y = attention(l, &q, &k, &v)?; // [1, H, S, D]
            let y = y.transpose(1, 2)?.reshape((s, c.hidden))?;
            x = (x + b.wo.forward(&y)?)?;
            let h = rms_norm(&x, &b.ffn_norm, c.rms_eps)?;
            let g = b.gate.forward(&h)?.silu()?;
            let u = b.up.forward(&h)?;
            x = (x + b.down.forward(&(g * u)?)?)?;
        }
        let last = x.narrow(0, s - 1, 1)?;
        let last = rms_norm(&last, &self.norm, c.rms_eps)?;
        Ok(self
            .lm_head
            .forward(&last)?
            .squeeze(0)?
            .to_dtype(DType::F32)?)
    }

    /// RoPE on `[1, H, S, D]` in the model's channel order.
    fn rope(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (b, h, s, d) = x.dims4()?;
        let half = d / 2;
        Ok(match self.order {
            ChannelOrder::Hf => {
                let x1 = x.narrow(3, 0, half)?;
                let x2 = x.narrow(3, half, half)?;
                let r1 = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
                let r2 = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
                Tensor::cat(&[&r1, &r2], 3)?
            }
            ChannelOrder::Gguf => {
                let x = x.reshape((b, h, s, half, 2))?;
                let x0 = x.narrow(4, 0, 1)?.squeeze(4)?;
                let x1 = x.narrow(4, 1, 1)?.squeeze(4)?;
                let r0 = (x0.broadcast_mul(cos)? - x1.broadcast_mul(sin)?)?;
                let r1 = (x0.broadcast_mul(sin)? + x1.broadcast_mul(cos)?)?;
                Tensor::stack(&[&r0, &r1], 4)?.reshape((b, h, s, d))?
            }
        })
    }
}

fn rope_tables(c: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = c.head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0 / c.rope_theta.powf(2.0 * i as f32 / c.head_dim as f32))
        .collect();
    let angles: Vec<f32> = (0..c.context)
        .flat_map(|p| inv.iter().map(move |f| p as f32 * f))
        .collect();
    let a = Tensor::from_vec(angles, (c.context, half), device)?;
    Ok((a.cos()?, a.sin()?))
}

fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(x.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(w)?)
}
