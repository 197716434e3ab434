//! Thin tokio glue around [`ClientSession`]: an RTMP publisher and an RTMP
//! player over a TCP socket, for integration tests, the bench load tool and
//! the edge.
//!
//! All protocol logic lives in the sans-IO session; this module only moves
//! bytes, applies timeouts (10 s to connect and reach Publish/Play.Start)
//! and batches writes so the load tool can publish at ~1 Gbit/s.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::media::MediaFrame;
use crate::rtmp::client_session::{ClientEvent, ClientSession};
use crate::rtmp::session::SessionError;

/// Default RTMP port.
pub const DEFAULT_PORT: u16 = 1935;
/// Limit for TCP connect plus handshake, connect, createStream and
/// publish/play.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// The publisher writes once this much output is pending.
const WRITE_BATCH: usize = 256 * 1024;
const READ_RESERVE: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid RTMP URL '{url}': {reason}")]
    InvalidUrl { url: String, reason: &'static str },
    #[error("RTMP connection I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("timed out after {timeout:?} while {during}")]
    Timeout {
        during: &'static str,
        timeout: Duration,
    },
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The server answered with an error status, e.g.
    /// NetStream.Play.StreamNotFound or NetStream.Publish.BadName.
    #[error("server refused: {code} ({description})")]
    Status { code: String, description: String },
    #[error("server closed the connection while {0}")]
    Closed(&'static str),
}

/// `rtmp://host[:port]/app/stream[?query]`. The first path segment is the
/// app; everything after it (including further '/' and the query) is the
/// stream name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtmpUrl {
    pub host: String,
    pub port: u16,
    pub app: String,
    pub stream: String,
}

impl RtmpUrl {
    pub fn parse(url: &str) -> Result<Self, ClientError> {
        let invalid = |reason| ClientError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("rtmp://")
            .ok_or_else(|| invalid("must start with rtmp://"))?;
        let (authority, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("missing /app/stream"))?;
        let (host, port) = split_host_port(authority).ok_or_else(|| invalid("bad host or port"))?;
        let (app, stream) = path
            .split_once('/')
            .ok_or_else(|| invalid("missing stream name after the app"))?;
        if app.is_empty() || stream.is_empty() {
            return Err(invalid("empty app or stream name"));
        }
        Ok(RtmpUrl {
            host,
            port,
            app: app.to_owned(),
            stream: stream.to_owned(),
        })
    }

    /// The `tcUrl` sent in `connect`: `rtmp://host:port/app`.
    pub fn tc_url(&self) -> String {
        if self.host.contains(':') {
            format!("rtmp://[{}]:{}/{}", self.host, self.port, self.app)
        } else {
            format!("rtmp://{}:{}/{}", self.host, self.port, self.app)
        }
    }
}

/// "host", "host:port", "[v6]" or "[v6]:port".
fn split_host_port(authority: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (host, after) = bracketed.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(port) => port.parse().ok()?,
        None => DEFAULT_PORT,
    };
    Some((host.to_owned(), port))
}

/// A TCP connection driving a [`ClientSession`].
struct Connection {
    socket: TcpStream,
    read_buf: BytesMut,
    session: ClientSession,
}

impl Connection {
    async fn open(url: &RtmpUrl) -> Result<Self, ClientError> {
        let socket = TcpStream::connect((url.host.as_str(), url.port)).await?;
        socket.set_nodelay(true)?;
        let mut session = ClientSession::with_seed(rand::random());
        session.connect(&url.app, &url.tc_url());
        session.create_stream();
        Ok(Connection {
            socket,
            read_buf: BytesMut::with_capacity(READ_RESERVE),
            session,
        })
    }

    async fn write_output(&mut self) -> Result<(), ClientError> {
        while let Some(bytes) = self.session.take_output() {
            self.socket.write_all(&bytes).await?;
        }
        Ok(())
    }

    /// Reads once and feeds the session; false on EOF.
    async fn read_some(&mut self) -> Result<bool, ClientError> {
        self.read_buf.reserve(READ_RESERVE);
        if self.socket.read_buf(&mut self.read_buf).await? == 0 {
            return Ok(false);
        }
        self.session.handle_input(&mut self.read_buf)?;
        Ok(true)
    }

    /// Feeds whatever the server already sent without waiting; false if
    /// the server closed the connection.
    fn read_ready(&mut self) -> Result<bool, ClientError> {
        loop {
            self.read_buf.reserve(READ_RESERVE);
            match self.socket.try_read_buf(&mut self.read_buf) {
                Ok(0) => return Ok(false),
                Ok(_) => self.session.handle_input(&mut self.read_buf)?,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(err) => return Err(err.into()),
            }
        }
    }

    async fn next_event(&mut self) -> Result<Option<ClientEvent>, ClientError> {
        loop {
            if let Some(event) = self.session.poll_event() {
                return Ok(Some(event));
            }
            self.write_output().await?;
            if !self.read_some().await? {
                return Ok(None);
            }
        }
    }

    /// Waits for the created stream id.
    async fn await_stream_created(&mut self) -> Result<u32, ClientError> {
        loop {
            match self.next_event().await? {
                Some(ClientEvent::StreamCreated { stream_id }) => return Ok(stream_id),
                Some(event) => fail_on_error_status(event)?,
                None => return Err(ClientError::Closed("creating the stream")),
            }
        }
    }

    /// Waits for an onStatus with `wanted` code; error statuses fail.
    async fn await_status(
        &mut self,
        wanted: &str,
        during: &'static str,
    ) -> Result<(), ClientError> {
        loop {
            match self.next_event().await? {
                Some(ClientEvent::Status { ref code, .. }) if code == wanted => return Ok(()),
                Some(event) => fail_on_error_status(event)?,
                None => return Err(ClientError::Closed(during)),
            }
        }
    }
}

fn fail_on_error_status(event: ClientEvent) -> Result<(), ClientError> {
    match event {
        ClientEvent::Status {
            level,
            code,
            description,
            ..
        } if level == "error" => Err(ClientError::Status { code, description }),
        _ => Ok(()),
    }
}

async fn with_setup_timeout<T>(
    during: &'static str,
    setup: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    timeout(SETUP_TIMEOUT, setup)
        .await
        .map_err(|_| ClientError::Timeout {
            during,
            timeout: SETUP_TIMEOUT,
        })?
}

/// Publishes one stream.
pub struct RtmpPublisher {
    conn: Connection,
    stream_id: u32,
    stream_name: String,
}

impl RtmpPublisher {
    /// Connects and returns once the server answered NetStream.Publish.Start;
    /// an error status becomes [`ClientError::Status`].
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let url = RtmpUrl::parse(url)?;
        with_setup_timeout("setting up the RTMP publish", async {
            let mut conn = Connection::open(&url).await?;
            let stream_id = conn.await_stream_created().await?;
            conn.session.publish(stream_id, &url.stream);
            conn.await_status(
                "NetStream.Publish.Start",
                "waiting for NetStream.Publish.Start",
            )
            .await?;
            Ok(RtmpPublisher {
                conn,
                stream_id,
                stream_name: url.stream.clone(),
            })
        })
        .await
    }

    /// Queues a frame; writes once enough output is pending.
    pub async fn send(&mut self, frame: &MediaFrame) -> Result<(), ClientError> {
        self.conn.session.send_media(self.stream_id, frame);
        if self.conn.session.output_len() >= WRITE_BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes everything pending and handles what the server sent meanwhile
    /// (pings, acks, a kick-out status).
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.conn.write_output().await?;
        if !self.conn.read_ready()? {
            return Err(ClientError::Closed("publishing"));
        }
        while let Some(event) = self.conn.session.poll_event() {
            fail_on_error_status(event)?;
        }
        self.conn.write_output().await
    }

    /// FCUnpublish + deleteStream, then shuts the socket down.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.conn.session.fc_unpublish(&self.stream_name);
        self.conn.session.delete_stream(self.stream_id);
        self.conn.write_output().await?;
        self.conn.socket.shutdown().await?;
        Ok(())
    }
}

/// Plays one stream.
pub struct RtmpPlayer {
    conn: Connection,
}

impl RtmpPlayer {
    /// Connects and returns once the server answered NetStream.Play.Start;
    /// an error status (e.g. NetStream.Play.StreamNotFound) becomes
    /// [`ClientError::Status`].
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        let url = RtmpUrl::parse(url)?;
        with_setup_timeout("setting up the RTMP play", async {
            let mut conn = Connection::open(&url).await?;
            let stream_id = conn.await_stream_created().await?;
            conn.session.play(stream_id, &url.stream);
            conn.await_status("NetStream.Play.Start", "waiting for NetStream.Play.Start")
                .await?;
            Ok(RtmpPlayer { conn })
        })
        .await
    }

    /// The next event; `None` once the server closed the connection.
    pub async fn next_event(&mut self) -> Result<Option<ClientEvent>, ClientError> {
        self.conn.next_event().await
    }

    /// The socket (for socket options; reading it directly would bypass
    /// the session).
    pub fn socket(&self) -> &TcpStream {
        &self.conn.socket
    }

    /// The next media frame, skipping other events; `None` on EOF.
    pub async fn next_frame(&mut self) -> Result<Option<MediaFrame>, ClientError> {
        loop {
            match self.conn.next_event().await? {
                Some(ClientEvent::Media { frame, .. }) => return Ok(Some(frame)),
                Some(_) => continue,
                None => return Ok(None),
            }
        }
    }

    /// A media frame the server has already sent, without waiting: reads
    /// what the socket holds now and returns the next decoded frame, or
    /// `Ok(None)` once nothing complete is left. A player reading on its
    /// own cadence calls it until `None`, then [`RtmpPlayer::write_pending`]
    /// (acknowledgements). The server closing is [`ClientError::Closed`].
    pub fn try_next_frame(&mut self) -> Result<Option<MediaFrame>, ClientError> {
        let conn = &mut self.conn;
        loop {
            while let Some(event) = conn.session.poll_event() {
                if let ClientEvent::Media { frame, .. } = event {
                    return Ok(Some(frame));
                }
            }
            conn.read_buf.reserve(READ_RESERVE);
            match conn.socket.try_read_buf(&mut conn.read_buf) {
                Ok(0) => return Err(ClientError::Closed("playing")),
                Ok(_) => conn.session.handle_input(&mut conn.read_buf)?,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Writes what the session has queued for the server (acknowledgements,
    /// pongs).
    pub async fn write_pending(&mut self) -> Result<(), ClientError> {
        self.conn.write_output().await
    }

    pub fn bytes_received(&self) -> u64 {
        self.conn.session.bytes_received()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::MediaKind;
    use crate::rtmp::session::{ServerEvent, ServerSession, SessionConfig};
    use bytes::Bytes;
    use tokio::net::TcpListener;

    #[test]
    fn parses_urls() {
        let url = RtmpUrl::parse("rtmp://example.com/live/cam?key=1").unwrap();
        assert_eq!(
            url,
            RtmpUrl {
                host: "example.com".into(),
                port: 1935,
                app: "live".into(),
                stream: "cam?key=1".into()
            }
        );
        assert_eq!(url.tc_url(), "rtmp://example.com:1935/live");
        let url = RtmpUrl::parse("rtmp://127.0.0.1:19350/app/a/b").unwrap();
        assert_eq!(
            (url.port, url.app.as_str(), url.stream.as_str()),
            (19350, "app", "a/b")
        );
        let url = RtmpUrl::parse("rtmp://[::1]:1936/live/s").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 1936));
        assert_eq!(url.tc_url(), "rtmp://[::1]:1936/live");
        for bad in [
            "http://h/live/s",
            "rtmp://h",
            "rtmp://h/live",
            "rtmp://h/live/",
            "rtmp://h:x/live/s",
            "rtmp://:1935/live/s",
            "rtmp://h//s",
        ] {
            assert!(RtmpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    /// A one-connection server built on ServerSession that accepts
    /// publishers of "cam", rejects other names, and echoes the media it
    /// got from a publisher to the next player connection.
    async fn serve(listener: TcpListener, connections: usize) -> Vec<MediaFrame> {
        let mut frames = Vec::new();
        for _ in 0..connections {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut session = ServerSession::new(SessionConfig::default());
            let mut buf = BytesMut::new();
            let mut playing = None;
            loop {
                while let Some(event) = session.poll_event() {
                    match event {
                        ServerEvent::PublishRequested {
                            stream_id, stream, ..
                        } if stream == "cam" => session.accept_publish(stream_id),
                        ServerEvent::PublishRequested { stream_id, .. } => {
                            session.reject_publish(stream_id, "NetStream.Publish.BadName", "taken")
                        }
                        ServerEvent::PlayRequested {
                            stream_id, stream, ..
                        } if stream == "cam" => {
                            session.accept_play(stream_id);
                            playing = Some(stream_id);
                        }
                        ServerEvent::PlayRequested { stream_id, .. } => {
                            session.reject_play(stream_id, "NetStream.Play.StreamNotFound", "none")
                        }
                        ServerEvent::Media { frame, .. } => frames.push(frame),
                        _ => {}
                    }
                }
                if let Some(stream_id) = playing.take() {
                    for frame in std::mem::take(&mut frames) {
                        session.send_media(stream_id, &frame);
                    }
                    session.notify_unpublish(stream_id);
                    while let Some(out) = session.take_output() {
                        socket.write_all(&out).await.unwrap();
                    }
                    socket.shutdown().await.unwrap();
                    // Drain until the player hangs up so nothing unread
                    // turns our close into a reset.
                    while matches!(socket.read_buf(&mut buf).await, Ok(n) if n > 0) {
                        buf.clear();
                    }
                    break;
                }
                while let Some(out) = session.take_output() {
                    socket.write_all(&out).await.unwrap();
                }
                buf.reserve(4096);
                match socket.read_buf(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if session.handle_input(&mut buf).is_err() {
                            break;
                        }
                    }
                }
            }
        }
        frames
    }

    #[tokio::test]
    async fn publish_then_play_over_tcp() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(serve(listener, 3));

        let base = format!("rtmp://127.0.0.1:{port}/live");
        let mut publisher = RtmpPublisher::connect(&format!("{base}/cam"))
            .await
            .unwrap();
        let sent: Vec<MediaFrame> = (0..50u32)
            .map(|i| {
                MediaFrame::new(
                    MediaKind::Video,
                    i * 40,
                    Bytes::from(vec![0x27; 10_000 + i as usize]),
                )
            })
            .collect();
        for frame in &sent {
            publisher.send(frame).await.unwrap();
        }
        publisher.flush().await.unwrap();
        publisher.close().await.unwrap();

        match RtmpPublisher::connect(&format!("{base}/other")).await {
            Err(ClientError::Status { code, .. }) => assert_eq!(code, "NetStream.Publish.BadName"),
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }

        let mut player = RtmpPlayer::connect(&format!("{base}/cam")).await.unwrap();
        let mut received = Vec::new();
        while let Some(frame) = player.next_frame().await.unwrap() {
            received.push(frame);
        }
        assert_eq!(received, sent);
        assert!(player.bytes_received() > 500_000);
        drop(player);
        server.await.unwrap();
    }

    #[tokio::test]
    async fn play_of_missing_stream_fails_with_status() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(serve(listener, 1));
        match RtmpPlayer::connect(&format!("rtmp://127.0.0.1:{port}/live/missing")).await {
            Err(ClientError::Status { code, .. }) => {
                assert_eq!(code, "NetStream.Play.StreamNotFound")
            }
            other => panic!("unexpected {:?}", other.map(|_| ())),
        }
        server.abort();
    }

    #[tokio::test]
    async fn refuses_garbage_servers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                .await
                .unwrap();
        });
        let result = RtmpPlayer::connect(&format!("rtmp://127.0.0.1:{port}/live/x")).await;
        assert!(matches!(
            result,
            Err(ClientError::Session(SessionError::Handshake(_)))
        ));
        server.await.unwrap();
    }
}
