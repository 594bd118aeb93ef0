//! Issue #11 item 5: a connection flood at the file descriptor limit neither spins the accept
//! loop nor locks clients out for good, and connections are capped by configuration.

mod common;

use common::process::KilnServer;
use common::wait::{poll_until, poll_until_ok};
use kiln::proto::reapi::GetCapabilitiesRequest;
use kiln::proto::reapi::capabilities_client::CapabilitiesClient;
use std::net::TcpStream;
use std::time::Duration;

/// CPU time (user + system) of a process in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the state field.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn metric(text: &str, name: &str) -> i64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing from:\n{text}"))
}

async fn capabilities_ok(url: &str) -> bool {
    let Ok(ep) = tonic::transport::Endpoint::from_shared(url.to_string()) else {
        return false;
    };
    let Ok(ch) = ep.connect_timeout(Duration::from_secs(2)).connect().await else {
        return false;
    };
    tokio::time::timeout(
        Duration::from_secs(5),
        CapabilitiesClient::new(ch).get_capabilities(GetCapabilitiesRequest::default()),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

fn start(extra_toml: &str) -> (tempfile::TempDir, KilnServer) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("kiln.toml");
    std::fs::write(
        &cfg,
        format!(
            "{extra_toml}\n[storage]\ncapacity_bytes = 268435456\nsegment_size_bytes = 16777216\n\
             [execution]\nenabled = false\n"
        ),
    )
    .unwrap();
    let server = KilnServer::start_with(
        &dir.path().join("data"),
        &dir.path().join("serve.log"),
        &["--config", cfg.to_str().unwrap()],
    );
    (dir, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fd_exhaustion_backs_off_and_recovers() {
    let (_dir, server) = start("");
    let pid = server.pid();
    // Lower the running server's limit so that a few hundred connections exhaust it.
    let ok = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), "--nofile=96:96"])
        .status()
        .expect("prlimit (util-linux)");
    assert!(ok.success());
    let addr = format!("127.0.0.1:{}", server.port);
    let mut flood = Vec::new();
    for _ in 0..200 {
        if let Ok(s) = TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1)) {
            flood.push(s);
        }
    }
    // Wait for the accept loop to hit EMFILE (it logs once), then measure its CPU.
    let metrics = server.metrics.clone().expect("metrics address");
    poll_until(
        "the server hit its fd limit",
        Duration::from_secs(30),
        || async {
            server
                .log_tail()
                .contains("cannot accept connections")
                .then_some(())
        },
    )
    .await;
    let t0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_ticks(pid) - t0;
    // 2 s is 200 ticks at 100 Hz; a spinning accept loop burns nearly all of them.
    assert!(
        used < 60,
        "accept loop used {used} ticks of CPU in 2 s at EMFILE"
    );
    drop(flood);
    poll_until(
        "clients served after the flood ended",
        Duration::from_secs(30),
        || async { capabilities_ok(&server.endpoint()).await.then_some(()) },
    )
    .await;
    let m = kiln::admin::http_get(&metrics, "/metrics").await.unwrap();
    assert!(metric(&m, "kiln_accept_fd_exhausted") > 0, "{m}");
    let log = std::fs::read_to_string(server.log_path()).unwrap();
    let logged = log.matches("cannot accept connections").count() as i64;
    assert!(
        logged >= 1 && logged * 3 < metric(&m, "kiln_accept_fd_exhausted"),
        "logged {logged} times: once per episode, not per failed accept\n{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_and_served_again_when_freed() {
    let (_dir, server) = start("[server]\nmax_connections = 16");
    let addr = format!("127.0.0.1:{}", server.port);
    let metrics = server.metrics.clone().expect("metrics address");
    let flood: Vec<TcpStream> = (0..40)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    assert_eq!(
        flood.len(),
        40,
        "the kernel backlog takes connections past the cap"
    );
    let m = poll_until_ok(Duration::from_secs(30), || async {
        let m = kiln::admin::http_get(&metrics, "/metrics").await.unwrap();
        let open = metric(&m, "kiln_connections_open");
        assert!(open <= 16, "{open} connections open past the cap of 16");
        if open == 16 {
            Ok(m)
        } else {
            Err(format!("connections never reached the cap: {m}"))
        }
    })
    .await;
    assert_eq!(metric(&m, "kiln_connections_limit"), 16);
    drop(flood);
    poll_until(
        "served after the flood closed",
        Duration::from_secs(30),
        || async { capabilities_ok(&server.endpoint()).await.then_some(()) },
    )
    .await;
}
