//! Per-channel min/max blocks (`pc2`, KIVI keys; DESIGN §1.5) under both arithmetics,
//! vectorised across channels: bounds over the tokens, then `(x − lo)/step` per element with the
//! scalar backend's roundings (each step rounded to f16 under reference arithmetic).

use alloc::vec;
use alloc::vec::Vec;

use vidkv_core::{
    AffineParams, Arithmetic, Bits, Codec, KeyLayout, KeyScheme, Section, ValueLayout, ValueScheme,
};
use vidkv_cpu::affine;

use super::keys::pack2;
use super::simd::Simd;

/// A per-channel min/max block encoder (keys or values).
#[derive(Debug)]
pub(crate) struct AffinePlan {
    d: usize,
    g: usize,
    pub(crate) stride: usize,
    bits: Bits,
    arith: Arithmetic,
    /// Keys store codes channel-major, values as one token-major stream.
    keys: bool,
    /// Per-token values (KIVI): channels per group; `None` for per-channel blocks.
    token_groups: Option<usize>,
    params: Section,
    codes: Section,
}

impl AffinePlan {
    /// Per-channel keys, or `None`.
    pub(crate) fn keys(codec: &Codec, lanes: usize) -> Option<Self> {
        let (KeyScheme::PerChannel { bits }, KeyLayout::PerChannel { params, codes, .. }) =
            (codec.config().keys, *codec.key_layout())
        else {
            return None;
        };
        Some(Self::new(codec, lanes, bits, true, params, codes))
    }

    /// Per-channel values, or `None`.
    pub(crate) fn values(codec: &Codec, lanes: usize) -> Option<Self> {
        let (ValueScheme::PerChannel { bits }, ValueLayout::PerChannel { params, codes, .. }) =
            (codec.config().values, *codec.value_layout())
        else {
            return None;
        };
        Some(Self::new(codec, lanes, bits, false, params, codes))
    }

    /// Per-token values (KIVI), or `None` (also when a channel group is not whole vectors).
    pub(crate) fn per_token(codec: &Codec, lanes: usize) -> Option<Self> {
        let ValueLayout::PerToken {
            bits,
            channel_group,
            params,
            codes,
        } = *codec.value_layout()
        else {
            return None;
        };
        let whole = codec.head_dim().is_multiple_of(lanes) && channel_group.is_multiple_of(lanes);
        whole.then(|| Self {
            token_groups: Some(channel_group),
            ..Self::new(codec, lanes, bits, false, params, codes)
        })
    }

    fn new(
        codec: &Codec,
        lanes: usize,
        bits: Bits,
        keys: bool,
        params: Section,
        codes: Section,
    ) -> Self {
        Self {
            d: codec.head_dim(),
            g: codec.group(),
            stride: codec.head_dim().next_multiple_of(lanes),
            bits,
            arith: codec.config().arithmetic,
            keys,
            token_groups: None,
            params,
            codes,
        }
    }

    pub(crate) fn g(&self) -> usize {
        self.g
    }

    pub(crate) fn d(&self) -> usize {
        self.d
    }
}

/// Working memory of the per-channel encoder.
pub(crate) struct AffineScratch {
    lo: Vec<f32>,
    hi: Vec<f32>,
    step: Vec<f32>,
    kept: Vec<usize>,
    /// Codes token-major, `[G][stride]`.
    codes: Vec<u8>,
    /// Codes in stored order.
    ordered: Vec<u8>,
}

impl AffineScratch {
    pub(crate) fn new(plan: &AffinePlan) -> Self {
        Self {
            lo: vec![0.0; plan.stride],
            hi: vec![0.0; plan.stride],
            step: vec![0.0; plan.stride],
            kept: Vec::with_capacity(plan.g),
            codes: vec![0; plan.g * plan.stride],
            ordered: vec![0; plan.g * plan.d],
        }
    }
}

/// Encodes one block from padded rows (`G` rows of `stride`); tokens flagged in `excluded` take
/// no part and get code 0 (values only).
///
/// # Safety
/// The instruction set of `S`; `rows` holds `G·stride` values, `block` the block size.
#[inline(always)]
pub(crate) unsafe fn encode_block<S: Simd>(
    plan: &AffinePlan,
    rows: &[f32],
    excluded: Option<&[u8]>,
    s: &mut AffineScratch,
    block: &mut [u8],
) {
    s.kept.clear();
    s.kept
        .extend((0..plan.g).filter(|&t| excluded.is_none_or(|m| m[t / 8] >> (t % 8) & 1 == 0)));
    if let Some(group) = plan.token_groups {
        // SAFETY: forwarded contract.
        unsafe { encode_per_token::<S>(plan, group, rows, s, block) };
        return;
    }
    // SAFETY: forwarded contract.
    unsafe { bounds::<S>(plan, rows, s) };
    for c in 0..plan.d {
        let p = params_of(plan, rows, s, c);
        vidkv_cpu::write_params(&mut block[plan.params.range()], c, p);
        s.lo[c] = p.lo.to_f32();
        s.step[c] = p.step.to_f32();
    }
    s.codes.fill(0);
    // SAFETY: forwarded contract.
    unsafe { codes::<S>(plan, rows, s) };
    let (d, g) = (plan.d, plan.g);
    for c in (0..d).filter(|&c| s.step[c] == 0.0) {
        (0..g).for_each(|t| s.codes[t * plan.stride + c] = 0);
    }
    for t in 0..g {
        for c in 0..d {
            let at = if plan.keys { c * g + t } else { t * d + c };
            s.ordered[at] = s.codes[t * plan.stride + c];
        }
    }
    pack(plan.bits, &s.ordered, &mut block[plan.codes.range()]);
}

/// KIVI values: per kept token and group of `group` channels, min/max across the group's
/// channels (vector min/max, then the lanes), codes against the stored parameters; excluded
/// tokens get zero parameters and codes 0.
#[inline(always)]
unsafe fn encode_per_token<S: Simd>(
    plan: &AffinePlan,
    group: usize,
    rows: &[f32],
    s: &mut AffineScratch,
    block: &mut [u8],
) {
    let (d, w) = (plan.d, plan.stride);
    let groups = d.div_ceil(group);
    let max = f32::from(plan.bits.max_code());
    s.ordered.fill(0);
    let zero = AffineParams {
        lo: half::f16::ZERO,
        step: half::f16::ZERO,
    };
    for t in 0..plan.g {
        for gi in 0..groups {
            vidkv_cpu::write_params(&mut block[plan.params.range()], t * groups + gi, zero);
        }
    }
    for &t in &s.kept {
        let row = &rows[t * w..][..d];
        for (gi, c0) in (0..d).step_by(group).enumerate() {
            let part = &row[c0..(c0 + group).min(d)];
            // SAFETY: caller's instruction set; `part` is whole vectors (plan).
            let (lo, hi) = unsafe { group_bounds::<S>(part) };
            let p = if lo == 0.0 || hi == 0.0 {
                affine::fit(plan.arith, plan.bits, part.iter().copied())
            } else {
                affine::from_bounds(plan.arith, plan.bits, lo, hi)
            };
            vidkv_cpu::write_params(&mut block[plan.params.range()], t * groups + gi, p);
            let (lo16, step16) = (p.lo.to_f32(), p.step.to_f32());
            if step16 == 0.0 {
                continue;
            }
            // SAFETY: as above; `ordered` has G·D codes.
            unsafe {
                let (vlo, vstep) = (S::splat(lo16), S::splat(step16));
                for i in (0..part.len()).step_by(S::N) {
                    let x = S::load(part.as_ptr().add(i));
                    let q = if plan.arith == Arithmetic::Reference {
                        S::r16(S::div(S::r16(S::sub(x, vlo)), vstep))
                    } else {
                        S::div(S::sub(x, vlo), vstep)
                    };
                    S::store_codes(q, max, s.ordered.as_mut_ptr().add(t * d + c0 + i));
                }
            }
        }
    }
    pack(plan.bits, &s.ordered, &mut block[plan.codes.range()]);
}

/// Min and max of whole vectors of values.
#[inline(always)]
unsafe fn group_bounds<S: Simd>(part: &[f32]) -> (f32, f32) {
    let (mut lo_lanes, mut hi_lanes) = ([0.0f32; 16], [0.0f32; 16]);
    // SAFETY: caller's instruction set; `part` is whole vectors, the lane arrays hold N ≤ 16.
    unsafe {
        let (mut lo, mut hi) = (S::splat(f32::INFINITY), S::splat(f32::NEG_INFINITY));
        for i in (0..part.len()).step_by(S::N) {
            let x = S::load(part.as_ptr().add(i));
            lo = S::min(lo, x);
            hi = S::max(hi, x);
        }
        S::store(lo_lanes.as_mut_ptr(), lo);
        S::store(hi_lanes.as_mut_ptr(), hi);
    }
    let lo = lo_lanes[..S::N]
        .iter()
        .fold(f32::INFINITY, |a, &b| a.min(b));
    let hi = hi_lanes[..S::N]
        .iter()
        .fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    (lo, hi)
}

/// The stored parameters of channel `c`: from the vector bounds, or the scalar fit when a bound
/// is a zero (whose sign a min/max may choose either way) or every token is excluded.
fn params_of(plan: &AffinePlan, rows: &[f32], s: &AffineScratch, c: usize) -> AffineParams {
    let zero = AffineParams {
        lo: half::f16::ZERO,
        step: half::f16::ZERO,
    };
    if s.kept.is_empty() {
        zero
    } else if s.lo[c] == 0.0 || s.hi[c] == 0.0 {
        let column = s.kept.iter().map(|&t| rows[t * plan.stride + c]);
        affine::fit(plan.arith, plan.bits, column)
    } else {
        affine::from_bounds(plan.arith, plan.bits, s.lo[c], s.hi[c])
    }
}

#[inline(always)]
unsafe fn bounds<S: Simd>(plan: &AffinePlan, rows: &[f32], s: &mut AffineScratch) {
    let w = plan.stride;
    for c0 in (0..w).step_by(S::N) {
        // SAFETY: caller's instruction set; rows of `stride` values.
        unsafe {
            let (mut lo, mut hi) = (S::splat(f32::INFINITY), S::splat(f32::NEG_INFINITY));
            for &t in &s.kept {
                let x = S::load(rows.as_ptr().add(t * w + c0));
                lo = S::min(lo, x);
                hi = S::max(hi, x);
            }
            S::store(s.lo.as_mut_ptr().add(c0), lo);
            S::store(s.hi.as_mut_ptr().add(c0), hi);
        }
    }
}

/// `clamp(round_half_even((x − lo)/step), 0, 2^b − 1)` for every kept token (under reference
/// arithmetic both the difference and the quotient are rounded to f16 first).
#[inline(always)]
unsafe fn codes<S: Simd>(plan: &AffinePlan, rows: &[f32], s: &mut AffineScratch) {
    let w = plan.stride;
    let max = f32::from(plan.bits.max_code());
    let reference = plan.arith == Arithmetic::Reference;
    for c0 in (0..w).step_by(S::N) {
        // SAFETY: caller's instruction set; rows and codes of `stride` per token.
        unsafe {
            let lo = S::load(s.lo.as_ptr().add(c0));
            let step = S::load(s.step.as_ptr().add(c0));
            for &t in &s.kept {
                let x = S::load(rows.as_ptr().add(t * w + c0));
                let t_val = if reference {
                    S::r16(S::div(S::r16(S::sub(x, lo)), step))
                } else {
                    S::div(S::sub(x, lo), step)
                };
                S::store_codes(t_val, max, s.codes.as_mut_ptr().add(t * w + c0));
            }
        }
    }
}

/// 4-bit codes (each `< 16`), two per byte LSB first, eight codes at a time.
pub(crate) fn pack4(codes: &[u8], out: &mut [u8]) {
    for (quad, c) in out.chunks_exact_mut(4).zip(codes.chunks_exact(8)) {
        let w = u64::from_le_bytes(c.try_into().expect("8 codes"));
        let bytes = (w | w >> 4) & 0x00ff_00ff_00ff_00ff;
        quad.copy_from_slice(&[
            bytes as u8,
            (bytes >> 16) as u8,
            (bytes >> 32) as u8,
            (bytes >> 48) as u8,
        ]);
    }
}

/// Packs a block's codes in stored order.
fn pack(bits: Bits, ordered: &[u8], out: &mut [u8]) {
    match bits {
        // Not reached (`kernel_config` keeps 1-bit groups on the scalar path); packed portably.
        Bits::One => vidkv_core::pack::pack_codes(1, ordered, out),
        Bits::Two => pack2(ordered, out),
        Bits::Four => pack4(ordered, out),
    }
}
