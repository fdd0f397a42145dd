//! The reported storage cost is what the encoder actually produced.

use vidkv::{
    Codec, GroupSize, HeadDim, KvKind, ScalarBackend, Scheme, SchemeOptions, TensorFile, evaluate,
    quantize,
};

const SMOLLM2: &[u8] = include_bytes!("../data/sample_smollm2.safetensors");
const DINOV2: &[u8] = include_bytes!("../data/sample_dinov2.safetensors");

fn samples() -> [TensorFile; 2] {
    [
        TensorFile::from_static("builtin:smollm2", SMOLLM2),
        TensorFile::from_static("builtin:dinov2", DINOV2),
    ]
}

#[test]
fn bits_per_element_is_eight_times_produced_bytes_over_elements() {
    for group in [GroupSize::G32, GroupSize::G64, GroupSize::G128] {
        let options = SchemeOptions {
            group,
            ..SchemeOptions::default()
        };
        for file in samples() {
            for tensor in file.kv_tensors().unwrap() {
                for scheme in Scheme::ALL {
                    let codec = options.codec(scheme, tensor.head_dim()).unwrap();
                    let q = quantize(&ScalarBackend, &codec, &tensor).unwrap();
                    let block_bytes = match tensor.kind() {
                        KvKind::Key => codec.key_block_bytes(),
                        KvKind::Value => codec.value_block_bytes(),
                    };
                    let blocks = tensor.tokens() / group.tokens();
                    assert_eq!(q.blocks_per_head, blocks);
                    assert_eq!(q.encoded.len(), tensor.heads());
                    for head in &q.encoded {
                        assert_eq!(head.len(), blocks * block_bytes);
                    }
                    let produced: usize = q.encoded.iter().map(Vec::len).sum();
                    assert_eq!(produced, block_bytes * blocks * tensor.heads());
                    let elements = tensor.heads() * blocks * group.tokens() * 64;
                    let expected = 8.0 * produced as f64 / elements as f64;
                    assert_eq!(q.bits_per_element(), expected);

                    let row = evaluate(&ScalarBackend, file.label(), &tensor, scheme, &options, 1)
                        .unwrap();
                    if scheme.salient_fraction().is_some() && tensor.kind() == KvKind::Value {
                        // Salient values also store 2-bit groups, masks and pending f16 rows.
                        assert!(row.bits_per_element > expected);
                        continue;
                    }
                    assert_eq!(row.bits_per_element, expected);
                    assert_eq!(row.encoded_bytes, produced);
                    assert_eq!(row.remainder_tokens, tensor.tokens() % group.tokens());
                }
            }
        }
    }
}

#[test]
fn vidkv_budget_at_g32_d64_matches_the_layout() {
    let codec =
        Codec::new(Scheme::Vidkv.config(HeadDim::new(64).unwrap(), GroupSize::G32)).unwrap();
    let [file, _] = samples();
    for tensor in file.kv_tensors().unwrap() {
        let q = quantize(&ScalarBackend, &codec, &tensor).unwrap();
        let per_block = match tensor.kind() {
            KvKind::Key => codec.key_bits_per_element(),
            KvKind::Value => codec.value_bits_per_element(),
        };
        assert_eq!(q.bits_per_element(), per_block);
    }
}

#[test]
fn layer_scope_fixes_one_mask_for_every_block() {
    let options = SchemeOptions::default();
    let [file, _] = samples();
    let tensors = file.kv_tensors().unwrap();
    let keys = tensors.iter().find(|t| t.kind() == KvKind::Key).unwrap();
    let paper = options.codec(Scheme::VidkvPaper, keys.head_dim()).unwrap();
    let q = quantize(&ScalarBackend, &paper, keys).unwrap();
    let mask = q
        .outliers
        .expect("vidkv-paper pools outlier channels over the layer");
    assert_eq!(mask.count(), 32);
    let mask_bytes = vidkv::ChannelMask::stored_bytes(64);
    for head in &q.encoded {
        for block in head.chunks_exact(paper.key_block_bytes()) {
            let stored = vidkv::ChannelMask::read(&block[..mask_bytes], 64, 32).unwrap();
            assert_eq!(stored, mask);
        }
    }
    let block_scope = options.codec(Scheme::Vidkv, keys.head_dim()).unwrap();
    assert!(
        quantize(&ScalarBackend, &block_scope, keys)
            .unwrap()
            .outliers
            .is_none()
    );
}
