//! The Remote Asset API's logic (`build.bazel.remote.asset.v1`): resolving a URI and its
//! qualifiers to content in the CAS, from what was pushed, from what the CAS already holds
//! (a `checksum.sri` SHA-256), or by downloading it from origin.
//!
//! A download is verified against every `checksum.sri` before a byte is stored, then stored in
//! the CAS and remembered under its URI and qualifiers, so the same fetch is answered without
//! touching the origin again. Pushed assets are trusted as the spec allows (their qualifiers are
//! the client's word) but must name content already in the CAS. Directories are answered only
//! from pushes: kiln does not download and unpack archives.
//!
//! This layer sits on `cas` (never the engine) and knows neither protos nor gRPC: `api/asset.rs`
//! converts, `api/status.rs` chooses codes.

mod error;
pub mod fetcher;
pub mod memory;
pub mod qualifiers;

pub use error::{AssetError, FetchError};
pub use fetcher::{FetchLimits, Fetcher};
pub use qualifiers::Qualifiers;

use crate::cas::Cas;
use crate::digest::{Digest, DigestFunction};
use memory::{Identity, Kind, Record};
use prometheus_client::metrics::counter::Counter;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Most URIs in one request.
pub const MAX_URIS: usize = 64;
/// Longest URI, bytes.
pub const MAX_URI_BYTES: usize = 8192;

/// Counters of the Fetch and Push services, registered by `setup` in `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct AssetMetrics {
    /// Fetches answered without a download (pushed, remembered, or found in the CAS by hash).
    pub hits: Counter,
    /// Fetches answered by a download from origin.
    pub downloads: Counter,
    /// Downloads that failed (origin error, timeout, too large, checksum mismatch, refused).
    pub failures: Counter,
    /// Bytes downloaded and stored.
    pub downloaded_bytes: Counter,
    /// URIs remembered by PushBlob and PushDirectory.
    pub pushes: Counter,
}

/// A Fetch request, validated.
pub struct FetchRequest {
    /// Instance name (assets are remembered per instance).
    pub instance: String,
    /// The digest function of the answer.
    pub function: DigestFunction,
    /// Candidate URIs, in the client's order.
    pub uris: Vec<String>,
    /// The qualifiers, the same for every URI.
    pub qualifiers: Qualifiers,
    /// The client's timeout for a download, if it set one.
    pub timeout: Option<Duration>,
    /// Oldest content accepted (Unix seconds; 0 = any).
    pub oldest: u64,
}

/// A Push request, validated.
pub struct PushRequest {
    /// Instance name.
    pub instance: String,
    /// URIs that name the content.
    pub uris: Vec<String>,
    /// Qualifiers (trusted).
    pub qualifiers: Qualifiers,
    /// The blob or root Directory (its function is the request's).
    pub digest: Digest,
    /// When the association expires (Unix seconds; 0 = never).
    pub expire_at: u64,
}

/// A successful fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// The URI that resolved.
    pub uri: String,
    /// The content (blob, or root Directory).
    pub digest: Digest,
    /// When the association expires (Unix seconds; 0 = not known).
    pub expire_at: u64,
}

/// A fetch's result: the content, or the failure outside kiln's control with the URI it came
/// from (the response's inline status).
pub type FetchOutcome = Result<Fetched, (String, FetchError)>;

/// The Fetch and Push services' state.
#[derive(Clone)]
pub struct Assets {
    cas: Cas,
    fetcher: Option<Arc<Fetcher>>,
    metrics: AssetMetrics,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn check_uris(uris: &[String]) -> Result<(), AssetError> {
    let bad = |m: String| Err(AssetError::InvalidArgument(m));
    if uris.is_empty() {
        return bad("at least one URI is required".into());
    }
    if uris.len() > MAX_URIS {
        return bad(format!("{} URIs, at most {MAX_URIS}", uris.len()));
    }
    if let Some(u) = uris.iter().find(|u| u.len() > MAX_URI_BYTES) {
        return bad(format!(
            "a URI of {} bytes, at most {MAX_URI_BYTES}",
            u.len()
        ));
    }
    if uris.iter().any(String::is_empty) {
        return bad("an empty URI".into());
    }
    Ok(())
}

impl Assets {
    /// Assets over `cas`, downloading with `fetcher` (`None`: never download).
    pub fn new(cas: Cas, fetcher: Option<Fetcher>) -> Self {
        Self {
            cas,
            fetcher: fetcher.map(Arc::new),
            metrics: AssetMetrics::default(),
        }
    }

    /// The counters, for `/metrics`.
    pub fn metrics(&self) -> &AssetMetrics {
        &self.metrics
    }

    /// The remembered asset among `uris` usable now, if its content is still in the CAS.
    async fn recall_any(
        &self,
        kind: Kind,
        req: &FetchRequest,
    ) -> Result<Option<Fetched>, AssetError> {
        let now = now();
        for uri in &req.uris {
            let who = Identity {
                kind,
                instance: &req.instance,
                function: req.function,
                uri,
                qualifiers: &req.qualifiers.identity,
            };
            if let Some(r) = memory::recall(&self.cas, &who).await?
                && r.usable(now, req.oldest)
                && self.cas.contains(&r.digest)?
            {
                return Ok(Some(Fetched {
                    uri: uri.clone(),
                    digest: r.digest,
                    expire_at: r.expire_at,
                }));
            }
        }
        Ok(None)
    }

    async fn remember(
        &self,
        kind: Kind,
        instance: &str,
        uri: &str,
        qualifiers: &Qualifiers,
        digest: Digest,
        expire_at: u64,
    ) -> Result<(), AssetError> {
        let who = Identity {
            kind,
            instance,
            function: digest.function,
            uri,
            qualifiers: &qualifiers.identity,
        };
        let record = Record {
            kind,
            digest,
            stored_at: now(),
            expire_at,
        };
        memory::remember(&self.cas, &who, &record).await?;
        Ok(())
    }

    /// FetchBlob: remembered, then in the CAS by checksum, then downloaded.
    pub async fn fetch_blob(&self, req: FetchRequest) -> Result<FetchOutcome, AssetError> {
        check_uris(&req.uris)?;
        if let Some(hit) = self.recall_any(Kind::Blob, &req).await? {
            self.metrics.hits.inc();
            return Ok(Ok(hit));
        }
        // Past this point kiln vouches for the content itself, so it must honour every
        // qualifier (the spec: reject the ones it does not support).
        if !req.qualifiers.unsupported.is_empty() {
            return Err(AssetError::UnsupportedQualifiers(
                req.qualifiers.unsupported.clone(),
            ));
        }
        if req.function == DigestFunction::Sha256 {
            for hash in req.qualifiers.sha256() {
                // Content with this hash is what was asked for, whatever its URI: nothing to
                // remember (the lookup is as cheap as a remembered record's).
                if let Some(digest) = self.cas.find_by_hash(req.function, hash).await? {
                    self.metrics.hits.inc();
                    return Ok(Ok(Fetched {
                        uri: req.uris[0].clone(),
                        digest,
                        expire_at: 0,
                    }));
                }
            }
        }
        let mut last = None;
        for (index, uri) in req.uris.iter().enumerate() {
            match self.download(&req, index, uri).await {
                Ok(digest) => {
                    self.metrics.downloads.inc();
                    self.metrics.downloaded_bytes.inc_by(digest.size);
                    return Ok(Ok(Fetched {
                        uri: uri.clone(),
                        digest,
                        expire_at: 0,
                    }));
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    tracing::info!(error = %e, "remote asset download failed");
                    last = Some((uri.clone(), e));
                }
            }
        }
        Ok(Err(last.expect("at least one URI")))
    }

    /// Downloads one URI, verifies it, stores it and remembers it.
    async fn download(
        &self,
        req: &FetchRequest,
        index: usize,
        uri: &str,
    ) -> Result<Digest, FetchError> {
        let not_pushed = || {
            FetchError::NotFound(format!(
                "no asset was pushed for {uri:?} with these qualifiers, and it is not an \
                 http(s) URL kiln can download"
            ))
        };
        let url = reqwest::Url::parse(uri).map_err(|_| not_pushed())?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(not_pushed());
        }
        let Some(fetcher) = &self.fetcher else {
            return Err(FetchError::Denied(
                "kiln downloads nothing (remote_asset.allowed_schemes is empty)".into(),
            ));
        };
        let max = fetcher.limits().max_bytes.min(self.cas.max_blob_size());
        let timeout = req.timeout.unwrap_or(fetcher.limits().timeout);
        let data = fetcher
            .download(&url, &req.qualifiers.headers_for(index), timeout, max)
            .await?;
        // Hashing a large body is CPU work: off the async threads.
        let quals = req.qualifiers.clone();
        let function = req.function;
        let checked = data.clone();
        let digest = tokio::task::spawn_blocking(move || {
            quals.verify(&checked)?;
            Ok::<_, String>(function.digest_of(&checked))
        })
        .await
        .map_err(|e| FetchError::Unavailable(format!("verifying {uri}: {e}")))?
        .map_err(|m| FetchError::ChecksumMismatch(format!("{uri}: {m}; nothing was stored")))?;
        // Hashed above, from these very bytes.
        self.cas.put_hashed(&digest, data).await?;
        self.remember(Kind::Blob, &req.instance, uri, &req.qualifiers, digest, 0)
            .await
            .map_err(|e| match e {
                AssetError::Cas(e) => FetchError::Cas(e),
                e => FetchError::Unavailable(e.to_string()),
            })?;
        Ok(digest)
    }

    /// FetchDirectory: only directories pushed before (kiln does not download archives).
    pub async fn fetch_directory(&self, req: &FetchRequest) -> Result<FetchOutcome, AssetError> {
        check_uris(&req.uris)?;
        if let Some(hit) = self.recall_any(Kind::Directory, req).await? {
            self.metrics.hits.inc();
            return Ok(Ok(hit));
        }
        Ok(Err((
            req.uris[0].clone(),
            FetchError::NotFound(format!(
                "no directory was pushed for {:?} with these qualifiers; kiln does not download \
                 directories (push them with PushDirectory)",
                req.uris[0]
            )),
        )))
    }

    /// PushBlob / PushDirectory: remembers every URI for content already in the CAS.
    pub async fn push(&self, kind: Kind, req: PushRequest) -> Result<(), AssetError> {
        check_uris(&req.uris)?;
        if !self.cas.contains(&req.digest)? {
            return Err(AssetError::NotInCas(req.digest));
        }
        for uri in &req.uris {
            self.remember(
                kind,
                &req.instance,
                uri,
                &req.qualifiers,
                req.digest,
                req.expire_at,
            )
            .await?;
            self.metrics.pushes.inc();
        }
        Ok(())
    }
}
