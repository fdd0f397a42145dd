//! The min/max fused kernel (per-channel keys, per-token or per-channel values; `kivi2`,
//! `kivi4`, `pc2`, `xquant`, `ott2`) against the scalar backend's fused kernel through the
//! backend trait, at every level this CPU has: f32 summation-order differences only, and the
//! scalar backend's error on damaged parameters.

use vidkv_core::backend::{AttentionArgs, DenseRows};
use vidkv_core::{
    Codec, Error, GroupSize, HeadDim, KeyLayout, KvQuantBackend, Scheme, ValueLayout,
};
use vidkv_cpu::{ScalarBackend, encode_key_blocks, encode_value_blocks};
use vidkv_simd::{Level, SimdBackend};

const SCHEMES: [Scheme; 5] = [
    Scheme::Kivi2,
    Scheme::Kivi4,
    Scheme::Pc2,
    Scheme::Xquant,
    Scheme::Ott2,
];

fn rows(seed: u64, n: usize, d: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|i| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            // Some channels much larger than others, as real keys have.
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * (1.0 + (i % d % 5) as f32)
        })
        .collect()
}

struct Job {
    codec: Codec,
    keys: Vec<u8>,
    values: Vec<u8>,
    blocks: usize,
    queries: Vec<u8>,
    query_heads: usize,
    /// f16 rows: sinks (4 tokens) then a residual ring of capacity 9 holding 6 tokens.
    sinks: Vec<u8>,
    ring: Vec<u8>,
}

impl Job {
    fn new(scheme: Scheme, d: usize, g: GroupSize, blocks: usize, query_heads: usize) -> Self {
        let codec = Codec::new(scheme.config(HeadDim::new(d).unwrap(), g)).unwrap();
        let n = blocks * codec.block_elements();
        let mut keys = vec![0u8; blocks * codec.key_block_bytes()];
        let mut values = vec![0u8; blocks * codec.value_block_bytes()];
        encode_key_blocks(&codec, &rows(1 + d as u64, n, d), None, &mut keys).unwrap();
        encode_value_blocks(&codec, &rows(2 + d as u64, n, d), &mut values).unwrap();
        let f16s = |seed, n| -> Vec<u8> {
            rows(seed, n, d)
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect()
        };
        Self {
            codec,
            keys,
            values,
            blocks,
            queries: rows(3, query_heads * d, d)
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            query_heads,
            sinks: f16s(4, 4 * d),
            ring: f16s(5, 9 * d),
        }
    }

    fn run<B: KvQuantBackend<Buffer = Vec<u8>>>(&self, backend: &B) -> Result<Vec<f32>, Error> {
        let d = self.codec.head_dim();
        let mut out = vec![0u8; self.query_heads * d * 4];
        backend.attend(
            &self.codec,
            AttentionArgs {
                queries: &self.queries,
                query_heads: self.query_heads,
                scale: 1.0 / (d as f32).sqrt(),
                key_blocks: &self.keys,
                value_blocks: &self.values,
                blocks: self.blocks,
                salient: None,
                sinks: Some(DenseRows {
                    keys: &self.sinks,
                    values: &self.sinks,
                    start: 0,
                    len: 4,
                    capacity: 4,
                }),
                residual: Some(DenseRows {
                    keys: &self.ring,
                    values: &self.ring,
                    start: 7,
                    len: 6,
                    capacity: 9,
                }),
                out: &mut out,
                lender: None,
            },
        )?;
        Ok(out
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

impl Job {
    /// The kernel itself accepts the job (the backend would hide its errors behind a scalar
    /// rerun).
    fn kernel_runs(&self, level: Level) {
        let d = self.codec.head_dim();
        let q: Vec<f32> = self
            .queries
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let cache = vidkv_simd::HeadCache {
            key_blocks: &self.keys,
            value_blocks: &self.values,
            blocks: self.blocks,
            residual_keys: &self.sinks,
            residual_values: &self.sinks,
            residual_tokens: self.sinks.len() / (2 * d),
        };
        let mut out = vec![0.0; q.len()];
        vidkv_simd::attend_head(level, &self.codec, &q, &cache, &mut out).unwrap();
        assert!(out.iter().all(|x| x.is_finite()));
    }
}

fn simd_levels() -> Vec<SimdBackend> {
    Level::ALL
        .into_iter()
        .filter(|&l| l != Level::Scalar)
        .filter_map(|l| SimdBackend::with_level(l).ok())
        .collect()
}

/// Largest difference relative to the largest output magnitude.
fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn minmax_kernel_matches_the_scalar_fused_kernel() {
    let levels = simd_levels();
    for scheme in SCHEMES {
        for d in [64, 128, 80, 18] {
            for g in [GroupSize::G32, GroupSize::G64, GroupSize::G128] {
                let job = Job::new(scheme, d, g, 3, 5);
                let want = job.run(&ScalarBackend).unwrap();
                assert!(want.iter().all(|x| x.is_finite()));
                for simd in &levels {
                    job.kernel_runs(simd.level());
                    let got = job.run(simd).unwrap();
                    let err = max_rel(&got, &want);
                    assert!(
                        err < 2e-5,
                        "{scheme:?} d={d} g={g:?} {:?}: {err}",
                        simd.level()
                    );
                }
            }
        }
    }
}

/// The traced tokens (OTT) matter: the kernel does not just agree with itself without them.
#[test]
fn ott2_traced_scores_are_patched() {
    let job = Job::new(Scheme::Ott2, 64, GroupSize::G32, 4, 3);
    assert!(job.codec.traced_layout().is_some());
    let mut untraced = Job::new(Scheme::Kivi2, 64, GroupSize::G32, 4, 3);
    // Same key codes and parameters without the traced part: the outputs must differ.
    let kb = untraced.codec.key_block_bytes();
    let tb = job.codec.key_block_bytes();
    untraced.keys = job
        .keys
        .chunks_exact(tb)
        .flat_map(|b| b[..kb].to_vec())
        .collect();
    untraced.values.clone_from(&job.values);
    for simd in simd_levels() {
        let traced = job.run(&simd).unwrap();
        let plain = untraced.run(&simd).unwrap();
        assert!(max_rel(&traced, &plain) > 1e-3, "{:?}", simd.level());
        assert!(max_rel(&traced, &job.run(&ScalarBackend).unwrap()) < 2e-5);
    }
}

fn param_offsets(codec: &Codec) -> (usize, usize) {
    let KeyLayout::PerChannel { params: k, .. } = *codec.key_layout() else {
        panic!("per-channel keys")
    };
    let v = match *codec.value_layout() {
        ValueLayout::PerToken { params, .. } | ValueLayout::PerChannel { params, .. } => params,
        ValueLayout::Ternary { .. } => panic!("min/max values"),
    };
    (k.offset, v.offset)
}

#[test]
fn damaged_parameters_give_the_scalar_error() {
    let levels = simd_levels();
    for scheme in SCHEMES {
        let clean = Job::new(scheme, 80, GroupSize::G32, 3, 4);
        let (kp, vp) = param_offsets(&clean.codec);
        let (kb, vb) = (
            clean.codec.key_block_bytes(),
            clean.codec.value_block_bytes(),
        );
        // NaN lo of key channel 5 in block 2; negative step of value pair 3 in block 1; both.
        let nan = half::f16::NAN.to_le_bytes();
        let neg = half::f16::from_f32(-0.5).to_le_bytes();
        let cases: [(Option<usize>, Option<usize>); 3] = [
            (Some(2 * kb + kp + 4 * 5), None),
            (None, Some(vb + vp + 4 * 3 + 2)),
            (Some(2 * kb + kp + 4 * 5), Some(vb + vp + 4 * 3 + 2)),
        ];
        for (key_at, value_at) in cases {
            let mut job = Job::new(scheme, 80, GroupSize::G32, 3, 4);
            if let Some(at) = key_at {
                job.keys[at..at + 2].copy_from_slice(&nan);
            }
            if let Some(at) = value_at {
                job.values[at..at + 2].copy_from_slice(&neg);
            }
            let want = job.run(&ScalarBackend).unwrap_err();
            assert!(matches!(want, Error::Corrupt { .. }), "{want:?}");
            for simd in &levels {
                assert_eq!(
                    job.run(simd).unwrap_err(),
                    want,
                    "{scheme:?} {:?}",
                    simd.level()
                );
            }
        }
    }
}

/// The kernel's own checks (through `attend_head`, without the backend's scalar rerun) give the
/// scalar backend's error too, relative to the block bytes.
#[test]
fn attend_head_reports_damaged_parameters() {
    for scheme in SCHEMES {
        let job = Job::new(scheme, 64, GroupSize::G32, 2, 2);
        let (kp, vp) = param_offsets(&job.codec);
        let (kb, vb) = (job.codec.key_block_bytes(), job.codec.value_block_bytes());
        for in_keys in [true, false] {
            let (mut keys, mut values) = (job.keys.clone(), job.values.clone());
            let (bytes, at) = if in_keys {
                (&mut keys, kb + kp + 6)
            } else {
                (&mut values, vb + vp + 10)
            };
            bytes[at..at + 2].copy_from_slice(&half::f16::INFINITY.to_le_bytes());
            let q: Vec<f32> = rows(3, 2 * 64, 64);
            let cache = vidkv_simd::HeadCache {
                key_blocks: &keys,
                value_blocks: &values,
                blocks: 2,
                residual_keys: &[],
                residual_values: &[],
                residual_tokens: 0,
            };
            for level in Level::available().filter(|&l| l != Level::Scalar) {
                let mut out = vec![0.0; q.len()];
                let err =
                    vidkv_simd::attend_head(level, &job.codec, &q, &cache, &mut out).unwrap_err();
                assert!(
                    matches!(err, Error::Corrupt { what, offset }
                        if what == "affine parameters not finite or step negative"
                            && (offset == at || offset + 2 == at)),
                    "{scheme:?} {level:?}: {err:?}"
                );
            }
        }
    }
}
