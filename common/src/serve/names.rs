//! Which app and stream names a node accepts, decided in one place for
//! RTMP publish and play and for HTTP-FLV, so a name that reaches the hub,
//! the logs and the API is always plain text of a known shape.
//!
//! A name is 1 to [`MAX_NAME_LEN`] bytes of `A-Z a-z 0-9 . _ ~ -` (the
//! URL-unreserved characters: nothing to escape in a URL, a path, a log
//! line or JSON), and not `.` or `..`. An app may have several such
//! segments separated by `/` (`live/eu`), at most [`MAX_NAME_LEN`] bytes
//! in all. Anything else (`%`, spaces, control bytes, `../`) is refused
//! before a source exists.

use crate::hub::StreamKey;

/// Longest app (all segments) or stream name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// Why a name was refused; the text is what clients are told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} name is empty")]
    Empty { what: &'static str },
    #[error("{what} name is longer than {MAX_NAME_LEN} bytes")]
    TooLong { what: &'static str },
    #[error("{what} name may not be \".\" or \"..\"")]
    DotSegment { what: &'static str },
    #[error("{what} name may only contain A-Z a-z 0-9 . _ ~ - (found byte 0x{byte:02x})")]
    BadByte { what: &'static str, byte: u8 },
}

impl NameError {
    /// For metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            NameError::Empty { .. } => "empty",
            NameError::TooLong { .. } => "too_long",
            NameError::DotSegment { .. } => "dot_segment",
            NameError::BadByte { .. } => "bad_byte",
        }
    }
}

fn allowed(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'~' | b'-')
}

fn check_segment(segment: &str, what: &'static str) -> Result<(), NameError> {
    if segment.is_empty() {
        return Err(NameError::Empty { what });
    }
    if segment == "." || segment == ".." {
        return Err(NameError::DotSegment { what });
    }
    if let Some(&byte) = segment.as_bytes().iter().find(|b| !allowed(**b)) {
        return Err(NameError::BadByte { what, byte });
    }
    Ok(())
}

/// A stream name: one segment.
pub fn check_stream(name: &str) -> Result<(), NameError> {
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { what: "stream" });
    }
    check_segment(name, "stream")
}

/// An app name: one or more segments separated by `/`.
pub fn check_app(name: &str) -> Result<(), NameError> {
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { what: "app" });
    }
    if name.is_empty() {
        return Err(NameError::Empty { what: "app" });
    }
    name.split('/').try_for_each(|s| check_segment(s, "app"))
}

/// The key of a valid `app` and `stream`, or why not. Refusals are counted
/// (`baton_bad_names_total{reason}`).
pub fn stream_key(app: &str, stream: &str) -> Result<StreamKey, NameError> {
    let checked = check_app(app).and_then(|()| check_stream(stream));
    if let Err(error) = &checked {
        metrics::counter!("baton_bad_names_total", "reason" => error.reason()).increment(1);
    }
    checked.map(|()| StreamKey::new(app, stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        assert_eq!(
            stream_key("live", "cam-1_a.b~c"),
            Ok(StreamKey::new("live", "cam-1_a.b~c"))
        );
        assert!(stream_key("live/eu", "x").is_ok());
        assert!(stream_key("a", &"s".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn everything_else_is_refused() {
        let stream = |s: &str| stream_key("live", s);
        assert_eq!(stream(""), Err(NameError::Empty { what: "stream" }));
        assert_eq!(stream(".."), Err(NameError::DotSegment { what: "stream" }));
        assert_eq!(stream("."), Err(NameError::DotSegment { what: "stream" }));
        assert_eq!(
            stream(&"s".repeat(MAX_NAME_LEN + 1)),
            Err(NameError::TooLong { what: "stream" })
        );
        for bad in ["%00", "a b", "a/b", "a\0b", "é", "a?b", "<script>", "a\nb"] {
            assert!(
                matches!(stream(bad), Err(NameError::BadByte { .. })),
                "{bad:?} passed"
            );
        }
        for app in [
            "",
            "live/",
            "/live",
            "live/../../etc",
            "live//x",
            "..",
            "li ve",
        ] {
            assert!(stream_key(app, "x").is_err(), "app {app:?} passed");
        }
        assert!(stream_key(&"a".repeat(MAX_NAME_LEN + 1), "x").is_err());
    }

    #[test]
    fn errors_read_well() {
        let e = stream_key("live", "a%00").unwrap_err().to_string();
        assert_eq!(
            e,
            "stream name may only contain A-Z a-z 0-9 . _ ~ - (found byte 0x25)"
        );
    }
}
