//! TLS listeners: rustls (ring provider, TLS 1.2/1.3, ALPN `h2`) in front of kiln's own
//! accept loop.
//!
//! The accept loop ([`super::accept::incoming`]) keeps its connection cap and EMFILE backoff;
//! each accepted socket (holding its permit) is handshaken on a task of its own under
//! `tls.handshake_timeout_ms`, so a slow or hostile client can hold one permit for at most
//! that long and never delays other accepts. Finished handshakes reach tonic through a bounded
//! channel.
//!
//! The rustls `ServerConfig` (certificate, key, client-CA verifier) sits behind a
//! `RwLock<Arc<..>>`: every handshake takes the one in force, and [`TlsState::reload`] (SIGHUP)
//! swaps in a new one only once every file has loaded, so a bad file keeps the old certificate
//! and connections already open are never touched.

use super::accept::Limited;
use crate::auth::TlsPeer;
use crate::auth::{MAX_PEM_BYTES, read_pem_capped};
use crate::config::{ClientAuth, TlsConfig};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tonic::transport::server::Connected;

/// Handshaken connections waiting for tonic to take them.
const READY_QUEUE: usize = 64;

/// A `[tls]` setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    /// A file holds no usable PEM item of the kind needed.
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    /// rustls refused the certificate, key or CA.
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
    /// The client-CA verifier could not be built.
    #[error("tls.client_ca_file: {0}")]
    Verifier(String),
}

/// Why a handshake failed, bucketed for the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailReason {
    /// Slower than `tls.handshake_timeout_ms`.
    Timeout = 0,
    /// A client certificate missing, unverifiable or refused.
    ClientCert = 1,
    /// Not TLS (plain HTTP/2, garbage), or a TLS protocol error or alert.
    Protocol = 2,
    /// The connection failed or closed mid-handshake.
    Io = 3,
}

static FAILURES: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];
static HANDSHAKES: AtomicU64 = AtomicU64::new(0);
static OPEN: AtomicU64 = AtomicU64::new(0);
static RELOAD_FAILURES: AtomicU64 = AtomicU64::new(0);

/// Gauges for `/metrics`.
pub fn gauges() -> Vec<(&'static str, &'static str, i64)> {
    let f = |r: FailReason| FAILURES[r as usize].load(Ordering::Relaxed) as i64;
    vec![
        (
            "tls_handshakes",
            "TLS handshakes completed",
            HANDSHAKES.load(Ordering::Relaxed) as i64,
        ),
        (
            "tls_connections_open",
            "TLS connections open now",
            OPEN.load(Ordering::Relaxed) as i64,
        ),
        (
            "tls_handshake_failures_timeout",
            "TLS handshakes dropped at tls.handshake_timeout_ms",
            f(FailReason::Timeout),
        ),
        (
            "tls_handshake_failures_client_cert",
            "TLS handshakes failed: client certificate missing or not signed by tls.client_ca_file",
            f(FailReason::ClientCert),
        ),
        (
            "tls_handshake_failures_protocol",
            "TLS handshakes failed: not TLS (e.g. plain HTTP/2), or a protocol error or alert",
            f(FailReason::Protocol),
        ),
        (
            "tls_handshake_failures_io",
            "TLS handshakes failed: the connection closed or failed",
            f(FailReason::Io),
        ),
        (
            "tls_reload_failures",
            "Certificate reloads (SIGHUP) refused; the old certificate stays in force",
            RELOAD_FAILURES.load(Ordering::Relaxed) as i64,
        ),
    ]
}

/// The bucket of a handshake error.
pub fn classify(e: &io::Error) -> FailReason {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(
            rustls::Error::NoCertificatesPresented
            | rustls::Error::InvalidCertificate(_)
            | rustls::Error::AlertReceived(rustls::AlertDescription::BadCertificate),
        ) => FailReason::ClientCert,
        Some(_) => FailReason::Protocol,
        None => FailReason::Io,
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, TlsError> {
    read_pem_capped(path)
        .map_err(|source| TlsError::Io {
            path: path.into(),
            source,
        })?
        .ok_or_else(|| TlsError::Pem {
            path: path.into(),
            reason: format!("larger than {MAX_PEM_BYTES} bytes"),
        })
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |reason: String| TlsError::Pem {
        path: path.into(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&read_pem(path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem("no CERTIFICATE in the file".into()));
    }
    Ok(certs)
}

/// Builds the rustls server settings from the files `[tls]` names.
pub fn server_config(c: &TlsConfig) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(Path::new(&c.cert_file))?;
    let key_path = Path::new(&c.key_file);
    let key = PrivateKeyDer::from_pem_slice(&read_pem(key_path)?).map_err(|e| TlsError::Pem {
        path: key_path.into(),
        reason: format!("no usable private key: {e}"),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if c.client_auth == ClientAuth::None {
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for ca in certs(Path::new(&c.client_ca_file))? {
            roots.add(ca)?;
        }
        let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
        let v = if c.client_auth == ClientAuth::Optional {
            v.allow_unauthenticated()
        } else {
            v
        };
        builder.with_client_cert_verifier(v.build().map_err(|e| TlsError::Verifier(e.to_string()))?)
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The TLS settings in force, shared by every TLS listener and swapped on reload.
pub struct TlsState {
    settings: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
    handshake_timeout: Duration,
}

impl TlsState {
    /// Loads the files `[tls]` names.
    pub fn load(settings: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(server_config(settings)?)),
            handshake_timeout: Duration::from_millis(settings.handshake_timeout_ms),
            settings: settings.clone(),
        }))
    }

    /// Re-reads every file; on failure the settings in force stay and the error is returned
    /// (and counted in `kiln_tls_reload_failures`).
    pub fn reload(&self) -> Result<(), TlsError> {
        match server_config(&self.settings) {
            Ok(c) => {
                *self
                    .current
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(c);
                Ok(())
            }
            Err(e) => {
                RELOAD_FAILURES.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

/// The TLS connections of a stream of accepted sockets, each handshaken on its own task.
pub fn incoming<S>(
    plain: S,
    state: Arc<TlsState>,
) -> impl futures::Stream<Item = io::Result<TlsConn>> + Send + 'static
where
    S: futures::Stream<Item = io::Result<Limited<TcpStream>>> + Send + 'static,
{
    use futures::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(READY_QUEUE);
    tokio::spawn(async move {
        let plain = std::pin::pin!(plain);
        let mut plain = plain;
        loop {
            let conn = tokio::select! {
                c = plain.next() => c,
                () = tx.closed() => break,
            };
            let Some(Ok(conn)) = conn else { break };
            let acceptor = state.acceptor();
            let timeout = state.handshake_timeout;
            let tx = tx.clone();
            tokio::spawn(async move {
                let reason = match tokio::time::timeout(timeout, acceptor.accept(conn)).await {
                    Ok(Ok(s)) => {
                        HANDSHAKES.fetch_add(1, Ordering::Relaxed);
                        let _ = tx.send(Ok(TlsConn::new(s))).await;
                        return;
                    }
                    Ok(Err(e)) => {
                        let r = classify(&e);
                        tracing::debug!(error = %e, reason = ?r, "TLS handshake failed");
                        r
                    }
                    Err(_) => FailReason::Timeout,
                };
                FAILURES[reason as usize].fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// A handshaken TLS connection; its client's certificate names reach every request as the
/// [`TlsPeer`] connect info.
pub struct TlsConn {
    io: tokio_rustls::server::TlsStream<Limited<TcpStream>>,
    peer: TlsPeer,
}

impl TlsConn {
    fn new(io: tokio_rustls::server::TlsStream<Limited<TcpStream>>) -> Self {
        let peer = io
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|leaf| TlsPeer::from_der(leaf))
            .unwrap_or_default();
        OPEN.fetch_add(1, Ordering::Relaxed);
        Self { io, peer }
    }
}

impl Drop for TlsConn {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Connected for TlsConn {
    type ConnectInfo = TlsPeer;
    fn connect_info(&self) -> TlsPeer {
        self.peer.clone()
    }
}

forward_io!(read TlsConn);

forward_io!(write TlsConn);

#[cfg(test)]
mod tests;
