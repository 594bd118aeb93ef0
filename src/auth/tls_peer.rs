//! The names of a TLS client: read once per connection from its verified certificate, carried
//! to every request of that connection in tonic's connect info.

use std::sync::Arc;
use x509_parser::extensions::GeneralName;

/// Most names taken from one certificate: a client certificate has a handful; a huge list is
/// not worth the memory or the lookups.
pub const MAX_PEER_NAMES: usize = 32;

/// A TLS connection's client identity: the subject CNs, DNS SANs and URI SANs of its leaf
/// certificate (only present once rustls has verified the chain against `tls.client_ca_file`).
#[derive(Clone, Debug, Default)]
pub struct TlsPeer {
    names: Arc<[String]>,
}

impl TlsPeer {
    /// The names of a DER leaf certificate; a certificate that does not parse gives none.
    pub fn from_der(leaf: &[u8]) -> Self {
        let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf) else {
            return Self::default();
        };
        let mut names: Vec<String> = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_string)
            .take(MAX_PEER_NAMES)
            .collect();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for n in &san.value.general_names {
                if names.len() >= MAX_PEER_NAMES {
                    break;
                }
                match n {
                    GeneralName::DNSName(s) | GeneralName::URI(s) => names.push((*s).to_string()),
                    _ => {}
                }
            }
        }
        Self::from_names(names)
    }

    /// A peer with these names (tests, and [`Self::from_der`]).
    pub fn from_names(names: impl IntoIterator<Item = String>) -> Self {
        Self {
            names: names.into_iter().take(MAX_PEER_NAMES).collect(),
        }
    }

    /// The certificate's names: CNs first, then DNS and URI SANs in certificate order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}
