//! `vidkv unpack` / `inspect` of a `.vkv` file with a layer that borrows its codes.

use half::f16;
use vidkv::ScalarBackend;
use vidkv_core::container::{ContainerWriter, HeadSection, LayerInput};
use vidkv_core::{Codec, GroupSize, HeadDim, Scheme};

fn rows(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

#[test]
fn unpack_decodes_a_borrowing_layer_with_its_lenders_codes() {
    let codec =
        Codec::new(Scheme::Xquant.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap();
    let borrowing = codec.borrowing().unwrap();
    let n = 2 * 32 * 64;
    let enc = |c: &Codec, seed| {
        let mut k = vec![0u8; 2 * c.key_block_bytes()];
        let mut v = vec![0u8; 2 * c.value_block_bytes()];
        vidkv_cpu::encode_key_blocks(c, &rows(seed, n), None, &mut k).unwrap();
        vidkv_cpu::encode_value_blocks(c, &rows(seed + 1, n), &mut v).unwrap();
        (k, v)
    };
    let (lk, lv) = enc(&codec, 1);
    let (bk, bv) = enc(&borrowing, 3);
    let head = |k, v| HeadSection {
        key_blocks: k,
        value_blocks: v,
        tail_keys: &[],
        tail_values: &[],
    };
    let lender_heads = [head(&lk, &lv)];
    let own_heads = [head(&bk, &bv)];
    let layer = |name, value, heads| LayerInput {
        key_name: name,
        value_name: value,
        blocks: 2,
        tail_tokens: 0,
        outliers: None,
        heads,
    };
    let mut w = ContainerWriter::new(&codec);
    w.add_layer(&layer("k_post.0", "v.0", &lender_heads))
        .unwrap();
    w.add_borrowing_layer(&layer("k_post.1", "v.1", &own_heads), 0)
        .unwrap();
    let bytes = w.finish();

    let info = vidkv::vkv::inspect(&bytes, "t").unwrap();
    assert_eq!(info.layers[1].lender, Some(0));
    let out = vidkv::vkv::unpack(&ScalarBackend, &bytes, "t").unwrap();
    let st = safetensors::SafeTensors::deserialize(&out).unwrap();
    let mut want = vec![0.0f32; n];
    vidkv_cpu::decode_borrowed_key_blocks(&borrowing, &codec, &bk, &lk, &mut want).unwrap();
    let got: Vec<f32> = st
        .tensor("k_post.1")
        .unwrap()
        .data()
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect();
    let want16: Vec<f32> = want.iter().map(|&x| f16::from_f32(x).to_f32()).collect();
    assert_eq!(got, want16);
}
