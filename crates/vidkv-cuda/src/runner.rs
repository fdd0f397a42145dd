//! Fused attention launches: job tables, workspace and per-codec tables in device memory.

use std::ffi::c_void;

use cust::memory::{DeviceBuffer, DeviceCopy};
use cust::sys as cu;
use vidkv_core::{Codec, Error, Result};

use crate::kernels::{CudaKernels, check, cuda_error};
use crate::params::{AttnJob, MAX_QUERY_HEADS};
use crate::plan::{self, JobShape, Kernel};

/// Device address of a buffer (0 for an empty one).
pub(crate) fn addr<T: DeviceCopy>(b: &DeviceBuffer<T>) -> u64 {
    if b.is_empty() {
        0
    } else {
        b.as_device_ptr().as_raw()
    }
}

/// Copies host bytes to device address `dst` on `stream` (pageable source: the call returns once
/// the bytes are staged, so `bytes` may be reused right away).
///
/// # Safety
///
/// `dst` must point to at least `bytes.len()` bytes of device memory of the current context.
pub(crate) unsafe fn h2d_async(dst: u64, bytes: &[u8], stream: cu::CUstream) -> Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    // SAFETY: the caller guarantees `dst`; `bytes` is a live host slice of the given length.
    check("cuMemcpyHtoDAsync", unsafe {
        cu::cuMemcpyHtoDAsync_v2(dst, bytes.as_ptr() as *const c_void, bytes.len(), stream)
    })
}

fn grow(buf: &mut DeviceBuffer<u8>, bytes: usize, stream: cu::CUstream) -> Result<()> {
    if buf.len() >= bytes {
        return Ok(());
    }
    // Work queued on `stream` may still use the old buffer.
    // SAFETY: `stream` is a stream of the current context (or null).
    check("cuStreamSynchronize", unsafe {
        cu::cuStreamSynchronize(stream)
    })?;
    *buf = DeviceBuffer::zeroed(bytes.next_power_of_two())
        .map_err(|e| cuda_error("cuMemAlloc (attention workspace)", e))?;
    Ok(())
}

/// Workspace of fused attention in one context: partial results, per-job counters, the job
/// table and the codec tables (adjoint matrix, DFT twiddles).
#[derive(Debug)]
pub struct AttentionRunner {
    work: DeviceBuffer<u8>,
    counters: DeviceBuffer<u8>,
    jobs: DeviceBuffer<u8>,
    tables: Vec<(Codec, DeviceBuffer<u8>, DeviceBuffer<u8>)>,
}

/// A fully planned launch whose buffers live in an [`AttentionRunner`] (for repeated timing).
#[derive(Debug, Clone)]
pub struct PreparedAttention {
    pub(crate) launches: Vec<plan::Launch>,
    /// Kernel the plan picked.
    pub kernel: Kernel,
    /// Splits per job.
    pub splits: usize,
}

impl AttentionRunner {
    /// An empty runner (allocates on first use, in the current context).
    pub fn new() -> Self {
        Self {
            work: DeviceBuffer::from_slice(&[]).expect("empty buffers never allocate"),
            counters: DeviceBuffer::from_slice(&[]).expect("empty buffers never allocate"),
            jobs: DeviceBuffer::from_slice(&[]).expect("empty buffers never allocate"),
            tables: Vec::new(),
        }
    }

    fn tables(&mut self, codec: &Codec) -> Result<(u64, u64)> {
        if let Some((_, f, t)) = self.tables.iter().find(|(c, _, _)| c == codec) {
            return Ok((addr(f), addr(t)));
        }
        let m = plan::lanes(codec);
        let fmat: Vec<u8> = if plan::tensor_core_codec(codec) == Some(Kernel::AttendTcMatrix) {
            bytemuck::cast_slice(&plan::adjoint_matrix(codec)).to_vec()
        } else {
            Vec::new()
        };
        let tw: Vec<u8> = bytemuck::cast_slice(&plan::twiddles(m)).to_vec();
        let f = DeviceBuffer::from_slice(&fmat).map_err(|e| cuda_error("upload (tables)", e))?;
        let t = DeviceBuffer::from_slice(&tw).map_err(|e| cuda_error("upload (tables)", e))?;
        let out = (addr(&f), addr(&t));
        self.tables.push((*codec, f, t));
        Ok(out)
    }

    /// Plans the launch of `jobs` and uploads the job table on `stream` (`tensor_cores: false`
    /// forces the generic kernel; `splits` forces the number of splits per job).
    ///
    /// # Safety
    ///
    /// Every address in `jobs` must be device memory of the current context, valid for the job's
    /// shape (see [`AttnJob`]) until the attention launched from the result has finished.
    pub unsafe fn prepare(
        &mut self,
        kernels: &CudaKernels,
        codec: &Codec,
        jobs: &[AttnJob],
        tensor_cores: bool,
        splits: Option<usize>,
        stream: cu::CUstream,
    ) -> Result<PreparedAttention> {
        plan::require(vidkv_core::Operation::Attend, codec)?;
        if let Some(j) = jobs
            .iter()
            .find(|j| j.query_heads < 1 || j.query_heads as usize > MAX_QUERY_HEADS)
        {
            return Err(Error::InvalidConfig {
                reason: if j.query_heads < 1 {
                    "an attention job needs at least one query head"
                } else {
                    "an attention job has at most 8 query heads (split larger groups)"
                },
            });
        }
        let aligned = tensor_cores
            && jobs.iter().all(|j| {
                (j.key_blocks | j.value_blocks) % 16 == 0
                    && (j.queries | j.out) % 4 == 0
                    && j.dense.iter().all(|d| (d.keys | d.values) % 4 == 0)
            });
        let shapes: Vec<JobShape> = jobs
            .iter()
            .map(|j| JobShape {
                blocks: j.blocks as usize,
                query_heads: j.query_heads as usize,
                salient: j.sal_masks != 0,
            })
            .collect();
        let plan = plan::plan_attention_with(codec, &shapes, kernels.sm_count(), aligned, splits);
        let (fmat, tw) = self.tables(codec)?;
        grow(&mut self.work, plan.work_floats * 4, stream)?;
        grow(&mut self.counters, jobs.len().max(1) * 4, stream)?;
        let table: &[u8] = bytemuck::cast_slice(jobs);
        grow(&mut self.jobs, table.len().max(16), stream)?;
        // SAFETY: the job table buffer holds at least `table.len()` bytes (grown above).
        unsafe { h2d_async(addr(&self.jobs), table, stream)? };
        let params = plan::attn_params(
            codec,
            &plan,
            jobs.len(),
            addr(&self.jobs),
            addr(&self.work),
            addr(&self.counters),
            fmat,
            tw,
        );
        Ok(PreparedAttention {
            launches: plan::attn_launches(&plan, jobs.len(), &params),
            kernel: plan.kernel,
            splits: plan.splits,
        })
    }

    /// Launches a prepared attention on `stream`.
    ///
    /// # Safety
    ///
    /// `prepared` must come from [`Self::prepare`] of this runner with no later `prepare` (the
    /// job table is shared), and the job buffers must still be valid.
    pub unsafe fn launch(
        &self,
        kernels: &CudaKernels,
        prepared: &PreparedAttention,
        stream: cu::CUstream,
    ) -> Result<()> {
        for launch in &prepared.launches {
            // SAFETY: forwarded contract: the parameters point into this runner's buffers and
            // the caller's live job buffers.
            unsafe { kernels.launch(launch, stream)? };
        }
        Ok(())
    }
}

impl Default for AttentionRunner {
    fn default() -> Self {
        Self::new()
    }
}
