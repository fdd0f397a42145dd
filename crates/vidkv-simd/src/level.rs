//! Instruction-set levels: detected once, forcible for tests and benchmarks.
//!
//! The level in force is, in order of precedence: one set with [`force_level`], the
//! `VIDKV_SIMD_LEVEL` environment variable (`scalar`, `avx2`, `avx512`, `neon`; read once, `std`
//! only), or the best level [`detect`] finds. Asking for a level the CPU lacks is refused (the
//! call returns an error, the variable is ignored with a message on stderr), so a
//! `#[target_feature]` function is never reached on a CPU without its features.
//! `VIDKV_SIMD_DISABLE=vnni,dotprod,avx512` hides optional extensions (tests of fallback paths).

use core::fmt;
use core::sync::atomic::{AtomicU8, Ordering};

use vidkv_core::{Error, Result};

/// A SIMD instruction-set level. Every level can fall back to the scalar backend per operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// The portable scalar backend (`vidkv-cpu`), for every operation.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (Haswell, Zen and later).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL/DQ (+ AVX2/FMA/F16C); VNNI (`vpdpbusd`) is used where present.
    Avx512,
    /// aarch64 Advanced SIMD (NEON); the `dotprod` extension (`sdot`) is used where present.
    Neon,
}

impl Level {
    /// Every level, in report order.
    pub const ALL: [Level; 4] = [Level::Scalar, Level::Avx2, Level::Avx512, Level::Neon];

    /// Name used by `VIDKV_SIMD_LEVEL`, benches and reports.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Neon => "neon",
        }
    }

    /// Parses a level name (case-insensitive).
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|l| l.name().eq_ignore_ascii_case(name.trim()))
            .ok_or(Error::InvalidConfig {
                reason: "unknown SIMD level (expected scalar, avx2, avx512 or neon)",
            })
    }

    /// Whether this CPU can run the level.
    pub fn is_available(self) -> bool {
        features().supports(self)
    }

    /// Levels this CPU can run, best last.
    pub fn available() -> impl Iterator<Item = Level> {
        Self::ALL.into_iter().filter(|l| l.is_available())
    }

    /// A description of the optional extensions this level will use on this CPU.
    pub fn extensions(self) -> &'static str {
        let f = features();
        match self {
            Level::Avx512 if f.avx512vnni => "avx512f/bw/vl/dq + vnni",
            Level::Avx512 => "avx512f/bw/vl/dq (no vnni)",
            Level::Avx2 => "avx2 + fma + f16c",
            Level::Neon if f.dotprod => "neon + dotprod",
            Level::Neon => "neon",
            Level::Scalar => "portable",
        }
    }

    fn code(self) -> u8 {
        self as u8 + 1
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.code() == code)
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// CPU features that matter to the kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// AVX2 + FMA + F16C.
    pub avx2: bool,
    /// AVX-512 F, BW, VL and DQ.
    pub avx512: bool,
    /// AVX-512 VNNI (`vpdpbusd`).
    pub avx512vnni: bool,
    /// AVX-512 VPOPCNTDQ.
    pub avx512vpopcntdq: bool,
    /// AVX-512 BF16.
    pub avx512bf16: bool,
    /// aarch64 Advanced SIMD.
    pub neon: bool,
    /// aarch64 dot product (`sdot`).
    pub dotprod: bool,
}

impl Features {
    /// Whether these features run `level`.
    pub fn supports(&self, level: Level) -> bool {
        match level {
            Level::Scalar => true,
            Level::Avx2 => self.avx2,
            Level::Avx512 => self.avx2 && self.avx512,
            Level::Neon => self.neon,
        }
    }

    fn best(&self) -> Level {
        [Level::Avx512, Level::Avx2, Level::Neon]
            .into_iter()
            .find(|&l| self.supports(l))
            .unwrap_or(Level::Scalar)
    }
}

static FEATURES: AtomicU8 = AtomicU8::new(0);
const FEATURES_SET: u8 = 0x80;

/// The CPU's features, detected once.
pub fn features() -> Features {
    let bits = FEATURES.load(Ordering::Relaxed);
    let bits = if bits & FEATURES_SET != 0 {
        bits
    } else {
        let f = disable_from_env(detect_features());
        let bits = FEATURES_SET
            | u8::from(f.avx2)
            | u8::from(f.avx512) << 1
            | u8::from(f.avx512vnni) << 2
            | u8::from(f.avx512vpopcntdq) << 3
            | u8::from(f.avx512bf16) << 4
            | u8::from(f.neon) << 5
            | u8::from(f.dotprod) << 6;
        FEATURES.store(bits, Ordering::Relaxed);
        bits
    };
    Features {
        avx2: bits & 1 != 0,
        avx512: bits & 2 != 0,
        avx512vnni: bits & 4 != 0,
        avx512vpopcntdq: bits & 8 != 0,
        avx512bf16: bits & 16 != 0,
        neon: bits & 32 != 0,
        dotprod: bits & 64 != 0,
    }
}

#[cfg(all(feature = "std", any(target_arch = "x86", target_arch = "x86_64")))]
fn detect_features() -> Features {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma") && has!("f16c");
    let avx512 = has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512dq");
    Features {
        avx2,
        avx512,
        avx512vnni: avx512 && has!("avx512vnni"),
        avx512vpopcntdq: avx512 && has!("avx512vpopcntdq"),
        avx512bf16: avx512 && has!("avx512bf16"),
        ..Features::default()
    }
}

#[cfg(all(feature = "std", target_arch = "aarch64"))]
fn detect_features() -> Features {
    use std::arch::is_aarch64_feature_detected as has;
    Features {
        neon: has!("neon"),
        dotprod: has!("neon") && has!("dotprod"),
        ..Features::default()
    }
}

#[cfg(any(
    not(feature = "std"),
    not(any(target_arch = "x86", target_arch = "x86_64", target_arch = "aarch64"))
))]
fn detect_features() -> Features {
    // Without std only what the compile-time target features promise.
    Features {
        avx2: cfg!(all(
            target_feature = "avx2",
            target_feature = "fma",
            target_feature = "f16c"
        )),
        avx512: cfg!(all(
            target_feature = "avx512f",
            target_feature = "avx512bw",
            target_feature = "avx512vl",
            target_feature = "avx512dq"
        )),
        avx512vnni: cfg!(target_feature = "avx512vnni"),
        avx512vpopcntdq: cfg!(target_feature = "avx512vpopcntdq"),
        avx512bf16: cfg!(target_feature = "avx512bf16"),
        neon: cfg!(all(target_arch = "aarch64", target_feature = "neon")),
        dotprod: cfg!(all(target_arch = "aarch64", target_feature = "dotprod")),
    }
}

/// `VIDKV_SIMD_DISABLE` (comma-separated `vnni`, `dotprod`, `avx512`) hides optional
/// extensions, so that tests reach the fallback paths of a level on a CPU that has them.
#[cfg(feature = "std")]
fn disable_from_env(mut f: Features) -> Features {
    let Ok(list) = std::env::var("VIDKV_SIMD_DISABLE") else {
        return f;
    };
    for item in list.split(',').map(str::trim) {
        match item {
            "vnni" => f.avx512vnni = false,
            "dotprod" => f.dotprod = false,
            "avx512" => {
                f.avx512 = false;
                f.avx512vnni = false;
            }
            _ => {}
        }
    }
    f
}

#[cfg(not(feature = "std"))]
fn disable_from_env(f: Features) -> Features {
    f
}

/// The best level this CPU supports.
pub fn detect() -> Level {
    features().best()
}

/// 0: not decided yet; otherwise `Level::code`.
static ACTIVE: AtomicU8 = AtomicU8::new(0);

/// The level in force (see the module docs).
pub fn active_level() -> Level {
    if let Some(l) = Level::from_code(ACTIVE.load(Ordering::Relaxed)) {
        return l;
    }
    let level = from_env().unwrap_or_else(detect);
    // A concurrent `force_level` wins over the default.
    let _ = ACTIVE.compare_exchange(0, level.code(), Ordering::Relaxed, Ordering::Relaxed);
    Level::from_code(ACTIVE.load(Ordering::Relaxed)).unwrap_or(level)
}

/// Forces the level for the whole process. Refuses a level this CPU cannot run.
pub fn force_level(level: Level) -> Result<()> {
    check(level)?;
    ACTIVE.store(level.code(), Ordering::Relaxed);
    Ok(())
}

/// `Ok` if `level` runs here, else an [`Error::Unsupported`] naming it.
pub fn check(level: Level) -> Result<()> {
    if level.is_available() {
        Ok(())
    } else {
        Err(Error::Unsupported {
            backend: level.name(),
            operation: "select level",
            reason: "this CPU lacks the instruction set",
        })
    }
}

#[cfg(feature = "std")]
fn from_env() -> Option<Level> {
    let value = std::env::var("VIDKV_SIMD_LEVEL").ok()?;
    if value.trim().is_empty() {
        return None;
    }
    match Level::from_name(&value) {
        Ok(l) if l.is_available() => Some(l),
        Ok(l) => {
            std::eprintln!(
                "vidkv-simd: VIDKV_SIMD_LEVEL={l} is not supported by this CPU; ignored"
            );
            None
        }
        Err(_) => {
            std::eprintln!("vidkv-simd: VIDKV_SIMD_LEVEL={value:?} is not a level; ignored");
            None
        }
    }
}

#[cfg(not(feature = "std"))]
fn from_env() -> Option<Level> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_scalar_is_always_there() {
        for l in Level::ALL {
            assert_eq!(Level::from_name(l.name()).unwrap(), l);
            assert_eq!(Level::from_code(l.code()), Some(l));
        }
        assert!(Level::from_name("sse9").is_err());
        assert!(Level::Scalar.is_available());
        assert!(Level::available().any(|l| l == detect()));
    }

    #[test]
    fn unavailable_levels_are_refused() {
        for l in Level::ALL {
            assert_eq!(check(l).is_ok(), l.is_available());
        }
    }
}
