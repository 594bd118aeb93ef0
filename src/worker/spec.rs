//! What a pre-started sandbox helper is told when its action arrives (`prestart.rs`): the
//! working directory, the program and its arguments, and the environment. The worker encodes
//! it; the helper, already set up and holding no privileges, decodes it and execs.
//!
//! Encoding: NUL-terminated byte strings, in order: the working directory, the program, the
//! number of arguments after it (decimal), those arguments, then name and value of each
//! environment variable up to the end. A NUL cannot appear inside any of them (the kernel's
//! exec takes NUL-terminated strings), so nothing needs escaping. At most [`MAX_SPEC_BYTES`].

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

/// The largest spec a helper reads: what Linux lets one exec carry (arguments and
/// environment together, `ARG_MAX` with an 8 MiB stack is 2 MiB), with room to spare.
pub const MAX_SPEC_BYTES: usize = 4 << 20;

/// One action's command, as the helper runs it.
#[derive(Debug, PartialEq, Eq)]
pub struct Spec {
    /// Working directory (absolute, inside the input root).
    pub workdir: PathBuf,
    /// The program (a path, or a bare name looked up in the environment's PATH).
    pub program: OsString,
    /// Arguments after the program.
    pub args: Vec<OsString>,
    /// Environment variables, in order.
    pub env: Vec<(OsString, OsString)>,
}

/// Why a spec could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// A string holds a NUL: exec could not pass it.
    #[error("{0} holds a NUL byte")]
    Nul(&'static str),
    /// More than [`MAX_SPEC_BYTES`].
    #[error("the command and environment take {0} bytes, more than {MAX_SPEC_BYTES}")]
    TooLarge(usize),
    /// Not what [`Spec::encode`] writes.
    #[error("malformed action spec: {0}")]
    Malformed(&'static str),
}

impl Spec {
    /// The bytes to send.
    pub fn encode(&self) -> Result<Vec<u8>, SpecError> {
        let mut out = Vec::new();
        let mut put = |s: &OsStr, what: &'static str| {
            if s.as_bytes().contains(&0) {
                return Err(SpecError::Nul(what));
            }
            out.extend_from_slice(s.as_bytes());
            out.push(0);
            Ok(())
        };
        put(self.workdir.as_os_str(), "the working directory")?;
        put(&self.program, "the program")?;
        put(OsStr::new(&self.args.len().to_string()), "the count")?;
        for a in &self.args {
            put(a, "an argument")?;
        }
        for (k, v) in &self.env {
            put(k, "an environment variable name")?;
            put(v, "an environment variable value")?;
        }
        if out.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Reads what [`Spec::encode`] wrote.
    pub fn decode(bytes: &[u8]) -> Result<Self, SpecError> {
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge(bytes.len()));
        }
        let body = bytes
            .strip_suffix(&[0])
            .ok_or(SpecError::Malformed("not NUL-terminated"))?;
        let mut it = body.split(|b| *b == 0);
        let mut next = |what| {
            it.next()
                .map(|s| OsString::from_vec(s.to_vec()))
                .ok_or(SpecError::Malformed(what))
        };
        let workdir = PathBuf::from(next("no working directory")?);
        let program = next("no program")?;
        let count: usize = next("no argument count")?
            .to_str()
            .and_then(|s| s.parse().ok())
            .ok_or(SpecError::Malformed("bad argument count"))?;
        // Every argument takes at least its NUL: a count beyond that is a lie.
        if count > bytes.len() {
            return Err(SpecError::Malformed("argument count past the end"));
        }
        let mut args = Vec::with_capacity(count);
        for _ in 0..count {
            args.push(next("fewer arguments than counted")?);
        }
        let mut env = Vec::new();
        while let Ok(name) = next("") {
            env.push((name, next("an environment variable without a value")?));
        }
        if workdir.as_os_str().is_empty() || program.is_empty() {
            return Err(SpecError::Malformed("empty working directory or program"));
        }
        Ok(Self {
            workdir,
            program,
            args,
            env,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            workdir: "/w/a b".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), String::new().into(), "echo \u{e9}".into()],
            env: vec![
                ("PATH".into(), "/bin".into()),
                ("EMPTY".into(), String::new().into()),
            ],
        }
    }

    #[test]
    fn specs_round_trip() {
        let s = spec();
        assert_eq!(Spec::decode(&s.encode().unwrap()).unwrap(), s);
        let bare = Spec {
            args: vec![],
            env: vec![],
            ..spec()
        };
        assert_eq!(Spec::decode(&bare.encode().unwrap()).unwrap(), bare);
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut s = spec();
        s.args.push(OsString::from_vec(b"a\0b".to_vec()));
        assert_eq!(s.encode(), Err(SpecError::Nul("an argument")));
        let mut big = spec();
        big.args = vec![OsString::from_vec(vec![b'a'; MAX_SPEC_BYTES])];
        assert!(
            matches!(big.encode(), Err(SpecError::TooLarge(n)) if n > MAX_SPEC_BYTES),
            "a command past the bound is not sent"
        );
        let good = spec().encode().unwrap();
        let bad: [(&[u8], &str); 5] = [
            (&good[..good.len() - 1], "unterminated"),
            (b"/w\0/bin/true\x009\0a\0", "fewer arguments"),
            (b"/w\0/bin/true\x0099999999999\0", "huge count"),
            (b"/w\0/bin/true\x000\0NAME\0", "name without value"),
            (b"\0/bin/true\x000\0", "empty workdir"),
        ];
        for (bytes, what) in bad {
            assert!(Spec::decode(bytes).is_err(), "{what}");
        }
        assert!(
            Spec::decode(&vec![1u8; MAX_SPEC_BYTES + 1]).is_err(),
            "too large"
        );
    }
}
