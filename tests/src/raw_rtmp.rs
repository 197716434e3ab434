//! A low-level RTMP connection for tests that must misbehave on purpose:
//! send garbage instead of a handshake, illegal chunk sizes, lying message
//! lengths, malformed AMF0, commands out of order, or play and then never
//! read. It is built from the project's sans-IO codecs (handshake, chunk
//! encoder/decoder, message parser) but drives them step by step, so a test
//! decides exactly which bytes go on the wire.
//!
//! For well-behaved publishing and playing use the real client,
//! `baton_common::rtmp::client`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use baton_common::amf0::Amf0Value;
use baton_common::rtmp::chunk::{ChunkDecoder, ChunkEncoder, RawMessage};
use baton_common::rtmp::handshake::{ClientHandshake, HandshakeStatus};
use baton_common::rtmp::message::RtmpMessage;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How a connection ended when the test expected the server to close it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// Orderly EOF.
    Eof,
    /// The read failed (reset, broken pipe...).
    Error(io::ErrorKind),
}

pub struct RawRtmp {
    stream: TcpStream,
    input: BytesMut,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    next_transaction: f64,
    /// Bytes read from the socket so far.
    pub bytes_read: u64,
}

impl RawRtmp {
    /// A TCP connection with nothing sent yet.
    pub async fn tcp(addr: SocketAddr) -> anyhow::Result<RawRtmp> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(Self::from_stream(stream))
    }

    /// A TCP connection whose receive buffer is set to `bytes` before
    /// connecting (so a player that stops reading stalls the server fast).
    pub async fn tcp_with_recv_buffer(addr: SocketAddr, bytes: u32) -> anyhow::Result<RawRtmp> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_recv_buffer_size(bytes)?;
        let stream = socket
            .connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(Self::from_stream(stream))
    }

    pub fn from_stream(stream: TcpStream) -> RawRtmp {
        RawRtmp {
            stream,
            input: BytesMut::with_capacity(64 * 1024),
            decoder: ChunkDecoder::new(),
            encoder: ChunkEncoder::new(),
            next_transaction: 1.0,
            bytes_read: 0,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.stream
            .local_addr()
            .expect("local_addr of a connected socket")
    }

    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Writes bytes exactly as given.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Plain client handshake (C0+C1, C2 = echo of S1).
    pub async fn handshake(&mut self) -> anyhow::Result<()> {
        let mut hs = ClientHandshake::default();
        let mut out = BytesMut::new();
        hs.start(&mut out);
        self.write_raw(&out).await?;
        loop {
            let mut out = BytesMut::new();
            let status = hs
                .handle(&mut self.input, &mut out)
                .map_err(|e| anyhow!("{e}"))?;
            if !out.is_empty() {
                self.write_raw(&out).await?;
            }
            if status == HandshakeStatus::Done {
                return Ok(());
            }
            if self.read_more().await? == 0 {
                bail!("server closed the connection during the handshake");
            }
        }
    }

    /// Encodes `message` with this connection's chunk encoder and sends it;
    /// a Set Chunk Size switches the encoder after it (even to sizes a
    /// compliant peer must reject: the encoder clamps, the wire carries the
    /// value).
    pub async fn send(&mut self, message: RtmpMessage) -> io::Result<()> {
        let new_size = match message {
            RtmpMessage::SetChunkSize(size) => Some(size),
            _ => None,
        };
        let mut out = BytesMut::new();
        self.encoder.encode(&message.into_raw(), &mut out);
        if let Some(size) = new_size {
            self.encoder.set_chunk_size(size);
        }
        self.write_raw(&out).await
    }

    /// Sends an already built raw message through the chunk encoder.
    pub async fn send_raw_message(&mut self, raw: &RawMessage) -> io::Result<()> {
        let mut out = BytesMut::new();
        self.encoder.encode(raw, &mut out);
        self.write_raw(&out).await
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        let n = self.stream.read_buf(&mut self.input).await?;
        self.bytes_read += n as u64;
        Ok(n)
    }

    /// The next message from the server (Set Chunk Size is applied before
    /// it is returned); `Ok(None)` on EOF.
    pub async fn read_message(&mut self) -> anyhow::Result<Option<RtmpMessage>> {
        loop {
            if let Some(raw) = self.decoder.decode(&mut self.input)? {
                let message = RtmpMessage::parse(raw)?;
                if let RtmpMessage::SetChunkSize(size) = message {
                    self.decoder.set_chunk_size(size)?;
                }
                return Ok(Some(message));
            }
            if self.read_more().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads until a command named `name` (or `_error`) with transaction id
    /// `transaction` arrives; returns it.
    async fn await_result(&mut self, transaction: f64) -> anyhow::Result<RtmpMessage> {
        loop {
            match self.read_message().await? {
                None => bail!(
                    "connection closed while waiting for the result of transaction {transaction}"
                ),
                Some(message @ RtmpMessage::Command { .. }) => {
                    if let RtmpMessage::Command {
                        name,
                        transaction_id,
                        ..
                    } = &message
                    {
                        if (name == "_result" || name == "_error") && *transaction_id == transaction
                        {
                            return Ok(message);
                        }
                    }
                }
                Some(_) => {}
            }
        }
    }

    fn transaction(&mut self) -> f64 {
        let t = self.next_transaction;
        self.next_transaction += 1.0;
        t
    }

    /// Sends `connect` for `app` and waits for its `_result`.
    pub async fn connect_app(&mut self, app: &str, tc_url: &str) -> anyhow::Result<()> {
        let t = self.transaction();
        let object = Amf0Value::object([
            ("app", Amf0Value::string(app)),
            ("type", Amf0Value::string("nonprivate")),
            (
                "flashVer",
                Amf0Value::string("FMLE/3.0 (compatible; baton-tests)"),
            ),
            ("tcUrl", Amf0Value::string(tc_url)),
        ]);
        self.send(RtmpMessage::command(0, "connect", t, object, vec![]))
            .await?;
        match self.await_result(t).await? {
            RtmpMessage::Command { name, .. } if name == "_result" => Ok(()),
            other => bail!("connect refused: {other:?}"),
        }
    }

    /// Sends `createStream` and returns the new message stream id.
    pub async fn create_stream(&mut self) -> anyhow::Result<u32> {
        let t = self.transaction();
        self.send(RtmpMessage::command(
            0,
            "createStream",
            t,
            Amf0Value::Null,
            vec![],
        ))
        .await?;
        match self.await_result(t).await? {
            RtmpMessage::Command { name, args, .. } if name == "_result" => args
                .first()
                .and_then(Amf0Value::as_f64)
                .map(|id| id as u32)
                .ok_or_else(|| anyhow!("createStream _result without a stream id: {args:?}")),
            other => bail!("createStream refused: {other:?}"),
        }
    }

    /// Sends `play` and returns the code of the first onStatus.
    pub async fn play(&mut self, stream_id: u32, name: &str) -> anyhow::Result<String> {
        self.send(RtmpMessage::command(
            stream_id,
            "play",
            0.0,
            Amf0Value::Null,
            vec![Amf0Value::string(name), Amf0Value::Number(-2.0)],
        ))
        .await?;
        self.await_status().await
    }

    /// Sends `publish` (live) and returns the code of the first onStatus.
    pub async fn publish(&mut self, stream_id: u32, name: &str) -> anyhow::Result<String> {
        self.send(RtmpMessage::command(
            stream_id,
            "publish",
            0.0,
            Amf0Value::Null,
            vec![Amf0Value::string(name), Amf0Value::string("live")],
        ))
        .await?;
        self.await_status().await
    }

    /// Reads until an `onStatus` and returns its code.
    pub async fn await_status(&mut self) -> anyhow::Result<String> {
        loop {
            match self.read_message().await? {
                None => bail!("connection closed while waiting for onStatus"),
                Some(message) => {
                    if let Some(code) = status_code(&message) {
                        return Ok(code);
                    }
                }
            }
        }
    }

    /// Handshake, connect, createStream, play: the steps of a player.
    /// Returns the message stream id after NetStream.Play.Start.
    pub async fn start_player(&mut self, app: &str, stream: &str) -> anyhow::Result<u32> {
        self.handshake().await?;
        let tc_url = format!("rtmp://{}/{app}", self.stream.peer_addr()?);
        self.connect_app(app, &tc_url).await?;
        let id = self.create_stream().await?;
        let code = self.play(id, stream).await?;
        if code != "NetStream.Play.Reset" && code != "NetStream.Play.Start" {
            bail!("play answered {code}");
        }
        Ok(id)
    }

    /// Reads and discards everything until the server closes the
    /// connection; `Err` if it is still open after `limit`.
    pub async fn wait_closed(&mut self, limit: Duration) -> anyhow::Result<Closed> {
        let mut buf = vec![0u8; 64 * 1024];
        let result = tokio::time::timeout(limit, async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) => return Closed::Eof,
                    Ok(n) => self.bytes_read += n as u64,
                    Err(e) => return Closed::Error(e.kind()),
                }
            }
        })
        .await;
        result.map_err(|_| anyhow!("the server did not close the connection within {limit:?}"))
    }
}

/// The `code` of an `onStatus` command, if `message` is one.
pub fn status_code(message: &RtmpMessage) -> Option<String> {
    let RtmpMessage::Command {
        name,
        command_object,
        args,
        ..
    } = message
    else {
        return None;
    };
    if name != "onStatus" {
        return None;
    }
    args.iter()
        .chain(std::iter::once(command_object))
        .find_map(|v| v.get("code").and_then(Amf0Value::as_str).map(str::to_owned))
}
