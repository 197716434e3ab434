//! A topology of real processes on loopback (mode 1): origin N listens on
//! 127.0.0.(10+N), its proxy (its "network") on 127.0.0.(60+N), edge N on
//! 127.0.0.(110+N); the tool's clients use 127.0.0.1. Edges know origins
//! only by their proxy addresses, so every network fault is a proxy mode.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::process::{Addrs, Proc};
use crate::proxy::{Mode, Proxy};
use crate::scenario::TopologySpec;

pub const APP: &str = "live";

fn loopback(x: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, x as u8))
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

pub struct Topology {
    pub origins: Vec<Proc>,
    pub links: Vec<OriginLink>,
    pub edges: Vec<Proc>,
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
    /// Starts every origin, its proxies and every edge; waits until healthy.
    pub async fn start(spec: &TopologySpec, log_dir: &Path) -> anyhow::Result<Topology> {
        let origin_bin = binary("baton-origin", "BATON_ORIGIN_BIN")?;
        let edge_bin = binary("baton-edge", "BATON_EDGE_BIN")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        let work = std::env::temp_dir().join(format!("bchaos-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
        let mut t = Topology {
            origins: Vec::new(),
            links: Vec::new(),
            edges: Vec::new(),
            work: work.clone(),
        };
        for i in 0..spec.origins {
            let addrs = Addrs::free(loopback(10 + i))?;
            let mut p = Proc::new(
                &format!("origin{i}"),
                &origin_bin,
                addrs,
                &work,
                log_dir,
                &spec.origin_args,
            )?;
            p.start().await?;
            let net = loopback(60 + i);
            t.links.push(OriginLink {
                rtmp: Proxy::start(net, addrs.rtmp).await?,
                api: Proxy::start(net, addrs.api).await?,
            });
            t.origins.push(p);
        }
        let mut edge_args = Vec::new();
        for link in &t.links {
            edge_args.push("--origin".to_owned());
            edge_args.push(format!(
                "{},api={}",
                link.rtmp.listen_addr(),
                link.api.listen_addr()
            ));
        }
        edge_args.extend(spec.edge_args.iter().cloned());
        for i in 0..spec.edges {
            let addrs = Addrs::free(loopback(110 + i))?;
            let mut p = Proc::new(
                &format!("edge{i}"),
                &edge_bin,
                addrs,
                &work,
                log_dir,
                &edge_args,
            )?;
            p.start().await?;
            t.edges.push(p);
        }
        Ok(t)
    }

    /// Whether origin `i` publishes `stream` now (asked directly, 1 s bound).
    pub async fn publishes(&self, i: usize, stream: &str) -> bool {
        let Some(origin) = self.origins.get(i) else {
            return false;
        };
        let url = format!("http://{}/api/v1/streams", origin.addrs.api);
        let Ok(Ok(r)) =
            tokio::time::timeout(Duration::from_secs(1), baton_tests::http::get(&url)).await
        else {
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

impl Drop for Topology {
    fn drop(&mut self) {
        for p in self.edges.iter_mut().chain(self.origins.iter_mut()) {
            p.kill_all();
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
