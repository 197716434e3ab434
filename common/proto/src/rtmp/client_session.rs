//! The client side of an RTMP connection as a sans-IO state machine, for
//! tests, the bench load tool and the edge (pulling from the origin).
//!
//! Calls queue commands (held back until the handshake completes), input
//! bytes produce [`ClientEvent`]s, and the session answers pings, sends
//! acknowledgements per the server's window and follows the server's chunk
//! size on its own. Our own chunk size is raised to
//! [`OUT_CHUNK_SIZE`] together with `connect`.

use std::collections::{HashMap, VecDeque};

use bytes::{Bytes, BytesMut};

use crate::amf0::{self, Amf0Value};
use crate::media::{MediaFrame, MediaKind};
use crate::rtmp::handshake::{ClientHandshake, HandshakeStatus};
use crate::rtmp::link::Link;
use crate::rtmp::message::{RtmpMessage, UserControlEvent};
use crate::rtmp::session::{
    frame_message, media_frames, SessionError, OUT_CHUNK_SIZE, TIMELINE_KEY,
};

/// Buffer length announced to the server when playing.
const PLAY_BUFFER_MILLIS: u32 = 3000;
/// Most outstanding calls remembered; a server that never answers cannot
/// grow the table further.
const MAX_PENDING_CALLS: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// `connect` succeeded.
    Connected,
    /// `createStream` succeeded.
    StreamCreated {
        stream_id: u32,
    },
    /// An `onStatus` on `stream_id`; also a failed `connect`/`createStream`
    /// (stream 0, level "error", code from the server's info object).
    Status {
        stream_id: u32,
        level: String,
        code: String,
        description: String,
        /// The publish's timeline id a Baton server adds to
        /// `NetStream.Play.Start` and `NetStream.Play.PublishNotify`.
        timeline: Option<String>,
        /// Where to reconnect, in a reconnect request.
        tc_url: Option<String>,
    },
    Media {
        stream_id: u32,
        frame: MediaFrame,
    },
    /// The answer to our [`ClientSession::ping`] with that time.
    PingResponse(u32),
    /// Any other `_result` / `_error` reply.
    CommandResult {
        /// "_result" or "_error".
        name: String,
        /// What we had called, if we remember it.
        call: Option<String>,
        transaction_id: f64,
        args: Vec<Amf0Value>,
    },
}

/// Client side of one RTMP connection.
#[derive(Debug)]
pub struct ClientSession {
    handshake: Option<ClientHandshake>,
    /// Messages queued before the handshake completed.
    pending: Vec<RtmpMessage>,
    link: Link,
    events: VecDeque<ClientEvent>,
    next_transaction_id: f64,
    calls: HashMap<u64, String>,
    /// Enhanced RTMP `capsEx` announced in `connect` (0: none).
    caps_ex: u32,
}

impl Default for ClientSession {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientSession {
    /// A session with C0+C1 already queued for output, its handshake's
    /// random bytes from a fixed seed (see [`ClientSession::with_seed`]).
    pub fn new() -> Self {
        Self::with_seed(crate::rtmp::handshake::DEFAULT_SEED)
    }

    /// A session whose handshake draws its random bytes from `seed`.
    pub fn with_seed(seed: u64) -> Self {
        let mut link = Link::new(true);
        let mut handshake = ClientHandshake::new(seed);
        handshake.start(link.outbox.buffer());
        ClientSession {
            handshake: Some(handshake),
            pending: Vec::new(),
            link,
            events: VecDeque::new(),
            next_transaction_id: 1.0,
            calls: HashMap::new(),
            caps_ex: 0,
        }
    }

    /// Announce Enhanced RTMP capabilities (`capsEx`, e.g.
    /// [`crate::rtmp::session::CAPS_EX_RECONNECT`]) in the next `connect`.
    pub fn set_caps_ex(&mut self, caps: u32) {
        self.caps_ex = caps;
    }

    /// Sends our Set Chunk Size and `connect`.
    pub fn connect(&mut self, app: &str, tc_url: &str) {
        self.send(RtmpMessage::SetChunkSize(OUT_CHUNK_SIZE));
        let mut command_object = Amf0Value::object([
            ("app", Amf0Value::string(app)),
            ("type", Amf0Value::string("nonprivate")),
            (
                "flashVer",
                Amf0Value::string("FMLE/3.0 (compatible; Baton)"),
            ),
            ("tcUrl", Amf0Value::string(tc_url)),
            ("fpad", Amf0Value::Boolean(false)),
            ("capabilities", Amf0Value::Number(15.0)),
            ("audioCodecs", Amf0Value::Number(4071.0)),
            ("videoCodecs", Amf0Value::Number(252.0)),
            ("videoFunction", Amf0Value::Number(1.0)),
            ("objectEncoding", Amf0Value::Number(0.0)),
        ]);
        if let (Amf0Value::Object(pairs), true) = (&mut command_object, self.caps_ex != 0) {
            pairs.push((
                "capsEx".to_owned(),
                Amf0Value::Number(f64::from(self.caps_ex)),
            ));
        }
        self.call(0, "connect", command_object, vec![]);
    }

    pub fn create_stream(&mut self) {
        self.call(0, "createStream", Amf0Value::Null, vec![]);
    }

    /// `publish(name, "live")` on `stream_id`.
    pub fn publish(&mut self, stream_id: u32, name: &str) {
        let tid = self.next_transaction_id();
        self.send(RtmpMessage::command(
            stream_id,
            "publish",
            tid,
            Amf0Value::Null,
            vec![Amf0Value::string(name), Amf0Value::string("live")],
        ));
    }

    /// Set Buffer Length, then `play(name, -2000)` (live, or recorded if
    /// there is no live stream) on `stream_id`.
    pub fn play(&mut self, stream_id: u32, name: &str) {
        self.send(RtmpMessage::UserControl(
            UserControlEvent::SetBufferLength {
                stream_id,
                millis: PLAY_BUFFER_MILLIS,
            },
        ));
        let tid = self.next_transaction_id();
        self.send(RtmpMessage::command(
            stream_id,
            "play",
            tid,
            Amf0Value::Null,
            vec![Amf0Value::string(name), Amf0Value::Number(-2000.0)],
        ));
    }

    /// Sends one frame; data frames (AMF0 `["onMetaData", {...}]`) go out
    /// as `@setDataFrame` + the payload, as encoders send them.
    pub fn send_media(&mut self, stream_id: u32, frame: &MediaFrame) {
        if !self.handshake_done() {
            self.pending.push(media_message(stream_id, frame));
            return;
        }
        let raw = match frame.kind {
            MediaKind::Data => {
                let mut payload = BytesMut::with_capacity(16 + frame.payload.len());
                amf0::encode(&Amf0Value::string("@setDataFrame"), &mut payload);
                payload.extend_from_slice(&frame.payload);
                crate::rtmp::chunk::RawMessage {
                    payload: payload.freeze(),
                    ..frame_message(stream_id, frame)
                }
            }
            MediaKind::Audio | MediaKind::Video => frame_message(stream_id, frame),
        };
        self.link.outbox.send_raw(&raw);
    }

    /// A User Control ping; the server answers with a ping response, which
    /// is how a quiet upstream proves it is alive.
    pub fn ping(&mut self, time: u32) {
        self.send(RtmpMessage::UserControl(UserControlEvent::PingRequest(
            time,
        )));
    }

    pub fn fc_unpublish(&mut self, name: &str) {
        self.call(
            0,
            "FCUnpublish",
            Amf0Value::Null,
            vec![Amf0Value::string(name)],
        );
    }

    pub fn close_stream(&mut self, stream_id: u32) {
        self.send(RtmpMessage::command(
            stream_id,
            "closeStream",
            0.0,
            Amf0Value::Null,
            vec![],
        ));
    }

    pub fn delete_stream(&mut self, stream_id: u32) {
        self.send(RtmpMessage::command(
            0,
            "deleteStream",
            0.0,
            Amf0Value::Null,
            vec![Amf0Value::Number(f64::from(stream_id))],
        ));
    }

    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<(), SessionError> {
        let before = input.len();
        let result = self.process(input);
        self.link.count_received(before - input.len());
        result
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn take_output(&mut self) -> Option<Bytes> {
        self.link.outbox.take()
    }

    pub fn has_output(&self) -> bool {
        self.link.outbox.len() > 0
    }

    /// Bytes waiting in the output buffer.
    pub fn output_len(&self) -> usize {
        self.link.outbox.len()
    }

    /// Every byte consumed from the server, handshake included.
    pub fn bytes_received(&self) -> u64 {
        self.link.acks.received()
    }

    fn handshake_done(&self) -> bool {
        self.handshake.is_none()
    }

    fn process(&mut self, input: &mut BytesMut) -> Result<(), SessionError> {
        if let Some(handshake) = self.handshake.as_mut() {
            match handshake.handle(input, self.link.outbox.buffer())? {
                HandshakeStatus::InProgress => return Ok(()),
                HandshakeStatus::Done => {
                    self.handshake = None;
                    for message in std::mem::take(&mut self.pending) {
                        self.link.outbox.send(message);
                    }
                }
            }
        }
        while let Some((stream_id, message)) = self.link.next_message(input)? {
            self.handle_message(stream_id, message);
        }
        Ok(())
    }

    fn handle_message(&mut self, stream_id: u32, message: RtmpMessage) {
        match message {
            RtmpMessage::Command {
                stream_id,
                name,
                transaction_id,
                command_object,
                args,
            } => self.handle_command(stream_id, name, transaction_id, command_object, args),
            RtmpMessage::Data {
                stream_id,
                ref values,
                ..
            } if first_string(values) == Some("onStatus") => {
                if let Some(info) = values.get(1) {
                    self.events.push_back(status_event(stream_id, info));
                }
            }
            RtmpMessage::UserControl(UserControlEvent::PingResponse(time)) => {
                self.events.push_back(ClientEvent::PingResponse(time));
            }
            RtmpMessage::Data { ref values, .. } if !is_media_data(values) => {}
            media @ (RtmpMessage::Audio { .. }
            | RtmpMessage::Video { .. }
            | RtmpMessage::Data { .. }
            | RtmpMessage::Aggregate { .. }) => {
                for frame in media_frames(media) {
                    self.events
                        .push_back(ClientEvent::Media { stream_id, frame });
                }
            }
            _ => {}
        }
    }

    fn handle_command(
        &mut self,
        stream_id: u32,
        name: String,
        transaction_id: f64,
        command_object: Amf0Value,
        args: Vec<Amf0Value>,
    ) {
        match name.as_str() {
            "onStatus" => {
                let info = args.first().unwrap_or(&command_object);
                self.events.push_back(status_event(stream_id, info));
            }
            "_result" | "_error" => self.handle_reply(name, transaction_id, command_object, args),
            other => tracing::debug!(command = other, "ignoring RTMP command from server"),
        }
    }

    fn handle_reply(
        &mut self,
        name: String,
        transaction_id: f64,
        command_object: Amf0Value,
        args: Vec<Amf0Value>,
    ) {
        let call = self.calls.remove(&transaction_key(transaction_id));
        let failed = name == "_error";
        match (call.as_deref(), failed) {
            (Some("connect"), false) => self.events.push_back(ClientEvent::Connected),
            (Some("createStream"), false) => {
                let stream_id = args.iter().find_map(Amf0Value::as_f64).unwrap_or(0.0);
                self.events.push_back(ClientEvent::StreamCreated {
                    stream_id: stream_id as u32,
                });
            }
            (Some("connect" | "createStream"), true) => {
                let info = args.first().unwrap_or(&command_object);
                self.events.push_back(status_event(0, info));
            }
            _ => self.events.push_back(ClientEvent::CommandResult {
                name,
                call,
                transaction_id,
                args,
            }),
        }
    }

    /// A command on stream `stream_id` whose reply we want to recognise.
    fn call(
        &mut self,
        stream_id: u32,
        name: &str,
        command_object: Amf0Value,
        args: Vec<Amf0Value>,
    ) {
        let tid = self.next_transaction_id();
        if self.calls.len() >= MAX_PENDING_CALLS {
            self.calls.clear();
        }
        self.calls.insert(transaction_key(tid), name.to_owned());
        self.send(RtmpMessage::command(
            stream_id,
            name,
            tid,
            command_object,
            args,
        ));
    }

    fn next_transaction_id(&mut self) -> f64 {
        let tid = self.next_transaction_id;
        self.next_transaction_id += 1.0;
        tid
    }

    fn send(&mut self, message: RtmpMessage) {
        if self.handshake_done() {
            self.link.outbox.send(message);
        } else {
            self.pending.push(message);
        }
    }
}

fn transaction_key(transaction_id: f64) -> u64 {
    transaction_id.to_bits()
}

fn media_message(stream_id: u32, frame: &MediaFrame) -> RtmpMessage {
    match frame.kind {
        MediaKind::Audio => RtmpMessage::Audio {
            stream_id,
            timestamp: frame.timestamp,
            payload: frame.payload.clone(),
        },
        MediaKind::Video => RtmpMessage::Video {
            stream_id,
            timestamp: frame.timestamp,
            payload: frame.payload.clone(),
        },
        MediaKind::Data => {
            let mut payload = BytesMut::new();
            amf0::encode(&Amf0Value::string("@setDataFrame"), &mut payload);
            payload.extend_from_slice(&frame.payload);
            RtmpMessage::Data {
                stream_id,
                timestamp: frame.timestamp,
                values: Vec::new(),
                payload: payload.freeze(),
            }
        }
    }
}

fn first_string(values: &[Amf0Value]) -> Option<&str> {
    values.first().and_then(Amf0Value::as_str)
}

/// Data messages that are not media: `onStatus` (NetStream.Data.Start,
/// reported as a status) and `|RtmpSampleAccess` (dropped).
fn is_media_data(values: &[Amf0Value]) -> bool {
    !matches!(first_string(values), Some(name) if name == "onStatus" || name.starts_with('|'))
}

fn status_event(stream_id: u32, info: &Amf0Value) -> ClientEvent {
    let text = |key: &str| {
        info.get(key)
            .and_then(Amf0Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    ClientEvent::Status {
        stream_id,
        level: text("level"),
        code: text("code"),
        description: text("description"),
        timeline: info
            .get(TIMELINE_KEY)
            .and_then(Amf0Value::as_str)
            .map(str::to_owned),
        tc_url: info
            .get("tcUrl")
            .and_then(Amf0Value::as_str)
            .map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtmp::chunk::{ChunkDecoder, ChunkEncoder, RawMessage};
    use crate::rtmp::handshake::{ServerHandshake, HANDSHAKE_SIZE};
    use proptest::prelude::*;

    /// A scripted server: handshakes, then feeds the client `messages`.
    fn feed(client: &mut ClientSession, messages: Vec<RtmpMessage>) -> Vec<RtmpMessage> {
        let mut server = ServerHandshake::default();
        let mut to_server = BytesMut::from(&client.take_output().unwrap()[..]);
        let mut to_client = BytesMut::new();
        server.handle(&mut to_server, &mut to_client).unwrap();
        client.handle_input(&mut to_client).unwrap();
        let mut from_client = BytesMut::from(&client.take_output().unwrap()[..]);
        server
            .handle(&mut from_client, &mut BytesMut::new())
            .unwrap();

        let mut encoder = ChunkEncoder::new();
        let mut wire = BytesMut::new();
        for message in messages {
            encoder.encode(&message.into_raw(), &mut wire);
        }
        client.handle_input(&mut wire).unwrap();
        assert!(wire.is_empty());
        // What the client sent after the handshake.
        if let Some(more) = client.take_output() {
            from_client.extend_from_slice(&more);
        }
        let mut decoder = ChunkDecoder::new();
        let mut sent = Vec::new();
        while let Some(raw) = decoder.decode(&mut from_client).unwrap() {
            let message = RtmpMessage::parse(raw).unwrap();
            if let RtmpMessage::SetChunkSize(size) = message {
                decoder.set_chunk_size(size).unwrap();
            }
            sent.push(message);
        }
        sent
    }

    fn events(client: &mut ClientSession) -> Vec<ClientEvent> {
        std::iter::from_fn(|| client.poll_event()).collect()
    }

    #[test]
    fn queues_commands_until_the_handshake_is_done() {
        let mut client = ClientSession::new();
        client.connect("live", "rtmp://h/live");
        let c0c1 = client.take_output().unwrap();
        assert_eq!(c0c1.len(), 1 + HANDSHAKE_SIZE, "only C0+C1 before S0/S1/S2");
        let mut client = ClientSession::new();
        client.connect("live", "rtmp://h/live");
        let sent = feed(&mut client, vec![]);
        assert_eq!(sent[0], RtmpMessage::SetChunkSize(OUT_CHUNK_SIZE));
        assert!(
            matches!(&sent[1], RtmpMessage::Command { name, transaction_id, .. } if name == "connect" && *transaction_id == 1.0)
        );
    }

    #[test]
    fn answers_pings_follows_chunk_size_and_acks() {
        let mut client = ClientSession::new();
        let video = RtmpMessage::Video {
            stream_id: 1,
            timestamp: 7,
            payload: Bytes::from(vec![0x27; 3000]),
        };
        let sent = feed(
            &mut client,
            vec![
                RtmpMessage::WindowAckSize(1000),
                RtmpMessage::UserControl(UserControlEvent::PingRequest(5)),
                video,
            ],
        );
        assert!(sent.contains(&RtmpMessage::UserControl(UserControlEvent::PingResponse(5))));
        assert!(sent
            .iter()
            .any(|m| matches!(m, RtmpMessage::Acknowledgement { .. })));
        assert!(
            matches!(events(&mut client).as_slice(), [ClientEvent::Media { stream_id: 1, frame }] if frame.payload.len() == 3000)
        );
    }

    #[test]
    fn reports_connect_rejection_as_error_status() {
        let mut client = ClientSession::new();
        client.connect("nope", "rtmp://h/nope");
        feed(
            &mut client,
            vec![RtmpMessage::command(
                0,
                "_error",
                1.0,
                Amf0Value::Null,
                vec![crate::rtmp::session::info_object(
                    "error",
                    "NetConnection.Connect.Rejected",
                    "No such app.",
                )],
            )],
        );
        assert_eq!(
            events(&mut client),
            vec![ClientEvent::Status {
                stream_id: 0,
                level: "error".into(),
                code: "NetConnection.Connect.Rejected".into(),
                description: "No such app.".into(),
                timeline: None,
                tc_url: None,
            }]
        );
    }

    #[test]
    fn skips_sample_access_and_reports_unknown_results() {
        let mut client = ClientSession::new();
        let sample_access = RtmpMessage::data(
            1,
            0,
            vec![
                Amf0Value::string("|RtmpSampleAccess"),
                Amf0Value::Boolean(true),
            ],
        );
        let stray = RtmpMessage::command(0, "_result", 42.0, Amf0Value::Null, vec![]);
        feed(&mut client, vec![sample_access, stray]);
        assert!(matches!(
            events(&mut client).as_slice(),
            [ClientEvent::CommandResult { call: None, transaction_id, .. }] if *transaction_id == 42.0
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_server_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000)) {
            let mut client = ClientSession::new();
            let _ = feed(&mut client, vec![]);
            let mut input = BytesMut::from(&bytes[..]);
            let _ = client.handle_input(&mut input);
        }

        #[test]
        fn arbitrary_server_messages_never_panic(
            messages in prop::collection::vec((any::<u8>(), prop::collection::vec(any::<u8>(), 0..64)), 0..16),
        ) {
            let mut client = ClientSession::new();
            let _ = feed(&mut client, vec![]);
            let mut encoder = ChunkEncoder::new();
            for (type_id, payload) in messages {
                let mut out = BytesMut::new();
                encoder.encode(&RawMessage { csid: 3, timestamp: 0, type_id, stream_id: 1, payload: Bytes::from(payload) }, &mut out);
                if client.handle_input(&mut out).is_err() {
                    break;
                }
            }
        }
    }
}
