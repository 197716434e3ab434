//! Write-stall detection for connections whose writes happen inside a
//! library (hyper): once a write has been blocked for the player write
//! timeout, the socket wrapper fails it, and hyper ends the connection.
//! Without this, a player that stops reading would hold its connection
//! (and a drain) open forever.
//!
//! The deadline is armed only when a write blocks and dropped as soon as
//! one goes through, so a player that keeps up costs no timer at all, and
//! nothing polls the connection on a clock.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// Shared view of a [`StallIo`]'s write state.
#[derive(Clone, Debug, Default)]
pub struct StallClock {
    stalled: Arc<AtomicBool>,
    bytes_written: Arc<AtomicU64>,
}

impl StallClock {
    /// Whether a write was failed for blocking past the limit.
    pub fn stalled(&self) -> bool {
        self.stalled.load(Ordering::Relaxed)
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.load(Ordering::Relaxed)
    }
}

pub struct StallIo<T> {
    inner: T,
    clock: StallClock,
    limit: Duration,
    /// Armed while a write is blocked.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<T> StallIo<T> {
    /// Wraps `inner`; a write blocked for `limit` fails with `TimedOut`.
    pub fn new(inner: T, limit: Duration) -> (Self, StallClock) {
        let clock = StallClock::default();
        (
            StallIo {
                inner,
                clock: clock.clone(),
                limit,
                deadline: None,
            },
            clock,
        )
    }

    fn note<R>(
        &mut self,
        cx: &mut Context<'_>,
        poll: Poll<io::Result<R>>,
        written: impl FnOnce(&R) -> usize,
    ) -> Poll<io::Result<R>> {
        match poll {
            Poll::Pending => {
                let limit = self.limit;
                let deadline = self
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if deadline.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.clock.stalled.store(true, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("player accepted no data for {limit:?}"),
                )))
            }
            Poll::Ready(result) => {
                self.deadline = None;
                if let Ok(r) = &result {
                    self.clock
                        .bytes_written
                        .fetch_add(written(r) as u64, Ordering::Relaxed);
                }
                Poll::Ready(result)
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
        self.note(cx, poll, |n| *n)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note(cx, poll, |n| *n)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.note(cx, poll, |_| 0)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_past_the_limit_fails() {
        // A pipe whose reader never reads: writes block once it is full.
        let (near, _far) = tokio::io::duplex(1024);
        let (mut io, clock) = StallIo::new(near, Duration::from_millis(300));
        io.write_all(&[0u8; 1024]).await.expect("fits the pipe");
        assert_eq!(clock.bytes_written(), 1024);
        let error = io.write_all(&[0u8; 10]).await.expect_err("blocked");
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert!(clock.stalled());
    }
}
