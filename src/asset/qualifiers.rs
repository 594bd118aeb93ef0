//! Qualifiers of a Fetch or Push request: checked, sorted, and the ones kiln honours on a
//! download picked out (the lexicon's `checksum.sri`, Bazel's `bazel.canonical_id`,
//! `http_header:NAME` and `http_header_url:INDEX:NAME`). Every count and length is bounded
//! before anything is kept.
//!
//! Header qualifiers say how to reach the content (Bazel sends credentials there, and they
//! rotate), but a header can also change what an origin sends (`Range`, `Accept`, a token
//! that grants other content). So they are left out of the asset's identity only when a
//! `checksum.sri` pins the content: then a fetch with a new token finds what the last one
//! downloaded. Without a checksum they are part of it, so one client's headers never decide
//! what a fetch without them (or with others) is answered with.

use super::AssetError;
use base64::Engine as _;
use sha2::Digest as _;

/// Most qualifiers in one request.
pub const MAX_QUALIFIERS: usize = 64;
/// Longest qualifier name or value, bytes.
pub const MAX_QUALIFIER_BYTES: usize = 8192;

/// The checksum qualifier of the lexicon: Subresource Integrity, `ALG-BASE64` tokens.
pub const CHECKSUM_SRI: &str = "checksum.sri";
/// Bazel's cache key for a download (no effect on content; part of the asset's identity).
pub const CANONICAL_ID: &str = "bazel.canonical_id";
/// Bazel's per-request HTTP headers (`http_header:Authorization`), sent to the origin.
pub const HTTP_HEADER: &str = "http_header:";
/// Bazel's per-URI headers (`http_header_url:0:Authorization`: the first URI's), which take
/// precedence over `http_header:` ones for that URI.
pub const HTTP_HEADER_URL: &str = "http_header_url:";

/// An SRI hash function kiln verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SriAlgorithm {
    /// `sha256-`: also the CAS's function, so such content can be found by hash.
    Sha256,
    /// `sha384-`.
    Sha384,
    /// `sha512-`.
    Sha512,
}

impl SriAlgorithm {
    fn parse(name: &str) -> Option<(Self, usize)> {
        match name {
            "sha256" => Some((Self::Sha256, 32)),
            "sha384" => Some((Self::Sha384, 48)),
            "sha512" => Some((Self::Sha512, 64)),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Self::Sha256 => sha2::Sha256::digest(data).to_vec(),
            Self::Sha384 => sha2::Sha384::digest(data).to_vec(),
            Self::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// One expected hash of the content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checksum {
    /// Its function.
    pub algorithm: SriAlgorithm,
    /// The raw hash.
    pub hash: Vec<u8>,
}

impl Checksum {
    fn sri(&self) -> String {
        format!(
            "{}-{}",
            self.algorithm.name(),
            base64::engine::general_purpose::STANDARD.encode(&self.hash)
        )
    }
}

/// A request's qualifiers, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Qualifiers {
    /// Every qualifier, sorted by name (names are unique).
    pub all: Vec<(String, String)>,
    /// The qualifiers that identify the asset with its URI: all but the header ones, sorted.
    pub identity: Vec<(String, String)>,
    /// The `checksum.sri` hashes; content matching any one of them satisfies the qualifier.
    pub checksums: Vec<Checksum>,
    /// `http_header:NAME` qualifiers as (name, value), sent with every download.
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// `http_header_url:INDEX:NAME` qualifiers as (URI index, name, value).
    pub url_headers: Vec<(usize, http::HeaderName, http::HeaderValue)>,
    /// Names kiln cannot honour on a download (a pushed asset may still carry them), each cut
    /// to 64 bytes: they are only ever reported back, in a status that must stay small.
    pub unsupported: Vec<String>,
}

impl Qualifiers {
    /// Checks `pairs` (name, value): bounded, unique names, well-formed checksums and headers.
    pub fn parse(pairs: Vec<(String, String)>) -> Result<Self, AssetError> {
        let bad = |m: String| Err(AssetError::InvalidArgument(m));
        if pairs.len() > MAX_QUALIFIERS {
            return bad(format!(
                "{} qualifiers, at most {MAX_QUALIFIERS}",
                pairs.len()
            ));
        }
        let mut q = Self {
            all: pairs,
            ..Self::default()
        };
        let mut header_pairs = Vec::new();
        q.all.sort();
        for w in q.all.windows(2) {
            if w[0].0 == w[1].0 {
                return bad(format!("qualifier {:?} given twice", w[0].0));
            }
        }
        for (name, value) in &q.all {
            if name.len() > MAX_QUALIFIER_BYTES || value.len() > MAX_QUALIFIER_BYTES {
                return bad(format!(
                    "qualifier {:?} longer than {MAX_QUALIFIER_BYTES} bytes",
                    truncate(name)
                ));
            }
            if name == CHECKSUM_SRI {
                q.checksums = parse_sri(value)?;
            } else if let Some(header) = name.strip_prefix(HTTP_HEADER) {
                q.headers.push(header_of(name, header, value)?);
                header_pairs.push((name.clone(), value.clone()));
                continue;
            } else if let Some(rest) = name.strip_prefix(HTTP_HEADER_URL) {
                let parsed = rest
                    .split_once(':')
                    .and_then(|(i, h)| Some((i.parse::<usize>().ok()?, h)));
                let Some((index, header)) = parsed else {
                    return bad(format!(
                        "qualifier {:?} is not http_header_url:INDEX:NAME",
                        truncate(name)
                    ));
                };
                let (n, v) = header_of(name, header, value)?;
                q.url_headers.push((index, n, v));
                header_pairs.push((name.clone(), value.clone()));
                continue;
            } else if name != CANONICAL_ID {
                q.unsupported.push(truncate(name).to_owned());
            }
            q.identity.push((name.clone(), value.clone()));
        }
        if q.checksums.is_empty() {
            // Unpinned content: the headers that fetched it are part of what it is.
            q.identity.extend(header_pairs);
            q.identity.sort();
        }
        Ok(q)
    }

    /// The headers to send to the URI at `index`: the global ones, each replaced by a
    /// per-URI one of the same name.
    pub fn headers_for(&self, index: usize) -> Vec<(http::HeaderName, http::HeaderValue)> {
        let own: Vec<_> = self
            .url_headers
            .iter()
            .filter(|(i, _, _)| *i == index)
            .map(|(_, n, v)| (n.clone(), v.clone()))
            .collect();
        let mut out: Vec<_> = self
            .headers
            .iter()
            .filter(|(n, _)| !own.iter().any(|(o, _)| o == n))
            .cloned()
            .collect();
        out.extend(own);
        out
    }

    /// The SHA-256 hashes among the checksums (to look the content up in the CAS).
    pub fn sha256(&self) -> impl Iterator<Item = [u8; 32]> + '_ {
        self.checksums
            .iter()
            .filter(|c| c.algorithm == SriAlgorithm::Sha256)
            .filter_map(|c| c.hash.as_slice().try_into().ok())
    }

    /// Whether `data` satisfies `checksum.sri` (trivially, without one). The error says what
    /// was expected and what the data hashes to.
    pub fn verify(&self, data: &[u8]) -> Result<(), String> {
        if self.checksums.is_empty() {
            return Ok(());
        }
        let mut got = Vec::new();
        for c in &self.checksums {
            let actual = Checksum {
                algorithm: c.algorithm,
                hash: c.algorithm.hash(data),
            };
            if actual == *c {
                return Ok(());
            }
            got.push(actual.sri());
        }
        let expected: Vec<String> = self.checksums.iter().map(Checksum::sri).collect();
        Err(format!(
            "checksum mismatch: expected {}, the content is {}",
            expected.join(" or "),
            got.join(" / ")
        ))
    }
}

fn header_of(
    qualifier: &str,
    name: &str,
    value: &str,
) -> Result<(http::HeaderName, http::HeaderValue), AssetError> {
    match (
        http::HeaderName::from_bytes(name.as_bytes()),
        http::HeaderValue::from_str(value),
    ) {
        (Ok(n), Ok(v)) => Ok((n, v)),
        _ => Err(AssetError::InvalidArgument(format!(
            "qualifier {:?} is not a valid HTTP header",
            truncate(qualifier)
        ))),
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses an SRI value: whitespace-separated `ALG-BASE64[?options]` tokens. Tokens of other
/// algorithms are skipped, as SRI says, but at least one must be one kiln verifies.
fn parse_sri(value: &str) -> Result<Vec<Checksum>, AssetError> {
    let mut out = Vec::new();
    for token in value.split_ascii_whitespace() {
        let token = token.split_once('?').map_or(token, |(t, _)| t);
        let Some((alg, b64)) = token.split_once('-') else {
            return Err(AssetError::InvalidArgument(format!(
                "checksum.sri token {:?} is not ALGORITHM-BASE64",
                truncate(token)
            )));
        };
        let Some((algorithm, len)) = SriAlgorithm::parse(alg) else {
            continue;
        };
        let hash = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .filter(|h| h.len() == len)
            .ok_or_else(|| {
                AssetError::InvalidArgument(format!(
                    "checksum.sri {alg} value {:?} is not {len} bytes of base64",
                    truncate(b64)
                ))
            })?;
        out.push(Checksum { algorithm, hash });
    }
    if out.is_empty() {
        return Err(AssetError::InvalidArgument(format!(
            "checksum.sri {:?} has no sha256, sha384 or sha512 hash",
            truncate(value)
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sri(alg: SriAlgorithm, data: &[u8]) -> String {
        Checksum {
            algorithm: alg,
            hash: alg.hash(data),
        }
        .sri()
    }

    fn q(pairs: &[(&str, &str)]) -> Result<Qualifiers, AssetError> {
        Qualifiers::parse(
            pairs
                .iter()
                .map(|(a, b)| ((*a).to_string(), (*b).to_string()))
                .collect(),
        )
    }

    #[test]
    fn checksums_verify_any_listed_hash() {
        let s256 = sri(SriAlgorithm::Sha256, b"abc");
        // SHA-256("abc"), the FIPS 180-2 test vector, in base64.
        assert_eq!(s256, "sha256-ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=");
        let other = sri(SriAlgorithm::Sha512, b"xyz");
        let quals = q(&[(CHECKSUM_SRI, &format!("{other} md5-AAAA {s256}?opt"))]).unwrap();
        assert_eq!(quals.checksums.len(), 2);
        assert!(quals.verify(b"abc").is_ok());
        assert!(quals.verify(b"xyz").is_ok());
        let err = quals.verify(b"abd").unwrap_err();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert_eq!(quals.sha256().count(), 1);
        let s384 = q(&[(CHECKSUM_SRI, &sri(SriAlgorithm::Sha384, b"abc"))]).unwrap();
        assert!(s384.verify(b"abc").is_ok() && s384.verify(b"ab").is_err());
    }

    #[test]
    fn bad_qualifiers_are_refused_and_unknown_ones_listed() {
        assert!(q(&[(CHECKSUM_SRI, "md5-AAAA")]).is_err());
        assert!(q(&[(CHECKSUM_SRI, "sha256-AAAA")]).is_err());
        assert!(q(&[(CHECKSUM_SRI, "sha256")]).is_err());
        assert!(q(&[("a", "1"), ("a", "2")]).is_err());
        assert!(q(&[("http_header:bad name", "v")]).is_err());
        let many: Vec<(String, String)> = (0..=MAX_QUALIFIERS)
            .map(|i| (format!("n{i}"), String::new()))
            .collect();
        assert!(Qualifiers::parse(many).is_err());
        let ok = q(&[
            ("resource_type", "application/x-git"),
            (CANONICAL_ID, "x"),
            ("http_header:Authorization", "Bearer t"),
        ])
        .unwrap();
        assert_eq!(ok.unsupported, vec!["resource_type".to_string()]);
        assert_eq!(ok.headers.len(), 1);
        assert_eq!(ok.all[0].0, CANONICAL_ID, "sorted by name");
        // Without a checksum the headers are part of the identity; with one they are not.
        assert_eq!(ok.identity.len(), 3);
        let pinned = q(&[
            (CANONICAL_ID, "x"),
            (
                CHECKSUM_SRI,
                "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=",
            ),
            ("http_header:Authorization", "Bearer t"),
        ])
        .unwrap();
        assert_eq!(pinned.identity.len(), 2, "{:?}", pinned.identity);
        assert!(q(&[("http_header_url:x:Authorization", "v")]).is_err());
        assert!(q(&[("http_header_url:0", "v")]).is_err());
    }

    #[test]
    fn per_uri_headers_replace_global_ones() {
        let h = q(&[
            ("http_header:Authorization", "global"),
            ("http_header:Accept", "*/*"),
            ("http_header_url:1:Authorization", "second"),
        ])
        .unwrap();
        assert_eq!(
            h.identity.len(),
            3,
            "no checksum: the headers identify the asset"
        );
        let value = |i: usize, name: &str| {
            h.headers_for(i)
                .into_iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.to_str().unwrap().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(value(0, "authorization"), vec!["global"]);
        assert_eq!(value(1, "authorization"), vec!["second"]);
        assert_eq!(value(1, "accept"), vec!["*/*"]);
    }
}
