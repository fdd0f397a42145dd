//! `vidkv-dump-kv`: runs SmolLM2-135M over a text and writes the post-RoPE keys, the values and
//! the queries of the last positions of **every** layer to a safetensors file, with the tensor
//! names and layout of `/work/shared/data/smollm2_apache_kv.safetensors`:
//! `k_post.L`, `v.L` `[kv_heads, tokens, D]` f16, `q_post.L` `[heads, queries, D]` f16 (the last
//! `--queries` positions), `token_ids` `[tokens]` i32. Channel order is Hugging Face's.
//!
//! Adjacent layers are what cross-layer code sharing (XQuant, `vidkv eval --cross-layer`) needs.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};
use clap::Parser;
use safetensors::{Dtype, tensor::TensorView};
use vidkv_candle::Result;
use vidkv_candle::model::{ChannelOrder, Llama, WeightMode};
use vidkv_candle::tokenizer::GgufTokenizer;

const DEFAULT_TEXT: &str = include_str!("../../data/rust-book-prose.txt");
const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/weights/SmolLM2-135M-Instruct.Q4_1.gguf"
);

#[derive(Parser, Debug)]
#[command(about = "Dump SmolLM2 post-RoPE K/V (and last queries) of all layers to safetensors")]
struct Args {
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// GGUF model file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Input text (default: the shipped Rust Book excerpt).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Tokens of the text to run.
    #[arg(long, default_value_t = 1024)]
    tokens: usize,
    /// Query positions kept (the last ones).
    #[arg(long, default_value_t = 256)]
    queries: usize,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn f16_bytes(t: &Tensor) -> Result<(Vec<usize>, Vec<u8>)> {
    let t = t.squeeze(0)?;
    let dims = t.dims().to_vec();
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    let bytes = values
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    Ok((dims, bytes))
}

fn run(args: &Args) -> Result<()> {
    let err = |s: String| vidkv_candle::Error::Config(s);
    let mut file = File::open(&args.model).map_err(|e| err(format!("{e}")))?;
    let content = Content::read(&mut file)?;
    let tokenizer = GgufTokenizer::from_gguf(&content)?;
    let model = Llama::from_content(
        &content,
        &mut file,
        &Device::Cpu,
        ChannelOrder::Hf,
        WeightMode::Q41,
    )?;
    let text = match &args.text {
        Some(p) => std::fs::read_to_string(p).map_err(|e| err(format!("{e}")))?,
        None => DEFAULT_TEXT.to_string(),
    };
    let mut ids = tokenizer.encode(&text)?;
    if ids.len() < args.tokens || args.queries > args.tokens {
        return Err(err(format!(
            "the text has {} tokens; asked for {} (and {} queries)",
            ids.len(),
            args.tokens,
            args.queries
        )));
    }
    ids.truncate(args.tokens);
    let dump = model.qkv_dump(&ids)?;
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (layer, [q, k, v]) in dump.iter().enumerate() {
        let q = q.narrow(2, args.tokens - args.queries, args.queries)?;
        for (name, t) in [("q_post", &q), ("k_post", k), ("v", v)] {
            let (dims, bytes) = f16_bytes(t)?;
            tensors.push((format!("{name}.{layer}"), Dtype::F16, dims, bytes));
        }
    }
    let id_bytes = ids.iter().flat_map(|&i| (i as i32).to_le_bytes()).collect();
    tensors.push(("token_ids".into(), Dtype::I32, vec![ids.len()], id_bytes));
    let views: HashMap<String, TensorView<'_>> = tensors
        .iter()
        .map(|(name, dtype, dims, bytes)| {
            let view =
                TensorView::new(*dtype, dims.clone(), bytes).map_err(|e| err(format!("{e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize_to_file(views, &None, &args.out).map_err(|e| err(format!("{e}")))?;
    eprintln!(
        "wrote {} layers × {} tokens to {}",
        dump.len(),
        args.tokens,
        args.out.display()
    );
    Ok(())
}
