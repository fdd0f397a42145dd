//! XQuant configurations: layers with their own codes run the SIMD min/max kernel above the
//! scalar level (f32 summation-order differences from the scalar fused kernel); layers that
//! borrow codes are routed to the scalar backend's fused kernel, which works on the packed
//! blocks (same bytes in, same bytes out, at every level).

use vidkv_core::backend::{AttentionArgs, LenderBlocks};
use vidkv_core::{Codec, GroupSize, HeadDim, KvQuantBackend, Scheme};
use vidkv_cpu::{ScalarBackend, encode_key_blocks, encode_value_blocks};
use vidkv_simd::{Level, SimdBackend};

fn rows(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * (1.0 + (i % 64 % 5) as f32)
        })
        .collect()
}

fn encode(codec: &Codec, seed: u64, blocks: usize) -> (Vec<u8>, Vec<u8>) {
    let n = blocks * codec.block_elements();
    let mut k = vec![0u8; blocks * codec.key_block_bytes()];
    let mut v = vec![0u8; blocks * codec.value_block_bytes()];
    encode_key_blocks(codec, &rows(seed, n), None, &mut k).unwrap();
    encode_value_blocks(codec, &rows(seed + 1, n), &mut v).unwrap();
    (k, v)
}

fn run<B: KvQuantBackend<Buffer = Vec<u8>>>(
    backend: &B,
    codec: &Codec,
    own: &(Vec<u8>, Vec<u8>),
    lender: Option<&(Vec<u8>, Vec<u8>)>,
) -> Vec<u8> {
    let q: Vec<u8> = rows(77, 3 * 64)
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let residual: Vec<u8> = rows(5, 7 * 64)
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect();
    let mut out = vec![0u8; 3 * 64 * 4];
    backend
        .attend(
            codec,
            AttentionArgs {
                queries: &q,
                query_heads: 3,
                scale: 0.125,
                key_blocks: &own.0,
                value_blocks: &own.1,
                blocks: 4,
                salient: None,
                sinks: None,
                residual: Some(vidkv_core::backend::DenseRows {
                    keys: &residual,
                    values: &residual,
                    start: 0,
                    len: 7,
                    capacity: 7,
                }),
                out: &mut out,
                lender: lender.map(|l| LenderBlocks {
                    key_blocks: &l.0,
                    value_blocks: &l.1,
                }),
            },
        )
        .unwrap();
    out
}

fn floats(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn xquant_borrowing_layers_run_the_scalar_fused_kernel_at_every_level() {
    let codec =
        Codec::new(Scheme::Xquant.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap();
    let borrowing = codec.borrowing().unwrap();
    let lender = encode(&codec, 1, 4);
    let own = encode(&borrowing, 2, 4);
    let want_own = run(&ScalarBackend, &codec, &lender, None);
    let want_shared = run(&ScalarBackend, &borrowing, &own, Some(&lender));
    assert_ne!(want_own, want_shared);
    for level in [Level::Scalar, Level::Avx2, Level::Avx512, Level::Neon] {
        let Ok(simd) = SimdBackend::with_level(level) else {
            continue;
        };
        let got = floats(&run(&simd, &codec, &lender, None));
        let want = floats(&want_own);
        let err = got
            .iter()
            .zip(&want)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        assert!(err <= 2e-5 * scale, "{level:?}: {err}");
        assert_eq!(
            run(&simd, &borrowing, &own, Some(&lender)),
            want_shared,
            "{level:?}"
        );
    }
}
