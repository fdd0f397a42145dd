//! AVX-512 VNNI + VBMI: the fused kernel on 512-bit registers (the AVX-512 level's fast path).
//!
//! Same arithmetic as [`crate::kernel`] — int8 query weights per block and query, 8-bit softmax
//! weights, exact integer dot products, f32 online softmax — organized for 512-bit registers:
//! * **key codes** of 4 lanes (or 4 outlier channels) × 16 tokens per register, one `vpermb`
//!   and one AND each, consumed at once by the dot products of every query head of the group
//!   (accumulators for all heads stay in registers: `H` is a const parameter);
//! * **value trits**: two masked loads cover four consecutive token rows; one `vpermt2b` per 16
//!   row bytes interleaves them (word `kk` = byte `kk` of the four rows); the top digit is split
//!   off with two byte compares and the other four digits come from 81-entry `vpermi2b` tables;
//! * `exp` of the softmax is vectorized with `vscalefps`.

use core::arch::x86_64::*;

use vidkv_core::Result;

use crate::attend::{HeadCache, Residual, residual_part};
use crate::fft::Lanes;
use crate::kernel::{
    BlockHeader, MaskWeights, Plan, QuantState, SUB, WIDE_SEG, lane_chunk, outlier_chunk,
};
use crate::math::exp_approx;

/// Value registers per 4-token quad: 2 segments × 5 digits.
const VREGS: usize = 10;
/// Token quads per 32-token sub-block.
const QUADS: usize = SUB / 4;

/// Whether this CPU runs the kernel (VNNI and VBMI on top of the AVX-512 level).
pub(crate) fn supported() -> bool {
    crate::level::features().avx512vnni && super::has_vbmi()
}

/// `vpermb` indices and AND masks that build key-code registers from a group chunk.
struct CodeTables {
    lane_idx: [__m512i; 2],
    lane_sel: __m512i,
    out_idx: [__m512i; 2],
    out_sel: __m512i,
    /// Per token word: 1 / 2^(t mod 8) (lanes) and 1 / 4^(t mod 4) (outliers).
    lane_inv: __m512,
    out_inv: __m512,
}

fn bytes64(f: &dyn Fn(usize) -> u8) -> [u8; 64] {
    core::array::from_fn(f)
}

fn load64(t: &[u8; 64]) -> __m512i {
    // SAFETY: `t` is 64 readable bytes; AVX-512F is enabled in every caller (the kernel's entry
    // points are `#[target_feature]` functions reached after detection).
    unsafe { _mm512_loadu_si512(t.as_ptr().cast()) }
}

impl CodeTables {
    #[target_feature(enable = "avx512f,avx512bw")]
    fn new() -> Self {
        // Word tt of register r is token 16r + tt; byte mm of the word is lane / outlier mm.
        // Lane chunk: lane mm's 4 bytes at 4mm, token t at bit t mod 8 of byte t / 8.
        let lane = |r: usize| bytes64(&|i| (4 * (i % 4) + 2 * r + (i / 4) / 8) as u8);
        // Outlier chunk: channel mm's 8 bytes at 8mm, token t at bits 2(t mod 4) of byte t / 4.
        let out = |r: usize| bytes64(&|i| (8 * (i % 4) + 4 * r + (i / 4) / 4) as u8);
        let lane_inv: [f32; 16] = core::array::from_fn(|tt| 1.0 / (1u32 << (tt % 8)) as f32);
        let out_inv: [f32; 16] = core::array::from_fn(|tt| 1.0 / (1u32 << (2 * (tt % 4))) as f32);
        Self {
            lane_idx: [load64(&lane(0)), load64(&lane(1))],
            lane_sel: load64(&bytes64(&|i| 1 << ((i / 4) % 8))),
            out_idx: [load64(&out(0)), load64(&out(1))],
            out_sel: load64(&bytes64(&|i| 3 << (2 * ((i / 4) % 4)))),
            // SAFETY: 16 readable floats each.
            lane_inv: unsafe { _mm512_loadu_ps(lane_inv.as_ptr()) },
            // SAFETY: as above.
            out_inv: unsafe { _mm512_loadu_ps(out_inv.as_ptr()) },
        }
    }
}

/// Tables of the trit decoder and the row interleave.
struct TritTables {
    /// `vpermt2b` indices of segment `seg`: byte `4·kk + u` ← row `u`'s byte `16·seg + kk`,
    /// rows 0, 1 in the first source and 2, 3 in the second.
    inter: [__m512i; 2],
    /// Digit `i` (0..4) of `r < 81`, as `[r < 64, 64 ≤ r < 128]` halves of a `vpermi2b` table.
    digit: [[__m512i; 2]; 4],
    /// Bytes of two rows (masked load).
    load_mask: u64,
    row_bytes: usize,
}

impl TritTables {
    #[target_feature(enable = "avx512f,avx512bw")]
    fn new(row_bytes: usize) -> Self {
        let rb = row_bytes;
        let inter = |seg: usize| {
            bytes64(&|i| {
                let (kk, u) = (i / 4, i % 4);
                let k = WIDE_SEG * seg + kk;
                (64 * (u / 2) + rb * (u % 2) + k) as u8
            })
        };
        let digit = |i: usize, half: usize| {
            bytes64(&|j| {
                let r = 64 * half + j;
                ((r / 3usize.pow(i as u32)) % 3) as u8
            })
        };
        Self {
            inter: [load64(&inter(0)), load64(&inter(1))],
            digit: core::array::from_fn(|i| [load64(&digit(i, 0)), load64(&digit(i, 1))]),
            load_mask: u64::MAX >> (64 - 2 * rb),
            row_bytes,
        }
    }
}

/// The five base-3 digits (0..2) of every byte (≤ 242) of `b`, least significant first.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn digits5(tt: &TritTables, b: __m512i) -> [__m512i; 5] {
    let c81 = _mm512_set1_epi8(81);
    let one = _mm512_set1_epi8(1);
    let m1 = _mm512_cmpge_epu8_mask(b, c81);
    let m2 = _mm512_cmpge_epu8_mask(b, _mm512_set1_epi8(162u8 as i8));
    let r = _mm512_mask_sub_epi8(b, m1, b, c81);
    let r = _mm512_mask_sub_epi8(r, m2, r, c81);
    let d4 = _mm512_maskz_mov_epi8(m1, one);
    let d4 = _mm512_mask_add_epi8(d4, m2, d4, one);
    let lut = |i: usize| _mm512_permutex2var_epi8(tt.digit[i][0], r, tt.digit[i][1]);
    [lut(0), lut(1), lut(2), lut(3), d4]
}

/// `e^x` for x ≤ 0 (about 1e-7 relative; 0 below −87).
#[inline]
#[target_feature(enable = "avx512f")]
fn exp512(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(core::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let c = |v: f32| _mm512_set1_ps(v);
    let p = _mm512_fmadd_ps(r, c(0.001_393_874_6), c(0.008_333_452));
    let p = _mm512_fmadd_ps(r, p, c(0.041_666_41));
    let p = _mm512_fmadd_ps(r, p, c(0.166_666_6));
    let p = _mm512_fmadd_ps(r, p, c(0.5));
    let p = _mm512_fmadd_ps(r, p, c(1.0));
    let p = _mm512_fmadd_ps(r, p, c(1.0));
    _mm512_scalef_ps(p, n)
}

/// Reads 4 int8 weights at `w[at..at + 4]` as one broadcast word.
#[inline(always)]
fn weight_word(w: &[i8], at: usize) -> i32 {
    i32::from_le_bytes([
        w[at] as u8,
        w[at + 1] as u8,
        w[at + 2] as u8,
        w[at + 3] as u8,
    ])
}

/// Per-block int8 weights of `H` queries (lanes and outliers) with their scales and constants.
struct Weights<const H: usize> {
    /// `[h][lanes padded to 16]`.
    lanes: alloc::vec::Vec<i8>,
    /// `[h][outliers padded to 16]`.
    outs: alloc::vec::Vec<i8>,
    sc_l: [f32; H],
    sc_o: [f32; H],
    cst: [f32; H],
    /// f32 scratch of one query's weights.
    tmp: alloc::vec::Vec<f32>,
    /// Per-lane `fa·s`, `fb·s`; per-outlier step and offset (padded with zeros).
    sfa: alloc::vec::Vec<f32>,
    sfb: alloc::vec::Vec<f32>,
    step: alloc::vec::Vec<f32>,
    lo: alloc::vec::Vec<f32>,
    m16: usize,
    k16: usize,
}

impl<const H: usize> Weights<H> {
    fn new(plan: &Plan) -> Self {
        let (m16, k16) = (plan.m.next_multiple_of(16), plan.k.next_multiple_of(16));
        Self {
            lanes: alloc::vec![0; H * m16],
            outs: alloc::vec![0; H * k16],
            sc_l: [0.0; H],
            sc_o: [0.0; H],
            cst: [0.0; H],
            tmp: alloc::vec![0.0; m16.max(k16)],
            sfa: alloc::vec![0.0; m16],
            sfb: alloc::vec![0.0; m16],
            step: alloc::vec![0.0; k16],
            lo: alloc::vec![0.0; k16],
            m16,
            k16,
        }
    }

    /// α = w·fa·s per lane and q·step per outlier, quantized per query; constant Σ w·fb·s + Σ q·lo.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq")]
    fn compute(&mut self, plan: &Plan, hdr: &BlockHeader, mw: &MaskWeights) {
        for j in 0..plan.m {
            self.sfa[j] = plan.lane_fa[j] * hdr.s_lane[j];
            self.sfb[j] = plan.lane_fb[j] * hdr.s_lane[j];
        }
        for i in 0..plan.k {
            self.lo[i] = hdr.params[2 * i];
            self.step[i] = hdr.params[2 * i + 1];
        }
        for h in 0..H {
            let mut c = _mm512_setzero_ps();
            let wt = &mw.wt[h * self.m16..][..self.m16];
            let amax = scale_rows(wt, &self.sfa, &self.sfb, &mut self.tmp, &mut c);
            self.sc_l[h] =
                quantize_row(&self.tmp[..self.m16], amax, &mut self.lanes[h * self.m16..]);
            let qo = &mw.qo[h * self.k16..][..self.k16];
            let amax = scale_rows(qo, &self.step, &self.lo, &mut self.tmp, &mut c);
            self.sc_o[h] =
                quantize_row(&self.tmp[..self.k16], amax, &mut self.outs[h * self.k16..]);
            self.cst[h] = _mm512_reduce_add_ps(c);
        }
    }
}

/// `tmp = w·a`, `c += w·b` (16 at a time); returns max |w·a|.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn scale_rows(w: &[f32], a: &[f32], b: &[f32], tmp: &mut [f32], c: &mut __m512) -> f32 {
    let mut amax = _mm512_setzero_ps();
    for i in (0..w.len()).step_by(16) {
        // SAFETY: `w`, `a`, `b` and `tmp` hold at least `w.len()` (a multiple of 16) floats.
        unsafe {
            let wv = _mm512_loadu_ps(w.as_ptr().add(i));
            let av = _mm512_mul_ps(wv, _mm512_loadu_ps(a.as_ptr().add(i)));
            *c = _mm512_fmadd_ps(wv, _mm512_loadu_ps(b.as_ptr().add(i)), *c);
            _mm512_storeu_ps(tmp.as_mut_ptr().add(i), av);
            amax = _mm512_max_ps(amax, _mm512_abs_ps(av));
        }
    }
    _mm512_reduce_max_ps(amax)
}

/// Rounds `x·127/amax` to int8 into `out`; returns the scale `amax/127` (0 when `amax` is 0).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn quantize_row(x: &[f32], amax: f32, out: &mut [i8]) -> f32 {
    let inv = if amax > 0.0 { 127.0 / amax } else { 0.0 };
    let iv = _mm512_set1_ps(inv);
    for i in (0..x.len()).step_by(16) {
        // SAFETY: `x` holds a multiple of 16 floats and `out` at least as many bytes.
        unsafe {
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x.as_ptr().add(i)), iv));
            _mm_storeu_si128(out.as_mut_ptr().add(i).cast(), _mm512_cvtepi32_epi8(q));
        }
    }
    amax / 127.0
}

/// Quantized blocks and residual with the 512-bit kernel.
///
/// # Safety
/// The CPU must support the AVX-512 level, VNNI and VBMI ([`supported`]); `plan.wide`.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi")]
pub(crate) unsafe fn attend(
    plan: &Plan,
    qt: &[Lanes],
    hq: usize,
    cache: &HeadCache<'_>,
    state: &mut QuantState,
    res: &mut Residual,
) -> Result<()> {
    match hq {
        1 => quantized::<1>(plan, qt, cache, state)?,
        2 => quantized::<2>(plan, qt, cache, state)?,
        3 => quantized::<3>(plan, qt, cache, state)?,
        4 => quantized::<4>(plan, qt, cache, state)?,
        5 => quantized::<5>(plan, qt, cache, state)?,
        6 => quantized::<6>(plan, qt, cache, state)?,
        7 => quantized::<7>(plan, qt, cache, state)?,
        _ => quantized::<8>(plan, qt, cache, state)?,
    }
    residual_part(qt.len(), qt, hq, cache, res);
    Ok(())
}

/// The quantized blocks for `H` queries.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi")]
fn quantized<const H: usize>(
    plan: &Plan,
    qt: &[Lanes],
    cache: &HeadCache<'_>,
    state: &mut QuantState,
) -> Result<()> {
    let ct = CodeTables::new();
    let tt = TritTables::new(plan.row_bytes);
    let mut mw = MaskWeights::new(
        plan,
        plan.m.next_multiple_of(16),
        plan.k.next_multiple_of(16),
    );
    let mut hdr = BlockHeader::new(plan);
    let mut wts = Weights::<H>::new(plan);
    let mut chunk = [0u8; 32];
    let mut digits = [_mm512_setzero_si512(); QUADS * VREGS];
    let mut scale = [_mm512_setzero_ps(); VREGS];
    let mut slot_idx = [_mm512_setzero_si512(); VREGS];
    for (r, v) in slot_idx.iter_mut().enumerate() {
        let idx: [i32; 16] = core::array::from_fn(|kk| {
            let c = plan.slot_channel[r * WIDE_SEG + kk];
            if c < plan.d { c as i32 } else { plan.d as i32 }
        });
        // SAFETY: 16 readable words.
        *v = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
    }
    let subs = plan.g / SUB;
    for b in 0..cache.blocks {
        let kb = &cache.key_blocks[b * plan.key_bytes..][..plan.key_bytes];
        let vb = &cache.value_blocks[b * plan.value_bytes..][..plan.value_bytes];
        let mask = hdr.read(plan, cache, b)?;
        mw.update(plan, qt, H, mask);
        wts.compute(plan, &hdr, &mw);
        for (s, idx) in scale.iter_mut().zip(&slot_idx) {
            // SAFETY: every index is below `d + 1 = hdr.v_scale.len()`.
            *s = unsafe { _mm512_i32gather_ps::<4>(*idx, hdr.v_scale.as_ptr()) };
        }
        for sb in 0..subs {
            let mut scores = [[_mm512_setzero_ps(); 2]; H];
            key_scores(plan, &ct, &wts, kb, sb, &mut chunk, &mut scores);
            value_digits(plan, &tt, vb, sb, &mut digits);
            for h in 0..H {
                head_update(
                    h,
                    &scores[h],
                    &digits,
                    &scale,
                    state,
                    crate::kernel::slot_count(plan),
                );
            }
        }
    }
    Ok(())
}

/// Scores of the 32 tokens of sub-block `sb` for every query (two registers of 16 each).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
fn key_scores<const H: usize>(
    plan: &Plan,
    ct: &CodeTables,
    w: &Weights<H>,
    kb: &[u8],
    sb: usize,
    chunk: &mut [u8; 32],
    scores: &mut [[__m512; 2]; H],
) {
    let mut acc = [[_mm512_setzero_si512(); 2]; H];
    for gi in 0..plan.lane_groups {
        let src = lane_chunk(plan, kb, gi, sb, chunk);
        // SAFETY: `src` is 16 readable bytes.
        let c = unsafe { _mm512_castsi128_si512(_mm_loadu_si128(src.as_ptr().cast())) };
        let c0 = _mm512_and_si512(_mm512_permutexvar_epi8(ct.lane_idx[0], c), ct.lane_sel);
        let c1 = _mm512_and_si512(_mm512_permutexvar_epi8(ct.lane_idx[1], c), ct.lane_sel);
        for (h, a) in acc.iter_mut().enumerate() {
            let wv = _mm512_set1_epi32(weight_word(&w.lanes, h * w.m16 + 4 * gi));
            a[0] = _mm512_dpbusd_epi32(a[0], c0, wv);
            a[1] = _mm512_dpbusd_epi32(a[1], c1, wv);
        }
    }
    for h in 0..H {
        let f = _mm512_mul_ps(_mm512_set1_ps(w.sc_l[h]), ct.lane_inv);
        let cst = _mm512_set1_ps(w.cst[h]);
        for r in 0..2 {
            scores[h][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[h][r]), f, cst);
        }
    }
    let mut acc = [[_mm512_setzero_si512(); 2]; H];
    for gi in 0..plan.out_groups {
        let src = outlier_chunk(plan, kb, gi, sb, chunk);
        // SAFETY: `src` is 32 readable bytes.
        let c = unsafe { _mm512_castsi256_si512(_mm256_loadu_si256(src.as_ptr().cast())) };
        let c0 = _mm512_and_si512(_mm512_permutexvar_epi8(ct.out_idx[0], c), ct.out_sel);
        let c1 = _mm512_and_si512(_mm512_permutexvar_epi8(ct.out_idx[1], c), ct.out_sel);
        for (h, a) in acc.iter_mut().enumerate() {
            let wv = _mm512_set1_epi32(weight_word(&w.outs, h * w.k16 + 4 * gi));
            a[0] = _mm512_dpbusd_epi32(a[0], c0, wv);
            a[1] = _mm512_dpbusd_epi32(a[1], c1, wv);
        }
    }
    for h in 0..H {
        let f = _mm512_mul_ps(_mm512_set1_ps(w.sc_o[h]), ct.out_inv);
        for r in 0..2 {
            scores[h][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[h][r]), f, scores[h][r]);
        }
    }
}

/// Digit registers of the 32 value rows of sub-block `sb`: `digits[quad·10 + 5·seg + digit]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vbmi")]
fn value_digits(
    plan: &Plan,
    tt: &TritTables,
    vb: &[u8],
    sb: usize,
    digits: &mut [__m512i; QUADS * VREGS],
) {
    let rb = tt.row_bytes;
    let rows = &vb[plan.v_trits.range()];
    for qd in 0..QUADS {
        let t0 = sb * SUB + 4 * qd;
        let quad = &rows[t0 * rb..][..4 * rb];
        // SAFETY: the masked loads read `2·rb` bytes at the start of each half of `quad`.
        let (x, y) = unsafe {
            (
                _mm512_maskz_loadu_epi8(tt.load_mask, quad.as_ptr().cast()),
                _mm512_maskz_loadu_epi8(tt.load_mask, quad.as_ptr().add(2 * rb).cast()),
            )
        };
        for seg in 0..2 {
            let bytes = _mm512_permutex2var_epi8(x, tt.inter[seg], y);
            let d = digits5(tt, bytes);
            digits[qd * VREGS + 5 * seg..][..5].copy_from_slice(&d);
        }
    }
}

/// Online softmax and value accumulation of query `h` over one sub-block.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
fn head_update(
    h: usize,
    scores: &[__m512; 2],
    digits: &[__m512i; QUADS * VREGS],
    scale: &[__m512; VREGS],
    state: &mut QuantState,
    slots: usize,
) {
    let bmax = _mm512_reduce_max_ps(_mm512_max_ps(scores[0], scores[1]));
    let m_new = state.m[h].max(bmax);
    let corr = exp_approx(state.m[h] - m_new);
    let pmax = exp_approx(bmax - m_new);
    let bm = _mm512_set1_ps(bmax);
    let pq = |s: __m512| {
        let p = exp512(_mm512_sub_ps(s, bm));
        _mm512_cvtps_epi32(_mm512_mul_ps(p, _mm512_set1_ps(255.0)))
    };
    let (q0, q1) = (pq(scores[0]), pq(scores[1]));
    let psum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    let mut pbytes = [0u8; SUB];
    // SAFETY: `pbytes` is 32 writable bytes.
    unsafe {
        _mm_storeu_si128(pbytes.as_mut_ptr().cast(), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(pbytes.as_mut_ptr().add(16).cast(), _mm512_cvtepi32_epi8(q1));
    }
    let pscale = pmax / 255.0;
    state.l[h] = state.l[h] * corr + pscale * psum as f32;
    state.m[h] = m_new;
    // Σ p·q = Σ p·(digit − 1): start every accumulator at −Σ p.
    let mut acc = [_mm512_set1_epi32(-psum); VREGS];
    for qd in 0..QUADS {
        let pv = _mm512_set1_epi32(i32::from_le_bytes([
            pbytes[4 * qd],
            pbytes[4 * qd + 1],
            pbytes[4 * qd + 2],
            pbytes[4 * qd + 3],
        ]));
        for (a, dv) in acc.iter_mut().zip(&digits[qd * VREGS..][..VREGS]) {
            *a = _mm512_dpbusd_epi32(*a, pv, *dv);
        }
    }
    let o = &mut state.o_slots[h * slots..][..slots];
    let (cv, pv) = (_mm512_set1_ps(corr), _mm512_set1_ps(pscale));
    for (j, a) in acc.iter().enumerate() {
        // SAFETY: `o` holds `slots = 16·VREGS` floats.
        unsafe {
            let op = o.as_mut_ptr().add(16 * j);
            let add = _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(*a), scale[j]), pv);
            _mm512_storeu_ps(op, _mm512_fmadd_ps(_mm512_loadu_ps(op), cv, add));
        }
    }
}
