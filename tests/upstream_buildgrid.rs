//! BuildGrid (from PyPI, a REAPI service kiln did not write) as the upstream for the cache
//! paths: a cold local tier reads blobs, a large blob and an action result that only BuildGrid
//! has, and `sync` writes through the local tier are in BuildGrid when acknowledged.
//!
//! BuildGrid 0.4.4 is installed into `target/bg-venv` (a Python venv, as tuning/sitting.sh
//! does) when it is not there yet; `KILN_BGD` names another `bgd`. The test never skips: when
//! BuildGrid cannot be installed or started it fails and says why.

#![allow(clippy::float_cmp)]

mod common;
mod upstream_support;

use common::wait::{Lazy, wait_until_ok};
use kiln::proto::reapi::{ActionResult, OutputFile};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tonic::transport::Channel;
use upstream_support::*;

const BUILDGRID: &str = "buildgrid==0.4.4";

/// `bgd`, installed into `target/bg-venv` on first use.
fn bgd() -> PathBuf {
    if let Some(p) = std::env::var_os("KILN_BGD") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "KILN_BGD={} does not exist", p.display());
        return p;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bg-venv");
    let bgd = venv.join("bin/bgd");
    if bgd.is_file() {
        return bgd;
    }
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    if !venv.join("bin/pip").is_file() {
        run(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            "python3 -m venv (Debian: apt-get install python3-venv)",
        );
    }
    run(
        Command::new(venv.join("bin/pip")).args(["install", "-q", BUILDGRID]),
        &format!("pip install {BUILDGRID}"),
    );
    assert!(bgd.is_file(), "{BUILDGRID} installed no {}", bgd.display());
    bgd
}

/// A running BuildGrid (CAS, ByteStream, ActionCache in memory), killed with its process
/// group on drop.
struct BuildGrid {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl BuildGrid {
    fn start(dir: &Path) -> Self {
        let bin = bgd();
        // A free port: BuildGrid takes its address from the config file.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("bg.yml");
        std::fs::write(
            &config,
            format!(
                "server:\n  - !channel\n    address: \"{addr}\"\n    insecure-mode: true\n\
                 storages:\n  - !lru-storage &main-storage\n    size: 512M\n\
                 caches:\n  - !lru-action-cache &main-action\n    storage: *main-storage\n\
                 \x20   max-cached-refs: 10000\n    allow-updates: true\n\
                 instances:\n  - name: \"\"\n    services:\n      - !action-cache\n\
                 \x20       cache: *main-action\n      - !cas\n        storage: *main-storage\n\
                 \x20     - !bytestream\n        storage: *main-storage\n"
            ),
        )
        .unwrap();
        let log = dir.join("bgd.log");
        let child = Command::new(&bin)
            .args(["server", "start"])
            .arg(&config)
            .current_dir(dir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        let mut bg = Self { child, addr, log };
        let (addr, log) = (bg.addr.clone(), bg.log.clone());
        let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
        wait_until_ok(Duration::from_mins(2), || {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = bg.child.try_wait() {
                panic!("bgd exited ({status}) before listening:\n{}", log_text());
            }
            Err(Lazy(|| {
                format!(
                    "bgd not listening on {addr} after 2 minutes:\n{}",
                    log_text()
                )
            }))
        });
        bg
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for BuildGrid {
    fn drop(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn buildgrid_as_the_upstream_for_the_cache_paths() {
    let dir = tempfile::tempdir().unwrap();
    let bg = BuildGrid::start(dir.path());
    let ch = bg.channel().await;

    // Only BuildGrid has these: two small blobs, a large one, an action result.
    let small = b"from buildgrid".to_vec();
    let stdout = b"buildgrid stdout".to_vec();
    let large = bytes(3, 5 << 20);
    put_batch(&ch, &[&small, &stdout]).await;
    put_stream(&ch, &large).await;
    let action = digest(b"a buildgrid action");
    let result = ActionResult {
        output_files: vec![OutputFile {
            path: "out".into(),
            digest: Some(digest(&large).to_proto()),
            ..Default::default()
        }],
        stdout_digest: Some(digest(&stdout).to_proto()),
        ..Default::default()
    };
    update_result(&ch, &action, &result).await.unwrap();

    let local = start_local(
        dir.path(),
        "local",
        &format!(
            "endpoint = \"grpc://{}\"\nwrite = \"sync\"\ntimeout_ms = 5000",
            bg.addr
        ),
    );
    let absent = digest(b"neither has this");
    assert_eq!(
        find_missing(&local, &[digest(&small), digest(&large), absent]).await,
        vec![absent]
    );
    let got = batch_read(&local, &[digest(&small)]).await;
    assert_eq!(got[0].data.as_ref(), &small[..]);
    assert_eq!(read(&local, &digest(&large), 0, 0).await.unwrap(), large);
    let got = get_result(&local, &action, true)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\nbgd log:\n{}", bg.log_text()));
    assert_eq!(got.stdout_raw.as_ref(), &stdout[..]);
    assert_eq!(got.output_files, result.output_files);
    assert!(
        metric(
            &local,
            "kiln_upstream_reads_total{kind=\"ac\",result=\"hit\"}"
        )
        .await
            == 1.0
    );

    // `sync` writes through kiln are in BuildGrid when acknowledged.
    let fresh = b"written through kiln".to_vec();
    put_batch(&local, &[&fresh]).await;
    let big = bytes(4, 5 << 20);
    put_stream(&local, &big).await;
    let missing = find_missing(&ch, &[digest(&fresh), digest(&big)]).await;
    assert!(missing.is_empty(), "not in BuildGrid: {missing:?}");
    let new_action = digest(b"a kiln action");
    let new_result = ActionResult {
        stdout_digest: Some(digest(&fresh).to_proto()),
        ..Default::default()
    };
    update_result(&local, &new_action, &new_result)
        .await
        .unwrap();
    let there = get_result(&ch, &new_action, false)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\nbgd log:\n{}", bg.log_text()));
    assert_eq!(there.stdout_digest, Some(digest(&fresh).to_proto()));
}
