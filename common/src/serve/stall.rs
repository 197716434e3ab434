//! Write-stall detection for connections whose writes happen inside a
//! library (hyper): the socket wrapper notes since when a write has been
//! blocked, and the connection task closes it once that exceeds the
//! player write timeout. Without this, a player that stops reading would
//! hold its connection (and a drain) open forever.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Shared view of a [`StallIo`]'s write state.
#[derive(Clone, Debug)]
pub struct StallClock {
    epoch: Instant,
    /// Milliseconds since `epoch` at which the current blocked write began,
    /// 0 when no write is blocked.
    blocked_since_ms: Arc<AtomicU64>,
    bytes_written: Arc<AtomicU64>,
}

impl StallClock {
    /// How long the pending write has been blocked.
    pub fn blocked_for(&self) -> Duration {
        match self.blocked_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(
                (self.epoch.elapsed().as_millis() as u64).saturating_sub(since),
            ),
        }
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }
}

pub struct StallIo<T> {
    inner: T,
    clock: StallClock,
}

impl<T> StallIo<T> {
    pub fn new(inner: T) -> (Self, StallClock) {
        let clock = StallClock {
            epoch: Instant::now(),
            blocked_since_ms: Arc::new(AtomicU64::new(0)),
            bytes_written: Arc::new(AtomicU64::new(0)),
        };
        (
            StallIo {
                inner,
                clock: clock.clone(),
            },
            clock,
        )
    }

    fn note<R>(&self, poll: &Poll<io::Result<R>>, written: impl FnOnce(&R) -> usize) {
        match poll {
            Poll::Pending => {
                if self.clock.blocked_since_ms.load(Ordering::Relaxed) == 0 {
                    let now = (self.clock.epoch.elapsed().as_millis() as u64).max(1);
                    self.clock.blocked_since_ms.store(now, Ordering::Relaxed);
                }
            }
            Poll::Ready(result) => {
                self.clock.blocked_since_ms.store(0, Ordering::Relaxed);
                if let Ok(r) = result {
                    self.clock
                        .bytes_written
                        .fetch_add(written(r) as u64, Ordering::Relaxed);
                }
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note(&poll, |n| *n);
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(&poll, |n| *n);
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(&poll, |_| 0);
        poll
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
