//! Signed URLs checked locally, without asking anyone: a client adds
//! `?token=HEX&expires=UNIX` to its publish or play URL, where
//!
//! ```text
//! token = hex(HMAC-SHA256(secret, "{action}\n{app}\n{stream}\n{expires}"))
//! ```
//!
//! `action` is `publish` or `play` (a play token cannot publish), `app` and
//! `stream` are the stream's names as the server sees them (no query),
//! `expires` the Unix time in seconds after which the token is refused.
//! Pure functions: the caller passes the clock. The comparison is constant
//! time (`Mac::verify_slice`).

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::super::query_param;

/// The query parameter carrying the signature.
pub const TOKEN_PARAM: &str = "token";
/// The query parameter carrying the expiry (Unix seconds).
pub const EXPIRES_PARAM: &str = "expires";

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Publish,
    Play,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Play => "play",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token was refused; `label` is the metric's `reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("no token in the URL (token=...&expires=...)")]
    Missing,
    #[error("malformed token or expires parameter")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token's signature does not match")]
    BadSignature,
}

impl TokenError {
    pub fn label(self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Malformed => "token_malformed",
            TokenError::Expired => "token_expired",
            TokenError::BadSignature => "token_invalid",
        }
    }
}

fn mac(secret: &[u8], action: Action, app: &str, stream: &str, expires: u64) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(format!("{action}\n{app}\n{stream}\n{expires}").as_bytes());
    mac
}

/// The hex signature for `action` on `app/stream` until `expires`.
pub fn sign(secret: &[u8], action: Action, app: &str, stream: &str, expires: u64) -> String {
    let digest = mac(secret, action, app, stream, expires)
        .finalize()
        .into_bytes();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// `token=HEX&expires=UNIX`, ready to append after `?`.
pub fn signed_query(
    secret: &[u8],
    action: Action,
    app: &str,
    stream: &str,
    expires: u64,
) -> String {
    format!(
        "{TOKEN_PARAM}={}&{EXPIRES_PARAM}={expires}",
        sign(secret, action, app, stream, expires)
    )
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Check the token of a request's query string at `now` (Unix seconds).
/// The signature is checked before the expiry, so `Expired` means a
/// genuine token that ran out.
pub fn verify(
    secret: &[u8],
    action: Action,
    app: &str,
    stream: &str,
    query: Option<&str>,
    now: u64,
) -> Result<(), TokenError> {
    let token = query_param(query, TOKEN_PARAM);
    let expires = query_param(query, EXPIRES_PARAM);
    let (token, expires) = match (token, expires) {
        (None, None) => return Err(TokenError::Missing),
        (Some(token), Some(expires)) => (token, expires),
        _ => return Err(TokenError::Malformed),
    };
    let expires: u64 = expires.parse().map_err(|_| TokenError::Malformed)?;
    let signature = decode_hex(token).ok_or(TokenError::Malformed)?;
    mac(secret, action, app, stream, expires)
        .verify_slice(&signature)
        .map_err(|_| TokenError::BadSignature)?;
    if now >= expires {
        return Err(TokenError::Expired);
    }
    Ok(())
}

/// The client's query as an edge passes it on to an origin: Baton's own
/// parameters (`baton_*`) removed (the edge sets its own). With the
/// secret, a genuine token that expires within `margin` of `now` is
/// replaced by a fresh one valid until `now + ttl`: an edge re-opening an
/// upstream hours into a publish (origin failover) must not be refused
/// for a token the edge accepted when it was valid.
pub fn forwardable_query(
    query: Option<&str>,
    refresh: Option<(&[u8], Action, &str, &str)>,
    now: u64,
    margin: u64,
    ttl: u64,
) -> Option<String> {
    let query = query?;
    let stale = refresh.filter(|(secret, action, app, stream)| {
        let soon = now.saturating_add(margin);
        verify(secret, *action, app, stream, Some(query), soon) == Err(TokenError::Expired)
    });
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with("baton_"))
        .filter(|pair| {
            stale.is_none() || !(pair.starts_with("token=") || pair.starts_with("expires="))
        })
        .map(str::to_owned)
        .collect();
    if let Some((secret, action, app, stream)) = stale {
        pairs.push(signed_query(
            secret,
            action,
            app,
            stream,
            now.saturating_add(ttl),
        ));
    }
    (!pairs.is_empty()).then(|| pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cret";
    const NOW: u64 = 1_800_000_000;

    fn query(action: Action, stream: &str, expires: u64) -> String {
        signed_query(SECRET, action, "live", stream, expires)
    }

    #[test]
    fn a_good_token_passes_until_it_expires() {
        let q = query(Action::Publish, "cam", NOW + 60);
        let check = |now| verify(SECRET, Action::Publish, "live", "cam", Some(&q), now);
        assert_eq!(check(NOW), Ok(()));
        assert_eq!(check(NOW + 59), Ok(()));
        assert_eq!(check(NOW + 60), Err(TokenError::Expired));
    }

    #[test]
    fn the_signature_binds_action_app_stream_expiry_and_secret() {
        let q = query(Action::Publish, "cam", NOW + 60);
        let bad = Err(TokenError::BadSignature);
        assert_eq!(
            verify(SECRET, Action::Play, "live", "cam", Some(&q), NOW),
            bad
        );
        assert_eq!(
            verify(SECRET, Action::Publish, "live", "cam2", Some(&q), NOW),
            bad
        );
        assert_eq!(
            verify(SECRET, Action::Publish, "other", "cam", Some(&q), NOW),
            bad
        );
        assert_eq!(
            verify(b"other", Action::Publish, "live", "cam", Some(&q), NOW),
            bad
        );
        // A later expiry with the old signature.
        let stretched = q.replace(&format!("{}", NOW + 60), &format!("{}", NOW + 6000));
        assert_eq!(
            verify(
                SECRET,
                Action::Publish,
                "live",
                "cam",
                Some(&stretched),
                NOW
            ),
            bad
        );
    }

    #[test]
    fn missing_and_malformed_tokens_are_told_apart() {
        let check = |q: Option<&str>| verify(SECRET, Action::Play, "live", "cam", q, NOW);
        assert_eq!(check(None), Err(TokenError::Missing));
        assert_eq!(check(Some("foo=bar")), Err(TokenError::Missing));
        assert_eq!(check(Some("token=abc")), Err(TokenError::Malformed));
        assert_eq!(
            check(Some("token=abc&expires=1")),
            Err(TokenError::Malformed)
        );
        assert_eq!(check(Some("token=é&expires=x")), Err(TokenError::Malformed));
        let zz = "zz".repeat(32);
        assert_eq!(
            check(Some(&format!("token={zz}&expires=9"))),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn other_parameters_do_not_matter() {
        let q = format!("a=1&{}&baton_relay=1", query(Action::Play, "cam", NOW + 5));
        assert_eq!(
            verify(SECRET, Action::Play, "live", "cam", Some(&q), NOW),
            Ok(())
        );
    }

    #[test]
    fn known_answer_matches_the_documented_openssl_line() {
        // printf 'publish\nlive\ndemo\n2000000000' | openssl dgst -sha256 -hmac s3cret
        assert_eq!(
            sign(SECRET, Action::Publish, "live", "demo", 2_000_000_000),
            "00ad3f300d97c1c42a66ba27e1e6d14b207e5e52157afe8c2cbba983eddcdca5"
        );
    }

    #[test]
    fn forwarding_strips_baton_parameters_and_refreshes_only_genuine_stale_tokens() {
        assert_eq!(forwardable_query(None, None, NOW, 0, 0), None);
        assert_eq!(
            forwardable_query(Some("baton_relay=1&a=b"), None, NOW, 0, 0).as_deref(),
            Some("a=b")
        );
        assert_eq!(
            forwardable_query(Some("baton_resume=5"), None, NOW, 0, 0),
            None
        );
        let refresh = Some((SECRET, Action::Publish, "live", "cam"));
        // Valid for long: kept as is.
        let fresh = format!("x=1&{}", query(Action::Publish, "cam", NOW + 3600));
        assert_eq!(
            forwardable_query(Some(&fresh), refresh, NOW, 60, 600).as_deref(),
            Some(fresh.as_str())
        );
        // Expiring within the margin: re-signed.
        let stale = format!("x=1&{}", query(Action::Publish, "cam", NOW + 10));
        let out = forwardable_query(Some(&stale), refresh, NOW, 60, 600).expect("query");
        assert!(out.starts_with("x=1&token="), "{out}");
        let check = |q: &str, now| verify(SECRET, Action::Publish, "live", "cam", Some(q), now);
        assert_eq!(check(&out, NOW + 599), Ok(()));
        // A forged token is never re-signed.
        let forged = format!("token={}&expires={}", "ab".repeat(32), NOW - 5);
        let out = forwardable_query(Some(&forged), refresh, NOW, 60, 600).expect("query");
        assert_eq!(out, forged);
    }
}
