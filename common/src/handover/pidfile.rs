//! The PID file: how operators and `baton-origin upgrade --pid-file` find
//! the process currently in charge.
//!
//! During a smooth upgrade two generations run at once, so the file must
//! always name exactly one live process: the successor replaces it
//! atomically (temp file + fsync + rename, never a half-written file) once it
//! serves, and the old generation removes it on exit only if it still names
//! itself, so it cannot delete its successor's file.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// Namespace for PID file operations.
#[derive(Debug)]
pub struct PidFile;

impl PidFile {
    /// Atomically replaces `path` with a file containing `pid`.
    pub fn write_atomic(path: &Path, pid: u32) -> io::Result<()> {
        let dir = parent_dir(path);
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("PID file path {} has no file name", path.display()),
            )
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = dir.join(tmp_name);
        let result = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(format!("{pid}\n").as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)?;
            // Make the rename itself durable; failure here is not fatal to
            // correctness (the file is already in place), so ignore it.
            if let Ok(d) = fs::File::open(&dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map_err(|e: io::Error| {
            io::Error::new(
                e.kind(),
                format!("cannot write PID file {}: {e}", path.display()),
            )
        })
    }

    /// Reads the PID in `path`; `Ok(None)` if the file does not exist.
    pub fn read(path: &Path) -> io::Result<Option<u32>> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot read PID file {}: {e}", path.display()),
                ))
            }
        };
        match text.trim().parse::<u32>() {
            Ok(pid) if pid > 0 => Ok(Some(pid)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "PID file {} does not contain a PID: {:?}",
                    path.display(),
                    text.chars().take(32).collect::<String>()
                ),
            )),
        }
    }

    /// The PID in `path` if that process is alive; stale or missing files
    /// (and unreadable ones) give `None`. For "address in use; running
    /// origin is PID N" messages.
    pub fn running(path: &Path) -> Option<u32> {
        match Self::read(path) {
            Ok(Some(pid)) if is_alive(pid) => Some(pid),
            _ => None,
        }
    }

    /// Removes `path` only if it still names `pid`; returns whether it did.
    ///
    /// There is a tiny window between the read and the unlink in which a
    /// successor could write its own file; successors write theirs only
    /// after the old generation stopped accepting and long before it exits,
    /// so in practice the check is what matters.
    pub fn remove_if_ours(path: &Path, pid: u32) -> io::Result<bool> {
        match Self::read(path) {
            Ok(Some(p)) if p == pid => match fs::remove_file(path) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(e),
            },
            Ok(_) => Ok(false),
            // Garbage in the file is not ours to delete.
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Whether a process with this PID exists (`kill(pid, 0)`; `EPERM` means it
/// exists but belongs to someone else, which counts as alive). PID 0 and
/// PIDs beyond `i32::MAX` are never "alive": `kill(0, ..)` would address our
/// own process group. A zombie counts as alive until it is reaped.
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match kill(Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(Errno::EPERM) => true,
        Err(_) => false,
    }
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "baton-pidfile-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn write_read_replace_remove() {
        let dir = temp_dir("rw");
        let path = dir.join("origin.pid");
        assert_eq!(PidFile::read(&path).unwrap(), None);

        PidFile::write_atomic(&path, 1234).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "1234\n");
        assert_eq!(PidFile::read(&path).unwrap(), Some(1234));

        // The successor replaces it; no temp files are left behind.
        PidFile::write_atomic(&path, 5678).unwrap();
        assert_eq!(PidFile::read(&path).unwrap(), Some(5678));
        let entries: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(entries.len(), 1);

        // The old generation exiting must not remove the successor's file.
        assert!(!PidFile::remove_if_ours(&path, 1234).unwrap());
        assert_eq!(PidFile::read(&path).unwrap(), Some(5678));
        assert!(PidFile::remove_if_ours(&path, 5678).unwrap());
        assert_eq!(PidFile::read(&path).unwrap(), None);
        assert!(!PidFile::remove_if_ours(&path, 5678).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_an_error_and_not_removed() {
        let dir = temp_dir("garbage");
        let path = dir.join("origin.pid");
        fs::write(&path, "not a pid\n").unwrap();
        let err = PidFile::read(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("does not contain a PID"), "{err}");
        assert!(!PidFile::remove_if_ours(&path, 1).unwrap());
        assert!(path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn liveness() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(0));
        assert!(!is_alive(u32::MAX));
        // PID 1 exists and usually belongs to root: alive either way (EPERM).
        assert!(is_alive(1));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_alive(pid));

        let dir = temp_dir("running");
        let path = dir.join("origin.pid");
        PidFile::write_atomic(&path, std::process::id()).unwrap();
        assert_eq!(PidFile::running(&path), Some(std::process::id()));
        PidFile::write_atomic(&path, pid).unwrap();
        assert_eq!(PidFile::running(&path), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
