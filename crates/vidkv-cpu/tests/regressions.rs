//! Regressions found by the conformance suite and the fuzzers.

use half::f16;
use vidkv_core::{Codec, GroupSize, HeadDim, Scheme};
use vidkv_cpu::{decode_key_blocks, decode_value_blocks, encode_key_blocks};

/// Large keys make the unnormalised DFT exceed the f16 range: the lane scale used to be written
/// as infinity, which the decoder (rightly) rejects, so the encoder produced undecodable blocks.
#[test]
fn lane_scales_saturate_instead_of_becoming_infinite() {
    let codec =
        Codec::new(Scheme::Vidkv.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap();
    // Every channel at 30000: the DC lane of 32 normal channels sums to 960000.
    let x = vec![30000.0f32; 32 * 64];
    let mut enc = vec![0u8; codec.key_block_bytes()];
    encode_key_blocks(&codec, &x, None, &mut enc).unwrap();
    let mut dec = vec![0.0f32; x.len()];
    decode_key_blocks(&codec, &enc, &mut dec).expect("own bytes decode");
    assert!(dec.iter().all(|v| v.is_finite()));
}

/// Under reference arithmetic `f16(f16(code·step) + lo)` overflowed to infinity for parameters
/// no encoder writes (damaged data); decoding now saturates to ±65504 like the encoder does.
#[test]
fn reference_affine_decode_never_produces_infinity() {
    let codec = Codec::new(Scheme::Pc2.config(HeadDim::new(16).unwrap(), GroupSize::G32)).unwrap();
    let mut block = vec![0xFFu8; codec.value_block_bytes()];
    for c in 0..16 {
        let p = &mut block[4 * c..4 * c + 4];
        p[..2].copy_from_slice(&f16::from_f32(60000.0).to_le_bytes());
        p[2..].copy_from_slice(&f16::from_f32(60000.0).to_le_bytes());
    }
    let mut dec = vec![0.0f32; codec.block_elements()];
    decode_value_blocks(&codec, &block, &mut dec).unwrap();
    assert!(dec.iter().all(|v| *v == 65504.0), "{:?}", &dec[..4]);
}
