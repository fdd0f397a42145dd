//! Every key-block decoder (chosen by the first bytes) on arbitrary block bytes: an error or
//! finite output, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((codec, rest)) = vidkv_fuzz::codec_from(data) else {
        return;
    };
    let blocks = rest.len() / codec.key_block_bytes();
    let mut out = vec![0.0f32; blocks * codec.block_elements()];
    let encoded = &rest[..blocks * codec.key_block_bytes()];
    if vidkv_cpu::decode_key_blocks(&codec, encoded, &mut out).is_ok() {
        assert!(
            out.iter().all(|v| v.is_finite()),
            "non-finite value decoded from accepted bytes"
        );
    }
    // Ragged lengths are shape errors, not panics.
    if !rest.is_empty() && rest.len() % codec.key_block_bytes() != 0 {
        assert!(vidkv_cpu::decode_key_blocks(&codec, rest, &mut out).is_err());
    }
});
