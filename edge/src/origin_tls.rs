//! TLS from the edge to its origins (RTMPS): which certificates are
//! trusted, which name an origin's certificate must carry, and the stream
//! type an upstream runs on (plain TCP or TLS over it).
//!
//! Trust: the CA certificates of `--origin-ca`, or else the system's roots
//! (`rustls-native-certs`: the store the operator already manages, e.g.
//! `update-ca-certificates`, with private CAs and without rebuilding the
//! edge, where compiled-in roots such as `webpki-roots` would need a new
//! build to change). An origin whose certificate does not verify is never
//! used: the handshake fails with the reason, counted in
//! `baton_edge_origin_tls_refusals_total`, and the caller marks the origin
//! failed like any other upstream that cannot serve.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use anyhow::{anyhow, bail, Context as _};
use bytes::BytesMut;
use futures_util::FutureExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::settings::{EdgeSettings, OriginAddr};

/// How this edge connects to origins marked `tls`.
#[derive(Clone)]
pub struct OriginTls {
    /// `None` when no origin uses TLS (nothing is loaded then).
    connector: Option<TlsConnector>,
    /// `--origin-tls-name`.
    default_name: Option<String>,
}

impl OriginTls {
    /// Load the trusted roots if any origin uses TLS; an error (the edge
    /// does not start) if there are none to trust.
    pub fn new(settings: &EdgeSettings) -> anyhow::Result<Self> {
        let wanted = settings.origins.iter().any(|o| o.tls.is_some())
            || settings.origin_dns.as_ref().is_some_and(|d| d.tls);
        if !wanted {
            return Ok(OriginTls {
                connector: None,
                default_name: None,
            });
        }
        let roots = match &settings.origin_ca {
            Some(path) => roots_from_file(path)?,
            None => system_roots()?,
        };
        let config = ClientConfig::builder_with_provider(baton_common::serve::tls::provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(OriginTls {
            connector: Some(TlsConnector::from(Arc::new(config))),
            default_name: settings.origin_tls_name.clone(),
        })
    }

    /// The name `origin`'s certificate must carry: its own (`tls-name=`,
    /// or the HOST it was given as), else `--origin-tls-name`, else its IP.
    pub fn server_name(&self, origin: &OriginAddr) -> anyhow::Result<ServerName<'static>> {
        let given = origin
            .tls
            .and_then(|name| name.0)
            .map(str::to_owned)
            .or_else(|| self.default_name.clone());
        match given {
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| anyhow!("{name:?} is not a valid TLS server name: {e}")),
            None => Ok(ServerName::IpAddress(origin.rtmp.ip().into())),
        }
    }

    /// TCP to the origin, then TLS when the origin is marked so.
    pub async fn connect(&self, origin: &OriginAddr) -> anyhow::Result<OriginStream> {
        let tcp = TcpStream::connect(origin.rtmp)
            .await
            .with_context(|| format!("connecting to {}", origin.rtmp))?;
        tcp.set_nodelay(true)?;
        if origin.tls.is_none() {
            return Ok(OriginStream::Plain(tcp));
        }
        let Some(connector) = &self.connector else {
            bail!("{} is a TLS origin but TLS was not set up", origin.rtmp);
        };
        let name = self.server_name(origin)?;
        match connector.connect(name.clone(), tcp).await {
            Ok(stream) => Ok(OriginStream::Tls(Box::new(stream))),
            Err(error) => {
                metrics::counter!("baton_edge_origin_tls_refusals_total").increment(1);
                let name = name.to_str();
                tracing::warn!(origin = %origin.rtmp, %name, %error, "origin refused: TLS handshake failed");
                Err(anyhow!(
                    "TLS with {} (as {name}) failed: {error}",
                    origin.rtmp
                ))
            }
        }
    }
}

fn roots_from_file(path: &Path) -> anyhow::Result<RootCertStore> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow!("cannot read --origin-ca {}: {e}", path.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        bail!(
            "--origin-ca {} holds no usable CA certificate ({ignored} unparsable)",
            path.display()
        );
    }
    Ok(roots)
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    for error in &found.errors {
        tracing::warn!(%error, "a system CA certificate could not be read");
    }
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        bail!("TLS origins need trusted roots: the system has none; give --origin-ca FILE");
    }
    Ok(roots)
}

/// An upstream's connection: TCP, or TLS over TCP.
pub enum OriginStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl OriginStream {
    /// Read what is there without waiting; `WouldBlock` when nothing is
    /// (for TLS: no whole record has arrived and none is buffered).
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            OriginStream::Plain(tcp) => tcp.try_read_buf(buf),
            OriginStream::Tls(tls) => tls
                .read_buf(buf)
                .now_or_never()
                .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into())),
        }
    }

    /// Wait until the socket is readable. After [`Self::try_read_buf`]
    /// returned `WouldBlock`, TLS holds nothing decrypted either, so the
    /// socket is what to wait for.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            OriginStream::Plain(tcp) => tcp.readable().await,
            OriginStream::Tls(tls) => tls.get_ref().0.readable().await,
        }
    }
}

impl AsyncRead for OriginStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            OriginStream::Tls(tls) => Pin::new(tls).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for OriginStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            OriginStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            OriginStream::Tls(tls) => Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            OriginStream::Tls(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            OriginStream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            OriginStream::Tls(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}
