//! Checks an Execute request before it is queued: the Action, its Command and every input blob
//! must be in the CAS, output paths must stay inside the input root, and the timeout must be
//! within the configured maximum.
// The deprecated Command fields (platform, output_files, output_directories) are what REAPI
// v2.0 clients such as Bazel 2.x send; they must be honoured.
#![allow(deprecated)]

use super::ExecError;
use super::platform::Properties;
use crate::cas::walk::TreeWalk;
use crate::cas::{Cas, CasError};
use crate::digest::Digest;
use crate::paths::within_root;
use crate::proto::reapi::{Action, Command, Directory};
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// The execution timeouts of the config.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Used when an Action sets none.
    pub default: Duration,
    /// An Action asking for more is rejected.
    pub max: Duration,
}

/// Bounds on what an Execute may make the server read and decode. Each message is checked
/// against its limit before it is decoded (a decoded Command of many short arguments takes
/// about twenty times its wire size), and the input tree's shape is bounded so the worker's
/// staging is too.
#[derive(Clone, Copy, Debug)]
pub struct ActionLimits {
    /// Largest serialized Action.
    pub max_action_bytes: u64,
    /// Largest serialized Command.
    pub max_command_bytes: u64,
    /// Largest serialized Directory of the input tree.
    pub max_directory_bytes: u64,
    /// Deepest input tree (the root is depth 0).
    pub max_input_depth: usize,
    /// Most distinct directories in one input tree.
    pub max_input_directories: usize,
    /// Most distinct input files (by digest) in one input tree.
    pub max_input_files: usize,
}

impl Default for ActionLimits {
    fn default() -> Self {
        Self {
            max_action_bytes: 1 << 20,
            max_command_bytes: 4 << 20,
            max_directory_bytes: 4 << 20,
            max_input_depth: 256,
            max_input_directories: 1 << 20,
            max_input_files: 1 << 20,
        }
    }
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

/// Loads and decodes one message, refusing one over `max` bytes before decoding it.
fn load<M: Message + Default>(
    cas: &Cas,
    digest: &Digest,
    what: &str,
    max: u64,
    limit_name: &str,
) -> Result<M, ExecError> {
    if digest.size > max {
        return Err(ExecError::InvalidArgument(format!(
            "{what} {digest} is {} bytes, over the limit of {max} bytes \
             (execution.{limit_name})",
            digest.size
        )));
    }
    match cas.get(digest)? {
        None => Err(ExecError::MissingBlobs(vec![*digest])),
        Some(blob) => M::decode(blob.to_bytes().map_err(CasError::from)?)
            .map_err(|e| bad(what, format!("{digest}: {e}"))),
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
    limits: ActionLimits,
) -> Result<PreparedAction, ExecError> {
    let (mut action, command_digest) = load_action(cas, digest, &limits)?;
    let input_root = digest_field(
        digest.function,
        action.input_root_digest.as_ref(),
        "Action.input_root_digest",
    )?;
    let command = match load_command(cas, &command_digest, &limits) {
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
    check_inputs(cas, &input_root, &limits)?;
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
    let platform = platform(&action, &command);
    Ok(PreparedAction { action, platform })
}

/// What a bot must offer to run an action: the Action's platform, or the (deprecated)
/// Command's when the Action has none.
fn platform(action: &Action, command: &Command) -> Properties {
    let platform = action.platform.as_ref().or(command.platform.as_ref());
    Properties(
        platform
            .map(|p| {
                p.properties
                    .iter()
                    .map(|p| (p.name.clone(), p.value.clone()))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// The platform of a stored action, reading only its Action and Command (each bounded by
/// `limits`), not its input tree: enough to choose where it runs.
pub fn platform_of(
    cas: &Cas,
    digest: &Digest,
    limits: ActionLimits,
) -> Result<Properties, ExecError> {
    let (action, command_digest) = load_action(cas, digest, &limits)?;
    let command = load_command(cas, &command_digest, &limits)?;
    Ok(platform(&action, &command))
}

/// The Action `digest` (bounded by `max_action_bytes`) and the digest of its Command.
fn load_action(
    cas: &Cas,
    digest: &Digest,
    limits: &ActionLimits,
) -> Result<(Action, Digest), ExecError> {
    let action: Action = load(
        cas,
        digest,
        "Action",
        limits.max_action_bytes,
        "max_action_bytes",
    )?;
    let command_digest = digest_field(
        digest.function,
        action.command_digest.as_ref(),
        "Action.command_digest",
    )?;
    Ok((action, command_digest))
}

/// The Command `digest` (bounded by `max_command_bytes`).
fn load_command(cas: &Cas, digest: &Digest, limits: &ActionLimits) -> Result<Command, ExecError> {
    load(
        cas,
        digest,
        "Command",
        limits.max_command_bytes,
        "max_command_bytes",
    )
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

/// Walks the input tree and reports every absent directory or file blob. Every Directory must
/// follow the REAPI rules (names valid, sorted and unique across files, directories and
/// symlinks); the tree's depth and size are bounded by `limits`.
fn check_inputs(cas: &Cas, root: &Digest, limits: &ActionLimits) -> Result<(), ExecError> {
    let mut missing = Vec::new();
    let mut files = HashSet::new();
    let mut children: HashMap<Digest, Vec<Digest>> = HashMap::new();
    // Breadth first with each directory's shallowest depth: a level past the limit is already
    // too deep, so such a tree is refused before it is loaded whole.
    let mut walk = TreeWalk::new(*root);
    while let Some((d, depth)) = walk.pop() {
        if depth > limits.max_input_depth {
            return Err(too_deep(root, limits.max_input_depth));
        }
        let dir: Directory = match load(
            cas,
            &d,
            "Directory",
            limits.max_directory_bytes,
            "max_directory_bytes",
        ) {
            Err(ExecError::MissingBlobs(m)) => {
                missing.extend(m);
                continue;
            }
            other => other?,
        };
        check_names(&d, &dir)?;
        for f in &dir.files {
            files.insert(digest_field(
                root.function,
                f.digest.as_ref(),
                "FileNode.digest",
            )?);
        }
        if files.len() > limits.max_input_files {
            return Err(ExecError::InvalidArgument(format!(
                "input tree {root} has more than {} distinct files \
                 (execution.max_input_files)",
                limits.max_input_files
            )));
        }
        let subdirs = walk
            .visit(&dir, depth)
            .map_err(|e| ExecError::Cas(CasError::Digest(e)))?;
        if walk.seen() > limits.max_input_directories {
            return Err(ExecError::InvalidArgument(format!(
                "input tree {root} has more than {} distinct directories \
                 (execution.max_input_directories)",
                limits.max_input_directories
            )));
        }
        children.insert(d, subdirs);
    }
    check_depth(root, &children, limits.max_input_depth)?;
    let files: Vec<Digest> = files.into_iter().collect();
    missing.extend(cas.find_missing(&files)?);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ExecError::MissingBlobs(missing))
    }
}

/// The REAPI rules for one Directory's entries (see [`crate::cas::directory`]).
fn check_names(digest: &Digest, dir: &Directory) -> Result<(), ExecError> {
    crate::cas::directory::check_entries(dir)
        .map_err(|e| bad("Directory", format!("{digest}: {e}")))
}

fn too_deep(root: &Digest, max: usize) -> ExecError {
    ExecError::InvalidArgument(format!(
        "input tree {root} is deeper than {max} levels (execution.max_input_depth)"
    ))
}

/// Fails when the longest path from `root` (a directory reached by several paths counts at
/// its deepest) is deeper than `max`. Iterative, so a deep tree cannot overflow the stack.
fn check_depth(
    root: &Digest,
    children: &HashMap<Digest, Vec<Digest>>,
    max: usize,
) -> Result<(), ExecError> {
    // Height of each directory (0 for a leaf), by post-order with an explicit stack.
    let mut height: HashMap<Digest, usize> = HashMap::with_capacity(children.len());
    let mut stack = vec![(*root, false)];
    while let Some((d, expanded)) = stack.pop() {
        if height.contains_key(&d) {
            continue;
        }
        let kids = children.get(&d).map_or(&[][..], Vec::as_slice);
        if expanded {
            let h = kids
                .iter()
                .map(|k| height.get(k).map_or(0, |h| h + 1))
                .max()
                .unwrap_or(0);
            if h > max {
                return Err(too_deep(root, max));
            }
            height.insert(d, h);
        } else {
            stack.push((d, true));
            stack.extend(
                kids.iter()
                    .filter(|k| !height.contains_key(k))
                    .map(|k| (*k, false)),
            );
        }
    }
    Ok(())
}
