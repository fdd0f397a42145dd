//! The conformance suite on the normative scalar backend.

conformance::suite!(scalar, vidkv_cpu::ScalarBackend);
