//! What the benches read about processes from `/proc`: CPU time of a
//! process and its descendants (the server under test), resident memory,
//! and the load tool's own CPU time.

use std::fs;
use std::io;
use std::time::Duration;

/// Clock ticks per second used by `/proc/PID/stat`.
fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// User plus system CPU time of one process (all its threads), parsed from
/// `/proc/PID/stat` (`self` for this process).
pub fn process_cpu(pid: &str) -> io::Result<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_cpu(&stat, clock_ticks())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unparsable /proc stat"))
}

/// utime + stime from the text of `/proc/PID/stat`. The command name in
/// field 2 may contain spaces and parentheses, so fields are counted from
/// the last `)`.
fn parse_stat_cpu(stat: &str, ticks: u64) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")": state(3) ppid(4) ... utime(14) stime(15).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let total = utime + stime;
    Some(
        Duration::from_secs(total / ticks)
            + Duration::from_nanos(total % ticks * 1_000_000_000 / ticks),
    )
}

/// Direct children of a process, over all its threads.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        if let Ok(list) = fs::read_to_string(task.path().join("children")) {
            out.extend(
                list.split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// CPU time of `pid` plus all its live descendants (e.g. an nginx master
/// and its workers). Fails only if `pid` itself is gone.
pub fn tree_cpu(pid: u32) -> io::Result<Duration> {
    let mut total = process_cpu(&pid.to_string())?;
    let mut stack = children(pid);
    while let Some(child) = stack.pop() {
        if let Ok(cpu) = process_cpu(&child.to_string()) {
            total += cpu;
        }
        stack.extend(children(child));
    }
    Ok(total)
}

/// Sum of [`tree_cpu`] over several process trees.
pub fn trees_cpu(pids: &[u32]) -> io::Result<Duration> {
    pids.iter().map(|&p| tree_cpu(p)).sum()
}

/// This process's CPU time.
pub fn self_cpu() -> Duration {
    process_cpu("self").unwrap_or_default()
}

/// Raises this process's open-files soft limit to its hard limit (each
/// player is a socket); returns the limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(io::Error::last_os_error());
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                return Err(io::Error::last_os_error());
            }
            limit = raised;
        }
    }
    Ok(limit.rlim_cur)
}

/// Sets `SO_RCVLOWAT`: the kernel signals the socket readable (and wakes
/// a waiting reader) only once this many bytes are queued.
pub fn set_recv_lowat(socket: &impl std::os::fd::AsRawFd, bytes: i32) -> io::Result<()> {
    // SAFETY: setsockopt reads an int of the size passed.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes one discarding `recv` may take at a time.
const DISCARD_CHUNK: usize = 256 * 1024;

/// Discards everything queued on `socket` without copying it to user
/// space (`recv` with `MSG_TRUNC`, which TCP takes as "drop these bytes"),
/// leaving the socket's readiness cleared for tokio. `Some(bytes)`
/// discarded (0: nothing queued), `None` at end of stream.
pub fn discard_queued(socket: &tokio::net::TcpStream) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let fd = socket.as_raw_fd();
    let mut total = 0u64;
    loop {
        let discarded = socket.try_io(tokio::io::Interest::READABLE, || {
            // SAFETY: with MSG_TRUNC, TCP discards the bytes and never
            // writes to the buffer (tcp(7)), so none is passed.
            let n = unsafe {
                libc::recv(
                    fd,
                    std::ptr::null_mut(),
                    DISCARD_CHUNK,
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            };
            usize::try_from(n).map_err(|_| io::Error::last_os_error())
        });
        match discarded {
            Ok(0) => return Ok(None),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Some(total)),
            Err(e) => return Err(e),
        }
    }
}

/// Resident set size in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let stat = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1 2 3";
        assert_eq!(parse_stat_cpu(stat, 100), Some(Duration::from_secs(3)));
        assert_eq!(parse_stat_cpu("garbage", 100), None);
    }

    #[test]
    fn reads_own_process() {
        let pid = std::process::id();
        assert!(rss_kib(pid).expect("own rss") > 0);
        assert!(tree_cpu(pid).is_ok());
        let _ = self_cpu();
        assert!(raise_nofile_limit().expect("rlimit") > 0);
    }
}
