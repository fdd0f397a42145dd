//! placeholder until the crate is built out
