//! The edge's one table of origin health, shared by every pull and
//! forward (not kept per stream): which origins exist (given on the
//! command line, or every A/AAAA record of a DNS name), which are ready,
//! draining or recently failed, and which of them currently publish a
//! given stream.
//!
//! Three things feed it: the data path (a refused, reset, stalled or
//! misbehaving upstream marks its origin failed at once), a probe of each
//! origin's `/readyz` every `health_interval` (503 = draining: no new
//! work), and DNS answers re-resolved at their TTL and after failures.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use baton_common::hub::StreamKey;
use baton_common::serve::api_auth::ApiToken;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::locate::{self, Health, Purpose};
use crate::settings::{EdgeSettings, OriginAddr, OriginDns, TlsName};

/// After a data-path failure an origin is not chosen again for this long,
/// even if its API answers (the API may be reachable while the media path
/// is not).
const FAILURE_COOLDOWN: Duration = Duration::from_secs(5);
/// Bound on one API request to an origin.
const API_TIMEOUT: Duration = Duration::from_millis(500);
/// Bound on asking an origin whether it publishes a stream, on the
/// failover path: a healthy origin answers in a millisecond on a LAN.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(200);
/// Largest API answer read from an origin.
const MAX_API_BODY: usize = 4 * 1024 * 1024;

/// Where an origin entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Static,
    Dns,
}

#[derive(Debug)]
struct Entry {
    addr: OriginAddr,
    from: Origin,
    draining: bool,
    failed_at: Option<Instant>,
    failures: u64,
    last_error: Option<String>,
}

impl Entry {
    fn health(&self, now: Instant) -> Health {
        if self
            .failed_at
            .is_some_and(|t| now.duration_since(t) < FAILURE_COOLDOWN)
        {
            Health::Failed
        } else if self.draining {
            Health::Draining
        } else {
            Health::Ready
        }
    }
}

/// What the origins' APIs said about one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// RTMP addresses of the origins that publish it.
    pub holders: Vec<SocketAddr>,
    /// Every origin that can serve was asked and answered: an empty
    /// `holders` then means no origin has the stream.
    pub complete: bool,
}

/// The shared origin table.
#[derive(Clone)]
pub struct Origins {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Mutex<Vec<Entry>>,
    /// Sent to the origins' APIs as a bearer token.
    api_token: Option<ApiToken>,
    /// Woken on a failure, so DNS is asked again at once.
    failed: Notify,
}

impl Origins {
    pub fn new(settings: &EdgeSettings) -> Self {
        let entries = settings
            .origins
            .iter()
            .map(|addr| Entry {
                addr: *addr,
                from: Origin::Static,
                draining: false,
                failed_at: None,
                failures: 0,
                last_error: None,
            })
            .collect();
        Origins {
            inner: Arc::new(Inner {
                entries: Mutex::new(entries),
                api_token: settings.origin_api_token.clone(),
                failed: Notify::new(),
            }),
        }
    }

    fn entries(&self) -> MutexGuard<'_, Vec<Entry>> {
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every known origin, in the order to try for `key`.
    pub fn rank(&self, key: &StreamKey, purpose: Purpose) -> Vec<OriginAddr> {
        let now = Instant::now();
        let entries = self.entries();
        let states: Vec<(SocketAddr, Health)> = entries
            .iter()
            .map(|e| (e.addr.rtmp, e.health(now)))
            .collect();
        locate::rank(key, &states, purpose)
            .into_iter()
            .filter_map(|rtmp| entries.iter().find(|e| e.addr.rtmp == rtmp).map(|e| e.addr))
            .collect()
    }

    /// The data path lost or could not use this origin.
    pub fn report_failure(&self, rtmp: SocketAddr, reason: &str) {
        let mut entries = self.entries();
        if let Some(entry) = entries.iter_mut().find(|e| e.addr.rtmp == rtmp) {
            entry.failed_at = Some(Instant::now());
            entry.failures += 1;
            entry.last_error = Some(reason.to_owned());
        }
        drop(entries);
        metrics::counter!("baton_edge_origin_failures_total").increment(1);
        self.inner.failed.notify_one();
    }

    /// The origin said it drains or upgrades (reconnect request, or
    /// `/readyz` 503): no new work for it.
    pub fn set_draining(&self, rtmp: SocketAddr, draining: bool) {
        if let Some(entry) = self.entries().iter_mut().find(|e| e.addr.rtmp == rtmp) {
            entry.draining = draining;
        }
    }

    /// Replace the DNS-derived origins with `found` (static ones stay).
    fn set_dns_origins(&self, found: Vec<OriginAddr>) {
        let mut entries = self.entries();
        entries.retain(|e| e.from == Origin::Static || found.contains(&e.addr));
        for addr in found {
            if !entries.iter().any(|e| e.addr.rtmp == addr.rtmp) {
                tracing::info!(origin = %addr.rtmp, "origin added (DNS)");
                entries.push(Entry {
                    addr,
                    from: Origin::Dns,
                    draining: false,
                    failed_at: None,
                    failures: 0,
                    last_error: None,
                });
            }
        }
    }

    /// The origins that publish `key` right now, by asking their APIs.
    pub async fn holders(&self, key: &StreamKey) -> Vec<SocketAddr> {
        self.lookup(key).await.holders
    }

    /// Which origins publish `key` right now, by asking their APIs, and
    /// whether that answer is complete.
    ///
    /// Every origin with an API is asked at once. Origins that just failed
    /// are asked too (a killed origin is often back within a second, and a
    /// publisher may already have moved to it; an origin left for being too
    /// slow still holds the stream), with the longer API bound, but their
    /// answers are only waited for when no healthy origin holds the stream:
    /// a frozen origin's API accepts and never answers, and must not cost a
    /// failover anything. The answer is incomplete when an origin that could
    /// serve has no API address or did not answer.
    pub async fn lookup(&self, key: &StreamKey) -> Lookup {
        let now = Instant::now();
        let mut complete = true;
        let (mut healthy, mut failed) = (Vec::new(), Vec::new());
        for entry in self.entries().iter() {
            let is_failed = entry.health(now) == Health::Failed;
            match (entry.addr.api, is_failed) {
                (Some(api), false) => healthy.push((entry.addr.rtmp, api)),
                (Some(api), true) => failed.push((entry.addr.rtmp, api)),
                (None, false) => complete = false,
                (None, true) => {}
            }
        }
        let token = self.inner.api_token.as_ref();
        // Only this stream (names are URL-unreserved text, `serve::names`);
        // an origin that ignores the filter answers with all of them, and
        // the match below still picks the right one.
        let path = format!("/api/v1/streams?app={}&name={}", key.app, key.stream);
        let path = path.as_str();
        let ask = |(rtmp, api): (SocketAddr, SocketAddr), bound: Duration| async move {
            let answer = tokio::time::timeout(bound, api_get(api, path, token))
                .await
                .ok()
                .and_then(Result::ok)
                .filter(|(status, _)| *status == 200)
                .and_then(|(_, body)| serde_json::from_slice::<Value>(&body).ok());
            let publishes = answer.and_then(|value| {
                value["streams"].as_array().map(|streams| {
                    streams.iter().any(|s| {
                        s["app"] == key.app.as_str()
                            && s["name"] == key.stream.as_str()
                            && s["publish"]["active"] == true
                    })
                })
            });
            (rtmp, publishes)
        };
        let mut healthy_answers = std::pin::pin!(futures_util::future::join_all(
            healthy.into_iter().map(|o| ask(o, LOOKUP_TIMEOUT))
        ));
        let mut failed_answers = std::pin::pin!(futures_util::future::join_all(
            failed.into_iter().map(|o| ask(o, API_TIMEOUT))
        ));
        let mut failed_done = None;
        let healthy_done = loop {
            tokio::select! {
                answers = &mut healthy_answers => break answers,
                answers = &mut failed_answers, if failed_done.is_none() => failed_done = Some(answers),
            }
        };
        let mut holders = Vec::new();
        for (rtmp, publishes) in healthy_done {
            match publishes {
                Some(true) => holders.push(rtmp),
                Some(false) => {}
                None => complete = false,
            }
        }
        if holders.is_empty() {
            let failed_done = match failed_done {
                Some(answers) => answers,
                None => failed_answers.await,
            };
            holders.extend(
                failed_done
                    .into_iter()
                    .filter_map(|(rtmp, publishes)| (publishes == Some(true)).then_some(rtmp)),
            );
        }
        Lookup { holders, complete }
    }

    /// Probe every origin's `/readyz` until the edge exits.
    pub async fn probe_forever(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let apis: Vec<(SocketAddr, SocketAddr)> = self
                .entries()
                .iter()
                .filter_map(|e| Some((e.addr.rtmp, e.addr.api?)))
                .collect();
            let token = self.inner.api_token.as_ref();
            let probes = apis.into_iter().map(|(rtmp, api)| async move {
                (
                    rtmp,
                    api_get(api, "/readyz", token)
                        .await
                        .map(|(status, _)| status),
                )
            });
            for (rtmp, result) in futures_util::future::join_all(probes).await {
                match result {
                    Ok(200) => self.set_draining(rtmp, false),
                    Ok(503) => self.set_draining(rtmp, true),
                    Ok(status) => self.report_failure(rtmp, &format!("/readyz answered {status}")),
                    Err(error) => self.report_failure(rtmp, &format!("/readyz: {error}")),
                }
            }
        }
    }

    /// Keep the DNS-derived origins current until the edge exits: resolve,
    /// sleep until the TTL expires (or a failure is reported), repeat.
    pub async fn resolve_forever(
        self,
        dns: OriginDns,
        server: Option<SocketAddr>,
        tls: Option<TlsName>,
    ) {
        let resolver = match build_resolver(server) {
            Ok(resolver) => resolver,
            Err(error) => {
                tracing::error!(%error, "cannot build the DNS resolver; --origin-dns is ignored");
                return;
            }
        };
        loop {
            let wait = match resolver.lookup_ip(dns.name.as_str()).await {
                Ok(answer) => {
                    let found: Vec<OriginAddr> = answer
                        .iter()
                        .map(|ip: IpAddr| OriginAddr {
                            rtmp: SocketAddr::new(ip, dns.rtmp_port),
                            api: dns.api_port.map(|port| SocketAddr::new(ip, port)),
                            tls,
                        })
                        .collect();
                    tracing::debug!(name = dns.name, origins = found.len(), "DNS answer");
                    self.set_dns_origins(found);
                    answer
                        .valid_until()
                        .saturating_duration_since(Instant::now())
                        .clamp(Duration::from_millis(500), Duration::from_secs(30))
                }
                Err(error) => {
                    tracing::warn!(name = dns.name, %error, "DNS lookup of the origins failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.inner.failed.notified() => {
                    // Let a burst of failures settle into one lookup.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    /// The table for the API.
    pub fn to_json(&self) -> Value {
        let now = Instant::now();
        let origins: Vec<Value> = self
            .entries()
            .iter()
            .map(|e| {
                json!({
                    "rtmp": e.addr.rtmp.to_string(),
                    "api": e.addr.api.map(|a| a.to_string()),
                    "from": match e.from { Origin::Static => "static", Origin::Dns => "dns" },
                    "health": match e.health(now) {
                        Health::Ready => "ready",
                        Health::Draining => "draining",
                        Health::Failed => "failed",
                    },
                    "failures": e.failures,
                    "last_error": e.last_error,
                })
            })
            .collect();
        Value::Array(origins)
    }
}

fn build_resolver(
    server: Option<SocketAddr>,
) -> Result<hickory_resolver::TokioResolver, hickory_resolver::ResolveError> {
    use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
    use hickory_resolver::name_server::TokioConnectionProvider;
    let provider = TokioConnectionProvider::default();
    let mut builder = match server {
        Some(server) => hickory_resolver::Resolver::builder_with_config(
            ResolverConfig::from_parts(
                None,
                vec![],
                NameServerConfigGroup::from_ips_clear(&[server.ip()], server.port(), true),
            ),
            provider,
        ),
        None => hickory_resolver::Resolver::builder(provider)?,
    };
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_millis(500);
    opts.attempts = 2;
    // The TTL decides when to ask again; nothing is kept longer.
    opts.positive_max_ttl = Some(Duration::from_secs(30));
    opts.negative_max_ttl = Some(Duration::from_secs(1));
    *builder.options_mut() = opts;
    Ok(builder.build())
}

/// `GET path` on an origin's API: (status, body). HTTP/1.1 with
/// `Connection: close`, bounded in time and size.
pub async fn api_get(
    addr: SocketAddr,
    path: &str,
    token: Option<&ApiToken>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let authorization = token.map_or(String::new(), |t| {
        format!("Authorization: Bearer {}\r\n", t.expose())
    });
    tokio::time::timeout(API_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr).await?;
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{authorization}Connection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        (&mut stream)
            .take(MAX_API_BODY as u64)
            .read_to_end(&mut response)
            .await?;
        let head_end = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| anyhow::anyhow!("no HTTP header in the answer"))?;
        let head = std::str::from_utf8(&response[..head_end])?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no HTTP status in {head:?}"))?;
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let body = response[head_end + 4..].to_vec();
        Ok((status, if chunked { dechunk(&body) } else { body }))
    })
    .await
    .map_err(|_| anyhow::anyhow!("no answer within {API_TIMEOUT:?}"))?
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = std::str::from_utf8(&body[..line_end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        let start = line_end + 2;
        if size == 0 || body.len() < start + size {
            return out;
        }
        out.extend_from_slice(&body[start..start + size]);
        body = body.get(start + size + 2..).unwrap_or_default();
    }
}
