//! Quantize-then-dequantize a whole safetensors file, so that a model can be run on the decoded
//! cache to measure the end-to-end effect of a scheme.
//!
//! Every K/V tensor is written as F16 under its own name and shape: quantized tokens decoded,
//! tokens past the last whole group copied (bit-exact for F16 input, rounded to F16 otherwise).
//! All other tensors keep their dtype and bytes; the file's metadata is kept and gains a
//! `vidkv.roundtrip` entry saying how the K/V tensors were produced.

use std::borrow::Cow;
use std::collections::HashMap;

use half::f16;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use vidkv_core::{Arithmetic, DType, KvQuantBackend, Scheme};

use crate::error::{Error, Result};
use crate::options::SchemeOptions;
use crate::quantize::quantize;
use crate::tensor::{KvKind, KvTensor, TensorFile};

/// A serialized output file and what went into it.
#[derive(Debug, Clone)]
pub struct Roundtrip {
    /// The safetensors bytes.
    pub bytes: Vec<u8>,
    /// Names of the K/V tensors that were quantized, in file order.
    pub quantized: Vec<String>,
    /// Number of tensors copied unchanged.
    pub copied: usize,
}

struct Entry<'a> {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Cow<'a, [u8]>,
}

/// Quantizes and dequantizes every K/V tensor of `file`. Errors name the file and tensor.
pub fn roundtrip<B: KvQuantBackend>(
    backend: &B,
    file: &TensorFile,
    scheme: Scheme,
    options: &SchemeOptions,
) -> Result<Roundtrip> {
    let st = file.parse()?;
    let mut entries = Vec::with_capacity(st.len());
    let mut quantized = Vec::new();
    for (name, view) in st.iter() {
        let (dtype, data) = match KvKind::of_name(name) {
            Some((kind, _)) => {
                let t = KvTensor::new(name, kind, view.dtype(), view.shape(), view.data())
                    .and_then(|t| dequantized(backend, &t, scheme, options))
                    .map_err(|e| e.in_file(file.label()))?;
                quantized.push(name.to_owned());
                (Dtype::F16, Cow::Owned(t))
            }
            None => (view.dtype(), Cow::Borrowed(view.data())),
        };
        entries.push(Entry {
            name: name.to_owned(),
            dtype,
            shape: view.shape().to_vec(),
            data,
        });
    }
    let copied = entries.len() - quantized.len();
    let bytes = serialize(&entries, metadata(file, scheme, options)?)
        .map_err(|e| e.in_file(file.label()))?;
    Ok(Roundtrip {
        bytes,
        quantized,
        copied,
    })
}

/// The tensor as F16 bytes: decoded whole groups, then the copied tail, per head.
fn dequantized<B: KvQuantBackend>(
    backend: &B,
    tensor: &KvTensor<'_>,
    scheme: Scheme,
    options: &SchemeOptions,
) -> Result<Vec<u8>> {
    let codec = options.codec(scheme, tensor.head_dim())?;
    let q = quantize(backend, &codec, tensor)?;
    let mut out =
        Vec::with_capacity(tensor.heads() * tensor.tokens() * tensor.head_dim().get() * 2);
    for head in 0..tensor.heads() {
        out.extend(q.decoded_head(head).iter().flat_map(|&x| to_f16_bytes(x)));
        let tail = q.quantized_tokens..tensor.tokens();
        if tensor.dtype() == DType::F16 {
            out.extend_from_slice(tensor.head_bytes(head, tail));
        } else {
            let rows = tensor.head_f32(head, tail, Arithmetic::F32)?;
            out.extend(rows.iter().flat_map(|&x| to_f16_bytes(x)));
        }
    }
    Ok(out)
}

/// f16 little-endian bytes, saturating: a decoded value may overshoot the input's range slightly
/// (inverse FFT of sign bits), and an infinity in the output would poison a model run.
fn to_f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x.clamp(-65504.0, 65504.0)).to_le_bytes()
}

/// The input's metadata plus a note of the scheme used.
fn metadata(
    file: &TensorFile,
    scheme: Scheme,
    options: &SchemeOptions,
) -> Result<Option<HashMap<String, String>>> {
    let mut meta = file.metadata()?.unwrap_or_default();
    let note = format!(
        "K/V tensors quantized and dequantized by vidkv {} with scheme {} and {options:?}",
        env!("CARGO_PKG_VERSION"),
        scheme.name(),
    );
    meta.insert("vidkv.roundtrip".to_owned(), note);
    Ok(Some(meta))
}

fn serialize(entries: &[Entry<'_>], meta: Option<HashMap<String, String>>) -> Result<Vec<u8>> {
    let views = entries
        .iter()
        .map(|e| {
            let view = TensorView::new(e.dtype, e.shape.clone(), &e.data)
                .map_err(|err| Error::from(err).in_tensor(&e.name))?;
            Ok((e.name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, &meta)?)
}
