//! What this binary is: its version, the git commit it was built from and
//! the build date (set by `build.rs`), for `--version`, the start log and
//! `esr_build_info`.

/// The crate version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit, 12 hex digits, or `unknown`.
pub const COMMIT: &str = env!("ESR_BUILD_COMMIT");

/// The build date, `YYYY-MM-DD` UTC, or `unknown`.
pub const BUILD_DATE: &str = env!("ESR_BUILD_DATE");

/// `--version`: `0.1.0 (commit 0123456789ab, built 2026-12-03)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("ESR_BUILD_COMMIT"),
    ", built ",
    env!("ESR_BUILD_DATE"),
    ")"
);
