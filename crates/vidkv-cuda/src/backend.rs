//! [`CudaBackend`]: the [`KvQuantBackend`] over device memory, kernels enqueued on one stream.

use std::ffi::c_void;
use std::sync::Mutex;

use cust::context::{Context, CurrentContext};
use cust::device::Device;
use cust::memory::{CopyDestination, DeviceBuffer};
use cust::stream::{Stream, StreamFlags};
use cust::sys as cu;
use vidkv_core::backend::AttentionArgs;
use vidkv_core::{
    Capability, ChannelMask, Codec, Error, HeadTensor, KvQuantBackend, Operation, Result,
};

use crate::kernels::{CudaKernels, check, cuda_error};
use crate::params::{AttnJob, ERR_SLOTS};
use crate::plan::{self, EncodeAddrs, Kernel, Launch};
use crate::runner::{AttentionRunner, PreparedAttention, addr};

/// The CUDA backend: the primary context of device 0, one stream, the kernels and the
/// attention workspace.
///
/// Buffers are [`DeviceBuffer<u8>`]s in that context. Operations are enqueued on the backend's
/// stream (a blocking stream, so the synchronous copies of `upload`/`download` are ordered with
/// it); encoders and decoders wait for their error report, attention does not wait at all.
/// Drop buffers before the backend: freeing a buffer after its context is gone fails silently in
/// `cust` (the memory is released with the context anyway).
#[derive(Debug)]
pub struct CudaBackend {
    kernels: CudaKernels,
    runner: Mutex<AttentionRunner>,
    stream: Stream,
    device: Device,
    // Last: released after everything allocated in it.
    context: Context,
}

impl CudaBackend {
    /// Initialises the CUDA driver, retains the primary context of device 0 and loads the
    /// kernels (PTX for sm_90, or sm_80 PTX JIT-compiled for other devices of compute capability
    /// 8.0 or newer).
    ///
    /// Fails with [`Error::Backend`] (backend `"cuda"`) when there is no driver or no device; the
    /// message then starts with "no CUDA device" ([`CudaBackend::is_no_device`]).
    pub fn new() -> Result<Self> {
        let context = cust::quick_init().map_err(|e| cuda_error("initialisation", e))?;
        let device = Device::get_device(0).map_err(|e| cuda_error("cuDeviceGet", e))?;
        let stream =
            Stream::new(StreamFlags::DEFAULT, None).map_err(|e| cuda_error("cuStreamCreate", e))?;
        let kernels = CudaKernels::load(device.as_raw())?;
        Ok(CudaBackend {
            kernels,
            runner: Mutex::new(AttentionRunner::new()),
            stream,
            device,
            context,
        })
    }

    /// Whether `e` (from [`Self::new`]) means that there is no CUDA device or driver, as
    /// opposed to a device that fails.
    pub fn is_no_device(e: &Error) -> bool {
        matches!(e, Error::Backend { backend: "cuda", message } if message.starts_with("no CUDA device"))
    }

    /// The device's name as the driver reports it (e.g. "NVIDIA H200").
    pub fn device_name(&self) -> Result<String> {
        self.device
            .name()
            .map_err(|e| cuda_error("cuDeviceGetName", e))
    }

    /// The loaded kernels.
    pub fn kernels(&self) -> &CudaKernels {
        &self.kernels
    }

    /// The backend's stream.
    pub fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Makes this backend's context current on the calling thread, so that the backend can be
    /// used from any thread.
    pub fn make_current(&self) -> Result<()> {
        CurrentContext::set_current(&self.context).map_err(|e| cuda_error("cuCtxSetCurrent", e))
    }

    /// Waits for everything enqueued on the backend's stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| cuda_error("cuStreamSynchronize", e))
    }

    fn launch(&self, launch: &Launch) -> Result<()> {
        // SAFETY: every launch built by this backend points into live buffers borrowed for the
        // duration of the calling method, which waits for the kernel (encode/decode) or keeps
        // the buffers alive through the caller's borrow until its next synchronizing call.
        unsafe { self.kernels.launch(launch, self.stream.as_inner()) }
    }

    fn error_slots(&self) -> Result<DeviceBuffer<u64>> {
        DeviceBuffer::from_slice(&[u64::MAX; ERR_SLOTS]).map_err(|e| cuda_error("upload", e))
    }

    fn read_slots(&self, slots: &DeviceBuffer<u64>) -> Result<()> {
        self.synchronize()?;
        let mut host = [0u64; ERR_SLOTS];
        slots
            .copy_to(&mut host[..])
            .map_err(|e| cuda_error("download (error slots)", e))?;
        plan::slot_error(&host)
    }

    fn twiddles(&self, codec: &Codec) -> Result<DeviceBuffer<u8>> {
        let tw = plan::twiddles(plan::lanes(codec));
        DeviceBuffer::from_slice(bytemuck::cast_slice(&tw)).map_err(|e| cuda_error("upload", e))
    }

    #[allow(clippy::too_many_arguments)]
    fn encode(
        &self,
        codec: &Codec,
        keys: bool,
        input: HeadTensor<'_, DeviceBuffer<u8>>,
        outliers: Option<&ChannelMask>,
        excluded: Option<&[u8]>,
        out: &mut DeviceBuffer<u8>,
    ) -> Result<()> {
        self.make_current()?;
        let blocks = plan::check_encode(
            codec,
            keys,
            input.dtype,
            input.tokens,
            input.data.len(),
            out.len(),
            outliers,
        )?;
        if let Some(mask) = excluded {
            let want = blocks * codec.group() / 8;
            if mask.len() != want {
                return Err(Error::ShapeMismatch {
                    what: "excluded-token masks (G/8 bytes per block)",
                    expected: want,
                    actual: mask.len(),
                });
            }
        }
        if blocks == 0 {
            return Ok(());
        }
        let slots = self.error_slots()?;
        let tw = self.twiddles(codec)?;
        let fixed = match (keys, outliers) {
            (true, Some(m)) => Some(
                DeviceBuffer::from_slice(bytemuck::cast_slice::<u32, u8>(&m.words))
                    .map_err(|e| cuda_error("upload", e))?,
            ),
            _ => None,
        };
        let excl = match excluded {
            Some(m) => Some(DeviceBuffer::from_slice(m).map_err(|e| cuda_error("upload", e))?),
            None => None,
        };
        let launch = plan::encode_launch(
            codec,
            keys,
            input.dtype,
            blocks,
            EncodeAddrs {
                input: addr(input.data),
                out: addr(out),
                fixed_mask: fixed.as_ref().map_or(0, addr),
                excluded: excl.as_ref().map_or(0, addr),
                twiddles: addr(&tw),
                errors: addr(&slots),
            },
        );
        self.launch(&launch)?;
        self.read_slots(&slots)
    }

    fn decode(
        &self,
        codec: &Codec,
        keys: bool,
        encoded: &DeviceBuffer<u8>,
        blocks: usize,
        out: &mut DeviceBuffer<u8>,
    ) -> Result<()> {
        self.make_current()?;
        plan::check_decode(codec, keys, encoded.len(), blocks, out.len())?;
        if blocks == 0 {
            return Ok(());
        }
        let slots = self.error_slots()?;
        let tw = self.twiddles(codec)?;
        let launch = plan::decode_launch(
            codec,
            keys,
            blocks,
            addr(encoded),
            addr(out),
            addr(&tw),
            addr(&slots),
        );
        self.launch(&launch)?;
        self.read_slots(&slots)
    }

    /// Plans and uploads the job table of an attention step, for repeated launches with
    /// [`Self::launch_prepared`] (benchmarks, CUDA-graph capture). The buffers behind `jobs` must
    /// stay valid while the prepared step is launched.
    pub fn prepare_attention(&self, codec: &Codec, jobs: &[AttnJob]) -> Result<PreparedAttention> {
        self.prepare_attention_with(codec, jobs, true)
    }

    /// [`Self::prepare_attention`] with the tensor-core kernel allowed or not (`false` forces the
    /// generic kernel, for cross-checks).
    pub fn prepare_attention_with(
        &self,
        codec: &Codec,
        jobs: &[AttnJob],
        tensor_cores: bool,
    ) -> Result<PreparedAttention> {
        self.prepare_attention_tuned(codec, jobs, tensor_cores, None)
    }

    /// [`Self::prepare_attention_with`] with the number of splits per job forced (`None`: the
    /// planner's choice), for tuning experiments.
    pub fn prepare_attention_tuned(
        &self,
        codec: &Codec,
        jobs: &[AttnJob],
        tensor_cores: bool,
        splits: Option<usize>,
    ) -> Result<PreparedAttention> {
        self.make_current()?;
        let mut runner = self.runner.lock().map_err(|_| poisoned())?;
        // SAFETY: the jobs' addresses come from the caller, who keeps them valid (documented).
        unsafe {
            runner.prepare(
                &self.kernels,
                codec,
                jobs,
                tensor_cores,
                splits,
                self.stream.as_inner(),
            )
        }
    }

    /// Launches a step prepared by [`Self::prepare_attention`] (no later `prepare_attention` or
    /// `attend` in between: they reuse the job table).
    pub fn launch_prepared(&self, prepared: &PreparedAttention) -> Result<()> {
        self.make_current()?;
        let runner = self.runner.lock().map_err(|_| poisoned())?;
        // SAFETY: the prepared launch points into the runner's buffers (alive, locked) and the
        // caller's job buffers (kept valid per `prepare_attention`'s contract).
        unsafe { runner.launch(&self.kernels, prepared, self.stream.as_inner()) }
    }

    /// Device-to-device copy of `len` bytes on the backend's stream.
    fn copy_d2d(&self, dst: u64, src: u64, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        // SAFETY: both ranges were bounds-checked against live device buffers by the caller.
        check("cuMemcpyDtoDAsync", unsafe {
            cu::cuMemcpyDtoDAsync_v2(dst, src, len, self.stream.as_inner())
        })
    }
}

fn poisoned() -> Error {
    Error::Backend {
        backend: "cuda",
        message: "attention workspace lock poisoned by a panic".into(),
    }
}

impl KvQuantBackend for CudaBackend {
    type Buffer = DeviceBuffer<u8>;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn capability(&self, op: Operation, codec: &Codec) -> Capability {
        match plan::unsupported(op, codec) {
            Some(reason) => Capability::Unsupported(reason),
            None => Capability::Supported,
        }
    }

    fn upload(&self, bytes: &[u8]) -> Result<Self::Buffer> {
        self.make_current()?;
        DeviceBuffer::from_slice(bytes).map_err(|e| cuda_error("upload (cuMemcpyHtoD)", e))
    }

    fn download(&self, buffer: &Self::Buffer) -> Result<Vec<u8>> {
        self.make_current()?;
        self.synchronize()?;
        let mut host = vec![0u8; buffer.len()];
        buffer
            .copy_to(host.as_mut_slice())
            .map_err(|e| cuda_error("download (cuMemcpyDtoH)", e))?;
        Ok(host)
    }

    fn alloc(&self, bytes: usize) -> Result<Self::Buffer> {
        self.make_current()?;
        if bytes == 0 {
            // No allocation and no memset of a null pointer.
            return DeviceBuffer::from_slice(&[]).map_err(|e| cuda_error("alloc", e));
        }
        DeviceBuffer::zeroed(bytes).map_err(|e| cuda_error("alloc (cuMemAlloc)", e))
    }

    fn encode_keys(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Self::Buffer>,
        outliers: Option<&ChannelMask>,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        self.encode(codec, true, input, outliers, None, out)
    }

    fn decode_keys(
        &self,
        codec: &Codec,
        encoded: &Self::Buffer,
        blocks: usize,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        self.decode(codec, true, encoded, blocks, out)
    }

    fn encode_values(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Self::Buffer>,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        self.encode(codec, false, input, None, None, out)
    }

    fn decode_values(
        &self,
        codec: &Codec,
        encoded: &Self::Buffer,
        blocks: usize,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        self.decode(codec, false, encoded, blocks, out)
    }

    fn encode_values_masked(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Self::Buffer>,
        excluded: &[u8],
        out: &mut Self::Buffer,
    ) -> Result<()> {
        self.encode(codec, false, input, None, Some(excluded), out)
    }

    fn copy_bytes(
        &self,
        src: &Self::Buffer,
        src_offset: usize,
        dst: &mut Self::Buffer,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        self.make_current()?;
        if src_offset + len > src.len() {
            return Err(plan::short(
                "copy source bytes",
                src_offset + len,
                src.len(),
            ));
        }
        if dst_offset + len > dst.len() {
            return Err(plan::short(
                "copy destination bytes",
                dst_offset + len,
                dst.len(),
            ));
        }
        self.copy_d2d(
            addr(dst) + dst_offset as u64,
            addr(src) + src_offset as u64,
            len,
        )
    }

    fn write_bytes(&self, dst: &mut Self::Buffer, offset: usize, bytes: &[u8]) -> Result<()> {
        self.make_current()?;
        if offset + bytes.len() > dst.len() {
            return Err(plan::short(
                "write destination bytes",
                offset + bytes.len(),
                dst.len(),
            ));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        // SAFETY: the destination range lies inside `dst` (checked above); the copy is
        // synchronous for pageable memory, so `bytes` need not outlive the call.
        check("cuMemcpyHtoDAsync", unsafe {
            cu::cuMemcpyHtoDAsync_v2(
                addr(dst) + offset as u64,
                bytes.as_ptr() as *const c_void,
                bytes.len(),
                self.stream.as_inner(),
            )
        })
    }

    fn attend(&self, codec: &Codec, args: AttentionArgs<'_, Self::Buffer>) -> Result<()> {
        self.attend_batch(codec, vec![args])
    }

    fn attend_batch(
        &self,
        codec: &Codec,
        jobs: Vec<AttentionArgs<'_, Self::Buffer>>,
    ) -> Result<()> {
        self.make_current()?;
        let mut table = Vec::with_capacity(jobs.len());
        for j in &jobs {
            table.extend(plan::attention_jobs(codec, j, &|b: &DeviceBuffer<u8>| {
                (addr(b), b.len())
            })?);
        }
        if table.is_empty() {
            return Ok(());
        }
        let prepared = self.prepare_attention(codec, &table)?;
        self.launch_prepared(&prepared)
    }
}

impl CudaBackend {
    /// Which attention kernel a batch of jobs of this codec uses (for reports).
    pub fn attention_kernel(&self, codec: &Codec, jobs: &[plan::JobShape]) -> Kernel {
        plan::plan_attention(codec, jobs, self.kernels.sm_count(), true).kernel
    }
}
