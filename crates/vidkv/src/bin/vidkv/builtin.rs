//! The two real samples compiled into the binary, so that `vidkv eval` with no arguments shows
//! the schemes on real keys and values (provenance in `crates/vidkv/data/README.md`).

use vidkv::TensorFile;

/// SmolLM2-135M, layer 15: `k_post.15`, `v.15` `[3, 2048, 64]` over the Apache-2.0 license text.
const SMOLLM2: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/sample_smollm2.safetensors"
));

/// DINOv2 ViT-S/14, layer 11: `k.11`, `v.11` `[6, 1028, 64]` over 4 video frames.
const DINOV2: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/data/sample_dinov2.safetensors"
));

/// The samples, labelled `builtin:smollm2` and `builtin:dinov2`.
pub fn samples() -> Vec<TensorFile> {
    vec![
        TensorFile::from_static("builtin:smollm2", SMOLLM2),
        TensorFile::from_static("builtin:dinov2", DINOV2),
    ]
}
