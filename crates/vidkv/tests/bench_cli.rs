//! `vidkv bench` on a tiny shape: every row has the documented keys and the ratios are
//! consistent (the benchmark itself is not a timed test).

mod common;

use common::{stderr, stdout, vidkv};
use serde_json::Value;

#[test]
fn json_rows_have_the_documented_keys() {
    let out = vidkv(&[
        "bench",
        "--json",
        "--tokens",
        "256",
        "--batch",
        "2",
        "--threads",
        "1",
        "--threads",
        "2",
        "--scheme",
        "vidkv",
        "--scheme",
        "kivi2",
        "--reps",
        "1",
        "--append-tokens",
        "64",
        "--bandwidth-mib",
        "8",
        "--residual",
        "32",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let rows: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let attention: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "attention").collect();
    // (f32, f16, vidkv, kivi2) × 2 thread counts
    assert_eq!(attention.len(), 8);
    for r in &attention {
        for key in [
            "backend",
            "scheme",
            "tokens",
            "batch",
            "threads",
            "ms_per_step",
            "bytes_per_step",
            "gb_per_s",
            "speedup_vs_f16",
        ] {
            assert!(r.get(key).is_some(), "missing {key} in {r}");
        }
        assert_eq!(r["tokens"], 256);
        assert_eq!(r["batch"], 2);
        if r["scheme"] == "f16" {
            assert_eq!(r["speedup_vs_f16"], 1.0);
            assert_eq!(r["bytes_per_step"], 2 * 2 * 4 * 256 * 128 * 2);
        }
    }
    let bytes = |s: &str| {
        attention.iter().find(|r| r["scheme"] == s).unwrap()["bytes_per_step"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(bytes("f32"), 2 * bytes("f16"));
    assert!(bytes("vidkv") < bytes("f16") / 2);
    let encode: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "encode").collect();
    assert_eq!(encode.len(), 2);
    for r in encode {
        assert!(r["prefill_gb_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["append_gb_per_s"].as_f64().unwrap() > 0.0);
    }
}
