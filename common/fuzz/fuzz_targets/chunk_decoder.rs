//! Fuzzes the chunk stream decoder: arbitrary bytes, delivered in pieces,
//! must only ever produce messages or typed errors, never a panic or an
//! unbounded allocation.
#![no_main]

use baton_proto::rtmp::chunk::ChunkDecoder;
use baton_proto::rtmp::message::RtmpMessage;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&setup, rest)) = data.split_first() else {
        return;
    };
    let mut decoder = ChunkDecoder::new();
    // Small chunk sizes exercise multi-chunk reassembly.
    let _ = decoder.set_chunk_size(u32::from(setup & 0x7f) + 1);
    let piece_len = usize::from(setup >> 7) * 7 + 1;
    let mut buf = BytesMut::new();
    for piece in rest.chunks(piece_len.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(raw)) => {
                    if raw.csid == 2 && raw.type_id == 2 {
                        if let Some(csid) = raw.payload.get(..4) {
                            decoder.abort(u32::from_be_bytes([csid[0], csid[1], csid[2], csid[3]]));
                        }
                    }
                    if let Ok(RtmpMessage::SetChunkSize(size)) = RtmpMessage::parse(raw) {
                        if decoder.set_chunk_size(size).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
