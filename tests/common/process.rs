//! A real `kiln serve` child process for black-box tests: started on port 0, its ports read
//! from the `listening ...` lines it prints, killed on drop.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Deadline for kiln to print `ready`.
const SERVER_READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The value of the series `key` (exactly as exposed, labels included) in a `/metrics`
/// text; 0 when absent.
pub fn metric_value(text: &str, key: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0)
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A running `kiln serve`, killed on drop.
pub struct KilnServer {
    child: Child,
    /// The TCP port the server chose.
    pub port: u16,
    /// The Unix socket path it printed.
    pub unix_socket: Option<PathBuf>,
    /// The Bots (Remote Worker API) socket it printed, when execution is enabled.
    pub bots_socket: Option<PathBuf>,
    /// `grpc://ADDR` of a TCP bots listener, when configured.
    pub bots_tcp: Option<String>,
    /// `HOST:PORT` of the metrics endpoint it printed.
    pub metrics: Option<String>,
    /// `ADDR` of the first TLS listener (`listening grpcs://ADDR`), when configured.
    pub tls: Option<String>,
    /// `ADDR` of the first TLS bots listener (`listening bots grpcs://ADDR`), when configured.
    pub bots_tls: Option<String>,
    /// `HOST:PORT` of the HTTP cache API (`listening http-cache http://ADDR`), when configured.
    pub http_cache: Option<String>,
    log: PathBuf,
}

/// Reads `child`'s stdout lines until one equals `last` (returned with the lines before it),
/// then keeps draining it in the background so the child never blocks on a full pipe.
fn read_until(child: &mut Child, last: &str, timeout: Duration) -> Result<Vec<String>, String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel::<String>();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            // Once nobody listens any more, keep draining anyway.
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) => {
                let done = line.trim() == last;
                seen.push(line);
                if done {
                    return Ok(seen);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!(
                    "did not print `{last}` within {timeout:?}; stdout so far: {seen:?}"
                ));
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait().ok();
                return Err(format!(
                    "closed stdout before `{last}` (exit status {status:?}); stdout: {seen:?}"
                ));
            }
        }
    }
}

impl KilnServer {
    /// Starts `kiln serve` on port 0 with `data_dir`, logging stderr to `log`, with `extra`
    /// arguments, and waits for `ready`.
    pub fn start_with(data_dir: &Path, log: &Path, extra: &[&str]) -> Self {
        Self::start_with_env(data_dir, log, extra, &[])
    }

    /// [`KilnServer::start_with`] with extra environment variables for the server.
    pub fn start_with_env(
        data_dir: &Path,
        log: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        fs::create_dir_all(data_dir).unwrap();
        let log_file = fs::File::create(log).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--metrics-listen")
            .arg("127.0.0.1:0")
            .args(extra)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("failed to spawn kiln");
        let lines = read_until(&mut child, "ready", SERVER_READY_TIMEOUT);
        let mut server = KilnServer {
            child,
            port: 0,
            unix_socket: None,
            bots_socket: None,
            bots_tcp: None,
            metrics: None,
            tls: None,
            bots_tls: None,
            http_cache: None,
            log: log.to_path_buf(),
        };
        let seen = match lines {
            Ok(lines) => lines,
            Err(e) => server.fail(&format!("kiln serve: {e}")),
        };
        for line in &seen {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("listening grpc://") {
                match rest
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
                {
                    Some(p) => server.port = p,
                    None => server.fail(&format!("cannot parse port from {line:?}")),
                }
            }
            if let Some(rest) = line.strip_prefix("listening unix:") {
                server.unix_socket = Some(PathBuf::from(rest));
            }
            if let Some(rest) = line.strip_prefix("listening bots unix:") {
                server.bots_socket = Some(PathBuf::from(rest));
            }
            if let Some(rest) = line.strip_prefix("listening http://") {
                server.metrics = rest.strip_suffix("/metrics").map(str::to_string);
            }
            if let Some(rest) = line.strip_prefix("listening bots grpc://") {
                server.bots_tcp = Some(format!("grpc://{rest}"));
            }
            if let Some(rest) = line.strip_prefix("listening grpcs://") {
                server.tls.get_or_insert_with(|| rest.to_string());
            }
            if let Some(rest) = line.strip_prefix("listening http-cache http://") {
                server.http_cache = Some(rest.to_string());
            }
            if let Some(rest) = line.strip_prefix("listening bots grpcs://") {
                server.bots_tls.get_or_insert_with(|| rest.to_string());
            }
        }
        if server.port == 0 {
            server.fail(&format!(
                "kiln printed `ready` without a `listening grpc://` line; stdout: {seen:?}"
            ));
        }
        eprintln!("kiln ready: {}", seen.join(" | "));
        server
    }

    /// Starts `kiln serve` with default arguments.
    pub fn start(data_dir: &Path, log: &Path) -> Self {
        Self::start_with(data_dir, log, &[])
    }

    /// The gRPC URL clients use.
    pub fn url(&self) -> String {
        format!("grpc://127.0.0.1:{}", self.port)
    }

    /// The last lines of the server's stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), 60)
    }

    /// Whether the server's stderr has a line containing `text` so far.
    pub fn logged(&self, text: &str) -> bool {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .contains(text)
    }

    /// Waits until `cond` holds; once `timeout` has passed without it, fails naming `what`
    /// with the log tail (read only then), which is what a reader of the failure needs.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        super::wait::wait_until_ok(timeout, || {
            if cond() {
                Ok(())
            } else {
                Err(self.report(what))
            }
        });
    }

    /// As [`Self::wait_until`], for a condition that must await.
    pub async fn poll_until<F>(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> F)
    where
        F: std::future::Future<Output = bool>,
    {
        super::wait::poll_until_ok(timeout, || {
            let next = cond();
            async move {
                if next.await {
                    Ok(())
                } else {
                    Err(self.report(what))
                }
            }
        })
        .await;
    }

    /// `msg` with the log tail as [`Self::fail`] shows it, the tail read only when shown:
    /// the `Err` of a wait's check (`common/wait.rs`).
    pub fn report<M: std::fmt::Display>(&self, msg: M) -> Report<'_, M> {
        Report { server: self, msg }
    }

    pub fn fail(&self, msg: &str) -> ! {
        panic!(
            "{msg}\n---- kiln stderr (last lines, full log at {}) ----\n{}",
            self.log.display(),
            self.log_tail()
        )
    }
}

/// A failure message with the server's log tail, read only when shown.
pub struct Report<'a, M> {
    server: &'a KilnServer,
    msg: M,
}

impl<M: std::fmt::Display> std::fmt::Display for Report<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n---- kiln stderr (last lines, full log at {}) ----\n{}",
            self.msg,
            self.server.log.display(),
            self.server.log_tail()
        )
    }
}

impl KilnServer {
    /// Kills the server with SIGKILL (no chance to flush anything) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Where the server's stderr goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server's process id (for /proc/<pid>/status: RSS, peak RSS, fds).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `http://` endpoint for tonic clients.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for KilnServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `kiln worker`, killed on drop.
pub struct KilnWorker {
    child: Child,
}

impl KilnWorker {
    /// Starts `kiln worker` on `server`'s bots socket with its work dir at `work_dir`, logging
    /// to `log`, and waits until it is connected.
    pub fn start(server: &KilnServer, work_dir: &Path, log: &Path, concurrency: usize) -> Self {
        let bots = server
            .bots_socket
            .as_ref()
            .unwrap_or_else(|| server.fail("kiln serve printed no `listening bots unix:` line"));
        Self::start_with(
            &format!("unix:{}", bots.display()),
            work_dir,
            log,
            concurrency,
            &[],
        )
    }

    /// Starts `kiln worker --server <server>` (`unix:PATH` or `grpc://ADDR`) with `extra`
    /// arguments, and waits for `worker ready`.
    pub fn start_with(
        server: &str,
        work_dir: &Path,
        log: &Path,
        concurrency: usize,
        extra: &[&str],
    ) -> Self {
        fs::create_dir_all(work_dir).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .arg("worker")
            .arg("--server")
            .arg(server)
            .arg("--work-dir")
            .arg(work_dir)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(fs::File::create(log).unwrap()))
            .spawn()
            .expect("failed to spawn kiln worker");
        if let Err(e) = read_until(&mut child, "worker ready", SERVER_READY_TIMEOUT) {
            let _ = child.kill();
            panic!(
                "kiln worker: {e}\n---- worker stderr ({}) ----\n{}",
                log.display(),
                tail(&fs::read_to_string(log).unwrap_or_default(), 60)
            );
        }
        Self { child }
    }

    /// Kills the worker with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for KilnWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
