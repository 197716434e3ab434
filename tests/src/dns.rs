//! A nameserver for tests of DNS-based origin discovery.
//!
//! An edge started with `--origin-dns NAME:PORT --dns-server IP:PORT` finds
//! its origins by resolving `NAME`; failover tests need to change that
//! answer while the edge runs (an origin replaced, added, removed), make the
//! nameserver fail, and keep the system resolver and the real network out
//! of it. [`TestDns`] is a tiny authoritative server for the zone
//! [`ZONE`], on one free 127.0.0.1 port over UDP and TCP, answering `A`
//! queries from a map that [`TestDns::set_a`] changes live:
//!
//! - a name with addresses gets them, with the TTL given;
//! - a name that is set but has no addresses, or any other record type
//!   for a known name (the resolver's `AAAA` query), gets NOERROR with no
//!   answer (NODATA); an unknown name in the zone gets NXDOMAIN; both carry
//!   the zone's SOA with a 1 s negative TTL so a resolver does not keep a
//!   negative answer for long;
//! - a name outside the zone is REFUSED (this server never recurses);
//! - [`TestDns::set_fault`] makes it answer SERVFAIL or not at all.
//!
//! Only loopback addresses (127.0.0.0/8) may be put in an answer: a test
//! must never send an edge to a real host. [`TestDns::start_on`] serves on
//! another address instead (baton-chaos serves its network namespaces from
//! the address of its own port on their bridge); answers may then also
//! hold addresses of that address's /24, the test's own private network.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hickory_server::authority::MessageResponseBuilder;
use hickory_server::proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_server::proto::rr::rdata::{A, SOA};
use hickory_server::proto::rr::{Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;

/// The zone [`TestDns`] is authoritative for.
pub const ZONE: &str = "baton.test.";

/// How long a TCP client may stay idle on the server.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// How [`TestDns`] answers; see [`TestDns::set_fault`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DnsFault {
    /// Answer from the records.
    #[default]
    None,
    /// Answer every query with SERVFAIL.
    ServFail,
    /// Send no answer at all (the resolver times out).
    NoAnswer,
}

#[derive(Debug, Default)]
struct Zone {
    /// Fully qualified, lower-case name → (addresses, TTL in seconds).
    a: HashMap<Name, (Vec<Ipv4Addr>, u32)>,
    fault: DnsFault,
}

#[derive(Debug)]
struct Shared {
    origin: Name,
    /// A non-loopback address served on: its /24 may be handed out too.
    network: Option<Ipv4Addr>,
    zone: Mutex<Zone>,
    queries: AtomicU64,
}

impl Shared {
    fn zone(&self) -> MutexGuard<'_, Zone> {
        self.zone.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn soa(&self) -> Record {
        let soa = SOA::new(
            self.origin.clone(),
            self.origin.clone(),
            1,
            60,
            10,
            600,
            1, // the negative-caching TTL
        );
        Record::from_rdata(self.origin.clone(), 1, RData::SOA(soa))
    }
}

/// An authoritative nameserver for [`ZONE`] on loopback; see the module
/// docs. Stops when dropped.
pub struct TestDns {
    addr: SocketAddr,
    shared: Arc<Shared>,
    _server: ServerFuture<Handler>,
}

impl TestDns {
    /// Serves UDP and TCP on one free 127.0.0.1 port. Must be called inside
    /// a tokio runtime.
    pub async fn start() -> TestDns {
        Self::start_on(Ipv4Addr::LOCALHOST)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Serves UDP and TCP on one free port of `ip` (loopback, or the
    /// test's own address on a private test network; see the module docs).
    pub async fn start_on(ip: Ipv4Addr) -> anyhow::Result<TestDns> {
        use anyhow::Context as _;
        let origin = Name::from_ascii(ZONE).context("ZONE is a valid name")?;
        let shared = Arc::new(Shared {
            origin,
            network: (!ip.is_loopback()).then_some(ip),
            zone: Mutex::new(Zone::default()),
            queries: AtomicU64::new(0),
        });
        // The UDP and TCP ports must be equal: bind TCP on a free port,
        // then UDP on the same one, retrying if that one is taken.
        for _ in 0..20 {
            let tcp = tokio::net::TcpListener::bind((ip, 0))
                .await
                .with_context(|| format!("TestDns: binding TCP {ip}:0"))?;
            let addr = tcp.local_addr().context("TestDns: local_addr")?;
            let Ok(udp) = tokio::net::UdpSocket::bind(addr).await else {
                continue;
            };
            let mut server = ServerFuture::new(Handler(shared.clone()));
            server.register_socket(udp);
            server.register_listener(tcp, TCP_IDLE);
            return Ok(TestDns {
                addr,
                shared,
                _server: server,
            });
        }
        anyhow::bail!("TestDns: found no port of {ip} free for both UDP and TCP in 20 tries")
    }

    /// The nameserver's address (UDP and TCP): what `--dns-server` takes.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `name` as a fully qualified name in [`ZONE`]: `"origins"` and
    /// `"origins.baton.test"` both give `"origins.baton.test."`.
    pub fn fqdn(name: &str) -> String {
        let trimmed = name.trim_end_matches('.');
        let zone = ZONE.trim_end_matches('.');
        if trimmed == zone || trimmed.ends_with(&format!(".{zone}")) {
            format!("{trimmed}.")
        } else {
            format!("{trimmed}.{ZONE}")
        }
    }

    /// From now on `name` (see [`TestDns::fqdn`]) resolves to `addrs` with
    /// a TTL of `ttl_secs`; an empty list makes the name exist with no
    /// address. Panics on an address outside loopback and the test network.
    pub fn set_a(&self, name: &str, addrs: Vec<Ipv4Addr>, ttl_secs: u32) {
        let same_24 = |a: &Ipv4Addr| {
            self.shared
                .network
                .is_some_and(|n| n.octets()[..3] == a.octets()[..3])
        };
        for addr in &addrs {
            assert!(
                addr.is_loopback() || same_24(addr),
                "TestDns only hands out loopback addresses (or its test network's), not {addr}"
            );
        }
        let name = Self::name(name);
        self.shared.zone().a.insert(name, (addrs, ttl_secs));
    }

    /// Makes `name` unknown again (NXDOMAIN).
    pub fn remove(&self, name: &str) {
        let name = Self::name(name);
        self.shared.zone().a.remove(&name);
    }

    /// What `name` resolves to now, if it is set.
    pub fn a(&self, name: &str) -> Option<(Vec<Ipv4Addr>, u32)> {
        self.shared.zone().a.get(&Self::name(name)).cloned()
    }

    /// Makes the server fail (or answer normally again).
    pub fn set_fault(&self, fault: DnsFault) {
        self.shared.zone().fault = fault;
    }

    /// Queries received so far (all names, types and transports).
    pub fn queries(&self) -> u64 {
        self.shared.queries.load(Ordering::SeqCst)
    }

    fn name(name: &str) -> Name {
        let fqdn = Self::fqdn(name);
        Name::from_ascii(&fqdn)
            .unwrap_or_else(|e| panic!("TestDns: {fqdn:?} is not a valid name: {e}"))
            .to_lowercase()
    }
}

struct Handler(Arc<Shared>);

/// The answer to one query, decided under the lock and sent after it.
enum Answer {
    Records(Vec<Record>),
    NoData,
    NxDomain,
    Refused,
    ServFail,
    Silence,
    NotImplemented,
}

impl Handler {
    fn decide(&self, request: &Request) -> Answer {
        if request.message_type() != MessageType::Query || request.op_code() != OpCode::Query {
            return Answer::NotImplemented;
        }
        let Ok(info) = request.request_info() else {
            return Answer::ServFail;
        };
        let name = Name::from(info.query.name()).to_lowercase();
        let zone = self.0.zone();
        match zone.fault {
            DnsFault::None => {}
            DnsFault::ServFail => return Answer::ServFail,
            DnsFault::NoAnswer => return Answer::Silence,
        }
        if !self.0.origin.zone_of(&name) {
            return Answer::Refused;
        }
        let Some((addrs, ttl)) = zone.a.get(&name) else {
            return if name == self.0.origin {
                Answer::NoData
            } else {
                Answer::NxDomain
            };
        };
        if info.query.query_type() != RecordType::A || addrs.is_empty() {
            return Answer::NoData;
        }
        let query_name = Name::from(info.query.name());
        Answer::Records(
            addrs
                .iter()
                .map(|ip| Record::from_rdata(query_name.clone(), *ttl, RData::A(A(*ip))))
                .collect(),
        )
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        self.0.queries.fetch_add(1, Ordering::SeqCst);
        let answer = self.decide(request);
        let builder = MessageResponseBuilder::from_message_request(request);
        let mut header = Header::response_from_request(request.header());
        header.set_authoritative(true);
        header.set_recursion_available(false);
        let soa = [self.0.soa()];
        let sent = match answer {
            Answer::Silence => {
                let mut header = Header::response_from_request(request.header());
                header.set_response_code(ResponseCode::ServFail);
                return header.into();
            }
            Answer::Records(records) => {
                let response = builder.build(header, records.iter(), [], [], []);
                response_handle.send_response(response).await
            }
            Answer::NoData | Answer::NxDomain => {
                if matches!(answer, Answer::NxDomain) {
                    header.set_response_code(ResponseCode::NXDomain);
                }
                let response = builder.build(header, [], [], soa.iter(), []);
                response_handle.send_response(response).await
            }
            Answer::Refused => {
                let response = builder.error_msg(request.header(), ResponseCode::Refused);
                response_handle.send_response(response).await
            }
            Answer::ServFail => {
                let response = builder.error_msg(request.header(), ResponseCode::ServFail);
                response_handle.send_response(response).await
            }
            Answer::NotImplemented => {
                let response = builder.error_msg(request.header(), ResponseCode::NotImp);
                response_handle.send_response(response).await
            }
        };
        match sent {
            Ok(info) => info,
            Err(e) => {
                eprintln!("baton-tests: TestDns could not send a response: {e}");
                let mut header = Header::response_from_request(request.header());
                header.set_response_code(ResponseCode::ServFail);
                header.into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_resolver::config::{
        NameServerConfig, NameServerConfigGroup, ResolverConfig, ResolverOpts,
    };
    use hickory_resolver::name_server::TokioConnectionProvider;
    use hickory_resolver::proto::xfer::Protocol;
    use hickory_resolver::{ResolveError, TokioResolver};

    /// A resolver that asks `dns` only (no system configuration, no
    /// cache), over `protocol`.
    fn resolver(dns: &TestDns, protocol: Protocol) -> TokioResolver {
        let group = NameServerConfigGroup::from(vec![NameServerConfig::new(dns.addr(), protocol)]);
        let config = ResolverConfig::from_parts(None, vec![], group);
        let mut opts = ResolverOpts::default();
        opts.cache_size = 0;
        opts.attempts = 1;
        opts.timeout = Duration::from_secs(2);
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(opts)
            .build()
    }

    async fn lookup(r: &TokioResolver, name: &str) -> Result<Vec<Ipv4Addr>, ResolveError> {
        let lookup = tokio::time::timeout(Duration::from_secs(5), r.ipv4_lookup(name))
            .await
            .expect("a lookup finishes within 5 s")?;
        let mut ips: Vec<Ipv4Addr> = lookup.iter().map(|a| a.0).collect();
        ips.sort();
        Ok(ips)
    }

    #[tokio::test]
    async fn answers_change_live_over_udp_and_tcp() {
        let dns = TestDns::start().await;
        dns.set_a("origins", vec![Ipv4Addr::new(127, 0, 0, 2)], 1);
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            let r = resolver(&dns, protocol);
            assert_eq!(
                lookup(&r, "origins.baton.test.").await.unwrap(),
                vec![Ipv4Addr::new(127, 0, 0, 2)],
                "{protocol}"
            );
        }
        dns.set_a(
            "origins.baton.test",
            vec![Ipv4Addr::new(127, 0, 0, 4), Ipv4Addr::new(127, 0, 0, 3)],
            1,
        );
        for protocol in [Protocol::Udp, Protocol::Tcp] {
            let r = resolver(&dns, protocol);
            assert_eq!(
                lookup(&r, "origins.baton.test.").await.unwrap(),
                vec![Ipv4Addr::new(127, 0, 0, 3), Ipv4Addr::new(127, 0, 0, 4)],
                "{protocol}"
            );
        }
        assert!(dns.queries() >= 4);
    }

    #[tokio::test]
    async fn unknown_names_empty_names_refusals_and_faults() {
        let dns = TestDns::start().await;
        let r = resolver(&dns, Protocol::Udp);
        // Unknown in the zone, then set with no address: no records either way.
        assert!(lookup(&r, "nobody.baton.test.")
            .await
            .unwrap_err()
            .is_no_records_found());
        dns.set_a("empty", vec![], 1);
        assert!(lookup(&r, "empty.baton.test.")
            .await
            .unwrap_err()
            .is_no_records_found());
        // Outside the zone: refused, never recursed.
        assert!(lookup(&r, "example.com.").await.is_err());
        // A fault, then back to normal.
        dns.set_a("origins", vec![Ipv4Addr::LOCALHOST], 1);
        dns.set_fault(DnsFault::ServFail);
        assert!(lookup(&r, "origins.baton.test.").await.is_err());
        dns.set_fault(DnsFault::NoAnswer);
        assert!(lookup(&r, "origins.baton.test.").await.is_err());
        dns.set_fault(DnsFault::None);
        assert_eq!(
            lookup(&r, "origins.baton.test.").await.unwrap(),
            vec![Ipv4Addr::LOCALHOST]
        );
        dns.remove("origins");
        assert!(dns.a("origins").is_none());
        assert!(lookup(&r, "origins.baton.test.")
            .await
            .unwrap_err()
            .is_no_records_found());
    }

    #[test]
    #[should_panic(expected = "only hands out loopback")]
    fn refuses_non_loopback_addresses() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dns = TestDns::start().await;
            dns.set_a("origins", vec![Ipv4Addr::new(10, 0, 0, 1)], 1);
        });
    }

    #[test]
    fn fqdn_appends_the_zone_once() {
        assert_eq!(TestDns::fqdn("origins"), "origins.baton.test.");
        assert_eq!(TestDns::fqdn("origins.baton.test"), "origins.baton.test.");
        assert_eq!(TestDns::fqdn("origins.baton.test."), "origins.baton.test.");
        assert_eq!(TestDns::fqdn("a.b"), "a.b.baton.test.");
    }
}
