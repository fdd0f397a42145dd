//! x86-64 kernels: AVX2 + FMA + F16C, and AVX-512 (with VNNI where present).

pub mod avx2;
pub mod avx512;
pub mod f16attn;
pub mod vnni512;

/// Whether the CPU has AVX-512 VBMI (`vpermb`, `vpermt2b`).
#[cfg(feature = "std")]
pub(crate) fn has_vbmi() -> bool {
    std::arch::is_x86_feature_detected!("avx512vbmi")
}

/// Whether the CPU has AVX-512 VBMI (compile-time target features without `std`).
#[cfg(not(feature = "std"))]
pub(crate) fn has_vbmi() -> bool {
    cfg!(target_feature = "avx512vbmi")
}

/// Shuffle tables shared by the AVX2 and AVX-512 code builders (see [`crate::kernel::Isa`]).
pub(crate) mod tables {
    /// `pshufb` index for lane-code register `r`: byte `4·tt + m` ← chunk byte `4·m + r`.
    pub const LANE_IDX: [[u8; 32]; 4] = {
        let mut t = [[0u8; 32]; 4];
        let mut r = 0;
        while r < 4 {
            let mut i = 0;
            while i < 32 {
                let m = i % 4;
                t[r][i] = (4 * m + r) as u8;
                i += 1;
            }
            r += 1;
        }
        t
    };
    /// Bit select: byte `4·tt + m` = `1 << tt`.
    pub const LANE_SEL: [u8; 32] = {
        let mut t = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            t[i] = 1 << (i / 4);
            i += 1;
        }
        t
    };
    /// `pshufb` indices for outlier register `r` from chunk halves A (channels 0, 1) and
    /// B (channels 2, 3): byte `4·tt + m` ← byte `8·(m mod 2) + 2·r + tt/4` of its half.
    pub const OUT_IDX: [[[u8; 32]; 2]; 4] = {
        let mut t = [[[0u8; 32]; 2]; 4];
        let mut r = 0;
        while r < 4 {
            let mut i = 0;
            while i < 32 {
                let (tt, m) = (i / 4, i % 4);
                let src = (8 * (m % 2) + 2 * r + tt / 4) as u8;
                t[r][0][i] = if m < 2 { src } else { 0x80 };
                t[r][1][i] = if m >= 2 { src } else { 0x80 };
                i += 1;
            }
            r += 1;
        }
        t
    };
    /// Code select: byte `4·tt + m` = `3 << 2·(tt mod 4)`.
    pub const OUT_SEL: [u8; 32] = {
        let mut t = [0u8; 32];
        let mut i = 0;
        while i < 32 {
            t[i] = 3 << (2 * ((i / 4) % 4));
            i += 1;
        }
        t
    };
}
