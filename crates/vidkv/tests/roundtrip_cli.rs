//! `vidkv roundtrip` keeps names, shapes, tails and non-K/V tensors.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::{Raw, f16_tensor, f32_bytes, scratch, stderr, values, vidkv, write_file};
use half::f16;
use safetensors::{Dtype, SafeTensors};

const D: usize = 64;
/// Two whole groups of 32 plus a tail of 6.
const TOKENS: usize = 70;
const HEADS: usize = 2;

fn input_tensors() -> Vec<Raw> {
    let v32 = values(HEADS * TOKENS * D, D, 7);
    vec![
        f16_tensor("k_post.0", HEADS, TOKENS, D),
        Raw {
            name: "v.0",
            dtype: Dtype::F32,
            shape: vec![HEADS, TOKENS, D],
            bytes: f32_bytes(&v32),
        },
        f16_tensor("k_pre.0", HEADS, TOKENS, D),
        Raw {
            name: "token_ids",
            dtype: Dtype::I32,
            shape: vec![5],
            bytes: (0..5i32).flat_map(|i| i.to_le_bytes()).collect(),
        },
    ]
}

fn run(input: &Path, output: &Path, scheme: &str) {
    let out = vidkv(&[
        "roundtrip",
        input.to_str().unwrap(),
        output.to_str().unwrap(),
        "--scheme",
        scheme,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn f16_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(2)
        .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

#[test]
fn keeps_names_shapes_tails_and_other_tensors() {
    let input = scratch("roundtrip_in.safetensors");
    let meta = HashMap::from([("source".to_owned(), "test".to_owned())]);
    write_file(&input, &input_tensors(), Some(meta));
    for scheme in ["vidkv", "vidkv-paper", "kivi2", "kivi4", "pc2"] {
        let output = scratch(&format!("roundtrip_out_{scheme}.safetensors"));
        run(&input, &output, scheme);
        let (a, b) = (
            std::fs::read(&input).unwrap(),
            std::fs::read(&output).unwrap(),
        );
        let (before, after) = (
            SafeTensors::deserialize(&a).unwrap(),
            SafeTensors::deserialize(&b).unwrap(),
        );
        let mut names_before = before.names();
        let mut names_after = after.names();
        names_before.sort();
        names_after.sort();
        assert_eq!(names_before, names_after);
        for (name, x) in before.tensors() {
            let y = after.tensor(&name).unwrap();
            assert_eq!(x.shape(), y.shape(), "{name}");
            match name.as_str() {
                "k_post.0" => check_kv(x.data(), y.data(), Dtype::F16, scheme),
                "v.0" => check_kv(x.data(), y.data(), Dtype::F32, scheme),
                _ => {
                    assert_eq!(x.dtype(), y.dtype(), "{name}");
                    assert_eq!(x.data(), y.data(), "{name}");
                }
            }
            if name.starts_with("k_post") || name.starts_with("v.") {
                assert_eq!(y.dtype(), Dtype::F16);
            }
        }
        let (_, m) = SafeTensors::read_metadata(&b).unwrap();
        let m = m.metadata().clone().unwrap();
        assert_eq!(m["source"], "test");
        assert!(m["vidkv.roundtrip"].contains(scheme));
    }
}

/// Whole groups are close to the input but quantized; the 6-token tail of each head is copied
/// (bit-exact for f16 input, f16-rounded for f32 input).
fn check_kv(before: &[u8], after: &[u8], dtype: Dtype, scheme: &str) {
    let original: Vec<f32> = match dtype {
        Dtype::F16 => f16_values(before),
        _ => before
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
    };
    let decoded = f16_values(after);
    let row = D * TOKENS;
    for h in 0..HEADS {
        let q = h * row..h * row + 64 * D;
        let tail = h * row + 64 * D..(h + 1) * row;
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for i in q {
            diff += f64::from(decoded[i] - original[i]).powi(2);
            norm += f64::from(original[i]).powi(2);
        }
        let rel = (diff / norm).sqrt();
        // Loose: vidkv-paper's unit value scale is far off on this synthetic data (≈ 0.85).
        assert!(rel > 0.0 && rel < 1.0, "{scheme}: head {h} rel error {rel}");
        for i in tail {
            assert_eq!(
                decoded[i],
                f16::from_f32(original[i]).to_f32(),
                "{scheme}: tail element {i}"
            );
        }
        if dtype == Dtype::F16 {
            let t = (h * row + 64 * D) * 2..(h + 1) * row * 2;
            assert_eq!(before[t.clone()], after[t], "{scheme}: f16 tail bytes");
        }
    }
}

#[test]
fn tensors_shorter_than_a_group_are_copied() {
    let input = scratch("roundtrip_short_in.safetensors");
    let output = scratch("roundtrip_short_out.safetensors");
    write_file(&input, &[f16_tensor("k.3", 1, 20, D)], None);
    run(&input, &output, "vidkv");
    let (a, b) = (
        std::fs::read(&input).unwrap(),
        std::fs::read(&output).unwrap(),
    );
    let x = SafeTensors::deserialize(&a).unwrap();
    let y = SafeTensors::deserialize(&b).unwrap();
    assert_eq!(
        x.tensor("k.3").unwrap().data(),
        y.tensor("k.3").unwrap().data()
    );
}

/// The project's real data, where it is present (not in CI).
#[test]
fn roundtrip_on_shared_data() {
    let dir = Path::new("/work/shared/data");
    if !dir.is_dir() {
        eprintln!("shared data not found: skipped");
        return;
    }
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .safetensors in {}", dir.display());
    for input in files {
        let name = input.file_name().unwrap().to_string_lossy().into_owned();
        let output = scratch(&format!("shared_{name}"));
        run(&input, &output, "vidkv");
        let (a, b) = (
            std::fs::read(&input).unwrap(),
            std::fs::read(&output).unwrap(),
        );
        let (x, y) = (
            SafeTensors::deserialize(&a).unwrap(),
            SafeTensors::deserialize(&b).unwrap(),
        );
        assert_eq!(x.len(), y.len(), "{name}");
        for (tensor, view) in x.tensors() {
            let out = y.tensor(&tensor).unwrap();
            assert_eq!(view.shape(), out.shape(), "{name} {tensor}");
            if vidkv::KvKind::of_name(&tensor).is_none() {
                assert_eq!(view.data(), out.data(), "{name} {tensor}");
            }
        }
        let _ = std::fs::remove_file(output);
    }
}
