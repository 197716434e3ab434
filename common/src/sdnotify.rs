//! systemd readiness and main-PID notifications (`sd_notify`), without
//! linking libsystemd.
//!
//! A smooth upgrade replaces the service's main process. Under systemd that
//! only works if the new generation says so: it sends `MAINPID=<its pid>`
//! with `READY=1` once it serves, and the unit has `Type=notify` and
//! `NotifyAccess=all` (see `deploy/baton-origin.service`). Otherwise systemd
//! would treat the old generation's exit as the service stopping and kill
//! the new one. Outside systemd (`NOTIFY_SOCKET` unset) every call is a
//! no-op.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Send one notification (`"READY=1\nMAINPID=42"`) to systemd, if it is
/// listening. Returns Ok(false) when not running under systemd.
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = path.as_encoded_bytes();
    if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?;
        socket.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        socket.send_to(state.as_bytes(), &path)?;
    }
    Ok(true)
}

/// This process serves: tell systemd, naming it the main process.
pub fn ready() {
    let state = format!("READY=1\nMAINPID={}", std::process::id());
    if let Err(error) = notify(&state) {
        tracing::warn!(%error, "cannot notify systemd of readiness");
    }
}

/// This process is stopping (not handing over): tell systemd.
pub fn stopping() {
    if let Err(error) = notify("STOPPING=1") {
        tracing::warn!(%error, "cannot notify systemd of stopping");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_the_notify_socket() {
        let dir = std::env::temp_dir().join(format!("baton-sdnotify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        // SAFETY of set_var: this test is the only one touching NOTIFY_SOCKET.
        unsafe { std::env::set_var("NOTIFY_SOCKET", &path) };
        assert!(notify("READY=1\nMAINPID=7").unwrap());
        unsafe { std::env::remove_var("NOTIFY_SOCKET") };
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nMAINPID=7");
        assert!(!notify("READY=1").unwrap());
        std::fs::remove_dir_all(dir).ok();
    }
}
