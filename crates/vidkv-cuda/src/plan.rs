//! Launch planning shared by the CUDA backend, the raw entry point and the CPU emulator tests:
//! codec tables, argument checks that mirror the scalar backend's errors, kernel parameters,
//! shared-memory sizes and the split-K plan of fused attention. Nothing here touches a device.

use core::f64::consts::PI;

use half::f16;
use vidkv_core::backend::{AttentionArgs, DenseRows, SalientArgs};
use vidkv_core::cache::salient_codec;
use vidkv_core::{
    Arithmetic, Bits, Calibration, Capability, ChannelMask, Codec, DType, Error, KeyLayout,
    KeyScheme, LaneRule, Operation, OutlierScope, Result, TernaryScale, Transform, ValueLayout,
    ValueScheme,
};

use crate::params::{
    AttnJob, AttnParams, DecodeParams, DenseDesc, ERR_SLOT_CORRUPT, ERR_SLOT_NONFINITE,
    ERR_SLOT_RANGE, EncodeParams, KCodec, MAX_QUERY_HEADS,
};

/// Why traced-token configurations are refused.
const TRACED_KEYS: &str =
    "outlier-token tracing (traced_tokens > 0) is not implemented in the CUDA kernels";

/// What the CUDA kernels run: every configuration, except that key blocks with traced tokens
/// (OTT) are neither encoded, decoded nor attended (value blocks do not depend on tracing).
pub fn capability(op: Operation, codec: &Codec) -> Capability {
    unsupported(op, codec).map_or(Capability::Supported, Capability::Unsupported)
}

/// [`Error::Unsupported`] for an operation that [`capability`] refuses.
pub fn require(op: Operation, codec: &Codec) -> Result<()> {
    match capability(op, codec) {
        Capability::Supported => Ok(()),
        Capability::Unsupported(reason) => Err(Error::Unsupported {
            backend: "cuda",
            operation: op.name(),
            reason,
        }),
    }
}

/// The kernels of `kernels/*.cu`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kernel {
    /// `vk_encode_keys` (encode.cu).
    EncodeKeys,
    /// `vk_encode_values` (encode.cu).
    EncodeValues,
    /// `vk_decode_keys` (decode.cu).
    DecodeKeys,
    /// `vk_decode_values` (decode.cu).
    DecodeValues,
    /// `vk_attend_simt` (attend.cu): every scheme.
    AttendSimt,
    /// `vk_attend_tc_matrix` (attend.cu): tensor cores, Fft/Hadamard lanes.
    AttendTcMatrix,
    /// `vk_attend_tc_identity` (attend.cu): tensor cores, Identity lanes.
    AttendTcIdentity,
    /// `vk_attend_merge` (attend.cu): merges the splits of each job.
    AttendMerge,
}

impl Kernel {
    /// Every kernel.
    pub const ALL: [Kernel; 8] = [
        Kernel::EncodeKeys,
        Kernel::EncodeValues,
        Kernel::DecodeKeys,
        Kernel::DecodeValues,
        Kernel::AttendSimt,
        Kernel::AttendTcMatrix,
        Kernel::AttendTcIdentity,
        Kernel::AttendMerge,
    ];

    /// The `extern "C"` name.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::EncodeKeys => "vk_encode_keys",
            Kernel::EncodeValues => "vk_encode_values",
            Kernel::DecodeKeys => "vk_decode_keys",
            Kernel::DecodeValues => "vk_decode_values",
            Kernel::AttendSimt => "vk_attend_simt",
            Kernel::AttendTcMatrix => "vk_attend_tc_matrix",
            Kernel::AttendTcIdentity => "vk_attend_tc_identity",
            Kernel::AttendMerge => "vk_attend_merge",
        }
    }

    /// Index of the PTX module (0 encode.cu, 1 decode.cu, 2 attend.cu).
    pub fn module(self) -> usize {
        match self {
            Kernel::EncodeKeys | Kernel::EncodeValues => 0,
            Kernel::DecodeKeys | Kernel::DecodeValues => 1,
            _ => 2,
        }
    }

    /// Threads per CTA.
    pub fn threads(self) -> u32 {
        128
    }
}

/// One kernel launch: grid `(x, y)`, 128 threads, dynamic shared memory and the parameter
/// struct's bytes.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The kernel.
    pub kernel: Kernel,
    /// Grid size.
    pub grid: (u32, u32),
    /// Dynamic shared memory in bytes.
    pub smem: u32,
    /// The parameter struct, as bytes.
    pub params: Vec<u8>,
}

fn off(s: vidkv_core::Section) -> i32 {
    s.offset as i32
}

/// The codec as the kernels see it.
pub fn kernel_codec(codec: &Codec) -> KCodec {
    let cfg = codec.config();
    let d = codec.head_dim();
    let mut k = KCodec {
        d: d as i32,
        g: codec.group() as i32,
        arith: match cfg.arithmetic {
            Arithmetic::F32 => 0,
            Arithmetic::Reference => 1,
        },
        key_block_bytes: codec.key_block_bytes() as i32,
        value_block_bytes: codec.value_block_bytes() as i32,
        trit_row: d.div_ceil(5) as i32,
        mask_words: d.div_ceil(32) as i32,
        ..KCodec::default()
    };
    match (*codec.key_layout(), cfg.keys) {
        (
            KeyLayout::Mixed {
                outliers,
                lanes,
                mask,
                outlier_params,
                lane_scales,
                outlier_codes,
                lane_bits,
            },
            KeyScheme::Mixed(m),
        ) => {
            k.key_kind = 0;
            k.outliers = outliers as i32;
            k.lanes = lanes as i32;
            k.transform = match m.transform {
                Transform::Fft => 0,
                Transform::Hadamard => 1,
                Transform::Identity => 2,
            };
            k.lane_rule = match m.lane_rule {
                LaneRule::Symmetric => 0,
                LaneRule::PaperCompat => 1,
            };
            k.k_mask = off(mask);
            k.k_oparams = off(outlier_params);
            k.k_lscales = off(lane_scales);
            k.k_ocodes = off(outlier_codes);
            k.k_lbits = off(lane_bits);
        }
        (
            KeyLayout::PerChannel {
                bits,
                params,
                codes,
            },
            _,
        ) => {
            k.key_kind = 1;
            k.key_bits = bits.get() as i32;
            k.k_params = off(params);
            k.k_codes = off(codes);
        }
        // Sign-sketch keys never reach the kernels (`require`); no key fields.
        (KeyLayout::SignSketch { .. }, _) => k.key_kind = -1,
        _ => unreachable!("a key scheme has its own layout"),
    }
    match *codec.value_layout() {
        ValueLayout::Ternary { scales, trits } => {
            k.val_kind = 0;
            k.ternary_scale = match cfg.values {
                ValueScheme::Ternary {
                    scale: TernaryScale::MeanAbs,
                } => 0,
                ValueScheme::Ternary {
                    scale: TernaryScale::LeastSquares,
                } => 1,
                _ => 2,
            };
            k.v_scales = off(scales);
            k.v_trits = off(trits);
        }
        ValueLayout::PerToken {
            bits,
            channel_group,
            params,
            codes,
        } => {
            k.val_kind = 1;
            k.val_bits = bits.get() as i32;
            k.channel_group = channel_group as i32;
            k.v_params = off(params);
            k.v_codes = off(codes);
        }
        ValueLayout::PerChannel {
            bits,
            params,
            codes,
        } => {
            k.val_kind = 2;
            k.val_bits = bits.get() as i32;
            k.v_params = off(params);
            k.v_codes = off(codes);
        }
    }
    k
}

/// Lanes of a mixed-key codec (0 otherwise).
pub fn lanes(codec: &Codec) -> usize {
    match *codec.key_layout() {
        KeyLayout::Mixed { lanes, .. } => lanes,
        KeyLayout::PerChannel { .. } | KeyLayout::SignSketch { .. } => 0,
    }
}

/// The DFT tables `cos[0..M]` then `sin[0..M]`, computed exactly as vidkv-cpu computes them.
pub fn twiddles(m: usize) -> Vec<f32> {
    let angle = |i: usize| 2.0 * PI * i as f64 / m as f64;
    let cos = (0..m).map(|i| libm::cos(angle(i)) as f32);
    let sin = (0..m).map(|i| libm::sin(angle(i)) as f32);
    cos.chain(sin).collect()
}

/// Whether the tensor-core attention kernel handles this codec: mixed keys with D = 128,
/// G = 32, 64 outliers and 64 lanes, ternary values.
pub fn tensor_core_codec(codec: &Codec) -> Option<Kernel> {
    let cfg = codec.config();
    let KeyScheme::Mixed(m) = cfg.keys else {
        return None;
    };
    if codec.head_dim() != 128 || codec.group() != 32 || lanes(codec) != 64 {
        return None;
    }
    if !matches!(cfg.values, ValueScheme::Ternary { .. }) {
        return None;
    }
    Some(match m.transform {
        Transform::Identity => Kernel::AttendTcIdentity,
        Transform::Fft | Transform::Hadamard => Kernel::AttendTcMatrix,
    })
}

/// The adjoint `T⁻ᵀ` of the lane transform as an f16 `[M][M]` matrix (row = lane), for the
/// tensor-core kernel: `w_j = Σ_n T⁻ᵀ[j][n] q_normal[n]`.
pub fn adjoint_matrix(codec: &Codec) -> Vec<u16> {
    let m = lanes(codec);
    let KeyScheme::Mixed(mixed) = codec.config().keys else {
        return Vec::new();
    };
    let mut out = vec![0u16; m * m];
    for j in 0..m {
        for n in 0..m {
            let v = match mixed.transform {
                Transform::Identity => f64::from(u8::from(j == n)),
                Transform::Hadamard => {
                    let s = 1.0 / (m as f64).sqrt();
                    if (j & n).count_ones() % 2 == 1 { -s } else { s }
                }
                Transform::Fft => {
                    let k = if j == 0 { 0 } else { j.div_ceil(2) };
                    let imaginary = j > 0 && j % 2 == 0;
                    let weight = if k == 0 || 2 * k == m { 1.0 } else { 2.0 };
                    let a = 2.0 * PI * ((k * n) % m) as f64 / m as f64;
                    let basis = if imaginary { -a.sin() } else { a.cos() };
                    basis * weight / m as f64
                }
            };
            out[j * m + n] = f16::from_f64(v).to_bits();
        }
    }
    out
}

/// Threads per encoder/decoder CTA.
const THREADS: usize = 128;

/// Dynamic shared memory of an encoder CTA (see `EncSmem` in encode.cu).
pub fn encode_smem(codec: &Codec) -> usize {
    let (g, d) = (codec.group(), codec.head_dim());
    4 * (g * d + 5 * d + (THREADS / 32) * 2 * d)
}

/// Dynamic shared memory of a key decoder CTA.
pub fn decode_smem(codec: &Codec) -> usize {
    let (g, d) = (codec.group(), codec.head_dim());
    4 * (2 * d + g * lanes(codec).max(1))
}

/// Why the CUDA kernels cannot run `op` for `codec`, if they cannot: layers that borrow their
/// codes (XQuant cross-layer sharing), 1-bit min/max codes, and encoding with XQuant's
/// endpoint calibration run on the CPU backends only.
pub fn unsupported(op: Operation, codec: &Codec) -> Option<&'static str> {
    let cfg = codec.config();
    let one_bit = matches!(cfg.keys, KeyScheme::PerChannel { bits: Bits::One })
        || matches!(
            cfg.values,
            ValueScheme::PerToken { bits: Bits::One } | ValueScheme::PerChannel { bits: Bits::One }
        );
    let encode = matches!(
        op,
        Operation::EncodeKeys | Operation::EncodeValues | Operation::EncodeValuesMasked
    );
    let touches_keys = matches!(
        op,
        Operation::EncodeKeys | Operation::DecodeKeys | Operation::Attend
    );
    if let KeyScheme::SignSketch { .. } = cfg.keys {
        Some("H1B-KV sign-sketch keys have no CUDA kernels")
    } else if touches_keys && cfg.traced_tokens > 0 {
        Some(TRACED_KEYS)
    } else if codec.is_borrowing() {
        Some("layers that borrow their codes (XQuant sharing) have no CUDA kernel")
    } else if one_bit {
        Some("1-bit min/max codes have no CUDA kernel")
    } else if encode && cfg.calibration != Calibration::NONE {
        Some("the XQuant-calibrated encoders have no CUDA kernel")
    } else {
        None
    }
}

/// Checks an encode call like the scalar backend and returns the number of blocks.
pub fn check_encode(
    codec: &Codec,
    keys: bool,
    dtype: DType,
    tokens: usize,
    input_len: usize,
    out_len: usize,
    outliers: Option<&ChannelMask>,
) -> Result<usize> {
    require(
        if keys {
            Operation::EncodeKeys
        } else {
            Operation::EncodeValues
        },
        codec,
    )?;
    let d = codec.head_dim();
    let expected = tokens * d * dtype.size();
    if input_len != expected {
        return Err(Error::ShapeMismatch {
            what: "input bytes",
            expected,
            actual: input_len,
        });
    }
    let elements = codec.block_elements();
    if !(tokens * d).is_multiple_of(elements) {
        return Err(Error::ShapeMismatch {
            what: "input elements (whole blocks of G tokens × head_dim)",
            expected: tokens * d / elements * elements,
            actual: tokens * d,
        });
    }
    let blocks = tokens / codec.group();
    let block_bytes = if keys {
        codec.key_block_bytes()
    } else {
        codec.value_block_bytes()
    };
    if out_len != blocks * block_bytes {
        return Err(Error::ShapeMismatch {
            what: "encoded output bytes",
            expected: blocks * block_bytes,
            actual: out_len,
        });
    }
    if keys && let KeyScheme::Mixed(mixed) = codec.config().keys {
        match outliers {
            Some(mask) => {
                let k = mixed.outlier_count(codec.config().head_dim);
                if mask.count() != k || mask.outliers(d).count() != k {
                    return Err(Error::InvalidConfig {
                        reason: "the outlier mask must select exactly round(r·D) channels below head_dim",
                    });
                }
            }
            None if mixed.scope == OutlierScope::Layer => {
                return Err(Error::InvalidConfig {
                    reason: "layer-scope keys need the pooled outlier channels (see layer_outliers)",
                });
            }
            None => {}
        }
    }
    Ok(blocks)
}

/// Checks a decode call like the scalar backend.
pub fn check_decode(
    codec: &Codec,
    keys: bool,
    encoded_len: usize,
    blocks: usize,
    out_len: usize,
) -> Result<()> {
    require(
        if keys {
            Operation::DecodeKeys
        } else {
            Operation::DecodeValues
        },
        codec,
    )?;
    let block_bytes = if keys {
        codec.key_block_bytes()
    } else {
        codec.value_block_bytes()
    };
    if encoded_len < blocks * block_bytes {
        return Err(Error::ShapeMismatch {
            what: "encoded bytes",
            expected: blocks * block_bytes,
            actual: encoded_len,
        });
    }
    let want = blocks * codec.block_elements() * 4;
    if out_len != want {
        return Err(Error::ShapeMismatch {
            what: "f32 output bytes",
            expected: want,
            actual: out_len,
        });
    }
    Ok(())
}

/// Device addresses of an encode launch.
#[derive(Debug, Clone, Copy)]
pub struct EncodeAddrs {
    /// Raw input elements.
    pub input: u64,
    /// Output blocks.
    pub out: u64,
    /// Fixed outlier mask (8 × u32) or 0.
    pub fixed_mask: u64,
    /// Excluded-token masks or 0.
    pub excluded: u64,
    /// Twiddles (Fft) or 0.
    pub twiddles: u64,
    /// Error slots (3 × u64, preset to u64::MAX).
    pub errors: u64,
}

fn dtype_code(dtype: DType) -> i32 {
    match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::BF16 => 2,
    }
}

/// The encoder launch for `blocks` blocks.
pub fn encode_launch(
    codec: &Codec,
    keys: bool,
    dtype: DType,
    blocks: usize,
    a: EncodeAddrs,
) -> Launch {
    let p = EncodeParams {
        c: kernel_codec(codec),
        input: a.input,
        out: a.out,
        fixed_mask: a.fixed_mask,
        excluded: a.excluded,
        twiddles: a.twiddles,
        errors: a.errors,
        dtype: dtype_code(dtype),
        blocks: blocks as i32,
    };
    Launch {
        kernel: if keys {
            Kernel::EncodeKeys
        } else {
            Kernel::EncodeValues
        },
        grid: (blocks as u32, 1),
        smem: encode_smem(codec) as u32,
        params: bytemuck::bytes_of(&p).to_vec(),
    }
}

/// The decoder launch for `blocks` blocks.
pub fn decode_launch(
    codec: &Codec,
    keys: bool,
    blocks: usize,
    encoded: u64,
    out: u64,
    twiddles: u64,
    errors: u64,
) -> Launch {
    let p = DecodeParams {
        c: kernel_codec(codec),
        encoded,
        out,
        twiddles,
        errors,
        blocks: blocks as i32,
        pad: 0,
    };
    Launch {
        kernel: if keys {
            Kernel::DecodeKeys
        } else {
            Kernel::DecodeValues
        },
        grid: (blocks as u32, 1),
        smem: if keys { decode_smem(codec) as u32 } else { 0 },
        params: bytemuck::bytes_of(&p).to_vec(),
    }
}

/// Maps the error slots an encoder or decoder wrote to the scalar backend's errors.
pub fn slot_error(slots: &[u64]) -> Result<()> {
    let pos = |v: u64| (v >> 8) as usize;
    if slots[ERR_SLOT_NONFINITE] != u64::MAX {
        return Err(Error::NonFinite {
            index: pos(slots[ERR_SLOT_NONFINITE]),
        });
    }
    if slots[ERR_SLOT_RANGE] != u64::MAX {
        return Err(Error::OutOfRange {
            index: pos(slots[ERR_SLOT_RANGE]),
        });
    }
    let v = slots[ERR_SLOT_CORRUPT];
    if v != u64::MAX {
        let what = match v & 0xff {
            1 => "outlier channel mask",
            2 => "affine parameters not finite or step negative",
            3 => "lane scale not finite and non-negative",
            4 => "ternary scale not finite and non-negative",
            _ => "trit byte above 242",
        };
        return Err(Error::Corrupt {
            what,
            offset: pos(v),
        });
    }
    Ok(())
}

/// Shape of one attention job, for planning.
#[derive(Debug, Clone, Copy)]
pub struct JobShape {
    /// Quantized blocks.
    pub blocks: usize,
    /// Query heads of the job (at most [`MAX_QUERY_HEADS`]).
    pub query_heads: usize,
    /// Whether the job has salient tokens.
    pub salient: bool,
}

/// A planned attention launch.
#[derive(Debug, Clone, Copy)]
pub struct AttnPlan {
    /// Which kernel.
    pub kernel: Kernel,
    /// Splits of each job's block range.
    pub splits: usize,
    /// Blocks per split.
    pub blocks_per_split: usize,
    /// Dynamic shared memory.
    pub smem: usize,
    /// Workspace floats needed.
    pub work_floats: usize,
    /// Whether the last CTA of each job merges the splits (few splits) or a second launch does.
    pub fused_merge: bool,
}

/// Splits at or below which the last CTA of a job merges them itself (one launch); above it,
/// one CTA cannot read every partial fast enough and `vk_attend_merge` runs as a second launch.
pub const FUSED_MERGE_MAX_SPLITS: usize = 8;

/// Shared memory of the tensor-core kernel (`sizeof(TcSmem)` in attend.cu).
pub const TC_SMEM: usize = 128 * 8 * 2 + 256 * 2 + 4 * 128 + 4 * 4 * 2256;

/// Dynamic shared memory of the SIMT attention kernel for `bps` blocks per split.
pub fn simt_smem(codec: &Codec, bps: usize) -> usize {
    let (d, g) = (codec.head_dim(), codec.group());
    let q = MAX_QUERY_HEADS;
    let carve = 4 * q * d + 2 * 256 + 4 * ((q * d + g * q) * 4 + 2 * d * 4) + 4 * (bps + 1);
    let scratch = 4 * 4 * q * (d + 2);
    carve.max(scratch)
}

/// Plans an attention launch over `jobs` for a device with `sms` multiprocessors.
/// `tensor_cores` allows the tensor-core kernel (callers pass false when a buffer is not
/// 16-byte aligned).
pub fn plan_attention(
    codec: &Codec,
    jobs: &[JobShape],
    sms: usize,
    tensor_cores: bool,
) -> AttnPlan {
    plan_attention_with(codec, jobs, sms, tensor_cores, None)
}

/// [`plan_attention`] with the number of splits per job forced (for tuning experiments).
pub fn plan_attention_with(
    codec: &Codec,
    jobs: &[JobShape],
    sms: usize,
    tensor_cores: bool,
    splits_override: Option<usize>,
) -> AttnPlan {
    let njobs = jobs.len().max(1);
    let max_blocks = jobs.iter().map(|j| j.blocks).max().unwrap_or(0);
    let tc = if tensor_cores && !jobs.iter().any(|j| j.salient) {
        tensor_core_codec(codec)
    } else {
        None
    };
    let (kernel, per_sm, min_per_split) = match tc {
        Some(k) => (k, 2, 8),
        None => (Kernel::AttendSimt, 4, 4),
    };
    // As many CTAs as fit at once (per_sm each on every SM), in whole waves: the number of
    // splits is rounded down so that jobs × splits never spills a few CTAs into a second wave.
    let slots = sms.max(1) * per_sm;
    let mut splits = (slots / njobs).max(1);
    splits = splits.min(max_blocks.div_ceil(min_per_split).max(1));
    if let Some(s) = splits_override {
        splits = s.clamp(1, max_blocks.max(1));
    }
    let mut bps = max_blocks.div_ceil(splits);
    if kernel == Kernel::AttendSimt && bps > 4096 {
        bps = 4096;
    }
    if bps > 0 {
        splits = max_blocks.div_ceil(bps).max(1);
    } else {
        splits = 1;
    }
    let smem = if kernel == Kernel::AttendSimt {
        simt_smem(codec, bps)
    } else {
        TC_SMEM
    };
    AttnPlan {
        kernel,
        splits,
        blocks_per_split: bps,
        smem,
        work_floats: njobs * splits * MAX_QUERY_HEADS * (codec.head_dim() + 2),
        fused_merge: splits <= FUSED_MERGE_MAX_SPLITS,
    }
}

/// The attention parameter struct.
#[allow(clippy::too_many_arguments)]
pub fn attn_params(
    codec: &Codec,
    plan: &AttnPlan,
    njobs: usize,
    jobs: u64,
    work: u64,
    counters: u64,
    fmat: u64,
    twiddles: u64,
) -> AttnParams {
    AttnParams {
        c: kernel_codec(codec),
        salient: kernel_codec(&salient_codec(codec)),
        jobs,
        work,
        counters,
        fmat,
        twiddles,
        njobs: njobs as i32,
        splits: plan.splits as i32,
        blocks_per_split: plan.blocks_per_split as i32,
        fused_merge: i32::from(plan.fused_merge),
    }
}

/// The attention launches: the kernel, then the merge kernel unless the merge is fused.
pub fn attn_launches(plan: &AttnPlan, njobs: usize, params: &AttnParams) -> Vec<Launch> {
    let mut launches = vec![Launch {
        kernel: plan.kernel,
        grid: (plan.splits as u32, njobs as u32),
        smem: plan.smem as u32,
        params: bytemuck::bytes_of(params).to_vec(),
    }];
    if !plan.fused_merge {
        launches.push(Launch {
            kernel: Kernel::AttendMerge,
            grid: (njobs as u32, MAX_QUERY_HEADS as u32),
            smem: 0,
            params: bytemuck::bytes_of(params).to_vec(),
        });
    }
    launches
}

// ---- attention jobs ----

/// A [`Error::ShapeMismatch`].
pub fn short(what: &'static str, expected: usize, actual: usize) -> Error {
    Error::ShapeMismatch {
        what,
        expected,
        actual,
    }
}

fn dense_desc<B>(
    rows: Option<&DenseRows<'_, B>>,
    d: usize,
    info: &dyn Fn(&B) -> (u64, usize),
) -> Result<DenseDesc> {
    let Some(r) = rows else {
        return Ok(DenseDesc::default());
    };
    if r.len == 0 {
        return Ok(DenseDesc::default());
    }
    if r.len > r.capacity || r.start >= r.capacity {
        return Err(Error::InvalidConfig {
            reason: "f16 rows: start and length must lie within the capacity",
        });
    }
    let need = r.capacity * d * 2;
    let ((ka, kl), (va, vl)) = (info(r.keys), info(r.values));
    if kl < need || vl < need {
        return Err(short(
            "f16 rows ([capacity, head_dim] f16)",
            need,
            kl.min(vl),
        ));
    }
    Ok(DenseDesc {
        keys: ka,
        values: va,
        start: r.start as i32,
        len: r.len as i32,
        cap: r.capacity as i32,
        pad: 0,
    })
}

/// Checks one job like the scalar backend and turns it into kernel jobs (several when the GQA
/// group has more than 8 query heads).
pub fn attention_jobs<B>(
    codec: &Codec,
    a: &AttentionArgs<'_, B>,
    info: &dyn Fn(&B) -> (u64, usize),
) -> Result<Vec<AttnJob>> {
    require(Operation::Attend, codec)?;
    if a.lender.is_some() {
        return Err(Error::InvalidConfig {
            reason: "lender blocks given to a layer that owns its codes",
        });
    }
    let d = codec.head_dim();
    let nq = a.query_heads;
    if nq == 0 {
        return Err(Error::InvalidConfig {
            reason: "an attention job needs at least one query head",
        });
    }
    let ((qa, ql), (oa, ol)) = (info(a.queries), info(&*a.out));
    if ql != nq * d * 4 {
        return Err(short(
            "queries ([query_heads, head_dim] f32)",
            nq * d * 4,
            ql,
        ));
    }
    if ol != nq * d * 4 {
        return Err(short(
            "attention output bytes ([query_heads, head_dim] f32)",
            nq * d * 4,
            ol,
        ));
    }
    let (kb, vb) = (codec.key_block_bytes(), codec.value_block_bytes());
    let ((ka, kl), (va, vl)) = (info(a.key_blocks), info(a.value_blocks));
    if kl < a.blocks * kb {
        return Err(short("key blocks", a.blocks * kb, kl));
    }
    if vl < a.blocks * vb {
        return Err(short("value blocks", a.blocks * vb, vl));
    }
    let mut job = AttnJob {
        key_blocks: ka,
        value_blocks: va,
        dense: [
            dense_desc(a.sinks.as_ref(), d, info)?,
            dense_desc(a.residual.as_ref(), d, info)?,
        ],
        blocks: a.blocks as i32,
        scale: a.scale,
        ..AttnJob::default()
    };
    if let Some(s) = &a.salient {
        salient_job(codec, s, a.blocks, &mut job, info)?;
    }
    let (q, o) = (qa, oa);
    Ok((0..nq)
        .step_by(MAX_QUERY_HEADS)
        .map(|h0| AttnJob {
            queries: q + (h0 * d * 4) as u64,
            out: o + (h0 * d * 4) as u64,
            query_heads: (nq - h0).min(MAX_QUERY_HEADS) as i32,
            ..job
        })
        .collect())
}

fn salient_job<B>(
    codec: &Codec,
    s: &SalientArgs<'_, B>,
    blocks: usize,
    job: &mut AttnJob,
    info: &dyn Fn(&B) -> (u64, usize),
) -> Result<()> {
    let (g, d) = (codec.group(), codec.head_dim());
    let sc = salient_codec(codec);
    let ((ma, ml), (ga, gl), (pa, pl)) = (info(s.masks), info(s.groups), info(s.pending));
    if ml < blocks * g / 8 {
        return Err(short("salient masks", blocks * g / 8, ml));
    }
    if gl < s.group_count * sc.value_block_bytes() {
        return Err(short(
            "salient groups",
            s.group_count * sc.value_block_bytes(),
            gl,
        ));
    }
    if pl < s.pending_len * d * 2 || s.pending_len > g {
        return Err(short("pending salient rows", s.pending_len * d * 2, pl));
    }
    job.sal_masks = ma;
    job.sal_groups = ga;
    job.sal_pending = pa;
    job.sal_group_count = s.group_count as i32;
    job.sal_pending_len = s.pending_len as i32;
    if job.sal_masks == 0 && blocks > 0 {
        return Err(short("salient masks", blocks * g / 8, 0));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidkv_core::{GroupSize, HeadDim, Scheme};

    fn codec(s: Scheme, d: usize, g: usize) -> Codec {
        Codec::new(s.config(HeadDim::new(d).unwrap(), GroupSize::new(g).unwrap())).unwrap()
    }

    #[test]
    fn sign_sketch_codecs_are_unsupported_not_panics() {
        let c = codec(Scheme::H1b, 128, 32);
        assert!(unsupported(Operation::Attend, &c).is_some());
        assert!(matches!(
            require(Operation::Attend, &c),
            Err(Error::Unsupported {
                backend: "cuda",
                ..
            })
        ));
        assert!(matches!(
            check_decode(&c, true, c.key_block_bytes(), 1, 128 * 32 * 4),
            Err(Error::Unsupported { .. })
        ));
        assert_eq!(kernel_codec(&c).key_kind, -1);
        for s in [Scheme::Vidkv, Scheme::Kivi2] {
            assert!(require(Operation::Attend, &codec(s, 128, 32)).is_ok());
        }
    }

    #[test]
    fn kernel_codec_matches_layouts() {
        let c = codec(Scheme::Vidkv, 128, 32);
        let k = kernel_codec(&c);
        // The tensor-core kernel hard-codes these offsets (attend.cu TK_* / TV_*).
        assert_eq!(
            (k.key_block_bytes, k.value_block_bytes),
            (1168, 1088),
            "{k:?}"
        );
        assert_eq!(
            (k.k_mask, k.k_oparams, k.k_lscales, k.k_ocodes, k.k_lbits),
            (0, 16, 272, 400, 912)
        );
        assert_eq!((k.v_scales, k.v_trits, k.trit_row), (0, 256, 26));
        assert_eq!(tensor_core_codec(&c), Some(Kernel::AttendTcMatrix));
        assert_eq!(tensor_core_codec(&codec(Scheme::Kivi2, 128, 32)), None);
        assert_eq!(tensor_core_codec(&codec(Scheme::Vidkv, 64, 32)), None);
    }

    #[test]
    fn plan_splits_cover_every_block() {
        let c = codec(Scheme::Vidkv, 128, 32);
        for (njobs, blocks) in [(64, 2044), (4, 2044), (1, 0), (3, 1), (64, 124)] {
            let jobs = vec![
                JobShape {
                    blocks,
                    query_heads: 7,
                    salient: false
                };
                njobs
            ];
            let p = plan_attention(&c, &jobs, 132, true);
            assert!(p.splits * p.blocks_per_split >= blocks, "{p:?}");
            assert!(njobs * p.splits <= 264 || p.splits == 1, "one wave: {p:?}");
            assert!(
                p.splits == 1 || (p.splits - 1) * p.blocks_per_split < blocks,
                "{p:?}"
            );
            assert_eq!(p.kernel, Kernel::AttendTcMatrix);
        }
    }

    #[test]
    fn adjoint_matrix_is_the_adjoint_of_the_inverse() {
        let c = codec(Scheme::Vidkv, 128, 32);
        let f = adjoint_matrix(&c);
        let t = vidkv_cpu::transform::LaneTransform::new(Transform::Fft, 64);
        let q: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3)
            .collect();
        let mut want = vec![0.0f32; 64];
        t.inverse_adjoint(&q, &mut want);
        for j in 0..64 {
            let got: f32 = (0..64)
                .map(|n| f16::from_bits(f[j * 64 + n]).to_f32() * q[n])
                .sum();
            assert!(
                (got - want[j]).abs() < 2e-3,
                "lane {j}: {got} vs {}",
                want[j]
            );
        }
    }
}
