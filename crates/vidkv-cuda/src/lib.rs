//! CUDA backend for vidkv (through the [`cust`](https://docs.rs/cust) driver-API bindings).
//!
//! **Status: device buffers only.** The backend creates a CUDA context and moves bytes to and from
//! the device; it has no kernels yet. [`KvQuantBackend::capability`] therefore answers
//! [`Capability::Unsupported`] for every operation and every encode, decode and attention call
//! returns [`vidkv_core::Error::Unsupported`]: nothing runs on the CPU behind the caller's back.
//! The kernels (CUDA C compiled to PTX and loaded with `Module::from_ptx`) come later.
//!
//! Everything here sits behind the `cuda` cargo feature (off by default), so that a plain
//! `cargo build --workspace` never needs a CUDA installation. With the feature, `cust`'s build
//! script links against `libcuda.so`: on a machine without CUDA use the stub from
//! `tools/cuda-stub/build.sh OUTDIR` and set `CUDA_LIBRARY_PATH=OUTDIR`. A binary linked that way
//! uses the real driver wherever one is installed; where none is (or with the stub on the loader
//! path), [`CudaBackend::new`] fails with an [`Error::Backend`](vidkv_core::Error::Backend) whose
//! message starts with "no CUDA device".
//!
//! [`KvQuantBackend::capability`]: vidkv_core::KvQuantBackend::capability
//! [`Capability::Unsupported`]: vidkv_core::Capability::Unsupported
//! [`vidkv_core::Error::Unsupported`]: vidkv_core::Error::Unsupported
#![warn(missing_docs)]

#[cfg(feature = "cuda")]
mod backend;

#[cfg(feature = "cuda")]
pub use backend::CudaBackend;

#[cfg(feature = "cuda")]
pub use cust;
