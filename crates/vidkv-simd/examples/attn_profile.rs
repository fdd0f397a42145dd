//! Runs only the packed attention at one level, for profilers:
//! `attn_profile <level> [tokens] [reps]`.
use vidkv_simd::Level;
use vidkv_simd::bench::{Shape, Synthetic};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let level = Level::from_name(a.first().map_or("avx512", String::as_str))?;
    let tokens = a.get(1).and_then(|v| v.parse().ok()).unwrap_or(16384);
    let reps = a.get(2).and_then(|v| v.parse().ok()).unwrap_or(20);
    let s = Synthetic::new(Shape {
        tokens,
        ..Shape::default()
    })?;
    let r = if a.get(3).is_some_and(|v| v == "f16") {
        s.time_f16(level, 1, reps)?
    } else {
        s.time_packed(level, 1, reps)?
    };
    println!("{} {}: {:.3} ms", r.cache, level, r.seconds * 1e3);
    Ok(())
}
