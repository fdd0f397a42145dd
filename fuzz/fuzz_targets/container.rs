//! The `.vkv` reader on arbitrary bytes: never panics; what it accepts decodes without panicking
//! and accounts for every byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vidkv_core::container::Container;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = Container::parse(data) else {
        return;
    };
    let codec = *file.codec();
    assert_eq!(file.size_breakdown().total(), data.len());
    for layer in file.layers() {
        for head in &layer.heads {
            let mut out = vec![0.0f32; layer.blocks * codec.block_elements()];
            let _ = vidkv_cpu::decode_key_blocks(&codec, head.key_blocks, &mut out);
            let _ = vidkv_cpu::decode_value_blocks(&codec, head.value_blocks, &mut out);
            assert_eq!(
                head.tail_keys_f16().len(),
                layer.tail_tokens * codec.head_dim()
            );
            assert_eq!(head.tail_values_f16().len(), head.tail_keys_f16().len());
        }
    }
});
