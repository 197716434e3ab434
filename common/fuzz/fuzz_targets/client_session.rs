//! Fuzzes the client session the way an edge uses it against an origin: a
//! valid server handshake, then arbitrary chunk-stream bytes "from the
//! origin" after connect, createStream and play were queued. The session
//! must return errors, never panic, and keep its output bounded by what it
//! was asked to send.
#![no_main]

use baton_proto::rtmp::client_session::ClientSession;
use baton_proto::rtmp::handshake::HANDSHAKE_SIZE;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut session = ClientSession::new();
    session.connect("live", "rtmp://127.0.0.1/live");
    session.create_stream();
    session.play(1, "stream");
    let mut input = BytesMut::new();
    input.extend_from_slice(&[3]);
    input.extend_from_slice(&[0u8; 2 * HANDSHAKE_SIZE]);
    if session.handle_input(&mut input).is_err() {
        return;
    }
    for piece in data.chunks(509) {
        input.extend_from_slice(piece);
        if session.handle_input(&mut input).is_err() {
            return;
        }
        while session.poll_event().is_some() {}
        let _ = session.take_output();
    }
});
