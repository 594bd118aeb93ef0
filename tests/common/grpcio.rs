//! Python `grpcio` (gRPC's C core, from PyPI) as a client: installs it once
//! (tests/python/install-grpcio.sh, into target/python-grpcio) and runs
//! tests/python/grpc_clients.py, whose scenarios assert what the server answered.
//! Never skips: without python3, pip or PyPI the install fails and says so.

use super::wait::holds_within;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Deadline for one run of the script.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_mins(4);

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The directory holding grpcio (and the other pinned PyPI packages), installed on first use.
pub fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("tests/python/install-grpcio.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run tests/python/install-grpcio.sh (needs bash)");
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && !dir.is_empty(),
            "installing grpcio failed ({}); this test needs python3 with pip and PyPI \
             access and is never skipped: run `bash tests/python/install-grpcio.sh`",
            out.status
        );
        PathBuf::from(dir)
    })
}

/// Runs tests/python/grpc_clients.py with `args`, generating the Python stubs into `stubs`.
/// Returns whether it succeeded and its output (stdout then stderr), or `None` when it did
/// not finish within [`SCRIPT_TIMEOUT`] (it is killed then).
pub fn run(stubs: &Path, args: &[&str]) -> Option<(bool, String)> {
    run_script("grpc_clients.py", stubs, args)
}

/// [`run`] of another script in tests/python (which takes the same `--proto` and `--out`).
pub fn run_script(script: &str, stubs: &Path, args: &[&str]) -> Option<(bool, String)> {
    let mut child = Command::new("python3")
        .arg(repo().join("tests/python").join(script))
        .arg("--proto")
        .arg(repo().join("proto"))
        .arg("--out")
        .arg(stubs)
        .args(args)
        .env("PYTHONPATH", dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    if !holds_within(SCRIPT_TIMEOUT, || {
        child.try_wait().expect("wait for python3").is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    let out = child.wait_with_output().expect("python3 output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{script} {args:?}:\n{text}");
    Some((out.status.success(), text))
}
