//! Command-line arguments. Names that users type often (schemes, group sizes) are validated by
//! the library so that a mistake gets the same one-line message as any other bad input.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use vidkv::{
    Arithmetic, Bits, GroupSize, Result, Scheme, SchemeOptions, SketchBits, TernaryScale, Transform,
};

/// 1.5–1.6-bit KV-cache quantization (VidKV) with KIVI and per-channel baselines.
#[derive(Debug, Parser)]
#[command(name = "vidkv", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bits per element, relative error and throughput of every K/V tensor under each scheme.
    Eval(EvalArgs),
    /// Write a copy of a file with every K/V tensor quantized, then dequantized to fp16.
    Roundtrip(RoundtripArgs),
    /// Quantize every K/V layer of a safetensors file into a `.vkv` container.
    Pack(crate::vkv_cmd::PackArgs),
    /// Dequantize a `.vkv` container into an fp16 safetensors file (tail tokens exact).
    Unpack(crate::vkv_cmd::UnpackArgs),
    /// Configuration, sizes and bits per element of a `.vkv` container.
    Inspect(crate::vkv_cmd::InspectArgs),
    /// Decode-step attention over f32, f16 and packed caches; encode throughput.
    Bench(crate::bench_cmd::BenchArgs),
}

/// `vidkv eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// safetensors files with `k.L`/`k_post.L`/`v.L` tensors `[heads, tokens, head_dim]`;
    /// none: the two samples compiled into the binary (SmolLM2 and DINOv2).
    pub files: Vec<PathBuf>,
    /// Preset to evaluate (repeatable): vidkv, vidkv-paper, kivi2, kivi4, pc2, vidkv-stp, ott2,
    /// h1b, xquant. Default: all.
    #[arg(long = "scheme", value_name = "NAME")]
    pub schemes: Vec<String>,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Runs of each encode/decode call; throughput is the fastest.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub repeat: usize,
    /// Residual window R of the streaming cache in the attention metrics (files with queries).
    #[arg(long, default_value_t = vidkv::cache::DEFAULT_RESIDUAL, value_name = "R")]
    pub residual: usize,
    /// Attention sinks S (first tokens kept in f16) in the attention metrics.
    #[arg(long, default_value_t = vidkv::cache::DEFAULT_SINKS, value_name = "S")]
    pub sinks: usize,
    /// Skip the attention metrics.
    #[arg(long)]
    pub no_attention: bool,
    /// XQuant cross-layer code sharing from layer FROM on: every odd layer ≥ FROM whose
    /// predecessor is in the file borrows its codes; reports each layer with and without
    /// sharing (bits codes-only and all-in, tensor and attention errors) instead of the
    /// per-tensor table. Default scheme: xquant.
    #[arg(long, value_name = "FROM")]
    pub cross_layer: Option<u32>,
    /// Backend that encodes, decodes and attends: `scalar` (the normative code) or `simd` (the
    /// fastest SIMD level of this CPU; needs the `simd` feature). The errors are the same up to
    /// the SIMD kernels' documented tolerances; the throughput columns differ.
    #[arg(long, value_enum, default_value_t = EvalBackend::Scalar)]
    pub backend: EvalBackend,
    /// Overrides on top of each preset.
    #[command(flatten)]
    pub quant: QuantArgs,
}

/// The backends `vidkv eval` can run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EvalBackend {
    /// `vidkv::ScalarBackend`.
    Scalar,
    /// `vidkv_simd::SimdBackend` at the best level of this CPU (feature `simd`).
    Simd,
}

/// `vidkv roundtrip`.
#[derive(Debug, Args)]
pub struct RoundtripArgs {
    /// Input safetensors file.
    pub input: PathBuf,
    /// Output safetensors file (overwritten).
    pub output: PathBuf,
    /// Preset: vidkv, vidkv-paper, kivi2, kivi4, pc2, h1b.
    #[arg(long, value_name = "NAME")]
    pub scheme: String,
    /// Overrides on top of the preset.
    #[command(flatten)]
    pub quant: QuantArgs,
}

/// Overrides shared by both subcommands.
#[derive(Debug, Args)]
pub struct QuantArgs {
    /// Tokens per block G: 32, 64 or 128.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub group: usize,
    /// Share r of key channels kept as 2-bit outliers (mixed-precision keys only).
    #[arg(long, value_name = "R")]
    pub key_ratio: Option<f32>,
    /// Transform of the 1-bit key channels (mixed-precision keys only; a non-FFT transform
    /// decodes vidkv-paper's lanes symmetrically).
    #[arg(long, value_enum)]
    pub transform: Option<TransformArg>,
    /// Scale of ternary values (ternary values only).
    #[arg(long, value_enum)]
    pub value_scale: Option<ValueScaleArg>,
    /// Encoder arithmetic (all schemes).
    #[arg(long, value_enum)]
    pub arithmetic: Option<ArithmeticArg>,
    /// Traced outlier tokens per key block, kept in f16 and left out of the block's key
    /// statistics (all schemes; at most G/4; 0 turns tracing off, e.g. for ott2).
    #[arg(long, value_name = "N")]
    pub trace_tokens: Option<u8>,
    /// XQuant endpoint calibration η of key min/max groups (per-channel keys and the 2-bit
    /// outlier channels of mixed keys), 0 ≤ η < 0.5; XQuant uses 0, 1/6, 2/6 for 1-bit and
    /// 0, 0.045, 0.09 for 2-bit groups.
    #[arg(long, value_name = "ETA")]
    pub eta_keys: Option<f32>,
    /// Code width of min/max keys: 1, 2 or 4 (per-channel keys only).
    #[arg(long, value_name = "B")]
    pub key_bits: Option<u32>,
    /// Code width of min/max values: 1, 2 or 4 (per-token and per-channel values only).
    #[arg(long, value_name = "B")]
    pub value_bits: Option<u32>,
    /// XQuant calibration η of value min/max groups (per-token and per-channel values).
    #[arg(long, value_name = "ETA")]
    pub eta_values: Option<f32>,
    #[command(flatten)]
    pub sketch: SketchArgs,
}

/// Options of sign-sketch keys (h1b), shared by eval, roundtrip, pack and bench.
#[derive(Debug, Clone, Copy, Args)]
pub struct SketchArgs {
    /// Sketch length b of sign-sketch keys: 64, 128 or 256 (h1b only; default: the smallest
    /// that is ≥ head_dim).
    #[arg(long, value_name = "B")]
    pub sketch_bits: Option<usize>,
    /// Seed of the sign-sketch projection (h1b only; default 0x4831424B).
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u32>,
}

impl SketchArgs {
    /// Applies these options to `options`; rejects an unsupported sketch length.
    pub fn apply(&self, options: SchemeOptions) -> Result<SchemeOptions> {
        Ok(SchemeOptions {
            sketch_bits: self.sketch_bits.map(SketchBits::new).transpose()?,
            seed: self.seed,
            ..options
        })
    }
}

/// `--transform`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TransformArg {
    /// One-sided real DFT (the paper).
    Fft,
    /// Orthonormal Walsh–Hadamard.
    Hadamard,
    /// None.
    Identity,
}

/// `--value-scale`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ValueScaleArg {
    /// γ = mean |x| (the paper's text).
    Meanabs,
    /// Mean |x| over non-zero codes.
    LeastSquares,
    /// 1 (what the reference code applies).
    Unit,
}

/// `--arithmetic`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ArithmeticArg {
    /// f32 statistics.
    F32,
    /// The reference code's f16 arithmetic.
    Reference,
}

impl QuantArgs {
    /// The library's options; rejects an unsupported group size.
    pub fn options(&self) -> Result<SchemeOptions> {
        self.sketch.apply(SchemeOptions {
            group: GroupSize::new(self.group)?,
            key_ratio: self.key_ratio,
            transform: self.transform.map(|t| match t {
                TransformArg::Fft => Transform::Fft,
                TransformArg::Hadamard => Transform::Hadamard,
                TransformArg::Identity => Transform::Identity,
            }),
            value_scale: self.value_scale.map(|s| match s {
                ValueScaleArg::Meanabs => TernaryScale::MeanAbs,
                ValueScaleArg::LeastSquares => TernaryScale::LeastSquares,
                ValueScaleArg::Unit => TernaryScale::Unit,
            }),
            arithmetic: self.arithmetic.map(|a| match a {
                ArithmeticArg::F32 => Arithmetic::F32,
                ArithmeticArg::Reference => Arithmetic::Reference,
            }),
            traced_tokens: self.trace_tokens,
            key_bits: self.key_bits.map(Bits::new).transpose()?,
            value_bits: self.value_bits.map(Bits::new).transpose()?,
            eta_keys: self.eta_keys,
            eta_values: self.eta_values,
            ..SchemeOptions::default()
        })
    }
}

/// The schemes named on the command line, or all presets when none is.
pub fn schemes(names: &[String]) -> Result<Vec<Scheme>> {
    if names.is_empty() {
        return Ok(Scheme::ALL.to_vec());
    }
    names.iter().map(|n| vidkv::parse_scheme(n)).collect()
}
