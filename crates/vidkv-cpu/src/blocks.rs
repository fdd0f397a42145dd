//! Shape checks and block iteration shared by the key and value codecs.

use vidkv_core::{AffineParams, Codec, Error, Result};

use crate::affine;
use crate::convert::check_finite;

/// Validated geometry of one encode or decode call: `blocks` blocks of `elements` values and
/// `bytes` encoded bytes each.
#[derive(Debug, Clone, Copy)]
pub struct BlockIo {
    elements: usize,
    bytes: usize,
}

impl BlockIo {
    /// Checks an encode call: whole blocks of finite input and an output of the exact size.
    pub fn for_encode(
        codec: &Codec,
        input: &[f32],
        out_len: usize,
        block_bytes: usize,
    ) -> Result<Self> {
        let elements = codec.block_elements();
        if !input.len().is_multiple_of(elements) {
            return Err(Error::ShapeMismatch {
                what: "input elements (whole blocks of G tokens × head_dim)",
                expected: input.len() / elements * elements,
                actual: input.len(),
            });
        }
        let blocks = input.len() / elements;
        if out_len != blocks * block_bytes {
            return Err(Error::ShapeMismatch {
                what: "encoded output bytes",
                expected: blocks * block_bytes,
                actual: out_len,
            });
        }
        check_finite(input)?;
        Ok(Self {
            elements,
            bytes: block_bytes,
        })
    }

    /// Checks a decode call: whole encoded blocks and an output of the exact size.
    pub fn for_decode(
        codec: &Codec,
        encoded_len: usize,
        block_bytes: usize,
        out_len: usize,
    ) -> Result<Self> {
        if !encoded_len.is_multiple_of(block_bytes) {
            return Err(Error::ShapeMismatch {
                what: "encoded bytes (whole blocks)",
                expected: encoded_len / block_bytes * block_bytes,
                actual: encoded_len,
            });
        }
        let elements = codec.block_elements();
        let blocks = encoded_len / block_bytes;
        if out_len != blocks * elements {
            return Err(Error::ShapeMismatch {
                what: "decoded output elements",
                expected: blocks * elements,
                actual: out_len,
            });
        }
        Ok(Self {
            elements,
            bytes: block_bytes,
        })
    }

    /// Pairs of (input rows, output block).
    pub fn blocks<'a>(
        &self,
        input: &'a [f32],
        out: &'a mut [u8],
    ) -> impl Iterator<Item = (&'a [f32], &'a mut [u8])> {
        input
            .chunks_exact(self.elements)
            .zip(out.chunks_exact_mut(self.bytes))
    }

    /// Pairs of (encoded block, output rows).
    pub fn blocks_mut<'a>(
        &self,
        encoded: &'a [u8],
        out: &'a mut [f32],
    ) -> impl Iterator<Item = (&'a [u8], &'a mut [f32])> {
        encoded
            .chunks_exact(self.bytes)
            .zip(out.chunks_exact_mut(self.elements))
    }

    /// Turns a block-relative corruption offset into an offset in the whole encoded buffer.
    pub fn locate(&self, error: Error, block: usize) -> Error {
        match error {
            Error::Corrupt { what, offset } => Error::Corrupt {
                what,
                offset: block * self.bytes + offset,
            },
            other => other,
        }
    }
}

const PARAMS: usize = core::mem::size_of::<AffineParams>();

/// Writes parameter `i` of a params section.
pub fn write_params(section: &mut [u8], i: usize, p: AffineParams) {
    let out = &mut section[i * PARAMS..][..PARAMS];
    out[..2].copy_from_slice(&p.lo.to_le_bytes());
    out[2..].copy_from_slice(&p.step.to_le_bytes());
}

/// Reads parameter `i` of a params section that starts at `section_offset` in its block,
/// rejecting values no encoder writes.
pub fn read_params(section: &[u8], i: usize, section_offset: usize) -> Result<AffineParams> {
    let b = &section[i * PARAMS..][..PARAMS];
    let p = AffineParams {
        lo: half::f16::from_le_bytes([b[0], b[1]]),
        step: half::f16::from_le_bytes([b[2], b[3]]),
    };
    if affine::plausible(p) {
        Ok(p)
    } else {
        Err(Error::Corrupt {
            what: "affine parameters not finite or step negative",
            offset: section_offset + i * PARAMS,
        })
    }
}
