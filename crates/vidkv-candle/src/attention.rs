//! The drop-in attention step: what a candle model calls instead of concatenating f16 K/V
//! tensors and running `softmax(QKᵀ/√D)V` itself.
//!
//! ```text
//! // before                                   // after
//! let k = Tensor::cat(&[&cache_k, &k], 2)?;   let y = kv.attention(layer, &q, &k, &v)?;
//! let v = Tensor::cat(&[&cache_v, &v], 2)?;
//! let y = softmax(q.matmul(&k.t()?)? / √D).matmul(&v)?;
//! ```
//!
//! Tensors are in candle's usual attention layout, `[batch = 1, heads, seq, head_dim]`, with
//! post-RoPE queries and keys. A call with `seq > 1` is a **prefill**: attention is computed at
//! full precision with candle ops (causal over the new tokens and whatever was cached before, as
//! in the paper), then the keys and values are handed to the cache, which quantizes every whole
//! group. A call with `seq == 1` is a **decode step**: the token is appended and attention runs on
//! the cache ([`LayerCache::attend`]). Batches of sequences use one [`KvCacheAttention`] each.

use candle_core::{D, DType, Device, Tensor};

use crate::cache::{CacheFactory, CacheShape, LayerCache};
use crate::convert::{heads_from_tensor, tensor_from_heads};
use crate::error::{Error, Result};

/// Per-layer caches of one sequence, made by a [`CacheFactory`].
pub struct KvCacheAttention {
    shape: CacheShape,
    layers: Vec<Box<dyn LayerCache>>,
    name: String,
}

impl std::fmt::Debug for KvCacheAttention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCacheAttention")
            .field("name", &self.name)
            .field("shape", &self.shape)
            .field("layers", &self.layers.len())
            .field("tokens", &self.tokens())
            .finish()
    }
}

impl KvCacheAttention {
    /// Empty caches for `layers` layers.
    pub fn new(factory: &dyn CacheFactory, layers: usize, shape: CacheShape) -> Result<Self> {
        shape.validate()?;
        Ok(Self {
            shape,
            layers: (0..layers)
                .map(|l| factory.make(l, shape))
                .collect::<Result<_>>()?,
            name: factory.name(),
        })
    }

    /// The factory's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Head counts and dimension.
    pub fn shape(&self) -> CacheShape {
        self.shape
    }

    /// Tokens cached (in layer 0; every layer holds the same count).
    pub fn tokens(&self) -> usize {
        self.layers.first().map_or(0, |l| l.tokens())
    }

    /// Bytes of every layer's cache together.
    pub fn memory_bytes(&self) -> usize {
        self.layers.iter().map(|l| l.memory_bytes()).sum()
    }

    /// How layer 0 computes attention, for reports.
    pub fn describe(&self) -> String {
        self.layers
            .first()
            .map_or_else(String::new, |l| l.describe())
    }

    /// The cache of one layer.
    pub fn layer(&self, layer: usize) -> Option<&dyn LayerCache> {
        self.layers.get(layer).map(|b| b.as_ref())
    }

    fn layer_mut(&mut self, layer: usize) -> Result<&mut Box<dyn LayerCache>> {
        let n = self.layers.len();
        self.layers
            .get_mut(layer)
            .ok_or_else(|| Error::Shape(format!("layer {layer} of {n}")))
    }

    /// Appends keys and values `[1, kv_heads, seq, D]` to `layer` without attending
    /// (e.g. K/V from a shared prefill).
    pub fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let (kr, seq) = heads_from_tensor(k, self.shape.kv_heads, self.shape.head_dim)?;
        let (vr, vseq) = heads_from_tensor(v, self.shape.kv_heads, self.shape.head_dim)?;
        if seq != vseq {
            return Err(Error::Shape(format!("{seq} keys but {vseq} values")));
        }
        self.layer_mut(layer)?.append(&kr, &vr, seq)
    }

    /// Appends f32 rows `[kv_heads, tokens, D]` to `layer`.
    pub fn append_rows(&mut self, layer: usize, k: &[f32], v: &[f32], tokens: usize) -> Result<()> {
        self.layer_mut(layer)?.append(k, v, tokens)
    }

    /// Decode attention of `q` `[1, q_heads, 1, D]` on what `layer` holds; `[1, q_heads, 1, D]`
    /// on `q`'s device and dtype.
    pub fn attend(&mut self, layer: usize, q: &Tensor) -> Result<Tensor> {
        let (qr, seq) = heads_from_tensor(q, self.shape.q_heads, self.shape.head_dim)?;
        if seq != 1 {
            return Err(Error::Shape(format!("attend takes one query, got {seq}")));
        }
        let mut out = vec![0.0f32; qr.len()];
        self.layer_mut(layer)?.attend(&qr, &mut out)?;
        tensor_from_heads(out, self.shape.q_heads, 1, self.shape.head_dim, q)
    }

    /// The attention step of `layer`: appends `k`/`v` and returns the attention output for `q`
    /// (`[1, q_heads, seq, D]`). `seq > 1` is a prefill at full precision; `seq == 1` a decode
    /// step on the cache. See the module docs.
    pub fn attention(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
    ) -> Result<Tensor> {
        let seq = q.dim(2)?;
        if seq == 1 {
            self.append(layer, k, v)?;
            return self.attend(layer, q);
        }
        let past = self.layer(layer).map_or(0, |l| l.tokens());
        let out = if past == 0 {
            full_attention(q, k, v, self.shape.group(), 0)?
        } else {
            // Prefill after earlier tokens: attend to their (dequantized) cache too.
            let (pk, pv) = self
                .layer(layer)
                .ok_or_else(|| Error::Shape(format!("layer {layer}")))?
                .dequantized();
            let (h, d) = (self.shape.kv_heads, self.shape.head_dim);
            let pk = Tensor::from_vec(pk, (1, h, past, d), q.device())?.to_dtype(k.dtype())?;
            let pv = Tensor::from_vec(pv, (1, h, past, d), q.device())?.to_dtype(v.dtype())?;
            let k_all = Tensor::cat(&[&pk, k], 2)?;
            let v_all = Tensor::cat(&[&pv, v], 2)?;
            full_attention(q, &k_all, &v_all, self.shape.group(), past)?
        };
        self.append(layer, k, v)?;
        Ok(out)
    }
}

/// Causal attention at full precision with candle ops. `q` `[1, Hq, S, D]`; `k`, `v`
/// `[1, Hkv, past + S, D]`; query i (0-based among the S new ones) sees keys `..= past + i`.
pub fn full_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    group: usize,
    past: usize,
) -> Result<Tensor> {
    let (b, _hq, s, d) = q.dims4()?;
    let (_, hkv, t, _) = k.dims4()?;
    let dtype = q.dtype();
    let q = q.to_dtype(DType::F32)?;
    let repeat = |x: &Tensor| -> Result<Tensor> {
        let x = x.to_dtype(DType::F32)?;
        Ok(if group == 1 {
            x
        } else {
            x.unsqueeze(2)?
                .expand((b, hkv, group, t, d))?
                .reshape((b, hkv * group, t, d))?
        })
    };
    let (k, v) = (repeat(k)?, repeat(v)?);
    let scores = (q.matmul(&k.t()?.contiguous()?)? / (d as f64).sqrt())?;
    let mask = causal_mask(s, t, past, q.device())?;
    let scores = scores.broadcast_add(&mask)?;
    let max = scores.max_keepdim(D::Minus1)?;
    let p = scores.broadcast_sub(&max)?.exp()?;
    let p = p.broadcast_div(&p.sum_keepdim(D::Minus1)?)?;
    Ok(p.matmul(&v.contiguous()?)?.to_dtype(dtype)?)
}

fn causal_mask(s: usize, t: usize, past: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..s)
        .flat_map(|i| {
            (0..t).map(move |j| {
                if j <= past + i {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
        })
        .collect();
    Ok(Tensor::from_vec(mask, (s, t), device)?)
}
