//! The RTMP handshake (C0/C1/C2 ↔ S0/S1/S2), sans-IO.
//!
//! Encoders of the Flash era (FMLE, old OBS, Wirecast...) send the "complex"
//! handshake: C1 carries an HMAC-SHA256 digest keyed with the Flash Player
//! key, and they expect S1/S2 to carry digests keyed with the Flash Media
//! Server key. The server recognises that form exactly as nginx-rtmp
//! (`ngx_rtmp_handshake.c`) and SRS do and answers in kind; anything else
//! gets the plain handshake (S2 echoes C1). C2 is consumed without being
//! checked, since many clients send junk there.
//!
//! Both sides consume only handshake bytes from their input: whatever
//! follows C2/S2 is the start of the chunk stream and stays in the buffer.

use bytes::{BufMut, BytesMut};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Size of C1, C2, S1 and S2.
pub const HANDSHAKE_SIZE: usize = 1536;
/// The only RTMP version we speak (C0/S0).
pub const RTMP_VERSION: u8 = 3;

const DIGEST_LEN: usize = 32;
/// The digest sits somewhere in a 764-byte half of C1/S1: 728 possible
/// offsets after the 4 offset bytes (and before the 32 digest bytes).
const DIGEST_OFFSET_MODULO: usize = 728;

/// The 32 bytes both Adobe keys end with.
const KEY_TAIL: [u8; 32] = [
    0xF0, 0xEE, 0xC2, 0x4A, 0x80, 0x68, 0xBE, 0xE8, 0x2E, 0x00, 0xD0, 0xD1, 0x02, 0x9E, 0x7E, 0x57,
    0x6E, 0xEC, 0x5D, 0x2D, 0x29, 0x80, 0x6F, 0xAB, 0x93, 0xB8, 0xE6, 0x36, 0xCF, 0xEB, 0x31, 0xAE,
];
const FLASH_PLAYER_KEY_TEXT: &[u8] = b"Genuine Adobe Flash Player 001";
const FLASH_SERVER_KEY_TEXT: &[u8] = b"Genuine Adobe Flash Media Server 001";
/// Version bytes we put in a digest S1 (what nginx-rtmp sends).
const SERVER_VERSION: [u8; 4] = [0x0D, 0x0E, 0x0A, 0x0D];

/// Where a digest lives in C1/S1. The names follow SRS: schema 1 reads the
/// offset from bytes 8..12, schema 0 from bytes 772..776.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestSchema {
    Schema0,
    Schema1,
}

impl DigestSchema {
    fn offset_base(self) -> usize {
        match self {
            DigestSchema::Schema0 => 772,
            DigestSchema::Schema1 => 8,
        }
    }

    /// Position of the 32 digest bytes inside a 1536-byte C1/S1.
    fn digest_position(self, packet: &[u8; HANDSHAKE_SIZE]) -> usize {
        let base = self.offset_base();
        let sum: usize = packet[base..base + 4].iter().map(|&b| usize::from(b)).sum();
        base + 4 + sum % DIGEST_OFFSET_MODULO
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("unsupported RTMP version {0} (only version 3 is supported; is this RTMP?)")]
    UnsupportedVersion(u8),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeStatus {
    InProgress,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    AwaitingC0C1,
    AwaitingC2,
    Done,
}

/// Server side: reads C0+C1, answers S0+S1+S2 at once, then skips C2.
#[derive(Debug)]
pub struct ServerHandshake {
    state: ServerState,
    used_digest: Option<DigestSchema>,
    filler: Filler,
}

impl Default for ServerHandshake {
    fn default() -> Self {
        Self::new(DEFAULT_SEED)
    }
}

impl ServerHandshake {
    /// `seed` feeds the random bytes of S1/S2 (the caller owns randomness;
    /// the bytes protect nothing, they only have to vary).
    pub fn new(seed: u64) -> Self {
        ServerHandshake {
            state: ServerState::AwaitingC0C1,
            used_digest: None,
            filler: Filler(seed),
        }
    }

    /// Which digest schema the client used, if it sent a complex handshake.
    pub fn client_digest_schema(&self) -> Option<DigestSchema> {
        self.used_digest
    }

    pub fn handle(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<HandshakeStatus, HandshakeError> {
        if self.state == ServerState::AwaitingC0C1 {
            // Check the version as soon as it arrives so garbage (an HTTP
            // request, TLS) is rejected without waiting for 1537 bytes.
            if let Some(&version) = input.first() {
                check_version(version)?;
            }
            let Some(c1) = take_c0_c1(input) else {
                return Ok(HandshakeStatus::InProgress);
            };
            self.used_digest = self.answer_c1(&c1, out);
            self.state = ServerState::AwaitingC2;
        }
        if self.state == ServerState::AwaitingC2 {
            if input.len() < HANDSHAKE_SIZE {
                return Ok(HandshakeStatus::InProgress);
            }
            let _c2 = input.split_to(HANDSHAKE_SIZE);
            self.state = ServerState::Done;
        }
        Ok(HandshakeStatus::Done)
    }

    fn answer_c1(&mut self, c1: &[u8; HANDSHAKE_SIZE], out: &mut BytesMut) -> Option<DigestSchema> {
        out.reserve(1 + 2 * HANDSHAKE_SIZE);
        out.put_u8(RTMP_VERSION);
        match find_client_digest(c1) {
            Some((schema, client_digest)) => {
                out.put_slice(&digest_s1(schema, &mut self.filler));
                out.put_slice(&digest_s2(&client_digest, &mut self.filler));
                Some(schema)
            }
            None => {
                out.put_slice(&plain_c1_or_s1(&mut self.filler));
                out.put_slice(c1);
                None
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientState {
    NotStarted,
    AwaitingS0S1,
    AwaitingS2,
    Done,
}

/// Client side, plain handshake: C0+C1, then C2 = echo of S1.
#[derive(Debug)]
pub struct ClientHandshake {
    state: ClientState,
    filler: Filler,
}

impl Default for ClientHandshake {
    fn default() -> Self {
        Self::new(DEFAULT_SEED)
    }
}

impl ClientHandshake {
    /// `seed` feeds the random bytes of C1.
    pub fn new(seed: u64) -> Self {
        ClientHandshake {
            state: ClientState::NotStarted,
            filler: Filler(seed),
        }
    }

    /// Writes C0+C1; call once before `handle`.
    pub fn start(&mut self, out: &mut BytesMut) {
        if self.state != ClientState::NotStarted {
            return;
        }
        out.reserve(1 + HANDSHAKE_SIZE);
        out.put_u8(RTMP_VERSION);
        out.put_slice(&plain_c1_or_s1(&mut self.filler));
        self.state = ClientState::AwaitingS0S1;
    }

    pub fn handle(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
    ) -> Result<HandshakeStatus, HandshakeError> {
        if self.state == ClientState::NotStarted {
            self.start(out);
        }
        if self.state == ClientState::AwaitingS0S1 {
            if let Some(&version) = input.first() {
                check_version(version)?;
            }
            let Some(s1) = take_c0_c1(input) else {
                return Ok(HandshakeStatus::InProgress);
            };
            out.put_slice(&s1);
            self.state = ClientState::AwaitingS2;
        }
        if self.state == ClientState::AwaitingS2 {
            if input.len() < HANDSHAKE_SIZE {
                return Ok(HandshakeStatus::InProgress);
            }
            let _s2 = input.split_to(HANDSHAKE_SIZE);
            self.state = ClientState::Done;
        }
        Ok(HandshakeStatus::Done)
    }
}

fn check_version(version: u8) -> Result<(), HandshakeError> {
    if version == RTMP_VERSION {
        Ok(())
    } else {
        Err(HandshakeError::UnsupportedVersion(version))
    }
}

/// Removes the version byte and the 1536-byte packet after it, if both are
/// there.
fn take_c0_c1(input: &mut BytesMut) -> Option<[u8; HANDSHAKE_SIZE]> {
    if input.len() < 1 + HANDSHAKE_SIZE {
        return None;
    }
    let taken = input.split_to(1 + HANDSHAKE_SIZE);
    let mut packet = [0u8; HANDSHAKE_SIZE];
    packet.copy_from_slice(taken.get(1..)?);
    Some(packet)
}

/// Seed used where the caller gives none (tests, fuzzing).
pub const DEFAULT_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// The handshake's "random" bytes: splitmix64 over the caller's seed. They
/// carry no secret (RTMP's digests use fixed public keys), they only have
/// to differ between connections, so a seeded generator is enough and keeps
/// this crate free of an entropy source.
#[derive(Debug, Clone)]
struct Filler(u64);

impl Filler {
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// time (0: we keep no clock) + four zero bytes + random.
fn plain_c1_or_s1(filler: &mut Filler) -> [u8; HANDSHAKE_SIZE] {
    let mut packet = [0u8; HANDSHAKE_SIZE];
    filler.fill(&mut packet[8..]);
    packet
}

fn flash_player_key() -> &'static [u8] {
    FLASH_PLAYER_KEY_TEXT
}

fn flash_server_key() -> &'static [u8] {
    FLASH_SERVER_KEY_TEXT
}

fn flash_server_full_key() -> [u8; 68] {
    let mut key = [0u8; 68];
    key[..36].copy_from_slice(FLASH_SERVER_KEY_TEXT);
    key[36..].copy_from_slice(&KEY_TAIL);
    key
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; DIGEST_LEN] {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return [0u8; DIGEST_LEN];
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// HMAC of a C1/S1 with the 32 digest bytes at `position` left out.
fn packet_digest(key: &[u8], packet: &[u8; HANDSHAKE_SIZE], position: usize) -> [u8; DIGEST_LEN] {
    hmac_sha256(
        key,
        &[&packet[..position], &packet[position + DIGEST_LEN..]],
    )
}

/// Looks for a valid Flash Player digest in C1 (schema 0, then 1, like
/// nginx-rtmp). Plain C1s (zero version bytes) are not searched.
fn find_client_digest(c1: &[u8; HANDSHAKE_SIZE]) -> Option<(DigestSchema, [u8; DIGEST_LEN])> {
    if c1[4..8] == [0, 0, 0, 0] {
        return None;
    }
    [DigestSchema::Schema0, DigestSchema::Schema1]
        .into_iter()
        .find_map(|schema| {
            let position = schema.digest_position(c1);
            let expected = packet_digest(flash_player_key(), c1, position);
            let found = &c1[position..position + DIGEST_LEN];
            (found == expected).then_some((schema, expected))
        })
}

/// Writes the digest for `key` into `packet` at the schema's position.
fn sign_packet(packet: &mut [u8; HANDSHAKE_SIZE], schema: DigestSchema, key: &[u8]) {
    let position = schema.digest_position(packet);
    let digest = packet_digest(key, packet, position);
    packet[position..position + DIGEST_LEN].copy_from_slice(&digest);
}

fn digest_s1(schema: DigestSchema, filler: &mut Filler) -> [u8; HANDSHAKE_SIZE] {
    let mut s1 = plain_c1_or_s1(filler);
    s1[4..8].copy_from_slice(&SERVER_VERSION);
    sign_packet(&mut s1, schema, flash_server_key());
    s1
}

/// S2 for a digest handshake: random bytes whose last 32 bytes are an HMAC
/// keyed by HMAC(full server key, client digest).
fn digest_s2(client_digest: &[u8; DIGEST_LEN], filler: &mut Filler) -> [u8; HANDSHAKE_SIZE] {
    let mut s2 = [0u8; HANDSHAKE_SIZE];
    filler.fill(&mut s2);
    let key = hmac_sha256(&flash_server_full_key(), &[client_digest]);
    let signed_len = HANDSHAKE_SIZE - DIGEST_LEN;
    let digest = hmac_sha256(&key, &[&s2[..signed_len]]);
    s2[signed_len..].copy_from_slice(&digest);
    s2
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run_pair(
        server: &mut ServerHandshake,
        client: &mut ClientHandshake,
    ) -> (BytesMut, BytesMut) {
        let mut to_server = BytesMut::new();
        let mut to_client = BytesMut::new();
        client.start(&mut to_server);
        for _ in 0..4 {
            let _ = server.handle(&mut to_server, &mut to_client).unwrap();
            let _ = client.handle(&mut to_client, &mut to_server).unwrap();
        }
        (to_server, to_client)
    }

    #[test]
    fn server_and_client_complete_each_other() {
        let mut server = ServerHandshake::default();
        let mut client = ClientHandshake::default();
        let (to_server, to_client) = run_pair(&mut server, &mut client);
        assert_eq!(server.state, ServerState::Done);
        assert_eq!(client.state, ClientState::Done);
        assert!(to_server.is_empty() && to_client.is_empty());
        assert_eq!(server.client_digest_schema(), None);
    }

    #[test]
    fn trailing_bytes_after_c2_stay_in_input() {
        let mut server = ServerHandshake::default();
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        input.put_u8(3);
        input.put_slice(&[0u8; HANDSHAKE_SIZE]);
        assert_eq!(
            server.handle(&mut input, &mut out),
            Ok(HandshakeStatus::InProgress)
        );
        assert_eq!(out.len(), 1 + 2 * HANDSHAKE_SIZE);
        input.put_slice(&[7u8; HANDSHAKE_SIZE]);
        input.put_slice(b"chunk");
        assert_eq!(
            server.handle(&mut input, &mut out),
            Ok(HandshakeStatus::Done)
        );
        assert_eq!(&input[..], b"chunk");
    }

    #[test]
    fn plain_s2_echoes_c1() {
        let mut server = ServerHandshake::default();
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        let mut c1 = [0u8; HANDSHAKE_SIZE];
        c1[100] = 42;
        input.put_u8(3);
        input.put_slice(&c1);
        server.handle(&mut input, &mut out).unwrap();
        assert_eq!(out[0], 3);
        assert_eq!(&out[1 + HANDSHAKE_SIZE..], &c1[..]);
    }

    #[test]
    fn rejects_wrong_version_immediately() {
        let mut server = ServerHandshake::default();
        let mut out = BytesMut::new();
        let err = server
            .handle(&mut BytesMut::from(&b"GET / HTTP/1.1"[..]), &mut out)
            .unwrap_err();
        assert_eq!(err, HandshakeError::UnsupportedVersion(b'G'));
        assert_eq!(
            err.to_string().split(' ').take(4).collect::<Vec<_>>(),
            ["unsupported", "RTMP", "version", "71"]
        );
        let mut client = ClientHandshake::default();
        assert!(client
            .handle(&mut BytesMut::from(&[6u8][..]), &mut out)
            .is_err());
    }

    fn flash_player_full_key() -> [u8; 62] {
        let mut key = [0u8; 62];
        key[..30].copy_from_slice(FLASH_PLAYER_KEY_TEXT);
        key[30..].copy_from_slice(&KEY_TAIL);
        key
    }

    fn digest_c1(schema: DigestSchema) -> [u8; HANDSHAKE_SIZE] {
        let mut c1 = [0u8; HANDSHAKE_SIZE];
        for (i, b) in c1.iter_mut().enumerate() {
            *b = (i * 7 + 3) as u8;
        }
        c1[4..8].copy_from_slice(&[0x80, 0x00, 0x07, 0x02]); // Flash player version
        sign_packet(&mut c1, schema, &flash_player_full_key()[..30]);
        c1
    }

    fn check_digest_answer(schema: DigestSchema) {
        let c1 = digest_c1(schema);
        let client_position = schema.digest_position(&c1);
        let client_digest: [u8; 32] = c1[client_position..client_position + 32]
            .try_into()
            .unwrap();

        let mut server = ServerHandshake::default();
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        input.put_u8(3);
        input.put_slice(&c1);
        server.handle(&mut input, &mut out).unwrap();
        assert_eq!(server.client_digest_schema(), Some(schema));

        let s1: [u8; HANDSHAKE_SIZE] = out[1..1 + HANDSHAKE_SIZE].try_into().unwrap();
        let s2: [u8; HANDSHAKE_SIZE] = out[1 + HANDSHAKE_SIZE..].try_into().unwrap();
        // S1 carries a digest keyed with the 36-byte FMS key at the same schema.
        let position = schema.digest_position(&s1);
        assert_eq!(
            &s1[position..position + 32],
            &packet_digest(b"Genuine Adobe Flash Media Server 001", &s1, position)
        );
        // S2's last 32 bytes are keyed from the client's digest.
        let key = hmac_sha256(&flash_server_full_key(), &[&client_digest]);
        assert_eq!(&s2[1504..], &hmac_sha256(&key, &[&s2[..1504]]));
        assert_ne!(&s2[..], &c1[..]);
    }

    #[test]
    fn answers_schema1_digest_handshake() {
        check_digest_answer(DigestSchema::Schema1);
    }

    #[test]
    fn answers_schema0_digest_handshake() {
        check_digest_answer(DigestSchema::Schema0);
    }

    #[test]
    fn invalid_digest_falls_back_to_plain() {
        let mut c1 = digest_c1(DigestSchema::Schema1);
        let position = DigestSchema::Schema1.digest_position(&c1);
        c1[position] ^= 0xff;
        let mut input = BytesMut::new();
        input.put_u8(3);
        input.put_slice(&c1);
        let mut out = BytesMut::new();
        let mut server = ServerHandshake::default();
        server.handle(&mut input, &mut out).unwrap();
        assert_eq!(server.client_digest_schema(), None);
        assert_eq!(&out[1 + HANDSHAKE_SIZE..], &c1[..]);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..2000), 0..4)) {
            let mut server = ServerHandshake::default();
            let mut client = ClientHandshake::default();
            let mut server_in = BytesMut::new();
            let mut client_in = BytesMut::new();
            let mut out = BytesMut::new();
            for chunk in chunks {
                server_in.extend_from_slice(&chunk);
                client_in.extend_from_slice(&chunk);
                let _ = server.handle(&mut server_in, &mut out);
                let _ = client.handle(&mut client_in, &mut out);
            }
        }
    }
}
