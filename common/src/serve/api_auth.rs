//! Who may use the HTTP API: a bearer token, decided here so the rules are
//! in one place.
//!
//! - `/healthz`, `/readyz` and `/metrics` are open (probes and scrapers;
//!   they reveal no stream or client names and change nothing).
//! - A write (anything but GET/HEAD, e.g. `DELETE /api/v1/clients/ID`)
//!   needs `Authorization: Bearer TOKEN`, always. Without a configured
//!   token writes are refused (403): a local process or a browser page
//!   must not kick clients just because it can reach 127.0.0.1.
//! - Reads of `/api/...` need the token when one is configured and the
//!   API listens on a non-loopback address; on loopback they are open
//!   (local dashboards, `curl`).
//! - A non-loopback API without a token is refused at start
//!   ([`require_token_off_loopback`]).
//!
//! The token comes from `--api-token` / `BATON_API_TOKEN`, or the first
//! line of `--api-token-file`; it never appears in `Debug` output or logs.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use crate::config::ConfigError;

/// A secret compared in constant time and never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken(String);

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// A token of printable ASCII (it travels in an HTTP header), at least
    /// 16 bytes long.
    pub fn new(value: &str) -> Result<ApiToken, ConfigError> {
        let value = value.trim();
        let bad = |reason: &str| ConfigError::Setting {
            name: "api_token",
            reason: reason.to_string(),
        };
        if value.len() < 16 {
            return Err(bad("must be at least 16 characters"));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad("must be printable ASCII without spaces"));
        }
        Ok(ApiToken(value.to_string()))
    }

    /// The first line of `path`.
    pub fn from_file(path: &Path) -> Result<ApiToken, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ApiToken::new(text.lines().next().unwrap_or_default())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn matches_header(&self, header: Option<&[u8]>) -> bool {
        let Some(given) = header.and_then(|h| h.strip_prefix(b"Bearer ")) else {
            return false;
        };
        constant_time_eq(given, self.0.as_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Start-up check: an API reachable from other hosts needs a token.
pub fn require_token_off_loopback(
    api: SocketAddr,
    token: Option<&ApiToken>,
) -> Result<(), ConfigError> {
    if api.ip().is_loopback() || token.is_some() {
        return Ok(());
    }
    Err(ConfigError::Setting {
        name: "api_token",
        reason: format!(
            "the API listens on {api}, which is not a loopback address: set --api-token \
             (or BATON_API_TOKEN, or --api-token-file), or bind --api to 127.0.0.1"
        ),
    })
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Allowed,
    /// 401: a token is needed and none (or a wrong one) was given.
    Unauthorized,
    /// 403: writes are disabled (no token configured).
    WritesDisabled,
}

/// The decision for one request (see the module doc).
pub fn decide(
    token: Option<&ApiToken>,
    api_is_loopback: bool,
    is_write: bool,
    path: &str,
    authorization: Option<&[u8]>,
) -> Access {
    let open = matches!(path, "/healthz" | "/readyz" | "/metrics");
    if open && !is_write {
        return Access::Allowed;
    }
    let authorized = token.is_some_and(|t| t.matches_header(authorization));
    match (is_write, token) {
        (true, None) => Access::WritesDisabled,
        (true, Some(_)) if !authorized => Access::Unauthorized,
        (false, Some(_)) if !api_is_loopback && !authorized => Access::Unauthorized,
        _ => Access::Allowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token() -> ApiToken {
        ApiToken::new("0123456789abcdef-secret").unwrap()
    }

    #[test]
    fn tokens_are_checked_and_never_printed() {
        assert!(ApiToken::new("short").is_err());
        assert!(ApiToken::new("has a space in it, long enough").is_err());
        let t = token();
        assert_eq!(format!("{t:?}"), "ApiToken(<redacted>)");
        assert!(t.matches_header(Some(b"Bearer 0123456789abcdef-secret")));
        assert!(!t.matches_header(Some(b"Bearer 0123456789abcdef-secreT")));
        assert!(!t.matches_header(Some(b"0123456789abcdef-secret")));
        assert!(!t.matches_header(None));
    }

    #[test]
    fn non_loopback_needs_a_token() {
        let public: SocketAddr = "0.0.0.0:1985".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:1985".parse().unwrap();
        let err = require_token_off_loopback(public, None).unwrap_err();
        assert!(err.to_string().contains("--api-token"), "{err}");
        assert!(require_token_off_loopback(public, Some(&token())).is_ok());
        assert!(require_token_off_loopback(local, None).is_ok());
    }

    #[test]
    fn decisions() {
        let t = token();
        let good: Option<&[u8]> = Some(b"Bearer 0123456789abcdef-secret");
        let api = "/api/v1/clients/1";
        // Probes are open everywhere.
        assert_eq!(
            decide(Some(&t), false, false, "/healthz", None),
            Access::Allowed
        );
        assert_eq!(decide(None, true, false, "/metrics", None), Access::Allowed);
        // Writes: token always.
        assert_eq!(decide(None, true, true, api, None), Access::WritesDisabled);
        assert_eq!(
            decide(Some(&t), true, true, api, None),
            Access::Unauthorized
        );
        assert_eq!(decide(Some(&t), true, true, api, good), Access::Allowed);
        // Reads: open on loopback, token elsewhere.
        assert_eq!(decide(None, true, false, api, None), Access::Allowed);
        assert_eq!(decide(Some(&t), true, false, api, None), Access::Allowed);
        assert_eq!(
            decide(Some(&t), false, false, api, None),
            Access::Unauthorized
        );
        assert_eq!(decide(Some(&t), false, false, api, good), Access::Allowed);
    }
}
