//! `vidkv-cuda-bench`: the GPU benchmark of [`vidkv_cuda::bench`] (also `vidkv bench --backend
//! cuda`): fused decode attention over the packed cache for a model's layer shape (default
//! LLaVA-OneVision-7B / Qwen2-7B: 28 query heads, 4 KV heads, D = 128), prefill encode throughput
//! and the device-to-device copy bandwidth; one JSON object per line.
//!
//! ```text
//! vidkv-cuda-bench [--scheme vidkv]... [--batch 1 --batch 16] [--tokens 65536]... [--reps 50]
//!                  [--kv-heads 4] [--query-heads 28] [--head-dim 128] [--residual 128] [--sinks 1]
//!                  [--tune]   # also time forced split counts ("attention-tune" lines)
//! ```

use vidkv_core::Scheme;
use vidkv_cuda::bench::{BenchOptions, run};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn parse() -> Res<BenchOptions> {
    let mut a = BenchOptions {
        schemes: Vec::new(),
        batches: Vec::new(),
        tokens: Vec::new(),
        ..BenchOptions::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--scheme" => a.schemes.push(Scheme::from_name(&value()?)?),
            "--batch" => a.batches.push(value()?.parse()?),
            "--tokens" => a.tokens.push(value()?.parse()?),
            "--reps" => a.reps = value()?.parse()?,
            "--kv-heads" => a.kv_heads = value()?.parse()?,
            "--query-heads" => a.query_heads = value()?.parse()?,
            "--head-dim" => a.head_dim = value()?.parse()?,
            "--residual" => a.residual = value()?.parse()?,
            "--sinks" => a.sinks = value()?.parse()?,
            "--tune" => a.tune = true,
            "--help" | "-h" => {
                println!(
                    "vidkv-cuda-bench [--scheme NAME]... [--batch B]... [--tokens T]... [--reps N] \
                     [--kv-heads H] [--query-heads Q] [--head-dim D] [--residual R] [--sinks S] \
                     [--tune]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let d = BenchOptions::default();
    if a.schemes.is_empty() {
        a.schemes = d.schemes;
    }
    if a.batches.is_empty() {
        a.batches = d.batches;
    }
    if a.tokens.is_empty() {
        a.tokens = d.tokens;
    }
    Ok(a)
}

fn main() -> Res<()> {
    let a = parse()?;
    run(&a, &mut |line| println!("{line}"))
}
