//! Who may do what: the tokens file, the rights table built from it, and the decision for one
//! request (its token, or its Unix peer uid, or anonymous).
//!
//! Tokens are stored only as SHA-256 hex: a stolen file does not give a usable token. A
//! presented token is hashed and compared with every principal's digest in constant time, so
//! timing does not tell how much of a guess was right. The table sits behind a
//! `RwLock<Arc<..>>` so SIGHUP swaps it without touching connections.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
pub mod admin;
mod bearer;
mod client_tls;
mod tls_peer;

pub use bearer::{AuthChannel, Bearer};
pub use client_tls::{ClientTls, MAX_PEM_BYTES, read_pem_capped};
pub use tls_peer::{MAX_PEER_NAMES, TlsPeer};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// The names of the rights, in bit order.
pub const RIGHT_NAMES: [&str; 5] = ["read", "write", "cache-write", "execute", "bot"];

/// Largest tokens file read (1 MiB): the file is small, and a huge one is a mistake.
pub const MAX_TOKENS_FILE_BYTES: u64 = 1 << 20;
/// Most principals and unix peers in one file.
pub const MAX_ENTRIES: usize = 10_000;
/// Longest principal name.
pub const MAX_NAME_BYTES: usize = 128;

/// One right.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    /// Capabilities, FindMissingBlobs, BatchReadBlobs, ByteStream Read, GetActionResult,
    /// GetTree, Operations reads.
    Read = 0,
    /// Uploads: BatchUpdateBlobs, ByteStream Write.
    Write = 1,
    /// UpdateActionResult.
    CacheWrite = 2,
    /// Execute, WaitExecution, CancelOperation, DeleteOperation.
    Execute = 3,
    /// The Remote Worker API Bots service.
    Bot = 4,
}

impl Right {
    /// The right's name in files and messages.
    pub fn name(self) -> &'static str {
        RIGHT_NAMES[self as usize]
    }
}

/// A set of rights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rights(u8);

impl Rights {
    /// Every right.
    pub const ALL: Rights = Rights(0b1_1111);
    /// No right.
    pub const NONE: Rights = Rights(0);

    /// Whether `r` is in the set.
    pub fn has(self, r: Right) -> bool {
        self.0 & (1 << r as u8) != 0
    }

    /// Parses names (`read`, `write`, ...).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, AuthFileError> {
        let mut bits = 0u8;
        for n in names {
            let n = n.as_ref();
            let i = RIGHT_NAMES
                .iter()
                .position(|r| *r == n)
                .ok_or_else(|| AuthFileError::Invalid(format!("unknown right {n:?}")))?;
            bits |= 1 << i;
        }
        Ok(Self(bits))
    }

    /// The names of the rights in the set.
    pub fn names(self) -> Vec<&'static str> {
        (0..RIGHT_NAMES.len())
            .filter(|i| self.0 & (1 << i) != 0)
            .map(|i| RIGHT_NAMES[i])
            .collect()
    }
}

/// A tokens file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// The file could not be read or written.
    #[error("tokens file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema.
    #[error("tokens file: {0}")]
    Parse(#[from] toml::de::Error),
    /// A value out of range.
    #[error("tokens file: {0}")]
    Invalid(String),
}

/// One `[[principal]]` of the tokens file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrincipalEntry {
    /// Name, shown in logs and metrics.
    pub name: String,
    /// SHA-256 of the token, lowercase hex.
    pub token_sha256: String,
    /// Rights by name.
    pub rights: Vec<String>,
}

/// One `[[unix_peer]]`: rights for connections on a Unix socket from this uid.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnixPeerEntry {
    /// The peer's uid (SO_PEERCRED).
    pub uid: u32,
    /// Rights by name.
    pub rights: Vec<String>,
}

/// One `[[tls_client]]`: rights for TLS connections whose verified client certificate carries
/// this name as its subject CN, a DNS SAN or a URI SAN (`client_auth` optional or required).
/// The caller is named `tls:<subject>` in logs and metrics.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsClientEntry {
    /// The certificate name to match (exactly, case-sensitive).
    pub subject: String,
    /// Rights by name.
    pub rights: Vec<String>,
}

/// The tokens file as written.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensFile {
    /// Token holders.
    pub principal: Vec<PrincipalEntry>,
    /// Unix socket peers by uid.
    pub unix_peer: Vec<UnixPeerEntry>,
    /// TLS client certificates by subject name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_client: Vec<TlsClientEntry>,
}

impl TokensFile {
    /// Reads a file (at most [`MAX_TOKENS_FILE_BYTES`]); a missing file is empty.
    pub fn read(path: &Path) -> Result<Self, AuthFileError> {
        use std::io::Read;
        let io = |source| AuthFileError::Io {
            path: path.into(),
            source,
        };
        let f = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => return Err(io(e)),
        };
        let mut text = String::new();
        f.take(MAX_TOKENS_FILE_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(io)?;
        if text.len() as u64 > MAX_TOKENS_FILE_BYTES {
            return Err(AuthFileError::Invalid(format!(
                "{} is larger than {MAX_TOKENS_FILE_BYTES} bytes",
                path.display()
            )));
        }
        Ok(toml::from_str(&text)?)
    }

    /// Writes the file (mode 0600, via a temporary file and rename).
    pub fn write(&self, path: &Path) -> Result<(), AuthFileError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |source| AuthFileError::Io {
            path: path.into(),
            source,
        };
        let text = toml::to_string(self).map_err(|e| AuthFileError::Invalid(e.to_string()))?;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// One known principal.
#[derive(Debug)]
struct Principal {
    name: Arc<str>,
    digest: [u8; 32],
    rights: Rights,
}

/// The checked contents of a tokens file.
#[derive(Debug, Default)]
pub struct Table {
    principals: Vec<Principal>,
    unix_peers: HashMap<u32, Rights>,
    /// Subject name -> (position in the file, caller name, rights).
    tls_clients: HashMap<String, (usize, Arc<str>, Rights)>,
}

impl Table {
    /// Checks a parsed file: names, digests and rights.
    pub fn from_file(file: &TokensFile) -> Result<Self, AuthFileError> {
        if file.principal.len() + file.unix_peer.len() + file.tls_client.len() > MAX_ENTRIES {
            return Err(AuthFileError::Invalid(format!(
                "more than {MAX_ENTRIES} entries"
            )));
        }
        let mut t = Table::default();
        for p in &file.principal {
            if p.name.is_empty() || p.name.len() > MAX_NAME_BYTES || p.name.contains('"') {
                return Err(AuthFileError::Invalid(format!(
                    "principal name {:?} must be 1..={MAX_NAME_BYTES} bytes without quotes",
                    p.name
                )));
            }
            if t.principals.iter().any(|q| *q.name == *p.name) {
                return Err(AuthFileError::Invalid(format!(
                    "principal {:?} appears twice",
                    p.name
                )));
            }
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&p.token_sha256, &mut digest).map_err(|_| {
                AuthFileError::Invalid(format!(
                    "principal {:?}: token_sha256 must be 64 hex digits",
                    p.name
                ))
            })?;
            t.principals.push(Principal {
                name: p.name.as_str().into(),
                digest,
                rights: Rights::parse(&p.rights)?,
            });
        }
        for u in &file.unix_peer {
            t.unix_peers.insert(u.uid, Rights::parse(&u.rights)?);
        }
        for (i, c) in file.tls_client.iter().enumerate() {
            if c.subject.is_empty() || c.subject.len() > MAX_NAME_BYTES || c.subject.contains('"') {
                return Err(AuthFileError::Invalid(format!(
                    "tls_client subject {:?} must be 1..={MAX_NAME_BYTES} bytes without quotes",
                    c.subject
                )));
            }
            let entry = (
                i,
                format!("tls:{}", c.subject).into(),
                Rights::parse(&c.rights)?,
            );
            if t.tls_clients.insert(c.subject.clone(), entry).is_some() {
                return Err(AuthFileError::Invalid(format!(
                    "tls_client {:?} appears twice",
                    c.subject
                )));
            }
        }
        Ok(t)
    }

    /// The `[[tls_client]]` matching one of a certificate's names; the first in file order
    /// when several match (a certificate whose CN and SAN name different entries).
    fn find_tls(&self, names: &[String]) -> Option<&(usize, Arc<str>, Rights)> {
        names
            .iter()
            .filter_map(|n| self.tls_clients.get(n))
            .min_by_key(|e| e.0)
    }

    /// The principal whose token this is. Every digest is compared in full, whatever matches.
    fn find(&self, token: &[u8]) -> Option<&Principal> {
        let d: [u8; 32] = Sha256::digest(token).into();
        let mut found = None;
        for p in &self.principals {
            let mut diff = 0u8;
            for (a, b) in p.digest.iter().zip(d.iter()) {
                diff |= a ^ b;
            }
            if std::hint::black_box(diff) == 0 {
                found = Some(p);
            }
        }
        found
    }
}

/// The SHA-256 hex of a token, as stored in the file.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Who a request is, as far as the rights table can tell.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Principal name, `uid:N` for a Unix peer, `anonymous`.
    pub name: Arc<str>,
    /// What it may do.
    pub rights: Rights,
    /// Whether a token was presented but matched no principal.
    pub unknown_token: bool,
}

#[derive(Default)]
struct Counts {
    last_log: Mutex<Option<Instant>>,
}

/// The label of the per-principal counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PrincipalLabel {
    /// Principal name, `uid:N`, `anonymous` or `unknown-token`.
    pub principal: String,
}

/// The live rights table of a server, shared by every listener.
pub struct Authorizer {
    /// False without a tokens file: everything is allowed.
    enabled: bool,
    path: PathBuf,
    anonymous: Rights,
    table: RwLock<Arc<Table>>,
    counts: Mutex<HashMap<Arc<str>, Arc<Counts>>>,
    /// Requests per caller (`kiln_auth_requests`).
    pub requests: Family<PrincipalLabel, Counter>,
    /// Refused requests per caller (`kiln_auth_denied`).
    pub denied: Family<PrincipalLabel, Counter>,
}

impl Authorizer {
    /// An authorizer that allows everything.
    pub fn open() -> Arc<Self> {
        Arc::new(Self {
            enabled: false,
            path: PathBuf::new(),
            anonymous: Rights::ALL,
            table: RwLock::default(),
            counts: Mutex::default(),
            requests: Family::default(),
            denied: Family::default(),
        })
    }

    /// Loads `path` (must be valid); anonymous requests get `anonymous`.
    pub fn load(path: &Path, anonymous: Rights) -> Result<Arc<Self>, AuthFileError> {
        let table = Table::from_file(&TokensFile::read(path)?)?;
        Ok(Arc::new(Self {
            enabled: true,
            path: path.into(),
            anonymous,
            table: RwLock::new(Arc::new(table)),
            counts: Mutex::default(),
            requests: Family::default(),
            denied: Family::default(),
        }))
    }

    /// The tokens file (empty when auth is off).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a tokens file is in force.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Re-reads the tokens file; on failure the old table stays and the error is returned.
    pub fn reload(&self) -> Result<(), AuthFileError> {
        if !self.enabled {
            return Ok(());
        }
        let table = Table::from_file(&TokensFile::read(&self.path)?)?;
        *self
            .table
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(table);
        Ok(())
    }

    /// The caller of a request with this bearer token and Unix peer uid (if any).
    pub fn identify(&self, token: Option<&[u8]>, unix_uid: Option<u32>) -> Caller {
        self.identify_peer(token, unix_uid, None)
    }

    /// The caller of a request: its bearer token first, then its verified TLS client
    /// certificate, then its Unix peer uid, else anonymous.
    pub fn identify_peer(
        &self,
        token: Option<&[u8]>,
        unix_uid: Option<u32>,
        tls: Option<&TlsPeer>,
    ) -> Caller {
        if !self.enabled {
            return Caller {
                name: "anonymous".into(),
                rights: Rights::ALL,
                unknown_token: false,
            };
        }
        let table = self
            .table
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(token) = token {
            return match table.find(token) {
                Some(p) => Caller {
                    name: p.name.clone(),
                    rights: p.rights,
                    unknown_token: false,
                },
                None => Caller {
                    name: "unknown-token".into(),
                    rights: Rights::NONE,
                    unknown_token: true,
                },
            };
        }
        if let Some((_, name, rights)) = tls.and_then(|t| table.find_tls(t.names())) {
            return Caller {
                name: name.clone(),
                rights: *rights,
                unknown_token: false,
            };
        }
        if let Some((uid, r)) = unix_uid.and_then(|u| Some((u, table.unix_peers.get(&u)?))) {
            return Caller {
                name: format!("uid:{uid}").into(),
                rights: *r,
                unknown_token: false,
            };
        }
        Caller {
            name: "anonymous".into(),
            rights: self.anonymous,
            unknown_token: false,
        }
    }

    fn counts(&self, name: &Arc<str>) -> Arc<Counts> {
        let mut m = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Names come from the file (bounded) plus `uid:N` and two fixed ones; cap anyway.
        if m.len() >= MAX_ENTRIES * 2 && !m.contains_key(name) {
            return Arc::default();
        }
        m.entry(name.clone()).or_default().clone()
    }

    /// Counts one request of `caller`; when denied, returns whether to log it (at most once
    /// per principal per minute).
    pub fn record(&self, caller: &Caller, denied: bool) -> bool {
        if !self.enabled {
            return false;
        }
        let label = PrincipalLabel {
            principal: caller.name.to_string(),
        };
        self.requests.get_or_create(&label).inc();
        if !denied {
            return false;
        }
        self.denied.get_or_create(&label).inc();
        let c = self.counts(&caller.name);
        let mut last = c
            .last_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_mins(1)) {
            return false;
        }
        *last = Some(now);
        true
    }

    /// `(principal, requests, denied)` for every caller refused at least once.
    pub fn counters(&self) -> Vec<(String, u64, u64)> {
        let m = self
            .counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut v: Vec<_> = m
            .keys()
            .map(|n| {
                let label = PrincipalLabel {
                    principal: n.to_string(),
                };
                (
                    n.to_string(),
                    self.requests.get_or_create(&label).get(),
                    self.denied.get_or_create(&label).get(),
                )
            })
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(rights: &[&str]) -> TokensFile {
        TokensFile {
            principal: vec![PrincipalEntry {
                name: "ci".into(),
                token_sha256: token_sha256("secret"),
                rights: rights.iter().map(|s| (*s).to_string()).collect(),
            }],
            unix_peer: vec![UnixPeerEntry {
                uid: 7,
                rights: vec!["bot".into()],
            }],
            tls_client: vec![
                TlsClientEntry {
                    subject: "ci.example".into(),
                    rights: vec!["read".into(), "write".into()],
                },
                TlsClientEntry {
                    subject: "spiffe://example/laptop".into(),
                    rights: vec!["read".into()],
                },
            ],
        }
    }

    #[test]
    fn tls_client_names_give_rights_after_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.toml");
        file(&["read", "cache-write"]).write(&p).unwrap();
        let a = Authorizer::load(&p, Rights::NONE).unwrap();
        let peer = |names: &[&str]| TlsPeer::from_names(names.iter().map(|s| (*s).to_string()));
        let ci = a.identify_peer(None, None, Some(&peer(&["x", "ci.example"])));
        assert_eq!(&*ci.name, "tls:ci.example");
        assert!(ci.rights.has(Right::Write));
        // Both names match: the entry first in the file wins.
        let both = peer(&["spiffe://example/laptop", "ci.example"]);
        assert_eq!(
            &*a.identify_peer(None, None, Some(&both)).name,
            "tls:ci.example"
        );
        // A token outranks the certificate.
        let t = a.identify_peer(Some(b"secret"), None, Some(&both));
        assert_eq!(&*t.name, "ci");
        // An unknown name is anonymous.
        let anon = a.identify_peer(None, None, Some(&peer(&["other"])));
        assert_eq!(anon.rights, Rights::NONE);
        assert_eq!(&*anon.name, "anonymous");
    }

    #[test]
    fn tokens_and_peers_get_their_rights() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.toml");
        file(&["read", "write"]).write(&p).unwrap();
        let a = Authorizer::load(&p, Rights::NONE).unwrap();
        let c = a.identify(Some(b"secret"), None);
        assert_eq!(&*c.name, "ci");
        assert!(c.rights.has(Right::Write) && !c.rights.has(Right::CacheWrite));
        assert!(a.identify(Some(b"wrong"), None).unknown_token);
        assert!(a.identify(None, Some(7)).rights.has(Right::Bot));
        assert_eq!(a.identify(None, Some(8)).rights, Rights::NONE);
        assert!(a.record(&c, true));
        assert!(
            !a.record(&c, true),
            "second denial in a minute is not logged"
        );
        assert_eq!(a.counters(), vec![("ci".into(), 2, 2)]);
    }

    #[test]
    fn bad_files_are_refused_and_reload_keeps_the_old_table() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.toml");
        std::fs::write(
            &p,
            "[[principal]]\nname = \"x\"\ntoken_sha256 = \"zz\"\nrights = []\n",
        )
        .unwrap();
        assert!(Authorizer::load(&p, Rights::NONE).is_err());
        file(&["nonsense"]).write(&p).unwrap();
        assert!(Authorizer::load(&p, Rights::NONE).is_err());
        file(&["read"]).write(&p).unwrap();
        let a = Authorizer::load(&p, Rights::NONE).unwrap();
        std::fs::write(&p, "garbage [[").unwrap();
        assert!(a.reload().is_err());
        assert!(a.identify(Some(b"secret"), None).rights.has(Right::Read));
    }
}
