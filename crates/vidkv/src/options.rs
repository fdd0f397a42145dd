//! Overrides applied on top of a preset ([`Scheme::config`]), so that one command line can sweep
//! every preset with the same group size or the same ternary scale.

use vidkv_core::{
    Arithmetic, Codec, GroupSize, HeadDim, KeyScheme, LaneRule, QuantConfig, Scheme, SketchBits,
    TernaryScale, Transform, ValueScheme,
};

use crate::error::{ErrorKind, Result};

/// Settings that modify a preset. `None` keeps the preset's choice.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchemeOptions {
    /// Tokens per block G.
    pub group: GroupSize,
    /// Outlier ratio r of mixed-precision keys (ignored for per-channel keys).
    pub key_ratio: Option<f32>,
    /// Transform of mixed-precision keys (ignored for per-channel keys).
    pub transform: Option<Transform>,
    /// Scale of ternary values (ignored for other value schemes).
    pub value_scale: Option<TernaryScale>,
    /// Encoder arithmetic (applies to every scheme).
    pub arithmetic: Option<Arithmetic>,
    /// Traced tokens per key block (outlier-token tracing; applies to every scheme, 0 = off).
    pub traced_tokens: Option<u8>,
    /// Sketch length b of sign-sketch keys (h1b; ignored for other keys).
    pub sketch_bits: Option<SketchBits>,
    /// Projection seed of sign-sketch keys (h1b; ignored for other keys).
    pub seed: Option<u32>,
}

impl Default for SchemeOptions {
    fn default() -> Self {
        Self {
            group: GroupSize::G32,
            key_ratio: None,
            transform: None,
            value_scale: None,
            arithmetic: None,
            traced_tokens: None,
            sketch_bits: None,
            seed: None,
        }
    }
}

impl SchemeOptions {
    /// The preset's configuration for `head_dim` with these overrides applied (not validated).
    ///
    /// A transform other than FFT turns the `PaperCompat` lane rule into `Symmetric`: that rule
    /// describes how the reference code decodes a one-sided FFT spectrum and means nothing for
    /// other transforms, and refusing would make `--transform` unusable with the default set of
    /// presets.
    pub fn config(&self, scheme: Scheme, head_dim: HeadDim) -> QuantConfig {
        let mut config = scheme.config(head_dim, self.group);
        if let KeyScheme::Mixed(ref mut m) = config.keys {
            if let Some(r) = self.key_ratio {
                m.outlier_ratio = r;
            }
            if let Some(t) = self.transform {
                m.transform = t;
                if t != Transform::Fft && m.lane_rule == LaneRule::PaperCompat {
                    m.lane_rule = LaneRule::Symmetric;
                }
            }
        }
        if let KeyScheme::SignSketch { bits, seed } = &mut config.keys {
            *bits = self.sketch_bits.unwrap_or(*bits);
            *seed = self.seed.unwrap_or(*seed);
        }
        if let (ValueScheme::Ternary { scale }, Some(s)) = (&mut config.values, self.value_scale) {
            *scale = s;
        }
        if let Some(a) = self.arithmetic {
            config.arithmetic = a;
        }
        if let Some(n) = self.traced_tokens {
            config.traced_tokens = n;
        }
        config
    }

    /// The validated codec of [`Self::config`]; the error names the scheme.
    pub fn codec(&self, scheme: Scheme, head_dim: HeadDim) -> Result<Codec> {
        Codec::new(self.config(scheme, head_dim)).map_err(|error| {
            ErrorKind::Config {
                scheme: scheme.name(),
                error,
            }
            .into()
        })
    }
}

/// Parses a preset name, with a message that lists the known ones.
pub fn parse_scheme(name: &str) -> Result<Scheme> {
    Scheme::from_name(name).map_err(|_| ErrorKind::UnknownScheme(name.to_owned()).into())
}
