//! The shared conformance suite at every SIMD level. A level this CPU cannot run is reported as
//! skipped, with the reason, by every test of its module.

use vidkv_simd::{Level, SimdBackend};

conformance::suite!(avx2, optional SimdBackend::with_level(Level::Avx2));
conformance::suite!(avx512, optional SimdBackend::with_level(Level::Avx512));
conformance::suite!(neon, optional SimdBackend::with_level(Level::Neon));
