//! How a client connection's end is logged. A connection that published
//! or played gets its own line, as always. One that never got that far
//! is what a flood is made of: a plain close is a debug line, and
//! timeouts and errors go through [`super::warnings`] (the first of each
//! kind per interval in full, then a count).

use crate::clients::{ClientEntry, ClientRole};

/// The kind of an RTMP failure that never reached publish or play, from
/// the error the connection task ended with.
fn rtmp_failure_kind(error: &str) -> &'static str {
    if error.starts_with("no publish or play within") {
        "rtmp connections timed out before publish or play (handshake_timeout)"
    } else if error.contains("protocol error") {
        "rtmp connections closed for protocol errors"
    } else {
        "rtmp connections failed before publish or play"
    }
}

/// An RTMP connection ended with `outcome` (a reason or the error).
pub fn rtmp_ended(entry: &ClientEntry, outcome: &anyhow::Result<&'static str>) {
    let engaged = entry.role() != ClientRole::Pending;
    match outcome {
        Ok(reason) if engaged => tracing::info!(reason, "disconnected"),
        Ok(reason) if *reason == "peer closed before publish or play" => {
            tracing::debug!(reason, "disconnected")
        }
        Ok(reason) => tracing::info!(reason, "disconnected"),
        Err(error) => {
            let error = format!("{error:#}");
            let kind = if engaged && !error.contains("protocol error") {
                None
            } else {
                Some(rtmp_failure_kind(&error))
            };
            match kind {
                None => tracing::warn!(error, "disconnected"),
                Some(kind) => {
                    if super::warnings::note(kind, entry.peer.ip()) {
                        tracing::warn!(error, "disconnected ({kind}; more are summarized)");
                    }
                }
            }
        }
    }
}

/// An HTTP-FLV connection ended for `reason` after `bytes_out` bytes.
pub fn http_ended(entry: &ClientEntry, reason: &'static str, bytes_out: u64) {
    let engaged = entry.role() != ClientRole::Pending;
    let kind = match reason {
        _ if engaged => None,
        "no request within handshake_timeout" => {
            Some("http connections sent no request within handshake_timeout")
        }
        "connection error" => Some("http connections closed for errors before playing"),
        _ => {
            tracing::debug!(reason, bytes_out, "disconnected");
            return;
        }
    };
    match kind {
        None => tracing::info!(reason, bytes_out, "disconnected"),
        Some(kind) => {
            if super::warnings::note(kind, entry.peer.ip()) {
                tracing::warn!(
                    reason,
                    bytes_out,
                    "disconnected ({kind}; more are summarized)"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_kinds() {
        assert!(
            rtmp_failure_kind("no publish or play within handshake_timeout (10s)")
                .contains("handshake_timeout")
        );
        assert!(rtmp_failure_kind("protocol error: bad chunk").contains("protocol"));
        assert!(rtmp_failure_kind("read failed: reset").contains("failed"));
    }
}
