//! The settings every node shares: every knob in one place, with its default, its
//! TOML key, its `BATON_*` environment variable and its flag.
//!
//! Precedence: flag > environment > config file > built-in default. The
//! defaults run a working node with no file at all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::api_auth::{require_token_off_loopback, ApiToken};
use super::tls::TlsSettings;
use crate::config::{load_toml, overlay, ConfigError, HumanDuration};
use crate::hub::timestamps::TimestampPolicy;
use crate::hub::HubConfig;
use crate::serve::auth::{self, AuthSettings};
use crate::serve::limits::{self, ByteSize, LimitSettings};
use clap::Args;
use serde::{Deserialize, Serialize};

/// Every shared setting, declared once: as a flag (also readable from its
/// `BATON_*` variable) and as a TOML key of the same name. All optional:
/// what a flag does not give falls back to the file, then to the default
/// in [`Settings::resolve`]. Unknown keys in the file are errors.
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SettingsArgs {
    /// TOML config file; keys are the long flag names with '_' for '-'.
    #[arg(long, env = "BATON_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Role-specific settings of the file (the edge's `[edge]` table);
    /// the role's own settings type reads them.
    #[arg(skip)]
    #[serde(skip_serializing)]
    pub edge: Option<toml::Table>,
    /// RTMP listen address (publish and play). [default: 0.0.0.0:1935]
    #[arg(long, env = "BATON_RTMP")]
    pub rtmp: Option<SocketAddr>,
    /// HTTP-FLV listen address (GET /{app}/{stream}.flv). [default: 0.0.0.0:8080]
    #[arg(long, env = "BATON_HTTP")]
    pub http: Option<SocketAddr>,
    /// HTTP API, health and metrics listen address. [default: 127.0.0.1:1985]
    #[arg(long, env = "BATON_API")]
    pub api: Option<SocketAddr>,
    /// RTMPS listen address (RTMP over TLS, publish and play); needs --tls-cert and --tls-key. [default: none]
    #[arg(long, env = "BATON_RTMPS")]
    pub rtmps: Option<SocketAddr>,
    /// HTTPS-FLV listen address (HTTP-FLV and the viewer page over TLS); needs --tls-cert and --tls-key. [default: none]
    #[arg(long, env = "BATON_HTTPS")]
    pub https: Option<SocketAddr>,
    /// PEM certificate chain (leaf first) for --rtmps/--https; reloaded on SIGHUP and when it changes. [default: none]
    #[arg(long, env = "BATON_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1). [default: none]
    #[arg(long, env = "BATON_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// How often the certificate and key files are checked for changes. [default: 2s]
    #[arg(long, env = "BATON_TLS_WATCH_INTERVAL")]
    pub tls_watch_interval: Option<HumanDuration>,
    /// PID file naming the serving generation (written atomically). [default: none]
    #[arg(long, env = "BATON_PID_FILE")]
    pub pid_file: Option<PathBuf>,
    /// Directory for the control socket used by upgrades. [default: system temp dir]
    #[arg(long, env = "BATON_CONTROL_DIR")]
    pub control_dir: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax, e.g. "info,baton_origin=debug"). [default: info]
    #[arg(long, env = "BATON_LOG")]
    pub log: Option<String>,

    /// SIGQUIT: keep accepting this long after readiness turns off. [default: 2300ms]
    #[arg(long, env = "BATON_GRACE_START_WAIT")]
    pub grace_start_wait: Option<HumanDuration>,
    /// SIGQUIT: wait this long after the last client left before exiting. [default: 3200ms]
    #[arg(long, env = "BATON_GRACE_FINAL_WAIT")]
    pub grace_final_wait: Option<HumanDuration>,
    /// Treat SIGTERM as SIGQUIT (graceful), for Kubernetes rolling updates. [default: false]
    #[arg(long, env = "BATON_FORCE_GRACE_QUIT", num_args = 0..=1, default_missing_value = "true")]
    pub force_grace_quit: Option<bool>,
    /// Graceful drain deadline: disconnect remaining clients then (e.g. 12h). [default: none]
    #[arg(long, env = "BATON_DRAIN_TIMEOUT")]
    pub drain_timeout: Option<HumanDuration>,
    /// After an upgrade hand-over, the old generation disconnects what is left after this. [default: 12h]
    #[arg(long, env = "BATON_UPGRADE_DRAIN_MAX")]
    pub upgrade_drain_max: Option<HumanDuration>,
    /// Bind listeners with SO_REUSEPORT and upgrade by re-binding instead of
    /// handing the sockets over (fallback; may reset queued connections). [default: false]
    #[arg(long, env = "BATON_REUSEPORT", num_args = 0..=1, default_missing_value = "true")]
    pub reuseport: Option<bool>,

    /// Free a source this long after its last publisher and player left. [default: 3s]
    #[arg(long, env = "BATON_SOURCE_IDLE_TIMEOUT")]
    pub source_idle_timeout: Option<HumanDuration>,
    /// How long a player may wait for a stream that is not published. [default: 10s
    /// for RTMP; HTTP-FLV answers 404 at once unless this is set]
    #[arg(long, env = "BATON_PLAY_WAIT_TIMEOUT")]
    pub play_wait_timeout: Option<HumanDuration>,
    /// Cache the last GOP so players start on a keyframe at once. [default: true]
    #[arg(long, env = "BATON_GOP_CACHE", num_args = 0..=1, default_missing_value = "true")]
    pub gop_cache: Option<bool>,
    /// A player further behind than this many frames skips to a keyframe. [default: 1024]
    #[arg(long, env = "BATON_MAX_QUEUE_FRAMES")]
    pub max_queue_frames: Option<usize>,
    /// ... or than this many payload bytes. [default: 16777216]
    #[arg(long, env = "BATON_MAX_QUEUE_BYTES")]
    pub max_queue_bytes: Option<usize>,
    /// Skips within a minute after which a slow player is disconnected. [default: 8]
    #[arg(long, env = "BATON_MAX_PLAYER_SKIPS")]
    pub max_player_skips: Option<usize>,
    /// Write latency budget: a player's socket is written once the oldest frame not yet written to it is this old, or sooner once 64 KiB are pending (0 = write each frame at once). Each write, with TCP_NODELAY a TCP segment, costs the same whatever its size, so this trades a little latency for far fewer of them; relays (edge pulls/forwards) never wait. [default: 80ms]
    #[arg(long, env = "BATON_WRITE_COALESCE")]
    pub write_coalesce: Option<HumanDuration>,
    /// When a stream's publisher leaves and another comes: "splice" keeps
    /// players connected on one continuous timeline (what browser players
    /// need); "end" ends their play so they reconnect. [default: splice]
    #[arg(long, env = "BATON_REPUBLISH", value_enum)]
    pub republish: Option<Republish>,
    /// The mpegts.js script the viewer page at `GET /` loads (serve your own
    /// copy where viewers cannot reach the CDN). [default: jsDelivr, mpegts.js 1.8]
    #[arg(long, env = "BATON_PLAYER_JS_URL")]
    pub player_js_url: Option<String>,
    /// Most concurrent client connections; more are refused and logged. [default: 18000]
    #[arg(long, env = "BATON_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// A connection that has not finished the RTMP handshake and connect by then is closed. [default: 10s]
    #[arg(long, env = "BATON_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<HumanDuration>,
    /// A publisher that sends nothing for this long is disconnected. [default: 20s]
    #[arg(long, env = "BATON_PUBLISH_IDLE_TIMEOUT")]
    pub publish_idle_timeout: Option<HumanDuration>,
    /// A player whose socket accepts no data for this long is disconnected. [default: 20s]
    #[arg(long, env = "BATON_PLAYER_WRITE_TIMEOUT")]
    pub player_write_timeout: Option<HumanDuration>,

    /// Shared secret of signed URLs (?token=...&expires=..., see README
    /// "Authorization"); at least 16 bytes. Prefer the environment variable
    /// or the file to the flag (flags show in ps). [default: none]
    #[arg(long, env = "BATON_AUTH_TOKEN_SECRET", hide_env_values = true)]
    pub auth_token_secret: Option<auth::Secret>,
    /// With a secret set: which requests need a signed token (publish, play, all). [default: publish]
    #[arg(long, env = "BATON_AUTH_TOKEN_REQUIRED", value_enum)]
    pub auth_token_required: Option<auth::TokenScope>,
    /// SRS-style callback URL(s) asked before a publish (http://, comma-separated; all must answer 0). [default: none]
    #[arg(long, env = "BATON_ON_PUBLISH", value_delimiter = ',')]
    pub on_publish: Option<Vec<auth::hook_client::HookUrl>>,
    /// Callback URL(s) told when a publish ends (answer ignored). [default: none]
    #[arg(long, env = "BATON_ON_UNPUBLISH", value_delimiter = ',')]
    pub on_unpublish: Option<Vec<auth::hook_client::HookUrl>>,
    /// Callback URL(s) asked before a play, RTMP or HTTP-FLV (all must answer 0). [default: none]
    #[arg(long, env = "BATON_ON_PLAY", value_delimiter = ',')]
    pub on_play: Option<Vec<auth::hook_client::HookUrl>>,
    /// Callback URL(s) told when a play ends (answer ignored). [default: none]
    #[arg(long, env = "BATON_ON_STOP", value_delimiter = ',')]
    pub on_stop: Option<Vec<auth::hook_client::HookUrl>>,
    /// How long each callback may take to answer. [default: 3s]
    #[arg(long, env = "BATON_HOOK_TIMEOUT")]
    pub hook_timeout: Option<HumanDuration>,
    /// A callback that fails (timeout, connection error, non-200): reject or allow the request. [default: reject]
    #[arg(long, env = "BATON_HOOK_FAILURE", value_enum)]
    pub hook_failure: Option<auth::HookFailure>,
    /// Publisher timestamps: "correct" fixes a track that goes backwards, stands
    /// still or leaps ahead (continuing from its last time plus its frame
    /// interval; well-behaved streams pass untouched); "off" passes them as
    /// sent (SRS time_jitter off). [default: correct]
    #[arg(long, env = "BATON_TIMESTAMP_CORRECTION", value_enum)]
    pub timestamp_correction: Option<TimestampPolicy>,
    /// Bearer token of the HTTP API: needed for writes (DELETE), and for every
    /// /api request when --api is not a loopback address (which refuses to
    /// start without one). At least 16 characters. [default: none: writes disabled]
    #[arg(long, env = "BATON_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// File whose first line is the API token (instead of --api-token). [default: none]
    #[arg(long, env = "BATON_API_TOKEN_FILE")]
    pub api_token_file: Option<PathBuf>,
    // Limits (see `serve::limits`).
    /// Most concurrent client connections from one IPv4 address or IPv6 /64 (0 = no limit). [default: 1000]
    #[arg(long, env = "BATON_PER_IP_MAX_CONNECTIONS")]
    pub per_ip_max_connections: Option<usize>,
    /// New client connections per second one address may open (token bucket; 0 = no limit). [default: 50]
    #[arg(long, env = "BATON_PER_IP_ACCEPT_RATE")]
    pub per_ip_accept_rate: Option<f64>,
    /// ... of which this many at once (the bucket size). [default: 200]
    #[arg(long, env = "BATON_PER_IP_ACCEPT_BURST")]
    pub per_ip_accept_burst: Option<u32>,
    /// Addresses the per-IP limits do not apply to, comma-separated, or "none" (a local proxy or health checker speaks for many clients; they still count against max_connections). [default: 127.0.0.1,::1]
    #[arg(long, env = "BATON_PER_IP_EXEMPT")]
    pub per_ip_exempt: Option<String>,
    /// Most streams (sources) a node holds; a publish or play that would create one more is refused. [default: 10000]
    #[arg(long, env = "BATON_MAX_STREAMS")]
    pub max_streams: Option<usize>,
    /// A publisher above this rate (kbit/s) averaged over publish_bitrate_window is disconnected (0 = no cap). [default: 100000]
    #[arg(long, env = "BATON_MAX_PUBLISH_KBPS")]
    pub max_publish_kbps: Option<u64>,
    /// The window max_publish_kbps is averaged over. [default: 10s]
    #[arg(long, env = "BATON_PUBLISH_BITRATE_WINDOW")]
    pub publish_bitrate_window: Option<HumanDuration>,
    /// Memory for GOP caches, player backlogs and RTMP input buffers together (e.g. 512MiB); over it the largest consumers are shed. [default: 1GiB]
    #[arg(long, env = "BATON_MEMORY_BUDGET")]
    pub memory_budget: Option<ByteSize>,
}

/// What players see when their stream's publisher is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Republish {
    /// Stay connected; the next publisher's frames continue the timeline.
    Splice,
    /// End the play (RTMP unpublish status and close; end of the FLV body).
    End,
}

/// The resolved settings a node runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub rtmp: SocketAddr,
    pub http: SocketAddr,
    pub api: SocketAddr,
    /// RTMPS/HTTPS listeners and their certificate.
    pub tls: TlsSettings,
    pub pid_file: Option<PathBuf>,
    pub control_dir: PathBuf,
    pub log: String,
    pub grace_start_wait: Duration,
    pub grace_final_wait: Duration,
    pub force_grace_quit: bool,
    pub drain_timeout: Option<Duration>,
    pub upgrade_drain_max: Duration,
    pub reuseport: bool,
    pub play_wait_timeout: Duration,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    pub publish_idle_timeout: Duration,
    pub player_write_timeout: Duration,
    pub republish: Republish,
    pub player_js_url: String,
    pub hub: HubConfig,
    /// Signed URLs and callbacks (see `serve::auth`).
    pub auth: AuthSettings,
    /// How long an HTTP-FLV player waits for an unpublished stream:
    /// `play_wait_timeout` when set, else 0 (404 at once, no source made).
    pub http_flv_play_wait: Duration,
    pub timestamp_correction: TimestampPolicy,
    pub api_token: Option<ApiToken>,
    pub limits: LimitSettings,
}

/// Where the viewer page loads mpegts.js from unless `player_js_url` says.
pub const DEFAULT_PLAYER_JS_URL: &str = "https://cdn.jsdelivr.net/npm/mpegts.js@1.8/dist/mpegts.js";

fn pick<T>(given: Option<T>, default: T) -> T {
    given.unwrap_or(default)
}

fn dur(given: Option<HumanDuration>, default: Duration) -> Duration {
    given.map_or(default, HumanDuration::get)
}

impl SettingsArgs {
    /// These flags over the file named by `--config` (if any).
    pub fn with_file(&self) -> Result<SettingsArgs, ConfigError> {
        let Some(path) = &self.config else {
            return Ok(self.clone());
        };
        let file: SettingsArgs = load_toml(path)?;
        let mut merged = overlay(self, &file)?;
        merged.config = self.config.clone();
        merged.edge = file.edge;
        Ok(merged)
    }
}

impl Settings {
    pub fn resolve(args: &SettingsArgs) -> Result<Settings, ConfigError> {
        let a = args.with_file()?;
        let hub_defaults = HubConfig::default();
        let limits = resolve_limits(&a)?;
        let settings = Settings {
            rtmp: pick(a.rtmp, SocketAddr::from(([0, 0, 0, 0], 1935))),
            http: pick(a.http, SocketAddr::from(([0, 0, 0, 0], 8080))),
            api: pick(a.api, SocketAddr::from(([127, 0, 0, 1], 1985))),
            tls: TlsSettings {
                rtmps: a.rtmps,
                https: a.https,
                cert: a.tls_cert,
                key: a.tls_key,
                watch_interval: dur(a.tls_watch_interval, Duration::from_secs(2)),
            },
            pid_file: a.pid_file,
            control_dir: pick(a.control_dir, std::env::temp_dir()),
            log: pick(a.log, "info".to_string()),
            grace_start_wait: dur(a.grace_start_wait, Duration::from_millis(2300)),
            grace_final_wait: dur(a.grace_final_wait, Duration::from_millis(3200)),
            force_grace_quit: pick(a.force_grace_quit, false),
            drain_timeout: a.drain_timeout.map(HumanDuration::get),
            upgrade_drain_max: dur(a.upgrade_drain_max, Duration::from_millis(12 * 3600 * 1000)),
            reuseport: pick(a.reuseport, false),
            play_wait_timeout: dur(a.play_wait_timeout, Duration::from_millis(10_000)),
            max_connections: pick(a.max_connections, 18_000),
            handshake_timeout: dur(a.handshake_timeout, Duration::from_millis(10_000)),
            publish_idle_timeout: dur(a.publish_idle_timeout, Duration::from_millis(20_000)),
            player_write_timeout: dur(a.player_write_timeout, Duration::from_millis(20_000)),
            republish: pick(a.republish, Republish::Splice),
            player_js_url: pick(a.player_js_url, DEFAULT_PLAYER_JS_URL.to_string()),
            hub: HubConfig {
                gop_cache: pick(a.gop_cache, hub_defaults.gop_cache),
                max_queue_frames: pick(a.max_queue_frames, hub_defaults.max_queue_frames),
                max_queue_bytes: pick(a.max_queue_bytes, hub_defaults.max_queue_bytes),
                max_player_skips: pick(a.max_player_skips, hub_defaults.max_player_skips),
                source_idle_timeout: dur(a.source_idle_timeout, hub_defaults.source_idle_timeout),
                write_coalesce: dur(a.write_coalesce, hub_defaults.write_coalesce),
                ..hub_defaults
            },
            auth: AuthSettings::resolve(
                a.auth_token_secret,
                a.auth_token_required,
                a.on_publish,
                a.on_unpublish,
                a.on_play,
                a.on_stop,
                a.hook_timeout,
                a.hook_failure,
            )?,
            http_flv_play_wait: dur(a.play_wait_timeout, Duration::ZERO),
            timestamp_correction: a.timestamp_correction.unwrap_or_default(),
            api_token: match (&a.api_token, &a.api_token_file) {
                (Some(token), _) => Some(ApiToken::new(token)?),
                (None, Some(path)) => Some(ApiToken::from_file(path)?),
                (None, None) => None,
            },
            limits,
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        validate_limits(&self.limits)?;
        let bad = |name: &'static str, reason: &str| ConfigError::Setting {
            name,
            reason: reason.to_string(),
        };
        if self.max_connections == 0 {
            return Err(bad("max_connections", "must be at least 1"));
        }
        if self.hub.max_queue_frames < 16 {
            return Err(bad("max_queue_frames", "must be at least 16"));
        }
        if self.hub.max_queue_bytes < 64 * 1024 {
            return Err(bad("max_queue_bytes", "must be at least 65536"));
        }
        if self.hub.write_coalesce > Duration::from_millis(500) {
            return Err(bad(
                "write_coalesce",
                "must be at most 500ms (players would stall)",
            ));
        }
        if self.handshake_timeout.is_zero()
            || self.publish_idle_timeout.is_zero()
            || self.player_write_timeout.is_zero()
        {
            return Err(bad(
                "timeouts",
                "handshake, publish idle and player write timeouts must be non-zero",
            ));
        }
        require_token_off_loopback(self.api, self.api_token.as_ref())?;
        if let Some(problem) = self.tls.problem() {
            return Err(bad("tls", problem));
        }
        let tls_addrs = [("rtmps", self.tls.rtmps), ("https", self.tls.https)];
        let tls_addrs = tls_addrs.iter().filter_map(|(n, a)| Some((*n, (*a)?)));
        for (name, addr) in [("rtmp", self.rtmp), ("http", self.http), ("api", self.api)]
            .into_iter()
            .chain(tls_addrs)
        {
            if addr.port() == 0 {
                return Err(ConfigError::Setting {
                    name: "listen address",
                    reason: format!("{name} needs an explicit port, not {addr}"),
                });
            }
        }
        Ok(())
    }
}

fn resolve_limits(a: &SettingsArgs) -> Result<LimitSettings, ConfigError> {
    let d = LimitSettings::default();
    let exempt = match &a.per_ip_exempt {
        Some(list) => limits::parse_exempt(list).map_err(|reason| ConfigError::Setting {
            name: "per_ip_exempt",
            reason,
        })?,
        None => d.per_ip_exempt,
    };
    Ok(LimitSettings {
        per_ip_max_connections: pick(a.per_ip_max_connections, d.per_ip_max_connections),
        per_ip_accept_rate: pick(a.per_ip_accept_rate, d.per_ip_accept_rate),
        per_ip_accept_burst: pick(a.per_ip_accept_burst, d.per_ip_accept_burst),
        per_ip_exempt: exempt,
        max_streams: pick(a.max_streams, d.max_streams),
        max_publish_kbps: pick(a.max_publish_kbps, d.max_publish_kbps),
        publish_bitrate_window: dur(a.publish_bitrate_window, d.publish_bitrate_window),
        memory_budget: a.memory_budget.map_or(d.memory_budget, |b| b.0),
    })
}

fn validate_limits(l: &LimitSettings) -> Result<(), ConfigError> {
    let bad = |name: &'static str, reason: &str| ConfigError::Setting {
        name,
        reason: reason.to_string(),
    };
    if !(l.per_ip_accept_rate.is_finite() && l.per_ip_accept_rate >= 0.0) {
        return Err(bad("per_ip_accept_rate", "must be a rate >= 0"));
    }
    if l.max_streams == 0 {
        return Err(bad("max_streams", "must be at least 1"));
    }
    if l.publish_bitrate_window < Duration::from_secs(1) {
        return Err(bad("publish_bitrate_window", "must be at least 1s"));
    }
    if l.memory_budget < 16 * 1024 * 1024 {
        return Err(bad("memory_budget", "must be at least 16MiB"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn defaults_need_no_file() {
        let s = Settings::resolve(&SettingsArgs::default()).unwrap();
        assert_eq!(s.rtmp.port(), 1935);
        assert_eq!(s.http.port(), 8080);
        assert_eq!(s.api.to_string(), "127.0.0.1:1985");
        assert_eq!(s.grace_start_wait, Duration::from_millis(2300));
        assert_eq!(s.grace_final_wait, Duration::from_millis(3200));
        assert!(!s.force_grace_quit);
        assert_eq!(s.drain_timeout, None);
        assert_eq!(s.player_js_url, DEFAULT_PLAYER_JS_URL);
    }

    #[test]
    fn flags_override_the_file_and_bad_files_name_the_line() {
        let dir = std::env::temp_dir().join(format!("baton-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("origin.toml");
        let mut f = std::fs::File::create(&path).unwrap();
        writeln!(
            f,
            "rtmp = \"127.0.0.1:2000\"\nhttp = \"127.0.0.1:2001\"\ndrain_timeout = \"12h\""
        )
        .unwrap();
        let args = SettingsArgs {
            config: Some(path.clone()),
            http: Some("127.0.0.1:3001".parse().unwrap()),
            ..SettingsArgs::default()
        };
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.rtmp.port(), 2000);
        assert_eq!(s.http.port(), 3001);
        assert_eq!(s.drain_timeout, Some(Duration::from_secs(12 * 3600)));

        std::fs::write(
            &path,
            "rtmp = \"127.0.0.1:2000\"\ngrace_strat_wait = \"1s\"\n",
        )
        .unwrap();
        let err = Settings::resolve(&args).unwrap_err().to_string();
        assert!(
            err.contains("line 2") && err.contains("grace_strat_wait"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
