//! The build's check for the `wasm32-wasip2` standard library
//! (`host/build/wasm_target.rs`, which `host/build.rs` runs before
//! building the guests): what it decides with the target installed,
//! missing with rustup on `PATH`, and missing without.

#[path = "../../host/build/wasm_target.rs"]
mod wasm_target;

use std::ffi::OsString;
use std::path::Path;

use wasm_target::{Plan, TARGET, add_args, has_std, plan};

/// A sysroot in `dir`, with the target's standard library or without.
fn sysroot(dir: &Path, with_target: bool) -> std::path::PathBuf {
    let root = dir.join("sysroot");
    let host = root.join("lib/rustlib/x86_64-unknown-linux-gnu/lib");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("libstd-0123456789abcdef.rlib"), b"").unwrap();
    let lib = root.join("lib/rustlib").join(TARGET).join("lib");
    std::fs::create_dir_all(&lib).unwrap();
    if with_target {
        std::fs::write(lib.join("libstd-fedcba9876543210.rlib"), b"").unwrap();
    }
    root
}

/// A `PATH` of two directories, the second holding a `rustup` when asked.
fn path(dir: &Path, with_rustup: bool) -> OsString {
    let (first, second) = (dir.join("bin"), dir.join("more-bin"));
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    std::fs::write(first.join("cargo"), b"").unwrap();
    if with_rustup {
        std::fs::write(second.join("rustup"), b"").unwrap();
    }
    std::env::join_paths([first, second]).unwrap()
}

#[test]
fn an_installed_target_is_used_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let root = sysroot(dir.path(), true);
    for with_rustup in [true, false] {
        let found = plan(
            &root,
            Some(&path(dir.path(), with_rustup)),
            Some("1.95.0".into()),
        );
        assert_eq!(found, Plan::Ready);
    }
}

#[test]
fn a_missing_target_is_added_with_the_rustup_on_path_for_the_active_toolchain() {
    let dir = tempfile::tempdir().unwrap();
    let root = sysroot(dir.path(), false);
    let toolchain = "1.95.0-x86_64-unknown-linux-gnu";
    let found = plan(
        &root,
        Some(&path(dir.path(), true)),
        Some(toolchain.to_owned()),
    );
    assert_eq!(
        found,
        Plan::Add {
            rustup: dir.path().join("more-bin/rustup"),
            toolchain: Some(toolchain.to_owned()),
        }
    );
    assert_eq!(
        add_args(Some(toolchain)),
        ["target", "add", TARGET, "--toolchain", toolchain]
    );
    // Outside rustup's own cargo, rustup's active toolchain gets it.
    assert_eq!(add_args(None), ["target", "add", TARGET]);
}

#[test]
fn a_missing_target_without_rustup_stops_the_build_with_the_command_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = sysroot(dir.path(), false);
    for path in [Some(path(dir.path(), false)), None] {
        let Plan::Fail(message) = plan(&root, path.as_deref(), None) else {
            panic!("a plan without rustup must fail");
        };
        assert!(
            message.contains(&format!("`rustup target add {TARGET}`")),
            "{message}"
        );
        assert!(message.contains(&root.display().to_string()), "{message}");
    }
}

#[test]
fn the_toolchain_that_built_these_tests_has_the_target() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .unwrap();
    let sysroot = String::from_utf8(output.stdout).unwrap();
    assert!(has_std(Path::new(sysroot.trim())), "{sysroot}");
}
