//! Which origin gets a publish and where a player looks first, decided the
//! same way on every edge without a shared store: rendezvous (highest
//! random weight) hashing of the stream key over the origins, healthy ones
//! first. Every edge that sees the same origin set sends a stream's
//! publisher and its players to the same origin; when an origin goes, only
//! its streams move, each to its next origin in the same order everywhere.
//!
//! Sans-IO: a pure function of the key and the origins' states.

use std::net::SocketAddr;

use baton_common::hub::StreamKey;

/// An origin's state as the edge's health table sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Health {
    /// Answering and accepting work.
    Ready,
    /// Draining or upgrading (`/readyz` 503, or a reconnect request): it
    /// serves what it has but gets no new work.
    Draining,
    /// Failed recently (refused, reset, stalled, malformed): used only when
    /// nothing else is left.
    Failed,
}

/// What the ranking is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A new publish: draining origins come after failed ones.
    Publish,
    /// A pull: a draining origin still serves its streams.
    Pull,
}

/// The origins in the order to try for `key`.
pub fn rank(
    key: &StreamKey,
    origins: &[(SocketAddr, Health)],
    purpose: Purpose,
) -> Vec<SocketAddr> {
    let tier = |health: Health| match (purpose, health) {
        (_, Health::Ready) => 0,
        (Purpose::Pull, Health::Draining) | (Purpose::Publish, Health::Failed) => 1,
        (Purpose::Pull, Health::Failed) | (Purpose::Publish, Health::Draining) => 2,
    };
    let mut ranked: Vec<(u8, u64, SocketAddr)> = origins
        .iter()
        .map(|&(addr, health)| (tier(health), weight(key, addr), addr))
        .collect();
    // Lower tier first, then the higher weight.
    ranked.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    ranked.into_iter().map(|(_, _, addr)| addr).collect()
}

/// A stable pseudo-random weight of (key, origin): FNV-1a over both, then
/// a 64-bit finaliser so close inputs spread. The same on every edge and
/// every run (unlike std's randomly keyed hasher).
fn weight(key: &StreamKey, origin: SocketAddr) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let text = format!("{}/{}|{origin}", key.app, key.stream);
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(n: u16) -> Vec<(SocketAddr, Health)> {
        (0..n)
            .map(|i| (SocketAddr::from(([127, 0, 0, 1], 2000 + i)), Health::Ready))
            .collect()
    }

    #[test]
    fn every_edge_agrees_and_keys_spread() {
        let set = origins(3);
        let mut firsts = std::collections::HashMap::new();
        for i in 0..300 {
            let key = StreamKey::new("live", format!("s{i}"));
            let a = rank(&key, &set, Purpose::Publish);
            let mut reversed = set.clone();
            reversed.reverse();
            assert_eq!(
                a,
                rank(&key, &reversed, Purpose::Publish),
                "order of the set does not matter"
            );
            *firsts.entry(a[0]).or_insert(0) += 1;
        }
        assert_eq!(firsts.len(), 3);
        assert!(firsts.values().all(|&n| n > 60), "{firsts:?}");
    }

    #[test]
    fn losing_an_origin_moves_only_its_streams() {
        let set = origins(4);
        let smaller: Vec<_> = set[1..].to_vec();
        for i in 0..200 {
            let key = StreamKey::new("live", format!("s{i}"));
            let before = rank(&key, &set, Purpose::Pull)[0];
            let after = rank(&key, &smaller, Purpose::Pull)[0];
            if before != set[0].0 {
                assert_eq!(before, after, "a stream not on the lost origin stays put");
            }
        }
    }

    #[test]
    fn unhealthy_origins_come_last_and_draining_gets_no_publish() {
        let mut set = origins(3);
        let key = StreamKey::new("live", "x");
        let best = rank(&key, &set, Purpose::Publish)[0];
        let index = set.iter().position(|(a, _)| *a == best).unwrap();
        set[index].1 = Health::Draining;
        let publish = rank(&key, &set, Purpose::Publish);
        assert_eq!(publish.last(), Some(&best));
        let pull = rank(&key, &set, Purpose::Pull);
        assert_eq!(
            pull[2], best,
            "a pull tries a draining origin after ready ones"
        );
        set[index].1 = Health::Failed;
        assert_eq!(rank(&key, &set, Purpose::Pull).last(), Some(&best));
        assert_eq!(rank(&key, &set, Purpose::Publish).len(), 3);
    }
}
