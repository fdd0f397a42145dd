//! Kernel parameter structs, `#[repr(C)]` mirrors of `kernels/common.cuh`.
//!
//! Every kernel takes one of these structs by value. Device addresses are plain `u64`s, so the
//! same structs serve the [`cust`]-backed launches, the raw entry point for runtimes that own
//! their memory, and the CPU emulator used by the tests. Sizes are pinned on both sides
//! (`static_assert` in C, `const` assertions here).

use bytemuck::{Pod, Zeroable};

/// A codec as the kernels see it: configuration plus section offsets (`struct KCodec`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
#[allow(missing_docs)]
pub struct KCodec {
    pub d: i32,
    pub g: i32,
    pub arith: i32,
    pub key_kind: i32,
    pub key_bits: i32,
    pub outliers: i32,
    pub lanes: i32,
    pub transform: i32,
    pub lane_rule: i32,
    pub key_block_bytes: i32,
    pub k_mask: i32,
    pub k_oparams: i32,
    pub k_lscales: i32,
    pub k_ocodes: i32,
    pub k_lbits: i32,
    pub k_params: i32,
    pub k_codes: i32,
    pub val_kind: i32,
    pub val_bits: i32,
    pub ternary_scale: i32,
    pub channel_group: i32,
    pub value_block_bytes: i32,
    pub v_scales: i32,
    pub v_trits: i32,
    pub v_params: i32,
    pub v_codes: i32,
    pub trit_row: i32,
    pub mask_words: i32,
}

/// Encoder launch (`struct EncodeParams`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
#[allow(missing_docs)]
pub struct EncodeParams {
    pub c: KCodec,
    pub input: u64,
    pub out: u64,
    pub fixed_mask: u64,
    pub excluded: u64,
    pub twiddles: u64,
    pub errors: u64,
    pub dtype: i32,
    pub blocks: i32,
}

/// Decoder launch (`struct DecodeParams`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
#[allow(missing_docs)]
pub struct DecodeParams {
    pub c: KCodec,
    pub encoded: u64,
    pub out: u64,
    pub twiddles: u64,
    pub errors: u64,
    pub blocks: i32,
    pub pad: i32,
}

/// f16 rows kept unquantized, as a ring (`struct DenseDesc`): `len` live rows from `start`,
/// modulo `cap`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
#[allow(missing_docs)]
pub struct DenseDesc {
    pub keys: u64,
    pub values: u64,
    pub start: i32,
    pub len: i32,
    pub cap: i32,
    pub pad: i32,
}

/// One attention job: a KV head of a sequence with its GQA query heads (`struct AttnJob`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
#[allow(missing_docs)]
pub struct AttnJob {
    pub queries: u64,
    pub out: u64,
    pub key_blocks: u64,
    pub value_blocks: u64,
    pub sal_masks: u64,
    pub sal_groups: u64,
    pub sal_pending: u64,
    /// Sinks, then the residual window.
    pub dense: [DenseDesc; 2],
    pub blocks: i32,
    pub query_heads: i32,
    pub scale: f32,
    pub sal_group_count: i32,
    pub sal_pending_len: i32,
    pub pad: i32,
}

/// Attention launch (`struct AttnParams`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, Pod, Zeroable)]
#[allow(missing_docs)]
pub struct AttnParams {
    pub c: KCodec,
    pub salient: KCodec,
    pub jobs: u64,
    pub work: u64,
    pub counters: u64,
    pub fmat: u64,
    pub twiddles: u64,
    pub njobs: i32,
    pub splits: i32,
    pub blocks_per_split: i32,
    /// 1: the last CTA of each job merges the splits; 0: `vk_attend_merge` does.
    pub fused_merge: i32,
}

const _: () = assert!(core::mem::size_of::<KCodec>() == 112);
const _: () = assert!(core::mem::size_of::<EncodeParams>() == 168);
const _: () = assert!(core::mem::size_of::<DecodeParams>() == 152);
const _: () = assert!(core::mem::size_of::<DenseDesc>() == 32);
const _: () = assert!(core::mem::size_of::<AttnJob>() == 144);
const _: () = assert!(core::mem::size_of::<AttnParams>() == 280);
const _: () = assert!(core::mem::offset_of!(AttnJob, dense) == 56);
const _: () = assert!(core::mem::offset_of!(AttnParams, jobs) == 224);

/// Error slots written by encoders and decoders (`ERR_SLOT_*`).
pub const ERR_SLOTS: usize = 3;
/// Slot of the first non-finite input element.
pub const ERR_SLOT_NONFINITE: usize = 0;
/// Slot of the first input element beyond the f16 range.
pub const ERR_SLOT_RANGE: usize = 1;
/// Slot of the first corrupt field of an encoded block.
pub const ERR_SLOT_CORRUPT: usize = 2;

/// Query heads a job may have (one CTA holds them all).
pub const MAX_QUERY_HEADS: usize = 8;
