//! The streaming cache over the scalar backend: prefill = appends (byte for byte), fused
//! attention = the f64 reference over the dequantized cache, sinks, salient tokens, GQA, batches,
//! memory accounting. Real data: the CLI's bundled SmolLM2 sample (always) and
//! `/work/shared/data` (when present).

use std::path::Path;

use half::f16;
use vidkv_core::cache::{CacheConfig, KvCache, Salient, reference_attention, salient_codec};
use vidkv_core::{
    Capability, ChannelMask, Codec, GroupSize, HeadDim, KvQuantBackend, Operation, Scheme,
};
use vidkv_cpu::{
    ScalarBackend, decode_value_blocks, encode_value_blocks, encode_value_blocks_masked,
};

/// Deterministic pseudo-random numbers (xorshift).
struct Rng(u64);
impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
    fn normal(&mut self) -> f32 {
        (0..4).map(|_| self.next_f32()).sum::<f32>() * 0.866
    }
    /// `[heads, tokens, d]` keys like the real data: a few channels much larger, a heavy token 0.
    fn keys(&mut self, heads: usize, tokens: usize, d: usize) -> Vec<f32> {
        let mut v = Vec::with_capacity(heads * tokens * d);
        for _ in 0..heads {
            for t in 0..tokens {
                for c in 0..d {
                    let outlier = if c % 16 == 3 { 6.0 } else { 1.0 };
                    let heavy = if t == 0 { 3.0 } else { 1.0 };
                    v.push(self.normal() * outlier * heavy + 0.3);
                }
            }
        }
        v
    }
    fn values(&mut self, heads: usize, tokens: usize, d: usize) -> Vec<f32> {
        (0..heads * tokens * d)
            .map(|i| self.normal() * (1.0 + ((i % d) % 5) as f32 * 0.3))
            .collect()
    }
}

fn codec(s: Scheme, d: usize, g: usize) -> Codec {
    Codec::new(s.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap())).unwrap()
}

fn config(codec: Codec, kv: usize, q: usize, residual: usize, sinks: usize) -> CacheConfig {
    CacheConfig {
        residual,
        sinks,
        ..CacheConfig::new(codec, kv, q)
    }
}

/// Token `t` of every head of `[heads, n, d]`, as `[heads, d]`.
fn token(x: &[f32], heads: usize, n: usize, d: usize, t: usize) -> Vec<f32> {
    (0..heads)
        .flat_map(|h| x[(h * n + t) * d..][..d].iter().copied())
        .collect()
}

/// ‖a − b‖ / ‖b‖.
fn rel(a: &[f32], b: &[f64]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (f64::from(x) - y).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

/// Fused attention against the f64 reference over the dequantized cache (for sign-sketch keys
/// the same estimator in f64, [`KvCache::reference_attend`]), for every query head; returns the
/// worst relative error.
fn fused_vs_reference(cache: &KvCache<ScalarBackend>, seq: usize, q: &[f32]) -> f64 {
    let d = cache.config().codec.head_dim();
    let mut out = vec![0.0f32; q.len()];
    cache.attend(seq, q, &mut out).unwrap();
    let reference = cache.reference_attend(seq, q).unwrap();
    out.chunks_exact(d)
        .zip(reference.chunks_exact(d))
        .map(|(o, r)| rel(o, r))
        .fold(0.0, f64::max)
}

/// Tolerance of fused attention against the reference: f32 summation only for f32-arithmetic
/// schemes; plus f16 rounding of decoded min/max codes under reference arithmetic.
fn tolerance(codec: &Codec) -> f64 {
    match codec.config().arithmetic {
        vidkv_core::Arithmetic::F32 => 2e-5,
        vidkv_core::Arithmetic::Reference => 1e-2,
    }
}

#[test]
fn scalar_backend_reports_attend_supported() {
    let c = codec(Scheme::Vidkv, 64, 32);
    assert_eq!(
        ScalarBackend.capability(Operation::Attend, &c),
        Capability::Supported
    );
}

#[test]
fn appends_give_the_same_blocks_and_state_as_prefill() {
    let mut rng = Rng(7);
    let (heads, d) = (2, 64);
    for scheme in Scheme::ALL {
        for (g, residual, sinks, n) in [
            (32, 128, 0, 300),
            (32, 0, 1, 97),
            (64, 50, 4, 260),
            (32, 31, 2, 140),
        ] {
            let codec = codec(scheme, d, g);
            let mut cfg = config(codec, heads, heads * 3, residual, sinks);
            // Layer scope pools the outliers over what it quantizes first: fix the set so that
            // both paths use the same one.
            cfg.outliers = Some(ChannelMask::from_channels((0..d).filter(|c| c % 2 == 1)));
            if !matches!(codec.config().keys, vidkv_core::KeyScheme::Mixed(_)) {
                cfg.outliers = None;
            }
            let k = rng.keys(heads, n, d);
            let v = rng.values(heads, n, d);
            let salient: Vec<usize> = (0..n).filter(|t| t % 5 == 2).collect();

            let mut pre = KvCache::new(ScalarBackend, cfg).unwrap();
            let s0 = pre.add_sequence().unwrap();
            pre.prefill(s0, &k, &v, Salient::Indices(&salient)).unwrap();

            let mut inc = KvCache::new(ScalarBackend, cfg).unwrap();
            let s1 = inc.add_sequence().unwrap();
            for t in 0..n {
                let (kt, vt) = (token(&k, heads, n, d, t), token(&v, heads, n, d, t));
                inc.append_token(s1, &kt, &vt, salient.contains(&t))
                    .unwrap();
            }

            let what = format!("{} g={g} r={residual} s={sinks}", scheme.name());
            assert_eq!(pre.blocks(s0), inc.blocks(s1), "{what}");
            let expected_blocks = (n - sinks.min(n))
                .saturating_sub(residual.max(g - 1))
                .div_ceil(g);
            assert_eq!(pre.blocks(s0), expected_blocks, "{what}");
            assert!(pre.residual_tokens(s0) <= residual.max(g - 1), "{what}");
            for h in 0..heads {
                assert_eq!(
                    pre.key_blocks(s0, h).unwrap(),
                    inc.key_blocks(s1, h).unwrap(),
                    "{what}"
                );
                assert_eq!(
                    pre.value_blocks(s0, h).unwrap(),
                    inc.value_blocks(s1, h).unwrap(),
                    "{what}"
                );
            }
            assert_eq!(
                pre.dequantize(s0).unwrap(),
                inc.dequantize(s1).unwrap(),
                "{what}"
            );
            assert_eq!(pre.memory(), inc.memory(), "{what}");

            let q: Vec<f32> = (0..heads * 3 * d).map(|_| rng.normal()).collect();
            let (mut a, mut b) = (vec![0.0; q.len()], vec![0.0; q.len()]);
            pre.attend(s0, &q, &mut a).unwrap();
            inc.attend(s1, &q, &mut b).unwrap();
            assert_eq!(a, b, "{what}");
            let err = fused_vs_reference(&pre, s0, &q);
            assert!(err < tolerance(&codec), "{what}: fused vs reference {err}");
        }
    }
}

#[test]
fn fused_attention_matches_the_reference_on_random_data() {
    let mut rng = Rng(11);
    for scheme in Scheme::ALL {
        // GQA groups of 4, 7, 16 (table passes, one and two query chunks) and 1 (direct passes).
        for (d, g, n, kv, qh) in [
            (64, 32, 1000, 2, 8),
            (128, 64, 700, 1, 7),
            (80, 32, 333, 1, 16),
            (96, 128, 600, 2, 2),
        ] {
            let codec = codec(scheme, d, g);
            let mut cache = KvCache::new(ScalarBackend, config(codec, kv, qh, 64, 1)).unwrap();
            let seq = cache.add_sequence().unwrap();
            cache
                .prefill(
                    seq,
                    &rng.keys(kv, n, d),
                    &rng.values(kv, n, d),
                    Salient::None,
                )
                .unwrap();
            for _ in 0..2 {
                let q: Vec<f32> = (0..qh * d).map(|_| rng.normal() * 2.0).collect();
                let err = fused_vs_reference(&cache, seq, &q);
                assert!(
                    err < tolerance(&codec),
                    "{} d={d} g={g} q/kv={qh}/{kv}: {err}",
                    scheme.name()
                );
            }
        }
    }
}

#[test]
fn quantization_error_of_attention_is_small_and_the_residual_is_exact() {
    // Not a conformance bound, a sanity check that the fused output is attention at all.
    let mut rng = Rng(5);
    let (kv, qh, d, n) = (1, 4, 64, 512);
    let k = rng.keys(kv, n, d);
    let v = rng.values(kv, n, d);
    let q: Vec<f32> = (0..qh * d).map(|_| rng.normal() * 0.5).collect();
    let exact: Vec<Vec<f64>> = (0..qh)
        .map(|h| reference_attention(&k, &v, d, &q[h * d..][..d], 1.0 / 8.0).0)
        .collect();
    for scheme in [Scheme::Vidkv, Scheme::Kivi4] {
        let mut cache =
            KvCache::new(ScalarBackend, config(codec(scheme, d, 32), kv, qh, 128, 1)).unwrap();
        let seq = cache.add_sequence().unwrap();
        cache.prefill(seq, &k, &v, Salient::None).unwrap();
        let mut out = vec![0.0; qh * d];
        cache.attend(seq, &q, &mut out).unwrap();
        for h in 0..qh {
            let e = rel(&out[h * d..][..d], &exact[h]);
            assert!(e < 0.5, "{}: {e}", scheme.name());
        }
    }
    // Everything in the residual: f16 rounding only.
    let mut cache = KvCache::new(
        ScalarBackend,
        config(codec(Scheme::Vidkv, d, 32), kv, qh, 1024, 0),
    )
    .unwrap();
    let seq = cache.add_sequence().unwrap();
    cache.prefill(seq, &k, &v, Salient::None).unwrap();
    assert_eq!(cache.blocks(seq), 0);
    let mut out = vec![0.0; qh * d];
    cache.attend(seq, &q, &mut out).unwrap();
    for h in 0..qh {
        assert!(rel(&out[h * d..][..d], &exact[h]) < 2e-3);
    }
}

#[test]
fn batches_of_different_lengths_and_gqa_mapping() {
    let mut rng = Rng(3);
    let (kv, qh, d) = (3, 9, 64);
    let codec = codec(Scheme::Vidkv, d, 32);
    let mut cache = KvCache::new(ScalarBackend, config(codec, kv, qh, 64, 1)).unwrap();
    let lengths = [0usize, 1, 40, 333];
    let mut data = Vec::new();
    for &n in &lengths {
        let seq = cache.add_sequence().unwrap();
        let (k, v) = (rng.keys(kv, n, d), rng.values(kv, n, d));
        cache.prefill(seq, &k, &v, Salient::None).unwrap();
        data.push((k, v));
    }
    let q: Vec<f32> = (0..lengths.len() * qh * d).map(|_| rng.normal()).collect();
    let mut all = vec![0.0; q.len()];
    cache.attend_all(&q, &mut all).unwrap();
    for (s, &n) in lengths.iter().enumerate() {
        assert_eq!(cache.tokens(s), n);
        let qs = &q[s * qh * d..][..qh * d];
        let mut one = vec![0.0; qh * d];
        cache.attend(s, qs, &mut one).unwrap();
        assert_eq!(&all[s * qh * d..][..qh * d], &one[..]);
        if n == 0 {
            assert!(
                one.iter().all(|&x| x == 0.0),
                "empty sequence attends to nothing"
            );
            continue;
        }
        assert!(fused_vs_reference(&cache, s, qs) < 2e-5);
        // Query head h uses KV head h / 3: with exact (residual-only) tokens of a single KV head
        // the output follows that head's values.
        if n == 1 {
            let (_, v) = &data[s];
            for h in 0..qh {
                let kvh = h / 3;
                for c in 0..d {
                    let want = f16::from_f32(v[kvh * d + c]).to_f32();
                    assert!((one[h * d + c] - want).abs() <= 1e-6 * want.abs().max(1.0));
                }
            }
        }
    }
}

#[test]
fn sinks_stay_exact_and_out_of_the_blocks() {
    let mut rng = Rng(9);
    let (kv, d, n) = (1, 64, 200);
    let k = rng.keys(kv, n, d);
    let v = rng.values(kv, n, d);
    for sinks in [0, 1, 4] {
        let mut cache = KvCache::new(
            ScalarBackend,
            config(codec(Scheme::Vidkv, d, 32), kv, 1, 32, sinks),
        )
        .unwrap();
        let seq = cache.add_sequence().unwrap();
        cache.prefill(seq, &k, &v, Salient::None).unwrap();
        let (dk, dv) = cache.dequantize(seq).unwrap();
        assert_eq!(dk.len(), n * d);
        for i in 0..sinks * d {
            assert_eq!(dk[i], f16::from_f32(k[i]).to_f32());
            assert_eq!(dv[i], f16::from_f32(v[i]).to_f32());
        }
        // The first block starts right after the sinks.
        let codec = cache.codec();
        let mut first = vec![0u8; codec.key_block_bytes()];
        let rows: Vec<f32> = k[sinks * d..][..32 * d]
            .iter()
            .map(|&x| f16::from_f32(x).to_f32())
            .collect();
        vidkv_cpu::encode_key_blocks(codec, &rows, None, &mut first).unwrap();
        assert_eq!(cache.key_blocks(seq, 0).unwrap()[..first.len()], first[..]);
        let m = cache.memory();
        assert_eq!(m.tokens, n);
        assert_eq!(
            m.residual,
            (sinks + cache.residual_tokens(seq)) * 2 * d * 2,
            "sinks and residual are f16 keys and values"
        );
    }
}

#[test]
fn salient_tokens_decode_in_place_and_attention_agrees() {
    let mut rng = Rng(21);
    let (kv, qh, d, n) = (2, 8, 64, 700);
    let k = rng.keys(kv, n, d);
    let v = rng.values(kv, n, d);
    let scores: Vec<f32> = (0..n).map(|_| rng.next_f32()).collect();
    for scheme in Scheme::ALL {
        let codec = codec(scheme, d, 32);
        let mut cache = KvCache::new(ScalarBackend, config(codec, kv, qh, 64, 1)).unwrap();
        let seq = cache.add_sequence().unwrap();
        cache
            .prefill(
                seq,
                &k,
                &v,
                Salient::Scores {
                    scores: &scores,
                    fraction: 0.2,
                },
            )
            .unwrap();
        // Salient flags as the cache saw them (sink token 0 aside).
        let flags = Salient::Scores {
            scores: &scores,
            fraction: 0.2,
        }
        .flags(n)
        .unwrap();
        assert_eq!(flags.iter().filter(|&&f| f).count(), 140);
        let (_, dv) = cache.dequantize(seq).unwrap();
        let blocks = cache.blocks(seq);
        let quantized = 1..1 + blocks * 32;
        let salient: Vec<usize> = quantized.clone().filter(|&t| flags[t]).collect();
        let sc = salient_codec(&codec);
        for h in 0..kv {
            // Non-salient tokens: the masked value blocks decoded in place.
            let vb = cache.value_blocks(seq, h).unwrap();
            let mut plain = vec![0.0; blocks * 32 * d];
            decode_value_blocks(&codec, &vb, &mut plain).unwrap();
            for t in quantized.clone().filter(|&t| !flags[t]) {
                assert_eq!(dv[(h * n + t) * d..][..d], plain[(t - 1) * d..][..d]);
            }
            // Salient tokens: their rows of 2-bit groups over the salient tokens in order.
            let whole = salient.len() / 32 * 32;
            let rows: Vec<f32> = salient[..whole]
                .iter()
                .flat_map(|&t| {
                    v[(h * n + t) * d..][..d]
                        .iter()
                        .map(|&x| f16::from_f32(x).to_f32())
                })
                .collect();
            let mut enc = vec![0u8; whole / 32 * sc.value_block_bytes()];
            encode_value_blocks(&sc, &rows, &mut enc).unwrap();
            let mut dec = vec![0.0; rows.len()];
            vidkv_cpu::decode_value_blocks(&sc, &enc, &mut dec).unwrap();
            for (i, &t) in salient.iter().enumerate() {
                let got = &dv[(h * n + t) * d..][..d];
                if i < whole {
                    assert_eq!(got, &dec[i * d..][..d], "{} token {t}", scheme.name());
                } else {
                    let f: Vec<f32> = v[(h * n + t) * d..][..d]
                        .iter()
                        .map(|&x| f16::from_f32(x).to_f32())
                        .collect();
                    assert_eq!(got, &f[..], "pending salient token {t} is f16");
                }
            }
        }
        let q: Vec<f32> = (0..qh * d).map(|_| rng.normal()).collect();
        let err = fused_vs_reference(&cache, seq, &q);
        assert!(err < tolerance(&codec), "{}: {err}", scheme.name());
        let m = cache.memory();
        assert_eq!(m.metadata, blocks * 4);
        assert!(m.salient_blocks > 0);
    }
}

#[test]
fn masked_value_encoding_without_bits_is_the_plain_encoding() {
    let mut rng = Rng(2);
    for scheme in Scheme::ALL {
        let codec = codec(scheme, 64, 32);
        let x = rng.values(1, 64, 64);
        let mut a = vec![0u8; 2 * codec.value_block_bytes()];
        let mut b = a.clone();
        encode_value_blocks(&codec, &x, &mut a).unwrap();
        encode_value_blocks_masked(&codec, &x, Some(&[0u8; 8]), &mut b).unwrap();
        assert_eq!(a, b, "{}", scheme.name());
        // All tokens excluded decodes to zeros (ternary, per-token) or to lo = 0 (per-channel).
        encode_value_blocks_masked(&codec, &x, Some(&[0xff; 8]), &mut b).unwrap();
        let mut dec = vec![1.0; x.len()];
        decode_value_blocks(&codec, &b, &mut dec).unwrap();
        assert!(dec.iter().all(|&y| y == 0.0), "{}", scheme.name());
    }
}

#[test]
fn damaged_blocks_give_typed_errors_in_attention() {
    let mut rng = Rng(4);
    let (kv, d, n) = (1, 64, 256);
    for scheme in Scheme::ALL {
        let codec = codec(scheme, d, 32);
        let mut cache = KvCache::new(ScalarBackend, config(codec, kv, 2, 0, 0)).unwrap();
        let seq = cache.add_sequence().unwrap();
        cache
            .prefill(
                seq,
                &rng.keys(kv, n, d),
                &rng.values(kv, n, d),
                Salient::None,
            )
            .unwrap();
        let keys = cache.key_blocks(seq, 0).unwrap();
        let values = cache.value_blocks(seq, 0).unwrap();
        let q = vec![0.5f32; 2 * d];
        let qb: Vec<u8> = q.iter().flat_map(|x| x.to_le_bytes()).collect();
        let run = |keys: &Vec<u8>, values: &Vec<u8>| {
            let mut out = vec![0u8; 2 * d * 4];
            ScalarBackend.attend(
                &codec,
                vidkv_core::backend::AttentionArgs {
                    queries: &qb,
                    query_heads: 2,
                    scale: 0.125,
                    key_blocks: keys,
                    value_blocks: values,
                    blocks: n / 32,
                    salient: None,
                    sinks: None,
                    residual: None,
                    out: &mut out,
                    lender: None,
                },
            )
        };
        run(&keys, &values).unwrap();
        // Every byte flipped to 0xff, one at a time in the first block: an error or a result,
        // never a panic; flipping a scale/parameter to NaN is an error.
        for i in 0..codec.key_block_bytes() {
            let mut k = keys.clone();
            k[i] = 0xff;
            let _ = run(&k, &values);
        }
        for i in 0..codec.value_block_bytes() {
            let mut v = values.clone();
            v[i] = 0xff;
            v[i ^ 1] = 0xff;
            let _ = run(&keys, &v);
        }
        assert!(run(&keys[..10].to_vec(), &values).is_err());
        let mut v = values.clone();
        v[0] = 0xff;
        v[1] = 0xff; // first scale/param half: NaN
        assert!(
            matches!(run(&keys, &v), Err(vidkv_core::Error::Corrupt { .. })),
            "{}",
            scheme.name()
        );
    }
}

// ---- real data ------------------------------------------------------------------------------

/// `name` as f32 from a safetensors file (F16/F32), with its shape.
fn tensor(bytes: &[u8], name: &str) -> Option<(Vec<f32>, Vec<usize>)> {
    let st = safetensors::SafeTensors::deserialize(bytes).ok()?;
    let t = st.tensor(name).ok()?;
    let data = match t.dtype() {
        safetensors::Dtype::F16 => t
            .data()
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        safetensors::Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        _ => return None,
    };
    Some((data, t.shape().to_vec()))
}

/// Streams the layer's tokens through a cache and checks fused attention of the last queries
/// against the reference (causal: query at position p sees tokens 0..=p).
fn real_layer(path: &Path, layer: u32, queries: usize) {
    let bytes = std::fs::read(path).unwrap();
    let (k, ks) = tensor(&bytes, &format!("k_post.{layer}")).unwrap();
    let (v, _) = tensor(&bytes, &format!("v.{layer}")).unwrap();
    let (q, qs) = tensor(&bytes, &format!("q_post.{layer}")).unwrap();
    let (kv, n, d) = (ks[0], ks[1], ks[2]);
    let (qh, nq) = (qs[0], qs[1]);
    let first = n - nq;
    for scheme in Scheme::ALL {
        let codec = codec(scheme, d, 32);
        let mut cache = KvCache::new(ScalarBackend, config(codec, kv, qh, 128, 1)).unwrap();
        let seq = cache.add_sequence().unwrap();
        let prefix: Vec<f32> = (0..kv)
            .flat_map(|h| k[h * n * d..][..first * d].iter().copied())
            .collect();
        let vprefix: Vec<f32> = (0..kv)
            .flat_map(|h| v[h * n * d..][..first * d].iter().copied())
            .collect();
        cache
            .prefill(seq, &prefix, &vprefix, Salient::None)
            .unwrap();
        let mut worst = 0.0f64;
        for (i, p) in (first..n).enumerate() {
            cache
                .append(seq, &token(&k, kv, n, d, p), &token(&v, kv, n, d, p))
                .unwrap();
            if i % (nq / queries).max(1) != 0 {
                continue;
            }
            let qp: Vec<f32> = (0..qh)
                .flat_map(|h| q[(h * nq + i) * d..][..d].iter().copied())
                .collect();
            worst = worst.max(fused_vs_reference(&cache, seq, &qp));
        }
        println!(
            "{} layer {layer} {}: fused vs reference {worst:.2e}",
            path.display(),
            scheme.name()
        );
        assert!(worst < tolerance(&codec), "{}: {worst}", scheme.name());
    }
}

#[test]
fn fused_attention_matches_the_reference_on_the_bundled_sample() {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../vidkv/data/sample_smollm2.safetensors");
    real_layer(&path, 15, 8);
}

#[test]
fn fused_attention_matches_the_reference_on_shared_data() {
    let path = Path::new("/work/shared/data/smollm2_apache_kv.safetensors");
    if !path.exists() {
        println!("shared data not found: skipped");
        return;
    }
    for layer in [0, 29] {
        real_layer(path, layer, 4);
    }
}

#[test]
fn salient_rows_that_are_not_byte_aligned_and_odd_lane_counts() {
    // D = 18: a salient row's 2-bit codes start mid-byte, and mixed keys have 9 FFT lanes.
    let mut rng = Rng(31);
    let (kv, qh, d, n) = (1, 4, 18, 300);
    let idx: Vec<usize> = (0..n).filter(|t| t % 3 == 0).collect();
    for scheme in [Scheme::Vidkv, Scheme::Pc2] {
        let codec = codec(scheme, d, 32);
        let mut cache = KvCache::new(ScalarBackend, config(codec, kv, qh, 32, 1)).unwrap();
        let seq = cache.add_sequence().unwrap();
        cache
            .prefill(
                seq,
                &rng.keys(kv, n, d),
                &rng.values(kv, n, d),
                Salient::Indices(&idx),
            )
            .unwrap();
        let q: Vec<f32> = (0..qh * d).map(|_| rng.normal()).collect();
        let err = fused_vs_reference(&cache, seq, &q);
        assert!(err < tolerance(&codec), "{}: {err}", scheme.name());
    }
}

/// The H1B-KV score estimates `q·k`: on isotropic Gaussian keys its correlation with the exact
/// score is about `1/√(1 + (π²/4)·D/b)` (SimHash noise `≈ (π/2)/√b` in the cosine against a
/// cosine spread of `1/√D`): ≈ 0.93 for b = 256 over D = 16, ≈ 0.79 for b = 64.
#[test]
fn h1b_scores_correlate_with_exact_scores_as_the_sketch_predicts() {
    let mut rng = Rng(17);
    let (d, n) = (16, 32 * 64);
    let k: Vec<f32> = (0..n * d).map(|_| rng.normal()).collect();
    let q: Vec<f32> = (0..d).map(|_| rng.normal()).collect();
    let exact: Vec<f64> = k
        .chunks_exact(d)
        .map(|row| row.iter().zip(&q).map(|(a, b)| f64::from(a * b)).sum())
        .collect();
    let mut corr = Vec::new();
    for bits in [vidkv_core::SketchBits::B64, vidkv_core::SketchBits::B256] {
        let mut cfg = Scheme::H1b.config(HeadDim::new(d).unwrap(), GroupSize::G32);
        cfg.keys = vidkv_core::KeyScheme::SignSketch { bits, seed: 5 };
        let codec = Codec::new(cfg).unwrap();
        let mut blocks = vec![0u8; n / 32 * codec.key_block_bytes()];
        vidkv_cpu::encode_key_blocks(&codec, &k, None, &mut blocks).unwrap();
        let est = vidkv_core::sketch::reference_scores(&codec, &blocks, &q, 1.0).unwrap();
        corr.push(pearson(&est, &exact));
    }
    eprintln!("h1b score correlation with q·k, b = 64 / 256 over D = 16: {corr:?}");
    assert!((corr[0] - 0.79).abs() < 0.06, "{corr:?}");
    assert!((corr[1] - 0.93).abs() < 0.04, "{corr:?}");
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}
