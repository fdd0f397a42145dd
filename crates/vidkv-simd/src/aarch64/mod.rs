//! aarch64 kernels: NEON, with the dot-product extension (`sdot`) where present.

pub mod neon;
