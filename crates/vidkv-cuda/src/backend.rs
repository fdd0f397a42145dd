//! [`CudaBackend`]: a CUDA context and device buffers; no kernels yet.

use std::fmt::Write as _;

use cust::context::{Context, CurrentContext};
use cust::device::Device;
use cust::error::CudaError;
use cust::memory::{CopyDestination, DeviceBuffer};
use vidkv_core::{
    Capability, ChannelMask, Codec, Error, HeadTensor, KvQuantBackend, Operation, Result,
};

/// Why every operation is unsupported: the kernels do not exist yet.
const NO_KERNELS: &str = "CUDA kernels are not written yet";

/// The CUDA backend: holds the primary context of device 0.
///
/// Buffers are [`DeviceBuffer<u8>`]s in that context. Drop them before the backend: freeing a
/// buffer after its context is gone fails silently in `cust` (the memory is released with the
/// context anyway).
#[derive(Debug)]
pub struct CudaBackend {
    device: Device,
    context: Context,
}

impl CudaBackend {
    /// Initialises the CUDA driver and retains the primary context of device 0
    /// ([`cust::quick_init`]).
    ///
    /// Fails with [`Error::Backend`] (backend `"cuda"`) when there is no driver or no device; the
    /// message then starts with "no CUDA device".
    pub fn new() -> Result<Self> {
        let context = cust::quick_init().map_err(|e| cuda_error("initialisation", e))?;
        let device = Device::get_device(0).map_err(|e| cuda_error("cuDeviceGet", e))?;
        Ok(CudaBackend { device, context })
    }

    /// The device's name as the driver reports it (e.g. "NVIDIA H200").
    pub fn device_name(&self) -> Result<String> {
        self.device
            .name()
            .map_err(|e| cuda_error("cuDeviceGetName", e))
    }

    /// Makes this backend's context current on the calling thread, so that the backend can be
    /// used from any thread.
    fn make_current(&self) -> Result<()> {
        CurrentContext::set_current(&self.context).map_err(|e| cuda_error("cuCtxSetCurrent", e))
    }
}

/// Maps a driver error to [`Error::Backend`], naming the call that failed.
fn cuda_error(call: &str, e: CudaError) -> Error {
    // cust's `Display` asks the driver for the message; fall back to the variant name if the
    // driver cannot answer (formatting into a String must not panic).
    let mut text = String::new();
    if write!(text, "{e}").is_err() {
        text = format!("{e:?}");
    }
    let message = match e {
        CudaError::NoDevice => format!("no CUDA device ({call}: {text})"),
        _ => format!("{call} failed: {text} ({e:?})"),
    };
    Error::Backend {
        backend: "cuda",
        message,
    }
}

impl KvQuantBackend for CudaBackend {
    type Buffer = DeviceBuffer<u8>;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn capability(&self, op: Operation, codec: &Codec) -> Capability {
        let _ = (op, codec);
        Capability::Unsupported(NO_KERNELS)
    }

    fn upload(&self, bytes: &[u8]) -> Result<Self::Buffer> {
        self.make_current()?;
        DeviceBuffer::from_slice(bytes).map_err(|e| cuda_error("upload (cuMemcpyHtoD)", e))
    }

    fn download(&self, buffer: &Self::Buffer) -> Result<Vec<u8>> {
        self.make_current()?;
        let mut host = vec![0u8; buffer.len()];
        // A synchronous copy: it waits for work pending on the device.
        buffer
            .copy_to(host.as_mut_slice())
            .map_err(|e| cuda_error("download (cuMemcpyDtoH)", e))?;
        Ok(host)
    }

    fn alloc(&self, bytes: usize) -> Result<Self::Buffer> {
        self.make_current()?;
        DeviceBuffer::zeroed(bytes).map_err(|e| cuda_error("alloc (cuMemAlloc)", e))
    }

    fn encode_keys(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Self::Buffer>,
        outliers: Option<&ChannelMask>,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let _ = (codec, input, outliers, out);
        Err(self.unsupported(Operation::EncodeKeys, NO_KERNELS))
    }

    fn decode_keys(
        &self,
        codec: &Codec,
        encoded: &Self::Buffer,
        blocks: usize,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let _ = (codec, encoded, blocks, out);
        Err(self.unsupported(Operation::DecodeKeys, NO_KERNELS))
    }

    fn encode_values(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Self::Buffer>,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let _ = (codec, input, out);
        Err(self.unsupported(Operation::EncodeValues, NO_KERNELS))
    }

    fn decode_values(
        &self,
        codec: &Codec,
        encoded: &Self::Buffer,
        blocks: usize,
        out: &mut Self::Buffer,
    ) -> Result<()> {
        let _ = (codec, encoded, blocks, out);
        Err(self.unsupported(Operation::DecodeValues, NO_KERNELS))
    }

    fn attend(
        &self,
        codec: &Codec,
        args: vidkv_core::backend::AttentionArgs<'_, Self::Buffer>,
    ) -> Result<()> {
        let _ = (codec, args);
        Err(self.unsupported(Operation::Attend, NO_KERNELS))
    }
}
