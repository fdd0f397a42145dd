//! Conversion between candle tensors and the f32 head rows vidkv caches take.
//!
//! vidkv's layout of one layer is `[kv_heads, tokens, head_dim]`, row-major; candle models keep
//! attention tensors as `[batch, heads, seq, head_dim]`. Batch must be 1 (one cache per
//! sequence). Any float dtype and any device is accepted: the rows come to the host as f32
//! (a device → host copy on CUDA), and results go back to the caller's device and dtype.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Rows `[heads, seq, head_dim]` of `t` (`[1, heads, seq, D]` or `[heads, seq, D]`) as host f32,
/// with `seq`.
pub fn heads_from_tensor(t: &Tensor, heads: usize, head_dim: usize) -> Result<(Vec<f32>, usize)> {
    let (h, seq, d) = match *t.dims() {
        [1, h, s, d] => (h, s, d),
        [h, s, d] => (h, s, d),
        _ => {
            return Err(Error::Shape(format!(
                "expected [1, {heads}, seq, {head_dim}] or [{heads}, seq, {head_dim}], got {:?}",
                t.dims()
            )));
        }
    };
    if h != heads || d != head_dim {
        return Err(Error::Shape(format!(
            "expected {heads} heads of dimension {head_dim}, got {h} of {d}"
        )));
    }
    if !t.dtype().is_float() {
        return Err(Error::Shape(format!(
            "expected a float tensor, got {:?}",
            t.dtype()
        )));
    }
    let rows = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Ok((rows, seq))
}

/// A `[1, heads, seq, head_dim]` tensor from host f32 rows, on `like`'s device and dtype.
pub fn tensor_from_heads(
    rows: Vec<f32>,
    heads: usize,
    seq: usize,
    head_dim: usize,
    like: &Tensor,
) -> Result<Tensor> {
    if rows.len() != heads * seq * head_dim {
        return Err(Error::Shape(format!(
            "{} elements for [1, {heads}, {seq}, {head_dim}]",
            rows.len()
        )));
    }
    Ok(
        Tensor::from_vec(rows, (1, heads, seq, head_dim), &Device::Cpu)?
            .to_dtype(like.dtype())?
            .to_device(like.device())?,
    )
}
