//! The committed golden vectors, bit for bit against the normative scalar implementation.
//!
//! This fails when one byte of any encoder (or one bit of a decoded value) changes. If the change
//! is deliberate it is a format change: bump `vidkv_core::FORMAT_VERSION` and the version in
//! `docs/FORMAT.md`, then run `cargo run -p conformance --bin regen-golden`.

use conformance::golden;

#[test]
fn golden_vectors_are_reproduced_exactly() {
    let specs = golden::specs();
    let failures: Vec<String> = specs
        .iter()
        .filter_map(|s| golden::check_reference(s).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} golden vectors differ:\n{}",
        failures.len(),
        specs.len(),
        failures.join("\n")
    );
    conformance::props::report_line(&format!(
        "conformance golden: {} vectors reproduced bit for bit (format {})",
        specs.len(),
        vidkv_core::FORMAT_VERSION
    ));
}

#[test]
fn every_committed_file_is_a_listed_vector() {
    let names: Vec<String> = golden::specs().into_iter().map(|s| s.name).collect();
    for entry in std::fs::read_dir(golden::dir()).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if let Some(stem) = name.strip_suffix(".bin") {
            assert!(names.iter().any(|n| n == stem), "stray golden file {name}");
        }
    }
}

#[test]
fn format_doc_states_the_current_version() {
    let doc = std::fs::read_to_string(golden::dir().join("../../../docs/FORMAT.md")).unwrap();
    let want = format!("**Block format version: {}**", vidkv_core::FORMAT_VERSION);
    assert!(
        doc.contains(&want),
        "docs/FORMAT.md must say {want:?} (bump it together with FORMAT_VERSION)"
    );
    let manifest = std::fs::read_to_string(golden::dir().join("MANIFEST.txt")).unwrap();
    assert!(
        manifest.starts_with(&format!(
            "# Golden vectors of vidkv block format {} ",
            vidkv_core::FORMAT_VERSION
        )),
        "golden/MANIFEST.txt was written for another format version"
    );
}
