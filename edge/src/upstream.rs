//! One RTMP connection from the edge to an origin: the thin tokio glue
//! around the sans-IO [`ClientSession`], with every wait bounded. Pulls
//! play through it, forwards publish through it.
//!
//! Liveness: the origin is pinged every third of the stall timeout, and
//! the upstream fails when nothing at all arrived for the whole timeout (a
//! frozen or blackholed origin) or when a ping's answer is later than the
//! timeout: the answer queues behind the media the origin already sent, so
//! a link too slow for the stream (throttled, congested) shows as a late
//! answer even while bytes keep trickling in. A slow publisher does not:
//! the origin has nothing queued. Bytes the session cannot parse are an
//! error like a reset. The caller treats the origin as failed in every
//! case.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use baton_common::hub::StreamKey;
use baton_common::media::MediaFrame;
use baton_common::rtmp::client_session::{ClientEvent, ClientSession};
use baton_common::rtmp::session::CAPS_EX_RECONNECT;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::origin_tls::{OriginStream, OriginTls};
use crate::settings::OriginAddr;

const READ_RESERVE: usize = 64 * 1024;
/// Output a publishing upstream may hold before a write is forced.
const WRITE_BATCH: usize = 64 * 1024;
/// How often a pull or a forward in the middle of a planned move looks
/// whether the prepared upstream is ready. The old upstream may have gone
/// quiet (its publisher left), so waiting on it alone would delay the
/// hand-over by whatever else the session waits for.
pub(crate) const MOVE_POLL: Duration = Duration::from_millis(10);

/// A connected, stream-created RTMP connection to one origin.
pub struct Upstream {
    socket: OriginStream,
    read_buf: BytesMut,
    session: ClientSession,
    pub stream_id: u32,
    stall_timeout: Duration,
    last_input: Instant,
    /// When the outstanding ping was sent, and its time value.
    ping_outstanding: Option<(Instant, u32)>,
    last_ping: Instant,
    /// Time base of the ping values.
    epoch: Instant,
}

impl Upstream {
    /// TCP connect (and TLS for a TLS origin), handshake, `connect(app)`,
    /// `createStream`, all within `setup_timeout`.
    pub async fn open(
        tls: &OriginTls,
        origin: OriginAddr,
        key: &StreamKey,
        stall_timeout: Duration,
        setup_timeout: Duration,
    ) -> anyhow::Result<Upstream> {
        tokio::time::timeout(setup_timeout, async {
            let socket = tls.connect(&origin).await?;
            let scheme = if origin.tls.is_some() {
                "rtmps"
            } else {
                "rtmp"
            };
            let mut session = ClientSession::with_seed(rand::random());
            // We follow Enhanced RTMP reconnect requests (planned moves).
            session.set_caps_ex(CAPS_EX_RECONNECT);
            let tc_url = format!("{scheme}://{}/{}", origin.rtmp, key.app);
            session.connect(&key.app, &tc_url);
            session.create_stream();
            let mut upstream = Upstream {
                socket,
                read_buf: BytesMut::with_capacity(READ_RESERVE),
                session,
                stream_id: 0,
                stall_timeout,
                last_input: Instant::now(),
                ping_outstanding: None,
                last_ping: Instant::now(),
                epoch: Instant::now(),
            };
            loop {
                match upstream.next_event(None).await? {
                    Some(ClientEvent::StreamCreated { stream_id }) => {
                        upstream.stream_id = stream_id;
                        return Ok(upstream);
                    }
                    Some(event) => fail_on_error(&event)?,
                    None => {}
                }
            }
        })
        .await
        .map_err(|_| anyhow!("no stream from {} within {setup_timeout:?}", origin.rtmp))?
    }

    /// `play(name?query)`; the origin answers (Play.Start) once the stream
    /// is published there, which the caller sees as events.
    pub async fn play(&mut self, name: &str) -> anyhow::Result<()> {
        self.session.play(self.stream_id, name);
        self.flush().await
    }

    /// `publish(name?query)` and wait for `NetStream.Publish.Start`.
    pub async fn publish(&mut self, name: &str, limit: Duration) -> anyhow::Result<()> {
        self.session.publish(self.stream_id, name);
        tokio::time::timeout(limit, async {
            loop {
                match self.next_event(None).await? {
                    Some(ClientEvent::Status { code, .. }) if code == "NetStream.Publish.Start" => {
                        return Ok(());
                    }
                    Some(event) => fail_on_error(&event)?,
                    None => {}
                }
            }
        })
        .await
        .map_err(|_| anyhow!("publish not accepted within {limit:?}"))?
    }

    /// Queue one frame; writes when enough is pending.
    pub async fn send(&mut self, frame: &MediaFrame) -> anyhow::Result<()> {
        self.session.send_media(self.stream_id, frame);
        if self.session.output_len() >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Write everything pending, failing if the origin accepts nothing for
    /// the stall timeout, or stays silent for it while the write waits: on
    /// a dead link the kernel's send buffer takes bytes for a while, and a
    /// write that blocks only once it is full must not add its own timeout
    /// to that time.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        let mut wrote = false;
        while let Some(bytes) = self.session.take_output() {
            let deadline =
                (Instant::now() + self.stall_timeout).min(self.last_input + self.stall_timeout);
            tokio::time::timeout_at(deadline, self.socket.write_all(&bytes))
                .await
                .map_err(|_| {
                    anyhow!(
                        "origin accepted no data and was silent for {:?}",
                        self.stall_timeout
                    )
                })?
                .context("write to origin")?;
            wrote = true;
        }
        if wrote {
            // TLS may hold the tail of what it took; TCP holds nothing.
            tokio::time::timeout(self.stall_timeout, self.socket.flush())
                .await
                .map_err(|_| anyhow!("origin accepted no data for {:?}", self.stall_timeout))?
                .context("write to origin")?;
        }
        Ok(())
    }

    /// Ends a publish politely (FCUnpublish, deleteStream) before closing.
    pub async fn unpublish(mut self, name: &str) {
        self.session.fc_unpublish(name);
        self.session.delete_stream(self.stream_id);
        let _ = self.flush().await;
        let _ = self.socket.shutdown().await;
    }

    /// The next event from the origin, pinging it when quiet; `None` at
    /// `deadline` (so the caller can look at its own clocks); an error
    /// when the origin closed, sent garbage, or stayed silent for the stall
    /// timeout.
    pub async fn next_event(
        &mut self,
        deadline: Option<Instant>,
    ) -> anyhow::Result<Option<ClientEvent>> {
        loop {
            if let Some(event) = self.session.poll_event() {
                if let ClientEvent::PingResponse(time) = event {
                    self.answered(time);
                    continue;
                }
                return Ok(Some(event));
            }
            self.ping_if_quiet()?;
            self.flush().await?;
            let now = Instant::now();
            if deadline.is_some_and(|d| now >= d) {
                return Ok(None);
            }
            let wake = deadline.map_or(self.next_check(), |d| d.min(self.next_check()));
            self.read_buf.reserve(READ_RESERVE);
            tokio::select! {
                read = self.socket.read_buf(&mut self.read_buf) => {
                    let n = read.context("read from origin")?;
                    if n == 0 {
                        bail!("origin closed the connection");
                    }
                    self.last_input = Instant::now();
                    self.session
                        .handle_input(&mut self.read_buf)
                        .map_err(|e| anyhow!("malformed data from origin: {e}"))?;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Ping the origin every third of the stall timeout (one outstanding
    /// at a time); an error once it was silent for the whole timeout, or
    /// its answer is later than that (the link cannot carry the stream).
    /// Call [`Upstream::flush`] after.
    pub fn ping_if_quiet(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        if now >= self.last_input + self.stall_timeout {
            bail!("origin silent for {:?}", self.stall_timeout);
        }
        if let Some((sent, _)) = self.ping_outstanding {
            if now >= sent + self.stall_timeout {
                bail!(
                    "origin answered no ping within {:?}: the link is too slow for the stream",
                    self.stall_timeout
                );
            }
        } else if now >= self.last_ping + self.stall_timeout / 3 {
            let time = now.duration_since(self.epoch).as_millis() as u32;
            self.session.ping(time);
            self.ping_outstanding = Some((now, time));
            self.last_ping = now;
        }
        Ok(())
    }

    fn answered(&mut self, time: u32) {
        if self.ping_outstanding.is_some_and(|(_, sent)| sent == time) {
            self.ping_outstanding = None;
        }
    }

    /// When the liveness state next needs a look.
    fn next_check(&self) -> Instant {
        let silence = self.last_input + self.stall_timeout;
        let ping = match self.ping_outstanding {
            Some((sent, _)) => sent + self.stall_timeout,
            None => self.last_ping + self.stall_timeout / 3,
        };
        silence
            .min(ping)
            .max(Instant::now() + Duration::from_millis(1))
    }

    /// Handle whatever the origin already sent, without waiting (a
    /// publishing upstream calls this between writes to see resets,
    /// statuses and stalls).
    pub fn poll_ready(&mut self) -> anyhow::Result<Vec<ClientEvent>> {
        loop {
            self.read_buf.reserve(READ_RESERVE);
            match self.socket.try_read_buf(&mut self.read_buf) {
                Ok(0) => bail!("origin closed the connection"),
                Ok(_) => {
                    self.last_input = Instant::now();
                    self.session
                        .handle_input(&mut self.read_buf)
                        .map_err(|e| anyhow!("malformed data from origin: {e}"))?;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(anyhow!(e).context("read from origin")),
            }
        }
        let mut events = Vec::new();
        while let Some(event) = self.session.poll_event() {
            match event {
                ClientEvent::PingResponse(time) => self.answered(time),
                event => events.push(event),
            }
        }
        Ok(events)
    }

    /// Wait until the origin's socket is readable or the liveness state
    /// needs a look. Cancel-safe (it only waits), for a select.
    pub async fn readable(&self) -> anyhow::Result<()> {
        tokio::select! {
            ready = self.socket.readable() => ready.context("origin socket")?,
            _ = tokio::time::sleep_until(self.next_check()) => {}
        }
        Ok(())
    }
}

/// The origin refused the client's credentials (the query the edge passed
/// on): not a failure of the origin, and another origin with the same
/// settings would refuse too.
#[derive(Debug)]
pub struct Unauthorized {
    pub code: String,
    pub description: String,
}

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "origin refused authorization: {} ({})",
            self.code, self.description
        )
    }
}

impl std::error::Error for Unauthorized {}

/// Whether `error` (from opening an upstream) is an [`Unauthorized`].
pub fn is_unauthorized(error: &anyhow::Error) -> bool {
    error.downcast_ref::<Unauthorized>().is_some()
}

/// An error status from the origin as an error ([`Unauthorized`] for a
/// refused publish or play).
pub fn fail_on_error(event: &ClientEvent) -> anyhow::Result<()> {
    match event {
        ClientEvent::Status {
            level,
            code,
            description,
            ..
        } if level == "error" => {
            if code.ends_with(".Unauthorized") {
                return Err(Unauthorized {
                    code: code.clone(),
                    description: description.clone(),
                }
                .into());
            }
            bail!("origin refused: {code} ({description})")
        }
        _ => Ok(()),
    }
}
