//! Core of vidkv: what every backend shares.
//!
//! * [`config`] — validated quantization settings ([`QuantConfig`]) and the named presets
//!   ([`Scheme`]) that the CLI and reports use;
//! * [`layout`] — the byte layout of every block type (format version [`FORMAT_VERSION`]);
//! * [`traced`] — outlier-token tracing (OTT): the traced part of key blocks and the encoder's
//!   choice of tokens;
//! * [`pack`] — the one set of bit-packing primitives (1/2/4-bit codes, base-3 trits, f16 fields);
//! * [`backend`] — the [`KvQuantBackend`] trait that the scalar, SIMD and CUDA backends implement;
//! * [`container`] — the `.vkv` file that holds a whole quantized cache;
//! * [`sketch`] — the H1B-KV sign-sketch projection and score estimator (one place for every
//!   backend);
//! * [`cache`] — the streaming KV cache over any backend: blocks, residual window, attention
//!   sinks, salient tokens, batches and GQA;
//! * [`error`] — the typed errors every fallible call returns.
//!
//! The crate is `no_std` (+ `alloc`) so that embedded and GPU-host runtimes can read the format
//! without pulling in `std`.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

pub mod backend;
pub mod cache;
pub mod config;
pub mod container;
pub mod error;
pub mod layout;
pub mod outliers;
pub mod pack;
pub mod sketch;
pub mod traced;

pub use backend::{Capability, DType, HeadTensor, KvQuantBackend, Operation};
pub use cache::{CacheConfig, KvCache, MemoryUsage, Salient};
pub use config::{
    Arithmetic, Bits, Calibration, GroupSize, HeadDim, KeyScheme, LaneRule, MixedKeys,
    OutlierScope, QuantConfig, Scheme, SketchBits, TernaryScale, Transform, ValueScheme,
};
pub use error::{Error, Result};
pub use layout::{AffineParams, ChannelMask, Codec, KeyLayout, Section, ValueLayout};

/// Version of the block byte layouts described in `docs/FORMAT.md`. Any change to encoded bytes
/// bumps it.
pub const FORMAT_VERSION: u16 = 1;
