//! The vidkv conformance suite: properties every [`vidkv_core::KvQuantBackend`] must satisfy, and
//! the golden vectors that pin the format.
//!
//! A backend crate runs the whole suite with one macro in a test file:
//!
//! ```ignore
//! conformance::suite!(scalar, vidkv_cpu::ScalarBackend);
//! ```
//!
//! which emits one `#[test]` per property in a module named `scalar`. Every property compares
//! with the normative scalar implementation (`vidkv_cpu`), prints what it covered and what the
//! backend reported unsupported (on stderr, visible even when the test passes), and panics with the
//! minimal failing case. `PROPTEST_CASES` overrides every property's case count.
//!
//! * [`props`] — the properties, generic over the backend;
//! * [`inputs`] — configurations, shapes and tensors (realistic, random, adversarial);
//! * [`fields`] — blocks taken apart, the boundary rule between encoders, the error bounds;
//! * [`golden`] — the committed vectors and their check.

pub mod fields;
pub mod golden;
pub mod inputs;
pub mod props;
pub mod rng;

/// Emits `mod $name { #[test] fn …() }` with one test per property of [`props`] plus the golden
/// vectors, all run on the backend `$backend` (an expression, evaluated once per test).
#[macro_export]
macro_rules! suite {
    ($name:ident, $backend:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn encode_keys_matches_reference() {
                $crate::props::encode_keys_matches_reference(&$backend);
            }

            #[test]
            fn encode_values_matches_reference() {
                $crate::props::encode_values_matches_reference(&$backend);
            }

            #[test]
            fn decode_matches_reference() {
                $crate::props::decode_matches_reference(&$backend);
            }

            #[test]
            fn key_error_bounds() {
                $crate::props::key_error_bounds(&$backend);
            }

            #[test]
            fn value_error_bounds() {
                $crate::props::value_error_bounds(&$backend);
            }

            #[test]
            fn rejects_bad_input() {
                $crate::props::rejects_bad_input(&$backend);
            }

            #[test]
            fn damaged_blocks_like_reference() {
                $crate::props::damaged_blocks_like_reference(&$backend);
            }

            #[test]
            fn arbitrary_bytes_never_panic() {
                $crate::props::arbitrary_bytes_never_panic(&$backend);
            }

            #[test]
            fn container_roundtrip() {
                $crate::props::container_roundtrip(&$backend);
            }

            #[test]
            fn golden_vectors() {
                $crate::golden::check_backend(&$backend);
            }
        }
    };
}
