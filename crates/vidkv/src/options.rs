//! Overrides applied on top of a preset ([`Scheme::config`]), so that one command line can sweep
//! every preset with the same group size or the same ternary scale.

use vidkv_core::{
    Arithmetic, Bits, Codec, GroupSize, HeadDim, KeyScheme, LaneRule, QuantConfig, Scheme,
    SketchBits, TernaryScale, Transform, ValueScheme,
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
    /// Code width of min/max keys (ignored for mixed-precision keys).
    pub key_bits: Option<Bits>,
    /// Code width of min/max values (ignored for ternary values).
    pub value_bits: Option<Bits>,
    /// XQuant calibration η of key min/max groups (every scheme that has them).
    pub eta_keys: Option<f32>,
    /// XQuant calibration η of value min/max groups.
    pub eta_values: Option<f32>,
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
            key_bits: None,
            value_bits: None,
            eta_keys: None,
            eta_values: None,
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
        // Sign-sketch keys have neither traced tokens nor key min/max groups: a sweep over every
        // preset leaves them as they are.
        let sketch = matches!(config.keys, KeyScheme::SignSketch { .. });
        if let (Some(n), false) = (self.traced_tokens, sketch) {
            config.traced_tokens = n;
        }
        if let (KeyScheme::PerChannel { bits }, Some(b)) = (&mut config.keys, self.key_bits) {
            *bits = b;
        }
        if let (ValueScheme::PerToken { bits } | ValueScheme::PerChannel { bits }, Some(b)) =
            (&mut config.values, self.value_bits)
        {
            *bits = b;
        }
        if let (Some(eta), false) = (self.eta_keys, sketch) {
            config.calibration.keys = eta;
        }
        if let Some(eta) = self.eta_values {
            config.calibration.values = eta;
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
