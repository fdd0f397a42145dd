//! Golden vectors: committed inputs with their exact encoded bytes and decoded outputs, for every
//! preset and the options around them. They pin the format: a change to any encoder's bytes makes
//! [`check_reference`] fail. Regenerate with `cargo run -p conformance --bin regen-golden`
//! (which refuses to change existing bytes unless the block format version was bumped, or
//! `--force` is given).
//!
//! One file per vector, `golden/<name>.bin`, little-endian:
//!
//! | bytes | content |
//! |---|---|
//! | 8 | magic `VKVGOLD\0` |
//! | 2 | block format version ([`vidkv_core::FORMAT_VERSION`]) when written |
//! | 2 | flags: bit 0 = masked vector (values encoded with excluded tokens) |
//! | 4 + n | configuration, as text ([`crate::inputs::describe`]) |
//! | 4 + 4 | head_dim, tokens |
//! | 2·T·D | input keys, f16 |
//! | 2·T·D | input values, f16 |
//! | 4 + n | encoded key blocks |
//! | 4 + n | encoded value blocks |
//! | 4·T·D | decoded keys, f32 |
//! | 4·T·D | decoded values, f32 |
//! | 4 + n | masked vectors only: the excluded-token mask (`G/8` bytes per block, LSB first) |
//!
//! Masked vectors encode their values with `encode_value_blocks_masked` (salient tokens of
//! vidkv-stp left out of the value blocks). Inputs are f16 (what real caches hold). Layer-scope vectors pool the outlier mask over the one
//! head with [`vidkv_cpu::layer_outliers`].

use std::path::{Path, PathBuf};

use half::f16;
use vidkv_core::{
    Arithmetic, Bits, Calibration, ChannelMask, Codec, DType, GroupSize, HeadDim, KeyScheme,
    LaneRule, MixedKeys, OutlierScope, QuantConfig, Scheme, TernaryScale, Transform, ValueScheme,
};

use crate::inputs::{self, Case, InputKind, Params};

/// File magic.
pub const MAGIC: [u8; 8] = *b"VKVGOLD\0";

/// The folder of the committed vectors: `VIDKV_GOLDEN_DIR` if set (for test binaries run on
/// another machine, e.g. a GPU host), else `crates/conformance/golden`.
pub fn dir() -> PathBuf {
    match std::env::var_os("VIDKV_GOLDEN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("golden"),
    }
}

/// A vector's name and configuration.
#[derive(Debug, Clone)]
pub struct Spec {
    /// File stem.
    pub name: String,
    /// Configuration.
    pub config: QuantConfig,
    /// Values encoded with some tokens excluded (salient tokens of vidkv-stp), see
    /// [`excluded_mask`].
    pub masked: bool,
}

fn cfg(
    d: usize,
    g: usize,
    keys: KeyScheme,
    values: ValueScheme,
    arithmetic: Arithmetic,
) -> QuantConfig {
    QuantConfig::new(
        HeadDim::new(d).unwrap(),
        GroupSize::new(g).unwrap(),
        keys,
        values,
        arithmetic,
    )
}

fn mixed(r: f32, scope: OutlierScope, transform: Transform, lane_rule: LaneRule) -> KeyScheme {
    KeyScheme::Mixed(MixedKeys {
        outlier_ratio: r,
        scope,
        transform,
        lane_rule,
    })
}

/// Every golden vector: all presets at (D, G) = (64, 32) and (18, 64) (one per distinct block
/// configuration), two at D = 80, variants of every option at (64, 32), and tracing (OTT) on
/// mixed keys.
pub fn specs() -> Vec<Spec> {
    use Arithmetic::{F32, Reference};
    use LaneRule::{PaperCompat, Symmetric};
    use OutlierScope::{Block, Layer};
    use Transform::{Fft, Hadamard, Identity};
    let mut v = Vec::new();
    for (d, g) in [(64, 32), (18, 64)] {
        let (hd, gs) = (HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap());
        for (i, s) in Scheme::ALL.into_iter().enumerate() {
            // Presets with the block configuration of an earlier one (vidkv-stp differs from
            // vidkv only in which tokens the cache keeps salient) share its vectors.
            if Scheme::ALL[..i]
                .iter()
                .any(|e| e.config(hd, gs) == s.config(hd, gs))
            {
                continue;
            }
            v.push(Spec {
                name: format!("{}-d{d}-g{g}", s.name()),
                config: s.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap()),
                masked: false,
            });
        }
    }
    for s in [Scheme::Vidkv, Scheme::Kivi2] {
        v.push(Spec {
            name: format!("{}-d80-g32", s.name()),
            config: s.config(HeadDim::new(80).unwrap(), GroupSize::G32),
            masked: false,
        });
    }
    // H1B-KV at D = 128 (b = 128), and b = 256 with another seed over D = 64.
    v.push(Spec {
        name: "h1b-d128-g32".into(),
        config: Scheme::H1b.config(HeadDim::new(128).unwrap(), GroupSize::G32),
        masked: false,
    });
    v.push(Spec {
        name: "sketch256-seed7-f32-pertoken2-d64-g32".into(),
        config: cfg(
            64,
            32,
            KeyScheme::SignSketch {
                bits: vidkv_core::SketchBits::B256,
                seed: 7,
            },
            ValueScheme::PerToken { bits: Bits::Two },
            Arithmetic::F32,
        ),
        masked: false,
    });
    let ternary = |scale| ValueScheme::Ternary { scale };
    let variants = [
        (
            "fft-papercompat-block-f32-meanabs",
            cfg(
                64,
                32,
                mixed(0.5, Block, Fft, PaperCompat),
                ternary(TernaryScale::MeanAbs),
                F32,
            ),
        ),
        (
            "hadamard-block-f32-leastsquares",
            cfg(
                64,
                32,
                mixed(0.5, Block, Hadamard, Symmetric),
                ternary(TernaryScale::LeastSquares),
                F32,
            ),
        ),
        (
            "hadamard-layer-reference-meanabs",
            cfg(
                64,
                32,
                mixed(0.5, Layer, Hadamard, Symmetric),
                ternary(TernaryScale::MeanAbs),
                Reference,
            ),
        ),
        (
            "identity-block-f32-pertoken2",
            cfg(
                64,
                32,
                mixed(0.5, Block, Identity, Symmetric),
                ValueScheme::PerToken { bits: Bits::Two },
                F32,
            ),
        ),
        (
            "identity-layer-reference-perchannel4",
            cfg(
                64,
                32,
                mixed(0.5, Layer, Identity, Symmetric),
                ValueScheme::PerChannel { bits: Bits::Four },
                Reference,
            ),
        ),
        (
            "fft-layer-f32-unit",
            cfg(
                64,
                32,
                mixed(0.5, Layer, Fft, Symmetric),
                ternary(TernaryScale::Unit),
                F32,
            ),
        ),
        (
            "fft-r0.25-block-f32-perchannel2",
            cfg(
                64,
                32,
                mixed(0.25, Block, Fft, Symmetric),
                ValueScheme::PerChannel { bits: Bits::Two },
                F32,
            ),
        ),
        (
            "hadamard-r0-block-reference-leastsquares",
            cfg(
                64,
                32,
                mixed(0.0, Block, Hadamard, Symmetric),
                ternary(TernaryScale::LeastSquares),
                Reference,
            ),
        ),
        (
            "r1-block-f32-meanabs",
            cfg(
                64,
                32,
                mixed(1.0, Block, Fft, Symmetric),
                ternary(TernaryScale::MeanAbs),
                F32,
            ),
        ),
        (
            "perchannel4-f32-pertoken4",
            cfg(
                64,
                32,
                KeyScheme::PerChannel { bits: Bits::Four },
                ValueScheme::PerToken { bits: Bits::Four },
                F32,
            ),
        ),
        (
            "identity-block-f32-meanabs-d80-g64",
            cfg(
                80,
                64,
                mixed(0.5, Block, Identity, Symmetric),
                ternary(TernaryScale::MeanAbs),
                F32,
            ),
        ),
    ];
    // XQuant: endpoint calibration on vidkv's outlier channels, on KIVI under reference
    // arithmetic, and 1-bit min/max groups.
    let calibrated = |config: QuantConfig, keys, values| QuantConfig {
        calibration: Calibration { keys, values },
        ..config
    };
    let (d64, g32) = (HeadDim::new(64).unwrap(), GroupSize::G32);
    let xquant_variants = [
        (
            "vidkv-eta0.045",
            calibrated(Scheme::Vidkv.config(d64, g32), 0.045, 0.0),
        ),
        (
            "kivi2-eta0.09-0.045-reference",
            calibrated(Scheme::Kivi2.config(d64, g32), 0.09, 0.045),
        ),
        (
            "perchannel1-reference-perchannel1-eta",
            calibrated(
                cfg(
                    64,
                    32,
                    KeyScheme::PerChannel { bits: Bits::One },
                    ValueScheme::PerChannel { bits: Bits::One },
                    Reference,
                ),
                2.0 / 6.0,
                1.0 / 6.0,
            ),
        ),
    ];
    for (name, config) in variants.into_iter().chain(xquant_variants) {
        v.push(Spec {
            name: name.to_string(),
            config,
            masked: false,
        });
    }
    // Outlier-token tracing (OTT) on mixed keys: block scope f32, and layer scope under the
    // reference arithmetic with two slots at G = 64.
    for (name, s, d, g, slots) in [
        ("vidkv-trace1-d64-g32", Scheme::Vidkv, 64, 32, 1),
        ("vidkv-paper-trace2-d80-g64", Scheme::VidkvPaper, 80, 64, 2),
    ] {
        v.push(Spec {
            name: name.to_string(),
            config: QuantConfig {
                traced_tokens: slots,
                ..s.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap())
            },
            masked: false,
        });
    }
    // Value blocks with excluded (salient) tokens: ternary, per-token and per-channel.
    for (s, d, g) in [
        (Scheme::VidkvStp, 64, 32),
        (Scheme::Kivi2, 64, 32),
        (Scheme::Pc2, 18, 64),
        (Scheme::Xquant, 64, 32),
    ] {
        v.push(Spec {
            name: format!("{}-masked-d{d}-g{g}", s.name()),
            config: s.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap()),
            masked: true,
        });
    }
    v
}

/// The excluded tokens of a masked vector: about one in five (`(7t + 3) mod 5 = 0`), `G/8`
/// bytes per block, LSB first.
pub fn excluded_mask(tokens: usize) -> Vec<u8> {
    let mut m = vec![0u8; tokens.div_ceil(8)];
    for t in (0..tokens).filter(|t| (7 * t + 3) % 5 == 0) {
        m[t / 8] |= 1 << (t % 8);
    }
    m
}

/// A vector's contents.
#[derive(Debug, Clone, PartialEq)]
pub struct Vector {
    /// Block format version the file was written with.
    pub format_version: u16,
    /// Configuration text.
    pub description: String,
    /// Head dimension.
    pub head_dim: usize,
    /// Tokens (whole blocks).
    pub tokens: usize,
    /// Input keys.
    pub keys: Vec<f16>,
    /// Input values.
    pub values: Vec<f16>,
    /// Encoded key blocks.
    pub key_bytes: Vec<u8>,
    /// Encoded value blocks.
    pub value_bytes: Vec<u8>,
    /// Decoded keys.
    pub decoded_keys: Vec<f32>,
    /// Decoded values.
    pub decoded_values: Vec<f32>,
    /// Tokens excluded from the value blocks (masked vectors only).
    pub excluded: Option<Vec<u8>>,
}

impl Vector {
    /// Serializes in the documented layout.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&self.format_version.to_le_bytes());
        b.extend_from_slice(&u16::from(self.excluded.is_some()).to_le_bytes());
        let blob = |b: &mut Vec<u8>, data: &[u8]| {
            b.extend_from_slice(&(data.len() as u32).to_le_bytes());
            b.extend_from_slice(data);
        };
        blob(&mut b, self.description.as_bytes());
        b.extend_from_slice(&(self.head_dim as u32).to_le_bytes());
        b.extend_from_slice(&(self.tokens as u32).to_le_bytes());
        for v in self.keys.iter().chain(&self.values) {
            b.extend_from_slice(&v.to_le_bytes());
        }
        blob(&mut b, &self.key_bytes);
        blob(&mut b, &self.value_bytes);
        for v in self.decoded_keys.iter().chain(&self.decoded_values) {
            b.extend_from_slice(&v.to_le_bytes());
        }
        if let Some(m) = &self.excluded {
            blob(&mut b, m);
        }
        b
    }

    /// Parses the documented layout.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let mut cur = Cursor { bytes, at: 0 };
        if cur.take(8)? != MAGIC {
            return Err("not a golden vector file".into());
        }
        let fv = cur.take(4)?;
        let format_version = u16::from_le_bytes([fv[0], fv[1]]);
        let masked = fv[2] & 1 == 1;
        let n = cur.u32()?;
        let description = String::from_utf8(cur.take(n)?.to_vec()).map_err(|e| e.to_string())?;
        let head_dim = cur.u32()?;
        let tokens = cur.u32()?;
        let elems = head_dim * tokens;
        let f16s = |b: &[u8]| -> Vec<f16> {
            b.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect()
        };
        let f32s = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let keys = f16s(cur.take(2 * elems)?);
        let values = f16s(cur.take(2 * elems)?);
        let n = cur.u32()?;
        let key_bytes = cur.take(n)?.to_vec();
        let n = cur.u32()?;
        let value_bytes = cur.take(n)?.to_vec();
        let decoded_keys = f32s(cur.take(4 * elems)?);
        let decoded_values = f32s(cur.take(4 * elems)?);
        let excluded = if masked {
            let n = cur.u32()?;
            Some(cur.take(n)?.to_vec())
        } else {
            None
        };
        let at = cur.at;
        if at != bytes.len() {
            return Err(format!(
                "{} trailing bytes in golden file",
                bytes.len() - at
            ));
        }
        Ok(Self {
            format_version,
            description,
            head_dim,
            tokens,
            keys,
            values,
            key_bytes,
            value_bytes,
            decoded_keys,
            decoded_values,
            excluded,
        })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let s = self
            .bytes
            .get(self.at..self.at.saturating_add(n))
            .ok_or_else(|| format!("golden file truncated at byte {}", self.at))?;
        self.at += n;
        Ok(s)
    }

    fn u32(&mut self) -> Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

/// The input of a new vector: one block of realistic keys and values (seeded by the name), with
/// edge cases planted: a constant channel, a channel 100× larger than the rest, f16 subnormals,
/// and a value exactly on a 2-bit tie.
pub fn fresh_input(spec: &Spec) -> (Vec<f16>, Vec<f16>) {
    let seed = spec.name.bytes().fold(0xC0FFEEu64, |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let case = Case::new(Params {
        config: spec.config,
        heads: 1,
        blocks: 1,
        tail: 0,
        dtype: DType::F16,
        kind: InputKind::Realistic,
        seed,
    });
    let d = case.codec.head_dim();
    let plant = |mut x: Vec<f32>| -> Vec<f16> {
        for t in 0..x.len() / d {
            x[t * d + 1] = 0.75; // constant channel
            x[t * d + 2] *= 100.0; // a channel 100× larger
            x[t * d + d - 1] = (t as f32 - 8.0) * 1e-6; // subnormals
        }
        // channel 3 on a 2-bit tie: values 0 and 3 give lo 0 and step 1; 1.5 sits on a tie
        for (t, v) in [0.0f32, 3.0, 1.5, 2.5].into_iter().enumerate() {
            x[t * d + 3] = v;
        }
        if spec.config.traced_tokens > 0 {
            // A token of unusually large magnitude, for the tracer to find.
            x[5 * d..6 * d].iter_mut().for_each(|v| *v *= 8.0);
        }
        x.into_iter().map(f16::from_f32).collect()
    };
    (plant(case.keys[0].clone()), plant(case.values[0].clone()))
}

/// Encodes and decodes `keys`/`values` with the scalar reference.
pub fn compute(spec: &Spec, keys: Vec<f16>, values: Vec<f16>) -> Result<Vector, String> {
    let codec = Codec::new(spec.config).map_err(|e| e.to_string())?;
    let d = codec.head_dim();
    let tokens = keys.len() / d;
    let blocks = tokens / codec.group();
    let arith = codec.config().arithmetic;
    let as_f32 = |x: &[f16]| -> Result<Vec<f32>, String> {
        let raw: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
        vidkv_cpu::to_f32(DType::F16, &raw, arith).map_err(|e| e.to_string())
    };
    let (k, v) = (as_f32(&keys)?, as_f32(&values)?);
    let mask: Option<ChannelMask> = match spec.config.keys {
        KeyScheme::Mixed(m) if m.scope == OutlierScope::Layer => {
            Some(vidkv_cpu::layer_outliers(&codec, &[&k]).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let mut key_bytes = vec![0u8; blocks * codec.key_block_bytes()];
    vidkv_cpu::encode_key_blocks(&codec, &k, mask.as_ref(), &mut key_bytes)
        .map_err(|e| e.to_string())?;
    let excluded = spec.masked.then(|| excluded_mask(tokens));
    let mut value_bytes = vec![0u8; blocks * codec.value_block_bytes()];
    vidkv_cpu::encode_value_blocks_masked(&codec, &v, excluded.as_deref(), &mut value_bytes)
        .map_err(|e| e.to_string())?;
    let mut decoded_keys = vec![0.0f32; k.len()];
    vidkv_cpu::decode_key_blocks(&codec, &key_bytes, &mut decoded_keys)
        .map_err(|e| e.to_string())?;
    let mut decoded_values = vec![0.0f32; v.len()];
    vidkv_cpu::decode_value_blocks(&codec, &value_bytes, &mut decoded_values)
        .map_err(|e| e.to_string())?;
    Ok(Vector {
        format_version: vidkv_core::FORMAT_VERSION,
        description: inputs::describe(&spec.config),
        head_dim: d,
        tokens,
        keys,
        values,
        key_bytes,
        value_bytes,
        decoded_keys,
        decoded_values,
        excluded,
    })
}

/// Reads the committed vector of `spec`.
pub fn load(spec: &Spec) -> Result<Vector, String> {
    let path = dir().join(format!("{}.bin", spec.name));
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "{}: {e} (generate with `cargo run -p conformance --bin regen-golden`)",
            path.display()
        )
    })?;
    Vector::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    match a.iter().zip(b).position(|(x, y)| x != y) {
        Some(i) => format!("first differing byte {i}: {:#04x} vs {:#04x}", a[i], b[i]),
        None => format!("lengths {} vs {}", a.len(), b.len()),
    }
}

/// Checks one committed vector against the scalar reference, bit for bit: the configuration
/// text, the encoded bytes (re-encoding the stored input) and the decoded values (decoding the
/// stored bytes).
pub fn check_reference(spec: &Spec) -> Result<(), String> {
    let stored = load(spec)?;
    if stored.format_version != vidkv_core::FORMAT_VERSION {
        return Err(format!(
            "{}: written for block format {}, this is format {} — regenerate",
            spec.name,
            stored.format_version,
            vidkv_core::FORMAT_VERSION
        ));
    }
    let now = compute(spec, stored.keys.clone(), stored.values.clone())?;
    if now.description != stored.description {
        return Err(format!(
            "{}: configuration changed: {:?} vs stored {:?}",
            spec.name, now.description, stored.description
        ));
    }
    if now.key_bytes != stored.key_bytes {
        return Err(format!(
            "{}: encoded KEY bytes changed ({}) — a format change needs a version bump",
            spec.name,
            first_difference(&stored.key_bytes, &now.key_bytes)
        ));
    }
    if now.value_bytes != stored.value_bytes {
        return Err(format!(
            "{}: encoded VALUE bytes changed ({}) — a format change needs a version bump",
            spec.name,
            first_difference(&stored.value_bytes, &now.value_bytes)
        ));
    }
    if now.excluded != stored.excluded {
        return Err(format!("{}: excluded-token mask changed", spec.name));
    }
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    if bits(&now.decoded_keys) != bits(&stored.decoded_keys) {
        return Err(format!("{}: decoded keys changed", spec.name));
    }
    if bits(&now.decoded_values) != bits(&stored.decoded_values) {
        return Err(format!("{}: decoded values changed", spec.name));
    }
    Ok(())
}

/// Checks a backend against every committed vector: encoding the stored input agrees with the
/// stored bytes (boundary cases allowed, as in the properties) and decoding the stored bytes gives
/// the stored values within [`crate::props::DECODE_RTOL`]. Operations the backend does not support
/// are reported and skipped.
pub fn check_backend<B: vidkv_core::KvQuantBackend>(backend: &B) {
    use vidkv_core::{Capability, HeadTensor, Operation};
    let mut skipped = Vec::new();
    let mut tally = crate::fields::Tally::default();
    let specs = specs();
    for spec in &specs {
        let stored = load(spec).unwrap_or_else(|e| panic!("{e}"));
        let codec = Codec::new(spec.config).unwrap();
        let blocks = stored.tokens / codec.group();
        let raw = |x: &[f16]| x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
        let arith = codec.config().arithmetic;
        let rows = |x: &[f16]| vidkv_cpu::to_f32(DType::F16, &raw(x), arith).unwrap();
        let (krows, vrows) = (rows(&stored.keys), rows(&stored.values));
        let mask = match spec.config.keys {
            KeyScheme::Mixed(m) if m.scope == OutlierScope::Layer => {
                Some(vidkv_cpu::layer_outliers(&codec, &[&krows]).unwrap())
            }
            _ => None,
        };
        let value_op = if stored.excluded.is_some() {
            Operation::EncodeValuesMasked
        } else {
            Operation::EncodeValues
        };
        for (keys, op) in [(true, Operation::EncodeKeys), (false, value_op)] {
            if let Capability::Unsupported(r) = backend.capability(op, &codec) {
                skipped.push(format!("{} {}: {r}", spec.name, op.name()));
                continue;
            }
            let input = backend
                .upload(&raw(if keys { &stored.keys } else { &stored.values }))
                .unwrap();
            let want = if keys {
                &stored.key_bytes
            } else {
                &stored.value_bytes
            };
            let mut out = backend.alloc(want.len()).unwrap();
            let t = HeadTensor {
                data: &input,
                dtype: DType::F16,
                tokens: stored.tokens,
            };
            let r = match (keys, &stored.excluded) {
                (true, _) => backend.encode_keys(&codec, t, mask.as_ref(), &mut out),
                (false, None) => backend.encode_values(&codec, t, &mut out),
                (false, Some(excluded)) => {
                    backend.encode_values_masked(&codec, t, excluded, &mut out)
                }
            };
            r.unwrap_or_else(|e| panic!("{}: {} failed: {e}", spec.name, op.name()));
            let got = backend.download(&out).unwrap();
            // The boundary rule recomputes statistics over every token, which masked blocks do
            // not use: their bytes must match exactly.
            let cmp = if keys {
                crate::fields::compare_keys(&codec, &krows, want, &got)
            } else if stored.excluded.is_some() {
                if got == *want {
                    Ok(crate::fields::Tally {
                        codes: vrows.len() as u64,
                        boundary: 0,
                    })
                } else {
                    Err("masked value bytes differ".to_string())
                }
            } else {
                crate::fields::compare_values(&codec, &vrows, want, &got)
            };
            tally.add(cmp.unwrap_or_else(|e| panic!("{} {}: {e}", spec.name, op.name())));
        }
        for (keys, op) in [
            (true, Operation::DecodeKeys),
            (false, Operation::DecodeValues),
        ] {
            if let Capability::Unsupported(r) = backend.capability(op, &codec) {
                skipped.push(format!("{} {}: {r}", spec.name, op.name()));
                continue;
            }
            let bytes = if keys {
                &stored.key_bytes
            } else {
                &stored.value_bytes
            };
            let want = if keys {
                &stored.decoded_keys
            } else {
                &stored.decoded_values
            };
            let input = backend.upload(bytes).unwrap();
            let mut out = backend.alloc(want.len() * 4).unwrap();
            let r = if keys {
                backend.decode_keys(&codec, &input, blocks, &mut out)
            } else {
                backend.decode_values(&codec, &input, blocks, &mut out)
            };
            r.unwrap_or_else(|e| panic!("{}: {} failed: {e}", spec.name, op.name()));
            let got = backend.download(&out).unwrap();
            for (i, (w, c)) in want.iter().zip(got.chunks_exact(4)).enumerate() {
                let g = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
                assert!(
                    (w - g).abs() <= crate::props::DECODE_RTOL * scale,
                    "{} {}: element {i} decodes to {g}, golden {w}",
                    spec.name,
                    op.name()
                );
            }
        }
    }
    let mut line = format!(
        "conformance[{}] golden_vectors: {} vectors, {} codes compared, {} boundary disagreements",
        backend.name(),
        specs.len(),
        tally.codes,
        tally.boundary
    );
    if skipped.is_empty() {
        line += "; skipped: nothing";
    } else {
        line += &format!("; SKIPPED (unsupported): {skipped:?}");
    }
    crate::props::report_line(&line);
    assert!(tally.share() < crate::props::MAX_BOUNDARY_SHARE);
}
