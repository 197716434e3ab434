//! A fault-injecting TCP proxy for failover tests.
//!
//! An edge must survive an origin that disappears in different ways: a
//! process that dies (its kernel resets the connections: use
//! [`crate::node::Node::kill`]), a host that hangs (use
//! [`crate::node::Node::freeze`]) and a network that breaks between the
//! two while both processes are fine. The last one cannot be made with
//! signals, so tests put a [`FaultProxy`] between the edge and an origin
//! (`Node::edge_builder().origin_addr(proxy.listen_addr(), ..)`) and flip
//! its [`Mode`]:
//!
//! - [`Mode::Forward`]: bytes flow both ways, half-closes are passed on;
//! - [`Mode::Blackhole`]: nothing is read or written in either direction,
//!   every socket stays open, no FIN or RST is sent — a cut cable or a
//!   dropped route. Data already read is held, not dropped, and the
//!   kernel buffers fill up as they would behind a dead link, so going
//!   back to `Forward` behaves like the network healing. New connections
//!   are accepted but not connected upstream until forwarding resumes;
//! - [`Mode::Reset`]: every current connection is aborted with an RST on
//!   both sides (SO_LINGER 0), and new ones are accepted and reset at once
//!   (the client sees its connection reset rather than refused, as the
//!   listening port stays reserved for the proxy).
//!
//! Only loopback targets are accepted. Dropping the proxy resets every
//! connection it carries.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a new connection waits for the upstream TCP handshake.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What the proxy does with traffic; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Blackhole,
    Reset,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicUsize,
    accepted: AtomicU64,
}

/// Decrements the open-connection count when a connection task ends.
struct OpenGuard(Arc<Counters>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A TCP proxy on a free 127.0.0.1 port in front of one loopback target;
/// see the module docs.
pub struct FaultProxy {
    listen: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards every connection to
    /// `target` (which must be a loopback address). Must be called inside
    /// a tokio runtime.
    pub fn start(target: SocketAddr) -> FaultProxy {
        assert!(
            target.ip().is_loopback(),
            "FaultProxy only proxies to loopback addresses, not {target}"
        );
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("FaultProxy: binding 127.0.0.1:0: {e}"));
        std_listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("FaultProxy: set_nonblocking: {e}"));
        let listen = std_listener
            .local_addr()
            .unwrap_or_else(|e| panic!("FaultProxy: local_addr: {e}"));
        let listener = TcpListener::from_std(std_listener)
            .unwrap_or_else(|e| panic!("FaultProxy: registering the listener with tokio: {e}"));
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let counters = Arc::new(Counters::default());
        let accept_task = tokio::spawn(accept_loop(listener, target, mode_rx, counters.clone()));
        FaultProxy {
            listen,
            target,
            mode,
            counters,
            accept_task,
        }
    }

    /// Where clients connect.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// Where connections are forwarded.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Switches every current and future connection to `mode`.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_if_modified(|current| {
            let changed = *current != mode;
            *current = mode;
            changed
        });
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Connections open right now (accepted and not yet closed).
    pub fn connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    /// Connections accepted since the start (including reset ones).
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Polls (every 10 ms, for at most `limit`) until [`Self::connections`]
    /// equals `n`; returns whether it did.
    pub async fn wait_connections(&self, n: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.connections() == n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Connection tasks see the mode sender go away and reset.
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(e) => {
                // E.g. EMFILE: back off instead of spinning.
                eprintln!("baton-tests: FaultProxy accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        counters.accepted.fetch_add(1, Ordering::SeqCst);
        counters.open.fetch_add(1, Ordering::SeqCst);
        let guard = OpenGuard(counters.clone());
        tokio::spawn(connection(client, target, mode.clone(), guard));
    }
}

/// How a direction or a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// EOF read and passed on as a FIN.
    Eof,
    /// Reset mode, an I/O error, or the proxy was dropped: abort both sides.
    Abort,
}

/// Aborts `stream`'s connection with an RST when its last handle closes.
fn set_reset_on_close(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Waits until the mode is `Forward` (`Abort` on `Reset` or if the proxy
/// is gone).
async fn wait_forward(mode: &mut watch::Receiver<Mode>) -> Result<(), End> {
    loop {
        match *mode.borrow_and_update() {
            Mode::Forward => return Ok(()),
            Mode::Reset => return Err(End::Abort),
            Mode::Blackhole => {}
        }
        mode.changed().await.map_err(|_| End::Abort)?;
    }
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    _open: OpenGuard,
) {
    // A blackholed network does not reach the target either.
    if wait_forward(&mut mode).await.is_err() {
        set_reset_on_close(&client);
        return;
    }
    let upstream = tokio::select! {
        connected = tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(target)) => {
            match connected {
                Ok(Ok(upstream)) => upstream,
                _ => {
                    set_reset_on_close(&client);
                    return;
                }
            }
        }
        _ = wait_reset(mode.clone()) => {
            set_reset_on_close(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let (mut client, mut upstream) = (client, upstream);
    let abort = {
        // Borrowed halves: unlike tokio's owned halves they send no FIN
        // when dropped, so an abort below is a bare RST.
        let (client_r, client_w) = client.split();
        let (up_r, up_w) = upstream.split();
        let to_upstream = pump(client_r, up_w, mode.clone());
        let to_client = pump(up_r, client_w, mode);
        tokio::pin!(to_upstream, to_client);
        let (mut up_done, mut client_done) = (false, false);
        loop {
            tokio::select! {
                end = &mut to_upstream, if !up_done => {
                    if end == End::Abort {
                        break true;
                    }
                    up_done = true;
                }
                end = &mut to_client, if !client_done => {
                    if end == End::Abort {
                        break true;
                    }
                    client_done = true;
                }
            }
            if up_done && client_done {
                break false;
            }
        }
    };
    if abort {
        set_reset_on_close(&client);
        set_reset_on_close(&upstream);
    }
    // Both sockets close here.
}

/// Resolves once the mode is `Reset` or the proxy is gone.
async fn wait_reset(mut mode: watch::Receiver<Mode>) {
    loop {
        if *mode.borrow_and_update() == Mode::Reset {
            return;
        }
        if mode.changed().await.is_err() {
            return;
        }
    }
}

/// Copies `from` to `to` while the mode allows it.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    mut mode: watch::Receiver<Mode>,
) -> End {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if let Err(end) = wait_forward(&mut mode).await {
            return end;
        }
        // Reads are cancel-safe: a mode change abandons this one unread.
        let read = tokio::select! {
            read = from.read(&mut buf) => read,
            changed = mode.changed() => {
                if changed.is_err() {
                    return End::Abort;
                }
                continue;
            }
        };
        let n = match read {
            Ok(0) => {
                let _ = to.shutdown().await;
                return End::Eof;
            }
            Ok(n) => n,
            Err(_) => return End::Abort,
        };
        // Write it all, holding what is left while blackholed.
        let mut written = 0;
        while written < n {
            if let Err(end) = wait_forward(&mut mode).await {
                return end;
            }
            tokio::select! {
                result = to.write(&buf[written..n]) => match result {
                    Ok(0) | Err(_) => return End::Abort,
                    Ok(k) => written += k,
                },
                changed = mode.changed() => {
                    if changed.is_err() {
                        return End::Abort;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on a free loopback port; returns its address.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("echo within 5 s")
            .unwrap();
        assert_eq!(got, msg);
    }

    #[tokio::test]
    async fn forwards_both_ways_and_passes_half_close_on() {
        let proxy = FaultProxy::start(echo_server().await);
        let mut s = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        roundtrip(&mut s, b"hello").await;
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let (mut r, mut w) = s.into_split();
        let writer = tokio::spawn(async move {
            w.write_all(&big).await.unwrap();
            w.shutdown().await.unwrap();
            big
        });
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), r.read_to_end(&mut got))
            .await
            .expect("echo and EOF within 5 s")
            .unwrap();
        assert_eq!(got, writer.await.unwrap());
        assert_eq!(proxy.accepted(), 1);
        assert!(proxy.wait_connections(0, Duration::from_secs(2)).await);
    }

    #[tokio::test]
    async fn blackhole_holds_traffic_silently_until_forwarding_resumes() {
        let proxy = FaultProxy::start(echo_server().await);
        let mut s = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        roundtrip(&mut s, b"before").await;
        proxy.set_mode(Mode::Blackhole);
        s.write_all(b"during").await.unwrap();
        let mut got = [0u8; 6];
        let read = tokio::time::timeout(Duration::from_millis(300), s.read(&mut got)).await;
        assert!(
            read.is_err(),
            "nothing may arrive while blackholed: {read:?}"
        );
        // A new connection is accepted but not served either.
        let mut late = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        late.write_all(b"late").await.unwrap();
        let read = tokio::time::timeout(Duration::from_millis(200), late.read(&mut got)).await;
        assert!(
            read.is_err(),
            "nothing may arrive while blackholed: {read:?}"
        );
        assert_eq!(proxy.connections(), 2);
        proxy.set_mode(Mode::Forward);
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .expect("held data delivered after forwarding resumes")
            .unwrap();
        assert_eq!(&got, b"during");
        let mut got = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), late.read_exact(&mut got))
            .await
            .expect("the late connection is served after forwarding resumes")
            .unwrap();
        assert_eq!(&got, b"late");
    }

    #[tokio::test]
    async fn reset_aborts_current_connections_and_new_ones() {
        let proxy = FaultProxy::start(echo_server().await);
        let mut s = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        roundtrip(&mut s, b"hi").await;
        proxy.set_mode(Mode::Reset);
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("the reset arrives within 2 s");
        assert_eq!(
            read.map_err(|e| e.kind()).unwrap_err(),
            std::io::ErrorKind::ConnectionReset
        );
        assert!(proxy.wait_connections(0, Duration::from_secs(2)).await);
        // New connections are reset at once (the handshake itself may
        // complete, as the kernel accepts before the proxy does).
        if let Ok(mut again) = TcpStream::connect(proxy.listen_addr()).await {
            let read = tokio::time::timeout(Duration::from_secs(2), again.read(&mut buf))
                .await
                .expect("the new connection is closed within 2 s");
            assert!(
                matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                "{read:?}"
            );
        }
        // And forwarding works again afterwards.
        proxy.set_mode(Mode::Forward);
        let mut s = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        roundtrip(&mut s, b"back").await;
    }

    #[tokio::test]
    async fn reset_reaches_the_upstream_side_too() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 8];
            let first = s.read(&mut buf).await.map_err(|e| e.kind());
            let second = s.read(&mut buf).await.map_err(|e| e.kind());
            let _ = tx.send((first, second));
        });
        let proxy = FaultProxy::start(target);
        let mut s = TcpStream::connect(proxy.listen_addr()).await.unwrap();
        s.write_all(b"x").await.unwrap();
        // Let "x" reach the upstream before resetting.
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.set_mode(Mode::Reset);
        let (first, second) = tokio::time::timeout(Duration::from_secs(2), rx)
            .await
            .expect("the upstream sees the reset within 2 s")
            .unwrap();
        assert_eq!(first, Ok(1));
        assert_eq!(second, Err(std::io::ErrorKind::ConnectionReset));
    }
}
