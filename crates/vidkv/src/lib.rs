//! vidkv: 1.5–1.6-bit KV-cache quantization for (video) LLMs — the crate applications depend on.
//!
//! It re-exports the format and configuration of [`vidkv_core`] and the scalar reference backend
//! ([`ScalarBackend`]), and adds what works on whole tensor files:
//!
//! * [`tensor`] — K/V tensors `[heads, tokens, head_dim]` read from safetensors files;
//! * [`options`] — overrides applied on top of a preset ([`Scheme`]);
//! * [`mod@quantize`] — quantize and decode one tensor with any [`KvQuantBackend`];
//! * [`mod@eval`] — storage cost, error and throughput of a tensor under a scheme;
//! * [`attn_eval`] — attention error through the streaming cache for files with queries;
//! * [`attention`] — decode attention split over threads (fused jobs and dense baselines);
//! * [`bench`] — the decode-step and encode benchmark behind `vidkv bench`;
//! * [`mod@roundtrip`] — quantize-then-dequantize a whole file;
//! * [`vkv`] — whole caches in `.vkv` container files (pack, unpack, inspect);
//! * [`error`] — errors that name the file and tensor they concern.
//!
//! Everything that touches a backend is generic over [`KvQuantBackend`], so the SIMD and CUDA
//! backends (cargo features `simd`, `cuda`) plug into the same code.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attention;
pub mod attn_eval;
pub mod bench;
pub mod cross_layer;
pub mod error;
pub mod eval;
pub mod options;
pub mod quantize;
pub mod roundtrip;
pub mod tensor;
pub mod vkv;

/// vidkv-core's error (what backends and codecs return); [`Error`] wraps it with file context.
pub use vidkv_core::Error as CoreError;
pub use vidkv_core::cache::{self, CacheConfig, KvCache, MemoryUsage, Salient};
pub use vidkv_core::{
    AffineParams, Arithmetic, Bits, Capability, ChannelMask, Codec, DType, FORMAT_VERSION,
    GroupSize, HeadDim, HeadTensor, KeyLayout, KeyScheme, KvQuantBackend, LaneRule, MixedKeys,
    Operation, OutlierScope, QuantConfig, Scheme, Section, SketchBits, TernaryScale, Transform,
    ValueLayout, ValueScheme, backend, config, layout, pack, sketch,
};
pub use vidkv_cpu::ScalarBackend;

pub use error::{Error, ErrorKind, Result};
pub use eval::{EvalRow, evaluate};
pub use options::{SchemeOptions, parse_scheme};
pub use quantize::{Quantized, quantize, quantize_timed};
pub use roundtrip::{Roundtrip, roundtrip};
pub use tensor::{KvKind, KvTensor, TensorFile};
