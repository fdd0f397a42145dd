//! Errors of the adapter.

use std::fmt;

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// What can go wrong between candle and a vidkv cache.
#[derive(Debug)]
pub enum Error {
    /// A tensor or slice has the wrong shape.
    Shape(String),
    /// An invalid setting.
    Config(String),
    /// From vidkv.
    Vidkv(vidkv_core::Error),
    /// From candle.
    Candle(candle_core::Error),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape(s) => write!(f, "shape: {s}"),
            Error::Config(s) => write!(f, "configuration: {s}"),
            Error::Vidkv(e) => write!(f, "vidkv: {e}"),
            Error::Candle(e) => write!(f, "candle: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<vidkv_core::Error> for Error {
    fn from(e: vidkv_core::Error) -> Self {
        Error::Vidkv(e)
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Candle(e)
    }
}
