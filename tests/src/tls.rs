//! TLS for the tests: a throw-away CA and certificates made at test time
//! (rcgen), the flags that give them to an origin or an edge, and a
//! verifying client (rustls, ring) to see which certificate a listener
//! presents.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A test CA in a temp dir, issuing leaf certificates on demand.
pub struct TestPki {
    dir: tempfile::TempDir,
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM), what clients trust.
    pub ca: PathBuf,
}

/// A certificate chain and key as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// DER of the leaf, to recognize it on the wire.
    pub der: Vec<u8>,
}

impl TestPki {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> TestPki {
        let dir = tempfile::Builder::new()
            .prefix("baton-pki-")
            .tempdir()
            .expect("temp dir for the test PKI");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signing the CA");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).expect("writing ca.pem");
        TestPki {
            issuer: Issuer::new(params, key),
            dir,
            ca,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A leaf for `names` (DNS names or IP addresses), written as
    /// `{stem}.pem` and `{stem}.key` (chain: the leaf, then the CA).
    pub fn issue(&self, stem: &str, names: &[&str]) -> CertFiles {
        let files = CertFiles {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
            der: Vec::new(),
        };
        self.issue_to(&files.cert, &files.key, names)
    }

    /// A leaf for `names` written to `cert` and `key` (replacing them: a
    /// certificate renewal).
    pub fn issue_to(&self, cert: &Path, key: &Path, names: &[&str]) -> CertFiles {
        let leaf_key = KeyPair::generate().expect("leaf key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let params = CertificateParams::new(names).expect("leaf params");
        let leaf = params
            .signed_by(&leaf_key, &self.issuer)
            .expect("signing the leaf");
        let ca_pem = std::fs::read_to_string(&self.ca).expect("reading ca.pem");
        // Key first, then the certificate: a watcher polling between the
        // two writes sees a mismatch, refuses it, and takes the pair when
        // the certificate lands.
        std::fs::write(key, leaf_key.serialize_pem()).expect("writing the key");
        std::fs::write(cert, format!("{}{}", leaf.pem(), ca_pem)).expect("writing the chain");
        CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            der: leaf.der().to_vec(),
        }
    }
}

impl CertFiles {
    /// `--tls-cert FILE --tls-key FILE`.
    pub fn server_args(&self) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }
}

/// A loopback address free now (bound to port 0, then released).
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    listener.local_addr().expect("local_addr")
}

/// A client trusting only `ca`.
pub fn client_config(ca: &Path) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("reading the CA") {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("adding the CA");
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    Arc::new(config)
}

/// TLS to `addr`, verified against `ca` for `name`.
pub async fn connect(
    addr: SocketAddr,
    name: &str,
    ca: &Path,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let server_name = ServerName::try_from(name.to_owned()).context("server name")?;
    let stream = TlsConnector::from(client_config(ca))
        .connect(server_name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr} as {name}"))?;
    Ok(stream)
}

/// The leaf certificate (DER) `addr` presents to a new connection.
pub async fn presented_leaf(addr: SocketAddr, name: &str, ca: &Path) -> anyhow::Result<Vec<u8>> {
    let stream = connect(addr, name, ca).await?;
    let (_, session) = stream.get_ref();
    let leaf = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .context("no peer certificate")?;
    Ok(leaf.as_ref().to_vec())
}

/// An origin with an RTMPS listener (certificate for 127.0.0.1 and
/// localhost from `pki`) besides its plain ones, started with `extra`;
/// returns it with its RTMPS address.
pub async fn start_tls_origin(pki: &TestPki, extra: &[&str]) -> (crate::Node, SocketAddr) {
    let rtmps = free_addr();
    let stem = format!("origin-{}", rtmps.port());
    let cert = pki.issue(&stem, &["127.0.0.1", "localhost"]);
    let node = crate::Node::builder()
        .args(["--rtmps".to_string(), rtmps.to_string()])
        .args(cert.server_args())
        .args(extra.iter().copied())
        .start()
        .await;
    (node, rtmps)
}

/// An edge reaching each of `origins` (with its RTMPS address) over
/// RTMPS, verified against `pki`'s CA: `--origin RTMPS,api=API,tls`
/// for each, `--origin-ca CA`.
pub fn edge_tls_origins(
    edge: crate::NodeBuilder,
    origins: &[(&crate::Node, SocketAddr)],
    pki: &TestPki,
) -> crate::NodeBuilder {
    origins
        .iter()
        .fold(edge, |edge, (origin, rtmps)| {
            edge.arg("--origin")
                .arg(format!("{rtmps},api={},tls", origin.api_addr()))
        })
        .arg("--origin-ca")
        .arg(&pki.ca)
}
