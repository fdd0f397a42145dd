//! H1B-KV fused attention alone, for profilers: one KV head of 65536 tokens (D = 128, b = 128)
//! with 7 query heads (Qwen2-7B's GQA group), best of 40 runs at every available level.
use std::time::Instant;
use vidkv_core::{Codec, GroupSize, HeadDim, Scheme};
use vidkv_simd::{HeadCache, Level, attend_head};

fn main() {
    let d = 128;
    let codec = Codec::new(Scheme::H1b.config(HeadDim::new(d).unwrap(), GroupSize::G32)).unwrap();
    let distinct = 64;
    let n = distinct * 32;
    let mut s = 1u64;
    let mut f = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let k: Vec<f32> = (0..n * d).map(|_| f()).collect();
    let v: Vec<f32> = (0..n * d).map(|_| f()).collect();
    let mut kb = vec![0u8; distinct * codec.key_block_bytes()];
    let mut vb = vec![0u8; distinct * codec.value_block_bytes()];
    vidkv_cpu::encode_key_blocks(&codec, &k, None, &mut kb).unwrap();
    vidkv_cpu::encode_value_blocks(&codec, &v, &mut vb).unwrap();
    let reps = 2048 / distinct;
    let kb: Vec<u8> = kb.repeat(reps);
    let vb: Vec<u8> = vb.repeat(reps);
    let q: Vec<f32> = (0..7 * d).map(|_| f()).collect();
    let cache = HeadCache {
        key_blocks: &kb,
        value_blocks: &vb,
        blocks: 2048,
        residual_keys: &[],
        residual_values: &[],
        residual_tokens: 0,
    };
    let mut out = vec![0.0f32; 7 * d];
    for level in Level::available() {
        let mut best = f64::INFINITY;
        for _ in 0..40 {
            let t = Instant::now();
            attend_head(level, &codec, &q, &cache, &mut out).unwrap();
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("{level}: {best:.2} ms per KV head (65536 tokens, 7 queries)");
    }
}
