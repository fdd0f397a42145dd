//! The entry point for runtimes that own their CUDA context, memory and streams.
//!
//! A runtime (candle, mistral.rs, a C++ engine through a C ABI) keeps its KV cache in its own
//! device allocations and decodes on its own streams. [`RawAttention`] loads the kernels into the
//! runtime's **current** context and launches on the runtime's stream; the cache is described by
//! raw device addresses in [`AttnJob`]s:
//!
//! * `queries`, `out`: f32 `[query_heads, head_dim]` (4-byte aligned), `query_heads` ≤ 8 (split a
//!   larger GQA group into several jobs with offset `queries`/`out`);
//! * `key_blocks`, `value_blocks`: `blocks` consecutive packed blocks each (`docs/FORMAT.md`);
//!   16-byte aligned for the tensor-core kernel (otherwise the generic kernel runs);
//! * `dense`: the f16 sinks and residual window as rings (`[cap, head_dim]`, live rows
//!   `start, start + 1, …` modulo `cap`), or zeroed entries;
//! * `sal_*`: salient masks, groups and pending rows as in `vidkv_core::backend::SalientArgs`, or
//!   zero;
//! * `scale`: the softmax scale (usually `1/√D`).
//!
//! The launch is asynchronous; the workspace it uses belongs to the [`RawAttention`] and is
//! reused by the next call, so one `RawAttention` serves one stream at a time.

use cust::sys as cu;
use vidkv_core::{ChannelMask, Codec, DType, Result};

use crate::kernels::{CudaKernels, check};
use crate::params::{AttnJob, ERR_SLOTS};
use crate::plan::{self, EncodeAddrs};
use crate::runner::{AttentionRunner, addr};

/// Fused decode attention (and prefill encoding) on memory the caller owns.
#[derive(Debug)]
pub struct RawAttention {
    runner: AttentionRunner,
    kernels: CudaKernels,
}

impl RawAttention {
    /// Loads the kernels into the calling thread's current CUDA context. That context must stay
    /// alive, and be current, whenever this object is used or dropped.
    pub fn new() -> Result<Self> {
        let mut device: cu::CUdevice = 0;
        // SAFETY: `device` is a valid out-pointer; fails cleanly without a current context.
        check("cuCtxGetDevice (is a context current?)", unsafe {
            cu::cuCtxGetDevice(&mut device)
        })?;
        Ok(Self {
            kernels: CudaKernels::load(device)?,
            runner: AttentionRunner::new(),
        })
    }

    /// The loaded kernels (for [`CudaKernels::sm_count`] and friends).
    pub fn kernels(&self) -> &CudaKernels {
        &self.kernels
    }

    /// Enqueues fused attention for every job on `stream` (one launch; the splits are merged by
    /// the last CTA of each job).
    ///
    /// # Safety
    ///
    /// * The context current on this thread is the one [`Self::new`] ran in, and `stream` is a
    ///   stream of it (or null for the legacy default stream).
    /// * Every address in `jobs` points to device memory of that context of at least the size the
    ///   job describes (see the module docs), readable (inputs) or writable (`out`), and stays so
    ///   until the launch has finished on `stream`; `out` ranges do not overlap any input.
    /// * No other call on this `RawAttention` runs concurrently, and a previous call enqueued on a
    ///   *different* stream has finished (the workspace is shared).
    pub unsafe fn attend(
        &mut self,
        codec: &Codec,
        jobs: &[AttnJob],
        stream: cu::CUstream,
    ) -> Result<()> {
        if jobs.is_empty() {
            return Ok(());
        }
        // SAFETY: forwarded contract (addresses, context and stream).
        unsafe {
            let prepared = self
                .runner
                .prepare(&self.kernels, codec, jobs, true, None, stream)?;
            self.runner.launch(&self.kernels, &prepared, stream)
        }
    }

    /// Encodes `tokens` rows (a multiple of G; several heads may be concatenated) of keys
    /// (`keys = true`) or values into blocks at `out`, on `stream`, and waits for it (to report
    /// bad input: NaN, infinities and magnitudes beyond f16 are errors, as in every backend).
    ///
    /// # Safety
    ///
    /// * As for [`Self::attend`] (context, stream, exclusive use).
    /// * `input` points to `tokens · head_dim` elements of `dtype`, `out` to
    ///   `tokens / G` blocks of the codec, both device memory of the current context.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn encode(
        &mut self,
        codec: &Codec,
        keys: bool,
        dtype: DType,
        tokens: usize,
        input: u64,
        out: u64,
        outliers: Option<&ChannelMask>,
        stream: cu::CUstream,
    ) -> Result<()> {
        let d = codec.head_dim();
        let block_bytes = if keys {
            codec.key_block_bytes()
        } else {
            codec.value_block_bytes()
        };
        let blocks = plan::check_encode(
            codec,
            keys,
            dtype,
            tokens,
            tokens * d * dtype.size(),
            tokens / codec.group() * block_bytes,
            outliers,
        )?;
        if blocks == 0 {
            return Ok(());
        }
        let alloc = |bytes: &[u8]| {
            cust::memory::DeviceBuffer::from_slice(bytes)
                .map_err(|e| crate::kernels::cuda_error("cuMemAlloc", e))
        };
        let slots = cust::memory::DeviceBuffer::from_slice(&[u64::MAX; ERR_SLOTS])
            .map_err(|e| crate::kernels::cuda_error("cuMemAlloc", e))?;
        let tw = alloc(bytemuck::cast_slice::<f32, u8>(&plan::twiddles(
            plan::lanes(codec),
        )))?;
        let mask = match outliers {
            Some(m) if keys => Some(alloc(bytemuck::cast_slice::<u32, u8>(&m.words))?),
            _ => None,
        };
        let launch = plan::encode_launch(
            codec,
            keys,
            dtype,
            blocks,
            EncodeAddrs {
                input,
                out,
                fixed_mask: mask.as_ref().map_or(0, addr),
                excluded: 0,
                twiddles: addr(&tw),
                errors: addr(&slots),
            },
        );
        // SAFETY: forwarded contract for `input`/`out`; the tables are live until the sync below.
        unsafe { self.kernels.launch(&launch, stream)? };
        // SAFETY: `stream` belongs to the current context (contract).
        check("cuStreamSynchronize", unsafe {
            cu::cuStreamSynchronize(stream)
        })?;
        let mut host = [0u64; ERR_SLOTS];
        cust::memory::CopyDestination::copy_to(&*slots, &mut host[..])
            .map_err(|e| crate::kernels::cuda_error("cuMemcpyDtoH", e))?;
        plan::slot_error(&host)
    }
}
