//! Decode attention of every available SIMD level against the f16-cache baseline, measured in
//! one run. `cargo run --release -p vidkv-simd --example simd_bench -- [tokens] [threads] [reps]`
use vidkv_core::Scheme;
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
    // Encode, decode and append of the `vidkv` scheme, every level next to the scalar backend.
    {
        let (tokens, appends) = (16384, 16384);
        println!(
            "codec (D = {}, G = 32, 1 thread): encode/decode {tokens} tokens of one head, \
             {appends} appends of {} KV heads; {} time",
            shape.head_dim,
            shape.kv_heads,
            if vidkv_simd::codec_bench::cpu_time_available() {
                "on-CPU (thread)"
            } else {
                "wall"
            }
        );
        println!(
            "| scheme | level | encode GB/s (f16 in, K+V) | decode GB/s (f16-equiv. out) | append µs/token/layer | bytes = scalar |"
        );
        println!("|---|---|---|---|---|---|");
        for scheme in [Scheme::Vidkv, Scheme::Pc2, Scheme::Kivi2] {
            let rows = vidkv_simd::codec_bench::codec_table(
                scheme,
                shape.head_dim,
                tokens,
                shape.kv_heads,
                appends,
                reps,
            )?;
            for r in &rows {
                println!(
                    "| {} | {} | {:.3} ({:.1}×) | {:.3} ({:.1}×) | {:.2} ({:.1}×) | {} |",
                    scheme.name(),
                    r.level.name(),
                    r.encode_gb_s,
                    r.encode_gb_s / rows[0].encode_gb_s,
                    r.decode_gb_s,
                    r.decode_gb_s / rows[0].decode_gb_s,
                    r.append_us,
                    rows[0].append_us / r.append_us,
                    if r.identical { "yes" } else { "NO" }
                );
            }
        }
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
