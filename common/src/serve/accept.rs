//! The accept loop every client listener runs: stop when told to, bound
//! the number of connections, and survive accept errors (EMFILE and
//! friends) without spinning.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::ServerContext;

/// Accept until `stop_accepting` fires, spawning `handle(stream, peer,
/// ctx)` per connection.
/// The listener is returned to the caller's scope only by being dropped
/// here; with a hand-over, the successor holds its own duplicate, so the
/// socket and its queue live on.
/// `limited`: whether the connection counts against `max_connections`
/// (client listeners) or not (the API, which must answer probes even when
/// clients fill every slot).
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    limited: bool,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Arc<ServerContext>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stop = ctx.shutdown.stop_accepting.clone();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if limited && ctx.clients.count() >= ctx.settings.max_connections {
                    metrics::counter!("baton_connections_refused_total", "listener" => name)
                        .increment(1);
                    tracing::warn!(
                        listener = name,
                        %peer,
                        max = ctx.settings.max_connections,
                        "connection refused: max_connections reached"
                    );
                    continue;
                }
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
