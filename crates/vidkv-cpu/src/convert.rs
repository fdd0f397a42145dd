//! Input conversion: raw little-endian f32/f16/bf16 elements to validated f32.

use alloc::vec::Vec;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use vidkv_core::{Arithmetic, DType, Error, Result};

use crate::arith::{F16_MAX, r16};

/// Converts raw little-endian elements to f32; rejects NaN/inf ([`Error::NonFinite`]) and
/// magnitudes above the f16 range ([`Error::OutOfRange`]). Under reference arithmetic every value
/// is rounded to the f16 grid first, as the reference runs on f16 tensors.
pub fn to_f32(dtype: DType, bytes: &[u8], arithmetic: Arithmetic) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(dtype.size()) {
        return Err(Error::ShapeMismatch {
            what: "input bytes (not a whole number of elements)",
            expected: bytes.len() / dtype.size() * dtype.size(),
            actual: bytes.len(),
        });
    }
    let values: Vec<f32> = match dtype {
        DType::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        DType::F16 => {
            // Through `half`'s slice conversion (F16C when available), 64 values at a time.
            let mut out = alloc::vec![0.0f32; bytes.len() / 2];
            let mut halves = [f16::ZERO; 64];
            for (chunk, dst) in bytes.chunks(128).zip(out.chunks_mut(64)) {
                let h = &mut halves[..dst.len()];
                for (x, c) in h.iter_mut().zip(chunk.chunks_exact(2)) {
                    *x = f16::from_le_bytes([c[0], c[1]]);
                }
                h.convert_to_f32_slice(dst);
            }
            out
        }
        DType::BF16 => bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    };
    check_finite(&values)?;
    Ok(match arithmetic {
        Arithmetic::F32 => values,
        Arithmetic::Reference => values.into_iter().map(r16).collect(),
    })
}

/// Rejects NaN, infinities and values outside the f16 range.
pub fn check_finite(values: &[f32]) -> Result<()> {
    if let Some(index) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite { index });
    }
    if let Some(index) = values.iter().position(|v| v.abs() > F16_MAX) {
        return Err(Error::OutOfRange { index });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_every_dtype() {
        let f = to_f32(DType::F32, &1.5f32.to_le_bytes(), Arithmetic::F32).unwrap();
        assert_eq!(f, [1.5]);
        let h = to_f32(
            DType::F16,
            &f16::from_f32(-2.0).to_le_bytes(),
            Arithmetic::F32,
        )
        .unwrap();
        assert_eq!(h, [-2.0]);
        let b = to_f32(
            DType::BF16,
            &bf16::from_f32(3.0).to_le_bytes(),
            Arithmetic::F32,
        )
        .unwrap();
        assert_eq!(b, [3.0]);
        let r = to_f32(DType::F32, &0.1f32.to_le_bytes(), Arithmetic::Reference).unwrap();
        assert_eq!(r, [f16::from_f32(0.1).to_f32()]);
    }

    #[test]
    fn rejects_non_finite_out_of_range_and_ragged() {
        let nan = [1.0f32, f32::NAN]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>();
        assert_eq!(
            to_f32(DType::F32, &nan, Arithmetic::F32),
            Err(Error::NonFinite { index: 1 })
        );
        let inf = f16::INFINITY.to_le_bytes();
        assert_eq!(
            to_f32(DType::F16, &inf, Arithmetic::F32),
            Err(Error::NonFinite { index: 0 })
        );
        let big = 1e6f32.to_le_bytes();
        assert_eq!(
            to_f32(DType::F32, &big, Arithmetic::F32),
            Err(Error::OutOfRange { index: 0 })
        );
        assert!(matches!(
            to_f32(DType::F32, &[0u8; 3], Arithmetic::F32),
            Err(Error::ShapeMismatch { .. })
        ));
    }
}
