//! Fused decode attention on the packed blocks plus f16 rows (DESIGN §2), scalar: the normative
//! algorithm every faster backend reproduces.
//!
//! For one (sequence, KV head) job and the `Q` query heads that share the KV head (GQA):
//! `out_q = softmax(scale · q·Kᵀ) · V` with f32 accumulation and an online softmax over blocks
//! (one running max, sum and D-wide accumulator per query). Each block's bytes are read once and
//! scored for all `Q` queries; nothing is dequantized to a cache-sized buffer.
//!
//! * **Mixed keys** (VidKV): score `= Σ_outlier q_c·(lo_c + code·step_c) + Σ_lanes w_j·ẑ_j` with
//!   `w = T⁻ᵀ(q_normal)` (the adjoint of the inverse transform on the query, computed once per
//!   distinct outlier mask — once per layer for layer scope, once per block where block scope
//!   changes the mask). Every lane rule makes `ẑ_j = α_j + β_j·bit` affine in the bit, so a key's
//!   lane score is a constant plus a weighted sum of its bits.
//! * **Per-channel keys**: `Σ_c q_c·lo_c + Σ_c (q_c·step_c)·code`.
//! * **Sign-sketch keys** (H1B-KV): the SimHash estimate `scale·‖q‖·‖k_t‖·cos(π·h_t/b)` with
//!   `h_t` the Hamming distance of `sign(R·q)` (computed once per call) and the token's signs,
//!   `cos(π·h/b)` from a table; this is *not* `q·k̂` of the decoded keys, so its reference is
//!   the same estimator in f64 ([`vidkv_core::sketch::reference_scores`]).
//! * **Ternary values**: `Σ_t p_t·trit_{t,c}` per (channel, block), times the channel's scale once.
//! * **Per-channel values**: `lo_c·Σp + step_c·Σ p_t·code_{t,c}`.
//! * **Per-token values** (KIVI): `Σ_t p_t·(lo_{t,g} + step_{t,g}·code)` with each token's
//!   parameters.
//! * **Traced tokens** (OTT): the block is scored from its codes as usual, then each traced
//!   token's score is replaced by the exact f32 dot of the query with its f16 row.
//! * **Salient tokens** take their value from the salient group row (or pending f16 row).
//! * **f16 rows** (sinks, residual): converted tile by tile (G rows), f32 dot products.
//!
//! Accuracy: min/max codes are decoded as `lo + code·step` in f32. That is the normative decode
//! under f32 arithmetic; under reference arithmetic the normative decode rounds twice to f16, so
//! the fused result differs from attention over the dequantized cache by f16 rounding of the
//! decoded keys and values (relative output differences around 5e-4 on the real data, up to
//! 6e-3 on synthetic keys with large outlier channels; tests allow 1e-2). Everything else differs
//! only by f32 summation order (around 1e-6; tests allow 2e-5).
//!
//! The same tile code, fed f16 or f32 rows, is the dense baseline ([`attend_dense_f16`],
//! [`attend_dense_f32`]) that benchmarks compare against: the same GQA sharing, online softmax
//! and exponential.

use alloc::vec;
use alloc::vec::Vec;

use half::f16;
use half::slice::HalfFloatSliceExt;
use vidkv_core::backend::{AttentionArgs, DenseRows, SalientArgs};
use vidkv_core::cache::salient_codec;
use vidkv_core::layout::trit_row_bytes;
use vidkv_core::pack::{MAX_TRIT_BYTE, f16_at};
use vidkv_core::{ChannelMask, Codec, Error, GroupSize, KeyLayout, KeyScheme, Result, ValueLayout};

use vidkv_core::sketch::{Projection, QuerySketch, cos_table, read_norms, shared_projection};

use crate::blocks::read_params;
use crate::keys::{lane_transform, lane_value};
use crate::transform::LaneTransform;

/// Runs one attention job on host buffers.
pub fn attend(codec: &Codec, args: AttentionArgs<'_, Vec<u8>>) -> Result<()> {
    match codec.config().group {
        GroupSize::G32 => attend_g::<32>(codec, args),
        GroupSize::G64 => attend_g::<64>(codec, args),
        GroupSize::G128 => attend_g::<128>(codec, args),
    }
}

fn attend_g<const G: usize>(codec: &Codec, args: AttentionArgs<'_, Vec<u8>>) -> Result<()> {
    let d = codec.head_dim();
    let nq = args.query_heads;
    let queries = read_queries(args.queries, nq, d, args.scale)?;
    let out_len = nq * d * 4;
    if args.out.len() != out_len {
        return Err(Error::ShapeMismatch {
            what: "attention output bytes ([query_heads, head_dim] f32)",
            expected: out_len,
            actual: args.out.len(),
        });
    }
    let mut state = Online::new(nq, d, G);

    if args.blocks > 0 {
        let (kb, vb) = (codec.key_block_bytes(), codec.value_block_bytes());
        let keys = args.key_blocks.get(..args.blocks * kb).ok_or(short(
            "key blocks",
            args.blocks * kb,
            args.key_blocks.len(),
        ))?;
        let values = args.value_blocks.get(..args.blocks * vb).ok_or(short(
            "value blocks",
            args.blocks * vb,
            args.value_blocks.len(),
        ))?;
        let mut salient = args
            .salient
            .as_ref()
            .map(|s| SalientReader::new(codec, s, args.blocks))
            .transpose()?;
        let mut lent = Lent::new(codec, &args)?;
        let codec = &codec.owning();
        let mut key_scorer = KeyScorer::new(codec, &queries, nq);
        if let Some(projection) = shared_projection(codec) {
            let raw = read_queries(args.queries, nq, d, 1.0)?;
            key_scorer.sketch = Some(SketchScorer::new(&projection, &raw, nq, d, args.scale));
        }
        let mut value_acc = ValueAccumulator::new(codec, nq);
        for (b, (kblock, vblock)) in keys
            .chunks_exact(kb)
            .zip(values.chunks_exact(vb))
            .enumerate()
        {
            let (kblock, vblock) = match &mut lent {
                Some(l) => l.splice(b, kblock, vblock),
                None => (kblock, vblock),
            };
            key_scorer
                .score::<G>(codec, kblock, &mut state.scores)
                .map_err(|e| locate(e, b * kb))?;
            state.absorb(G);
            let excluded = match &mut salient {
                Some(r) => r.block(b, &state.scores, d, &mut state.acc)?,
                None => 0,
            };
            value_acc
                .add::<G>(codec, vblock, excluded, &state.scores, &mut state.acc)
                .map_err(|e| locate(e, b * vb))?;
        }
    }

    let mut tile = DenseTile::new(G, d);
    for rows in [&args.sinks, &args.residual].into_iter().flatten() {
        dense_rows(rows, d, &queries, &mut state, &mut tile)?;
    }

    for (chunk, v) in args.out.chunks_exact_mut(4).zip(state.finish()) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// The lender's blocks of a borrowing layer and the spliced full blocks of the current index
/// (the borrower's parameters, the lender's codes): one copy per block, no decode.
struct Lent<'a> {
    keys: &'a [u8],
    values: &'a [u8],
    key_params: vidkv_core::Section,
    value_params: vidkv_core::Section,
    key_block: Vec<u8>,
    value_block: Vec<u8>,
}

impl<'a> Lent<'a> {
    fn new(codec: &Codec, args: &AttentionArgs<'a, Vec<u8>>) -> Result<Option<Self>> {
        let lender = match (&args.lender, codec.is_borrowing()) {
            (None, false) => return Ok(None),
            (Some(l), true) => l,
            _ => {
                return Err(Error::InvalidConfig {
                    reason: "lender blocks must be given exactly when the codec borrows its codes",
                });
            }
        };
        let full = codec.owning();
        let (kb, vb) = (full.key_block_bytes(), full.value_block_bytes());
        let keys = lender.key_blocks.get(..args.blocks * kb);
        let values = lender.value_blocks.get(..args.blocks * vb);
        let (Some(keys), Some(values)) = (keys, values) else {
            return Err(short(
                "lender key/value blocks",
                args.blocks * (kb + vb),
                lender.key_blocks.len() + lender.value_blocks.len(),
            ));
        };
        Ok(Some(Self {
            keys,
            values,
            key_params: codec.key_params(),
            value_params: codec.value_params(),
            key_block: vec![0; kb],
            value_block: vec![0; vb],
        }))
    }

    fn splice(&mut self, b: usize, own_k: &[u8], own_v: &[u8]) -> (&[u8], &[u8]) {
        let (kb, vb) = (self.key_block.len(), self.value_block.len());
        let lent_k = &self.keys[b * kb..][..kb];
        let lent_v = &self.values[b * vb..][..vb];
        crate::borrow::splice(self.key_params, own_k, lent_k, &mut self.key_block);
        crate::borrow::splice(self.value_params, own_v, lent_v, &mut self.value_block);
        (&self.key_block, &self.value_block)
    }
}

fn short(what: &'static str, expected: usize, actual: usize) -> Error {
    Error::ShapeMismatch {
        what,
        expected,
        actual,
    }
}

fn locate(e: Error, base: usize) -> Error {
    match e {
        Error::Corrupt { what, offset } => Error::Corrupt {
            what,
            offset: base + offset,
        },
        other => other,
    }
}

/// Little-endian f32 queries, multiplied by the softmax scale; rejects non-finite values.
fn read_queries(bytes: &[u8], nq: usize, d: usize, scale: f32) -> Result<Vec<f32>> {
    if bytes.len() != nq * d * 4 || nq == 0 {
        return Err(short(
            "attention queries ([query_heads ≥ 1, head_dim] f32)",
            nq.max(1) * d * 4,
            bytes.len(),
        ));
    }
    let q: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) * scale)
        .collect();
    if let Some(index) = q.iter().position(|x| !x.is_finite()) {
        return Err(Error::NonFinite { index });
    }
    Ok(q)
}

/// The online-softmax state of the job's queries, plus the block's score/weight rows.
struct Online {
    nq: usize,
    d: usize,
    /// Running maximum score per query.
    m: Vec<f32>,
    /// Running sum of weights per query.
    l: Vec<f32>,
    /// `[nq, d]` running weighted value sums.
    acc: Vec<f32>,
    /// `[nq, stride]`: a tile's scores, turned into weights by [`Self::absorb`].
    scores: Vec<f32>,
    stride: usize,
}

impl Online {
    fn new(nq: usize, d: usize, stride: usize) -> Self {
        Self {
            nq,
            d,
            m: vec![f32::NEG_INFINITY; nq],
            l: vec![0.0; nq],
            acc: vec![0.0; nq * d],
            scores: vec![0.0; nq * stride],
            stride,
        }
    }

    /// Turns the first `n` scores of every query row into weights `exp(s − m)`, updating the
    /// running max (rescaling the sums when it grows) and the running sum.
    fn absorb(&mut self, n: usize) {
        for q in 0..self.nq {
            let s = &mut self.scores[q * self.stride..][..n];
            let block_max = max_of(s);
            if block_max > self.m[q] {
                let corr = if self.m[q] == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp(self.m[q] - block_max)
                };
                self.l[q] *= corr;
                self.acc[q * self.d..][..self.d]
                    .iter_mut()
                    .for_each(|a| *a *= corr);
                self.m[q] = block_max;
            }
            let m = self.m[q];
            s.iter_mut().for_each(|x| *x = exp(*x - m));
            self.l[q] += sum_of(s);
        }
    }

    /// `acc / l` per query (zeros for a query that saw no token).
    fn finish(&self) -> Vec<f32> {
        let mut out = self.acc.clone();
        for (row, &l) in out.chunks_exact_mut(self.d).zip(&self.l) {
            let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
            row.iter_mut().for_each(|x| *x *= inv);
        }
        out
    }
}

/// `e^x` for `x ≤ 0` (and modest positive x), branch-free so that loops over it vectorize:
/// Cody–Waite reduction to `r ∈ [−ln2/2, ln2/2]` and a degree-6 Taylor polynomial (relative error
/// below 2e-7); inputs below −87 give `e^−87` ≈ 1.6e-38.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = core::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding and subtracting rounds to an integer
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    f32::from_bits(((n as i32 + 127) as u32) << 23) * p
}

#[inline]
fn max_of(s: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        for (m, &x) in lanes.iter_mut().zip(c) {
            *m = if x > *m { x } else { *m };
        }
    }
    let mut m = lanes
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a });
    for &x in chunks.remainder() {
        m = if x > m { x } else { m };
    }
    m
}

#[inline]
fn sum_of(s: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = s.chunks_exact(8);
    for c in &mut chunks {
        for (a, &x) in lanes.iter_mut().zip(c) {
            *a += x;
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>()
}

/// `Σ a_i·b_i` with eight partial sums (so that it vectorizes without reassociation).
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (ca, ta) = a[..n].as_chunks::<8>();
    let (cb, tb) = b[..n].as_chunks::<8>();
    let mut lanes = [0.0f32; 8];
    for (x, y) in ca.iter().zip(cb) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ta.iter().zip(tb).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `y += a·x`.
#[inline]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, &x)| *y += a * x);
}

// ---- lookup tables --------------------------------------------------------------------------

/// The four 2-bit codes of a byte, as floats.
static CODES2: [[f32; 4]; 256] = {
    let mut t = [[0.0f32; 4]; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 4 {
            t[b][i] = ((b >> (2 * i)) & 3) as f32;
            i += 1;
        }
        b += 1;
    }
    t
};

/// The two 4-bit codes of a byte, as floats.
static CODES4: [[f32; 2]; 256] = {
    let mut t = [[0.0f32; 2]; 256];
    let mut b = 0;
    while b < 256 {
        t[b][0] = (b & 15) as f32;
        t[b][1] = (b >> 4) as f32;
        b += 1;
    }
    t
};

/// The eight bits of a byte, as 0.0 / 1.0.
static BITS: [[f32; 8]; 256] = {
    let mut t = [[0.0f32; 8]; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            t[b][i] = ((b >> i) & 1) as f32;
            i += 1;
        }
        b += 1;
    }
    t
};

/// The five trits of a byte, as −1.0 / 0.0 / +1.0 (bytes above 242 are rejected before use).
static TRITS: [[f32; 5]; 256] = {
    let mut t = [[0.0f32; 5]; 256];
    let mut b = 0;
    while b <= MAX_TRIT_BYTE as usize {
        let mut rest = b;
        let mut i = 0;
        while i < 5 {
            t[b][i] = (rest % 3) as f32 - 1.0;
            rest /= 3;
            i += 1;
        }
        b += 1;
    }
    t
};

/// Bit i of a byte moved to bit 4i.
static SPREAD: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut b = 0;
    while b < 256 {
        let mut i = 0;
        while i < 8 {
            t[b] |= (((b >> i) & 1) as u32) << (4 * i);
            i += 1;
        }
        b += 1;
    }
    t
};

/// The five base-3 digits (trit + 1) of a byte in the low five byte lanes of a u64, so that
/// `Σ_i 3^i·DIGITS[byte_i]` computes five 4-token patterns at once without carries between lanes
/// (each lane stays below 81). Bytes above 242 are rejected before use.
static DIGITS: [u64; 256] = {
    let mut t = [0u64; 256];
    let mut b = 0;
    while b <= MAX_TRIT_BYTE as usize {
        let mut rest = b;
        let mut i = 0;
        while i < 5 {
            t[b] |= ((rest % 3) as u64) << (8 * i);
            rest /= 3;
            i += 1;
        }
        b += 1;
    }
    t
};

/// Unpacks a stream of `bits`-bit codes into floats (`out.len()` codes).
#[inline(never)]
fn unpack_f32(bits: u32, bytes: &[u8], out: &mut [f32]) {
    match bits {
        2 => unpack_with(&CODES2, bytes, out),
        4 => unpack_with(&CODES4, bytes, out),
        _ => unpack_with(&BITS, bytes, out),
    }
}

#[inline]
fn unpack_with<const N: usize>(table: &[[f32; N]; 256], bytes: &[u8], out: &mut [f32]) {
    let whole = out.len() / N;
    let mut chunks = out.chunks_exact_mut(N);
    for (o, &b) in (&mut chunks).zip(bytes) {
        let o: &mut [f32; N] = o.try_into().expect("chunks of N");
        *o = table[usize::from(b)];
    }
    let rest = chunks.into_remainder();
    if let Some(&b) = bytes.get(whole) {
        let n = rest.len();
        rest.copy_from_slice(&table[usize::from(b)][..n]);
    }
}

// ---- keys -----------------------------------------------------------------------------------

/// Reads `n` f16 values of a section into `out` and checks each is finite and, if `non_negative`,
/// has no sign bit (as encoders write scales and steps).
#[inline(never)]
fn read_f16s(
    bytes: &[u8],
    out: &mut [f32],
    halves: &mut [f16],
    check: impl Fn(usize) -> bool,
    what: &'static str,
    offset: usize,
) -> Result<()> {
    let n = out.len();
    let halves = &mut halves[..n];
    let mut bad = false;
    for (i, (h, c)) in halves.iter_mut().zip(bytes.chunks_exact(2)).enumerate() {
        let bits = u16::from_le_bytes([c[0], c[1]]);
        bad |= bits & 0x7c00 == 0x7c00 || (check(i) && bits & 0x8000 != 0);
        *h = f16::from_bits(bits);
    }
    halves.convert_to_f32_slice(out);
    if bad {
        let i = (0..n)
            .find(|&i| !halves[i].is_finite() || (check(i) && halves[i].is_sign_negative()))
            .unwrap_or(0);
        return Err(Error::Corrupt {
            what,
            offset: offset + 2 * i,
        });
    }
    Ok(())
}

/// Reads `lo.len()` [`vidkv_core::AffineParams`] (f16 pairs) into `lo` and `step`.
fn read_affine(
    section: &[u8],
    offset: usize,
    lo: &mut [f32],
    step: &mut [f32],
    tmp: &mut [f32],
    halves: &mut [f16],
) -> Result<()> {
    let n = lo.len();
    read_f16s(
        &section[..4 * n],
        &mut tmp[..2 * n],
        halves,
        |i| i % 2 == 1,
        "affine parameters not finite or step negative",
        offset,
    )?;
    for (i, pair) in tmp[..2 * n].chunks_exact(2).enumerate() {
        lo[i] = pair[0];
        step[i] = pair[1];
    }
    Ok(())
}

/// Query heads per KV head from which the lookup-table passes ("four Russians") pay off.
const TABLES_FROM: usize = 4;

/// Tokens per lookup-table group in the ternary value pass (3⁴ = 81 patterns).
const TG: usize = 4;

/// Queries per lane vector: query-indexed quantities are kept as `[f32; QW]` rows, one per
/// channel or lane, so that per-block preparation runs eight queries per operation.
const QW: usize = 8;

/// Scores a key block for all queries.
struct KeyScorer {
    nq: usize,
    d: usize,
    /// Chunks of [`QW`] queries.
    chunks: usize,
    /// Transposed queries (already scaled): `qt[ch·d + c][j]` = query `ch·QW + j` at channel c
    /// (zero for padding).
    qt: Vec<[f32; QW]>,
    /// Per chunk: the constant part of every token's score in the current block.
    constant: Vec<[f32; QW]>,
    /// `[chunks, channels]` code weights `q_c·step_c` of the current block.
    code_w: Vec<[f32; QW]>,
    lo: Vec<f32>,
    step: Vec<f32>,
    tmp: Vec<f32>,
    halves: Vec<f16>,
    /// Unpacked codes of one block, `[channels, G]`.
    codes: Vec<f32>,
    mixed: Option<MixedState>,
    /// The scaled queries `[nq, D]` and one traced key row (OTT).
    queries: Vec<f32>,
    traced_row: Vec<f32>,
    traced: Vec<(usize, usize)>,
    sketch: Option<SketchScorer>,
}

/// What mixed-precision keys need beyond per-channel keys: the adjoint weights per mask.
struct MixedState {
    transform: LaneTransform,
    /// Lane j decodes to `s_j·(ca_j + cb_j·bit)` (every lane rule is linear in the scale).
    ca: Vec<f32>,
    cb: Vec<f32>,
    mask: Option<ChannelMask>,
    outliers: Vec<usize>,
    normals: Vec<usize>,
    /// `[chunks, M]` adjoint weights `T⁻ᵀ(q_normal)` for `mask`.
    weights: Vec<[f32; QW]>,
    /// `[chunks, M]` bit weights `w_j·cb_j·s_j` of the current block.
    bit_w: Vec<[f32; QW]>,
    scales: Vec<f32>,
    /// Unpacked lane bits of one block, `[M, G]` (direct path).
    bits: Vec<f32>,
    /// Lookup tables (one per group of four lanes), 4-bit patterns `[G/8, ⌈M/4⌉]` and
    /// token-major lane scores `[G]` of one chunk of queries (table path).
    lane_table: Vec<[[f32; QW]; 16]>,
    nibbles: Vec<u32>,
    lane_scores: Vec<[f32; QW]>,
    gathered: Vec<[f32; QW]>,
    scratch: Vec<f32>,
}

impl KeyScorer {
    fn new(codec: &Codec, q: &[f32], nq: usize) -> Self {
        let (d, g) = (codec.head_dim(), codec.group());
        let chunks = nq.div_ceil(QW);
        let mut qt = vec![[0.0f32; QW]; chunks * d];
        for (qi, row) in q.chunks_exact(d).enumerate() {
            for (c, &x) in row.iter().enumerate() {
                qt[qi / QW * d + c][qi % QW] = x;
            }
        }
        let mixed = match codec.config().keys {
            KeyScheme::Mixed(keys) => {
                let transform = lane_transform(codec, keys);
                let m = transform.len();
                let ca: Vec<f32> = (0..m)
                    .map(|j| lane_value(keys.lane_rule, j, 0, 1.0))
                    .collect();
                let cb: Vec<f32> = (0..m)
                    .map(|j| lane_value(keys.lane_rule, j, 1, 1.0) - ca[j])
                    .collect();
                Some(MixedState {
                    transform,
                    ca,
                    cb,
                    mask: None,
                    outliers: Vec::with_capacity(d),
                    normals: Vec::with_capacity(d),
                    weights: vec![[0.0; QW]; chunks * m],
                    bit_w: vec![[0.0; QW]; chunks * m],
                    scales: vec![0.0; m],
                    bits: vec![0.0; m * g],
                    lane_table: vec![[[0.0; QW]; 16]; m.div_ceil(4)],
                    nibbles: vec![0; m.div_ceil(4) * g / 8],
                    lane_scores: vec![[0.0; QW]; g],
                    gathered: vec![[0.0; QW]; m],
                    scratch: Vec::new(),
                })
            }
            KeyScheme::PerChannel { .. } | KeyScheme::SignSketch { .. } => None,
        };
        Self {
            nq,
            d,
            chunks,
            qt,
            constant: vec![[0.0; QW]; chunks],
            code_w: vec![[0.0; QW]; chunks * d],
            lo: vec![0.0; d],
            step: vec![0.0; d],
            tmp: vec![0.0; 2 * d],
            halves: vec![f16::ZERO; 2 * d],
            codes: vec![0.0; d * g],
            mixed,
            queries: q.to_vec(),
            traced_row: vec![0.0; d],
            traced: Vec::with_capacity(usize::from(codec.config().traced_tokens)),
            sketch: None,
        }
    }

    /// Replaces the scores of the block's traced tokens (OTT) by exact dots with their f16 rows.
    #[inline(never)]
    fn patch_traced<const G: usize>(
        &mut self,
        codec: &Codec,
        block: &[u8],
        scores: &mut [f32],
    ) -> Result<()> {
        let Some(layout) = codec.traced_layout() else {
            return Ok(());
        };
        let d = self.d;
        layout.tokens_into(block, G, &mut self.traced)?;
        for &(slot, t) in &self.traced {
            layout.row(block, slot, d, &mut self.traced_row)?;
            for (q, row) in scores.chunks_exact_mut(G).enumerate().take(self.nq) {
                row[t] = dot(&self.queries[q * d..][..d], &self.traced_row);
            }
        }
        Ok(())
    }

    /// Constants and code weights of `n` code channels (their parameters start the section, in
    /// this order): the channels `channels`, or `0..n` for `None`.
    #[inline(never)]
    fn code_channels(
        &mut self,
        section: &[u8],
        offset: usize,
        channels: Option<&[usize]>,
        n: usize,
    ) -> Result<()> {
        let d = self.d;
        read_affine(
            section,
            offset,
            &mut self.lo[..n],
            &mut self.step[..n],
            &mut self.tmp,
            &mut self.halves,
        )?;
        for ch in 0..self.chunks {
            let qt = &self.qt[ch * d..][..d];
            let mut constant = [0.0f32; QW];
            let weights = &mut self.code_w[ch * n..][..n];
            for (i, ((w, &lo), &step)) in
                weights.iter_mut().zip(&self.lo).zip(&self.step).enumerate()
            {
                let q = qt[channels.map_or(i, |c| c[i])];
                constant = core::array::from_fn(|j| constant[j] + q[j] * lo);
                *w = q.map(|x| x * step);
            }
            self.constant[ch] = constant;
        }
        Ok(())
    }

    /// Writes the block's scores into `scores` (`[nq, G]`): codes first, then the traced tokens.
    fn score<const G: usize>(
        &mut self,
        codec: &Codec,
        block: &[u8],
        scores: &mut [f32],
    ) -> Result<()> {
        self.score_codes::<G>(codec, block, scores)?;
        self.patch_traced::<G>(codec, block, scores)
    }

    /// The scores of every token from the block's codes.
    #[inline(never)]
    fn score_codes<const G: usize>(
        &mut self,
        codec: &Codec,
        block: &[u8],
        scores: &mut [f32],
    ) -> Result<()> {
        match *codec.key_layout() {
            KeyLayout::PerChannel {
                bits,
                params,
                codes,
            } => {
                let d = self.d;
                self.code_channels(&block[params.range()], params.offset, None, d)?;
                unpack_f32(bits.get(), &block[codes.range()], &mut self.codes[..d * G]);
                self.weighted_rows::<G>(d, scores);
                Ok(())
            }
            KeyLayout::Mixed {
                outliers: k,
                lanes,
                mask,
                outlier_params,
                lane_scales,
                outlier_codes,
                lane_bits,
            } => {
                let chosen = ChannelMask::read(&block[mask.range()], self.d, k)?;
                let mut st = self.mixed.take().expect("mixed keys have a mixed state");
                if st.mask != Some(chosen) {
                    st.set_mask(chosen, &self.qt, self.chunks, self.d);
                }
                let result = self.mixed_block::<G>(
                    &mut st,
                    block,
                    k,
                    lanes,
                    scores,
                    [outlier_params, lane_scales, outlier_codes, lane_bits],
                );
                self.mixed = Some(st);
                result
            }
            KeyLayout::SignSketch { bits, norms, signs } => {
                let st = self
                    .sketch
                    .as_mut()
                    .expect("sign-sketch keys have a sketch state");
                st.score::<G>(
                    bits,
                    &block[norms.range()],
                    norms.offset,
                    &block[signs.range()],
                    scores,
                )
            }
        }
    }

    fn mixed_block<const G: usize>(
        &mut self,
        st: &mut MixedState,
        block: &[u8],
        k: usize,
        lanes: usize,
        scores: &mut [f32],
        [outlier_params, lane_scales, outlier_codes, lane_bits]: [vidkv_core::Section; 4],
    ) -> Result<()> {
        // Outliers: constant Σ q_c·lo_c, code weights q_c·step_c.
        self.code_channels(
            &block[outlier_params.range()],
            outlier_params.offset,
            Some(&st.outliers),
            k,
        )?;
        // Lanes: w·ẑ = Σ_j w_j·ca_j·s_j + Σ_j w_j·cb_j·s_j·bit_j.
        read_f16s(
            &block[lane_scales.range()],
            &mut st.scales,
            &mut self.halves,
            |_| true,
            "lane scale not finite and non-negative",
            lane_scales.offset,
        )?;
        for ch in 0..self.chunks {
            let mut constant = self.constant[ch];
            let weights = &st.weights[ch * lanes..][..lanes];
            let bw = &mut st.bit_w[ch * lanes..][..lanes];
            let coefficients = st.ca.iter().zip(&st.cb).zip(&st.scales);
            for ((bw, w), ((&ca, &cb), &s)) in bw.iter_mut().zip(weights).zip(coefficients) {
                let (a, b) = (ca * s, cb * s);
                constant = core::array::from_fn(|j| constant[j] + w[j] * a);
                *bw = w.map(|x| x * b);
            }
            self.constant[ch] = constant;
        }
        unpack_f32(2, &block[outlier_codes.range()], &mut self.codes[..k * G]);
        self.weighted_rows::<G>(k, scores);
        if self.nq >= TABLES_FROM {
            st.lane_tables::<G>(self.nq, lanes, &block[lane_bits.range()], scores);
        } else {
            unpack_f32(1, &block[lane_bits.range()], &mut st.bits[..lanes * G]);
            for (q, out) in scores.chunks_exact_mut(G).enumerate().take(self.nq) {
                let out: &mut [f32; G] = out.try_into().expect("rows of G scores");
                let weights = &st.bit_w[q / QW * lanes..][..lanes];
                accumulate_rows::<G>(weights, q % QW, &st.bits, out);
            }
        }
        Ok(())
    }

    /// `scores[q][t] = constant[q] + Σ_i code_w[q][i]·codes[i][t]` for `n` code channels.
    #[inline(never)]
    fn weighted_rows<const G: usize>(&self, n: usize, scores: &mut [f32]) {
        for (q, out) in scores.chunks_exact_mut(G).enumerate().take(self.nq) {
            let out: &mut [f32; G] = out.try_into().expect("rows of G scores");
            out.fill(self.constant[q / QW][q % QW]);
            let weights = &self.code_w[q / QW * n..][..n];
            accumulate_rows::<G>(weights, q % QW, &self.codes, out);
        }
    }
}

/// Scores sign-sketch keys (H1B-KV) with the SimHash estimator
/// `score = scale·‖q‖·‖k_t‖·cos(π·h/b)`, `h` the Hamming distance of `sign(R·q)` and the key's
/// signs, over `u64` words with `count_ones` (POPCNT).
struct SketchScorer {
    /// Query sign rows as little-endian `u64` words, `[nq, b/64]`.
    words: Vec<u64>,
    /// `scale·‖q‖` per query.
    qnorm: Vec<f32>,
    /// `cos(π·h/b)` for `h = 0 ..= b`.
    cos: Vec<f32>,
    norms: Vec<f32>,
}

impl SketchScorer {
    fn new(projection: &Projection, raw: &[f32], nq: usize, d: usize, scale: f32) -> Self {
        let mut words = Vec::with_capacity(nq * projection.bits() / 64);
        let mut qnorm = Vec::with_capacity(nq);
        for q in raw.chunks_exact(d) {
            let sk = QuerySketch::new(projection, q);
            words.extend(sign_words(&sk.signs));
            qnorm.push((f64::from(scale) * sk.norm) as f32);
        }
        Self {
            words,
            qnorm,
            cos: cos_table(projection.bits()),
            norms: Vec::new(),
        }
    }

    #[inline(never)]
    fn score<const G: usize>(
        &mut self,
        bits: usize,
        norms: &[u8],
        norms_offset: usize,
        signs: &[u8],
        scores: &mut [f32],
    ) -> Result<()> {
        self.norms.resize(G, 0.0);
        read_norms(norms, norms_offset, &mut self.norms)?;
        let nw = bits / 64;
        for (t, row) in signs.chunks_exact(bits / 8).enumerate().take(G) {
            let key = sign_words(row);
            let nt = self.norms[t];
            for (q, qw) in self.words.chunks_exact(nw).enumerate() {
                let h: u32 = qw
                    .iter()
                    .zip(key.clone())
                    .map(|(a, b)| (a ^ b).count_ones())
                    .sum();
                scores[q * G + t] = self.qnorm[q] * nt * self.cos[h as usize];
            }
        }
        Ok(())
    }
}

/// A packed sign row as little-endian `u64` words.
#[inline(always)]
fn sign_words(row: &[u8]) -> impl Iterator<Item = u64> + Clone + '_ {
    row.as_chunks::<8>()
        .0
        .iter()
        .map(|w| u64::from_le_bytes(*w))
}

impl MixedState {
    /// Adds the lane part of the scores with lookup tables ("four Russians"): for each group of
    /// four lanes, a table of the 16 bit patterns holds `Σ_i bit_i·bit_w_i` for [`QW`] queries,
    /// so a token costs one table row per four lanes instead of four multiply-adds per query.
    #[inline(never)]
    fn lane_tables<const G: usize>(
        &mut self,
        nq: usize,
        m: usize,
        lane_bits: &[u8],
        scores: &mut [f32],
    ) {
        let groups = m.div_ceil(4);
        let bpl = G / 8;
        // Per byte of tokens b and group g, at b·groups + g: eight 4-bit patterns (token 8b + i
        // at bits 4i..4i+4).
        for (b, words) in self.nibbles.chunks_exact_mut(groups).enumerate().take(bpl) {
            for (g, w) in words.iter_mut().enumerate() {
                *w = 0;
                for i in 0..(m - 4 * g).min(4) {
                    *w |= SPREAD[usize::from(lane_bits[(4 * g + i) * bpl + b])] << i;
                }
            }
        }
        for ch in 0..nq.div_ceil(QW) {
            let weights = &self.bit_w[ch * m..][..m];
            for (g, table) in self.lane_table.iter_mut().enumerate().take(groups) {
                table[0] = [0.0; QW];
                for i in 0..4 {
                    let w = weights.get(4 * g + i).copied().unwrap_or([0.0; QW]);
                    let bit = 1 << i;
                    for b in 0..bit {
                        let row = table[b];
                        table[bit + b] = core::array::from_fn(|j| row[j] + w[j]);
                    }
                }
            }
            let tables = &self.lane_table[..groups];
            for (b, words) in self.nibbles.chunks_exact(groups).enumerate().take(bpl) {
                for i in 0..8 {
                    let mut acc = [0.0f32; QW];
                    for (table, &w) in tables.iter().zip(words) {
                        let row = &table[((w >> (4 * i)) & 15) as usize];
                        acc = core::array::from_fn(|j| acc[j] + row[j]);
                    }
                    self.lane_scores[8 * b + i] = acc;
                }
            }
            for j in 0..QW.min(nq - ch * QW) {
                let out = &mut scores[(ch * QW + j) * G..][..G];
                for (o, l) in out.iter_mut().zip(&self.lane_scores) {
                    *o += l[j];
                }
            }
        }
    }

    /// Channel lists and adjoint weights of a new outlier mask.
    #[inline(never)]
    fn set_mask(&mut self, mask: ChannelMask, qt: &[[f32; QW]], chunks: usize, d: usize) {
        self.outliers.clear();
        self.normals.clear();
        for (w, &word) in mask.words.iter().enumerate().take(d.div_ceil(32)) {
            let live = if 32 * (w + 1) <= d {
                u32::MAX
            } else {
                (1u32 << (d - 32 * w)) - 1
            };
            for (set, list) in [
                (word, &mut self.outliers),
                (!word & live, &mut self.normals),
            ] {
                let mut bits = set & live;
                while bits != 0 {
                    list.push(32 * w + bits.trailing_zeros() as usize);
                    bits &= bits - 1;
                }
            }
        }
        // Normals must be ascending: the loop above visits words in order, each word's bits in
        // order, and the two lists separately.
        let m = self.normals.len();
        for ch in 0..chunks {
            let qt = &qt[ch * d..][..d];
            for (g, &c) in self.gathered.iter_mut().zip(&self.normals) {
                *g = qt[c];
            }
            self.transform.inverse_adjoint_lanes(
                &self.gathered,
                &mut self.weights[ch * m..][..m],
                &mut self.scratch,
            );
        }
        self.mask = Some(mask);
    }
}

/// `out[t] += Σ_i weights[i][lane]·rows[i][t]`.
#[inline]
fn accumulate_rows<const G: usize>(
    weights: &[[f32; QW]],
    lane: usize,
    rows: &[f32],
    out: &mut [f32; G],
) {
    let mut acc = *out;
    for (w, row) in weights.iter().zip(rows.chunks_exact(G)) {
        let w = w[lane];
        let row: &[f32; G] = row.try_into().expect("rows of G codes");
        for t in 0..G {
            acc[t] += w * row[t];
        }
    }
    *out = acc;
}

// ---- values ---------------------------------------------------------------------------------

/// Accumulates a value block's weighted values for all queries.
struct ValueAccumulator {
    nq: usize,
    d: usize,
    /// Unpacked block: `[G, row]` floats (trits or codes).
    rows: Vec<f32>,
    row: usize,
    /// `[d]` per-block sums of one query before the per-channel scale.
    block: Vec<f32>,
    /// Ternary table path: patterns `[G/4, ⌈d/5⌉·5]` (+3 bytes slack), one
    /// table per group of four tokens, token-major weights `[G]` and per-channel sums `[d]`.
    patterns: Vec<u8>,
    tables: Vec<[[f32; QW]; 81]>,
    weights: Vec<[f32; QW]>,
    sums: Vec<[f32; QW]>,
    scales: Vec<f32>,
    lo: Vec<f32>,
    tmp: Vec<f32>,
    halves: Vec<f16>,
}

impl ValueAccumulator {
    fn new(codec: &Codec, nq: usize) -> Self {
        let (d, g) = (codec.head_dim(), codec.group());
        let row = match codec.value_layout() {
            ValueLayout::Ternary { .. } => trit_row_bytes(d) * 5,
            _ => d,
        };
        Self {
            nq,
            d,
            rows: vec![0.0; g * row],
            row,
            block: vec![0.0; d],
            patterns: vec![0; g / TG * trit_row_bytes(d) * 5 + 3],
            tables: vec![[[0.0; QW]; 81]; g / TG],
            weights: vec![[0.0; QW]; g],
            sums: vec![[0.0; QW]; d],
            scales: vec![0.0; d],
            lo: vec![0.0; d],
            tmp: vec![0.0; 2 * d],
            halves: vec![f16::ZERO; 2 * d],
        }
    }

    /// `p` is `[nq, G]` weights; `excluded` has bit t set for salient tokens (handled elsewhere).
    #[inline(never)]
    fn add<const G: usize>(
        &mut self,
        codec: &Codec,
        block: &[u8],
        excluded: u128,
        p: &[f32],
        acc: &mut [f32],
    ) -> Result<()> {
        let (d, nq, row) = (self.d, self.nq, self.row);
        match *codec.value_layout() {
            ValueLayout::Ternary { scales, trits } => {
                read_f16s(
                    &block[scales.range()],
                    &mut self.scales,
                    &mut self.halves,
                    |_| true,
                    "ternary scale not finite and non-negative",
                    scales.offset,
                )?;
                let bytes = &block[trits.range()];
                let worst = bytes.iter().fold(0u8, |m, &b| m.max(b));
                if worst > MAX_TRIT_BYTE {
                    let at = bytes.iter().position(|&b| b > MAX_TRIT_BYTE).unwrap_or(0);
                    return Err(Error::Corrupt {
                        what: "trit byte above 242",
                        offset: trits.offset + at,
                    });
                }
                // Salient tokens carry trit 0: nothing to exclude. The scale once per block.
                if nq >= TABLES_FROM {
                    self.ternary_tables::<G>(bytes, p, acc);
                    return Ok(());
                }
                for (b, o) in bytes.iter().zip(self.rows.chunks_exact_mut(5)) {
                    let o: &mut [f32; 5] = o.try_into().expect("chunks of 5");
                    *o = TRITS[usize::from(*b)];
                }
                for (q, a) in acc.chunks_exact_mut(d).enumerate().take(nq) {
                    let blk = &mut self.block[..d];
                    blk.fill(0.0);
                    accumulate_tokens(&p[q * G..][..G], &self.rows, row, blk);
                    for ((a, b), s) in a.iter_mut().zip(blk.iter()).zip(&self.scales) {
                        *a += b * s;
                    }
                }
            }
            ValueLayout::PerChannel {
                bits,
                params,
                codes,
            } => {
                read_affine(
                    &block[params.range()],
                    params.offset,
                    &mut self.lo,
                    &mut self.scales,
                    &mut self.tmp,
                    &mut self.halves,
                )?;
                unpack_f32(bits.get(), &block[codes.range()], &mut self.rows[..G * d]);
                for (q, a) in acc.chunks_exact_mut(d).enumerate().take(nq) {
                    let pq = &p[q * G..][..G];
                    let blk = &mut self.block[..d];
                    blk.fill(0.0);
                    accumulate_tokens(pq, &self.rows, d, blk);
                    let psum: f32 = (0..G)
                        .filter(|&t| excluded >> t & 1 == 0)
                        .map(|t| pq[t])
                        .sum();
                    for (((a, b), lo), s) in
                        a.iter_mut().zip(blk.iter()).zip(&self.lo).zip(&self.scales)
                    {
                        *a += lo * psum + s * b;
                    }
                }
            }
            ValueLayout::PerToken {
                bits,
                channel_group,
                params,
                codes,
            } => {
                let groups = d.div_ceil(channel_group);
                unpack_f32(bits.get(), &block[codes.range()], &mut self.rows[..G * d]);
                for t in (0..G).filter(|&t| excluded >> t & 1 == 0) {
                    let codes = &self.rows[t * d..][..d];
                    for gi in 0..groups {
                        let pr =
                            read_params(&block[params.range()], t * groups + gi, params.offset)?;
                        let (lo, step) = (pr.lo.to_f32(), pr.step.to_f32());
                        let span = gi * channel_group..((gi + 1) * channel_group).min(d);
                        for q in 0..nq {
                            let pt = p[q * G + t];
                            let (plo, pstep) = (pt * lo, pt * step);
                            acc[q * d..][span.clone()]
                                .iter_mut()
                                .zip(&codes[span.clone()])
                                .for_each(|(a, &code)| *a += plo + pstep * code);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl ValueAccumulator {
    /// The ternary pass with lookup tables ("four Russians"): for every group of four tokens, a
    /// table of the 81 trit patterns a channel can have holds `Σ_i p_{q,t_i}·trit_i` for [`QW`]
    /// queries; each channel then costs one table row per four tokens instead of four
    /// multiply-adds per query.
    #[inline(never)]
    fn ternary_tables<const G: usize>(&mut self, trits: &[u8], p: &[f32], acc: &mut [f32]) {
        let (d, nq) = (self.d, self.nq);
        let dp = trit_row_bytes(d) * 5;
        let groups = G / TG;
        // Patterns of four tokens, five channels per trit byte (u64 byte lanes). The buffer has
        // three bytes of slack for the eight-byte stores.
        let rb = trit_row_bytes(d);
        for (g, rows) in trits.chunks_exact(TG * rb).enumerate().take(groups) {
            let (r0, r1) = (&rows[..rb], &rows[rb..2 * rb]);
            let (r2, r3) = (&rows[2 * rb..3 * rb], &rows[3 * rb..4 * rb]);
            let out = &mut self.patterns[g * dp..][..dp + 3];
            for (i, (((&b0, &b1), &b2), &b3)) in r0.iter().zip(r1).zip(r2).zip(r3).enumerate() {
                let lanes = DIGITS[usize::from(b0)]
                    + 3 * DIGITS[usize::from(b1)]
                    + 9 * DIGITS[usize::from(b2)]
                    + 27 * DIGITS[usize::from(b3)];
                out[5 * i..5 * i + 8].copy_from_slice(&lanes.to_le_bytes());
            }
        }
        for ch in 0..nq.div_ceil(QW) {
            let width = QW.min(nq - ch * QW);
            for (t, w) in self.weights.iter_mut().enumerate() {
                *w = core::array::from_fn(|j| {
                    if j < width {
                        p[(ch * QW + j) * G + t]
                    } else {
                        0.0
                    }
                });
            }
            // Level by level: T[a + n·digit] = T[a] + (digit − 1)·p_level.
            for (table, w) in self.tables.iter_mut().zip(self.weights.chunks_exact(TG)) {
                table[0] = w[0].map(|x| -x);
                table[1] = [0.0; QW];
                table[2] = w[0];
                extend_table::<3>(table, &w[1]);
                extend_table::<9>(table, &w[2]);
                extend_table::<27>(table, &w[3]);
            }
            let tables = &self.tables[..groups];
            for (c, sum) in self.sums.iter_mut().enumerate() {
                let mut s = [0.0f32; QW];
                for (g, table) in tables.iter().enumerate() {
                    let row = &table[usize::from(self.patterns[g * dp + c])];
                    s = core::array::from_fn(|j| s[j] + row[j]);
                }
                *sum = s;
            }
            for j in 0..width {
                let a = &mut acc[(ch * QW + j) * d..][..d];
                for ((a, sum), &scale) in a.iter_mut().zip(&self.sums).zip(&self.scales) {
                    *a += sum[j] * scale;
                }
            }
        }
    }
}

/// One level of a ternary table: rows `a < N` become `T[a] − w`, `T[a + N] = T[a]`,
/// `T[a + 2N] = T[a] + w`.
#[inline(always)]
fn extend_table<const N: usize>(table: &mut [[f32; QW]; 81], w: &[f32; QW]) {
    for a in 0..N {
        let base = table[a];
        table[a + N] = base;
        table[a + 2 * N] = core::array::from_fn(|j| base[j] + w[j]);
        table[a] = core::array::from_fn(|j| base[j] - w[j]);
    }
}

/// `out[c] += Σ_t p[t]·rows[t·stride + c]` for `c < out.len()`, in register-sized channel
/// chunks (the accumulators stay in registers while the tokens stream by). Always inlined, so
/// SIMD kernels that call it compile it with their own target features.
#[inline(always)]
pub fn accumulate_tokens(p: &[f32], rows: &[f32], stride: usize, out: &mut [f32]) {
    let d = out.len();
    let mut c = 0;
    while c + 32 <= d {
        accumulate_chunk::<32>(p, rows, stride, c, out);
        c += 32;
    }
    while c + 8 <= d {
        accumulate_chunk::<8>(p, rows, stride, c, out);
        c += 8;
    }
    for c in c..d {
        out[c] += p
            .iter()
            .enumerate()
            .map(|(t, &pt)| pt * rows[t * stride + c])
            .sum::<f32>();
    }
}

#[inline(always)]
fn accumulate_chunk<const N: usize>(
    p: &[f32],
    rows: &[f32],
    stride: usize,
    c: usize,
    out: &mut [f32],
) {
    let out: &mut [f32; N] = (&mut out[c..c + N]).try_into().expect("chunk of N");
    let mut acc = *out;
    for (t, &pt) in p.iter().enumerate() {
        let r: &[f32; N] = rows[t * stride + c..][..N].try_into().expect("chunk of N");
        for i in 0..N {
            acc[i] += pt * r[i];
        }
    }
    *out = acc;
}

// ---- salient tokens -------------------------------------------------------------------------

/// Reads salient masks and values while the blocks are visited in order.
struct SalientReader<'a> {
    codec: Codec,
    masks: &'a [u8],
    groups: &'a [u8],
    group_count: usize,
    pending: &'a [u8],
    pending_len: usize,
    /// Salient tokens seen so far (the rank of the next one).
    seen: usize,
    /// Decoded (lo, step) of the group in `current`.
    current: Option<usize>,
    lo: Vec<f32>,
    step: Vec<f32>,
    value: Vec<f32>,
}

impl<'a> SalientReader<'a> {
    fn new(codec: &Codec, s: &'a SalientArgs<'_, Vec<u8>>, blocks: usize) -> Result<Self> {
        let (d, g) = (codec.head_dim(), codec.group());
        let sc = salient_codec(codec);
        let masks = s.masks.get(..blocks * g / 8).ok_or(short(
            "salient masks",
            blocks * g / 8,
            s.masks.len(),
        ))?;
        let groups = s
            .groups
            .get(..s.group_count * sc.value_block_bytes())
            .ok_or(short(
                "salient groups",
                s.group_count * sc.value_block_bytes(),
                s.groups.len(),
            ))?;
        let pending = s.pending.get(..s.pending_len * d * 2).ok_or(short(
            "pending salient rows",
            s.pending_len * d * 2,
            s.pending.len(),
        ))?;
        let salient_total: usize = masks.iter().map(|b| b.count_ones() as usize).sum();
        if salient_total != s.group_count * g + s.pending_len {
            return Err(Error::Corrupt {
                what: "salient masks disagree with the salient group and pending counts",
                offset: 0,
            });
        }
        Ok(Self {
            codec: sc,
            masks,
            groups,
            group_count: s.group_count,
            pending,
            pending_len: s.pending_len,
            seen: 0,
            current: None,
            lo: vec![0.0; d],
            step: vec![0.0; d],
            value: vec![0.0; d],
        })
    }

    /// Adds the salient tokens of block `b` (weights `p`, `[nq, G]`) to `acc`; returns the mask.
    fn block(&mut self, b: usize, p: &[f32], d: usize, acc: &mut [f32]) -> Result<u128> {
        let g = self.codec.group();
        let mut mask = 0u128;
        for (i, &byte) in self.masks[b * g / 8..][..g / 8].iter().enumerate() {
            mask |= u128::from(byte) << (8 * i);
        }
        let mut bits = mask;
        while bits != 0 {
            let t = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            self.value_of(self.seen)?;
            self.seen += 1;
            for (q, a) in acc.chunks_exact_mut(d).enumerate() {
                axpy(a, p[q * g + t], &self.value);
            }
        }
        Ok(mask)
    }

    /// Decodes the value of salient rank `k` into `self.value`.
    fn value_of(&mut self, k: usize) -> Result<()> {
        let (d, g) = (self.codec.head_dim(), self.codec.group());
        if k < self.group_count * g {
            let (gi, r) = (k / g, k % g);
            let vb = self.codec.value_block_bytes();
            let block = &self.groups[gi * vb..][..vb];
            let ValueLayout::PerChannel {
                bits,
                params,
                codes,
            } = *self.codec.value_layout()
            else {
                unreachable!("salient groups are per-channel value blocks")
            };
            if self.current != Some(gi) {
                for c in 0..d {
                    let pc = read_params(&block[params.range()], c, params.offset)
                        .map_err(|e| locate(e, gi * vb))?;
                    self.lo[c] = pc.lo.to_f32();
                    self.step[c] = pc.step.to_f32();
                }
                self.current = Some(gi);
            }
            let first_bit = r * d * bits.get() as usize;
            if first_bit.is_multiple_of(8) {
                // Byte-aligned row: unpack it with the lookup table.
                unpack_f32(
                    bits.get(),
                    &block[codes.range()][first_bit / 8..],
                    &mut self.value,
                );
            } else {
                for (c, v) in self.value.iter_mut().enumerate() {
                    let code =
                        vidkv_core::pack::code_at(bits.get(), &block[codes.range()], r * d + c);
                    *v = f32::from(code);
                }
            }
            for ((v, lo), step) in self.value.iter_mut().zip(&self.lo).zip(&self.step) {
                *v = lo + *v * step;
            }
        } else {
            let r = k - self.group_count * g;
            if r >= self.pending_len {
                return Err(Error::Corrupt {
                    what: "more salient tokens than salient values",
                    offset: 0,
                });
            }
            for (c, v) in self.value.iter_mut().enumerate() {
                *v = f16_at(self.pending, r * d + c).to_f32();
            }
        }
        Ok(())
    }
}

// ---- dense f16 / f32 rows -------------------------------------------------------------------

/// Scratch for one tile of dense rows.
struct DenseTile {
    rows: usize,
    keys: Vec<f32>,
    values: Vec<f32>,
    half: Vec<f16>,
}

impl DenseTile {
    fn new(rows: usize, d: usize) -> Self {
        Self {
            rows,
            keys: vec![0.0; rows * d],
            values: vec![0.0; rows * d],
            half: vec![f16::ZERO; rows * d],
        }
    }
}

/// Attends to the live rows of a [`DenseRows`] (in at most two contiguous runs of the ring).
fn dense_rows(
    rows: &DenseRows<'_, Vec<u8>>,
    d: usize,
    queries: &[f32],
    state: &mut Online,
    tile: &mut DenseTile,
) -> Result<()> {
    let bytes = rows.capacity * d * 2;
    if rows.keys.len() < bytes || rows.values.len() < bytes || rows.len > rows.capacity {
        return Err(short(
            "f16 rows",
            bytes,
            rows.keys.len().min(rows.values.len()),
        ));
    }
    if rows.len > 0 && rows.start >= rows.capacity {
        return Err(Error::InvalidConfig {
            reason: "f16 rows start beyond their capacity",
        });
    }
    let mut done = 0;
    while done < rows.len {
        let first = (rows.start + done) % rows.capacity;
        let run = (rows.len - done).min(rows.capacity - first);
        let mut t = 0;
        while t < run {
            let n = (run - t).min(tile.rows);
            let span = (first + t) * d * 2..(first + t + n) * d * 2;
            load_f16(
                &rows.keys[span.clone()],
                &mut tile.half,
                &mut tile.keys[..n * d],
            );
            load_f16(
                &rows.values[span],
                &mut tile.half,
                &mut tile.values[..n * d],
            );
            dense_tile(
                queries,
                d,
                &tile.keys[..n * d],
                &tile.values[..n * d],
                n,
                state,
            );
            t += n;
        }
        done += run;
    }
    Ok(())
}

/// Converts little-endian f16 bytes to f32 (through `half`'s slice conversion).
fn load_f16(bytes: &[u8], half: &mut [f16], out: &mut [f32]) {
    let half = &mut half[..out.len()];
    for (h, c) in half.iter_mut().zip(bytes.chunks_exact(2)) {
        *h = f16::from_le_bytes([c[0], c[1]]);
    }
    half.convert_to_f32_slice(out);
}

/// One tile of `n` f32 rows: scores for all queries, online softmax, value accumulation.
fn dense_tile(queries: &[f32], d: usize, keys: &[f32], values: &[f32], n: usize, s: &mut Online) {
    let stride = s.stride;
    for (q, qrow) in queries.chunks_exact(d).enumerate() {
        for (t, k) in keys.chunks_exact(d).enumerate().take(n) {
            s.scores[q * stride + t] = dot(qrow, k);
        }
    }
    s.absorb(n);
    for q in 0..s.nq {
        accumulate_tokens(
            &s.scores[q * stride..][..n],
            values,
            d,
            &mut s.acc[q * d..][..d],
        );
    }
}

/// Tokens per tile of the dense baselines.
const DENSE_TILE: usize = 32;

/// The dense baseline over an f16 cache: attention of `queries` (`[nq, d]`, unscaled) over
/// `keys`/`values` (`[tokens, d]` f16) with the same tiles, GQA sharing, online softmax and
/// exponential as the fused kernel; writes `[nq, d]` into `out`.
pub fn attend_dense_f16(
    queries: &[f32],
    d: usize,
    scale: f32,
    keys: &[f16],
    values: &[f16],
    out: &mut [f32],
) {
    let nq = queries.len() / d;
    let q: Vec<f32> = queries.iter().map(|x| x * scale).collect();
    let mut state = Online::new(nq, d, DENSE_TILE);
    let mut k32 = vec![0.0f32; DENSE_TILE * d];
    let mut v32 = vec![0.0f32; DENSE_TILE * d];
    for (kt, vt) in keys
        .chunks(DENSE_TILE * d)
        .zip(values.chunks(DENSE_TILE * d))
    {
        let n = kt.len() / d;
        kt.convert_to_f32_slice(&mut k32[..kt.len()]);
        vt.convert_to_f32_slice(&mut v32[..vt.len()]);
        dense_tile(&q, d, &k32[..n * d], &v32[..n * d], n, &mut state);
    }
    out.copy_from_slice(&state.finish());
}

/// The dense baseline over an f32 cache (see [`attend_dense_f16`]).
pub fn attend_dense_f32(
    queries: &[f32],
    d: usize,
    scale: f32,
    keys: &[f32],
    values: &[f32],
    out: &mut [f32],
) {
    let nq = queries.len() / d;
    let q: Vec<f32> = queries.iter().map(|x| x * scale).collect();
    let mut state = Online::new(nq, d, DENSE_TILE);
    for (kt, vt) in keys
        .chunks(DENSE_TILE * d)
        .zip(values.chunks(DENSE_TILE * d))
    {
        dense_tile(&q, d, kt, vt, kt.len() / d, &mut state);
    }
    out.copy_from_slice(&state.finish());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_accurate_over_the_softmax_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 1.0 {
            let want = libm::exp(f64::from(x));
            let got = f64::from(exp(x));
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 5e-7, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37);
    }

    #[test]
    fn code_tables_match_the_packing() {
        let mut out = [0.0f32; 8];
        unpack_f32(2, &[0b11_10_01_00, 0b00_00_00_11], &mut out);
        assert_eq!(out, [0.0, 1.0, 2.0, 3.0, 3.0, 0.0, 0.0, 0.0]);
        unpack_f32(1, &[0b1000_0001], &mut out);
        assert_eq!(out, [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]);
        let mut four = [0.0f32; 3];
        unpack_f32(4, &[0x21, 0x0f], &mut four);
        assert_eq!(four, [1.0, 2.0, 15.0]);
        assert_eq!(TRITS[200], [1.0, -1.0, 0.0, 0.0, 1.0]);
    }
}
