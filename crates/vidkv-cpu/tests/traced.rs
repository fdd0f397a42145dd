//! Outlier-token tracing (OTT) in the scalar backend: traced rows decode exactly to f16, the
//! picking rule finds planted outlier tokens, tracing lowers the key error, damaged index bytes
//! are typed errors, and fused attention over traced blocks matches the f64 reference.

use half::f16;
use vidkv_core::backend::AttentionArgs;
use vidkv_core::cache::{CacheConfig, KvCache, Salient, reference_attention};
use vidkv_core::{
    ChannelMask, Codec, Error, GroupSize, HeadDim, KeyScheme, KvQuantBackend, QuantConfig, Scheme,
};
use vidkv_cpu::{ScalarBackend, decode_key_blocks, encode_key_blocks, layer_outliers};

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);
impl Rng {
    fn normal(&mut self) -> f32 {
        (0..4)
            .map(|_| {
                self.0 ^= self.0 << 13;
                self.0 ^= self.0 >> 7;
                self.0 ^= self.0 << 17;
                (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .sum::<f32>()
            * 0.866
    }
    /// `[tokens, d]` keys with a few large channels, and every token `t % g == (t / g) % g`
    /// of each block scaled by `spike` (one outlier token per block).
    fn keys(&mut self, tokens: usize, d: usize, g: usize, spike: f32) -> Vec<f32> {
        let mut v = Vec::with_capacity(tokens * d);
        for t in 0..tokens {
            let outlier_token = t % g == (t / g * 7 + 3) % g;
            for c in 0..d {
                let channel = if c % 16 == 3 { 6.0 } else { 1.0 };
                let token = if outlier_token { spike } else { 1.0 };
                v.push(self.normal() * channel * token + 0.3);
            }
        }
        v
    }
}

fn traced(s: Scheme, d: usize, g: usize, slots: u8) -> Codec {
    Codec::new(QuantConfig {
        traced_tokens: slots,
        ..s.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap())
    })
    .unwrap()
}

fn layer_mask(codec: &Codec, x: &[f32]) -> Option<ChannelMask> {
    match codec.config().keys {
        KeyScheme::Mixed(m) if m.scope == vidkv_core::OutlierScope::Layer => {
            Some(layer_outliers(codec, &[x]).unwrap())
        }
        _ => None,
    }
}

fn roundtrip(codec: &Codec, x: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let blocks = x.len() / codec.block_elements();
    let mut enc = vec![0u8; blocks * codec.key_block_bytes()];
    encode_key_blocks(codec, x, layer_mask(codec, x).as_ref(), &mut enc).unwrap();
    let mut dec = vec![0.0f32; x.len()];
    decode_key_blocks(codec, &enc, &mut dec).unwrap();
    (enc, dec)
}

fn rel_error(x: &[f32], y: &[f32]) -> f64 {
    let num: f64 = x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
    let den: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
    (num / den).sqrt()
}

/// Configurations with tracing: both key schemes, both arithmetics, both scopes.
fn traced_codecs() -> Vec<Codec> {
    let mut v = Vec::new();
    for (d, g) in [(64, 32), (80, 64), (18, 128)] {
        v.push(codec_of(Scheme::Ott2, d, g));
        v.push(traced(Scheme::Vidkv, d, g, 1));
        v.push(traced(Scheme::Vidkv, d, g, 3));
        v.push(traced(Scheme::VidkvPaper, d, g, 2));
        v.push(traced(Scheme::Kivi4, d, g, (g / 4) as u8));
    }
    v
}

fn codec_of(s: Scheme, d: usize, g: usize) -> Codec {
    Codec::new(s.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap())).unwrap()
}

#[test]
fn ott2_slots_follow_the_documented_rule_and_cost() {
    for (g, slots) in [(32, 1), (64, 1), (128, 2)] {
        let ott = codec_of(Scheme::Ott2, 64, g);
        let kivi = codec_of(Scheme::Kivi2, 64, g);
        assert_eq!(usize::from(ott.config().traced_tokens), slots);
        assert_eq!(
            ott.key_block_bytes(),
            kivi.key_block_bytes() + slots * (64 * 2 + 1)
        );
        assert_eq!(ott.value_block_bytes(), kivi.value_block_bytes());
    }
    // Without tracing nothing changes.
    assert!(codec_of(Scheme::Kivi2, 64, 32).traced_layout().is_none());
}

#[test]
fn traced_rows_decode_to_f16_and_planted_outliers_are_found() {
    let mut rng = Rng(3);
    for codec in traced_codecs() {
        let (d, g) = (codec.head_dim(), codec.group());
        let x = rng.keys(3 * g, d, g, 12.0);
        let (enc, dec) = roundtrip(&codec, &x);
        let layout = *codec.traced_layout().unwrap();
        for (b, block) in enc.chunks_exact(codec.key_block_bytes()).enumerate() {
            let tokens = layout.tokens(block, g).unwrap();
            assert_eq!(tokens.len(), layout.slots, "the encoder fills every slot");
            let planted = (b * 7 + 3) % g;
            assert!(
                tokens.iter().any(|&(_, t)| t == planted),
                "{:?} block {b}: {tokens:?} misses token {planted}",
                codec.config()
            );
            for (_, t) in tokens {
                let row = b * g + t;
                for c in 0..d {
                    let want = f16::from_f32(x[row * d + c]).to_f32();
                    assert_eq!(dec[row * d + c], want, "token {t} channel {c}");
                }
            }
        }
    }
}

#[test]
fn tracing_lowers_the_key_error_on_outlier_tokens() {
    let mut rng = Rng(9);
    let (d, g) = (64, 32);
    let x = rng.keys(8 * g, d, g, 8.0);
    for (plain, with) in [
        (codec_of(Scheme::Kivi2, d, g), codec_of(Scheme::Ott2, d, g)),
        (
            codec_of(Scheme::Vidkv, d, g),
            traced(Scheme::Vidkv, d, g, 1),
        ),
    ] {
        let e0 = rel_error(&x, &roundtrip(&plain, &x).1);
        let e1 = rel_error(&x, &roundtrip(&with, &x).1);
        assert!(
            e1 < 0.8 * e0,
            "{:?}: traced {e1} vs plain {e0}",
            plain.config().keys
        );
    }
}

#[test]
fn picking_is_deterministic_and_independent_of_other_blocks() {
    let mut rng = Rng(21);
    let codec = traced(Scheme::Vidkv, 64, 32, 2);
    let x = rng.keys(4 * 32, 64, 32, 5.0);
    let (a, _) = roundtrip(&codec, &x);
    let (b, _) = roundtrip(&codec, &x);
    assert_eq!(a, b);
    let (one, _) = roundtrip(&codec, &x[2 * 32 * 64..3 * 32 * 64]);
    let kb = codec.key_block_bytes();
    assert_eq!(one, a[2 * kb..3 * kb]);
}

#[test]
fn damaged_traced_parts_are_corrupt_errors() {
    let mut rng = Rng(5);
    for codec in traced_codecs() {
        let (d, g) = (codec.head_dim(), codec.group());
        let x = rng.keys(2 * g, d, g, 6.0);
        let (enc, dec) = roundtrip(&codec, &x);
        let layout = *codec.traced_layout().unwrap();
        let kb = codec.key_block_bytes();
        let index_at = kb + layout.indices.offset; // first slot of block 1
        let decode = |bytes: &[u8]| {
            let mut out = vec![0.0f32; x.len()];
            decode_key_blocks(&codec, bytes, &mut out).map(|()| out)
        };
        let mut bad = enc.clone();
        bad[index_at] = g as u8;
        assert_eq!(
            decode(&bad),
            Err(Error::Corrupt {
                what: "traced token index beyond the block",
                offset: index_at
            })
        );
        if layout.slots > 1 {
            let mut bad = enc.clone();
            bad[index_at + 1] = bad[index_at];
            assert!(matches!(
                decode(&bad),
                Err(Error::Corrupt { what: "token traced twice", offset }) if offset == index_at + 1
            ));
        }
        let mut bad = enc.clone();
        let row_at = kb + layout.rows.offset + 2 * 3;
        bad[row_at] = 0x00;
        bad[row_at + 1] = 0x7c; // +inf
        assert!(matches!(
            decode(&bad),
            Err(Error::Corrupt { offset, .. }) if offset == row_at
        ));
        // An empty slot is valid: that token keeps the value of its (clamped) codes.
        let mut empty = enc.clone();
        let t = usize::from(empty[index_at]);
        empty[index_at] = vidkv_core::traced::EMPTY_SLOT;
        let out = decode(&empty).unwrap();
        let row = g + t;
        assert_ne!(out[row * d..][..d], dec[row * d..][..d]);
        assert_eq!(out[..g * d], dec[..g * d]);
        // Attention on the damaged bytes is a typed error too.
        let values = vec![0u8; 2 * codec.value_block_bytes()];
        let mut bad = enc.clone();
        bad[index_at] = 200;
        assert!(matches!(
            attend(&codec, &bad, &values, 2),
            Err(Error::Corrupt { .. })
        ));
    }
}

fn attend(codec: &Codec, keys: &[u8], values: &[u8], blocks: usize) -> vidkv_core::Result<()> {
    let d = codec.head_dim();
    let qb: Vec<u8> = (0..2 * d)
        .flat_map(|i| (i as f32 * 0.01).to_le_bytes())
        .collect();
    let mut out = vec![0u8; 2 * d * 4];
    ScalarBackend.attend(
        codec,
        AttentionArgs {
            queries: &qb,
            query_heads: 2,
            scale: 0.125,
            key_blocks: &keys.to_vec(),
            value_blocks: &values.to_vec(),
            blocks,
            salient: None,
            sinks: None,
            residual: None,
            lender: None,
            out: &mut out,
        },
    )
}

#[test]
fn fused_attention_over_traced_blocks_matches_the_reference() {
    let mut rng = Rng(17);
    for codec in traced_codecs() {
        let (d, g) = (codec.head_dim(), codec.group());
        for (kv, qh) in [(1, 1), (2, 8)] {
            let n = 5 * g + 7;
            let cfg = CacheConfig {
                residual: g,
                ..CacheConfig::new(codec, kv, qh)
            };
            let mut cache = KvCache::new(ScalarBackend, cfg).unwrap();
            let seq = cache.add_sequence().unwrap();
            let mut k = Vec::new();
            for _ in 0..kv {
                k.extend(rng.keys(n, d, g, 10.0));
            }
            let v: Vec<f32> = (0..kv * n * d).map(|_| rng.normal()).collect();
            cache.prefill(seq, &k, &v, Salient::None).unwrap();
            let q: Vec<f32> = (0..qh * d).map(|_| rng.normal() * 2.0).collect();
            let mut out = vec![0.0f32; q.len()];
            cache.attend(seq, &q, &mut out).unwrap();
            let (kd, vd) = cache.dequantize(seq).unwrap();
            let tol = match codec.config().arithmetic {
                vidkv_core::Arithmetic::F32 => 2e-5,
                vidkv_core::Arithmetic::Reference => 1e-2,
            };
            for h in 0..qh {
                let kvh = h / (qh / kv);
                let (o, _) = reference_attention(
                    &kd[kvh * n * d..][..n * d],
                    &vd[kvh * n * d..][..n * d],
                    d,
                    &q[h * d..][..d],
                    cache.config().softmax_scale(),
                );
                let num: f64 = out[h * d..][..d]
                    .iter()
                    .zip(&o)
                    .map(|(&a, &b)| (f64::from(a) - b).powi(2))
                    .sum();
                let den: f64 = o.iter().map(|b| b * b).sum();
                let err = (num / den).sqrt();
                assert!(err < tol, "{:?} kv {kv} q {qh}: {err}", codec.config());
            }
        }
    }
}

#[test]
fn prefill_and_appends_give_the_same_traced_blocks() {
    let mut rng = Rng(23);
    let (heads, d, n) = (2, 64, 203);
    for codec in [
        traced(Scheme::Vidkv, d, 32, 2),
        codec_of(Scheme::Ott2, d, 64),
    ] {
        let g = codec.group();
        let cfg = CacheConfig {
            residual: 40,
            sinks: 1,
            ..CacheConfig::new(codec, heads, heads * 2)
        };
        let per_head: Vec<Vec<f32>> = (0..heads).map(|_| rng.keys(n, d, g, 7.0)).collect();
        let k: Vec<f32> = per_head.concat();
        let v: Vec<f32> = (0..heads * n * d).map(|_| rng.normal()).collect();
        let mut pre = KvCache::new(ScalarBackend, cfg).unwrap();
        let s0 = pre.add_sequence().unwrap();
        pre.prefill(s0, &k, &v, Salient::None).unwrap();
        let mut inc = KvCache::new(ScalarBackend, cfg).unwrap();
        let s1 = inc.add_sequence().unwrap();
        for t in 0..n {
            let row = |x: &[f32]| -> Vec<f32> {
                (0..heads)
                    .flat_map(|h| x[(h * n + t) * d..][..d].to_vec())
                    .collect()
            };
            inc.append_token(s1, &row(&k), &row(&v), false).unwrap();
        }
        assert!(pre.blocks(s0) > 0);
        for h in 0..heads {
            assert_eq!(
                pre.key_blocks(s0, h).unwrap(),
                inc.key_blocks(s1, h).unwrap()
            );
        }
        let q: Vec<f32> = (0..heads * 2 * d).map(|_| rng.normal()).collect();
        let (mut a, mut b) = (vec![0.0; q.len()], vec![0.0; q.len()]);
        pre.attend(s0, &q, &mut a).unwrap();
        inc.attend(s1, &q, &mut b).unwrap();
        assert_eq!(a, b);
    }
}
