//! Outlier-token tracing (OTT): a key block may keep a few of its tokens at f16 in a trailing
//! section, excluded from the block's key statistics.
//!
//! Layout of the trailing section ([`TracedLayout`]): `slots` rows of `D` little-endian f16
//! values (the traced tokens' original keys, rounded to f16 and saturated to ±65504), then
//! `slots` token indices (one byte each, `< G`, [`EMPTY_SLOT`] for an unused slot). A decoder
//! decodes the block as usual and then overwrites the traced tokens with their f16 rows.
//!
//! How the encoder chooses ([`pick_traced`]): the error of a uniform min/max quantizer is about
//! `step²/12` per element with `step ∝ range`, so the block's key error is proportional to
//! `Σ_c range_c²`. Slot by slot, the encoder traces the not-yet-traced token whose exclusion
//! reduces `Σ_c range_c²` the most (ranges over the tokens that are still untraced); ties go to
//! the lowest token index. Only a channel's extreme tokens change its range, so the gain of
//! every token follows from each channel's first and second minimum and maximum: `O(G·D)` per
//! slot. Decoders do not depend on this rule.

use alloc::vec;
use alloc::vec::Vec;

use half::f16;

use crate::error::{Error, Result};
use crate::layout::Section;

/// Index byte of an unused slot.
pub const EMPTY_SLOT: u8 = 0xFF;

/// Largest finite f16 value: traced rows saturate to it.
const F16_MAX: f32 = 65504.0;

/// The traced part at the end of a key block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TracedLayout {
    /// Slots per block (`QuantConfig::traced_tokens`).
    pub slots: usize,
    /// `slots · D` f16 values, slot-major.
    pub rows: Section,
    /// `slots` token indices.
    pub indices: Section,
}

impl TracedLayout {
    /// The section after `end` (the last byte of the key scheme's sections) for `slots` slots of
    /// `head_dim` channels.
    pub fn after(end: usize, slots: usize, head_dim: usize) -> Self {
        let rows = Section {
            offset: end,
            len: slots * head_dim * 2,
        };
        let indices = Section {
            offset: rows.offset + rows.len,
            len: slots,
        };
        Self {
            slots,
            rows,
            indices,
        }
    }

    /// Bytes of the traced part.
    pub fn bytes(&self) -> usize {
        self.rows.len + self.indices.len
    }

    /// Writes the traced tokens `tokens` (ascending, at most `slots`) of row-major `rows`
    /// (`[G, D]`) into `block`; unused slots get [`EMPTY_SLOT`] and zero rows.
    pub fn write(&self, tokens: &[usize], rows: &[f32], head_dim: usize, block: &mut [u8]) {
        let out_rows = &mut block[self.rows.range()];
        out_rows.fill(0);
        for (slot, &t) in tokens.iter().enumerate() {
            let src = &rows[t * head_dim..][..head_dim];
            let dst = &mut out_rows[slot * head_dim * 2..][..head_dim * 2];
            for (chunk, &x) in dst.chunks_exact_mut(2).zip(src) {
                let h = f16::from_f32(x.clamp(-F16_MAX, F16_MAX));
                chunk.copy_from_slice(&h.to_le_bytes());
            }
        }
        let indices = &mut block[self.indices.range()];
        indices.fill(EMPTY_SLOT);
        for (i, &t) in indices.iter_mut().zip(tokens) {
            *i = t as u8;
        }
    }

    /// The filled slots of `block` as `(slot, token)` pairs, checked: an index `≥ group` other
    /// than [`EMPTY_SLOT`], or a token traced twice, is [`Error::Corrupt`] (offsets relative to
    /// the block).
    pub fn tokens(&self, block: &[u8], group: usize) -> Result<Vec<(usize, usize)>> {
        let mut out = Vec::with_capacity(self.slots);
        self.tokens_into(block, group, &mut out)?;
        Ok(out)
    }

    /// [`Self::tokens`] into a reused buffer (cleared first).
    pub fn tokens_into(
        &self,
        block: &[u8],
        group: usize,
        out: &mut Vec<(usize, usize)>,
    ) -> Result<()> {
        out.clear();
        let mut seen = [false; 256];
        for (slot, &i) in block[self.indices.range()].iter().enumerate() {
            if i == EMPTY_SLOT {
                continue;
            }
            let t = usize::from(i);
            let offset = self.indices.offset + slot;
            if t >= group {
                return Err(Error::Corrupt {
                    what: "traced token index beyond the block",
                    offset,
                });
            }
            if seen[t] {
                return Err(Error::Corrupt {
                    what: "token traced twice",
                    offset,
                });
            }
            seen[t] = true;
            out.push((slot, t));
        }
        Ok(())
    }

    /// The f16 row of `slot` as f32, checked finite.
    pub fn row(&self, block: &[u8], slot: usize, head_dim: usize, out: &mut [f32]) -> Result<()> {
        let start = self.rows.offset + slot * head_dim * 2;
        let bytes = &block[start..][..head_dim * 2];
        for (c, (o, chunk)) in out.iter_mut().zip(bytes.chunks_exact(2)).enumerate() {
            let h = f16::from_le_bytes([chunk[0], chunk[1]]);
            if !h.is_finite() {
                return Err(Error::Corrupt {
                    what: "traced key row not finite",
                    offset: start + 2 * c,
                });
            }
            *o = h.to_f32();
        }
        Ok(())
    }
}

/// First and second extreme of one channel over the untraced tokens.
#[derive(Debug, Clone, Copy)]
struct Extremes {
    min1: (f32, usize),
    min2: f32,
    max1: (f32, usize),
    max2: f32,
}

impl Extremes {
    const EMPTY: Self = Self {
        min1: (f32::INFINITY, usize::MAX),
        min2: f32::INFINITY,
        max1: (f32::NEG_INFINITY, usize::MAX),
        max2: f32::NEG_INFINITY,
    };

    /// Adds token `t` (tokens arrive in ascending order, so ties keep the lowest index first).
    fn add(&mut self, x: f32, t: usize) {
        if x < self.min1.0 {
            self.min2 = self.min1.0;
            self.min1 = (x, t);
        } else if x < self.min2 {
            self.min2 = x;
        }
        if x > self.max1.0 {
            self.max2 = self.max1.0;
            self.max1 = (x, t);
        } else if x > self.max2 {
            self.max2 = x;
        }
    }
}

/// Squared range; 0 for fewer than two values' worth of spread (empty or infinite bounds).
fn range_sq(lo: f32, hi: f32) -> f64 {
    let r = f64::from(hi) - f64::from(lo);
    if r.is_finite() && r > 0.0 { r * r } else { 0.0 }
}

/// The `slots` tokens of a block (row-major `[G, D]`, finite) to trace, ascending: greedy
/// maximal reduction of `Σ_c range_c²` (module docs), ties to the lowest token index. Returns
/// `min(slots, G)` tokens.
pub fn pick_traced(rows: &[f32], head_dim: usize, slots: usize) -> Vec<usize> {
    let g = rows.len() / head_dim;
    let mut traced = vec![false; g];
    let mut gain = vec![0.0f64; g];
    let mut picked = Vec::with_capacity(slots.min(g));
    for _ in 0..slots.min(g) {
        gain.iter_mut().for_each(|x| *x = 0.0);
        for c in 0..head_dim {
            let mut e = Extremes::EMPTY;
            for t in (0..g).filter(|&t| !traced[t]) {
                e.add(rows[t * head_dim + c], t);
            }
            let base = range_sq(e.min1.0, e.max1.0);
            let (tmin, tmax) = (e.min1.1, e.max1.1);
            if tmin == tmax {
                // One token is both extremes: all others are equal to it or there are none.
                gain[tmin] += base - range_sq(e.min2, e.max2);
                continue;
            }
            gain[tmax] += base - range_sq(e.min1.0, e.max2);
            gain[tmin] += base - range_sq(e.min2, e.max1.0);
        }
        let best = (0..g)
            .filter(|&t| !traced[t])
            .fold(None::<usize>, |best, t| match best {
                Some(b) if gain[b] >= gain[t] => Some(b),
                _ => Some(t),
            })
            .expect("fewer slots than tokens");
        traced[best] = true;
        picked.push(best);
    }
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_token_that_stretches_the_ranges() {
        // 4 tokens, 2 channels; token 2 is far out in channel 0.
        let rows = [0.0, 1.0, 1.0, 0.0, 9.0, 0.5, 0.5, 0.5];
        assert_eq!(pick_traced(&rows, 2, 1), [2]);
        // Second slot: with token 2 gone, channel ranges are [0,1] and [0,1]; tokens 0 and 1
        // are each one extreme of both channels -> equal gains, lowest index wins.
        assert_eq!(pick_traced(&rows, 2, 2), [0, 2]);
    }

    #[test]
    fn constant_block_picks_lowest_indices() {
        assert_eq!(pick_traced(&[3.0; 16], 4, 2), [0, 1]);
    }

    #[test]
    fn matches_brute_force_on_a_pseudo_random_block() {
        let (g, d) = (32, 8);
        let mut s = 12345u32;
        let rows: Vec<f32> = (0..g * d)
            .map(|_| {
                s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (s >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        let cost = |excluded: &[usize]| -> f64 {
            (0..d)
                .map(|c| {
                    let col = (0..g)
                        .filter(|t| !excluded.contains(t))
                        .map(|t| rows[t * d + c]);
                    let (lo, hi) = col.fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), x| {
                        (l.min(x), h.max(x))
                    });
                    range_sq(lo, hi)
                })
                .sum()
        };
        let mut chosen = Vec::new();
        for _ in 0..3 {
            let best = (0..g)
                .filter(|t| !chosen.contains(t))
                .min_by(|&a, &b| {
                    let (mut ca, mut cb) = (chosen.clone(), chosen.clone());
                    ca.push(a);
                    cb.push(b);
                    cost(&ca).total_cmp(&cost(&cb)).then(a.cmp(&b))
                })
                .unwrap();
            chosen.push(best);
        }
        chosen.sort_unstable();
        assert_eq!(pick_traced(&rows, d, 3), chosen);
    }

    #[test]
    fn index_checks() {
        let l = TracedLayout::after(0, 2, 2);
        let mut block = vec![0u8; l.bytes()];
        block[8] = 1;
        block[9] = EMPTY_SLOT;
        assert_eq!(l.tokens(&block, 32).unwrap(), [(0, 1)]);
        block[9] = 1;
        assert!(matches!(
            l.tokens(&block, 32),
            Err(Error::Corrupt { offset: 9, .. })
        ));
        block[9] = 32;
        assert!(matches!(
            l.tokens(&block, 32),
            Err(Error::Corrupt { offset: 9, .. })
        ));
    }
}
