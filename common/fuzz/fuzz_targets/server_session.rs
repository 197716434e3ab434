//! Fuzzes the server session after a valid handshake: arbitrary chunk
//! stream bytes, with the glue accepting or rejecting publish/play the way
//! the origin does.
#![no_main]

use baton_proto::rtmp::handshake::HANDSHAKE_SIZE;
use baton_proto::rtmp::session::{ServerEvent, ServerSession, SessionConfig};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut session = ServerSession::new(SessionConfig::default());
    let mut input = BytesMut::new();
    input.extend_from_slice(&[3]);
    input.extend_from_slice(&[0u8; 2 * HANDSHAKE_SIZE]);
    if session.handle_input(&mut input).is_err() {
        return;
    }
    let mut decision = 0u8;
    for piece in data.chunks(509) {
        input.extend_from_slice(piece);
        if session.handle_input(&mut input).is_err() {
            return;
        }
        while let Some(event) = session.poll_event() {
            decision = decision.wrapping_add(1);
            match event {
                ServerEvent::PublishRequested { stream_id, .. } if decision % 2 == 0 => {
                    session.accept_publish(stream_id)
                }
                ServerEvent::PublishRequested { stream_id, .. } => {
                    session.reject_publish(stream_id, "NetStream.Publish.BadName", "no")
                }
                ServerEvent::PlayRequested { stream_id, .. } if decision % 2 == 0 => {
                    session.accept_play(stream_id);
                    session.notify_unpublish(stream_id);
                }
                ServerEvent::PlayRequested { stream_id, .. } => {
                    session.reject_play(stream_id, "NetStream.Play.StreamNotFound", "no")
                }
                _ => {}
            }
        }
        let _ = session.take_output();
    }
});
