//! Creating and adopting listening TCP sockets for the hand-over.
//!
//! A process gets its listeners one of two ways: it binds them itself
//! ([`bind_listener`], first start or when no predecessor offers them), or it
//! adopts descriptors handed over by its predecessor ([`listener_from_fd`]).
//! Either way the result is a non-blocking [`std::net::TcpListener`] that
//! [`into_tokio`] turns into a tokio listener. Keeping both paths here means
//! the origin and the edge create sockets with identical options.
//!
//! `SO_REUSEPORT` is only a fallback (e.g. a predecessor that is still
//! running but cannot hand over): two REUSEPORT sockets have *separate*
//! accept queues, and closing one resets the connections queued on it.
//! Handing over the very same socket has one queue and loses nothing.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Accept-queue length asked for by default (the kernel caps it at
/// `net.core.somaxconn`).
pub const DEFAULT_BACKLOG: i32 = 4096;

/// Why [`bind_listener`] failed. [`BindError::AddrInUse`] is separate so the
/// caller can say who holds the port (e.g. the PID from the PID file).
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {addr}: address already in use")]
    AddrInUse {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Other {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl BindError {
    pub fn is_addr_in_use(&self) -> bool {
        matches!(self, BindError::AddrInUse { .. })
    }

    pub fn addr(&self) -> SocketAddr {
        match self {
            BindError::AddrInUse { addr, .. } | BindError::Other { addr, .. } => *addr,
        }
    }
}

/// Binds a non-blocking, close-on-exec TCP listener on `addr`.
///
/// `SO_REUSEADDR` is always set (restart while old connections sit in
/// TIME_WAIT); `SO_REUSEPORT` only when `reuseport` is true.
pub fn bind_listener(
    addr: SocketAddr,
    reuseport: bool,
    backlog: i32,
) -> Result<std::net::TcpListener, BindError> {
    let wrap = |source: io::Error| {
        if source.kind() == io::ErrorKind::AddrInUse {
            BindError::AddrInUse { addr, source }
        } else {
            BindError::Other { addr, source }
        }
    };
    // socket2 creates the socket with SOCK_CLOEXEC on Linux.
    let socket =
        Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(wrap)?;
    socket.set_reuse_address(true).map_err(wrap)?;
    if reuseport {
        socket.set_reuse_port(true).map_err(wrap)?;
    }
    socket.bind(&addr.into()).map_err(wrap)?;
    socket.listen(backlog).map_err(wrap)?;
    socket.set_nonblocking(true).map_err(wrap)?;
    Ok(socket.into())
}

/// Adopts a handed-over descriptor as a non-blocking TCP listener, checking
/// that it really is a listening TCP socket (a clear error beats an accept
/// loop failing with ENOTSOCK/EINVAL later).
pub fn listener_from_fd(fd: OwnedFd) -> io::Result<std::net::TcpListener> {
    let socket = Socket::from(fd);
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let domain = socket
        .domain()
        .map_err(|e| bad(format!("handed-over descriptor is not a socket: {e}")))?;
    if domain != Domain::IPV4 && domain != Domain::IPV6 {
        return Err(bad(format!(
            "handed-over socket is not an IP socket ({domain:?})"
        )));
    }
    let ty = socket.r#type()?;
    if ty != Type::STREAM {
        return Err(bad(format!(
            "handed-over socket is not a stream socket ({ty:?})"
        )));
    }
    if !socket.is_listener()? {
        return Err(bad("handed-over socket is not listening".to_owned()));
    }
    socket.set_cloexec(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Registers a std listener with the current tokio runtime (sets it
/// non-blocking first, in case it came from elsewhere).
pub fn into_tokio(listener: std::net::TcpListener) -> io::Result<tokio::net::TcpListener> {
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
}

/// Duplicates a listener's descriptor (close-on-exec) for handing over; the
/// caller keeps accepting on its own copy until the successor is ready.
pub fn dup_fd(listener: &impl AsFd) -> io::Result<OwnedFd> {
    listener.as_fd().try_clone_to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_in_use_is_recognisable() {
        let first = bind_listener("127.0.0.1:0".parse().unwrap(), false, 16).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind_listener(addr, false, 16).unwrap_err();
        assert!(err.is_addr_in_use(), "{err}");
        assert_eq!(err.addr(), addr);
        assert!(err.to_string().contains("already in use"), "{err}");
    }

    #[test]
    fn reuseport_allows_a_second_bind() {
        let first = bind_listener("127.0.0.1:0".parse().unwrap(), true, 16).unwrap();
        let addr = first.local_addr().unwrap();
        let second = bind_listener(addr, true, 16).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
    }

    #[test]
    fn adopting_checks_the_descriptor() {
        let l = bind_listener("127.0.0.1:0".parse().unwrap(), false, 16).unwrap();
        let addr = l.local_addr().unwrap();
        let adopted = listener_from_fd(dup_fd(&l).unwrap()).unwrap();
        assert_eq!(adopted.local_addr().unwrap(), addr);

        let (_r, w) = nix::unistd::pipe().unwrap();
        let err = listener_from_fd(w).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");

        let unbound = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let err = listener_from_fd(OwnedFd::from(unbound)).unwrap_err();
        assert!(err.to_string().contains("not listening"), "{err}");

        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = listener_from_fd(OwnedFd::from(udp)).unwrap_err();
        assert!(err.to_string().contains("not a stream"), "{err}");
    }
}
