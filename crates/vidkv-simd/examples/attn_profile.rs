//! One level's packed attention next to the f16 baseline, for profilers and for loaded machines:
//! `attn_profile <level> [tokens] [reps] [f16|packed|both]`.
//!
//! Every repetition times one decode step of each kernel back to back; the minimum over the
//! repetitions is the figure least disturbed by other processes (a step of a few ms often runs
//! inside one scheduler slice), the median is printed next to it.
use std::time::Instant;

use vidkv_simd::bench::{Shape, Synthetic};
use vidkv_simd::{HeadCache, HeadJob, Level, attend_heads, baseline};

fn packed_step(s: &Synthetic, level: Level, outs: &mut [Vec<f32>]) -> f64 {
    let blocks = s.shape.tokens / s.shape.group;
    let mut jobs: Vec<HeadJob<'_>> = s
        .queries
        .iter()
        .zip(outs.iter_mut())
        .enumerate()
        .map(|(h, (q, o))| HeadJob {
            queries: q,
            cache: HeadCache {
                key_blocks: &s.keys[h],
                value_blocks: &s.values[h],
                blocks,
                residual_keys: &[],
                residual_values: &[],
                residual_tokens: 0,
            },
            out: o,
        })
        .collect();
    let t = Instant::now();
    attend_heads(level, &s.codec, &mut jobs, 1).expect("packed attention");
    t.elapsed().as_secs_f64()
}

fn f16_step(s: &Synthetic, level: Level, outs: &mut [Vec<f32>]) -> f64 {
    let (d, tokens) = (s.shape.head_dim, s.shape.tokens);
    let t = Instant::now();
    for (h, o) in outs.iter_mut().enumerate() {
        baseline::attend_f16(
            level,
            d,
            &s.queries[h],
            &s.f16_keys[h],
            &s.f16_values[h],
            tokens,
            o,
        )
        .expect("f16 attention");
    }
    t.elapsed().as_secs_f64()
}

fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let level = Level::from_name(a.first().map_or("avx512", String::as_str))?;
    let tokens = a.get(1).and_then(|v| v.parse().ok()).unwrap_or(16384);
    let reps: usize = a.get(2).and_then(|v| v.parse().ok()).unwrap_or(20);
    let which = a.get(3).map_or("both", String::as_str);
    let s = Synthetic::new(Shape {
        tokens,
        ..Shape::default()
    })?;
    let mut outs: Vec<Vec<f32>> = s.queries.iter().map(|q| vec![0.0; q.len()]).collect();
    let (mut tp, mut tf) = (Vec::new(), Vec::new());
    for _ in 0..reps.max(1) + 1 {
        if which != "f16" {
            tp.push(packed_step(&s, level, &mut outs));
        }
        if which != "packed" {
            tf.push(f16_step(&s, level, &mut outs));
        }
    }
    let blocks = (s.shape.kv_heads * tokens / s.shape.group) as f64;
    let report = |name: &str, v: &mut Vec<f64>| -> Option<f64> {
        if v.len() < 2 {
            return None;
        }
        v.remove(0);
        let (min, med) = stats(v);
        println!(
            "{name} {level}: min {:.3} ms, median {:.3} ms ({:.0} ns per 32-token block of one KV head)",
            min * 1e3,
            med * 1e3,
            min / blocks * 1e9
        );
        Some(min)
    };
    let p = report("vidkv", &mut tp);
    let f = report("f16", &mut tf);
    if let (Some(p), Some(f)) = (p, f) {
        println!("speed-up of the minima: {:.2}×", f / p);
    }
    Ok(())
}
