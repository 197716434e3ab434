//! HTTP-FLV playback: `GET /{app}/{stream}.flv` streams the FLV header,
//! the cached metadata, sequence headers and GOP, then live tags, with a
//! CORS header so browser players (mpegts.js, flv.js) can use it.
//!
//! hyper does the HTTP; this module maps a request to a hub subscription
//! and the subscription to body chunks, each chunk one shared FLV tag.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::clients::{ClientGuard, ClientRole, Transport};
use crate::flv;
use crate::hub::{HubItem, StreamKey};
use bytes::Bytes;
use futures_util::stream;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::accept::{accept_loop, ListenerKind};
use super::auth::{Action, AuthRequest, Authorized};
use super::http_flv_direct::{self, Head, Prefixed};
use super::limits;
use super::playback::{Playback, Step};
use super::stall::{StallClock, StallIo};
use super::tag_batch::TagBatch;
use super::viewer;
use super::{Presence, ServerContext};

pub(super) type Body = BoxBody<TagBatch, Infallible>;

pub async fn serve(listener: TcpListener, ctx: Arc<ServerContext>) {
    accept_loop(
        "http-flv",
        listener,
        ctx,
        ListenerKind::Clients,
        handle_connection,
    )
    .await;
}

async fn handle_connection(mut stream: TcpStream, peer: SocketAddr, ctx: Arc<ServerContext>) {
    let _ = stream.set_nodelay(true);
    let guard = Arc::new(ctx.clients.register(peer, Transport::HttpFlv));
    let span = connection_span(&guard, peer, false);
    async move {
        // Plays are streamed without hyper, so they can park (see
        // `http_flv_direct`); everything else is hyper's.
        match http_flv_direct::read_head(&mut stream, &ctx, &guard).await {
            Head::Play(request) => {
                let (reason, bytes) =
                    http_flv_direct::serve_play(stream, request, ctx, guard.clone()).await;
                limits::disconnects::http_ended(guard.entry(), reason, bytes);
            }
            Head::Other(prefix) => {
                serve_with_hyper(Prefixed::new(prefix, stream), ctx, guard).await
            }
            Head::Ended(reason) => limits::disconnects::http_ended(guard.entry(), reason, 0),
        }
    }
    .instrument(span)
    .await
}

/// HTTPS-FLV: the same serving over a TLS stream (see [`super::tls`]).
pub async fn serve_tls(listener: TcpListener, ctx: Arc<ServerContext>, acceptor: TlsAcceptor) {
    super::tls::serve_tls("https-flv", listener, ctx, acceptor, |stream, peer, ctx| {
        serve_connection(stream, peer, ctx, true)
    })
    .await;
}

fn connection_span(guard: &ClientGuard, peer: SocketAddr, tls: bool) -> tracing::Span {
    tracing::info_span!(
        "http-flv",
        client = guard.id(),
        %peer,
        tls,
        stream = tracing::field::Empty,
        role = tracing::field::Empty
    )
}

async fn serve_connection<S>(stream: S, peer: SocketAddr, ctx: Arc<ServerContext>, tls: bool)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let guard = Arc::new(ctx.clients.register(peer, Transport::HttpFlv));
    let span = connection_span(&guard, peer, tls);
    serve_with_hyper(stream, ctx, guard).instrument(span).await
}

/// hyper serves the connection: every request on TLS, and on plain TCP
/// whatever is not a play.
async fn serve_with_hyper<S>(stream: S, ctx: Arc<ServerContext>, guard: Arc<ClientGuard>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (io, clock) = StallIo::new(stream, ctx.settings.player_write_timeout);
    let service = {
        let (ctx, guard) = (ctx.clone(), guard.clone());
        service_fn(move |req| {
            let (ctx, guard) = (ctx.clone(), guard.clone());
            async move { Ok::<_, Infallible>(route(req, ctx, guard).await.into_response()) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(ctx.settings.handshake_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service);
    let reason = drive(conn, &ctx, &guard, &clock).await;
    let bytes = clock.bytes_written();
    guard.entry().add_bytes_out(bytes);
    limits::disconnects::http_ended(guard.entry(), reason, bytes);
}

/// Run the connection until it ends, a shutdown or kick ends it, or its
/// writes stall past the player write timeout ([`StallIo`] fails them).
async fn drive<C>(
    conn: C,
    ctx: &ServerContext,
    guard: &ClientGuard,
    clock: &StallClock,
) -> &'static str
where
    C: std::future::Future<Output = hyper::Result<()>> + GracefulConn,
{
    let mut conn = std::pin::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                return match result {
                    Ok(()) => "connection closed",
                    Err(_) if clock.stalled() => "player accepted no data within player_write_timeout",
                    Err(e) if e.is_timeout() => "no request within handshake_timeout",
                    Err(_) => "connection error",
                };
            }
            _ = ctx.shutdown.close_all.cancelled(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = guard.entry().kick.kicked(), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// hyper's connection types expose graceful shutdown on a pinned future.
trait GracefulConn {
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConn for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self)
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response =
        Response::new(Full::new(TagBatch::from(Bytes::from_static(body.as_bytes()))).boxed());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        "text/plain; charset=utf-8".parse().expect("static"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        "*".parse().expect("static"),
    );
    response
}

fn text_owned(status: StatusCode, body: String) -> Response<Body> {
    let mut response = text(status, "");
    *response.body_mut() = Full::new(TagBatch::from(Bytes::from(body))).boxed();
    response
}

/// `GET /`: the viewer page listing the streams published on this node.
fn viewer_page(ctx: &ServerContext, head: bool) -> Response<Body> {
    let mut live: Vec<StreamKey> = ctx
        .hub
        .stats()
        .into_iter()
        .filter(|s| s.publisher.is_some())
        .map(|s| s.key)
        .collect();
    live.sort_by(|a, b| (&a.app, &a.stream).cmp(&(&b.app, &b.stream)));
    let html = viewer::page(&live, &ctx.settings.player_js_url);
    let body = if head {
        Bytes::new()
    } else {
        Bytes::from(html)
    };
    let mut response = Response::new(Full::new(TagBatch::from(body)).boxed());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        "text/html; charset=utf-8".parse().expect("static"),
    );
    headers.insert(header::CACHE_CONTROL, "no-cache".parse().expect("static"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        "nosniff".parse().expect("static"),
    );
    response
}

/// `/{app...}/{stream}.flv` → (app, stream), not yet validated.
fn parse_path(path: &str) -> Option<(&str, &str)> {
    let path = path.strip_prefix('/')?;
    let (app, file) = path.rsplit_once('/')?;
    let stream = file.strip_suffix(".flv")?;
    Some((app, stream))
}

/// What a request gets: a complete response, or a play to stream.
pub(super) enum Routed {
    Response(Response<Body>),
    Play(Box<Started>),
}

impl From<Response<Body>> for Routed {
    fn from(response: Response<Body>) -> Self {
        Routed::Response(response)
    }
}

impl Routed {
    /// As hyper serves it.
    fn into_response(self) -> Response<Body> {
        match self {
            Routed::Response(response) => response,
            Routed::Play(started) => flv_response((*started).into_body()),
        }
    }
}

/// Serves a request (only its head is read: every route is body-less).
pub(super) async fn route<B>(
    req: Request<B>,
    ctx: Arc<ServerContext>,
    guard: Arc<ClientGuard>,
) -> Routed {
    match admit(req, &ctx, &guard).await {
        Ok((key, query, authorized)) => play(key, query, authorized, ctx, guard).await,
        Err(response) => Routed::Response(response),
    }
}

/// A play request's key, query and authorization; anything else (or a
/// refusal) is answered here.
async fn admit<B>(
    req: Request<B>,
    ctx: &Arc<ServerContext>,
    guard: &Arc<ClientGuard>,
) -> Result<(StreamKey, Option<String>, Authorized), Response<Body>> {
    if req.method() == Method::OPTIONS {
        let mut response = text(StatusCode::NO_CONTENT, "");
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            "GET, HEAD, OPTIONS".parse().expect("static"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            "*".parse().expect("static"),
        );
        return Err(response);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err(text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are supported\n",
        ));
    }
    if req.uri().path() == "/" {
        return Err(viewer_page(ctx, req.method() == Method::HEAD));
    }
    let Some((app, stream)) = parse_path(req.uri().path()) else {
        return Err(text(
            StatusCode::NOT_FOUND,
            "not found: play URLs look like /{app}/{stream}.flv (the viewer page is /)\n",
        ));
    };
    let key = match super::names::stream_key(app, stream) {
        Ok(key) => key,
        Err(error) => {
            tracing::warn!(%error, "play refused: invalid app or stream name");
            return Err(text_owned(
                StatusCode::BAD_REQUEST,
                format!("invalid name: {error}\n"),
            ));
        }
    };
    if req.method() == Method::HEAD {
        let published = ctx.hub.source(&key).is_some_and(|s| s.is_publishing());
        return if published {
            Err(flv_response(Full::new(TagBatch::default()).boxed()))
        } else {
            Err(text(StatusCode::NOT_FOUND, "stream not found\n"))
        };
    }
    let query = req.uri().query().map(str::to_owned);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let tc_url = format!("http://{host}/{}", key.app);
    let request = AuthRequest {
        action: Action::Play,
        key: &key,
        query: query.as_deref(),
        client_id: guard.id(),
        peer: guard.entry().peer,
        tc_url,
    };
    let authorized = match ctx.auth.authorize(request).await {
        Ok(authorized) => authorized,
        Err(refusal) => {
            let status = refusal.http_status();
            return Err(if status == StatusCode::UNAUTHORIZED {
                text(
                    status,
                    "a signed URL is required (?token=...&expires=...)\n",
                )
            } else {
                text(status, "not authorized\n")
            });
        }
    };
    Ok((key, query, authorized))
}

/// Whether an older generation of this node is still draining after an
/// upgrade: it may hold the stream, whose publisher is about to reconnect
/// here, so a player waits (`play_wait_timeout`) rather than getting a 404.
/// (Its control socket is removed when it exits.)
fn older_generation_serves(ctx: &ServerContext) -> bool {
    ctx.older_generations().iter().any(|path| path.exists())
}

fn flv_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, "video/x-flv".parse().expect("static"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        "*".parse().expect("static"),
    );
    headers.insert(header::CACHE_CONTROL, "no-cache".parse().expect("static"));
    response
}

async fn play(
    key: StreamKey,
    query: Option<String>,
    authorized: Authorized,
    ctx: Arc<ServerContext>,
    guard: Arc<ClientGuard>,
) -> Routed {
    let span = tracing::Span::current();
    span.record("stream", tracing::field::display(&key));
    span.record("role", "player");
    // A stream nobody publishes is a 404 at once (no source is made)
    // unless the operator set a wait. Once playing, the player waits
    // play_wait_timeout for a next publisher like any other (a republish
    // continues its timeline).
    let absent = ctx.streams.locate(&key).await == Presence::Absent;
    if absent && ctx.settings.http_flv_play_wait.is_zero() && !older_generation_serves(&ctx) {
        tracing::info!("play refused: stream not published");
        return text(StatusCode::NOT_FOUND, "stream not found\n").into();
    }
    if limits::check_new_stream(&ctx, &key, guard.entry().peer.ip()).is_err() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many streams on this server (max_streams)\n",
        )
        .into();
    }
    guard.set_role(ClientRole::Player, Some(key.clone()));
    let subscriber = ctx
        .streams
        .subscribe_with_query(&key, None, query.as_deref());
    let mut playback = Playback::new(&ctx, subscriber, guard.entry().kick.clone());
    // Hold the response until there is a publisher (bounded), so a missing
    // stream is a 404 rather than an empty 200.
    let mut first = Vec::new();
    while playback.is_waiting_for_publisher() {
        match playback.next(&mut first).await {
            Ok(Step::Items { .. }) => {}
            Ok(Step::Stop(_)) | Err(_) => {
                guard.set_role(ClientRole::Pending, None);
                tracing::info!("play refused: stream not published");
                return text(StatusCode::NOT_FOUND, "stream not found\n").into();
            }
        }
    }
    tracing::info!("play started");
    Routed::Play(Box::new(Started {
        playback,
        first,
        authorized,
    }))
}

/// A play whose response starts now: the FLV header and `first` (what
/// the wait for a publisher took), then live tags from `playback`.
pub(super) struct Started {
    pub playback: Playback,
    pub first: Vec<HubItem>,
    /// Held as long as the play: dropped, it sends `on_stop`.
    pub authorized: Authorized,
}

impl Started {
    /// The FLV header and the first items' tags.
    pub fn first_batch(&mut self) -> TagBatch {
        let mut batch = TagBatch::from(flv::file_header(true, true));
        push_tags(&mut batch, &mut self.first);
        batch
    }

    /// The response body hyper streams.
    fn into_body(mut self) -> Body {
        let first_batch = self.first_batch();
        let Started {
            playback,
            first,
            authorized,
        } = self;
        let source = playback.source().clone();
        let initial = stream::iter([Ok(Frame::data(first_batch))]);
        let live = stream::unfold(Some((playback, first)), move |state| {
            let _authorized = &authorized;
            let source = source.clone();
            async move {
                let (mut playback, mut items) = state?;
                loop {
                    match playback.next(&mut items).await {
                        Ok(Step::Items { then_stop }) => {
                            let mut batch = TagBatch::with_capacity(items.len());
                            push_tags(&mut batch, &mut items);
                            source.add_bytes_out(bytes::Buf::remaining(&batch) as u64);
                            let next = if then_stop.is_some() {
                                None
                            } else {
                                Some((playback, items))
                            };
                            if !batch.is_empty() {
                                return Some((Ok(Frame::data(batch)), next));
                            }
                            (playback, items) = next?;
                        }
                        Ok(Step::Stop(reason)) => {
                            tracing::info!(reason, "play ended");
                            return None;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "play ended");
                            return None;
                        }
                    }
                }
            }
        });
        use futures_util::StreamExt;
        BodyExt::boxed(StreamBody::new(initial.chain(live)))
    }
}

/// Moves the FLV tags of `items` into `batch`, leaving `items` empty (and
/// its allocation for the next batch).
fn push_tags(batch: &mut TagBatch, items: &mut Vec<HubItem>) {
    for item in items.drain(..) {
        if let HubItem::Frame(frame) = item {
            batch.push(frame.flv_tag().clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn play_paths() {
        assert_eq!(parse_path("/live/cam.flv"), Some(("live", "cam")));
        assert_eq!(parse_path("/a/b/cam.flv"), Some(("a/b", "cam")));
        assert_eq!(parse_path("/live/cam"), None);
        assert_eq!(parse_path("/cam.flv"), None);
        assert_eq!(parse_path("/live/.flv"), Some(("live", "")));
    }
}
