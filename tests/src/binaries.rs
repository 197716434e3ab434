//! Finding the binaries under test.
//!
//! Integration tests of this crate do not make cargo build the origin's and
//! the edge's binaries (cargo only builds the binaries of the package under
//! test), so this module looks for them next to the test executable
//! (`target/<profile>/deps/<test>` → `target/<profile>/<binary>`) and, if
//! one is missing, runs `cargo build -p baton-origin -p baton-edge` once per
//! test process. `BATON_ORIGIN_BIN` / `BATON_EDGE_BIN` override the lookup.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The `baton-origin` binary, built if missing.
pub fn origin_bin() -> PathBuf {
    binary("baton-origin", "BATON_ORIGIN_BIN")
}

/// The `baton-edge` binary, built if missing.
pub fn edge_bin() -> PathBuf {
    binary("baton-edge", "BATON_EDGE_BIN")
}

/// `target/<profile>`: the directory the test executable's `deps/` is in.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe of the test binary");
    let deps = exe.parent().expect("test binary has a parent directory");
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().expect("deps/ has a parent").to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// The workspace root (the directory of the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives inside the workspace")
        .to_path_buf()
}

fn binary(name: &str, override_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        assert!(path.is_file(), "{override_var}={} is not a file", path.display());
        return path;
    }
    let path = profile_dir().join(name);
    if !path.is_file() {
        build_once();
    }
    assert!(
        path.is_file(),
        "{} does not exist and `cargo build -p {name}` did not produce it",
        path.display()
    );
    path
}

/// Runs `cargo build` for the server binaries at most once per process
/// (later callers wait for the first build to finish).
fn build_once() {
    static BUILT: OnceLock<Mutex<bool>> = OnceLock::new();
    let lock = BUILT.get_or_init(|| Mutex::new(false));
    let mut built = lock.lock().unwrap_or_else(|p| p.into_inner());
    if *built {
        return;
    }
    *built = true;
    let profile = profile_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace_root())
        .args(["build", "-p", "baton-origin", "-p", "baton-edge"]);
    if profile.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    if let Some(target_dir) = profile.parent() {
        cmd.arg("--target-dir").arg(target_dir);
    }
    eprintln!("baton-tests: building the server binaries: {cmd:?}");
    let status = cmd.status().expect("running cargo build");
    assert!(status.success(), "cargo build of the server binaries failed: {status}");
}
