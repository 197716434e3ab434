//! Soak runs: a long random fault schedule over a fixed topology, drawn
//! from a seed so that any failure can be replayed exactly
//! (`baton-chaos soak --duration 1h --seed N`). Every fault heals itself
//! (a killed origin is started again) so the schedule can go on forever.

use std::time::Duration;

use crate::dur::Dur;
use crate::scenario::{
    Action, Expect, FaultSpec, PlayerSpec, Protocol, PublisherKind, PublisherSpec, Scenario,
    Target, TopologySpec,
};

/// splitmix64: tiny, well mixed, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn ms(&mut self, lo: u64, hi: u64) -> Dur {
        Dur::ms(lo + self.below(hi - lo + 1))
    }
}

/// How many clients a soak runs.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Streams, one publisher each, alternating between the two edges.
    pub publishers: usize,
    /// Players in all, spread over the streams and both edges, RTMP and
    /// HTTP-FLV alternating.
    pub players: usize,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            publishers: 1,
            players: 3,
        }
    }
}

/// The soak scenario for `seed`: 3 origins, 2 edges, `load` publishers
/// and players; a fault against an origin every 6–15 s.
#[cfg(test)]
pub fn scenario(seed: u64, duration: Duration) -> Scenario {
    scenario_with(seed, duration, Load::default())
}

/// [`scenario`] with another load.
pub fn scenario_with(seed: u64, duration: Duration, load: Load) -> Scenario {
    let mut rng = Rng(seed);
    let origins = 3usize;
    let mut faults = Vec::new();
    let mut at = Duration::from_secs(5);
    let end = duration.saturating_sub(Duration::from_secs(8));
    while at < end {
        let target = if rng.below(2) == 0 {
            Target::Holder
        } else {
            Target::Origin(rng.below(origins as u64) as usize)
        };
        let mut push = |at: Duration, action: Action| {
            faults.push(FaultSpec {
                at: Dur(at),
                action,
            })
        };
        let hold = rng.ms(1000, 4000);
        let resolved = match &target {
            Target::Origin(i) => Target::Origin(*i),
            _ => Target::Origin(rng.below(origins as u64) as usize),
        };
        match rng.below(10) {
            0 | 1 => {
                // Killed origins come back: target a fixed one so the
                // restart finds it.
                push(
                    at,
                    Action::Kill {
                        target: resolved.clone(),
                    },
                );
                push(
                    at + Duration::from_secs(2),
                    Action::Start { target: resolved },
                );
            }
            2 => push(at, Action::Stop { target, hold }),
            3 => push(at, Action::Upgrade { target }),
            4 => {
                push(
                    at,
                    Action::Quit {
                        target: resolved.clone(),
                    },
                );
                push(
                    at + Duration::from_secs(3),
                    Action::Start { target: resolved },
                );
            }
            5 => push(at, Action::Blackhole { target, hold }),
            6 => push(
                at,
                Action::Delay {
                    target,
                    delay: Dur::ms(200),
                    hold,
                },
            ),
            7 => push(
                at,
                Action::Throttle {
                    target,
                    bytes_per_sec: 20_000,
                    hold,
                },
            ),
            9 => push(
                at,
                Action::Loss {
                    target,
                    percent: 5.0,
                    hold,
                },
            ),
            _ => push(
                at,
                Action::Flap {
                    target: resolved,
                    down: Dur::ms(500),
                    up: Dur::secs(2),
                    hold: Dur::secs(5),
                },
            ),
        }
        at += Duration::from_secs(6) + rng.ms(3000, 9000).0;
    }
    let stream = |i: usize| {
        if i == 0 {
            "soak".to_owned()
        } else {
            format!("soak{i}")
        }
    };
    let publishers: Vec<PublisherSpec> = (0..load.publishers.max(1))
        .map(|i| PublisherSpec {
            name: if i == 0 {
                "pub".into()
            } else {
                format!("pub{i}")
            },
            stream: stream(i),
            kind: PublisherKind::Synthetic,
            via: Target::Edge(i % 2),
            fps: 30,
            gop: 15,
            disrupted: false,
        })
        .collect();
    let players: Vec<PlayerSpec> = (0..load.players.max(1))
        .map(|j| {
            // Most players on the other edge than their stream's
            // publisher (stream i is published via edge i % 2), so their
            // frames cross an origin and every origin fault reaches them;
            // one in four on the publisher's own edge.
            let publisher_edge = (j % publishers.len()) % 2;
            let edge = if j % 4 == 3 {
                publisher_edge
            } else {
                1 - publisher_edge
            };
            let protocol = if j % 2 == 1 {
                Protocol::Flv
            } else {
                Protocol::Rtmp
            };
            let kind = if protocol == Protocol::Flv {
                "flv"
            } else {
                "rtmp"
            };
            PlayerSpec {
                name: format!("e{edge}-{kind}-{j}"),
                stream: stream(j % publishers.len()),
                edge,
                protocol,
                disrupted: false,
                reconnect: true,
            }
        })
        .collect();
    Scenario {
        name: format!("soak-{seed}"),
        description: format!(
            "random schedule from seed {seed}: {} publishers, {} players",
            publishers.len(),
            players.len()
        ),
        duration: Dur(duration),
        topology: TopologySpec {
            origins,
            ..TopologySpec::default()
        },
        publishers,
        players,
        faults,
        expect: Expect {
            max_stall: Dur::ms(2500),
            ..Expect::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_reproduces_the_schedule() {
        let hour = Duration::from_secs(3600);
        let a = toml::to_string(&scenario(7, hour)).unwrap_or_default();
        let b = toml::to_string(&scenario(7, hour)).unwrap_or_default();
        let c = toml::to_string(&scenario(8, hour)).unwrap_or_default();
        assert!(!a.is_empty());
        assert_eq!(a, b);
        assert_ne!(a, c);
        let s = scenario(7, hour);
        assert!(s.faults.len() > 200, "{}", s.faults.len());
        s.validate().unwrap_or_else(|e| panic!("{e:#}"));
        // The generated TOML is a valid scenario file too.
        let back = Scenario::parse(&a).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(back.faults.len(), s.faults.len());
    }
}
