//! RTMP serving for every node: the accept loop and one task per connection that
//! drives the sans-IO [`ServerSession`] and connects it to the hub, as a
//! publisher or as a player.
//!
//! The connection task is deliberately thin: read bytes into the session,
//! act on its events, write what it (and, for a player, the hub) has to
//! send. Protocol decisions live in the session; stream decisions in the
//! hub; this file only joins them and enforces the timeouts.

use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::clients::{ClientGuard, ClientRole, Transport};
use crate::hub::timestamps::TimestampSanitizer;
use crate::hub::{encode_rtmp, HubItem, PublishError, PublisherInfo, StreamKey};
use crate::rtmp::session::{ServerEvent, ServerSession, SessionConfig, PLAY_STREAM_ID};
use anyhow::{anyhow, bail, Context as _};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::kick::Kick;
use tracing::Instrument;

use super::accept::{accept_loop, ListenerKind};
use super::auth::{Action, AuthRequest, Authorized, Refusal};
use super::limits;
use super::parked_play::{park, Encoding, Parked, Woke};
use super::playback::{Playback, Step};
use super::ServerContext;

const READ_CHUNK: usize = 64 * 1024;

pub async fn serve(listener: TcpListener, ctx: Arc<ServerContext>) {
    accept_loop(
        "rtmp",
        listener,
        ctx,
        ListenerKind::Clients,
        handle_connection,
    )
    .await;
}

async fn handle_connection(stream: TcpStream, peer: SocketAddr, ctx: Arc<ServerContext>) {
    let _ = stream.set_nodelay(true);
    let (reader, writer) = stream.into_split();
    serve_connection(Box::new(reader), Writer::Tcp(writer), peer, ctx, false).await
}

/// RTMPS: the same serving over a TLS stream (see [`super::tls`]).
pub async fn serve_tls(listener: TcpListener, ctx: Arc<ServerContext>, acceptor: TlsAcceptor) {
    super::tls::serve_tls(
        "rtmps",
        listener,
        ctx,
        acceptor,
        |stream, peer, ctx| async move {
            let (reader, writer) = tokio::io::split(stream);
            serve_connection(
                Box::new(reader),
                Writer::Other(Box::new(writer)),
                peer,
                ctx,
                true,
            )
            .await
        },
    )
    .await;
}

async fn serve_connection(
    reader: Reader,
    writer: Writer,
    peer: SocketAddr,
    ctx: Arc<ServerContext>,
    tls: bool,
) {
    let guard = ctx.clients.register(peer, Transport::Rtmp);
    let span = tracing::info_span!(
        "rtmp",
        client = guard.id(),
        %peer,
        tls,
        stream = tracing::field::Empty,
        role = tracing::field::Empty
    );
    async move {
        tracing::debug!("connected");
        let entry = guard.entry().clone();
        let outcome = Connection::new(reader, writer, guard, ctx).run().await;
        limits::disconnects::rtmp_ended(&entry, &outcome);
    }
    .instrument(span)
    .await
}

/// A connection's halves: a TCP socket's, or a TLS stream's.
type Reader = Box<dyn AsyncRead + Send + Unpin>;

/// The write half: a TCP socket's (a play may park it with the flusher,
/// see [`super::parked_play`]) or a TLS stream's.
enum Writer {
    Tcp(OwnedWriteHalf),
    Other(Box<dyn AsyncWrite + Send + Unpin>),
    /// With the flusher while the play is parked; never written then.
    Parked,
}

impl Writer {
    fn as_write(
        self: Pin<&mut Self>,
    ) -> Result<Pin<&mut (dyn AsyncWrite + Send + Unpin)>, std::io::Error> {
        match self.get_mut() {
            Writer::Tcp(tcp) => Ok(Pin::new(tcp)),
            Writer::Other(other) => Ok(Pin::new(&mut **other)),
            Writer::Parked => Err(std::io::Error::other(
                "the play's socket is parked with the flusher",
            )),
        }
    }
}

impl AsyncWrite for Writer {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.as_write() {
            Ok(inner) => inner.poll_write(cx, buf),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.as_write() {
            Ok(inner) => inner.poll_write_vectored(cx, bufs),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Writer::Tcp(tcp) => tcp.is_write_vectored(),
            Writer::Other(other) => other.is_write_vectored(),
            Writer::Parked => false,
        }
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.as_write() {
            Ok(inner) => inner.poll_flush(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.as_write() {
            Ok(inner) => inner.poll_shutdown(cx),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

struct Connection {
    reader: Reader,
    writer: Writer,
    input: BytesMut,
    session: ServerSession,
    guard: ClientGuard,
    ctx: Arc<ServerContext>,
    input_charge: limits::InputCharge,
}

/// What the client asked for once connected.
enum Intent {
    Publish {
        stream_id: u32,
        key: StreamKey,
        /// `?baton_timeline=ID` from an edge forwarding its publisher.
        timeline: Option<String>,
        /// The client's query string (authorization, passed on by an edge).
        query: Option<String>,
    },
    Play {
        stream_id: u32,
        key: StreamKey,
        resume_after: Option<u32>,
        /// An edge relaying the stream (`?baton_relay=1`).
        relay: bool,
        query: Option<String>,
    },
    /// Told why (an onStatus error) and done.
    Refused(&'static str),
}

impl Connection {
    fn new(reader: Reader, writer: Writer, guard: ClientGuard, ctx: Arc<ServerContext>) -> Self {
        Connection {
            reader,
            writer,
            input: BytesMut::with_capacity(READ_CHUNK),
            session: ServerSession::new(SessionConfig {
                handshake_seed: rand::random(),
                ..SessionConfig::default()
            }),
            guard,
            ctx,
            input_charge: limits::InputCharge::default(),
        }
    }

    async fn run(mut self) -> anyhow::Result<&'static str> {
        let timeout = self.ctx.settings.handshake_timeout;
        let (close_all, kick) = self.stop_tokens();
        let intent = tokio::select! {
            r = tokio::time::timeout(timeout, self.negotiate()) => match r {
                Ok(intent) => intent?,
                Err(_) => bail!("no publish or play within handshake_timeout ({timeout:?})"),
            },
            _ = close_all.cancelled() => return Ok("server shutting down"),
            _ = kick.kicked() => return Ok(kick.reason()),
        };
        let Some(intent) = intent else {
            return Ok("peer closed before publish or play");
        };
        match intent {
            Intent::Publish {
                stream_id,
                key,
                timeline,
                query,
            } => {
                self.publish(stream_id, key, timeline, query.as_deref())
                    .await
            }
            Intent::Play {
                stream_id,
                key,
                resume_after,
                relay,
                query,
            } => {
                self.play(stream_id, key, resume_after, relay, query.as_deref())
                    .await
            }
            Intent::Refused(reason) => Ok(reason),
        }
    }

    /// The tokens that end this connection: process shutdown, API kick.
    fn stop_tokens(&self) -> (CancellationToken, Kick) {
        (
            self.ctx.shutdown.close_all.clone(),
            self.guard.entry().kick.clone(),
        )
    }

    /// Read until the session has the bytes it wants written, flushing them.
    ///
    /// No yield here: a player's loop re-creates this future on every
    /// wake-up, and a yield would poll every player twice per write.
    /// Loops that read a peer's data back to back (publish, negotiation)
    /// yield after each read instead.
    async fn read_some(&mut self) -> anyhow::Result<bool> {
        limits::memory_backpressure(self.input_charge.amount()).await;
        self.input.reserve(READ_CHUNK);
        let n = self
            .reader
            .read_buf(&mut self.input)
            .await
            .context("read failed")?;
        if n == 0 {
            return Ok(false);
        }
        self.guard.entry().add_bytes_in(n as u64);
        if let Err(error) = self.session.handle_input(&mut self.input) {
            // The session queued what the peer can read about why
            // (`_error` / an error onStatus): send it, briefly, then close.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.flush_session()).await;
            bail!("protocol error: {error}");
        }
        let buffered = self.input.len() + self.session.buffered_input();
        self.input_charge.update(self.guard.entry(), buffered);
        Ok(true)
    }

    async fn flush_session(&mut self) -> anyhow::Result<()> {
        while let Some(bytes) = self.session.take_output() {
            self.writer
                .write_all(&bytes)
                .await
                .context("write failed")?;
            self.guard.entry().add_bytes_out(bytes.len() as u64);
        }
        // TLS keeps what the socket did not take; plain TCP has nothing.
        self.writer.flush().await.context("write failed")?;
        Ok(())
    }

    /// Handshake, connect, createStream... until publish or play.
    async fn negotiate(&mut self) -> anyhow::Result<Option<Intent>> {
        loop {
            // One read per turn: a peer sending as fast as its socket
            // allows must not keep other connections' tasks from running.
            tokio::task::yield_now().await;
            if !self.read_some().await? {
                return Ok(None);
            }
            while let Some(event) = self.session.poll_event() {
                match event {
                    ServerEvent::Connected { app, tc_url } => {
                        // Debug: a peer can connect and idle as often as
                        // the accept rate lets it; "publish started" /
                        // "play started" carry the stream at info.
                        tracing::debug!(app, tc_url = tc_url.as_deref().unwrap_or(""), "connect");
                    }
                    ServerEvent::PublishRequested {
                        stream_id,
                        stream,
                        query,
                    } => {
                        let Some(key) = self.valid_key(&stream, stream_id, true) else {
                            self.flush_session().await?;
                            return Ok(Some(Intent::Refused(
                                "refused: invalid app or stream name",
                            )));
                        };
                        self.flush_session().await?;
                        return Ok(Some(Intent::Publish {
                            stream_id,
                            key,
                            timeline: super::query_param(query.as_deref(), super::TIMELINE_PARAM)
                                .map(str::to_owned),
                            query,
                        }));
                    }
                    ServerEvent::PlayRequested {
                        stream_id,
                        stream,
                        query,
                    } => {
                        let Some(key) = self.valid_key(&stream, stream_id, false) else {
                            self.flush_session().await?;
                            return Ok(Some(Intent::Refused(
                                "refused: invalid app or stream name",
                            )));
                        };
                        self.flush_session().await?;
                        return Ok(Some(Intent::Play {
                            stream_id,
                            key,
                            resume_after: super::resume_after(query.as_deref()),
                            relay: super::query_param(query.as_deref(), super::RELAY_PARAM)
                                .is_some(),
                            query,
                        }));
                    }
                    other => tracing::debug!(?other, "ignored before publish/play"),
                }
            }
            self.flush_session().await?;
        }
    }

    /// The key of a publish or play, or `None` after telling the client
    /// why its name was refused (see [`super::names`]).
    fn valid_key(&mut self, stream: &str, stream_id: u32, publish: bool) -> Option<StreamKey> {
        let app = self.session.app().unwrap_or_default().to_owned();
        match super::names::stream_key(&app, stream) {
            Ok(key) => Some(key),
            Err(error) => {
                let description = format!("Invalid name: {error}.");
                if publish {
                    self.session.reject_publish(
                        stream_id,
                        "NetStream.Publish.BadName",
                        &description,
                    );
                } else {
                    self.session.reject_play(
                        stream_id,
                        "NetStream.Play.StreamNotFound",
                        &description,
                    );
                }
                tracing::warn!(%error, publish, "refused: invalid app or stream name");
                None
            }
        }
    }

    async fn publish(
        mut self,
        stream_id: u32,
        key: StreamKey,
        timeline: Option<String>,
        query: Option<&str>,
    ) -> anyhow::Result<&'static str> {
        let span = tracing::Span::current();
        span.record("stream", tracing::field::display(&key));
        span.record("role", "publisher");
        let Some(_authorized) = self
            .authorize(Action::Publish, stream_id, &key, query)
            .await?
        else {
            return Ok("publish refused: not authorized");
        };
        // The publish's timeline: kept from an upstream edge, else new.
        let info_timeline = timeline
            .filter(|id| !id.is_empty() && id.len() <= 64)
            .unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        let info = PublisherInfo {
            client_id: self.guard.id(),
            peer: self.guard.entry().peer,
            timeline: info_timeline.clone(),
        };
        if let Err(description) = limits::check_new_stream(&self.ctx, &key, info.peer.ip()) {
            self.session
                .reject_publish(stream_id, "NetStream.Publish.Rejected", &description);
            self.flush_session().await?;
            return Ok("publish refused: max_streams");
        }
        let kick = self.guard.entry().kick.clone();
        let claimed = self
            .ctx
            .streams
            .publish_with_query(key.clone(), info, query, kick);
        let publisher = match claimed {
            Ok(publisher) => publisher,
            Err(PublishError::AlreadyPublishing(_)) => {
                self.session.reject_publish(
                    stream_id,
                    "NetStream.Publish.BadName",
                    &format!("{key} is already publishing"),
                );
                self.flush_session().await?;
                tracing::warn!("publish refused: stream already publishing");
                return Ok("publish refused: stream already publishing");
            }
        };
        self.guard.set_role(ClientRole::Publisher, Some(key));
        self.session.accept_publish(stream_id);
        self.flush_session().await?;
        tracing::info!(timeline = %info_timeline, "publish started");

        let idle = self.ctx.settings.publish_idle_timeout;
        let mut timestamps = TimestampSanitizer::new(self.ctx.settings.timestamp_correction);
        let publish_started = std::time::Instant::now();
        let (close_all, kick) = self.stop_tokens();
        let reconnect = self.ctx.shutdown.reconnect.clone();
        let mut asked_to_reconnect = false;
        let bytes_in = |c: &Self| c.guard.entry().bytes_in.load(Ordering::Relaxed);
        let mut rate = limits::PublishRate::new(&self.ctx, bytes_in(&self));
        loop {
            // One read per turn (see `negotiate`).
            tokio::task::yield_now().await;
            let more = tokio::select! {
                r = tokio::time::timeout(idle, self.read_some()) => match r {
                    Ok(more) => more?,
                    Err(_) => bail!("publisher sent nothing for {idle:?}"),
                },
                _ = close_all.cancelled() => return Ok("server shutting down"),
                _ = kick.kicked() => return Ok(kick.reason()),
                _ = reconnect.cancelled(), if !asked_to_reconnect => {
                    asked_to_reconnect = true;
                    self.ask_to_reconnect();
                    self.flush_session().await?;
                    continue;
                }
            };
            if !more {
                return Ok("publisher closed the connection");
            }
            if let Err(over) = rate.check(bytes_in(&self)) {
                let description = format!("{over}; disconnected");
                self.session.send_status(
                    stream_id,
                    "error",
                    "NetStream.Publish.Rejected",
                    &description,
                );
                self.flush_session().await.ok();
                tracing::warn!(%over, "publisher disconnected: over max_publish_kbps");
                return Ok("publisher over max_publish_kbps");
            }
            while let Some(event) = self.session.poll_event() {
                match event {
                    ServerEvent::Media {
                        stream_id: media_stream,
                        mut frame,
                    } if media_stream == stream_id => {
                        let arrival_ms = publish_started.elapsed().as_millis() as u64;
                        if let Some(correction) = timestamps.sanitize(&mut frame, arrival_ms) {
                            correction.report();
                        }
                        publisher.push(frame)
                    }
                    ServerEvent::Unpublished { .. } => {
                        self.flush_session().await.ok();
                        return Ok("unpublished");
                    }
                    ServerEvent::PublishRequested { stream_id, .. } => self.session.reject_publish(
                        stream_id,
                        "NetStream.Publish.BadConnection",
                        "one publish per connection",
                    ),
                    ServerEvent::PlayRequested { stream_id, .. } => self.session.reject_play(
                        stream_id,
                        "NetStream.Play.Failed",
                        "a publishing connection cannot play",
                    ),
                    _ => {}
                }
            }
            self.flush_session().await?;
        }
    }

    async fn play(
        mut self,
        stream_id: u32,
        key: StreamKey,
        resume_after: Option<u32>,
        relay: bool,
        query: Option<&str>,
    ) -> anyhow::Result<&'static str> {
        let span = tracing::Span::current();
        span.record("stream", tracing::field::display(&key));
        span.record("role", "player");
        let Some(_authorized) = self.authorize(Action::Play, stream_id, &key, query).await? else {
            return Ok("play refused: not authorized");
        };
        if let Err(description) =
            limits::check_new_stream(&self.ctx, &key, self.guard.entry().peer.ip())
        {
            self.session
                .reject_play(stream_id, "NetStream.Play.Failed", &description);
            self.flush_session().await?;
            return Ok("play refused: max_streams");
        }
        self.guard.set_role(ClientRole::Player, Some(key.clone()));
        let mut subscriber = self
            .ctx
            .streams
            .subscribe_with_query(&key, resume_after, query);
        if relay {
            subscriber.set_immediate();
        }
        let mut playback = Playback::new(&self.ctx, subscriber, self.guard.entry().kick.clone());
        let mut started = !playback.is_waiting_for_publisher();
        if started {
            self.session.set_timeline(playback.source().timeline());
            self.session.accept_play(stream_id);
            self.flush_session().await?;
            tracing::info!("play started");
        } else {
            tracing::info!("play waiting for the publisher");
        }
        let shared_bytes = stream_id == PLAY_STREAM_ID;
        let source = playback.source().clone();
        let write_timeout = self.ctx.settings.player_write_timeout;
        let mut segments: Vec<Bytes> = Vec::with_capacity(64);
        let mut items: Vec<HubItem> = Vec::with_capacity(64);
        // Registered once for the play, not again per batch.
        let reconnect = self.ctx.shutdown.reconnect.clone().cancelled_owned();
        tokio::pin!(reconnect);
        let mut asked_to_reconnect = false;
        // Who hears of a publisher leaving and another coming: players
        // whose play ends there, and clients that announced Enhanced RTMP
        // reconnect support (Baton edges: they follow publishers between
        // origins). Others keep playing one spliced timeline: a legacy
        // player (ffmpeg) ends its play at UnpublishNotify.
        let notify_changes = self.session.can_reconnect() || playback.ends_at_unpublish();
        let mut unpublish_notified = false;
        let encoding = Encoding::Rtmp {
            stream_id,
            shared_bytes,
        };
        // Items the flusher took for a parked play and handed back.
        let mut resumed: Option<Step> = None;
        loop {
            let step = if let Some(step) = resumed.take() {
                step
            } else {
                tokio::select! {
                _ = reconnect.as_mut(), if !asked_to_reconnect => {
                    asked_to_reconnect = true;
                    self.ask_to_reconnect();
                    self.flush_session().await?;
                    continue;
                }
                step = playback.next(&mut items) => step.map_err(|e| anyhow!("{e}"))?,
                more = self.read_some() => {
                    if !more? {
                        return Ok("player closed the connection");
                    }
                    if self.take_player_events() {
                        return Ok("player stopped");
                    }
                    self.flush_session().await?;
                    continue;
                }
                }
            };
            let then_stop = match step {
                Step::Items { then_stop } => then_stop,
                Step::Stop(reason) => {
                    if !started {
                        self.session.reject_play(
                            stream_id,
                            "NetStream.Play.StreamNotFound",
                            &format!("{key} is not published"),
                        );
                    } else if !unpublish_notified {
                        // End of stream, once: not again if the player
                        // already heard the publisher leave.
                        self.session.notify_unpublish(stream_id);
                    }
                    self.flush_session().await.ok();
                    return Ok(reason);
                }
            };
            for item in items.drain(..) {
                match item {
                    HubItem::Frame(frame) => {
                        if !started {
                            continue;
                        }
                        self.queue_session_output(&mut segments);
                        segments.push(if shared_bytes {
                            frame.rtmp_chunks().clone()
                        } else {
                            encode_rtmp(&frame.frame, stream_id)
                        });
                    }
                    HubItem::Unpublished => {
                        if started && notify_changes {
                            self.session.notify_unpublish(stream_id);
                            unpublish_notified = true;
                        }
                    }
                    HubItem::Published => {
                        self.session.set_timeline(source.timeline());
                        if started {
                            if notify_changes {
                                self.session.notify_publish(stream_id);
                                unpublish_notified = false;
                            }
                        } else {
                            self.session.accept_play(stream_id);
                            started = true;
                            tracing::info!("play started");
                        }
                    }
                }
            }
            self.queue_session_output(&mut segments);
            let written = write_all_segments(&mut self.writer, &segments, write_timeout).await?;
            segments.clear();
            self.guard.entry().add_bytes_out(written);
            source.add_bytes_out(written);
            if let Some(reason) = then_stop {
                return Ok(reason);
            }
            if !started || !playback.can_park() {
                continue;
            }
            let Some(writer) = self.take_tcp_writer() else {
                continue;
            };
            let parked = Parked::new(playback, writer, &mut items, &mut segments);
            let watch_reconnect =
                (!asked_to_reconnect).then(|| self.ctx.shutdown.reconnect.clone());
            let (ctx, entry) = (self.ctx.clone(), self.guard.entry().clone());
            let input = self.read_some();
            let (back, woke) = park(parked, entry, encoding, &ctx, watch_reconnect, input).await?;
            let (back_playback, writer, error) = back.restore(&mut items, &mut segments);
            (playback, self.writer) = (back_playback, Writer::Tcp(writer));
            error?;
            // Continue the byte stream where the flusher stopped.
            if !segments.is_empty() {
                let written =
                    write_all_segments(&mut self.writer, &segments, write_timeout).await?;
                segments.clear();
                self.guard.entry().add_bytes_out(written);
                source.add_bytes_out(written);
            }
            if !items.is_empty() {
                resumed = Some(playback.settle(&mut items, 0));
            }
            if let Woke::Input(more) = woke {
                if !more? {
                    return Ok("player closed the connection");
                }
                if self.take_player_events() {
                    return Ok("player stopped");
                }
                self.flush_session().await?;
            }
        }
    }

    /// The plain-TCP write half, to park; a TLS writer stays.
    fn take_tcp_writer(&mut self) -> Option<OwnedWriteHalf> {
        match std::mem::replace(&mut self.writer, Writer::Parked) {
            Writer::Tcp(writer) => Some(writer),
            other => {
                self.writer = other;
                None
            }
        }
    }

    /// The node's gate (`serve::auth`); a refused client gets the error
    /// status (`NetStream.{Publish,Play}.Unauthorized`) and `None`, and
    /// the connection ends.
    async fn authorize(
        &mut self,
        action: Action,
        stream_id: u32,
        key: &StreamKey,
        query: Option<&str>,
    ) -> anyhow::Result<Option<Authorized>> {
        let request = AuthRequest {
            action,
            key,
            query,
            client_id: self.guard.id(),
            peer: self.guard.entry().peer,
            tc_url: self.session.tc_url().unwrap_or_default().to_string(),
        };
        let refusal = match self.ctx.auth.authorize(request).await {
            Ok(authorized) => return Ok(Some(authorized)),
            Err(refusal) => refusal,
        };
        let (code, description) = (Refusal::rtmp_code(action), refusal.description(action, key));
        match action {
            Action::Publish => self.session.reject_publish(stream_id, code, &description),
            Action::Play => self.session.reject_play(stream_id, code, &description),
        }
        self.flush_session().await?;
        Ok(None)
    }

    /// A drain began: a client that announced the reconnect capability
    /// (Enhanced RTMP v2 `capsEx`) is asked to reconnect, to this same
    /// address when a new generation serves it (upgrade), otherwise
    /// elsewhere; it then leaves at a moment of its choosing instead of
    /// being cut at the drain deadline.
    fn ask_to_reconnect(&mut self) {
        if !self.session.can_reconnect() {
            return;
        }
        let here = self.ctx.shutdown.reconnect_here();
        let tc_url = here
            .then(|| self.session.tc_url().map(str::to_owned))
            .flatten();
        let description = if here {
            "This server is upgrading; reconnect to the same address."
        } else {
            "This server is draining; reconnect to another one."
        };
        self.session
            .request_reconnect(tc_url.as_deref(), description);
        metrics::counter!("baton_reconnect_requests_total").increment(1);
        tracing::info!(same_address = here, "asked the client to reconnect");
    }

    fn queue_session_output(&mut self, segments: &mut Vec<Bytes>) {
        while let Some(bytes) = self.session.take_output() {
            segments.push(bytes);
        }
    }

    /// Events a player may send while playing; true when it stopped.
    fn take_player_events(&mut self) -> bool {
        let mut stopped = false;
        while let Some(event) = self.session.poll_event() {
            match event {
                ServerEvent::PlayStopped { .. } | ServerEvent::Unpublished { .. } => stopped = true,
                ServerEvent::PublishRequested { stream_id, .. } => self.session.reject_publish(
                    stream_id,
                    "NetStream.Publish.BadConnection",
                    "a playing connection cannot publish",
                ),
                _ => {}
            }
        }
        stopped
    }
}

/// Most buffers handed to one `writev`.
pub(super) const MAX_IOVECS: usize = 64;

/// Write every segment with vectored writes (no copying them together),
/// failing if the socket accepts nothing for `stall_timeout`. The stall
/// deadline is armed only once a write would block: a write the socket
/// takes at once (nearly all of them) costs no timer and no allocation.
pub async fn write_all_segments<W: AsyncWrite + Unpin>(
    writer: &mut W,
    segments: &[Bytes],
    stall_timeout: Duration,
) -> anyhow::Result<u64> {
    let mut index = 0;
    let mut offset = 0;
    let mut written = 0u64;
    let mut stall: Option<Pin<Box<tokio::time::Sleep>>> = None;
    while index < segments.len() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let parts = std::iter::once(&segments[index][offset..])
            .chain(segments[index + 1..].iter().map(|b| &b[..]));
        let mut count = 0;
        for (slot, part) in slices.iter_mut().zip(parts) {
            *slot = IoSlice::new(part);
            count += 1;
        }
        let slices = &slices[..count];
        let result = std::future::poll_fn(|cx| {
            match Pin::new(&mut *writer).poll_write_vectored(cx, slices) {
                Poll::Ready(result) => Poll::Ready(Some(result)),
                Poll::Pending => {
                    let deadline =
                        stall.get_or_insert_with(|| Box::pin(tokio::time::sleep(stall_timeout)));
                    match deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => Poll::Ready(None),
                        Poll::Pending => Poll::Pending,
                    }
                }
            }
        })
        .await;
        let n = match result {
            Some(result) => result.context("write failed")?,
            None => bail!("player accepted no data for {stall_timeout:?}"),
        };
        if n == 0 {
            bail!("write returned 0 bytes");
        }
        // Progress: the stall deadline starts again at the next block.
        stall = None;
        written += n as u64;
        let mut remaining = n;
        while remaining > 0 && index < segments.len() {
            let left = segments[index].len() - offset;
            if remaining >= left {
                remaining -= left;
                index += 1;
                offset = 0;
            } else {
                offset += remaining;
                remaining = 0;
            }
        }
        while index < segments.len() && segments[index].len() == offset {
            index += 1;
            offset = 0;
        }
    }
    // A TLS stream may hold the tail of what it took; plain TCP holds none.
    match tokio::time::timeout(stall_timeout, writer.flush()).await {
        Ok(result) => result.context("write failed")?,
        Err(_) => bail!("player accepted no data for {stall_timeout:?}"),
    }
    Ok(written)
}
