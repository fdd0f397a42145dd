//! Helpers shared by the integration tests: running the binary and writing small safetensors
//! files.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use half::f16;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// Runs `vidkv` with `args`.
pub fn vidkv(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vidkv"))
        .args(args)
        .output()
        .expect("the vidkv binary runs")
}

/// A fresh path under cargo's per-target scratch directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vidkv-tests");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir.join(name)
}

/// A tensor to write: name, dtype, shape, raw bytes.
pub struct Raw {
    pub name: &'static str,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

/// Writes `tensors` (plus optional metadata) to `path`.
pub fn write_file(path: &PathBuf, tensors: &[Raw], meta: Option<HashMap<String, String>>) {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|t| {
            let view = TensorView::new(t.dtype, t.shape.clone(), &t.bytes).expect("consistent");
            (t.name, view)
        })
        .collect();
    let bytes = safetensors::serialize(views, &meta).expect("serializes");
    std::fs::write(path, bytes).expect("writes");
}

/// Deterministic pseudo-random values in about [-2, 2] with a few large "outlier" channels, so
/// that keys look like a trained model's.
pub fn values(n: usize, head_dim: usize, seed: u64) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|i| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0;
            if i % head_dim < 3 { u * 8.0 + 5.0 } else { u }
        })
        .collect()
}

/// f16 little-endian bytes.
pub fn f16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| f16::from_f32(x).to_le_bytes())
        .collect()
}

/// f32 little-endian bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|&x| x.to_le_bytes()).collect()
}

/// A valid f16 K tensor `[heads, tokens, head_dim]`.
pub fn f16_tensor(name: &'static str, heads: usize, tokens: usize, head_dim: usize) -> Raw {
    let v = values(heads * tokens * head_dim, head_dim, name.len() as u64);
    Raw {
        name,
        dtype: Dtype::F16,
        shape: vec![heads, tokens, head_dim],
        bytes: f16_bytes(&v),
    }
}

/// Stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
