//! AMF0, the serialisation RTMP uses for commands (`connect`, `publish`,
//! `onStatus`...) and script data (`onMetaData`).
//!
//! The decoder reads untrusted network bytes, so it never panics and every
//! resource it spends is bounded: nesting depth ([`MAX_DEPTH`]) and the
//! number of values one decode may produce ([`MAX_VALUES`]). Declared
//! counts (ECMA and strict arrays) are never trusted for allocation.

use bytes::{BufMut, Bytes, BytesMut};

/// Deepest nesting of objects/arrays the decoder accepts.
pub const MAX_DEPTH: usize = 32;
/// Most values (including nested ones) one `decode`/`decode_all` call may
/// produce; real metadata with keyframe indexes stays far below this.
pub const MAX_VALUES: usize = 1 << 18;

const MARKER_NUMBER: u8 = 0x00;
const MARKER_BOOLEAN: u8 = 0x01;
const MARKER_STRING: u8 = 0x02;
const MARKER_OBJECT: u8 = 0x03;
const MARKER_MOVIECLIP: u8 = 0x04;
const MARKER_NULL: u8 = 0x05;
const MARKER_UNDEFINED: u8 = 0x06;
const MARKER_REFERENCE: u8 = 0x07;
const MARKER_ECMA_ARRAY: u8 = 0x08;
const MARKER_OBJECT_END: u8 = 0x09;
const MARKER_STRICT_ARRAY: u8 = 0x0a;
const MARKER_DATE: u8 = 0x0b;
const MARKER_LONG_STRING: u8 = 0x0c;
const MARKER_UNSUPPORTED: u8 = 0x0d;
const MARKER_RECORDSET: u8 = 0x0e;
const MARKER_XML_DOCUMENT: u8 = 0x0f;
const MARKER_TYPED_OBJECT: u8 = 0x10;
const MARKER_AVMPLUS: u8 = 0x11;

/// One AMF0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Amf0Value {
    Number(f64),
    Boolean(bool),
    String(String),
    /// Anonymous object: ordered key/value pairs (typed objects decode to
    /// this too, dropping the class name).
    Object(Vec<(String, Amf0Value)>),
    Null,
    Undefined,
    /// Associative array; the declared count is ignored.
    EcmaArray(Vec<(String, Amf0Value)>),
    StrictArray(Vec<Amf0Value>),
    Date {
        millis: f64,
        timezone: i16,
    },
    /// A string longer than 65535 bytes (XML documents decode to this too).
    LongString(String),
}

/// Why AMF0 bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Amf0Error {
    #[error("AMF0 truncated while reading {what}: {needed} bytes needed, {available} available")]
    Truncated {
        what: &'static str,
        needed: usize,
        available: usize,
    },
    #[error("unknown AMF0 marker 0x{0:02x}")]
    UnknownMarker(u8),
    #[error("unsupported AMF0 marker 0x{marker:02x} ({name})")]
    UnsupportedMarker { marker: u8, name: &'static str },
    #[error("unexpected AMF0 object-end marker outside an object")]
    UnexpectedObjectEnd,
    #[error("AMF0 nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("AMF0 {what} is not valid UTF-8")]
    InvalidUtf8 { what: &'static str },
    #[error("AMF0 data holds more than {MAX_VALUES} values")]
    TooManyElements,
}

impl Amf0Value {
    /// The text of a `String` or `LongString`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Amf0Value::String(s) | Amf0Value::LongString(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Amf0Value::Number(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Amf0Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// Property lookup on an `Object` or `EcmaArray` (first match wins).
    pub fn get(&self, key: &str) -> Option<&Amf0Value> {
        match self {
            Amf0Value::Object(pairs) | Amf0Value::EcmaArray(pairs) => {
                pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            _ => None,
        }
    }

    /// Builds an `Object` from borrowed keys.
    pub fn object<'a>(pairs: impl IntoIterator<Item = (&'a str, Amf0Value)>) -> Self {
        Amf0Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    pub fn string(s: impl Into<String>) -> Self {
        Amf0Value::String(s.into())
    }
}

/// Decodes one value from the front of `buf`, advancing it past the value.
pub fn decode(buf: &mut &[u8]) -> Result<Amf0Value, Amf0Error> {
    let mut reader = Reader::new(buf);
    let value = reader.value(0)?;
    *buf = reader.buf;
    Ok(value)
}

/// Decodes every value in `buf`; fails if any of them is malformed.
pub fn decode_all(buf: &[u8]) -> Result<Vec<Amf0Value>, Amf0Error> {
    let mut reader = Reader::new(buf);
    let mut values = Vec::new();
    while !reader.buf.is_empty() {
        values.push(reader.value(0)?);
    }
    Ok(values)
}

/// Appends the encoding of `value` to `out`.
pub fn encode(value: &Amf0Value, out: &mut BytesMut) {
    match value {
        Amf0Value::Number(n) => {
            out.put_u8(MARKER_NUMBER);
            out.put_f64(*n);
        }
        Amf0Value::Boolean(b) => {
            out.put_u8(MARKER_BOOLEAN);
            out.put_u8(u8::from(*b));
        }
        Amf0Value::String(s) => encode_string_value(s, out),
        Amf0Value::Object(pairs) => {
            out.put_u8(MARKER_OBJECT);
            encode_properties(pairs, out);
        }
        Amf0Value::Null => out.put_u8(MARKER_NULL),
        Amf0Value::Undefined => out.put_u8(MARKER_UNDEFINED),
        Amf0Value::EcmaArray(pairs) => {
            out.put_u8(MARKER_ECMA_ARRAY);
            out.put_u32(u32::try_from(pairs.len()).unwrap_or(u32::MAX));
            encode_properties(pairs, out);
        }
        Amf0Value::StrictArray(items) => {
            out.put_u8(MARKER_STRICT_ARRAY);
            out.put_u32(u32::try_from(items.len()).unwrap_or(u32::MAX));
            for item in items {
                encode(item, out);
            }
        }
        Amf0Value::Date { millis, timezone } => {
            out.put_u8(MARKER_DATE);
            out.put_f64(*millis);
            out.put_i16(*timezone);
        }
        Amf0Value::LongString(s) => encode_long_string(s, out),
    }
}

/// Encodes a sequence of values back to back (a command or data body).
pub fn encode_all(values: &[Amf0Value]) -> Bytes {
    let mut out = BytesMut::with_capacity(128);
    for value in values {
        encode(value, &mut out);
    }
    out.freeze()
}

fn encode_string_value(s: &str, out: &mut BytesMut) {
    if s.len() > usize::from(u16::MAX) {
        encode_long_string(s, out);
    } else {
        out.put_u8(MARKER_STRING);
        encode_short_utf8(s, out);
    }
}

fn encode_long_string(s: &str, out: &mut BytesMut) {
    let s = truncate_utf8(s, u32::MAX as usize);
    out.put_u8(MARKER_LONG_STRING);
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

/// A u16-length-prefixed UTF-8 string (property keys and short strings).
/// Keys cannot exceed 65535 bytes on the wire; longer ones are cut at a
/// character boundary rather than producing undecodable output.
fn encode_short_utf8(s: &str, out: &mut BytesMut) {
    let s = truncate_utf8(s, usize::from(u16::MAX));
    out.put_u16(s.len() as u16);
    out.put_slice(s.as_bytes());
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or_default()
}

fn encode_properties(pairs: &[(String, Amf0Value)], out: &mut BytesMut) {
    for (key, value) in pairs {
        encode_short_utf8(key, out);
        encode(value, out);
    }
    out.put_slice(&[0, 0, MARKER_OBJECT_END]);
}

/// Cursor over untrusted bytes with the decode budget.
struct Reader<'a> {
    buf: &'a [u8],
    values_left: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            values_left: MAX_VALUES,
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Amf0Error> {
        match self.buf.split_at_checked(n) {
            Some((head, tail)) => {
                self.buf = tail;
                Ok(head)
            }
            None => Err(Amf0Error::Truncated {
                what,
                needed: n,
                available: self.buf.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Amf0Error> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Amf0Error> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Amf0Error> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Amf0Error> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn f64(&mut self, what: &'static str) -> Result<f64, Amf0Error> {
        Ok(f64::from_be_bytes(self.array(what)?))
    }

    fn utf8(&mut self, len: usize, what: &'static str) -> Result<String, Amf0Error> {
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| Amf0Error::InvalidUtf8 { what })
    }

    fn short_string(&mut self, what: &'static str) -> Result<String, Amf0Error> {
        let len = self.u16(what)?;
        self.utf8(usize::from(len), what)
    }

    fn long_string(&mut self, what: &'static str) -> Result<String, Amf0Error> {
        let len = self.u32(what)?;
        self.utf8(len as usize, what)
    }

    fn spend_value(&mut self) -> Result<(), Amf0Error> {
        self.values_left = self
            .values_left
            .checked_sub(1)
            .ok_or(Amf0Error::TooManyElements)?;
        Ok(())
    }

    fn value(&mut self, depth: usize) -> Result<Amf0Value, Amf0Error> {
        if depth > MAX_DEPTH {
            return Err(Amf0Error::TooDeep);
        }
        self.spend_value()?;
        let marker = self.u8("value marker")?;
        match marker {
            MARKER_NUMBER => Ok(Amf0Value::Number(self.f64("number")?)),
            MARKER_BOOLEAN => Ok(Amf0Value::Boolean(self.u8("boolean")? != 0)),
            MARKER_STRING => Ok(Amf0Value::String(self.short_string("string")?)),
            MARKER_OBJECT => Ok(Amf0Value::Object(self.properties(depth, false)?)),
            MARKER_NULL => Ok(Amf0Value::Null),
            MARKER_UNDEFINED | MARKER_UNSUPPORTED => Ok(Amf0Value::Undefined),
            MARKER_ECMA_ARRAY => {
                let _declared_count = self.u32("ECMA array count")?;
                Ok(Amf0Value::EcmaArray(self.properties(depth, true)?))
            }
            MARKER_OBJECT_END => Err(Amf0Error::UnexpectedObjectEnd),
            MARKER_STRICT_ARRAY => self.strict_array(depth),
            MARKER_DATE => Ok(Amf0Value::Date {
                millis: self.f64("date")?,
                timezone: i16::from_be_bytes(self.array("date timezone")?),
            }),
            MARKER_LONG_STRING => Ok(Amf0Value::LongString(self.long_string("long string")?)),
            MARKER_XML_DOCUMENT => Ok(Amf0Value::LongString(self.long_string("XML document")?)),
            MARKER_TYPED_OBJECT => {
                let _class_name = self.short_string("typed object class name")?;
                Ok(Amf0Value::Object(self.properties(depth, false)?))
            }
            MARKER_MOVIECLIP => Err(unsupported(marker, "movieclip")),
            MARKER_REFERENCE => Err(unsupported(marker, "reference")),
            MARKER_RECORDSET => Err(unsupported(marker, "recordset")),
            MARKER_AVMPLUS => Err(unsupported(marker, "AMF3 switch")),
            other => Err(Amf0Error::UnknownMarker(other)),
        }
    }

    fn strict_array(&mut self, depth: usize) -> Result<Amf0Value, Amf0Error> {
        let count = self.u32("strict array count")?;
        // Every element takes at least one byte: a count larger than the
        // remaining input is truncated data, caught before allocating.
        if count as usize > self.buf.len() {
            return Err(Amf0Error::Truncated {
                what: "strict array elements",
                needed: count as usize,
                available: self.buf.len(),
            });
        }
        let mut items = Vec::with_capacity((count as usize).min(1024));
        for _ in 0..count {
            items.push(self.value(depth + 1)?);
        }
        Ok(Amf0Value::StrictArray(items))
    }

    /// Key/value pairs up to the `00 00 09` end marker. ECMA arrays from
    /// some encoders stop at the end of the data without an end marker,
    /// which is accepted for them (`lenient_end`).
    fn properties(
        &mut self,
        depth: usize,
        lenient_end: bool,
    ) -> Result<Vec<(String, Amf0Value)>, Amf0Error> {
        let mut pairs = Vec::new();
        loop {
            if lenient_end && self.buf.is_empty() {
                return Ok(pairs);
            }
            let key = self.short_string("property name")?;
            if key.is_empty() && self.buf.first() == Some(&MARKER_OBJECT_END) {
                self.buf = self.buf.get(1..).unwrap_or_default();
                return Ok(pairs);
            }
            let value = self.value(depth + 1)?;
            pairs.push((key, value));
        }
    }
}

fn unsupported(marker: u8, name: &'static str) -> Amf0Error {
    Amf0Error::UnsupportedMarker { marker, name }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(value: &Amf0Value) -> Amf0Value {
        let mut out = BytesMut::new();
        encode(value, &mut out);
        let mut slice = &out[..];
        let decoded = decode(&mut slice).expect("decodes");
        assert!(slice.is_empty(), "decode consumed everything");
        decoded
    }

    #[test]
    fn round_trips_every_type() {
        let values = vec![
            Amf0Value::Number(1.5),
            Amf0Value::Number(-0.0),
            Amf0Value::Boolean(true),
            Amf0Value::Boolean(false),
            Amf0Value::string("hello"),
            Amf0Value::string(""),
            Amf0Value::object([("a", Amf0Value::Number(1.0)), ("b", Amf0Value::Null)]),
            Amf0Value::Object(vec![]),
            Amf0Value::Null,
            Amf0Value::Undefined,
            Amf0Value::EcmaArray(vec![("duration".into(), Amf0Value::Number(0.0))]),
            Amf0Value::StrictArray(vec![Amf0Value::Number(1.0), Amf0Value::string("x")]),
            Amf0Value::Date {
                millis: 1.7e12,
                timezone: -60,
            },
            Amf0Value::LongString("long".into()),
        ];
        for value in &values {
            assert_eq!(&round_trip(value), value);
        }
    }

    #[test]
    fn known_bytes_for_simple_values() {
        let bytes = encode_all(&[
            Amf0Value::string("connect"),
            Amf0Value::Number(1.0),
            Amf0Value::Null,
            Amf0Value::Boolean(true),
        ]);
        assert_eq!(
            &bytes[..],
            &[
                0x02, 0x00, 0x07, b'c', b'o', b'n', b'n', b'e', b'c', b't', // "connect"
                0x00, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0,    // 1.0
                0x05, // null
                0x01, 0x01, // true
            ]
        );
    }

    /// The `connect` command FFmpeg's rtmpproto.c (`gen_connect`) sends
    /// when publishing, byte for byte as captured on the wire.
    const FFMPEG_CONNECT: &str = "020007636f6e6e656374003ff0000000000000030003617070020004\
        6c69766500047479706502000a6e6f6e707269766174650008666c617368566572020023464d4c452f33\
        2e302028636f6d70617469626c653b204c61766636312e372e313030290005746355726c02001a72746d\
        703a2f2f3132372e302e302e313a313933352f6c697665000009";

    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(u8::is_ascii_hexdigit).collect();
        digits
            .chunks(2)
            .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap())
            .collect()
    }

    #[test]
    fn decodes_ffmpeg_connect_command() {
        let wire = hex(FFMPEG_CONNECT);
        assert_eq!(wire.len(), 138);
        let values = decode_all(&wire).expect("decodes");
        assert_eq!(values.len(), 3);
        assert_eq!(values[0].as_str(), Some("connect"));
        assert_eq!(values[1].as_f64(), Some(1.0));
        let obj = &values[2];
        assert_eq!(obj.get("app").and_then(Amf0Value::as_str), Some("live"));
        assert_eq!(
            obj.get("type").and_then(Amf0Value::as_str),
            Some("nonprivate")
        );
        assert_eq!(
            obj.get("tcUrl").and_then(Amf0Value::as_str),
            Some("rtmp://127.0.0.1:1935/live")
        );
        assert_eq!(
            obj.get("flashVer").and_then(Amf0Value::as_str),
            Some("FMLE/3.0 (compatible; Lavf61.7.100)")
        );
        // It re-encodes to the same bytes, and every truncation fails cleanly.
        assert_eq!(&encode_all(&values)[..], &wire[..]);
        for cut in 0..wire.len() - 1 {
            let truncated = &wire[..cut];
            let result = decode_all(truncated);
            assert!(cut == 0 || result.is_err() || cut == 10 || cut == 19);
        }
    }

    #[test]
    fn ecma_array_ignores_count_and_accepts_missing_end() {
        let mut bytes = vec![MARKER_ECMA_ARRAY, 0, 0, 0, 99];
        bytes.extend_from_slice(b"\x00\x01a\x00");
        bytes.extend_from_slice(&2.0f64.to_be_bytes());
        let values = decode_all(&bytes).expect("decodes without end marker");
        assert_eq!(
            values,
            vec![Amf0Value::EcmaArray(vec![(
                "a".into(),
                Amf0Value::Number(2.0)
            )])]
        );
    }

    #[test]
    fn strings_longer_than_u16_become_long_strings() {
        let long = "x".repeat(70_000);
        let mut out = BytesMut::new();
        encode(&Amf0Value::String(long.clone()), &mut out);
        assert_eq!(out[0], MARKER_LONG_STRING);
        assert_eq!(
            round_trip(&Amf0Value::String(long.clone())),
            Amf0Value::LongString(long)
        );
    }

    #[test]
    fn rejects_amf3_switch_and_unknown_markers() {
        assert!(matches!(
            decode(&mut &[0x11u8, 0x00][..]),
            Err(Amf0Error::UnsupportedMarker { marker: 0x11, .. })
        ));
        assert_eq!(
            decode(&mut &[0x42u8][..]),
            Err(Amf0Error::UnknownMarker(0x42))
        );
        assert_eq!(
            decode(&mut &[0x09u8][..]),
            Err(Amf0Error::UnexpectedObjectEnd)
        );
    }

    #[test]
    fn rejects_truncation_and_bad_utf8() {
        assert!(matches!(
            decode(&mut &[0x00u8, 1, 2][..]),
            Err(Amf0Error::Truncated { .. })
        ));
        assert!(matches!(
            decode(&mut &[0x02u8, 0, 2, 0xff, 0xfe][..]),
            Err(Amf0Error::InvalidUtf8 { .. })
        ));
        assert!(matches!(
            decode(&mut &[0x0au8, 0xff, 0xff, 0xff, 0xff][..]),
            Err(Amf0Error::Truncated { .. })
        ));
    }

    #[test]
    fn limits_nesting_depth() {
        let mut deep = vec![];
        for _ in 0..40 {
            deep.extend_from_slice(&[MARKER_STRICT_ARRAY, 0, 0, 0, 1]);
        }
        deep.push(MARKER_NULL);
        assert_eq!(decode(&mut &deep[..]), Err(Amf0Error::TooDeep));

        let mut ok = vec![];
        for _ in 0..MAX_DEPTH {
            ok.extend_from_slice(&[MARKER_STRICT_ARRAY, 0, 0, 0, 1]);
        }
        ok.push(MARKER_NULL);
        assert!(decode(&mut &ok[..]).is_ok());
    }

    #[test]
    fn limits_value_count() {
        let nulls = vec![MARKER_NULL; MAX_VALUES + 1];
        assert_eq!(decode_all(&nulls), Err(Amf0Error::TooManyElements));
    }

    #[test]
    fn accessors() {
        let obj = Amf0Value::object([("k", Amf0Value::string("v"))]);
        assert_eq!(obj.get("k").and_then(Amf0Value::as_str), Some("v"));
        assert_eq!(obj.get("missing"), None);
        assert_eq!(Amf0Value::Null.get("k"), None);
        assert_eq!(Amf0Value::Number(3.0).as_f64(), Some(3.0));
        assert_eq!(Amf0Value::Null.as_str(), None);
    }

    fn arb_value() -> impl Strategy<Value = Amf0Value> {
        let leaf = prop_oneof![
            any::<f64>()
                .prop_filter("NaN != NaN", |f| !f.is_nan())
                .prop_map(Amf0Value::Number),
            any::<bool>().prop_map(Amf0Value::Boolean),
            ".{0,20}".prop_map(Amf0Value::String),
            Just(Amf0Value::Null),
            Just(Amf0Value::Undefined),
            (any::<i32>(), any::<i16>()).prop_map(|(m, timezone)| Amf0Value::Date {
                millis: f64::from(m),
                timezone
            }),
            ".{0,20}".prop_map(Amf0Value::LongString),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(("[a-z]{1,8}", inner.clone()), 0..6)
                    .prop_map(Amf0Value::Object),
                prop::collection::vec(("[a-z]{1,8}", inner.clone()), 0..6)
                    .prop_map(Amf0Value::EcmaArray),
                prop::collection::vec(inner, 0..6).prop_map(Amf0Value::StrictArray),
            ]
        })
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(values in prop::collection::vec(arb_value(), 0..5)) {
            let bytes = encode_all(&values);
            prop_assert_eq!(decode_all(&bytes).expect("decodes"), values);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_all(&bytes);
            let mut slice = &bytes[..];
            let _ = decode(&mut slice);
        }
    }
}
