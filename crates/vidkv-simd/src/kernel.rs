//! The fused decode-attention kernel on packed VidKV blocks, generic over an instruction set.
//!
//! Work per 32-token sub-block, shared by every query head of the GQA group:
//! * **keys** — the 1-bit lanes and the 2-bit outlier codes are unpacked once into a
//!   token-major byte matrix (4 channels per 32-bit word, one word per token) with a byte
//!   shuffle and an AND: a lane bit becomes `bit · 2^(t mod 8)` and an outlier code
//!   `code · 4^(t mod 4)` (the per-token power of two is divided out of the score, exactly);
//! * each query's per-block weights (`α_j = 2·w_j·s_j` for lanes with `w = T⁻ᵀ(q)`,
//!   `q_c · step_c` for outliers) are quantized to int8 with one f32 scale per block and query,
//!   and a score is an integer dot product (`vpdpbusd`, `pmaddubsw`+`pmaddwd`, `sdot`);
//! * traced tokens (OTT) get exact f32 scores `q·row` from their f16 rows, which replace their
//!   int8 scores before the softmax;
//! * online softmax in f32; the weights `p_t` are quantized to 8 bits per block;
//! * **values** — four token rows of base-3 bytes are interleaved so that one 32-bit word holds
//!   the same byte of four tokens; the five digits are extracted with the multiply-by-3 trick
//!   (`q' = ⌈256·b/243⌉`, digit = `⌊3·t/256⌋`, `t ← 3·t mod 256`) and dotted with the quantized
//!   `p` — accumulators are per (digit, byte) "slot", mapped back to channels once per block.
//!
//! This generic kernel runs AVX2, AVX-512 without VNNI or VBMI, and NEON; AVX-512 with VNNI and
//! VBMI runs the 512-bit kernel of `x86/vnni512.rs`, which shares the plan, the block-header
//! reader, the mask weights' split and the arithmetic with it.
//!
//! The instruction-set specific part is the [`Isa`] trait (code unpacking, byte interleave, digit
//! extraction and the 4-way integer dot product on 256-bit registers); everything else is
//! portable f32 code compiled inside the level's `#[target_feature]` entry point, so it is
//! vectorized for that level too.

use alloc::vec;
use alloc::vec::Vec;

use vidkv_core::layout::trit_row_bytes;
use vidkv_core::traced::TracedLayout;
use vidkv_core::{
    ChannelMask, Codec, Error, KeyLayout, KeyScheme, LaneRule, Result, ValueLayout, ValueScheme,
};
use vidkv_cpu::transform::is_imaginary_lane;

use crate::attend::HeadCache;
use crate::fft::{Adjoint, Lanes, W};
use crate::math::{exp_approx, f16_bits_to_f32};

/// Tokens per sub-block: the unit of the integer kernels.
pub const SUB: usize = 32;

/// What an instruction set provides to the generic kernel. All methods require the level's
/// target features (callers are `#[target_feature]` functions entered after detection).
pub(crate) trait Isa {
    /// A 256-bit integer register (8 × 32-bit words).
    type V: Copy;
    /// Largest |int8| lane weight.
    const LANE_QMAX: f32;
    /// Largest |int8| outlier weight (AVX2's `pmaddubsw` saturates above 85 with codes ≤ 192).
    const OUT_QMAX: f32;
    /// Largest quantized softmax weight.
    const P_MAX: f32;
    /// Value of a set lane bit of token `t`, by `t mod 8`.
    const LANE_CODE: [f32; 8];
    /// Multiplier of an outlier code of token `t`, by `t mod 4`.
    const OUT_CODE: [f32; 4];
    /// Value accumulator registers kept live at once.
    const VAL_CHUNK: usize;

    /// All zero.
    unsafe fn zero() -> Self::V;
    /// `x` in every 32-bit word.
    unsafe fn splat(x: u32) -> Self::V;
    /// The eight 32-bit words.
    unsafe fn store_i32(v: Self::V, out: &mut [i32; 8]);
    /// Per 32-bit word: `acc + Σ_{i<4} a_i·b_i` (keys: a = codes, b = int8 weights; values:
    /// a = quantized p, b = digits), exact for the operand ranges this kernel produces.
    unsafe fn dot(acc: Self::V, a: Self::V, b: Self::V) -> Self::V;
    /// Codes of 4 lanes × 32 tokens from 16 bytes `[W0 W1 W2 W3]` (each lane's 32 sign bits,
    /// LE): register `r` holds tokens `8r..8r+8`, byte `m` of word `t` is lane `m`'s code.
    unsafe fn lane_codes(chunk: *const u8, out: &mut [Self::V; 4]);
    /// Codes of 4 outlier channels × 32 tokens from 32 bytes (8 per channel), same layout.
    unsafe fn outlier_codes(chunk: *const u8, out: &mut [Self::V; 4]);
    /// Interleaves 32 bytes of four rows: word `(o, p)` of output `o` holds byte `k` of rows
    /// 0..4, `k = 16·(p ≥ 4) + 4·o + p mod 4`.
    unsafe fn interleave4(rows: [*const u8; 4], out: &mut [Self::V; 4]);
    /// Per byte `b`: `⌈256·b/243⌉ + 128 (mod 256)`.
    unsafe fn biased_qprime(x: Self::V) -> Self::V;
    /// Per byte: `3·t mod 256`.
    unsafe fn triple(x: Self::V) -> Self::V;
    /// Per byte of a biased `t`: `−⌊3·t/256⌋` as int8 (0, −1 or −2).
    unsafe fn neg_digit(tb: Self::V) -> Self::V;
}

/// Derived geometry of a mixed-key / ternary-value codec.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) d: usize,
    pub(crate) g: usize,
    pub(crate) k: usize,
    pub(crate) m: usize,
    pub(crate) lane_groups: usize,
    pub(crate) out_groups: usize,
    /// Decode-rule factors per lane: a set bit adds `fa·s·w`, every lane adds `fb·s·w`.
    pub(crate) lane_fa: Vec<f32>,
    pub(crate) lane_fb: Vec<f32>,
    pub(crate) adjoint: Adjoint,
    pub(crate) key_bytes: usize,
    pub(crate) value_bytes: usize,
    pub(crate) mask: vidkv_core::Section,
    pub(crate) outlier_params: vidkv_core::Section,
    pub(crate) lane_scales: vidkv_core::Section,
    pub(crate) outlier_codes: vidkv_core::Section,
    pub(crate) lane_bits: vidkv_core::Section,
    pub(crate) v_scales: vidkv_core::Section,
    pub(crate) v_trits: vidkv_core::Section,
    /// Traced tokens (OTT) at the end of each key block, if any.
    pub(crate) traced: Option<TracedLayout>,
    pub(crate) row_bytes: usize,
    pub(crate) segs: usize,
    /// Channel of each value accumulator slot (`usize::MAX` for padding).
    pub(crate) slot_channel: Vec<usize>,
    /// Value slots in the 512-bit layout of [`wide_slot_channels`] (AVX-512 VNNI + VBMI kernel;
    /// never for traced-token codecs).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) wide: bool,
}

impl Plan {
    /// The plan, or `None` when the codec is not VidKV mixed keys + ternary values. `wide` asks
    /// for the 512-bit value-slot layout, granted when a trit row fits in 32 bytes (D ≤ 160).
    pub fn new(codec: &Codec, wide: bool) -> Option<Self> {
        let KeyScheme::Mixed(mixed) = codec.config().keys else {
            return None;
        };
        let ValueScheme::Ternary { .. } = codec.config().values else {
            return None;
        };
        let KeyLayout::Mixed {
            outliers,
            lanes,
            mask,
            outlier_params,
            lane_scales,
            outlier_codes,
            lane_bits,
        } = *codec.key_layout()
        else {
            return None;
        };
        let ValueLayout::Ternary { scales, trits } = *codec.value_layout() else {
            return None;
        };
        let d = codec.head_dim();
        let row_bytes = trit_row_bytes(d);
        let segs = row_bytes.div_ceil(32);
        // The 512-bit kernel does not patch traced-token scores; traced codecs run the generic one.
        let wide = wide && row_bytes <= 2 * WIDE_SEG && codec.traced_layout().is_none();
        let mut slot_channel = vec![usize::MAX; segs * 5 * 32];
        for (slot, ch) in slot_channel.iter_mut().enumerate() {
            let (seg, rest) = (slot / 160, slot % 160);
            let (digit, rest) = (rest / 32, rest % 32);
            let (o, p) = (rest / 8, rest % 8);
            let kk = 32 * seg + 16 * usize::from(p >= 4) + 4 * o + p % 4;
            let c = 5 * kk + digit;
            if kk < row_bytes && c < d {
                *ch = c;
            }
        }
        Some(Self {
            d,
            g: codec.group(),
            k: outliers,
            m: lanes,
            lane_groups: lanes.div_ceil(4),
            out_groups: outliers.div_ceil(4),
            lane_fa: (0..lanes)
                .map(|_| match mixed.lane_rule {
                    LaneRule::Symmetric => 2.0,
                    LaneRule::PaperCompat => 1.0,
                })
                .collect(),
            lane_fb: (0..lanes)
                .map(|j| match mixed.lane_rule {
                    LaneRule::Symmetric => -1.0,
                    LaneRule::PaperCompat if is_imaginary_lane(j) => -0.5,
                    LaneRule::PaperCompat => 0.0,
                })
                .collect(),
            adjoint: Adjoint::new(mixed.transform, lanes),
            key_bytes: codec.key_block_bytes(),
            value_bytes: codec.value_block_bytes(),
            mask,
            outlier_params,
            lane_scales,
            outlier_codes,
            lane_bits,
            v_scales: scales,
            v_trits: trits,
            traced: codec.traced_layout().copied(),
            row_bytes,
            segs,
            slot_channel: if wide {
                wide_slot_channels(d, row_bytes)
            } else {
                slot_channel
            },
            wide,
        })
    }

    fn slots(&self) -> usize {
        self.slot_channel.len()
    }
}

/// Whether the SIMD kernel runs this codec (VidKV mixed keys + ternary values).
pub(crate) fn covers(codec: &Codec) -> bool {
    matches!(
        (codec.config().keys, codec.config().values),
        (KeyScheme::Mixed(_), ValueScheme::Ternary { .. })
    )
}

/// Trit-row bytes per 512-bit value register (16 words of 4 tokens).
pub(crate) const WIDE_SEG: usize = 16;

/// Value slots of the 512-bit kernel: register `5·seg + digit`, word `kk` holds digit `digit`
/// of row byte `16·seg + kk` (channel `5·(16·seg + kk) + digit`); 160 slots, padding unmapped.
fn wide_slot_channels(d: usize, row_bytes: usize) -> Vec<usize> {
    let mut out = vec![usize::MAX; 2 * 5 * WIDE_SEG];
    for (slot, ch) in out.iter_mut().enumerate() {
        let (reg, kk) = (slot / WIDE_SEG, slot % WIDE_SEG);
        let (seg, digit) = (reg / 5, reg % 5);
        let byte = WIDE_SEG * seg + kk;
        let c = 5 * byte + digit;
        if byte < row_bytes && c < d {
            *ch = c;
        }
    }
    out
}

/// Running softmax state of the quantized part for one query chunk.
#[derive(Debug)]
pub(crate) struct QuantState {
    /// Running max per query.
    pub m: [f32; W],
    /// Running denominator per query.
    pub l: [f32; W],
    /// Weighted value sums per query, per slot.
    pub o_slots: Vec<f32>,
}

fn corrupt(what: &'static str, offset: usize) -> Error {
    Error::Corrupt { what, offset }
}

/// Converts `n` LE f16 values at `bytes` to f32; `Err(i)` for the first non-finite or negative
/// one when `nonneg`, else for the first non-finite one.
#[inline(always)]
fn f16s(bytes: &[u8], out: &mut [f32], nonneg: bool) -> core::result::Result<(), usize> {
    let mut bad = false;
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let h = u16::from_le_bytes([c[0], c[1]]);
        bad |= h & 0x7c00 == 0x7c00 || (nonneg && h & 0x8000 != 0 && h != 0x8000);
        *o = f16_bits_to_f32(h);
    }
    if bad {
        let i = bytes
            .chunks_exact(2)
            .position(|c| {
                let h = u16::from_le_bytes([c[0], c[1]]);
                h & 0x7c00 == 0x7c00 || (nonneg && h & 0x8000 != 0 && h != 0x8000)
            })
            .unwrap_or(0);
        return Err(i);
    }
    Ok(())
}

/// Quantizes `x[0..n]` to int8 with `|q| ≤ qmax`; returns the f32 scale (0 for all-zero input).
#[inline(always)]
fn quantize(x: &[f32], qmax: f32, out: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    if amax == 0.0 {
        out.iter_mut().for_each(|o| *o = 0);
        return 0.0;
    }
    let inv = qmax / amax;
    for (o, &v) in out.iter_mut().zip(x) {
        *o = crate::math::round_bits(v * inv) as u8 as i8;
    }
    amax / qmax
}

/// The query weights of the current outlier mask, recomputed when the mask changes:
/// `wt[h·lane_stride + j]` is `T⁻ᵀ(q_h restricted to the normal channels)_j` and
/// `qo[h·out_stride + i]` is query `h` at outlier channel `i`; padding stays zero.
pub(crate) struct MaskWeights {
    prev: Option<ChannelMask>,
    x: Vec<Lanes>,
    w: Vec<Lanes>,
    scratch: Vec<Lanes>,
    x_out: Vec<Lanes>,
    lane_stride: usize,
    out_stride: usize,
    pub wt: Vec<f32>,
    pub qo: Vec<f32>,
}

impl MaskWeights {
    pub fn new(plan: &Plan, lane_stride: usize, out_stride: usize) -> Self {
        let (d, m) = (plan.d, plan.m);
        Self {
            prev: None,
            x: vec![[0.0; W]; d.max(1)],
            w: vec![[0.0; W]; m.max(1)],
            scratch: vec![[0.0; W]; 2 * m.max(1)],
            x_out: vec![[0.0; W]; d.max(1)],
            lane_stride,
            out_stride,
            wt: vec![0.0; W * lane_stride],
            qo: vec![0.0; W * out_stride],
        }
    }

    /// Recomputes the weights when `mask` differs from the previous block's.
    #[inline(always)]
    pub fn update(&mut self, plan: &Plan, qt: &[Lanes], hq: usize, mask: ChannelMask) {
        if self.prev == Some(mask) {
            return;
        }
        let (m, k) = (plan.m, plan.k);
        // Branch-free split (the mask changes at almost every block): every channel's query
        // row is written to both lists, and only the list it belongs to advances.
        let (mut nn, mut no) = (0, 0);
        for c in 0..plan.d {
            let bit = ((mask.words[c / 32] >> (c % 32)) & 1) as usize;
            self.x[nn] = qt[c];
            self.x_out[no] = qt[c];
            nn += 1 - bit;
            no += bit;
        }
        if m > 0 {
            plan.adjoint
                .apply(&self.x[..m], &mut self.w[..m], &mut self.scratch);
        }
        transpose_into(&self.w[..m], hq, &mut self.wt, self.lane_stride);
        transpose_into(&self.x_out[..k], hq, &mut self.qo, self.out_stride);
        self.prev = Some(mask);
    }
}

/// The f32 header fields of one block (key and value), validated.
pub(crate) struct BlockHeader {
    /// Lane scales `s_j`.
    pub s_lane: Vec<f32>,
    /// Outlier affine parameters, `[lo, step]` per outlier.
    pub params: Vec<f32>,
    /// Value scales per channel, and a trailing 0 (the scale of unmapped slots).
    pub v_scale: Vec<f32>,
}

impl BlockHeader {
    pub fn new(plan: &Plan) -> Self {
        Self {
            s_lane: vec![0.0; plan.m],
            params: vec![0.0; 2 * plan.k],
            v_scale: vec![0.0; plan.d + 1],
        }
    }

    /// Reads and validates block `b`'s mask, scales and parameters, and checks its trit bytes.
    #[inline(always)]
    pub fn read(&mut self, plan: &Plan, cache: &HeadCache<'_>, b: usize) -> Result<ChannelMask> {
        let kb_off = b * plan.key_bytes;
        let kb = &cache.key_blocks[kb_off..][..plan.key_bytes];
        let vb_off = b * plan.value_bytes;
        let vb = &cache.value_blocks[vb_off..][..plan.value_bytes];
        let mask = ChannelMask::read(&kb[plan.mask.range()], plan.d, plan.k)
            .map_err(|_| corrupt("outlier channel mask", kb_off + plan.mask.offset))?;
        f16s(&kb[plan.lane_scales.range()], &mut self.s_lane, true).map_err(|i| {
            corrupt(
                "lane scale not finite and non-negative",
                kb_off + plan.lane_scales.offset + 2 * i,
            )
        })?;
        f16s(&kb[plan.outlier_params.range()], &mut self.params, false).map_err(|i| {
            corrupt(
                "affine parameters not finite or step negative",
                kb_off + plan.outlier_params.offset + 2 * i,
            )
        })?;
        if let Some(i) = (0..plan.k).find(|&i| self.params[2 * i + 1] < 0.0) {
            return Err(corrupt(
                "affine parameters not finite or step negative",
                kb_off + plan.outlier_params.offset + 4 * i,
            ));
        }
        f16s(&vb[plan.v_scales.range()], &mut self.v_scale, true).map_err(|i| {
            corrupt(
                "ternary scale not finite and non-negative",
                vb_off + plan.v_scales.offset + 2 * i,
            )
        })?;
        let trits = &vb[plan.v_trits.range()];
        if trits.iter().fold(0u8, |a, &v| a.max(v)) > vidkv_core::pack::MAX_TRIT_BYTE {
            let i = trits
                .iter()
                .position(|&v| v > vidkv_core::pack::MAX_TRIT_BYTE)
                .unwrap_or(0);
            let row = i / plan.row_bytes;
            return Err(corrupt(
                "trit byte above 242",
                vb_off + plan.v_trits.offset + row * plan.row_bytes,
            ));
        }
        Ok(mask)
    }
}

/// The 16 bytes `[L0 L1 L2 L3]` of lane group `gi` in sub-block `sb` (each lane's 32 sign bits,
/// LE): a slice of the block when G = 32 and the group is whole, else gathered into `buf`
/// (missing lanes zero).
#[inline(always)]
pub(crate) fn lane_chunk<'a>(
    plan: &Plan,
    kb: &'a [u8],
    gi: usize,
    sb: usize,
    buf: &'a mut [u8; 32],
) -> &'a [u8] {
    if plan.g == SUB && 4 * gi + 4 <= plan.m {
        return &kb[plan.lane_bits.offset + 16 * gi..][..16];
    }
    buf.fill(0);
    for jj in 0..4 {
        let j = 4 * gi + jj;
        if j < plan.m {
            let src = plan.lane_bits.offset + j * plan.g / 8 + 4 * sb;
            buf[4 * jj..4 * jj + 4].copy_from_slice(&kb[src..src + 4]);
        }
    }
    &buf[..16]
}

/// The 32 bytes `[O0 O1 O2 O3]` of outlier group `gi` in sub-block `sb` (each channel's 32
/// 2-bit codes), as [`lane_chunk`].
#[inline(always)]
pub(crate) fn outlier_chunk<'a>(
    plan: &Plan,
    kb: &'a [u8],
    gi: usize,
    sb: usize,
    buf: &'a mut [u8; 32],
) -> &'a [u8] {
    if plan.g == SUB && 4 * gi + 4 <= plan.k {
        return &kb[plan.outlier_codes.offset + 32 * gi..][..32];
    }
    buf.fill(0);
    for ii in 0..4 {
        let i = 4 * gi + ii;
        if i < plan.k {
            let src = plan.outlier_codes.offset + i * plan.g / 4 + 8 * sb;
            buf[8 * ii..8 * ii + 8].copy_from_slice(&kb[src..src + 8]);
        }
    }
    &buf[..]
}

/// Runs the quantized part of attention for up to `W` queries over all blocks.
///
/// `qt[c]` holds channel `c` of every query (already scaled by 1/√D), queries `hq..W` zero.
///
/// # Safety
/// The CPU must support `I`'s target features.
#[inline(always)]
pub(crate) unsafe fn quantized_part<I: Isa>(
    plan: &Plan,
    qt: &[Lanes],
    hq: usize,
    cache: &HeadCache<'_>,
    state: &mut QuantState,
) -> Result<()> {
    let (d, m, k) = (plan.d, plan.m, plan.k);
    let (lg, og) = (plan.lane_groups, plan.out_groups);
    let subs = plan.g / SUB;
    let slots = plan.slots();

    // Per-mask and per-block state. Lane and outlier counts are padded to whole groups of 4
    // (zero weights).
    let (m4, k4) = (4 * lg, 4 * og);
    let mut mw = MaskWeights::new(plan, m4, k4);
    let mut hdr = BlockHeader::new(plan);
    let (mut sfa, mut sfb) = (vec![0.0f32; m4], vec![0.0f32; m4]);
    let (mut o_lo, mut o_step) = (vec![0.0f32; k4], vec![0.0f32; k4]);
    let mut alpha = vec![0.0f32; m4.max(k4)];
    let mut alpha_l = vec![0i8; W * m4];
    let mut alpha_o = vec![0i8; W * k4];
    let mut sc_l = [0.0f32; W];
    let mut sc_o = [0.0f32; W];
    let mut cst = [0.0f32; W];
    let mut slot_scale = vec![0.0f32; slots];
    // Per-sub-block scratch.
    // SAFETY: the caller guarantees `I`'s target features.
    let zero = unsafe { I::zero() };
    let mut lcodes = vec![zero; 4 * lg];
    let mut ocodes = vec![zero; 4 * og];
    let mut digits = vec![zero; 8 * plan.segs * 20];
    let mut chunk = [0u8; 32];
    let mut pad_rows = [[0u8; 32]; 4];
    let mut acc_l = [[0i32; 8]; 4];
    let mut acc_o = [[0i32; 8]; 4];
    let mut acc_v = vec![[0i32; 8]; plan.segs * 20];
    let mut pq = [[0u8; SUB]; W];
    let mut lane_inv = [0.0f32; SUB];
    let mut out_inv = [0.0f32; SUB];
    for t in 0..SUB {
        lane_inv[t] = 1.0 / I::LANE_CODE[t % 8];
        out_inv[t] = 1.0 / I::OUT_CODE[t % 4];
    }
    let vlen = cache.value_blocks.len();
    let mut traced = TracedScores::new(plan);

    for b in 0..cache.blocks {
        let kb = &cache.key_blocks[b * plan.key_bytes..][..plan.key_bytes];
        let vb_off = b * plan.value_bytes;

        // ---- keys: mask, adjoint, weights ----
        let mask = hdr.read(plan, cache, b)?;
        mw.update(plan, qt, hq, mask);
        let (wt, qo) = (&mw.wt, &mw.qo);
        // Per-lane factors of the decode rule: α_j = fa_j·s_j·w_j, constant Σ fb_j·s_j·w_j.
        for j in 0..m {
            sfa[j] = plan.lane_fa[j] * hdr.s_lane[j];
            sfb[j] = plan.lane_fb[j] * hdr.s_lane[j];
        }
        for i in 0..k {
            o_lo[i] = hdr.params[2 * i];
            o_step[i] = hdr.params[2 * i + 1];
        }
        for h in 0..hq {
            let wh = &wt[h * m4..][..m4];
            let mut c = 0.0f32;
            for j in 0..m4 {
                alpha[j] = wh[j] * sfa[j];
                c += wh[j] * sfb[j];
            }
            sc_l[h] = quantize(&alpha[..m4], I::LANE_QMAX, &mut alpha_l[h * m4..][..m4]);
            let qh = &qo[h * k4..][..k4];
            for i in 0..k4 {
                alpha[i] = qh[i] * o_step[i];
                c += qh[i] * o_lo[i];
            }
            cst[h] = c;
            sc_o[h] = quantize(&alpha[..k4], I::OUT_QMAX, &mut alpha_o[h * k4..][..k4]);
        }

        traced.read(plan, qt, kb, b * plan.key_bytes)?;
        for (s, &c) in slot_scale.iter_mut().zip(&plan.slot_channel) {
            *s = if c < d { hdr.v_scale[c] } else { 0.0 };
        }

        for sb in 0..subs {
            // ---- key codes for 32 tokens ----
            for gi in 0..lg {
                let ptr = lane_chunk(plan, kb, gi, sb, &mut chunk).as_ptr();
                let mut r = [zero; 4];
                // SAFETY: `ptr` addresses 16 readable bytes; target features as above.
                unsafe { I::lane_codes(ptr, &mut r) };
                lcodes[4 * gi..4 * gi + 4].copy_from_slice(&r);
            }
            for gi in 0..og {
                let ptr = outlier_chunk(plan, kb, gi, sb, &mut chunk).as_ptr();
                let mut r = [zero; 4];
                // SAFETY: `ptr` addresses 32 readable bytes; target features as above.
                unsafe { I::outlier_codes(ptr, &mut r) };
                ocodes[4 * gi..4 * gi + 4].copy_from_slice(&r);
            }

            // ---- value digits for 32 tokens ----
            for qd in 0..SUB / 4 {
                for seg in 0..plan.segs {
                    let mut rows = [core::ptr::null::<u8>(); 4];
                    for (u, row) in rows.iter_mut().enumerate() {
                        let t = sb * SUB + 4 * qd + u;
                        let off = vb_off + plan.v_trits.offset + t * plan.row_bytes + 32 * seg;
                        *row = if off + 32 <= vlen {
                            cache.value_blocks[off..off + 32].as_ptr()
                        } else {
                            let avail = vlen - off;
                            pad_rows[u][..avail].copy_from_slice(&cache.value_blocks[off..]);
                            pad_rows[u][avail..].iter_mut().for_each(|c| *c = 0);
                            pad_rows[u].as_ptr()
                        };
                    }
                    let mut inter = [zero; 4];
                    let base = (qd * plan.segs + seg) * 20;
                    // SAFETY: each row pointer addresses 32 readable bytes; target features as
                    // above.
                    unsafe {
                        I::interleave4(rows, &mut inter);
                        for (o, &v) in inter.iter().enumerate() {
                            let mut tb = I::biased_qprime(v);
                            // The first digit out is the most significant (d4).
                            for dg in (0..5).rev() {
                                digits[base + dg * 4 + o] = I::neg_digit(tb);
                                tb = I::triple(tb);
                            }
                        }
                    }
                }
            }

            for h in 0..hq {
                // ---- scores ----
                // SAFETY: register arithmetic only; target features as above.
                unsafe {
                    let mut al = [zero; 4];
                    let aq = &alpha_l[h * m4..][..m4];
                    for gi in 0..lg {
                        let wv = I::splat(u32::from_le_bytes([
                            aq[4 * gi] as u8,
                            aq[4 * gi + 1] as u8,
                            aq[4 * gi + 2] as u8,
                            aq[4 * gi + 3] as u8,
                        ]));
                        for r in 0..4 {
                            al[r] = I::dot(al[r], lcodes[4 * gi + r], wv);
                        }
                    }
                    let mut ao = [zero; 4];
                    let aq = &alpha_o[h * k4..][..k4];
                    for gi in 0..og {
                        let wv = I::splat(u32::from_le_bytes([
                            aq[4 * gi] as u8,
                            aq[4 * gi + 1] as u8,
                            aq[4 * gi + 2] as u8,
                            aq[4 * gi + 3] as u8,
                        ]));
                        for r in 0..4 {
                            ao[r] = I::dot(ao[r], ocodes[4 * gi + r], wv);
                        }
                    }
                    for r in 0..4 {
                        I::store_i32(al[r], &mut acc_l[r]);
                        I::store_i32(ao[r], &mut acc_o[r]);
                    }
                }
                let mut score = [0.0f32; SUB];
                let (fl, fo) = (acc_l.as_flattened(), acc_o.as_flattened());
                for t in 0..SUB {
                    score[t] = sc_l[h] * fl[t] as f32 * lane_inv[t]
                        + sc_o[h] * fo[t] as f32 * out_inv[t]
                        + cst[h];
                }
                traced.patch(sb, h, &mut score);

                // ---- online softmax ----
                let bmax = score.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let m_new = state.m[h].max(bmax);
                let corr = exp_approx(state.m[h] - m_new);
                let pmax = exp_approx(bmax - m_new);
                let mut p = [0.0f32; SUB];
                for t in 0..SUB {
                    p[t] = exp_approx(score[t] - bmax);
                }
                let mut psum = 0u32;
                for t in 0..SUB {
                    let v = crate::math::round_bits(p[t] * I::P_MAX) as u8;
                    pq[h][t] = v;
                    psum += u32::from(v);
                }
                let pscale = pmax / I::P_MAX;
                state.l[h] = state.l[h] * corr + pscale * psum as f32;
                state.m[h] = m_new;

                // ---- values ----
                let nreg = plan.segs * 20;
                let mut start = 0;
                while start < nreg {
                    let len = I::VAL_CHUNK.min(nreg - start);
                    // SAFETY: register arithmetic only; target features as above.
                    unsafe {
                        let mut acc = [zero; 20];
                        for qd in 0..SUB / 4 {
                            let pv = I::splat(u32::from_le_bytes([
                                pq[h][4 * qd],
                                pq[h][4 * qd + 1],
                                pq[h][4 * qd + 2],
                                pq[h][4 * qd + 3],
                            ]));
                            let row = &digits[qd * nreg + start..][..len];
                            for (a, &dv) in acc[..len].iter_mut().zip(row) {
                                *a = I::dot(*a, pv, dv);
                            }
                        }
                        for (i, a) in acc[..len].iter().enumerate() {
                            I::store_i32(*a, &mut acc_v[start + i]);
                        }
                    }
                    start += len;
                }
                // Σ p·q = Σ p·d − Σ p = −acc − Σ p; slot s is word s % 8 of register s / 8.
                let o = &mut state.o_slots[h * slots..][..slots];
                let ps = psum as f32;
                for ((ov, &sc), &a) in o.iter_mut().zip(&slot_scale).zip(acc_v.as_flattened()) {
                    *ov = *ov * corr + pscale * sc * (-(a as f32) - ps);
                }
            }
        }
    }
    Ok(())
}

/// Exact scores of a block's traced tokens (OTT), which replace their int8 scores.
struct TracedScores {
    /// Token and exact scaled score per query, per filled slot.
    tokens: Vec<(usize, Lanes)>,
    slots: Vec<(usize, usize)>,
    row: Vec<f32>,
}

impl TracedScores {
    fn new(plan: &Plan) -> Self {
        Self {
            tokens: Vec::with_capacity(plan.traced.map_or(0, |l| l.slots)),
            slots: Vec::with_capacity(plan.traced.map_or(0, |l| l.slots)),
            row: vec![0.0; plan.d],
        }
    }

    /// Reads and checks the traced part of key block `kb` (at `kb_off` in the cache) and
    /// computes `q·row` for every query.
    #[inline(always)]
    fn read(&mut self, plan: &Plan, qt: &[Lanes], kb: &[u8], kb_off: usize) -> Result<()> {
        self.tokens.clear();
        let Some(layout) = plan.traced else {
            return Ok(());
        };
        let shift = |e: Error| match e {
            Error::Corrupt { what, offset } => corrupt(what, kb_off + offset),
            other => other,
        };
        layout
            .tokens_into(kb, plan.g, &mut self.slots)
            .map_err(shift)?;
        for &(slot, t) in &self.slots {
            layout.row(kb, slot, plan.d, &mut self.row).map_err(shift)?;
            let mut acc = [0.0f32; W];
            for (q, &x) in qt.iter().zip(&self.row) {
                for h in 0..W {
                    acc[h] += q[h] * x;
                }
            }
            self.tokens.push((t, acc));
        }
        Ok(())
    }

    /// Replaces the scores of sub-block `sb`'s traced tokens for query `h`.
    #[inline(always)]
    fn patch(&self, sb: usize, h: usize, score: &mut [f32; SUB]) {
        for &(t, exact) in &self.tokens {
            if t / SUB == sb {
                score[t % SUB] = exact[h];
            }
        }
    }
}

/// Maps the slot accumulators of query `h` to channels: `out[c] += o_slots[slot(c)]`.
pub(crate) fn slots_to_channels(plan: &Plan, o_slots: &[f32], out: &mut [f32]) {
    for (&v, &c) in o_slots.iter().zip(&plan.slot_channel) {
        if c < plan.d {
            out[c] += v;
        }
    }
}

/// `out[h·stride + j] = rows[j][h]` for `h < hq`, `j < rows.len()`; the rest of each row stays 0.
#[inline(always)]
fn transpose_into(rows: &[Lanes], hq: usize, out: &mut [f32], stride: usize) {
    let full = rows.len() / W * W;
    for (jb, block) in rows[..full].chunks_exact(W).enumerate() {
        let mut t = [[0.0f32; W]; W];
        for (j, r) in block.iter().enumerate() {
            for h in 0..W {
                t[h][j] = r[h];
            }
        }
        for h in 0..hq {
            out[h * stride + jb * W..][..W].copy_from_slice(&t[h]);
        }
    }
    for (j, r) in rows.iter().enumerate().skip(full) {
        for h in 0..hq {
            out[h * stride + j] = r[h];
        }
    }
}

/// Number of value slots of a plan.
pub(crate) fn slot_count(plan: &Plan) -> usize {
    plan.slots()
}
