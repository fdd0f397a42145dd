//! Sign-sketch key blocks (H1B-KV): `‖k_t‖` as f16 and the packed signs of `R·k_t`
//! ([`vidkv_core::sketch`]).

use alloc::vec;
use alloc::vec::Vec;

use vidkv_core::pack::write_f16s;
use vidkv_core::sketch::{Projection, read_norms, stored_norm};
use vidkv_core::{Codec, KeyLayout, Result};

/// Encodes one block of `[G, D]` key rows.
pub fn encode_block(codec: &Codec, projection: &Projection, rows: &[f32], block: &mut [u8]) {
    let KeyLayout::SignSketch { norms, signs, .. } = *codec.key_layout() else {
        unreachable!("sign-sketch keys have a sign-sketch layout")
    };
    let (d, rb) = (codec.head_dim(), projection.row_bytes());
    let mut scratch = Vec::new();
    for (t, row) in rows.chunks_exact(d).enumerate() {
        write_f16s([stored_norm(row)], &mut block[norms.offset + 2 * t..][..2]);
        projection.signs(row, &mut scratch, &mut block[signs.offset + t * rb..][..rb]);
    }
}

/// Decodes one block into `[G, D]` rows: each token's direction estimate `‖k‖·u/‖u‖`.
pub fn decode_block(
    codec: &Codec,
    projection: &Projection,
    block: &[u8],
    rows: &mut [f32],
) -> Result<()> {
    let KeyLayout::SignSketch { norms, signs, .. } = *codec.key_layout() else {
        unreachable!("sign-sketch keys have a sign-sketch layout")
    };
    let (d, g, rb) = (codec.head_dim(), codec.group(), projection.row_bytes());
    let mut n = vec![0.0f32; g];
    read_norms(&block[norms.range()], norms.offset, &mut n)?;
    let mut u = Vec::new();
    for (t, (row, &nt)) in rows.chunks_exact_mut(d).zip(&n).enumerate() {
        projection.direction(&block[signs.offset + t * rb..][..rb], nt, &mut u, row);
    }
    Ok(())
}
