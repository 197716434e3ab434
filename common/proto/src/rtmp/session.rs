//! The server side of an RTMP connection as a sans-IO state machine: bytes
//! from the socket go into [`ServerSession::handle_input`], bytes for the
//! socket come out of [`ServerSession::take_output`], and what the origin
//! must decide or forward comes out of [`ServerSession::poll_event`].
//!
//! The session answers everything it can on its own (handshake, connect,
//! createStream, pings, acknowledgements, chunk size) and asks the glue
//! only about publishing and playing, through `PublishRequested` /
//! `PlayRequested` events answered with `accept_*` / `reject_*`.
//!
//! Decisions worth knowing:
//! - Protocol violations close the connection (an `Err` from
//!   `handle_input`): bad handshake, chunk size 0 or over 16 MiB, oversized
//!   messages, malformed AMF0 in a command, malformed control messages,
//!   stream commands before `connect`, a second `connect`, and
//!   publish/play on a message stream that was never created.
//! - Unknown commands are answered with `_error` (when they carry a
//!   transaction id) and the connection goes on.
//! - Media on a stream that is not publishing is ignored and counted
//!   ([`ServerSession::ignored_media`]), since clients racing a
//!   `closeStream` legitimately send a few more frames.
//! - Media is emitted from the moment `publish` is requested, i.e. also
//!   before the glue calls `accept_publish` (a client may pipeline media
//!   behind `publish`). The glue sees `PublishRequested` before any of that
//!   stream's media and drops media for stream ids it did not accept.
//! - Malformed aggregate messages are dropped (logged at debug).
//! - Output is encoded with full (format 0) chunk headers, so whole
//!   `take_output()` buffers can be interleaved with
//!   [`crate::rtmp::chunk::encode_standalone`] media bytes on any csid.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::amf0::{self, Amf0Value};
use crate::media::{MediaFrame, MediaKind};
use crate::rtmp::chunk::{
    encode_standalone, ChunkError, RawMessage, MAX_BUFFERED_BYTES, MAX_MESSAGE_LEN,
    MAX_PARTIAL_MESSAGES,
};
use crate::rtmp::handshake::{HandshakeError, HandshakeStatus, ServerHandshake};
use crate::rtmp::link::Link;
use crate::rtmp::message::{csid, split_aggregate, MessageError, RtmpMessage, UserControlEvent};

/// Our Set Chunk Size to every peer, sent right after `connect`.
pub const OUT_CHUNK_SIZE: u32 = 60_000;
/// Message stream id players are served on (createStream returns 1 first).
pub const PLAY_STREAM_ID: u32 = 1;
/// Window acknowledgement size assumed for a peer that announces none.
pub const DEFAULT_WINDOW_ACK_SIZE: u32 = 2_500_000;
/// The property of `NetStream.Play.Start` / `NetStream.Play.PublishNotify`
/// naming the publish's timeline: a publish keeps its id across origins
/// (an edge passes it on with `?baton_timeline=ID`), so an edge that moves
/// between upstreams can tell a continuing timeline from a new publisher.
pub const TIMELINE_KEY: &str = "batonTimeline";
/// Until `connect`, a peer may send messages of at most this size (a
/// connect command is a few hundred bytes)...
pub const PRE_CONNECT_MAX_MESSAGE: u32 = 64 * 1024;
/// ...on at most this many chunk streams at once...
pub const PRE_CONNECT_MAX_PARTIAL: usize = 4;
/// ...holding at most this much in partial messages.
pub const PRE_CONNECT_MAX_BUFFERED: usize = 256 * 1024;

/// Enhanced RTMP v2 `capsEx` bit: the peer can be asked to reconnect
/// (`NetConnection.Connect.ReconnectRequest`) and will do so.
pub const CAPS_EX_RECONNECT: u32 = 0x01;
/// The status code of Enhanced RTMP v2's reconnect request.
pub const RECONNECT_REQUEST: &str = "NetConnection.Connect.ReconnectRequest";
/// Set Peer Bandwidth limit type "dynamic".
const LIMIT_TYPE_DYNAMIC: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our Window Acknowledgement Size (and Set Peer Bandwidth).
    pub window_ack_size: u32,
    /// Most message streams a connection may have created at once.
    pub max_streams: u32,
    /// Seed of the handshake's random bytes (the glue passes fresh ones).
    pub handshake_seed: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            window_ack_size: DEFAULT_WINDOW_ACK_SIZE,
            max_streams: 8,
            handshake_seed: crate::rtmp::handshake::DEFAULT_SEED,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// `connect` was already answered with NetConnection.Connect.Success.
    Connected { app: String, tc_url: Option<String> },
    /// Answer with `accept_publish` or `reject_publish`. `stream` is the
    /// name before any '?', `query` what follows it.
    PublishRequested {
        stream_id: u32,
        stream: String,
        query: Option<String>,
    },
    /// Answer with `accept_play` or `reject_play`.
    PlayRequested {
        stream_id: u32,
        stream: String,
        query: Option<String>,
    },
    /// Audio/video/data from a publishing stream. Data frames carry AMF0
    /// `["onMetaData", {...}]` (an `@setDataFrame` prefix is stripped);
    /// aggregates arrive split into their frames.
    Media { stream_id: u32, frame: MediaFrame },
    /// FCUnpublish / closeStream / deleteStream of a publishing stream
    /// (once per publish).
    Unpublished { stream_id: u32 },
    /// closeStream / deleteStream of a playing stream.
    PlayStopped { stream_id: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("RTMP handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("RTMP chunk stream error: {0}")]
    Chunk(#[from] ChunkError),
    #[error("malformed RTMP message of type {type_id} on message stream {stream_id}: {source}")]
    Message {
        type_id: u8,
        stream_id: u32,
        #[source]
        source: MessageError,
        /// A malformed command's name and transaction id, when those
        /// still decode (so the peer can be told which call failed).
        command: Option<(String, f64)>,
    },
    #[error("RTMP command '{command}' received before connect")]
    NotConnected {
        command: String,
        transaction_id: f64,
    },
    #[error("second RTMP connect on the same connection")]
    AlreadyConnected,
    #[error("RTMP command '{command}' on message stream {stream_id}, which was never created")]
    UnknownStream { command: String, stream_id: u32 },
}

/// What one message stream of the connection is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamState {
    Idle,
    PublishPending { name: String },
    Publishing { name: String },
    PlayPending { name: String },
    Playing { name: String },
}

/// Splits "name?query" into the name and the optional query.
pub(crate) fn split_stream_name(full: &str) -> (String, Option<String>) {
    match full.split_once('?') {
        Some((name, query)) => (name.to_owned(), Some(query.to_owned())),
        None => (full.to_owned(), None),
    }
}

/// The payload to forward for a data message, or None if it is not media:
/// `@setDataFrame` is stripped (by slicing, without re-encoding),
/// `@clearDataFrame` and non-string-led data are dropped.
pub(crate) fn data_frame_payload(values: &[Amf0Value], payload: &Bytes) -> Option<Bytes> {
    match values.first()?.as_str()? {
        "@setDataFrame" => {
            let mut rest = &payload[..];
            amf0::decode(&mut rest).ok()?;
            let offset = payload.len() - rest.len();
            (offset < payload.len()).then(|| payload.slice(offset..))
        }
        "@clearDataFrame" => None,
        _ => Some(payload.clone()),
    }
}

/// Media frames carried by one audio/video/data/aggregate message.
pub(crate) fn media_frames(message: RtmpMessage) -> Vec<MediaFrame> {
    match message {
        RtmpMessage::Audio {
            timestamp, payload, ..
        } => vec![MediaFrame::new(MediaKind::Audio, timestamp, payload)],
        RtmpMessage::Video {
            timestamp, payload, ..
        } => vec![MediaFrame::new(MediaKind::Video, timestamp, payload)],
        RtmpMessage::Data {
            timestamp,
            values,
            payload,
            ..
        } => data_frame_payload(&values, &payload)
            .map(|payload| MediaFrame::new(MediaKind::Data, timestamp, payload))
            .into_iter()
            .collect(),
        RtmpMessage::Aggregate {
            timestamp, payload, ..
        } => aggregate_frames(timestamp, &payload),
        _ => Vec::new(),
    }
}

fn aggregate_frames(timestamp: u32, payload: &Bytes) -> Vec<MediaFrame> {
    let parts = match split_aggregate(timestamp, payload) {
        Ok(parts) => parts,
        Err(err) => {
            tracing::debug!(%err, "dropping malformed RTMP aggregate message");
            return Vec::new();
        }
    };
    parts
        .into_iter()
        .filter_map(|part| match MediaKind::from_type_id(part.type_id)? {
            MediaKind::Data => {
                let values = decode_values_leniently(&part.payload);
                let payload = data_frame_payload(&values, &part.payload)?;
                Some(MediaFrame::new(MediaKind::Data, part.timestamp, payload))
            }
            kind => Some(MediaFrame::new(kind, part.timestamp, part.payload)),
        })
        .collect()
}

fn decode_values_leniently(payload: &[u8]) -> Vec<Amf0Value> {
    let mut rest = payload;
    let mut values = Vec::new();
    while let Ok(value) = amf0::decode(&mut rest) {
        values.push(value);
        if rest.is_empty() {
            break;
        }
    }
    values
}

/// Turns a media frame into the message carrying it on `stream_id`.
pub fn frame_message(stream_id: u32, frame: &MediaFrame) -> RawMessage {
    let csid = match frame.kind {
        MediaKind::Audio => csid::AUDIO,
        MediaKind::Video => csid::VIDEO,
        MediaKind::Data => csid::STREAM_COMMAND,
    };
    RawMessage {
        csid,
        timestamp: frame.timestamp,
        type_id: frame.kind.type_id(),
        stream_id,
        payload: frame.payload.clone(),
    }
}

pub(crate) fn info_object(level: &str, code: &str, description: &str) -> Amf0Value {
    Amf0Value::object([
        ("level", Amf0Value::string(level)),
        ("code", Amf0Value::string(code)),
        ("description", Amf0Value::string(description)),
    ])
}

/// Server side of one RTMP connection.
#[derive(Debug)]
pub struct ServerSession {
    config: SessionConfig,
    handshake: Option<ServerHandshake>,
    link: Link,
    events: VecDeque<ServerEvent>,
    app: Option<String>,
    streams: BTreeMap<u32, StreamState>,
    ignored_media: u64,
    /// Timeline id announced to players (see [`TIMELINE_KEY`]).
    timeline: Option<String>,
    /// The client's Enhanced RTMP `capsEx` from `connect`.
    peer_caps_ex: u32,
    /// The client's `tcUrl` from `connect`.
    tc_url: Option<String>,
}

impl ServerSession {
    pub fn new(config: SessionConfig) -> Self {
        let mut link = Link::new(false);
        link.decoder.set_limits(
            PRE_CONNECT_MAX_MESSAGE,
            PRE_CONNECT_MAX_PARTIAL,
            PRE_CONNECT_MAX_BUFFERED,
        );
        ServerSession {
            handshake: Some(ServerHandshake::new(config.handshake_seed)),
            config,
            link,
            events: VecDeque::new(),
            app: None,
            streams: BTreeMap::new(),
            ignored_media: 0,
            timeline: None,
            peer_caps_ex: 0,
            tc_url: None,
        }
    }

    /// Consumes the handshake and then whole chunks from `input`; an
    /// incomplete chunk stays in `input` for the next call.
    ///
    /// On an error the connection must close; before that, the output holds
    /// what the peer can read about why (see [`ServerSession::farewell`]):
    /// the glue flushes it, then closes.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<(), SessionError> {
        let before = input.len();
        let result = self.process(input);
        self.link.count_received(before - input.len());
        if let Err(error) = &result {
            self.farewell(error);
        }
        result
    }

    /// Queues the readable answer to a fatal error where the protocol has
    /// one: `_error` for a command that carried a transaction id (a command
    /// before `connect`, a command whose AMF0 is malformed, e.g. nested too
    /// deep), otherwise an error `onStatus` on the connection (a bad chunk
    /// size, an oversized message...). Nothing before the handshake is done
    /// (the peer does not speak RTMP).
    fn farewell(&mut self, error: &SessionError) {
        if self.handshake.is_some() {
            return;
        }
        let transaction = match error {
            SessionError::NotConnected { transaction_id, .. } => Some(*transaction_id),
            SessionError::Message {
                command: Some((_, transaction_id)),
                ..
            } => Some(*transaction_id),
            _ => None,
        }
        .filter(|tid| *tid > 0.0);
        let description = match error {
            SessionError::NotConnected { command, .. } => {
                format!("Command '{command}' before connect; send connect first. Closing.")
            }
            other => format!("Protocol error: {other}. Closing."),
        };
        match transaction {
            Some(tid) => self.reply_error(tid, "NetConnection.Call.Failed", &description),
            None => self.send(RtmpMessage::command(
                0,
                "onStatus",
                0.0,
                Amf0Value::Null,
                vec![info_object(
                    "error",
                    "NetConnection.Connect.Rejected",
                    &description,
                )],
            )),
        }
    }

    fn process(&mut self, input: &mut BytesMut) -> Result<(), SessionError> {
        if let Some(handshake) = self.handshake.as_mut() {
            match handshake.handle(input, self.link.outbox.buffer())? {
                HandshakeStatus::InProgress => return Ok(()),
                HandshakeStatus::Done => self.handshake = None,
            }
        }
        while let Some((stream_id, message)) = self.link.next_message(input)? {
            self.handle_message(stream_id, message)?;
        }
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Bytes to write to the socket, `None` if nothing is pending.
    pub fn take_output(&mut self) -> Option<Bytes> {
        self.link.outbox.take()
    }

    /// Bytes the decoder holds in partial messages (the caller's own
    /// input buffer comes on top).
    pub fn buffered_input(&self) -> usize {
        self.link.decoder.buffered_bytes()
    }

    pub fn has_output(&self) -> bool {
        self.link.outbox.len() > 0
    }

    /// The application name from `connect`.
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }

    /// Every byte consumed from the peer, handshake included.
    pub fn bytes_received(&self) -> u64 {
        self.link.acks.received()
    }

    /// Audio/video/data messages dropped because their stream was not
    /// publishing.
    pub fn ignored_media(&self) -> u64 {
        self.ignored_media
    }

    /// Queues one media frame for a player on `stream_id`, with a full
    /// header (see [`encode_standalone`]); interleaves safely with shared
    /// frame bytes the glue writes itself.
    pub fn send_media(&mut self, stream_id: u32, frame: &MediaFrame) {
        let bytes = encode_standalone(
            self.link.outbox.chunk_size(),
            &frame_message(stream_id, frame),
        );
        self.link.outbox.write_bytes(&bytes);
    }

    pub fn accept_publish(&mut self, stream_id: u32) {
        let Some(StreamState::PublishPending { name }) = self.streams.get(&stream_id).cloned()
        else {
            tracing::debug!(
                stream_id,
                "accept_publish for a stream with no pending publish"
            );
            return;
        };
        let description = format!("{name} is now published.");
        self.streams
            .insert(stream_id, StreamState::Publishing { name });
        self.send_status(stream_id, "status", "NetStream.Publish.Start", &description);
    }

    pub fn reject_publish(&mut self, stream_id: u32, code: &str, description: &str) {
        if let Some(state) = self.streams.get_mut(&stream_id) {
            *state = StreamState::Idle;
        }
        self.send_status(stream_id, "error", code, description);
    }

    pub fn accept_play(&mut self, stream_id: u32) {
        let Some(StreamState::PlayPending { name }) = self.streams.get(&stream_id).cloned() else {
            tracing::debug!(stream_id, "accept_play for a stream with no pending play");
            return;
        };
        self.send(RtmpMessage::UserControl(UserControlEvent::StreamBegin(
            stream_id,
        )));
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.Reset",
            &format!("Playing and resetting {name}."),
        );
        self.send_timeline_status(
            stream_id,
            "NetStream.Play.Start",
            &format!("Started playing {name}."),
        );
        self.send(RtmpMessage::data(
            stream_id,
            0,
            vec![
                Amf0Value::string("|RtmpSampleAccess"),
                Amf0Value::Boolean(true),
                Amf0Value::Boolean(true),
            ],
        ));
        self.streams
            .insert(stream_id, StreamState::Playing { name });
    }

    pub fn reject_play(&mut self, stream_id: u32, code: &str, description: &str) {
        if let Some(state) = self.streams.get_mut(&stream_id) {
            *state = StreamState::Idle;
        }
        self.send_status(stream_id, "error", code, description);
    }

    /// Tells a player its stream's publisher went away.
    pub fn notify_unpublish(&mut self, stream_id: u32) {
        self.send_status(
            stream_id,
            "status",
            "NetStream.Play.UnpublishNotify",
            "The stream is unpublished.",
        );
        self.send(RtmpMessage::UserControl(UserControlEvent::StreamEof(
            stream_id,
        )));
    }

    /// Tells a player its stream is published again.
    pub fn notify_publish(&mut self, stream_id: u32) {
        self.send(RtmpMessage::UserControl(UserControlEvent::StreamBegin(
            stream_id,
        )));
        self.send_timeline_status(
            stream_id,
            "NetStream.Play.PublishNotify",
            "The stream is published.",
        );
    }

    /// Whether the client announced it can be asked to reconnect
    /// (Enhanced RTMP `capsEx` bit [`CAPS_EX_RECONNECT`]).
    pub fn can_reconnect(&self) -> bool {
        self.peer_caps_ex & CAPS_EX_RECONNECT != 0
    }

    /// The client's `tcUrl` from `connect`.
    pub fn tc_url(&self) -> Option<&str> {
        self.tc_url.as_deref()
    }

    /// Enhanced RTMP v2's reconnect request: this server is going away
    /// (draining, or handing over to a new generation); reconnect, to
    /// `tc_url` if given (the same address for an upgrade), else wherever
    /// the client would otherwise go.
    pub fn request_reconnect(&mut self, tc_url: Option<&str>, description: &str) {
        let mut info = info_object("status", RECONNECT_REQUEST, description);
        if let (Amf0Value::Object(pairs), Some(url)) = (&mut info, tc_url) {
            pairs.push(("tcUrl".to_owned(), Amf0Value::string(url)));
        }
        self.send(RtmpMessage::command(
            0,
            "onStatus",
            0.0,
            Amf0Value::Null,
            vec![info],
        ));
    }

    /// The timeline id the next `Play.Start` / `PublishNotify` announces.
    pub fn set_timeline(&mut self, id: Option<String>) {
        self.timeline = id;
    }

    fn send_timeline_status(&mut self, stream_id: u32, code: &str, description: &str) {
        let mut info = info_object("status", code, description);
        if let (Amf0Value::Object(pairs), Some(id)) = (&mut info, &self.timeline) {
            pairs.push((TIMELINE_KEY.to_owned(), Amf0Value::string(id.clone())));
        }
        self.send(RtmpMessage::command(
            stream_id,
            "onStatus",
            0.0,
            Amf0Value::Null,
            vec![info],
        ));
    }

    pub fn send_status(&mut self, stream_id: u32, level: &str, code: &str, description: &str) {
        self.send(RtmpMessage::command(
            stream_id,
            "onStatus",
            0.0,
            Amf0Value::Null,
            vec![info_object(level, code, description)],
        ));
    }

    fn send(&mut self, message: RtmpMessage) {
        self.link.outbox.send(message);
    }

    fn handle_message(&mut self, stream_id: u32, message: RtmpMessage) -> Result<(), SessionError> {
        match message {
            RtmpMessage::Command {
                stream_id,
                name,
                transaction_id,
                command_object,
                args,
            } => self.handle_command(stream_id, &name, transaction_id, &command_object, &args)?,
            media @ (RtmpMessage::Audio { .. }
            | RtmpMessage::Video { .. }
            | RtmpMessage::Data { .. }
            | RtmpMessage::Aggregate { .. }) => self.handle_media(stream_id, media),
            RtmpMessage::Unknown { type_id, .. } => {
                tracing::debug!(type_id, stream_id, "ignoring RTMP message of unknown type");
            }
            _ => {}
        }
        Ok(())
    }

    fn handle_media(&mut self, stream_id: u32, message: RtmpMessage) {
        let publishing = matches!(
            self.streams.get(&stream_id),
            Some(StreamState::Publishing { .. } | StreamState::PublishPending { .. })
        );
        if !publishing {
            self.ignored_media += 1;
            return;
        }
        for frame in media_frames(message) {
            self.events
                .push_back(ServerEvent::Media { stream_id, frame });
        }
    }

    fn handle_command(
        &mut self,
        stream_id: u32,
        name: &str,
        transaction_id: f64,
        command_object: &Amf0Value,
        args: &[Amf0Value],
    ) -> Result<(), SessionError> {
        if name == "connect" {
            return self.on_connect(transaction_id, command_object);
        }
        let known = matches!(
            name,
            "createStream"
                | "releaseStream"
                | "FCPublish"
                | "FCUnpublish"
                | "publish"
                | "play"
                | "deleteStream"
                | "closeStream"
                | "getStreamLength"
        );
        if known && self.app.is_none() {
            return Err(SessionError::NotConnected {
                command: name.to_owned(),
                transaction_id,
            });
        }
        match name {
            "createStream" => self.on_create_stream(transaction_id),
            "releaseStream" | "FCPublish" => {
                self.reply_result(transaction_id, vec![Amf0Value::Undefined]);
            }
            "FCUnpublish" => self.on_fc_unpublish(transaction_id, args),
            "publish" => self.on_publish(stream_id, args)?,
            "play" => self.on_play(stream_id, args)?,
            "deleteStream" => self.on_delete_stream(args),
            "closeStream" => self.stop_stream(stream_id, false),
            "getStreamLength" => self.reply_result(transaction_id, vec![Amf0Value::Number(0.0)]),
            _ => self.on_unknown_command(name, transaction_id),
        }
        Ok(())
    }

    fn on_connect(
        &mut self,
        transaction_id: f64,
        command_object: &Amf0Value,
    ) -> Result<(), SessionError> {
        if self.app.is_some() {
            return Err(SessionError::AlreadyConnected);
        }
        let text = |key: &str| command_object.get(key).and_then(Amf0Value::as_str);
        let app = text("app")
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned();
        let tc_url = text("tcUrl").map(str::to_owned);
        let object_encoding = command_object
            .get("objectEncoding")
            .and_then(Amf0Value::as_f64)
            .unwrap_or(0.0);
        // Connected: the protocol's own bounds apply from now on.
        self.link
            .decoder
            .set_limits(MAX_MESSAGE_LEN, MAX_PARTIAL_MESSAGES, MAX_BUFFERED_BYTES);
        self.peer_caps_ex = command_object
            .get("capsEx")
            .and_then(Amf0Value::as_f64)
            .filter(|caps| caps.is_finite() && *caps >= 0.0)
            .map_or(0, |caps| caps as u32);
        self.tc_url = tc_url.clone();

        let window = self.config.window_ack_size;
        self.send(RtmpMessage::WindowAckSize(window));
        self.send(RtmpMessage::SetPeerBandwidth {
            size: window,
            limit_type: LIMIT_TYPE_DYNAMIC,
        });
        self.send(RtmpMessage::SetChunkSize(OUT_CHUNK_SIZE));
        let properties = Amf0Value::object([
            ("fmsVer", Amf0Value::string("FMS/3,0,1,123")),
            ("capabilities", Amf0Value::Number(31.0)),
            ("capsEx", Amf0Value::Number(f64::from(CAPS_EX_RECONNECT))),
        ]);
        let information = Amf0Value::object([
            ("level", Amf0Value::string("status")),
            ("code", Amf0Value::string("NetConnection.Connect.Success")),
            ("description", Amf0Value::string("Connection succeeded.")),
            ("objectEncoding", Amf0Value::Number(object_encoding)),
        ]);
        self.send(RtmpMessage::command(
            0,
            "_result",
            transaction_id,
            properties,
            vec![information],
        ));

        self.app = Some(app.clone());
        self.events
            .push_back(ServerEvent::Connected { app, tc_url });
        Ok(())
    }

    fn on_create_stream(&mut self, transaction_id: f64) {
        if self.streams.len() >= self.config.max_streams as usize {
            tracing::debug!(max = self.config.max_streams, "createStream over the limit");
            self.reply_error(
                transaction_id,
                "NetConnection.Call.Failed",
                "Too many streams.",
            );
            return;
        }
        let stream_id = self.lowest_free_stream_id();
        self.streams.insert(stream_id, StreamState::Idle);
        self.reply_result(
            transaction_id,
            vec![Amf0Value::Number(f64::from(stream_id))],
        );
    }

    fn lowest_free_stream_id(&self) -> u32 {
        (1..)
            .find(|id| !self.streams.contains_key(id))
            .unwrap_or(u32::MAX)
    }

    /// The stream name argument of publish/play: "name?query".
    fn stream_name_arg(args: &[Amf0Value]) -> Option<&str> {
        args.first()
            .and_then(Amf0Value::as_str)
            .filter(|name| !name.is_empty())
    }

    fn require_idle_stream(&self, command: &str, stream_id: u32) -> Result<bool, SessionError> {
        match self.streams.get(&stream_id) {
            None => Err(SessionError::UnknownStream {
                command: command.to_owned(),
                stream_id,
            }),
            Some(state) => Ok(*state == StreamState::Idle),
        }
    }

    fn on_publish(&mut self, stream_id: u32, args: &[Amf0Value]) -> Result<(), SessionError> {
        let idle = self.require_idle_stream("publish", stream_id)?;
        let Some(full_name) = Self::stream_name_arg(args) else {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Publish.BadName",
                "No stream name given.",
            );
            return Ok(());
        };
        if !idle {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Publish.BadConnection",
                "Stream is busy.",
            );
            return Ok(());
        }
        let (stream, query) = split_stream_name(full_name);
        self.streams.insert(
            stream_id,
            StreamState::PublishPending {
                name: stream.clone(),
            },
        );
        self.events.push_back(ServerEvent::PublishRequested {
            stream_id,
            stream,
            query,
        });
        Ok(())
    }

    fn on_play(&mut self, stream_id: u32, args: &[Amf0Value]) -> Result<(), SessionError> {
        let idle = self.require_idle_stream("play", stream_id)?;
        let Some(full_name) = Self::stream_name_arg(args) else {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Play.StreamNotFound",
                "No stream name given.",
            );
            return Ok(());
        };
        if !idle {
            self.send_status(
                stream_id,
                "error",
                "NetStream.Play.Failed",
                "Stream is busy.",
            );
            return Ok(());
        }
        let (stream, query) = split_stream_name(full_name);
        self.streams.insert(
            stream_id,
            StreamState::PlayPending {
                name: stream.clone(),
            },
        );
        self.events.push_back(ServerEvent::PlayRequested {
            stream_id,
            stream,
            query,
        });
        Ok(())
    }

    fn on_fc_unpublish(&mut self, transaction_id: f64, args: &[Amf0Value]) {
        let requested = args
            .first()
            .and_then(Amf0Value::as_str)
            .map(split_stream_name);
        let publishing = self.streams.iter().find_map(|(&id, state)| match state {
            StreamState::Publishing { name } | StreamState::PublishPending { name }
                if requested.as_ref().is_none_or(|(wanted, _)| wanted == name) =>
            {
                Some(id)
            }
            _ => None,
        });
        if let Some(stream_id) = publishing {
            self.stop_stream(stream_id, false);
        }
        self.reply_result(transaction_id, vec![Amf0Value::Undefined]);
    }

    fn on_delete_stream(&mut self, args: &[Amf0Value]) {
        let Some(id) = args.first().and_then(Amf0Value::as_f64) else {
            return;
        };
        if !(1.0..=f64::from(u32::MAX)).contains(&id) {
            return;
        }
        self.stop_stream(id as u32, true);
    }

    /// Ends whatever `stream_id` is doing, emitting Unpublished/PlayStopped
    /// once; `delete` also frees the stream id.
    fn stop_stream(&mut self, stream_id: u32, delete: bool) {
        let previous = if delete {
            self.streams.remove(&stream_id)
        } else {
            self.streams
                .get_mut(&stream_id)
                .map(|state| std::mem::replace(state, StreamState::Idle))
        };
        match previous {
            Some(StreamState::Publishing { .. } | StreamState::PublishPending { .. }) => {
                self.events
                    .push_back(ServerEvent::Unpublished { stream_id });
            }
            Some(StreamState::Playing { .. } | StreamState::PlayPending { .. }) => {
                self.events
                    .push_back(ServerEvent::PlayStopped { stream_id });
            }
            Some(StreamState::Idle) | None => {}
        }
    }

    fn on_unknown_command(&mut self, name: &str, transaction_id: f64) {
        tracing::debug!(command = name, "unhandled RTMP command");
        self.reply_error(
            transaction_id,
            "NetConnection.Call.Failed",
            &format!("Method not found ({name})."),
        );
    }

    /// `_result` on stream 0, skipped for transaction id 0 (no reply
    /// expected).
    fn reply_result(&mut self, transaction_id: f64, args: Vec<Amf0Value>) {
        if transaction_id > 0.0 {
            self.send(RtmpMessage::command(
                0,
                "_result",
                transaction_id,
                Amf0Value::Null,
                args,
            ));
        }
    }

    fn reply_error(&mut self, transaction_id: f64, code: &str, description: &str) {
        if transaction_id > 0.0 {
            self.send(RtmpMessage::command(
                0,
                "_error",
                transaction_id,
                Amf0Value::Null,
                vec![info_object("error", code, description)],
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::chunk::{ChunkDecoder, ChunkEncoder};
    use crate::rtmp::client_session::{ClientEvent, ClientSession};
    use crate::rtmp::message::type_id;
    use proptest::prelude::*;

    /// Moves bytes both ways until neither side has anything to say.
    fn pump(client: &mut ClientSession, server: &mut ServerSession) -> Result<(), SessionError> {
        for _ in 0..32 {
            let mut moved = false;
            if let Some(bytes) = client.take_output() {
                let mut input = BytesMut::from(&bytes[..]);
                server.handle_input(&mut input)?;
                assert!(input.is_empty(), "server left {} bytes", input.len());
                moved = true;
            }
            if let Some(bytes) = server.take_output() {
                let mut input = BytesMut::from(&bytes[..]);
                client.handle_input(&mut input)?;
                assert!(input.is_empty(), "client left {} bytes", input.len());
                moved = true;
            }
            if !moved {
                return Ok(());
            }
        }
        Ok(())
    }

    fn server_events(server: &mut ServerSession) -> Vec<ServerEvent> {
        std::iter::from_fn(|| server.poll_event()).collect()
    }

    fn client_events(client: &mut ClientSession) -> Vec<ClientEvent> {
        std::iter::from_fn(|| client.poll_event()).collect()
    }

    fn status_codes(events: &[ClientEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|event| match event {
                ClientEvent::Status { code, .. } => Some(code.clone()),
                _ => None,
            })
            .collect()
    }

    fn connected_pair() -> (ClientSession, ServerSession) {
        let mut client = ClientSession::new();
        let mut server = ServerSession::new(SessionConfig::default());
        client.connect("live", "rtmp://localhost/live");
        pump(&mut client, &mut server).unwrap();
        assert_eq!(
            server_events(&mut server),
            vec![ServerEvent::Connected {
                app: "live".into(),
                tc_url: Some("rtmp://localhost/live".into())
            }]
        );
        assert_eq!(client_events(&mut client), vec![ClientEvent::Connected]);
        assert_eq!(server.app(), Some("live"));
        (client, server)
    }

    fn create_stream(client: &mut ClientSession, server: &mut ServerSession) -> u32 {
        client.create_stream();
        pump(client, server).unwrap();
        match client_events(client).as_slice() {
            [ClientEvent::StreamCreated { stream_id }] => *stream_id,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn frame(kind: MediaKind, timestamp: u32, payload: &'static [u8]) -> MediaFrame {
        MediaFrame::new(kind, timestamp, Bytes::from_static(payload))
    }

    fn metadata_payload() -> Bytes {
        amf0::encode_all(&[
            Amf0Value::string("onMetaData"),
            Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(1280.0))]),
        ])
    }

    #[test]
    fn publish_media_and_delete_stream() {
        let (mut client, mut server) = connected_pair();
        let stream_id = create_stream(&mut client, &mut server);
        assert_eq!(stream_id, PLAY_STREAM_ID);

        client.publish(stream_id, "cam?key=secret");
        pump(&mut client, &mut server).unwrap();
        assert_eq!(
            server_events(&mut server),
            vec![ServerEvent::PublishRequested {
                stream_id,
                stream: "cam".into(),
                query: Some("key=secret".into())
            }]
        );
        server.accept_publish(stream_id);
        pump(&mut client, &mut server).unwrap();
        assert_eq!(
            status_codes(&client_events(&mut client)),
            vec!["NetStream.Publish.Start"]
        );

        let big_video = MediaFrame::new(MediaKind::Video, 40, Bytes::from(vec![0x17; 100_000]));
        let sent = vec![
            MediaFrame::new(MediaKind::Data, 0, metadata_payload()),
            frame(MediaKind::Video, 0, &[0x17, 0, 0, 0, 0, 1]),
            frame(MediaKind::Audio, 0, &[0xaf, 0, 0x12, 0x10]),
            frame(MediaKind::Audio, 23, &[0xaf, 1, 0x21]),
            big_video,
            frame(MediaKind::Video, 0x0100_0000, &[0x27, 1, 0, 0, 0, 9]),
        ];
        for f in &sent {
            client.send_media(stream_id, f);
        }
        pump(&mut client, &mut server).unwrap();
        let received: Vec<MediaFrame> = server_events(&mut server)
            .into_iter()
            .map(|event| match event {
                ServerEvent::Media {
                    stream_id: 1,
                    frame,
                } => frame,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(received, sent, "metadata arrives without @setDataFrame");

        client.fc_unpublish("cam");
        client.delete_stream(stream_id);
        pump(&mut client, &mut server).unwrap();
        assert_eq!(
            server_events(&mut server),
            vec![ServerEvent::Unpublished { stream_id }]
        );
        // Media after the stream is gone is ignored and counted.
        client.send_media(stream_id, &frame(MediaKind::Audio, 50, &[0xaf, 1]));
        pump(&mut client, &mut server).unwrap();
        assert_eq!(server_events(&mut server), vec![]);
        assert_eq!(server.ignored_media(), 1);
    }

    #[test]
    fn play_receives_status_and_media() {
        let (mut client, mut server) = connected_pair();
        let stream_id = create_stream(&mut client, &mut server);
        client.play(stream_id, "cam");
        pump(&mut client, &mut server).unwrap();
        assert_eq!(
            server_events(&mut server),
            vec![ServerEvent::PlayRequested {
                stream_id,
                stream: "cam".into(),
                query: None
            }]
        );
        server.accept_play(stream_id);
        let shared = crate::rtmp::chunk::encode_standalone(
            OUT_CHUNK_SIZE,
            &frame_message(PLAY_STREAM_ID, &frame(MediaKind::Video, 5, &[0x17, 1, 2])),
        );
        // The glue writes shared frame bytes between session outputs.
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&server.take_output().unwrap());
        wire.extend_from_slice(&shared);
        server.send_media(
            stream_id,
            &MediaFrame::new(MediaKind::Data, 5, metadata_payload()),
        );
        server.notify_unpublish(stream_id);
        wire.extend_from_slice(&server.take_output().unwrap());
        client.handle_input(&mut wire).unwrap();
        let events = client_events(&mut client);
        assert_eq!(
            status_codes(&events),
            vec![
                "NetStream.Play.Reset",
                "NetStream.Play.Start",
                "NetStream.Play.UnpublishNotify"
            ]
        );
        let media: Vec<MediaFrame> = events
            .into_iter()
            .filter_map(|event| match event {
                ClientEvent::Media { frame, .. } => Some(frame),
                _ => None,
            })
            .collect();
        assert_eq!(
            media,
            vec![
                frame(MediaKind::Video, 5, &[0x17, 1, 2]),
                MediaFrame::new(MediaKind::Data, 5, metadata_payload())
            ]
        );

        client.delete_stream(stream_id);
        pump(&mut client, &mut server).unwrap();
        assert_eq!(
            server_events(&mut server),
            vec![ServerEvent::PlayStopped { stream_id }]
        );
    }

    #[test]
    fn rejected_play_reports_error_status() {
        let (mut client, mut server) = connected_pair();
        let stream_id = create_stream(&mut client, &mut server);
        client.play(stream_id, "missing");
        pump(&mut client, &mut server).unwrap();
        server_events(&mut server);
        server.reject_play(
            stream_id,
            "NetStream.Play.StreamNotFound",
            "No such stream.",
        );
        pump(&mut client, &mut server).unwrap();
        let events = client_events(&mut client);
        assert!(events.contains(&ClientEvent::Status {
            stream_id,
            level: "error".into(),
            code: "NetStream.Play.StreamNotFound".into(),
            description: "No such stream.".into(),
            timeline: None,
            tc_url: None,
        }));
        // The stream is idle again: a second play is allowed.
        client.play(stream_id, "other");
        pump(&mut client, &mut server).unwrap();
        assert_eq!(server_events(&mut server).len(), 1);
    }

    #[test]
    fn rejected_publish_stops_media() {
        let (mut client, mut server) = connected_pair();
        let stream_id = create_stream(&mut client, &mut server);
        client.publish(stream_id, "taken");
        pump(&mut client, &mut server).unwrap();
        server_events(&mut server);
        server.reject_publish(
            stream_id,
            "NetStream.Publish.BadName",
            "Already publishing.",
        );
        pump(&mut client, &mut server).unwrap();
        assert_eq!(
            status_codes(&client_events(&mut client)),
            vec!["NetStream.Publish.BadName"]
        );
        client.send_media(stream_id, &frame(MediaKind::Video, 0, &[0x17]));
        pump(&mut client, &mut server).unwrap();
        assert_eq!(server_events(&mut server), vec![]);
    }

    #[test]
    fn connect_reply_order_and_chunk_size() {
        let mut client = ClientSession::new();
        let mut server = ServerSession::new(SessionConfig::default());
        client.connect("live", "rtmp://h/live");
        // Handshake first.
        let c0c1 = client.take_output().unwrap();
        server.handle_input(&mut BytesMut::from(&c0c1[..])).unwrap();
        let s0s1s2 = server.take_output().unwrap();
        client
            .handle_input(&mut BytesMut::from(&s0s1s2[..]))
            .unwrap();
        let after_handshake = client.take_output().unwrap();
        server
            .handle_input(&mut BytesMut::from(&after_handshake[..]))
            .unwrap();
        let reply = server.take_output().unwrap();
        let mut decoder = ChunkDecoder::new();
        let mut buf = BytesMut::from(&reply[..]);
        let mut types = Vec::new();
        while let Some(raw) = decoder.decode(&mut buf).unwrap() {
            let message = RtmpMessage::parse(raw).unwrap();
            if let RtmpMessage::SetChunkSize(size) = message {
                decoder.set_chunk_size(size).unwrap();
            }
            types.push(message);
        }
        assert_eq!(
            types[0],
            RtmpMessage::WindowAckSize(DEFAULT_WINDOW_ACK_SIZE)
        );
        assert_eq!(
            types[1],
            RtmpMessage::SetPeerBandwidth {
                size: DEFAULT_WINDOW_ACK_SIZE,
                limit_type: 2
            }
        );
        assert_eq!(types[2], RtmpMessage::SetChunkSize(OUT_CHUNK_SIZE));
        match &types[3] {
            RtmpMessage::Command {
                name,
                transaction_id,
                command_object,
                args,
                ..
            } => {
                assert_eq!(name, "_result");
                assert_eq!(*transaction_id, 1.0);
                assert_eq!(
                    command_object.get("capabilities"),
                    Some(&Amf0Value::Number(31.0))
                );
                let info = &args[0];
                assert_eq!(
                    info.get("code").and_then(Amf0Value::as_str),
                    Some("NetConnection.Connect.Success")
                );
                assert_eq!(info.get("objectEncoding"), Some(&Amf0Value::Number(0.0)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A raw client: handshake done by hand, then arbitrary messages.
    fn handshaken_server() -> (ServerSession, ChunkEncoder) {
        let mut server = ServerSession::new(SessionConfig::default());
        let mut input = BytesMut::new();
        input.extend_from_slice(&[3u8]);
        input.extend_from_slice(&[0u8; 2 * crate::rtmp::handshake::HANDSHAKE_SIZE]);
        server.handle_input(&mut input).unwrap();
        server.take_output();
        (server, ChunkEncoder::new())
    }

    fn send_to(
        server: &mut ServerSession,
        encoder: &mut ChunkEncoder,
        message: RtmpMessage,
    ) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        encoder.encode(&message.into_raw(), &mut out);
        server.handle_input(&mut out)
    }

    fn command(stream_id: u32, name: &str, tid: f64, args: Vec<Amf0Value>) -> RtmpMessage {
        RtmpMessage::command(stream_id, name, tid, Amf0Value::Null, args)
    }

    #[test]
    fn publish_before_connect_is_an_error() {
        let (mut server, mut encoder) = handshaken_server();
        let err = send_to(
            &mut server,
            &mut encoder,
            command(1, "publish", 0.0, vec![Amf0Value::string("x")]),
        )
        .unwrap_err();
        assert!(
            matches!(err, SessionError::NotConnected { ref command, .. } if command == "publish")
        );
        let (mut server, mut encoder) = handshaken_server();
        assert!(send_to(
            &mut server,
            &mut encoder,
            command(0, "createStream", 2.0, vec![])
        )
        .is_err());
        let (mut server, mut encoder) = handshaken_server();
        assert!(send_to(&mut server, &mut encoder, command(1, "play", 0.0, vec![])).is_err());
    }

    /// What the server queued, decoded with the chunk size it used.
    fn decode_output_at(server: &mut ServerSession, chunk_size: u32) -> Vec<RtmpMessage> {
        let Some(bytes) = server.take_output() else {
            return vec![];
        };
        let mut decoder = ChunkDecoder::new();
        decoder.set_chunk_size(chunk_size).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        std::iter::from_fn(|| decoder.decode(&mut buf).unwrap())
            .map(|raw| RtmpMessage::parse(raw).unwrap())
            .collect()
    }

    /// The (name, transaction id, level, code, description) of a command
    /// carrying an info object.
    fn status_of(message: &RtmpMessage) -> Option<(String, f64, String, String, String)> {
        let RtmpMessage::Command {
            name,
            transaction_id,
            args,
            ..
        } = message
        else {
            return None;
        };
        let info = args.first()?;
        let text = |k: &str| {
            info.get(k)
                .and_then(Amf0Value::as_str)
                .unwrap_or("")
                .to_owned()
        };
        Some((
            name.clone(),
            *transaction_id,
            text("level"),
            text("code"),
            text("description"),
        ))
    }

    #[test]
    fn play_before_connect_gets_an_error_reply_before_the_close() {
        let (mut server, mut encoder) = handshaken_server();
        let err = send_to(
            &mut server,
            &mut encoder,
            command(1, "play", 4.0, vec![Amf0Value::string("x")]),
        )
        .unwrap_err();
        assert!(matches!(err, SessionError::NotConnected { .. }));
        let out = decode_output_at(&mut server, 128);
        let (name, tid, level, code, description) = status_of(&out[0]).expect("a reply");
        assert_eq!(
            (name.as_str(), tid, level.as_str()),
            ("_error", 4.0, "error")
        );
        assert_eq!(code, "NetConnection.Call.Failed");
        assert!(
            description.contains("'play' before connect"),
            "{description}"
        );
        // Without a transaction id: an error onStatus instead.
        let (mut server, mut encoder) = handshaken_server();
        send_to(&mut server, &mut encoder, command(1, "play", 0.0, vec![])).unwrap_err();
        let out = decode_output_at(&mut server, 128);
        let (name, _, level, code, _) = status_of(&out[0]).expect("a status");
        assert_eq!((name.as_str(), level.as_str()), ("onStatus", "error"));
        assert_eq!(code, "NetConnection.Connect.Rejected");
    }

    #[test]
    fn a_bad_chunk_size_is_explained_before_the_close() {
        let (mut server, mut encoder) = connected_raw_server();
        let err = send_to(&mut server, &mut encoder, RtmpMessage::SetChunkSize(0)).unwrap_err();
        assert!(matches!(err, SessionError::Chunk(_)), "{err}");
        let out = decode_output(&mut server);
        let (name, _, level, code, description) = status_of(&out[0]).expect("a status");
        assert_eq!((name.as_str(), level.as_str()), ("onStatus", "error"));
        assert_eq!(code, "NetConnection.Connect.Rejected");
        assert!(description.contains("chunk size"), "{description}");
    }

    #[test]
    fn too_deep_amf0_in_a_command_gets_an_error_reply() {
        let (mut server, mut encoder) = connected_raw_server();
        let mut payload = vec![0x02, 0x00, 0x04];
        payload.extend_from_slice(b"play");
        payload.push(0x00);
        payload.extend_from_slice(&5.0f64.to_be_bytes());
        for _ in 0..100 {
            payload.extend_from_slice(&[0x03, 0x00, 0x01, b'a']);
        }
        payload.push(0x05);
        for _ in 0..100 {
            payload.extend_from_slice(&[0x00, 0x00, 0x09]);
        }
        let raw = RawMessage {
            csid: 3,
            timestamp: 0,
            type_id: type_id::COMMAND_AMF0,
            stream_id: 0,
            payload: Bytes::from(payload),
        };
        let mut input = BytesMut::new();
        encoder.encode(&raw, &mut input);
        let err = server.handle_input(&mut input).unwrap_err();
        assert!(
            matches!(err, SessionError::Message { command: Some((ref n, t)), .. } if n == "play" && t == 5.0),
            "{err:?}"
        );
        let out = decode_output(&mut server);
        let (name, tid, _, code, description) = status_of(&out[0]).expect("a reply");
        assert_eq!((name.as_str(), tid), ("_error", 5.0));
        assert_eq!(code, "NetConnection.Call.Failed");
        assert!(description.contains("Protocol error"), "{description}");
    }

    fn connected_raw_server() -> (ServerSession, ChunkEncoder) {
        let (mut server, mut encoder) = handshaken_server();
        let connect = RtmpMessage::command(
            0,
            "connect",
            1.0,
            Amf0Value::object([("app", Amf0Value::string("live/"))]),
            vec![],
        );
        send_to(&mut server, &mut encoder, connect).unwrap();
        server.take_output();
        server_events(&mut server);
        assert_eq!(server.app(), Some("live"));
        (server, encoder)
    }

    fn decode_output(server: &mut ServerSession) -> Vec<RtmpMessage> {
        let Some(bytes) = server.take_output() else {
            return vec![];
        };
        let mut decoder = ChunkDecoder::new();
        decoder.set_chunk_size(OUT_CHUNK_SIZE).unwrap();
        let mut buf = BytesMut::from(&bytes[..]);
        std::iter::from_fn(|| decoder.decode(&mut buf).unwrap())
            .map(|raw| RtmpMessage::parse(raw).unwrap())
            .collect()
    }

    #[test]
    fn a_peer_is_kept_small_until_it_connects() {
        // Before connect: a message header declaring 1 MiB is refused.
        let (mut server, mut encoder) = handshaken_server();
        let mut out = BytesMut::new();
        encoder.encode(
            &RawMessage {
                csid: 3,
                timestamp: 0,
                type_id: 20,
                stream_id: 0,
                payload: Bytes::from(vec![0u8; 1024 * 1024]),
            },
            &mut out,
        );
        let mut first_chunk = out.split_to(12 + 128);
        assert!(server.handle_input(&mut first_chunk).is_err());
        // After connect the same message is fine.
        let (mut server, mut encoder) = connected_raw_server();
        let mut out = BytesMut::new();
        encoder.encode(
            &RawMessage {
                csid: 5,
                timestamp: 0,
                type_id: 9,
                stream_id: 1,
                payload: Bytes::from(vec![0x27u8; 1024 * 1024]),
            },
            &mut out,
        );
        assert!(server.handle_input(&mut out).is_ok());
    }

    #[test]
    fn reconnect_request_goes_to_clients_that_can_reconnect() {
        let mut client = ClientSession::new();
        client.set_caps_ex(CAPS_EX_RECONNECT);
        client.connect("live", "rtmp://h/live");
        let mut server = ServerSession::new(SessionConfig::default());
        pump(&mut client, &mut server).unwrap();
        assert!(server.can_reconnect());
        assert_eq!(server.tc_url(), Some("rtmp://h/live"));
        server.request_reconnect(Some("rtmp://h/live"), "upgrading");
        pump(&mut client, &mut server).unwrap();
        let events = client_events(&mut client);
        assert!(
            events
                .iter()
                .any(|e| matches!(e, ClientEvent::Status { code, tc_url, .. }
                if code == RECONNECT_REQUEST && tc_url.as_deref() == Some("rtmp://h/live"))),
            "{events:?}"
        );
        let mut legacy = ClientSession::new();
        legacy.connect("live", "rtmp://h/live");
        let mut server = ServerSession::new(SessionConfig::default());
        pump(&mut legacy, &mut server).unwrap();
        assert!(!server.can_reconnect());
    }

    #[test]
    fn second_connect_is_an_error() {
        let (mut server, mut encoder) = connected_raw_server();
        let again = RtmpMessage::command(0, "connect", 2.0, Amf0Value::object([]), vec![]);
        assert!(matches!(
            send_to(&mut server, &mut encoder, again),
            Err(SessionError::AlreadyConnected)
        ));
    }

    #[test]
    fn unknown_commands_get_error_replies_and_the_connection_survives() {
        let (mut server, mut encoder) = connected_raw_server();
        send_to(
            &mut server,
            &mut encoder,
            command(0, "_checkbw", 3.0, vec![]),
        )
        .unwrap();
        send_to(
            &mut server,
            &mut encoder,
            command(0, "noReplyWanted", 0.0, vec![]),
        )
        .unwrap();
        let replies = decode_output(&mut server);
        assert_eq!(replies.len(), 1);
        assert!(
            matches!(&replies[0], RtmpMessage::Command { name, transaction_id, .. } if name == "_error" && *transaction_id == 3.0)
        );
        send_to(
            &mut server,
            &mut encoder,
            command(0, "releaseStream", 4.0, vec![Amf0Value::string("s")]),
        )
        .unwrap();
        send_to(
            &mut server,
            &mut encoder,
            command(0, "FCPublish", 5.0, vec![Amf0Value::string("s")]),
        )
        .unwrap();
        send_to(
            &mut server,
            &mut encoder,
            command(0, "getStreamLength", 6.0, vec![]),
        )
        .unwrap();
        let results: Vec<f64> = decode_output(&mut server)
            .into_iter()
            .filter_map(|m| match m {
                RtmpMessage::Command {
                    name,
                    transaction_id,
                    ..
                } if name == "_result" => Some(transaction_id),
                _ => None,
            })
            .collect();
        assert_eq!(results, vec![4.0, 5.0, 6.0]);
    }

    #[test]
    fn create_stream_is_bounded_and_reuses_ids() {
        let (mut server, mut encoder) = connected_raw_server();
        for tid in 0..9 {
            send_to(
                &mut server,
                &mut encoder,
                command(0, "createStream", f64::from(tid + 2), vec![]),
            )
            .unwrap();
        }
        let replies = decode_output(&mut server);
        let names: Vec<&str> = replies
            .iter()
            .filter_map(|m| match m {
                RtmpMessage::Command { name, .. } => Some(name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(names.iter().filter(|n| **n == "_result").count(), 8);
        assert_eq!(names.last(), Some(&"_error"));
        send_to(
            &mut server,
            &mut encoder,
            command(0, "deleteStream", 0.0, vec![Amf0Value::Number(3.0)]),
        )
        .unwrap();
        send_to(
            &mut server,
            &mut encoder,
            command(0, "createStream", 20.0, vec![]),
        )
        .unwrap();
        let replies = decode_output(&mut server);
        assert!(
            matches!(&replies[0], RtmpMessage::Command { args, .. } if args == &vec![Amf0Value::Number(3.0)])
        );
    }

    #[test]
    fn publish_on_unknown_stream_is_an_error() {
        let (mut server, mut encoder) = connected_raw_server();
        let err = send_to(
            &mut server,
            &mut encoder,
            command(7, "publish", 0.0, vec![Amf0Value::string("x")]),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            SessionError::UnknownStream { stream_id: 7, .. }
        ));
    }

    #[test]
    fn answers_pings_and_applies_peer_chunk_size() {
        let (mut server, mut encoder) = connected_raw_server();
        send_to(
            &mut server,
            &mut encoder,
            RtmpMessage::UserControl(UserControlEvent::PingRequest(77)),
        )
        .unwrap();
        assert_eq!(
            decode_output(&mut server),
            vec![RtmpMessage::UserControl(UserControlEvent::PingResponse(77))]
        );
        send_to(&mut server, &mut encoder, RtmpMessage::SetChunkSize(4096)).unwrap();
        encoder.set_chunk_size(4096);
        send_to(
            &mut server,
            &mut encoder,
            command(0, "createStream", 2.0, vec![]),
        )
        .unwrap();
        assert_eq!(decode_output(&mut server).len(), 1);
        assert!(send_to(&mut server, &mut encoder, RtmpMessage::SetChunkSize(0)).is_err());
    }

    #[test]
    fn acknowledges_each_window() {
        let (mut server, mut encoder) = connected_raw_server();
        send_to(&mut server, &mut encoder, RtmpMessage::WindowAckSize(1000)).unwrap();
        decode_output(&mut server);
        send_to(
            &mut server,
            &mut encoder,
            command(0, "createStream", 2.0, vec![]),
        )
        .unwrap();
        send_to(
            &mut server,
            &mut encoder,
            command(1, "publish", 0.0, vec![Amf0Value::string("s")]),
        )
        .unwrap();
        server.accept_publish(1);
        decode_output(&mut server);
        let mut acks = 0;
        for i in 0..10 {
            let video = RtmpMessage::Video {
                stream_id: 1,
                timestamp: i,
                payload: Bytes::from(vec![0x27; 600]),
            };
            send_to(&mut server, &mut encoder, video).unwrap();
            acks += decode_output(&mut server)
                .iter()
                .filter(|m| matches!(m, RtmpMessage::Acknowledgement { sequence } if u64::from(*sequence) <= server.bytes_received()))
                .count();
        }
        assert!(
            (5..=7).contains(&acks),
            "{acks} acks for ~6.5 kB at a 1000-byte window"
        );
    }

    #[test]
    fn close_stream_and_fc_unpublish_emit_once() {
        let (mut server, mut encoder) = connected_raw_server();
        send_to(
            &mut server,
            &mut encoder,
            command(0, "createStream", 2.0, vec![]),
        )
        .unwrap();
        send_to(
            &mut server,
            &mut encoder,
            command(1, "publish", 0.0, vec![Amf0Value::string("s?k=1")]),
        )
        .unwrap();
        server.accept_publish(1);
        send_to(
            &mut server,
            &mut encoder,
            command(0, "FCUnpublish", 3.0, vec![Amf0Value::string("s?k=1")]),
        )
        .unwrap();
        send_to(
            &mut server,
            &mut encoder,
            command(1, "closeStream", 0.0, vec![]),
        )
        .unwrap();
        send_to(
            &mut server,
            &mut encoder,
            command(0, "deleteStream", 0.0, vec![Amf0Value::Number(1.0)]),
        )
        .unwrap();
        let unpublished = server_events(&mut server)
            .into_iter()
            .filter(|e| matches!(e, ServerEvent::Unpublished { stream_id: 1 }))
            .count();
        assert_eq!(unpublished, 1);
    }

    #[test]
    fn malformed_command_amf_closes_the_connection() {
        let (mut server, mut encoder) = connected_raw_server();
        let raw = RawMessage {
            csid: 3,
            timestamp: 0,
            type_id: type_id::COMMAND_AMF0,
            stream_id: 0,
            payload: Bytes::from_static(&[0x02, 0x00, 0x05, b'a']),
        };
        let mut out = BytesMut::new();
        encoder.encode(&raw, &mut out);
        assert!(matches!(
            server.handle_input(&mut out),
            Err(SessionError::Message { .. })
        ));
    }

    #[test]
    fn splits_aggregates_into_frames() {
        let (mut server, mut encoder) = connected_raw_server();
        send_to(
            &mut server,
            &mut encoder,
            command(0, "createStream", 2.0, vec![]),
        )
        .unwrap();
        send_to(
            &mut server,
            &mut encoder,
            command(1, "publish", 0.0, vec![Amf0Value::string("s")]),
        )
        .unwrap();
        server.accept_publish(1);
        server_events(&mut server);
        let mut payload = Vec::new();
        for (kind, time, body) in [(9u8, 1000u32, &[0x17u8, 1][..]), (8, 1010, &[0xaf, 1][..])] {
            payload.push(kind);
            payload.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
            payload.extend_from_slice(&time.to_be_bytes()[1..]);
            payload.push(0);
            payload.extend_from_slice(&[0, 0, 0]);
            payload.extend_from_slice(body);
            payload.extend_from_slice(&((11 + body.len()) as u32).to_be_bytes());
        }
        let aggregate = RtmpMessage::Aggregate {
            stream_id: 1,
            timestamp: 40,
            payload: Bytes::from(payload),
        };
        send_to(&mut server, &mut encoder, aggregate).unwrap();
        let frames: Vec<(MediaKind, u32)> = server_events(&mut server)
            .into_iter()
            .filter_map(|e| match e {
                ServerEvent::Media { frame, .. } => Some((frame.kind, frame.timestamp)),
                _ => None,
            })
            .collect();
        assert_eq!(frames, vec![(MediaKind::Video, 40), (MediaKind::Audio, 50)]);
    }

    #[test]
    fn rejects_non_rtmp_clients() {
        let mut server = ServerSession::new(SessionConfig::default());
        let err = server
            .handle_input(&mut BytesMut::from(&b"GET /live HTTP/1.1\r\n"[..]))
            .unwrap_err();
        assert!(
            err.to_string().contains("unsupported RTMP version 71"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_after_handshake_never_panic(
            chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..600), 0..6),
        ) {
            let (mut server, _) = connected_raw_server();
            let mut input = BytesMut::new();
            for chunk in chunks {
                input.extend_from_slice(&chunk);
                if server.handle_input(&mut input).is_err() {
                    break;
                }
                while server.poll_event().is_some() {}
                let _ = server.take_output();
            }
        }

        #[test]
        fn arbitrary_bytes_from_the_start_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..4000)) {
            let mut server = ServerSession::new(SessionConfig::default());
            let mut input = BytesMut::from(&bytes[..]);
            let _ = server.handle_input(&mut input);
        }

        #[test]
        fn arbitrary_command_sequences_never_panic(
            commands in prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "connect", "createStream", "publish", "play", "deleteStream",
                        "closeStream", "FCUnpublish", "releaseStream", "FCPublish",
                        "getStreamLength", "_checkbw", "pause",
                    ]),
                    0u32..4,
                    prop_oneof![Just(0.0), Just(1.0), Just(-1.0), Just(f64::NAN), any::<f64>()],
                    prop::collection::vec(
                        prop_oneof![
                            Just(Amf0Value::string("cam")),
                            Just(Amf0Value::string("cam?k=v")),
                            Just(Amf0Value::string("")),
                            any::<f64>().prop_map(Amf0Value::Number),
                            Just(Amf0Value::Null),
                        ],
                        0..3,
                    ),
                    any::<u8>(),
                ),
                0..32,
            ),
        ) {
            let (mut server, mut encoder) = handshaken_server();
            for (name, stream_id, tid, args, decision) in commands {
                let message = RtmpMessage::command(stream_id, name, tid, Amf0Value::Null, args);
                if send_to(&mut server, &mut encoder, message).is_err() {
                    break;
                }
                while let Some(event) = server.poll_event() {
                    match event {
                        ServerEvent::PublishRequested { stream_id, .. } if decision % 2 == 0 => {
                            server.accept_publish(stream_id)
                        }
                        ServerEvent::PublishRequested { stream_id, .. } => {
                            server.reject_publish(stream_id, "NetStream.Publish.BadName", "no")
                        }
                        ServerEvent::PlayRequested { stream_id, .. } if decision % 3 == 0 => {
                            server.accept_play(stream_id);
                            server.notify_unpublish(stream_id);
                            server.notify_publish(stream_id);
                        }
                        ServerEvent::PlayRequested { stream_id, .. } => {
                            server.reject_play(stream_id, "NetStream.Play.StreamNotFound", "no")
                        }
                        _ => {}
                    }
                }
                let _ = server.take_output();
            }
        }

        #[test]
        fn arbitrary_messages_never_panic(
            messages in prop::collection::vec(
                (any::<u8>(), 0u32..4, prop::collection::vec(any::<u8>(), 0..64)),
                0..24
            ),
        ) {
            let (mut server, mut encoder) = connected_raw_server();
            for (type_id, stream_id, payload) in messages {
                let raw = RawMessage { csid: 3, timestamp: 0, type_id, stream_id, payload: Bytes::from(payload) };
                let mut out = BytesMut::new();
                encoder.encode(&raw, &mut out);
                if server.handle_input(&mut out).is_err() {
                    break;
                }
            }
        }
    }
}
