//! Test inputs: configurations, shapes and tensors, as proptest strategies.
//!
//! A [`Case`] is built from small [`Params`] (configuration, shape, input kind, dtype and a seed)
//! that proptest chooses and shrinks; the tensors are expanded from the seed by [`crate::rng`].
//! Three kinds of tensors:
//! * [`InputKind::Realistic`] — modelled on the sample K/V in `shared/data/` (SmolLM2, DINOv2):
//!   keys with a few outlier channels whose mean and spread are 4–10× the median channel,
//!   RoPE-style rotation of channel pairs `(c, c + D/2)`, and an atypical first token (an
//!   attention sink: several times larger, or much smaller, than the rest); values flatter,
//!   channel spreads within about 2.5×;
//! * [`InputKind::Random`] — Gaussian noise at a random overall scale (10⁻³…10²);
//! * [`InputKind::Adversarial`] — what breaks naive code: constant channels (zero range), a few
//!   channels 100× larger, values near the f16 limit (±65504), f16 subnormals, all-zero blocks,
//!   repeated tokens, exact ties between channel ranges, inputs exactly on decision boundaries.

use core::fmt;

use half::{bf16, f16};
use proptest::prelude::*;
use vidkv_core::{
    Arithmetic, Bits, Calibration, ChannelMask, Codec, DType, GroupSize, HeadDim, KeyScheme,
    LaneRule, MixedKeys, OutlierScope, QuantConfig, Scheme, SketchBits, TernaryScale, Transform,
    ValueScheme,
};

use crate::rng::Rng;

/// What kind of tensor a case holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum InputKind {
    /// Modelled on real keys and values.
    Realistic,
    /// Gaussian noise.
    Random,
    /// Edge cases.
    Adversarial,
}

/// The proptest-chosen description of a case (small, so it shrinks fast).
#[derive(Debug, Clone)]
pub struct Params {
    /// The configuration.
    pub config: QuantConfig,
    /// KV heads.
    pub heads: usize,
    /// Whole blocks per head.
    pub blocks: usize,
    /// Extra tokens after the whole blocks (not a multiple of G).
    pub tail: usize,
    /// Element type of the input.
    pub dtype: DType,
    /// Kind of tensor.
    pub kind: InputKind,
    /// Seed of the tensor contents.
    pub seed: u64,
}

/// One generated test case: a codec and the keys and values of every head.
#[derive(Clone)]
pub struct Case {
    /// What it was built from.
    pub params: Params,
    /// The codec.
    pub codec: Codec,
    /// Per head, row-major `[tokens, D]` keys, exactly representable in `params.dtype`.
    pub keys: Vec<Vec<f32>>,
    /// Per head values.
    pub values: Vec<Vec<f32>>,
}

impl fmt::Debug for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The tensors follow from the params; printing 10⁵ floats helps nobody.
        write!(
            f,
            "Case {{ {}, heads {}, tokens {} ({} blocks + {}), {:?} {:?}, seed {:#x} }}",
            describe(&self.params.config),
            self.params.heads,
            self.tokens(),
            self.params.blocks,
            self.params.tail,
            self.params.kind,
            self.params.dtype,
            self.params.seed
        )
    }
}

impl Case {
    /// Expands params into tensors.
    pub fn new(params: Params) -> Self {
        let codec = Codec::new(params.config).expect("strategies produce valid configurations");
        let (d, g) = (codec.head_dim(), codec.group());
        let tokens = params.blocks * g + params.tail;
        let mut rng = Rng::new(params.seed);
        let mut keys = Vec::with_capacity(params.heads);
        let mut values = Vec::with_capacity(params.heads);
        for _ in 0..params.heads {
            let (k, v) = match params.kind {
                InputKind::Realistic => (
                    realistic_keys(&mut rng, tokens, d),
                    realistic_values(&mut rng, tokens, d),
                ),
                InputKind::Random => {
                    let scale = 10f64.powf(rng.range(-3.0, 2.0));
                    let k = (0..tokens * d).map(|_| rng.normal() * scale).collect();
                    let v = (0..tokens * d).map(|_| rng.normal() * scale).collect();
                    (k, v)
                }
                InputKind::Adversarial => (
                    adversarial(&mut rng, tokens, d, g),
                    adversarial(&mut rng, tokens, d, g),
                ),
            };
            keys.push(representable(params.dtype, k));
            values.push(representable(params.dtype, v));
        }
        Self {
            params,
            codec,
            keys,
            values,
        }
    }

    /// Tokens per head.
    pub fn tokens(&self) -> usize {
        self.params.blocks * self.codec.group() + self.params.tail
    }

    /// Elements per head in whole blocks.
    pub fn block_elements(&self) -> usize {
        self.params.blocks * self.codec.block_elements()
    }

    /// The whole-block rows of one head's keys (or values).
    pub fn rows(&self, head: usize, keys: bool) -> &[f32] {
        let t = if keys { &self.keys } else { &self.values };
        &t[head][..self.block_elements()]
    }

    /// The raw little-endian bytes of `rows` in the case's dtype.
    pub fn raw(&self, rows: &[f32]) -> Vec<u8> {
        encode_dtype(self.params.dtype, rows)
    }

    /// The layer-scope outlier mask pooled over every head's whole-block keys, when the key
    /// scheme needs one (computed by the scalar reference).
    pub fn layer_mask(&self) -> Option<ChannelMask> {
        let KeyScheme::Mixed(m) = self.codec.config().keys else {
            return None;
        };
        if m.scope != OutlierScope::Layer {
            return None;
        }
        let rows: Vec<Vec<f32>> = (0..self.params.heads)
            .map(|h| self.reference_input(h, true))
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(Vec::as_slice).collect();
        Some(vidkv_cpu::layer_outliers(&self.codec, &refs).expect("finite inputs"))
    }

    /// What the scalar reference encodes for a head: the raw input converted with
    /// [`vidkv_cpu::to_f32`] under the codec's arithmetic.
    pub fn reference_input(&self, head: usize, keys: bool) -> Vec<f32> {
        let raw = self.raw(self.rows(head, keys));
        vidkv_cpu::to_f32(self.params.dtype, &raw, self.codec.config().arithmetic)
            .expect("generated inputs are finite and in range")
    }
}

/// Little-endian bytes of `values` in `dtype`.
pub fn encode_dtype(dtype: DType, values: &[f32]) -> Vec<u8> {
    match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => values
            .iter()
            .flat_map(|v| f16::from_f32(*v).to_le_bytes())
            .collect(),
        DType::BF16 => values
            .iter()
            .flat_map(|v| bf16::from_f32(*v).to_le_bytes())
            .collect(),
    }
}

/// Rounds to the dtype and keeps magnitudes inside what the encoders accept (|x| ≤ 65504).
fn representable(dtype: DType, values: Vec<f64>) -> Vec<f32> {
    values
        .into_iter()
        .map(|v| match dtype {
            DType::F32 => (v as f32).clamp(-65504.0, 65504.0),
            DType::F16 => f16::from_f64(v.clamp(-65504.0, 65504.0)).to_f32(),
            DType::BF16 => bf16::from_f64(v.clamp(-65280.0, 65280.0)).to_f32(),
        })
        .collect()
}

fn realistic_keys(rng: &mut Rng, tokens: usize, d: usize) -> Vec<f64> {
    let half = d / 2;
    // Per channel: offset and spread; a few outlier channels (about 1 in 16) with 4–10× both.
    let mut offset: Vec<f64> = (0..d).map(|_| rng.normal() * 0.4).collect();
    let mut spread: Vec<f64> = (0..d).map(|_| rng.range(0.5, 1.5)).collect();
    for _ in 0..(d / 16).max(1) {
        let c = rng.below(d);
        let big = rng.range(4.0, 10.0);
        offset[c] = big * if rng.chance(0.5) { 1.0 } else { -1.0 };
        spread[c] *= rng.range(1.5, 3.0);
    }
    let first = if rng.chance(0.5) {
        rng.range(2.0, 5.0)
    } else {
        rng.range(0.1, 0.4)
    };
    let mut out = vec![0.0f64; tokens * d];
    for t in 0..tokens {
        let scale = if t == 0 { first } else { 1.0 };
        let row = &mut out[t * d..][..d];
        for (c, x) in row.iter_mut().enumerate() {
            *x = (offset[c] + spread[c] * rng.normal()) * scale;
        }
        // RoPE on pairs (i, i + D/2), frequencies 1e5^(−i/half).
        for i in 0..half {
            let angle = t as f64 * 1e5f64.powf(-(i as f64) / half as f64);
            let (s, c) = angle.sin_cos();
            let (a, b) = (row[i], row[i + half]);
            row[i] = a * c - b * s;
            row[i + half] = a * s + b * c;
        }
    }
    out
}

fn realistic_values(rng: &mut Rng, tokens: usize, d: usize) -> Vec<f64> {
    let spread: Vec<f64> = (0..d).map(|_| rng.range(0.4, 1.0)).collect();
    let offset: Vec<f64> = (0..d).map(|_| rng.normal() * 0.15).collect();
    let first = rng.range(0.2, 0.5);
    (0..tokens * d)
        .map(|i| {
            let (t, c) = (i / d, i % d);
            let x = offset[c] + spread[c] * rng.normal();
            if t == 0 { x * first } else { x }
        })
        .collect()
}

fn adversarial(rng: &mut Rng, tokens: usize, d: usize, g: usize) -> Vec<f64> {
    let base = 10f64.powf(rng.range(-2.0, 1.0));
    let mut x: Vec<f64> = (0..tokens * d).map(|_| rng.normal() * base).collect();
    let channels =
        |rng: &mut Rng| -> Vec<usize> { (0..1 + rng.below(4)).map(|_| rng.below(d)).collect() };
    let column = |x: &mut Vec<f64>, c: usize, f: &mut dyn FnMut(usize, f64) -> f64| {
        for t in 0..tokens {
            x[t * d + c] = f(t, x[t * d + c]);
        }
    };
    // Constant channels (zero range), sometimes zero.
    if rng.chance(0.5) {
        for c in channels(rng) {
            let v = if rng.chance(0.3) {
                0.0
            } else {
                rng.normal() * base * 3.0
            };
            column(&mut x, c, &mut |_, _| v);
        }
    }
    // A few channels 100× larger than the rest.
    if rng.chance(0.5) {
        for c in channels(rng) {
            column(&mut x, c, &mut |_, v| v * 100.0);
        }
    }
    // Near the f16 limit.
    if rng.chance(0.3) {
        for c in channels(rng) {
            let sign = if rng.chance(0.5) { 1.0 } else { -1.0 };
            let mut r = Rng::new(rng.next_u64());
            let both = rng.chance(0.5);
            column(&mut x, c, &mut |_, _| {
                let s = if both && r.chance(0.5) { -sign } else { sign };
                s * r.range(30000.0, 65504.0)
            });
        }
    }
    // f16 subnormals (below 6.1e-5), in channels or in whole tokens.
    if rng.chance(0.4) {
        let mut r = Rng::new(rng.next_u64());
        for c in channels(rng) {
            column(&mut x, c, &mut |_, _| r.normal() * 2e-5);
        }
        if tokens > 0 {
            let t = rng.below(tokens);
            for v in &mut x[t * d..][..d] {
                *v = r.normal() * 3e-6;
            }
        }
    }
    // An all-zero block.
    if rng.chance(0.2) && tokens >= g {
        let b = rng.below(tokens / g);
        x[b * g * d..][..g * d].fill(0.0);
    }
    // Repeated tokens.
    if rng.chance(0.2) && tokens > 1 {
        let src = rng.below(tokens);
        let row: Vec<f64> = x[src * d..][..d].to_vec();
        for t in (0..tokens).step_by(1 + rng.below(3)) {
            x[t * d..][..d].copy_from_slice(&row);
        }
    }
    // Exact ties between channel ranges: copy a channel onto others.
    if rng.chance(0.3) && d >= 2 {
        let src = rng.below(d);
        for c in channels(rng) {
            for t in 0..tokens {
                x[t * d + c] = x[t * d + src];
            }
        }
    }
    // Inputs exactly on decision boundaries: channel values {0, 1.5, 3, ...} make
    // (x − lo)/step = 1.5 with lo = 0, step = 1; ternary |x| exactly at γ/2.
    if rng.chance(0.3) {
        let levels = [0.0, 1.5, 3.0, 0.5, 2.5, 1.0];
        for c in channels(rng) {
            column(&mut x, c, &mut |t, _| levels[t % levels.len()]);
        }
    }
    x
}

/// A short human-readable description of a configuration.
pub fn describe(c: &QuantConfig) -> String {
    let keys = match c.keys {
        KeyScheme::Mixed(m) => format!(
            "mixed(r={}, {:?}, {:?}, {:?})",
            m.outlier_ratio, m.scope, m.transform, m.lane_rule
        ),
        KeyScheme::PerChannel { bits } => format!("per-channel({}b)", bits.get()),
        KeyScheme::SignSketch { bits, seed } => {
            format!("sign-sketch(b={}, seed={seed})", bits.get())
        }
    };
    let values = match c.values {
        ValueScheme::Ternary { scale } => format!("ternary({scale:?})"),
        ValueScheme::PerToken { bits } => format!("per-token({}b)", bits.get()),
        ValueScheme::PerChannel { bits } => format!("per-channel({}b)", bits.get()),
    };
    let traced = match c.traced_tokens {
        0 => String::new(),
        n => format!(" traced={n}"),
    };
    let eta = if c.calibration == Calibration::NONE {
        String::new()
    } else {
        format!(" eta={}/{}", c.calibration.keys, c.calibration.values)
    };
    format!(
        "D={} G={} keys={keys} values={values} {:?}{eta}{traced}",
        c.head_dim.get(),
        c.group.tokens(),
        c.arithmetic
    )
}

fn bits() -> impl Strategy<Value = Bits> {
    prop_oneof![Just(Bits::One), Just(Bits::Two), Just(Bits::Four)]
}

/// XQuant endpoint calibration: none half of the time, else XQuant's η values (1-bit and
/// 2-bit sets) or any η in 0..0.45.
fn calibration() -> impl Strategy<Value = Calibration> {
    let eta = || {
        prop_oneof![
            2 => Just(0.0f32),
            2 => prop::sample::select(vec![1.0f32 / 6.0, 2.0 / 6.0, 0.045, 0.09]),
            1 => 0.0f32..0.45,
        ]
    };
    (eta(), eta()).prop_map(|(keys, values)| Calibration { keys, values })
}

fn key_scheme() -> impl Strategy<Value = KeyScheme> {
    let ratio = prop_oneof![
        3 => prop::sample::select(vec![0.0f32, 0.125, 0.25, 0.5, 0.75, 1.0]),
        1 => 0.0f32..=1.0,
    ];
    let mixed = (
        ratio,
        prop_oneof![Just(OutlierScope::Block), Just(OutlierScope::Layer)],
        prop_oneof![
            2 => Just(Transform::Fft),
            1 => Just(Transform::Hadamard),
            1 => Just(Transform::Identity)
        ],
        prop_oneof![Just(LaneRule::Symmetric), Just(LaneRule::PaperCompat)],
    )
        .prop_map(|(outlier_ratio, scope, transform, lane_rule)| {
            KeyScheme::Mixed(MixedKeys {
                outlier_ratio,
                scope,
                transform,
                lane_rule,
            })
        });
    let sketch = (
        prop::sample::select(vec![SketchBits::B64, SketchBits::B128, SketchBits::B256]),
        any::<u32>(),
    )
        .prop_map(|(bits, seed)| KeyScheme::SignSketch { bits, seed });
    prop_oneof![
        4 => mixed,
        2 => bits().prop_map(|bits| KeyScheme::PerChannel { bits }),
        1 => sketch,
    ]
}

fn value_scheme() -> impl Strategy<Value = ValueScheme> {
    prop_oneof![
        2 => prop_oneof![
            Just(TernaryScale::MeanAbs),
            Just(TernaryScale::LeastSquares),
            Just(TernaryScale::Unit)
        ]
        .prop_map(|scale| ValueScheme::Ternary { scale }),
        1 => bits().prop_map(|bits| ValueScheme::PerToken { bits }),
        1 => bits().prop_map(|bits| ValueScheme::PerChannel { bits }),
    ]
}

/// Even head dimensions 16…256, with the sizes real models use (and an odd-ish 18) weighted up.
pub fn head_dim() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => prop::sample::select(vec![16usize, 18, 64, 80, 96, 112, 128, 256]),
        1 => (8usize..=128).prop_map(|h| 2 * h),
    ]
}

/// Makes a random combination valid: PaperCompat needs Fft; Hadamard needs a power-of-two lane
/// count; sign-sketch keys have neither traced tokens nor key min/max groups to calibrate.
fn fix_up(mut c: QuantConfig) -> QuantConfig {
    if let KeyScheme::SignSketch { .. } = c.keys {
        c.traced_tokens = 0;
        c.calibration.keys = 0.0;
    }
    if let KeyScheme::Mixed(m) = &mut c.keys {
        if m.lane_rule == LaneRule::PaperCompat {
            m.transform = Transform::Fft;
        }
        let lanes = c.head_dim.get() - m.outlier_count(c.head_dim);
        if m.transform == Transform::Hadamard && lanes > 0 && !lanes.is_power_of_two() {
            m.transform = Transform::Identity;
        }
    }
    c
}

/// Traced tokens per key block (OTT): mostly none, else 1, 2 or up to the largest limit.
fn traced_tokens() -> impl Strategy<Value = u8> {
    prop_oneof![3 => Just(0u8), 1 => Just(1u8), 1 => 2u8..=32]
}

/// Any valid configuration: one of the presets, or any combination of options.
pub fn config() -> impl Strategy<Value = QuantConfig> {
    let shape = || (head_dim(), prop::sample::select(vec![32usize, 64, 128]));
    let preset = (shape(), prop::sample::select(Scheme::ALL.to_vec()))
        .prop_map(|((d, g), s)| s.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap()));
    let custom = (
        shape(),
        key_scheme(),
        value_scheme(),
        prop_oneof![Just(Arithmetic::F32), Just(Arithmetic::Reference)],
        traced_tokens(),
        calibration(),
    )
        .prop_map(|((d, g), keys, values, arithmetic, traced, calibration)| {
            fix_up(QuantConfig {
                // At most G/4 slots (the configuration's limit).
                traced_tokens: traced.min((g / 4) as u8),
                calibration,
                ..QuantConfig::new(
                    HeadDim::new(d).unwrap(),
                    GroupSize::new(g).unwrap(),
                    keys,
                    values,
                    arithmetic,
                )
            })
        });
    prop_oneof![1 => preset, 2 => custom]
}

/// Budget of elements per case (per tensor, all heads), to keep the suite's runtime bounded.
pub const MAX_ELEMENTS: usize = 96 * 1024;

/// Cases: a configuration, 1–8 heads, 0–3 whole blocks plus 0…G−1 extra tokens, any dtype
/// and input kind.
pub fn case() -> impl Strategy<Value = Case> {
    (
        config(),
        1usize..=8,
        0usize..=3,
        0usize..128,
        prop_oneof![
            6 => Just(DType::F16),
            3 => Just(DType::F32),
            1 => Just(DType::BF16)
        ],
        prop_oneof![
            Just(InputKind::Realistic),
            Just(InputKind::Random),
            Just(InputKind::Adversarial)
        ],
        any::<u64>(),
    )
        .prop_map(|(config, heads, blocks, tail, dtype, kind, seed)| {
            let (d, g) = (config.head_dim.get(), config.group.tokens());
            let tail = tail % g;
            // At least one whole block, and stay within the element budget.
            let blocks = blocks.max(1);
            let per_head = (blocks * g + tail) * d;
            let heads = heads.min((MAX_ELEMENTS / per_head).max(1));
            let blocks = if heads * per_head > MAX_ELEMENTS {
                1
            } else {
                blocks
            };
            Case::new(Params {
                config,
                heads,
                blocks,
                tail,
                dtype,
                kind,
                seed,
            })
        })
}
