//! XQuant: 1-bit min/max groups, endpoint calibration, cross-layer code sharing (borrowing
//! layers) in the scalar backend, the streaming cache and the container.

use half::f16;
use vidkv_core::backend::{AttentionArgs, LenderBlocks};
use vidkv_core::cache::{CacheConfig, KvCache, Salient, reference_attention};
use vidkv_core::container::{Container, ContainerWriter, HeadSection, LayerInput};
use vidkv_core::pack::{code_at, f16_at};
use vidkv_core::{
    AffineParams, Arithmetic, Bits, Calibration, Codec, Error, GroupSize, HeadDim, KeyLayout,
    KeyScheme, KvQuantBackend, QuantConfig, Scheme, ValueLayout, ValueScheme,
};
use vidkv_cpu::borrow::{Half, splice_blocks};
use vidkv_cpu::{
    ScalarBackend, decode_borrowed_key_blocks, decode_borrowed_value_blocks, decode_key_blocks,
    decode_value_blocks, encode_key_blocks, encode_value_blocks,
};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn rows(&mut self, n: usize, d: usize) -> Vec<f32> {
        (0..n * d)
            .map(|i| self.next() * (1.0 + (i % d % 7) as f32))
            .collect()
    }
}

fn codec(keys: Bits, values: ValueScheme, eta: Calibration, arith: Arithmetic) -> Codec {
    Codec::new(QuantConfig {
        calibration: eta,
        ..QuantConfig::new(
            HeadDim::new(64).unwrap(),
            GroupSize::G32,
            KeyScheme::PerChannel { bits: keys },
            values,
            arith,
        )
    })
    .unwrap()
}

fn xquant() -> Codec {
    Codec::new(Scheme::Xquant.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap()
}

fn params(section: &[u8], i: usize) -> (f32, f32) {
    (
        f16_at(section, 2 * i).to_f32(),
        f16_at(section, 2 * i + 1).to_f32(),
    )
}

#[test]
fn one_bit_groups_decode_to_their_two_levels() {
    let mut rng = Rng(7);
    let per_token = ValueScheme::PerToken { bits: Bits::One };
    let per_channel = ValueScheme::PerChannel { bits: Bits::One };
    for values in [per_token, per_channel] {
        let c = codec(Bits::One, values, Calibration::NONE, Arithmetic::F32);
        assert_eq!(c.key_block_bytes(), 4 * 64 + 64 * 32 / 8);
        let x = rng.rows(64, 64);
        let mut kb = vec![0u8; 2 * c.key_block_bytes()];
        encode_key_blocks(&c, &x, None, &mut kb).unwrap();
        let mut y = vec![0.0f32; x.len()];
        decode_key_blocks(&c, &kb, &mut y).unwrap();
        let KeyLayout::PerChannel { params: p, .. } = *c.key_layout() else {
            unreachable!()
        };
        for (b, block) in kb.chunks_exact(c.key_block_bytes()).enumerate() {
            for ch in 0..64 {
                let (lo, step) = params(&block[p.range()], ch);
                let column: Vec<f32> = (0..32).map(|t| x[(b * 32 + t) * 64 + ch]).collect();
                let min = column.iter().copied().fold(f32::INFINITY, f32::min);
                assert_eq!(lo, f16::from_f32(min).to_f32());
                for (t, &xv) in column.iter().enumerate() {
                    let yv = y[(b * 32 + t) * 64 + ch];
                    assert!(
                        yv == lo || yv == lo + step,
                        "{yv} not in {{{lo}, {}}}",
                        lo + step
                    );
                    // The nearer level (within f16 rounding of the parameters).
                    assert!((xv - yv).abs() <= step / 2.0 + 0.01 * (1.0 + xv.abs()));
                }
            }
        }
        let mut vb = vec![0u8; 2 * c.value_block_bytes()];
        encode_value_blocks(&c, &x, &mut vb).unwrap();
        decode_value_blocks(&c, &vb, &mut y).unwrap();
        // Every group decodes each element to the nearer of its min and max.
        let groups: Vec<Vec<usize>> = match values {
            ValueScheme::PerToken { .. } => (0..64 * 2)
                .map(|i| (0..32).map(|c| (i / 2) * 64 + (i % 2) * 32 + c).collect())
                .collect(),
            _ => (0..2 * 64)
                .map(|i| (0..32).map(|t| ((i / 64) * 32 + t) * 64 + i % 64).collect())
                .collect(),
        };
        for group in groups {
            let lo = group.iter().map(|&i| x[i]).fold(f32::INFINITY, f32::min);
            let hi = group
                .iter()
                .map(|&i| x[i])
                .fold(f32::NEG_INFINITY, f32::max);
            for &i in &group {
                let want = if x[i] - lo > (hi - lo) / 2.0 { hi } else { lo };
                assert!(
                    (y[i] - want).abs() <= 2e-3 * (1.0 + want.abs()),
                    "{} vs {want}",
                    y[i]
                );
            }
        }
    }
}

#[test]
fn calibration_keeps_codes_and_pulls_parameters_inward() {
    let mut rng = Rng(11);
    let x = rng.rows(32, 64);
    for arith in [Arithmetic::F32, Arithmetic::Reference] {
        for (bits, eta) in [
            (Bits::One, 1.0 / 3.0),
            (Bits::Two, 0.09),
            (Bits::Four, 0.045),
        ] {
            let vs = ValueScheme::PerToken { bits };
            let plain = codec(bits, vs, Calibration::NONE, arith);
            let cal = codec(
                bits,
                vs,
                Calibration {
                    keys: eta,
                    values: eta,
                },
                arith,
            );
            for keys in [true, false] {
                let (mut a, mut b) = if keys {
                    (
                        vec![0u8; plain.key_block_bytes()],
                        vec![0u8; cal.key_block_bytes()],
                    )
                } else {
                    (
                        vec![0u8; plain.value_block_bytes()],
                        vec![0u8; cal.value_block_bytes()],
                    )
                };
                let (params, codes) = if keys {
                    encode_key_blocks(&plain, &x, None, &mut a).unwrap();
                    encode_key_blocks(&cal, &x, None, &mut b).unwrap();
                    let KeyLayout::PerChannel { params, codes, .. } = *plain.key_layout() else {
                        unreachable!()
                    };
                    (params, codes)
                } else {
                    encode_value_blocks(&plain, &x, &mut a).unwrap();
                    encode_value_blocks(&cal, &x, &mut b).unwrap();
                    let ValueLayout::PerToken { params, codes, .. } = *plain.value_layout() else {
                        unreachable!()
                    };
                    (params, codes)
                };
                assert_eq!(
                    a[codes.range()],
                    b[codes.range()],
                    "codes are the plain codes"
                );
                for i in 0..params.len / 4 {
                    let p = AffineParams {
                        lo: f16_at(&a[params.range()], 2 * i),
                        step: f16_at(&a[params.range()], 2 * i + 1),
                    };
                    let want = p.calibrated(bits, eta, arith);
                    let (lo, step) = params_of(&b[params.range()], i);
                    assert_eq!((lo, step), (want.lo, want.step));
                    let levels = f32::from(bits.max_code());
                    let (plo, pstep) = (p.lo.to_f32(), p.step.to_f32());
                    let tol = 2e-3 * (plo.abs() + levels * pstep) + 1e-6;
                    assert!((lo.to_f32() - (plo + eta * levels * pstep)).abs() <= tol);
                    assert!((step.to_f32() - (1.0 - 2.0 * eta) * pstep).abs() <= 2e-3 * pstep);
                }
            }
        }
    }
}

fn params_of(section: &[u8], i: usize) -> (f16, f16) {
    (f16_at(section, 2 * i), f16_at(section, 2 * i + 1))
}

/// A lender layer and a borrowing layer of `blocks` blocks, encoded.
struct Pair {
    codec: Codec,
    borrowing: Codec,
    lender_k: Vec<u8>,
    lender_v: Vec<u8>,
    own_k: Vec<u8>,
    own_v: Vec<u8>,
    x_k: Vec<f32>,
    x_v: Vec<f32>,
}

fn pair(codec: Codec, blocks: usize, seed: u64) -> Pair {
    let mut rng = Rng(seed);
    let d = codec.head_dim();
    let n = blocks * codec.group();
    let (lk, lv) = (rng.rows(n, d), rng.rows(n, d));
    // The borrower: correlated with the lender (same signs, other scale), as adjacent layers.
    let x_k: Vec<f32> = lk.iter().map(|v| 0.7 * v + 0.1 * rng.next()).collect();
    let x_v: Vec<f32> = lv.iter().map(|v| 1.3 * v + 0.1 * rng.next()).collect();
    let borrowing = codec.borrowing().unwrap();
    let mut p = Pair {
        codec,
        borrowing,
        lender_k: vec![0; blocks * codec.key_block_bytes()],
        lender_v: vec![0; blocks * codec.value_block_bytes()],
        own_k: vec![0; blocks * borrowing.key_block_bytes()],
        own_v: vec![0; blocks * borrowing.value_block_bytes()],
        x_k,
        x_v,
    };
    encode_key_blocks(&codec, &lk, None, &mut p.lender_k).unwrap();
    encode_value_blocks(&codec, &lv, &mut p.lender_v).unwrap();
    encode_key_blocks(&borrowing, &p.x_k, None, &mut p.own_k).unwrap();
    encode_value_blocks(&borrowing, &p.x_v, &mut p.own_v).unwrap();
    p
}

#[test]
fn borrowing_blocks_keep_only_their_own_parameters() {
    let c = xquant();
    let b = c.borrowing().unwrap();
    assert!(b.is_borrowing() && !c.is_borrowing());
    assert_eq!(b.key_block_bytes(), 4 * 64);
    assert_eq!(b.value_block_bytes(), 4 * 32 * 2);
    assert_eq!(b.key_code_bits() + b.value_code_bits(), 0.0);
    assert_eq!(c.key_code_bits(), 2.0);
    assert_eq!(c.value_code_bits(), 1.0);
    // The parameters are those of the layer's own full encoding.
    let p = pair(c, 2, 3);
    let mut full = vec![0u8; 2 * c.key_block_bytes()];
    encode_key_blocks(&c, &p.x_k, None, &mut full).unwrap();
    for (own, full) in p
        .own_k
        .chunks_exact(256)
        .zip(full.chunks_exact(c.key_block_bytes()))
    {
        assert_eq!(own, &full[..256]);
    }
    for s in [Scheme::Vidkv, Scheme::VidkvPaper] {
        let c = Codec::new(s.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap();
        assert!(matches!(c.borrowing(), Err(Error::InvalidConfig { .. })));
    }
}

#[test]
fn borrowed_decode_is_own_parameters_on_lender_codes() {
    let p = pair(xquant(), 3, 5);
    let (c, b) = (&p.codec, &p.borrowing);
    let (d, g) = (64, 32);
    let mut k = vec![0.0f32; p.x_k.len()];
    let mut v = vec![0.0f32; p.x_v.len()];
    decode_borrowed_key_blocks(b, c, &p.own_k, &p.lender_k, &mut k).unwrap();
    decode_borrowed_value_blocks(b, c, &p.own_v, &p.lender_v, &mut v).unwrap();
    let KeyLayout::PerChannel { codes, bits, .. } = *c.key_layout() else {
        unreachable!()
    };
    let ValueLayout::PerToken {
        codes: vcodes,
        bits: vbits,
        channel_group,
        ..
    } = *c.value_layout()
    else {
        unreachable!()
    };
    for blk in 0..3 {
        let own_k = &p.own_k[blk * 256..][..256];
        let lent_k = &p.lender_k[blk * c.key_block_bytes()..][..c.key_block_bytes()];
        let own_v = &p.own_v[blk * 256..][..256];
        let lent_v = &p.lender_v[blk * c.value_block_bytes()..][..c.value_block_bytes()];
        for t in 0..g {
            for ch in 0..d {
                let (lo, step) = params(own_k, ch);
                let code = code_at(bits.get(), &lent_k[codes.range()], ch * g + t);
                assert_eq!(k[(blk * g + t) * d + ch], lo + f32::from(code) * step);
                let (lo, step) = params(own_v, t * (d / channel_group) + ch / channel_group);
                let code = code_at(vbits.get(), &lent_v[vcodes.range()], t * d + ch);
                assert_eq!(v[(blk * g + t) * d + ch], lo + f32::from(code) * step);
            }
        }
    }
    // Borrowing one's own codes reproduces the own decode exactly.
    let mut full = vec![0u8; p.own_k.len() / 256 * c.key_block_bytes()];
    encode_key_blocks(c, &p.x_k, None, &mut full).unwrap();
    let mut own = vec![0.0f32; k.len()];
    decode_key_blocks(c, &full, &mut own).unwrap();
    decode_borrowed_key_blocks(b, c, &p.own_k, &full, &mut k).unwrap();
    assert_eq!(own, k);
}

#[test]
fn borrowing_mismatches_are_typed_errors() {
    let p = pair(xquant(), 2, 9);
    let (c, b) = (&p.codec, &p.borrowing);
    let mut out = vec![0.0f32; p.x_k.len()];
    // A borrowing codec cannot decode alone.
    assert!(matches!(
        decode_key_blocks(b, &p.own_k, &mut out),
        Err(Error::InvalidConfig { .. })
    ));
    assert!(matches!(
        decode_value_blocks(b, &p.own_v, &mut out),
        Err(Error::InvalidConfig { .. })
    ));
    // Lender with another configuration.
    let other = codec(
        Bits::Two,
        ValueScheme::PerToken { bits: Bits::One },
        Calibration::NONE,
        Arithmetic::F32,
    );
    let r = decode_borrowed_key_blocks(b, &other, &p.own_k, &p.lender_k, &mut out);
    assert!(matches!(r, Err(Error::InvalidConfig { .. })), "{r:?}");
    // Lender that itself borrows.
    let r = decode_borrowed_key_blocks(b, b, &p.own_k, &p.lender_k, &mut out);
    assert!(matches!(r, Err(Error::InvalidConfig { .. })), "{r:?}");
    // Block counts differ.
    let r =
        decode_borrowed_key_blocks(b, c, &p.own_k, &p.lender_k[..c.key_block_bytes()], &mut out);
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
    let r = splice_blocks(b, c, Half::Values, &p.own_v[..10], &p.lender_v);
    assert!(matches!(r, Err(Error::ShapeMismatch { .. })), "{r:?}");
}

fn args<'a>(
    qb: &'a Vec<u8>,
    p: &'a Pair,
    out: &'a mut Vec<u8>,
    lender: Option<LenderBlocks<'a, Vec<u8>>>,
) -> AttentionArgs<'a, Vec<u8>> {
    AttentionArgs {
        queries: qb,
        query_heads: 3,
        scale: 0.125,
        key_blocks: &p.own_k,
        value_blocks: &p.own_v,
        blocks: 3,
        salient: None,
        sinks: None,
        residual: None,
        out,
        lender,
    }
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn fused_attention_of_a_borrowing_layer_matches_the_reference() {
    for g in [GroupSize::G32, GroupSize::G64] {
        let c = Codec::new(Scheme::Xquant.config(HeadDim::new(64).unwrap(), g)).unwrap();
        let p = pair(c, 3, 21);
        let b = &p.borrowing;
        let mut k = vec![0.0f32; p.x_k.len()];
        let mut v = vec![0.0f32; p.x_v.len()];
        decode_borrowed_key_blocks(b, &c, &p.own_k, &p.lender_k, &mut k).unwrap();
        decode_borrowed_value_blocks(b, &c, &p.own_v, &p.lender_v, &mut v).unwrap();
        let mut rng = Rng(99);
        let q: Vec<f32> = (0..3 * 64).map(|_| rng.next()).collect();
        let qb = f32_bytes(&q);
        let mut out = vec![0u8; 3 * 64 * 4];
        let lender = LenderBlocks {
            key_blocks: &p.lender_k,
            value_blocks: &p.lender_v,
        };
        ScalarBackend
            .attend(b, args(&qb, &p, &mut out, Some(lender)))
            .unwrap();
        for h in 0..3 {
            let (want, _) = reference_attention(&k, &v, 64, &q[h * 64..][..64], 0.125);
            let norm = want.iter().map(|x| x * x).sum::<f64>().sqrt();
            for (i, w) in want.iter().enumerate() {
                let got = f32::from_le_bytes(out[(h * 64 + i) * 4..][..4].try_into().unwrap());
                assert!(
                    (f64::from(got) - w).abs() <= 1e-4 * (1.0 + norm),
                    "{got} vs {w}"
                );
            }
        }
        // Without the lender (or with one for an owning codec): typed errors.
        let r = ScalarBackend.attend(b, args(&qb, &p, &mut out, None));
        assert!(matches!(r, Err(Error::InvalidConfig { .. })), "{r:?}");
        let lender = LenderBlocks {
            key_blocks: &p.lender_k,
            value_blocks: &p.lender_v,
        };
        let r = ScalarBackend.attend(&c, args(&qb, &p, &mut out, Some(lender)));
        assert!(r.is_err());
    }
}

#[test]
fn streaming_cache_attends_a_borrowing_layer_with_its_lender() {
    let c = xquant();
    let mut rng = Rng(5);
    let (kv, qh, d, n) = (2, 4, 64, 200);
    let make = |codec: Codec| {
        let config = CacheConfig {
            residual: 64,
            sinks: 1,
            ..CacheConfig::new(codec, kv, qh)
        };
        let mut cache = KvCache::new(ScalarBackend, config).unwrap();
        cache.add_sequence().unwrap();
        cache
    };
    let (mut lender, mut own, mut plain) = (make(c), make(c.borrowing().unwrap()), make(c));
    let lk = rng.rows(kv * n, d);
    let lv = rng.rows(kv * n, d);
    let xk: Vec<f32> = lk.iter().map(|v| 0.5 * v).collect();
    let xv: Vec<f32> = lv.iter().map(|v| 2.0 * v + 0.25).collect();
    lender.prefill(0, &lk, &lv, Salient::None).unwrap();
    own.prefill(0, &xk, &xv, Salient::None).unwrap();
    plain.prefill(0, &xk, &xv, Salient::None).unwrap();
    assert!(own.blocks(0) > 0);
    assert!(own.memory().total() < plain.memory().total());
    let q: Vec<f32> = (0..qh * d).map(|_| rng.next()).collect();
    let mut shared = vec![0.0f32; qh * d];
    own.attend_borrowing(&lender, 0, &q, &mut shared).unwrap();
    // The borrower is an increasing affine map of the lender (keys halved, values doubled and
    // shifted): the lender's codes are its own codes, so the outputs agree up to f16 rounding.
    let mut alone = vec![0.0f32; qh * d];
    plain.attend(0, &q, &mut alone).unwrap();
    let diff: f32 = shared
        .iter()
        .zip(&alone)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f32>();
    let norm: f32 = alone.iter().map(|a| a * a).sum::<f32>();
    assert!(
        diff.sqrt() <= 1e-2 * norm.sqrt(),
        "{} vs {}",
        diff.sqrt(),
        norm.sqrt()
    );
    // Dequantized through the lender: the plain cache's values up to f16 rounding.
    let (dk, dv) = own.dequantize_borrowing(&lender, 0).unwrap();
    let (pk, pv) = plain.dequantize(0).unwrap();
    for (a, b) in dk.iter().zip(&pk).chain(dv.iter().zip(&pv)) {
        assert!((a - b).abs() <= 1e-2 * (1.0 + b.abs()), "{a} vs {b}");
    }
    assert!(matches!(
        own.dequantize(0),
        Err(Error::InvalidConfig { .. })
    ));
    // Typed errors: no lender, a lender with other blocks, an owning cache given a lender.
    assert!(matches!(
        own.attend(0, &q, &mut shared),
        Err(Error::InvalidConfig { .. })
    ));
    let mut short = make(c);
    short
        .prefill(
            0,
            &lk[..kv * 100 * d / 2],
            &lv[..kv * 100 * d / 2],
            Salient::None,
        )
        .unwrap();
    assert!(own.attend_borrowing(&short, 0, &q, &mut shared).is_err());
    assert!(plain.attend_borrowing(&lender, 0, &q, &mut shared).is_err());
}

fn heads<'a>(keys: &'a [Vec<u8>], values: &'a [Vec<u8>], tail: &'a [u8]) -> Vec<HeadSection<'a>> {
    keys.iter()
        .zip(values)
        .map(|(k, v)| HeadSection {
            key_blocks: k,
            value_blocks: v,
            tail_keys: tail,
            tail_values: tail,
        })
        .collect()
}

#[test]
fn container_round_trips_a_borrowing_layer_and_rejects_bad_lenders() {
    let p = pair(xquant(), 2, 31);
    let tail = vec![0u8; 3 * 64 * 2];
    let lender_k = vec![p.lender_k.clone(); 2];
    let lender_v = vec![p.lender_v.clone(); 2];
    let own_k = vec![p.own_k.clone(); 2];
    let own_v = vec![p.own_v.clone(); 2];
    let lh = heads(&lender_k, &lender_v, &tail);
    let oh = heads(&own_k, &own_v, &tail);
    let layer = |heads: &'static str, h| LayerInput {
        key_name: heads,
        value_name: "v",
        blocks: 2,
        tail_tokens: 3,
        outliers: None,
        heads: h,
    };
    let mut w = ContainerWriter::new(&p.codec);
    // The lender must be written first and own its codes.
    assert!(w.add_borrowing_layer(&layer("k_post.1", &oh), 0).is_err());
    w.add_layer(&layer("k_post.0", &lh)).unwrap();
    assert!(
        w.add_layer(&layer("k_post.1", &oh)).is_err(),
        "sizes are params-only"
    );
    w.add_borrowing_layer(&layer("k_post.1", &oh), 0).unwrap();
    assert!(w.add_borrowing_layer(&layer("k_post.2", &oh), 1).is_err());
    let bytes = w.finish();
    let file = Container::parse(&bytes).unwrap();
    let [l0, l1] = file.layers() else {
        panic!("two layers")
    };
    assert_eq!((l0.lender, l1.lender), (None, Some(0)));
    assert_eq!(l1.heads[1].key_blocks, p.own_k.as_slice());
    let mut k = vec![0.0f32; p.x_k.len()];
    decode_borrowed_key_blocks(
        &file.codec().borrowing().unwrap(),
        file.codec(),
        l1.heads[0].key_blocks,
        l0.heads[0].key_blocks,
        &mut k,
    )
    .unwrap();

    // Damaged lender index (offset 28 of the second layer header): itself, a later layer,
    // and a layer that does not exist. The checksum is recomputed so the index check fires.
    let second = 64 + u64::from_le_bytes(bytes[64 + 16..64 + 24].try_into().unwrap()) as usize;
    for index in [2u32, 3, 99] {
        let mut bad = bytes.clone();
        bad[second + 28..second + 32].copy_from_slice(&index.to_le_bytes());
        let names = usize::from(u16::from_le_bytes([bad[second + 12], bad[second + 13]]))
            + usize::from(u16::from_le_bytes([bad[second + 14], bad[second + 15]]));
        let sum_at = second + (32 + names).next_multiple_of(8);
        let sum = vidkv_core::container::checksum(&bad[second..sum_at]);
        bad[sum_at..sum_at + 8].copy_from_slice(&sum.to_le_bytes());
        let r = Container::parse(&bad);
        assert!(matches!(r, Err(Error::Container { .. })), "{index}: {r:?}");
    }
    // A borrowing layer in a configuration that cannot borrow.
    let vk = Codec::new(Scheme::Vidkv.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap();
    assert!(
        ContainerWriter::new(&vk)
            .add_borrowing_layer(&layer("k", &oh), 0)
            .is_err()
    );
}
