//! The properties, generic over any [`KvQuantBackend`]. Each function runs a proptest
//! [`TestRunner`] itself (proptest's macros cannot be generic over a type) and panics with the
//! minimal failing case; [`crate::suite!`] emits one `#[test]` per function.
//!
//! The scalar backend (`vidkv_cpu`'s slice functions) is the reference every property compares
//! with. Case counts: each property has a default chosen to keep the whole suite around a
//! minute on the scalar backend; `PROPTEST_CASES` overrides all of them.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use half::f16;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use vidkv_core::container::{Container, ContainerWriter, HeadSection, LayerInput};
use vidkv_core::{
    Capability, ChannelMask, Codec, DType, Error, HeadTensor, KvQuantBackend, Operation,
};

use crate::fields::{self, Tally};
use crate::inputs::{self, Case, InputKind};
use crate::rng::Rng;

/// Largest accepted share of boundary disagreements between encoders.
pub const MAX_BOUNDARY_SHARE: f64 = 1e-3;

/// Decoders of the same bytes agree within this tolerance, relative to the largest magnitude in
/// the block (or 1, whichever is larger): exactly for affine and ternary codes, and to float
/// rounding for the transformed lanes, whose inverse transform may sum in another order.
pub const DECODE_RTOL: f32 = 1e-5;

/// The case count: `PROPTEST_CASES` if set, else `default`.
pub fn case_count(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Prints a line that `cargo test` does not capture (the suite reports what it covered and what
/// it skipped even when every test passes).
pub fn report_line(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// What a property run covered.
#[derive(Debug, Default)]
pub struct Coverage {
    cases: u32,
    kinds: BTreeMap<String, u32>,
    dims: BTreeSet<usize>,
    groups: BTreeSet<usize>,
    heads: BTreeSet<usize>,
    dtypes: BTreeSet<String>,
    keys: BTreeSet<String>,
    values: BTreeSet<String>,
    tail_cases: u32,
    tally: Tally,
    skipped: BTreeMap<String, u32>,
    max_decode_diff: f32,
    notes: BTreeMap<&'static str, u64>,
}

impl Coverage {
    fn record(&mut self, case: &Case) {
        self.cases += 1;
        *self
            .kinds
            .entry(format!("{:?}", case.params.kind))
            .or_default() += 1;
        self.dims.insert(case.codec.head_dim());
        self.groups.insert(case.codec.group());
        self.heads.insert(case.params.heads);
        self.dtypes.insert(format!("{:?}", case.params.dtype));
        let d = inputs::describe(case.codec.config());
        if let Some((k, v)) = d
            .split_once("keys=")
            .and_then(|(_, r)| r.split_once(" values="))
        {
            self.keys
                .insert(k.split('(').next().unwrap_or(k).to_string());
            self.values
                .insert(v.split('(').next().unwrap_or(v).to_string());
        }
        if case.params.tail > 0 {
            self.tail_cases += 1;
        }
    }

    /// Records an operation the backend reported unsupported.
    pub fn skip(&mut self, op: Operation, reason: &str) {
        *self
            .skipped
            .entry(format!("{} ({reason})", op.name()))
            .or_default() += 1;
    }

    fn note(&mut self, what: &'static str, n: u64) {
        *self.notes.entry(what).or_default() += n;
    }

    fn print(&self, backend: &str, property: &str) {
        let range = |s: &BTreeSet<usize>| {
            format!(
                "{}…{} ({} distinct)",
                s.first().unwrap_or(&0),
                s.last().unwrap_or(&0),
                s.len()
            )
        };
        let mut line = format!(
            "conformance[{backend}] {property}: {} cases {:?}; D {}; G {:?}; heads {}; dtypes \
             {:?}; keys {:?}; values {:?}; {} with a tail",
            self.cases,
            self.kinds,
            range(&self.dims),
            self.groups,
            range(&self.heads),
            self.dtypes,
            self.keys,
            self.values,
            self.tail_cases,
        );
        if self.tally.codes > 0 {
            line += &format!(
                "; {} codes compared, {} boundary disagreements ({:.2e})",
                self.tally.codes,
                self.tally.boundary,
                self.tally.share()
            );
        }
        if self.max_decode_diff > 0.0 {
            line += &format!("; max decode difference {:.3e}", self.max_decode_diff);
        }
        for (k, v) in &self.notes {
            line += &format!("; {k}: {v}");
        }
        if self.skipped.is_empty() {
            line += "; skipped: nothing";
        } else {
            line += &format!("; SKIPPED (unsupported): {:?}", self.skipped);
        }
        report_line(&line);
    }
}

/// Runs `body` on `cases` generated cases; panics with the minimal failing case.
fn run<B: KvQuantBackend>(
    backend: &B,
    property: &str,
    default_cases: u32,
    body: impl Fn(&Case, &mut Coverage) -> Result<(), String>,
) -> Coverage {
    let config = Config {
        cases: case_count(default_cases),
        failure_persistence: None,
        max_shrink_iters: 256,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    let coverage = RefCell::new(Coverage::default());
    let result = runner.run(&inputs::case(), |case| {
        let mut cov = coverage.borrow_mut();
        cov.record(&case);
        body(&case, &mut cov).map_err(TestCaseError::fail)
    });
    let coverage = coverage.into_inner();
    if let Err(e) = result {
        panic!("conformance[{}] {property} failed: {e}", backend.name());
    }
    coverage
}

// ---- moving data through a backend ----

fn encode_keys<B: KvQuantBackend>(
    backend: &B,
    codec: &Codec,
    dtype: DType,
    raw: &[u8],
    tokens: usize,
    mask: Option<&ChannelMask>,
    out_bytes: usize,
) -> vidkv_core::Result<Vec<u8>> {
    let input = backend.upload(raw)?;
    let mut out = backend.alloc(out_bytes)?;
    backend.encode_keys(
        codec,
        HeadTensor {
            data: &input,
            dtype,
            tokens,
        },
        mask,
        &mut out,
    )?;
    backend.download(&out)
}

fn encode_values<B: KvQuantBackend>(
    backend: &B,
    codec: &Codec,
    dtype: DType,
    raw: &[u8],
    tokens: usize,
    out_bytes: usize,
) -> vidkv_core::Result<Vec<u8>> {
    let input = backend.upload(raw)?;
    let mut out = backend.alloc(out_bytes)?;
    backend.encode_values(
        codec,
        HeadTensor {
            data: &input,
            dtype,
            tokens,
        },
        &mut out,
    )?;
    backend.download(&out)
}

fn decode<B: KvQuantBackend>(
    backend: &B,
    codec: &Codec,
    keys: bool,
    encoded: &[u8],
    blocks: usize,
) -> vidkv_core::Result<Vec<f32>> {
    let input = backend.upload(encoded)?;
    let mut out = backend.alloc(blocks * codec.block_elements() * 4)?;
    if keys {
        backend.decode_keys(codec, &input, blocks, &mut out)?;
    } else {
        backend.decode_values(codec, &input, blocks, &mut out)?;
    }
    let bytes = backend.download(&out)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Scalar reference encoding of one head.
fn reference_encode(case: &Case, head: usize, keys: bool, mask: Option<&ChannelMask>) -> Vec<u8> {
    let codec = &case.codec;
    let rows = case.reference_input(head, keys);
    if keys {
        let mut out = vec![0u8; case.params.blocks * codec.key_block_bytes()];
        vidkv_cpu::encode_key_blocks(codec, &rows, mask, &mut out).expect("reference encodes");
        out
    } else {
        let mut out = vec![0u8; case.params.blocks * codec.value_block_bytes()];
        vidkv_cpu::encode_value_blocks(codec, &rows, &mut out).expect("reference encodes");
        out
    }
}

fn reference_decode(
    codec: &Codec,
    keys: bool,
    encoded: &[u8],
    blocks: usize,
) -> vidkv_core::Result<Vec<f32>> {
    let mut out = vec![0.0f32; blocks * codec.block_elements()];
    if keys {
        vidkv_cpu::decode_key_blocks(codec, encoded, &mut out)?;
    } else {
        vidkv_cpu::decode_value_blocks(codec, encoded, &mut out)?;
    }
    Ok(out)
}

fn op(keys: bool, encode: bool) -> Operation {
    match (keys, encode) {
        (true, true) => Operation::EncodeKeys,
        (true, false) => Operation::DecodeKeys,
        (false, true) => Operation::EncodeValues,
        (false, false) => Operation::DecodeValues,
    }
}

/// `Ok(true)` when supported; when not, checks that the call reports [`Error::Unsupported`],
/// records the skip and returns `Ok(false)`.
fn supported<B: KvQuantBackend>(
    backend: &B,
    case: &Case,
    operation: Operation,
    cov: &mut Coverage,
) -> Result<bool, String> {
    match backend.capability(operation, &case.codec) {
        Capability::Supported => Ok(true),
        Capability::Unsupported(reason) => {
            let codec = &case.codec;
            let raw = case.raw(case.rows(0, true));
            let blocks = case.params.blocks;
            let result = match operation {
                Operation::EncodeKeys => encode_keys(
                    backend,
                    codec,
                    case.params.dtype,
                    &raw,
                    blocks * codec.group(),
                    case.layer_mask().as_ref(),
                    blocks * codec.key_block_bytes(),
                )
                .map(drop),
                Operation::EncodeValues => encode_values(
                    backend,
                    codec,
                    case.params.dtype,
                    &raw,
                    blocks * codec.group(),
                    blocks * codec.value_block_bytes(),
                )
                .map(drop),
                Operation::DecodeKeys | Operation::DecodeValues => {
                    let keys = operation == Operation::DecodeKeys;
                    let enc = reference_encode(case, 0, keys, case.layer_mask().as_ref());
                    decode(backend, codec, keys, &enc, blocks).map(drop)
                }
                // Not exercised by this suite (the streaming cache's tests cover them).
                Operation::Attend | Operation::EncodeValuesMasked => Ok(()),
            };
            let exercised = !matches!(operation, Operation::Attend | Operation::EncodeValuesMasked);
            if exercised && !matches!(result, Err(Error::Unsupported { .. })) {
                return Err(format!(
                    "{} reports {} unsupported ({reason}) but the call returned {result:?}",
                    backend.name(),
                    operation.name()
                ));
            }
            cov.skip(operation, reason);
            Ok(false)
        }
    }
}

fn encode_via<B: KvQuantBackend>(
    backend: &B,
    case: &Case,
    head: usize,
    keys: bool,
    mask: Option<&ChannelMask>,
) -> Result<Vec<u8>, String> {
    let codec = &case.codec;
    let raw = case.raw(case.rows(head, keys));
    let tokens = case.params.blocks * codec.group();
    let r = if keys {
        encode_keys(
            backend,
            codec,
            case.params.dtype,
            &raw,
            tokens,
            mask,
            case.params.blocks * codec.key_block_bytes(),
        )
    } else {
        encode_values(
            backend,
            codec,
            case.params.dtype,
            &raw,
            tokens,
            case.params.blocks * codec.value_block_bytes(),
        )
    };
    r.map_err(|e| format!("{} encode failed on valid input: {e}", backend.name()))
}

fn encode_matches<B: KvQuantBackend>(backend: &B, keys: bool, default_cases: u32) {
    let name = if keys {
        "encode_keys_matches_reference"
    } else {
        "encode_values_matches_reference"
    };
    let cov = run(backend, name, default_cases, |case, cov| {
        if !supported(backend, case, op(keys, true), cov)? {
            return Ok(());
        }
        let mask = case.layer_mask();
        for h in 0..case.params.heads {
            let reference = reference_encode(case, h, keys, mask.as_ref());
            let candidate = encode_via(backend, case, h, keys, mask.as_ref())?;
            let rows = case.reference_input(h, keys);
            let tally = if keys {
                fields::compare_keys(&case.codec, &rows, &reference, &candidate)
            } else {
                fields::compare_values(&case.codec, &rows, &reference, &candidate)
            }
            .map_err(|e| format!("head {h}: {e}"))?;
            cov.tally.add(tally);
        }
        Ok(())
    });
    cov.print(backend.name(), name);
    assert!(
        cov.tally.share() < MAX_BOUNDARY_SHARE,
        "conformance[{}] {name}: boundary disagreements {} of {} codes exceed {MAX_BOUNDARY_SHARE}",
        backend.name(),
        cov.tally.boundary,
        cov.tally.codes
    );
}

/// Key encodings agree byte for byte with the scalar reference, except codes whose input lies
/// within float rounding of a decision boundary (counted, each checked, share < 1e-3).
pub fn encode_keys_matches_reference<B: KvQuantBackend>(backend: &B) {
    encode_matches(backend, true, 128);
}

/// Value encodings agree with the scalar reference (same rule as keys).
pub fn encode_values_matches_reference<B: KvQuantBackend>(backend: &B) {
    encode_matches(backend, false, 128);
}

fn max_diff(reference: &[f32], candidate: &[f32], block: usize) -> Result<f32, String> {
    let mut worst = 0.0f32;
    for (b, (r, c)) in reference
        .chunks(block)
        .zip(candidate.chunks(block))
        .enumerate()
    {
        let scale = r.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        for (i, (x, y)) in r.iter().zip(c).enumerate() {
            let diff = (x - y).abs();
            if diff.is_nan() || diff > DECODE_RTOL * scale {
                return Err(format!(
                    "block {b} element {i}: reference decodes {x}, backend {y} \
                     (tolerance {})",
                    DECODE_RTOL * scale
                ));
            }
            worst = worst.max(diff / scale);
        }
    }
    Ok(worst)
}

/// Decoding the same (reference-encoded) bytes gives the scalar reference's values, within
/// [`DECODE_RTOL`].
pub fn decode_matches_reference<B: KvQuantBackend>(backend: &B) {
    let name = "decode_matches_reference";
    let cov = run(backend, name, 96, |case, cov| {
        let mask = case.layer_mask();
        for keys in [true, false] {
            if !supported(backend, case, op(keys, false), cov)? {
                continue;
            }
            for h in 0..case.params.heads {
                let enc = reference_encode(case, h, keys, mask.as_ref());
                let want = reference_decode(&case.codec, keys, &enc, case.params.blocks)
                    .map_err(|e| format!("reference rejects its own bytes: {e}"))?;
                let got = decode(backend, &case.codec, keys, &enc, case.params.blocks)
                    .map_err(|e| format!("{} rejects valid bytes: {e}", backend.name()))?;
                let worst = max_diff(&want, &got, case.codec.block_elements())
                    .map_err(|e| format!("head {h} keys={keys}: {e}"))?;
                cov.max_decode_diff = cov.max_decode_diff.max(worst);
                cov.note("blocks decoded", case.params.blocks as u64);
            }
        }
        Ok(())
    });
    cov.print(backend.name(), name);
}

fn bounds<B: KvQuantBackend>(backend: &B, keys: bool) {
    let name = if keys {
        "key_error_bounds"
    } else {
        "value_error_bounds"
    };
    let cov = run(backend, name, 128, |case, cov| {
        if !supported(backend, case, op(keys, true), cov)?
            || !supported(backend, case, op(keys, false), cov)?
        {
            return Ok(());
        }
        let mask = case.layer_mask();
        for h in 0..case.params.heads {
            let enc = encode_via(backend, case, h, keys, mask.as_ref())?;
            let dec = decode(backend, &case.codec, keys, &enc, case.params.blocks)
                .map_err(|e| format!("{} rejects its own bytes: {e}", backend.name()))?;
            if dec.iter().any(|v| !v.is_finite()) {
                return Err(format!("head {h}: non-finite decoded value"));
            }
            let rows = case.reference_input(h, keys);
            if keys {
                fields::check_key_bounds(&case.codec, &rows, mask.as_ref(), &enc, &dec)
            } else {
                fields::check_value_bounds(&case.codec, &rows, &enc, &dec)
            }
            .map_err(|e| format!("head {h}: {e}"))?;
            cov.note("elements checked", rows.len() as u64);
        }
        Ok(())
    });
    cov.print(backend.name(), name);
}

/// Keys decode within the error bound of their quantizer: 2-bit outliers and per-channel codes
/// within half a step plus f16 rounding, outlier channels the largest ranges, lanes `±s` (or the
/// PaperCompat rule) with `s = f16(mean |z|)` and the sign of `z`.
pub fn key_error_bounds<B: KvQuantBackend>(backend: &B) {
    bounds(backend, true);
}

/// Values decode within the bound of their quantizer: ternary codes are the nearest of the three
/// levels under `γ/2` with the configured scale; affine codes within half a step plus rounding.
pub fn value_error_bounds<B: KvQuantBackend>(backend: &B) {
    bounds(backend, false);
}

/// NaN and infinities (error `NonFinite` at the right index), magnitudes beyond f16
/// (`OutOfRange`), token counts that are not whole blocks and wrong buffer sizes are errors.
pub fn rejects_bad_input<B: KvQuantBackend>(backend: &B) {
    let name = "rejects_bad_input";
    let cov = run(backend, name, 64, |case, cov| {
        let codec = &case.codec;
        let (blocks, g) = (case.params.blocks, codec.group());
        let mut rng = Rng::new(case.params.seed ^ 0xBAD);
        let mask = case.layer_mask();
        for keys in [true, false] {
            if !supported(backend, case, op(keys, true), cov)? {
                continue;
            }
            let out_bytes = blocks
                * if keys {
                    codec.key_block_bytes()
                } else {
                    codec.value_block_bytes()
                };
            let call = |dtype: DType, raw: &[u8], tokens: usize, out: usize| {
                if keys {
                    encode_keys(backend, codec, dtype, raw, tokens, mask.as_ref(), out)
                } else {
                    encode_values(backend, codec, dtype, raw, tokens, out)
                }
            };
            let rows = case.rows(0, keys);
            let index = rng.below(rows.len());
            let bad = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY][rng.below(3)];
            for dtype in [DType::F32, DType::F16, DType::BF16] {
                let mut x = rows.to_vec();
                x[index] = bad;
                let raw = inputs::encode_dtype(dtype, &x);
                match call(dtype, &raw, blocks * g, out_bytes) {
                    Err(Error::NonFinite { index: i }) if i == index => {}
                    other => {
                        return Err(format!(
                            "{bad} at {index} ({dtype:?}, keys={keys}): expected NonFinite, got \
                             {other:?}"
                        ));
                    }
                }
            }
            let mut x = rows.to_vec();
            x[index] = if rng.chance(0.5) { 65520.0 } else { -1e9 };
            let raw = inputs::encode_dtype(DType::F32, &x);
            if !matches!(
                call(DType::F32, &raw, blocks * g, out_bytes),
                Err(Error::OutOfRange { index: i }) if i == index
            ) {
                return Err(format!("{} at {index}: expected OutOfRange", x[index]));
            }
            // Tokens that are not whole blocks, and a wrong output size.
            let ragged = blocks * g - 1 - rng.below(g - 1);
            let raw = case.raw(&rows[..ragged * codec.head_dim()]);
            if call(case.params.dtype, &raw, ragged, out_bytes).is_ok() {
                return Err(format!(
                    "{ragged} tokens (not a multiple of {g}) were accepted"
                ));
            }
            let raw = case.raw(rows);
            if call(case.params.dtype, &raw, blocks * g, out_bytes + 1).is_ok() {
                return Err("an output buffer one byte too long was accepted".into());
            }
            cov.note("rejections checked", 6);
        }
        for keys in [true, false] {
            if !supported(backend, case, op(keys, false), cov)? {
                continue;
            }
            let enc = reference_encode(case, 0, keys, mask.as_ref());
            let input = backend
                .upload(&enc[..enc.len() - 1])
                .map_err(|e| e.to_string())?;
            let mut out = backend
                .alloc(blocks * codec.block_elements() * 4)
                .map_err(|e| e.to_string())?;
            let r = if keys {
                backend.decode_keys(codec, &input, blocks, &mut out)
            } else {
                backend.decode_values(codec, &input, blocks, &mut out)
            };
            if r.is_ok() {
                return Err("a truncated encoded buffer was decoded".into());
            }
        }
        Ok(())
    });
    cov.print(backend.name(), name);
}

/// Damaged blocks (random bytes overwritten) are rejected by the backend exactly when the
/// reference rejects them, and decode to the same values otherwise; nothing panics.
pub fn damaged_blocks_like_reference<B: KvQuantBackend>(backend: &B) {
    let name = "damaged_blocks_like_reference";
    let cov = run(backend, name, 128, |case, cov| {
        let mut rng = Rng::new(case.params.seed ^ 0xDA4A6E);
        let mask = case.layer_mask();
        let blocks = case.params.blocks;
        for keys in [true, false] {
            if !supported(backend, case, op(keys, false), cov)? {
                continue;
            }
            let mut enc = reference_encode(case, 0, keys, mask.as_ref());
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(enc.len());
                enc[i] = if rng.chance(0.5) {
                    rng.next_u64() as u8
                } else {
                    enc[i] ^ (1 << rng.below(8))
                };
            }
            let want = reference_decode(&case.codec, keys, &enc, blocks);
            let got = decode(backend, &case.codec, keys, &enc, blocks);
            match (want, got) {
                (Ok(w), Ok(g)) => {
                    max_diff(&w, &g, case.codec.block_elements())?;
                    cov.note("damaged but decodable", 1);
                }
                (Err(Error::Corrupt { .. }), Err(Error::Corrupt { .. })) => {
                    cov.note("rejected as corrupt", 1);
                }
                (w, g) => {
                    return Err(format!(
                        "keys={keys}: reference {:?}, backend {:?}",
                        w.map(drop),
                        g.map(drop)
                    ));
                }
            }
        }
        Ok(())
    });
    cov.print(backend.name(), name);
}

/// Arbitrary bytes given to the backend's decoders (any configuration, any length) give an error
/// or finite values; never a panic.
pub fn arbitrary_bytes_never_panic<B: KvQuantBackend>(backend: &B) {
    let name = "arbitrary_bytes_never_panic";
    let cov = run(backend, name, 256, |case, cov| {
        let mut rng = Rng::new(case.params.seed);
        let codec = &case.codec;
        for keys in [true, false] {
            if !supported(backend, case, op(keys, false), cov)? {
                continue;
            }
            let block = if keys {
                codec.key_block_bytes()
            } else {
                codec.value_block_bytes()
            };
            let blocks = 1 + rng.below(2);
            let len = if rng.chance(0.8) {
                blocks * block
            } else {
                rng.below(3 * block)
            };
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if let Ok(v) = decode(backend, codec, keys, &bytes, blocks) {
                if v.iter().any(|x| x.is_nan()) {
                    return Err("NaN decoded from accepted bytes".into());
                }
                cov.note("random blocks accepted", 1);
            }
        }
        Ok(())
    });
    cov.print(backend.name(), name);
}

/// A whole cache (every head, whole blocks plus a tail) written to a `.vkv` container, read back
/// and decoded by the backend gives what direct decoding gives, and the tail exactly as f16.
pub fn container_roundtrip<B: KvQuantBackend>(backend: &B) {
    let name = "container_roundtrip";
    let cov = run(backend, name, 48, |case, cov| {
        let codec = &case.codec;
        for o in [
            Operation::EncodeKeys,
            Operation::EncodeValues,
            Operation::DecodeKeys,
            Operation::DecodeValues,
        ] {
            if !supported(backend, case, o, cov)? {
                return Ok(());
            }
        }
        let (d, heads) = (codec.head_dim(), case.params.heads);
        let mask = case.layer_mask();
        let tail_start = case.block_elements();
        let tail16 = |x: &[f32]| inputs::encode_dtype(DType::F16, &x[tail_start..]);
        let mut owned = Vec::new();
        for h in 0..heads {
            owned.push((
                encode_via(backend, case, h, true, mask.as_ref())?,
                encode_via(backend, case, h, false, mask.as_ref())?,
                tail16(&case.keys[h]),
                tail16(&case.values[h]),
            ));
        }
        let sections: Vec<HeadSection<'_>> = owned
            .iter()
            .map(|(k, v, tk, tv)| HeadSection {
                key_blocks: k,
                value_blocks: v,
                tail_keys: tk,
                tail_values: tv,
            })
            .collect();
        let mut w = ContainerWriter::new(codec);
        w.add_layer(&LayerInput {
            key_name: "k_post.3",
            value_name: "v.3",
            blocks: case.params.blocks,
            tail_tokens: case.params.tail,
            outliers: mask.as_ref(),
            heads: &sections,
        })
        .map_err(|e| format!("writer: {e}"))?;
        let file = w.finish();
        let parsed = Container::parse(&file).map_err(|e| format!("reader: {e}"))?;
        if parsed.config() != codec.config() {
            return Err("configuration changed through the container".into());
        }
        let layer = &parsed.layers()[0];
        if layer.outliers != mask || layer.tokens(codec) != case.tokens() {
            return Err("layer mask or token count changed".into());
        }
        for (h, head) in layer.heads.iter().enumerate() {
            for (keys, bytes, direct) in [
                (true, head.key_blocks, &owned[h].0),
                (false, head.value_blocks, &owned[h].1),
            ] {
                if bytes != direct.as_slice() {
                    return Err(format!("head {h}: block bytes changed"));
                }
                let a =
                    decode(backend, codec, keys, bytes, layer.blocks).map_err(|e| e.to_string())?;
                let b = decode(backend, codec, keys, direct, layer.blocks)
                    .map_err(|e| e.to_string())?;
                if a != b {
                    return Err(format!("head {h}: decoding differs"));
                }
            }
            let tk: Vec<f32> = head.tail_keys_f16().iter().map(|v| v.to_f32()).collect();
            let want: Vec<f32> = case.keys[h][tail_start..]
                .iter()
                .map(|&v| f16::from_f32(v).to_f32())
                .collect();
            if tk.len() != case.params.tail * d || tk != want {
                return Err(format!("head {h}: tail keys not restored exactly"));
            }
            let tv = head.tail_values_f16();
            if tv.len() != tk.len() {
                return Err(format!("head {h}: tail values lost"));
            }
        }
        let sizes = parsed.size_breakdown();
        if sizes.total() != file.len() {
            return Err("size breakdown does not add up to the file".into());
        }
        cov.note("container bytes", file.len() as u64);
        Ok(())
    });
    cov.print(backend.name(), name);
}

/// Which kinds of input the generators produce (for documentation and tests).
pub const INPUT_KINDS: [InputKind; 3] = [
    InputKind::Realistic,
    InputKind::Random,
    InputKind::Adversarial,
];

/// Reference strategy, exported for backends' own extra properties.
pub fn cases() -> impl Strategy<Value = Case> {
    inputs::case()
}
