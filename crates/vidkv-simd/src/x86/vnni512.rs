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

use vidkv_core::{ChannelMask, Result};

use crate::attend::{HeadCache, Residual, residual_part};
use crate::fft::{Lanes, Row};
use crate::kernel::{BlockHeader, Plan, QuantState, SUB, WIDE_SEG, lane_chunk, outlier_chunk};
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

#[target_feature(enable = "avx512f")]
fn load64(t: &[u8; 64]) -> __m512i {
    // SAFETY: `t` is 64 readable bytes.
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

/// The weight chunk of group `gi` (64 bytes: 8 queries × 8 weights, see [`Weights`]).
#[inline(always)]
fn weight_chunk(w: &[i8], gi: usize) -> &[i8; 64] {
    w[64 * (gi / 2)..][..64].try_into().expect("whole chunks")
}

/// Query `h`'s 4 weights of group `gi` in its chunk, as one word to broadcast.
#[inline(always)]
fn weight_word(chunk: &[i8; 64], h: usize, gi: usize) -> i32 {
    let at = 8 * (h % 8) + 4 * (gi % 2);
    let b: [i8; 4] = [chunk[at], chunk[at + 1], chunk[at + 2], chunk[at + 3]];
    i32::from_le_bytes(b.map(|v| v as u8))
}

/// A 16-lane adjoint row in one register, so that the FFT's butterflies are single 512-bit
/// operations (portable `[f32; 16]` rows get vectorized across iterations, with scatters).
#[derive(Clone, Copy)]
#[repr(transparent)]
struct Zmm(__m512);

// SAFETY (every method): `Zmm` values exist only inside this module's kernel, which runs after
// `supported()` confirmed AVX-512F.
impl Row for Zmm {
    #[inline(always)]
    fn zero() -> Self {
        // SAFETY: see the impl comment.
        Zmm(unsafe { _mm512_setzero_ps() })
    }
    #[inline(always)]
    fn add(self, b: Self) -> Self {
        // SAFETY: see the impl comment.
        Zmm(unsafe { _mm512_add_ps(self.0, b.0) })
    }
    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        // SAFETY: see the impl comment.
        Zmm(unsafe { _mm512_sub_ps(self.0, b.0) })
    }
    #[inline(always)]
    fn scale(self, s: f32) -> Self {
        // SAFETY: see the impl comment.
        Zmm(unsafe { _mm512_mul_ps(self.0, _mm512_set1_ps(s)) })
    }
    #[inline(always)]
    fn mul_add(self, a: Self, s: f32) -> Self {
        // SAFETY: see the impl comment.
        Zmm(unsafe { _mm512_fmadd_ps(a.0, _mm512_set1_ps(s), self.0) })
    }
}

/// The rows as 16 floats each.
fn as_floats(rows: &[Zmm]) -> &[[f32; 16]] {
    // SAFETY: `Zmm` is a transparent 64-byte `__m512`, any bit pattern of which is 16 valid
    // floats; `[f32; 16]` needs less alignment.
    unsafe { core::slice::from_raw_parts(rows.as_ptr().cast(), rows.len()) }
}

/// The adjoint rows of two consecutive blocks side by side (lanes 0..8: the first block's
/// queries, 8..16: the second's), so that one 512-bit FFT serves both: with block-scope outliers
/// the mask, hence the adjoint, changes at almost every block.
struct PairRows {
    prev: Option<[ChannelMask; 2]>,
    x: alloc::vec::Vec<Zmm>,
    w: alloc::vec::Vec<Zmm>,
    scratch: alloc::vec::Vec<Zmm>,
    x_out: alloc::vec::Vec<Zmm>,
}

impl PairRows {
    #[target_feature(enable = "avx512f")]
    fn new(plan: &Plan) -> Self {
        let (d, m) = (plan.d.max(1), plan.m.max(1));
        Self {
            prev: None,
            x: alloc::vec![Zmm::zero(); d],
            w: alloc::vec![Zmm::zero(); m],
            scratch: alloc::vec![Zmm::zero(); 2 * m],
            x_out: alloc::vec![Zmm::zero(); d],
        }
    }

    /// Splits the queries by both masks (branch-free) and runs the adjoint, unless the masks
    /// are those of the previous pair.
    #[inline]
    #[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")]
    fn update(&mut self, plan: &Plan, qt: &[Lanes], masks: [ChannelMask; 2]) {
        if self.prev == Some(masks) {
            return;
        }
        self.split(plan, qt, masks);
        let m = plan.m;
        if m > 0 {
            plan.adjoint
                .apply(&self.x[..m], &mut self.w[..m], &mut self.scratch);
        }
        self.prev = Some(masks);
    }

    /// Appends every channel's query row to the normal or the outlier list of each block
    /// (both lists are written, only the right one advances: no branches).
    #[inline]
    #[target_feature(enable = "avx2,avx512f")]
    fn split(&mut self, plan: &Plan, qt: &[Lanes], masks: [ChannelMask; 2]) {
        let d = plan.d.min(qt.len()).min(self.x.len()).min(self.x_out.len());
        let q = qt.as_ptr().cast::<f32>();
        let (xp, op) = (
            self.x.as_mut_ptr().cast::<f32>(),
            self.x_out.as_mut_ptr().cast::<f32>(),
        );
        let (mut na, mut nb, mut oa, mut ob) = (0usize, 0usize, 0usize, 0usize);
        for wi in 0..d.div_ceil(32) {
            let (mut a, mut b) = (masks[0].words[wi], masks[1].words[wi]);
            for c in 32 * wi..d.min(32 * wi + 32) {
                let (ba, bb) = ((a & 1) as usize, (b & 1) as usize);
                (a, b) = (a >> 1, b >> 1);
                // SAFETY: c < d ≤ qt.len(); every list index is at most c, below the d rows
                // of `x` and `x_out` (16 floats each, the second block at offset 8).
                unsafe {
                    let v = _mm256_loadu_ps(q.add(8 * c));
                    _mm256_storeu_ps(xp.add(16 * na), v);
                    _mm256_storeu_ps(xp.add(16 * nb + 8), v);
                    _mm256_storeu_ps(op.add(16 * oa), v);
                    _mm256_storeu_ps(op.add(16 * ob + 8), v);
                }
                (na, nb, oa, ob) = (na + 1 - ba, nb + 1 - bb, oa + ba, ob + bb);
            }
        }
    }

    fn lane_rows(&self, plan: &Plan) -> &[[f32; 16]] {
        as_floats(&self.w[..plan.m])
    }

    fn outlier_rows(&self, plan: &Plan) -> &[[f32; 16]] {
        as_floats(&self.x_out[..plan.k])
    }
}

/// Per-block int8 weights of `H` queries with their scales and constants. The weights are
/// computed in the structure-of-arrays layout the adjoint produces (row `j` = 8 queries) and
/// transposed as int8: chunk `k` (64 bytes) holds byte `8·h + jj` = weight `8·k + jj` of query
/// `h`, so query `h`'s weights of group `gi` are the word at `64·(gi/2) + 8·h + 4·(gi mod 2)`.
struct Weights<const H: usize> {
    lanes: alloc::vec::Vec<i8>,
    outs: alloc::vec::Vec<i8>,
    sc_l: [f32; H],
    sc_o: [f32; H],
    cst: [f32; H],
    /// f32 weights of one block, SoA rows.
    tmp: alloc::vec::Vec<f32>,
    /// int8 weights, SoA rows, before the transpose.
    soa: alloc::vec::Vec<i8>,
    /// Per-lane `fa·s` and `fb·s` (padded with zeros).
    sfa: alloc::vec::Vec<f32>,
    sfb: alloc::vec::Vec<f32>,
}

impl<const H: usize> Weights<H> {
    fn new(plan: &Plan) -> Self {
        let rows = plan.m.max(plan.k).next_multiple_of(8);
        Self {
            lanes: alloc::vec![0; 8 * plan.m.next_multiple_of(8)],
            outs: alloc::vec![0; 8 * plan.k.next_multiple_of(8)],
            sc_l: [0.0; H],
            sc_o: [0.0; H],
            cst: [0.0; H],
            tmp: alloc::vec![0.0; 8 * rows],
            soa: alloc::vec![0; 8 * rows],
            sfa: alloc::vec![0.0; plan.m + 4],
            sfb: alloc::vec![0.0; plan.m + 4],
        }
    }

    /// α = w·fa·s per lane and q·step per outlier, quantized per query; constant Σ w·fb·s + Σ q·lo.
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi")]
    fn compute(&mut self, plan: &Plan, hdr: &BlockHeader, pr: &PairRows, half: usize) {
        for j in 0..plan.m {
            self.sfa[j] = plan.lane_fa[j] * hdr.s_lane[j];
            self.sfb[j] = plan.lane_fb[j] * hdr.s_lane[j];
        }
        let mut c = _mm512_setzero_ps();
        let (sfa, sfb) = (&self.sfa, &self.sfb);
        // Lane pair p: factors [s_2p ×8, s_2p+1 ×8].
        let lane_ab = |p: usize| {
            // SAFETY: `sfa`, `sfb` hold m + 4 floats and 2p < m.
            unsafe {
                let a = _mm512_castps128_ps512(_mm_loadu_ps(sfa.as_ptr().add(2 * p)));
                let b = _mm512_castps128_ps512(_mm_loadu_ps(sfb.as_ptr().add(2 * p)));
                (pair_bcast(a, 0, 1), pair_bcast(b, 0, 1))
            }
        };
        let amax = scale_pairs(pr.lane_rows(plan), half, lane_ab, &mut self.tmp, &mut c);
        let sc = quantize_pairs(plan.m, amax, &self.tmp, &mut self.soa, &mut self.lanes);
        self.sc_l = core::array::from_fn(|h| sc[h]);
        let params = &hdr.params;
        // Outlier pair p: params [lo, step, lo, step] of outliers 2p, 2p + 1.
        let out_ab = |p: usize| {
            let n = (2 * plan.k - 4 * p).min(4);
            // SAFETY: the masked load reads `n` floats at 4p, inside the 2k parameters.
            let v = unsafe {
                _mm512_castps128_ps512(_mm_maskz_loadu_ps(
                    (1u8 << n) - 1,
                    params.as_ptr().add(4 * p),
                ))
            };
            (pair_bcast(v, 1, 3), pair_bcast(v, 0, 2))
        };
        let amax = scale_pairs(pr.outlier_rows(plan), half, out_ab, &mut self.tmp, &mut c);
        let sc = quantize_pairs(plan.k, amax, &self.tmp, &mut self.soa, &mut self.outs);
        self.sc_o = core::array::from_fn(|h| sc[h]);
        let c8 = _mm256_add_ps(_mm512_castps512_ps256(c), _mm512_extractf32x8_ps::<1>(c));
        let mut cs = [0.0f32; 8];
        // SAFETY: 8 writable floats.
        unsafe { _mm256_storeu_ps(cs.as_mut_ptr(), c8) };
        self.cst = core::array::from_fn(|h| cs[h]);
    }
}

/// `[v[i] ×8, v[j] ×8]`.
#[inline]
#[target_feature(enable = "avx512f")]
fn pair_bcast(v: __m512, i: i32, j: i32) -> __m512 {
    let idx = _mm512_mask_blend_epi32(0xFF00, _mm512_set1_epi32(i), _mm512_set1_epi32(j));
    _mm512_permutexvar_ps(idx, v)
}

/// For the SoA rows of block `half` of a [`PairRows`], two rows (16 floats) at a time:
/// `tmp = rows·a(p)`, `c += rows·b(p)`; returns max |rows·a| per query.
#[inline]
#[target_feature(enable = "avx512f,avx512dq")]
fn scale_pairs(
    rows: &[[f32; 16]],
    half: usize,
    ab: impl Fn(usize) -> (__m512, __m512),
    tmp: &mut [f32],
    c: &mut __m512,
) -> __m256 {
    let mut amax = _mm512_setzero_ps();
    for p in 0..rows.len().div_ceil(2) {
        let (a, b) = ab(p);
        let lo = &rows[2 * p][8 * half..][..8];
        let hi = rows
            .get(2 * p + 1)
            .map_or(&[0.0f32; 8][..], |r| &r[8 * half..][..8]);
        // SAFETY: `lo` and `hi` are 8 floats each; `tmp` holds 8 floats per row rounded up to
        // whole chunks of 8 rows.
        unsafe {
            let wv = _mm512_insertf32x8::<1>(
                _mm512_castps256_ps512(_mm256_loadu_ps(lo.as_ptr())),
                _mm256_loadu_ps(hi.as_ptr()),
            );
            let av = _mm512_mul_ps(wv, a);
            *c = _mm512_fmadd_ps(wv, b, *c);
            _mm512_storeu_ps(tmp.as_mut_ptr().add(16 * p), av);
            amax = _mm512_max_ps(amax, _mm512_abs_ps(av));
        }
    }
    _mm256_max_ps(
        _mm512_castps512_ps256(amax),
        _mm512_extractf32x8_ps::<1>(amax),
    )
}

/// Quantizes `n` SoA rows of `tmp` to int8 per query (|q| ≤ 127) into `soa`, transposes them
/// into `out` ([`Weights`]' layout) and returns the per-query scales (0 for all-zero weights).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx512vbmi")]
fn quantize_pairs(n: usize, amax: __m256, tmp: &[f32], soa: &mut [i8], out: &mut [i8]) -> [f32; 8] {
    let pos = _mm256_cmp_ps_mask::<_CMP_GT_OQ>(amax, _mm256_setzero_ps());
    let inv8 = _mm256_maskz_div_ps(pos, _mm256_set1_ps(127.0), amax);
    let inv = _mm512_insertf32x8::<1>(_mm512_castps256_ps512(inv8), inv8);
    for p in 0..n.div_ceil(2) {
        // SAFETY: `tmp` holds the 16 floats of pair p; `soa` 16 bytes at 16p.
        unsafe {
            let q = _mm512_cvtps_epi32(_mm512_mul_ps(
                _mm512_loadu_ps(tmp.as_ptr().add(16 * p)),
                inv,
            ));
            _mm_storeu_si128(soa.as_mut_ptr().add(16 * p).cast(), _mm512_cvtepi32_epi8(q));
        }
    }
    // Byte 8·h + jj of a chunk ← byte 8·jj + h.
    let idx: [u8; 64] = core::array::from_fn(|i| (8 * (i % 8) + i / 8) as u8);
    // SAFETY: 64 readable bytes.
    let idx = unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) };
    for k in 0..n.div_ceil(8) {
        // SAFETY: `soa` and `out` hold whole 64-byte chunks of 8 rows.
        unsafe {
            let v = _mm512_loadu_si512(soa.as_ptr().add(64 * k).cast());
            _mm512_storeu_si512(
                out.as_mut_ptr().add(64 * k).cast(),
                _mm512_permutexvar_epi8(idx, v),
            );
        }
    }
    let sc = _mm256_mul_ps(amax, _mm256_set1_ps(1.0 / 127.0));
    let mut s = [0.0f32; 8];
    // SAFETY: 8 writable floats.
    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), sc) };
    s
}

/// Converts LE f16 `bytes` to `out` (16 at a time); `false` if any is not finite, or negative
/// (other than −0) at a position whose bit is set in the 16-bit pattern `nonneg`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn f16s_checked(bytes: &[u8], out: &mut [f32], nonneg: u16) -> bool {
    let n = out.len().min(bytes.len() / 2);
    let mut bad = 0u16;
    for i in (0..n).step_by(16) {
        let lm = u16::MAX >> (16 - (n - i).min(16));
        // SAFETY: the masked load and store touch only the `n − i` (≤ 16) elements left.
        unsafe {
            let h = _mm256_maskz_loadu_epi16(lm, bytes.as_ptr().add(2 * i).cast());
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), lm, _mm512_cvtph_ps(h));
            let exp = _mm256_set1_epi16(0x7c00);
            let inf = _mm256_cmpeq_epi16_mask(_mm256_and_si256(h, exp), exp);
            let neg = _mm256_cmpgt_epu16_mask(h, _mm256_set1_epi16(0x8000u16 as i16));
            bad |= (inf | (neg & nonneg)) & lm;
        }
    }
    bad == 0
}

/// Whether every byte is a valid trit byte (≤ 242).
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn trits_valid(bytes: &[u8]) -> bool {
    let mut mx = _mm512_setzero_si512();
    for i in (0..bytes.len()).step_by(64) {
        let lm = u64::MAX >> (64 - (bytes.len() - i).min(64));
        // SAFETY: the masked load reads only the bytes left.
        let v = unsafe { _mm512_maskz_loadu_epi8(lm, bytes.as_ptr().add(i).cast()) };
        mx = _mm512_max_epu8(mx, v);
    }
    let limit = _mm512_set1_epi8(vidkv_core::pack::MAX_TRIT_BYTE as i8);
    _mm512_cmpgt_epu8_mask(mx, limit) == 0
}

/// [`BlockHeader::read`] with 512-bit conversions and checks: `None` when anything is invalid
/// (the caller then lets `BlockHeader::read` name the error).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn read_header(
    plan: &Plan,
    cache: &HeadCache<'_>,
    b: usize,
    hdr: &mut BlockHeader,
) -> Option<ChannelMask> {
    let kb = &cache.key_blocks[b * plan.key_bytes..][..plan.key_bytes];
    let vb = &cache.value_blocks[b * plan.value_bytes..][..plan.value_bytes];
    let mask = ChannelMask::read(&kb[plan.mask.range()], plan.d, plan.k).ok()?;
    let ok = f16s_checked(&kb[plan.lane_scales.range()], &mut hdr.s_lane, u16::MAX)
        & f16s_checked(&kb[plan.outlier_params.range()], &mut hdr.params, 0xAAAA)
        & f16s_checked(
            &vb[plan.v_scales.range()],
            &mut hdr.v_scale[..plan.d],
            u16::MAX,
        )
        & trits_valid(&vb[plan.v_trits.range()]);
    ok.then_some(mask)
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
    let mut pr = PairRows::new(plan);
    let mut hdrs = [BlockHeader::new(plan), BlockHeader::new(plan)];
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
    let slots = crate::kernel::slot_count(plan);
    let mut b = 0;
    while b < cache.blocks {
        let n = (cache.blocks - b).min(2);
        let mut masks = [ChannelMask::default(); 2];
        for i in 0..n {
            masks[i] = match read_header(plan, cache, b + i, &mut hdrs[i]) {
                Some(mask) => mask,
                None => hdrs[i].read(plan, cache, b + i)?,
            };
        }
        if n == 1 {
            masks[1] = masks[0];
        }
        prefetch_blocks(plan, cache, b + 2..b + 4);
        pr.update(plan, qt, masks);
        for (i, hdr) in hdrs.iter().enumerate().take(n) {
            let kb = &cache.key_blocks[(b + i) * plan.key_bytes..][..plan.key_bytes];
            let vb = &cache.value_blocks[(b + i) * plan.value_bytes..][..plan.value_bytes];
            wts.compute(plan, hdr, &pr, i);
            for (s, idx) in scale.iter_mut().zip(&slot_idx) {
                // SAFETY: every index is below `d + 1 = hdr.v_scale.len()`.
                *s = unsafe { _mm512_i32gather_ps::<4>(*idx, hdr.v_scale.as_ptr()) };
            }
            for sb in 0..subs {
                let mut scores = [[_mm512_setzero_ps(); 2]; H];
                key_scores(plan, &ct, &wts, kb, sb, &mut chunk, &mut scores);
                value_digits(plan, &tt, vb, sb, &mut digits);
                for h in 0..H {
                    head_update(h, &scores[h], &digits, &scale, state, slots);
                }
            }
        }
        b += n;
    }
    Ok(())
}

/// Prefetches the key and value bytes of `blocks` (those that exist) into L1: the step reads
/// two sequential streams at a modest rate, and the hardware prefetchers alone leave the
/// kernel waiting on them when the cache is not cache-resident.
#[inline]
#[target_feature(enable = "sse")]
fn prefetch_blocks(plan: &Plan, cache: &HeadCache<'_>, blocks: core::ops::Range<usize>) {
    let blocks = blocks.start..blocks.end.min(cache.blocks);
    let keys = cache
        .key_blocks
        .get(blocks.start * plan.key_bytes..blocks.end * plan.key_bytes);
    let values =
        (cache.value_blocks).get(blocks.start * plan.value_bytes..blocks.end * plan.value_bytes);
    for bytes in [keys, values].into_iter().flatten() {
        for line in bytes.chunks(64) {
            _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
        }
    }
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
        let wc = weight_chunk(&w.lanes, gi);
        for (h, a) in acc.iter_mut().enumerate() {
            let wv = _mm512_set1_epi32(weight_word(wc, h, gi));
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
        let wc = weight_chunk(&w.outs, gi);
        for (h, a) in acc.iter_mut().enumerate() {
            let wv = _mm512_set1_epi32(weight_word(wc, h, gi));
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
    // One of the two factors is 1: the new maximum is either the old one or this block's.
    let (corr, pmax) = if bmax > state.m[h] {
        (exp_approx(state.m[h] - bmax), 1.0)
    } else {
        (1.0, exp_approx(bmax - state.m[h]))
    };
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
        let pw: [u8; 4] = pbytes[4 * qd..4 * qd + 4].try_into().unwrap_or([0; 4]);
        let pv = _mm512_set1_epi32(i32::from_le_bytes(pw));
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
