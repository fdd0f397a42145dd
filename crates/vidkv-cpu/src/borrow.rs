//! Cross-layer code sharing (XQuant): a borrowing layer's blocks hold only their parameter
//! sections; the codes come from the lender layer's block of the same index.
//!
//! A borrowing block and the lender's block are **spliced** into one full block (the
//! borrower's parameters followed by the lender's code bytes) and decoded or attended with
//! the owning codec; the splice costs one copy of a block, never a decode of the cache.

use alloc::vec;
use alloc::vec::Vec;

use vidkv_core::{Codec, Error, Result, Section};

use crate::{decode_key_blocks, decode_value_blocks};

/// Which half of a layer's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Half {
    /// Key blocks.
    Keys,
    /// Value blocks.
    Values,
}

impl Half {
    /// The parameter section (kept by a borrower) and the full block size of the owning codec.
    pub fn sections(self, codec: &Codec) -> (Section, usize) {
        let full = codec.owning();
        match self {
            Half::Keys => (codec.key_params(), full.key_block_bytes()),
            Half::Values => (codec.value_params(), full.value_block_bytes()),
        }
    }
}

/// Checks a borrower's parameter-only blocks against the lender's full blocks: compatible
/// codecs and the same block count. Returns that count.
pub fn check_pair(
    codec: &Codec,
    lender: &Codec,
    half: Half,
    own: usize,
    lent: usize,
) -> Result<usize> {
    codec.check_lender(lender)?;
    let (params, full) = half.sections(codec);
    if !own.is_multiple_of(params.len) || !lent.is_multiple_of(full) {
        return Err(Error::ShapeMismatch {
            what: "borrowed/lent bytes (whole blocks)",
            expected: own / params.len * params.len,
            actual: own,
        });
    }
    let blocks = own / params.len;
    if lent / full != blocks {
        return Err(Error::ShapeMismatch {
            what: "lender blocks (the borrower's block count)",
            expected: blocks * full,
            actual: lent,
        });
    }
    Ok(blocks)
}

pub use vidkv_core::layout::splice_borrowed as splice;

/// Full blocks of a borrowing layer (its parameters, the lender's codes), for the owning codec.
pub fn splice_blocks(
    codec: &Codec,
    lender: &Codec,
    half: Half,
    own: &[u8],
    lent: &[u8],
) -> Result<Vec<u8>> {
    let blocks = check_pair(codec, lender, half, own.len(), lent.len())?;
    let (params, full) = half.sections(codec);
    let mut out = vec![0u8; blocks * full];
    for ((o, l), dst) in own
        .chunks_exact(params.len)
        .zip(lent.chunks_exact(full))
        .zip(out.chunks_exact_mut(full))
    {
        splice(params, o, l, dst);
    }
    Ok(out)
}

/// Decodes a borrowing layer's key blocks (`own`, parameter sections) with the lender's key
/// blocks `lent` (same configuration and block count): `lo_b + code_lender·step_b`.
pub fn decode_borrowed_key_blocks(
    codec: &Codec,
    lender: &Codec,
    own: &[u8],
    lent: &[u8],
    out: &mut [f32],
) -> Result<()> {
    let full = splice_blocks(codec, lender, Half::Keys, own, lent)?;
    decode_key_blocks(&codec.owning(), &full, out)
}

/// Decodes a borrowing layer's value blocks with the lender's value blocks.
pub fn decode_borrowed_value_blocks(
    codec: &Codec,
    lender: &Codec,
    own: &[u8],
    lent: &[u8],
    out: &mut [f32],
) -> Result<()> {
    let full = splice_blocks(codec, lender, Half::Values, own, lent)?;
    decode_value_blocks(&codec.owning(), &full, out)
}

/// The parameter sections of full blocks (what a borrowing encoder keeps).
pub fn params_of(params: Section, full: usize, blocks: &[u8], out: &mut [u8]) {
    for (src, dst) in blocks
        .chunks_exact(full)
        .zip(out.chunks_exact_mut(params.len))
    {
        dst.copy_from_slice(&src[params.range()]);
    }
}

/// Encodes the parameter-only blocks of a borrowing codec: `encode` writes full blocks with the
/// owning codec (the layer's own min/max parameters and codes), of which only the parameter
/// sections are kept in `out`.
pub fn encode_params_only(
    codec: &Codec,
    half: Half,
    out: &mut [u8],
    encode: impl FnOnce(&Codec, &mut [u8]) -> Result<()>,
) -> Result<()> {
    let (params, full) = half.sections(codec);
    if !out.len().is_multiple_of(params.len) {
        return Err(Error::ShapeMismatch {
            what: "encoded output bytes (whole parameter-only blocks)",
            expected: out.len() / params.len * params.len,
            actual: out.len(),
        });
    }
    let mut blocks = vec![0u8; out.len() / params.len * full];
    encode(&codec.owning(), &mut blocks)?;
    params_of(params, full, &blocks, out);
    Ok(())
}

/// The error of decoding a borrowing codec's blocks without the lender's.
pub fn needs_lender() -> Error {
    Error::InvalidConfig {
        reason: "a layer that borrows its codes decodes with its lender's blocks (decode_borrowed_*)",
    }
}
