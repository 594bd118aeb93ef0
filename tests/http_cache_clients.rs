//! Real-client end-to-end test of the HTTP cache API: Debian's ccache with
//! `remote_storage = http://...|layout=bazel` against `kiln serve`.
//!
//! A small C project (three .c files and a header) is compiled once from one directory with an
//! empty local ccache (every compile a miss, results uploaded to kiln), then from a copy of it
//! in another directory with another empty local ccache: every compile must be a remote hit,
//! by `ccache --print-stats`, and the objects byte-identical. `base_dir` and `hash_dir =
//! false` keep the directory out of ccache's keys. ccache stores its own result format under
//! `/ac/` (not ActionResults), which kiln keeps as opaque values.
//!
//! ccache comes from Debian (`apt-get install ccache`; .ci/run installs it). The test never
//! skips: without ccache it fails and says how to install it.

mod common;

use common::process::KilnServer;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::Command;

const SOURCES: [(&str, &str); 4] = [
    (
        "src/util.h",
        "int add(int a, int b);\nint mul(int a, int b);\n",
    ),
    (
        "src/main.c",
        "#include \"util.h\"\nint main(void) { return add(2, 3) == 5 && mul(2, 3) == 6 ? 0 : 1; }\n",
    ),
    (
        "src/add.c",
        "#include \"util.h\"\nint add(int a, int b) { return a + b; }\n",
    ),
    (
        "src/mul.c",
        "#include \"util.h\"\nint mul(int a, int b) { return a * b; }\n",
    ),
];
const UNITS: [&str; 3] = ["main", "add", "mul"];

fn ccache() -> &'static str {
    let ok = Command::new("ccache")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "ccache not found. This end-to-end test needs Debian's ccache and is never skipped: \
         install it with `apt-get install -y ccache`."
    );
    "ccache"
}

fn write_project(dir: &Path) {
    for (name, text) in SOURCES {
        let p = dir.join(name);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
}

/// Runs ccache with only the settings given here (no user or system config).
fn ccache_cmd(root: &Path, cache_dir: &Path, remote: &str) -> Command {
    let mut c = Command::new(ccache());
    c.env("CCACHE_CONFIGPATH", root.join("no-ccache.conf"))
        .env("CCACHE_DIR", cache_dir)
        .env("CCACHE_TEMPDIR", root.join("ccache-tmp"))
        .env("CCACHE_REMOTE_STORAGE", remote)
        .env("CCACHE_BASEDIR", root)
        .env("CCACHE_NOHASHDIR", "1")
        .env_remove("CCACHE_DISABLE")
        .env_remove("CCACHE_RECACHE")
        .env_remove("CCACHE_READONLY");
    c
}

/// Compiles every unit in `project` through ccache, links and runs the program; returns
/// ccache's statistics (`--print-stats`, zero counters included).
fn build(
    server: &KilnServer,
    root: &Path,
    project: &Path,
    cache_dir: &str,
    remote: &str,
) -> BTreeMap<String, u64> {
    let cache_dir = root.join(cache_dir);
    for unit in UNITS {
        let out = ccache_cmd(root, &cache_dir, remote)
            .current_dir(project)
            .args(["gcc", "-O1", "-c", &format!("src/{unit}.c"), "-o"])
            .arg(format!("{unit}.o"))
            .output()
            .unwrap();
        if !out.status.success() {
            server.fail(&format!(
                "ccache gcc {unit}.c failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let link = Command::new("gcc")
        .current_dir(project)
        .args(["main.o", "add.o", "mul.o", "-o", "prog"])
        .status()
        .unwrap();
    assert!(link.success(), "linking the cached objects failed");
    let run = Command::new(project.join("prog")).status().unwrap();
    assert!(
        run.success(),
        "the program built from cached objects is wrong"
    );
    let stats = ccache_cmd(root, &cache_dir, remote)
        .arg("--print-stats")
        .output()
        .unwrap();
    assert!(stats.status.success());
    String::from_utf8_lossy(&stats.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim().parse().ok()?)))
        .collect()
}

fn stat(stats: &BTreeMap<String, u64>, key: &str) -> u64 {
    stats.get(key).copied().unwrap_or(0)
}

/// Builds in `p1` then in `p2` (fresh local caches), asserting the second is all remote hits.
fn cold_then_all_remote_hits(server: &KilnServer, root: &Path, remote: &str) {
    let (p1, p2) = (root.join("p1"), root.join("p2"));
    write_project(&p1);
    write_project(&p2);
    let first = build(server, root, &p1, "ccache-1", remote);
    eprintln!("first build: {first:?}");
    let n = UNITS.len() as u64;
    if stat(&first, "cache_miss") != n || stat(&first, "remote_storage_write") == 0 {
        server.fail(&format!(
            "first build: expected {n} misses written to kiln, got {first:?}"
        ));
    }
    if stat(&first, "remote_storage_error") + stat(&first, "remote_storage_timeout") != 0 {
        server.fail(&format!("first build: remote storage errors: {first:?}"));
    }
    let second = build(server, root, &p2, "ccache-2", remote);
    eprintln!("second build: {second:?}");
    let hits = stat(&second, "remote_storage_hit");
    let misses = stat(&second, "cache_miss") + stat(&second, "remote_storage_miss");
    if hits != n || misses != 0 || stat(&second, "local_storage_hit") != 0 {
        server.fail(&format!(
            "second build (other directory, empty local cache): expected all {n} compiles \
             to be remote hits, got {second:?}"
        ));
    }
    for unit in UNITS {
        let (a, b) = (
            fs::read(p1.join(format!("{unit}.o"))).unwrap(),
            fs::read(p2.join(format!("{unit}.o"))).unwrap(),
        );
        assert!(a == b, "{unit}.o from the remote cache differs");
    }
}

fn start(root: &Path, extra_config: &str) -> KilnServer {
    let config = root.join("kiln.toml");
    fs::write(
        &config,
        format!("{extra_config}\n[http_cache]\nlisten = \"127.0.0.1:0\"\n"),
    )
    .unwrap();
    let server = KilnServer::start_with(
        &root.join("kiln-data"),
        &root.join("kiln.log"),
        &["--config", config.to_str().unwrap()],
    );
    if server.http_cache.is_none() {
        server.fail("kiln printed no `listening http-cache http://` line");
    }
    server
}

#[test]
fn ccache_second_build_from_another_directory_is_all_remote_hits() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let server = start(root, "");
    let remote = format!(
        "http://{}|layout=bazel",
        server.http_cache.as_deref().unwrap()
    );
    cold_then_all_remote_hits(&server, root, &remote);
    let metrics = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(kiln::admin::http_get(
            server.metrics.as_deref().unwrap(),
            "/metrics",
        ))
        .unwrap();
    assert!(
        metrics
            .contains("kiln_http_cache_requests_total{method=\"PUT\",kind=\"ac\",status=\"200\"}"),
        "ccache's uploads are not in /metrics:\n{metrics}"
    );
}

#[test]
fn ccache_with_a_token_in_the_url_and_auth_on() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let tokens = root.join("tokens.toml");
    fs::write(
        &tokens,
        format!(
            "[[principal]]\nname = \"ccache\"\ntoken_sha256 = {:?}\n\
             rights = [\"read\", \"write\", \"cache-write\"]\n",
            kiln::auth::token_sha256("s3cret-token")
        ),
    )
    .unwrap();
    let server = start(
        root,
        &format!("[auth]\ntokens_file = {:?}\n", tokens.to_str().unwrap()),
    );
    let addr = server.http_cache.clone().unwrap();
    cold_then_all_remote_hits(
        &server,
        root,
        &format!("http://ccache:s3cret-token@{addr}|layout=bazel"),
    );
    assert!(
        !fs::read_to_string(server.log_path())
            .unwrap()
            .contains("s3cret-token"),
        "the token was logged"
    );
    // Without the token every remote read and write is refused.
    let stats = build(
        &server,
        root,
        &root.join("p2"),
        "ccache-3",
        &format!("http://{addr}|layout=bazel"),
    );
    assert_eq!(stat(&stats, "remote_storage_hit"), 0, "{stats:?}");
    assert!(stat(&stats, "remote_storage_error") > 0, "{stats:?}");
}
