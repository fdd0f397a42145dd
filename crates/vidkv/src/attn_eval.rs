//! Attention metrics of `vidkv eval` for files that hold queries (`q_post.L` or `q.L`,
//! `[q_heads, n, D]`, the queries of the last n positions of the sequence).
//!
//! For each query at position p the layer's tokens stream through a [`KvCache`] exactly as in
//! decoding: tokens `0 … p0 − 1` (p0 the first query position) are prefilled, then every token
//! `p ≥ p0` is appended and the query at p attends over tokens `0 ..= p` through the cache's fused
//! kernel, with the configured residual window and attention sinks. Against exact attention over
//! the file's keys and values (f64):
//!
//! * `attn_rel_error` — mean over (position, query head) of `‖o − ô‖ / ‖o‖`, ô the fused output;
//! * `attn_kl` — mean of `KL(w ‖ ŵ)`, w the exact attention weights and ŵ those of the cache's
//!   dequantized keys (for `h1b`, whose attention does not use decoded keys, ŵ comes from the
//!   SimHash score estimate the fused kernel computes, [`vidkv_core::sketch::reference_scores`]).
//!
//! `h1b` (H1B-KV) is evaluated without the fine-tuning the published method relies on.
//!
//! Query head h uses KV head `h / (q_heads / kv_heads)`. For `vidkv-stp` the salient tokens are
//! the 20 % of the sequence with the largest value norms (summed over KV heads): a stand-in for
//! the paper's visual–text score when no embeddings are given.

use serde::Serialize;
use vidkv_core::cache::{CacheConfig, KvCache, Salient};
use vidkv_core::{DType, KvQuantBackend, Scheme};

use crate::error::{Error, ErrorKind, Result};
use crate::options::SchemeOptions;
use crate::tensor::TensorFile;

/// Cache settings of the attention metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnOptions {
    /// Residual window R.
    pub residual: usize,
    /// Attention sinks S.
    pub sinks: usize,
}

impl Default for AttnOptions {
    fn default() -> Self {
        Self {
            residual: vidkv_core::cache::DEFAULT_RESIDUAL,
            sinks: vidkv_core::cache::DEFAULT_SINKS,
        }
    }
}

/// One attention line of `vidkv eval`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttnRow {
    /// File path or builtin label.
    pub file: String,
    /// Layer number.
    pub layer: u32,
    /// Always `"attn"` (tells these lines from the per-tensor ones).
    pub kind: &'static str,
    /// Preset name.
    pub scheme: &'static str,
    /// Backend of the cache.
    pub backend: &'static str,
    /// KV heads.
    pub kv_heads: usize,
    /// Query heads.
    pub q_heads: usize,
    /// Head dimension.
    pub head_dim: usize,
    /// Tokens in the sequence.
    pub tokens: usize,
    /// Query positions evaluated (the last `queries` of the sequence).
    pub queries: usize,
    /// Residual window R.
    pub residual: usize,
    /// Attention sinks S.
    pub sinks: usize,
    /// Salient tokens (vidkv-stp), else 0.
    pub salient_tokens: usize,
    /// All-in bits per K/V element of the cache after the last token.
    pub cache_bits_per_element: f64,
    /// Mean `‖o − ô‖/‖o‖`.
    pub attn_rel_error: f64,
    /// Worst `‖o − ô‖/‖o‖`.
    pub attn_rel_error_max: f64,
    /// Mean `KL(w ‖ ŵ)` of the attention weights (nats).
    pub attn_kl: f64,
}

/// A layer that has queries: names of its query, key and value tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttnLayer {
    /// Layer number.
    pub layer: u32,
    /// `q_post.L` or `q.L`.
    pub queries: String,
    /// `k_post.L` or `k.L`.
    pub keys: String,
    /// `v.L`.
    pub values: String,
}

/// Layers of `file` with queries, keys and values, in layer order.
pub fn attention_layers(file: &TensorFile) -> Result<Vec<AttnLayer>> {
    let st = file.parse()?;
    let names: Vec<String> = st.names().into_iter().map(|s| s.to_owned()).collect();
    let has = |n: &str| names.iter().any(|x| x == n);
    let mut layers = Vec::new();
    for name in &names {
        let Some((prefix, layer)) = name.split_once('.') else {
            continue;
        };
        if !matches!(prefix, "q_post" | "q") || prefix == "q" && has(&format!("q_post.{layer}")) {
            continue;
        }
        let Ok(l) = layer.parse::<u32>() else {
            continue;
        };
        let keys = [format!("k_post.{layer}"), format!("k.{layer}")]
            .into_iter()
            .find(|k| has(k));
        let values = format!("v.{layer}");
        if let (Some(keys), true) = (keys, has(&values)) {
            layers.push(AttnLayer {
                layer: l,
                queries: name.clone(),
                keys,
                values,
            });
        }
    }
    layers.sort_by_key(|l| l.layer);
    Ok(layers)
}

/// A `[a, b, D]` tensor of the file as f32.
pub(crate) struct Rows {
    pub(crate) data: Vec<f32>,
    pub(crate) shape: [usize; 3],
}

pub(crate) fn rows(file: &TensorFile, name: &str) -> Result<Rows> {
    let located = |e: Error| e.in_tensor(name).in_file(file.label());
    let st = file.parse()?;
    let view = st.tensor(name).map_err(|e| located(Error::from(e)))?;
    let dtype = match view.dtype() {
        safetensors::Dtype::F16 => DType::F16,
        safetensors::Dtype::BF16 => DType::BF16,
        safetensors::Dtype::F32 => DType::F32,
        other => {
            return Err(located(
                ErrorKind::UnsupportedDType(format!("{other:?}")).into(),
            ));
        }
    };
    let &[a, b, d] = view.shape() else {
        return Err(located(ErrorKind::WrongRank(view.shape().to_vec()).into()));
    };
    let data = vidkv_cpu::to_f32(dtype, view.data(), vidkv_core::Arithmetic::F32)
        .map_err(|e| located(e.into()))?;
    Ok(Rows {
        data,
        shape: [a, b, d],
    })
}

/// Head `h` of a `[heads, t, d]` tensor.
pub(crate) fn head(x: &Rows, h: usize) -> &[f32] {
    let [_, t, d] = x.shape;
    &x.data[h * t * d..][..t * d]
}

/// Exact attention of one query over `n` rows (f64): output and weights.
pub(crate) fn exact(
    keys: &[f32],
    values: &[f32],
    d: usize,
    n: usize,
    q: &[f32],
    scale: f64,
) -> (Vec<f64>, Vec<f64>) {
    let scores: Vec<f64> = keys[..n * d]
        .chunks_exact(d)
        .map(|k| {
            k.iter()
                .zip(q)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum::<f64>()
                * scale
        })
        .collect();
    let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut w: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
    let sum: f64 = w.iter().sum();
    w.iter_mut().for_each(|x| *x /= sum);
    let mut o = vec![0.0f64; d];
    for (wt, v) in w.iter().zip(values.chunks_exact(d)) {
        o.iter_mut()
            .zip(v)
            .for_each(|(o, &x)| *o += wt * f64::from(x));
    }
    (o, w)
}

/// The attention metrics of one layer under each scheme.
pub fn evaluate_attention<B: KvQuantBackend>(
    backend: &B,
    file: &TensorFile,
    layer: &AttnLayer,
    schemes: &[Scheme],
    options: &SchemeOptions,
    attn: &AttnOptions,
) -> Result<Vec<AttnRow>> {
    let q = rows(file, &layer.queries)?;
    let k = rows(file, &layer.keys)?;
    let v = rows(file, &layer.values)?;
    let [kv, t, d] = k.shape;
    let [qh, nq, qd] = q.shape;
    let bad = |what: &'static str, expected: usize, actual: usize| {
        Error::from(vidkv_core::Error::ShapeMismatch {
            what,
            expected,
            actual,
        })
        .in_tensor(&layer.queries)
        .in_file(file.label())
    };
    if v.shape != k.shape {
        return Err(bad("value shape (as keys)", kv * t * d, v.data.len()));
    }
    if qd != d || nq > t || nq == 0 {
        return Err(bad("queries [q_heads, n ≤ tokens, head_dim]", d, qd));
    }
    if qh % kv != 0 {
        return Err(bad("query heads (a multiple of KV heads)", kv, qh));
    }
    let group = qh / kv;
    let p0 = t - nq;
    let scale = 1.0 / (d as f64).sqrt();
    let token = |x: &Rows, p: usize| -> Vec<f32> {
        (0..kv)
            .flat_map(|h| head(x, h)[p * d..][..d].iter().copied())
            .collect()
    };
    let query = |i: usize| -> Vec<f32> {
        (0..qh)
            .flat_map(|h| q.data[(h * nq + i) * d..][..d].iter().copied())
            .collect()
    };

    // References: exact outputs and weights, per (position, query head).
    let mut reference = Vec::with_capacity(nq * qh);
    for i in 0..nq {
        let p = p0 + i;
        let qi = query(i);
        for h in 0..qh {
            let kvh = h / group;
            reference.push(exact(
                head(&k, kvh),
                head(&v, kvh),
                d,
                p + 1,
                &qi[h * d..][..d],
                scale,
            ));
        }
    }
    // Salience stand-in: value norms summed over KV heads.
    let norms: Vec<f32> = (0..t)
        .map(|p| {
            (0..kv)
                .map(|h| {
                    head(&v, h)[p * d..][..d]
                        .iter()
                        .map(|x| x * x)
                        .sum::<f32>()
                        .sqrt()
                })
                .sum()
        })
        .collect();

    // Keys as the residual window and sinks hold them (f16).
    let k16: Vec<f32> = k
        .data
        .iter()
        .map(|&x| half::f16::from_f32(x).to_f32())
        .collect();

    let mut out = Vec::with_capacity(schemes.len());
    for &scheme in schemes {
        let codec = options
            .codec(scheme, vidkv_core::HeadDim::new(d)?)
            .map_err(|e| e.in_file(file.label()))?;
        let config = CacheConfig {
            residual: attn.residual,
            sinks: attn.sinks,
            ..CacheConfig::new(codec, kv, qh)
        };
        let mut cache = KvCache::new(backend, config)?;
        let seq = cache.add_sequence()?;
        let flags = match scheme.salient_fraction() {
            Some(fraction) => Salient::Scores {
                scores: &norms,
                fraction,
            }
            .flags(t)?,
            None => vec![false; t],
        };
        let prefill_flags: Vec<usize> = (0..p0).filter(|&p| flags[p]).collect();
        let (pk, pv): (Vec<f32>, Vec<f32>) = (
            (0..kv)
                .flat_map(|h| head(&k, h)[..p0 * d].iter().copied())
                .collect(),
            (0..kv)
                .flat_map(|h| head(&v, h)[..p0 * d].iter().copied())
                .collect(),
        );
        cache.prefill(seq, &pk, &pv, Salient::Indices(&prefill_flags))?;

        let (mut sum_rel, mut max_rel, mut sum_kl) = (0.0f64, 0.0f64, 0.0f64);
        let mut fused = vec![0.0f32; qh * d];
        // (blocks, tokens, keys) of the last dequantization.
        let mut deq: Option<(usize, usize, Vec<f32>)> = None;
        // Sign-sketch keys: each KV head's packed key blocks (the estimator reads them).
        let sketch = matches!(
            codec.config().keys,
            vidkv_core::KeyScheme::SignSketch { .. }
        );
        let mut packed: Vec<Vec<u8>> = Vec::new();
        for i in 0..nq {
            let p = p0 + i;
            cache.append_token(seq, &token(&k, p), &token(&v, p), flags[p])?;
            let qi = query(i);
            cache.attend(seq, &qi, &mut fused)?;
            // Dequantized keys: decoded blocks change only when a block is added; sinks and the
            // residual window are the f16 inputs.
            let blocks = cache.blocks(seq);
            if deq.as_ref().is_none_or(|(b, _, _)| *b != blocks) {
                deq = Some((blocks, cache.tokens(seq), cache.dequantize(seq)?.0));
                if sketch {
                    packed = (0..kv)
                        .map(|h| cache.key_blocks(seq, h))
                        .collect::<vidkv_core::Result<_>>()?;
                }
            }
            let (_, held, dk) = deq.as_ref().expect("set above");
            let n = p + 1;
            let quantized = attn.sinks.min(n)..(attn.sinks.min(n) + blocks * codec.group()).min(n);
            for h in 0..qh {
                let kvh = h / group;
                let (o, w) = &reference[i * qh + h];
                let ohat = &fused[h * d..][..d];
                let num: f64 = o
                    .iter()
                    .zip(ohat)
                    .map(|(a, &b)| (a - f64::from(b)).powi(2))
                    .sum();
                let den: f64 = o.iter().map(|a| a * a).sum();
                let rel = (num / den.max(1e-300)).sqrt();
                sum_rel += rel;
                max_rel = max_rel.max(rel);
                // Keys as the cache holds them: decoded blocks, f16 elsewhere.
                let qrow = &qi[h * d..][..d];
                let estimated = if sketch && blocks > 0 {
                    vidkv_core::sketch::reference_scores(&codec, &packed[kvh], qrow, scale as f32)?
                } else {
                    Vec::new()
                };
                let scores: Vec<f64> = (0..n)
                    .map(|tok| {
                        if sketch && quantized.contains(&tok) {
                            return estimated[tok - quantized.start];
                        }
                        let row = if quantized.contains(&tok) {
                            &dk[(kvh * held + tok) * d..][..d]
                        } else {
                            &k16[(kvh * t + tok) * d..][..d]
                        };
                        row.iter()
                            .zip(qrow)
                            .map(|(&a, &b)| f64::from(a) * f64::from(b))
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let lse = max + scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
                let kl: f64 = w
                    .iter()
                    .zip(&scores)
                    .filter(|(w, _)| **w > 0.0)
                    .map(|(w, s)| w * (w.ln() - (s - lse)))
                    .sum();
                sum_kl += kl.max(0.0);
            }
        }
        let count = (nq * qh) as f64;
        out.push(AttnRow {
            file: file.label().to_owned(),
            layer: layer.layer,
            kind: "attn",
            scheme: scheme.name(),
            backend: backend.name(),
            kv_heads: kv,
            q_heads: qh,
            head_dim: d,
            tokens: t,
            queries: nq,
            residual: attn.residual,
            sinks: attn.sinks,
            salient_tokens: flags.iter().filter(|&&f| f).count(),
            cache_bits_per_element: cache.memory().bits_per_element(),
            attn_rel_error: sum_rel / count,
            attn_rel_error_max: max_rel,
            attn_kl: sum_kl / count,
        });
    }
    Ok(out)
}
