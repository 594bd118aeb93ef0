//! Checks an Execute request before it is queued: the Action, its Command and every input blob
//! must be in the CAS, output paths must stay inside the input root, and the timeout must be
//! within the configured maximum.
// The deprecated Command fields (platform, output_files, output_directories) are what REAPI
// v2.0 clients such as Bazel 2.x send; they must be honoured.
#![allow(deprecated)]

use super::ExecError;
use super::platform::Properties;
use crate::cas::{Cas, CasError};
use crate::digest::Digest;
use crate::proto::reapi::{Action, Command, Directory};
use prost::Message;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// The execution timeouts of the config.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Used when an Action sets none.
    pub default: Duration,
    /// An Action asking for more is rejected.
    pub max: Duration,
}

/// An action ready to queue.
#[derive(Clone, Debug)]
pub struct PreparedAction {
    /// The Action, with `timeout` set to the effective value (the bot enforces it).
    pub action: Action,
    /// What a bot must offer to run it.
    pub platform: Properties,
}

fn bad(what: &str, e: impl std::fmt::Display) -> ExecError {
    ExecError::InvalidArgument(format!("invalid {what}: {e}"))
}

fn load<M: Message + Default>(cas: &Cas, digest: &Digest, what: &str) -> Result<M, ExecError> {
    match cas.get(digest)? {
        None => Err(ExecError::MissingBlobs(vec![*digest])),
        Some(blob) => M::decode(blob.to_bytes()).map_err(|e| bad(what, format!("{digest}: {e}"))),
    }
}

fn digest_field(
    function: crate::digest::DigestFunction,
    d: Option<&crate::proto::reapi::Digest>,
    what: &'static str,
) -> Result<Digest, ExecError> {
    Digest::from_field(function, d, what).map_err(|e| ExecError::Cas(CasError::Digest(e)))
}

/// Loads and checks everything an action needs.
pub fn prepare(
    cas: &Cas,
    digest: &Digest,
    timeouts: Timeouts,
) -> Result<PreparedAction, ExecError> {
    let mut action: Action = load(cas, digest, "Action")?;
    let command_digest = digest_field(
        digest.function,
        action.command_digest.as_ref(),
        "Action.command_digest",
    )?;
    let input_root = digest_field(
        digest.function,
        action.input_root_digest.as_ref(),
        "Action.input_root_digest",
    )?;
    let command: Command = match load(cas, &command_digest, "Command") {
        Err(ExecError::MissingBlobs(mut m)) => {
            // Report the input root too if it is also absent, so one round trip fixes both.
            if !cas.contains(&input_root)? {
                m.push(input_root);
            }
            return Err(ExecError::MissingBlobs(m));
        }
        other => other?,
    };
    check_command(&command)?;
    check_inputs(cas, &input_root)?;
    let timeout = match action.timeout.as_ref() {
        Some(t) if t.seconds < 0 || t.nanos < 0 => return Err(bad("Action.timeout", "negative")),
        Some(t) if t.seconds > 0 || t.nanos > 0 => Duration::new(t.seconds as u64, t.nanos as u32),
        _ => timeouts.default,
    };
    if timeout > timeouts.max {
        return Err(ExecError::InvalidArgument(format!(
            "Action.timeout {}s exceeds this server's maximum of {}s",
            timeout.as_secs_f64(),
            timeouts.max.as_secs()
        )));
    }
    action.timeout = Some(prost_types::Duration {
        seconds: timeout.as_secs() as i64,
        nanos: timeout.subsec_nanos() as i32,
    });
    let platform = action.platform.as_ref().or(command.platform.as_ref());
    let platform = Properties(
        platform
            .map(|p| {
                p.properties
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    );
    Ok(PreparedAction { action, platform })
}

fn check_command(command: &Command) -> Result<(), ExecError> {
    if command.arguments.is_empty() || command.arguments[0].is_empty() {
        return Err(bad("Command.arguments", "empty"));
    }
    let wd = &command.working_directory;
    if within_root("", wd).is_none() {
        return Err(bad(
            "Command.working_directory",
            format!("{wd:?} escapes the input root"),
        ));
    }
    let outputs = command
        .output_paths
        .iter()
        .chain(&command.output_files)
        .chain(&command.output_directories);
    for path in outputs {
        match within_root(wd, path) {
            Some(p) if !p.is_empty() || !command.output_files.contains(path) => {}
            _ => {
                return Err(bad(
                    "output path",
                    format!("{path:?} escapes the action directory or is empty"),
                ));
            }
        }
    }
    Ok(())
}

/// `base/path` normalised lexically, or `None` if it is absolute or climbs out of the root.
pub fn within_root(base: &str, path: &str) -> Option<String> {
    if path.starts_with('/') || base.starts_with('/') {
        return None;
    }
    let mut parts: Vec<&str> = Vec::new();
    for seg in base.split('/').chain(path.split('/')) {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            s => parts.push(s),
        }
    }
    Some(parts.join("/"))
}

/// Walks the input tree and reports every absent directory or file blob.
fn check_inputs(cas: &Cas, root: &Digest) -> Result<(), ExecError> {
    let mut missing = Vec::new();
    let mut files = HashSet::new();
    let mut seen = HashSet::from([*root]);
    let mut queue = VecDeque::from([*root]);
    while let Some(d) = queue.pop_front() {
        let dir: Directory = match load(cas, &d, "Directory") {
            Err(ExecError::MissingBlobs(m)) => {
                missing.extend(m);
                continue;
            }
            other => other?,
        };
        for f in &dir.files {
            files.insert(digest_field(
                root.function,
                f.digest.as_ref(),
                "FileNode.digest",
            )?);
        }
        for c in &dir.directories {
            let c = digest_field(root.function, c.digest.as_ref(), "DirectoryNode.digest")?;
            if seen.insert(c) {
                queue.push_back(c);
            }
        }
    }
    let files: Vec<Digest> = files.into_iter().collect();
    missing.extend(cas.find_missing(&files)?);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ExecError::MissingBlobs(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::within_root;

    #[test]
    fn lexical_paths() {
        assert_eq!(within_root("", "a/b").as_deref(), Some("a/b"));
        assert_eq!(within_root("w", "../x").as_deref(), Some("x"));
        assert_eq!(within_root("", "../x"), None);
        assert_eq!(within_root("w", "../../x"), None);
        assert_eq!(within_root("", "/etc/passwd"), None);
        assert_eq!(within_root("", "a/./b/../c").as_deref(), Some("a/c"));
    }
}
