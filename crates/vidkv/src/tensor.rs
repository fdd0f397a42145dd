//! K/V tensors read from safetensors files: `[heads, tokens, head_dim]`, F16/BF16/F32.
//!
//! Tensors borrow the file's bytes; nothing is converted until a caller asks, because the
//! backend takes raw elements and converts them with the arithmetic of the configuration.

use std::borrow::Cow;
use std::ops::Range;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use vidkv_core::{Arithmetic, DType, HeadDim};

use crate::error::{Error, ErrorKind, Result};

/// Whether a tensor holds keys or values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KvKind {
    /// Keys (`k.L`, `k_post.L`).
    Key,
    /// Values (`v.L`).
    Value,
}

impl KvKind {
    /// `"k"` or `"v"`, as reports print it.
    pub fn label(self) -> &'static str {
        match self {
            KvKind::Key => "k",
            KvKind::Value => "v",
        }
    }

    /// Classifies a tensor name: `k.L` and `k_post.L` are keys (post-RoPE, what a cache holds),
    /// `v.L` are values, L a layer number. Other tensors (`k_pre.L`, `q_post.L`, `token_ids`) are
    /// not cache contents.
    pub fn of_name(name: &str) -> Option<(Self, u32)> {
        let (prefix, layer) = name.split_once('.')?;
        let kind = match prefix {
            "k" | "k_post" => KvKind::Key,
            "v" => KvKind::Value,
            _ => return None,
        };
        let digits = !layer.is_empty() && layer.bytes().all(|b| b.is_ascii_digit());
        digits
            .then(|| layer.parse().ok())
            .flatten()
            .map(|l| (kind, l))
    }
}

/// A validated K/V tensor `[heads, tokens, head_dim]` borrowing the file's bytes.
#[derive(Debug, Clone)]
pub struct KvTensor<'a> {
    name: String,
    kind: KvKind,
    heads: usize,
    tokens: usize,
    head_dim: HeadDim,
    dtype: DType,
    data: &'a [u8],
}

impl<'a> KvTensor<'a> {
    /// Validates dtype, rank, non-emptiness and head_dim. Errors carry the tensor name.
    pub fn new(
        name: &str,
        kind: KvKind,
        dtype: Dtype,
        shape: &[usize],
        data: &'a [u8],
    ) -> Result<Self> {
        Self::checked(kind, dtype, shape, data)
            .map(|t| Self {
                name: name.to_owned(),
                ..t
            })
            .map_err(|e| e.in_tensor(name))
    }

    fn checked(kind: KvKind, dtype: Dtype, shape: &[usize], data: &'a [u8]) -> Result<Self> {
        let dtype = match dtype {
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F32 => DType::F32,
            other => return Err(ErrorKind::UnsupportedDType(format!("{other:?}")).into()),
        };
        let &[heads, tokens, head_dim] = shape else {
            return Err(ErrorKind::WrongRank(shape.to_vec()).into());
        };
        if shape.contains(&0) {
            return Err(ErrorKind::EmptyTensor(shape.to_vec()).into());
        }
        let head_dim = HeadDim::new(head_dim)?;
        // safetensors already checks offsets against shape·dtype; keep the invariant local.
        let expected = heads * tokens * head_dim.get() * dtype.size();
        if data.len() != expected {
            return Err(vidkv_core::Error::ShapeMismatch {
                what: "tensor bytes",
                expected,
                actual: data.len(),
            }
            .into());
        }
        // Reject NaN/inf anywhere, including tokens that will stay unquantized.
        vidkv_cpu::to_f32(dtype, data, Arithmetic::F32).map_err(|e| match e {
            vidkv_core::Error::NonFinite { index } => ErrorKind::NonFinite {
                head: index / (tokens * head_dim.get()),
                token: index / head_dim.get() % tokens,
                channel: index % head_dim.get(),
            }
            .into(),
            other => Error::from(other),
        })?;
        Ok(Self {
            name: String::new(),
            kind,
            heads,
            tokens,
            head_dim,
            dtype,
            data,
        })
    }

    /// Tensor name in the file.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Keys or values.
    pub fn kind(&self) -> KvKind {
        self.kind
    }

    /// Number of KV heads.
    pub fn heads(&self) -> usize {
        self.heads
    }

    /// Tokens per head.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Head dimension D.
    pub fn head_dim(&self) -> HeadDim {
        self.head_dim
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// All raw little-endian bytes, head-major.
    pub fn bytes(&self) -> &'a [u8] {
        self.data
    }

    /// Raw bytes of head `head`, tokens `tokens` (row-major `[tokens, head_dim]`).
    pub fn head_bytes(&self, head: usize, tokens: Range<usize>) -> &'a [u8] {
        let row = self.head_dim.get() * self.dtype.size();
        let start = (head * self.tokens + tokens.start) * row;
        &self.data[start..start + tokens.len() * row]
    }

    /// f32 rows of head `head`, tokens `tokens`, converted with `arithmetic` (reference
    /// arithmetic rounds to the f16 grid, as the encoder will). Rejects NaN/inf.
    pub fn head_f32(
        &self,
        head: usize,
        tokens: Range<usize>,
        arithmetic: Arithmetic,
    ) -> Result<Vec<f32>> {
        let bytes = self.head_bytes(head, tokens);
        vidkv_cpu::to_f32(self.dtype, bytes, arithmetic)
            .map_err(|e| Error::from(e).in_tensor(&self.name))
    }
}

/// A safetensors file held in memory (read from disk or compiled in), with a label for messages.
#[derive(Debug, Clone)]
pub struct TensorFile {
    label: String,
    bytes: Cow<'static, [u8]>,
}

impl TensorFile {
    /// Reads `path`; the label is the path as given.
    pub fn read(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let bytes =
            std::fs::read(path).map_err(|e| Error::new(ErrorKind::Io(e)).in_file(&label))?;
        Ok(Self {
            label,
            bytes: Cow::Owned(bytes),
        })
    }

    /// A file compiled into the program.
    pub fn from_static(label: &str, bytes: &'static [u8]) -> Self {
        Self {
            label: label.to_owned(),
            bytes: Cow::Borrowed(bytes),
        }
    }

    /// The label used in reports and messages.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Parses the safetensors header.
    pub fn parse(&self) -> Result<SafeTensors<'_>> {
        SafeTensors::deserialize(&self.bytes).map_err(|e| Error::from(e).in_file(&self.label))
    }

    /// The metadata map (`__metadata__`) of the file, if any.
    pub fn metadata(&self) -> Result<Option<std::collections::HashMap<String, String>>> {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes)
            .map_err(|e| Error::from(e).in_file(&self.label))?;
        Ok(meta.metadata().clone())
    }

    /// Every K/V tensor, validated, ordered by layer then keys before values. Errors name the file.
    pub fn kv_tensors(&self) -> Result<Vec<KvTensor<'_>>> {
        let st = self.parse()?;
        let mut found: Vec<((u32, KvKind, String), KvTensor<'_>)> = Vec::new();
        for (name, view) in st.iter() {
            let Some((kind, layer)) = KvKind::of_name(name) else {
                continue;
            };
            let t = KvTensor::new(name, kind, view.dtype(), view.shape(), view.data())
                .map_err(|e| e.in_file(&self.label))?;
            found.push(((layer, kind, name.to_owned()), t));
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.into_iter().map(|(_, t)| t).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_classify_as_the_cache_sees_them() {
        assert_eq!(KvKind::of_name("k.3"), Some((KvKind::Key, 3)));
        assert_eq!(KvKind::of_name("k_post.15"), Some((KvKind::Key, 15)));
        assert_eq!(KvKind::of_name("v.0"), Some((KvKind::Value, 0)));
        for other in [
            "k_pre.1",
            "q_post.1",
            "token_ids",
            "k.",
            "v.x",
            "k.1.2",
            "kk.1",
        ] {
            assert_eq!(KvKind::of_name(other), None, "{other}");
        }
    }

    #[test]
    fn rejects_bad_shapes_and_dtypes_with_the_tensor_name() {
        let data = [0u8; 64 * 2 * 2];
        let bad = [
            (Dtype::I32, vec![1, 1, 64], "dtype"),
            (Dtype::F16, vec![2, 64], "rank"),
            (Dtype::F16, vec![0, 2, 64], "empty"),
            (Dtype::F16, vec![1, 2, 65], "head_dim"),
        ];
        for (dtype, shape, word) in bad {
            let e = KvTensor::new("k.0", KvKind::Key, dtype, &shape, &data).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with("tensor k.0: ") && msg.contains(word),
                "{msg}"
            );
        }
        let t = KvTensor::new("v.1", KvKind::Value, Dtype::F16, &[1, 2, 64], &data).unwrap();
        assert_eq!((t.heads(), t.tokens(), t.head_dim().get()), (1, 2, 64));
    }
}
