//! [`SimdBackend`]: the [`KvQuantBackend`] over host buffers, per-operation fallback to scalar.

use alloc::vec::Vec;

use vidkv_core::backend::AttentionArgs;
use vidkv_core::{
    Capability, ChannelMask, Codec, Error, HeadTensor, KvQuantBackend, Operation, Result,
};
use vidkv_cpu::ScalarBackend;

use crate::level::{self, Level};

/// The SIMD backend at one [`Level`]. Operations without a kernel at that level run the scalar
/// backend's code (same bytes, same results).
#[derive(Debug, Clone, Copy)]
pub struct SimdBackend {
    level: Level,
}

impl Default for SimdBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl SimdBackend {
    /// The backend at the level in force ([`level::active_level`]).
    pub fn new() -> Self {
        Self {
            level: level::active_level(),
        }
    }

    /// The backend at `level`; refused when this CPU cannot run it.
    pub fn with_level(level: Level) -> Result<Self> {
        level::check(level)?;
        Ok(Self { level })
    }

    /// The level this backend runs.
    pub fn level(&self) -> Level {
        self.level
    }
}

impl KvQuantBackend for SimdBackend {
    type Buffer = Vec<u8>;

    fn name(&self) -> &'static str {
        self.level.name()
    }

    fn capability(&self, op: Operation, codec: &Codec) -> Capability {
        match op {
            Operation::Attend => Capability::Supported,
            _ => ScalarBackend.capability(op, codec),
        }
    }

    fn upload(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        Ok(bytes.to_vec())
    }

    fn download(&self, buffer: &Vec<u8>) -> Result<Vec<u8>> {
        Ok(buffer.clone())
    }

    fn alloc(&self, bytes: usize) -> Result<Vec<u8>> {
        Ok(alloc::vec![0; bytes])
    }

    fn encode_keys(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Vec<u8>>,
        outliers: Option<&ChannelMask>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        match crate::encode::encode_keys(self.level, codec, &input, outliers, out) {
            Some(()) => Ok(()),
            None => ScalarBackend.encode_keys(codec, input, outliers, out),
        }
    }

    fn decode_keys(
        &self,
        codec: &Codec,
        encoded: &Vec<u8>,
        blocks: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        match crate::encode::decode(self.level, codec, true, encoded, blocks, out) {
            Some(()) => Ok(()),
            None => ScalarBackend.decode_keys(codec, encoded, blocks, out),
        }
    }

    fn encode_values(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Vec<u8>>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        match crate::encode::encode_values(self.level, codec, &input, None, out) {
            Some(()) => Ok(()),
            None => ScalarBackend.encode_values(codec, input, out),
        }
    }

    fn decode_values(
        &self,
        codec: &Codec,
        encoded: &Vec<u8>,
        blocks: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        match crate::encode::decode(self.level, codec, false, encoded, blocks, out) {
            Some(()) => Ok(()),
            None => ScalarBackend.decode_values(codec, encoded, blocks, out),
        }
    }

    fn encode_values_masked(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Vec<u8>>,
        excluded: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<()> {
        match crate::encode::encode_values(self.level, codec, &input, Some(excluded), out) {
            Some(()) => Ok(()),
            None => ScalarBackend.encode_values_masked(codec, input, excluded, out),
        }
    }

    fn copy_bytes(
        &self,
        src: &Vec<u8>,
        src_offset: usize,
        dst: &mut Vec<u8>,
        dst_offset: usize,
        len: usize,
    ) -> Result<()> {
        ScalarBackend.copy_bytes(src, src_offset, dst, dst_offset, len)
    }

    fn write_bytes(&self, dst: &mut Vec<u8>, offset: usize, bytes: &[u8]) -> Result<()> {
        ScalarBackend.write_bytes(dst, offset, bytes)
    }

    /// A streaming-cache job ([`AttentionArgs`]) through [`crate::attend_head`]: the sinks and
    /// the residual ring are gathered into one contiguous f16 tail (attention does not depend on
    /// token order). Jobs with salient tokens, a softmax scale other than `1/√D`, layers that
    /// borrow their codes (XQuant sharing) and configurations without a SIMD kernel run the
    /// scalar backend's fused kernel, which works on the packed blocks (never decoding the
    /// cache). SIMD kernels: mixed keys + ternary values (also with traced tokens, above the
    /// scalar level), sign-sketch keys with per-token min/max values, and (above the scalar
    /// level) per-channel min/max keys with per-token or per-channel min/max values (KIVI,
    /// `pc2`, `xquant`, `ott2`, also traced). A failing min/max job is rerun by the scalar
    /// kernel, so damaged blocks give the scalar backend's error.
    fn attend(&self, codec: &Codec, args: AttentionArgs<'_, Vec<u8>>) -> Result<()> {
        let d = codec.head_dim();
        let default_scale = 1.0 / libm::sqrtf(d as f32);
        let mixed_kernel = self.level != Level::Scalar && crate::kernel::covers(codec);
        let sketch_kernel = crate::sketch::sketch_keys(codec) && crate::sketch::handles(codec);
        let minmax_kernel = self.level != Level::Scalar && crate::minmax::handles(codec);
        if args.salient.is_some()
            || args.scale != default_scale
            || args.lender.is_some()
            || codec.is_borrowing()
            || !(mixed_kernel || sketch_kernel || minmax_kernel)
        {
            return ScalarBackend.attend(codec, args);
        }
        let short = |what, expected: usize, actual: usize| Error::ShapeMismatch {
            what,
            expected,
            actual,
        };
        let row = d * 2;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for rows in [&args.sinks, &args.residual].into_iter().flatten() {
            let bytes = rows.capacity * row;
            if rows.keys.len() < bytes || rows.values.len() < bytes || rows.len > rows.capacity {
                return Err(short(
                    "f16 rows",
                    bytes,
                    rows.keys.len().min(rows.values.len()),
                ));
            }
            for i in 0..rows.len {
                let slot = (rows.start + i) % rows.capacity;
                keys.extend_from_slice(&rows.keys[slot * row..][..row]);
                values.extend_from_slice(&rows.values[slot * row..][..row]);
            }
        }
        let (kb, vb) = (
            args.blocks * codec.key_block_bytes(),
            args.blocks * codec.value_block_bytes(),
        );
        let cache = crate::HeadCache {
            key_blocks: args.key_blocks.get(..kb).ok_or(short(
                "key blocks",
                kb,
                args.key_blocks.len(),
            ))?,
            value_blocks: args.value_blocks.get(..vb).ok_or(short(
                "value blocks",
                vb,
                args.value_blocks.len(),
            ))?,
            blocks: args.blocks,
            residual_keys: &keys,
            residual_values: &values,
            residual_tokens: keys.len() / row,
        };
        let queries: Vec<f32> = args
            .queries
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if queries.len() != args.query_heads * d || args.out.len() != queries.len() * 4 {
            return Err(short(
                "attention queries/output",
                args.query_heads * d,
                queries.len(),
            ));
        }
        let mut out = vec![0.0f32; queries.len()];
        if let Err(e) = crate::attend_head(self.level, codec, &queries, &cache, &mut out) {
            // Damaged min/max blocks: the scalar kernel reports the error it would (same type,
            // same offset, in the scalar backend's block order).
            return if minmax_kernel {
                ScalarBackend.attend(codec, args)
            } else {
                Err(e)
            };
        }
        for (chunk, v) in args.out.chunks_exact_mut(4).zip(out) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        Ok(())
    }
}
