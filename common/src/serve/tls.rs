//! TLS on the client listeners (RTMPS, HTTPS-FLV), written once for both
//! roles: rustls with the ring provider, a certificate that can be
//! replaced while the process runs, and the accept glue that turns a TCP
//! connection into a TLS one before the RTMP or HTTP-FLV code sees it.
//!
//! The certificate and key (PEM files) are read at start-up, then again
//! on SIGHUP and whenever either file's modification time changes (polled
//! every `tls_watch_interval`). A reload swaps the [`CertifiedKey`] new
//! handshakes are answered with; sessions already established keep the
//! keys they negotiated, so no connection is dropped. Files that do not
//! load (unreadable, not PEM, no certificate, a key that does not match
//! the certificate) are refused with a logged reason and the old
//! certificate stays.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::accept::{accept_loop, ListenerKind};
use super::ServerContext;

/// The TLS part of the settings: where the TLS listeners are and which
/// files hold the certificate chain and its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// RTMPS listen address (publish and play over TLS).
    pub rtmps: Option<SocketAddr>,
    /// HTTPS-FLV listen address (the HTTP-FLV and viewer URLs over TLS).
    pub https: Option<SocketAddr>,
    /// PEM: the certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// PEM: the private key of the leaf (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// How often the files' modification times are checked.
    pub watch_interval: Duration,
}

impl TlsSettings {
    /// Whether any TLS listener is configured.
    pub fn enabled(&self) -> bool {
        self.rtmps.is_some() || self.https.is_some()
    }

    /// Why these settings cannot run, if they cannot.
    pub fn problem(&self) -> Option<&'static str> {
        match (self.enabled(), &self.cert, &self.key) {
            (true, None, _) | (true, _, None) => {
                Some("--rtmps/--https need --tls-cert and --tls-key")
            }
            (false, Some(_), _) | (false, _, Some(_)) => {
                Some("--tls-cert/--tls-key given without --rtmps or --https")
            }
            _ if self.watch_interval.is_zero() => Some("tls_watch_interval must be non-zero"),
            _ => None,
        }
    }
}

/// Why a certificate or key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the certificate chain {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("{path} holds no PEM certificate")]
    NoCert { path: PathBuf },
    #[error("cannot read the private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the key {key} does not fit the certificate {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider of every TLS connection Baton makes or accepts.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Read a PEM certificate chain and its key, and check they belong
/// together.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert.to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(private)
        .map_err(|e| TlsError::Key {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| TlsError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}

/// The certificate new handshakes get, replaceable at run time.
pub struct CertStore {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times of (cert, key) at the last load attempt, good or
    /// bad: a refused file is not tried again until it changes.
    seen: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl CertStore {
    /// Load the files; an error if they do not load (a node does not start
    /// with a broken certificate).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let seen = (modified(cert), modified(key));
        let loaded = load_certified_key(cert, key)?;
        Ok(CertStore {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(loaded)),
            seen: Mutex::new(seen),
        })
    }

    /// The certificate answered with now.
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether either file changed since the last attempt.
    pub fn files_changed(&self) -> bool {
        let now = (modified(&self.cert), modified(&self.key));
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != now
    }

    /// Read the files again and use them for new handshakes; on error the
    /// current certificate stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) =
            (modified(&self.cert), modified(&self.key));
        let loaded = load_certified_key(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(())
    }

    /// Reload and log (and count) what came of it.
    pub fn reload_logged(&self, why: &'static str) {
        match self.reload() {
            Ok(()) => {
                metrics::counter!("baton_tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!(why, cert = %self.cert.display(), "TLS certificate reloaded; new handshakes use it");
            }
            Err(error) => {
                metrics::counter!("baton_tls_reloads_total", "result" => "refused").increment(1);
                tracing::error!(why, %error, "TLS certificate reload refused; keeping the current certificate");
            }
        }
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What the TLS listeners of one process share: the certificate and one
/// acceptor per protocol (HTTPS offers ALPN `http/1.1`, RTMPS none).
#[derive(Clone)]
pub struct ServerTls {
    pub store: Arc<CertStore>,
    pub rtmps: TlsAcceptor,
    pub https: TlsAcceptor,
}

impl ServerTls {
    /// `None` when no TLS listener is configured.
    pub fn from_settings(settings: &TlsSettings) -> Result<Option<Self>, TlsError> {
        if let Some(problem) = settings.problem() {
            return Err(TlsError::Config(problem.to_string()));
        }
        let (Some(cert), Some(key)) = (&settings.cert, &settings.key) else {
            return Ok(None);
        };
        let store = Arc::new(CertStore::load(cert, key)?);
        let config = |alpn: Vec<Vec<u8>>| -> Result<TlsAcceptor, TlsError> {
            let mut config = ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| TlsError::Config(e.to_string()))?
                .with_no_client_auth()
                .with_cert_resolver(store.clone());
            config.alpn_protocols = alpn;
            Ok(TlsAcceptor::from(Arc::new(config)))
        };
        Ok(Some(ServerTls {
            rtmps: config(Vec::new())?,
            https: config(vec![b"http/1.1".to_vec()])?,
            store: store.clone(),
        }))
    }

    /// Reload on SIGHUP and when the files change, until `stop`.
    pub fn spawn_watcher(&self, interval: Duration, stop: CancellationToken) {
        let store = self.store.clone();
        let hangup =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(|e| {
                tracing::warn!(error = %e, "cannot watch SIGHUP; certificates reload on file change only");
            });
        tokio::spawn(async move {
            let mut hangup = hangup.ok();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    Some(()) = async { hangup.as_mut()?.recv().await } => store.reload_logged("SIGHUP"),
                    _ = tick.tick() => {
                        if store.files_changed() {
                            store.reload_logged("file changed");
                        }
                    }
                }
            }
        });
    }
}

/// Without TLS, SIGHUP (which would otherwise end the process) is logged
/// and ignored, so a reload signal sent to every node is harmless.
pub fn ignore_hangup(stop: CancellationToken) {
    let Ok(mut hangup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
    else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = hangup.recv() => tracing::info!("SIGHUP: nothing to reload (no TLS listener)"),
            }
        }
    });
}

/// Accept TLS connections on `listener`: the TCP accept loop and its
/// limits as for plain listeners, then the handshake (bounded by
/// `handshake_timeout`, ended by a fast exit), then `handle` with the
/// decrypted stream. Failed handshakes are logged and counted.
pub async fn serve_tls<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    ctx: Arc<ServerContext>,
    acceptor: TlsAcceptor,
    handle: F,
) where
    F: Fn(TlsStream<TcpStream>, SocketAddr, Arc<ServerContext>) -> Fut
        + Clone
        + Send
        + Sync
        + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    accept_loop(
        name,
        listener,
        ctx,
        ListenerKind::Clients,
        move |tcp, peer, ctx| {
            let (acceptor, handle) = (acceptor.clone(), handle.clone());
            async move {
                let _ = tcp.set_nodelay(true);
                let limit = ctx.settings.handshake_timeout;
                let handshake = tokio::select! {
                    result = tokio::time::timeout(limit, acceptor.accept(tcp)) => result,
                    _ = ctx.shutdown.close_all.cancelled() => return,
                };
                let refused = match handshake {
                    Ok(Ok(stream)) => return handle(stream, peer, ctx).await,
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no TLS handshake within handshake_timeout ({limit:?})"),
                };
                metrics::counter!("baton_tls_handshake_failures_total", "listener" => name)
                    .increment(1);
                tracing::info!(listener = name, %peer, reason = refused, "TLS handshake failed");
            }
            .instrument(tracing::info_span!("tls", listener = name))
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k, cert.der().to_vec())
    }

    #[test]
    fn reload_swaps_good_files_and_keeps_the_old_on_bad_ones() {
        let dir = std::env::temp_dir().join(format!("baton-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key, first) = write_pair(&dir, "one.test");
        let store = CertStore::load(&cert, &key).unwrap();
        assert_eq!(store.current().cert[0].as_ref(), &first[..]);
        assert!(!store.files_changed());

        // Garbage: refused, the first certificate stays.
        std::fs::write(&cert, "not a certificate").unwrap();
        assert!(matches!(store.reload(), Err(TlsError::NoCert { .. })));
        assert_eq!(store.current().cert[0].as_ref(), &first[..]);

        // A certificate with somebody else's key: refused.
        let (_, _, _) = write_pair(&dir, "two.test");
        let other_key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&key, other_key.serialize_pem()).unwrap();
        assert!(matches!(store.reload(), Err(TlsError::Mismatch { .. })));
        assert_eq!(store.current().cert[0].as_ref(), &first[..]);

        // A good pair: used from now on.
        let (_, _, second) = write_pair(&dir, "three.test");
        store.reload().unwrap();
        assert_eq!(store.current().cert[0].as_ref(), &second[..]);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn listeners_need_both_files() {
        let mut s = TlsSettings {
            rtmps: Some("127.0.0.1:1936".parse().unwrap()),
            watch_interval: Duration::from_secs(2),
            ..TlsSettings::default()
        };
        assert!(s.problem().is_some());
        s.cert = Some("c.pem".into());
        s.key = Some("k.pem".into());
        assert!(s.problem().is_none());
        s.rtmps = None;
        assert!(s.problem().is_some());
    }
}
