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

    /// Per-channel minimum and maximum so far.
    pub fn bounds(&self) -> (&[f32], &[f32]) {
        (&self.lo, &self.hi)
    }

    /// The `k` channels of largest range (the range rounded to f16 under reference arithmetic).
    pub fn top(&self, arith: Arithmetic, k: usize) -> ChannelMask {
        let range: Vec<f32> = self
            .lo
            .iter()
            .zip(&self.hi)
            .map(|(lo, hi)| match arith {
                Arithmetic::F32 => hi - lo,
                Arithmetic::Reference => f16::from_f32(hi - lo).to_f32(),
            })
            .collect();
        let mut order: Vec<usize> = (0..range.len()).collect();
        // Stable sort keeps ascending channel order among equal ranges.
        order.sort_by(|&a, &b| range[b].total_cmp(&range[a]));
        ChannelMask::from_channels(order.into_iter().take(k))
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
}
