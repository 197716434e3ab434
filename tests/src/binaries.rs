//! Finding the binaries under test.
//!
//! Integration tests of this crate do not make cargo build the origin's and
//! the edge's binaries (cargo only builds the binaries of the package under
//! test), so this module looks for them next to the test executable
//! (`target/<profile>/deps/<test>` → `target/<profile>/<binary>`) and, if
//! one is missing or older than the sources it is built from (so
//! `cargo test -p baton-tests` after editing the origin does not test a
//! stale binary), runs `cargo build -p baton-origin -p baton-edge` once per
//! test process. `BATON_ORIGIN_BIN` / `BATON_EDGE_BIN` override the lookup.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// The `baton-origin` binary, built if missing.
pub fn origin_bin() -> PathBuf {
    binary("baton-origin", "origin", "BATON_ORIGIN_BIN")
}

/// The `baton-edge` binary, built if missing.
pub fn edge_bin() -> PathBuf {
    binary("baton-edge", "edge", "BATON_EDGE_BIN")
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

fn binary(name: &str, crate_dir: &str, override_var: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(override_var) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{override_var}={} is not a file",
            path.display()
        );
        return path;
    }
    let path = profile_dir().join(name);
    if is_stale(&path, crate_dir) {
        build_once();
    }
    assert!(
        path.is_file(),
        "{} does not exist and `cargo build -p {name}` did not produce it",
        path.display()
    );
    path
}

/// Missing, or older than a source or manifest of `common/` or of its own
/// crate, or than the workspace manifest / lock file.
fn is_stale(binary: &Path, crate_dir: &str) -> bool {
    let Ok(built) = std::fs::metadata(binary).and_then(|m| m.modified()) else {
        return true;
    };
    let root = workspace_root();
    let mut newest = None;
    for file in ["Cargo.toml", "Cargo.lock"] {
        newest = newest.max(mtime(&root.join(file)));
    }
    for krate in ["common", crate_dir] {
        newest = newest.max(mtime(&root.join(krate).join("Cargo.toml")));
        newest = newest.max(newest_in(&root.join(krate).join("src")));
    }
    newest.is_some_and(|source| source > built)
}

fn mtime(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn newest_in(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let candidate = if path.is_dir() {
            newest_in(&path)
        } else {
            mtime(&path)
        };
        newest = newest.max(candidate);
    }
    newest
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
    assert!(
        status.success(),
        "cargo build of the server binaries failed: {status}"
    );
}
