//! RTMP messages: typed views of the raw messages the chunk stream carries
//! (protocol control, user control, AMF0 commands and data, media,
//! aggregates), parsed from and serialised to [`RawMessage`]s.
//!
//! Parsing is strict about the fixed-size control messages and AMF0
//! commands, and lenient about script data: data messages are forwarded as
//! opaque payloads, so a malformed value inside them only shortens the list
//! of decoded `values`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::amf0::{self, Amf0Error, Amf0Value};
use crate::rtmp::chunk::RawMessage;

/// Conventional chunk stream ids (as FFmpeg and most servers use them).
pub mod csid {
    /// Protocol control and user control messages.
    pub const PROTOCOL: u32 = 2;
    /// Commands on message stream 0 (connect, createStream...).
    pub const COMMAND: u32 = 3;
    pub const AUDIO: u32 = 4;
    /// Commands and data on message streams > 0 (publish, play, onStatus).
    pub const STREAM_COMMAND: u32 = 5;
    pub const VIDEO: u32 = 6;
}

/// RTMP message type ids.
pub mod type_id {
    pub const SET_CHUNK_SIZE: u8 = 1;
    pub const ABORT: u8 = 2;
    pub const ACKNOWLEDGEMENT: u8 = 3;
    pub const USER_CONTROL: u8 = 4;
    pub const WINDOW_ACK_SIZE: u8 = 5;
    pub const SET_PEER_BANDWIDTH: u8 = 6;
    pub const AUDIO: u8 = 8;
    pub const VIDEO: u8 = 9;
    pub const DATA_AMF3: u8 = 15;
    pub const COMMAND_AMF3: u8 = 17;
    pub const DATA_AMF0: u8 = 18;
    pub const COMMAND_AMF0: u8 = 20;
    pub const AGGREGATE: u8 = 22;
}

/// User control event types.
mod event_type {
    pub const STREAM_BEGIN: u16 = 0;
    pub const STREAM_EOF: u16 = 1;
    pub const STREAM_DRY: u16 = 2;
    pub const SET_BUFFER_LENGTH: u16 = 3;
    pub const STREAM_IS_RECORDED: u16 = 4;
    pub const PING_REQUEST: u16 = 6;
    pub const PING_RESPONSE: u16 = 7;
}

#[derive(Debug, Clone, PartialEq)]
pub enum UserControlEvent {
    StreamBegin(u32),
    StreamEof(u32),
    StreamDry(u32),
    SetBufferLength { stream_id: u32, millis: u32 },
    StreamIsRecorded(u32),
    PingRequest(u32),
    PingResponse(u32),
    Other { event_type: u16, data: Bytes },
}

#[derive(Debug, Clone, PartialEq)]
pub enum RtmpMessage {
    SetChunkSize(u32),
    Abort {
        csid: u32,
    },
    Acknowledgement {
        sequence: u32,
    },
    WindowAckSize(u32),
    SetPeerBandwidth {
        size: u32,
        limit_type: u8,
    },
    UserControl(UserControlEvent),
    /// Type 20, or type 17 (AMF3 command: one leading byte, then AMF0).
    Command {
        stream_id: u32,
        name: String,
        transaction_id: f64,
        command_object: Amf0Value,
        args: Vec<Amf0Value>,
    },
    /// Type 18, or type 15 with its leading 0 byte stripped. `payload` is
    /// the AMF0 body (what `into_raw` sends); `values` is what of it decoded.
    Data {
        stream_id: u32,
        timestamp: u32,
        values: Vec<Amf0Value>,
        payload: Bytes,
    },
    Audio {
        stream_id: u32,
        timestamp: u32,
        payload: Bytes,
    },
    Video {
        stream_id: u32,
        timestamp: u32,
        payload: Bytes,
    },
    /// Type 22; see [`split_aggregate`].
    Aggregate {
        stream_id: u32,
        timestamp: u32,
        payload: Bytes,
    },
    Unknown {
        type_id: u8,
        stream_id: u32,
        timestamp: u32,
        payload: Bytes,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("{what} message (type {type_id}) too short: {len} bytes, need {needed}")]
    TooShort {
        what: &'static str,
        type_id: u8,
        len: usize,
        needed: usize,
    },
    #[error("malformed AMF0 in command: {0}")]
    Amf0(#[from] Amf0Error),
    #[error("command name is not a string (got {0})")]
    CommandNameNotString(String),
    #[error("command transaction id is not a number (got {0})")]
    TransactionIdNotNumber(String),
    #[error("aggregate message truncated at byte {offset}")]
    AggregateTruncated { offset: usize },
}

impl RtmpMessage {
    pub fn parse(raw: RawMessage) -> Result<RtmpMessage, MessageError> {
        let RawMessage {
            timestamp,
            type_id,
            stream_id,
            payload,
            ..
        } = raw;
        match type_id {
            type_id::SET_CHUNK_SIZE => {
                // The top bit must be 0; mask it like most implementations.
                Ok(RtmpMessage::SetChunkSize(
                    read_u32(&payload, "Set Chunk Size", type_id)? & 0x7fff_ffff,
                ))
            }
            type_id::ABORT => Ok(RtmpMessage::Abort {
                csid: read_u32(&payload, "Abort", type_id)?,
            }),
            type_id::ACKNOWLEDGEMENT => Ok(RtmpMessage::Acknowledgement {
                sequence: read_u32(&payload, "Acknowledgement", type_id)?,
            }),
            type_id::WINDOW_ACK_SIZE => Ok(RtmpMessage::WindowAckSize(read_u32(
                &payload,
                "Window Acknowledgement Size",
                type_id,
            )?)),
            type_id::SET_PEER_BANDWIDTH => Ok(RtmpMessage::SetPeerBandwidth {
                size: read_u32(&payload, "Set Peer Bandwidth", type_id)?,
                limit_type: payload.get(4).copied().unwrap_or(2),
            }),
            type_id::USER_CONTROL => Ok(RtmpMessage::UserControl(parse_user_control(payload)?)),
            type_id::AUDIO => Ok(RtmpMessage::Audio {
                stream_id,
                timestamp,
                payload,
            }),
            type_id::VIDEO => Ok(RtmpMessage::Video {
                stream_id,
                timestamp,
                payload,
            }),
            type_id::COMMAND_AMF0 => parse_command(stream_id, &payload),
            type_id::COMMAND_AMF3 => parse_command(stream_id, payload.get(1..).unwrap_or_default()),
            type_id::DATA_AMF0 => Ok(parse_data(stream_id, timestamp, payload)),
            type_id::DATA_AMF3 => {
                let payload = strip_amf3_prefix(payload);
                Ok(parse_data(stream_id, timestamp, payload))
            }
            type_id::AGGREGATE => Ok(RtmpMessage::Aggregate {
                stream_id,
                timestamp,
                payload,
            }),
            _ => Ok(RtmpMessage::Unknown {
                type_id,
                stream_id,
                timestamp,
                payload,
            }),
        }
    }

    /// Serialises with the conventional csid: 2 for protocol and user
    /// control, 3 for commands on stream 0, 5 for commands/data on streams
    /// > 0, 4 for audio, 6 for video.
    pub fn into_raw(self) -> RawMessage {
        match self {
            RtmpMessage::SetChunkSize(size) => {
                control(type_id::SET_CHUNK_SIZE, &size.to_be_bytes())
            }
            RtmpMessage::Abort { csid } => control(type_id::ABORT, &csid.to_be_bytes()),
            RtmpMessage::Acknowledgement { sequence } => {
                control(type_id::ACKNOWLEDGEMENT, &sequence.to_be_bytes())
            }
            RtmpMessage::WindowAckSize(size) => {
                control(type_id::WINDOW_ACK_SIZE, &size.to_be_bytes())
            }
            RtmpMessage::SetPeerBandwidth { size, limit_type } => {
                let mut body = [0u8; 5];
                body[..4].copy_from_slice(&size.to_be_bytes());
                body[4] = limit_type;
                control(type_id::SET_PEER_BANDWIDTH, &body)
            }
            RtmpMessage::UserControl(event) => RawMessage {
                payload: user_control_body(&event),
                ..control(type_id::USER_CONTROL, &[])
            },
            RtmpMessage::Command {
                stream_id,
                name,
                transaction_id,
                command_object,
                args,
            } => {
                let mut body = BytesMut::with_capacity(64);
                amf0::encode(&Amf0Value::String(name), &mut body);
                amf0::encode(&Amf0Value::Number(transaction_id), &mut body);
                amf0::encode(&command_object, &mut body);
                for arg in &args {
                    amf0::encode(arg, &mut body);
                }
                RawMessage {
                    csid: command_csid(stream_id),
                    timestamp: 0,
                    type_id: type_id::COMMAND_AMF0,
                    stream_id,
                    payload: body.freeze(),
                }
            }
            RtmpMessage::Data {
                stream_id,
                timestamp,
                payload,
                ..
            } => RawMessage {
                csid: command_csid(stream_id),
                timestamp,
                type_id: type_id::DATA_AMF0,
                stream_id,
                payload,
            },
            RtmpMessage::Audio {
                stream_id,
                timestamp,
                payload,
            } => media(csid::AUDIO, type_id::AUDIO, stream_id, timestamp, payload),
            RtmpMessage::Video {
                stream_id,
                timestamp,
                payload,
            } => media(csid::VIDEO, type_id::VIDEO, stream_id, timestamp, payload),
            RtmpMessage::Aggregate {
                stream_id,
                timestamp,
                payload,
            } => media(
                csid::VIDEO,
                type_id::AGGREGATE,
                stream_id,
                timestamp,
                payload,
            ),
            RtmpMessage::Unknown {
                type_id,
                stream_id,
                timestamp,
                payload,
            } => media(
                command_csid(stream_id),
                type_id,
                stream_id,
                timestamp,
                payload,
            ),
        }
    }

    /// A command with the usual shape.
    pub fn command(
        stream_id: u32,
        name: &str,
        transaction_id: f64,
        command_object: Amf0Value,
        args: Vec<Amf0Value>,
    ) -> Self {
        RtmpMessage::Command {
            stream_id,
            name: name.to_owned(),
            transaction_id,
            command_object,
            args,
        }
    }

    /// A data message whose payload is the encoding of `values`.
    pub fn data(stream_id: u32, timestamp: u32, values: Vec<Amf0Value>) -> Self {
        let payload = amf0::encode_all(&values);
        RtmpMessage::Data {
            stream_id,
            timestamp,
            values,
            payload,
        }
    }
}

fn control(type_id: u8, body: &[u8]) -> RawMessage {
    RawMessage {
        csid: csid::PROTOCOL,
        timestamp: 0,
        type_id,
        stream_id: 0,
        payload: Bytes::copy_from_slice(body),
    }
}

fn media(csid: u32, type_id: u8, stream_id: u32, timestamp: u32, payload: Bytes) -> RawMessage {
    RawMessage {
        csid,
        timestamp,
        type_id,
        stream_id,
        payload,
    }
}

fn command_csid(stream_id: u32) -> u32 {
    if stream_id == 0 {
        csid::COMMAND
    } else {
        csid::STREAM_COMMAND
    }
}

fn read_u32(payload: &[u8], what: &'static str, type_id: u8) -> Result<u32, MessageError> {
    payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_be_bytes)
        .ok_or(MessageError::TooShort {
            what,
            type_id,
            len: payload.len(),
            needed: 4,
        })
}

fn parse_user_control(payload: Bytes) -> Result<UserControlEvent, MessageError> {
    let too_short = |needed| MessageError::TooShort {
        what: "User Control",
        type_id: type_id::USER_CONTROL,
        len: payload.len(),
        needed,
    };
    let event_type = payload
        .get(..2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| too_short(2))?;
    let first = payload
        .get(2..6)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let word = || first.ok_or_else(|| too_short(6));
    Ok(match event_type {
        event_type::STREAM_BEGIN => UserControlEvent::StreamBegin(word()?),
        event_type::STREAM_EOF => UserControlEvent::StreamEof(word()?),
        event_type::STREAM_DRY => UserControlEvent::StreamDry(word()?),
        event_type::SET_BUFFER_LENGTH => {
            let millis = payload
                .get(6..10)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or_else(|| too_short(10))?;
            UserControlEvent::SetBufferLength {
                stream_id: word()?,
                millis,
            }
        }
        event_type::STREAM_IS_RECORDED => UserControlEvent::StreamIsRecorded(word()?),
        event_type::PING_REQUEST => UserControlEvent::PingRequest(word()?),
        event_type::PING_RESPONSE => UserControlEvent::PingResponse(word()?),
        other => UserControlEvent::Other {
            event_type: other,
            data: payload.slice(2..),
        },
    })
}

fn user_control_body(event: &UserControlEvent) -> Bytes {
    let mut body = BytesMut::with_capacity(10);
    let mut word_event = |event_type: u16, value: u32| {
        body.put_u16(event_type);
        body.put_u32(value);
    };
    match event {
        UserControlEvent::StreamBegin(id) => word_event(event_type::STREAM_BEGIN, *id),
        UserControlEvent::StreamEof(id) => word_event(event_type::STREAM_EOF, *id),
        UserControlEvent::StreamDry(id) => word_event(event_type::STREAM_DRY, *id),
        UserControlEvent::SetBufferLength { stream_id, millis } => {
            word_event(event_type::SET_BUFFER_LENGTH, *stream_id);
            body.put_u32(*millis);
        }
        UserControlEvent::StreamIsRecorded(id) => word_event(event_type::STREAM_IS_RECORDED, *id),
        UserControlEvent::PingRequest(time) => word_event(event_type::PING_REQUEST, *time),
        UserControlEvent::PingResponse(time) => word_event(event_type::PING_RESPONSE, *time),
        UserControlEvent::Other { event_type, data } => {
            body.put_u16(*event_type);
            body.put_slice(data);
        }
    }
    body.freeze()
}

fn parse_command(stream_id: u32, body: &[u8]) -> Result<RtmpMessage, MessageError> {
    let mut rest = body;
    let name = match amf0::decode(&mut rest)? {
        Amf0Value::String(name) | Amf0Value::LongString(name) => name,
        other => return Err(MessageError::CommandNameNotString(format!("{other:?}"))),
    };
    let transaction_id = if rest.is_empty() {
        0.0
    } else {
        match amf0::decode(&mut rest)? {
            Amf0Value::Number(n) => n,
            other => return Err(MessageError::TransactionIdNotNumber(format!("{other:?}"))),
        }
    };
    let command_object = if rest.is_empty() {
        Amf0Value::Null
    } else {
        amf0::decode(&mut rest)?
    };
    let args = amf0::decode_all(rest)?;
    Ok(RtmpMessage::Command {
        stream_id,
        name,
        transaction_id,
        command_object,
        args,
    })
}

/// AMF3 data messages start with a 0 byte before the AMF0 body.
fn strip_amf3_prefix(payload: Bytes) -> Bytes {
    if payload.first() == Some(&0) {
        payload.slice(1..)
    } else {
        payload
    }
}

/// Decodes as many values as are well formed; data is forwarded as opaque
/// bytes, so a bad value is not an error.
fn parse_data(stream_id: u32, timestamp: u32, payload: Bytes) -> RtmpMessage {
    let mut values = Vec::new();
    let mut rest = &payload[..];
    while !rest.is_empty() {
        match amf0::decode(&mut rest) {
            Ok(value) => values.push(value),
            Err(err) => {
                tracing::debug!(%err, "undecodable value in RTMP data message");
                break;
            }
        }
    }
    RtmpMessage::Data {
        stream_id,
        timestamp,
        values,
        payload,
    }
}

/// One message inside an aggregate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AggregatePart {
    pub type_id: u8,
    pub timestamp: u32,
    pub payload: Bytes,
}

/// Most sub-messages accepted from one aggregate message.
pub const MAX_AGGREGATE_PARTS: usize = 4096;
const FLV_TAG_HEADER_LEN: usize = 11;
const FLV_BACK_POINTER_LEN: usize = 4;

/// Splits an aggregate message (FLV tags: 11-byte header, body, 4-byte back
/// pointer) into its parts. Each part's timestamp is rebased so the first
/// part lands on the aggregate's own `timestamp`, as the spec requires.
pub fn split_aggregate(
    timestamp: u32,
    payload: &Bytes,
) -> Result<Vec<AggregatePart>, MessageError> {
    let mut parts = Vec::new();
    let mut offset = 0usize;
    let mut first_tag_time: Option<u32> = None;
    while offset < payload.len() && parts.len() < MAX_AGGREGATE_PARTS {
        let header = payload
            .get(offset..offset + FLV_TAG_HEADER_LEN)
            .ok_or(MessageError::AggregateTruncated { offset })?;
        let mut fields = header;
        let tag_type = fields.get_u8() & 0x1f;
        let size = fields.get_uint(3) as usize;
        let low_time = fields.get_uint(3) as u32;
        let tag_time = low_time | (u32::from(fields.get_u8()) << 24);
        let body_start = offset + FLV_TAG_HEADER_LEN;
        let body_end = body_start + size;
        if body_end > payload.len() {
            return Err(MessageError::AggregateTruncated { offset });
        }
        let base = *first_tag_time.get_or_insert(tag_time);
        parts.push(AggregatePart {
            type_id: tag_type,
            timestamp: timestamp.wrapping_add(tag_time.wrapping_sub(base)),
            payload: payload.slice(body_start..body_end),
        });
        // The back pointer may be missing after the last tag.
        offset = (body_end + FLV_BACK_POINTER_LEN).min(payload.len());
    }
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(message: RtmpMessage) -> RtmpMessage {
        RtmpMessage::parse(message.into_raw()).expect("parses")
    }

    #[test]
    fn control_messages_round_trip() {
        for message in [
            RtmpMessage::SetChunkSize(4096),
            RtmpMessage::Abort { csid: 6 },
            RtmpMessage::Acknowledgement { sequence: 12345 },
            RtmpMessage::WindowAckSize(2_500_000),
            RtmpMessage::SetPeerBandwidth {
                size: 2_500_000,
                limit_type: 2,
            },
            RtmpMessage::UserControl(UserControlEvent::StreamBegin(1)),
            RtmpMessage::UserControl(UserControlEvent::StreamEof(1)),
            RtmpMessage::UserControl(UserControlEvent::StreamDry(1)),
            RtmpMessage::UserControl(UserControlEvent::SetBufferLength {
                stream_id: 1,
                millis: 3000,
            }),
            RtmpMessage::UserControl(UserControlEvent::StreamIsRecorded(1)),
            RtmpMessage::UserControl(UserControlEvent::PingRequest(99)),
            RtmpMessage::UserControl(UserControlEvent::PingResponse(99)),
            RtmpMessage::UserControl(UserControlEvent::Other {
                event_type: 31,
                data: Bytes::from_static(&[1, 2]),
            }),
        ] {
            assert_eq!(round_trip(message.clone()), message);
        }
    }

    #[test]
    fn conventional_csids() {
        assert_eq!(RtmpMessage::SetChunkSize(1).into_raw().csid, csid::PROTOCOL);
        let connect = RtmpMessage::command(0, "connect", 1.0, Amf0Value::Null, vec![]);
        assert_eq!(connect.into_raw().csid, csid::COMMAND);
        let publish = RtmpMessage::command(1, "publish", 0.0, Amf0Value::Null, vec![]);
        assert_eq!(publish.into_raw().csid, csid::STREAM_COMMAND);
        let audio = RtmpMessage::Audio {
            stream_id: 1,
            timestamp: 0,
            payload: Bytes::new(),
        };
        assert_eq!(audio.into_raw().csid, csid::AUDIO);
        let video = RtmpMessage::Video {
            stream_id: 1,
            timestamp: 0,
            payload: Bytes::new(),
        };
        assert_eq!(video.into_raw().csid, csid::VIDEO);
    }

    #[test]
    fn command_round_trip_and_amf3_command() {
        let message = RtmpMessage::command(
            1,
            "publish",
            5.0,
            Amf0Value::Null,
            vec![Amf0Value::string("key"), Amf0Value::string("live")],
        );
        assert_eq!(round_trip(message.clone()), message);
        let mut raw = message.clone().into_raw();
        let mut amf3 = BytesMut::from(&[0u8][..]);
        amf3.extend_from_slice(&raw.payload);
        raw.payload = amf3.freeze();
        raw.type_id = type_id::COMMAND_AMF3;
        assert_eq!(RtmpMessage::parse(raw).unwrap(), message);
    }

    #[test]
    fn command_errors() {
        let raw = |payload: Bytes| RawMessage {
            csid: 3,
            timestamp: 0,
            type_id: type_id::COMMAND_AMF0,
            stream_id: 0,
            payload,
        };
        let not_string = amf0::encode_all(&[Amf0Value::Number(1.0)]);
        assert!(matches!(
            RtmpMessage::parse(raw(not_string)),
            Err(MessageError::CommandNameNotString(_))
        ));
        let bad_tid = amf0::encode_all(&[Amf0Value::string("x"), Amf0Value::Null]);
        assert!(matches!(
            RtmpMessage::parse(raw(bad_tid)),
            Err(MessageError::TransactionIdNotNumber(_))
        ));
        assert!(matches!(
            RtmpMessage::parse(raw(Bytes::from_static(&[0x02, 0x00]))),
            Err(MessageError::Amf0(_))
        ));
        let short = RawMessage {
            type_id: type_id::SET_CHUNK_SIZE,
            payload: Bytes::from_static(&[0, 1]),
            ..raw(Bytes::new())
        };
        assert!(matches!(
            RtmpMessage::parse(short),
            Err(MessageError::TooShort { .. })
        ));
    }

    #[test]
    fn data_messages_keep_payload_and_tolerate_bad_values() {
        let message = RtmpMessage::data(
            1,
            0,
            vec![
                Amf0Value::string("@setDataFrame"),
                Amf0Value::string("onMetaData"),
                Amf0Value::EcmaArray(vec![("width".into(), Amf0Value::Number(1280.0))]),
            ],
        );
        assert_eq!(round_trip(message.clone()), message);

        let mut bad = BytesMut::new();
        amf0::encode(&Amf0Value::string("onMetaData"), &mut bad);
        bad.put_u8(0x42);
        let raw = RawMessage {
            csid: 5,
            timestamp: 0,
            type_id: type_id::DATA_AMF3,
            stream_id: 1,
            payload: {
                let mut p = BytesMut::from(&[0u8][..]);
                p.extend_from_slice(&bad);
                p.freeze()
            },
        };
        match RtmpMessage::parse(raw).unwrap() {
            RtmpMessage::Data {
                values, payload, ..
            } => {
                assert_eq!(values, vec![Amf0Value::string("onMetaData")]);
                assert_eq!(payload, bad.freeze());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn flv_tag(tag_type: u8, time: u32, body: &[u8]) -> Vec<u8> {
        let mut tag = vec![tag_type];
        tag.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        tag.extend_from_slice(&(time & 0xff_ffff).to_be_bytes()[1..]);
        tag.push((time >> 24) as u8);
        tag.extend_from_slice(&[0, 0, 0]);
        tag.extend_from_slice(body);
        tag.extend_from_slice(&((11 + body.len()) as u32).to_be_bytes());
        tag
    }

    #[test]
    fn splits_aggregates_with_rebased_timestamps() {
        let mut payload = flv_tag(9, 5000, &[0x17, 1]);
        payload.extend(flv_tag(8, 5020, &[0xaf, 1, 2]));
        payload.extend(flv_tag(9, 5040, &[0x27, 1]));
        let parts = split_aggregate(100, &Bytes::from(payload)).unwrap();
        assert_eq!(
            parts,
            vec![
                AggregatePart {
                    type_id: 9,
                    timestamp: 100,
                    payload: Bytes::from_static(&[0x17, 1])
                },
                AggregatePart {
                    type_id: 8,
                    timestamp: 120,
                    payload: Bytes::from_static(&[0xaf, 1, 2])
                },
                AggregatePart {
                    type_id: 9,
                    timestamp: 140,
                    payload: Bytes::from_static(&[0x27, 1])
                },
            ]
        );
        let truncated = Bytes::from(flv_tag(9, 0, &[1, 2, 3])[..12].to_vec());
        assert!(split_aggregate(0, &truncated).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_raw_messages_never_panic(
            type_id in any::<u8>(),
            payload in prop::collection::vec(any::<u8>(), 0..256),
        ) {
            let payload = Bytes::from(payload);
            let raw = RawMessage { csid: 3, timestamp: 0, type_id, stream_id: 1, payload: payload.clone() };
            if let Ok(message) = RtmpMessage::parse(raw) {
                let _ = message.into_raw();
            }
            let _ = split_aggregate(0, &payload);
        }
    }
}
