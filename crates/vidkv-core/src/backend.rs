//! The backend trait: what the scalar, SIMD and CUDA backends implement.
//!
//! Buffers are an associated type so that a GPU backend keeps blocks where attention reads them
//! (in the spirit of `wgpu-hal`): the CPU backend's buffer is a `Vec<u8>`; the CUDA backend's is a
//! device allocation (`cust::memory::DeviceBuffer<u8>`), its operations are enqueued on the
//! backend's stream, and only [`KvQuantBackend::download`] synchronizes. Whole runs of blocks are
//! encoded or decoded per call (one head's `tokens / G` blocks), which is what a GPU needs to fill
//! the machine: a CUDA launch maps one thread block to one (head, block) pair.
//!
//! A backend answers [`KvQuantBackend::capability`] truthfully: an operation it lacks reports
//! [`Capability::Unsupported`] and the call returns [`Error::Unsupported`]; nothing falls back
//! silently to another backend. Callers that want a fallback choose it explicitly.

use alloc::vec::Vec;

use crate::error::{Error, Result};
use crate::layout::{ChannelMask, Codec};

/// Element type of an input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }
}

/// Operations a backend may or may not provide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Encode key blocks.
    EncodeKeys,
    /// Decode key blocks.
    DecodeKeys,
    /// Encode value blocks.
    EncodeValues,
    /// Decode value blocks.
    DecodeValues,
    /// Fused decode attention on packed blocks.
    Attend,
}

impl Operation {
    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Operation::EncodeKeys => "encode_keys",
            Operation::DecodeKeys => "decode_keys",
            Operation::EncodeValues => "encode_values",
            Operation::DecodeValues => "decode_values",
            Operation::Attend => "attend",
        }
    }
}

/// Answer of [`KvQuantBackend::capability`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// The backend runs the operation itself.
    Supported,
    /// The backend does not run it; the reason says why.
    Unsupported(&'static str),
}

/// One head's tokens, row-major `[tokens, head_dim]`, in a backend buffer.
#[derive(Debug, Clone, Copy)]
pub struct HeadTensor<'a, B> {
    /// The elements.
    pub data: &'a B,
    /// Their type.
    pub dtype: DType,
    /// Number of tokens (rows). Encoders take a multiple of G.
    pub tokens: usize,
}

/// Inputs of fused decode attention for one KV head and the query heads that share it (GQA).
///
/// The streaming cache (a later layer) owns these buffers; the backend only reads them.
#[derive(Debug)]
pub struct AttentionArgs<'a, B> {
    /// f32 queries, `[query_heads, head_dim]`.
    pub queries: &'a B,
    /// Query heads sharing this KV head.
    pub query_heads: usize,
    /// Packed key blocks.
    pub key_blocks: &'a B,
    /// Packed value blocks.
    pub value_blocks: &'a B,
    /// Number of blocks in each.
    pub blocks: usize,
    /// f16 keys of the unquantized tokens, `[residual_tokens, head_dim]`.
    pub residual_keys: &'a B,
    /// f16 values of the unquantized tokens.
    pub residual_values: &'a B,
    /// Number of unquantized tokens.
    pub residual_tokens: usize,
    /// f32 output, `[query_heads, head_dim]`.
    pub out: &'a mut B,
}

/// A KV-cache quantization backend. See the module docs for the buffer model.
pub trait KvQuantBackend {
    /// Storage in the backend's memory.
    type Buffer;

    /// Short name for reports ("scalar", "avx2", "cuda", …).
    fn name(&self) -> &'static str;

    /// Whether [`Self`] runs `op` for `codec` itself.
    fn capability(&self, op: Operation, codec: &Codec) -> Capability;

    /// Copies host bytes into a new buffer.
    fn upload(&self, bytes: &[u8]) -> Result<Self::Buffer>;

    /// Copies a buffer back to the host (synchronizing with pending work).
    fn download(&self, buffer: &Self::Buffer) -> Result<Vec<u8>>;

    /// A zeroed buffer of `bytes` bytes.
    fn alloc(&self, bytes: usize) -> Result<Self::Buffer>;

    /// Encodes `input.tokens / G` key blocks of one head into `out`
    /// (`blocks · codec.key_block_bytes()` bytes).
    ///
    /// `outliers` fixes the outlier channels of mixed-precision keys (layer scope or a calibrated
    /// set); `None` selects them per block, which is only valid for block scope.
    fn encode_keys(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Self::Buffer>,
        outliers: Option<&ChannelMask>,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    /// Decodes `blocks` key blocks into f32 `[blocks · G, head_dim]` (little-endian bytes).
    fn decode_keys(
        &self,
        codec: &Codec,
        encoded: &Self::Buffer,
        blocks: usize,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    /// Encodes `input.tokens / G` value blocks of one head into `out`.
    fn encode_values(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Self::Buffer>,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    /// Decodes `blocks` value blocks into f32 `[blocks · G, head_dim]`.
    fn decode_values(
        &self,
        codec: &Codec,
        encoded: &Self::Buffer,
        blocks: usize,
        out: &mut Self::Buffer,
    ) -> Result<()>;

    /// Fused decode attention on packed blocks plus the f16 residual.
    ///
    /// The default reports [`Error::Unsupported`]; backends that implement it also answer
    /// [`Capability::Supported`] for [`Operation::Attend`].
    fn attend(&self, codec: &Codec, args: AttentionArgs<'_, Self::Buffer>) -> Result<()> {
        let _ = (codec, args);
        Err(self.unsupported(Operation::Attend, "not implemented by this backend"))
    }

    /// The error for an operation this backend does not run.
    fn unsupported(&self, op: Operation, reason: &'static str) -> Error {
        Error::Unsupported {
            backend: self.name(),
            operation: op.name(),
            reason,
        }
    }
}
