//! The request path of the HTTP cache API, in bazel-remote's layout:
//! `[/<instance>]/(ac|cas)/<64 lower-case hex digits>`.
//!
//! The path is client input and reaches storage keys and metric labels, so it is parsed
//! strictly here and nowhere else: a bounded length, exactly one of the two kinds, a SHA-256
//! in lower-case hex, and an instance name under the same segment rules as a gRPC
//! `instance_name` (so the two APIs name the same action-cache namespaces, and none that gRPC
//! cannot name except by design). Pure and panic-free: a fuzz target drives it.

use crate::api::resource_name::RESERVED;

/// Longest path accepted, in bytes. Instance names are short; a long path is a mistake or
/// an attack.
pub const MAX_PATH_BYTES: usize = 1024;

/// Which store a path names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/ac/`: the action cache, keyed by the action's hash.
    Ac,
    /// `/cas/`: the content-addressable store, keyed by the content's hash.
    Cas,
}

impl Kind {
    /// The path segment, also the metric label.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ac => "ac",
            Kind::Cas => "cas",
        }
    }
}

/// A parsed cache path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The instance name (`""` without a prefix); may contain `/`.
    pub instance: String,
    /// `ac` or `cas`.
    pub kind: Kind,
    /// The SHA-256 named by the path.
    pub hash: [u8; 32],
}

/// Why a path names no cache entry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("path of {0} bytes is longer than {MAX_PATH_BYTES}")]
    TooLong(usize),
    /// Not `.../ac/<hash>` or `.../cas/<hash>`.
    #[error("not a cache path: expected [/<instance>]/ac/<sha256> or [/<instance>]/cas/<sha256>")]
    NotCache,
    /// The last segment is not 64 lower-case hex digits.
    #[error("invalid hash {0:?}: expected 64 lower-case hex digits (SHA-256)")]
    BadHash(String),
    /// An instance prefix with an empty, `.`/`..`, reserved or non-printable segment.
    #[error(
        "invalid instance name {instance:?}: segment {segment:?} is empty, reserved or not printable ASCII"
    )]
    BadInstance { instance: String, segment: String },
}

/// Parses a request path (without query).
pub fn parse(path: &str) -> Result<Route, PathError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong(path.len()));
    }
    let p = path.strip_prefix('/').ok_or(PathError::NotCache)?;
    let (rest, hash) = p.rsplit_once('/').ok_or(PathError::NotCache)?;
    let (instance, kind) = match rest.rsplit_once('/') {
        Some((i, k)) => (i, k),
        None => ("", rest),
    };
    let kind = match kind {
        "ac" => Kind::Ac,
        "cas" => Kind::Cas,
        _ => return Err(PathError::NotCache),
    };
    let hash = parse_hash(hash)?;
    if rest.len() > kind.name().len() {
        // A prefix was given (`/<instance>/ac/...`): it must be a valid instance name.
        check_instance(instance)?;
    }
    Ok(Route {
        instance: instance.to_string(),
        kind,
        hash,
    })
}

fn parse_hash(hex: &str) -> Result<[u8; 32], PathError> {
    let bad = || PathError::BadHash(hex.chars().take(80).collect());
    let b = hex.as_bytes();
    if b.len() != 64 {
        return Err(bad());
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in b.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0]).ok_or_else(bad)? << 4) | nibble(pair[1]).ok_or_else(bad)?;
    }
    Ok(out)
}

fn check_instance(instance: &str) -> Result<(), PathError> {
    for seg in instance.split('/') {
        let printable = seg.bytes().all(|c| c.is_ascii_graphic());
        if seg.is_empty() || seg == "." || seg == ".." || RESERVED.contains(&seg) || !printable {
            return Err(PathError::BadInstance {
                instance: instance.chars().take(200).collect(),
                segment: seg.chars().take(200).collect(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn plain_and_prefixed_paths() {
        let r = parse(&format!("/cas/{H}")).unwrap();
        assert_eq!((r.instance.as_str(), r.kind), ("", Kind::Cas));
        assert_eq!(hex::encode(r.hash), H);
        let r = parse(&format!("/team/ci/ac/{H}")).unwrap();
        assert_eq!((r.instance.as_str(), r.kind), ("team/ci", Kind::Ac));
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in [
            "",
            "/",
            "/cas",
            "/cas/",
            &format!("cas/{H}"),
            &format!("/blob/{H}"),
            &format!("/cas/{H}/"),
            &format!("/ac/{}", H.to_uppercase()),
            &format!("/ac/{}", &H[..63]),
            &format!("/ac/{H}0"),
            &format!("//ac/{H}"),
            &format!("/a//b/ac/{H}"),
            &format!("/../ac/{H}"),
            &format!("/blobs/ac/{H}"),
            &format!("/a b/ac/{H}"),
        ] {
            assert!(parse(p).is_err(), "{p:?} parsed");
        }
        let long = format!("/{}/ac/{H}", "x".repeat(MAX_PATH_BYTES));
        assert!(matches!(parse(&long), Err(PathError::TooLong(_))));
    }

    fn canonical(r: &Route) -> String {
        let hash = hex::encode(r.hash);
        if r.instance.is_empty() {
            format!("/{}/{hash}", r.kind.name())
        } else {
            format!("/{}/{}/{hash}", r.instance, r.kind.name())
        }
    }

    proptest::proptest! {
        /// Arbitrary text never panics, and only a canonical path parses.
        #[test]
        fn only_canonical_paths_parse(text in "(/|[a-z]{1,3}|ac|cas|[0-9a-f]{64}|\\PC){0,12}") {
            if let Ok(r) = parse(&text) {
                proptest::prop_assert_eq!(canonical(&r), text);
            }
        }

        /// Every valid instance, kind and hash round-trips.
        #[test]
        fn valid_paths_round_trip(
            instance in "([a-z0-9_.-]{1,8}(/[a-z0-9_-]{1,8}){0,3})?",
            cas in proptest::bool::ANY,
            hash in proptest::array::uniform32(proptest::num::u8::ANY),
        ) {
            let dots = instance.split('/').any(|s| s == "." || s == "..");
            let reserved = instance.split('/').any(|s| RESERVED.contains(&s));
            let kind = if cas { Kind::Cas } else { Kind::Ac };
            let r = Route { instance, kind, hash };
            let parsed = parse(&canonical(&r));
            if dots || reserved {
                proptest::prop_assert!(parsed.is_err());
            } else {
                proptest::prop_assert_eq!(parsed, Ok(r));
            }
        }
    }
}
