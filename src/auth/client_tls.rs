//! The client side of TLS for `kiln worker` and `kiln bench`: `grpcs://HOST:PORT` with
//! `--tls-ca` (the CA that signed the server's certificate; the system roots are not used) and,
//! for mutual TLS, `--tls-cert`/`--tls-key`.

use super::AuthFileError;
use std::path::{Path, PathBuf};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Largest PEM file read (a chain of a few certificates is a few KiB).
/// Largest certificate or key file read.
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// TLS settings of a client; all empty means the system's defaults are not used and a
/// `grpcs://` target needs `ca`.
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    /// CA certificates (PEM) that sign the server's certificate.
    pub ca: Option<PathBuf>,
    /// The client's certificate chain (PEM), for mutual TLS.
    pub cert: Option<PathBuf>,
    /// The client's private key (PEM).
    pub key: Option<PathBuf>,
}

/// Reads a PEM file of at most [`MAX_PEM_BYTES`]: `Ok(None)` when it is larger (a certificate
/// or key file is a few KiB; anything else is refused before more memory is spent on it).
/// Shared by the client side here and the server's `[tls]` files.
pub fn read_pem_capped(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut buf)?;
    Ok((buf.len() as u64 <= MAX_PEM_BYTES).then_some(buf))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, AuthFileError> {
    read_pem_capped(path)
        .map_err(|source| AuthFileError::Io {
            path: path.into(),
            source,
        })?
        .ok_or_else(|| {
            AuthFileError::Invalid(format!(
                "{} is larger than {MAX_PEM_BYTES} bytes",
                path.display()
            ))
        })
}

impl ClientTls {
    /// The tonic TLS settings for a server named `host` (checked against its certificate).
    pub fn config(&self, host: &str) -> Result<ClientTlsConfig, AuthFileError> {
        let Some(ca) = &self.ca else {
            return Err(AuthFileError::Invalid(
                "a grpcs:// server needs --tls-ca FILE (the CA that signed its certificate)".into(),
            ));
        };
        let mut c = ClientTlsConfig::new()
            .domain_name(host.trim_start_matches('[').trim_end_matches(']'))
            .ca_certificate(Certificate::from_pem(read_pem(ca)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                c = c.identity(Identity::from_pem(read_pem(cert)?, read_pem(key)?));
            }
            (None, None) => {}
            _ => {
                return Err(AuthFileError::Invalid(
                    "--tls-cert and --tls-key go together".into(),
                ));
            }
        }
        Ok(c)
    }

    /// Whether any TLS option was given (then a plain `grpc://` target is a mistake).
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM file one byte past the cap is refused (nothing over the cap is kept in memory);
    /// one at the cap is read whole.
    #[test]
    fn pem_files_past_the_cap_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("at.pem");
        let past = dir.path().join("past.pem");
        std::fs::write(&at, vec![b'A'; MAX_PEM_BYTES as usize]).unwrap();
        std::fs::write(&past, vec![b'A'; MAX_PEM_BYTES as usize + 1]).unwrap();
        assert_eq!(
            read_pem_capped(&at).unwrap().map(|b| b.len() as u64),
            Some(MAX_PEM_BYTES)
        );
        assert!(read_pem_capped(&past).unwrap().is_none());
        let e = read_pem(&past).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
    }
}
