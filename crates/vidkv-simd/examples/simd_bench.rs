//! Decode attention of every available SIMD level against the f16-cache baseline, measured in
//! one run. `cargo run --release -p vidkv-simd --example simd_bench -- [tokens] [threads] [reps]`
use vidkv_simd::Level;
use vidkv_simd::bench::{Shape, Synthetic, read_bandwidth};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let shape = Shape {
        tokens: args.first().copied().unwrap_or(65536),
        ..Shape::default()
    };
    let max_threads = args.get(1).copied().unwrap_or(2);
    let reps = args.get(2).copied().unwrap_or(5);
    let bw = read_bandwidth(1 << 30, 3);
    println!(
        "single-thread read bandwidth (1 GiB buffer): {:.1} GB/s",
        bw / 1e9
    );
    let s = Synthetic::new(shape)?;
    println!(
        "shape: {}/{} heads, D = {}, T = {}, G = {}; packed {:.1} MB, f16 {:.1} MB",
        shape.query_heads,
        shape.kv_heads,
        shape.head_dim,
        shape.tokens,
        shape.group,
        s.packed_bytes() as f64 / 1e6,
        s.f16_bytes() as f64 / 1e6
    );
    // Encode (prefill): SimdBackend runs the scalar encoders at every level (no SIMD encode yet).
    {
        let (d, g, blocks) = (shape.head_dim, shape.group, 512usize);
        let x: Vec<f32> = (0..blocks * g * d)
            .map(|i| ((i * 7919) % 1000) as f32 * 0.002 - 1.0)
            .collect();
        let mut kb = vec![0u8; blocks * s.codec.key_block_bytes()];
        let mut vb = vec![0u8; blocks * s.codec.value_block_bytes()];
        let t = std::time::Instant::now();
        vidkv_cpu::encode_key_blocks(&s.codec, &x, None, &mut kb)?;
        vidkv_cpu::encode_value_blocks(&s.codec, &x, &mut vb)?;
        let secs = t.elapsed().as_secs_f64();
        let f16_bytes = 2.0 * 2.0 * x.len() as f64; // keys + values as f16
        println!(
            "encode (scalar fallback, keys + values): {:.1} MB/s of f16 input",
            f16_bytes / secs / 1e6
        );
    }
    println!(
        "| cache | level | threads | ms | GB/s | % of 1-thread read BW | speed-up vs best f16 (same threads) |"
    );
    println!("|---|---|---|---|---|---|---|");
    for threads in 1..=max_threads {
        let mut rows = Vec::new();
        for level in Level::available().filter(|l| *l != Level::Scalar) {
            rows.push(s.time_f16(level, threads, reps)?);
        }
        let best_f16 = rows.iter().map(|r| r.seconds).fold(f64::INFINITY, f64::min);
        for level in Level::available().filter(|l| *l != Level::Scalar) {
            rows.push(s.time_packed(level, threads, reps)?);
        }
        for r in &rows {
            println!(
                "| {} | {} | {} | {:.3} | {:.1} | {:.0}% | {:.2}× |",
                r.cache,
                r.level,
                r.threads,
                r.seconds * 1e3,
                r.bandwidth() / 1e9,
                100.0 * r.bandwidth() / bw,
                best_f16 / r.seconds
            );
        }
    }
    Ok(())
}
