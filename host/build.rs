//! Builds the workspace's plugin crates for `wasm32-wasip2`, so that `cargo build`, `cargo
//! test` and `cargo demo` need no separate step. The modules land in
//! `target/wasm-plugins/wasm32-wasip2/release/*.wasm`; `WASMGATE_PLUGIN_DIR` tells the crate
//! (the demo embeds `first_plugin.wasm`, `jwt.wasm`, `headers.wasm` and `grpc_transcode.wasm`)
//! and its tests where.
//!
//! The nested cargo uses its own target directory, so it never waits for the outer build's
//! lock. Set `WASMGATE_SKIP_PLUGIN_BUILD=1` to skip it (the demo then has no plugins).

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// Crates built to WebAssembly, relative to the workspace root.
const PLUGIN_CRATES: &[(&str, &str)] = &[
    ("first-plugin", "examples/first-plugin"),
    ("jwt", "plugins/jwt"),
    ("headers", "plugins/headers"),
    ("grpc-transcode", "plugins/grpc-transcode"),
    ("test-plugins", "tests/plugins/test-plugins"),
];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("host/ lives in the workspace")
        .to_path_buf();
    let target_dir = workspace.join("target").join("wasm-plugins");
    let out = target_dir.join("wasm32-wasip2").join("release");
    println!("cargo:rustc-env=WASMGATE_PLUGIN_DIR={}", out.display());
    println!("cargo:rerun-if-env-changed=WASMGATE_SKIP_PLUGIN_BUILD");
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("plugin-sdk").display()
    );
    for (_, dir) in PLUGIN_CRATES {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo::rustc-check-cfg=cfg(wasmgate_demo_plugin)");
    if env::var_os("WASMGATE_SKIP_PLUGIN_BUILD").is_some() {
        return;
    }
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target_dir)
        // Plugins ship without debug info; the host's release profile keeps line tables.
        .args([
            "--config",
            "profile.release.debug=false",
            "--config",
            "profile.release.strip=true",
        ]);
    for (name, _) in PLUGIN_CRATES {
        command.args(["-p", name]);
    }
    // The outer build's settings are for the host target, not for wasm.
    for var in [
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        command.env_remove(var);
    }
    let status = command
        .status()
        .expect("cannot run cargo to build the plugins");
    if !status.success() {
        panic!(
            "building the plugins for wasm32-wasip2 failed (see above). Is the target installed? \
             `rustup target add wasm32-wasip2` (rust-toolchain.toml lists it)"
        );
    }
    // The demo embeds its plugins when they were built.
    if [
        "first_plugin.wasm",
        "jwt.wasm",
        "headers.wasm",
        "grpc_transcode.wasm",
    ]
    .iter()
    .all(|module| out.join(module).exists())
    {
        println!("cargo:rustc-cfg=wasmgate_demo_plugin");
    }
}
