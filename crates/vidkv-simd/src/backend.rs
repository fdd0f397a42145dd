//! [`SimdBackend`]: the [`KvQuantBackend`] over host buffers, per-operation fallback to scalar.

use alloc::vec::Vec;

use vidkv_core::{Capability, ChannelMask, Codec, HeadTensor, KvQuantBackend, Operation, Result};
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
        ScalarBackend.encode_keys(codec, input, outliers, out)
    }

    fn decode_keys(
        &self,
        codec: &Codec,
        encoded: &Vec<u8>,
        blocks: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        ScalarBackend.decode_keys(codec, encoded, blocks, out)
    }

    fn encode_values(
        &self,
        codec: &Codec,
        input: HeadTensor<'_, Vec<u8>>,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        ScalarBackend.encode_values(codec, input, out)
    }

    fn decode_values(
        &self,
        codec: &Codec,
        encoded: &Vec<u8>,
        blocks: usize,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        ScalarBackend.decode_values(codec, encoded, blocks, out)
    }
}
