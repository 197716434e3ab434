//! Mode 2: every origin and every edge in its own network namespace, so
//! that a host's network can be cut, slowed, throttled or made to lose
//! packets for real, in the kernel, while both processes are fine.
//!
//! Layout (all names carry the owner's PID, so runs never share names and
//! a crashed run's leftovers can be told from a live run's):
//!
//! - `bchaos-<pid>-sw`: a "switch" namespace holding a bridge `br0`. The
//!   bridge lives in its own namespace so the host's firewall and bridge
//!   netfilter settings never see the test traffic;
//! - `bchaos-<pid>-o<N>` / `bchaos-<pid>-e<N>`: origin N / edge N, with
//!   `eth0` at 10.X.Y.(10+N) / 10.X.Y.(100+N), a veth whose other end is
//!   the switch port `o<N>` / `e<N>`;
//! - `bchaos<pid>` in the root namespace, 10.X.Y.1: the tool's own port on
//!   the bridge (its publishers, players, health checks and DNS server).
//!
//! Origin N's link is switch port `o<N>`: its egress is everything sent to
//! the origin; everything the origin sends is redirected on ingress to an
//! IFB device `io<N>` and shaped on that device's egress. A fault on the
//! link is set on both, so it hits every edge's link to the origin and both
//! directions, and the origin's own TCP stack never sees a local drop:
//!
//! - loss (and blackhole = 100 % loss): an HTB root whose class `1:2` has a
//!   zero-length FIFO, and a classic-BPF classifier (`ld rand`) sending the
//!   given share of packets to it. Only HTB, cls_bpf and FIFO are needed
//!   (kernels without `sch_netem` have them);
//! - delay: `netem delay` (needs `sch_netem`);
//! - throttle: `tbf`;
//! - reset: `ss -K` inside the origin's namespace (every TCP connection
//!   aborted with an RST).

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// Every namespace this tool creates starts with this.
pub const PREFIX: &str = "bchaos-";
/// The tool's veth in the root namespace: `bchaos<pid>` (15 bytes at most).
const HOST_IF_PREFIX: &str = "bchaos";

/// What a link fault does to packets; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LinkFault {
    Loss(f64),
    Blackhole,
    Delay(Duration),
    Throttle(u64),
}

/// `ip` (or `tc`) with `args`; an error with stderr if it fails.
fn run(program: &str, args: &[String]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn args(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| (*w).to_owned()).collect()
}

/// This process's effective user id, from `/proc/self/status`.
fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

/// Whether this process may build namespaces: root, and a namespace with
/// a veth pair and an HTB qdisc can be made (tried once).
pub fn available() -> bool {
    effective_uid() == Some(0) && probe().namespaces
}

/// Whether the kernel has `sch_netem` (tried once).
pub fn netem_available() -> bool {
    probe().netem
}

/// What the kernel and tools here can do.
#[derive(Debug, Clone, Copy)]
struct Probe {
    namespaces: bool,
    netem: bool,
}

/// Tries what mode 2 needs in a namespace of its own, removed after.
fn probe() -> Probe {
    static KNOWN: std::sync::OnceLock<Probe> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(|| {
        let ns = format!("{PREFIX}{}-probe", std::process::id());
        let ip = |words: &[&str]| {
            let mut v = args(&["-n", &ns]);
            v.extend(args(words));
            run("ip", &v).is_ok()
        };
        let tc = |words: &[&str]| {
            let mut v = args(&["-n", &ns]);
            v.extend(args(words));
            run("tc", &v).is_ok()
        };
        let namespaces = run("ip", &args(&["netns", "add", &ns])).is_ok()
            && ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"])
            && ip(&["link", "add", "br0", "type", "bridge"])
            && tc(&["qdisc", "add", "dev", "p0", "root", "handle", "1:", "htb"]);
        let netem = namespaces && tc(&["qdisc", "add", "dev", "p1", "root", "netem"]);
        delete_namespace(&ns);
        Probe { namespaces, netem }
    })
}

/// The PID that owns a namespace or host link name of this tool, if it is
/// one: `bchaos-123-o0` and `bchaos123` both give 123.
pub fn owner(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix(PREFIX)
        .or_else(|| name.strip_prefix(HOST_IF_PREFIX))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    let tail = &rest[digits.len()..];
    if !(tail.is_empty() || tail.starts_with('-')) {
        return None;
    }
    digits.parse().ok()
}

/// Whether `pid` is a running baton-chaos (then its namespaces are live).
fn live_tool(pid: u32) -> bool {
    crate::process::alive(pid)
        && std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|c| c.trim() == "baton-chaos")
}

/// Removes namespaces and host links left by runs that died without
/// cleaning up (their owner PID is no running baton-chaos). Returns what
/// was removed. Never touches anything without this tool's prefix.
pub fn clean_stale() -> Vec<String> {
    let mut removed = Vec::new();
    let me = std::process::id();
    let names = run("ip", &args(&["netns", "list"])).unwrap_or_default();
    for name in names.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = owner(name) else { continue };
        if pid != me && !live_tool(pid) {
            delete_namespace(name);
            removed.push(name.to_owned());
        }
    }
    let links = run("ip", &args(&["-o", "link", "show"])).unwrap_or_default();
    for line in links.lines() {
        let Some(name) = line.split(':').nth(1).map(|n| n.trim()) else {
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if !name.starts_with(HOST_IF_PREFIX) || name.starts_with(PREFIX) {
            continue;
        }
        let Some(pid) = owner(name) else { continue };
        if pid != me && !live_tool(pid) && run("ip", &args(&["link", "del", name])).is_ok() {
            removed.push(name.to_owned());
        }
    }
    removed
}

/// Kills whatever still runs in `ns`, then deletes it.
fn delete_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &args(&["netns", "pids", ns])) {
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let _ = run("ip", &args(&["netns", "del", ns]));
}

/// Routes of the host as (network, prefix length); `default` is skipped.
fn host_routes() -> Vec<(Ipv4Addr, u8)> {
    let text = run("ip", &args(&["-4", "route", "show", "table", "all"])).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_whitespace().find(|w| w.contains('.')))
        .filter_map(|w| {
            let (net, len) = w.split_once('/').unwrap_or((w, "32"));
            Some((net.parse().ok()?, len.parse().ok()?))
        })
        .collect()
}

fn overlaps(a: (Ipv4Addr, u8), b: (Ipv4Addr, u8)) -> bool {
    let len = a.1.min(b.1).min(32);
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(a.0) & mask == u32::from(b.0) & mask
}

/// A /24 in 10.200.0.0–10.249.255.0 derived from `pid` (consecutive runs
/// get different ones), moved on while it overlaps a route in `taken`.
pub fn pick_subnet(pid: u32, taken: &[(Ipv4Addr, u8)]) -> anyhow::Result<[u8; 3]> {
    let start = pid % (50 * 256);
    for k in 0..(50 * 256) {
        let n = (start + k) % (50 * 256);
        let net = [10, 200 + (n / 256) as u8, (n % 256) as u8];
        let candidate = (Ipv4Addr::new(net[0], net[1], net[2], 0), 24);
        if !taken.iter().any(|&t| overlaps(t, candidate)) {
            return Ok(net);
        }
    }
    bail!("no free /24 in 10.200.0.0/13 for the test network")
}

/// The `tc` commands (arguments after `tc -n NS`) that put `fault` on
/// device `dev`, replacing what was there. `netem`: the kernel has it.
pub fn fault_commands(
    dev: &str,
    fault: LinkFault,
    netem: bool,
) -> anyhow::Result<Vec<Vec<String>>> {
    let replace = |tail: &[&str]| {
        let mut v = args(&["qdisc", "replace", "dev", dev, "root"]);
        v.extend(tail.iter().map(|s| (*s).to_owned()));
        v
    };
    Ok(match fault {
        LinkFault::Delay(d) => {
            if !netem {
                bail!("delay needs the kernel's sch_netem, which this kernel lacks");
            }
            let ms = format!("{}ms", d.as_millis());
            vec![replace(&["netem", "delay", &ms, "limit", "100000"])]
        }
        LinkFault::Throttle(bytes_per_sec) => {
            let rate = format!("{}bit", bytes_per_sec.max(1) * 8);
            let burst = (bytes_per_sec / 10).max(4000).to_string();
            vec![replace(&[
                "tbf", "rate", &rate, "burst", &burst, "latency", "2s",
            ])]
        }
        LinkFault::Loss(_) | LinkFault::Blackhole => {
            let program = match fault {
                LinkFault::Loss(percent) if percent < 100.0 => {
                    let threshold = ((percent.max(0.0) / 100.0) * 4_294_967_296.0) as u64;
                    // ld rand; A >= threshold ? no match : class 1:2 (drop).
                    format!(
                        "4,32 0 0 4294963256,53 0 1 {},6 0 0 0,6 0 0 4294967295",
                        threshold.min(u64::from(u32::MAX))
                    )
                }
                _ => "1,6 0 0 4294967295".to_owned(),
            };
            vec![
                replace(&["handle", "1:", "htb", "default", "1"]),
                args(&[
                    "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb", "rate",
                    "10gbit",
                ]),
                args(&[
                    "class", "add", "dev", dev, "parent", "1:", "classid", "1:2", "htb", "rate",
                    "8bit",
                ]),
                args(&[
                    "qdisc", "add", "dev", dev, "parent", "1:2", "handle", "2:", "pfifo", "limit",
                    "0",
                ]),
                args(&[
                    "filter", "add", "dev", dev, "parent", "1:", "protocol", "all", "prio", "1",
                    "bpf", "bytecode", &program, "classid", "1:2",
                ]),
            ]
        }
    })
}

/// The namespaces, bridge and links of one run; removed on drop.
pub struct Net {
    pid: u32,
    net: [u8; 3],
    switch: String,
    host_if: String,
    /// Every namespace created, for the teardown.
    namespaces: Vec<String>,
    netem: bool,
}

impl Net {
    /// Cleans up stale leftovers, then builds the switch and the tool's
    /// port on it.
    pub fn create() -> anyhow::Result<Net> {
        let stale = clean_stale();
        if !stale.is_empty() {
            eprintln!("baton-chaos: removed leftovers of a crashed run: {stale:?}");
        }
        let pid = std::process::id();
        let net = pick_subnet(pid, &host_routes())?;
        let switch = format!("{PREFIX}{pid}-sw");
        let mut n = Net {
            pid,
            net,
            switch: switch.clone(),
            host_if: format!("{HOST_IF_PREFIX}{pid}"),
            namespaces: Vec::new(),
            netem: false,
        };
        n.add_namespace(&switch)?;
        n.ip_in(&switch, &["link", "add", "br0", "type", "bridge"])?;
        n.ip_in(&switch, &["link", "set", "br0", "up"])?;
        let host_if = n.host_if.clone();
        run(
            "ip",
            &args(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", "host", "netns", &switch,
            ]),
        )?;
        n.ip_in(&switch, &["link", "set", "host", "master", "br0"])?;
        n.ip_in(&switch, &["link", "set", "host", "up"])?;
        let cidr = format!("{}/24", n.host_ip());
        run("ip", &args(&["addr", "add", &cidr, "dev", &host_if]))?;
        run("ip", &args(&["link", "set", &host_if, "up"]))?;
        n.netem = netem_available();
        Ok(n)
    }

    fn add_namespace(&mut self, ns: &str) -> anyhow::Result<()> {
        run("ip", &args(&["netns", "add", ns]))?;
        self.namespaces.push(ns.to_owned());
        self.ip_in(ns, &["link", "set", "lo", "up"]).map(|_| ())
    }

    fn ip_in(&self, ns: &str, words: &[&str]) -> anyhow::Result<String> {
        let mut v = args(&["-n", ns]);
        v.extend(args(words));
        run("ip", &v)
    }

    fn tc_in(&self, ns: &str, words: &[String]) -> anyhow::Result<String> {
        let mut v = args(&["-n", ns]);
        v.extend(words.iter().cloned());
        run("tc", &v)
    }

    /// The tool's address on the bridge.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 1)
    }

    pub fn origin_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 10 + i as u8)
    }

    pub fn edge_ip(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], 100 + i as u8)
    }

    /// Creates the namespace of origin `i` (link, IFB for its ingress);
    /// returns the namespace name.
    pub fn add_origin(&mut self, i: usize) -> anyhow::Result<String> {
        let port = format!("o{i}");
        let ns = self.add_node(&port, self.origin_ip(i))?;
        let sw = self.switch.clone();
        let ifb = format!("io{i}");
        self.ip_in(&sw, &["link", "add", &ifb, "type", "ifb"])?;
        self.ip_in(&sw, &["link", "set", &ifb, "up"])?;
        self.tc_in(
            &sw,
            &args(&["qdisc", "add", "dev", &port, "handle", "ffff:", "ingress"]),
        )?;
        self.tc_in(
            &sw,
            &args(&[
                "filter", "add", "dev", &port, "parent", "ffff:", "protocol", "all", "u32",
                "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", &ifb,
            ]),
        )?;
        Ok(ns)
    }

    pub fn add_edge(&mut self, i: usize) -> anyhow::Result<String> {
        self.add_node(&format!("e{i}"), self.edge_ip(i))
    }

    fn add_node(&mut self, port: &str, ip: Ipv4Addr) -> anyhow::Result<String> {
        let ns = format!("{PREFIX}{}-{port}", self.pid);
        self.add_namespace(&ns)?;
        let sw = self.switch.clone();
        self.ip_in(
            &sw,
            &[
                "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        )?;
        self.ip_in(&sw, &["link", "set", port, "master", "br0"])?;
        self.ip_in(&sw, &["link", "set", port, "up"])?;
        self.ip_in(&ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
        self.ip_in(&ns, &["link", "set", "eth0", "up"])?;
        Ok(ns)
    }

    /// Puts `fault` on origin `i`'s link, both directions.
    pub fn set_fault(&self, i: usize, fault: LinkFault) -> anyhow::Result<()> {
        for dev in [format!("o{i}"), format!("io{i}")] {
            for cmd in fault_commands(&dev, fault, self.netem)? {
                self.tc_in(&self.switch, &cmd)?;
            }
        }
        Ok(())
    }

    /// Origin `i`'s link back to normal.
    pub fn clear_fault(&self, i: usize) -> anyhow::Result<()> {
        for dev in [format!("o{i}"), format!("io{i}")] {
            let shown = self.tc_in(&self.switch, &args(&["qdisc", "show", "dev", &dev, "root"]))?;
            if shown.contains("htb") || shown.contains("tbf") || shown.contains("netem") {
                self.tc_in(&self.switch, &args(&["qdisc", "del", "dev", &dev, "root"]))?;
            }
        }
        Ok(())
    }

    /// Aborts every TCP connection of the namespace `ns` (RST to the peers).
    pub fn reset_connections(&self, ns: &str) -> anyhow::Result<()> {
        run(
            "ip",
            &args(&[
                "netns",
                "exec",
                ns,
                "ss",
                "-K",
                "-t",
                "state",
                "established",
            ]),
        )
        .map(|_| ())
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            delete_namespace(ns);
        }
        let _ = run("ip", &args(&["link", "del", &self.host_if]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_read_from_this_tools_names_only() {
        assert_eq!(owner("bchaos-123-o0"), Some(123));
        assert_eq!(owner("bchaos-4194304-sw"), Some(4194304));
        assert_eq!(owner("bchaos77"), Some(77));
        assert_eq!(owner("bchaos-x-o0"), None);
        assert_eq!(owner("bchaos12ab"), None);
        assert_eq!(owner("docker0"), None);
        assert_eq!(owner("veth123"), None);
    }

    #[test]
    fn subnets_follow_the_pid_and_avoid_the_hosts_routes() {
        let a = pick_subnet(1000, &[]).unwrap_or_default();
        let b = pick_subnet(1001, &[]).unwrap_or_default();
        assert_ne!(a, b);
        assert_eq!(a, [10, 203, 232]);
        let taken = [(Ipv4Addr::new(10, 203, 232, 0), 24)];
        assert_eq!(
            pick_subnet(1000, &taken).unwrap_or_default(),
            [10, 203, 233]
        );
        // A host on 10.0.0.0/8 leaves nothing.
        assert!(pick_subnet(1000, &[(Ipv4Addr::new(10, 0, 0, 0), 8)]).is_err());
        assert!(overlaps(
            (Ipv4Addr::new(10, 200, 0, 0), 13),
            (Ipv4Addr::new(10, 207, 4, 0), 24)
        ));
        assert!(!overlaps(
            (Ipv4Addr::new(192, 0, 2, 0), 24),
            (Ipv4Addr::new(10, 207, 4, 0), 24)
        ));
    }

    #[test]
    fn loss_is_a_random_classifier_into_a_dropping_class() {
        let cmds = fault_commands("o1", LinkFault::Loss(25.0), false).unwrap_or_default();
        assert_eq!(cmds.len(), 5);
        assert_eq!(
            cmds[0].join(" "),
            "qdisc replace dev o1 root handle 1: htb default 1"
        );
        let filter = cmds[4].join(" ");
        assert!(
            filter.contains("bytecode 4,32 0 0 4294963256,53 0 1 1073741824,6 0 0 0,6 0 0 4294967295 classid 1:2"),
            "{filter}"
        );
        let all = fault_commands("io1", LinkFault::Blackhole, false).unwrap_or_default();
        assert!(all[4].join(" ").contains("bytecode 1,6 0 0 4294967295"));
        assert!(fault_commands("o1", LinkFault::Delay(Duration::from_millis(200)), false).is_err());
        let delay = fault_commands("o1", LinkFault::Delay(Duration::from_millis(200)), true)
            .unwrap_or_default();
        assert_eq!(
            delay[0].join(" "),
            "qdisc replace dev o1 root netem delay 200ms limit 100000"
        );
        let tbf = fault_commands("o1", LinkFault::Throttle(20_000), false).unwrap_or_default();
        assert_eq!(
            tbf[0].join(" "),
            "qdisc replace dev o1 root tbf rate 160000bit burst 4000 latency 2s"
        );
    }
}
