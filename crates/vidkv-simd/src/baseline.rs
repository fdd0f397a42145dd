//! The f16-cache baseline of the benchmarks: attention over a plain `[T, D]` f16 cache per KV
//! head with the best kernel of a level (F16C + FMA on x86; portable code elsewhere).

use vidkv_core::{Error, Result};

use crate::level::{self, Level};
use crate::math::{exp_approx, f16_bits_to_f32};

/// Attention of `queries` (`[hq, D]` f32) over `t` f16 rows of keys and values (LE bytes).
pub fn attend_f16(
    level: Level,
    d: usize,
    queries: &[f32],
    keys: &[u8],
    values: &[u8],
    t: usize,
    out: &mut [f32],
) -> Result<()> {
    level::check(level)?;
    let hq = queries.len() / d.max(1);
    if queries.len() != hq * d
        || out.len() != queries.len()
        || keys.len() != 2 * t * d
        || values.len() != keys.len()
    {
        return Err(Error::ShapeMismatch {
            what: "f16 attention operands",
            expected: 2 * t * d,
            actual: keys.len(),
        });
    }
    let scale = 1.0 / libm::sqrtf(d as f32);
    match level {
        #[cfg(target_arch = "x86_64")]
        Level::Avx512 if d.is_multiple_of(16) => {
            // SAFETY: the level was checked; d is a multiple of 16.
            unsafe {
                crate::x86::f16attn::attend_f16_avx512(d, queries, hq, keys, values, t, scale, out)
            };
        }
        #[cfg(target_arch = "x86_64")]
        Level::Avx2 | Level::Avx512 if d.is_multiple_of(8) => {
            // SAFETY: the level (AVX2 + FMA + F16C at least) was checked; d is a multiple of 8.
            unsafe {
                crate::x86::f16attn::attend_f16_avx2(d, queries, hq, keys, values, t, scale, out)
            };
        }
        _ => portable(d, queries, hq, keys, values, t, scale, out),
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn portable(
    d: usize,
    q: &[f32],
    hq: usize,
    k: &[u8],
    v: &[u8],
    t: usize,
    scale: f32,
    out: &mut [f32],
) {
    let row = |b: &[u8], i: usize| -> alloc::vec::Vec<f32> {
        b[2 * i * d..2 * (i + 1) * d]
            .chunks_exact(2)
            .map(|c| f16_bits_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect()
    };
    for h in 0..hq {
        let qh = &q[h * d..][..d];
        let (mut m, mut l) = (f32::NEG_INFINITY, 0.0f32);
        let mut o = alloc::vec![0.0f32; d];
        for i in 0..t {
            let s = qh.iter().zip(row(k, i)).map(|(a, b)| a * b).sum::<f32>() * scale;
            let mn = m.max(s);
            let corr = exp_approx(m - mn);
            let p = exp_approx(s - mn);
            l = l * corr + p;
            for (oo, x) in o.iter_mut().zip(row(v, i)) {
                *oo = *oo * corr + p * x;
            }
            m = mn;
        }
        let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
        for (dst, x) in out[h * d..][..d].iter_mut().zip(o) {
            *dst = x * inv;
        }
    }
}
