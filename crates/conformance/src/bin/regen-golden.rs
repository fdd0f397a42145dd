//! Regenerates the golden vectors in `crates/conformance/golden/`:
//!
//! ```text
//! cargo run -p conformance --bin regen-golden            # write missing vectors, check the rest
//! cargo run -p conformance --bin regen-golden -- --force # also overwrite changed ones
//! cargo run -p conformance --bin regen-golden -- --fuzz-seeds  # also write fuzz/corpus seeds
//! ```
//!
//! `--fuzz-seeds` writes one small valid `.vkv` file per vector (its blocks plus a three-token
//! tail) into `fuzz/corpus/container/`, so that the container fuzzer starts from real files.
//!
//! Existing vectors keep their stored inputs; only the encoded bytes and decoded values are
//! recomputed. Changing the bytes of an existing vector is a format change: without `--force` it
//! is refused unless the stored vector was written for an older block format version (i.e.
//! `vidkv_core::FORMAT_VERSION` and `docs/FORMAT.md` were bumped first).

use std::process::ExitCode;

use conformance::golden::{self, Vector};

fn main() -> ExitCode {
    let force = std::env::args().any(|a| a == "--force");
    let dir = golden::dir();
    std::fs::create_dir_all(&dir).expect("create golden dir");
    let mut manifest = format!(
        "# Golden vectors of vidkv block format {} (see src/golden.rs for the file layout).\n\
         # Regenerate: cargo run -p conformance --bin regen-golden\n\
         # name | configuration | key bytes | value bytes\n",
        vidkv_core::FORMAT_VERSION
    );
    let (mut written, mut same, mut refused) = (0, 0, 0);
    for spec in golden::specs() {
        let path = dir.join(format!("{}.bin", spec.name));
        let old = std::fs::read(&path).ok().map(|b| Vector::from_bytes(&b));
        let (keys, values) = match &old {
            Some(Ok(v)) => (v.keys.clone(), v.values.clone()),
            _ => golden::fresh_input(&spec),
        };
        let new = golden::compute(&spec, keys, values).expect("scalar reference encodes");
        manifest += &format!(
            "{} | {} | {} | {}\n",
            spec.name,
            new.description,
            new.key_bytes.len(),
            new.value_bytes.len()
        );
        match old {
            Some(Ok(old)) if old == new => same += 1,
            Some(Ok(old)) if old.format_version == new.format_version && !force => {
                eprintln!(
                    "REFUSED {}: bytes differ from the committed vector of the same format \
                     version {}. Bump FORMAT_VERSION and docs/FORMAT.md, or pass --force.",
                    spec.name, old.format_version
                );
                refused += 1;
            }
            _ => {
                std::fs::write(&path, new.to_bytes()).expect("write vector");
                eprintln!("wrote {}", path.display());
                written += 1;
            }
        }
    }
    if std::env::args().any(|a| a == "--fuzz-seeds") {
        write_fuzz_seeds();
    }
    std::fs::write(dir.join("MANIFEST.txt"), manifest).expect("write manifest");
    eprintln!("{written} written, {same} unchanged, {refused} refused");
    if refused > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn write_fuzz_seeds() {
    use vidkv_core::container::{ContainerWriter, HeadSection, LayerInput};
    use vidkv_core::{Codec, KeyScheme, OutlierScope};
    let out = golden::dir().join("../../../fuzz/corpus/container");
    std::fs::create_dir_all(&out).expect("create fuzz corpus dir");
    for spec in golden::specs() {
        let v = golden::load(&spec).expect("vectors exist");
        let codec = Codec::new(spec.config).unwrap();
        let d = codec.head_dim();
        let tail: Vec<u8> = v.keys[..3 * d]
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
                .expect("stored mask"),
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
            tail_tokens: 3,
            outliers: mask.as_ref(),
            heads: &[head],
        })
        .expect("valid layer");
        std::fs::write(out.join(format!("{}.vkv", spec.name)), w.finish()).expect("write seed");
    }
    eprintln!("wrote fuzz seeds to {}", out.display());
}
