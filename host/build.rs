//! Builds the guests in this workspace for wasm32-wasip2.
//!
//! - `wasmhttpd-guest` (the default static-file guest) is embedded in the
//!   host as `DEFAULT_GUEST`.
//! - `wasmhttpd-accounts-guest` (the demo's accounts, `guests/accounts`)
//!   is embedded as `ACCOUNTS_GUEST`, the built-in guest `builtin:accounts`;
//!   `wasmhttpd-gateway-guest` (the example API gateway, `guests/gateway`)
//!   through `WASMHTTPD_GATEWAY_GUEST`.
//! - `wasmhttpd-fault-guest` (a guest that loops, traps, or exhausts memory
//!   on request) and `wasmhttpd-plain-guest` (one without the WebSocket
//!   export) are only for the integration tests, which find them through
//!   the `WASMHTTPD_FAULT_GUEST` and `WASMHTTPD_PLAIN_GUEST` environment
//!   variables at compile time; so is `wasmhttpd-p3-guest`, a WASIp3
//!   guest (`WASMHTTPD_P3_GUEST`); and `wasmhttpd-kv-guest`, which keeps
//!   state through both versions of `wasi:keyvalue`
//!   (`WASMHTTPD_KV_GUEST`).
//!
//! The guests are built by a nested `cargo build` with its own target
//! directory under `OUT_DIR`, so it never waits on the outer build's lock.
//! First the build makes sure the toolchain has the `wasm32-wasip2`
//! standard library, adding it with rustup where rustup is on `PATH`
//! ([`wasm_target`]).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "build/wasm_target.rs"]
mod wasm_target;

use wasm_target::{Plan, TARGET};
const GUESTS: [&str; 7] = [
    "wasmhttpd-guest",
    "wasmhttpd-accounts-guest",
    "wasmhttpd-gateway-guest",
    "wasmhttpd-fault-guest",
    "wasmhttpd-plain-guest",
    "wasmhttpd-p3-guest",
    "wasmhttpd-kv-guest",
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

    ensure_target();

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
        .unwrap_or_else(|err| fail(&format!("could not run cargo to build the guests: {err}")));
    if !status.success() {
        fail(&format!(
            "building the guests for {TARGET} failed ({status}); cargo's output above says why"
        ));
    }

    let artifact = |package: &str| {
        target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")))
    };
    std::fs::write(
        out_dir.join("guests.rs"),
        format!(
            "/// The default guest component (static files), built from `guest/`.\n\
             pub const DEFAULT_GUEST: &[u8] = include_bytes!({:?});\n\
             /// The demo's accounts guest component, built from `guests/accounts`.\n\
             pub const ACCOUNTS_GUEST: &[u8] = include_bytes!({:?});\n",
            artifact("wasmhttpd-guest").display().to_string(),
            artifact("wasmhttpd-accounts-guest").display().to_string(),
        ),
    )
    .expect("write guests.rs");
    for (variable, package) in [
        ("WASMHTTPD_ACCOUNTS_GUEST", "wasmhttpd-accounts-guest"),
        ("WASMHTTPD_GATEWAY_GUEST", "wasmhttpd-gateway-guest"),
        ("WASMHTTPD_FAULT_GUEST", "wasmhttpd-fault-guest"),
        ("WASMHTTPD_PLAIN_GUEST", "wasmhttpd-plain-guest"),
        ("WASMHTTPD_P3_GUEST", "wasmhttpd-p3-guest"),
        ("WASMHTTPD_KV_GUEST", "wasmhttpd-kv-guest"),
    ] {
        println!("cargo:rustc-env={variable}={}", artifact(package).display());
    }
}

/// Makes sure the toolchain can build for [`TARGET`], adding the target with
/// rustup when it is missing, or stops the build with the command to run.
fn ensure_target() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()))
        .unwrap_or_else(|| fail("could not ask rustc for its sysroot (`rustc --print sysroot`)"));
    let toolchain = env::var("RUSTUP_TOOLCHAIN").ok();
    match wasm_target::plan(&sysroot, env::var_os("PATH").as_deref(), toolchain) {
        Plan::Ready => {}
        Plan::Add { rustup, toolchain } => add_target(&rustup, toolchain.as_deref(), &sysroot),
        Plan::Fail(message) => fail(&message),
    }
}

/// Runs `rustup target add` and checks the target is then there.
fn add_target(rustup: &Path, toolchain: Option<&str>, sysroot: &Path) {
    let args = wasm_target::add_args(toolchain);
    let command = format!("rustup {}", args.join(" "));
    println!(
        "cargo:warning=the {TARGET} target the guests need is not installed: running `{command}`"
    );
    let status = Command::new(rustup)
        .args(&args)
        .status()
        .unwrap_or_else(|err| fail(&format!("could not run `{command}`: {err}")));
    if !status.success() || !wasm_target::has_std(sysroot) {
        fail(&format!(
            "`{command}` did not install the {TARGET} target ({status}); run it yourself, then build again"
        ));
    }
}

/// Stops the build with `message`: a message, not a panic's backtrace.
fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    std::process::exit(1)
}
