//! Who may open a connection: the decision the accept loop asks for every
//! accepted socket before any work is done for it.
//!
//! Three rules, checked in this order: `per_ip_accept_rate` (a token
//! bucket per peer: `rate` a second, `burst` at once), `per_ip_max_connections`
//! (connections one peer holds), `max_connections` (all connections).
//! A slot is reserved under one lock when the connection is admitted and
//! given back when its [`Slot`] is dropped (however the connection ends),
//! so the bound is exact: no connection is ever served past it.
//!
//! A peer is an IPv4 address or an IPv6 /64 (what one subscriber
//! usually holds). Peers in `per_ip_exempt` (by default the host's own
//! loopback addresses: a local proxy or health checker speaks for many
//! clients) skip the per-peer rules but count against `max_connections`.
//! Per-peer state lives while the peer holds a connection or its bucket
//! is not full again; idle entries are swept, so the table is bounded by
//! the connections plus the peers of the last `burst / rate` seconds.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::token_bucket::{BucketShape, TokenBucket};

/// Why a connection was refused; `as_str` is the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    MaxConnections,
    PerIpConnections,
    PerIpRate,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max-connections",
            Refusal::PerIpConnections => "per-ip-connections",
            Refusal::PerIpRate => "per-ip-rate",
        }
    }

    /// For logs: what limit refused it.
    pub fn describe(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections reached",
            Refusal::PerIpConnections => "per_ip_max_connections reached",
            Refusal::PerIpRate => "per_ip_accept_rate exceeded",
        }
    }
}

/// The admission limits (resolved settings).
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionLimits {
    pub max_connections: usize,
    /// 0: no per-peer connection limit.
    pub per_ip_max_connections: usize,
    /// `None`: no per-peer rate limit.
    pub per_ip_accept: Option<BucketShape>,
    /// Peers the per-peer rules do not apply to.
    pub exempt: Vec<IpAddr>,
}

/// The peer an address counts as: IPv4 as is, IPv6 by its /64.
pub fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

#[derive(Debug)]
struct PeerState {
    connections: usize,
    bucket: Option<TokenBucket>,
}

/// The bookkeeping behind the decision, without locks or sockets.
#[derive(Debug)]
pub struct AdmissionState {
    limits: AdmissionLimits,
    total: usize,
    peers: HashMap<IpAddr, PeerState>,
    last_sweep: Option<Instant>,
}

/// How often idle peers are swept out of the table at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl AdmissionState {
    pub fn new(limits: AdmissionLimits) -> Self {
        AdmissionState {
            limits,
            total: 0,
            peers: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Connections admitted and not yet released.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Peers tracked now (connections or a refilling bucket).
    pub fn tracked_peers(&self) -> usize {
        self.peers.len()
    }

    /// Connections `ip` holds now.
    pub fn connections_of(&self, ip: IpAddr) -> usize {
        self.peers.get(&peer_key(ip)).map_or(0, |p| p.connections)
    }

    /// Admit a connection from `ip` (reserving its slot) or say why not.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.maybe_sweep(now);
        let key = peer_key(ip);
        let exempt = self.limits.exempt.iter().any(|e| peer_key(*e) == key);
        if !exempt {
            let shape = self.limits.per_ip_accept;
            let peer = self.peers.entry(key).or_insert_with(|| PeerState {
                connections: 0,
                bucket: shape.map(|s| TokenBucket::full(s, now)),
            });
            if let (Some(shape), Some(bucket)) = (shape, peer.bucket.as_mut()) {
                if !bucket.try_take(shape, now) {
                    return Err(Refusal::PerIpRate);
                }
            }
            let per_ip = self.limits.per_ip_max_connections;
            if per_ip > 0 && peer.connections >= per_ip {
                return Err(Refusal::PerIpConnections);
            }
        }
        if self.total >= self.limits.max_connections {
            return Err(Refusal::MaxConnections);
        }
        self.total += 1;
        if !exempt {
            if let Some(peer) = self.peers.get_mut(&key) {
                peer.connections += 1;
            }
        }
        Ok(())
    }

    /// A connection admitted for `ip` ended.
    pub fn release(&mut self, ip: IpAddr, now: Instant) {
        self.total = self.total.saturating_sub(1);
        let key = peer_key(ip);
        let shape = self.limits.per_ip_accept;
        if let Some(peer) = self.peers.get_mut(&key) {
            peer.connections = peer.connections.saturating_sub(1);
            let rested = match (shape, &peer.bucket) {
                (Some(shape), Some(bucket)) => bucket.is_full(shape, now),
                _ => true,
            };
            if peer.connections == 0 && rested {
                self.peers.remove(&key);
            }
        }
    }

    /// Drop peers that hold no connection and whose bucket is full again.
    fn maybe_sweep(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_some_and(|t| now.duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        let shape = self.limits.per_ip_accept;
        self.peers.retain(|_, peer| {
            peer.connections > 0
                || match (shape, &peer.bucket) {
                    (Some(shape), Some(bucket)) => !bucket.is_full(shape, now),
                    _ => false,
                }
        });
        crate::hub::shrink_if_mostly_empty(&mut self.peers);
    }
}

/// [`AdmissionState`] shared by the listeners of one process.
#[derive(Debug, Clone)]
pub struct Admission {
    state: Arc<Mutex<AdmissionState>>,
}

/// One admitted connection's reservation; dropping it frees the slot.
#[derive(Debug)]
pub struct Slot {
    state: Arc<Mutex<AdmissionState>>,
    ip: IpAddr,
}

impl Admission {
    pub fn new(limits: AdmissionLimits) -> Self {
        Admission {
            state: Arc::new(Mutex::new(AdmissionState::new(limits))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, AdmissionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn try_admit(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        self.lock().admit(ip, Instant::now())?;
        Ok(Slot {
            state: self.state.clone(),
            ip,
        })
    }

    /// Connections holding a slot now.
    pub fn total(&self) -> usize {
        self.lock().total()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .release(self.ip, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits() -> AdmissionLimits {
        AdmissionLimits {
            max_connections: 10,
            per_ip_max_connections: 3,
            per_ip_accept: Some(BucketShape {
                rate: 1.0,
                burst: 100.0,
            }),
            exempt: vec![ip("127.0.0.1")],
        }
    }

    #[test]
    fn per_ip_limit_then_other_peers_still_come_in() {
        let now = Instant::now();
        let mut state = AdmissionState::new(limits());
        for _ in 0..3 {
            state.admit(ip("10.0.0.1"), now).unwrap();
        }
        assert_eq!(
            state.admit(ip("10.0.0.1"), now),
            Err(Refusal::PerIpConnections)
        );
        state.admit(ip("10.0.0.2"), now).unwrap();
        assert_eq!(state.total(), 4);
        state.release(ip("10.0.0.1"), now);
        state.admit(ip("10.0.0.1"), now).unwrap();
    }

    #[test]
    fn max_connections_is_exact_and_exempt_peers_count_against_it() {
        let now = Instant::now();
        let mut state = AdmissionState::new(limits());
        for _ in 0..10 {
            state.admit(ip("127.0.0.1"), now).unwrap();
        }
        assert_eq!(
            state.admit(ip("127.0.0.1"), now),
            Err(Refusal::MaxConnections)
        );
        assert_eq!(
            state.admit(ip("10.0.0.9"), now),
            Err(Refusal::MaxConnections)
        );
        assert_eq!(state.total(), 10);
        // Refusals reserved nothing.
        assert_eq!(state.connections_of(ip("10.0.0.9")), 0);
        state.release(ip("127.0.0.1"), now);
        state.admit(ip("10.0.0.9"), now).unwrap();
        assert_eq!(state.total(), 10);
    }

    #[test]
    fn accept_rate_per_peer_with_a_burst() {
        let now = Instant::now();
        let mut state = AdmissionState::new(AdmissionLimits {
            per_ip_max_connections: 0,
            max_connections: 1000,
            per_ip_accept: Some(BucketShape {
                rate: 10.0,
                burst: 5.0,
            }),
            ..limits()
        });
        let admitted = (0..20)
            .filter(|_| state.admit(ip("10.0.0.1"), now).is_ok())
            .count();
        assert_eq!(admitted, 5);
        assert_eq!(state.admit(ip("10.0.0.1"), now), Err(Refusal::PerIpRate));
        // Another peer has its own bucket; exempt peers have none.
        assert!(state.admit(ip("10.0.0.2"), now).is_ok());
        assert!((0..50).all(|_| state.admit(ip("127.0.0.1"), now).is_ok()));
        let later = now + Duration::from_millis(250);
        assert!(state.admit(ip("10.0.0.1"), later).is_ok());
    }

    #[test]
    fn ipv6_peers_are_their_64_and_idle_peers_are_swept() {
        let now = Instant::now();
        let mut state = AdmissionState::new(limits());
        for host in ["2001:db8::1", "2001:db8::2", "2001:db8::ffff"] {
            state.admit(ip(host), now).unwrap();
        }
        assert_eq!(
            state.admit(ip("2001:db8::3"), now),
            Err(Refusal::PerIpConnections)
        );
        assert!(state.admit(ip("2001:db8:0:1::1"), now).is_ok());
        for host in [
            "2001:db8::1",
            "2001:db8::2",
            "2001:db8::ffff",
            "2001:db8:0:1::1",
        ] {
            state.release(ip(host), now);
        }
        // Buckets still refilling keep their peer until full again.
        let later = now + Duration::from_secs(120);
        state.admit(ip("10.0.0.7"), later).unwrap();
        assert_eq!(state.tracked_peers(), 1);
    }
}
