//! The streaming cache ([`vidkv_core::cache::KvCache`]) over the SIMD backend, through the
//! backend trait: same blocks as the scalar backend, attention within the SIMD tolerance, and
//! salient-token caches (scalar kernel) exact.

use vidkv_core::cache::{CacheConfig, KvCache, Salient};
use vidkv_core::{Codec, GroupSize, HeadDim, Scheme};
use vidkv_cpu::ScalarBackend;
use vidkv_simd::SimdBackend;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed);
            (x >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        })
        .collect()
}

fn rel(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = b.iter().map(|y| y * y).sum();
    (num / den).sqrt()
}

#[test]
fn simd_backend_runs_the_cache_through_the_trait() {
    let (kv, qh, d, n) = (2, 14, 64, 700);
    let codec = Codec::new(Scheme::Vidkv.config(HeadDim::new(d).unwrap(), GroupSize::G32)).unwrap();
    let k = data(kv * n * d, 1);
    let v = data(kv * n * d, 2);
    let q = data(qh * d, 3);
    for salient in [false, true] {
        let idx: Vec<usize> = (0..n).filter(|t| t % 4 == 1).collect();
        let marks = if salient {
            Salient::Indices(&idx)
        } else {
            Salient::None
        };
        let config = CacheConfig::new(codec, kv, qh);
        let mut simd = KvCache::new(SimdBackend::new(), config).unwrap();
        let mut scalar = KvCache::new(ScalarBackend, config).unwrap();
        let (a, b) = (simd.add_sequence().unwrap(), scalar.add_sequence().unwrap());
        simd.prefill(a, &k, &v, marks).unwrap();
        scalar.prefill(b, &k, &v, marks).unwrap();
        for h in 0..kv {
            assert_eq!(
                simd.key_blocks(a, h).unwrap(),
                scalar.key_blocks(b, h).unwrap()
            );
            assert_eq!(
                simd.value_blocks(a, h).unwrap(),
                scalar.value_blocks(b, h).unwrap()
            );
        }
        let (mut o1, mut o2) = (vec![0.0; q.len()], vec![0.0; q.len()]);
        simd.attend(a, &q, &mut o1).unwrap();
        scalar.attend(b, &q, &mut o2).unwrap();
        let tolerance = if salient { 1e-6 } else { 0.04 };
        assert!(
            rel(&o1, &o2) < tolerance,
            "salient {salient}: {}",
            rel(&o1, &o2)
        );
    }
}

/// H1B-KV through the streaming cache: the SIMD backend's fused popcount kernel against the
/// scalar backend's, same blocks, f32 summation differences only.
#[test]
fn h1b_cache_simd_matches_scalar() {
    let (kv, qh, d, n) = (2, 14, 128, 700);
    let codec = Codec::new(Scheme::H1b.config(HeadDim::new(d).unwrap(), GroupSize::G32)).unwrap();
    let (k, v, q) = (data(kv * n * d, 4), data(kv * n * d, 5), data(qh * d, 6));
    let config = CacheConfig::new(codec, kv, qh);
    let mut simd = KvCache::new(SimdBackend::new(), config).unwrap();
    let mut scalar = KvCache::new(ScalarBackend, config).unwrap();
    let (a, b) = (simd.add_sequence().unwrap(), scalar.add_sequence().unwrap());
    simd.prefill(a, &k, &v, Salient::None).unwrap();
    scalar.prefill(b, &k, &v, Salient::None).unwrap();
    let (mut o1, mut o2) = (vec![0.0; q.len()], vec![0.0; q.len()]);
    simd.attend(a, &q, &mut o1).unwrap();
    scalar.attend(b, &q, &mut o2).unwrap();
    assert!(rel(&o1, &o2) < 1e-5, "{}", rel(&o1, &o2));
}
