//! Scenarios are data: one TOML file each (topology, clients, fault
//! schedule, expectations), so adding a failure case means writing a file,
//! not code, and a soak run is just a generated scenario.

use std::fmt;
use std::path::Path;

use anyhow::{bail, Context};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dur::Dur;

/// One scenario file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// How long the run lasts once every client is up (faults happen inside).
    pub duration: Dur,
    #[serde(default)]
    pub topology: TopologySpec,
    #[serde(default, rename = "publisher")]
    pub publishers: Vec<PublisherSpec>,
    #[serde(default, rename = "player")]
    pub players: Vec<PlayerSpec>,
    #[serde(default, rename = "fault")]
    pub faults: Vec<FaultSpec>,
    #[serde(default)]
    pub expect: Expect,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySpec {
    #[serde(default = "two")]
    pub origins: usize,
    #[serde(default = "two")]
    pub edges: usize,
    #[serde(default = "default_origin_args")]
    pub origin_args: Vec<String>,
    #[serde(default = "default_edge_args")]
    pub edge_args: Vec<String>,
    /// Edges find origins through DNS (a name the tool serves, TTL 1 s)
    /// instead of a static list; the name starts with these origins.
    /// `dns-add` / `dns-remove` change it during the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_origins: Option<Vec<usize>>,
}

fn two() -> usize {
    2
}

fn default_origin_args() -> Vec<String> {
    ["--grace-start-wait", "300ms", "--grace-final-wait", "200ms"]
        .map(String::from)
        .to_vec()
}

fn default_edge_args() -> Vec<String> {
    ["--upstream-stall-timeout", "1s"]
        .map(String::from)
        .to_vec()
}

impl Default for TopologySpec {
    fn default() -> Self {
        TopologySpec {
            origins: 2,
            edges: 2,
            origin_args: default_origin_args(),
            edge_args: default_edge_args(),
            dns_origins: None,
        }
    }
}

/// What a publisher sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublisherKind {
    /// The synthetic stream whose every frame carries its index.
    #[default]
    Synthetic,
    /// A real H.264/AAC encode by ffmpeg (lavfi test pattern), for real
    /// decoders to play; accounted by timestamps and stalls, not indices.
    Ffmpeg,
}

/// A publisher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublisherSpec {
    pub name: String,
    pub stream: String,
    #[serde(default)]
    pub kind: PublisherKind,
    /// `edge:N` (the normal case) or `origin:N` (straight to an origin).
    pub via: Target,
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// Keyframe every `gop` video frames.
    #[serde(default = "default_gop")]
    pub gop: u32,
    /// The publisher's own disconnects are expected (not checked).
    #[serde(default)]
    pub disrupted: bool,
}

fn default_fps() -> u32 {
    30
}

fn default_gop() -> u32 {
    15
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Rtmp,
    Flv,
    /// ffmpeg decoding the stream over RTMP (`-f framecrc`): a real
    /// decoder's view (decode errors, DTS order, stalls).
    Ffmpeg,
}

/// A player on an edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayerSpec {
    pub name: String,
    pub stream: String,
    pub edge: usize,
    pub protocol: Protocol,
    /// Its own edge is faulted: it is reported but not held to `expect`.
    #[serde(default)]
    pub disrupted: bool,
    /// Reconnect after a disconnect (a real player would).
    #[serde(default)]
    pub reconnect: bool,
}

/// A process, or the origin holding a stream right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Origin(usize),
    /// The origin publishing the first publisher's stream when the fault
    /// is applied.
    Holder,
    Edge(usize),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Origin(i) => write!(f, "origin:{i}"),
            Target::Holder => write!(f, "origin:holder"),
            Target::Edge(i) => write!(f, "edge:{i}"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Target> {
        let (kind, which) = s
            .split_once(':')
            .with_context(|| format!("target {s:?} is not origin:N, origin:holder or edge:N"))?;
        match (kind, which) {
            ("origin", "holder") => Ok(Target::Holder),
            ("origin", n) => {
                Ok(Target::Origin(n.parse().with_context(|| {
                    format!("target {s:?}: {n:?} is not an origin index")
                })?))
            }
            ("edge", n) => {
                Ok(Target::Edge(n.parse().with_context(|| {
                    format!("target {s:?}: {n:?} is not an edge index")
                })?))
            }
            _ => bail!("target {s:?} is not origin:N, origin:holder or edge:N"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Target, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(|e: anyhow::Error| serde::de::Error::custom(format!("{e:#}")))
    }
}

/// One entry of the fault schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultSpec {
    /// Offset from the moment every client is up.
    pub at: Dur,
    #[serde(flatten)]
    pub action: Action,
}

/// What a fault does; `for` is how long a reversible fault lasts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// SIGKILL.
    Kill { target: Target },
    /// SIGTERM (fast exit).
    Term { target: Target },
    /// SIGQUIT (graceful drain); waits for the exit.
    Quit { target: Target },
    /// SIGSTOP, then SIGCONT after `for`.
    Stop {
        target: Target,
        #[serde(rename = "for")]
        hold: Dur,
    },
    /// Start a stopped or killed process again on the same addresses.
    Start { target: Target },
    /// SIGUSR2: smooth upgrade to a new generation.
    Upgrade { target: Target },
    /// Upgrade every origin in turn, `gap` apart.
    RollingUpgrade {
        #[serde(default = "default_gap")]
        gap: Dur,
    },
    /// Drain (SIGQUIT) and restart every origin in turn, `gap` apart.
    RollingRestart {
        #[serde(default = "default_gap")]
        gap: Dur,
    },
    /// The network to the origin stops forwarding (sockets stay open).
    Blackhole {
        target: Target,
        #[serde(rename = "for")]
        hold: Dur,
    },
    /// Every byte to and from the origin is delayed by `delay`.
    Delay {
        target: Target,
        delay: Dur,
        #[serde(rename = "for")]
        hold: Dur,
    },
    /// The link to the origin carries at most `bytes_per_sec`.
    Throttle {
        target: Target,
        bytes_per_sec: u64,
        #[serde(rename = "for")]
        hold: Dur,
    },
    /// Every connection to the origin is reset (RST) once.
    Reset { target: Target },
    /// `percent` of the packets to and from the origin are lost (netns
    /// mode: dropped in the kernel; loopback mode: emulated by the proxy
    /// as a retransmission delay of that share of its chunks).
    Loss {
        target: Target,
        percent: f64,
        #[serde(rename = "for")]
        hold: Dur,
    },
    /// The origin is added to the DNS name edges resolve.
    DnsAdd { target: Target },
    /// The origin is removed from the DNS name edges resolve (it keeps
    /// running).
    DnsRemove { target: Target },
    /// Killed and restarted: down for `down`, then up for `up`, for `for`.
    Flap {
        target: Target,
        down: Dur,
        up: Dur,
        #[serde(rename = "for")]
        hold: Dur,
    },
    /// The publisher drops its connection and comes back with timestamps
    /// from 0 (frame indices continue).
    PublisherReconnect { publisher: String },
}

fn default_gap() -> Dur {
    Dur::secs(2)
}

impl Action {
    /// A short label for reports.
    pub fn label(&self) -> String {
        match self {
            Action::Kill { target } => format!("SIGKILL {target}"),
            Action::Term { target } => format!("SIGTERM {target}"),
            Action::Quit { target } => format!("SIGQUIT (drain) {target}"),
            Action::Stop { target, hold } => format!("SIGSTOP {target} for {hold}"),
            Action::Start { target } => format!("start {target}"),
            Action::Upgrade { target } => format!("upgrade (SIGUSR2) {target}"),
            Action::RollingUpgrade { gap } => format!("rolling upgrade, {gap} apart"),
            Action::RollingRestart { gap } => format!("rolling restart, {gap} apart"),
            Action::Blackhole { target, hold } => format!("blackhole {target} for {hold}"),
            Action::Delay {
                target,
                delay,
                hold,
            } => format!("delay {target} by {delay} for {hold}"),
            Action::Throttle {
                target,
                bytes_per_sec,
                hold,
            } => format!("throttle {target} to {bytes_per_sec} B/s for {hold}"),
            Action::Reset { target } => format!("reset connections to {target}"),
            Action::Loss {
                target,
                percent,
                hold,
            } => format!("{percent}% packet loss to {target} for {hold}"),
            Action::DnsAdd { target } => format!("{target} added to DNS"),
            Action::DnsRemove { target } => format!("{target} removed from DNS"),
            Action::Flap {
                target,
                down,
                up,
                hold,
            } => format!("flap {target} (down {down}, up {up}) for {hold}"),
            Action::PublisherReconnect { publisher } => {
                format!("publisher {publisher} reconnects, timestamps from 0")
            }
        }
    }

    /// The process or origin this action is applied to, if one.
    pub fn target(&self) -> Option<&Target> {
        match self {
            Action::Kill { target }
            | Action::Term { target }
            | Action::Quit { target }
            | Action::Stop { target, .. }
            | Action::Start { target }
            | Action::Upgrade { target }
            | Action::Blackhole { target, .. }
            | Action::Delay { target, .. }
            | Action::Throttle { target, .. }
            | Action::Reset { target }
            | Action::Loss { target, .. }
            | Action::DnsAdd { target }
            | Action::DnsRemove { target }
            | Action::Flap { target, .. } => Some(target),
            Action::RollingUpgrade { .. }
            | Action::RollingRestart { .. }
            | Action::PublisherReconnect { .. } => None,
        }
    }

    /// Faults on the network in front of an origin (or on its DNS entry).
    fn network(&self) -> bool {
        matches!(
            self,
            Action::Blackhole { .. }
                | Action::Delay { .. }
                | Action::Throttle { .. }
                | Action::Reset { .. }
                | Action::Loss { .. }
                | Action::DnsAdd { .. }
                | Action::DnsRemove { .. }
        )
    }

    fn dns(&self) -> bool {
        matches!(self, Action::DnsAdd { .. } | Action::DnsRemove { .. })
    }
}

/// What every player not marked `disrupted` must see, over the whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// Longest time between two frames.
    #[serde(default = "default_stall")]
    pub max_stall: Dur,
    #[serde(default)]
    pub max_lost: u64,
    #[serde(default)]
    pub max_duplicated: u64,
    #[serde(default)]
    pub max_out_of_order: u64,
    #[serde(default)]
    pub max_regressions: u64,
    #[serde(default)]
    pub max_disconnects: u64,
    /// Disconnects of publishers not marked `disrupted`.
    #[serde(default)]
    pub max_publisher_disconnects: u64,
}

fn default_stall() -> Dur {
    Dur::ms(250)
}

impl Default for Expect {
    fn default() -> Self {
        Expect {
            max_stall: default_stall(),
            max_lost: 0,
            max_duplicated: 0,
            max_out_of_order: 0,
            max_regressions: 0,
            max_disconnects: 0,
            max_publisher_disconnects: 0,
        }
    }
}

impl Scenario {
    /// Reads and checks a scenario file.
    pub fn load(path: &Path) -> anyhow::Result<Scenario> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("scenario {}", path.display()))
    }

    /// Parses and checks scenario TOML.
    pub fn parse(text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = toml::from_str(text).context("parsing the TOML")?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// Indices in range, names unique, the schedule in order and inside
    /// the run, every stream published.
    pub fn validate(&self) -> anyhow::Result<()> {
        let t = &self.topology;
        if t.origins == 0 || t.origins > 40 || t.edges == 0 || t.edges > 40 {
            bail!("topology: 1..=40 origins and 1..=40 edges");
        }
        let check_target = |target: &Target, what: &str| -> anyhow::Result<()> {
            match *target {
                Target::Origin(i) if i >= t.origins => {
                    bail!("{what}: origin:{i} but there are {} origins", t.origins)
                }
                Target::Edge(i) if i >= t.edges => {
                    bail!("{what}: edge:{i} but there are {} edges", t.edges)
                }
                _ => Ok(()),
            }
        };
        if let Some(listed) = &t.dns_origins {
            if let Some(i) = listed.iter().find(|&&i| i >= t.origins) {
                bail!("topology: dns_origins lists origin {i} of {}", t.origins);
            }
        }
        if self.publishers.is_empty() {
            bail!("at least one [[publisher]] is needed");
        }
        let mut names = std::collections::HashSet::new();
        for p in &self.publishers {
            check_target(&p.via, &format!("publisher {}", p.name))?;
            if p.via == Target::Holder {
                bail!("publisher {}: via must be edge:N or origin:N", p.name);
            }
            if p.fps == 0 || p.gop == 0 {
                bail!("publisher {}: fps and gop must be positive", p.name);
            }
            if !names.insert(p.name.clone()) {
                bail!("two clients are called {}", p.name);
            }
        }
        for p in &self.players {
            if p.edge >= t.edges {
                bail!("player {}: edge {} of {}", p.name, p.edge, t.edges);
            }
            if !self.publishers.iter().any(|q| q.stream == p.stream) {
                bail!("player {}: nobody publishes {}", p.name, p.stream);
            }
            if !names.insert(p.name.clone()) {
                bail!("two clients are called {}", p.name);
            }
        }
        let mut previous = Dur::default();
        for (i, f) in self.faults.iter().enumerate() {
            let what = format!("fault {} ({})", i + 1, f.action.label());
            if f.at < previous {
                bail!("{what}: faults must be listed in time order");
            }
            if f.at > self.duration {
                bail!("{what}: at {} is after the end of the run", f.at);
            }
            previous = f.at;
            if let Some(target) = f.action.target() {
                check_target(target, &what)?;
                if f.action.network() && matches!(target, Target::Edge(_)) {
                    bail!(
                        "{what}: network faults apply to origins (the proxy sits in front of them)"
                    );
                }
            }
            if f.action.dns() && t.dns_origins.is_none() {
                bail!("{what}: needs [topology] dns_origins (edges that find origins through DNS)");
            }
            if let Action::Loss { percent, .. } = f.action {
                if !(0.0..=100.0).contains(&percent) {
                    bail!("{what}: percent must be within 0..=100");
                }
            }
            if let Action::PublisherReconnect { publisher } = &f.action {
                if !self.publishers.iter().any(|p| &p.name == publisher) {
                    bail!("{what}: no publisher {publisher}");
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
name = "sample"
duration = "10s"

[topology]
origins = 3

[[publisher]]
name = "pub"
stream = "s"
via = "edge:0"

[[player]]
name = "b-rtmp"
stream = "s"
edge = 1
protocol = "rtmp"

[[player]]
name = "b-flv"
stream = "s"
edge = 1
protocol = "flv"

[[fault]]
at = "2s"
action = "kill"
target = "origin:holder"

[[fault]]
at = "4s"
action = "delay"
target = "origin:1"
delay = "200ms"
for = "2s"

[expect]
max_stall = "1.5s"
"#;

    #[test]
    fn a_scenario_parses_with_defaults() {
        let s = Scenario::parse(SAMPLE).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(s.topology.origins, 3);
        assert_eq!(s.topology.edges, 2);
        assert_eq!(s.topology.edge_args, default_edge_args());
        assert_eq!(s.publishers[0].via, Target::Edge(0));
        assert_eq!(s.publishers[0].gop, 15);
        assert_eq!(s.players[1].protocol, Protocol::Flv);
        assert!(matches!(
            s.faults[0].action,
            Action::Kill {
                target: Target::Holder
            }
        ));
        match &s.faults[1].action {
            Action::Delay { delay, hold, .. } => {
                assert_eq!(*delay, Dur::ms(200));
                assert_eq!(*hold, Dur::secs(2));
            }
            other => panic!("not a delay: {other:?}"),
        }
        assert_eq!(s.expect.max_stall, Dur::ms(1500));
        assert_eq!(s.expect.max_lost, 0);
    }

    #[test]
    fn bad_scenarios_are_refused_with_a_reason() {
        let out_of_range = SAMPLE.replace("origin:1", "origin:7");
        let err = Scenario::parse(&out_of_range)
            .err()
            .map_or(String::new(), |e| format!("{e:#}"));
        assert!(err.contains("origin:7"), "{err}");
        let unordered = SAMPLE.replace("at = \"4s\"", "at = \"1s\"");
        assert!(Scenario::parse(&unordered).is_err());
        let unknown = SAMPLE.replace("action = \"kill\"", "action = \"explode\"");
        assert!(Scenario::parse(&unknown).is_err());
        let edge_net = SAMPLE.replace("target = \"origin:1\"", "target = \"edge:1\"");
        assert!(Scenario::parse(&edge_net).is_err());
    }
}
