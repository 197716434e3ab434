//! Passing file descriptors between processes over a Unix stream socket.
//!
//! A smooth upgrade hands the old process's listening sockets to its
//! successor. The kernel can copy open file descriptors into another process
//! only as `SCM_RIGHTS` ancillary data on a Unix socket, so this module sends
//! and receives one *message* — a byte payload plus up to [`MAX_FDS`]
//! descriptors — with `sendmsg(2)`/`recvmsg(2)`.
//!
//! # Wire format
//!
//! A stream socket has no message boundaries, and the descriptors ride on the
//! first byte of the data they were sent with, so every message is framed
//! and the receiver never reads past the end of one message:
//!
//! ```text
//! +------+------+---------+-------+----------------+---------------------+
//! | 'B'  | 'T'  | version | n_fds | payload length | payload (len bytes) |
//! | u8   | u8   | u8 = 1  | u8    | u32 big endian |                     |
//! +------+------+---------+-------+----------------+---------------------+
//!   ^ the n_fds descriptors are attached (SCM_RIGHTS) to this first byte
//! ```
//!
//! The receiver checks that exactly `n_fds` descriptors arrived, so a peer
//! that reads the socket with plain `read(2)` (which silently closes passed
//! descriptors) or a truncated control buffer is reported instead of yielding
//! a message with missing listeners. Received descriptors are created with
//! `MSG_CMSG_CLOEXEC`, so they never leak into processes we spawn later.
//!
//! Both a blocking API (on anything that is a Unix stream socket, e.g.
//! [`std::os::unix::net::UnixStream`]) and an async API on
//! [`tokio::net::UnixStream`] are provided; they share one state machine that
//! performs a single non-blocking-safe syscall per step.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use tokio::io::Interest;

/// Most descriptors one message may carry.
pub const MAX_FDS: usize = 64;
/// Largest payload one message may carry (64 KiB).
pub const MAX_PAYLOAD: usize = 64 * 1024;

const MAGIC: [u8; 2] = *b"BT";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 8;
/// Linux refuses more than `SCM_MAX_FD` (253) descriptors per `sendmsg`, so a
/// control buffer that large can never be truncated by a peer sending "too
/// many" descriptors: we receive them all, then reject and close them.
const KERNEL_SCM_MAX_FD: usize = 253;

/// A received message: its payload and the descriptors that came with it, in
/// the order the sender listed them.
#[derive(Debug)]
pub struct Received {
    pub payload: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// Why sending or receiving a message failed.
#[derive(Debug, thiserror::Error)]
pub enum FdPassError {
    #[error("cannot pass {count} file descriptors in one message (max {MAX_FDS})")]
    TooManyFds { count: usize },
    #[error("payload of {len} bytes is larger than the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge { len: usize },
    #[error("peer closed the connection before sending a message")]
    Closed,
    #[error("peer closed the connection in the middle of a message ({got} of {expected} bytes)")]
    Truncated { got: usize, expected: usize },
    #[error("not a Baton fd-passing message (header {header:02x?}); is the peer a Baton control socket?")]
    BadHeader { header: [u8; HEADER_LEN] },
    #[error("message announced {expected} file descriptors but {got} arrived")]
    FdCountMismatch { expected: usize, got: usize },
    #[error("ancillary data was truncated by the kernel (MSG_CTRUNC); descriptors were lost")]
    ControlTruncated,
    #[error("timed out")]
    TimedOut,
    #[error("socket I/O failed: {0}")]
    Io(#[from] io::Error),
}

impl FdPassError {
    fn from_errno(e: Errno) -> Self {
        if e == Errno::EAGAIN || e == Errno::EWOULDBLOCK {
            // For a blocking socket this is SO_RCVTIMEO/SO_SNDTIMEO expiring.
            FdPassError::Io(io::Error::from(io::ErrorKind::WouldBlock))
        } else {
            FdPassError::Io(io::Error::from(e))
        }
    }

    fn is_would_block(&self) -> bool {
        matches!(self, FdPassError::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Blocking API: a would-block error there means a socket timeout fired.
    fn blocking(self) -> Self {
        if self.is_would_block() {
            FdPassError::TimedOut
        } else {
            self
        }
    }
}

/// Outgoing message state: header + payload in one buffer, fds attached to
/// the first successful `sendmsg`.
struct Sender {
    buf: Vec<u8>,
    pos: usize,
    fds: Vec<RawFd>,
    fds_sent: bool,
}

impl Sender {
    fn new(payload: &[u8], fds: &[BorrowedFd<'_>]) -> Result<Self, FdPassError> {
        if fds.len() > MAX_FDS {
            return Err(FdPassError::TooManyFds { count: fds.len() });
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(FdPassError::PayloadTooLarge { len: payload.len() });
        }
        let len = u32::try_from(payload.len())
            .map_err(|_| FdPassError::PayloadTooLarge { len: payload.len() })?;
        let n_fds =
            u8::try_from(fds.len()).map_err(|_| FdPassError::TooManyFds { count: fds.len() })?;
        let mut buf = Vec::with_capacity(HEADER_LEN + payload.len());
        buf.extend_from_slice(&MAGIC);
        buf.push(VERSION);
        buf.push(n_fds);
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(payload);
        Ok(Sender {
            buf,
            pos: 0,
            fds: fds.iter().map(|f| f.as_raw_fd()).collect(),
            fds_sent: false,
        })
    }

    /// One `sendmsg`; returns true once everything is sent.
    fn step(&mut self, sock: RawFd) -> Result<bool, FdPassError> {
        let iov = [IoSlice::new(&self.buf[self.pos..])];
        let rights = [ControlMessage::ScmRights(&self.fds)];
        let cmsgs: &[ControlMessage<'_>] = if self.fds_sent || self.fds.is_empty() {
            &[]
        } else {
            &rights
        };
        let n = sendmsg::<UnixAddr>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None)
            .map_err(FdPassError::from_errno)?;
        if n == 0 {
            return Err(FdPassError::Io(io::Error::from(io::ErrorKind::WriteZero)));
        }
        // Even a partial write carried the descriptors (they ride on the
        // first byte); never attach them twice.
        self.fds_sent = true;
        self.pos += n;
        Ok(self.pos == self.buf.len())
    }
}

/// Incoming message state. Reads the header, then exactly the announced
/// payload, collecting descriptors from whichever `recvmsg` delivers them.
struct Receiver {
    header: [u8; HEADER_LEN],
    header_got: usize,
    payload: Vec<u8>,
    payload_got: usize,
    fds: Vec<OwnedFd>,
    cmsg: Vec<u8>,
}

impl Receiver {
    fn new() -> Self {
        Receiver {
            header: [0; HEADER_LEN],
            header_got: 0,
            payload: Vec::new(),
            payload_got: 0,
            fds: Vec::new(),
            cmsg: nix::cmsg_space!([RawFd; KERNEL_SCM_MAX_FD]),
        }
    }

    fn expected_fds(&self) -> usize {
        usize::from(self.header[3])
    }

    /// One `recvmsg`; returns true once a whole message is in.
    fn step(&mut self, sock: RawFd) -> Result<bool, FdPassError> {
        let in_header = self.header_got < HEADER_LEN;
        let (n, truncated, raw_fds) = {
            let buf: &mut [u8] = if in_header {
                &mut self.header[self.header_got..]
            } else {
                &mut self.payload[self.payload_got..]
            };
            let mut iov = [IoSliceMut::new(buf)];
            let msg = recvmsg::<UnixAddr>(
                sock,
                &mut iov,
                Some(&mut self.cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(FdPassError::from_errno)?;
            let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
            let mut raw_fds = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        raw_fds.extend(fds);
                    }
                }
            }
            (msg.bytes, truncated, raw_fds)
        };
        for raw in raw_fds {
            // SAFETY: the kernel just installed `raw` into our descriptor
            // table for this message; nothing else refers to it yet.
            self.fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
        }
        if truncated {
            return Err(FdPassError::ControlTruncated);
        }
        if self.fds.len() > MAX_FDS {
            return Err(FdPassError::TooManyFds {
                count: self.fds.len(),
            });
        }
        if n == 0 {
            let got = self.header_got + self.payload_got;
            return Err(if got == 0 {
                FdPassError::Closed
            } else {
                let expected = if in_header {
                    HEADER_LEN
                } else {
                    HEADER_LEN + self.payload.len()
                };
                FdPassError::Truncated { got, expected }
            });
        }
        if in_header {
            self.header_got += n;
            if self.header_got < HEADER_LEN {
                return Ok(false);
            }
            if self.header[..2] != MAGIC || self.header[2] != VERSION {
                return Err(FdPassError::BadHeader {
                    header: self.header,
                });
            }
            if self.expected_fds() > MAX_FDS {
                return Err(FdPassError::TooManyFds {
                    count: self.expected_fds(),
                });
            }
            let len_bytes = [
                self.header[4],
                self.header[5],
                self.header[6],
                self.header[7],
            ];
            let len = u32::from_be_bytes(len_bytes) as usize;
            if len > MAX_PAYLOAD {
                return Err(FdPassError::PayloadTooLarge { len });
            }
            self.payload = vec![0; len];
        } else {
            self.payload_got += n;
        }
        Ok(self.header_got == HEADER_LEN && self.payload_got == self.payload.len())
    }

    fn finish(self) -> Result<Received, FdPassError> {
        let expected = self.expected_fds();
        if self.fds.len() != expected {
            return Err(FdPassError::FdCountMismatch {
                expected,
                got: self.fds.len(),
            });
        }
        Ok(Received {
            payload: self.payload,
            fds: self.fds,
        })
    }
}

/// Sends `payload` with `fds` attached over a *blocking* Unix stream socket.
///
/// The descriptors are duplicated into the peer when it receives them; the
/// caller keeps its own copies. A send timeout set with
/// `set_write_timeout` surfaces as [`FdPassError::TimedOut`].
pub fn send_msg(
    sock: &impl AsFd,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), FdPassError> {
    let raw = sock.as_fd().as_raw_fd();
    let mut sender = Sender::new(payload, fds)?;
    loop {
        match sender.step(raw) {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(FdPassError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.blocking()),
        }
    }
}

/// Receives one message from a *blocking* Unix stream socket.
///
/// Returned descriptors are close-on-exec. A receive timeout set with
/// `set_read_timeout` surfaces as [`FdPassError::TimedOut`].
pub fn recv_msg(sock: &impl AsFd) -> Result<Received, FdPassError> {
    let raw = sock.as_fd().as_raw_fd();
    let mut receiver = Receiver::new();
    loop {
        match receiver.step(raw) {
            Ok(true) => return receiver.finish(),
            Ok(false) => {}
            Err(FdPassError::Io(e)) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.blocking()),
        }
    }
}

/// Async [`send_msg`] on a tokio Unix stream (cancel with
/// `tokio::time::timeout`; a cancelled send leaves the stream unusable).
pub async fn send_msg_async(
    sock: &tokio::net::UnixStream,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), FdPassError> {
    let raw = sock.as_raw_fd();
    let mut sender = Sender::new(payload, fds)?;
    loop {
        let done = sock
            .async_io(Interest::WRITABLE, || match sender.step(raw) {
                Err(FdPassError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    Err(e)
                }
                other => Ok(other),
            })
            .await??;
        if done {
            return Ok(());
        }
    }
}

/// Async [`recv_msg`] on a tokio Unix stream (cancel with
/// `tokio::time::timeout`; descriptors already received are closed).
pub async fn recv_msg_async(sock: &tokio::net::UnixStream) -> Result<Received, FdPassError> {
    let raw = sock.as_raw_fd();
    let mut receiver = Receiver::new();
    loop {
        let done = sock
            .async_io(Interest::READABLE, || match receiver.step(raw) {
                Err(FdPassError::Io(e))
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    Err(e)
                }
                other => Ok(other),
            })
            .await??;
        if done {
            return receiver.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;

    #[test]
    fn passes_three_fds_and_payload() {
        let (a, b) = UnixStream::pair().unwrap();
        let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let (pr, pw) = nix::unistd::pipe().unwrap();
        let addr1 = l1.local_addr().unwrap();
        let addr2 = l2.local_addr().unwrap();

        send_msg(&a, b"hello fds", &[l1.as_fd(), l2.as_fd(), pw.as_fd()]).unwrap();
        // Drop our copies: the received ones must keep the sockets alive.
        drop((l1, l2, pw));
        let got = recv_msg(&b).unwrap();
        assert_eq!(got.payload, b"hello fds");
        assert_eq!(got.fds.len(), 3);
        for fd in &got.fds {
            let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
            assert!(
                nix::fcntl::FdFlag::from_bits_truncate(flags)
                    .contains(nix::fcntl::FdFlag::FD_CLOEXEC),
                "received fd must be close-on-exec"
            );
        }
        let mut fds = got.fds.into_iter();
        for addr in [addr1, addr2] {
            let listener = TcpListener::from(fds.next().unwrap());
            assert_eq!(listener.local_addr().unwrap(), addr);
            let mut client = TcpStream::connect(addr).unwrap();
            let (mut server, _) = listener.accept().unwrap();
            server.write_all(b"x").unwrap();
            let mut byte = [0u8; 1];
            client.read_exact(&mut byte).unwrap();
            assert_eq!(&byte, b"x");
        }
        let mut w = std::fs::File::from(fds.next().unwrap());
        w.write_all(b"p").unwrap();
        let mut r = std::fs::File::from(pr);
        let mut byte = [0u8; 1];
        r.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"p");
    }

    #[test]
    fn large_payload_and_back_to_back_messages_keep_their_fds() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_r1, w1) = nix::unistd::pipe().unwrap();
        let (_r2, w2) = nix::unistd::pipe().unwrap();
        let big = vec![7u8; MAX_PAYLOAD];
        let sender = std::thread::spawn(move || {
            send_msg(&a, &big, &[w1.as_fd()]).unwrap();
            send_msg(&a, b"second", &[w2.as_fd(), w2.as_fd()]).unwrap();
            send_msg(&a, b"third, no fds", &[]).unwrap();
        });
        let m1 = recv_msg(&b).unwrap();
        assert_eq!(m1.payload.len(), MAX_PAYLOAD);
        assert_eq!(m1.fds.len(), 1);
        let m2 = recv_msg(&b).unwrap();
        assert_eq!(m2.payload, b"second");
        assert_eq!(m2.fds.len(), 2);
        let m3 = recv_msg(&b).unwrap();
        assert_eq!(m3.payload, b"third, no fds");
        assert!(m3.fds.is_empty());
        sender.join().unwrap();
        assert!(matches!(recv_msg(&b), Err(FdPassError::Closed)));
    }

    #[test]
    fn limits_and_garbage_are_clear_errors() {
        let (a, b) = UnixStream::pair().unwrap();
        let (_r, w) = nix::unistd::pipe().unwrap();
        let many: Vec<BorrowedFd<'_>> = (0..MAX_FDS + 1).map(|_| w.as_fd()).collect();
        assert!(matches!(
            send_msg(&a, b"x", &many),
            Err(FdPassError::TooManyFds { count: 65 })
        ));
        assert!(matches!(
            send_msg(&a, &vec![0; MAX_PAYLOAD + 1], &[]),
            Err(FdPassError::PayloadTooLarge { .. })
        ));
        (&a).write_all(b"GET / HTTP/1.1\r\n").unwrap();
        assert!(matches!(recv_msg(&b), Err(FdPassError::BadHeader { .. })));

        let (a, b) = UnixStream::pair().unwrap();
        // Header announcing 1 fd and a 4-byte payload, but no fd attached.
        (&a).write_all(&[b'B', b'T', 1, 1, 0, 0, 0, 4, 1, 2, 3, 4])
            .unwrap();
        assert!(matches!(
            recv_msg(&b),
            Err(FdPassError::FdCountMismatch {
                expected: 1,
                got: 0
            })
        ));

        let (a, b) = UnixStream::pair().unwrap();
        (&a).write_all(&[b'B', b'T', 1, 0, 0, 0, 0, 9, 1]).unwrap();
        drop(a);
        assert!(matches!(
            recv_msg(&b),
            Err(FdPassError::Truncated {
                got: 9,
                expected: 17
            })
        ));

        let (_a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(std::time::Duration::from_millis(50)))
            .unwrap();
        assert!(matches!(recv_msg(&b), Err(FdPassError::TimedOut)));
    }

    #[tokio::test]
    async fn async_round_trip() {
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let payload = vec![3u8; 60_000];
        let fds = [l.as_fd()];
        let send = send_msg_async(&a, &payload, &fds);
        let recv = recv_msg_async(&b);
        let (sent, got) = tokio::join!(send, recv);
        sent.unwrap();
        let got = got.unwrap();
        assert_eq!(got.payload, payload);
        let fd = got.fds.into_iter().next().unwrap();
        assert_eq!(TcpListener::from(fd).local_addr().unwrap(), addr);
    }
}
