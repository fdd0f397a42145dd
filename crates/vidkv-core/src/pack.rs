//! The one set of bit-packing primitives every backend uses (and every SIMD/GPU kernel mirrors).
//!
//! * 1-, 2- and 4-bit codes: element `i` occupies bits `(i·b) % 8 ..` of byte `(i·b) / 8`,
//!   LSB first, so that code order equals element order on any host.
//! * Trits: five values `q ∈ {−1, 0, +1}` per byte as base-3 digits `d = q + 1`,
//!   `byte = d0 + 3·d1 + 9·d2 + 27·d3 + 81·d4` (≤ 242; larger bytes are corrupt). Unused digits
//!   of a row's last byte are written as `d = 1` (q = 0).
//! * f16 fields are little-endian IEEE binary16.

use half::f16;

use crate::error::{Error, Result};

/// Packs `codes` (each `< 2^bits`) into `out`, LSB first. `bits` is 1, 2 or 4.
///
/// `out` must hold `⌈codes.len()·bits/8⌉` bytes; it is fully overwritten there.
pub fn pack_codes(bits: u32, codes: &[u8], out: &mut [u8]) {
    debug_assert!(matches!(bits, 1 | 2 | 4));
    let per_byte = (8 / bits) as usize;
    let mask = (1u16 << bits) as u8 - 1;
    for (byte, chunk) in out.iter_mut().zip(codes.chunks(per_byte)) {
        *byte = chunk
            .iter()
            .enumerate()
            .fold(0u8, |acc, (j, &c)| acc | (c & mask) << (j as u32 * bits));
    }
}

/// Unpacks `out.len()` codes of `bits` bits from `bytes` (the inverse of [`pack_codes`]).
pub fn unpack_codes(bits: u32, bytes: &[u8], out: &mut [u8]) {
    debug_assert!(matches!(bits, 1 | 2 | 4));
    let per_byte = (8 / bits) as usize;
    let mask = (1u16 << bits) as u8 - 1;
    for (chunk, &byte) in out.chunks_mut(per_byte).zip(bytes) {
        for (j, c) in chunk.iter_mut().enumerate() {
            *c = byte >> (j as u32 * bits) & mask;
        }
    }
}

/// Code `i` of a packed stream.
#[inline]
pub fn code_at(bits: u32, bytes: &[u8], i: usize) -> u8 {
    let bit = i * bits as usize;
    bytes[bit / 8] >> (bit % 8) & ((1u16 << bits) as u8 - 1)
}

/// Trits per byte.
pub const TRITS_PER_BYTE: usize = 5;

/// Largest valid trit byte (`3^5 − 1`).
pub const MAX_TRIT_BYTE: u8 = 242;

/// Packs ternary values (`−1`, `0`, `+1`) five per byte into `out` (`⌈trits.len()/5⌉` bytes).
pub fn pack_trits(trits: &[i8], out: &mut [u8]) {
    for (byte, chunk) in out.iter_mut().zip(trits.chunks(TRITS_PER_BYTE)) {
        let mut acc = 0u8;
        for j in (0..TRITS_PER_BYTE).rev() {
            let digit = chunk.get(j).map_or(1, |&q| (q.clamp(-1, 1) + 1) as u8);
            acc = acc * 3 + digit;
        }
        *byte = acc;
    }
}

/// Unpacks `out.len()` ternary values from `bytes`; a byte above [`MAX_TRIT_BYTE`] is corrupt.
pub fn unpack_trits(bytes: &[u8], out: &mut [i8]) -> Result<()> {
    for (i, (chunk, &byte)) in out.chunks_mut(TRITS_PER_BYTE).zip(bytes).enumerate() {
        if byte > MAX_TRIT_BYTE {
            return Err(Error::Corrupt {
                what: "trit byte above 242",
                offset: i,
            });
        }
        let mut rest = byte;
        for q in chunk.iter_mut() {
            *q = (rest % 3) as i8 - 1;
            rest /= 3;
        }
    }
    Ok(())
}

/// The five trits of one byte, for lookup tables in fast paths.
pub fn trits_of_byte(byte: u8) -> [i8; 5] {
    let mut out = [0i8; 5];
    let mut rest = byte;
    for q in out.iter_mut() {
        *q = (rest % 3) as i8 - 1;
        rest /= 3;
    }
    out
}

/// Reads the little-endian f16 at index `i` of a section.
#[inline]
pub fn f16_at(bytes: &[u8], i: usize) -> f16 {
    f16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]])
}

/// Writes `values` as little-endian f16 into `out` (`2·values.len()` bytes).
pub fn write_f16s(values: impl IntoIterator<Item = f16>, out: &mut [u8]) {
    for (chunk, v) in out.chunks_exact_mut(2).zip(values) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    #[test]
    fn codes_roundtrip_for_every_width_and_length() {
        for bits in [1u32, 2, 4] {
            for n in 0..70usize {
                let codes: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8 % (1 << bits)).collect();
                let mut packed = vec![0u8; (n * bits as usize).div_ceil(8)];
                pack_codes(bits, &codes, &mut packed);
                let mut back = vec![0u8; n];
                unpack_codes(bits, &packed, &mut back);
                assert_eq!(back, codes);
                for (i, &c) in codes.iter().enumerate() {
                    assert_eq!(code_at(bits, &packed, i), c);
                }
            }
        }
    }

    #[test]
    fn two_bit_packing_is_lsb_first() {
        let mut out = [0u8; 1];
        pack_codes(2, &[1, 2, 3, 0], &mut out);
        assert_eq!(out[0], 0b00_11_10_01);
        pack_codes(1, &[1, 0, 0, 0, 0, 0, 0, 1], &mut out);
        assert_eq!(out[0], 0b1000_0001);
    }

    #[test]
    fn every_trit_byte_roundtrips() {
        for byte in 0..=MAX_TRIT_BYTE {
            let trits = trits_of_byte(byte);
            let mut packed = [0u8; 1];
            pack_trits(&trits, &mut packed);
            assert_eq!(packed[0], byte);
            let mut back = [0i8; 5];
            unpack_trits(&packed, &mut back).unwrap();
            assert_eq!(back, trits);
        }
    }

    #[test]
    fn trit_padding_decodes_to_zero_and_bad_bytes_are_corrupt() {
        let mut packed = [0u8; 2];
        pack_trits(&[1, -1, 0, 1, 1, -1, 1], &mut packed);
        // digits of the second byte: 0, 2, then padding 1, 1, 1
        assert_eq!(packed[1], 2 * 3 + 81 + 27 + 9);
        let mut back = [0i8; 10];
        unpack_trits(&packed, &mut back).unwrap();
        assert_eq!(back, [1, -1, 0, 1, 1, -1, 1, 0, 0, 0]);
        assert!(matches!(
            unpack_trits(&[243], &mut [0i8; 5]),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn f16_fields_are_little_endian() {
        let mut out = [0u8; 4];
        write_f16s([f16::from_f32(1.0), f16::from_f32(-2.0)], &mut out);
        assert_eq!(out, [0x00, 0x3c, 0x00, 0xc0]);
        assert_eq!(f16_at(&out, 1).to_f32(), -2.0);
    }
}
