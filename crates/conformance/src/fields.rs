//! Blocks taken apart into their fields, so that two encodings can be compared code by code and a
//! decoded block can be checked against the error bound of its quantizer.
//!
//! **Boundary rule.** Two encoders of the same input may disagree only where the input lies within
//! float rounding of a decision boundary. Per field:
//! * mask, affine parameters: never (min, max and their f16 rounding are exact operations);
//! * affine codes: adjacent codes, and `t = (x − lo)/step` within `1e-5·(1 + |t|)` (f32
//!   arithmetic) or `2⁻⁸·(1 + |t|)` (reference arithmetic) of the half-way point between them;
//! * 1-bit lanes: `|z| ≤ 1e-5 · Σ|x|` over the token's normal channels (transforms computed in a
//!   different order differ by about that much);
//! * f16 scales that are means (`mean |z|`, `γ`, least-squares): adjacent f16 values whose
//!   midpoint lies within `1e-5` (relative) of the exact mean, or any least-squares scale of a
//!   channel whose codes already differed at a boundary;
//! * trits: adjacent trits and `| |x| − γ/2 |` within `1e-5` (f32) or `2⁻⁹` (reference) of `γ/2`.

use half::f16;
use vidkv_core::pack::{f16_at, unpack_codes, unpack_trits};
use vidkv_core::sketch::Projection;
use vidkv_core::traced::pick_traced;
use vidkv_core::{
    AffineParams, Arithmetic, Bits, ChannelMask, Codec, KeyLayout, KeyScheme, LaneRule, MixedKeys,
    TernaryScale, ValueLayout, ValueScheme,
};
use vidkv_cpu::lane_value;
use vidkv_cpu::transform::LaneTransform;

/// Largest finite f16.
pub const F16_MAX: f64 = 65504.0;

/// Counts of compared codes and of disagreements accepted as boundary cases.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Codes (one per element) compared.
    pub codes: u64,
    /// Codes, bits or scales that differed at a decision boundary.
    pub boundary: u64,
}

impl Tally {
    /// Adds another tally.
    pub fn add(&mut self, other: Tally) {
        self.codes += other.codes;
        self.boundary += other.boundary;
    }

    /// Share of boundary disagreements.
    pub fn share(&self) -> f64 {
        if self.codes == 0 {
            0.0
        } else {
            self.boundary as f64 / self.codes as f64
        }
    }
}

/// The f16 spacing at `v` (subnormal spacing below 2⁻¹⁴).
pub fn ulp16(v: f64) -> f64 {
    let a = v.abs();
    if a < 6.103_515_625e-5 {
        2f64.powi(-24)
    } else {
        2f64.powi(a.log2().floor() as i32 - 10)
    }
}

fn params_at(bytes: &[u8], i: usize) -> AffineParams {
    AffineParams {
        lo: f16::from_le_bytes([bytes[4 * i], bytes[4 * i + 1]]),
        step: f16::from_le_bytes([bytes[4 * i + 2], bytes[4 * i + 3]]),
    }
}

/// A key block's fields, unvalidated.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyFields {
    /// Outlier mask (mixed keys).
    pub mask: ChannelMask,
    /// Outlier (mixed) or per-channel affine parameters, ascending channel.
    pub params: Vec<AffineParams>,
    /// Lane scales (mixed); token norms (sign sketch).
    pub scales: Vec<f16>,
    /// Affine codes, channel-major: `codes[i·G + t]`.
    pub codes: Vec<u8>,
    /// Lane bits, lane-major: `bits[j·G + t]`; sketch signs, token-major: `bits[t·b + i]`.
    pub bits: Vec<u8>,
    /// Traced tokens (OTT): the index bytes of the filled slots, in slot order.
    pub traced: Vec<usize>,
}

/// The index bytes of a key block's filled traced slots (unvalidated).
fn traced_of(codec: &Codec, block: &[u8]) -> Vec<usize> {
    codec.traced_layout().map_or(Vec::new(), |l| {
        block[l.indices.range()]
            .iter()
            .filter(|&&i| i != vidkv_core::traced::EMPTY_SLOT)
            .map(|&i| usize::from(i))
            .collect()
    })
}

/// Which tokens of a block the key statistics keep: all but the traced ones.
fn kept_tokens(g: usize, traced: &[usize]) -> Vec<bool> {
    (0..g).map(|t| !traced.contains(&t)).collect()
}

/// Takes a key block apart.
pub fn key_fields(codec: &Codec, block: &[u8]) -> KeyFields {
    let g = codec.group();
    let traced = traced_of(codec, block);
    match *codec.key_layout() {
        KeyLayout::Mixed {
            outliers,
            lanes,
            mask,
            outlier_params,
            lane_scales,
            outlier_codes,
            lane_bits,
        } => {
            let mut m = ChannelMask::default();
            for (i, w) in block[mask.range()].chunks_exact(4).enumerate() {
                m.words[i] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
            }
            let mut codes = vec![0u8; outliers * g];
            unpack_codes(2, &block[outlier_codes.range()], &mut codes);
            let mut bits = vec![0u8; lanes * g];
            unpack_codes(1, &block[lane_bits.range()], &mut bits);
            KeyFields {
                mask: m,
                params: (0..outliers)
                    .map(|i| params_at(&block[outlier_params.range()], i))
                    .collect(),
                scales: (0..lanes)
                    .map(|j| f16_at(&block[lane_scales.range()], j))
                    .collect(),
                codes,
                bits,
                traced,
            }
        }
        KeyLayout::PerChannel {
            bits,
            params,
            codes,
        } => {
            let d = codec.head_dim();
            let mut c = vec![0u8; d * g];
            unpack_codes(bits.get(), &block[codes.range()], &mut c);
            KeyFields {
                mask: ChannelMask::default(),
                params: (0..d)
                    .map(|i| params_at(&block[params.range()], i))
                    .collect(),
                scales: Vec::new(),
                codes: c,
                bits: Vec::new(),
                traced,
            }
        }
        KeyLayout::SignSketch { bits, norms, signs } => {
            let mut b = vec![0u8; g * bits];
            unpack_codes(1, &block[signs.range()], &mut b);
            KeyFields {
                mask: ChannelMask::default(),
                params: Vec::new(),
                scales: (0..g).map(|t| f16_at(&block[norms.range()], t)).collect(),
                codes: Vec::new(),
                bits: b,
                traced,
            }
        }
    }
}

/// `(‖x‖, R·x, Σ_c |R_ic·x_c|)` per sketch row, in f64.
fn sketch_projection(projection: &Projection, x: &[f32]) -> (f64, Vec<f64>, Vec<f64>) {
    let norm = x.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    let (dots, sizes) = (0..projection.bits())
        .map(|i| {
            x.iter().enumerate().fold((0.0, 0.0), |(s, a), (c, &v)| {
                let term = f64::from(projection.entry(i, c)) * f64::from(v);
                (s + term, a + term.abs())
            })
        })
        .unzip();
    (norm, dots, sizes)
}

/// Sign-sketch fields of a block against its input rows: a norm is `f16(‖x‖)` or an adjacent
/// value at a rounding boundary, a sign is that of `r_i·x` unless `|r_i·x| ≤ 1e-9·Σ|r_ic·x_c|`
/// (f64 sums in another order). Returns the boundary cases.
fn check_sketch_fields(codec: &Codec, f: &KeyFields, rows: &[f32]) -> Result<u64, String> {
    let projection = Projection::for_codec(codec).expect("sign-sketch codec");
    let (d, b) = (codec.head_dim(), projection.bits());
    let mut boundary = 0;
    for (t, x) in rows.chunks_exact(d).enumerate() {
        let (norm, dots, sizes) = sketch_projection(&projection, x);
        let want = f16::from_f64(norm.min(F16_MAX));
        if f.scales[t] != want {
            if !mean_boundary(norm, f.scales[t], want) {
                return Err(format!(
                    "token {t}: norm {} is not f16(‖x‖ = {norm})",
                    f.scales[t]
                ));
            }
            boundary += 1;
        }
        for i in 0..b {
            if (f.bits[t * b + i] == 1) != (dots[i] >= 0.0) {
                if dots[i].abs() > 1e-9 * sizes[i] {
                    return Err(format!(
                        "token {t} bit {i}: sign of r·x = {} differs",
                        dots[i]
                    ));
                }
                boundary += 1;
            }
        }
    }
    Ok(boundary)
}

/// Decoded sign-sketch keys: each row is `‖k‖·u/‖u‖`, `u = Rᵀ(2s − 1)` of its own block's
/// fields, to f32 rounding.
fn check_sketch_decode(codec: &Codec, f: &KeyFields, decoded: &[f32]) -> Result<(), String> {
    let projection = Projection::for_codec(codec).expect("sign-sketch codec");
    let (d, b) = (codec.head_dim(), projection.bits());
    for (t, y) in decoded.chunks_exact(d).enumerate() {
        let mut u = vec![0.0f64; d];
        for i in 0..b {
            let s = if f.bits[t * b + i] == 1 { 1.0 } else { -1.0 };
            for (c, a) in u.iter_mut().enumerate() {
                *a += s * f64::from(projection.entry(i, c));
            }
        }
        let len = u.iter().map(|a| a * a).sum::<f64>().sqrt();
        let norm = f64::from(f.scales[t].to_f32());
        for (c, (&a, &yc)) in u.iter().zip(y).enumerate() {
            let want = if len > 0.0 { norm * a / len } else { 0.0 };
            if (want - f64::from(yc)).abs() > 1e-6 * norm.max(1e-30) {
                return Err(format!("token {t} channel {c}: decoded {yc}, want {want}"));
            }
        }
    }
    Ok(())
}

/// A value block's fields, unvalidated.
#[derive(Debug, Clone, PartialEq)]
pub struct ValueFields {
    /// Affine parameters (per channel, or per token and channel group).
    pub params: Vec<AffineParams>,
    /// Ternary scales per channel.
    pub scales: Vec<f16>,
    /// Codes token-major `[t·D + c]`: affine codes, or trits + 1 (9 marks an invalid byte).
    pub codes: Vec<u8>,
}

/// Takes a value block apart.
pub fn value_fields(codec: &Codec, block: &[u8]) -> ValueFields {
    let (d, g) = (codec.head_dim(), codec.group());
    match *codec.value_layout() {
        ValueLayout::Ternary { scales, trits } => {
            let row = vidkv_core::layout::trit_row_bytes(d);
            let mut codes = vec![9u8; d * g];
            let mut q = vec![0i8; d];
            for (t, bytes) in block[trits.range()].chunks_exact(row).enumerate() {
                if unpack_trits(bytes, &mut q).is_ok() {
                    for (c, &v) in q.iter().enumerate() {
                        codes[t * d + c] = (v + 1) as u8;
                    }
                }
            }
            ValueFields {
                params: Vec::new(),
                scales: (0..d).map(|c| f16_at(&block[scales.range()], c)).collect(),
                codes,
            }
        }
        ValueLayout::PerToken {
            bits,
            params,
            codes,
            ..
        }
        | ValueLayout::PerChannel {
            bits,
            params,
            codes,
        } => {
            let mut c = vec![0u8; d * g];
            unpack_codes(bits.get(), &block[codes.range()], &mut c);
            ValueFields {
                params: (0..params.len / 4)
                    .map(|i| params_at(&block[params.range()], i))
                    .collect(),
                scales: Vec::new(),
                codes: c,
            }
        }
    }
}

fn code_tolerance(arith: Arithmetic) -> f64 {
    match arith {
        Arithmetic::F32 => 1e-5,
        Arithmetic::Reference => 2f64.powi(-8),
    }
}

/// Whether affine codes `a` and `b` of `x` may differ: adjacent, and `x` within float rounding of
/// the boundary between them.
pub fn affine_boundary(arith: Arithmetic, p: AffineParams, x: f32, a: u8, b: u8) -> bool {
    let (lo, step) = (f64::from(p.lo.to_f32()), f64::from(p.step.to_f32()));
    if a.abs_diff(b) != 1 || step == 0.0 {
        return false;
    }
    let t = (f64::from(x) - lo) / step;
    let edge = f64::from(a.min(b)) + 0.5;
    (t - edge).abs() <= code_tolerance(arith) * (1.0 + t.abs())
}

/// Whether two stored f16 means may differ: adjacent f16 values with the exact mean near their
/// midpoint.
pub fn mean_boundary(exact: f64, a: f16, b: f16) -> bool {
    let (x, y) = (f64::from(a.to_f32()), f64::from(b.to_f32()));
    if a.to_bits().abs_diff(b.to_bits()) != 1 {
        return false;
    }
    let mid = (x + y) / 2.0;
    (mid - exact).abs() <= 1e-5 * exact.abs().max(1e-30)
}

fn mean_abs(values: impl Iterator<Item = f32>) -> f64 {
    let (s, n) = values.fold((0.0f64, 0usize), |(s, n), v| {
        (s + f64::from(v.abs()), n + 1)
    });
    if n == 0 { 0.0 } else { s / n as f64 }
}

/// Transformed lanes `[G, M]` of a block's normal channels (the scalar reference's transform).
pub fn lanes_of(codec: &Codec, mixed: MixedKeys, mask: &ChannelMask, rows: &[f32]) -> Vec<f32> {
    let d = codec.head_dim();
    let normals: Vec<usize> = mask.normals(d).collect();
    let m = normals.len();
    let t = LaneTransform::new(mixed.transform, m);
    let mut x = vec![0.0f32; m];
    let mut z = vec![0.0f32; rows.len() / d * m];
    if m == 0 {
        return z;
    }
    for (row, zt) in rows.chunks_exact(d).zip(z.chunks_exact_mut(m)) {
        x.iter_mut().zip(&normals).for_each(|(xi, &c)| *xi = row[c]);
        t.forward(&x, zt);
    }
    z
}

/// Compares two encodings of the same key blocks (`rows` is the reference's f32 input).
pub fn compare_keys(
    codec: &Codec,
    rows: &[f32],
    reference: &[u8],
    candidate: &[u8],
) -> Result<Tally, String> {
    if reference.len() != candidate.len() {
        return Err(format!(
            "encoded lengths differ: reference {} bytes, candidate {}",
            reference.len(),
            candidate.len()
        ));
    }
    let (d, g, arith) = (codec.head_dim(), codec.group(), codec.config().arithmetic);
    let kb = codec.key_block_bytes();
    let mut tally = Tally::default();
    for (b, ((r, c), x)) in reference
        .chunks_exact(kb)
        .zip(candidate.chunks_exact(kb))
        .zip(rows.chunks_exact(g * d))
        .enumerate()
    {
        tally.codes += (g * d) as u64;
        if r == c {
            continue;
        }
        let (fr, fc) = (key_fields(codec, r), key_fields(codec, c));
        if let Some(l) = codec.traced_layout() {
            let part = l.rows.offset..l.indices.offset + l.indices.len;
            if r[part.clone()] != c[part] {
                return Err(format!("block {b}: traced tokens or rows differ"));
            }
        }
        if let KeyScheme::SignSketch { .. } = codec.config().keys {
            check_sketch_fields(codec, &fr, x)
                .map_err(|e| format!("block {b} (reference): {e}"))?;
            tally.boundary +=
                check_sketch_fields(codec, &fc, x).map_err(|e| format!("block {b}: {e}"))?;
            continue;
        }
        if fr.mask != fc.mask {
            return Err(format!("block {b}: outlier masks differ"));
        }
        if let Some(i) = (0..fr.params.len()).find(|&i| fr.params[i] != fc.params[i]) {
            return Err(format!(
                "block {b}: affine parameters of group {i} differ: {:?} vs {:?}",
                fr.params[i], fc.params[i]
            ));
        }
        let channels: Vec<usize> = match codec.config().keys {
            KeyScheme::Mixed(_) => fr.mask.outliers(d).collect(),
            KeyScheme::PerChannel { .. } | KeyScheme::SignSketch { .. } => (0..d).collect(),
        };
        for (i, &ch) in channels.iter().enumerate() {
            for t in 0..g {
                let (a, bb) = (fr.codes[i * g + t], fc.codes[i * g + t]);
                if a != bb {
                    let xv = x[t * d + ch];
                    if !affine_boundary(arith, fr.params[i], xv, a, bb) {
                        return Err(format!(
                            "block {b} channel {ch} token {t}: code {a} vs {bb} for x = {xv} \
                             ({:?}) is not a boundary case",
                            fr.params[i]
                        ));
                    }
                    tally.boundary += 1;
                }
            }
        }
        if let KeyScheme::Mixed(mixed) = codec.config().keys {
            let m = fr.scales.len();
            let z = lanes_of(codec, mixed, &fr.mask, x);
            let normals: Vec<usize> = fr.mask.normals(d).collect();
            for j in 0..m {
                if fr.scales[j] != fc.scales[j] {
                    let kept = kept_tokens(g, &fr.traced);
                    let exact = mean_abs((0..g).filter(|&t| kept[t]).map(|t| z[t * m + j]));
                    if !mean_boundary(exact, fr.scales[j], fc.scales[j]) {
                        return Err(format!(
                            "block {b} lane {j}: scale {} vs {} (mean |z| = {exact})",
                            fr.scales[j], fc.scales[j]
                        ));
                    }
                    tally.boundary += 1;
                }
                for t in 0..g {
                    if fr.bits[j * g + t] != fc.bits[j * g + t] {
                        let size: f64 =
                            normals.iter().map(|&c| f64::from(x[t * d + c].abs())).sum();
                        let zj = f64::from(z[t * m + j]);
                        if zj.abs() > 1e-5 * size {
                            return Err(format!(
                                "block {b} lane {j} token {t}: sign bits differ for z = {zj} \
                                 (Σ|x| = {size})"
                            ));
                        }
                        tally.boundary += 1;
                    }
                }
            }
        }
    }
    Ok(tally)
}

/// The threshold `γ/2` the scalar ternary encoder compares with, and `γ`.
fn ternary_threshold(arith: Arithmetic, column: &[f32]) -> (f64, f64) {
    let sum: f32 = column.iter().map(|v| v.abs()).sum();
    let gamma = match arith {
        Arithmetic::F32 => sum / column.len() as f32,
        Arithmetic::Reference => f16::from_f32(sum / column.len() as f32).to_f32(),
    };
    let thr = match arith {
        Arithmetic::F32 => 0.5 * gamma,
        Arithmetic::Reference => f16::from_f32(0.5 * gamma).to_f32(),
    };
    (f64::from(thr), f64::from(gamma))
}

fn trit_tolerance(arith: Arithmetic) -> f64 {
    match arith {
        Arithmetic::F32 => 1e-5,
        Arithmetic::Reference => 2f64.powi(-9),
    }
}

/// Compares two encodings of the same value blocks.
pub fn compare_values(
    codec: &Codec,
    rows: &[f32],
    reference: &[u8],
    candidate: &[u8],
) -> Result<Tally, String> {
    if reference.len() != candidate.len() {
        return Err(format!(
            "encoded lengths differ: reference {} bytes, candidate {}",
            reference.len(),
            candidate.len()
        ));
    }
    let (d, g, arith) = (codec.head_dim(), codec.group(), codec.config().arithmetic);
    let vb = codec.value_block_bytes();
    let mut tally = Tally::default();
    for (b, ((r, c), x)) in reference
        .chunks_exact(vb)
        .zip(candidate.chunks_exact(vb))
        .zip(rows.chunks_exact(g * d))
        .enumerate()
    {
        tally.codes += (g * d) as u64;
        if r == c {
            continue;
        }
        let (fr, fc) = (value_fields(codec, r), value_fields(codec, c));
        if let Some(i) = (0..fr.params.len()).find(|&i| fr.params[i] != fc.params[i]) {
            return Err(format!(
                "block {b}: affine parameters {i} differ: {:?} vs {:?}",
                fr.params[i], fc.params[i]
            ));
        }
        match *codec.value_layout() {
            ValueLayout::Ternary { .. } => {
                let mut column = vec![0.0f32; g];
                for ch in 0..d {
                    column
                        .iter_mut()
                        .enumerate()
                        .for_each(|(t, v)| *v = x[t * d + ch]);
                    let (thr, gamma) = ternary_threshold(arith, &column);
                    let mut codes_differ = false;
                    for (t, &xv) in column.iter().enumerate() {
                        let (a, bb) = (fr.codes[t * d + ch], fc.codes[t * d + ch]);
                        if a != bb {
                            let near = (f64::from(xv.abs()) - thr).abs()
                                <= trit_tolerance(arith) * thr.max(1e-30);
                            if a.abs_diff(bb) != 1 || !near {
                                return Err(format!(
                                    "block {b} channel {ch} token {t}: trit {} vs {} for x = \
                                     {xv}, γ/2 = {thr} is not a boundary case",
                                    i16::from(a) - 1,
                                    i16::from(bb) - 1
                                ));
                            }
                            codes_differ = true;
                            tally.boundary += 1;
                        }
                    }
                    let (sa, sb) = (fr.scales[ch], fc.scales[ch]);
                    if sa != sb {
                        let ok = match codec.config().values {
                            ValueScheme::Ternary {
                                scale: TernaryScale::LeastSquares,
                            } => codes_differ || mean_boundary(ls_exact(&column, thr), sa, sb),
                            ValueScheme::Ternary {
                                scale: TernaryScale::MeanAbs,
                            } => mean_boundary(gamma, sa, sb),
                            _ => false,
                        };
                        if !ok {
                            return Err(format!(
                                "block {b} channel {ch}: scale {sa} vs {sb} (γ = {gamma})"
                            ));
                        }
                        tally.boundary += 1;
                    }
                }
            }
            ValueLayout::PerToken { channel_group, .. } => {
                let groups = d.div_ceil(channel_group);
                for t in 0..g {
                    for ch in 0..d {
                        let (a, bb) = (fr.codes[t * d + ch], fc.codes[t * d + ch]);
                        if a != bb {
                            let p = fr.params[t * groups + ch / channel_group];
                            if !affine_boundary(arith, p, x[t * d + ch], a, bb) {
                                return Err(format!(
                                    "block {b} token {t} channel {ch}: code {a} vs {bb} is not \
                                     a boundary case"
                                ));
                            }
                            tally.boundary += 1;
                        }
                    }
                }
            }
            ValueLayout::PerChannel { .. } => {
                for t in 0..g {
                    for ch in 0..d {
                        let (a, bb) = (fr.codes[t * d + ch], fc.codes[t * d + ch]);
                        if a != bb {
                            if !affine_boundary(arith, fr.params[ch], x[t * d + ch], a, bb) {
                                return Err(format!(
                                    "block {b} token {t} channel {ch}: code {a} vs {bb} is not \
                                     a boundary case"
                                ));
                            }
                            tally.boundary += 1;
                        }
                    }
                }
            }
        }
    }
    Ok(tally)
}

fn ls_exact(column: &[f32], thr: f64) -> f64 {
    mean_abs(column.iter().copied().filter(|v| f64::from(v.abs()) > thr))
}

/// The error bound of one affine group at `x`: half a step plus f16 rounding of every stored or
/// (reference arithmetic) intermediate quantity. `None` when the range saturated f16 (reference
/// arithmetic with max − min > 65504: the reference itself would overflow there).
///
/// With XQuant calibration `eta > 0` the stored parameters are pulled inward from the plain
/// ones (`lo' = lo + η·L·s`, `s' = (1 − 2η)·s`, L = 2^b − 1) while the codes stay the plain
/// codes: the bound is that of the plain parameters (recovered from the stored ones) plus the
/// largest shift of a level, `η·L·s`, plus the f16 rounding of the stored parameters.
pub fn affine_bound(
    arith: Arithmetic,
    bits: Bits,
    eta: f32,
    p: AffineParams,
    x: f64,
) -> Option<f64> {
    if eta > 0.0 {
        let (plain, shift) = uncalibrated(bits, eta, p);
        let stored = ulp16(f64::from(p.lo.to_f32()))
            + f64::from(bits.max_code()) * ulp16(f64::from(p.step.to_f32()));
        return affine_bound(arith, bits, 0.0, plain, x).map(|b| b + shift + 2.0 * stored);
    }
    let (lo, step) = (f64::from(p.lo.to_f32()), f64::from(p.step.to_f32()));
    let top = f64::from(bits.max_code()) * step;
    if step >= F16_MAX {
        return None;
    }
    let rounding = match arith {
        Arithmetic::F32 => ulp16(lo) + f64::from(bits.max_code()) * ulp16(step) + 1e-6 * x.abs(),
        Arithmetic::Reference => {
            4.0 * (ulp16(x) + ulp16(lo) + ulp16(top) + f64::from(bits.max_code()) * ulp16(step))
                + 2f64.powi(-9) * step
        }
    };
    Some(step / 2.0 + rounding + 2f64.powi(-24))
}

/// The plain parameters behind calibrated ones, and the largest level shift `η·L·s`.
pub fn uncalibrated(bits: Bits, eta: f32, p: AffineParams) -> (AffineParams, f64) {
    let levels = f64::from(bits.max_code());
    let step = f64::from(p.step.to_f32()) / (1.0 - 2.0 * f64::from(eta));
    let shift = f64::from(eta) * levels * step;
    let lo = f64::from(p.lo.to_f32()) - shift;
    let plain = AffineParams {
        lo: f16::from_f64(lo),
        step: f16::from_f64(step),
    };
    (plain, shift)
}

fn range_of(arith: Arithmetic, column: impl Iterator<Item = f32>) -> (f32, f32, f32) {
    let (lo, hi) = column.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
        (l.min(v), h.max(v))
    });
    let r = hi - lo;
    let r = match arith {
        Arithmetic::F32 => r,
        Arithmetic::Reference => f16::from_f32(r).to_f32(),
    };
    (lo, hi, r)
}

/// Checks decoded keys against the error bounds of their quantizer. `rows` is the reference's f32
/// input, `encoded` the candidate's bytes and `decoded` its decoding; `mask` the layer mask that
/// was passed to the encoder, if any.
pub fn check_key_bounds(
    codec: &Codec,
    rows: &[f32],
    mask: Option<&ChannelMask>,
    encoded: &[u8],
    decoded: &[f32],
) -> Result<(), String> {
    let (d, g, arith) = (codec.head_dim(), codec.group(), codec.config().arithmetic);
    let kb = codec.key_block_bytes();
    for (b, ((block, x), y)) in encoded
        .chunks_exact(kb)
        .zip(rows.chunks_exact(g * d))
        .zip(decoded.chunks_exact(g * d))
        .enumerate()
    {
        let f = key_fields(codec, block);
        check_traced(codec, &f, x, y).map_err(|e| format!("block {b}: {e}"))?;
        let kept = kept_tokens(g, &f.traced);
        let column = |c: usize| {
            x.iter()
                .skip(c)
                .step_by(d)
                .zip(&kept)
                .filter(|(_, k)| **k)
                .map(|(v, _)| *v)
        };
        let (channels, bits): (Vec<usize>, Bits) = match codec.config().keys {
            KeyScheme::Mixed(mixed) => {
                let k = mixed.outlier_count(codec.config().head_dim);
                if let Some(m) = mask {
                    if *m != f.mask {
                        return Err(format!("block {b}: mask is not the given layer mask"));
                    }
                } else {
                    // Block scope: the chosen channels have the largest ranges.
                    let ranges: Vec<f32> = (0..d).map(|c| range_of(arith, column(c)).2).collect();
                    let chosen_min = f
                        .mask
                        .outliers(d)
                        .map(|c| ranges[c])
                        .fold(f32::INFINITY, f32::min);
                    let other_max = f
                        .mask
                        .normals(d)
                        .map(|c| ranges[c])
                        .fold(f32::NEG_INFINITY, f32::max);
                    if f.mask.count() != k || chosen_min < other_max {
                        return Err(format!(
                            "block {b}: outlier channels are not the {k} largest ranges \
                             (smallest chosen {chosen_min}, largest other {other_max})"
                        ));
                    }
                }
                check_lanes(codec, mixed, &f, &kept, x, y)
                    .map_err(|e| format!("block {b}: {e}"))?;
                (f.mask.outliers(d).collect(), Bits::Two)
            }
            KeyScheme::PerChannel { bits } => ((0..d).collect(), bits),
            KeyScheme::SignSketch { .. } => {
                check_sketch_fields(codec, &f, x).map_err(|e| format!("block {b}: {e}"))?;
                check_sketch_decode(codec, &f, y).map_err(|e| format!("block {b}: {e}"))?;
                continue;
            }
        };
        for (i, &c) in channels.iter().enumerate() {
            let p = f.params[i];
            let (lo, hi, range) = range_of(arith, column(c));
            if f64::from(range) > F16_MAX || !range.is_finite() {
                continue;
            }
            let eta = codec.config().calibration.keys;
            let (plain_lo, shift) = match eta {
                0.0 => (p.lo.to_f32(), 0.0),
                _ => {
                    let (plain, shift) = uncalibrated(bits, eta, p);
                    (plain.lo.to_f32(), shift)
                }
            };
            // Recovering the plain lo from the stored (rounded) lo' and step' costs their
            // rounding, the latter amplified by η·L/(1 − 2η).
            let amplify =
                f64::from(eta) * f64::from(bits.max_code()) / (1.0 - 2.0 * f64::from(eta));
            let slack = 4.0
                * (ulp16(f64::from(lo))
                    + ulp16(f64::from(p.lo.to_f32()))
                    + amplify * ulp16(f64::from(p.step.to_f32()))
                    + shift * 2f64.powi(-9));
            if eta == 0.0 && p.lo != f16::from_f32(lo) || f64::from((plain_lo - lo).abs()) > slack {
                return Err(format!(
                    "block {b} channel {c}: lo {} is not f16(min {lo})",
                    p.lo
                ));
            }
            let _ = hi;
            for t in (0..g).filter(|&t| kept[t]) {
                let (xv, yv) = (f64::from(x[t * d + c]), f64::from(y[t * d + c]));
                if let Some(bound) = affine_bound(arith, bits, eta, p, xv)
                    && (xv - yv).abs() > bound
                {
                    return Err(format!(
                        "block {b} channel {c} token {t}: |{xv} − {yv}| > {bound} \
                             (step {})",
                        p.step
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Traced tokens (OTT): the slots hold exactly the tokens [`pick_traced`] chooses, and those
/// tokens decode to their f16-rounded input.
fn check_traced(codec: &Codec, f: &KeyFields, x: &[f32], y: &[f32]) -> Result<(), String> {
    let Some(layout) = codec.traced_layout() else {
        return Ok(());
    };
    let d = codec.head_dim();
    let want = pick_traced(x, d, layout.slots);
    if f.traced != want {
        return Err(format!(
            "traced tokens {:?}, the picking rule gives {want:?}",
            f.traced
        ));
    }
    for &t in &f.traced {
        for c in 0..d {
            let exact = f16::from_f32(x[t * d + c].clamp(-65504.0, 65504.0)).to_f32();
            if y[t * d + c] != exact {
                return Err(format!(
                    "traced token {t} channel {c}: decoded {} is not f16({})",
                    y[t * d + c],
                    x[t * d + c]
                ));
            }
        }
    }
    Ok(())
}

/// Lanes: each stored scale is f16(mean |z|) and `T(decoded normals)` reproduces the lane rule's
/// values with the sign of the input's z.
fn check_lanes(
    codec: &Codec,
    mixed: MixedKeys,
    f: &KeyFields,
    kept: &[bool],
    x: &[f32],
    y: &[f32],
) -> Result<(), String> {
    let (d, g) = (codec.head_dim(), codec.group());
    let m = f.scales.len();
    if m == 0 {
        return Ok(());
    }
    let z = lanes_of(codec, mixed, &f.mask, x);
    let zhat = lanes_of(codec, mixed, &f.mask, y);
    let normals: Vec<usize> = f.mask.normals(d).collect();
    for j in 0..m {
        let exact = mean_abs((0..g).filter(|&t| kept[t]).map(|t| z[t * m + j]));
        let s = f64::from(f.scales[j].to_f32());
        if exact > F16_MAX {
            if s != F16_MAX {
                return Err(format!(
                    "lane {j}: mean |z| {exact} should saturate, got {s}"
                ));
            }
            continue;
        }
        let rel = match codec.config().arithmetic {
            Arithmetic::F32 => 1e-5,
            Arithmetic::Reference => 2f64.powi(-9),
        };
        if (s - exact).abs() > ulp16(exact) / 2.0 + rel * exact + 1e-30 {
            return Err(format!(
                "lane {j}: scale {s} is not f16(mean |z| = {exact})"
            ));
        }
    }
    let total: f64 = f.scales.iter().map(|s| f64::from(s.to_f32())).sum();
    for t in (0..g).filter(|&t| kept[t]) {
        let size: f64 = normals.iter().map(|&c| f64::from(x[t * d + c].abs())).sum();
        for j in 0..m {
            let zj = z[t * m + j];
            let s = f.scales[j].to_f32();
            let bit = u8::from(zj >= 0.0);
            let want = lane_value(mixed.lane_rule, j, bit, s);
            let got = zhat[t * m + j];
            let tol = 1e-4 * total + 1e-6;
            let sign_ok = f64::from(zj.abs()) <= 1e-5 * size
                || (got - want).abs() as f64 <= tol
                || (got - lane_value(mixed.lane_rule, j, 1 - bit, s)).abs() as f64 <= tol
                    && f64::from(zj.abs()) <= 1e-5 * size;
            if !sign_ok {
                return Err(format!(
                    "token {t} lane {j}: T(decoded) = {got}, expected {want} \
                     (z = {zj}, s = {s}, rule {:?})",
                    mixed.lane_rule
                ));
            }
        }
    }
    let _ = LaneRule::Symmetric;
    Ok(())
}

/// Checks decoded values against their quantizer: affine error bounds, and for ternary values
/// that every code is the nearest level under the threshold `γ/2` and the stored scale follows
/// the configured rule.
pub fn check_value_bounds(
    codec: &Codec,
    rows: &[f32],
    encoded: &[u8],
    decoded: &[f32],
) -> Result<(), String> {
    let (d, g, arith) = (codec.head_dim(), codec.group(), codec.config().arithmetic);
    let eta_v = codec.config().calibration.values;
    let vb = codec.value_block_bytes();
    for (b, ((block, x), y)) in encoded
        .chunks_exact(vb)
        .zip(rows.chunks_exact(g * d))
        .zip(decoded.chunks_exact(g * d))
        .enumerate()
    {
        let f = value_fields(codec, block);
        match codec.config().values {
            ValueScheme::Ternary { scale } => {
                let mut column = vec![0.0f32; g];
                for c in 0..d {
                    column
                        .iter_mut()
                        .enumerate()
                        .for_each(|(t, v)| *v = x[t * d + c]);
                    let (thr, gamma) = ternary_threshold(arith, &column);
                    let tol = trit_tolerance(arith) * thr;
                    let s = f.scales[c].to_f32();
                    for (t, &xv) in column.iter().enumerate() {
                        let q = i16::from(f.codes[t * d + c]) - 1;
                        let xa = f64::from(xv);
                        let want = if xa > thr + tol {
                            Some(1)
                        } else if xa < -thr - tol {
                            Some(-1)
                        } else if xa.abs() < thr - tol {
                            Some(0)
                        } else {
                            None
                        };
                        if want.is_some_and(|w| w != q) || q.abs() > 1 {
                            return Err(format!(
                                "block {b} channel {c} token {t}: trit {q} for x = {xv}, γ/2 = {thr}"
                            ));
                        }
                        if y[t * d + c] != f32::from(q as i8) * s {
                            return Err(format!(
                                "block {b} channel {c} token {t}: decoded {} ≠ {q}·{s}",
                                y[t * d + c]
                            ));
                        }
                    }
                    let expected = match scale {
                        TernaryScale::Unit => 1.0,
                        TernaryScale::MeanAbs => gamma,
                        TernaryScale::LeastSquares => mean_abs(
                            column
                                .iter()
                                .enumerate()
                                .filter(|(t, _)| f.codes[t * d + c] != 1)
                                .map(|(_, &v)| v),
                        ),
                    }
                    .min(F16_MAX);
                    let sf = f64::from(s);
                    if (sf - expected).abs() > ulp16(expected) + 2f64.powi(-9) * expected {
                        return Err(format!(
                            "block {b} channel {c}: scale {s}, expected {expected} ({scale:?})"
                        ));
                    }
                }
            }
            ValueScheme::PerToken { bits } => {
                let ValueLayout::PerToken { channel_group, .. } = *codec.value_layout() else {
                    unreachable!()
                };
                let groups = d.div_ceil(channel_group);
                for t in 0..g {
                    for (gi, part) in x[t * d..][..d].chunks(channel_group).enumerate() {
                        let (_, _, range) = range_of(arith, part.iter().copied());
                        if f64::from(range) > F16_MAX || !range.is_finite() {
                            continue;
                        }
                        let p = f.params[t * groups + gi];
                        for (k, &xv) in part.iter().enumerate() {
                            let c = gi * channel_group + k;
                            let yv = f64::from(y[t * d + c]);
                            if let Some(bound) = affine_bound(arith, bits, eta_v, p, f64::from(xv))
                                && (f64::from(xv) - yv).abs() > bound
                            {
                                return Err(format!(
                                    "block {b} token {t} channel {c}: |{xv} − {yv}| > {bound}"
                                ));
                            }
                        }
                    }
                }
            }
            ValueScheme::PerChannel { bits } => {
                for c in 0..d {
                    let (_, _, range) = range_of(arith, x.iter().skip(c).step_by(d).copied());
                    if f64::from(range) > F16_MAX || !range.is_finite() {
                        continue;
                    }
                    for t in 0..g {
                        let (xv, yv) = (f64::from(x[t * d + c]), f64::from(y[t * d + c]));
                        if let Some(bound) = affine_bound(arith, bits, eta_v, f.params[c], xv)
                            && (xv - yv).abs() > bound
                        {
                            return Err(format!(
                                "block {b} token {t} channel {c}: |{xv} − {yv}| > {bound}"
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidkv_core::{GroupSize, HeadDim, QuantConfig};

    fn pc2(arith: Arithmetic) -> Codec {
        Codec::new(QuantConfig::new(
            HeadDim::new(16).unwrap(),
            GroupSize::G32,
            KeyScheme::PerChannel { bits: Bits::Two },
            ValueScheme::PerChannel { bits: Bits::Two },
            arith,
        ))
        .unwrap()
    }

    #[test]
    fn a_flipped_code_on_a_tie_is_a_boundary_case_and_elsewhere_an_error() {
        let codec = pc2(Arithmetic::F32);
        // channel 0 holds 0, 3, 1.5, 1.0, …: lo 0, step 1; x = 1.5 is a tie (code 2).
        let mut x = vec![0.25f32; 32 * 16];
        for (t, v) in [0.0f32, 3.0, 1.5, 1.0].into_iter().enumerate() {
            x[t * 16] = v;
        }
        let mut enc = vec![0u8; codec.key_block_bytes()];
        vidkv_cpu::encode_key_blocks(&codec, &x, None, &mut enc).unwrap();
        let codes_at = 16 * 4; // channel 0's codes
        assert_eq!(enc[codes_at] >> 4 & 3, 2);
        let mut tie = enc.clone();
        tie[codes_at] ^= 0b11 << 4; // code 2 → 1
        let tally = compare_keys(&codec, &x, &enc, &tie).unwrap();
        assert_eq!(tally.boundary, 1);
        let mut wrong = enc.clone();
        wrong[codes_at] ^= 0b11 << 6; // token 3: code 1 → 2, x = 1.0 is no tie
        assert!(compare_keys(&codec, &x, &enc, &wrong).is_err());
        let mut params = enc;
        params[1] ^= 1;
        assert!(compare_keys(&codec, &x, &tie, &params).is_err());
    }

    #[test]
    fn ulp16_matches_f16_spacing() {
        assert_eq!(ulp16(1.0), 2f64.powi(-10));
        assert_eq!(ulp16(1000.0), 0.5);
        assert_eq!(ulp16(1e-6), 2f64.powi(-24));
        assert!(mean_boundary(
            1.0 + 2f64.powi(-11),
            f16::from_f32(1.0),
            f16::from_bits(0x3C01)
        ));
        assert!(!mean_boundary(
            1.0,
            f16::from_f32(1.0),
            f16::from_bits(0x3C01)
        ));
    }
}
