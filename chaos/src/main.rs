//! Fault injection against a running Baton stack.
//!
//! The chaos suite (kill/restart origins under load, partition edge and
//! origin, slow players) lands together with the edge; this crate reserves
//! its place in the workspace.

fn main() {
    eprintln!("baton-chaos: the chaos suite arrives with the edge; nothing to run yet");
}
