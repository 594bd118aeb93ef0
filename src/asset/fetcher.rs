//! Downloads from origin for FetchBlob: reqwest over rustls (ring, the platform's roots),
//! HTTP/1.1, bounded in time (the whole download, redirects included), in size (Content-Length
//! checked before the body is read, then every chunk as it streams in) and in redirects (each
//! hop to an allowed scheme and host). At most `max_concurrent_downloads` run at once.
//!
//! Unless `remote_asset.allow_private_addresses` is on, kiln downloads only from public
//! addresses: a URL naming a loopback, private, link-local or otherwise local IP is refused,
//! and names are resolved by [`PublicOnly`], which drops such addresses, so a client with the
//! `read` right cannot make the box fetch its own or its network's internal services (cloud
//! metadata at 169.254.169.254, admin ports on 127.0.0.1) and read the answer from the CAS.

use super::FetchError;
use bytes::{Bytes, BytesMut};
use reqwest::{StatusCode, Url, redirect};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_rustls::rustls;

/// Where and how much kiln may download.
#[derive(Clone, Debug)]
pub struct FetchLimits {
    /// Schemes allowed (`http`, `https`); empty = no downloads.
    pub schemes: Vec<String>,
    /// Hosts allowed (`name` or `.suffix`); empty = any.
    pub hosts: Vec<String>,
    /// Longest one download may take.
    pub timeout: Duration,
    /// Largest body.
    pub max_bytes: u64,
    /// Downloads at once.
    pub concurrency: usize,
    /// Redirects followed.
    pub max_redirects: usize,
    /// Whether loopback, private and link-local addresses may be downloaded from.
    pub private_addresses: bool,
}

/// The words of the refusal of a local address (also how a resolver error is recognised).
const LOCAL_ONLY: &str = "is a loopback, private or link-local address";

/// Whether `ip` is reachable on the public internet, as far as kiln should trust a client's URL:
/// not loopback, unspecified, private (RFC 1918, unique-local), link-local, shared (CGNAT),
/// broadcast, multicast or documentation space.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_unspecified()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// A DNS resolver that keeps only public addresses (see [`is_public`]).
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_string();
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> =
                all.iter().copied().filter(|a| is_public(a.ip())).collect();
            if public.is_empty() && !all.is_empty() {
                let msg = format!(
                    "host {host:?} {LOCAL_ONLY} ({}); set remote_asset.allow_private_addresses to \
                     download from it",
                    all[0].ip()
                );
                return Err(msg.into());
            }
            let addrs: reqwest::dns::Addrs = Box::new(public.into_iter());
            Ok(addrs)
        })
    }
}

impl FetchLimits {
    /// Why kiln may not download `url`, if it may not.
    pub fn refuse(&self, url: &Url) -> Option<String> {
        if !self.schemes.iter().any(|s| s == url.scheme()) {
            return Some(format!(
                "kiln does not download {}:// URIs (remote_asset.allowed_schemes: {:?})",
                url.scheme(),
                self.schemes
            ));
        }
        let host = url.host_str().unwrap_or("");
        // An IP literal (`[::1]` in brackets) is connected to without a lookup: checked here.
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        if let Some(ip) = literal.filter(|ip| !self.private_addresses && !is_public(*ip)) {
            return Some(format!(
                "{ip} {LOCAL_ONLY}; set remote_asset.allow_private_addresses to download from it"
            ));
        }
        let allowed = self.hosts.is_empty()
            || self.hosts.iter().any(|h| match h.strip_prefix('.') {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('.')),
                None => host == h,
            });
        if !allowed {
            return Some(format!(
                "host {host:?} is not in remote_asset.allowed_hosts"
            ));
        }
        None
    }
}

/// The HTTP client of the Fetch service.
pub struct Fetcher {
    client: reqwest::Client,
    limits: Arc<FetchLimits>,
    permits: Semaphore,
    /// Why HTTPS downloads cannot work (no CA roots on this system), if they cannot.
    no_tls: Option<String>,
}

impl Fetcher {
    /// A client with `limits`. A system without CA roots still gets one: plain HTTP works and
    /// HTTPS downloads are refused with the reason (logged once here).
    pub fn new(limits: FetchLimits) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS client setup: {e}"))?;
        let (tls, no_tls) =
            match rustls_platform_verifier::BuilderVerifierExt::with_platform_verifier(
                builder.clone(),
            ) {
                Ok(b) => (b.with_no_client_auth(), None),
                Err(e) => {
                    let why = format!(
                        "kiln cannot verify HTTPS origins: {e} (install the system's CA \
                         certificates, e.g. Debian's ca-certificates, and restart)"
                    );
                    tracing::warn!("remote asset downloads: {why}");
                    let none = builder
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth();
                    (none, Some(why))
                }
            };
        let limits = Arc::new(limits);
        let hops = limits.clone();
        let policy = redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > hops.max_redirects {
                return attempt.error(format!("more than {} redirects", hops.max_redirects));
            }
            match hops.refuse(attempt.url()) {
                Some(why) => attempt.error(format!("redirect refused: {why}")),
                None => attempt.follow(),
            }
        });
        let mut client = reqwest::Client::builder();
        if !limits.private_addresses {
            client = client.dns_resolver(Arc::new(PublicOnly));
        }
        let client = client
            .tls_backend_preconfigured(tls)
            .redirect(policy)
            .connect_timeout(limits.timeout.min(Duration::from_secs(30)))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client setup: {e}"))?;
        Ok(Self {
            client,
            permits: Semaphore::new(limits.concurrency.max(1)),
            limits,
            no_tls,
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> &FetchLimits {
        &self.limits
    }

    /// Downloads `url` with `headers`, within `timeout` (itself at most the configured one)
    /// and `max_bytes`.
    pub async fn download(
        &self,
        url: &Url,
        headers: &[(http::HeaderName, http::HeaderValue)],
        timeout: Duration,
        max_bytes: u64,
    ) -> Result<Bytes, FetchError> {
        if let Some(why) = self.limits.refuse(url) {
            return Err(FetchError::Denied(why));
        }
        if let Some(why) = self.no_tls.as_ref().filter(|_| url.scheme() == "https") {
            return Err(FetchError::Unavailable(why.clone()));
        }
        let timeout = timeout.min(self.limits.timeout);
        let what = redact(url);
        // Waiting for a download slot counts against the timeout too.
        let work = async {
            let _permit =
                self.permits.acquire().await.map_err(|_| {
                    FetchError::Unavailable("the downloader is shutting down".into())
                })?;
            let mut req = self.client.get(url.clone());
            for (n, v) in headers {
                req = req.header(n, v);
            }
            let mut resp = req.send().await.map_err(|e| failure(&what, e))?;
            check_status(&what, resp.status())?;
            if let Some(len) = resp.content_length()
                && len > max_bytes
            {
                return Err(too_large(&what, max_bytes, Some(len)));
            }
            let mut body = BytesMut::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| failure(&what, e))? {
                if body.len() as u64 + chunk.len() as u64 > max_bytes {
                    return Err(too_large(&what, max_bytes, None));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(body.freeze())
        };
        tokio::time::timeout(timeout, work).await.map_err(|_| {
            FetchError::Timeout(format!(
                "downloading {what} took longer than {} s",
                timeout.as_secs_f64()
            ))
        })?
    }
}

/// The URL as it may be logged and returned: no user or password.
fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.to_string()
}

fn too_large(what: &str, max: u64, declared: Option<u64>) -> FetchError {
    FetchError::TooLarge(match declared {
        Some(len) => format!(
            "{what} is {len} bytes (Content-Length), over remote_asset.max_download_bytes ({max})"
        ),
        None => format!("{what} is over remote_asset.max_download_bytes ({max} bytes)"),
    })
}

fn check_status(what: &str, status: StatusCode) -> Result<(), FetchError> {
    let msg = || format!("{what} answered HTTP {status}");
    match status {
        s if s.is_success() => Ok(()),
        StatusCode::NOT_FOUND | StatusCode::GONE => Err(FetchError::NotFound(msg())),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(FetchError::Denied(msg())),
        _ => Err(FetchError::Unavailable(msg())),
    }
}

fn failure(what: &str, e: reqwest::Error) -> FetchError {
    // reqwest's text names the URL; ours (redacted) is said once in front.
    let e = e.without_url();
    let detail = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    if detail.contains(LOCAL_ONLY) {
        FetchError::Denied(format!("downloading {what}: {detail}"))
    } else if e.is_timeout() {
        FetchError::Timeout(format!("downloading {what}: {detail}"))
    } else if e.is_redirect() {
        FetchError::Denied(format!("downloading {what}: {detail}"))
    } else if e.is_connect() {
        FetchError::Unavailable(format!("cannot reach the origin of {what}: {detail}"))
    } else {
        FetchError::Unavailable(format!("downloading {what}: {detail}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(hosts: &[&str]) -> FetchLimits {
        FetchLimits {
            schemes: vec!["https".into()],
            hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
            timeout: Duration::from_secs(1),
            max_bytes: 1,
            concurrency: 1,
            max_redirects: 1,
            private_addresses: false,
        }
    }

    #[test]
    fn local_addresses_are_refused_unless_allowed() {
        let url = |s: &str| Url::parse(s).unwrap();
        let public = limits(&[]);
        for local in [
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://172.16.0.1/x",
            "https://192.168.1.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/x",
            "https://0.0.0.0/x",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[fe80::1]/x",
            "https://[::ffff:127.0.0.1]/x",
        ] {
            let why = public.refuse(&url(local)).unwrap_or_default();
            assert!(why.contains(LOCAL_ONLY), "{local}: {why:?}");
        }
        for ok in [
            "https://8.8.8.8/x",
            "https://[2001:4860::8888]/x",
            "https://example.com/x",
        ] {
            assert!(public.refuse(&url(ok)).is_none(), "{ok}");
        }
        let lan = FetchLimits {
            private_addresses: true,
            ..limits(&[])
        };
        assert!(lan.refuse(&url("https://127.0.0.1/x")).is_none());
    }

    #[test]
    fn schemes_and_hosts_are_checked() {
        let url = |s: &str| Url::parse(s).unwrap();
        let any = limits(&[]);
        assert!(any.refuse(&url("https://a.example/x")).is_none());
        assert!(any.refuse(&url("http://a.example/x")).is_some());
        assert!(any.refuse(&url("file:///etc/passwd")).is_some());
        let some = limits(&["mirror.example", ".corp.example"]);
        assert!(some.refuse(&url("https://mirror.example/x")).is_none());
        assert!(some.refuse(&url("https://a.corp.example/x")).is_none());
        assert!(some.refuse(&url("https://corp.example/x")).is_some());
        assert!(some.refuse(&url("https://evilcorp.example/x")).is_some());
        assert!(some.refuse(&url("https://mirror.example.evil/x")).is_some());
    }

    #[test]
    fn credentials_never_reach_messages() {
        let u = Url::parse("https://user:secret@host.example/a").unwrap();
        assert!(!redact(&u).contains("secret"));
    }
}
