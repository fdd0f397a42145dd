//! Bad input ends with one `error: …` line and exit code 1, never a panic.

mod common;

use common::{Raw, f16_bytes, f16_tensor, scratch, stderr, vidkv, write_file};
use safetensors::Dtype;

/// Runs `args`, expects exit code 1 and a single stderr line containing `word`.
fn fails_with(args: &[&str], word: &str) {
    let out = vidkv(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(word), "{args:?}: expected {word:?} in {err}");
    assert!(out.stdout.is_empty(), "{args:?}: printed before failing");
}

/// Writes a file with a K tensor of the given dtype, shape and bytes plus one good V tensor.
fn file_with(name: &str, bad: Raw) -> String {
    let path = scratch(name);
    write_file(&path, &[bad, f16_tensor("v.0", 1, 32, 64)], None);
    path.to_string_lossy().into_owned()
}

fn eval_and_roundtrip_fail(path: &str, word: &str) {
    fails_with(&["eval", path], word);
    let out = scratch("never_written.safetensors");
    fails_with(
        &[
            "roundtrip",
            path,
            out.to_str().unwrap(),
            "--scheme",
            "vidkv",
        ],
        word,
    );
}

#[test]
fn nan_in_a_tensor() {
    let mut v = vec![0.5f32; 32 * 64];
    v[100] = f32::NAN;
    let bad = Raw {
        name: "k.0",
        dtype: Dtype::F16,
        shape: vec![1, 32, 64],
        bytes: f16_bytes(&v),
    };
    eval_and_roundtrip_fail(
        &file_with("nan.safetensors", bad),
        "NaN or infinity at head 0, token 1, channel 36",
    );
}

#[test]
fn infinity_in_the_unquantized_tail() {
    let mut v = vec![0.5f32; 40 * 64];
    v[39 * 64] = f32::INFINITY;
    let bad = Raw {
        name: "k.0",
        dtype: Dtype::F16,
        shape: vec![1, 40, 64],
        bytes: f16_bytes(&v),
    };
    eval_and_roundtrip_fail(
        &file_with("inf_tail.safetensors", bad),
        "token 39, channel 0",
    );
}

#[test]
fn rank_2_tensor() {
    let bad = Raw {
        name: "k.0",
        dtype: Dtype::F16,
        shape: vec![32, 64],
        bytes: f16_bytes(&[0.0; 32 * 64]),
    };
    eval_and_roundtrip_fail(&file_with("rank2.safetensors", bad), "rank");
}

#[test]
fn head_dim_65() {
    let bad = Raw {
        name: "k.0",
        dtype: Dtype::F16,
        shape: vec![1, 32, 65],
        bytes: f16_bytes(&[0.0; 32 * 65]),
    };
    eval_and_roundtrip_fail(&file_with("d65.safetensors", bad), "head_dim");
}

#[test]
fn i32_keys() {
    let bad = Raw {
        name: "k.0",
        dtype: Dtype::I32,
        shape: vec![1, 32, 64],
        bytes: vec![0; 32 * 64 * 4],
    };
    eval_and_roundtrip_fail(&file_with("i32.safetensors", bad), "dtype");
}

#[test]
fn empty_tensor() {
    let bad = Raw {
        name: "k.0",
        dtype: Dtype::F16,
        shape: vec![2, 0, 64],
        bytes: vec![],
    };
    eval_and_roundtrip_fail(&file_with("empty.safetensors", bad), "empty");
}

#[test]
fn missing_file() {
    eval_and_roundtrip_fail("/nonexistent/dir/kv.safetensors", "No such file");
}

#[test]
fn garbage_file() {
    let path = scratch("garbage.safetensors");
    std::fs::write(&path, b"this is not a safetensors file at all, just text\n").unwrap();
    eval_and_roundtrip_fail(path.to_str().unwrap(), "safetensors");
    std::fs::write(&path, b"ab").unwrap();
    eval_and_roundtrip_fail(path.to_str().unwrap(), "safetensors");
}

#[test]
fn file_without_kv_tensors_for_eval() {
    let path = scratch("no_kv.safetensors");
    write_file(&path, &[f16_tensor("q_post.0", 1, 32, 64)], None);
    fails_with(&["eval", path.to_str().unwrap()], "no K/V tensors");
}

#[test]
fn too_few_tokens_for_eval() {
    let path = scratch("short.safetensors");
    write_file(&path, &[f16_tensor("k.0", 1, 31, 64)], None);
    fails_with(&["eval", path.to_str().unwrap()], "fewer than one group");
}

#[test]
fn unknown_scheme_and_group() {
    fails_with(&["eval", "--scheme", "kivi3"], "unknown scheme");
    fails_with(&["eval", "--group", "48"], "group size");
    fails_with(
        &["roundtrip", "a", "b", "--scheme", "nope"],
        "unknown scheme",
    );
    fails_with(
        &["eval", "--scheme", "vidkv", "--key-ratio", "1.5"],
        "outlier ratio",
    );
}

#[test]
fn usage_errors_keep_clap_exit_code() {
    let out = vidkv(&["eval", "--transform", "wavelet"]);
    assert_eq!(out.status.code(), Some(2));
    let out = vidkv(&["roundtrip", "only-one-arg"]);
    assert_eq!(out.status.code(), Some(2));
}
