//! The `.vkv` container: a whole quantized K/V cache in one file (`docs/FORMAT.md`, section
//! "Container").
//!
//! ```text
//! file    = header(64) · layer*
//! layer   = layer header(32) · key name · value name · zero pad to 8 · [mask(32)] · xxh3(8)
//!           · head section*
//! head    = key blocks · value blocks · tail keys (f16) · tail values (f16) · zero pad to 8 · xxh3(8)
//! ```
//!
//! Everything is little-endian. The header carries the full [`QuantConfig`], so the block sizes,
//! and from them every section's size, follow from a layer header's `heads`, `blocks` and
//! `tail_tokens`; the reader recomputes them and rejects any disagreement. Every region is covered
//! by an xxHash3-64 checksum. [`Container::parse`] checks the whole file once and then hands out
//! slices borrowed from the file bytes (no copies); the f16 tails are reinterpreted in place
//! where the bytes are 2-aligned on a little-endian host ([`HeadSection::tail_keys_f16`]).
//!
//! Reading never panics and never reads out of bounds: every size from the file is combined with
//! checked arithmetic and compared against the bytes actually present before anything is sliced
//! or allocated.

use alloc::borrow::Cow;
use alloc::vec::Vec;

use half::f16;

use crate::config::{
    Arithmetic, Bits, Calibration, GroupSize, HeadDim, KeyScheme, LaneRule, MixedKeys,
    OutlierScope, QuantConfig, SketchBits, TernaryScale, Transform, ValueScheme,
};
use crate::error::{Error, Result};
use crate::layout::{ChannelMask, Codec};

/// First eight bytes of every `.vkv` file (`\x89VKV\r\n\x1a\n`: a non-ASCII first byte, then
/// line endings and a DOS EOF that text-mode transfers would mangle).
pub const MAGIC: [u8; 8] = *b"\x89VKV\r\n\x1a\n";

/// Version of the container layout (header, layer and head sections). Independent of the block
/// format version ([`crate::FORMAT_VERSION`]), which the header also records.
pub const CONTAINER_VERSION: u16 = 1;

/// Bytes of the file header.
pub const HEADER_BYTES: usize = 64;

/// Bytes of the fixed part of a layer header.
pub const LAYER_HEADER_BYTES: usize = 32;

/// Bytes of a checksum (xxHash3, 64 bits, seed 0).
pub const CHECKSUM_BYTES: usize = 8;

/// Bytes of a stored layer-scope outlier mask (all eight `u32` words of a [`ChannelMask`]).
pub const MASK_BYTES: usize = 32;

/// Offset of the header checksum (it covers bytes `0..HEADER_CHECKSUM_AT`).
const HEADER_CHECKSUM_AT: usize = HEADER_BYTES - CHECKSUM_BYTES;

/// The checksum every section uses: xxHash3-64 with seed 0.
pub fn checksum(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(bytes)
}

fn pad8(n: usize) -> usize {
    n.next_multiple_of(8)
}

fn bad(what: &'static str, offset: usize) -> Error {
    Error::Container { what, offset }
}

/// One KV head of one layer: its encoded blocks and its unquantized tail, all borrowed from the
/// file bytes. Also the writer's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeadSection<'a> {
    /// `blocks · key_block_bytes` bytes of key blocks, oldest first.
    pub key_blocks: &'a [u8],
    /// `blocks · value_block_bytes` bytes of value blocks.
    pub value_blocks: &'a [u8],
    /// The keys of the `tail_tokens` newest tokens, row-major `[tail, D]`, little-endian f16.
    pub tail_keys: &'a [u8],
    /// The values of the tail tokens, little-endian f16.
    pub tail_values: &'a [u8],
}

/// Views little-endian f16 bytes as `f16`s: borrowed when aligned on a little-endian host,
/// converted otherwise.
pub fn f16s_of(bytes: &[u8]) -> Cow<'_, [f16]> {
    #[cfg(target_endian = "little")]
    if let Ok(v) = bytemuck::try_cast_slice::<u8, f16>(bytes) {
        return Cow::Borrowed(v);
    }
    Cow::Owned(
        bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]))
            .collect(),
    )
}

impl<'a> HeadSection<'a> {
    /// The tail keys as f16 (borrowed from the file where alignment allows).
    pub fn tail_keys_f16(&self) -> Cow<'a, [f16]> {
        f16s_of(self.tail_keys)
    }

    /// The tail values as f16.
    pub fn tail_values_f16(&self) -> Cow<'a, [f16]> {
        f16s_of(self.tail_values)
    }
}

/// Byte sizes of one head section, derived from the configuration and the layer's counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeadGeometry {
    key_blocks: usize,
    value_blocks: usize,
    tail: usize,
    /// Unpadded payload (keys + values + 2 tails).
    payload: usize,
    /// Whole section: payload padded to 8, plus the checksum.
    total: usize,
}

impl HeadGeometry {
    fn new(codec: &Codec, blocks: usize, tail_tokens: usize) -> Option<Self> {
        let key_blocks = blocks.checked_mul(codec.key_block_bytes())?;
        let value_blocks = blocks.checked_mul(codec.value_block_bytes())?;
        let tail = tail_tokens.checked_mul(codec.head_dim())?.checked_mul(2)?;
        let payload = key_blocks
            .checked_add(value_blocks)?
            .checked_add(tail)?
            .checked_add(tail)?;
        let total = payload
            .checked_next_multiple_of(8)?
            .checked_add(CHECKSUM_BYTES)?;
        Some(Self {
            key_blocks,
            value_blocks,
            tail,
            payload,
            total,
        })
    }
}

/// One layer: names, counts, the layer-scope outlier mask and one section per KV head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSection<'a> {
    /// Name of the key tensor this layer came from (e.g. `k_post.15`).
    pub key_name: &'a str,
    /// Name of the value tensor (e.g. `v.15`).
    pub value_name: &'a str,
    /// Quantized blocks per head.
    pub blocks: usize,
    /// Unquantized tokens per head, stored in f16 after the blocks.
    pub tail_tokens: usize,
    /// The pooled outlier channels for layer-scope mixed keys (`None` for any other key scheme).
    pub outliers: Option<ChannelMask>,
    /// XQuant cross-layer sharing: the index of the earlier layer whose codes this layer's
    /// blocks borrow (they hold only their parameter sections, [`Codec::borrowing`]); `None`
    /// when the layer owns its codes.
    pub lender: Option<usize>,
    /// One section per KV head.
    pub heads: Vec<HeadSection<'a>>,
}

impl LayerSection<'_> {
    /// Tokens per head: `blocks · G + tail_tokens`.
    pub fn tokens(&self, codec: &Codec) -> usize {
        self.blocks * codec.group() + self.tail_tokens
    }
}

/// Size accounting of a container, adding up to the file length exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SizeBreakdown {
    /// Bytes of key blocks.
    pub key_blocks: usize,
    /// Bytes of value blocks.
    pub value_blocks: usize,
    /// Bytes of f16 tail keys and values.
    pub tail: usize,
    /// Everything else: headers, names, masks, padding, checksums.
    pub overhead: usize,
    /// Key (or value) elements stored: Σ heads · tokens · D. The file holds twice as many
    /// elements, keys and values.
    pub elements_per_tensor: usize,
}

impl SizeBreakdown {
    /// Total bytes (= the file length).
    pub fn total(&self) -> usize {
        self.key_blocks + self.value_blocks + self.tail + self.overhead
    }

    /// All-in bits per stored element (keys and values), from the file length.
    pub fn bits_per_element(&self) -> f64 {
        if self.elements_per_tensor == 0 {
            return 0.0;
        }
        (self.total() * 8) as f64 / (2 * self.elements_per_tensor) as f64
    }
}

/// A parsed and fully checked `.vkv` file, borrowing from its bytes.
#[derive(Debug, Clone)]
pub struct Container<'a> {
    codec: Codec,
    layers: Vec<LayerSection<'a>>,
    file_len: usize,
}

/// Little-endian field readers over a bounds-checked slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&self, offset: usize, len: usize, what: &'static str) -> Result<&'a [u8]> {
        offset
            .checked_add(len)
            .and_then(|end| self.bytes.get(offset..end))
            .ok_or(bad(what, offset))
    }
    fn u16(&self, offset: usize) -> Result<u16> {
        let b = self.take(offset, 2, "truncated field")?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&self, offset: usize) -> Result<u32> {
        let b = self.take(offset, 4, "truncated field")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&self, offset: usize) -> Result<u64> {
        let b = self.take(offset, 8, "truncated field")?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn check(&self, start: usize, end: usize, what: &'static str) -> Result<()> {
        let stored = self.u64(end).map_err(|_| bad(what, end))?;
        let region = self.take(start, end - start, what)?;
        // Fuzzing builds (`--cfg fuzzing`, set by cargo-fuzz) accept any checksum so that the
        // fuzzer reaches the structure behind it.
        if checksum(region) == stored || cfg!(fuzzing) {
            Ok(())
        } else {
            Err(bad(what, end))
        }
    }
    fn zeros(&self, offset: usize, len: usize, what: &'static str) -> Result<()> {
        let b = self.take(offset, len, what)?;
        match b.iter().position(|&x| x != 0) {
            None => Ok(()),
            Some(i) => Err(bad(what, offset + i)),
        }
    }
}

// ---- configuration <-> bytes 12..28 of the header ----

const KEY_MIXED: u8 = 0;
const KEY_PER_CHANNEL: u8 = 1;
const KEY_SIGN_SKETCH: u8 = 2;
const VALUE_TERNARY: u8 = 0;
const VALUE_PER_TOKEN: u8 = 1;
const VALUE_PER_CHANNEL: u8 = 2;

fn write_config(c: &QuantConfig, out: &mut [u8]) {
    out[12..14].copy_from_slice(&(c.head_dim.get() as u16).to_le_bytes());
    out[14..16].copy_from_slice(&(c.group.tokens() as u16).to_le_bytes());
    out[16] = match c.arithmetic {
        Arithmetic::F32 => 0,
        Arithmetic::Reference => 1,
    };
    match c.keys {
        KeyScheme::Mixed(m) => {
            out[17] = KEY_MIXED;
            out[18] = 0;
            out[19] = match m.scope {
                OutlierScope::Layer => 0,
                OutlierScope::Block => 1,
            };
            out[20] = match m.transform {
                Transform::Fft => 0,
                Transform::Hadamard => 1,
                Transform::Identity => 2,
            };
            out[21] = match m.lane_rule {
                LaneRule::Symmetric => 0,
                LaneRule::PaperCompat => 1,
            };
            out[24..28].copy_from_slice(&m.outlier_ratio.to_bits().to_le_bytes());
        }
        KeyScheme::PerChannel { bits } => {
            out[17] = KEY_PER_CHANNEL;
            out[18] = bits.get() as u8;
        }
        KeyScheme::SignSketch { bits, seed } => {
            out[17] = KEY_SIGN_SKETCH;
            out[18] = (bits.get() / 8) as u8;
            out[24..28].copy_from_slice(&seed.to_le_bytes());
        }
    }
    let (kind, option) = match c.values {
        ValueScheme::Ternary { scale } => (
            VALUE_TERNARY,
            match scale {
                TernaryScale::MeanAbs => 0,
                TernaryScale::LeastSquares => 1,
                TernaryScale::Unit => 2,
            },
        ),
        ValueScheme::PerToken { bits } => (VALUE_PER_TOKEN, bits.get() as u8),
        ValueScheme::PerChannel { bits } => (VALUE_PER_CHANNEL, bits.get() as u8),
    };
    out[22] = kind;
    out[23] = option;
    out[40..44].copy_from_slice(&c.calibration.keys.to_bits().to_le_bytes());
    out[44..48].copy_from_slice(&c.calibration.values.to_bits().to_le_bytes());
    out[48] = c.traced_tokens;
}

fn read_config(r: &Reader<'_>) -> Result<QuantConfig> {
    let h = r.take(0, HEADER_BYTES, "truncated header")?;
    let head_dim =
        HeadDim::new(usize::from(r.u16(12)?)).map_err(|_| bad("unsupported head_dim", 12))?;
    let group =
        GroupSize::new(usize::from(r.u16(14)?)).map_err(|_| bad("unsupported group size", 14))?;
    let arithmetic = match h[16] {
        0 => Arithmetic::F32,
        1 => Arithmetic::Reference,
        _ => return Err(bad("unknown arithmetic", 16)),
    };
    let bits = |at: usize, what| Bits::new(u32::from(h[at])).map_err(|_| bad(what, at));
    let keys = match h[17] {
        KEY_MIXED => {
            if h[18] != 0 {
                return Err(bad("key bits set for mixed keys", 18));
            }
            let scope = match h[19] {
                0 => OutlierScope::Layer,
                1 => OutlierScope::Block,
                _ => return Err(bad("unknown outlier scope", 19)),
            };
            let transform = match h[20] {
                0 => Transform::Fft,
                1 => Transform::Hadamard,
                2 => Transform::Identity,
                _ => return Err(bad("unknown transform", 20)),
            };
            let lane_rule = match h[21] {
                0 => LaneRule::Symmetric,
                1 => LaneRule::PaperCompat,
                _ => return Err(bad("unknown lane rule", 21)),
            };
            KeyScheme::Mixed(MixedKeys {
                outlier_ratio: f32::from_bits(r.u32(24)?),
                scope,
                transform,
                lane_rule,
            })
        }
        KEY_PER_CHANNEL => {
            if h[19..22] != [0, 0, 0] || r.u32(24)? != 0 {
                return Err(bad("mixed-key options set for per-channel keys", 19));
            }
            KeyScheme::PerChannel {
                bits: bits(18, "per-channel key bits not 1, 2 or 4")?,
            }
        }
        KEY_SIGN_SKETCH => {
            if h[19..22] != [0, 0, 0] {
                return Err(bad("mixed-key options set for sign-sketch keys", 19));
            }
            KeyScheme::SignSketch {
                bits: SketchBits::new(usize::from(h[18]) * 8)
                    .map_err(|_| bad("sketch bytes not 8, 16 or 32", 18))?,
                seed: r.u32(24)?,
            }
        }
        _ => return Err(bad("unknown key scheme", 17)),
    };
    let values = match h[22] {
        VALUE_TERNARY => ValueScheme::Ternary {
            scale: match h[23] {
                0 => TernaryScale::MeanAbs,
                1 => TernaryScale::LeastSquares,
                2 => TernaryScale::Unit,
                _ => return Err(bad("unknown ternary scale", 23)),
            },
        },
        VALUE_PER_TOKEN => ValueScheme::PerToken {
            bits: bits(23, "per-token value bits not 1, 2 or 4")?,
        },
        VALUE_PER_CHANNEL => ValueScheme::PerChannel {
            bits: bits(23, "per-channel value bits not 1, 2 or 4")?,
        },
        _ => return Err(bad("unknown value scheme", 22)),
    };
    r.zeros(49, 7, "reserved header bytes not zero")?;
    let config = QuantConfig {
        calibration: Calibration {
            keys: f32::from_bits(r.u32(40)?),
            values: f32::from_bits(r.u32(44)?),
        },
        traced_tokens: h[48],
        ..QuantConfig::new(head_dim, group, keys, values, arithmetic)
    };
    config
        .validate()
        .map_err(|_| bad("invalid calibration or traced-token count", 40))?;
    Ok(config)
}

/// Whether layers of this codec carry a layer-scope outlier mask.
fn has_layer_mask(codec: &Codec) -> bool {
    matches!(codec.config().keys, KeyScheme::Mixed(m) if m.scope == OutlierScope::Layer)
}

fn outlier_count(codec: &Codec) -> usize {
    match codec.config().keys {
        KeyScheme::Mixed(m) => m.outlier_count(codec.config().head_dim),
        KeyScheme::PerChannel { .. } | KeyScheme::SignSketch { .. } => 0,
    }
}

impl<'a> Container<'a> {
    /// Parses and checks a whole file: magic, versions, configuration, every layer header, every
    /// section size and every checksum. Returns [`Error::Container`] or
    /// [`Error::UnsupportedVersion`] naming the first problem and its byte offset.
    pub fn parse(bytes: &'a [u8]) -> Result<Self> {
        let r = Reader { bytes };
        if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
            return Err(bad("not a .vkv file (wrong magic)", 0));
        }
        let version = r.u16(8).map_err(|_| bad("truncated header", 8))?;
        if version != CONTAINER_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "container version",
                found: u32::from(version),
                supported: u32::from(CONTAINER_VERSION),
            });
        }
        if bytes.len() < HEADER_BYTES {
            return Err(bad("truncated header", bytes.len()));
        }
        r.check(0, HEADER_CHECKSUM_AT, "header checksum mismatch")?;
        let format = r.u16(10)?;
        if format != crate::FORMAT_VERSION {
            return Err(Error::UnsupportedVersion {
                what: "block format version",
                found: u32::from(format),
                supported: u32::from(crate::FORMAT_VERSION),
            });
        }
        let config = read_config(&r)?;
        let codec =
            Codec::new(config).map_err(|_| bad("inconsistent configuration in header", 12))?;
        let layer_count = r.u32(28)? as usize;
        let file_len = r.u64(32)?;
        if file_len != bytes.len() as u64 {
            let what = if file_len > bytes.len() as u64 {
                "truncated file (shorter than the length in the header)"
            } else {
                "trailing bytes after the length in the header"
            };
            return Err(bad(what, bytes.len().min(file_len as usize)));
        }
        // Every layer takes at least a layer header and a checksum: bound the count by the file
        // before allocating anything.
        if layer_count > (bytes.len() - HEADER_BYTES) / (LAYER_HEADER_BYTES + CHECKSUM_BYTES) {
            return Err(bad("layer count exceeds what the file can hold", 28));
        }
        let mut layers = Vec::with_capacity(layer_count);
        let mut at = HEADER_BYTES;
        for _ in 0..layer_count {
            let (layer, next) = Self::parse_layer(&r, &codec, at, &layers)?;
            layers.push(layer);
            at = next;
        }
        if at != bytes.len() {
            return Err(bad("bytes after the last layer", at));
        }
        Ok(Self {
            codec,
            layers,
            file_len: bytes.len(),
        })
    }

    /// The layer whose codes a layer borrows (stored as `1 + index` at offset 28 of the layer
    /// header, 0 = own codes): an earlier layer that owns its codes, with the same heads and
    /// blocks, and a configuration whose blocks can borrow. Returns the borrower's codec.
    fn lender_of(
        r: &Reader<'a>,
        codec: &Codec,
        at: usize,
        earlier: &[LayerSection<'a>],
    ) -> Result<(Option<usize>, Codec)> {
        let stored = r.u32(at + 28)? as usize;
        let Some(lender) = stored.checked_sub(1) else {
            return Ok((None, *codec));
        };
        let what = "lender layer index not an earlier layer that owns its codes";
        let l = earlier
            .get(lender)
            .filter(|l| l.lender.is_none())
            .ok_or(bad(what, at + 28))?;
        let borrowing = codec
            .borrowing()
            .map_err(|_| bad("layer borrows codes but the schemes cannot", at + 28))?;
        if r.u32(at)? as usize != l.heads.len() || r.u32(at + 4)? as usize != l.blocks {
            return Err(bad(
                "borrowing layer's heads or blocks differ from its lender's",
                at,
            ));
        }
        Ok((Some(lender), borrowing))
    }

    fn parse_layer(
        r: &Reader<'a>,
        codec: &Codec,
        at: usize,
        earlier: &[LayerSection<'a>],
    ) -> Result<(LayerSection<'a>, usize)> {
        r.take(at, LAYER_HEADER_BYTES, "truncated layer header")?;
        let heads = r.u32(at)? as usize;
        let blocks = r.u32(at + 4)? as usize;
        let tail_tokens = r.u32(at + 8)? as usize;
        let key_name_len = usize::from(r.u16(at + 12)?);
        let value_name_len = usize::from(r.u16(at + 14)?);
        let layer_len = r.u64(at + 16)?;
        let mask_len = r.u32(at + 24)? as usize;
        let (lender, layer_codec) = Self::lender_of(r, codec, at, earlier)?;
        let codec = &layer_codec;

        let expected_mask = if has_layer_mask(codec) { MASK_BYTES } else { 0 };
        if mask_len != expected_mask {
            return Err(bad(
                "layer mask size does not match the key scheme",
                at + 24,
            ));
        }
        let names_at = at + LAYER_HEADER_BYTES;
        let names_end = names_at + key_name_len + value_name_len;
        let mask_at = at + pad8(LAYER_HEADER_BYTES + key_name_len + value_name_len);
        let sum_at = mask_at + mask_len;
        let heads_at = sum_at + CHECKSUM_BYTES;
        r.take(at, heads_at - at, "truncated layer header")?;
        r.zeros(
            names_end,
            mask_at - names_end,
            "layer name padding not zero",
        )?;
        r.check(at, sum_at, "layer header checksum mismatch")?;

        let key_name = core::str::from_utf8(r.take(names_at, key_name_len, "key name")?)
            .map_err(|_| bad("key name is not UTF-8", names_at))?;
        let value_name =
            core::str::from_utf8(r.take(names_at + key_name_len, value_name_len, "value name")?)
                .map_err(|_| bad("value name is not UTF-8", names_at + key_name_len))?;
        let outliers = if mask_len > 0 {
            let m = ChannelMask::read(r.take(mask_at, mask_len, "mask")?, codec.head_dim(), {
                outlier_count(codec)
            })
            .map_err(|_| {
                bad(
                    "layer outlier mask inconsistent with head_dim and ratio",
                    mask_at,
                )
            })?;
            Some(m)
        } else {
            None
        };

        let geometry = HeadGeometry::new(codec, blocks, tail_tokens)
            .ok_or(bad("section sizes overflow", at + 4))?;
        let expected_len = heads
            .checked_mul(geometry.total)
            .and_then(|h| h.checked_add(heads_at - at))
            .ok_or(bad("section sizes overflow", at))?;
        if layer_len != expected_len as u64 {
            return Err(bad(
                "layer length disagrees with heads, blocks and tail tokens",
                at + 16,
            ));
        }
        let layer_end = at
            .checked_add(expected_len)
            .filter(|&e| e <= r.bytes.len())
            .ok_or(bad("truncated layer (sections extend past the end)", at))?;

        // The whole layer is present, so `heads` is bounded by the file size here.
        let mut sections = Vec::with_capacity(heads);
        let mut h_at = heads_at;
        for _ in 0..heads {
            let payload_end = h_at + geometry.payload;
            let padded_end = h_at + pad8(geometry.payload);
            r.zeros(
                payload_end,
                padded_end - payload_end,
                "head padding not zero",
            )?;
            r.check(h_at, padded_end, "head section checksum mismatch")?;
            let mut o = h_at;
            let mut next = |len: usize| {
                let s = &r.bytes[o..o + len];
                o += len;
                s
            };
            sections.push(HeadSection {
                key_blocks: next(geometry.key_blocks),
                value_blocks: next(geometry.value_blocks),
                tail_keys: next(geometry.tail),
                tail_values: next(geometry.tail),
            });
            h_at += geometry.total;
        }
        debug_assert_eq!(h_at, layer_end);
        Ok((
            LayerSection {
                key_name,
                value_name,
                blocks,
                tail_tokens,
                outliers,
                lender,
                heads: sections,
            },
            layer_end,
        ))
    }

    /// The codec of the configuration in the header.
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// The configuration in the header.
    pub fn config(&self) -> &QuantConfig {
        self.codec.config()
    }

    /// The layers, in file order.
    pub fn layers(&self) -> &[LayerSection<'a>] {
        &self.layers
    }

    /// Length of the file.
    pub fn file_len(&self) -> usize {
        self.file_len
    }

    /// Where the file's bytes went; [`SizeBreakdown::total`] equals [`Self::file_len`].
    pub fn size_breakdown(&self) -> SizeBreakdown {
        let mut s = SizeBreakdown::default();
        for layer in &self.layers {
            for h in &layer.heads {
                s.key_blocks += h.key_blocks.len();
                s.value_blocks += h.value_blocks.len();
                s.tail += h.tail_keys.len() + h.tail_values.len();
            }
            s.elements_per_tensor +=
                layer.heads.len() * layer.tokens(&self.codec) * self.codec.head_dim();
        }
        s.overhead = self.file_len - s.key_blocks - s.value_blocks - s.tail;
        s
    }
}

/// One layer to write: the head sections must have the sizes that `blocks` and `tail_tokens`
/// imply for the writer's codec.
#[derive(Debug, Clone, Copy)]
pub struct LayerInput<'a> {
    /// Name of the key tensor (at most 65535 bytes).
    pub key_name: &'a str,
    /// Name of the value tensor (at most 65535 bytes).
    pub value_name: &'a str,
    /// Quantized blocks per head.
    pub blocks: usize,
    /// Unquantized tail tokens per head.
    pub tail_tokens: usize,
    /// The layer-scope outlier channels: required exactly when the keys are layer-scope mixed.
    pub outliers: Option<&'a ChannelMask>,
    /// One section per KV head.
    pub heads: &'a [HeadSection<'a>],
}

/// Builds a `.vkv` file in memory, one layer at a time.
#[derive(Debug, Clone)]
pub struct ContainerWriter {
    codec: Codec,
    buf: Vec<u8>,
    layers: u32,
    /// Per written layer: heads, blocks, whether it owns its codes (for borrowing checks).
    written: Vec<(usize, usize, bool)>,
}

fn too_large(what: &'static str) -> Error {
    Error::InvalidConfig { reason: what }
}

impl ContainerWriter {
    /// Starts a file for `codec`.
    pub fn new(codec: &Codec) -> Self {
        let mut buf = alloc::vec![0u8; HEADER_BYTES];
        buf[..8].copy_from_slice(&MAGIC);
        buf[8..10].copy_from_slice(&CONTAINER_VERSION.to_le_bytes());
        buf[10..12].copy_from_slice(&crate::FORMAT_VERSION.to_le_bytes());
        write_config(codec.config(), &mut buf);
        Self {
            codec: *codec,
            buf,
            layers: 0,
            written: Vec::new(),
        }
    }

    /// Appends a layer after checking every section's size against the configuration.
    pub fn add_layer(&mut self, layer: &LayerInput<'_>) -> Result<()> {
        self.add(layer, None)
    }

    /// Appends a layer whose blocks **borrow** the codes of the earlier layer `lender` (XQuant
    /// cross-layer sharing): its head sections hold the parameter-only blocks of
    /// [`Codec::borrowing`]. The lender must own its codes and have the same heads and blocks.
    pub fn add_borrowing_layer(&mut self, layer: &LayerInput<'_>, lender: usize) -> Result<()> {
        let ok = self
            .written
            .get(lender)
            .is_some_and(|&(heads, blocks, owns)| {
                owns && heads == layer.heads.len() && blocks == layer.blocks
            });
        if !ok {
            return Err(Error::InvalidConfig {
                reason: "the lender must be an earlier layer that owns its codes, with the same heads and blocks",
            });
        }
        self.add(layer, Some(lender))
    }

    fn add(&mut self, layer: &LayerInput<'_>, lender: Option<usize>) -> Result<()> {
        let codec = &match lender {
            Some(_) => self.codec.borrowing()?,
            None => self.codec,
        };
        let lender_field = match lender {
            Some(l) => u32::try_from(l + 1).map_err(|_| too_large("lender index"))?,
            None => 0,
        };
        let to_u32 = |n: usize, what| u32::try_from(n).map_err(|_| too_large(what));
        let to_u16 = |n: usize, what| u16::try_from(n).map_err(|_| too_large(what));
        let heads = to_u32(layer.heads.len(), "more than 2^32 − 1 heads in a layer")?;
        let blocks = to_u32(layer.blocks, "more than 2^32 − 1 blocks in a layer")?;
        let tail = to_u32(
            layer.tail_tokens,
            "more than 2^32 − 1 tail tokens in a layer",
        )?;
        let kn = to_u16(
            layer.key_name.len(),
            "key tensor name longer than 65535 bytes",
        )?;
        let vn = to_u16(
            layer.value_name.len(),
            "value tensor name longer than 65535 bytes",
        )?;
        let mask_len = if has_layer_mask(codec) {
            let m = layer.outliers.ok_or(Error::InvalidConfig {
                reason: "layer-scope keys need the layer's outlier mask in the container",
            })?;
            let k = outlier_count(codec);
            if m.count() != k || m.outliers(codec.head_dim()).count() != k {
                return Err(Error::InvalidConfig {
                    reason: "the outlier mask must select exactly round(r·D) channels below head_dim",
                });
            }
            MASK_BYTES
        } else {
            if layer.outliers.is_some() {
                return Err(Error::InvalidConfig {
                    reason: "only layer-scope mixed keys store a layer outlier mask",
                });
            }
            0
        };
        let geometry = HeadGeometry::new(codec, layer.blocks, layer.tail_tokens)
            .ok_or(too_large("section sizes overflow"))?;
        for h in layer.heads {
            for (what, expected, actual) in [
                ("key block bytes", geometry.key_blocks, h.key_blocks.len()),
                (
                    "value block bytes",
                    geometry.value_blocks,
                    h.value_blocks.len(),
                ),
                ("tail key bytes", geometry.tail, h.tail_keys.len()),
                ("tail value bytes", geometry.tail, h.tail_values.len()),
            ] {
                if expected != actual {
                    return Err(Error::ShapeMismatch {
                        what,
                        expected,
                        actual,
                    });
                }
            }
        }
        let header_len = pad8(LAYER_HEADER_BYTES + usize::from(kn) + usize::from(vn)) + mask_len;
        let layer_len = layer
            .heads
            .len()
            .checked_mul(geometry.total)
            .and_then(|n| n.checked_add(header_len + CHECKSUM_BYTES))
            .ok_or(too_large("layer too large"))?;
        self.layers = self
            .layers
            .checked_add(1)
            .ok_or(too_large("more than 2^32 − 1 layers"))?;

        let at = self.buf.len();
        let b = &mut self.buf;
        b.reserve(layer_len);
        b.extend_from_slice(&heads.to_le_bytes());
        b.extend_from_slice(&blocks.to_le_bytes());
        b.extend_from_slice(&tail.to_le_bytes());
        b.extend_from_slice(&kn.to_le_bytes());
        b.extend_from_slice(&vn.to_le_bytes());
        b.extend_from_slice(&(layer_len as u64).to_le_bytes());
        b.extend_from_slice(&(mask_len as u32).to_le_bytes());
        b.extend_from_slice(&lender_field.to_le_bytes());
        b.extend_from_slice(layer.key_name.as_bytes());
        b.extend_from_slice(layer.value_name.as_bytes());
        b.resize(at + pad8(b.len() - at), 0);
        if let Some(m) = layer.outliers {
            for w in m.words {
                b.extend_from_slice(&w.to_le_bytes());
            }
        }
        let sum = checksum(&b[at..]);
        b.extend_from_slice(&sum.to_le_bytes());
        for h in layer.heads {
            let h_at = b.len();
            for part in [h.key_blocks, h.value_blocks, h.tail_keys, h.tail_values] {
                b.extend_from_slice(part);
            }
            b.resize(h_at + pad8(b.len() - h_at), 0);
            let sum = checksum(&b[h_at..]);
            b.extend_from_slice(&sum.to_le_bytes());
        }
        debug_assert_eq!(b.len() - at, layer_len);
        self.written
            .push((layer.heads.len(), layer.blocks, lender.is_none()));
        Ok(())
    }

    /// Layers written so far.
    pub fn layer_count(&self) -> usize {
        self.layers as usize
    }

    /// Fills in the layer count, the length and the header checksum; returns the file bytes.
    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u64;
        self.buf[28..32].copy_from_slice(&self.layers.to_le_bytes());
        self.buf[32..40].copy_from_slice(&len.to_le_bytes());
        let sum = checksum(&self.buf[..HEADER_CHECKSUM_AT]);
        self.buf[HEADER_CHECKSUM_AT..HEADER_BYTES].copy_from_slice(&sum.to_le_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Scheme;
    use alloc::vec;

    fn codec(s: Scheme, d: usize) -> Codec {
        Codec::new(s.config(HeadDim::new(d).unwrap(), GroupSize::G32)).unwrap()
    }

    /// A file with two layers of arbitrary (not decodable) block bytes.
    fn sample(c: &Codec) -> Vec<u8> {
        let mut w = ContainerWriter::new(c);
        let mask = ChannelMask::from_channels(0..outlier_count(c));
        let outliers = has_layer_mask(c).then_some(&mask);
        let (kb, vb, d) = (c.key_block_bytes(), c.value_block_bytes(), c.head_dim());
        let keys: Vec<u8> = (0..2 * kb).map(|i| i as u8).collect();
        let values: Vec<u8> = (0..2 * vb).map(|i| (i * 7) as u8).collect();
        let tail: Vec<u8> = (0..5 * d * 2).map(|i| (i * 3) as u8).collect();
        let head = HeadSection {
            key_blocks: &keys,
            value_blocks: &values,
            tail_keys: &tail,
            tail_values: &tail,
        };
        let heads = [head; 3];
        w.add_layer(&LayerInput {
            key_name: "k_post.0",
            value_name: "v.0",
            blocks: 2,
            tail_tokens: 5,
            outliers,
            heads: &heads,
        })
        .unwrap();
        w.add_layer(&LayerInput {
            key_name: "k.7",
            value_name: "v.7",
            blocks: 0,
            tail_tokens: 0,
            outliers,
            heads: &[HeadSection::default()],
        })
        .unwrap();
        w.finish()
    }

    #[test]
    fn roundtrips_every_preset() {
        for s in Scheme::ALL {
            for d in [18, 64, 80] {
                let c = codec(s, d);
                let bytes = sample(&c);
                let parsed = Container::parse(&bytes).unwrap();
                assert_eq!(parsed.config(), c.config());
                let layers = parsed.layers();
                assert_eq!(layers.len(), 2);
                assert_eq!(layers[0].key_name, "k_post.0");
                assert_eq!(layers[1].value_name, "v.7");
                assert_eq!(layers[0].heads.len(), 3);
                assert_eq!(layers[0].tokens(&c), 69);
                assert_eq!(layers[0].heads[1].key_blocks.len(), 2 * c.key_block_bytes());
                assert_eq!(layers[0].heads[2].tail_keys_f16().len(), 5 * d);
                assert_eq!(layers[0].outliers.is_some(), has_layer_mask(&c));
                let sizes = parsed.size_breakdown();
                assert_eq!(sizes.total(), bytes.len());
                assert_eq!(sizes.elements_per_tensor, 3 * 69 * d);
                assert_eq!(bytes.len() % 8, 0);
            }
        }
    }

    #[test]
    fn every_config_option_survives() {
        let d = HeadDim::new(64).unwrap();
        for transform in [Transform::Fft, Transform::Hadamard, Transform::Identity] {
            for scope in [OutlierScope::Layer, OutlierScope::Block] {
                for arithmetic in [Arithmetic::F32, Arithmetic::Reference] {
                    for values in [
                        ValueScheme::Ternary {
                            scale: TernaryScale::MeanAbs,
                        },
                        ValueScheme::PerToken { bits: Bits::Four },
                        ValueScheme::PerChannel { bits: Bits::Two },
                    ] {
                        let cfg = QuantConfig::new(
                            d,
                            GroupSize::G128,
                            KeyScheme::Mixed(MixedKeys {
                                outlier_ratio: 0.5,
                                scope,
                                transform,
                                lane_rule: LaneRule::Symmetric,
                            }),
                            values,
                            arithmetic,
                        );
                        let c = Codec::new(cfg).unwrap();
                        let bytes = sample(&c);
                        assert_eq!(*Container::parse(&bytes).unwrap().config(), cfg);
                    }
                }
            }
        }
    }

    #[test]
    fn sign_sketch_header_bytes() {
        for (bits, seed) in [(SketchBits::B64, 7u32), (SketchBits::B256, u32::MAX)] {
            let cfg = QuantConfig::new(
                HeadDim::new(64).unwrap(),
                GroupSize::G32,
                KeyScheme::SignSketch { bits, seed },
                ValueScheme::PerToken { bits: Bits::Four },
                Arithmetic::F32,
            );
            let c = Codec::new(cfg).unwrap();
            let bytes = sample(&c);
            assert_eq!(bytes[17], 2);
            assert_eq!(usize::from(bytes[18]), bits.get() / 8);
            assert_eq!(bytes[24..28], seed.to_le_bytes());
            assert_eq!(bytes[19..22], [0, 0, 0]);
            assert_eq!(*Container::parse(&bytes).unwrap().config(), cfg);
            // A sketch length other than 8/16/32 bytes is refused (checksum fixed up).
            let mut bad = bytes.clone();
            bad[18] = 12;
            let sum = xxhash_rust::xxh3::xxh3_64(&bad[..56]);
            bad[56..64].copy_from_slice(&sum.to_le_bytes());
            assert!(matches!(
                Container::parse(&bad),
                Err(Error::Container { offset: 18, .. })
            ));
        }
    }

    #[test]
    fn damage_is_a_typed_error() {
        let c = codec(Scheme::VidkvPaper, 64);
        let good = sample(&c);
        // every truncation
        for n in 0..good.len() {
            assert!(Container::parse(&good[..n]).is_err(), "length {n}");
        }
        // every single-bit flip is caught
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x10;
            assert!(Container::parse(&b).is_err(), "byte {i}");
        }
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(
            Container::parse(&b).unwrap_err(),
            bad("not a .vkv file (wrong magic)", 0)
        );
        let mut b = good.clone();
        b[8] = 2;
        assert!(matches!(
            Container::parse(&b),
            Err(Error::UnsupportedVersion { found: 2, .. })
        ));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(
            Container::parse(&b),
            Err(Error::Container { what, .. }) if what.contains("trailing")
        ));
        let mut b = good.clone();
        // first byte of layer 0's first key block: header, layer header with names and mask, sum
        let first = HEADER_BYTES + pad8(LAYER_HEADER_BYTES + 8 + 3) + MASK_BYTES + CHECKSUM_BYTES;
        b[first] ^= 1;
        assert!(matches!(
            Container::parse(&b),
            Err(Error::Container { what, .. }) if what.contains("head section checksum")
        ));
    }

    /// Re-seals the header and the first layer header after an edit, so that the structural
    /// checks (not the checksums) must catch it.
    fn reseal(b: &mut [u8], layer_sum_at: usize) {
        let sum = checksum(&b[..HEADER_CHECKSUM_AT]);
        b[HEADER_CHECKSUM_AT..HEADER_BYTES].copy_from_slice(&sum.to_le_bytes());
        let sum = checksum(&b[HEADER_BYTES..layer_sum_at]);
        b[layer_sum_at..layer_sum_at + 8].copy_from_slice(&sum.to_le_bytes());
    }

    #[test]
    fn inconsistent_sizes_with_valid_checksums_are_named() {
        let c = codec(Scheme::Vidkv, 64);
        let good = sample(&c);
        // layer 0: header 32 + names "k_post.0" "v.0" (11 → pad 16), no mask; checksum at 112
        let sum_at = HEADER_BYTES + LAYER_HEADER_BYTES + 16;
        let what = |b: &[u8]| match Container::parse(b) {
            Err(Error::Container { what, .. }) => what,
            other => panic!("expected a container error, got {other:?}"),
        };
        let mut b = good.clone();
        b[HEADER_BYTES + 16] ^= 8; // layer length
        reseal(&mut b, sum_at);
        assert!(what(&b).contains("layer length disagrees"), "{}", what(&b));
        let mut b = good.clone();
        b[HEADER_BYTES] += 1; // one more head than the file holds
        reseal(&mut b, sum_at);
        assert!(what(&b).contains("layer length disagrees"), "{}", what(&b));
        let mut b = good.clone();
        b[HEADER_BYTES + 24] = 32; // a mask where the key scheme has none
        reseal(&mut b, sum_at);
        assert!(what(&b).contains("mask size"), "{}", what(&b));
        let mut b = good.clone();
        b[28] += 1; // one layer more than present
        reseal(&mut b, sum_at);
        assert!(what(&b).contains("truncated layer header"), "{}", what(&b));
        let mut b = good.clone();
        b[32] ^= 8; // file length
        reseal(&mut b, sum_at);
        assert!(what(&b).contains("length in the header"), "{}", what(&b));
        let mut b = good.clone();
        b[12] = 15; // head_dim 15
        reseal(&mut b, sum_at);
        assert!(what(&b).contains("head_dim"), "{}", what(&b));
        let mut b = good;
        b[HEADER_BYTES + LAYER_HEADER_BYTES] = 0xFF; // key name not UTF-8
        reseal(&mut b, sum_at);
        assert!(what(&b).contains("UTF-8"), "{}", what(&b));
    }

    #[test]
    fn writer_rejects_wrong_sizes_and_masks() {
        let c = codec(Scheme::Vidkv, 64);
        let mut w = ContainerWriter::new(&c);
        let short = [0u8; 3];
        let head = HeadSection {
            key_blocks: &short,
            ..HeadSection::default()
        };
        let layer = LayerInput {
            key_name: "k.0",
            value_name: "v.0",
            blocks: 1,
            tail_tokens: 0,
            outliers: None,
            heads: &[head],
        };
        assert!(matches!(
            w.add_layer(&layer),
            Err(Error::ShapeMismatch { .. })
        ));
        let mask = ChannelMask::from_channels(0..32);
        let layer = LayerInput {
            outliers: Some(&mask),
            blocks: 0,
            heads: &[],
            ..layer
        };
        assert!(w.add_layer(&layer).is_err());
        let paper = codec(Scheme::VidkvPaper, 64);
        let mut w = ContainerWriter::new(&paper);
        let layer = LayerInput {
            outliers: None,
            ..layer
        };
        assert!(w.add_layer(&layer).is_err());
        assert_eq!(w.layer_count(), 0);
    }

    #[test]
    fn tails_are_borrowed_when_aligned() {
        let c = codec(Scheme::Kivi2, 64);
        let bytes = sample(&c);
        // Copy into u64 storage to guarantee 8-byte alignment of the file start.
        let mut words = vec![0u64; bytes.len() / 8];
        bytemuck::cast_slice_mut::<u64, u8>(&mut words).copy_from_slice(&bytes);
        let aligned: &[u8] = bytemuck::cast_slice(&words);
        let parsed = Container::parse(aligned).unwrap();
        let tail = parsed.layers()[0].heads[0].tail_keys_f16();
        assert!(matches!(tail, Cow::Borrowed(_)) || cfg!(target_endian = "big"));
        let expect = f16::from_le_bytes([0, 3]);
        assert_eq!(tail[0], expect);
    }
}
