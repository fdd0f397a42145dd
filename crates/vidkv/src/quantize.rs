//! Quantizes one K or V tensor with any [`KvQuantBackend`]: whole blocks of G tokens per head,
//! then decodes them again, timing only the backend's encode and decode calls.
//!
//! Tokens past the last whole group are left alone (a cache keeps them in its 16-bit residual);
//! callers report them separately. Layer-scope outlier channels are chosen here, on the host,
//! because the choice pools over all heads while the backend sees one head per call.

use std::time::{Duration, Instant};

use vidkv_core::{
    ChannelMask, Codec, HeadTensor, KeyScheme, KvQuantBackend, OutlierScope, Result as CoreResult,
};

use crate::error::Result;
use crate::tensor::{KvKind, KvTensor};

/// One tensor, quantized and decoded again.
#[derive(Debug, Clone)]
pub struct Quantized {
    /// Keys or values.
    pub kind: KvKind,
    /// Number of heads.
    pub heads: usize,
    /// Head dimension D.
    pub head_dim: usize,
    /// Blocks of G tokens per head.
    pub blocks_per_head: usize,
    /// Tokens per head that were quantized (`blocks_per_head · G`).
    pub quantized_tokens: usize,
    /// Tokens per head past the last whole group, not quantized.
    pub remainder_tokens: usize,
    /// The outlier channels fixed for every block (layer scope), if any.
    pub outliers: Option<ChannelMask>,
    /// Encoded blocks per head, exactly as the backend produced them.
    pub encoded: Vec<Vec<u8>>,
    /// Decoded values, `[heads, quantized_tokens, head_dim]`; empty for a codec that borrows its
    /// codes (its blocks decode with the lender's, see `vidkv::cross_layer`).
    pub decoded: Vec<f32>,
    /// Time spent in the backend's encode calls (summed over heads). An asynchronous backend
    /// must finish its work inside the call for this to mean anything; none of the encode and
    /// decode entry points of the trait is asynchronous for host buffers.
    pub encode_time: Duration,
    /// Time spent in the backend's decode calls.
    pub decode_time: Duration,
}

impl Quantized {
    /// Elements that were quantized.
    pub fn quantized_elements(&self) -> usize {
        self.heads * self.quantized_tokens * self.head_dim
    }

    /// Bytes the encoder produced, over all heads.
    pub fn encoded_bytes(&self) -> usize {
        self.encoded.iter().map(Vec::len).sum()
    }

    /// All-in storage cost measured on the produced bytes: `8 · bytes / elements`.
    pub fn bits_per_element(&self) -> f64 {
        8.0 * self.encoded_bytes() as f64 / self.quantized_elements() as f64
    }

    /// Decoded rows of one head, `[quantized_tokens, head_dim]`.
    pub fn decoded_head(&self, head: usize) -> &[f32] {
        let n = self.quantized_tokens * self.head_dim;
        &self.decoded[head * n..(head + 1) * n]
    }
}

/// Quantizes and decodes `tensor` with `codec` on `backend`, once. Errors name the tensor.
pub fn quantize<B: KvQuantBackend>(
    backend: &B,
    codec: &Codec,
    tensor: &KvTensor<'_>,
) -> Result<Quantized> {
    quantize_timed(backend, codec, tensor, 1)
}

/// As [`quantize`], but runs every encode and decode call `repeats` times (at least once) and
/// keeps the fastest, so that reported throughput is not a cold-cache or scheduling accident.
/// Encoding is deterministic, so the output is the same as with one run.
pub fn quantize_timed<B: KvQuantBackend>(
    backend: &B,
    codec: &Codec,
    tensor: &KvTensor<'_>,
    repeats: usize,
) -> Result<Quantized> {
    run(backend, codec, tensor, repeats.max(1)).map_err(|e| e.in_tensor(tensor.name()))
}

fn run<B: KvQuantBackend>(
    backend: &B,
    codec: &Codec,
    tensor: &KvTensor<'_>,
    repeats: usize,
) -> Result<Quantized> {
    if codec.head_dim() != tensor.head_dim().get() {
        return Err(vidkv_core::Error::ShapeMismatch {
            what: "head_dim of codec and tensor",
            expected: tensor.head_dim().get(),
            actual: codec.head_dim(),
        }
        .into());
    }
    let g = codec.group();
    let blocks = tensor.tokens() / g;
    let mut q = Quantized {
        kind: tensor.kind(),
        heads: tensor.heads(),
        head_dim: codec.head_dim(),
        blocks_per_head: blocks,
        quantized_tokens: blocks * g,
        remainder_tokens: tensor.tokens() % g,
        outliers: layer_mask(codec, tensor, blocks * g)?,
        encoded: Vec::with_capacity(tensor.heads()),
        decoded: Vec::with_capacity(tensor.heads() * blocks * codec.block_elements()),
        encode_time: Duration::ZERO,
        decode_time: Duration::ZERO,
    };
    if blocks > 0 {
        for head in 0..tensor.heads() {
            quantize_head(backend, codec, tensor, head, repeats, &mut q)?;
        }
    }
    Ok(q)
}

/// The layer-scope outlier mask (pooled over all heads and quantized tokens) when the
/// configuration asks for one; `None` lets the encoder choose per block.
fn layer_mask(codec: &Codec, tensor: &KvTensor<'_>, tokens: usize) -> Result<Option<ChannelMask>> {
    let KeyScheme::Mixed(mixed) = codec.config().keys else {
        return Ok(None);
    };
    if tensor.kind() != KvKind::Key || mixed.scope != OutlierScope::Layer || tokens == 0 {
        return Ok(None);
    }
    let arithmetic = codec.config().arithmetic;
    let rows = (0..tensor.heads())
        .map(|h| tensor.head_f32(h, 0..tokens, arithmetic))
        .collect::<Result<Vec<_>>>()?;
    let slices: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
    Ok(Some(vidkv_cpu::layer_outliers(codec, &slices)?))
}

/// Encodes and decodes one head's whole blocks, appending to `q`.
fn quantize_head<B: KvQuantBackend>(
    backend: &B,
    codec: &Codec,
    tensor: &KvTensor<'_>,
    head: usize,
    repeats: usize,
    q: &mut Quantized,
) -> Result<()> {
    let blocks = q.blocks_per_head;
    let block_bytes = match q.kind {
        KvKind::Key => codec.key_block_bytes(),
        KvKind::Value => codec.value_block_bytes(),
    };
    let input = backend.upload(tensor.head_bytes(head, 0..q.quantized_tokens))?;
    // Built per call: `HeadTensor` is `Copy` only for `Copy` buffers.
    let (dtype, tokens) = (tensor.dtype(), q.quantized_tokens);
    let input = || HeadTensor {
        data: &input,
        dtype,
        tokens,
    };
    let mut encoded = backend.alloc(blocks * block_bytes)?;
    let mut decoded = backend.alloc(blocks * codec.block_elements() * 4)?;
    let (kind, mask) = (q.kind, q.outliers);
    q.encode_time += fastest(repeats, || match kind {
        KvKind::Key => backend.encode_keys(codec, input(), mask.as_ref(), &mut encoded),
        KvKind::Value => backend.encode_values(codec, input(), &mut encoded),
    })?;
    q.encoded.push(backend.download(&encoded)?);
    if codec.is_borrowing() {
        // Parameter-only blocks decode with their lender's codes: nothing to decode alone.
        return Ok(());
    }
    q.decode_time += fastest(repeats, || match kind {
        KvKind::Key => backend.decode_keys(codec, &encoded, blocks, &mut decoded),
        KvKind::Value => backend.decode_values(codec, &encoded, blocks, &mut decoded),
    })?;
    let rows = f32_from_le(
        &backend.download(&decoded)?,
        blocks * codec.block_elements(),
    )?;
    q.decoded.extend_from_slice(&rows);
    Ok(())
}

/// Runs `call` `repeats` times; the shortest duration.
fn fastest(repeats: usize, mut call: impl FnMut() -> CoreResult<()>) -> CoreResult<Duration> {
    let mut best = Duration::MAX;
    for _ in 0..repeats {
        let start = Instant::now();
        call()?;
        best = best.min(start.elapsed());
    }
    Ok(best)
}

/// Reads `count` little-endian f32 values, checking that the backend wrote exactly that many.
fn f32_from_le(bytes: &[u8], count: usize) -> CoreResult<Vec<f32>> {
    if bytes.len() != count * 4 {
        return Err(vidkv_core::Error::ShapeMismatch {
            what: "decoded bytes",
            expected: count * 4,
            actual: bytes.len(),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// `‖x̂ − x‖ / ‖x‖` with f64 sums; 0 when both are zero.
pub fn relative_error(decoded: &[f32], original: &[f32]) -> f64 {
    let (mut diff, mut norm) = (0.0f64, 0.0f64);
    for (&d, &o) in decoded.iter().zip(original) {
        let e = f64::from(d) - f64::from(o);
        diff += e * e;
        norm += f64::from(o) * f64::from(o);
    }
    if diff == 0.0 {
        0.0
    } else {
        (diff / norm).sqrt()
    }
}
