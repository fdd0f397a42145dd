//! The SIMD encoders against the scalar backend: identical bytes, on every level this CPU runs
//! and on the portable [`Portable`] vectors (so the kernels are checked on any host).

use alloc::vec;
use alloc::vec::Vec;

use half::f16;
use vidkv_core::{
    Arithmetic, Codec, DType, GroupSize, HeadDim, HeadTensor, KeyScheme, KvQuantBackend, MixedKeys,
    OutlierScope, QuantConfig, Scheme, TernaryScale, Transform, ValueScheme,
};
use vidkv_cpu::ScalarBackend;

use super::simd::{Portable, Simd};
use super::*;
use crate::{Level, SimdBackend};

/// Keys with a few large channels, some exact zeros of both signs and repeated values.
fn input(tokens: usize, d: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    (0..tokens * d)
        .flat_map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let u = (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            let c = i % d;
            let x = match state % 23 {
                0 => 0.0,
                1 => -0.0,
                2 => 0.5,
                _ if c % 7 == 3 => u * 9.0,
                _ => u + 0.2 * (c as f32).sin(),
            };
            f16::from_f32(x).to_le_bytes()
        })
        .collect()
}

fn configs() -> Vec<QuantConfig> {
    let mut out = Vec::new();
    for (d, g) in [
        (128, GroupSize::G32),
        (64, GroupSize::G64),
        (18, GroupSize::G32),
        (80, GroupSize::G128),
    ] {
        let base = Scheme::Vidkv.config(HeadDim::new(d).unwrap(), g);
        for transform in [Transform::Fft, Transform::Hadamard, Transform::Identity] {
            for (r, scale) in [
                (0.5, TernaryScale::LeastSquares),
                (0.25, TernaryScale::MeanAbs),
                (0.0, TernaryScale::Unit),
            ] {
                for arithmetic in [Arithmetic::F32, Arithmetic::Reference] {
                    let mut c = base;
                    c.keys = KeyScheme::Mixed(MixedKeys {
                        outlier_ratio: r,
                        scope: OutlierScope::Block,
                        transform,
                        ..MixedKeys::DEFAULT
                    });
                    c.values = ValueScheme::Ternary { scale };
                    c.arithmetic = arithmetic;
                    if c.validate().is_ok() {
                        out.push(c);
                    }
                }
            }
        }
    }
    for (d, g) in [
        (128, GroupSize::G32),
        (18, GroupSize::G64),
        (80, GroupSize::G32),
    ] {
        for scheme in [Scheme::Pc2, Scheme::Kivi2, Scheme::Kivi4] {
            let mut c = scheme.config(HeadDim::new(d).unwrap(), g);
            out.push(c);
            c.arithmetic = Arithmetic::F32;
            c.values = ValueScheme::PerChannel {
                bits: vidkv_core::Bits::Four,
            };
            out.push(c);
        }
    }
    out
}

fn scalar(
    codec: &Codec,
    raw: &[u8],
    tokens: usize,
    keys: bool,
    excluded: Option<&[u8]>,
) -> Vec<u8> {
    let input = raw.to_vec();
    let t = HeadTensor {
        data: &input,
        dtype: DType::F16,
        tokens,
    };
    let bytes = if keys {
        codec.key_block_bytes()
    } else {
        codec.value_block_bytes()
    };
    let mut out = vec![0u8; tokens / codec.group() * bytes];
    match (keys, excluded) {
        (true, _) => ScalarBackend.encode_keys(codec, t, None, &mut out),
        (false, None) => ScalarBackend.encode_values(codec, t, &mut out),
        (false, Some(m)) => ScalarBackend.encode_values_masked(codec, t, m, &mut out),
    }
    .unwrap();
    out
}

#[test]
fn portable_kernels_match_the_scalar_backend_byte_for_byte() {
    let mut covered = 0;
    for config in configs() {
        let codec = Codec::new(config).unwrap();
        let (d, g) = (codec.head_dim(), codec.group());
        let tokens = 3 * g;
        let raw = input(tokens, d, d as u64 * 31 + g as u64);
        let mask: Vec<u8> = (0..tokens / 8)
            .map(|i| [0u8, 0x81, 0xff, 0x10][i % 4])
            .collect();
        let t = HeadTensor {
            data: &raw.to_vec(),
            dtype: DType::F16,
            tokens,
        };
        let src = Source::new(
            &codec,
            &t,
            tokens / g * codec.value_block_bytes(),
            codec.value_block_bytes(),
        )
        .unwrap();
        let vb = codec.value_block_bytes();
        for excluded in [None, Some(&mask[..])] {
            let mut got = vec![0u8; tokens / g * vb];
            let (ternary, affine) = (
                ValuePlan::new(&codec, Portable::N),
                AffinePlan::values(&codec, Portable::N)
                    .or_else(|| AffinePlan::per_token(&codec, Portable::N)),
            );
            // SAFETY: the portable vectors need no instruction set.
            let done = unsafe {
                match (ternary, affine) {
                    (Some(p), _) => run_values::<Portable>(&p, &src, excluded, vb, &mut got),
                    (None, Some(p)) => run_affine::<Portable>(&p, &src, excluded, vb, &mut got),
                    (None, None) => None,
                }
            };
            if done.is_some() {
                let want = scalar(&codec, &raw, tokens, false, excluded);
                let first = got.iter().zip(&want).position(|(a, b)| a != b);
                if let Some(i) = first {
                    eprintln!("got {:?} want {:?}", &got[i..i + 8], &want[i..i + 8]);
                }
                assert_eq!(
                    first,
                    None,
                    "{config:?} values, mask {excluded:?}: {} bytes",
                    got.len()
                );
            }
        }
        let kb = codec.key_block_bytes();
        let mut got = vec![0u8; tokens / g * kb];
        let (mixed, affine) = (
            KeyPlan::new(&codec, None),
            AffinePlan::keys(&codec, Portable::N),
        );
        // SAFETY: the portable vectors need no instruction set.
        let done = unsafe {
            match (mixed, affine) {
                (Some(p), _) => run_keys::<Portable>(&p, &src, kb, &mut got),
                (None, Some(p)) => run_affine::<Portable>(&p, &src, None, kb, &mut got),
                (None, None) => None,
            }
        };
        if done.is_some() {
            assert_eq!(
                got,
                scalar(&codec, &raw, tokens, true, None),
                "{config:?} keys"
            );
            covered += 1;
        }
    }
    assert!(
        covered >= 12,
        "only {covered} key configurations had a kernel"
    );
}

#[test]
fn every_level_matches_the_scalar_backend_byte_for_byte() {
    for level in Level::available().filter(|l| *l != Level::Scalar) {
        let backend = SimdBackend::with_level(level).unwrap();
        for config in configs() {
            let codec = Codec::new(config).unwrap();
            let (d, g) = (codec.head_dim(), codec.group());
            let tokens = 2 * g;
            let raw = input(tokens, d, 7 + d as u64);
            let data = raw.to_vec();
            let t = HeadTensor {
                data: &data,
                dtype: DType::F16,
                tokens,
            };
            let mut keys = vec![0u8; 2 * codec.key_block_bytes()];
            backend
                .encode_keys(&codec, t.clone(), None, &mut keys)
                .unwrap();
            assert_eq!(
                keys,
                scalar(&codec, &raw, tokens, true, None),
                "{level:?} {config:?} keys"
            );
            let mut values = vec![0u8; 2 * codec.value_block_bytes()];
            backend.encode_values(&codec, t, &mut values).unwrap();
            assert_eq!(
                values,
                scalar(&codec, &raw, tokens, false, None),
                "{level:?} {config:?} values"
            );
        }
    }
}

#[test]
fn pack_helpers_match_core() {
    let codes: Vec<u8> = (0..64u32).map(|i| (i * 7 % 4) as u8).collect();
    let (mut a, mut b) = ([0u8; 16], [0u8; 16]);
    keys::pack2(&codes, &mut a);
    vidkv_core::pack::pack_codes(2, &codes, &mut b);
    assert_eq!(a, b);
    let trits: Vec<i8> = (0..23i32).map(|i| (i * 5 % 3 - 1) as i8).collect();
    let mut digits: Vec<u8> = trits.iter().map(|&q| (q + 1) as u8).collect();
    digits.resize(23 + 8, 1);
    let (mut a, mut b) = ([0u8; 5], [0u8; 5]);
    values::pack_digits(&digits, &mut a);
    vidkv_core::pack::pack_trits(&trits, &mut b);
    assert_eq!(a, b);
}

#[test]
fn finite_check_finds_every_non_finite_f16() {
    let mut bytes: Vec<u8> = (0..37u16)
        .flat_map(|i| f16::from_f32(i as f32 - 18.5).to_le_bytes())
        .collect();
    assert!(f16_all_finite(&bytes));
    for bad in [f16::INFINITY, f16::NEG_INFINITY, f16::NAN] {
        for at in [0, 5, 36] {
            let mut b = bytes.clone();
            b[2 * at..2 * at + 2].copy_from_slice(&bad.to_le_bytes());
            assert!(!f16_all_finite(&b), "{bad} at {at}");
        }
    }
    bytes[10..12].copy_from_slice(&f16::MAX.to_le_bytes());
    assert!(f16_all_finite(&bytes));
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn every_level_decodes_like_the_scalar_backend() {
    for level in Level::available().filter(|l| *l != Level::Scalar) {
        let backend = SimdBackend::with_level(level).unwrap();
        for config in configs() {
            let codec = Codec::new(config).unwrap();
            let (d, g) = (codec.head_dim(), codec.group());
            let tokens = 2 * g;
            let raw = input(tokens, d, 11 + d as u64);
            for keys in [true, false] {
                let encoded = scalar(&codec, &raw, tokens, keys, None);
                let mut want = vec![0u8; tokens * d * 4];
                let mut got = want.clone();
                if keys {
                    ScalarBackend
                        .decode_keys(&codec, &encoded, 2, &mut want)
                        .unwrap();
                    backend.decode_keys(&codec, &encoded, 2, &mut got).unwrap();
                } else {
                    ScalarBackend
                        .decode_values(&codec, &encoded, 2, &mut want)
                        .unwrap();
                    backend
                        .decode_values(&codec, &encoded, 2, &mut got)
                        .unwrap();
                }
                let (want, got) = (f32s(&want), f32s(&got));
                let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                for (i, (w, x)) in want.iter().zip(&got).enumerate() {
                    assert!(
                        (w - x).abs() <= 1e-6 * scale,
                        "{level:?} {config:?} keys {keys} [{i}]: {x} vs {w}"
                    );
                }
                // A damaged block is reported exactly as the scalar backend reports it.
                let mut bad = encoded.clone();
                let last = bad.len() - 1;
                if keys {
                    bad[0] = 0xff;
                    bad[1] = 0xff;
                } else {
                    bad[last] = 250;
                }
                let mut out = vec![0u8; tokens * d * 4];
                let (a, b) = if keys {
                    (
                        ScalarBackend.decode_keys(&codec, &bad, 2, &mut out.clone()),
                        backend.decode_keys(&codec, &bad, 2, &mut out),
                    )
                } else {
                    (
                        ScalarBackend.decode_values(&codec, &bad, 2, &mut out.clone()),
                        backend.decode_values(&codec, &bad, 2, &mut out),
                    )
                };
                assert_eq!(a, b, "{level:?} {config:?} keys {keys}");
            }
        }
    }
}

#[test]
fn non_finite_input_reports_the_scalar_error() {
    let codec =
        Codec::new(Scheme::Vidkv.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap();
    let mut raw = input(64, 64, 3);
    raw[2 * 2500..2 * 2500 + 2].copy_from_slice(&f16::NAN.to_le_bytes());
    let data = raw.to_vec();
    for level in Level::available() {
        let backend = SimdBackend::with_level(level).unwrap();
        let t = HeadTensor {
            data: &data,
            dtype: DType::F16,
            tokens: 64,
        };
        let mut out = vec![0u8; 2 * codec.key_block_bytes()];
        let got = backend.encode_keys(&codec, t.clone(), None, &mut out);
        assert_eq!(
            got,
            Err(vidkv_core::Error::NonFinite { index: 2500 }),
            "{level:?}"
        );
        let mut out = vec![0u8; 2 * codec.value_block_bytes()];
        let got = backend.encode_values(&codec, t, &mut out);
        assert_eq!(
            got,
            Err(vidkv_core::Error::NonFinite { index: 2500 }),
            "{level:?}"
        );
    }
}

#[test]
fn kernels_cover_the_presets() {
    for level in Level::available().filter(|l| *l != Level::Scalar) {
        for scheme in [
            Scheme::Vidkv,
            Scheme::VidkvStp,
            Scheme::Pc2,
            Scheme::Kivi2,
            Scheme::Kivi4,
        ] {
            let codec =
                Codec::new(scheme.config(HeadDim::new(128).unwrap(), GroupSize::G32)).unwrap();
            let data = input(64, 128, 5);
            let t = HeadTensor {
                data: &data,
                dtype: DType::F16,
                tokens: 64,
            };
            let mut keys = vec![0u8; 2 * codec.key_block_bytes()];
            let mut values = vec![0u8; 2 * codec.value_block_bytes()];
            assert!(
                encode_keys(level, &codec, &t, None, &mut keys).is_some(),
                "{level:?} {scheme:?} keys"
            );
            assert!(
                encode_values(level, &codec, &t, None, &mut values).is_some(),
                "{level:?} {scheme:?} values"
            );
        }
    }
}
