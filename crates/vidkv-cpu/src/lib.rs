//! The portable scalar backend of vidkv: the **normative** implementation of every encoding and
//! decoding (DESIGN §1.1, §1.2, §1.5). Other backends are checked against it.
//!
//! `no_std` + `alloc`; the default `std` feature only lets `half` use F16C at run time.
//!
//! Two layers:
//! * slice functions ([`encode_key_blocks`], [`decode_value_blocks`], …) on f32 rows, used by the
//!   facade and as the per-operation fallback of the SIMD backend;
//! * [`ScalarBackend`], the [`KvQuantBackend`] implementation over host buffers.
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

extern crate alloc;

pub mod affine;
pub mod arith;
pub mod attention;
mod blocks;
pub mod borrow;
mod convert;
mod keys;
mod outliers;
mod sketch;
pub mod ternary;
pub mod transform;
mod values;

use alloc::vec;
use alloc::vec::Vec;

use vidkv_core::backend::AttentionArgs;
use vidkv_core::{
    Capability, ChannelMask, Codec, Error, HeadTensor, KvQuantBackend, Operation, Result,
};

pub use blocks::{read_params, write_params};
pub use borrow::{decode_borrowed_key_blocks, decode_borrowed_value_blocks};
pub use convert::{check_finite, to_f32};
pub use keys::{decode_key_blocks, encode_key_blocks, lane_scales_of, lane_value};
pub use outliers::{ChannelRanges, layer_outliers};
pub use values::{decode_value_blocks, encode_value_blocks, encode_value_blocks_masked};

/// The scalar backend: host buffers (`Vec<u8>`), every encode/decode operation supported.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScalarBackend;

impl ScalarBackend {
    fn input_rows(codec: &Codec, input: &HeadTensor<'_, Vec<u8>>) -> Result<Vec<f32>> {
        let expected = input.tokens * codec.head_dim() * input.dtype.size();
        if input.data.len() != expected {
            return Err(Error::ShapeMismatch {
                what: "input bytes",
                expected,
                actual: input.data.len(),
            });
        }
        to_f32(input.dtype, input.data, codec.config().arithmetic)
    }

    fn write_f32(values: &[f32], out: &mut [u8]) -> Result<()> {
        if out.len() != values.len() * 4 {
            return Err(Error::ShapeMismatch {
                what: "f32 output bytes",
                expected: values.len() * 4,
                actual: out.len(),
            });
        }
        for (chunk, v) in out.chunks_exact_mut(4).zip(values) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }
}

impl KvQuantBackend for ScalarBackend {
    type Buffer = Vec<u8>;

    fn name(&self) -> &'static str {
        "scalar"
    }

    fn capability(&self, _op: Operation, _codec: &Codec) -> Capability {
        Capability::Supported
    }

    fn upload(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        Ok(bytes.to_vec())
    }

    fn download(&self, buffer: &Vec<u8>) -> Result<Vec<u8>> {
        Ok(buffer.clone())
    }

    fn alloc(&self, bytes: usize) -> Result<Vec<u8>> {
        Ok(vec![0; bytes])
    }

    fn encode_keys(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Vec<u8>>,
        outliers: Option<&ChannelMask>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let rows = Self::input_rows(codec, &input)?;
        encode_key_blocks(codec, &rows, outliers, out)
    }

    fn decode_keys(
        &self,
        codec: &Codec,
        encoded: &Vec<u8>,
        blocks: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let encoded = whole_blocks(encoded, blocks, codec.key_block_bytes())?;
        let mut rows = vec![0.0f32; blocks * codec.block_elements()];
        decode_key_blocks(codec, encoded, &mut rows)?;
        Self::write_f32(&rows, out)
    }

    fn encode_values(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Vec<u8>>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let rows = Self::input_rows(codec, &input)?;
        encode_value_blocks(codec, &rows, out)
    }

    fn decode_values(
        &self,
        codec: &Codec,
        encoded: &Vec<u8>,
        blocks: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let encoded = whole_blocks(encoded, blocks, codec.value_block_bytes())?;
        let mut rows = vec![0.0f32; blocks * codec.block_elements()];
        decode_value_blocks(codec, encoded, &mut rows)?;
        Self::write_f32(&rows, out)
    }

    fn encode_values_masked(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Vec<u8>>,
        excluded: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let rows = Self::input_rows(codec, &input)?;
        encode_value_blocks_masked(codec, &rows, Some(excluded), out)
    }

    fn copy_bytes(
        &self,
        src: &Vec<u8>,
        src_offset: usize,
        dst: &mut Vec<u8>,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        let from = src
            .get(src_offset..src_offset + len)
            .ok_or(Error::ShapeMismatch {
                what: "copy source bytes",
                expected: src_offset + len,
                actual: src.len(),
            })?;
        write_into(dst, dst_offset, from)
    }

    fn write_bytes(&self, dst: &mut Vec<u8>, offset: usize, bytes: &[u8]) -> Result<()> {
        write_into(dst, offset, bytes)
    }

    fn attend(&self, codec: &Codec, args: AttentionArgs<'_, Vec<u8>>) -> Result<()> {
        attention::attend(codec, args)
    }
}

fn write_into(dst: &mut [u8], offset: usize, bytes: &[u8]) -> Result<()> {
    let actual = dst.len();
    dst.get_mut(offset..offset + bytes.len())
        .ok_or(Error::ShapeMismatch {
            what: "write destination bytes",
            expected: offset + bytes.len(),
            actual,
        })?
        .copy_from_slice(bytes);
    Ok(())
}

fn whole_blocks(encoded: &[u8], blocks: usize, block_bytes: usize) -> Result<&[u8]> {
    encoded
        .get(..blocks * block_bytes)
        .ok_or(Error::ShapeMismatch {
            what: "encoded bytes",
            expected: blocks * block_bytes,
            actual: encoded.len(),
        })
}
