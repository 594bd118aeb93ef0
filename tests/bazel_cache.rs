//! Real-client end-to-end test: Bazel 2.1.0 against `kiln serve` as its
//! `--remote_cache`.
//!
//! Bazel comes from `tests/install-bazel.sh` (npm package
//! `@bazel/bazel-linux_x64@2.1.0`, a self-contained binary with an embedded
//! JDK). Set `KILN_BAZEL` to use another binary. The test never skips: without
//! Bazel it fails and says how to install it.
//!
//! The workspace in `tests/bazel/workspace` has only genrules (bash, coreutils,
//! awk, sed), so Bazel builds it fully offline: its only external repositories
//! are the ones embedded in the Bazel binary (`@bazel_tools`, `@platforms`,
//! `@local_config_platform`), which the test checks. Every flag is passed on
//! the command line and all rc files are ignored. See tests/bazel/README.md
//! for what Bazel 2.1 needs here and why each flag is there.
//!
//! Scenarios:
//! * `second_build_is_all_remote_cache_hits`: build once against a fresh
//!   kiln (every spawn is a miss, results are uploaded), `clean --expunge`,
//!   build again in a fresh output base: every spawn must be a remote cache
//!   hit and every output byte-identical (same mode bits) to the first build.
//! * `remote_download_minimal_all_hits`: same first build, then a build with
//!   `--remote_download_minimal` (all hits, outputs stay remote), a build with
//!   `--remote_download_toplevel` in a fresh output base (all hits, top-level
//!   outputs downloaded byte-identical), and finally a partial rebuild after
//!   changing one source: the dependent chain misses and runs locally, which
//!   makes Bazel fetch the remote-only outputs it needs (the 6 MiB big.bin,
//!   the executable tool) from kiln.
//! * `http_remote_cache_second_build_is_all_hits`: the first scenario over
//!   the HTTP cache API (`--remote_cache=http://ADDR/team/ci`, bazel-remote's
//!   `/ac/` and `/cas/` layout under an instance prefix).

mod common;

use common::process::{KilnServer, KilnWorker};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Bazel servers are heavy (a JVM each) and share the machine's two cores:
/// run the scenarios one after the other.
static BAZEL_LOCK: Mutex<()> = Mutex::new(());

/// `workspace(name = ...)` in tests/bazel/workspace/WORKSPACE.
const WORKSPACE_NAME: &str = "kiln_e2e";
/// Repositories Bazel 2.1 materialises from its own embedded files.
const EMBEDDED_REPOS: &[&str] = &["bazel_tools", "local_config_platform", "platforms"];
/// Deadline for a single Bazel client invocation.
const BAZEL_COMMAND_TIMEOUT: Duration = Duration::from_secs(330);
/// Spawns in one full build of the workspace: 7 genrules in the target
/// configuration plus `:transform_tool` again in the host configuration.
const EXPECTED_SPAWNS: usize = 8;

// ---------------------------------------------------------------------------
// kiln server
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Bazel
// ---------------------------------------------------------------------------

fn bazel_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KILN_BAZEL") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "KILN_BAZEL={} does not exist; unset it or run tests/install-bazel.sh",
            path.display()
        );
        return path;
    }
    let dir = std::env::var_os("KILN_BAZEL_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bazel-npm"),
        PathBuf::from,
    );
    let path = dir.join("node_modules/@bazel/bazel-linux_x64/bazel-2.1.0-linux-x86_64");
    assert!(
        path.is_file(),
        "Bazel 2.1.0 not found at {}.\n\
         This end-to-end test needs a real Bazel client and is never skipped.\n\
         Install it with `bash tests/install-bazel.sh` (npm package \
         @bazel/bazel-linux_x64@2.1.0, into target/bazel-npm or $KILN_BAZEL_DIR), \
         or point KILN_BAZEL at a Bazel 2.1.0 binary.",
        path.display()
    );
    path
}

/// One spawn from `--execution_log_json_file`.
#[derive(Debug)]
struct Spawn {
    progress: String,
    runner: String,
    remote_cache_hit: bool,
}

struct BuildResult {
    stderr: String,
    spawns: Vec<Spawn>,
    processes_line: String,
}

impl BuildResult {
    fn hits(&self) -> usize {
        self.spawns.iter().filter(|s| s.remote_cache_hit).count()
    }

    fn describe(&self) -> String {
        let mut out = format!("{}\nspawns:\n", self.processes_line);
        for s in &self.spawns {
            let _ = writeln!(
                out,
                "  hit={:<5} runner={:<18} {}",
                s.remote_cache_hit, s.runner, s.progress
            );
        }
        let warnings = remote_warnings(&self.stderr);
        if !warnings.is_empty() {
            let _ = writeln!(out, "remote warnings/errors:\n  {}", warnings.join("\n  "));
        }
        out
    }
}

/// Runs Bazel with its own `--output_user_root` and shuts down, on drop, every
/// Bazel server it may have started.
struct Bazel<'a> {
    bin: PathBuf,
    workspace: PathBuf,
    user_root: PathBuf,
    scratch: PathBuf,
    jvm_tmp: PathBuf,
    output_bases: Vec<PathBuf>,
    server: &'a KilnServer,
    invocation: usize,
    /// `--remote_cache` when not the server's gRPC URL (the HTTP cache API's).
    remote_cache: Option<String>,
}

impl<'a> Bazel<'a> {
    fn new(bin: PathBuf, root: &Path, server: &'a KilnServer) -> Self {
        let workspace = root.join("workspace");
        copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bazel/workspace"),
            &workspace,
        );
        let scratch = root.join("bazel-scratch");
        fs::create_dir_all(&scratch).unwrap();
        let jvm_tmp = root.join("bazel-jvm-tmp");
        fs::create_dir_all(&jvm_tmp).unwrap();
        Bazel {
            bin,
            workspace,
            user_root: root.join("bazel-user-root"),
            scratch,
            jvm_tmp,
            output_bases: Vec::new(),
            server,
            invocation: 0,
            remote_cache: None,
        }
    }

    fn fail(&self, msg: &str) -> ! {
        self.server.fail(msg)
    }

    fn output_base(&mut self, name: &str) -> PathBuf {
        let ob = self.user_root.join(name);
        if !self.output_bases.contains(&ob) {
            self.output_bases.push(ob.clone());
        }
        ob
    }

    /// Runs one Bazel command; returns (success, stdout, stderr).
    fn run(
        &mut self,
        output_base: &Path,
        command: &str,
        args: &[String],
    ) -> (bool, String, String) {
        let mut cmd = Command::new(&self.bin);
        cmd.current_dir(&self.workspace)
            .arg("--ignore_all_rc_files")
            .arg(format!("--output_user_root={}", self.user_root.display()))
            .arg(format!("--output_base={}", output_base.display()))
            // Safety net: a server we failed to shut down still goes away.
            .arg("--max_idle_secs=300")
            // Keep the JVM's temporary files (Bazel stages the execution log
            // there) inside the test's temp dir instead of leaking into /tmp.
            .arg(format!(
                "--host_jvm_args=-Djava.io.tmpdir={}",
                self.jvm_tmp.display()
            ))
            .arg("--host_jvm_args=-XX:-UsePerfData")
            .arg(command)
            .args(args)
            .env_remove("BAZELISK_SKIP_WRAPPER")
            .env_remove("JAVA_HOME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_with_deadline(cmd, BAZEL_COMMAND_TIMEOUT)
    }

    /// `bazel build //...` against kiln with the given extra flags. Panics
    /// (with Bazel's and kiln's logs) if the build fails.
    fn build(&mut self, output_base_name: &str, label: &str, extra: &[&str]) -> BuildResult {
        self.invocation += 1;
        let output_base = self.output_base(output_base_name);
        let exec_log = self
            .scratch
            .join(format!("exec-{}-{label}.json", self.invocation));
        let mut args: Vec<String> = [
            "--color=no",
            "--curses=no",
            "--noshow_progress",
            "--show_result=0",
            "--incompatible_strict_action_env",
            "--remote_timeout=60",
            // No bazel-* convenience symlinks in the workspace: with several
            // output bases on one workspace, `//...` would otherwise descend
            // into another output base's execroot through them. Outputs are
            // read from the output base directly.
            "--symlink_prefix=/",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        let remote = (self.remote_cache.clone()).unwrap_or_else(|| self.server.url());
        args.push(format!("--remote_cache={remote}"));
        args.push(format!("--execution_log_json_file={}", exec_log.display()));
        args.extend(extra.iter().map(|s| (*s).to_string()));
        args.push("//...".to_string());
        eprintln!("[{label}] bazel build {}", args.join(" "));
        let started = Instant::now();
        let (ok, _stdout, stderr) = self.run(&output_base, "build", &args);
        eprintln!("[{label}] finished in {:.1?}", started.elapsed());
        if !ok {
            self.fail(&format!("[{label}] bazel build failed:\n{stderr}"));
        }
        let log = fs::read_to_string(&exec_log).unwrap_or_else(|e| {
            self.fail(&format!(
                "[{label}] no execution log at {}: {e}\n{stderr}",
                exec_log.display()
            ))
        });
        let spawns = parse_exec_log(&log);
        let processes_line = stderr
            .lines()
            .find(|l| {
                l.starts_with("INFO: ") && (l.contains(" processes") || l.contains(" process:"))
            })
            .unwrap_or("<no `INFO: N processes` line>")
            .to_string();
        let result = BuildResult {
            stderr,
            spawns,
            processes_line,
        };
        eprintln!("[{label}] {}", result.describe());
        result
    }

    fn shutdown(&mut self, output_base_name: &str) {
        let output_base = self.output_base(output_base_name);
        let (ok, _, stderr) = self.run(&output_base, "shutdown", &[]);
        assert!(ok, "bazel shutdown failed: {stderr}");
    }

    fn clean_expunge(&mut self, output_base_name: &str) {
        let output_base = self.output_base(output_base_name);
        let (ok, _, stderr) = self.run(&output_base, "clean", &["--expunge".to_string()]);
        if !ok {
            self.fail(&format!("bazel clean --expunge failed: {stderr}"));
        }
    }
}

impl Drop for Bazel<'_> {
    fn drop(&mut self) {
        for ob in std::mem::take(&mut self.output_bases) {
            // `shutdown` does not start a server when none is running.
            let (ok, _, stderr) = self.run(&ob, "shutdown", &[]);
            if !ok {
                eprintln!("bazel shutdown for {} failed: {stderr}", ob.display());
            }
        }
    }
}

/// Runs `cmd` with piped stdout/stderr, killing it after `timeout`.
/// Returns (exit status success, stdout, stderr). No polling: the deadline is
/// a channel receive on the stderr reader thread, which finishes when the
/// process closes its stderr (i.e. exits).
fn run_with_deadline(mut cmd: Command, timeout: Duration) -> (bool, String, String) {
    let mut child = cmd.spawn().expect("failed to spawn bazel");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_thread = thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        let _ = tx.send(s);
    });
    let Ok(stderr) = rx.recv_timeout(timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("bazel {cmd:?} did not finish within {timeout:?}; killed it");
    };
    let status = child.wait().expect("wait for bazel");
    let stdout = out_thread.join().unwrap_or_default();
    (status.success(), stdout, stderr)
}

/// Parses Bazel 2.1's `--execution_log_json_file`: a stream of pretty-printed
/// `SpawnExec` JSON objects whose top-level fields are indented by two
/// spaces; `progressMessage` and `runner` come before `remoteCacheHit`.
fn parse_exec_log(text: &str) -> Vec<Spawn> {
    fn string_value(line: &str) -> String {
        let v = line.split_once(':').map_or("", |(_, v)| v).trim();
        let v = v.trim_end_matches(',');
        v.trim_matches('"').to_string()
    }
    let mut spawns = Vec::new();
    let mut progress = String::new();
    let mut runner = String::new();
    for line in text.lines() {
        let Some(field) = line.strip_prefix("  \"") else {
            continue;
        };
        if field.starts_with("progressMessage\"") {
            progress = string_value(line);
        } else if field.starts_with("runner\"") {
            runner = string_value(line);
        } else if field.starts_with("remoteCacheHit\"") {
            spawns.push(Spawn {
                progress: std::mem::take(&mut progress),
                runner: std::mem::take(&mut runner),
                remote_cache_hit: string_value(line) == "true",
            });
        }
    }
    spawns
}

/// WARNING/ERROR lines of Bazel's output that concern the remote cache.
fn remote_warnings(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("WARNING") || l.starts_with("ERROR"))
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("remote") || l.contains("cache") || l.contains("grpc")
        })
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// Outputs
// ---------------------------------------------------------------------------

/// Contents and mode bits of an output file.
#[derive(PartialEq, Eq)]
struct Output {
    bytes: Vec<u8>,
    mode: u32,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Output({} bytes, mode {:o})",
            self.bytes.len(),
            self.mode
        )
    }
}

/// Every regular file under `bazel-out/<config>/bin` of an output base,
/// keyed by its path relative to `bazel-out` (e.g. `k8-fastbuild/bin/big.bin`).
fn snapshot_outputs(output_base: &Path) -> BTreeMap<String, Output> {
    let bazel_out = output_base
        .join("execroot")
        .join(WORKSPACE_NAME)
        .join("bazel-out");
    let mut files = BTreeMap::new();
    let Ok(configs) = fs::read_dir(&bazel_out) else {
        return files;
    };
    for config in configs {
        let bin = config.unwrap().path().join("bin");
        if bin.is_dir() {
            collect_files(&bazel_out, &bin, &mut files);
        }
    }
    files
}

fn collect_files(base: &Path, dir: &Path, files: &mut BTreeMap<String, Output>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            collect_files(base, &path, files);
        } else if meta.is_file() {
            let rel = path
                .strip_prefix(base)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let output = Output {
                bytes: fs::read(&path).unwrap(),
                mode: meta.permissions().mode() & 0o777,
            };
            files.insert(rel, output);
        }
    }
}

/// Asserts that `actual` has exactly the files of `expected` (restricted to
/// keys accepted by `filter`), byte for byte and with the same mode bits.
fn assert_same_outputs(
    label: &str,
    expected: &BTreeMap<String, Output>,
    actual: &BTreeMap<String, Output>,
    filter: impl Fn(&str) -> bool,
) {
    let expected: BTreeMap<_, _> = expected.iter().filter(|(k, _)| filter(k)).collect();
    let actual: BTreeMap<_, _> = actual.iter().filter(|(k, _)| filter(k)).collect();
    assert!(!expected.is_empty(), "[{label}] nothing to compare");
    let expected_names: Vec<_> = expected.keys().collect();
    let actual_names: Vec<_> = actual.keys().collect();
    assert_eq!(
        actual_names, expected_names,
        "[{label}] different output files"
    );
    for (name, want) in &expected {
        let got = actual[name];
        assert!(
            got.bytes == want.bytes,
            "[{label}] {name}: contents differ ({} bytes vs {} bytes expected)",
            got.bytes.len(),
            want.bytes.len()
        );
        assert_eq!(got.mode, want.mode, "[{label}] {name}: mode differs");
    }
    eprintln!("[{label}] {} outputs byte-identical", expected.len());
}

fn is_top_level(name: &str) -> bool {
    !name.starts_with("host/")
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).unwrap();
        }
    }
}

// ---------------------------------------------------------------------------
// Assertions on builds
// ---------------------------------------------------------------------------

/// The first build against an empty kiln: every spawn runs locally (a miss)
/// and its result is uploaded without any remote-cache warning.
fn assert_cold_build(bazel: &Bazel<'_>, build: &BuildResult) {
    if build.spawns.len() != EXPECTED_SPAWNS || build.hits() != 0 {
        bazel.fail(&format!(
            "cold build: expected {EXPECTED_SPAWNS} spawns and no hit, got {} spawns / {} hits\n{}",
            build.spawns.len(),
            build.hits(),
            build.describe()
        ));
    }
    let warnings = remote_warnings(&build.stderr);
    if !warnings.is_empty() {
        bazel.fail(&format!(
            "cold build: Bazel reported remote cache problems (uploads failed?):\n{}\n\nfull output:\n{}",
            warnings.join("\n"),
            build.stderr
        ));
    }
}

/// Every spawn of `build` was a remote cache hit, by the execution log and by
/// Bazel's `INFO: N processes: N remote cache hit.` summary.
fn assert_all_hits(bazel: &Bazel<'_>, label: &str, build: &BuildResult) {
    let n = build.spawns.len();
    let summary = format!("INFO: {n} processes: {n} remote cache hit.");
    let ok = n == EXPECTED_SPAWNS
        && build.hits() == n
        && build.processes_line.trim() == summary
        && remote_warnings(&build.stderr).is_empty();
    if !ok {
        bazel.fail(&format!(
            "[{label}] expected all {EXPECTED_SPAWNS} spawns to be remote cache hits \
             (`{summary}`), got {} of {n}\n{}\n\nfull Bazel output:\n{}",
            build.hits(),
            build.describe(),
            build.stderr
        ));
    }
}

/// Only Bazel's embedded repositories were materialised: nothing was fetched.
fn assert_nothing_fetched(output_base: &Path) {
    let mut repos: Vec<String> = fs::read_dir(output_base.join("external"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('@'))
                .collect()
        })
        .unwrap_or_default();
    repos.sort();
    for repo in &repos {
        assert!(
            EMBEDDED_REPOS.contains(&repo.as_str()),
            "Bazel materialised external repository {repo:?} (all: {repos:?}); \
             the workspace must build offline from embedded repositories only"
        );
    }
}

/// Starts kiln and Bazel under `root`, runs the cold build in output base
/// `ob1`, snapshots its outputs, then `clean --expunge` + `shutdown`.
fn cold_build(bazel: &mut Bazel<'_>) -> BTreeMap<String, Output> {
    let cold = bazel.build("ob1", "cold", &["--remote_download_outputs=all"]);
    assert_cold_build(bazel, &cold);
    let ob1 = bazel.output_base("ob1");
    assert_nothing_fetched(&ob1);
    let outputs = snapshot_outputs(&ob1);
    for must in [
        "k8-fastbuild/bin/empty.out",
        "k8-fastbuild/bin/manifest/none.txt",
        "k8-fastbuild/bin/big.bin",
        "k8-fastbuild/bin/final.txt",
        "host/bin/transform.sh",
    ] {
        assert!(
            outputs.contains_key(must),
            "cold build lacks {must}: {outputs:?}"
        );
    }
    assert!(outputs["k8-fastbuild/bin/empty.out"].bytes.is_empty());
    assert!(outputs["k8-fastbuild/bin/big.bin"].bytes.len() >= 4 << 20);
    assert!(
        outputs["host/bin/transform.sh"].mode & 0o111 != 0,
        "tool is not executable"
    );
    bazel.clean_expunge("ob1");
    bazel.shutdown("ob1");
    outputs
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    BAZEL_LOCK
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn second_build_is_all_remote_cache_hits() {
    let _guard = lock();
    let bin = bazel_binary();
    let tmp = tempfile::tempdir().unwrap();
    let server = KilnServer::start(&tmp.path().join("kiln-data"), &tmp.path().join("kiln.log"));
    let mut bazel = Bazel::new(bin, tmp.path(), &server);

    let first = cold_build(&mut bazel);

    let warm = bazel.build("ob2", "warm", &["--remote_download_outputs=all"]);
    assert_all_hits(&bazel, "warm", &warm);
    let second = snapshot_outputs(&bazel.output_base("ob2"));
    assert_same_outputs("warm", &first, &second, |_| true);
    bazel.shutdown("ob2");
}

/// The same scenario over the HTTP cache API (`--remote_cache=http://...`, bazel-remote's
/// layout), under an instance prefix: every spawn of the second build a remote cache hit.
#[test]
fn http_remote_cache_second_build_is_all_hits() {
    let _guard = lock();
    let bin = bazel_binary();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("kiln.toml");
    fs::write(&config, "[http_cache]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    let server = KilnServer::start_with(
        &tmp.path().join("kiln-data"),
        &tmp.path().join("kiln.log"),
        &["--config", config.to_str().unwrap()],
    );
    let Some(addr) = server.http_cache.clone() else {
        server.fail("kiln printed no `listening http-cache http://` line")
    };
    let mut bazel = Bazel::new(bin, tmp.path(), &server);
    bazel.remote_cache = Some(format!("http://{addr}/team/ci"));

    let first = cold_build(&mut bazel);

    let warm = bazel.build("ob2", "warm-http", &["--remote_download_outputs=all"]);
    assert_all_hits(&bazel, "warm-http", &warm);
    let second = snapshot_outputs(&bazel.output_base("ob2"));
    assert_same_outputs("warm-http", &first, &second, |_| true);
    bazel.shutdown("ob2");
}

#[test]
fn remote_download_minimal_all_hits() {
    let _guard = lock();
    let bin = bazel_binary();
    let tmp = tempfile::tempdir().unwrap();
    let server = KilnServer::start(&tmp.path().join("kiln-data"), &tmp.path().join("kiln.log"));
    let mut bazel = Bazel::new(bin, tmp.path(), &server);

    let first = cold_build(&mut bazel);

    // Build without the bytes: all hits, nothing downloaded.
    let minimal = bazel.build("ob2", "minimal", &["--remote_download_minimal"]);
    assert_all_hits(&bazel, "minimal", &minimal);
    let downloaded = snapshot_outputs(&bazel.output_base("ob2"));
    assert!(
        !downloaded.contains_key("k8-fastbuild/bin/big.bin"),
        "--remote_download_minimal downloaded outputs: {downloaded:?}"
    );

    // Top-level outputs fetched in a fresh output base: all hits, and the
    // top-level outputs are byte-identical to the cold build's.
    let toplevel = bazel.build("ob3", "toplevel", &["--remote_download_toplevel"]);
    assert_all_hits(&bazel, "toplevel", &toplevel);
    let fetched = snapshot_outputs(&bazel.output_base("ob3"));
    assert_same_outputs("toplevel", &first, &fetched, is_top_level);
    bazel.shutdown("ob3");

    // Partial rebuild without the bytes, in the minimal build's output base:
    // a changed source makes the manifest -> stage1 -> stage2 -> stage3 chain
    // miss (the unchanged actions are not even looked up again: Bazel knows
    // them from the previous build); those actions run locally and need the
    // remote-only outputs of the earlier hits (the 6 MiB big.bin, the host
    // transform.sh tool) downloaded from kiln as their inputs.
    let gamma = bazel.workspace.join("data/nested/gamma.txt");
    fs::write(&gamma, "gamma ray\nchanged by the test\n").unwrap();
    let partial = bazel.build("ob2", "partial", &["--remote_download_minimal"]);
    let misses: Vec<&str> = partial
        .spawns
        .iter()
        .filter(|s| !s.remote_cache_hit)
        .map(|s| s.progress.as_str())
        .collect();
    let expected_misses = [
        "Executing genrule //:manifest",
        "Executing genrule //:stage1",
        "Executing genrule //:stage2",
        "Executing genrule //:stage3",
    ];
    let mut sorted = misses.clone();
    sorted.sort_unstable();
    if sorted != expected_misses || !remote_warnings(&partial.stderr).is_empty() {
        bazel.fail(&format!(
            "[partial] expected exactly {expected_misses:?} to miss, got {misses:?}\n{}\n{}",
            partial.describe(),
            partial.stderr
        ));
    }
    let ob2 = bazel.output_base("ob2");
    let final_txt = fs::read_to_string(ob2.join(format!(
        "execroot/{WORKSPACE_NAME}/bazel-out/k8-fastbuild/bin/final.txt"
    )))
    .unwrap();
    assert!(
        final_txt.contains(":CHANGED BY THE TEST\n"),
        "rebuilt final.txt lacks the change:\n{final_txt}"
    );
    // stage2's record of big.bin's digest (computed from the downloaded
    // input) matches the cold build's.
    let cold_final =
        String::from_utf8_lossy(&first["k8-fastbuild/bin/final.txt"].bytes).into_owned();
    let digest_line = |s: &str| {
        s.lines()
            .find(|l| l.contains("  -"))
            .map(|l| l.split(':').nth(2).unwrap_or("").to_string())
    };
    assert_eq!(
        digest_line(&final_txt),
        digest_line(&cold_final),
        "big.bin fetched as an input differs from the cold build's"
    );
    bazel.shutdown("ob2");
}

/// `--remote_executor`: every action runs on a `kiln worker` (none locally), and after
/// `clean --expunge` the next build is all remote cache hits with identical outputs.
#[test]
fn remote_execution_then_all_hits() {
    let _guard = lock();
    let bin = bazel_binary();
    let tmp = tempfile::tempdir().unwrap();
    let server = KilnServer::start(&tmp.path().join("kiln-data"), &tmp.path().join("kiln.log"));
    let _worker = KilnWorker::start(
        &server,
        &tmp.path().join("worker"),
        &tmp.path().join("worker.log"),
        2,
    );
    let mut bazel = Bazel::new(bin, tmp.path(), &server);
    let executor = format!("--remote_executor={}", server.url());
    let extra = [executor.as_str(), "--remote_download_outputs=all"];

    let run = bazel.build("ob1", "remote-exec", &extra);
    let n = run.spawns.len();
    let summary = format!("INFO: {n} processes: {n} remote.");
    if n != EXPECTED_SPAWNS
        || run.hits() != 0
        || run.spawns.iter().any(|s| s.runner != "remote")
        || run.processes_line.trim() != summary
    {
        bazel.fail(&format!(
            "expected all {EXPECTED_SPAWNS} spawns to run remotely (`{summary}`)\n{}\n\nfull Bazel output:\n{}",
            run.describe(),
            run.stderr
        ));
    }
    let first = snapshot_outputs(&bazel.output_base("ob1"));
    assert!(first["k8-fastbuild/bin/big.bin"].bytes.len() >= 4 << 20);
    bazel.clean_expunge("ob1");
    bazel.shutdown("ob1");

    let warm = bazel.build("ob2", "remote-exec-warm", &extra);
    assert_all_hits(&bazel, "remote-exec-warm", &warm);
    let second = snapshot_outputs(&bazel.output_base("ob2"));
    assert_same_outputs("remote-exec-warm", &first, &second, |_| true);
    bazel.shutdown("ob2");
}

/// Bazel 2.1.0 through kiln's Unix socket (`--remote_cache=grpc://localhost
/// --remote_proxy=unix:<data>/kiln.sock`): a cold build uploads, and after
/// `clean --expunge` every spawn is a hit with the same outputs. Nothing
/// listens on `localhost`'s gRPC port, so every byte went through the socket.
#[test]
fn unix_socket_remote_proxy_all_hits() {
    let _guard = lock();
    let bin = bazel_binary();
    let tmp = tempfile::tempdir().unwrap();
    let server = KilnServer::start(&tmp.path().join("kiln-data"), &tmp.path().join("kiln.log"));
    let Some(socket) = server.unix_socket.clone() else {
        server.fail("kiln printed no `listening unix:` line")
    };
    let proxy = format!("--remote_proxy=unix:{}", socket.display());
    let flags = [
        "--remote_download_outputs=all",
        "--remote_cache=grpc://localhost",
        proxy.as_str(),
    ];
    let mut bazel = Bazel::new(bin, tmp.path(), &server);

    let cold = bazel.build("ob1", "cold-unix", &flags);
    assert_cold_build(&bazel, &cold);
    let first = snapshot_outputs(&bazel.output_base("ob1"));
    assert!(
        first.contains_key("k8-fastbuild/bin/big.bin"),
        "cold build lacks big.bin: {first:?}"
    );
    bazel.clean_expunge("ob1");
    bazel.shutdown("ob1");

    let warm = bazel.build("ob2", "warm-unix", &flags);
    assert_all_hits(&bazel, "warm-unix", &warm);
    let second = snapshot_outputs(&bazel.output_base("ob2"));
    assert_same_outputs("warm-unix", &first, &second, |_| true);
    bazel.shutdown("ob2");
}

/// Bazel 2.1.0 against a kiln with `[auth]`. Bazel 2.1 sends `--remote_header`
/// only to HTTP caches, never over gRPC (checked: kiln sees no `authorization`
/// header), so it gets rights the other way kiln offers: through the Unix
/// socket (`--remote_proxy`), as a `[[unix_peer]]` uid with read, write and
/// cache-write. A cold build uploads, a second build is all hits; the same
/// build over TCP, where it is anonymous (no rights), is refused with
/// UNAUTHENTICATED and gets no hit.
#[test]
fn auth_unix_peer_all_hits_and_anonymous_tcp_denied() {
    let _guard = lock();
    let bin = bazel_binary();
    let tmp = tempfile::tempdir().unwrap();
    let uid = nix::unistd::getuid().as_raw();
    let tokens = tmp.path().join("tokens.toml");
    fs::write(
        &tokens,
        format!(
            "[[principal]]\nname = \"ci\"\ntoken_sha256 = {:?}\nrights = [\"read\"]\n\n\
             [[unix_peer]]\nuid = {uid}\nrights = [\"read\", \"write\", \"cache-write\"]\n",
            kiln::auth::token_sha256("unused-token")
        ),
    )
    .unwrap();
    let config = tmp.path().join("kiln.toml");
    fs::write(
        &config,
        format!("[auth]\ntokens_file = {:?}\n", tokens.to_str().unwrap()),
    )
    .unwrap();
    let server = KilnServer::start_with(
        &tmp.path().join("kiln-data"),
        &tmp.path().join("kiln.log"),
        &["--config", config.to_str().unwrap()],
    );
    let Some(socket) = server.unix_socket.clone() else {
        server.fail("kiln printed no `listening unix:` line")
    };
    let proxy = format!("--remote_proxy=unix:{}", socket.display());
    let flags = [
        "--remote_download_outputs=all",
        "--remote_cache=grpc://localhost",
        proxy.as_str(),
    ];
    let mut bazel = Bazel::new(bin, tmp.path(), &server);

    let cold = bazel.build("ob1", "cold-peer", &flags);
    assert_cold_build(&bazel, &cold);
    let first = snapshot_outputs(&bazel.output_base("ob1"));
    bazel.clean_expunge("ob1");
    bazel.shutdown("ob1");

    let warm = bazel.build("ob2", "warm-peer", &flags);
    assert_all_hits(&bazel, "warm-peer", &warm);
    let second = snapshot_outputs(&bazel.output_base("ob2"));
    assert_same_outputs("warm-peer", &first, &second, |_| true);
    bazel.shutdown("ob2");

    // The same build over TCP: anonymous, refused.
    let ob3 = bazel.output_base("ob3");
    let args: Vec<String> = [
        "--color=no",
        "--curses=no",
        "--noshow_progress",
        "--symlink_prefix=/",
        "--remote_timeout=60",
        "--incompatible_strict_action_env",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .chain([format!("--remote_cache={}", server.url()), "//...".into()])
    .collect();
    let (ok, _, stderr) = bazel.run(&ob3, "build", &args);
    eprintln!("[anonymous-tcp] ok={ok}\n{stderr}");
    assert!(
        stderr.contains("UNAUTHENTICATED"),
        "anonymous build did not see UNAUTHENTICATED:\n{stderr}"
    );
    assert!(
        !stderr.contains("remote cache hit"),
        "anonymous build got cache hits:\n{stderr}"
    );
    bazel.shutdown("ob3");
}

/// Bazel 2.1.0 over TLS: `--remote_cache=grpcs://localhost:PORT --tls_certificate=ca.pem`
/// against kiln's `server.tls_listen` with a throwaway CA (rcgen). A cold build uploads, and
/// after `clean --expunge` every spawn is a hit with the same outputs; kiln counted the TLS
/// handshakes. Bazel 2.1.0 has no `--tls_client_certificate`/`--tls_client_key` (added in
/// later releases; `bazel help build` lists only `--tls_certificate`), so mutual TLS is tested
/// with tonic, grpcio, `kiln worker` and `kiln bench` in tests/tls.rs.
#[test]
fn tls_remote_cache_all_hits() {
    let _guard = lock();
    let bin = bazel_binary();
    let tmp = tempfile::tempdir().unwrap();
    let ca = common::pki::Ca::new("kiln bazel test CA");
    let (cert, key) = ca.leaf("kiln server", &["localhost", "127.0.0.1"], true);
    let path = |name: &str, text: &str| {
        let p = tmp.path().join(name);
        fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    };
    let (ca_file, cert_file, key_file) = (
        path("ca.pem", &ca.pem),
        path("server.pem", &cert),
        path("server.key", &key),
    );
    let config = tmp.path().join("kiln.toml");
    fs::write(
        &config,
        format!(
            "[server]\ntls_listen = [\"127.0.0.1:0\"]\n\
             [tls]\ncert_file = {cert_file:?}\nkey_file = {key_file:?}\n"
        ),
    )
    .unwrap();
    let server = KilnServer::start_with(
        &tmp.path().join("kiln-data"),
        &tmp.path().join("kiln.log"),
        &["--config", config.to_str().unwrap()],
    );
    let Some(tls) = server.tls.clone() else {
        server.fail("kiln printed no `listening grpcs://` line")
    };
    let port = tls.rsplit(':').next().unwrap().to_string();
    let remote = format!("--remote_cache=grpcs://localhost:{port}");
    let trust = format!("--tls_certificate={ca_file}");
    let flags = [
        "--remote_download_outputs=all",
        remote.as_str(),
        trust.as_str(),
    ];
    let mut bazel = Bazel::new(bin, tmp.path(), &server);

    let cold = bazel.build("ob1", "cold-tls", &flags);
    assert_cold_build(&bazel, &cold);
    let first = snapshot_outputs(&bazel.output_base("ob1"));
    bazel.clean_expunge("ob1");
    bazel.shutdown("ob1");

    let warm = bazel.build("ob2", "warm-tls", &flags);
    assert_all_hits(&bazel, "warm-tls", &warm);
    let second = snapshot_outputs(&bazel.output_base("ob2"));
    assert_same_outputs("warm-tls", &first, &second, |_| true);
    bazel.shutdown("ob2");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = rt
        .block_on(kiln::admin::http_get(
            server.metrics.as_ref().unwrap(),
            "/metrics",
        ))
        .unwrap();
    let handshakes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("kiln_tls_handshakes "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        handshakes >= 2,
        "Bazel's TLS handshakes not counted:\n{metrics}"
    );
}

/// The upstream tier (issue #12): a cold build's results live only in an upstream kiln; a
/// fresh local tier in front of it (its own store empty) serves a new build entirely as remote
/// cache hits, every output byte-identical, by reading everything through.
#[test]
fn cold_local_tier_reads_upstream_results_all_hits() {
    let _guard = lock();
    let bin = bazel_binary();
    let tmp = tempfile::tempdir().unwrap();
    let upstream = KilnServer::start(&tmp.path().join("up-data"), &tmp.path().join("up.log"));
    let first = {
        let mut bazel = Bazel::new(bin.clone(), tmp.path(), &upstream);
        cold_build(&mut bazel)
    };
    let local = start_local_tier(
        tmp.path(),
        "local",
        &format!("endpoint = \"{}\"", upstream.url()),
    );
    let mut bazel = Bazel::new(bin, tmp.path(), &local);
    let through = bazel.build("ob2", "through", &["--remote_download_outputs=all"]);
    assert_all_hits(&bazel, "through", &through);
    let second = snapshot_outputs(&bazel.output_base("ob2"));
    assert_same_outputs("through", &first, &second, |_| true);
    bazel.shutdown("ob2");
}

/// The upstream tier with its upstream dead (issue #12): a Bazel build against the local tier
/// still finishes (every action runs locally, every upload is acknowledged by the local tier
/// and queued durably); once the upstream is back the queue drains into it, and a fresh local
/// tier in front of it then serves a new build entirely as remote cache hits.
#[test]
fn build_finishes_with_the_upstream_dead_and_its_results_arrive_later() {
    let _guard = lock();
    let bin = bazel_binary();
    let tmp = tempfile::tempdir().unwrap();
    let up_data = tmp.path().join("up-data");
    let mut upstream = KilnServer::start(&up_data, &tmp.path().join("up.log"));
    let sock = upstream.unix_socket.clone().expect("upstream unix socket");
    upstream.kill();
    let local = start_local_tier(tmp.path(), "local", &async_upstream(&sock));
    let first = {
        let mut bazel = Bazel::new(bin.clone(), tmp.path(), &local);
        let build = bazel.build("ob1", "upstream-dead", &["--remote_download_outputs=all"]);
        if build.spawns.len() != EXPECTED_SPAWNS || build.hits() != 0 {
            bazel.fail(&format!(
                "expected {EXPECTED_SPAWNS} local spawns, got:\n{}",
                build.describe()
            ));
        }
        let outputs = snapshot_outputs(&bazel.output_base("ob1"));
        bazel.shutdown("ob1");
        outputs
    };
    let upstream = KilnServer::start(&up_data, &tmp.path().join("up2.log"));
    wait_queue_drained(&local);
    let fresh = start_local_tier(
        tmp.path(),
        "local2",
        &format!("endpoint = \"{}\"", upstream.url()),
    );
    let mut bazel = Bazel::new(bin, tmp.path(), &fresh);
    let through = bazel.build("ob2", "through", &["--remote_download_outputs=all"]);
    assert_all_hits(&bazel, "through", &through);
    let second = snapshot_outputs(&bazel.output_base("ob2"));
    assert_same_outputs("through", &first, &second, |_| true);
    bazel.shutdown("ob2");
}

/// A local tier `kiln serve` named `name` in `dir` (`<name>.toml`, `<name>-data`, `<name>.log`)
/// whose `[upstream]` section holds `upstream` (TOML lines).
fn start_local_tier(dir: &Path, name: &str, upstream: &str) -> KilnServer {
    let config = dir.join(format!("{name}.toml"));
    fs::write(&config, format!("[upstream]\n{upstream}\n")).unwrap();
    KilnServer::start_with(
        &dir.join(format!("{name}-data")),
        &dir.join(format!("{name}.log")),
        &["--config", config.to_str().unwrap()],
    )
}

/// `[upstream]` lines for a Unix-socket upstream with async writes and a quickly probing
/// breaker (the tests that kill the upstream).
fn async_upstream(sock: &Path) -> String {
    format!(
        "endpoint = \"unix:{}\"\nwrite = \"async\"\ntimeout_ms = 2000\nbreaker_reset_ms = 200",
        sock.display()
    )
}

/// Waits until `local`'s forwarding queue is empty (drained into its upstream).
fn wait_queue_drained(local: &KilnServer) {
    let metrics = local.metrics.clone().expect("metrics address");
    common::wait::wait_until_ok(Duration::from_mins(2), || {
        let text = fetch_metrics(&metrics);
        let queued = text
            .lines()
            .find_map(|l| l.strip_prefix("kiln_upstream_queue_entries "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        if queued == Some(0.0) {
            return Ok(());
        }
        Err(local.report(format!(
            "the local tier's queue did not drain into the upstream: {queued:?}"
        )))
    });
}

/// GETs `/metrics` from `addr` (HOST:PORT) with a blocking HTTP/1.0 request.
fn fetch_metrics(addr: &str) -> String {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}

/// The upstream killed in the middle of a build (issue #12): the build against the local tier
/// finishes from local data and Bazel's local execution, every upload is acknowledged by the
/// local tier, and what was queued after the kill reaches the upstream once it is back.
///
/// The copied workspace gets a chain of three genrules sleeping 2 s each, so the build is
/// certainly still running when the upstream dies: the kill comes once the local tier has
/// forwarded its first bytes (uploads of the fast targets), and the test checks that the
/// build had not finished by then.
#[test]
fn upstream_killed_mid_build_and_the_build_still_finishes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let _guard = lock();
    let bin = bazel_binary();
    let tmp = tempfile::tempdir().unwrap();
    let up_data = tmp.path().join("up-data");
    let mut upstream = KilnServer::start(&up_data, &tmp.path().join("up.log"));
    let sock = upstream.unix_socket.clone().expect("upstream unix socket");
    let local = start_local_tier(tmp.path(), "local", &async_upstream(&sock));
    let metrics = local.metrics.clone().expect("metrics address");
    let forwarded = || {
        common::process::metric_value(
            &fetch_metrics(&metrics),
            "kiln_upstream_forwarded_bytes_total",
        )
    };
    let mut bazel = Bazel::new(bin, tmp.path(), &local);
    let mut build_file = fs::OpenOptions::new()
        .append(true)
        .open(bazel.workspace.join("BUILD"))
        .unwrap();
    std::io::Write::write_all(
        &mut build_file,
        b"\n# Added by upstream_killed_mid_build: a slow chain that keeps the build running.\n\
          genrule(name = \"slow1\", outs = [\"slow1.out\"], cmd = \"sleep 2; echo 1 > $@\")\n\
          genrule(name = \"slow2\", srcs = [\":slow1\"], outs = [\"slow2.out\"], cmd = \"sleep 2; cat $< > $@; echo 2 >> $@\")\n\
          genrule(name = \"slow3\", srcs = [\":slow2\"], outs = [\"slow3.out\"], cmd = \"sleep 2; cat $< > $@; echo 3 >> $@\")\n",
    )
    .unwrap();
    drop(build_file);
    let finished = AtomicBool::new(false);
    let build = std::thread::scope(|s| {
        let runner = s.spawn(|| {
            let b = bazel.build("ob1", "upstream-killed", &["--remote_download_outputs=all"]);
            finished.store(true, Ordering::SeqCst);
            (b, bazel)
        });
        common::wait::wait_until_ok(Duration::from_mins(3), || {
            if forwarded() > 0.0 {
                Ok(())
            } else if finished.load(Ordering::SeqCst) {
                Err("the build finished before the local tier forwarded anything".to_string())
            } else {
                Err("the local tier has not forwarded anything yet".to_string())
            }
        });
        upstream.kill();
        let killed_mid_build = !finished.load(Ordering::SeqCst);
        let (b, mut bazel) = runner.join().expect("build thread");
        if !killed_mid_build {
            bazel.fail("the build had finished before the upstream was killed");
        }
        if b.spawns.len() != EXPECTED_SPAWNS + 3 || b.hits() != 0 {
            bazel.fail(&format!(
                "expected {} local spawns, got:\n{}",
                EXPECTED_SPAWNS + 3,
                b.describe()
            ));
        }
        bazel.shutdown("ob1");
        b
    });
    drop(build);
    // Back: what was queued after the kill drains into it.
    let _upstream = KilnServer::start(&up_data, &tmp.path().join("up2.log"));
    wait_queue_drained(&local);
}
