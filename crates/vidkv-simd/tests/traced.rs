//! Outlier-token tracing (OTT) in the SIMD backend: the int8 kernel patches the traced tokens'
//! scores with exact dots (mixed keys), so does the f32 min/max kernel (ott2),
//! and damaged traced parts are typed errors at every level.

use vidkv_core::cache::{CacheConfig, KvCache, Salient};
use vidkv_core::{Codec, Error, GroupSize, HeadDim, KeyScheme, OutlierScope, QuantConfig, Scheme};
use vidkv_cpu::ScalarBackend;
use vidkv_simd::{HeadCache, Level, SimdBackend, attend_head, reference_attend};

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Keys with large channels and one token per block `spike` times larger than the rest.
fn keys(rng: &mut Rng, tokens: usize, d: usize, g: usize, spike: f32) -> Vec<f32> {
    (0..tokens * d)
        .map(|i| {
            let (t, c) = (i / d, i % d);
            let big = if c % 16 == 3 { 6.0 } else { 1.0 };
            let heavy = if t % g == (t / g * 5 + 2) % g {
                spike
            } else {
                1.0
            };
            (rng.f() * big + 0.3 * ((c as f32) * 0.7).sin()) * heavy
        })
        .collect()
}

fn traced(s: Scheme, d: usize, g: usize, slots: u8) -> Codec {
    Codec::new(QuantConfig {
        traced_tokens: slots,
        ..s.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap())
    })
    .unwrap()
}

fn encode(codec: &Codec, k: &[f32], v: &[f32]) -> (Vec<u8>, Vec<u8>) {
    let blocks = k.len() / codec.block_elements();
    let mut kb = vec![0u8; blocks * codec.key_block_bytes()];
    let mut vb = vec![0u8; blocks * codec.value_block_bytes()];
    let mask = match codec.config().keys {
        KeyScheme::Mixed(m) if m.scope == OutlierScope::Layer => {
            Some(vidkv_cpu::layer_outliers(codec, &[k]).unwrap())
        }
        _ => None,
    };
    vidkv_cpu::encode_key_blocks(codec, k, mask.as_ref(), &mut kb).unwrap();
    vidkv_cpu::encode_value_blocks(codec, v, &mut vb).unwrap();
    (kb, vb)
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Queries aligned with the spiked tokens so that those dominate the softmax: an unpatched
/// int8 score of a traced token would show up as a large error.
#[test]
fn mixed_key_kernels_patch_traced_scores() {
    for (s, d, g, slots, blocks, hq) in [
        (Scheme::Vidkv, 64, 32, 1, 9, 1),
        (Scheme::Vidkv, 128, 64, 3, 5, 7),
        (Scheme::Vidkv, 128, 128, 8, 3, 9),
        (Scheme::VidkvPaper, 80, 32, 2, 6, 4),
        (Scheme::Vidkv, 18, 64, 16, 2, 2),
    ] {
        let codec = traced(s, d, g, slots);
        let mut rng = Rng(d as u64 * 13 + slots as u64);
        let n = blocks * g;
        let k = keys(&mut rng, n, d, g, 6.0);
        let v: Vec<f32> = (0..n * d).map(|_| rng.f()).collect();
        let spike = &k[2 * d..3 * d];
        let q: Vec<f32> = (0..hq * d)
            .map(|i| spike[i % d] * 0.4 + rng.f() * 0.2)
            .collect();
        let (kb, vb) = encode(&codec, &k, &v);
        let cache = HeadCache {
            key_blocks: &kb,
            value_blocks: &vb,
            blocks,
            residual_keys: &[],
            residual_values: &[],
            residual_tokens: 0,
        };
        let mut want = vec![0.0f32; hq * d];
        reference_attend(&codec, &q, &cache, &mut want).unwrap();
        for level in Level::available() {
            let mut got = vec![0.0f32; hq * d];
            attend_head(level, &codec, &q, &cache, &mut got).unwrap();
            let e = rel(&got, &want);
            assert!(e < 0.04, "{level} {s:?} d={d} g={g} slots={slots}: {e}");
        }
    }
}

#[test]
fn damaged_traced_parts_are_corrupt_at_every_level() {
    let codec = traced(Scheme::Vidkv, 64, 32, 2);
    let (d, n) = (64, 3 * 32);
    let mut rng = Rng(4);
    let k = keys(&mut rng, n, d, 32, 4.0);
    let v: Vec<f32> = (0..n * d).map(|_| rng.f()).collect();
    let (kb, vb) = encode(&codec, &k, &v);
    let layout = *codec.traced_layout().unwrap();
    let at = codec.key_block_bytes() + layout.indices.offset;
    // (byte, value, expected error offset): index ≥ G, a repeated index, an infinite row value
    // (the high byte of the last f16 before the indices).
    for (at_byte, byte, offset) in [
        (at, 32u8, at),
        (at + 1, kb[at], at + 1),
        (at - 1, 0x7c, at - 2),
    ] {
        let mut bad = kb.clone();
        bad[at_byte] = byte;
        let cache = HeadCache {
            key_blocks: &bad,
            value_blocks: &vb,
            blocks: 3,
            residual_keys: &[],
            residual_values: &[],
            residual_tokens: 0,
        };
        for level in Level::available() {
            let mut out = vec![0.0f32; 2 * d];
            let r = attend_head(level, &codec, &[0.1; 128], &cache, &mut out);
            assert!(
                matches!(r, Err(Error::Corrupt { offset: o, .. }) if o == offset),
                "{level} byte {offset}: {r:?}"
            );
        }
    }
}

/// ott2 (per-channel keys) runs the f32 min/max kernel above the scalar level: its output equals
/// the scalar backend's up to f32 summation order (bit for bit at the scalar level).
#[test]
fn ott2_through_the_backend_matches_the_scalar_fused_kernel() {
    let (kv, qh, d, n) = (2, 6, 64, 300);
    for scheme in [Scheme::Ott2, Scheme::Vidkv] {
        let codec = traced(scheme, d, 32, 1);
        let mut rng = Rng(8);
        let k = keys(&mut rng, kv * n, d, 32, 5.0);
        let v: Vec<f32> = (0..kv * n * d).map(|_| rng.f()).collect();
        let q: Vec<f32> = (0..qh * d).map(|_| rng.f()).collect();
        let config = CacheConfig::new(codec, kv, qh);
        let mut simd = KvCache::new(SimdBackend::new(), config).unwrap();
        let mut scalar = KvCache::new(ScalarBackend, config).unwrap();
        let (a, b) = (simd.add_sequence().unwrap(), scalar.add_sequence().unwrap());
        simd.prefill(a, &k, &v, Salient::None).unwrap();
        scalar.prefill(b, &k, &v, Salient::None).unwrap();
        for h in 0..kv {
            assert_eq!(
                simd.key_blocks(a, h).unwrap(),
                scalar.key_blocks(b, h).unwrap()
            );
        }
        let (mut o1, mut o2) = (vec![0.0; q.len()], vec![0.0; q.len()]);
        simd.attend(a, &q, &mut o1).unwrap();
        scalar.attend(b, &q, &mut o2).unwrap();
        if SimdBackend::new().level() == Level::Scalar {
            assert_eq!(o1, o2, "{scheme:?}");
        } else if scheme == Scheme::Ott2 {
            assert!(rel(&o1, &o2) < 1e-5, "{scheme:?}: {}", rel(&o1, &o2));
        } else {
            assert!(rel(&o1, &o2) < 0.04, "{scheme:?}: {}", rel(&o1, &o2));
        }
    }
}
