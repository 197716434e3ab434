//! The accept loop every client listener runs: stop when told to, admit
//! or refuse each connection before any work is done for it (the limits
//! of [`super::limits::admission`], the same for RTMP and HTTP-FLV), and
//! survive accept errors (EMFILE and friends) without spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::{limits, ServerContext};

/// Connections accepted (or refused) before the loop lets other tasks run.
const ACCEPTS_PER_TURN: u32 = 16;

/// Accept until `stop_accepting` fires, spawning `handle(stream, peer,
/// ctx)` per connection.
/// The listener is returned to the caller's scope only by being dropped
/// here; with a hand-over, the successor holds its own duplicate, so the
/// socket and its queue live on.
/// What a listener is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// RTMP, HTTP-FLV: counted against `max_connections`, closed when the
    /// drain stops accepting.
    Clients,
    /// The API: not counted (probes must answer when clients fill every
    /// slot), open through a drain until the process exits or hands over.
    Api,
}

pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    kind: ListenerKind,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<ServerContext>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let limited = kind == ListenerKind::Clients;
    let stop = match kind {
        ListenerKind::Clients => ctx.shutdown.stop_accepting.clone(),
        ListenerKind::Api => ctx.shutdown.stop_api.clone(),
    };
    let mut since_yield = 0u32;
    loop {
        // A flood keeps the listener ready without end: give the other
        // tasks (players, publishers) a turn every few accepts.
        since_yield += 1;
        if since_yield >= ACCEPTS_PER_TURN {
            since_yield = 0;
            tokio::task::yield_now().await;
        }
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) if limited => match ctx.admission.try_admit(peer.ip()) {
                Ok(slot) => {
                    let connection = handle(stream, peer, ctx.clone());
                    tokio::spawn(async move {
                        connection.await;
                        drop(slot);
                    });
                }
                Err(refusal) => limits::refuse_connection(name, stream, peer, refusal),
            },
            Ok((stream, peer)) => {
                tokio::spawn(handle(stream, peer, ctx.clone()));
            }
            Err(error) => {
                tracing::warn!(listener = name, %error, "accept failed; retrying shortly");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    tracing::info!(listener = name, "stopped accepting");
}
