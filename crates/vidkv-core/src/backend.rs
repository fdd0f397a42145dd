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
    /// Encode value blocks with some tokens excluded (salient tokens, DESIGN §1.3).
    EncodeValuesMasked,
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
            Operation::EncodeValuesMasked => "encode_values_masked",
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

/// f16 rows kept unquantized (attention sinks, the residual window, pending salient values):
/// `capacity` rows of `head_dim` little-endian f16 in `keys` and `values`, of which the `len` rows
/// `start, start + 1, …` (modulo `capacity`) are live. The order of live rows does not matter to
/// attention (softmax is invariant to token order), which lets the cache keep its residual window
/// as a ring.
#[derive(Debug)]
pub struct DenseRows<'a, B> {
    /// Keys, `[capacity, head_dim]` f16.
    pub keys: &'a B,
    /// Values, `[capacity, head_dim]` f16.
    pub values: &'a B,
    /// First live row.
    pub start: usize,
    /// Number of live rows.
    pub len: usize,
    /// Rows the buffers hold.
    pub capacity: usize,
}

impl<B> Clone for DenseRows<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B> Copy for DenseRows<'_, B> {}

/// Salient tokens of one KV head (DESIGN §1.3; layout in `docs/FORMAT.md`, "Salient tokens").
///
/// A salient token's key stays in its key block; in its value block it is *excluded* (ternary
/// code 0, not part of the statistics, see [`KvQuantBackend::encode_values_masked`]) and its value
/// is the `k`-th row of the salient value stream, `k` being its rank among the sequence's salient
/// quantized tokens: row `k % G` of salient group `k / G` while `k < groups·G`, else row
/// `k − groups·G` of `pending` (f16, not yet a whole group). Salient groups are value blocks of
/// the codec [`crate::cache::salient_codec`] (2-bit min/max per channel over G salient tokens).
#[derive(Debug)]
pub struct SalientArgs<'a, B> {
    /// One G-bit mask per quantized block (`G/8` bytes each, LSB first: bit t = token t of the
    /// block is salient), for at least the attended blocks.
    pub masks: &'a B,
    /// Salient value groups.
    pub groups: &'a B,
    /// Number of whole salient groups.
    pub group_count: usize,
    /// f16 values `[G, head_dim]` of the salient tokens past the last whole group.
    pub pending: &'a B,
    /// Live rows of `pending`.
    pub pending_len: usize,
}

/// Inputs of fused decode attention for one KV head of one sequence and the query heads that
/// share it (GQA): `out = softmax(scale · q·Kᵀ) · V` over the quantized blocks, the sinks and the
/// residual window.
///
/// The streaming cache ([`crate::cache::KvCache`]) owns these buffers; the backend only reads
/// them. Everything a kernel needs is either a buffer of the backend or a plain integer, so the
/// arguments map one to one onto a GPU launch:
///
/// * **CUDA.** `Buffer = DeviceBuffer<u8>`: the queries, the block stores, the f16 rows and the
///   output are device allocations and the integers are kernel parameters.
///   [`KvQuantBackend::attend_batch`] receives every (sequence, KV head) job of a decode step, so
///   a CUDA backend uploads one small job table (device pointers and counts) and launches once:
///   one thread block per (job, split of the block range) (flash-decoding), each reading a block's
///   key bytes once for all `query_heads` queries — the per-mask adjoint weights of the queries in
///   shared memory, scores of the block's G tokens for every query, an online softmax — and
///   writing a partial (max, sum, accumulator); a second small kernel combines the splits into
///   `out`. Nothing is dequantized to global memory.
/// * **CPU.** `Buffer = Vec<u8>`; the scalar backend runs the same algorithm per job.
#[derive(Debug)]
pub struct AttentionArgs<'a, B> {
    /// f32 queries, `[query_heads, head_dim]` little-endian.
    pub queries: &'a B,
    /// Query heads sharing this KV head.
    pub query_heads: usize,
    /// Factor applied to `q·k` before the softmax (usually `1/√D`).
    pub scale: f32,
    /// Packed key blocks (at least `blocks` of them).
    pub key_blocks: &'a B,
    /// Packed value blocks (at least `blocks`).
    pub value_blocks: &'a B,
    /// Number of quantized blocks to attend.
    pub blocks: usize,
    /// Salient tokens of the blocks, if the cache has any.
    pub salient: Option<SalientArgs<'a, B>>,
    /// The attention sinks: the first tokens of the sequence, kept in f16.
    pub sinks: Option<DenseRows<'a, B>>,
    /// The residual window: the newest tokens, kept in f16 (a ring).
    pub residual: Option<DenseRows<'a, B>>,
    /// f32 output, `[query_heads, head_dim]` little-endian.
    pub out: &'a mut B,
    /// For a layer whose codec borrows its codes ([`crate::Codec::borrowing`]): the lender
    /// layer's full blocks (same configuration, at least `blocks` of them); `key_blocks` and
    /// `value_blocks` then hold the borrower's parameter-only blocks. `None` otherwise.
    pub lender: Option<LenderBlocks<'a, B>>,
}

/// The lender's blocks for the attention of a borrowing layer (XQuant cross-layer sharing).
#[derive(Debug)]
pub struct LenderBlocks<'a, B> {
    /// The lender's packed key blocks (its own codes).
    pub key_blocks: &'a B,
    /// The lender's packed value blocks.
    pub value_blocks: &'a B,
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

    /// Encodes value blocks like [`Self::encode_values`], except that the tokens flagged in
    /// `excluded` (host memory, `G/8` bytes per block, LSB first: bit t = token t of the block)
    /// take no part in the block's statistics and are written as "no value": ternary code 0,
    /// min/max code 0 for per-channel codes, zero parameters and codes for per-token codes. The
    /// streaming cache stores salient tokens' values elsewhere (DESIGN §1.3). With no bit set the
    /// bytes equal those of [`Self::encode_values`].
    fn encode_values_masked(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Self::Buffer>,
        excluded: &[u8],
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let _ = (codec, input, excluded, out);
        Err(self.unsupported(
            Operation::EncodeValuesMasked,
            "not implemented by this backend",
        ))
    }

    /// Copies `len` bytes from `src[src_offset..]` to `dst[dst_offset..]` (device to device on a
    /// GPU backend). The streaming cache grows its block stores with it.
    ///
    /// The default goes through [`Self::download`] and [`Self::upload`] of this same backend;
    /// backends override it with a direct copy.
    fn copy_bytes(
        &self,
        src: &Self::Buffer,
        src_offset: usize,
        dst: &mut Self::Buffer,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        let from = self.download(src)?;
        let piece = from
            .get(src_offset..src_offset + len)
            .ok_or(Error::ShapeMismatch {
                what: "copy source bytes",
                expected: src_offset + len,
                actual: from.len(),
            })?;
        self.write_bytes(dst, dst_offset, piece)
    }

    /// Writes host `bytes` into `dst` at `offset` (a host-to-device copy on a GPU backend). The
    /// streaming cache writes new residual rows with it.
    ///
    /// The default goes through [`Self::download`] and [`Self::upload`]; backends override it.
    fn write_bytes(&self, dst: &mut Self::Buffer, offset: usize, bytes: &[u8]) -> Result<()> {
        let mut host = self.download(dst)?;
        let actual = host.len();
        host.get_mut(offset..offset + bytes.len())
            .ok_or(Error::ShapeMismatch {
                what: "write destination bytes",
                expected: offset + bytes.len(),
                actual,
            })?
            .copy_from_slice(bytes);
        *dst = self.upload(&host)?;
        Ok(())
    }

    /// Fused decode attention on packed blocks plus f16 rows, for one (sequence, KV head) job:
    /// see [`AttentionArgs`]. Never materialises a dequantized cache.
    ///
    /// The default reports [`Error::Unsupported`]; backends that implement it also answer
    /// [`Capability::Supported`] for [`Operation::Attend`].
    fn attend(&self, codec: &Codec, args: AttentionArgs<'_, Self::Buffer>) -> Result<()> {
        let _ = (codec, args);
        Err(self.unsupported(Operation::Attend, "not implemented by this backend"))
    }

    /// All jobs of one decode step (every sequence and KV head of a layer). The default runs
    /// [`Self::attend`] on each in turn; a GPU backend launches once for the whole batch (see
    /// [`AttentionArgs`]).
    fn attend_batch(
        &self,
        codec: &Codec,
        jobs: Vec<AttentionArgs<'_, Self::Buffer>>,
    ) -> Result<()> {
        jobs.into_iter().try_for_each(|job| self.attend(codec, job))
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

/// A shared reference to a backend is a backend, so that several caches (one per layer) can use
/// one backend that is not `Copy` (a CUDA context): `KvCache<&CudaBackend>`.
impl<T: KvQuantBackend + ?Sized> KvQuantBackend for &T {
    type Buffer = T::Buffer;

    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn capability(&self, op: Operation, codec: &Codec) -> Capability {
        (**self).capability(op, codec)
    }

    fn upload(&self, bytes: &[u8]) -> Result<Self::Buffer> {
        (**self).upload(bytes)
    }

    fn download(&self, buffer: &Self::Buffer) -> Result<Vec<u8>> {
        (**self).download(buffer)
    }

    fn alloc(&self, bytes: usize) -> Result<Self::Buffer> {
        (**self).alloc(bytes)
    }

    fn encode_keys(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Self::Buffer>,
        outliers: Option<&ChannelMask>,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        (**self).encode_keys(codec, input, outliers, out)
    }

    fn decode_keys(
        &self,
        codec: &Codec,
        encoded: &Self::Buffer,
        blocks: usize,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        (**self).decode_keys(codec, encoded, blocks, out)
    }

    fn encode_values(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Self::Buffer>,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        (**self).encode_values(codec, input, out)
    }

    fn decode_values(
        &self,
        codec: &Codec,
        encoded: &Self::Buffer,
        blocks: usize,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        (**self).decode_values(codec, encoded, blocks, out)
    }

    fn encode_values_masked(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Self::Buffer>,
        excluded: &[u8],
        out: &mut Self::Buffer,
    ) -> Result<()> {
        (**self).encode_values_masked(codec, input, excluded, out)
    }

    fn copy_bytes(
        &self,
        src: &Self::Buffer,
        src_offset: usize,
        dst: &mut Self::Buffer,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        (**self).copy_bytes(src, src_offset, dst, dst_offset, len)
    }

    fn write_bytes(&self, dst: &mut Self::Buffer, offset: usize, bytes: &[u8]) -> Result<()> {
        (**self).write_bytes(dst, offset, bytes)
    }

    fn attend(&self, codec: &Codec, args: AttentionArgs<'_, Self::Buffer>) -> Result<()> {
        (**self).attend(codec, args)
    }

    fn attend_batch(
        &self,
        codec: &Codec,
        jobs: Vec<AttentionArgs<'_, Self::Buffer>>,
    ) -> Result<()> {
        (**self).attend_batch(codec, jobs)
    }
}
