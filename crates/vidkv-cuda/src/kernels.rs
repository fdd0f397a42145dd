//! The compiled kernels: PTX embedded at build time, loaded into the current CUDA context with
//! `Module::from_ptx`, launched with `cuLaunchKernel` on any stream.

use std::ffi::c_void;
use std::fmt::Write as _;

use cust::error::CudaError;
use cust::module::Module;
use cust::sys as cu;
use vidkv_core::{Error, Result};

use crate::plan::{Kernel, Launch};

/// PTX of the three kernel files for sm_90 (Hopper) and, for older or other devices, sm_80
/// (JIT-compiled by the driver). Regenerate with `scripts/build-ptx.sh`.
const PTX_SM90: [&str; 3] = [
    include_str!("../ptx/encode.sm_90.ptx"),
    include_str!("../ptx/decode.sm_90.ptx"),
    include_str!("../ptx/attend.sm_90.ptx"),
];
const PTX_SM80: [&str; 3] = [
    include_str!("../ptx/encode.sm_80.ptx"),
    include_str!("../ptx/decode.sm_80.ptx"),
    include_str!("../ptx/attend.sm_80.ptx"),
];

/// Maps a driver error to [`Error::Backend`], naming the call that failed.
pub(crate) fn cuda_error(call: &str, e: CudaError) -> Error {
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

/// Converts a raw driver status.
pub(crate) fn check(call: &str, r: cu::CUresult) -> Result<()> {
    if r == cu::CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    let mut text: *const std::ffi::c_char = std::ptr::null();
    // SAFETY: `text` is a valid out-pointer; the driver returns a static string or leaves null.
    unsafe { cu::cuGetErrorString(r, &mut text) };
    let text = if text.is_null() {
        format!("{r:?}")
    } else {
        // SAFETY: non-null strings from cuGetErrorString are static and NUL-terminated.
        unsafe { std::ffi::CStr::from_ptr(text) }
            .to_string_lossy()
            .into_owned()
    };
    let message = if r == cu::CUresult::CUDA_ERROR_NO_DEVICE {
        format!("no CUDA device ({call}: {text})")
    } else {
        format!("{call} failed: {text} ({r:?})")
    };
    Err(Error::Backend {
        backend: "cuda",
        message,
    })
}

/// A `CUfunction` handle. The module that owns it lives in the same [`CudaKernels`].
#[derive(Debug, Clone, Copy)]
struct Func(cu::CUfunction);

// SAFETY: a CUfunction is an immutable driver handle; the driver API is thread-safe and the
// handle stays valid while the owning module (held next to it in `CudaKernels`) is loaded.
unsafe impl Send for Func {}
// SAFETY: as above; launching from several threads is allowed by the driver API.
unsafe impl Sync for Func {}

/// The vidkv kernels loaded into one CUDA context.
#[derive(Debug)]
pub struct CudaKernels {
    /// Each kernel with the most dynamic shared memory it may be launched with.
    functions: Vec<(Kernel, Func, usize)>,
    // Declared after `functions`: the modules outlive the handles taken from them.
    _modules: Vec<Module>,
    sms: usize,
    max_smem: usize,
    compute_major: i32,
}

impl CudaKernels {
    /// Loads the PTX into the **current** context of the calling thread (device `device`).
    pub fn load(device: cu::CUdevice) -> Result<Self> {
        let attr = |a: cu::CUdevice_attribute| -> Result<i32> {
            let mut v = 0i32;
            // SAFETY: `v` is a valid out-pointer and `device` a device handle from the driver.
            check("cuDeviceGetAttribute", unsafe {
                cu::cuDeviceGetAttribute(&mut v, a, device)
            })?;
            Ok(v)
        };
        let major = attr(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let sms = attr(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let max_smem =
            attr(cu::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?;
        if major < 8 {
            return Err(Error::Backend {
                backend: "cuda",
                message: format!("compute capability {major}.x: vidkv kernels need 8.0 or newer"),
            });
        }
        let ptx = if major >= 9 { PTX_SM90 } else { PTX_SM80 };
        let modules = ptx
            .iter()
            .map(|p| Module::from_ptx(p, &[]).map_err(|e| cuda_error("cuModuleLoadData (PTX)", e)))
            .collect::<Result<Vec<_>>>()?;
        let mut functions = Vec::new();
        for k in Kernel::ALL {
            let f = modules[k.module()]
                .get_function(k.name())
                .map_err(|e| cuda_error("cuModuleGetFunction", e))?
                .to_raw();
            // Static and dynamic shared memory together may not exceed the opt-in maximum.
            let mut static_smem = 0i32;
            // SAFETY: `f` is a live function handle; `static_smem` a valid out-pointer.
            check("cuFuncGetAttribute", unsafe {
                cu::cuFuncGetAttribute(
                    &mut static_smem,
                    cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES,
                    f,
                )
            })?;
            let dynamic = (max_smem - static_smem).max(0);
            // SAFETY: `f` is a live function handle of a loaded module; the value is within the
            // device's opt-in maximum minus the kernel's static shared memory.
            check("cuFuncSetAttribute", unsafe {
                cu::cuFuncSetAttribute(
                    f,
                    cu::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    dynamic,
                )
            })?;
            functions.push((k, Func(f), dynamic as usize));
        }
        Ok(Self {
            functions,
            _modules: modules,
            sms: sms as usize,
            max_smem: max_smem as usize,
            compute_major: major,
        })
    }

    /// Streaming multiprocessors of the device.
    pub fn sm_count(&self) -> usize {
        self.sms
    }

    /// Compute capability major version.
    pub fn compute_major(&self) -> i32 {
        self.compute_major
    }

    fn function(&self, k: Kernel) -> (cu::CUfunction, usize) {
        self.functions
            .iter()
            .find(|(kk, _, _)| *kk == k)
            .map(|(_, f, max)| (f.0, *max))
            .expect("every kernel is loaded")
    }

    /// Enqueues `launch` on `stream`.
    ///
    /// # Safety
    ///
    /// Every device address inside `launch.params` must point to live device memory of the
    /// context these kernels were loaded into, large enough for the launch (the `plan`
    /// functions size them), and must stay valid until the kernel has finished on `stream`.
    /// `stream` must be a stream of that context (or null for the legacy default stream).
    pub unsafe fn launch(&self, launch: &Launch, stream: cu::CUstream) -> Result<()> {
        if launch.grid.0 == 0 || launch.grid.1 == 0 {
            return Ok(());
        }
        let (function, max_dynamic) = self.function(launch.kernel);
        if launch.smem as usize > max_dynamic {
            return Err(Error::Backend {
                backend: "cuda",
                message: format!(
                    "{} needs {} bytes of shared memory, the device allows {max_dynamic} \
                     (opt-in maximum {})",
                    launch.kernel.name(),
                    launch.smem,
                    self.max_smem
                ),
            });
        }
        // The kernel copies its parameter struct out of this buffer during the launch call.
        let mut params = launch.params.clone();
        let mut arg = params.as_mut_ptr() as *mut c_void;
        // SAFETY: the function handle is live; `arg` points to the one parameter (a struct of
        // the size the kernel declares, see params.rs); the caller guarantees the addresses in
        // it (see this function's contract).
        check(launch.kernel.name(), unsafe {
            cu::cuLaunchKernel(
                function,
                launch.grid.0,
                launch.grid.1,
                1,
                launch.kernel.threads(),
                1,
                1,
                launch.smem,
                stream,
                &mut arg,
                std::ptr::null_mut(),
            )
        })
    }
}
