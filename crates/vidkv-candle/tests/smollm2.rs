//! Tests on the real model. They need the weights (`crates/vidkv-candle/fetch-weights.sh`) and
//! print "weights not found: skipped" without them. The comparison with the shared reference
//! K/V tensors also needs `../shared/data/smollm2_apache_kv.safetensors` beside the repository.

use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;
use vidkv_candle::model::{ChannelOrder, Llama, WeightMode};
use vidkv_candle::tokenizer::GgufTokenizer;
use vidkv_candle::{F16Factory, KvCacheAttention};

fn weights() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/SmolLM2-135M-Instruct.Q4_1.gguf");
    if p.exists() {
        Some(p)
    } else {
        println!("weights not found: skipped (run crates/vidkv-candle/fetch-weights.sh)");
        None
    }
}

fn load(path: &Path, order: ChannelOrder) -> (Llama, GgufTokenizer) {
    let mut f = std::fs::File::open(path).unwrap();
    let ct = Content::read(&mut f).unwrap();
    let tok = GgufTokenizer::from_gguf(&ct).unwrap();
    let model = Llama::from_content(&ct, &mut f, &Device::Cpu, order, WeightMode::Q41).unwrap();
    (model, tok)
}

#[test]
fn the_capital_of_france_is_paris_in_both_channel_orders() {
    let Some(path) = weights() else { return };
    for order in [ChannelOrder::Hf, ChannelOrder::Gguf] {
        let (model, tok) = load(&path, order);
        let c = *model.config();
        assert_eq!((c.layers, c.heads, c.kv_heads, c.head_dim), (30, 9, 3, 64));
        assert_eq!(c.rope_theta, 100_000.0);
        let ids = tok.encode("The capital of France is").unwrap();
        let mut cache = KvCacheAttention::new(&F16Factory, c.layers, c.cache_shape()).unwrap();
        let (logits, _) = model.forward(&ids, 0, &mut cache).unwrap();
        let logits = logits.to_vec1::<f32>().unwrap();
        let best = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap();
        assert_eq!(tok.decode(&[best as u32]).unwrap(), " Paris", "{order:?}");
        // Decoding the next token through the cache agrees with a prefill of both tokens.
        let (step, _) = model
            .forward(&[best as u32], ids.len(), &mut cache)
            .unwrap();
        let mut all = ids.clone();
        all.push(best as u32);
        let mut fresh = KvCacheAttention::new(&F16Factory, c.layers, c.cache_shape()).unwrap();
        let (full, _) = model.forward(&all, 0, &mut fresh).unwrap();
        let diff = (step - full)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 0.05, "decode vs prefill logits differ by {diff}");
    }
}

#[test]
fn tokens_and_keys_match_the_shared_reference_forward() {
    let Some(path) = weights() else { return };
    let data = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/smollm2_apache_kv.safetensors");
    let Ok(bytes) = std::fs::read(&data) else {
        println!("shared reference data not found: skipped");
        return;
    };
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ids: Vec<u32> = st
        .tensor("token_ids")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u32)
        .collect();
    let (model, tok) = load(&path, ChannelOrder::Hf);
    // The reference tokenized the Apache License 2.0 text; our tokenizer must agree.
    if let Ok(text) = std::fs::read_to_string("/usr/share/common-licenses/Apache-2.0") {
        let ours = tok.encode(&text).unwrap();
        let n = ours.len().min(ids.len());
        assert_eq!(ours[..n], ids[..n], "tokenizer differs from the reference");
    }
    // Post-RoPE keys of the first 128 tokens in Hugging Face channel order, layers 0 and 15.
    let t = 128;
    let dump = model.kv_dump(&ids[..t]).unwrap();
    for layer in [0usize, 15] {
        let want = st.tensor(&format!("k_post.{layer}")).unwrap();
        let want: Vec<f32> = want
            .data()
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect();
        let ours = dump[layer]
            .0
            .squeeze(0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let (mut err, mut norm) = (0.0f64, 0.0f64);
        for h in 0..3 {
            for i in 0..t * 64 {
                let (a, b) = (ours[h * t * 64 + i], want[h * 2048 * 64 + i]);
                err += f64::from(a - b).powi(2);
                norm += f64::from(b).powi(2);
            }
        }
        let rel = (err / norm).sqrt();
        assert!(rel < 0.02, "layer {layer}: relative key error {rel}");
    }
}
