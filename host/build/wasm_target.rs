//! Whether the toolchain building the host can build the guests: the
//! `wasm32-wasip2` standard library, and what to do when it is missing.
//!
//! rustup adds `rust-toolchain.toml`'s `targets` only when it installs the
//! toolchain, so a machine that already had the toolchain lacks the target.
//! Shared by `host/build.rs` and the integration tests, which check each
//! decision.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// The target the guests are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// What the build does before building the guests.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// The target's standard library is installed.
    Ready,
    /// Run `rustup target add` with this rustup, for this toolchain (or
    /// rustup's active one when `None`).
    Add {
        /// The rustup found on `PATH`.
        rustup: PathBuf,
        /// The toolchain the build runs under (`RUSTUP_TOOLCHAIN`).
        toolchain: Option<String>,
    },
    /// Fail at once with this message.
    Fail(String),
}

/// Decides from the toolchain's sysroot, the `PATH` and the active toolchain
/// (rustup sets `RUSTUP_TOOLCHAIN` for the cargo it runs).
pub fn plan(sysroot: &Path, path: Option<&OsStr>, toolchain: Option<String>) -> Plan {
    if has_std(sysroot) {
        return Plan::Ready;
    }
    match path.and_then(|path| find_program(path, "rustup")) {
        Some(rustup) => Plan::Add { rustup, toolchain },
        None => Plan::Fail(format!(
            "the {TARGET} target is not installed in {} and rustup is not on PATH; \
             install the target (with rustup: `rustup target add {TARGET}`; \
             otherwise your distribution's rust-std package for {TARGET}), \
             then build again",
            sysroot.display()
        )),
    }
}

/// The arguments that add the target, for the toolchain when one is named.
pub fn add_args(toolchain: Option<&str>) -> Vec<String> {
    let mut args = vec!["target".to_owned(), "add".to_owned(), TARGET.to_owned()];
    if let Some(toolchain) = toolchain {
        args.extend(["--toolchain".to_owned(), toolchain.to_owned()]);
    }
    args
}

/// Whether `sysroot` holds the target's standard library (`libstd-*.rlib`).
pub fn has_std(sysroot: &Path) -> bool {
    let lib = sysroot.join("lib/rustlib").join(TARGET).join("lib");
    std::fs::read_dir(lib).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libstd-") && name.ends_with(".rlib")
        })
    })
}

/// The first file named `name` in a `PATH`-style list of directories.
fn find_program(path: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
