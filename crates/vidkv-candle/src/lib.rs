//! vidkv for [candle](https://github.com/huggingface/candle): keep a model's KV cache in a vidkv
//! format and run decode attention on it.
//!
//! * [`convert`] — candle `Tensor` ↔ vidkv's `[kv_heads, tokens, head_dim]` f32 rows;
//! * [`cache`] — the pluggable per-layer cache ([`LayerCache`], [`CacheFactory`]): the f16
//!   baseline and every vidkv scheme;
//! * [`kvcache`] — the same trait over vidkv's own streaming [`vidkv_core::KvCache`] and its
//!   fused attention ([`VidkvFactory`]);
//! * [`attention`] — [`KvCacheAttention`], the drop-in attention step a model calls instead of
//!   concatenating f16 K/V tensors;
//! * `model`, `tokenizer` (feature `eval`) — a LLaMA-architecture GGUF forward pass written with
//!   candle ops, used by the `vidkv-smollm2` evaluation binary.
#![warn(missing_docs)]

pub mod attention;
pub mod cache;
pub mod convert;
pub mod error;
pub mod kvcache;
#[cfg(feature = "eval")]
pub mod model;
#[cfg(feature = "eval")]
pub mod tokenizer;

pub use attention::{KvCacheAttention, full_attention};
pub use cache::{
    AttentionPath, CacheFactory, CacheShape, F16Cache, F16Factory, LayerCache, QuantCache,
    QuantFactory, Streaming,
};
pub use error::{Error, Result};
pub use kvcache::{SharingFactory, VidkvFactory, VidkvLayer};
