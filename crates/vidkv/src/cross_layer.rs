//! `vidkv eval --cross-layer FROM`: XQuant's cross-layer code sharing on a file that holds
//! adjacent layers (e.g. a `vidkv-dump-kv` dump of every SmolLM2 layer).
//!
//! From layer `FROM` on, every odd layer `l` whose predecessor `l − 1` is in the file borrows
//! `l − 1`'s integer codes ([`vidkv_core::Codec::borrowing`]): it stores only its own min/max
//! parameters and decodes as `lo_l + code_{l−1}·step_l`. Each layer is reported with and
//! without sharing:
//!
//! * bits per element of its blocks, codes only and all-in (codes + parameters);
//! * key and value relative errors `‖x − x̂‖/‖x‖` over its whole blocks;
//! * when the file holds the layer's queries: the attention error of the streaming cache
//!   (residual window, sinks) as in [`crate::attn_eval`], the borrowing cache attending with its
//!   lender's cache ([`vidkv_core::KvCache::attend_borrowing`]).

use serde::Serialize;
use vidkv_core::cache::{CacheConfig, KvCache, Salient};
use vidkv_core::{Codec, HeadDim, KvQuantBackend, Scheme};

use crate::attn_eval::{AttnOptions, Rows, exact, head, rows};
use crate::error::{Error, Result};
use crate::options::SchemeOptions;
use crate::tensor::TensorFile;

/// One layer of the cross-layer report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CrossLayerRow {
    /// File path or builtin label.
    pub file: String,
    /// Layer number.
    pub layer: u32,
    /// Always `"cross-layer"`.
    pub kind: &'static str,
    /// Preset name.
    pub scheme: &'static str,
    /// The layer whose codes this layer borrows under sharing (`None`: owns its codes).
    pub lender: Option<u32>,
    /// Code bits per K/V element, without sharing.
    pub code_bits: f64,
    /// Code bits per K/V element with sharing (0 for a borrowing layer).
    pub code_bits_shared: f64,
    /// All-in block bits per K/V element without sharing (codes + parameters).
    pub bits: f64,
    /// All-in block bits with sharing.
    pub bits_shared: f64,
    /// Key relative error without sharing.
    pub key_error: f64,
    /// Key relative error with sharing.
    pub key_error_shared: f64,
    /// Value relative error without sharing.
    pub value_error: f64,
    /// Value relative error with sharing.
    pub value_error_shared: f64,
    /// Mean attention relative error without sharing (`None`: no queries in the file).
    pub attn_error: Option<f64>,
    /// Mean attention relative error with sharing.
    pub attn_error_shared: Option<f64>,
}

/// A layer of the file: its number and tensor names.
#[derive(Debug, Clone)]
struct Layer {
    layer: u32,
    keys: String,
    values: String,
    queries: Option<String>,
}

fn layers(file: &TensorFile) -> Result<Vec<Layer>> {
    let st = file.parse()?;
    let names: Vec<String> = st.names().into_iter().map(|s| s.to_owned()).collect();
    let find = |cands: [String; 2]| cands.into_iter().find(|n| names.contains(n));
    let mut out: Vec<Layer> = names
        .iter()
        .filter_map(|n| n.strip_prefix("v."))
        .filter_map(|l| l.parse::<u32>().ok())
        .filter_map(|l| {
            Some(Layer {
                layer: l,
                keys: find([format!("k_post.{l}"), format!("k.{l}")])?,
                values: format!("v.{l}"),
                queries: find([format!("q_post.{l}"), format!("q.{l}")]),
            })
        })
        .collect();
    out.sort_by_key(|l| l.layer);
    Ok(out)
}

/// Which layers borrow, and from whom: odd layers ≥ `from` whose predecessor is present.
fn lenders(layers: &[Layer], from: u32) -> Vec<Option<usize>> {
    layers
        .iter()
        .map(|l| {
            let borrows = l.layer >= from && l.layer % 2 == 1;
            borrows
                .then(|| layers.iter().position(|p| p.layer + 1 == l.layer))
                .flatten()
        })
        .collect()
}

/// Whole blocks of every head, concatenated: `[heads · blocks · G, D]` rows.
fn block_rows(x: &Rows, g: usize) -> (Vec<f32>, usize) {
    let [heads, t, d] = x.shape;
    let blocks = t / g;
    let mut out = Vec::with_capacity(heads * blocks * g * d);
    for h in 0..heads {
        out.extend_from_slice(&head(x, h)[..blocks * g * d]);
    }
    (out, heads * blocks)
}

fn rel_error(x: &[f32], y: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&a, &b) in x.iter().zip(y) {
        num += (f64::from(a) - f64::from(b)).powi(2);
        den += f64::from(a).powi(2);
    }
    (num / den.max(1e-300)).sqrt()
}

/// Encoded blocks of one layer (keys, values) and the f32 rows they came from.
struct Encoded {
    keys: Vec<u8>,
    values: Vec<u8>,
    key_rows: Vec<f32>,
    value_rows: Vec<f32>,
}

fn encode(codec: &Codec, k: &Rows, v: &Rows) -> Result<Encoded> {
    let g = codec.group();
    let (key_rows, blocks) = block_rows(k, g);
    let (value_rows, _) = block_rows(v, g);
    let mut keys = vec![0u8; blocks * codec.key_block_bytes()];
    let mut values = vec![0u8; blocks * codec.value_block_bytes()];
    vidkv_cpu::encode_key_blocks(codec, &key_rows, None, &mut keys)?;
    vidkv_cpu::encode_value_blocks(codec, &value_rows, &mut values)?;
    Ok(Encoded {
        keys,
        values,
        key_rows,
        value_rows,
    })
}

/// Key and value errors of `own` (a borrowing codec's blocks when `lender` is given).
fn errors(codec: &Codec, own: &Encoded, lender: Option<(&Codec, &Encoded)>) -> Result<(f64, f64)> {
    let mut k = vec![0.0f32; own.key_rows.len()];
    let mut v = vec![0.0f32; own.value_rows.len()];
    match lender {
        Some((lc, l)) => {
            vidkv_cpu::decode_borrowed_key_blocks(codec, lc, &own.keys, &l.keys, &mut k)?;
            vidkv_cpu::decode_borrowed_value_blocks(codec, lc, &own.values, &l.values, &mut v)?;
        }
        None => {
            vidkv_cpu::decode_key_blocks(codec, &own.keys, &mut k)?;
            vidkv_cpu::decode_value_blocks(codec, &own.values, &mut v)?;
        }
    }
    Ok((rel_error(&own.key_rows, &k), rel_error(&own.value_rows, &v)))
}

/// The tensors of a layer.
struct Tensors {
    k: Rows,
    v: Rows,
    q: Option<Rows>,
}

fn load(file: &TensorFile, l: &Layer) -> Result<Tensors> {
    Ok(Tensors {
        k: rows(file, &l.keys)?,
        v: rows(file, &l.values)?,
        q: l.queries.as_ref().map(|q| rows(file, q)).transpose()?,
    })
}

/// Streams `x` through caches as `vidkv eval`'s attention metrics do and returns the mean
/// attention relative error of `x`'s queries: through `x`'s own cache (`lender = None`) or
/// through a borrowing cache attending with the lender layer's cache.
fn attention_error<B: KvQuantBackend>(
    backend: &B,
    codec: &Codec,
    x: &Tensors,
    lender: Option<&Tensors>,
    attn: &AttnOptions,
) -> Result<Option<f64>> {
    let Some(q) = &x.q else { return Ok(None) };
    let [kv, t, d] = x.k.shape;
    let [qh, nq, _] = q.shape;
    let (group, p0, scale) = (qh / kv, t - nq, 1.0 / (d as f64).sqrt());
    let cache = |c: Codec| -> Result<KvCache<&B>> {
        let config = CacheConfig {
            residual: attn.residual,
            sinks: attn.sinks,
            ..CacheConfig::new(c, kv, qh)
        };
        Ok(KvCache::new(backend, config)?)
    };
    let prefix = |r: &Rows| -> Vec<f32> {
        (0..kv)
            .flat_map(|h| head(r, h)[..p0 * d].iter().copied())
            .collect()
    };
    let token = |r: &Rows, p: usize| -> Vec<f32> {
        (0..kv)
            .flat_map(|h| head(r, h)[p * d..][..d].iter().copied())
            .collect()
    };
    let own_codec = match lender {
        Some(_) => codec.borrowing()?,
        None => *codec,
    };
    let mut own = cache(own_codec)?;
    own.add_sequence()?;
    own.prefill(0, &prefix(&x.k), &prefix(&x.v), Salient::None)?;
    let mut lent = match lender {
        Some(l) => {
            let mut c = cache(*codec)?;
            c.add_sequence()?;
            c.prefill(0, &prefix(&l.k), &prefix(&l.v), Salient::None)?;
            Some((c, l))
        }
        None => None,
    };
    let mut fused = vec![0.0f32; qh * d];
    let mut sum = 0.0f64;
    for i in 0..nq {
        let p = p0 + i;
        own.append_token(0, &token(&x.k, p), &token(&x.v, p), false)?;
        let qi: Vec<f32> = (0..qh)
            .flat_map(|h| q.data[(h * nq + i) * d..][..d].iter().copied())
            .collect();
        match &mut lent {
            Some((c, l)) => {
                c.append_token(0, &token(&l.k, p), &token(&l.v, p), false)?;
                own.attend_borrowing(c, 0, &qi, &mut fused)?;
            }
            None => own.attend(0, &qi, &mut fused)?,
        }
        for h in 0..qh {
            let kvh = h / group;
            let (o, _) = exact(
                head(&x.k, kvh),
                head(&x.v, kvh),
                d,
                p + 1,
                &qi[h * d..][..d],
                scale,
            );
            let ohat = &fused[h * d..][..d];
            let num: f64 = o
                .iter()
                .zip(ohat)
                .map(|(a, &b)| (a - f64::from(b)).powi(2))
                .sum();
            let den: f64 = o.iter().map(|a| a * a).sum();
            sum += (num / den.max(1e-300)).sqrt();
        }
    }
    Ok(Some(sum / (nq * qh) as f64))
}

/// The cross-layer report of one file under `scheme` (whose blocks must be able to borrow).
pub fn evaluate_cross_layer<B: KvQuantBackend>(
    backend: &B,
    file: &TensorFile,
    scheme: Scheme,
    options: &SchemeOptions,
    from: u32,
    attn: Option<&AttnOptions>,
) -> Result<Vec<CrossLayerRow>> {
    let located = |e: Error| e.in_file(file.label());
    let layers = layers(file)?;
    let lenders = lenders(&layers, from);
    let tensors: Vec<Tensors> = layers
        .iter()
        .map(|l| load(file, l))
        .collect::<Result<_>>()?;
    let mut out = Vec::with_capacity(layers.len());
    for (i, l) in layers.iter().enumerate() {
        let x = &tensors[i];
        let codec = options
            .codec(scheme, HeadDim::new(x.k.shape[2])?)
            .map_err(located)?;
        let borrowing = codec.borrowing().map_err(|e| located(e.into()))?;
        let own = encode(&codec, &x.k, &x.v)?;
        let (key_error, value_error) = errors(&codec, &own, None)?;
        let attn_error = match attn {
            Some(a) => attention_error(backend, &codec, x, None, a)?,
            None => None,
        };
        let code_bits = (codec.key_code_bits() + codec.value_code_bits()) / 2.0;
        let bits = (codec.key_bits_per_element() + codec.value_bits_per_element()) / 2.0;
        let mut row = CrossLayerRow {
            file: file.label().to_owned(),
            layer: l.layer,
            kind: "cross-layer",
            scheme: scheme.name(),
            lender: None,
            code_bits,
            code_bits_shared: code_bits,
            bits,
            bits_shared: bits,
            key_error,
            key_error_shared: key_error,
            value_error,
            value_error_shared: value_error,
            attn_error,
            attn_error_shared: attn_error,
        };
        if let Some(li) = lenders[i]
            && tensors[li].k.shape == x.k.shape
        {
            let lent = encode(&codec, &tensors[li].k, &tensors[li].v)?;
            let mine = encode(&borrowing, &x.k, &x.v)?;
            let (ke, ve) = errors(&borrowing, &mine, Some((&codec, &lent)))?;
            row.lender = Some(layers[li].layer);
            row.code_bits_shared = 0.0;
            row.bits_shared =
                (borrowing.key_bits_per_element() + borrowing.value_bits_per_element()) / 2.0;
            row.key_error_shared = ke;
            row.value_error_shared = ve;
            row.attn_error_shared = match attn {
                Some(a) => attention_error(backend, &codec, x, Some(&tensors[li]), a)?,
                None => None,
            };
        }
        out.push(row);
    }
    Ok(out)
}
