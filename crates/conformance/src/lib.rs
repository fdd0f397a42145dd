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
//! minimal failing case. `PROPTEST_CASES` overrides every property's case count. A backend that
//! may be absent (no GPU) uses `conformance::suite!(cuda, optional CudaBackend::new())` with a
//! `Result`, and every test then reports that it was skipped and why.
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
///
/// `suite!(name, optional EXPR)` takes a `Result` of a backend instead: with `Err(e)` (no
/// device, say) every test prints that it was skipped and why (`e`, which must be `Display`),
/// visibly, and passes.
#[macro_export]
macro_rules! suite {
    ($name:ident, optional $backend:expr) => {
        $crate::suite!(@tests $name, $backend);
    };
    ($name:ident, $backend:expr) => {
        $crate::suite!(
            @tests $name,
            ::core::result::Result::<_, ::core::convert::Infallible>::Ok($backend)
        );
    };
    (@tests $name:ident, $backend:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            $crate::suite!(@test encode_keys_matches_reference, props, $backend);
            $crate::suite!(@test encode_values_matches_reference, props, $backend);
            $crate::suite!(@test decode_matches_reference, props, $backend);
            $crate::suite!(@test key_error_bounds, props, $backend);
            $crate::suite!(@test value_error_bounds, props, $backend);
            $crate::suite!(@test rejects_bad_input, props, $backend);
            $crate::suite!(@test damaged_blocks_like_reference, props, $backend);
            $crate::suite!(@test arbitrary_bytes_never_panic, props, $backend);
            $crate::suite!(@test container_roundtrip, props, $backend);
            $crate::suite!(@test golden_vectors, golden, $backend);
        }
    };
    (@test $property:ident, props, $backend:expr) => {
        #[test]
        fn $property() {
            match $backend {
                ::core::result::Result::Ok(b) => $crate::props::$property(&b),
                ::core::result::Result::Err(e) => $crate::props::report_line(&format!(
                    "conformance {}: SKIPPED, no backend: {e}",
                    stringify!($property)
                )),
            }
        }
    };
    (@test golden_vectors, golden, $backend:expr) => {
        #[test]
        fn golden_vectors() {
            match $backend {
                ::core::result::Result::Ok(b) => $crate::golden::check_backend(&b),
                ::core::result::Result::Err(e) => $crate::props::report_line(&format!(
                    "conformance golden_vectors: SKIPPED, no backend: {e}"
                )),
            }
        }
    };
}
