//! The network between the edges and an origin, made faulty on demand.
//!
//! Signals cover processes that die or hang; a link that breaks, slows
//! down or starves while both ends are fine needs something on the path.
//! Every edge reaches origin N only through this proxy (on the origin's
//! own "network" loopback address), so all edges see the same address for
//! an origin (their rendezvous ranking agrees) and a fault here hits every
//! edge's link to that origin at once. Modes:
//!
//! - `Forward`: bytes flow both ways, EOF passes as a half-close;
//! - `Blackhole`: nothing is read or written, sockets stay open (a cut
//!   cable); new connections wait before being connected upstream;
//! - `Delay(d)`: every chunk is written `d` after it was read;
//! - `Throttle(r)`: each direction carries at most `r` bytes per second;
//! - `Reset`: every connection is aborted with an RST, new ones too;
//! - `Loss(bp)`: packet loss as TCP sees it, emulated: each chunk is, with
//!   probability `bp` / 10 000, held for a retransmission timeout (200 ms,
//!   Linux's minimum RTO) before it and everything after it is written.
//!   (Mode 2 drops real packets in the kernel instead.)
//!
//! Only loopback targets are accepted.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use socket2::SockRef;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the proxy does with traffic; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Blackhole,
    Delay(Duration),
    Throttle(u64),
    Reset,
    /// Loss in basis points (1/10 000).
    Loss(u32),
}

/// What a lost segment costs a TCP stream: Linux's minimum RTO.
const RETRANSMIT: Duration = Duration::from_millis(200);

/// xorshift64*, seeded per connection direction: good enough to pick lost
/// chunks, no dependency.
struct Dice(u64);

impl Dice {
    fn new() -> Dice {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        Dice(nanos | 1)
    }

    /// Whether an event of probability `bp` / 10 000 happens.
    fn hits(&mut self, bp: u32) -> bool {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % 10_000 < u64::from(bp)
    }
}

const CHUNK: usize = 4096;
const QUEUE: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A proxy on `listen_ip` in front of one loopback target.
pub struct Proxy {
    listen: SocketAddr,
    mode: watch::Sender<Mode>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on `listen` (port 0: any free one) and forwards to `target`.
    pub async fn start_on(listen: SocketAddr, target: SocketAddr) -> anyhow::Result<Proxy> {
        let listen_ip = listen.ip();
        if !target.ip().is_loopback() || !listen_ip.is_loopback() {
            bail!("the chaos proxy only runs on loopback (asked {listen_ip} -> {target})");
        }
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding a proxy on {listen}"))?;
        let listen = listener.local_addr().context("proxy local_addr")?;
        let (mode, mode_rx) = watch::channel(Mode::Forward);
        let task = tokio::spawn(accept_loop(listener, target, mode_rx));
        Ok(Proxy { listen, mode, task })
    }

    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, mode: watch::Receiver<Mode>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(connection(client, target, mode.clone()));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn abort(stream: &TcpStream) {
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// Waits while the mode is `Blackhole`; `false` on `Reset` or when the
/// proxy is gone.
async fn passable(mode: &mut watch::Receiver<Mode>) -> bool {
    loop {
        match *mode.borrow_and_update() {
            Mode::Reset => return false,
            Mode::Blackhole => {}
            _ => return true,
        }
        if mode.changed().await.is_err() {
            return false;
        }
    }
}

async fn connection(client: TcpStream, target: SocketAddr, mut mode: watch::Receiver<Mode>) {
    let _ = client.set_nodelay(true);
    if !passable(&mut mode).await {
        abort(&client);
        return;
    }
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        _ => {
            abort(&client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = tokio::spawn(direction(cr, uw, mode.clone()));
    let down = tokio::spawn(direction(ur, cw, mode.clone()));
    let _ = tokio::join!(up, down);
}

/// One direction: a reader feeding a writer through a bounded queue, so
/// a delay does not cut throughput and a full queue pushes back on TCP.
/// `None` in the queue is a clean EOF; a queue closed without it (reset,
/// read error) aborts the writer's side with an RST.
async fn direction(mut rd: OwnedReadHalf, mut wr: OwnedWriteHalf, mode: watch::Receiver<Mode>) {
    let (tx, mut rx) = mpsc::channel::<Option<(Instant, Vec<u8>)>>(QUEUE);
    let mut read_mode = mode.clone();
    let reader = async move {
        let mut buf = vec![0u8; CHUNK];
        loop {
            if !passable(&mut read_mode).await {
                return;
            }
            tokio::select! {
                read = rd.read(&mut buf) => match read {
                    Ok(0) => {
                        let _ = tx.send(None).await;
                        return;
                    }
                    Ok(n) => {
                        if tx.send(Some((Instant::now(), buf[..n].to_vec()))).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                changed = read_mode.changed() => if changed.is_err() { return },
            }
        }
    };
    let mut write_mode = mode;
    let mut dice = Dice::new();
    let writer = async move {
        loop {
            let next = tokio::select! {
                next = rx.recv() => next,
                _ = async {
                    while !matches!(*write_mode.borrow_and_update(), Mode::Reset) {
                        if write_mode.changed().await.is_err() {
                            return;
                        }
                    }
                } => None,
            };
            let Some(Some((read_at, chunk))) = next else {
                if matches!(next, Some(None)) {
                    let _ = wr.shutdown().await;
                } else {
                    abort(wr.as_ref());
                }
                return;
            };
            if !passable(&mut write_mode).await {
                abort(wr.as_ref());
                return;
            }
            let current = *write_mode.borrow();
            match current {
                Mode::Delay(d) => tokio::time::sleep_until(read_at + d).await,
                Mode::Throttle(rate) => {
                    let secs = chunk.len() as f64 / rate.max(1) as f64;
                    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
                }
                Mode::Loss(bp) if dice.hits(bp) => tokio::time::sleep(RETRANSMIT).await,
                _ => {}
            }
            if !passable(&mut write_mode).await || wr.write_all(&chunk).await.is_err() {
                abort(wr.as_ref());
                return;
            }
        }
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dice_hit_about_as_often_as_asked() {
        let mut d = Dice(0x1234_5678_9abc_def1);
        let hits = (0..100_000).filter(|_| d.hits(500)).count();
        assert!((4_000..6_000).contains(&hits), "{hits}");
        assert!(!(0..1000).any(|_| d.hits(0)));
        assert!((0..1000).all(|_| d.hits(10_000)));
    }

    #[tokio::test]
    async fn forwards_delays_and_resets() -> anyhow::Result<()> {
        let echo = TcpListener::bind("127.0.0.1:0").await?;
        let target = echo.local_addr()?;
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = Proxy::start_on("127.0.0.1:0".parse()?, target).await?;
        let mut c = TcpStream::connect(proxy.listen_addr()).await?;
        let mut buf = [0u8; 4];
        c.write_all(b"ping").await?;
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"ping");
        proxy.set_mode(Mode::Delay(Duration::from_millis(150)));
        let t = std::time::Instant::now();
        c.write_all(b"pong").await?;
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut buf)).await??;
        assert!(
            t.elapsed() >= Duration::from_millis(280),
            "{:?}",
            t.elapsed()
        );
        proxy.set_mode(Mode::Loss(10_000));
        let t = std::time::Instant::now();
        c.write_all(b"lost").await?;
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut buf)).await??;
        assert_eq!(&buf, b"lost");
        assert!(t.elapsed() >= 2 * RETRANSMIT, "{:?}", t.elapsed());
        proxy.set_mode(Mode::Reset);
        let r = tokio::time::timeout(Duration::from_secs(2), c.read(&mut buf)).await?;
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        Ok(())
    }
}
