//! Typed errors. Every message names what was wrong and what was expected, so that a CLI can print
//! it as a one-line diagnostic.

use core::fmt;

/// Result alias used throughout vidkv.
pub type Result<T, E = Error> = core::result::Result<T, E>;

/// Everything that can go wrong in vidkv, from configuration to damaged data.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// head_dim must be even and within 16..=256.
    UnsupportedHeadDim {
        /// The rejected value.
        head_dim: usize,
    },
    /// Group size must be 32, 64 or 128 tokens.
    UnsupportedGroupSize {
        /// The rejected value.
        group: usize,
    },
    /// A configuration value is out of range or inconsistent with another one.
    InvalidConfig {
        /// Human-readable reason.
        reason: &'static str,
    },
    /// A buffer or tensor does not have the length its shape requires.
    ShapeMismatch {
        /// Which argument.
        what: &'static str,
        /// Required number of elements or bytes.
        expected: usize,
        /// Number supplied.
        actual: usize,
    },
    /// The input holds a NaN or an infinity (at this flat element index).
    NonFinite {
        /// Flat index of the first offending element.
        index: usize,
    },
    /// A finite input value whose magnitude exceeds the f16 range (scales are stored as f16).
    OutOfRange {
        /// Flat index of the first offending element.
        index: usize,
    },
    /// Encoded bytes that no encoder can produce (damaged or foreign data).
    Corrupt {
        /// What was found to be wrong.
        what: &'static str,
        /// Byte offset inside the block where it was found.
        offset: usize,
    },
    /// The backend does not implement this operation for this configuration.
    Unsupported {
        /// Backend name.
        backend: &'static str,
        /// What was asked for.
        operation: &'static str,
        /// Why it is unsupported.
        reason: &'static str,
    },
    /// A `.vkv` container that is damaged, truncated or inconsistent (see
    /// [`crate::container`]).
    Container {
        /// What was found to be wrong.
        what: &'static str,
        /// Byte offset in the file where it was found.
        offset: usize,
    },
    /// A `.vkv` container (or block format) version this build cannot read.
    UnsupportedVersion {
        /// Which version field.
        what: &'static str,
        /// The version found.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// A backend-specific failure (driver error, allocation failure, …).
    Backend {
        /// Backend name.
        backend: &'static str,
        /// Description of the failure.
        message: alloc::string::String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::UnsupportedHeadDim { head_dim } => {
                write!(
                    f,
                    "unsupported head_dim {head_dim}: expected an even number in 16..=256"
                )
            }
            Error::UnsupportedGroupSize { group } => {
                write!(f, "unsupported group size {group}: expected 32, 64 or 128")
            }
            Error::InvalidConfig { reason } => write!(f, "invalid configuration: {reason}"),
            Error::ShapeMismatch {
                what,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "shape mismatch in {what}: expected {expected}, got {actual}"
                )
            }
            Error::NonFinite { index } => {
                write!(
                    f,
                    "input contains NaN or infinity (first at flat index {index})"
                )
            }
            Error::OutOfRange { index } => write!(
                f,
                "input magnitude exceeds the f16 range ±65504 (first at flat index {index})"
            ),
            Error::Corrupt { what, offset } => {
                write!(f, "corrupt block data: {what} (at byte {offset})")
            }
            Error::Unsupported {
                backend,
                operation,
                reason,
            } => {
                write!(
                    f,
                    "backend {backend} does not support {operation}: {reason}"
                )
            }
            Error::Container { what, offset } => {
                write!(f, "bad .vkv container: {what} (at byte {offset})")
            }
            Error::UnsupportedVersion {
                what,
                found,
                supported,
            } => write!(
                f,
                "unsupported {what} {found}: this build reads version {supported}"
            ),
            Error::Backend { backend, message } => write!(f, "backend {backend} failed: {message}"),
        }
    }
}

impl core::error::Error for Error {}
