//! `vidkv-smollm2`: runs SmolLM2-135M-Instruct (GGUF, candle) with vidkv caches and measures what
//! each cache scheme does to the model: teacher-forced perplexity, Δ perplexity and KL against an
//! f16 cache, top-1 agreement, greedy-generation agreement, cache memory and decode speed.
//!
//! Weights: `crates/vidkv-candle/fetch-weights.sh` (or `--model`). See the crate README.

use std::fs::File;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;
use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde::Serialize;
use vidkv_candle::model::{ChannelOrder, Llama, WeightMode};
use vidkv_candle::tokenizer::GgufTokenizer;
use vidkv_candle::{
    AttentionPath, CacheFactory, F16Factory, KvCacheAttention, QuantFactory, Result, Streaming,
    VidkvFactory,
};
use vidkv_core::{Codec, GroupSize, HeadDim};

/// The default evaluation text, shipped in the repository (see `data/README.md`).
const DEFAULT_TEXT: &str = include_str!("../../data/rust-book-prose.txt");
const DEFAULT_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/weights/SmolLM2-135M-Instruct.Q4_1.gguf"
);
const GEN_QUESTION: &str =
    "Explain in detail, in several paragraphs, what this text says about ownership in Rust.";

#[derive(Parser, Debug)]
#[command(
    version,
    about = "SmolLM2-135M with vidkv KV caches: quality and speed per scheme"
)]
struct Args {
    /// GGUF model file.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Evaluation text (default: the shipped Rust Book excerpt).
    #[arg(long)]
    text: Option<PathBuf>,
    /// Text tokens used for the teacher-forced evaluation (the shipped text has 9573; 2048
    /// keeps a default run near 15 minutes on a 2-core machine).
    #[arg(long, default_value_t = 2048)]
    tokens: usize,
    /// Tokens prefilled at full precision before decoding through the cache.
    #[arg(long, default_value_t = 512)]
    prefill: usize,
    /// Schemes, comma-separated; `f16` is always run as the reference.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "vidkv,vidkv-paper,kivi2,kivi4,pc2"
    )]
    schemes: Vec<String>,
    /// Tokens per quantization block G.
    #[arg(long, default_value_t = 32)]
    group: usize,
    /// Newest tokens kept in the 16-bit residual R.
    #[arg(long, default_value_t = 128)]
    residual: usize,
    /// First tokens of a sequence kept in f16 forever (attention sinks).
    #[arg(long, default_value_t = 1)]
    sinks: usize,
    /// Quantized cache implementation: `kvcache` (vidkv-core's streaming KvCache with
    /// vidkv-cpu's fused attention) or `adapter` (this crate's QuantCache; see --attention).
    #[arg(long, default_value = "kvcache")]
    cache: String,
    /// Decode attention of the adapter's QuantCache: `fused` (vidkv-simd's kernel on the packed
    /// blocks), `exact` (f32 over blocks decoded once: the quality reference) or `auto` (fused
    /// where vidkv-simd has a kernel for the scheme, exact otherwise).
    #[arg(long, default_value = "auto")]
    attention: String,
    /// Greedy-generated tokens per scheme (0 skips generation).
    #[arg(long, default_value_t = 256)]
    gen_tokens: usize,
    /// Text tokens put in the generation prompt (a chat turn asking about them).
    #[arg(long, default_value_t = 1024)]
    gen_context: usize,
    /// A raw prompt for generation instead of the chat turn over the text.
    #[arg(long)]
    prompt: Option<String>,
    /// Key channel order the cache sees: `hf` (rotate_half, as the paper's models) or `gguf`.
    #[arg(long, default_value = "hf")]
    channel_order: String,
    /// How the matrices run: `q41` (the file's Q4_1 rows, exact f32 decode product of this
    /// crate; fastest), `f32` (dequantized once), `q8` (re-quantized to Q8_0) or `native`
    /// (candle's Q4_1 kernel, scalar and slow). All but `q8` use exactly the file's weights.
    #[arg(long, default_value = "q41")]
    weights: String,
    /// Decode steps timed per scheme (alone) after the teacher-forced run.
    #[arg(long, default_value_t = 32)]
    speed_tokens: usize,
    /// Skip the teacher-forced evaluation.
    #[arg(long)]
    skip_eval: bool,
    /// XQuant cross-layer code sharing: each `kvcache` scheme whose blocks can borrow codes
    /// (min/max keys and values) also runs as `<scheme>+share<FROM>`, where every odd layer
    /// ≥ FROM stores only its own parameters and decodes with the previous layer's codes.
    #[arg(long, value_name = "FROM")]
    cross_layer: Option<usize>,
    /// Print one JSON document instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug, Default, Clone)]
struct SchemeReport {
    scheme: String,
    /// How decode attention ran.
    attention: String,
    /// Cache bytes per token over all layers at the end of the teacher-forced run.
    bytes_per_token: f64,
    /// Same, in bits per cached K/V element.
    bits_per_element: f64,
    /// Steady-state bytes per token of quantized blocks (the residual excluded).
    block_bytes_per_token: f64,
    perplexity: f64,
    delta_perplexity: f64,
    /// Mean KL(p_f16 ‖ p_scheme) in nats.
    mean_kl: f64,
    /// Share of positions whose argmax equals the f16 cache's.
    top1_agreement: f64,
    /// Share of positions whose argmax is the true next token.
    top1_accuracy: f64,
    /// Context length of the speed measurement.
    speed_context: usize,
    /// Decode tokens per second (whole forward, this scheme alone, at `speed_context`).
    decode_tokens_per_s: f64,
    /// Mean time of the cache's attention step per token (all layers), µs.
    attention_us_per_token: f64,
    /// Greedy generation: share of the positions whose token equals the f16 run's.
    gen_identical: Option<f64>,
    /// First position where generation differs from f16 (None if it never does).
    gen_first_divergence: Option<usize>,
    gen_text: Option<String>,
}

#[derive(Serialize, Debug)]
struct Report {
    model: String,
    channel_order: String,
    device: String,
    /// Cache implementation and attention path of the quantized schemes.
    implementation: String,
    /// vidkv-simd level of the attention kernels.
    simd_level: String,
    weights: String,
    group: usize,
    residual: usize,
    sinks: usize,
    eval_tokens: usize,
    prefill: usize,
    scored_positions: usize,
    sanity_prompt: String,
    sanity_next_token: String,
    sanity_probability: f64,
    gen_prompt_tokens: usize,
    gen_tokens: usize,
    schemes: Vec<SchemeReport>,
}

fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = logits
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&x| x as f64 - lse).collect()
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

struct Runner {
    model: Llama,
    factories: Vec<Box<dyn CacheFactory>>,
}

impl Runner {
    fn caches(&self) -> Result<Vec<KvCacheAttention>> {
        let c = self.model.config();
        self.factories
            .iter()
            .map(|f| KvCacheAttention::new(f.as_ref(), c.layers, c.cache_shape()))
            .collect()
    }
}

/// A progress bar on stderr (drawn only when stderr is a terminal).
fn bar(len: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template(
            "{msg:<14} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .expect("valid template"),
    );
    b
}

fn main() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        // candle looks the thread count up on every CPU op; without the variable that reads
        // /proc and sysfs each time and counts physical cores only (1 on a 2-vCPU machine).
        // SAFETY: first statement of main, before any other thread exists.
        unsafe {
            std::env::set_var(
                "RAYON_NUM_THREADS",
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get())
                    .to_string(),
            )
        };
    }
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<()> {
    let err = |s: String| vidkv_candle::Error::Config(s);
    if !args.model.exists() {
        return Err(err(format!(
            "weights not found at {} — run crates/vidkv-candle/fetch-weights.sh first",
            args.model.display()
        )));
    }
    let order = match args.channel_order.as_str() {
        "hf" => ChannelOrder::Hf,
        "gguf" => ChannelOrder::Gguf,
        o => return Err(err(format!("unknown channel order {o} (hf or gguf)"))),
    };
    let weights = match args.weights.as_str() {
        "q41" => WeightMode::Q41,
        "f32" => WeightMode::F32,
        "q8" => WeightMode::Q8,
        "native" => WeightMode::Native,
        w => {
            return Err(err(format!(
                "unknown weight mode {w} (q41, f32, q8 or native)"
            )));
        }
    };
    let device = Device::Cpu;
    let t0 = Instant::now();
    let mut file = File::open(&args.model).map_err(|e| err(e.to_string()))?;
    let content = Content::read(&mut file)?;
    let tokenizer = GgufTokenizer::from_gguf(&content)?;
    let model = Llama::from_content(&content, &mut file, &device, order, weights)?;
    let cfg = *model.config();
    if !args.json {
        eprintln!(
            "loaded {} in {:.1}s: {} layers, {} heads / {} KV heads, head_dim {}, θ = {}, eps = {}",
            args.model.display(),
            t0.elapsed().as_secs_f64(),
            cfg.layers,
            cfg.heads,
            cfg.kv_heads,
            cfg.head_dim,
            cfg.rope_theta,
            cfg.rms_eps
        );
    }

    // Factories: f16 first (the reference), then the requested schemes.
    let group = GroupSize::new(args.group)?;
    let streaming = Streaming {
        residual: args.residual,
        sinks: args.sinks,
    };
    let path = match args.attention.as_str() {
        "auto" => AttentionPath::Auto,
        "fused" => AttentionPath::Fused,
        "exact" => AttentionPath::Exact,
        a => return Err(err(format!("unknown attention path {a} (fused or exact)"))),
    };
    let mut factories: Vec<Box<dyn CacheFactory>> = vec![Box::new(F16Factory)];
    let mut codecs: Vec<Option<Codec>> = vec![None];
    for name in &args.schemes {
        if name == "f16" {
            continue;
        }
        let (scheme, values) = vidkv_candle::kvcache::parse_scheme(name)
            .ok_or_else(|| err(format!("unknown scheme {name}")))?;
        match args.cache.as_str() {
            "kvcache" => {
                let base = VidkvFactory {
                    scheme,
                    values,
                    group,
                    streaming,
                };
                factories.push(Box::new(base));
                if let Some(from) = args.cross_layer
                    && let Ok(sharing) = vidkv_candle::SharingFactory::new(base, from)
                {
                    factories.push(Box::new(sharing));
                }
            }
            "adapter" if values.is_some() => {
                return Err(err("`+values` variants need --cache kvcache".into()));
            }
            "adapter" => factories.push(Box::new(QuantFactory {
                scheme,
                group,
                streaming,
                path,
            })),
            c => return Err(err(format!("unknown cache {c} (kvcache or adapter)"))),
        }
        let mut config = scheme.config(HeadDim::new(cfg.head_dim)?, group);
        if let Some(v) = values {
            config.values = v;
        }
        // A sharing variant's block bytes per token are reported for its owning layers
        // (`bytes_per_token`, measured from the caches, counts the borrowing layers' savings).
        while codecs.len() < factories.len() {
            codecs.push(Some(Codec::new(config)?));
        }
    }
    let runner = Runner { model, factories };
    let n = runner.factories.len();
    let mut reports: Vec<SchemeReport> = runner
        .factories
        .iter()
        .zip(&codecs)
        .map(|(f, c)| {
            let per_token_head = match c {
                Some(c) => (c.key_block_bytes() + c.value_block_bytes()) as f64 / c.group() as f64,
                None => (2 * 2 * cfg.head_dim) as f64,
            };
            SchemeReport {
                scheme: f.name(),
                block_bytes_per_token: per_token_head * (cfg.layers * cfg.kv_heads) as f64,
                ..Default::default()
            }
        })
        .collect();

    // Sanity: the f16 cache must make the model say " Paris".
    let sanity_prompt = "The capital of France is".to_string();
    let ids = tokenizer.encode(&sanity_prompt)?;
    let mut cache = KvCacheAttention::new(&F16Factory, cfg.layers, cfg.cache_shape())?;
    let (logits, _) = runner.model.forward(&ids, 0, &mut cache)?;
    let logits = logits.to_vec1::<f32>()?;
    let best = argmax(&logits);
    let sanity_next_token = tokenizer.decode(&[best])?;
    let sanity_probability = log_softmax(&logits)[best as usize].exp();
    if !args.json {
        eprintln!(
            "sanity: {sanity_prompt:?} → {sanity_next_token:?} (p = {sanity_probability:.3})"
        );
    }

    // Teacher-forced evaluation.
    let text = match &args.text {
        Some(p) => std::fs::read_to_string(p).map_err(|e| err(format!("{}: {e}", p.display())))?,
        None => DEFAULT_TEXT.to_string(),
    };
    let all_ids = tokenizer.encode(&text)?;
    let mut scored = 0;
    if !args.skip_eval {
        if all_ids.len() < args.tokens {
            return Err(err(format!(
                "the text has {} tokens, fewer than --tokens {}",
                all_ids.len(),
                args.tokens
            )));
        }
        if args.prefill == 0 || args.prefill + 2 > args.tokens {
            return Err(err("need 0 < --prefill < --tokens - 1".into()));
        }
        let ids = &all_ids[..args.tokens];
        let mut caches = runner.caches()?;
        for (r, c) in reports.iter_mut().zip(&caches) {
            r.attention = c.describe();
        }
        {
            let mut refs: Vec<&mut KvCacheAttention> = caches.iter_mut().collect();
            runner
                .model
                .prefill_shared(&ids[..args.prefill], &mut refs)?;
        }
        let mut nll = vec![0.0f64; n];
        let mut kl = vec![0.0f64; n];
        let mut agree = vec![0usize; n];
        let mut correct = vec![0usize; n];
        let pb = bar((args.tokens - 1 - args.prefill) as u64, false);
        pb.set_message("teacher-forced");
        for t in args.prefill..args.tokens - 1 {
            let target = ids[t + 1] as usize;
            // Every scheme's step at once (rayon), then the metrics against f16 (index 0).
            let steps: Vec<(Vec<f64>, u32)> = caches
                .par_iter_mut()
                .map(|cache| -> Result<(Vec<f64>, u32)> {
                    let (logits, _) = runner.model.forward(&ids[t..=t], t, cache)?;
                    let logits = logits.to_vec1::<f32>()?;
                    Ok((log_softmax(&logits), argmax(&logits)))
                })
                .collect::<Result<_>>()?;
            let (rlp, rtop) = &steps[0];
            for (s, (lp, top)) in steps.iter().enumerate() {
                nll[s] -= lp[target];
                correct[s] += usize::from(*top as usize == target);
                agree[s] += usize::from(top == rtop);
                if s > 0 {
                    kl[s] += rlp
                        .iter()
                        .zip(lp)
                        .map(|(r, q)| r.exp() * (r - q))
                        .sum::<f64>();
                }
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        scored = args.tokens - 1 - args.prefill;
        let m = scored as f64;
        let ppl_ref = (nll[0] / m).exp();
        for (s, r) in reports.iter_mut().enumerate() {
            let bytes = caches[s].memory_bytes() as f64;
            let toks = caches[s].tokens() as f64;
            r.bytes_per_token = bytes / toks;
            r.bits_per_element =
                8.0 * bytes / (toks * (2 * cfg.layers * cfg.kv_heads * cfg.head_dim) as f64);
            r.perplexity = (nll[s] / m).exp();
            r.delta_perplexity = r.perplexity - ppl_ref;
            r.mean_kl = kl[s] / m;
            r.top1_agreement = agree[s] as f64 / m;
            r.top1_accuracy = correct[s] as f64 / m;
        }
        // Speed: each scheme alone (no other scheme running), `--speed-tokens` greedy decode
        // steps continuing from the full cache.
        if args.speed_tokens > 0 {
            let pb = bar((n * args.speed_tokens) as u64, false);
            pb.set_message("speed");
            for (s, cache) in caches.iter_mut().enumerate() {
                let (mut time, mut attn) = (Duration::ZERO, Duration::ZERO);
                let mut last = ids[args.tokens - 1];
                for i in 0..args.speed_tokens {
                    let start = Instant::now();
                    let (logits, a) = runner.model.forward(&[last], args.tokens + i, cache)?;
                    last = argmax(&logits.to_vec1::<f32>()?);
                    time += start.elapsed();
                    attn += a;
                    pb.inc(1);
                }
                let k = args.speed_tokens as f64;
                reports[s].decode_tokens_per_s = k / time.as_secs_f64();
                reports[s].attention_us_per_token = attn.as_secs_f64() * 1e6 / k;
                reports[s].speed_context = args.tokens;
            }
            pb.finish_and_clear();
        }
    }

    // Greedy generation.
    let gen_prompt_ids = match &args.prompt {
        Some(p) => tokenizer.encode(p)?,
        None => {
            let k = args.gen_context.min(all_ids.len());
            let excerpt = tokenizer.decode(&all_ids[..k])?;
            tokenizer.encode(&format!(
                "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by \
                 Hugging Face<|im_end|>\n<|im_start|>user\n{excerpt}\n\n{GEN_QUESTION}<|im_end|>\n\
                 <|im_start|>assistant\n"
            ))?
        }
    };
    if args.gen_tokens > 0 {
        let mut caches = runner.caches()?;
        let first = {
            let mut refs: Vec<&mut KvCacheAttention> = caches.iter_mut().collect();
            argmax(
                &runner
                    .model
                    .prefill_shared(&gen_prompt_ids, &mut refs)?
                    .to_vec1::<f32>()?,
            )
        };
        let pb = bar((n * args.gen_tokens) as u64, false);
        pb.set_message("generation");
        let outs: Vec<Vec<u32>> = caches
            .par_iter_mut()
            .map(|cache| -> Result<Vec<u32>> {
                let mut out = vec![first];
                let mut pos = gen_prompt_ids.len();
                while out.len() < args.gen_tokens {
                    let last = *out.last().expect("non-empty");
                    let (logits, _) = runner.model.forward(&[last], pos, cache)?;
                    out.push(argmax(&logits.to_vec1::<f32>()?));
                    pos += 1;
                    pb.inc(1);
                }
                pb.inc(1);
                Ok(out)
            })
            .collect::<Result<_>>()?;
        for (s, out) in outs.iter().enumerate() {
            let r = &mut reports[s];
            r.gen_text = Some(tokenizer.decode(out)?);
            let same = out.iter().zip(&outs[0]).filter(|(a, b)| a == b).count();
            r.gen_identical = Some(same as f64 / out.len() as f64);
            r.gen_first_divergence = out.iter().zip(&outs[0]).position(|(a, b)| a != b);
        }
        pb.finish_and_clear();
    }

    let report = Report {
        model: args.model.display().to_string(),
        channel_order: args.channel_order.clone(),
        device: "cpu".into(),
        implementation: match args.cache.as_str() {
            "kvcache" => "vidkv_core::KvCache (packed blocks, fused attention)".into(),
            _ => format!(
                "adapter QuantCache (packed blocks), attention {}",
                args.attention
            ),
        },
        simd_level: vidkv_simd::active_level().name().into(),
        weights: args.weights.clone(),
        group: args.group,
        residual: args.residual,
        sinks: args.sinks,
        eval_tokens: if args.skip_eval { 0 } else { args.tokens },
        prefill: args.prefill,
        scored_positions: scored,
        sanity_prompt,
        sanity_next_token,
        sanity_probability,
        gen_prompt_tokens: gen_prompt_ids.len(),
        gen_tokens: args.gen_tokens,
        schemes: reports,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(|e| err(e.to_string()))?
        );
    } else {
        print_tables(&report);
    }
    Ok(())
}

fn print_tables(r: &Report) {
    println!(
        "SmolLM2-135M-Instruct (Q4_1 GGUF, candle, {}, weights {}), channel order {}, G = {}, R = {}, sinks = {}",
        r.device, r.weights, r.channel_order, r.group, r.residual, r.sinks
    );
    println!("{} (SIMD level {})", r.implementation, r.simd_level);
    println!(
        "sanity: {:?} → {:?} (p = {:.3})",
        r.sanity_prompt, r.sanity_next_token, r.sanity_probability
    );
    if r.scored_positions > 0 {
        println!(
            "\nteacher-forced: {} text tokens, {} prefilled at full precision, {} positions decoded through the cache\n",
            r.eval_tokens, r.prefill, r.scored_positions
        );
    }
    println!(
        "| scheme | attention | bits/elt | B/token | PPL | ΔPPL | mean KL | top-1 agree | gen identical | first diff | tok/s | attn µs/tok |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for s in &r.schemes {
        let generated = s
            .gen_identical
            .map_or("–".into(), |g| format!("{:.1}%", 100.0 * g));
        let div = s.gen_first_divergence.map_or("–".into(), |d| d.to_string());
        println!(
            "| {} | {} | {:.2} | {:.0} | {:.3} | {:+.3} | {:.4} | {:.1}% | {} | {} | {:.1} | {:.0} |",
            s.scheme,
            s.attention,
            s.bits_per_element,
            s.bytes_per_token,
            s.perplexity,
            s.delta_perplexity,
            s.mean_kl,
            100.0 * s.top1_agreement,
            generated,
            div,
            s.decode_tokens_per_s,
            s.attention_us_per_token
        );
    }
    if let Some(f) = r.schemes.first().and_then(|s| s.gen_text.as_ref()) {
        println!(
            "\nf16 greedy generation ({} prompt tokens):\n{}",
            r.gen_prompt_tokens,
            f.trim()
        );
    }
}
