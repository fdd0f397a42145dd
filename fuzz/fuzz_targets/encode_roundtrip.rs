//! Encoders on arbitrary f16 inputs (NaN, inf, subnormals, extremes): an input error or bytes
//! that every decoder accepts with finite output.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vidkv_core::{DType, KeyScheme, OutlierScope};

fuzz_target!(|data: &[u8]| {
    let Some((codec, rest)) = vidkv_fuzz::codec_from(data) else {
        return;
    };
    // One block of f16 input; short inputs repeat cyclically.
    if rest.len() < 2 {
        return;
    }
    let n = codec.block_elements();
    let raw: Vec<u8> = rest.iter().copied().cycle().take(2 * n).collect();
    let Ok(x) = vidkv_cpu::to_f32(DType::F16, &raw, codec.config().arithmetic) else {
        return;
    };
    let mask = match codec.config().keys {
        KeyScheme::Mixed(m) if m.scope == OutlierScope::Layer => {
            Some(vidkv_cpu::layer_outliers(&codec, &[&x]).expect("finite input"))
        }
        _ => None,
    };
    let mut keys = vec![0u8; codec.key_block_bytes()];
    vidkv_cpu::encode_key_blocks(&codec, &x, mask.as_ref(), &mut keys).expect("valid input");
    let mut values = vec![0u8; codec.value_block_bytes()];
    vidkv_cpu::encode_value_blocks(&codec, &x, &mut values).expect("valid input");
    let mut out = vec![0.0f32; n];
    vidkv_cpu::decode_key_blocks(&codec, &keys, &mut out).expect("own key bytes decode");
    assert!(out.iter().all(|v| v.is_finite()), "non-finite decoded key");
    vidkv_cpu::decode_value_blocks(&codec, &values, &mut out).expect("own value bytes decode");
    assert!(
        out.iter().all(|v| v.is_finite()),
        "non-finite decoded value"
    );
});
