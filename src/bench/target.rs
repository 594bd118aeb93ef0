//! Connecting to a target: `grpc://HOST:PORT` (also `http://`), `grpcs://HOST:PORT` (TLS, with
//! `--tls-ca`) or `unix:PATH`.

use super::BenchError;
use tonic::transport::{Channel, Endpoint};

/// Largest message the bench accepts or sends; batch calls stay within the server's limit.
pub const MAX_MESSAGE: usize = 256 << 20;

/// A parsed target address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A TCP `host:port`.
    Tcp(String),
    /// A TCP `host:port` speaking TLS.
    Tls(String),
    /// A Unix socket path.
    Unix(std::path::PathBuf),
}

impl Target {
    /// Parses `grpc://HOST:PORT`, `http://HOST:PORT` or `unix:PATH` (also `unix://PATH`).
    pub fn parse(s: &str) -> Result<Self, BenchError> {
        if let Some(rest) = s.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(BenchError::Usage(format!("empty socket path in {s:?}")));
            }
            return Ok(Target::Unix(path.into()));
        }
        if let Some(rest) = s.strip_prefix("grpcs://") {
            let rest = rest.trim_end_matches('/');
            if !rest.contains(':') {
                return Err(BenchError::Usage(format!("target {s:?} lacks a port")));
            }
            return Ok(Target::Tls(rest.to_string()));
        }
        let rest = s
            .strip_prefix("grpc://")
            .or_else(|| s.strip_prefix("http://"))
            .ok_or_else(|| {
                BenchError::Usage(format!(
                    "unsupported target {s:?}: use grpc://HOST:PORT, grpcs://HOST:PORT or unix:PATH"
                ))
            })?;
        let rest = rest.trim_end_matches('/');
        if !rest.contains(':') {
            return Err(BenchError::Usage(format!("target {s:?} lacks a port")));
        }
        Ok(Target::Tcp(rest.to_string()))
    }

    /// Opens one HTTP/2 connection (TLS settings only for a `grpcs://` target).
    pub async fn connect(&self) -> Result<Channel, BenchError> {
        self.connect_tls(&crate::auth::ClientTls::default()).await
    }

    /// Opens one HTTP/2 connection, with `tls` for a `grpcs://` target. The connection has
    /// the flow-control windows kiln's server uses (a tuned client: with h2's 64 KiB default
    /// a stream read waits a round trip per 64 KiB).
    pub async fn connect_tls(&self, tls: &crate::auth::ClientTls) -> Result<Channel, BenchError> {
        if tls.is_set() && !matches!(self, Target::Tls(_)) {
            return Err(BenchError::Usage(
                "--tls-* options need a grpcs://HOST:PORT target".into(),
            ));
        }
        let fail = |e: tonic::transport::Error| {
            BenchError::Connect(format!(
                "{}: {e} ({:?})",
                self,
                std::error::Error::source(&e)
            ))
        };
        match self {
            Target::Tcp(hostport) => {
                tuned(Endpoint::from_shared(format!("http://{hostport}")).map_err(fail)?)
                    .connect()
                    .await
                    .map_err(fail)
            }
            Target::Tls(hostport) => {
                let endpoint =
                    Endpoint::from_shared(format!("https://{hostport}")).map_err(fail)?;
                let host = endpoint.uri().host().unwrap_or("localhost").to_string();
                let config = tls
                    .config(&host)
                    .map_err(|e| BenchError::Usage(e.to_string()))?;
                tuned(endpoint.tls_config(config).map_err(fail)?)
                    .connect()
                    .await
                    .map_err(fail)
            }
            Target::Unix(path) => {
                let path = path.clone();
                // The URI is a placeholder: the connector below ignores it.
                tuned(Endpoint::try_from("http://[::]:50051").map_err(fail)?)
                    .connect_with_connector(tower::service_fn(move |_| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    }))
                    .await
                    .map_err(fail)
            }
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Tcp(h) => write!(f, "grpc://{h}"),
            Target::Tls(h) => write!(f, "grpcs://{h}"),
            Target::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// An endpoint with the client settings of every bench connection: no Nagle delay and the
/// server's HTTP/2 windows.
fn tuned(endpoint: Endpoint) -> Endpoint {
    endpoint
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::server::STREAM_WINDOW_BYTES)
        .initial_connection_window_size(crate::server::CONNECTION_WINDOW_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("grpc://127.0.0.1:8980").unwrap(),
            Target::Tcp("127.0.0.1:8980".into())
        );
        assert_eq!(
            Target::parse("unix:/tmp/k.sock").unwrap(),
            Target::Unix("/tmp/k.sock".into())
        );
        assert_eq!(
            Target::parse("grpcs://box.example:8443").unwrap(),
            Target::Tls("box.example:8443".into())
        );
        assert!(Target::parse("ftp://x:1").is_err());
        assert!(Target::parse("grpc://nohost").is_err());
    }
}
