//! Fused attention of every available level against exact f32 attention on the same bytes.

use vidkv_core::{
    Codec, GroupSize, HeadDim, KeyLayout, KeyScheme, LaneRule, MixedKeys, OutlierScope, Scheme,
    Transform,
};
use vidkv_simd::{HeadCache, Level, attend_head, reference_attend};

struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

/// Keys like trained models': a few channels much larger, a slowly varying offset.
fn keys(rng: &mut Rng, tokens: usize, d: usize) -> Vec<f32> {
    (0..tokens * d)
        .map(|i| {
            let c = i % d;
            let big = if c % 16 == 3 { 6.0 } else { 1.0 };
            rng.f() * big + 0.3 * ((c as f32) * 0.7).sin()
        })
        .collect()
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

fn f16_bytes(x: &[f32]) -> Vec<u8> {
    x.iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect()
}

fn rel(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

fn check(codec: &Codec, blocks: usize, residual: usize, hq: usize, seed: u64, tol: f64) {
    let d = codec.head_dim();
    let n = blocks * codec.group();
    let mut rng = Rng(seed);
    let k = keys(&mut rng, n + residual, d);
    let v: Vec<f32> = (0..(n + residual) * d).map(|_| rng.f()).collect();
    let q: Vec<f32> = (0..hq * d).map(|_| rng.f() * 1.5).collect();
    let (kb, vb) = encode(codec, &k[..n * d], &v[..n * d]);
    let (rk, rv) = (f16_bytes(&k[n * d..]), f16_bytes(&v[n * d..]));
    let cache = HeadCache {
        key_blocks: &kb,
        value_blocks: &vb,
        blocks,
        residual_keys: &rk,
        residual_values: &rv,
        residual_tokens: residual,
    };
    let mut want = vec![0.0f32; hq * d];
    reference_attend(codec, &q, &cache, &mut want).unwrap();
    for level in Level::available() {
        let mut got = vec![0.0f32; hq * d];
        attend_head(level, codec, &q, &cache, &mut got).unwrap();
        let e = rel(&got, &want);
        eprintln!(
            "{level} d={d} g={} hq={hq}: rel error {e:.4}",
            codec.group()
        );
        assert!(
            e < tol,
            "{level} d={d} g={} blocks={blocks} res={residual} hq={hq}: rel error {e}",
            codec.group()
        );
    }
}

fn codec(s: Scheme, d: usize, g: usize) -> Codec {
    Codec::new(s.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap())).unwrap()
}

#[test]
fn vidkv_attention_matches_reference_on_common_shapes() {
    for (d, g, blocks, res, hq) in [
        (128, 32, 40, 17, 7),
        (64, 32, 9, 0, 1),
        (128, 64, 5, 3, 4),
        (128, 128, 3, 0, 8),
        (80, 32, 6, 5, 3),
        (256, 32, 4, 2, 2),
        (16, 32, 3, 1, 9),
        (18, 64, 2, 0, 2),
    ] {
        check(
            &codec(Scheme::Vidkv, d, g),
            blocks,
            res,
            hq,
            d as u64 * 31 + 7,
            0.04,
        );
    }
}

#[test]
fn paper_compat_and_other_transforms() {
    check(&codec(Scheme::VidkvPaper, 128, 32), 12, 4, 7, 5, 0.04);
    for t in [Transform::Hadamard, Transform::Identity] {
        let mut c = Scheme::Vidkv.config(HeadDim::new(64).unwrap(), GroupSize::G32);
        c.keys = KeyScheme::Mixed(MixedKeys {
            transform: t,
            ..MixedKeys::DEFAULT
        });
        check(&Codec::new(c).unwrap(), 10, 3, 4, 11, 0.04);
    }
    let mut c = Scheme::Vidkv.config(HeadDim::new(96).unwrap(), GroupSize::G32);
    c.keys = KeyScheme::Mixed(MixedKeys {
        outlier_ratio: 0.3,
        lane_rule: LaneRule::PaperCompat,
        ..MixedKeys::DEFAULT
    });
    check(&Codec::new(c).unwrap(), 7, 0, 5, 12, 0.04);
}

/// KIVI / `pc2`: the scalar level decodes and computes exact attention; the SIMD levels run the
/// fused min/max kernel, which decodes `lo + code·step` in f32 where the normative decode rounds
/// to f16 (vidkv-cpu's attention docs: relative differences ~5e-4, tests allow 1e-2).
#[test]
fn baselines_match_exact_attention() {
    for s in [Scheme::Kivi2, Scheme::Pc2] {
        check(&codec(s, 64, 32), 4, 3, 2, 3, 1e-2);
    }
}

#[test]
fn residual_only_and_empty_cache() {
    check(&codec(Scheme::Vidkv, 64, 32), 0, 9, 3, 1, 1e-5);
    let c = codec(Scheme::Vidkv, 64, 32);
    let cache = HeadCache {
        key_blocks: &[],
        value_blocks: &[],
        blocks: 0,
        residual_keys: &[],
        residual_values: &[],
        residual_tokens: 0,
    };
    for level in Level::available() {
        let mut out = vec![1.0f32; 64];
        attend_head(level, &c, &[0.5; 64], &cache, &mut out).unwrap();
        assert!(out.iter().all(|&v| v == 0.0));
    }
}

#[test]
fn damaged_blocks_are_errors_not_panics() {
    let c = codec(Scheme::Vidkv, 64, 32);
    let d = 64;
    let n = 3 * 32;
    let mut rng = Rng(9);
    let k = keys(&mut rng, n, d);
    let v: Vec<f32> = (0..n * d).map(|_| rng.f()).collect();
    let (kb, vb) = encode(&c, &k, &v);
    let q = vec![0.3f32; 2 * d];
    for level in Level::available() {
        let KeyLayout::Mixed {
            lane_scales,
            outlier_params,
            ..
        } = *c.key_layout()
        else {
            unreachable!("vidkv keys are mixed")
        };
        let kbytes = c.key_block_bytes();
        for (which, off, byte) in [
            (0, 0, 0xFFu8),
            (1, vb.len() - 1, 250),
            (1, 1, 0xFC),
            // The second block of a pair (the 512-bit kernel reads blocks two at a time): a
            // negative lane scale, a negative outlier step, an infinite value scale.
            (0, kbytes + lane_scales.offset + 1, 0xBC),
            (0, kbytes + outlier_params.offset + 3, 0xBC),
            (1, vb.len() / 3 + 1, 0x7C),
        ] {
            let (mut kb2, mut vb2) = (kb.clone(), vb.clone());
            if which == 0 {
                kb2[off] = byte;
            } else {
                vb2[off] = byte;
            }
            let cache = HeadCache {
                key_blocks: &kb2,
                value_blocks: &vb2,
                blocks: 3,
                residual_keys: &[],
                residual_values: &[],
                residual_tokens: 0,
            };
            let mut out = vec![0.0f32; 2 * d];
            let r = attend_head(level, &c, &q, &cache, &mut out);
            assert!(
                matches!(r, Err(vidkv_core::Error::Corrupt { .. })),
                "{level}: {r:?}"
            );
        }
    }
}

#[test]
fn report_levels() {
    // Shows in `--nocapture` output which levels and extensions this run covered.
    for l in Level::available() {
        eprintln!("vidkv-simd level available: {l} ({})", l.extensions());
    }
    assert!(Level::available().any(|l| l == vidkv_simd::detect()));
}

#[test]
fn all_lanes_or_all_outliers() {
    for r in [0.0f32, 1.0, 0.1] {
        let mut c = Scheme::Vidkv.config(HeadDim::new(64).unwrap(), GroupSize::G64);
        c.keys = KeyScheme::Mixed(MixedKeys {
            outlier_ratio: r,
            ..MixedKeys::DEFAULT
        });
        check(&Codec::new(c).unwrap(), 4, 2, 3, 21, 0.04);
    }
}

/// H1B-KV: the popcount kernel at every level (scalar words, POPCNT, VPOPCNTDQ) against the
/// estimator in f64; only f32 summation differs.
#[test]
fn h1b_sketch_attention_matches_the_estimator() {
    for (d, g, blocks, res, hq) in [
        (128, 32, 40, 17, 7),
        (64, 32, 9, 0, 1),
        (128, 64, 5, 3, 4),
        (80, 128, 3, 2, 9),
        (256, 32, 4, 0, 2),
        (16, 32, 3, 1, 3),
    ] {
        check(
            &codec(Scheme::H1b, d, g),
            blocks,
            res,
            hq,
            d as u64 + 3,
            2e-5,
        );
    }
    check(&codec(Scheme::H1b, 64, 32), 0, 9, 3, 1, 1e-5);
}

#[test]
fn h1b_damaged_blocks_are_errors_not_panics() {
    let (c, d, n) = (codec(Scheme::H1b, 64, 32), 64, 3 * 32);
    let mut rng = Rng(9);
    let k = keys(&mut rng, n, d);
    let v: Vec<f32> = (0..n * d).map(|_| rng.f()).collect();
    let (kb, vb) = encode(&c, &k, &v);
    let q = vec![0.3f32; 2 * d];
    // A norm with the sign bit, a NaN norm, a non-finite value offset.
    for (which, off, byte) in [(0, 1, 0x80u8), (0, 2 * 31 + 1, 0x7F), (1, 1, 0xFC)] {
        let (mut kb2, mut vb2) = (kb.clone(), vb.clone());
        let target = if which == 0 { &mut kb2 } else { &mut vb2 };
        target[c.key_block_bytes() * usize::from(which == 0) + off] = byte;
        let cache = HeadCache {
            key_blocks: &kb2,
            value_blocks: &vb2,
            blocks: 3,
            residual_keys: &[],
            residual_values: &[],
            residual_tokens: 0,
        };
        for level in Level::available() {
            let mut out = vec![0.0f32; 2 * d];
            let r = attend_head(level, &c, &q, &cache, &mut out);
            assert!(
                matches!(r, Err(vidkv_core::Error::Corrupt { .. })),
                "{level} {which} {off}: {r:?}"
            );
        }
    }
}

/// Sign-sketch keys with values the popcount kernel does not fuse fall back to the estimator
/// reference (still the estimator, never `q·k̂`).
#[test]
fn sketch_keys_with_ternary_values_fall_back_to_the_estimator() {
    let mut c = Scheme::H1b.config(HeadDim::new(64).unwrap(), GroupSize::G32);
    c.values = vidkv_core::ValueScheme::Ternary {
        scale: vidkv_core::TernaryScale::LeastSquares,
    };
    check(&Codec::new(c).unwrap(), 5, 3, 4, 8, 1e-5);
}
