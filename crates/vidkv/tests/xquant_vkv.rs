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

fn f16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|&v| f16::from_f32(v).to_le_bytes())
        .collect()
}

/// `vidkv eval --cross-layer`: a layer that is an increasing affine map of its predecessor
/// (same codes) loses nothing by borrowing; an unrelated one does, and the bits drop to the
/// parameters.
#[test]
fn cross_layer_eval_reports_sharing_per_layer() {
    use safetensors::{Dtype, tensor::TensorView};
    let (h, t, d, nq) = (2, 256, 64, 32);
    let l0k = rows(1, h * t * d);
    let l0v = rows(2, h * t * d);
    let l1k: Vec<f32> = l0k.iter().map(|x| 0.5 * x + 0.25).collect();
    let l1v: Vec<f32> = l0v.iter().map(|x| 2.0 * x).collect();
    let (l2k, l2v) = (rows(3, h * t * d), rows(4, h * t * d));
    let (l3k, l3v) = (rows(5, h * t * d), rows(6, h * t * d));
    let q = rows(7, 2 * h * nq * d);
    let mut tensors = vec![];
    for (l, k, v) in [
        (0, &l0k, &l0v),
        (1, &l1k, &l1v),
        (2, &l2k, &l2v),
        (3, &l3k, &l3v),
    ] {
        tensors.push((format!("k_post.{l}"), vec![h, t, d], f16_bytes(k)));
        tensors.push((format!("v.{l}"), vec![h, t, d], f16_bytes(v)));
        tensors.push((format!("q_post.{l}"), vec![2 * h, nq, d], f16_bytes(&q)));
    }
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::F16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("vidkv-xquant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("adjacent.safetensors");
    std::fs::write(&path, safetensors::serialize(views, &None).unwrap()).unwrap();
    let file = vidkv::TensorFile::read(&path).unwrap();
    let attn = vidkv::attn_eval::AttnOptions {
        residual: 64,
        sinks: 1,
    };
    let rows = vidkv::cross_layer::evaluate_cross_layer(
        &ScalarBackend,
        &file,
        Scheme::Xquant,
        &vidkv::SchemeOptions::default(),
        0,
        Some(&attn),
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).ok();
    let lenders: Vec<Option<u32>> = rows.iter().map(|r| r.lender).collect();
    assert_eq!(lenders, [None, Some(0), None, Some(2)]);
    let (same, unrelated) = (&rows[1], &rows[3]);
    for r in [same, unrelated] {
        assert_eq!((r.code_bits, r.code_bits_shared), (1.5, 0.0));
        assert_eq!((r.bits, r.bits_shared), (2.5, 1.0));
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 0.02 * b + 1e-3;
    assert!(close(same.key_error_shared, same.key_error), "{same:?}");
    assert!(close(same.value_error_shared, same.value_error), "{same:?}");
    let (a, b) = (same.attn_error.unwrap(), same.attn_error_shared.unwrap());
    assert!(close(b, a), "{a} vs {b}");
    assert!(
        unrelated.key_error_shared > 1.5 * unrelated.key_error,
        "{unrelated:?}"
    );
    assert!(
        unrelated.value_error_shared > 1.5 * unrelated.value_error,
        "{unrelated:?}"
    );
}
