//! `vidkv pack` / `unpack` / `inspect`: the container restores what `roundtrip` produces, tails
//! exactly, and `inspect` accounts for every byte of the file.

mod common;

use std::path::PathBuf;

use common::{Raw, f16_tensor, f32_bytes, scratch, values, vidkv, write_file};
use safetensors::{Dtype, SafeTensors};

const D: usize = 64;
/// Two whole groups of 32 plus a tail of 11.
const TOKENS: usize = 75;
const HEADS: usize = 3;

fn input(name: &str) -> PathBuf {
    let v32 = values(HEADS * TOKENS * D, D, 11);
    let path = scratch(name);
    write_file(
        &path,
        &[
            f16_tensor("k_post.0", HEADS, TOKENS, D),
            Raw {
                name: "v.0",
                dtype: Dtype::F32,
                shape: vec![HEADS, TOKENS, D],
                bytes: f32_bytes(&v32),
            },
            f16_tensor("k_post.5", HEADS, TOKENS, D),
            f16_tensor("v.5", HEADS, TOKENS, D),
            f16_tensor("k_pre.0", HEADS, TOKENS, D),
        ],
        None,
    );
    path
}

fn ok(args: &[&str]) -> String {
    let out = vidkv(args);
    assert!(
        out.status.success(),
        "vidkv {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn unpack_restores_exactly_what_roundtrip_writes() {
    let src = input("vkv-src.safetensors");
    for scheme in ["vidkv", "vidkv-paper", "kivi2", "kivi4", "pc2"] {
        let packed = scratch(&format!("vkv-{scheme}.vkv"));
        let unpacked = scratch(&format!("vkv-{scheme}.unpacked.safetensors"));
        let rt = scratch(&format!("vkv-{scheme}.rt.safetensors"));
        let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
        ok(&["pack", &s(&src), &s(&packed), "--scheme", scheme]);
        ok(&["unpack", &s(&packed), &s(&unpacked)]);
        ok(&["roundtrip", &s(&src), &s(&rt), "--scheme", scheme]);
        let (a, b) = (
            std::fs::read(&unpacked).unwrap(),
            std::fs::read(&rt).unwrap(),
        );
        let (a, b) = (
            SafeTensors::deserialize(&a).unwrap(),
            SafeTensors::deserialize(&b).unwrap(),
        );
        let mut names = a.names();
        names.sort();
        assert_eq!(names, ["k_post.0", "k_post.5", "v.0", "v.5"], "{scheme}");
        for name in names {
            let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
            assert_eq!(x.dtype(), Dtype::F16);
            assert_eq!(x.shape(), [HEADS, TOKENS, D]);
            assert_eq!(x.data(), y.data(), "{scheme} {name}");
        }
        // Tail tokens of f16 input come back bit for bit.
        let src_bytes = std::fs::read(&src).unwrap();
        let orig = SafeTensors::deserialize(&src_bytes).unwrap();
        let (o, x) = (orig.tensor("v.5").unwrap(), a.tensor("v.5").unwrap());
        for h in 0..HEADS {
            let tail =
                |data: &[u8]| data[(h * TOKENS + 64) * D * 2..(h + 1) * TOKENS * D * 2].to_vec();
            assert_eq!(tail(o.data()), tail(x.data()), "{scheme} head {h}");
        }
    }
}

#[test]
fn inspect_accounts_for_every_byte() {
    let src = input("vkv-inspect.safetensors");
    let packed = scratch("vkv-inspect.vkv");
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    ok(&["pack", &s(&src), &s(&packed), "--scheme", "vidkv-paper"]);
    let len = std::fs::metadata(&packed).unwrap().len() as f64;
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["inspect", "--json", &s(&packed)])).unwrap();
    let bits = json["bits_per_element"].as_f64().unwrap();
    let elements = json["elements_per_tensor"].as_f64().unwrap();
    assert_eq!(elements, (2 * HEADS * TOKENS * D) as f64);
    assert_eq!((bits * 2.0 * elements / 8.0).round(), len);
    assert!((bits * 2.0 * elements / 8.0 - len).abs() < 1e-6);
    let parts: f64 = [
        "key_block_bytes",
        "value_block_bytes",
        "tail_bytes",
        "overhead_bytes",
    ]
    .iter()
    .map(|k| json[k].as_f64().unwrap())
    .sum();
    assert_eq!(parts, len);
    assert_eq!(json["scheme"], "vidkv-paper");
    assert_eq!(json["layers"][1]["key_name"], "k_post.5");
    assert_eq!(json["layers"][0]["tail_tokens"], 11);
    assert_eq!(
        json["layers"][0]["outlier_channels"]
            .as_array()
            .unwrap()
            .len(),
        32
    );
    let text = ok(&["inspect", &s(&packed)]);
    assert!(text.contains("bits per element"), "{text}");
    assert!(text.contains(&format!("{} total", len as u64)), "{text}");
}

#[test]
fn damaged_files_and_unpaired_layers_are_one_line_errors() {
    let src = input("vkv-damage.safetensors");
    let packed = scratch("vkv-damage.vkv");
    let s = |p: &PathBuf| p.to_str().unwrap().to_owned();
    ok(&["pack", &s(&src), &s(&packed), "--scheme", "vidkv"]);
    let bytes = std::fs::read(&packed).unwrap();
    for (name, damaged) in [
        ("truncated", bytes[..bytes.len() - 100].to_vec()),
        ("flipped", {
            let mut b = bytes.clone();
            b[bytes.len() / 2] ^= 4;
            b
        }),
        ("not-vkv", b"hello".to_vec()),
    ] {
        let path = scratch(&format!("vkv-damage-{name}.vkv"));
        std::fs::write(&path, damaged).unwrap();
        for cmd in ["inspect", "unpack"] {
            let out_path = scratch("vkv-damage-out.safetensors");
            let mut args = vec![cmd, path.to_str().unwrap()];
            if cmd == "unpack" {
                args.push(out_path.to_str().unwrap());
            }
            let out = vidkv(&args);
            assert_eq!(out.status.code(), Some(1), "{name} {cmd}");
            let err = String::from_utf8(out.stderr).unwrap();
            assert!(
                err.starts_with("error: ") && err.contains(".vkv") && err.lines().count() == 1,
                "{name} {cmd}: {err}"
            );
        }
    }
    let out = vidkv(&["pack", &s(&src), &s(&packed), "--scheme", "vidkv-stp"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("salient"));
    let lonely = scratch("vkv-lonely.safetensors");
    write_file(&lonely, &[f16_tensor("k.2", 1, 40, D)], None);
    let out = vidkv(&[
        "pack",
        lonely.to_str().unwrap(),
        &s(&packed),
        "--scheme",
        "vidkv",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("value tensor"));
}
