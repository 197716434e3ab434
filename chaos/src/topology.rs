//! A topology of real processes, in one of two network modes.
//!
//! Mode 1, loopback: origin N listens on 127.0.0.(10+N), its proxy (its
//! "network") on 127.0.0.(60+N), edge N on 127.0.0.(110+N); the tool's
//! clients use 127.0.0.1. Edges know origins only by their proxy
//! addresses, so every network fault is a proxy mode.
//!
//! Mode 2, netns: every origin and edge in its own network namespace on a
//! bridge ([`crate::netns`]); edges reach origins directly and network
//! faults are set on the origin's link with `tc`.
//!
//! Either way edges find origins from a static list, or (`dns_origins`)
//! from a DNS name the tool serves itself and changes during the run.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use baton_tests::dns::TestDns;

use crate::netns::{LinkFault, Net};
use crate::process::{Addrs, Proc};
use crate::proxy::{Mode, Proxy};
use crate::scenario::TopologySpec;

pub const APP: &str = "live";
/// The name edges resolve in DNS mode.
const DNS_NAME: &str = "origins.baton.test";
/// Ports every process listens on in netns mode (each has its own address).
const NETNS_PORTS: (u16, u16, u16) = (1935, 8080, 8081);

fn loopback(x: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, x as u8))
}

/// Which network the topology runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetMode {
    Loopback,
    Netns,
}

impl NetMode {
    pub fn label(self) -> &'static str {
        match self {
            NetMode::Loopback => "loopback",
            NetMode::Netns => "netns",
        }
    }
}

/// The RTMP and API proxies in front of one origin.
pub struct OriginLink {
    pub rtmp: Proxy,
    pub api: Proxy,
}

impl OriginLink {
    pub fn set_mode(&self, mode: Mode) {
        self.rtmp.set_mode(mode);
        self.api.set_mode(mode);
    }
}

/// What lies between the edges and the origins.
pub enum Network {
    /// Proxies, one pair per origin.
    Loopback(Vec<OriginLink>),
    /// Namespaces; the origins' namespace names.
    Netns { net: Net, origin_ns: Vec<String> },
}

/// A fault on an origin's link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkState {
    Normal,
    Fault(LinkFault),
}

/// The DNS name edges resolve and which origins it lists.
pub struct OriginDns {
    server: TestDns,
    /// The address of each origin as DNS gives it.
    addrs: Vec<Ipv4Addr>,
    listed: BTreeSet<usize>,
}

impl OriginDns {
    fn publish(&self) {
        let addrs = self.listed.iter().map(|&i| self.addrs[i]).collect();
        self.server.set_a(DNS_NAME, addrs, 1);
    }
}

pub struct Topology {
    pub origins: Vec<Proc>,
    pub edges: Vec<Proc>,
    pub network: Network,
    pub dns: Option<OriginDns>,
    pub mode: NetMode,
    work: PathBuf,
}

/// `baton-origin` / `baton-edge`: `$BATON_*_BIN`, else next to this binary.
pub fn binary(name: &str, var: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(var) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("locating baton-chaos")?;
    let mut dir = exe.parent().context("baton-chaos has no directory")?;
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().context("deps/ has no parent")?;
    }
    let path = dir.join(name);
    anyhow::ensure!(
        path.is_file(),
        "{} not found (build it: cargo build -p baton-origin -p baton-edge, or set {var})",
        path.display()
    );
    Ok(path)
}

impl Topology {
    /// Starts every origin, its network and every edge; waits until healthy.
    pub async fn start(
        spec: &TopologySpec,
        log_dir: &Path,
        mode: NetMode,
    ) -> anyhow::Result<Topology> {
        let origin_bin = binary("baton-origin", "BATON_ORIGIN_BIN")?;
        let edge_bin = binary("baton-edge", "BATON_EDGE_BIN")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let work = std::env::temp_dir().join(format!("bchaos-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let network = match mode {
            NetMode::Loopback => Network::Loopback(Vec::new()),
            NetMode::Netns => Network::Netns {
                net: tokio::task::spawn_blocking(Net::create)
                    .await
                    .context("building the namespaces")??,
                origin_ns: Vec::new(),
            },
        };
        let mut t = Topology {
            origins: Vec::new(),
            edges: Vec::new(),
            network,
            dns: None,
            mode,
            work: work.clone(),
        };
        for i in 0..spec.origins {
            let (addrs, ns) = match &mut t.network {
                Network::Loopback(_) => (Addrs::free(loopback(10 + i))?, None),
                Network::Netns { net, origin_ns } => {
                    let ns = net.add_origin(i)?;
                    origin_ns.push(ns.clone());
                    (
                        Addrs::at(IpAddr::V4(net.origin_ip(i)), NETNS_PORTS),
                        Some(ns),
                    )
                }
            };
            let mut p = Proc::new(
                &format!("origin{i}"),
                &origin_bin,
                addrs,
                &work,
                log_dir,
                &spec.origin_args,
            )?;
            if let Some(ns) = ns {
                p.in_netns(&ns);
            }
            p.start().await?;
            t.origins.push(p);
        }
        if let Network::Loopback(links) = &mut t.network {
            let targets: Vec<Addrs> = t.origins.iter().map(|p| p.addrs).collect();
            *links = proxies(&targets, spec.dns_origins.is_some()).await?;
        }
        // Where edges reach origin i: (rtmp, api).
        let reach: Vec<(SocketAddr, SocketAddr)> = match &t.network {
            Network::Loopback(links) => links
                .iter()
                .map(|l| (l.rtmp.listen_addr(), l.api.listen_addr()))
                .collect(),
            Network::Netns { .. } => t
                .origins
                .iter()
                .map(|p| (p.addrs.rtmp, p.addrs.api))
                .collect(),
        };
        let mut edge_args = Vec::new();
        match &spec.dns_origins {
            None => {
                for (rtmp, api) in &reach {
                    edge_args.push("--origin".to_owned());
                    edge_args.push(format!("{rtmp},api={api}"));
                }
            }
            Some(listed) => {
                let server_ip = match &t.network {
                    Network::Loopback(_) => Ipv4Addr::LOCALHOST,
                    Network::Netns { net, .. } => net.host_ip(),
                };
                let server = TestDns::start_on(server_ip).await?;
                let addrs = reach
                    .iter()
                    .map(|(rtmp, _)| match rtmp.ip() {
                        IpAddr::V4(ip) => Ok(ip),
                        IpAddr::V6(ip) => bail!("origin address {ip} is not IPv4"),
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let (rtmp_port, api_port) = reach
                    .first()
                    .map(|(r, a)| (r.port(), a.port()))
                    .context("no origin")?;
                edge_args.extend([
                    "--origin-dns".to_owned(),
                    format!("{DNS_NAME}:{rtmp_port},api-port={api_port}"),
                    "--dns-server".to_owned(),
                    server.addr().to_string(),
                ]);
                let dns = OriginDns {
                    server,
                    addrs,
                    listed: listed.iter().copied().collect(),
                };
                dns.publish();
                t.dns = Some(dns);
            }
        }
        edge_args.extend(spec.edge_args.iter().cloned());
        for i in 0..spec.edges {
            let (addrs, ns) = match &mut t.network {
                Network::Loopback(_) => (Addrs::free(loopback(110 + i))?, None),
                Network::Netns { net, .. } => {
                    let ns = net.add_edge(i)?;
                    (Addrs::at(IpAddr::V4(net.edge_ip(i)), NETNS_PORTS), Some(ns))
                }
            };
            let mut p = Proc::new(
                &format!("edge{i}"),
                &edge_bin,
                addrs,
                &work,
                log_dir,
                &edge_args,
            )?;
            if let Some(ns) = ns {
                p.in_netns(&ns);
            }
            p.start().await?;
            t.edges.push(p);
        }
        Ok(t)
    }

    /// Puts origin `i`'s link in `state` (both directions, every edge).
    pub fn set_link(&self, i: usize, state: LinkState) -> anyhow::Result<()> {
        match &self.network {
            Network::Loopback(links) => {
                let link = links.get(i).context("no such origin")?;
                link.set_mode(match state {
                    LinkState::Normal => Mode::Forward,
                    LinkState::Fault(LinkFault::Blackhole) => Mode::Blackhole,
                    LinkState::Fault(LinkFault::Delay(d)) => Mode::Delay(d),
                    LinkState::Fault(LinkFault::Throttle(r)) => Mode::Throttle(r),
                    LinkState::Fault(LinkFault::Loss(p)) => Mode::Loss((p * 100.0).round() as u32),
                });
                Ok(())
            }
            // `tc` runs while players receive: let the runtime move them
            // off this worker meanwhile.
            Network::Netns { net, .. } => tokio::task::block_in_place(|| match state {
                LinkState::Normal => net.clear_fault(i),
                LinkState::Fault(f) => net.set_fault(i, f),
            }),
        }
    }

    /// Resets every connection to origin `i`, then lets new ones through.
    pub async fn reset_link(&self, i: usize) -> anyhow::Result<()> {
        match &self.network {
            Network::Loopback(links) => {
                let link = links.get(i).context("no such origin")?;
                link.set_mode(Mode::Reset);
                tokio::time::sleep(Duration::from_millis(100)).await;
                link.set_mode(Mode::Forward);
                Ok(())
            }
            Network::Netns { net, origin_ns } => {
                let ns = origin_ns.get(i).context("no such origin")?;
                tokio::task::block_in_place(|| net.reset_connections(ns))
            }
        }
    }

    /// Adds origin `i` to (or removes it from) the DNS name.
    pub fn set_in_dns(&mut self, i: usize, listed: bool) -> anyhow::Result<String> {
        let dns = self.dns.as_mut().context("edges do not use DNS here")?;
        if i >= dns.addrs.len() {
            bail!("no origin {i}");
        }
        if listed {
            dns.listed.insert(i);
        } else {
            dns.listed.remove(&i);
        }
        dns.publish();
        let now: Vec<String> = dns.listed.iter().map(|&i| format!("origin{i}")).collect();
        Ok(format!("DNS lists [{}]", now.join(", ")))
    }

    /// Whether origin `i` publishes `stream` now (asked directly, 1 s bound).
    pub async fn publishes(&self, i: usize, stream: &str) -> bool {
        let Some(origin) = self.origins.get(i) else {
            return false;
        };
        let url = format!("http://{}/api/v1/streams", origin.addrs.api);
        let bearer = [(
            "Authorization",
            format!("Bearer {}", crate::process::API_TOKEN),
        )];
        let request = baton_tests::http::request_with_headers("GET", &url, &bearer, None);
        let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(1), request).await else {
            return false;
        };
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
            return false;
        };
        body["streams"].as_array().is_some_and(|streams| {
            streams
                .iter()
                .any(|s| s["app"] == APP && s["name"] == stream && s["publish"]["active"] == true)
        })
    }

    /// The origin publishing `stream`, polled for at most `limit`.
    pub async fn holder(&self, stream: &str, limit: Duration) -> Option<usize> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            for i in 0..self.origins.len() {
                if self.publishes(i, stream).await {
                    return Some(i);
                }
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The proxies in front of each origin, on 127.0.0.(60+N). `same_ports`:
/// every origin's proxies on the same two ports (DNS gives edges one port
/// for all origins).
async fn proxies(targets: &[Addrs], same_ports: bool) -> anyhow::Result<Vec<OriginLink>> {
    let mut last_error = None;
    for _ in 0..20 {
        let mut links: Vec<OriginLink> = Vec::new();
        let mut ports = (0, 0);
        let mut failed = false;
        for (i, target) in targets.iter().enumerate() {
            let net = loopback(60 + i);
            let started = async {
                Ok::<_, anyhow::Error>(OriginLink {
                    rtmp: Proxy::start_on(SocketAddr::new(net, ports.0), target.rtmp).await?,
                    api: Proxy::start_on(SocketAddr::new(net, ports.1), target.api).await?,
                })
            };
            match started.await {
                Ok(link) => {
                    if same_ports {
                        ports = (
                            link.rtmp.listen_addr().port(),
                            link.api.listen_addr().port(),
                        );
                    }
                    links.push(link);
                }
                Err(e) => {
                    last_error = Some(e);
                    failed = true;
                    break;
                }
            }
        }
        if !failed {
            return Ok(links);
        }
        if !same_ports {
            break;
        }
    }
    Err(last_error.unwrap_or_else(|| anyhow::anyhow!("no proxy ports")))
        .context("starting the proxies in front of the origins")
}

impl Drop for Topology {
    fn drop(&mut self) {
        for p in self.edges.iter_mut().chain(self.origins.iter_mut()) {
            p.kill_all();
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
