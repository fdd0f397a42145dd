//! Outlier-channel selection for mixed-precision keys (DESIGN §1.1): the k channels of largest
//! range (max − min), ties to the lower channel index. Shared by the backends' layer-scope helper
//! and by the streaming cache, which pools the range over the first tokens it quantizes.

use alloc::vec::Vec;

use half::f16;

use crate::config::Arithmetic;
use crate::layout::ChannelMask;

/// Per-channel (min, max) accumulated over rows of `head_dim` values.
#[derive(Debug, Clone)]
pub struct ChannelRanges {
    lo: Vec<f32>,
    hi: Vec<f32>,
}

impl ChannelRanges {
    /// Empty ranges for `head_dim` channels.
    pub fn new(head_dim: usize) -> Self {
        Self {
            lo: alloc::vec![f32::INFINITY; head_dim],
            hi: alloc::vec![f32::NEG_INFINITY; head_dim],
        }
    }

    /// Widens the ranges by row-major `[tokens, head_dim]` rows.
    pub fn add_rows(&mut self, rows: &[f32]) {
        for row in rows.chunks_exact(self.lo.len()) {
            for ((lo, hi), &x) in self.lo.iter_mut().zip(self.hi.iter_mut()).zip(row) {
                *lo = lo.min(x);
                *hi = hi.max(x);
            }
        }
    }

    /// Ranges with the given per-channel minimum and maximum (computed elsewhere, e.g. by a SIMD
    /// kernel; equal to [`Self::add_rows`]'s when no bound is a zero, whose sign a min/max may
    /// choose either way).
    pub fn from_bounds(lo: &[f32], hi: &[f32]) -> Self {
        Self {
            lo: lo.to_vec(),
            hi: hi.to_vec(),
        }
    }

    /// Per-channel minimum and maximum so far.
    pub fn bounds(&self) -> (&[f32], &[f32]) {
        (&self.lo, &self.hi)
    }

    /// The `k` channels of largest range (the range rounded to f16 under reference arithmetic),
    /// ties to the lower channel index.
    pub fn top(&self, arith: Arithmetic, k: usize) -> ChannelMask {
        // One u64 per channel ordered like (range by `total_cmp`, then lower index): the k
        // largest keys are the chosen set, found by selection rather than a sort.
        let mut keys: Vec<u64> = self
            .lo
            .iter()
            .zip(&self.hi)
            .enumerate()
            .map(|(c, (lo, hi))| {
                let range = match arith {
                    Arithmetic::F32 => hi - lo,
                    Arithmetic::Reference => f16::from_f32(hi - lo).to_f32(),
                };
                u64::from(total_order_bits(range)) << 32 | u64::from(u32::MAX - c as u32)
            })
            .collect();
        let k = k.min(keys.len());
        if k > 0 && k < keys.len() {
            keys.select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
        }
        ChannelMask::from_channels(
            keys[..k]
                .iter()
                .map(|&key| (u32::MAX - key as u32) as usize),
        )
    }
}

/// The bits of `x` as an unsigned integer in the order of [`f32::total_cmp`].
fn total_order_bits(x: f32) -> u32 {
    let bits = x.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | 1 << 31
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_largest_ranges_with_ties_to_lower_index() {
        let mut r = ChannelRanges::new(4);
        // ranges: ch0 2, ch1 5, ch2 2, ch3 1
        r.add_rows(&[0.0, 0.0, 1.0, 0.0, 2.0, 5.0, 3.0, 1.0]);
        assert_eq!(
            r.top(Arithmetic::F32, 2),
            ChannelMask::from_channels([0, 1])
        );
        assert_eq!(r.top(Arithmetic::F32, 1), ChannelMask::from_channels([1]));
        assert_eq!(r.top(Arithmetic::F32, 0).count(), 0);
    }

    #[test]
    fn selection_equals_a_stable_sort_by_total_cmp() {
        let d = 96;
        let mut r = ChannelRanges::new(d);
        // Many equal ranges, zeros of both signs and negative ranges cannot occur, but the order
        // must still be total_cmp's: build rows whose ranges repeat.
        let rows: Vec<f32> = (0..4 * d)
            .map(|i| match (i % d) % 5 {
                0 => 0.0,
                1 => -0.0,
                2 => ((i % d) % 3) as f32,
                _ => ((i * 37) % 11) as f32 * 0.25,
            })
            .collect();
        r.add_rows(&rows);
        let (lo, hi) = r.bounds();
        let range: Vec<f32> = lo.iter().zip(hi).map(|(l, h)| h - l).collect();
        for k in [0, 1, 7, 48, 95, 96] {
            let mut order: Vec<usize> = (0..d).collect();
            order.sort_by(|&a, &b| range[b].total_cmp(&range[a]));
            let want = ChannelMask::from_channels(order.into_iter().take(k));
            assert_eq!(r.top(Arithmetic::F32, k), want, "k = {k}");
        }
    }
}
