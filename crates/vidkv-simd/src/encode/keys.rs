//! Mixed-precision key blocks (DESIGN §1.1) under f32 arithmetic, vectorised across tokens:
//! lane `i` of every vector is token `t0 + i`, so the transform of each token runs the scalar
//! backend's butterflies in the same order and the bytes are identical.

use alloc::vec;
use alloc::vec::Vec;

use half::f16;
use vidkv_core::outliers::ChannelRanges;
use vidkv_core::{
    Arithmetic, Bits, ChannelMask, Codec, KeyLayout, KeyScheme, MixedKeys, OutlierScope, Transform,
};
use vidkv_cpu::affine;
use vidkv_cpu::arith::F16_MAX;
use vidkv_cpu::transform::{LaneTransform, is_imaginary_lane};

use super::simd::Simd;

/// What a mixed-key block encoder needs, computed once per call.
#[derive(Debug)]
pub(crate) struct KeyPlan {
    d: usize,
    g: usize,
    outliers: usize,
    lanes: usize,
    transform: Transform,
    fixed: Option<ChannelMask>,
    layout: KeyLayout,
    /// Bit-reversal permutation of the lanes (FFT).
    reversed: Vec<usize>,
    /// Butterfly twiddles `(cos, −sin)` per stage, in the scalar backend's order.
    twiddles: Vec<(f32, f32)>,
    /// Per output lane: the FFT bin and whether it is the imaginary part.
    sources: Vec<(usize, bool)>,
}

impl KeyPlan {
    pub(crate) fn g(&self) -> usize {
        self.g
    }

    pub(crate) fn d(&self) -> usize {
        self.d
    }

    pub(crate) fn lanes(&self) -> usize {
        self.lanes
    }

    pub(crate) fn transform(&self) -> Transform {
        self.transform
    }

    pub(crate) fn reversed(&self) -> &[usize] {
        &self.reversed
    }

    /// The plan, or `None` for configurations without a kernel (they run the scalar code):
    /// reference arithmetic, per-channel keys, a DFT of a length that is not a power of two.
    pub(crate) fn new(codec: &Codec, fixed: Option<&ChannelMask>) -> Option<Self> {
        let KeyScheme::Mixed(mixed) = codec.config().keys else {
            return None;
        };
        let k = mixed.outlier_count(codec.config().head_dim);
        let encodable = codec.config().arithmetic == Arithmetic::F32
            && valid_fixed(mixed, codec.head_dim(), k, fixed);
        if !encodable {
            return None;
        }
        Self::for_decode(codec).map(|plan| Self {
            fixed: fixed.copied(),
            ..plan
        })
    }

    /// The plan of a decoder (any arithmetic and outlier scope), or `None` without a kernel.
    pub(crate) fn for_decode(codec: &Codec) -> Option<Self> {
        let KeyScheme::Mixed(mixed) = codec.config().keys else {
            return None;
        };
        let (d, g) = (codec.head_dim(), codec.group());
        let outliers = mixed.outlier_count(codec.config().head_dim);
        let lanes = d - outliers;
        let usable =
            lanes == 0 || mixed.transform == Transform::Identity || lanes.is_power_of_two();
        if !usable {
            return None;
        }
        let transform = LaneTransform::new(mixed.transform, lanes);
        let (twiddles, reversed, sources) = if mixed.transform == Transform::Fft {
            fft_tables(&transform)
        } else {
            (Vec::new(), Vec::new(), Vec::new())
        };
        Some(Self {
            d,
            g,
            outliers,
            lanes,
            transform: mixed.transform,
            fixed: None,
            layout: *codec.key_layout(),
            reversed,
            twiddles,
            sources,
        })
    }
}

/// A given mask must be one the scalar encoder accepts (else it reports the error); block scope
/// may go without one.
fn valid_fixed(mixed: MixedKeys, d: usize, k: usize, fixed: Option<&ChannelMask>) -> bool {
    match fixed {
        Some(m) => m.count() == k && m.outliers(d).count() == k,
        None => mixed.scope == OutlierScope::Block,
    }
}

type FftTables = (Vec<(f32, f32)>, Vec<usize>, Vec<(usize, bool)>);

fn fft_tables(transform: &LaneTransform) -> FftTables {
    let m = transform.len();
    let (cos, sin) = transform.dft_table();
    let mut twiddles = Vec::new();
    let mut half = 1;
    while half < m {
        let stride = m / (2 * half);
        twiddles.extend((0..half).map(|i| (cos[i * stride], -sin[i * stride])));
        half *= 2;
    }
    let bits = m.trailing_zeros();
    let reversed = (0..m)
        .map(|n| {
            if bits == 0 {
                0
            } else {
                n.reverse_bits() >> (usize::BITS - bits)
            }
        })
        .collect();
    let sources = (0..m)
        .map(|j| (if j == 0 { 0 } else { j.div_ceil(2) }, is_imaginary_lane(j)))
        .collect();
    (twiddles, reversed, sources)
}

/// Working memory of the key kernel, reused across blocks.
pub(crate) struct KeyScratch<S: Simd> {
    re: Vec<S::F>,
    im: Vec<S::F>,
    /// `|z|`, lane-major `[M][G]`.
    zabs: Vec<f32>,
    /// Sign bits per lane, token `t` at bit `t`.
    bits: Vec<u128>,
    codes: Vec<u8>,
    normals: Vec<usize>,
    lo: Vec<f32>,
    hi: Vec<f32>,
    /// The block channel-major, `[D][G]`, when D is a multiple of the vector width (columns are
    /// then loaded, not gathered).
    columns: Option<Vec<f32>>,
    /// `|z|` token-major `[G][M]` for the lane sums, when M is a multiple of the width.
    zrows: Option<Vec<f32>>,
}

impl<S: Simd> KeyScratch<S> {
    #[inline(always)]
    pub(crate) unsafe fn new(plan: &KeyPlan) -> Self {
        // SAFETY: splat needs the level's instruction set (caller).
        let zero = unsafe { S::splat(0.0) };
        Self {
            re: vec![zero; plan.lanes.max(1)],
            im: vec![zero; plan.lanes.max(1)],
            zabs: vec![0.0; plan.lanes * plan.g],
            bits: vec![0; plan.lanes],
            codes: vec![0; plan.g],
            normals: Vec::with_capacity(plan.lanes),
            lo: vec![0.0; plan.d],
            hi: vec![0.0; plan.d],
            columns: plan
                .d
                .is_multiple_of(S::N)
                .then(|| vec![0.0; plan.d * plan.g]),
            zrows: plan
                .lanes
                .is_multiple_of(S::N)
                .then(|| vec![0.0; plan.lanes * plan.g]),
        }
    }
}

/// Encodes one block from its row-major `[G, D]` f32 rows.
///
/// # Safety
/// The instruction set of `S`; `rows` holds `G·D` values, `block` the key block size.
#[inline(always)]
pub(crate) unsafe fn encode_block<S: Simd>(
    plan: &KeyPlan,
    rows: &[f32],
    s: &mut KeyScratch<S>,
    block: &mut [u8],
) {
    let KeyLayout::Mixed { mask, .. } = plan.layout else {
        unreachable!("plans exist only for mixed keys")
    };
    // SAFETY: forwarded contract.
    let ranges = unsafe {
        if let Some(columns) = &mut s.columns {
            transpose::<S>(rows, plan.g, plan.d, columns);
        }
        channel_ranges::<S>(plan.d, rows, s)
    };
    let chosen = plan
        .fixed
        .unwrap_or_else(|| ranges.top(Arithmetic::F32, plan.outliers));
    chosen.write(&mut block[mask.range()]);
    // SAFETY: forwarded contract.
    unsafe {
        encode_outliers::<S>(plan, rows, &ranges, &chosen, s, block);
        encode_lanes::<S>(plan, rows, &chosen, s, block);
    }
}

/// `[rows][cols]` to `[cols][rows]`, in `N × N` tiles (both counts multiples of N).
#[inline(always)]
unsafe fn transpose<S: Simd>(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    for r0 in (0..rows).step_by(S::N) {
        for c0 in (0..cols).step_by(S::N) {
            // SAFETY: caller's instruction set; the tiles lie inside both `rows · cols` buffers.
            unsafe {
                S::transpose(
                    src.as_ptr().add(r0 * cols + c0),
                    cols,
                    dst.as_mut_ptr().add(c0 * rows + r0),
                    rows,
                );
            }
        }
    }
}

/// Channel `c` of tokens `t0..t0+N`: loaded from the transposed block, else gathered.
#[inline(always)]
unsafe fn column<S: Simd>(
    columns: Option<&[f32]>,
    rows: &[f32],
    d: usize,
    g: usize,
    c: usize,
    t0: usize,
) -> S::F {
    // SAFETY: caller's instruction set; `t0 + N ≤ G` and `c < D`.
    unsafe {
        match columns {
            Some(cm) => S::load(cm.as_ptr().add(c * g + t0)),
            None => S::gather(rows.as_ptr().add(t0 * d + c), d),
        }
    }
}

/// Per-channel min/max over the block's rows, vectorised across channels. A bound that is a
/// zero could differ in sign from the scalar fold's, so such blocks use the scalar fold.
#[inline(always)]
unsafe fn channel_ranges<S: Simd>(d: usize, rows: &[f32], s: &mut KeyScratch<S>) -> ChannelRanges {
    let scalar = || {
        let mut ranges = ChannelRanges::new(d);
        ranges.add_rows(rows);
        ranges
    };
    if !d.is_multiple_of(S::N) {
        return scalar();
    }
    for c0 in (0..d).step_by(S::N) {
        // SAFETY: caller's instruction set; rows of `d` values, bounds of `d` entries.
        unsafe {
            let (mut lo, mut hi) = (S::splat(f32::INFINITY), S::splat(f32::NEG_INFINITY));
            for row in rows.chunks_exact(d) {
                let x = S::load(row.as_ptr().add(c0));
                lo = S::min(lo, x);
                hi = S::max(hi, x);
            }
            S::store(s.lo.as_mut_ptr().add(c0), lo);
            S::store(s.hi.as_mut_ptr().add(c0), hi);
        }
    }
    let (lo, hi) = (&s.lo[..d], &s.hi[..d]);
    if lo.iter().chain(hi).any(|&b| b == 0.0) {
        scalar()
    } else {
        ChannelRanges::from_bounds(lo, hi)
    }
}

#[inline(always)]
unsafe fn encode_outliers<S: Simd>(
    plan: &KeyPlan,
    rows: &[f32],
    ranges: &ChannelRanges,
    chosen: &ChannelMask,
    s: &mut KeyScratch<S>,
    block: &mut [u8],
) {
    let KeyLayout::Mixed {
        outlier_params,
        outlier_codes,
        ..
    } = plan.layout
    else {
        unreachable!("plans exist only for mixed keys")
    };
    let (d, g) = (plan.d, plan.g);
    let (lo, hi) = ranges.bounds();
    for (i, c) in chosen.outliers(d).enumerate() {
        let p = if lo[c] == 0.0 || hi[c] == 0.0 {
            // Which zero (±0) a min/max keeps is the compiler's choice; the scalar fold decides.
            affine::fit(
                Arithmetic::F32,
                Bits::Two,
                rows.iter().skip(c).step_by(d).copied(),
            )
        } else {
            affine::from_bounds(Arithmetic::F32, Bits::Two, lo[c], hi[c])
        };
        vidkv_cpu::write_params(&mut block[outlier_params.range()], i, p);
        let (lo16, step16) = (p.lo.to_f32(), p.step.to_f32());
        if step16 == 0.0 {
            s.codes.fill(0);
        } else {
            // SAFETY: the level's instruction set (caller); every gather reads rows `t0..t0+N`
            // of column `c` inside the block; `codes` has G bytes.
            unsafe {
                let (vlo, vstep) = (S::splat(lo16), S::splat(step16));
                for t0 in (0..g).step_by(S::N) {
                    let x = column::<S>(s.columns.as_deref(), rows, d, g, c, t0);
                    let t = S::div(S::sub(x, vlo), vstep);
                    S::store_codes(t, 3.0, s.codes.as_mut_ptr().add(t0));
                }
            }
        }
        pack2(
            &s.codes,
            &mut block[outlier_codes.offset + i * g / 4..][..g / 4],
        );
    }
}

/// 2-bit codes (each `< 4`), four per byte LSB first (`vidkv_core::pack::pack_codes(2, …)`):
/// eight codes at a time, pairs then nibbles merged with shifts.
#[inline(always)]
pub(crate) fn pack2(codes: &[u8], out: &mut [u8]) {
    for (pair, c) in out.chunks_exact_mut(2).zip(codes.chunks_exact(8)) {
        let w = u64::from_le_bytes(c.try_into().expect("8 codes"));
        let nibbles = (w | w >> 6) & 0x000f_000f_000f_000f;
        let bytes = nibbles | nibbles >> 12;
        pair[0] = bytes as u8;
        pair[1] = (bytes >> 32) as u8;
    }
}

#[inline(always)]
unsafe fn encode_lanes<S: Simd>(
    plan: &KeyPlan,
    rows: &[f32],
    chosen: &ChannelMask,
    s: &mut KeyScratch<S>,
    block: &mut [u8],
) {
    let KeyLayout::Mixed {
        lane_scales,
        lane_bits,
        ..
    } = plan.layout
    else {
        unreachable!("plans exist only for mixed keys")
    };
    let (d, g, m) = (plan.d, plan.g, plan.lanes);
    if m == 0 {
        return;
    }
    s.normals.clear();
    s.normals.extend(chosen.normals(d));
    s.bits.fill(0);
    for t0 in (0..g).step_by(S::N) {
        // SAFETY: the level's instruction set (caller); gathers stay inside the block's rows,
        // `zabs` has M·G entries.
        unsafe {
            load_normals::<S>(plan, rows, t0, s);
            match plan.transform {
                Transform::Fft => fft::<S>(plan, &mut s.re, &mut s.im),
                Transform::Hadamard => hadamard::<S>(&mut s.re[..m]),
                Transform::Identity => {}
            }
            for j in 0..m {
                let z = match plan.transform {
                    Transform::Fft => {
                        let (k, imaginary) = plan.sources[j];
                        if imaginary { s.im[k] } else { s.re[k] }
                    }
                    _ => s.re[j],
                };
                s.bits[j] |= u128::from(S::nonneg_bits(z)) << t0;
                S::store(s.zabs.as_mut_ptr().add(j * g + t0), S::abs(z));
            }
        }
    }
    let bytes = g / 8;
    for j in 0..m {
        let packed = s.bits[j].to_le_bytes();
        block[lane_bits.offset + j * bytes..][..bytes].copy_from_slice(&packed[..bytes]);
    }
    // SAFETY: caller's instruction set.
    unsafe {
        write_lane_scales::<S>(
            &s.zabs,
            s.zrows.as_deref_mut(),
            m,
            g,
            &mut block[lane_scales.range()],
        )
    };
}

/// `s_j = mean |z_j|` over the block's tokens, summed in token order as the scalar backend does
/// (vectorised across lanes: lane `i` of a sum is lane `j0 + i`).
#[inline(always)]
unsafe fn write_lane_scales<S: Simd>(
    zabs: &[f32],
    zrows: Option<&mut [f32]>,
    m: usize,
    g: usize,
    out: &mut [u8],
) {
    let mut sums = [0.0f32; 256];
    let whole = m / S::N * S::N;
    if let Some(zt) = zrows {
        // SAFETY: caller's instruction set; M and G are multiples of N, `zt` has M·G entries.
        unsafe {
            transpose::<S>(zabs, m, g, zt);
            for j0 in (0..m).step_by(S::N) {
                let mut acc = S::splat(0.0);
                for t in 0..g {
                    acc = S::add(acc, S::load(zt.as_ptr().add(t * m + j0)));
                }
                S::store(sums.as_mut_ptr().add(j0), acc);
            }
        }
    }
    for j0 in (0..whole).step_by(S::N).filter(|_| !m.is_multiple_of(S::N)) {
        // SAFETY: caller's instruction set; lanes `j0..j0+N` of `zabs` (`M·G`) and `sums`.
        unsafe {
            let mut acc = S::splat(0.0);
            for t in 0..g {
                acc = S::add(acc, S::gather(zabs.as_ptr().add(j0 * g + t), g));
            }
            S::store(sums.as_mut_ptr().add(j0), acc);
        }
    }
    for (j, acc) in sums.iter_mut().enumerate().take(m).skip(whole) {
        *acc = zabs[j * g..][..g].iter().fold(0.0, |a, &z| a + z);
    }
    for (j, &sum) in sums.iter().enumerate().take(m) {
        let scale = (sum / g as f32).min(F16_MAX);
        out[2 * j..2 * j + 2].copy_from_slice(&f16::from_f32(scale).to_le_bytes());
    }
}

/// Normal channels of tokens `t0..t0+N` into `re` (bit-reversed for the FFT), `im` zeroed.
#[inline(always)]
unsafe fn load_normals<S: Simd>(plan: &KeyPlan, rows: &[f32], t0: usize, s: &mut KeyScratch<S>) {
    let d = plan.d;
    // SAFETY: caller's instruction set; `t0 + N ≤ G` rows of `d` values exist.
    unsafe {
        let zero = S::splat(0.0);
        for (n, &c) in s.normals.iter().enumerate() {
            let at = if plan.transform == Transform::Fft {
                plan.reversed[n]
            } else {
                n
            };
            s.re[at] = column::<S>(s.columns.as_deref(), rows, d, plan.g, c, t0);
            s.im[at] = zero;
        }
    }
}

/// The scalar backend's radix-2 FFT (`LaneTransform::forward_radix2`), one token per lane.
#[inline(always)]
pub(crate) unsafe fn fft<S: Simd>(plan: &KeyPlan, re: &mut [S::F], im: &mut [S::F]) {
    let m = plan.lanes;
    let mut half = 1;
    let mut tw = plan.twiddles.iter();
    while half < m {
        for i in 0..half {
            let &(c, s) = tw.next().expect("one twiddle per butterfly position");
            // SAFETY: caller's instruction set.
            unsafe {
                let (c, s) = (S::splat(c), S::splat(s));
                for start in (0..m).step_by(2 * half) {
                    let (a, b) = (start + i, start + i + half);
                    let tr = S::sub(S::mul(re[b], c), S::mul(im[b], s));
                    let ti = S::add(S::mul(re[b], s), S::mul(im[b], c));
                    re[b] = S::sub(re[a], tr);
                    im[b] = S::sub(im[a], ti);
                    re[a] = S::add(re[a], tr);
                    im[a] = S::add(im[a], ti);
                }
            }
        }
        half *= 2;
    }
}

/// The scalar backend's orthonormal Walsh–Hadamard transform, one token per lane.
#[inline(always)]
pub(crate) unsafe fn hadamard<S: Simd>(v: &mut [S::F]) {
    let n = v.len();
    let mut h = 1;
    // SAFETY: caller's instruction set.
    unsafe {
        while h < n {
            for start in (0..n).step_by(2 * h) {
                for i in start..start + h {
                    let (a, b) = (v[i], v[i + h]);
                    v[i] = S::add(a, b);
                    v[i + h] = S::sub(a, b);
                }
            }
            h *= 2;
        }
        let norm = S::splat(1.0 / libm::sqrtf(n as f32));
        v.iter_mut().for_each(|x| *x = S::mul(*x, norm));
    }
}
