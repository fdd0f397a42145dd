//! Every value-block decoder (chosen by the first bytes) on arbitrary block bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((codec, rest)) = vidkv_fuzz::codec_from(data) else {
        return;
    };
    let blocks = rest.len() / codec.value_block_bytes();
    let mut out = vec![0.0f32; blocks * codec.block_elements()];
    let encoded = &rest[..blocks * codec.value_block_bytes()];
    if vidkv_cpu::decode_value_blocks(&codec, encoded, &mut out).is_ok() {
        assert!(
            out.iter().all(|v| v.is_finite()),
            "non-finite value decoded from accepted bytes"
        );
    }
    if !rest.is_empty() && rest.len() % codec.value_block_bytes() != 0 {
        assert!(vidkv_cpu::decode_value_blocks(&codec, rest, &mut out).is_err());
    }
});
