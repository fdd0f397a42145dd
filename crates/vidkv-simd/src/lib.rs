//! SIMD backend of vidkv: AVX-512, AVX2 + FMA + F16C and NEON kernels, selected at run time.
//!
//! * [`Level`] — the instruction-set levels; [`level::detect`] runs once, [`force_level`] and the
//!   `VIDKV_SIMD_LEVEL` environment variable pin one for tests and benchmarks;
//! * [`attend_head`] / [`attend_heads`] — fused decode attention on the packed cache, shared
//!   across the query heads of a GQA group, spread over threads;
//! * [`SimdBackend`] — the [`vidkv_core::KvQuantBackend`] implementation, which falls back to
//!   the scalar backend (`vidkv-cpu`) for every operation a level has no kernel for.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]
// Kernels index several parallel arrays by the same position; iterator chains obscure them.
#![allow(clippy::needless_range_loop)]

extern crate alloc;

pub mod attend;
mod backend;
pub mod baseline;
pub mod bench;
pub mod codec_bench;
mod encode;
mod fft;
mod kernel;
pub mod level;
mod math;
mod minmax;
mod sketch;

#[cfg(target_arch = "x86_64")]
mod x86;

#[cfg(target_arch = "aarch64")]
mod aarch64;

#[cfg(feature = "std")]
pub use attend::attend_heads;
pub use attend::{HeadCache, HeadJob, attend_head, reference_attend};
pub use backend::SimdBackend;
pub use level::{Level, active_level, detect, force_level};
