//! Baseline: attention over a plain f16 cache with AVX2/FMA/F16C and AVX-512.
