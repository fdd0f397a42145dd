//! Whole caches in `.vkv` files ([`vidkv_core::container`]): pack the K/V tensors of a
//! safetensors file, unpack them again to fp16, and describe a file.
//!
//! A layer of the container pairs the key tensor (`k.L` or `k_post.L`) and the value tensor
//! (`v.L`) of layer L; both must have the same heads and tokens, and every layer the same
//! head_dim (the container has one configuration). Whole groups of G tokens are quantized; the
//! remaining tokens of each head are stored in f16 (bit-exact for f16 input), so unpacking
//! restores every token: decoded blocks, then the tail exactly.

use std::collections::{BTreeMap, HashMap};

use half::f16;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde::Serialize;
use vidkv_core::container::{Container, ContainerWriter, HeadSection, LayerInput};
use vidkv_core::{
    Arithmetic, ChannelMask, Codec, DType, KeyScheme, KvQuantBackend, OutlierScope, Scheme,
};
use vidkv_cpu::borrow::{Half, splice_blocks};

use crate::error::{Error, Result};
use crate::options::SchemeOptions;
use crate::quantize::quantize;
use crate::tensor::{KvKind, KvTensor, TensorFile};

fn invalid(reason: &'static str) -> Error {
    vidkv_core::Error::InvalidConfig { reason }.into()
}

/// A packed file and what went into it.
#[derive(Debug, Clone)]
pub struct Packed {
    /// The `.vkv` bytes.
    pub bytes: Vec<u8>,
    /// `(key tensor, value tensor)` of every layer, in file order.
    pub layers: Vec<(String, String)>,
}

/// The key and value tensor of each layer, by layer number.
fn layer_pairs<'a>(file: &'a TensorFile) -> Result<Vec<(KvTensor<'a>, KvTensor<'a>)>> {
    let mut by_layer: BTreeMap<u32, (Option<KvTensor<'a>>, Option<KvTensor<'a>>)> = BTreeMap::new();
    for t in file.kv_tensors()? {
        let (kind, layer) = KvKind::of_name(t.name()).expect("kv_tensors returns K/V names");
        let slot = by_layer.entry(layer).or_default();
        let place = match kind {
            KvKind::Key => &mut slot.0,
            KvKind::Value => &mut slot.1,
        };
        if place.is_some() {
            return Err(invalid("two key tensors for one layer (k.L and k_post.L)")
                .in_tensor(t.name())
                .in_file(file.label()));
        }
        *place = Some(t);
    }
    if by_layer.is_empty() {
        return Err(Error::new(crate::error::ErrorKind::NoKvTensors).in_file(file.label()));
    }
    by_layer
        .into_values()
        .map(|pair| match pair {
            (Some(k), Some(v)) => {
                if (k.heads(), k.tokens(), k.head_dim()) != (v.heads(), v.tokens(), v.head_dim()) {
                    return Err(invalid("keys and values of a layer differ in shape")
                        .in_tensor(v.name())
                        .in_file(file.label()));
                }
                Ok((k, v))
            }
            (Some(t), None) | (None, Some(t)) => Err(invalid(
                "a layer needs both a key tensor (k.L or k_post.L) and a value tensor (v.L)",
            )
            .in_tensor(t.name())
            .in_file(file.label())),
            (None, None) => unreachable!("entries are created with a tensor"),
        })
        .collect()
}

/// The f16 bytes of one head's tokens `from..`: copied for f16 input, rounded (saturating)
/// otherwise.
fn tail_f16(t: &KvTensor<'_>, head: usize, from: usize) -> Result<Vec<u8>> {
    let range = from..t.tokens();
    if t.dtype() == DType::F16 {
        return Ok(t.head_bytes(head, range).to_vec());
    }
    let rows = t.head_f32(head, range, Arithmetic::F32)?;
    Ok(rows
        .iter()
        .flat_map(|&x| f16::from_f32(x.clamp(-65504.0, 65504.0)).to_le_bytes())
        .collect())
}

/// Packs every K/V layer of `file` with `scheme` (and `options`) on `backend`.
pub fn pack<B: KvQuantBackend>(
    backend: &B,
    file: &TensorFile,
    scheme: Scheme,
    options: &SchemeOptions,
) -> Result<Packed> {
    pack_sharing(backend, file, scheme, options, None)
}

/// Whether the layer of `pairs[i]` borrows the codes of `pairs[i − 1]` under XQuant sharing
/// from layer `from`: an odd layer ≥ `from` right after its predecessor, same heads and tokens.
fn borrows_previous(pairs: &[(KvTensor<'_>, KvTensor<'_>)], i: usize, from: Option<u32>) -> bool {
    let layer = |t: &KvTensor<'_>| KvKind::of_name(t.name()).map(|(_, l)| l);
    let (Some(from), Some(prev)) = (from, i.checked_sub(1).and_then(|p| pairs.get(p))) else {
        return false;
    };
    let (k, p) = (&pairs[i].0, &prev.0);
    matches!((layer(k), layer(p)), (Some(l), Some(pl)) if l >= from && l % 2 == 1 && pl + 1 == l)
        && (k.heads(), k.tokens()) == (p.heads(), p.tokens())
}

/// [`pack`] with XQuant cross-layer code sharing from layer `cross_layer` on: every odd layer
/// ≥ it whose predecessor is in the file stores only its parameters and borrows the
/// predecessor's codes ([`vidkv_core::Codec::borrowing`]); the scheme must be able to borrow.
pub fn pack_sharing<B: KvQuantBackend>(
    backend: &B,
    file: &TensorFile,
    scheme: Scheme,
    options: &SchemeOptions,
    cross_layer: Option<u32>,
) -> Result<Packed> {
    if scheme.salient_fraction().is_some() {
        return Err(invalid(
            "the .vkv container (version 1) has no salient-token section: pack with the \
             scheme's plain preset (vidkv) instead",
        ));
    }
    let pairs = layer_pairs(file)?;
    let head_dim = pairs[0].0.head_dim();
    if let Some((k, _)) = pairs.iter().find(|(k, _)| k.head_dim() != head_dim) {
        return Err(
            invalid("every layer of a .vkv file must have the same head_dim")
                .in_tensor(k.name())
                .in_file(file.label()),
        );
    }
    let owning = options.codec(scheme, head_dim)?;
    let borrowing = match cross_layer {
        Some(_) => Some(
            owning
                .borrowing()
                .map_err(|e| Error::from(e).in_file(file.label()))?,
        ),
        None => None,
    };
    let mut writer = ContainerWriter::new(&owning);
    let mut layers = Vec::with_capacity(pairs.len());
    for (i, (k, v)) in pairs.iter().enumerate() {
        let lender = borrows_previous(&pairs, i, cross_layer).then(|| i - 1);
        let codec = match (lender, &borrowing) {
            (Some(_), Some(b)) => *b,
            _ => owning,
        };
        let kq = quantize(backend, &codec, k).map_err(|e| e.in_file(file.label()))?;
        let vq = quantize(backend, &codec, v).map_err(|e| e.in_file(file.label()))?;
        let outliers = match codec.config().keys {
            KeyScheme::Mixed(m) if m.scope == OutlierScope::Layer => Some(
                // With no whole group there are no blocks; any valid mask will do.
                kq.outliers.unwrap_or_else(|| {
                    ChannelMask::from_channels(0..m.outlier_count(codec.config().head_dim))
                }),
            ),
            _ => None,
        };
        let tails = (0..k.heads())
            .map(|h| {
                Ok((
                    tail_f16(k, h, kq.quantized_tokens)?,
                    tail_f16(v, h, vq.quantized_tokens)?,
                ))
            })
            .collect::<Result<Vec<_>>>()
            .map_err(|e| e.in_file(file.label()))?;
        let empty = Vec::new();
        let heads: Vec<HeadSection<'_>> = (0..k.heads())
            .map(|h| HeadSection {
                key_blocks: kq.encoded.get(h).unwrap_or(&empty),
                value_blocks: vq.encoded.get(h).unwrap_or(&empty),
                tail_keys: &tails[h].0,
                tail_values: &tails[h].1,
            })
            .collect();
        let input = LayerInput {
            key_name: k.name(),
            value_name: v.name(),
            blocks: kq.blocks_per_head,
            tail_tokens: kq.remainder_tokens,
            outliers: outliers.as_ref(),
            heads: &heads,
        };
        match lender {
            Some(j) => writer.add_borrowing_layer(&input, j),
            None => writer.add_layer(&input),
        }
        .map_err(|e| Error::from(e).in_tensor(k.name()).in_file(file.label()))?;
        layers.push((k.name().to_owned(), v.name().to_owned()));
    }
    Ok(Packed {
        bytes: writer.finish(),
        layers,
    })
}

/// Decodes `blocks` blocks of one head with `backend` into f32 rows.
fn decode_head<B: KvQuantBackend>(
    backend: &B,
    codec: &Codec,
    keys: bool,
    bytes: &[u8],
    blocks: usize,
) -> vidkv_core::Result<Vec<f32>> {
    if blocks == 0 {
        return Ok(Vec::new());
    }
    let input = backend.upload(bytes)?;
    let mut out = backend.alloc(blocks * codec.block_elements() * 4)?;
    if keys {
        backend.decode_keys(codec, &input, blocks, &mut out)?;
    } else {
        backend.decode_values(codec, &input, blocks, &mut out)?;
    }
    Ok(backend
        .download(&out)?
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// Unpacks a `.vkv` file into safetensors bytes: every key and value tensor under its original
/// name, fp16 `[heads, tokens, head_dim]`, decoded blocks followed by the exact tail. `label`
/// names the file in errors.
pub fn unpack<B: KvQuantBackend>(backend: &B, bytes: &[u8], label: &str) -> Result<Vec<u8>> {
    let file = Container::parse(bytes).map_err(|e| Error::from(e).in_file(label))?;
    let codec = *file.codec();
    let d = codec.head_dim();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for layer in file.layers() {
        let tokens = layer.tokens(&codec);
        // A layer that borrows its codes decodes its blocks spliced with its lender's.
        let lender = layer.lender.and_then(|j| file.layers().get(j));
        for (keys, name) in [(true, layer.key_name), (false, layer.value_name)] {
            let mut data = Vec::with_capacity(layer.heads.len() * tokens * d * 2);
            for (h, head) in layer.heads.iter().enumerate() {
                let (blocks, tail) = if keys {
                    (head.key_blocks, head.tail_keys)
                } else {
                    (head.value_blocks, head.tail_values)
                };
                let located = |e: vidkv_core::Error| Error::from(e).in_tensor(name).in_file(label);
                let spliced = match lender.and_then(|l| l.heads.get(h)) {
                    Some(l) => {
                        let (half, lent) = if keys {
                            (Half::Keys, l.key_blocks)
                        } else {
                            (Half::Values, l.value_blocks)
                        };
                        let borrowing = codec.borrowing().map_err(located)?;
                        Some(
                            splice_blocks(&borrowing, &codec, half, blocks, lent)
                                .map_err(located)?,
                        )
                    }
                    None => None,
                };
                let blocks = spliced.as_deref().unwrap_or(blocks);
                let rows =
                    decode_head(backend, &codec, keys, blocks, layer.blocks).map_err(located)?;
                data.extend(
                    rows.iter()
                        .flat_map(|&x| f16::from_f32(x.clamp(-65504.0, 65504.0)).to_le_bytes()),
                );
                data.extend_from_slice(tail);
            }
            tensors.push((name.to_owned(), vec![layer.heads.len(), tokens, d], data));
        }
    }
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = TensorView::new(Dtype::F16, shape.clone(), data)
                .map_err(|e| Error::from(e).in_tensor(name))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut meta = HashMap::new();
    meta.insert(
        "vidkv.unpack".to_owned(),
        format!(
            "dequantized by vidkv {} from a .vkv file: {}",
            env!("CARGO_PKG_VERSION"),
            describe(codec.config())
        ),
    );
    Ok(safetensors::serialize(views, &Some(meta))?)
}

/// One layer of [`Inspection`].
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// Key tensor name.
    pub key_name: String,
    /// Value tensor name.
    pub value_name: String,
    /// KV heads.
    pub heads: usize,
    /// Tokens per head.
    pub tokens: usize,
    /// Quantized blocks per head.
    pub blocks: usize,
    /// f16 tail tokens per head.
    pub tail_tokens: usize,
    /// Layer-scope outlier channels, if any.
    pub outlier_channels: Option<Vec<usize>>,
    /// The layer whose codes this layer borrows (XQuant cross-layer sharing), if any.
    pub lender: Option<usize>,
}

/// What `vidkv inspect` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// Container layout version.
    pub container_version: u16,
    /// Block format version.
    pub format_version: u16,
    /// The presets this configuration equals (`"vidkv or vidkv-stp"`: the container does not
    /// record salient tokens), or `"custom"`.
    pub scheme: String,
    /// Every configuration field, as text.
    pub config: String,
    /// Head dimension.
    pub head_dim: usize,
    /// Tokens per block.
    pub group: usize,
    /// Layers.
    pub layers: Vec<LayerInfo>,
    /// File bytes.
    pub file_bytes: usize,
    /// Bytes of key blocks.
    pub key_block_bytes: usize,
    /// Bytes of value blocks.
    pub value_block_bytes: usize,
    /// Bytes of f16 tail tokens (keys and values).
    pub tail_bytes: usize,
    /// Headers, names, masks, padding and checksums.
    pub overhead_bytes: usize,
    /// Key elements (= value elements) stored: Σ heads · tokens · head_dim.
    pub elements_per_tensor: usize,
    /// All-in bits per element from the file size: `8 · file_bytes / (2 · elements_per_tensor)`.
    pub bits_per_element: f64,
    /// Bits per quantized key element in the blocks alone.
    pub key_block_bits_per_element: f64,
    /// Bits per quantized value element in the blocks alone.
    pub value_block_bits_per_element: f64,
}

/// The presets a configuration equals (`"vidkv or vidkv-stp"`), or `"custom"`.
fn preset_of(codec: &Codec) -> String {
    let c = codec.config();
    let names: Vec<&str> = Scheme::ALL
        .into_iter()
        .filter(|s| s.config(c.head_dim, c.group) == *c)
        .map(Scheme::name)
        .collect();
    if names.is_empty() {
        "custom".to_owned()
    } else {
        names.join(" or ")
    }
}

/// Every field of a configuration, as one line.
pub fn describe(c: &vidkv_core::QuantConfig) -> String {
    let keys = match c.keys {
        KeyScheme::Mixed(m) => format!(
            "mixed(outlier_ratio={}, scope={:?}, transform={:?}, lane_rule={:?})",
            m.outlier_ratio, m.scope, m.transform, m.lane_rule
        ),
        KeyScheme::PerChannel { bits } => format!("per-channel({} bits)", bits.get()),
        KeyScheme::SignSketch { bits, seed } => {
            format!("sign-sketch({} bits, seed {seed:#x})", bits.get())
        }
    };
    let values = match c.values {
        vidkv_core::ValueScheme::Ternary { scale } => format!("ternary(scale={scale:?})"),
        vidkv_core::ValueScheme::PerToken { bits } => format!("per-token({} bits)", bits.get()),
        vidkv_core::ValueScheme::PerChannel { bits } => {
            format!("per-channel({} bits)", bits.get())
        }
    };
    let traced = match c.traced_tokens {
        0 => String::new(),
        n => format!(" traced_tokens={n}"),
    };
    format!(
        "head_dim={} group={} keys={keys} values={values} arithmetic={:?}{traced}",
        c.head_dim.get(),
        c.group.tokens(),
        c.arithmetic
    )
}

/// Reads and checks a `.vkv` file and describes it. `label` names the file in errors.
pub fn inspect(bytes: &[u8], label: &str) -> Result<Inspection> {
    let file = Container::parse(bytes).map_err(|e| Error::from(e).in_file(label))?;
    let codec = *file.codec();
    let sizes = file.size_breakdown();
    let quantized: usize = file
        .layers()
        .iter()
        .map(|l| l.heads.len() * l.blocks * codec.block_elements())
        .sum();
    let per = |bytes: usize| {
        if quantized == 0 {
            0.0
        } else {
            8.0 * bytes as f64 / quantized as f64
        }
    };
    Ok(Inspection {
        container_version: vidkv_core::container::CONTAINER_VERSION,
        format_version: vidkv_core::FORMAT_VERSION,
        scheme: preset_of(&codec),
        config: describe(codec.config()),
        head_dim: codec.head_dim(),
        group: codec.group(),
        layers: file
            .layers()
            .iter()
            .map(|l| LayerInfo {
                key_name: l.key_name.to_owned(),
                value_name: l.value_name.to_owned(),
                heads: l.heads.len(),
                tokens: l.tokens(&codec),
                blocks: l.blocks,
                tail_tokens: l.tail_tokens,
                outlier_channels: l.outliers.map(|m| m.outliers(codec.head_dim()).collect()),
                lender: l.lender,
            })
            .collect(),
        file_bytes: file.file_len(),
        key_block_bytes: sizes.key_blocks,
        value_block_bytes: sizes.value_blocks,
        tail_bytes: sizes.tail,
        overhead_bytes: sizes.overhead,
        elements_per_tensor: sizes.elements_per_tensor,
        bits_per_element: sizes.bits_per_element(),
        key_block_bits_per_element: per(sizes.key_blocks),
        value_block_bits_per_element: per(sizes.value_blocks),
    })
}
