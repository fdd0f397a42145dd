//! Hand-worked and property-style checks of every scalar quantizer.

use half::f16;
use vidkv_core::{
    Arithmetic, Bits, ChannelMask, Codec, Error, GroupSize, HeadDim, KeyScheme, LaneRule,
    MixedKeys, OutlierScope, QuantConfig, Scheme, TernaryScale, Transform, ValueScheme,
};
use vidkv_cpu::transform::LaneTransform;
use vidkv_cpu::{
    decode_key_blocks, decode_value_blocks, encode_key_blocks, encode_value_blocks, layer_outliers,
};

/// Deterministic pseudo-random numbers (xorshift), so tests need no extra crates.
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    /// Keys like the real data: a few channels much larger than the rest, a heavy first token.
    fn keys(&mut self, tokens: usize, d: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(tokens * d);
        for t in 0..tokens {
            for c in 0..d {
                let outlier = if c % 16 == 3 { 8.0 } else { 1.0 };
                let heavy = if t == 0 { 4.0 } else { 1.0 };
                v.push(self.next_f32() * outlier * heavy + 0.1 * c as f32 / d as f32);
            }
        }
        v
    }
    /// Values like the real data: flatter, channel scales within 2.5×.
    fn values(&mut self, tokens: usize, d: usize) -> Vec<f32> {
        (0..tokens * d)
            .map(|i| self.next_f32() * (1.0 + 1.5 * ((i % d) % 5) as f32 / 4.0))
            .collect()
    }
}

fn config(
    d: usize,
    g: usize,
    keys: KeyScheme,
    values: ValueScheme,
    arithmetic: Arithmetic,
) -> Codec {
    Codec::new(QuantConfig::new(
        HeadDim::new(d).unwrap(),
        GroupSize::new(g).unwrap(),
        keys,
        values,
        arithmetic,
    ))
    .unwrap()
}

fn mixed(transform: Transform, lane_rule: LaneRule, scope: OutlierScope) -> KeyScheme {
    KeyScheme::Mixed(MixedKeys {
        outlier_ratio: 0.5,
        scope,
        transform,
        lane_rule,
    })
}

const TERNARY_LS: ValueScheme = ValueScheme::Ternary {
    scale: TernaryScale::LeastSquares,
};

fn roundtrip_keys(codec: &Codec, x: &[f32], mask: Option<&ChannelMask>) -> (Vec<u8>, Vec<f32>) {
    let blocks = x.len() / codec.block_elements();
    let mut enc = vec![0u8; blocks * codec.key_block_bytes()];
    encode_key_blocks(codec, x, mask, &mut enc).unwrap();
    let mut dec = vec![0.0; x.len()];
    decode_key_blocks(codec, &enc, &mut dec).unwrap();
    (enc, dec)
}

fn roundtrip_values(codec: &Codec, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let blocks = x.len() / codec.block_elements();
    let mut enc = vec![0u8; blocks * codec.value_block_bytes()];
    encode_value_blocks(codec, x, &mut enc).unwrap();
    let mut dec = vec![0.0; x.len()];
    decode_value_blocks(codec, &enc, &mut dec).unwrap();
    (enc, dec)
}

fn rel_error(x: &[f32], y: &[f32]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let den: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn mixed_identity_keys_hand_worked() {
    // D = 16, k = 8: channels 0..8 get range 10, channels 8..16 range 1 (signs alternate).
    let (d, g) = (16, 32);
    let codec = config(
        d,
        g,
        mixed(
            Transform::Identity,
            LaneRule::Symmetric,
            OutlierScope::Block,
        ),
        TERNARY_LS,
        Arithmetic::F32,
    );
    let x: Vec<f32> = (0..g * d)
        .map(|i| {
            let (t, c) = (i / d, i % d);
            let sign = if (t + c) % 2 == 0 { 1.0 } else { -1.0 };
            if c < 8 {
                (t % 4) as f32 * 10.0 / 3.0
            } else {
                sign * 0.5
            }
        })
        .collect();
    let (enc, dec) = roundtrip_keys(&codec, &x, None);
    assert_eq!(
        ChannelMask::read(&enc[..4], d, 8).unwrap(),
        ChannelMask::from_channels(0..8)
    );
    for (i, (&a, &b)) in x.iter().zip(&dec).enumerate() {
        // outliers: 4 levels exactly representable up to f16 rounding of the step;
        // lanes: ±0.5 with mean |z| = 0.5, exact.
        assert!((a - b).abs() < 5e-3, "element {i}: {a} vs {b}");
    }
}

#[test]
fn paper_compat_equals_two_sided_reference_reconstruction() {
    let (d, g) = (64, 32);
    let codec = config(
        d,
        g,
        mixed(Transform::Fft, LaneRule::PaperCompat, OutlierScope::Block),
        TERNARY_LS,
        Arithmetic::F32,
    );
    let x = Rng(7).keys(g, d);
    let (enc, dec) = roundtrip_keys(&codec, &x, None);
    let mask = ChannelMask::read(&enc[..8], d, 32).unwrap();
    let normals: Vec<usize> = mask.normals(d).collect();
    let m = normals.len();
    // Reference: full two-sided spectrum, every re/im quantized to bit·s, s = f16(mean |.|).
    let spectra: Vec<Vec<(f64, f64)>> = (0..g)
        .map(|t| {
            (0..m)
                .map(|k| {
                    normals
                        .iter()
                        .enumerate()
                        .fold((0.0, 0.0), |(re, im), (n, &c)| {
                            let a = -2.0 * std::f64::consts::PI * (k * n) as f64 / m as f64;
                            let v = f64::from(x[t * d + c]);
                            (re + v * a.cos(), im + v * a.sin())
                        })
                })
                .collect()
        })
        .collect();
    let quant = |vals: Vec<f64>| -> Vec<f64> {
        let s = f64::from(
            f16::from_f64(vals.iter().map(|v| v.abs()).sum::<f64>() / vals.len() as f64).to_f32(),
        );
        vals.into_iter()
            .map(|v| if v >= 0.0 { s } else { 0.0 })
            .collect()
    };
    let mut rec = vec![vec![(0.0f64, 0.0f64); m]; g];
    for k in 0..m {
        let re = quant(spectra.iter().map(|s| s[k].0).collect());
        let im = quant(spectra.iter().map(|s| s[k].1).collect());
        for t in 0..g {
            rec[t][k] = (re[t], im[t]);
        }
    }
    for t in 0..g {
        for (n, &c) in normals.iter().enumerate() {
            let v: f64 = (0..m)
                .map(|k| {
                    let a = 2.0 * std::f64::consts::PI * (k * n) as f64 / m as f64;
                    rec[t][k].0 * a.cos() - rec[t][k].1 * a.sin()
                })
                .sum::<f64>()
                / m as f64;
            let got = f64::from(dec[t * d + c]);
            assert!(
                (got - v).abs() < 2e-3 * (1.0 + v.abs()),
                "token {t} channel {c}: {got} vs {v}"
            );
        }
    }
}

#[test]
fn symmetric_lanes_decode_sign_times_mean_abs() {
    let (d, g, m) = (16, 32, 8);
    let codec = config(
        d,
        g,
        mixed(Transform::Fft, LaneRule::Symmetric, OutlierScope::Block),
        TERNARY_LS,
        Arithmetic::F32,
    );
    let x = Rng(3).keys(g, d);
    let (enc, dec) = roundtrip_keys(&codec, &x, None);
    let mask = ChannelMask::read(&enc[..4], d, 8).unwrap();
    let normals: Vec<usize> = mask.normals(d).collect();
    let t = LaneTransform::new(Transform::Fft, m);
    let z: Vec<Vec<f32>> = (0..g)
        .map(|tok| {
            let row: Vec<f32> = normals.iter().map(|&c| x[tok * d + c]).collect();
            let mut z = vec![0.0; m];
            t.forward(&row, &mut z);
            z
        })
        .collect();
    for j in 0..m {
        let s = f16::from_f32(z.iter().map(|zt| zt[j].abs()).sum::<f32>() / g as f32).to_f32();
        for tok in 0..g {
            let want = if z[tok][j] >= 0.0 { s } else { -s };
            let mut zhat = vec![0.0; m];
            // decode the whole token and transform back: lane j of T(decoded) is ±s
            let row: Vec<f32> = normals.iter().map(|&c| dec[tok * d + c]).collect();
            t.forward(&row, &mut zhat);
            assert!(
                (zhat[j] - want).abs() < 1e-4 * (1.0 + s),
                "lane {j} token {tok}: {} vs {want}",
                zhat[j]
            );
        }
    }
}

#[test]
fn ternary_values_hand_worked() {
    let (d, g) = (16, 32);
    let codec = config(
        d,
        g,
        KeyScheme::PerChannel { bits: Bits::Two },
        ValueScheme::Ternary {
            scale: TernaryScale::MeanAbs,
        },
        Arithmetic::F32,
    );
    // channel c: tokens cycle 2, -2, 0.5, 0 → mean |x| = 1.125, threshold 0.5625
    let cycle = [2.0f32, -2.0, 0.5, 0.0];
    let x: Vec<f32> = (0..g * d)
        .map(|i| cycle[(i / d) % 4] * (1 + i % d) as f32)
        .collect();
    let (_, dec) = roundtrip_values(&codec, &x);
    for (i, &v) in dec.iter().enumerate() {
        let scale = f16::from_f32(1.125 * (1 + i % d) as f32).to_f32();
        let want = [scale, -scale, 0.0, 0.0][(i / d) % 4];
        assert_eq!(v, want, "element {i}");
    }
    // Least squares keeps the same codes but scales by mean |x| over non-zero codes = 2.
    let ls = config(
        d,
        g,
        KeyScheme::PerChannel { bits: Bits::Two },
        TERNARY_LS,
        Arithmetic::F32,
    );
    let (_, dec) = roundtrip_values(&ls, &x);
    assert_eq!(dec[0], 2.0);
    assert_eq!(dec[d], -2.0);
    let unit = config(
        d,
        g,
        KeyScheme::PerChannel { bits: Bits::Two },
        ValueScheme::Ternary {
            scale: TernaryScale::Unit,
        },
        Arithmetic::Reference,
    );
    let (_, dec) = roundtrip_values(&unit, &x);
    assert_eq!(&dec[..2], &[1.0, 1.0]);
}

#[test]
fn kivi_values_quantize_each_token_over_channel_groups() {
    let (d, g) = (80, 32);
    let codec =
        Codec::new(Scheme::Kivi2.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap()))
            .unwrap();
    let x = Rng(11).keys(g, d);
    let (_, dec) = roundtrip_values(&codec, &x);
    // groups of 32, 32, 16 channels: every decoded value lies within half a step of its input
    for t in 0..g {
        for part in [0..32, 32..64, 64..80] {
            let vals: Vec<f32> = part
                .clone()
                .map(|c| f16::from_f32(x[t * d + c]).to_f32())
                .collect();
            let lo = vals.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = vals.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let step = (hi - lo) / 3.0;
            for (c, v) in part.zip(&vals) {
                assert!(
                    (dec[t * d + c] - v).abs() <= step / 2.0 + 1e-2 * step.max(1e-3),
                    "t {t} c {c}"
                );
            }
        }
    }
}

#[test]
fn every_scheme_and_shape_roundtrips_with_bounded_error() {
    let mut rng = Rng(5);
    for d in [16, 18, 64, 80, 96, 112, 128, 256] {
        for g in [32, 64, 128] {
            let x = rng.keys(2 * g, d);
            for scheme in Scheme::ALL {
                let codec =
                    Codec::new(scheme.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap()))
                        .unwrap();
                let mask = layer_outliers(&codec, &[&x]).ok();
                let (_, kdec) = roundtrip_keys(&codec, &x, mask.as_ref());
                let v = rng.values(2 * g, d);
                let (_, vdec) = roundtrip_values(&codec, &v);
                let (ke, ve) = (rel_error(&x, &kdec), rel_error(&v, &vdec));
                let bound = match scheme {
                    Scheme::Kivi4 => 0.12,
                    Scheme::Kivi2 | Scheme::Pc2 | Scheme::Ott2 => 0.55,
                    Scheme::Vidkv | Scheme::VidkvPaper | Scheme::VidkvStp | Scheme::Xquant => 0.9,
                    // Keys decode to a direction estimate (cosine ≈ √(2/π) at b = D).
                    Scheme::H1b => 0.9,
                };
                assert!(
                    ke < bound && ve < bound,
                    "{scheme:?} d {d} g {g}: keys {ke} values {ve}"
                );
            }
        }
    }
}

#[test]
fn hadamard_and_identity_keys_roundtrip() {
    let x = Rng(13).keys(64, 64);
    for transform in [Transform::Hadamard, Transform::Identity, Transform::Fft] {
        let codec = config(
            64,
            32,
            mixed(transform, LaneRule::Symmetric, OutlierScope::Block),
            TERNARY_LS,
            Arithmetic::F32,
        );
        let (_, dec) = roundtrip_keys(&codec, &x, None);
        assert!(
            rel_error(&x, &dec) < 0.6,
            "{transform:?}: {}",
            rel_error(&x, &dec)
        );
    }
}

#[test]
fn layer_scope_uses_the_given_mask_in_every_block() {
    let codec =
        Codec::new(Scheme::VidkvPaper.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap();
    let x = Rng(17).keys(96, 64);
    assert!(matches!(
        encode_key_blocks(&codec, &x, None, &mut vec![0; 3 * codec.key_block_bytes()]),
        Err(Error::InvalidConfig { .. })
    ));
    let mask = layer_outliers(&codec, &[&x]).unwrap();
    assert_eq!(mask.count(), 32);
    // channels 3, 19, 35, 51 carry 8× outliers and must be chosen
    for c in [3, 19, 35, 51] {
        assert!(mask.contains(c));
    }
    let (enc, _) = roundtrip_keys(&codec, &x, Some(&mask));
    for block in enc.chunks_exact(codec.key_block_bytes()) {
        assert_eq!(ChannelMask::read(&block[..8], 64, 32).unwrap(), mask);
    }
    let wrong = ChannelMask::from_channels(0..31);
    assert!(
        encode_key_blocks(
            &codec,
            &x,
            Some(&wrong),
            &mut vec![0; 3 * codec.key_block_bytes()]
        )
        .is_err()
    );
}

#[test]
fn bad_shapes_and_non_finite_inputs_are_typed_errors() {
    let codec =
        Codec::new(Scheme::Vidkv.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap();
    let x = vec![0.5f32; 32 * 64 + 1];
    assert!(matches!(
        encode_value_blocks(&codec, &x, &mut []),
        Err(Error::ShapeMismatch { .. })
    ));
    let mut y = vec![0.5f32; 32 * 64];
    assert!(matches!(
        encode_value_blocks(&codec, &y, &mut [0; 3]),
        Err(Error::ShapeMismatch { .. })
    ));
    y[77] = f32::INFINITY;
    let mut out = vec![0; codec.value_block_bytes()];
    assert_eq!(
        encode_value_blocks(&codec, &y, &mut out),
        Err(Error::NonFinite { index: 77 })
    );
    assert!(matches!(
        decode_key_blocks(&codec, &[0; 5], &mut []),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn damaged_blocks_are_rejected_not_misread() {
    let codec =
        Codec::new(Scheme::Vidkv.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap();
    let x = Rng(19).keys(64, 64);
    let (mut kenc, _) = roundtrip_keys(&codec, &x, None);
    let (mut venc, _) = roundtrip_values(&codec, &x);
    let mut out = vec![0.0; x.len()];
    // second block: flip one mask bit → wrong popcount
    let kb = codec.key_block_bytes();
    kenc[kb] ^= 1;
    match decode_key_blocks(&codec, &kenc, &mut out) {
        Err(Error::Corrupt { offset, .. }) => assert_eq!(offset, kb),
        other => panic!("expected corrupt mask, got {other:?}"),
    }
    // a trit byte of 255
    let last = venc.len() - 1;
    venc[last] = 255;
    assert!(matches!(
        decode_value_blocks(&codec, &venc, &mut out),
        Err(Error::Corrupt { .. })
    ));
}

#[test]
fn arbitrary_bytes_never_panic_any_decoder() {
    let mut rng = Rng(23);
    for scheme in Scheme::ALL {
        for d in [16, 18, 80, 128] {
            let codec =
                Codec::new(scheme.config(HeadDim::new(d).unwrap(), GroupSize::G32)).unwrap();
            for _ in 0..20 {
                let kb: Vec<u8> = (0..codec.key_block_bytes())
                    .map(|_| (rng.next_f32() * 128.0 + 128.0) as u8)
                    .collect();
                let vb: Vec<u8> = (0..codec.value_block_bytes())
                    .map(|_| (rng.next_f32() * 128.0 + 128.0) as u8)
                    .collect();
                let mut out = vec![0.0; codec.block_elements()];
                let _ = decode_key_blocks(&codec, &kb, &mut out);
                let _ = decode_value_blocks(&codec, &vb, &mut out);
            }
        }
    }
}

#[test]
fn reported_sizes_match_produced_bytes() {
    for scheme in Scheme::ALL {
        let codec = Codec::new(scheme.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap();
        let x = Rng(29).keys(96, 64);
        let mask = layer_outliers(&codec, &[&x]).ok();
        let (k, _) = roundtrip_keys(&codec, &x, mask.as_ref());
        let (v, _) = roundtrip_values(&codec, &x);
        assert_eq!(
            k.len() * 8,
            (codec.key_bits_per_element() * x.len() as f64) as usize
        );
        assert_eq!(
            v.len() * 8,
            (codec.value_bits_per_element() * x.len() as f64) as usize
        );
    }
}

/// The worked example of docs/FORMAT.md, byte for byte.
#[test]
fn format_doc_worked_example() {
    let codec = Codec::new(Scheme::Pc2.config(HeadDim::new(16).unwrap(), GroupSize::G32)).unwrap();
    let mut x = vec![0.25f32; 32 * 16];
    let channel0 = [-1.0, 0.4, 0.6, 2.0];
    for t in 0..32 {
        x[t * 16] = *channel0.get(t).unwrap_or(&-1.0);
    }
    let (enc, dec) = roundtrip_keys(&codec, &x, None);
    assert_eq!(&enc[..4], &[0x00, 0xBC, 0x00, 0x3C]);
    assert_eq!(&enc[64..72], &[0xE4, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(
        &dec[..16 * 5]
            .iter()
            .step_by(16)
            .copied()
            .collect::<Vec<_>>(),
        &[-1.0, 0.0, 1.0, 2.0, -1.0]
    );
    let mut row = [0u8; 4];
    vidkv_core::pack::pack_trits(&[1, -1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &mut row);
    assert_eq!(row[0], 0xC8);
}

/// H1B-KV keys: norms exact to f16, the signs are those of `R·k` (re-derived here from the
/// documented generator), decoded keys keep the norm and point near the key, and the values are
/// KIVI-4's bytes.
#[test]
fn sign_sketch_keys_store_norms_and_projection_signs() {
    use vidkv_core::sketch::Projection;
    let mut rng = Rng(11);
    for (d, g) in [(64, 32), (128, 64), (80, 32), (256, 32)] {
        let codec =
            Codec::new(Scheme::H1b.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap()))
                .unwrap();
        let vidkv_core::KeyLayout::SignSketch { bits, norms, signs } = *codec.key_layout() else {
            panic!("h1b keys are sign sketches")
        };
        let x = rng.keys(g, d);
        let (bytes, dec) = roundtrip_keys(&codec, &x, None);
        let p = Projection::for_codec(&codec).unwrap();
        let rb = bits / 8;
        let mut cosines = Vec::new();
        for (t, (row, drow)) in x.chunks_exact(d).zip(dec.chunks_exact(d)).enumerate() {
            let norm = row
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            let stored = vidkv_core::pack::f16_at(&bytes[norms.range()], t);
            assert_eq!(stored, half::f16::from_f64(norm), "token {t}");
            for i in 0..bits {
                let dot: f64 = (0..d)
                    .map(|c| f64::from(p.entry(i, c)) * f64::from(row[c]))
                    .sum();
                let bit = bytes[signs.offset + t * rb + i / 8] >> (i % 8) & 1;
                assert_eq!(bit == 1, dot >= 0.0, "token {t} bit {i}");
            }
            let dn = drow
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                (dn - stored.to_f64()).abs() <= 1e-3 * dn.max(1e-3),
                "norm {dn}"
            );
            let cos = drow
                .iter()
                .zip(row)
                .map(|(a, b)| f64::from(a * b))
                .sum::<f64>()
                / (dn * norm);
            cosines.push(cos);
        }
        // u = Rᵀ(2s − 1) has ≈ b·√(2/π) along k and ≈ √(b·(D − 1)) across it:
        // cos(k̂, k) ≈ 1/√(1 + π·(D − 1)/(2b)) (0.62 at b = D).
        let expected =
            1.0 / (1.0 + std::f64::consts::PI * (d - 1) as f64 / (2 * bits) as f64).sqrt();
        let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
        let worst = cosines.iter().copied().fold(1.0, f64::min);
        assert!(
            (mean - expected).abs() < 0.06 && worst > expected - 0.25,
            "d {d}: mean cosine {mean} (expected {expected}), worst {worst}"
        );
        let v = rng.values(g, d);
        let kivi4 =
            Codec::new(Scheme::Kivi4.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap()))
                .unwrap();
        let (h1b_values, _) = roundtrip_values(&codec, &v);
        let (kivi_values, _) = roundtrip_values(&kivi4, &v);
        // Same per-token 4-bit layout; only the arithmetic differs (f32 here, reference there).
        assert_eq!(h1b_values.len(), kivi_values.len());
    }
}
