//! The edge's own settings, beside the shared ones (`baton_common::serve::
//! settings`): where the origins are and how failover behaves. Declared
//! once, as flags and as keys of the config file's `[edge]` table.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use baton_common::config::{overlay, ConfigError, HumanDuration};
use baton_common::serve::api_auth::ApiToken;
use clap::Args;
use serde::{Deserialize, Serialize};

/// One origin as given on the command line: its RTMP address, and
/// optionally its API address (for `/readyz` health and stream lookup) and
/// TLS (RTMPS to that address, the certificate checked for a name):
/// `HOST:PORT[,api=HOST:PORT][,tls][,tls-name=NAME]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OriginAddr {
    pub rtmp: SocketAddr,
    pub api: Option<SocketAddr>,
    /// RTMPS to this origin, and the name its certificate must carry if
    /// given (`tls-name=`, or the HOST written); else `--origin-tls-name`
    /// or the IP address.
    pub tls: Option<TlsName>,
}

/// The name an origin's certificate is checked against; `None` inside: no
/// name given with the origin. Interned, so an origin stays `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TlsName(pub Option<&'static str>);

/// Names come from the configuration only (a few), so each is kept once
/// for the life of the process.
pub fn intern(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<std::collections::BTreeSet<&'static str>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let kept: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(kept);
    kept
}

impl FromStr for OriginAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split(',');
        let first = parts.next().unwrap_or_default().trim();
        let rtmp = parse_addr(first)?;
        let host = first
            .rsplit_once(':')
            .map(|(host, _)| host)
            .filter(|host| host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('['));
        let mut api = None;
        let mut tls = None;
        for part in parts {
            match part.trim().split_once('=') {
                Some(("api", addr)) => api = Some(parse_addr(addr)?),
                Some(("tls-name", name)) if !name.is_empty() => {
                    tls = Some(TlsName(Some(intern(name))))
                }
                None if part.trim() == "tls" => {
                    tls = tls.or(Some(TlsName(host.map(intern))));
                }
                _ => {
                    return Err(format!(
                    "unknown origin option {part:?} (expected api=HOST:PORT, tls or tls-name=NAME)"
                ))
                }
            }
        }
        Ok(OriginAddr { rtmp, api, tls })
    }
}

impl TryFrom<String> for OriginAddr {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<OriginAddr> for String {
    fn from(origin: OriginAddr) -> String {
        let mut text = origin.rtmp.to_string();
        if let Some(api) = origin.api {
            text.push_str(&format!(",api={api}"));
        }
        match origin.tls {
            Some(TlsName(Some(name))) => text.push_str(&format!(",tls-name={name}")),
            Some(TlsName(None)) => text.push_str(",tls"),
            None => {}
        }
        text
    }
}

fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let text = text.trim();
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    text.to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| format!("{text:?} is not HOST:PORT"))
}

/// `NAME:PORT[,api-port=N][,tls]`: every A/AAAA record of NAME is an
/// origin with its RTMP (RTMPS with `tls`, the certificate checked for
/// NAME unless `--origin-tls-name` says) listener on PORT (and its API on N).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OriginDns {
    pub name: String,
    pub rtmp_port: u16,
    pub api_port: Option<u16>,
    pub tls: bool,
}

impl FromStr for OriginDns {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut parts = text.split(',');
        let first = parts.next().unwrap_or_default();
        let (name, port) = first
            .rsplit_once(':')
            .ok_or_else(|| format!("{first:?} is not NAME:PORT"))?;
        let rtmp_port = port.parse().map_err(|_| format!("bad port in {first:?}"))?;
        let mut api_port = None;
        let mut tls = false;
        for part in parts {
            match part.split_once('=') {
                Some(("api-port", port)) => {
                    api_port = Some(port.parse().map_err(|_| format!("bad api-port {port:?}"))?)
                }
                None if part == "tls" => tls = true,
                _ => {
                    return Err(format!(
                        "unknown option {part:?} (expected api-port=N or tls)"
                    ))
                }
            }
        }
        if name.is_empty() {
            return Err("empty DNS name".into());
        }
        Ok(OriginDns {
            name: name.to_owned(),
            rtmp_port,
            api_port,
            tls,
        })
    }
}

impl TryFrom<String> for OriginDns {
    type Error = String;
    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<OriginDns> for String {
    fn from(dns: OriginDns) -> String {
        let mut text = format!("{}:{}", dns.name, dns.rtmp_port);
        if let Some(port) = dns.api_port {
            text.push_str(&format!(",api-port={port}"));
        }
        if dns.tls {
            text.push_str(",tls");
        }
        text
    }
}

/// The edge's settings as flags and `[edge]` keys (all optional).
#[derive(Debug, Clone, Default, Args, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeArgs {
    /// An origin: its RTMP HOST:PORT, optionally with its API
    /// (HOST:PORT,api=HOST:PORT), and `,tls` for RTMPS (`,tls-name=NAME`: the
    /// name its certificate must carry). Repeat for each origin.
    #[arg(long = "origin", env = "BATON_ORIGINS", value_delimiter = ' ')]
    #[serde(rename = "origins", skip_serializing_if = "Vec::is_empty")]
    pub origins: Vec<OriginAddr>,
    /// Origins from DNS: NAME:PORT[,api-port=N][,tls]; every A/AAAA record is one,
    /// re-resolved at the TTL and after failures (a Kubernetes headless Service).
    #[arg(long, env = "BATON_ORIGIN_DNS")]
    pub origin_dns: Option<OriginDns>,
    /// Nameserver (IP:PORT) for --origin-dns instead of the system's. [default: system]
    #[arg(long, env = "BATON_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
    /// An upstream that sends nothing (pinged when quiet) for this long has failed. [default: 1s]
    #[arg(long, env = "BATON_UPSTREAM_STALL_TIMEOUT")]
    pub upstream_stall_timeout: Option<HumanDuration>,
    /// With no origin serving a stream, players are held this long, then the stream ends. [default: 30s]
    #[arg(long, env = "BATON_UPSTREAM_OUTAGE_MAX")]
    pub upstream_outage_max: Option<HumanDuration>,
    /// A pull ends this long after its last player left. [default: 5s]
    #[arg(long, env = "BATON_PULL_LINGER")]
    pub pull_linger: Option<HumanDuration>,
    /// On a failover the publisher's frames are sent again from the keyframe
    /// at or before this far back (what the lost origin may not have passed on). [default: 3s]
    #[arg(long, env = "BATON_PUBLISH_BUFFER")]
    pub publish_buffer: Option<HumanDuration>,
    /// How often each origin's /readyz is probed. [default: 1s]
    #[arg(long, env = "BATON_HEALTH_INTERVAL")]
    pub health_interval: Option<HumanDuration>,
    /// PEM file of the CA certificates that TLS origins (`,tls`) must chain to. [default: the system's roots]
    #[arg(long, env = "BATON_ORIGIN_CA")]
    pub origin_ca: Option<PathBuf>,
    /// The name TLS origins' certificates must carry when an origin names none
    /// (`tls-name=`, or a HOST rather than an IP). [default: the origin's host or IP]
    #[arg(long, env = "BATON_ORIGIN_TLS_NAME")]
    pub origin_tls_name: Option<String>,
    /// Bearer token sent to the origins' APIs (stream lookup, /readyz), for
    /// origins whose API needs one. [default: this edge's own --api-token]
    #[arg(long, env = "BATON_ORIGIN_API_TOKEN", hide_env_values = true)]
    pub origin_api_token: Option<String>,
    /// File whose first line is the origins' API token. [default: none]
    #[arg(long, env = "BATON_ORIGIN_API_TOKEN_FILE")]
    pub origin_api_token_file: Option<std::path::PathBuf>,
}

/// The resolved edge settings.
#[derive(Debug, Clone)]
pub struct EdgeSettings {
    pub origins: Vec<OriginAddr>,
    pub origin_dns: Option<OriginDns>,
    pub dns_server: Option<SocketAddr>,
    pub upstream_stall_timeout: Duration,
    pub upstream_outage_max: Duration,
    pub pull_linger: Duration,
    pub publish_buffer: Duration,
    pub health_interval: Duration,
    pub origin_ca: Option<PathBuf>,
    pub origin_tls_name: Option<String>,
    /// Sent to the origins' APIs; `None` until [`EdgeSettings::resolve`]'s
    /// caller falls back to the node's own token.
    pub origin_api_token: Option<ApiToken>,
}

impl EdgeSettings {
    /// Flags over the `[edge]` table of the config file over defaults.
    pub fn resolve(args: &EdgeArgs, file: Option<&toml::Table>) -> Result<Self, ConfigError> {
        let merged = match file {
            Some(table) => {
                let from_file: EdgeArgs =
                    table.clone().try_into().map_err(|e: toml::de::Error| {
                        ConfigError::Setting {
                            name: "[edge]",
                            reason: e.message().to_string(),
                        }
                    })?;
                overlay(args, &from_file)?
            }
            None => args.clone(),
        };
        let dur = |given: Option<HumanDuration>, default: Duration| {
            given.map_or(default, HumanDuration::get)
        };
        let settings = EdgeSettings {
            origins: merged.origins,
            origin_dns: merged.origin_dns,
            dns_server: merged.dns_server,
            upstream_stall_timeout: dur(merged.upstream_stall_timeout, Duration::from_secs(1)),
            upstream_outage_max: dur(merged.upstream_outage_max, Duration::from_secs(30)),
            pull_linger: dur(merged.pull_linger, Duration::from_secs(5)),
            publish_buffer: dur(merged.publish_buffer, Duration::from_secs(3)),
            health_interval: dur(merged.health_interval, Duration::from_secs(1)),
            origin_ca: merged.origin_ca,
            origin_tls_name: merged.origin_tls_name,
            origin_api_token: match (&merged.origin_api_token, &merged.origin_api_token_file) {
                (Some(token), _) => Some(ApiToken::new(token)?),
                (None, Some(path)) => Some(ApiToken::from_file(path)?),
                (None, None) => None,
            },
        };
        if settings.origins.is_empty() && settings.origin_dns.is_none() {
            return Err(ConfigError::Setting {
                name: "origin",
                reason: "an edge needs origins: --origin HOST:PORT[,api=HOST:PORT] (repeatable) \
                         or --origin-dns NAME:PORT"
                    .into(),
            });
        }
        if settings.upstream_stall_timeout < Duration::from_millis(100) {
            return Err(ConfigError::Setting {
                name: "upstream_stall_timeout",
                reason: "must be at least 100ms".into(),
            });
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_syntax() {
        let plain: OriginAddr = "127.0.0.1:1935".parse().unwrap();
        assert_eq!(plain.rtmp.port(), 1935);
        assert_eq!(plain.api, None);
        let with_api: OriginAddr = "127.0.0.1:1935,api=127.0.0.1:1985".parse().unwrap();
        assert_eq!(with_api.api.map(|a| a.port()), Some(1985));
        assert_eq!(String::from(with_api), "127.0.0.1:1935,api=127.0.0.1:1985");
        assert!("127.0.0.1:1935,web=1".parse::<OriginAddr>().is_err());
        assert!("nowhere".parse::<OriginAddr>().is_err());
        let dns: OriginDns = "origins.svc:1935,api-port=1985".parse().unwrap();
        assert_eq!(
            (dns.rtmp_port, dns.api_port, dns.tls),
            (1935, Some(1985), false)
        );
        let dns: OriginDns = "origins.svc:1936,tls".parse().unwrap();
        assert!(dns.tls);
        assert_eq!(String::from(dns), "origins.svc:1936,tls");
    }

    #[test]
    fn tls_origin_syntax() {
        let by_ip: OriginAddr = "127.0.0.1:1936,tls".parse().unwrap();
        assert_eq!(by_ip.tls, Some(TlsName(None)));
        assert_eq!(String::from(by_ip), "127.0.0.1:1936,tls");
        let by_host: OriginAddr = "localhost:1936,api=127.0.0.1:1985,tls".parse().unwrap();
        assert_eq!(by_host.tls, Some(TlsName(Some("localhost"))));
        let named: OriginAddr = "127.0.0.1:1936,tls,tls-name=origin.test".parse().unwrap();
        assert_eq!(named.tls, Some(TlsName(Some("origin.test"))));
        let round: OriginAddr = String::from(named).parse().unwrap();
        assert_eq!(round, named);
        assert_eq!("127.0.0.1:1935".parse::<OriginAddr>().unwrap().tls, None);
        assert!("127.0.0.1:1936,tls-name=".parse::<OriginAddr>().is_err());
    }

    #[test]
    fn an_edge_without_origins_is_refused() {
        let err = EdgeSettings::resolve(&EdgeArgs::default(), None).unwrap_err();
        assert!(err.to_string().contains("--origin"), "{err}");
    }

    #[test]
    fn file_table_and_flags_merge() {
        let table: toml::Table =
            toml::from_str("origins = [\"127.0.0.1:2000\"]\nupstream_outage_max = \"10s\"\n")
                .unwrap();
        let args = EdgeArgs {
            upstream_outage_max: Some("2s".parse().unwrap()),
            ..EdgeArgs::default()
        };
        let s = EdgeSettings::resolve(&args, Some(&table)).unwrap();
        assert_eq!(s.origins.len(), 1);
        assert_eq!(s.upstream_outage_max, Duration::from_secs(2));
        let bad: toml::Table = toml::from_str("origins = []\nstall = 1\n").unwrap();
        assert!(EdgeSettings::resolve(&EdgeArgs::default(), Some(&bad)).is_err());
    }
}
