//! Metrics of one tensor under one scheme: storage cost measured on the produced bytes, error
//! against the original input, and backend throughput.

use std::time::Instant;

use serde::Serialize;
use vidkv_core::cache::{CacheConfig, KvCache, Salient};
use vidkv_core::{Arithmetic, Codec, KvQuantBackend, Scheme};

use crate::error::{Error, ErrorKind, Result};
use crate::options::SchemeOptions;
use crate::quantize::{Quantized, quantize_timed, relative_error};
use crate::tensor::{KvKind, KvTensor};

/// One line of `vidkv eval`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRow {
    /// File path or builtin label.
    pub file: String,
    /// Tensor name.
    pub tensor: String,
    /// `"k"` or `"v"`.
    pub kind: &'static str,
    /// Preset name.
    pub scheme: &'static str,
    /// Backend that encoded and decoded.
    pub backend: &'static str,
    /// KV heads.
    pub heads: usize,
    /// Tokens per head in the tensor.
    pub tokens: usize,
    /// Head dimension D.
    pub head_dim: usize,
    /// Tokens per block G.
    pub group: usize,
    /// Tokens per head that were quantized.
    pub quantized_tokens: usize,
    /// Tokens per head past the last whole group (kept in 16 bits, not counted below).
    pub remainder_tokens: usize,
    /// Bytes the encoder produced.
    pub encoded_bytes: usize,
    /// `8 · encoded_bytes / quantized elements`: codes, scales, offsets and masks all in.
    pub bits_per_element: f64,
    /// `‖x̂ − x‖ / ‖x‖` over the quantized tokens, against the input as stored in the file.
    pub rel_error: f64,
    /// Quantized elements · 2 bytes (their f16 size) per second of encode calls, in GB/s.
    pub encode_gb_per_s: f64,
    /// The same for decode calls.
    pub decode_gb_per_s: f64,
}

/// Quantizes `tensor` with `scheme` (plus `options`) on `backend` and measures it; throughput is
/// the best of `repeats` runs of each backend call.
///
/// A tensor with fewer tokens than one group is an error: there would be nothing to measure.
pub fn evaluate<B: KvQuantBackend>(
    backend: &B,
    file: &str,
    tensor: &KvTensor<'_>,
    scheme: Scheme,
    options: &SchemeOptions,
    repeats: usize,
) -> Result<EvalRow> {
    let codec = prepare(file, tensor, scheme, options)?;
    if let (Some(fraction), KvKind::Value) = (scheme.salient_fraction(), tensor.kind()) {
        return salient_values(backend, file, tensor, scheme, &codec, fraction)
            .map_err(|e| e.in_tensor(tensor.name()).in_file(file));
    }
    let q = quantize_timed(backend, &codec, tensor, repeats).map_err(|e| e.in_file(file))?;
    let rel_error = tensor_error(tensor, &q).map_err(|e| e.in_file(file))?;
    Ok(EvalRow {
        file: file.to_owned(),
        tensor: tensor.name().to_owned(),
        kind: tensor.kind().label(),
        scheme: scheme.name(),
        backend: backend.name(),
        heads: tensor.heads(),
        tokens: tensor.tokens(),
        head_dim: q.head_dim,
        group: codec.group(),
        quantized_tokens: q.quantized_tokens,
        remainder_tokens: q.remainder_tokens,
        encoded_bytes: q.encoded_bytes(),
        bits_per_element: q.bits_per_element(),
        rel_error,
        encode_gb_per_s: gb_per_s(q.quantized_elements(), q.encode_time.as_secs_f64()),
        decode_gb_per_s: gb_per_s(q.quantized_elements(), q.decode_time.as_secs_f64()),
    })
}

/// Salience stand-in when no embeddings are given: each token's value norm, summed over heads.
pub fn value_norm_scores(tensor: &KvTensor<'_>) -> Result<Vec<f32>> {
    let mut scores = vec![0.0f32; tensor.tokens()];
    let d = tensor.head_dim().get();
    for head in 0..tensor.heads() {
        let rows = tensor.head_f32(head, 0..tensor.tokens(), Arithmetic::F32)?;
        for (s, row) in scores.iter_mut().zip(rows.chunks_exact(d)) {
            *s += row.iter().map(|x| x * x).sum::<f32>().sqrt();
        }
    }
    Ok(scores)
}

/// Values of a salient-token scheme: every whole block quantized through the streaming cache
/// (no residual window, no sinks) with the top `fraction` of tokens by [`value_norm_scores`]
/// salient. Storage counts value blocks, salient groups, salient masks and the pending salient
/// values (f16); encode is the prefill, decode the dequantization.
fn salient_values<B: KvQuantBackend>(
    backend: &B,
    file: &str,
    tensor: &KvTensor<'_>,
    scheme: Scheme,
    codec: &Codec,
    fraction: f32,
) -> Result<EvalRow> {
    let (heads, tokens, d) = (tensor.heads(), tensor.tokens(), tensor.head_dim().get());
    let mut input = Vec::with_capacity(heads * tokens * d);
    for head in 0..heads {
        input.extend(tensor.head_f32(head, 0..tokens, Arithmetic::F32)?);
    }
    let scores = value_norm_scores(tensor)?;
    let config = CacheConfig {
        residual: 0,
        sinks: 0,
        ..CacheConfig::new(*codec, heads, heads)
    };
    let mut cache = KvCache::new(backend, config)?;
    let seq = cache.add_sequence()?;
    let start = Instant::now();
    cache.prefill(
        seq,
        &input,
        &input,
        Salient::Scores {
            scores: &scores,
            fraction,
        },
    )?;
    let encode = start.elapsed();
    let start = Instant::now();
    let (_, values) = cache.dequantize(seq)?;
    let decode = start.elapsed();
    let g = codec.group();
    let quantized_tokens = cache.blocks(seq) * g;
    let remainder_tokens = tokens - quantized_tokens;
    let m = cache.memory();
    let ring = cache.residual_tokens(seq) * 2 * d * 2 * heads;
    let encoded_bytes = m.value_blocks + m.salient_blocks + m.metadata + (m.residual - ring);
    let mut decoded = Vec::with_capacity(heads * quantized_tokens * d);
    let mut original = Vec::with_capacity(heads * quantized_tokens * d);
    for head in 0..heads {
        decoded.extend_from_slice(&values[head * tokens * d..][..quantized_tokens * d]);
        original.extend_from_slice(&input[head * tokens * d..][..quantized_tokens * d]);
    }
    let elements = heads * quantized_tokens * d;
    Ok(EvalRow {
        file: file.to_owned(),
        tensor: tensor.name().to_owned(),
        kind: tensor.kind().label(),
        scheme: scheme.name(),
        backend: backend.name(),
        heads,
        tokens,
        head_dim: d,
        group: g,
        quantized_tokens,
        remainder_tokens,
        encoded_bytes,
        bits_per_element: (encoded_bytes * 8) as f64 / elements.max(1) as f64,
        rel_error: relative_error(&decoded, &original),
        // The prefill encodes keys and values; count both.
        encode_gb_per_s: gb_per_s(2 * elements, encode.as_secs_f64()),
        decode_gb_per_s: gb_per_s(2 * elements, decode.as_secs_f64()),
    })
}

/// The codec [`evaluate`] will use, or the error it would stop with before quantizing anything:
/// lets a caller reject bad input before printing the first row.
pub fn prepare(
    file: &str,
    tensor: &KvTensor<'_>,
    scheme: Scheme,
    options: &SchemeOptions,
) -> Result<Codec> {
    let located = |e: Error| e.in_tensor(tensor.name()).in_file(file);
    let group = options.group.tokens();
    if tensor.tokens() < group {
        let kind = ErrorKind::TooFewTokens {
            tokens: tensor.tokens(),
            group,
        };
        return Err(located(kind.into()));
    }
    options.codec(scheme, tensor.head_dim()).map_err(located)
}

/// Relative error over all heads' quantized tokens, against the exact input values (no f16
/// rounding, so reference arithmetic pays for its rounding too).
fn tensor_error(tensor: &KvTensor<'_>, q: &Quantized) -> Result<f64> {
    let mut original = Vec::with_capacity(q.decoded.len());
    for head in 0..q.heads {
        original.extend(tensor.head_f32(head, 0..q.quantized_tokens, Arithmetic::F32)?);
    }
    Ok(relative_error(&q.decoded, &original))
}

/// Throughput in GB/s of `elements` f16 values.
fn gb_per_s(elements: usize, seconds: f64) -> f64 {
    (elements * 2) as f64 / seconds / 1e9
}
