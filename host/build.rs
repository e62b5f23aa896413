//! Builds the guests in this workspace for wasm32-wasip2.
//!
//! - `wasmhttpd-guest` (the default static-file guest) is embedded in the
//!   host as `DEFAULT_GUEST`.
//! - `wasmhttpd-register-guest` (the demo's form handler, `guests/register`)
//!   is found by the tests through `WASMHTTPD_REGISTER_GUEST`, and
//!   `wasmhttpd-gateway-guest` (the example API gateway, `guests/gateway`)
//!   through `WASMHTTPD_GATEWAY_GUEST`.
//! - `wasmhttpd-fault-guest` (a guest that loops, traps, or exhausts memory
//!   on request) and `wasmhttpd-plain-guest` (one without the WebSocket
//!   export) are only for the integration tests, which find them through
//!   the `WASMHTTPD_FAULT_GUEST` and `WASMHTTPD_PLAIN_GUEST` environment
//!   variables at compile time; so is `wasmhttpd-p3-guest`, a WASIp3
//!   guest (`WASMHTTPD_P3_GUEST`).
//!
//! The guests are built by a nested `cargo build` with its own target
//! directory under `OUT_DIR`, so it never waits on the outer build's lock.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const GUESTS: [&str; 6] = [
    "wasmhttpd-guest",
    "wasmhttpd-register-guest",
    "wasmhttpd-gateway-guest",
    "wasmhttpd-fault-guest",
    "wasmhttpd-plain-guest",
    "wasmhttpd-p3-guest",
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir.parent().expect("host/ sits in the workspace");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let target_dir = out_dir.join("guests");

    for input in [
        "guest",
        "guests",
        "pages",
        "tests/guests",
        "wit",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(input).display());
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace)
        .args(["build", "--release", "--target", TARGET])
        .args(GUESTS.iter().flat_map(|guest| ["--package", guest]))
        .env("CARGO_TARGET_DIR", &target_dir)
        // Flags meant for the host build must not leak into the wasm build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET");
    let status = build
        .status()
        .expect("failed to run cargo to build the guests");
    assert!(
        status.success(),
        "building the guests for {TARGET} failed ({status}); is the target installed? \
         rust-toolchain.toml lists it, so `rustup` adds it on first use"
    );

    let artifact = |package: &str| {
        target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")))
    };
    let default_guest = artifact("wasmhttpd-guest");
    std::fs::write(
        out_dir.join("guests.rs"),
        format!(
            "/// The default guest component (static files), built from `guest/`.\n\
             pub const DEFAULT_GUEST: &[u8] = include_bytes!({:?});\n",
            default_guest.display().to_string()
        ),
    )
    .expect("write guests.rs");
    for (variable, package) in [
        ("WASMHTTPD_REGISTER_GUEST", "wasmhttpd-register-guest"),
        ("WASMHTTPD_GATEWAY_GUEST", "wasmhttpd-gateway-guest"),
        ("WASMHTTPD_FAULT_GUEST", "wasmhttpd-fault-guest"),
        ("WASMHTTPD_PLAIN_GUEST", "wasmhttpd-plain-guest"),
        ("WASMHTTPD_P3_GUEST", "wasmhttpd-p3-guest"),
    ] {
        println!("cargo:rustc-env={variable}={}", artifact(package).display());
    }
}
