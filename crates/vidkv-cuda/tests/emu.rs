//! The CUDA kernels run through the CPU warp emulator (`tools/kernel-emu`): the whole
//! conformance suite and the streaming-cache scenarios, on machines without a GPU.
//!
//! Build the emulator with `tools/kernel-emu/build.sh` and point `VIDKV_EMU_HARNESS` at it;
//! without it these tests say "skipped". The emulator is slow: run with a small
//! `PROPTEST_CASES` (CI uses 6).

mod common;

/// The emulator backend, or a visible skip.
macro_rules! emu_or_skip {
    () => {
        match common::EmuBackend::from_env() {
            Some(b) => b,
            None => {
                eprintln!(
                    "kernel emulator not built (tools/kernel-emu/build.sh, VIDKV_EMU_HARNESS): \
                     skipped"
                );
                return;
            }
        }
    };
}

conformance::suite!(emu, emu_or_skip!());

#[test]
fn emu_streaming_cache_scenarios() {
    let backend = emu_or_skip!();
    common::check_scenarios(|| backend.clone());
}
