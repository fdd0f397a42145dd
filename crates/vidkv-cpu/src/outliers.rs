//! Outlier-channel selection for mixed-precision keys: the k channels of largest range
//! (max − min), ties to the lower channel index.

use vidkv_core::{ChannelMask, Codec, Error, KeyScheme, Result};

pub use vidkv_core::outliers::ChannelRanges;

use crate::convert::check_finite;

/// Outlier channels pooled over all heads and all their tokens (layer scope). Each slice is one
/// head's row-major `[tokens, head_dim]` values (whole blocks, as they will be encoded).
pub fn layer_outliers(codec: &Codec, heads: &[&[f32]]) -> Result<ChannelMask> {
    let KeyScheme::Mixed(mixed) = codec.config().keys else {
        return Err(Error::InvalidConfig {
            reason: "outlier channels exist only for mixed-precision keys",
        });
    };
    let d = codec.head_dim();
    let mut ranges = ChannelRanges::new(d);
    for head in heads {
        if head.len() % d != 0 {
            return Err(Error::ShapeMismatch {
                what: "head rows",
                expected: head.len() / d * d,
                actual: head.len(),
            });
        }
        check_finite(head)?;
        ranges.add_rows(head);
    }
    Ok(ranges.top(
        codec.config().arithmetic,
        mixed.outlier_count(codec.config().head_dim),
    ))
}
