//! Limits that keep one client from hurting the others, on every node
//! (origin and edge share them):
//!
//! * [`admission`]: `max_connections` (exact: a slot is reserved before
//!   any work is done for a socket), `per_ip_max_connections` and
//!   `per_ip_accept_rate` / `per_ip_accept_burst`, checked in the one
//!   accept loop every client listener runs, so RTMP and HTTP-FLV apply
//!   the same rule. A refused socket is closed before any protocol byte
//!   (HTTP-FLV first gets a one-line `503`/`429` answer).
//! * `max_streams`: a publish or play that would create a source beyond it
//!   is refused (RTMP `NetStream.Publish.Rejected` / `Play.Failed` with a
//!   description, HTTP `503`), see [`check_new_stream`].
//! * [`bitrate`]: `max_publish_kbps` sustained over
//!   `publish_bitrate_window` disconnects the publisher with
//!   `NetStream.Publish.Rejected` and the rate in its description.
//! * `memory_budget` over the process's memory ledger (`crate::memory`):
//!   sources drop their backlog at once when over it, and the
//!   [`governor`] sheds the largest consumers ([`shedding`]).
//! * [`warnings`]: what a client can trigger at will is logged once per
//!   reason and interval, then summarized with a count.
//!
//! Every refusal and every shed is counted:
//! `baton_connections_refused_total{listener,reason}`,
//! `baton_streams_refused_total{reason}`,
//! `baton_publishers_disconnected_total{reason}`,
//! `baton_memory_shed_total{action}`.

pub mod admission;
pub mod bitrate;
pub mod byte_size;
pub mod disconnects;
pub mod governor;
pub mod shedding;
pub mod token_bucket;
pub mod warnings;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::clients::ClientEntry;
use crate::hub::StreamKey;
use crate::memory::{Charge, Pool};

pub use admission::{Admission, AdmissionLimits, Refusal, Slot};
pub use bitrate::{BitrateCap, BitrateWatch, OverCap};
pub use byte_size::ByteSize;

use super::ServerContext;

/// Defaults (documented with the flags in `settings`).
pub const DEFAULT_PER_IP_MAX_CONNECTIONS: usize = 1000;
pub const DEFAULT_PER_IP_ACCEPT_RATE: f64 = 50.0;
pub const DEFAULT_PER_IP_ACCEPT_BURST: u32 = 200;
pub const DEFAULT_PER_IP_EXEMPT: &str = "127.0.0.1,::1";
pub const DEFAULT_MAX_STREAMS: usize = 10_000;
pub const DEFAULT_MAX_PUBLISH_KBPS: u64 = 100_000;
pub const DEFAULT_PUBLISH_BITRATE_WINDOW: Duration = Duration::from_secs(10);
pub const DEFAULT_MEMORY_BUDGET: u64 = 1024 * 1024 * 1024;

/// The resolved limits a node runs with (besides `max_connections`,
/// which predates them and stays a top-level setting).
#[derive(Debug, Clone, PartialEq)]
pub struct LimitSettings {
    /// 0: none.
    pub per_ip_max_connections: usize,
    /// New connections a second per peer; 0: no rate limit.
    pub per_ip_accept_rate: f64,
    pub per_ip_accept_burst: u32,
    pub per_ip_exempt: Vec<IpAddr>,
    pub max_streams: usize,
    /// 0: no cap.
    pub max_publish_kbps: u64,
    pub publish_bitrate_window: Duration,
    pub memory_budget: u64,
}

impl Default for LimitSettings {
    fn default() -> Self {
        LimitSettings {
            per_ip_max_connections: DEFAULT_PER_IP_MAX_CONNECTIONS,
            per_ip_accept_rate: DEFAULT_PER_IP_ACCEPT_RATE,
            per_ip_accept_burst: DEFAULT_PER_IP_ACCEPT_BURST,
            per_ip_exempt: parse_exempt(DEFAULT_PER_IP_EXEMPT).unwrap_or_default(),
            max_streams: DEFAULT_MAX_STREAMS,
            max_publish_kbps: DEFAULT_MAX_PUBLISH_KBPS,
            publish_bitrate_window: DEFAULT_PUBLISH_BITRATE_WINDOW,
            memory_budget: DEFAULT_MEMORY_BUDGET,
        }
    }
}

impl LimitSettings {
    pub fn admission(&self, max_connections: usize) -> AdmissionLimits {
        AdmissionLimits {
            max_connections,
            per_ip_max_connections: self.per_ip_max_connections,
            per_ip_accept: (self.per_ip_accept_rate > 0.0).then(|| token_bucket::BucketShape {
                rate: self.per_ip_accept_rate,
                burst: f64::from(self.per_ip_accept_burst.max(1)),
            }),
            exempt: self.per_ip_exempt.clone(),
        }
    }

    pub fn bitrate_cap(&self) -> Option<BitrateCap> {
        (self.max_publish_kbps > 0).then_some(BitrateCap {
            max_kbps: self.max_publish_kbps,
            window: self.publish_bitrate_window,
        })
    }
}

/// `per_ip_exempt`: comma-separated addresses, or `none`.
pub fn parse_exempt(list: &str) -> Result<Vec<IpAddr>, String> {
    let list = list.trim();
    if list.is_empty() || list == "none" {
        return Ok(Vec::new());
    }
    list.split(',')
        .map(|item| {
            item.trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{:?} is not an IP address", item.trim()))
        })
        .collect()
}

/// A refused connection, before any protocol byte: counted, logged
/// (summarized), and for HTTP answered with one short response.
pub fn refuse_connection(
    listener: &'static str,
    stream: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    refusal: Refusal,
) {
    metrics::counter!("baton_connections_refused_total", "listener" => listener, "reason" => refusal.as_str())
        .increment(1);
    let reason = match refusal {
        Refusal::MaxConnections => "connections refused (max_connections)",
        Refusal::PerIpConnections => "connections refused (per_ip_max_connections)",
        Refusal::PerIpRate => "connections refused (per_ip_accept_rate)",
    };
    if warnings::note(reason, peer.ip()) {
        tracing::warn!(listener, %peer, reason = refusal.as_str(), "connection refused: {}", refusal.describe());
    }
    if listener == "http-flv" {
        let response: &[u8] = match refusal {
            Refusal::MaxConnections => {
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 26\r\nConnection: close\r\nRetry-After: 5\r\n\r\nserver at max_connections\n"
            }
            Refusal::PerIpConnections | Refusal::PerIpRate => {
                b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nContent-Length: 39\r\nConnection: close\r\nRetry-After: 5\r\n\r\ntoo many connections from your address\n"
            }
        };
        // A fresh socket's send buffer takes these bytes at once; nothing
        // waits on a peer that does not read. Whatever it sent already is
        // read away so the close is a FIN, not a reset that could discard
        // the answer.
        let _ = stream.try_write(response);
        let mut sink = [0u8; 2048];
        let _ = stream.try_read(&mut sink);
    }
    drop(stream);
}

/// `max_streams`: may a publish or play of `key` create a source? `Err`
/// with the description for the client when the node holds `max_streams`
/// sources already and `key` is not one of them (counted and logged).
/// Checked before the source is created; concurrent first publishes of
/// different streams may pass it together, so the bound may be exceeded
/// by the number of such races (never by a single client).
pub fn check_new_stream(ctx: &ServerContext, key: &StreamKey, peer: IpAddr) -> Result<(), String> {
    let max = ctx.settings.limits.max_streams;
    if ctx.hub.source(key).is_some() || ctx.hub.source_count() < max {
        return Ok(());
    }
    metrics::counter!("baton_streams_refused_total", "reason" => "max-streams").increment(1);
    if warnings::note("streams refused (max_streams)", peer) {
        tracing::warn!(stream = %key, %peer, max, "stream refused: max_streams reached");
    }
    Err(format!(
        "this server already serves {max} streams (max_streams); {key} refused"
    ))
}

/// An RTMP connection's input in the memory ledger: the bytes read and
/// not yet decoded plus the decoder's partial messages, also shown on
/// its registry entry so the governor can find the largest.
#[derive(Debug)]
pub struct InputCharge {
    charge: Charge,
}

impl Default for InputCharge {
    fn default() -> Self {
        InputCharge {
            charge: Charge::new(Pool::ConnectionInput),
        }
    }
}

impl InputCharge {
    pub fn amount(&self) -> usize {
        self.charge.amount()
    }

    pub fn update(&mut self, entry: &ClientEntry, bytes: usize) {
        if bytes != self.charge.amount() {
            self.charge.set(bytes);
            entry
                .input_buffered
                .store(bytes as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A connection holding at least this much input is not read from while
/// the process is over its memory budget (its peer is held back by TCP
/// until the governor has shed enough); smaller ones, every ordinary
/// publisher's, read on.
pub const BACKPRESSURE_FROM: usize = 1024 * 1024;

/// Waits while the process is over its memory budget, if the connection
/// holds `buffered` input bytes, at least [`BACKPRESSURE_FROM`].
pub async fn memory_backpressure(buffered: usize) {
    while buffered >= BACKPRESSURE_FROM && crate::memory::over_budget() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A publisher's bitrate cap fed from its connection's byte counter.
#[derive(Debug)]
pub struct PublishRate {
    watch: Option<BitrateWatch>,
    last_total: u64,
}

impl PublishRate {
    pub fn new(ctx: &ServerContext, bytes_in_now: u64) -> Self {
        PublishRate {
            watch: ctx
                .settings
                .limits
                .bitrate_cap()
                .map(|cap| BitrateWatch::new(cap, Instant::now())),
            last_total: bytes_in_now,
        }
    }

    /// The connection has received `bytes_in_total` bytes in all.
    pub fn check(&mut self, bytes_in_total: u64) -> Result<(), OverCap> {
        let Some(watch) = self.watch.as_mut() else {
            return Ok(());
        };
        let delta = bytes_in_total.saturating_sub(self.last_total);
        self.last_total = bytes_in_total;
        let result = watch.record(delta, Instant::now());
        if result.is_err() {
            metrics::counter!("baton_publishers_disconnected_total", "reason" => "max-publish-kbps")
                .increment(1);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_from_a_file_and_their_defaults() {
        use crate::serve::settings::{Settings, SettingsArgs};
        let defaults = Settings::resolve(&SettingsArgs::default()).unwrap();
        assert_eq!(defaults.limits, LimitSettings::default());
        assert_eq!(defaults.limits.memory_budget, 1024 * 1024 * 1024);

        let dir = std::env::temp_dir().join(format!("baton-limits-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("origin.toml");
        std::fs::write(
            &path,
            "memory_budget = \"512MiB\"\nper_ip_exempt = \"none\"\nmax_publish_kbps = 0\n\
             per_ip_accept_rate = 5.5\nmax_streams = 3\n",
        )
        .unwrap();
        let args = SettingsArgs {
            config: Some(path.clone()),
            per_ip_max_connections: Some(7),
            ..SettingsArgs::default()
        };
        let limits = Settings::resolve(&args).unwrap().limits;
        assert_eq!(limits.memory_budget, 512 * 1024 * 1024);
        assert!(limits.per_ip_exempt.is_empty());
        assert_eq!(limits.bitrate_cap(), None);
        assert_eq!(limits.per_ip_accept_rate, 5.5);
        assert_eq!(limits.max_streams, 3);
        assert_eq!(limits.per_ip_max_connections, 7);

        std::fs::write(&path, "memory_budget = \"1MiB\"\n").unwrap();
        let err = Settings::resolve(&args).unwrap_err().to_string();
        assert!(err.contains("memory_budget"), "{err}");
        std::fs::write(&path, "per_ip_exempt = \"10.0.0.1,localhost\"\n").unwrap();
        let err = Settings::resolve(&args).unwrap_err().to_string();
        assert!(
            err.contains("per_ip_exempt") && err.contains("localhost"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn exempt_lists() {
        assert_eq!(
            parse_exempt(DEFAULT_PER_IP_EXEMPT).unwrap(),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(parse_exempt("none").unwrap().is_empty());
        assert!(parse_exempt("").unwrap().is_empty());
        assert!(parse_exempt("10.0.0.1, nope").is_err());
    }
}
