//! `[auth]`: tokens and rights decide each RPC before its handler runs.

mod common;

use common::process::KilnServer;
use common::wait::{poll_until, wait_until_ok};
use common::{TestServer, bytes, digest};
use kiln::auth::token_sha256;
use kiln::proto::bytestream::WriteRequest;
use kiln::proto::reapi::{
    ActionResult, BatchReadBlobsRequest, BatchUpdateBlobsRequest, FindMissingBlobsRequest,
    GetActionResultRequest, GetCapabilitiesRequest, UpdateActionResultRequest,
    batch_update_blobs_request,
};
use kiln::proto::rwapi::{BotSession, CreateBotSessionRequest};
use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::Code;

const CI: &str = "ci-0123456789abcdef";
const LAPTOP: &str = "laptop-0123456789abcdef";

/// Writes a tokens file: `(name, token, rights)` principals and optional `(uid, rights)` peers.
fn tokens_file(dir: &Path, principals: &[(&str, &str, &str)], peers: &[(u32, &str)]) -> PathBuf {
    let mut text = String::new();
    let list = |r: &str| {
        r.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (name, token, rights) in principals {
        let _ = write!(
            text,
            "[[principal]]\nname = {name:?}\ntoken_sha256 = {:?}\nrights = [{}]\n\n",
            token_sha256(token),
            list(rights)
        );
    }
    for (uid, rights) in peers {
        let _ = write!(
            text,
            "[[unix_peer]]\nuid = {uid}\nrights = [{}]\n\n",
            list(rights)
        );
    }
    let path = dir.join("tokens.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A request carrying `authorization: Bearer <token>` when a token is given.
fn req<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

async fn start(tokens: &Path, anonymous: Option<&[&str]>) -> TestServer {
    let tokens = tokens.to_str().unwrap().to_string();
    let anonymous = anonymous.map(|a| a.iter().map(|s| (*s).to_string()).collect());
    TestServer::start_with(move |c| {
        c.auth.tokens_file = tokens;
        c.auth.anonymous = anonymous;
    })
    .await
}

fn update(data: &[u8]) -> BatchUpdateBlobsRequest {
    BatchUpdateBlobsRequest {
        requests: vec![batch_update_blobs_request::Request {
            digest: Some(digest(data).to_proto()),
            data: data.to_vec().into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn missing(data: &[&[u8]]) -> FindMissingBlobsRequest {
    FindMissingBlobsRequest {
        blob_digests: data.iter().map(|d| digest(d).to_proto()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn read_token_reads_but_every_write_is_denied_and_nothing_stored() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(
        dir.path(),
        &[
            ("ci", CI, "read,write,cache-write"),
            ("laptop", LAPTOP, "read"),
        ],
        &[],
    );
    let server = start(&tokens, None).await;
    let mut cas = server.cas().await;
    let stored = bytes(1000, 1);
    let denied_batch = bytes(1000, 2);
    let denied_stream = bytes(3000, 3);

    // The CI token writes.
    let r = cas.batch_update_blobs(req(update(&stored), Some(CI))).await;
    assert_eq!(
        r.unwrap().into_inner().responses[0]
            .status
            .as_ref()
            .map_or(0, |s| s.code),
        0
    );

    // The laptop token reads.
    let mut caps = server.capabilities().await;
    caps.get_capabilities(req(GetCapabilitiesRequest::default(), Some(LAPTOP)))
        .await
        .expect("read token may call GetCapabilities");
    let m = cas
        .find_missing_blobs(req(missing(&[&stored]), Some(LAPTOP)))
        .await
        .expect("read token may call FindMissingBlobs");
    assert!(m.into_inner().missing_blob_digests.is_empty());
    let got = cas
        .batch_read_blobs(req(
            BatchReadBlobsRequest {
                digests: vec![digest(&stored).to_proto()],
                ..Default::default()
            },
            Some(LAPTOP),
        ))
        .await
        .expect("read token may call BatchReadBlobs");
    assert_eq!(&got.into_inner().responses[0].data[..], &stored[..]);

    // ... but every write is PERMISSION_DENIED, naming the right.
    let e = cas
        .batch_update_blobs(req(update(&denied_batch), Some(LAPTOP)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("`write`"), "{e:?}");

    let d = digest(&denied_stream);
    let name = format!(
        "uploads/{}/blobs/{}/{}",
        uuid::Uuid::new_v4(),
        d.hash_hex(),
        d.size
    );
    let chunks = vec![WriteRequest {
        resource_name: name,
        write_offset: 0,
        finish_write: true,
        data: denied_stream.clone().into(),
    }];
    let e = server
        .bytestream()
        .await
        .write(req(tokio_stream::iter(chunks), Some(LAPTOP)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");

    let action = digest(b"some action");
    let mut ac = server.ac().await;
    let e = ac
        .update_action_result(req(
            UpdateActionResultRequest {
                action_digest: Some(action.to_proto()),
                action_result: Some(ActionResult::default()),
                ..Default::default()
            },
            Some(LAPTOP),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("`cache-write`"), "{e:?}");

    // Nothing of the denied writes was stored.
    let m = cas
        .find_missing_blobs(req(missing(&[&denied_batch, &denied_stream]), Some(CI)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.missing_blob_digests.len(), 2);
    let e = ac
        .get_action_result(req(
            GetActionResultRequest {
                action_digest: Some(action.to_proto()),
                ..Default::default()
            },
            Some(CI),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");

    // Per-principal counters.
    let metrics = server.http_get("/metrics").await;
    assert!(
        metrics.contains("kiln_auth_denied_total{principal=\"laptop\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("kiln_auth_requests_total{principal=\"ci\"} 3"),
        "{metrics}"
    );
    assert!(!metrics.contains(LAPTOP) && !metrics.contains(CI));
}

#[tokio::test]
async fn missing_or_unknown_token_is_unauthenticated_unless_anonymous_may() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &[("ci", CI, "read,write")], &[]);
    let server = start(&tokens, None).await;
    let mut cas = server.cas().await;
    let blob = bytes(100, 4);
    for token in [None, Some("not-a-token")] {
        let e = cas
            .find_missing_blobs(req(missing(&[&blob]), token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}: {e:?}");
        let e = cas
            .batch_update_blobs(req(update(&blob), token))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}: {e:?}");
    }
    server.stop().await;

    // `anonymous = ["read"]`: reads without a token work, writes still need one.
    let server = start(&tokens, Some(&["read"])).await;
    let mut cas = server.cas().await;
    cas.find_missing_blobs(req(missing(&[&blob]), None))
        .await
        .expect("anonymous read");
    let e = cas
        .batch_update_blobs(req(update(&blob), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    cas.batch_update_blobs(req(update(&blob), Some(CI)))
        .await
        .expect("token write");
}

async fn create_bot_session(
    socket: &Path,
    token: Option<&str>,
) -> Result<BotSession, tonic::Status> {
    let client = kiln::worker::connect(&format!("unix:{}", socket.display()))
        .await
        .unwrap();
    let r = CreateBotSessionRequest {
        parent: String::new(),
        bot_session: Some(BotSession {
            bot_id: "test-bot".into(),
            status: kiln::proto::rwapi::BotStatus::Ok as i32,
            ..Default::default()
        }),
    };
    client
        .bots
        .clone()
        .create_bot_session(req(r, token))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn a_bot_without_the_bot_right_cannot_take_work() {
    let uid = nix::unistd::getuid().as_raw();
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(
        dir.path(),
        &[("ci", CI, "read,write,cache-write,execute")],
        &[],
    );
    let server = start(&tokens, Some(&["read"])).await;
    let socket = server.dir.path().join("bots.sock");
    let e = create_bot_session(&socket, Some(CI)).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("`bot`"), "{e:?}");
    let e = create_bot_session(&socket, None).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // Nothing else on the bots socket either: its CAS is for bots.
    let ci = kiln::worker::connect_with(
        &format!("unix:{}", socket.display()),
        kiln::auth::Bearer::from_token(CI).unwrap(),
    )
    .await
    .unwrap();
    let e = ci.batch_read(&[digest(b"input")]).await.unwrap_err();
    assert!(
        matches!(&e, kiln::worker::WorkerError::Rpc { status, .. } if status.code() == Code::PermissionDenied),
        "{e:?}"
    );
    server.stop().await;

    // The worker's uid granted `bot` in the file: its peer credentials are enough.
    let tokens = tokens_file(dir.path(), &[("ci", CI, "read")], &[(uid, "bot")]);
    let server = start(&tokens, None).await;
    let socket = server.dir.path().join("bots.sock");
    create_bot_session(&socket, None)
        .await
        .expect("a peer uid with `bot` opens a session");
    // ... and reads the bots socket's CAS (a missing input, not a refusal).
    let bot = kiln::worker::connect(&format!("unix:{}", socket.display()))
        .await
        .unwrap();
    let e = bot.batch_read(&[digest(b"input")]).await.unwrap_err();
    assert!(
        matches!(e, kiln::worker::WorkerError::MissingInput(_)),
        "{e:?}"
    );
}

/// Runs `kiln token ARGS PATH` and returns its stdout.
fn token_cmd(args: &[&str], file: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("token")
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln token {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn sighup_reloads_the_tokens_file_and_a_bad_file_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &[("ci", CI, "read")], &[]);
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!("[auth]\ntokens_file = {:?}\n", tokens.to_str().unwrap()),
    )
    .unwrap();
    let server = KilnServer::start_with(
        &dir.path().join("data"),
        &dir.path().join("kiln.log"),
        &["--config", config.to_str().unwrap()],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("http://127.0.0.1:{}", server.port);
    let find = |token: &'static str| {
        let url = url.clone();
        rt.block_on(async move {
            let ch = tonic::transport::Channel::from_shared(url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            kiln::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(ch)
                .find_missing_blobs(req(missing(&[b"x"]), Some(token)))
                .await
                .map(|_| ())
                .map_err(|e| e.code())
        })
    };
    assert_eq!(find(CI), Ok(()));
    assert_eq!(find("new-0123456789abcdef"), Err(Code::Unauthenticated));

    let hup = |server: &KilnServer| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(server.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
    };
    // A bad file: the old table stays, and the log says why.
    std::fs::write(&tokens, "this is [[ not toml").unwrap();
    hup(&server);
    server.wait_until("bad tokens file logged", Duration::from_secs(20), || {
        server.logged("tokens file not reloaded")
    });
    assert_eq!(find(CI), Ok(()));

    // `kiln token add` / `revoke` edit the file; SIGHUP applies it.
    tokens_file(dir.path(), &[("ci", CI, "read")], &[]);
    let new = token_cmd(&["add", "new", "--rights", "read,write", "--file"], &tokens);
    let new = new.trim().to_string();
    assert_eq!(new.len(), 64, "{new:?}");
    assert!(!std::fs::read_to_string(&tokens).unwrap().contains(&new));
    token_cmd(&["revoke", "ci", "--file"], &tokens);
    assert_eq!(token_cmd(&["list", "--file"], &tokens), "new\tread,write\n");
    let new: &'static str = Box::leak(new.into_boxed_str());
    hup(&server);
    // One deadline for both waits, as before.
    let deadline = Instant::now() + Duration::from_secs(20);
    let left = || deadline.saturating_duration_since(Instant::now());
    server.wait_until("new token accepted", left(), || find(new) == Ok(()));
    // The signal did it (the file watcher may have been first, but SIGHUP reloads too).
    server.wait_until("SIGHUP reload logged", left(), || {
        server.logged("SIGHUP: tokens file reloaded")
    });
    assert_eq!(find(CI), Err(Code::Unauthenticated));
}

#[tokio::test]
async fn network_listener_without_auth_is_flagged_in_status() {
    let open = TestServer::start_with(|c| c.server.listen = vec!["0.0.0.0:0".into()]).await;
    let status = open.http_get("/status").await;
    assert!(
        status.contains("auth_open_network_listeners: 1"),
        "{status}"
    );
    open.stop().await;
    let local = TestServer::start().await;
    let status = local.http_get("/status").await;
    assert!(!status.contains("auth_open_network_listeners"), "{status}");
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &[("ci", CI, "read")], &[]);
    let tokens = tokens.to_str().unwrap().to_string();
    let guarded = TestServer::start_with(move |c| {
        c.server.listen = vec!["0.0.0.0:0".into()];
        c.auth.tokens_file = tokens;
    })
    .await;
    let status = guarded.http_get("/status").await;
    assert!(!status.contains("auth_open_network_listeners"), "{status}");
}

#[tokio::test]
async fn bench_token_file_sends_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &[("ci", CI, "read,write,cache-write")], &[]);
    let token_file = dir.path().join("ci.token");
    std::fs::write(&token_file, format!("{CI}\n")).unwrap();
    let server = start(&tokens, None).await;
    let target = format!("grpc://{}", server.addr);
    let token_file = token_file.to_str().unwrap();
    let base = [
        "--target",
        &target,
        "--quiet",
        "--workload",
        "ac-update",
        "--ops",
        "5",
    ];
    let mut with = base.to_vec();
    with.extend(["--token-file", token_file]);
    let r = kiln::bench::run_load(&kiln::bench::parse(with).unwrap().load)
        .await
        .expect("bench with a token");
    assert!(r.ops > 0 && r.errors == 0, "{:?}", r.error_samples);
    let without = kiln::bench::run_load(&kiln::bench::parse(base).unwrap().load).await;
    let without = format!("{without:?}");
    assert!(without.contains("needs a token"), "{without}");
}

#[test]
fn worker_token_file_sends_the_header() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &[("worker", CI, "bot")], &[]);
    let token_file = dir.path().join("worker.token");
    std::fs::write(&token_file, CI).unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!("[auth]\ntokens_file = {:?}\n", tokens.to_str().unwrap()),
    )
    .unwrap();
    let server = KilnServer::start_with(
        &dir.path().join("data"),
        &dir.path().join("kiln.log"),
        &["--config", config.to_str().unwrap()],
    );
    let bots = server.bots_socket.clone().unwrap();
    let _worker = common::process::KilnWorker::start_with(
        &format!("unix:{}", bots.display()),
        &dir.path().join("work"),
        &dir.path().join("worker.log"),
        1,
        &["--token-file", token_file.to_str().unwrap()],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let metrics = server.metrics.clone().unwrap();
    wait_until_ok(Duration::from_secs(30), || {
        let text = rt
            .block_on(kiln::admin::http_get(&metrics, "/metrics"))
            .unwrap();
        assert!(!text.contains("kiln_auth_denied_total"), "{text}");
        if text.contains("kiln_auth_requests_total{principal=\"worker\"}") {
            Ok(())
        } else {
            Err(text)
        }
    });
}

#[tokio::test]
async fn a_changed_tokens_file_is_reloaded_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = tokens_file(dir.path(), &[("ci", CI, "read")], &[]);
    let server = start(&tokens, None).await;
    let mut cas = server.cas().await;
    cas.find_missing_blobs(req(missing(&[b"x"]), Some(CI)))
        .await
        .expect("old token");
    tokens_file(dir.path(), &[("laptop", LAPTOP, "read")], &[]);
    poll_until(
        "the new file was picked up",
        Duration::from_secs(30),
        || {
            let mut cas = cas.clone();
            async move {
                cas.find_missing_blobs(req(missing(&[b"x"]), Some(LAPTOP)))
                    .await
                    .ok()
            }
        },
    )
    .await;
    let e = cas
        .find_missing_blobs(req(missing(&[b"x"]), Some(CI)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
}
