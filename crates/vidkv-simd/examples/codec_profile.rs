//! Encode of the `vidkv` scheme at one level in a loop, for profilers.
//! `cargo run --release -p vidkv-simd --example codec_profile -- [level] [reps]`
use vidkv_core::{Codec, DType, GroupSize, HeadDim, HeadTensor, KvQuantBackend, Scheme};
use vidkv_simd::{Level, SimdBackend};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let level = Level::from_name(args.first().map_or("avx512", String::as_str))?;
    let reps: usize = args.get(1).and_then(|r| r.parse().ok()).unwrap_or(20);
    let decode = args.get(2).is_some_and(|a| a == "decode");
    if args.get(2).is_some_and(|a| a == "append") {
        let rows = vidkv_simd::codec_bench::codec_table(
            vidkv_core::Scheme::Vidkv,
            128,
            64,
            4,
            1024 * reps,
            1,
        )?;
        println!("{rows:?}");
        return Ok(());
    }
    let codec = Codec::new(Scheme::Vidkv.config(HeadDim::new(128)?, GroupSize::G32))?;
    let tokens = 8192;
    let (k, v) = vidkv_simd::codec_bench::synthetic_f16(tokens, 128, 7);
    let backend = SimdBackend::with_level(level)?;
    let mut kb = vec![0u8; tokens / 32 * codec.key_block_bytes()];
    let mut vb = vec![0u8; tokens / 32 * codec.value_block_bytes()];
    let mut out = vec![0u8; tokens * 128 * 4];
    let t = std::time::Instant::now();
    for _ in 0..reps {
        let tensor = |data| HeadTensor {
            data,
            dtype: DType::F16,
            tokens,
        };
        backend.encode_keys(&codec, tensor(&k), None, &mut kb)?;
        backend.encode_values(&codec, tensor(&v), &mut vb)?;
        if decode {
            backend.decode_keys(&codec, &kb, tokens / 32, &mut out)?;
            backend.decode_values(&codec, &vb, tokens / 32, &mut out)?;
        }
    }
    println!("{:.3} s", t.elapsed().as_secs_f64());
    Ok(())
}
