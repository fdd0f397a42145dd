//! `vidkv pack`, `vidkv unpack` and `vidkv inspect`: whole caches in `.vkv` files.

use std::io::{self, Write};
use std::path::PathBuf;

use clap::Args;
use vidkv::{Error, ErrorKind, KvQuantBackend, Result, TensorFile};

use crate::args::QuantArgs;

/// `vidkv pack`.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// Input safetensors file with `k.L`/`k_post.L` and `v.L` tensors `[heads, tokens, head_dim]`.
    pub input: PathBuf,
    /// Output `.vkv` file (overwritten).
    pub output: PathBuf,
    /// Preset: vidkv, vidkv-paper, kivi2, kivi4, pc2, vidkv-stp, ott2, h1b, xquant.
    #[arg(long, value_name = "NAME")]
    pub scheme: String,
    /// XQuant cross-layer code sharing from layer FROM on: every odd layer ≥ FROM right after
    /// its predecessor stores only its parameters and borrows the predecessor's codes
    /// (min/max schemes only: xquant, kivi2, kivi4, pc2).
    #[arg(long, value_name = "FROM")]
    pub cross_layer: Option<u32>,
    /// Overrides on top of the preset.
    #[command(flatten)]
    pub quant: QuantArgs,
}

/// `vidkv unpack`.
#[derive(Debug, Args)]
pub struct UnpackArgs {
    /// Input `.vkv` file.
    pub input: PathBuf,
    /// Output safetensors file (overwritten): fp16 K/V tensors under their original names.
    pub output: PathBuf,
}

/// `vidkv inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The `.vkv` file.
    pub input: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn io_error(e: io::Error, file: &str) -> Error {
    Error::new(ErrorKind::Io(e)).in_file(file)
}

fn read(path: &PathBuf) -> Result<(Vec<u8>, String)> {
    let label = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| io_error(e, &label))?;
    Ok((bytes, label))
}

/// Packs a safetensors file into a `.vkv` file.
pub fn pack<B: KvQuantBackend>(backend: &B, a: &PackArgs) -> Result<()> {
    let scheme = vidkv::parse_scheme(&a.scheme)?;
    let options = a.quant.options()?;
    let input = TensorFile::read(&a.input)?;
    let packed = vidkv::vkv::pack_sharing(backend, &input, scheme, &options, a.cross_layer)?;
    let label = a.output.display().to_string();
    std::fs::write(&a.output, &packed.bytes).map_err(|e| io_error(e, &label))?;
    let info = vidkv::vkv::inspect(&packed.bytes, &label)?;
    writeln!(
        io::stdout().lock(),
        "{label}: {} layers packed with {} ({} bytes, {:.4} bits/element)",
        packed.layers.len(),
        scheme.name(),
        packed.bytes.len(),
        info.bits_per_element
    )
    .map_err(|e| io_error(e, "stdout"))
}

/// Unpacks a `.vkv` file into an fp16 safetensors file.
pub fn unpack<B: KvQuantBackend>(backend: &B, a: &UnpackArgs) -> Result<()> {
    let (bytes, label) = read(&a.input)?;
    let out = vidkv::vkv::unpack(backend, &bytes, &label)?;
    let out_label = a.output.display().to_string();
    std::fs::write(&a.output, &out).map_err(|e| io_error(e, &out_label))?;
    writeln!(io::stdout().lock(), "{out_label}: unpacked from {label}")
        .map_err(|e| io_error(e, "stdout"))
}

/// Describes a `.vkv` file.
pub fn inspect(a: &InspectArgs) -> Result<()> {
    let (bytes, label) = read(&a.input)?;
    let info = vidkv::vkv::inspect(&bytes, &label)?;
    let mut out = io::stdout().lock();
    let text = if a.json {
        serde_json::to_string(&info).expect("plain data serializes") + "\n"
    } else {
        let mut s = format!(
            "{label}\n  container version {}, block format {}\n  scheme {}: {}\n",
            info.container_version, info.format_version, info.scheme, info.config
        );
        for l in &info.layers {
            s += &format!(
                "  layer {} / {}: {} heads × {} tokens ({} blocks of {} + {} f16 tail)",
                l.key_name, l.value_name, l.heads, l.tokens, l.blocks, info.group, l.tail_tokens
            );
            if let Some(ch) = &l.outlier_channels {
                s += &format!(", layer outlier channels {ch:?}");
            }
            if let Some(j) = l.lender {
                s += &format!(", borrows the codes of layer #{j}");
            }
            s += "\n";
        }
        s += &format!(
            "  bytes: {} total = {} key blocks + {} value blocks + {} f16 tail + {} headers/checksums/padding\n\
             \x20 elements: {} keys + {} values\n\
             \x20 bits per element: {:.4} all-in (file size); blocks alone: keys {:.4}, values {:.4}\n",
            info.file_bytes,
            info.key_block_bytes,
            info.value_block_bytes,
            info.tail_bytes,
            info.overhead_bytes,
            info.elements_per_tensor,
            info.elements_per_tensor,
            info.bits_per_element,
            info.key_block_bits_per_element,
            info.value_block_bits_per_element
        );
        s
    };
    out.write_all(text.as_bytes())
        .map_err(|e| io_error(e, "stdout"))
}
