//! Black-box tests of the worker's defences (issue #11, items 13-17): hostile input trees,
//! symlinked output parents, processes that leave their session, and actions that try to
//! reach the server. Each starts a real `kiln serve` and `kiln worker`.

mod exec_support;

use exec_support::*;
use kiln::proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode};
use prost::Message;

fn file(name: &str, d: &kiln::digest::Digest) -> FileNode {
    FileNode {
        name: name.into(),
        digest: Some(d.to_proto()),
        ..Default::default()
    }
}

/// Whether `msg` is the server's own rejection of the Execute (its checks may run before the
/// worker's and word the reason their own way); the worker's come as `WORKER: ...`.
fn rejected_at_execute(msg: &str) -> bool {
    !msg.starts_with("WORKER: ")
}

/// Runs `script` with the input root `root`, returning (code, message) and stdout; a status
/// from the worker (in the ExecuteResponse) has its message prefixed with `WORKER: `.
async fn run_in(
    c: &Client,
    script: &str,
    root: kiln::digest::Digest,
) -> (tonic::Code, String, String) {
    let mut spec = sh(script);
    spec.input_root = Some(root);
    spec.do_not_cache = true;
    let d = c.action(&spec).await;
    let r = c.execute(&d).await;
    let (code, mut msg) = outcome(&r);
    if r.is_ok() {
        msg = format!("WORKER: {msg}");
    }
    let stdout = match &r {
        Ok((_, resp)) => match resp.result.as_ref().and_then(|r| r.stdout_digest.as_ref()) {
            Some(d) => String::from_utf8_lossy(&c.get(d).await).into_owned(),
            None => String::new(),
        },
        Err(_) => String::new(),
    };
    (code, msg, stdout)
}

/// Item 13: a Directory naming `x` twice is rejected, and the worker's cache still serves the
/// right bytes to a later action (the copy fallback once wrote B into the cached file of A).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_names_are_rejected_and_do_not_poison_later_actions() {
    let server = Server::start();
    let _w = server.worker_sandboxed(&server.bots, 1, &[], &[]);
    let c = server.client().await;
    let a = c.put(b"content of A\n").await;
    let b = c.put(b"content of B\n").await;
    let dup = c
        .put_msg(&Directory {
            files: vec![file("x", &a), file("x", &b)],
            ..Default::default()
        })
        .await;
    let (code, msg, _) = run_in(&c, "cat x", dup).await;
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(
        msg.contains("\"x\"") || rejected_at_execute(&msg),
        "names the duplicate: {msg}"
    );

    // Unsorted names are rejected too.
    let unsorted = c
        .put_msg(&Directory {
            files: vec![file("b", &a), file("a", &b)],
            ..Default::default()
        })
        .await;
    let (code, msg, _) = run_in(&c, "true", unsorted).await;
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");

    let clean = c
        .put_msg(&Directory {
            files: vec![file("y", &a)],
            ..Default::default()
        })
        .await;
    let (code, msg, out) = run_in(&c, "cat y", clean).await;
    assert_eq!(code, tonic::Code::Ok, "{msg}");
    assert_eq!(
        out, "content of A\n",
        "the cached input of A was overwritten"
    );
}

/// Item 14: a 3,000-level input tree fails cleanly with INVALID_ARGUMENT naming the limit,
/// and the worker lives on to run the next action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_very_deep_input_tree_fails_cleanly() {
    let server = Server::start();
    let _w = server.worker_sandboxed(&server.bots, 1, &[], &[]);
    let c = server.client().await;
    let mut blobs = Vec::new();
    let mut child = Directory::default().encode_to_vec();
    blobs.push(child.clone());
    for _ in 0..3000 {
        let parent = Directory {
            directories: vec![DirectoryNode {
                name: "d".into(),
                digest: Some(sha(&child).to_proto()),
            }],
            ..Default::default()
        };
        child = parent.encode_to_vec();
        blobs.push(child.clone());
    }
    c.put_many(&blobs).await;
    let (code, msg, _) = run_in(&c, "true", sha(&child)).await;
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(
        msg.contains(&kiln::worker::MAX_INPUT_DEPTH.to_string()) || rejected_at_execute(&msg),
        "names the limit: {msg}"
    );
    // The worker survived: the next action runs.
    let (code, msg, out) = run_in(&c, "echo alive", c.put_msg(&Directory::default()).await).await;
    assert_eq!(code, tonic::Code::Ok, "{msg}");
    assert_eq!(out, "alive\n");
}

/// Item 15: an output whose parent is an input symlink pointing outside the action dir
/// creates nothing there and fails as an escape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_under_an_input_symlink_creates_nothing_outside() {
    let server = Server::start();
    let _w = server.worker_sandboxed(&server.bots, 1, &[], &[]);
    let c = server.client().await;
    let outside = server.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let root = c
        .put_msg(&Directory {
            symlinks: vec![SymlinkNode {
                name: "link".into(),
                target: outside.to_str().unwrap().into(),
                ..Default::default()
            }],
            ..Default::default()
        })
        .await;
    let mut spec = sh("true");
    spec.input_root = Some(root);
    spec.output_paths = vec!["link/made/out.txt".into()];
    let r = c.execute(&c.action(&spec).await).await;
    let (code, msg) = outcome(&r);
    assert!(
        !outside.join("made").exists(),
        "a directory was created outside the action dir"
    );
    assert_eq!(code, tonic::Code::InvalidArgument, "{msg}");
    assert!(msg.contains("symlink"), "{msg}");
}

/// Kills marked processes a failed test left behind, so they do not outlive it.
fn kill_marked(marker: &str) {
    for pid in processes_with(marker) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status();
    }
}

/// Item 16: a child that left the action's session (`setsid`) dies at the timeout, and one
/// left running by an action that exits dies at its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setsid_children_die_with_their_action() {
    setsid_children_die(&[]).await;
}

/// Item 16 with `--isolation namespaces`: the PID namespace takes them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setsid_children_die_with_their_action_in_a_pid_namespace() {
    setsid_children_die(&["--isolation", "namespaces"]).await;
}

async fn setsid_children_die(worker_args: &[&str]) {
    let server = Server::start();
    let _w = server.worker_sandboxed(&server.bots, 1, &[], worker_args);
    let c = server.client().await;
    let nonce = uuid::Uuid::new_v4().as_u128() % 1_000_000_000;
    for (case, script, timeout) in [
        ("timeout", "setsid sleep 1000.{N} & sleep 1000.{N}", 2),
        ("exit", "setsid sleep 1000.{N} & echo started", 0),
        (
            "double fork",
            "(setsid sh -c 'sleep 1000.{N} & :' &) ; sleep 1000.{N}",
            2,
        ),
    ] {
        let marker = format!("1000.{nonce}{}", case.len());
        let mut spec = sh(&script.replace("1000.{N}", &marker));
        spec.timeout_secs = timeout;
        spec.do_not_cache = true;
        let r = c.execute(&c.action(&spec).await).await;
        let (code, msg) = outcome(&r);
        let want = if timeout > 0 {
            tonic::Code::DeadlineExceeded
        } else {
            tonic::Code::Ok
        };
        // Not a failing wait: what is left after 10 s is asserted on below, after cleanup.
        let mut left = Vec::new();
        wait::holds_within(std::time::Duration::from_secs(10), || {
            left = processes_with(&marker);
            left.is_empty()
        });
        kill_marked(&marker);
        assert_eq!(code, want, "{case}: {msg}");
        assert!(
            left.is_empty(),
            "{case}: processes {left:?} outlived their action"
        );
    }
}

/// Item 17: an action runs as a user other than root, cannot see or connect to the server's
/// sockets, and cannot write outside its own directory (a world-writable directory elsewhere
/// is read-only to it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_cannot_reach_the_server_or_write_outside() {
    let server = Server::start();
    let _w = server.worker_sandboxed(&server.bots, 1, &[], &[]);
    let c = server.client().await;
    let bots = server.bots.strip_prefix("unix:").unwrap().to_string();
    let kiln_sock = server.dir.path().join("data").join("kiln.sock");
    assert!(
        kiln_sock.exists(),
        "the test expects kiln.sock at {kiln_sock:?}"
    );
    let open = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("world-writable-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&open).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let connect = r#"perl -MSocket -e 'socket(S, PF_UNIX, SOCK_STREAM, 0) or die "socket: $!\n"; if (connect(S, pack_sockaddr_un($ARGV[0]))) { print "connected\n" } else { print "refused: $!\n" }'"#;
    // The server's gRPC TCP port (UpdateActionResult needs no socket file), and the action's
    // own loopback, which must still work.
    let tcp = r#"perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(PeerAddr => $ARGV[0], Timeout => 3) ? "tcp-connected\n" : "tcp-refused\n"'"#;
    let own = r#"perl -MIO::Socket::INET -e '$l = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1:0") or die "listen: $!"; print IO::Socket::INET->new(PeerAddr => "127.0.0.1:" . $l->sockport) ? "own-loopback\n" : "no-own-loopback\n"'"#;
    let script = format!(
        "echo uid $(id -u); \
         for s in {bots} {kiln}; do {connect} \"$s\"; done; \
         touch {open}/escaped 2>/dev/null && echo wrote-outside || echo no-write-outside; \
         touch {data}/escaped 2>/dev/null && echo wrote-data || echo no-write-data; \
         touch here && echo wrote-own; \
         {tcp} {grpc}; {own}",
        bots = bots,
        kiln = kiln_sock.display(),
        open = open.display(),
        data = server.dir.path().join("data").display(),
        grpc = server.grpc,
    );
    let (code, msg, out) = run_in(&c, &script, c.put_msg(&Directory::default()).await).await;
    assert_eq!(code, tonic::Code::Ok, "{msg}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 8, "{out}");
    let uid: u32 = lines[0].strip_prefix("uid ").unwrap().parse().unwrap();
    assert_ne!(uid, 0, "the action ran as root: {out}");
    for l in &lines[1..3] {
        assert!(
            l.starts_with("refused"),
            "a server socket was reachable: {out}"
        );
    }
    assert_eq!(lines[3], "no-write-outside", "{out}");
    assert_eq!(lines[4], "no-write-data", "{out}");
    assert_eq!(lines[5], "wrote-own", "{out}");
    assert_eq!(
        lines[6], "tcp-refused",
        "the server's TCP port was reachable: {out}"
    );
    assert_eq!(
        lines[7], "own-loopback",
        "the action's own loopback is down: {out}"
    );
    assert!(!open.join("escaped").exists());
    assert!(!server.dir.path().join("data/escaped").exists());
}

/// Item 17: a worker refuses to run actions as root unless told to.
#[test]
fn root_actions_need_allow_root_actions() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "worker",
            "--server",
            "unix:/nonexistent/bots.sock",
            "--work-dir",
        ])
        .arg(dir.path())
        .args(["--action-user", "0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--allow-root-actions"), "{err}");
}

/// Builds `source` with the system's C compiler and `flags` into `dir/name`; its bytes.
fn build_c(dir: &std::path::Path, name: &str, source: &str, flags: &[&str]) -> Vec<u8> {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, source).unwrap();
    let out = dir.join(name);
    let status = std::process::Command::new("cc")
        .args(flags)
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .status()
        .expect("this test needs a C compiler (cc)");
    assert!(status.success(), "cc failed to build {name}");
    std::fs::read(&out).unwrap()
}

/// A shared library whose constructor appends `uid=<euid>` to `$KILN_PRELOAD_LOG` (when set)
/// and to `preload-ran` in the working directory.
fn preload_library(dir: &std::path::Path) -> Vec<u8> {
    build_c(
        dir,
        "preload.so",
        "#include <stdio.h>\n#include <stdlib.h>\n#include <unistd.h>\n\
         __attribute__((constructor)) static void ran(void) {\n\
           const char *log = getenv(\"KILN_PRELOAD_LOG\"); FILE *f;\n\
           if (log && (f = fopen(log, \"a\"))) { fprintf(f, \"uid=%d\\n\", (int)geteuid()); fclose(f); }\n\
           if ((f = fopen(\"preload-ran\", \"a\"))) { fprintf(f, \"uid=%d\\n\", (int)geteuid()); fclose(f); }\n\
         }\n",
        &["-shared", "-fPIC"],
    )
}

/// The action's environment never reaches the sandbox helper while it is privileged. An
/// action setting `LD_PRELOAD=./preload.so` (a library of its input root, relative to its
/// working directory) had it loaded by the dynamic loader of the helper, running as root
/// before the sandbox existed: code of the action's choosing, as root, outside the sandbox.
/// Both ways a helper starts are covered: ahead of the action (the default), and for the
/// action itself (`--isolation namespaces`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_action_environment_does_not_reach_the_privileged_helper() {
    let tmp = tempfile::tempdir().unwrap();
    let so = preload_library(tmp.path());
    for extra in [&[][..], &["--isolation", "namespaces"][..]] {
        let log = tmp.path().join(format!("preload-{}.log", extra.len()));
        let server = Server::start();
        let _w = server.worker_sandboxed(&server.bots, 1, &[], extra);
        let c = server.client().await;
        let lib = c.put(&so).await;
        let root = c
            .put_msg(&Directory {
                files: vec![file("preload.so", &lib)],
                ..Default::default()
            })
            .await;
        let mut spec = sh("cat preload-ran");
        spec.input_root = Some(root);
        spec.do_not_cache = true;
        spec.env.push(("LD_PRELOAD".into(), "./preload.so".into()));
        spec.env
            .push(("KILN_PRELOAD_LOG".into(), log.to_str().unwrap().to_string()));
        let (_, resp) = c.execute(&c.action(&spec).await).await.unwrap();
        let r = resp.result.unwrap();
        let out = String::from_utf8(c.get(r.stdout_digest.as_ref().unwrap()).await).unwrap();
        let err = String::from_utf8(c.get(r.stderr_digest.as_ref().unwrap()).await).unwrap();
        // The library works: the action's own processes load it, as the action user.
        assert_eq!(r.exit_code, 0, "{extra:?}: {out}{err}");
        assert!(
            out.contains("uid=") && !out.contains("uid=0\n"),
            "{extra:?}: {out}"
        );
        // Nothing ran as root outside the sandbox (the log is outside it: only a process
        // that is not sandboxed yet can write it).
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            logged.is_empty(),
            "{extra:?}: the action's LD_PRELOAD ran outside the sandbox: {logged}"
        );
    }
}

/// A process whose main thread has exited shows as a zombie in `/proc` while its other
/// threads run on. The sweep took it for one and never killed it: orphaned out of its session
/// that way, it outlived its action (and every later sweep waited for it to go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_whose_main_thread_exited_dies_with_its_action() {
    let tmp = tempfile::tempdir().unwrap();
    let zl = build_c(
        tmp.path(),
        "zl",
        "#include <pthread.h>\n#include <unistd.h>\n\
         static void *sleeper(void *a) { for (;;) pause(); return a; }\n\
         int main(void) {\n\
           if (fork() == 0) { setsid(); pthread_t t; pthread_create(&t, 0, sleeper, 0); pthread_exit(0); }\n\
           return 0;\n\
         }\n",
        &["-pthread"],
    );
    let server = Server::start();
    let _w = server.worker_sandboxed(&server.bots, 1, &[], &[]);
    let c = server.client().await;
    let exe = c.put(&zl).await;
    let root = c
        .put_msg(&Directory {
            files: vec![FileNode {
                is_executable: true,
                ..file("zl", &exe)
            }],
            ..Default::default()
        })
        .await;
    let marker = format!("zl-marker-{}", uuid::Uuid::new_v4().simple());
    let (code, msg, out) = run_in(&c, &format!("./zl {marker}; echo started"), root).await;
    let mut left = Vec::new();
    wait::holds_within(std::time::Duration::from_secs(10), || {
        left = live_threads_with(&marker);
        left.is_empty()
    });
    for t in &left {
        // `/proc/PID/task/TID`: the process goes with all its threads.
        if let Some(pid) = t.split('/').nth(2) {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .status();
        }
    }
    assert_eq!(code, tonic::Code::Ok, "{msg}");
    assert_eq!(out.trim(), "started");
    assert!(left.is_empty(), "threads {left:?} outlived their action");
}
