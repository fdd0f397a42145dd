//! The facade's error: what went wrong ([`ErrorKind`]) plus where (file and tensor), so that the
//! CLI can print one self-explanatory line such as
//! `data.safetensors: tensor k.3: unsupported dtype I32 (expected F16, BF16 or F32)`.

use std::fmt;

use safetensors::SafeTensorError;

/// Result alias of the facade.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Reading or writing a file failed.
    Io(std::io::Error),
    /// The bytes are not a valid safetensors file.
    NotSafetensors(String),
    /// A K/V tensor's element type is not F16, BF16 or F32.
    UnsupportedDType(String),
    /// A K/V tensor is not `[heads, tokens, head_dim]`.
    WrongRank(Vec<usize>),
    /// A K/V tensor has a zero dimension.
    EmptyTensor(Vec<usize>),
    /// A K/V tensor holds NaN or an infinity, first at this position.
    NonFinite {
        /// Head index.
        head: usize,
        /// Token index.
        token: usize,
        /// Channel index.
        channel: usize,
    },
    /// A K/V tensor has fewer tokens than one quantization group, so there is nothing to measure.
    TooFewTokens {
        /// Tokens in the tensor.
        tokens: usize,
        /// Tokens per group.
        group: usize,
    },
    /// The file holds no tensor named like a key (`k.L`, `k_post.L`) or value (`v.L`).
    NoKvTensors,
    /// A scheme name that is not one of [`vidkv_core::Scheme::ALL`].
    UnknownScheme(String),
    /// A preset with the given overrides is not a valid configuration.
    Config {
        /// The preset's name.
        scheme: &'static str,
        /// Why vidkv-core rejected it.
        error: vidkv_core::Error,
    },
    /// Configuration, quantization or backend failure reported by vidkv-core or a backend.
    Quant(vidkv_core::Error),
}

/// An [`ErrorKind`] with the file and tensor it concerns, when known.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    file: Option<String>,
    tensor: Option<String>,
}

impl Error {
    /// An error without location; add it with [`Error::in_file`] and [`Error::in_tensor`].
    pub fn new(kind: ErrorKind) -> Self {
        Self {
            kind,
            file: None,
            tensor: None,
        }
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// The file (path or builtin label), if known.
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// The tensor name, if known.
    pub fn tensor(&self) -> Option<&str> {
        self.tensor.as_deref()
    }

    /// Sets the file unless an inner layer already did.
    pub fn in_file(mut self, file: &str) -> Self {
        self.file.get_or_insert_with(|| file.to_owned());
        self
    }

    /// Sets the tensor unless an inner layer already did.
    pub fn in_tensor(mut self, tensor: &str) -> Self {
        self.tensor.get_or_insert_with(|| tensor.to_owned());
        self
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

impl From<vidkv_core::Error> for Error {
    fn from(e: vidkv_core::Error) -> Self {
        Self::new(ErrorKind::Quant(e))
    }
}

impl From<SafeTensorError> for Error {
    fn from(e: SafeTensorError) -> Self {
        Self::new(ErrorKind::NotSafetensors(describe_safetensors(&e)))
    }
}

/// The safetensors crate displays its errors as their `Debug` form; say it in words instead.
fn describe_safetensors(e: &SafeTensorError) -> String {
    match e {
        SafeTensorError::HeaderTooSmall => "file is shorter than the 8-byte header length".into(),
        SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength => {
            "header length field is out of range".into()
        }
        SafeTensorError::InvalidHeader | SafeTensorError::InvalidHeaderStart => {
            "header is not a UTF-8 JSON object".into()
        }
        SafeTensorError::InvalidHeaderDeserialization | SafeTensorError::JsonError(_) => {
            "header JSON does not describe tensors".into()
        }
        SafeTensorError::InvalidOffset(name) => format!("tensor {name} has invalid data offsets"),
        SafeTensorError::MetadataIncompleteBuffer => {
            "tensor data does not cover the file exactly".into()
        }
        other => format!("{other}"),
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ErrorKind::Io(e) => write!(f, "{e}"),
            ErrorKind::NotSafetensors(why) => write!(f, "not a safetensors file: {why}"),
            ErrorKind::UnsupportedDType(dtype) => {
                write!(f, "unsupported dtype {dtype} (expected F16, BF16 or F32)")
            }
            ErrorKind::WrongRank(shape) => write!(
                f,
                "wrong rank: shape {shape:?}, expected 3 dimensions [heads, tokens, head_dim]"
            ),
            ErrorKind::EmptyTensor(shape) => write!(f, "empty tensor: shape {shape:?}"),
            ErrorKind::NonFinite {
                head,
                token,
                channel,
            } => write!(
                f,
                "NaN or infinity at head {head}, token {token}, channel {channel}"
            ),
            ErrorKind::TooFewTokens { tokens, group } => write!(
                f,
                "only {tokens} tokens, fewer than one group of {group}: nothing to quantize"
            ),
            ErrorKind::NoKvTensors => write!(
                f,
                "no K/V tensors (expected names k.L, k_post.L or v.L with L a layer number)"
            ),
            ErrorKind::UnknownScheme(name) => {
                let known: Vec<&str> = vidkv_core::Scheme::ALL.iter().map(|s| s.name()).collect();
                write!(
                    f,
                    "unknown scheme {name:?} (expected one of {})",
                    known.join(", ")
                )
            }
            ErrorKind::Config { scheme, error } => write!(f, "scheme {scheme}: {error}"),
            ErrorKind::Quant(e) => write!(f, "{e}"),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        if let Some(tensor) = &self.tensor {
            write!(f, "tensor {tensor}: ")?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Io(e) => Some(e),
            ErrorKind::Quant(e) | ErrorKind::Config { error: e, .. } => Some(e),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_file_then_tensor_once() {
        let e = Error::new(ErrorKind::WrongRank(vec![4, 64]))
            .in_tensor("k.0")
            .in_file("a.safetensors")
            .in_file("outer");
        assert_eq!(
            e.to_string(),
            "a.safetensors: tensor k.0: wrong rank: shape [4, 64], expected 3 dimensions \
             [heads, tokens, head_dim]"
        );
    }
}
