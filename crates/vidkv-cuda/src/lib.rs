//! CUDA backend for vidkv: kernels in CUDA C (`kernels/*.cu`), compiled to PTX for sm_90 and
//! sm_80 with the pinned nvcc (`scripts/build-ptx.sh`), committed under `ptx/`, embedded with
//! `include_str!` and loaded with `Module::from_ptx` through [`cust`](https://docs.rs/cust).
//!
//! * [`CudaBackend`] implements [`vidkv_core::KvQuantBackend`] on device buffers: block
//!   encoders (prefill; many blocks per launch), decoders, and fused decode attention over the
//!   packed cache ([`vidkv_core::KvQuantBackend::attend_batch`]: one launch for every sequence
//!   and KV head of a step, split-K with the merge done by the last CTA of each job). The
//!   streaming cache `vidkv_core::cache::KvCache<&CudaBackend>` runs on top of it.
//! * [`RawAttention`] is the entry point for runtimes that own their context, memory and
//!   streams: raw device addresses and a `CUstream`, with the safety contract documented there.
//! * The launch planning ([`plan`]) and parameter structs ([`params`]) need no CUDA; the tests
//!   run the kernels through a CPU warp emulator (`tools/kernel-emu`) on machines without a GPU.
//!
//! Everything that talks to a driver sits behind the `cuda` cargo feature (off by default), so
//! that a plain `cargo build --workspace` never needs a CUDA installation. With the feature,
//! `cust`'s build script links against `libcuda.so`: on a machine without CUDA use the stub from
//! `tools/cuda-stub/build.sh OUTDIR` and set `CUDA_LIBRARY_PATH=OUTDIR`. A binary linked that way
//! uses the real driver wherever one is installed; where none is (or with the stub on the loader
//! path), [`CudaBackend::new`] fails with an [`Error::Backend`](vidkv_core::Error::Backend) whose
//! message starts with "no CUDA device".
#![warn(missing_docs)]

pub mod params;
pub mod plan;

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
pub mod bench;
#[cfg(feature = "cuda")]
mod kernels;
#[cfg(feature = "cuda")]
mod raw;
#[cfg(feature = "cuda")]
mod runner;

#[cfg(feature = "cuda")]
pub use backend::CudaBackend;
#[cfg(feature = "cuda")]
pub use kernels::CudaKernels;
#[cfg(feature = "cuda")]
pub use raw::RawAttention;
#[cfg(feature = "cuda")]
pub use runner::{AttentionRunner, PreparedAttention};

#[cfg(feature = "cuda")]
pub use cust;
