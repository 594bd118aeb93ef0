//! Sandbox helpers started ahead of their actions (`worker/prestart.rs`): a real `kiln serve`
//! and `kiln worker` (sandboxed, as `kiln worker` always is) run an action in a helper that
//! existed before the action was submitted, with exactly the action's arguments, environment
//! and working directory, and a co-located worker reads the action's Command from the store.

mod exec_support;

use exec_support::*;

/// Seconds since boot, as `/proc/uptime` says.
fn uptime() -> f64 {
    let text = std::fs::read_to_string("/proc/uptime").unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_run_in_a_helper_started_before_them_with_their_own_command() {
    let (server, _w, c) = Server::with_one_worker().await;
    // The worker starts its helpers when it starts: give them time, then submit.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut spec = sh(
        // The first process of the action is the helper, exec'd into sh: its start time
        // (field 22 of /proc/PID/stat, in clock ticks since boot) is the helper's.
        "set -- \"$0\" \"$1\" $(sed 's/.*) //' /proc/$$/stat); \
         echo \"start ${22} $(getconf CLK_TCK)\"; echo \"args $1 $2\"; echo \"pwd $(pwd)\"; \
         echo \"env $KILN_T\"; env | wc -l",
    );
    spec.args.extend(["zero".into(), "one two".into()]);
    spec.env.push(("KILN_T".into(), "a b \u{e9}".into()));
    spec.working_directory = "w/x".into();
    let d = c.action(&spec).await;
    let submitted = uptime();
    let (_, resp) = c.execute(&d).await.unwrap();
    // The worker is co-located (it found the server's data dir from its socket): the Action,
    // the Command, the input root and the files came from the server's store, none over gRPC
    // (read before this test's own reads of stdout and stderr).
    let batch_read =
        r#"kiln_grpc_requests_total{method="ContentAddressableStorage/BatchReadBlobs",code="OK"}"#;
    let calls = server.metric(batch_read).await;
    assert!(calls < 0.5, "{calls} BatchReadBlobs calls");
    let r = resp.result.unwrap();
    let out = String::from_utf8(c.get(r.stdout_digest.as_ref().unwrap()).await).unwrap();
    let err = String::from_utf8(c.get(r.stderr_digest.as_ref().unwrap()).await).unwrap();
    assert_eq!(r.exit_code, 0, "{out}{err}");
    let line = |p: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(p))
            .unwrap_or_else(|| panic!("no {p:?} line in {out:?}"))
            .to_string()
    };
    let start: Vec<f64> = line("start ")
        .split(' ')
        .map(|v| v.parse().unwrap())
        .collect();
    let started = start[0] / start[1];
    assert!(
        started < submitted - 1.0,
        "the action's first process started {started:.2} s after boot, the action was \
         submitted at {submitted:.2} s: it was not a helper started ahead"
    );
    assert_eq!(line("args "), "zero one two");
    assert!(line("pwd ").ends_with("/root/w/x"), "{out}");
    assert_eq!(line("env "), "a b \u{e9}");
    // PATH and KILN_T only (sh adds PWD, and may add SHLVL and _): nothing of the worker's.
    let vars: usize = out.lines().last().unwrap().trim().parse().unwrap();
    assert!(vars <= 5, "{vars} environment variables: {out}");
}

/// `kB` value of `field` in a `/proc` file of `name: value kB` lines.
fn proc_kb(text: &str, field: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {text}"))
}

/// The helpers waiting for actions (started ahead for `work`, past their set-up: no longer
/// root): their pids.
fn waiting_helpers(work: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.contains("action-sandbox") || !cmd.contains(work) {
            continue;
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"));
        if uid.is_some_and(|u| u.split_whitespace().next() != Some("0")) {
            found.push(pid);
        }
    }
    found
}

/// A helper lives a few milliseconds of CPU, and mimalloc (kiln's allocator) used to commit
/// its first arena with a request for transparent huge pages: every helper zeroed a 2 MiB page
/// at its first allocation (8% of a no-op action load's CPU). Helpers waiting for their
/// actions hold no huge page now, and the action still gets the host's THP setting (turning
/// THP off for the helper process, the other way to avoid it, would be inherited by the
/// command across its exec).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_helpers_hold_no_huge_page_and_actions_keep_the_thp_setting() {
    let (server, _w, c) = Server::with_one_worker().await;
    let work = server.dir.path().to_str().unwrap().to_string();
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    if thp.is_empty() || thp.contains("[never]") {
        eprintln!("THP is off on this host ({thp:?}): no helper could take a huge page");
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let helpers = loop {
        let h = waiting_helpers(&work);
        if !h.is_empty() || std::time::Instant::now() > deadline {
            break h;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(!helpers.is_empty(), "no helper waiting under {work}");
    for pid in &helpers {
        // No action runs yet, so the helpers are all still there.
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
        let huge = proc_kb(&rollup, "AnonHugePages:");
        assert_eq!(huge, 0, "helper {pid} holds {huge} kB of huge pages");
    }
    // The action's THP setting is the worker's, which is this test's.
    let mine = std::fs::read_to_string("/proc/self/status").unwrap();
    let mine = mine.lines().find(|l| l.starts_with("THP_enabled:"));
    let mut spec = sh("grep THP_enabled: /proc/self/status || echo none");
    spec.do_not_cache = true;
    let (_, resp) = c.execute(&c.action(&spec).await).await.unwrap();
    let r = resp.result.unwrap();
    let out = String::from_utf8(c.get(r.stdout_digest.as_ref().unwrap()).await).unwrap();
    assert_eq!(r.exit_code, 0, "{out}");
    assert_eq!(
        out.trim(),
        mine.unwrap_or("none").trim(),
        "the action's THP setting"
    );
}
