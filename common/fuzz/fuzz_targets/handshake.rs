//! Fuzzes both handshake state machines with arbitrary peer bytes, once as
//! they come and once behind a valid version byte so C1/C2 and S1/S2
//! handling is reached too.
#![no_main]

use baton_proto::rtmp::handshake::{ClientHandshake, ServerHandshake, RTMP_VERSION};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn run(prefix: &[u8], data: &[u8]) {
    let mut server = ServerHandshake::default();
    let mut client = ClientHandshake::default();
    let mut out = BytesMut::new();
    client.start(&mut out);
    let mut server_in = BytesMut::from(prefix);
    let mut client_in = BytesMut::from(prefix);
    for piece in data.chunks(997) {
        server_in.extend_from_slice(piece);
        client_in.extend_from_slice(piece);
        let _ = server.handle(&mut server_in, &mut out);
        let _ = client.handle(&mut client_in, &mut out);
        out.clear();
    }
}

fuzz_target!(|data: &[u8]| {
    run(&[], data);
    run(&[RTMP_VERSION], data);
});
