//! Arbitrary and damaged bytes given to the `.vkv` reader: a typed error or a file whose sizes add
//! up, never a panic. Fast enough for every CI run; `fuzz/` runs the same targets at length.

use conformance::golden;
use conformance::props::case_count;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use vidkv_core::Error;
use vidkv_core::container::{Container, ContainerWriter, HeadSection, LayerInput};
use vidkv_core::{Codec, KeyScheme, OutlierScope};

/// Small valid files: each golden vector's blocks as one layer, with a two-token tail.
fn valid_files() -> Vec<Vec<u8>> {
    golden::specs()
        .iter()
        .map(|spec| {
            let v = golden::load(spec).unwrap();
            let codec = Codec::new(spec.config).unwrap();
            let d = codec.head_dim();
            let tail: Vec<u8> = v.keys[..2 * d]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            let mask = match spec.config.keys {
                KeyScheme::Mixed(m) if m.scope == OutlierScope::Layer => Some(
                    vidkv_core::ChannelMask::read(
                        &v.key_bytes[..vidkv_core::ChannelMask::stored_bytes(d)],
                        d,
                        m.outlier_count(spec.config.head_dim),
                    )
                    .unwrap(),
                ),
                _ => None,
            };
            let head = HeadSection {
                key_blocks: &v.key_bytes,
                value_blocks: &v.value_bytes,
                tail_keys: &tail,
                tail_values: &tail,
            };
            let mut w = ContainerWriter::new(&codec);
            w.add_layer(&LayerInput {
                key_name: "k.0",
                value_name: "v.0",
                blocks: v.tokens / codec.group(),
                tail_tokens: 2,
                outliers: mask.as_ref(),
                heads: &[head, head],
            })
            .unwrap();
            w.finish()
        })
        .collect()
}

fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    match Container::parse(bytes) {
        Ok(file) => {
            prop_assert_eq!(file.size_breakdown().total(), bytes.len());
            let codec = *file.codec();
            for layer in file.layers() {
                for head in &layer.heads {
                    let mut out = vec![0.0f32; layer.blocks * codec.block_elements()];
                    let _ = vidkv_cpu::decode_key_blocks(&codec, head.key_blocks, &mut out);
                    let _ = vidkv_cpu::decode_value_blocks(&codec, head.value_blocks, &mut out);
                }
            }
        }
        Err(Error::Container { offset, .. }) => prop_assert!(offset <= bytes.len()),
        Err(Error::UnsupportedVersion { .. }) => {}
        Err(other) => prop_assert!(false, "untyped container error {other:?}"),
    }
    Ok(())
}

#[test]
fn arbitrary_bytes_never_panic_the_container_reader() {
    let files = valid_files();
    for f in &files {
        Container::parse(f).unwrap();
    }
    let mut runner = TestRunner::new(Config {
        cases: case_count(2048),
        failure_persistence: None,
        ..Config::default()
    });
    // Damaged valid files: overwritten bytes, truncation, insertion.
    let damaged = (
        0..files.len(),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        any::<prop::sample::Index>(),
        0u8..4,
    );
    runner
        .run(&damaged, |(i, edits, cut, mode)| {
            let mut b = files[i].clone();
            for (at, v) in edits {
                let at = at.index(b.len());
                b[at] = v;
            }
            match mode {
                0 => b.truncate(cut.index(b.len())),
                1 => b.insert(cut.index(b.len()), 0),
                _ => {}
            }
            check(&b)
        })
        .unwrap();
    // Random bytes, with the magic and version in front half of the time.
    let random = (prop::collection::vec(any::<u8>(), 0..512), any::<bool>());
    runner
        .run(&random, |(mut b, header)| {
            if header {
                let mut h = vidkv_core::container::MAGIC.to_vec();
                h.extend_from_slice(&1u16.to_le_bytes());
                h.extend_from_slice(&b);
                b = h;
            }
            check(&b)
        })
        .unwrap();
    conformance::props::report_line(&format!(
        "conformance never_panic: {} valid files, {} damaged and random inputs each",
        files.len(),
        runner.config().cases
    ));
}
