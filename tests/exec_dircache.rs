//! The worker's directory-level cache (`src/worker/dircache.rs`), black box: a real `kiln
//! serve` and `kiln worker` (default sandbox: actions run as `nobody`) executing actions whose
//! input trees repeat. A repeated tree is moved into the action whole (the same directory
//! inode as the tree the cache held), an action that damages its lent tree does not change
//! what a later action sees, the same tree at several paths and beside an output works, and
//! the cache stays within its bound.

mod exec_support;

use exec_support::*;
use kiln::digest::Digest;
use kiln::proto::reapi::{Directory, DirectoryNode, FileNode, SymlinkNode};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A tree of `n` files `fNN` (contents named by `salt`, each `size` bytes at least), plus
/// `bin/tool` (executable), an empty directory `empty` and a symlink `link -> f00`.
async fn toolchain(c: &Client, salt: &str, n: usize, size: usize) -> Digest {
    let mut files = vec![];
    for i in 0..n {
        let mut body = format!("{salt} file {i}\n").into_bytes();
        body.resize(size.max(body.len()), b'.');
        let d = c.put(&body).await;
        files.push(FileNode {
            name: format!("f{i:02}"),
            digest: Some(d.to_proto()),
            ..Default::default()
        });
    }
    let tool = c.put(b"#!/bin/sh\necho tool ran\n").await;
    let bin = c
        .put_msg(&Directory {
            files: vec![FileNode {
                name: "tool".into(),
                digest: Some(tool.to_proto()),
                is_executable: true,
                ..Default::default()
            }],
            ..Default::default()
        })
        .await;
    let empty = c.put_msg(&Directory::default()).await;
    c.put_msg(&Directory {
        files,
        directories: vec![
            DirectoryNode {
                name: "bin".into(),
                digest: Some(bin.to_proto()),
            },
            DirectoryNode {
                name: "empty".into(),
                digest: Some(empty.to_proto()),
            },
        ],
        symlinks: vec![SymlinkNode {
            name: "link".into(),
            target: "f00".into(),
            ..Default::default()
        }],
        ..Default::default()
    })
    .await
}

async fn root_of(c: &Client, entries: &[(&str, Digest)]) -> Digest {
    c.put_msg(&Directory {
        directories: entries
            .iter()
            .map(|(n, d)| DirectoryNode {
                name: (*n).into(),
                digest: Some(d.to_proto()),
            })
            .collect(),
        ..Default::default()
    })
    .await
}

/// What a later action must always see in a toolchain tree at `p`: the listing, every file's
/// bytes, the executable running, the symlink and the empty directory.
fn check_script(p: &str) -> String {
    format!(
        "cd {p} && find . | LC_ALL=C sort && cat f* && test -x bin/tool && bin/tool && \
         readlink link && test -d empty && test -z \"$(ls -A empty)\" && echo intact"
    )
}

/// Runs `script` in `root` (never cached); (exit code, stdout, outputs).
async fn run(
    c: &Client,
    script: &str,
    root: Digest,
    outputs: &[&str],
) -> (i32, String, kiln::proto::reapi::ActionResult) {
    let mut spec = sh(script);
    spec.input_root = Some(root);
    spec.do_not_cache = true;
    spec.output_files = outputs.iter().map(|s| (*s).to_string()).collect();
    let d = c.action(&spec).await;
    let r = c.execute(&d).await;
    let (code, msg) = outcome(&r);
    assert_eq!(code, tonic::Code::Ok, "{msg}");
    let result = r.unwrap().1.result.expect("result");
    let out = c.get(result.stdout_digest.as_ref().unwrap()).await;
    let err = c.get(result.stderr_digest.as_ref().unwrap()).await;
    assert_eq!(
        result.exit_code,
        0,
        "{script}: stdout {} stderr {}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    (
        result.exit_code,
        String::from_utf8_lossy(&out).into_owned(),
        result,
    )
}

/// The trees the worker's directory cache holds now: (path, inode of its top directory).
fn trees(work: &Path) -> Vec<(PathBuf, u64)> {
    std::fs::read_dir(work.join("dirs"))
        .map(|r| {
            r.flatten()
                .map(|e| (e.path(), e.metadata().unwrap().ino()))
                .collect()
        })
        .unwrap_or_default()
}

/// Bytes of the files under `p` (each path counted, as the cache's bound counts them).
fn file_bytes(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            // A tree being evicted disappears under the walk.
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                stack.push(e.path());
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

fn start_worker(server: &Server, concurrency: usize, extra: &[&str]) -> (Worker, PathBuf) {
    let id = uuid::Uuid::new_v4();
    let work = server.dir.path().join(format!("work-{id}"));
    let w = KilnWorker::start_with(
        &server.bots,
        &work,
        &server.dir.path().join(format!("worker-{id}.log")),
        concurrency,
        extra,
    );
    (w, work)
}

/// Stdout of a check, without the line the inode probe adds in front.
fn body(out: &str) -> &str {
    out.split_once('\n').map_or(out, |(_, rest)| rest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_tree_is_lent_whole_and_an_action_cannot_damage_it() {
    let server = Server::start();
    let (_w, work) = start_worker(&server, 1, &[]);
    let c = server.client().await;
    let tc = toolchain(&c, "tc", 20, 0).await;
    let root = root_of(&c, &[("tc", tc)]).await;
    let probe = format!("stat -c %i tc && {}", check_script("tc"));

    // First sight: staged file by file; second: kept by the cache when the action is over.
    let (_, first, _) = run(&c, &probe, root, &[]).await;
    assert!(first.ends_with("intact\n"), "{first}");
    run(&c, &probe, root, &[]).await;
    let held = poll("the directory cache to keep the tree", || async {
        let t = trees(&work);
        (t.len() == 1).then(|| t[0].1)
    })
    .await;

    // Third: the action gets that very directory (one rename, no per-file links), and
    // damages it every way its owner can.
    let damage = "stat -c %i tc && rm tc/f01 && echo evil > tc/new && mv tc/f02 tc/f03 && \
                  chmod 700 tc/bin && mkdir tc/empty/x && rm tc/link && ln -s /etc/passwd tc/link";
    let (_, out, _) = run(&c, damage, root, &[]).await;
    assert_eq!(
        out.lines().next().unwrap().parse::<u64>().unwrap(),
        held,
        "the action did not get the cached tree"
    );

    // Later actions see the tree as it should be, never the damaged one.
    for _ in 0..3 {
        let (_, later, _) = run(&c, &probe, root, &[]).await;
        assert_eq!(body(&later), body(&first), "a later action saw the damage");
    }
    // The worker kept a (fresh) copy of it again.
    poll("the directory cache to keep a clean copy", || async {
        (trees(&work).len() == 1).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_tree_at_several_paths_and_beside_outputs_with_two_slots() {
    let server = Server::start();
    let (_w, work) = start_worker(&server, 2, &[]);
    let c = server.client().await;
    let tc = toolchain(&c, "multi", 20, 0).await;
    // `a` and `b` are the same tree; `out` too, but an output is written into it.
    let root = root_of(&c, &[("a", tc), ("b", tc), ("out", tc)]).await;
    let script = format!(
        "({}) > /dev/null && ({}) > /dev/null && cat a/f00 b/f19 > out/result && \
         touch a/scratch && rm b/f05 && echo done",
        check_script("a"),
        check_script("b")
    );
    for round in 0..4 {
        let mut tasks = vec![];
        for i in 0..2 {
            let (c, script) = (c.clone(), format!("{script} # {round} {i}"));
            tasks.push(tokio::spawn(async move {
                run(&c, &script, root, &["out/result"]).await
            }));
        }
        for t in tasks {
            let (_, out, result) = t.await.unwrap();
            assert_eq!(out, "done\n");
            let f = &result.output_files[0];
            assert_eq!(f.path, "out/result");
            assert_eq!(
                c.get(f.digest.as_ref().unwrap()).await,
                b"multi file 0\nmulti file 19\n"
            );
        }
    }
    // Every action wrote into and deleted from its trees: none went to the cache.
    assert!(
        trees(&work).is_empty(),
        "damaged trees were kept: {:?}",
        trees(&work)
    );
    // Clean actions leave their trees to the cache, one copy per path at most here.
    for _ in 0..3 {
        let (_, out, _) = run(&c, &check_script("b"), root, &[]).await;
        assert!(out.ends_with("intact\n"), "{out}");
    }
    poll("the directory cache to keep copies", || async {
        (!trees(&work).is_empty()).then_some(())
    })
    .await;
    // Both slots at once, lent copies or not: each sees intact trees.
    let mut tasks = vec![];
    for i in 0..4 {
        let c = c.clone();
        let script = format!("{} && {} # {i}", check_script("a"), check_script("../b"));
        tasks.push(tokio::spawn(
            async move { run(&c, &script, root, &[]).await },
        ));
    }
    for t in tasks {
        let (_, out, _) = t.await.unwrap();
        assert_eq!(out.matches("intact\n").count(), 2, "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_directory_cache_stays_within_its_bound() {
    let server = Server::start();
    // 40,000 bytes: room for two trees of 16 x 1,000 bytes (plus `bin/tool`), not three.
    let bound = 40_000u64;
    let (_w, work) = start_worker(&server, 1, &["--cache-max-bytes", &bound.to_string()]);
    let c = server.client().await;
    let mut roots = vec![];
    for t in 0..5 {
        let tc = toolchain(&c, &format!("bound{t}"), 16, 1000).await;
        roots.push(root_of(&c, &[("tc", tc)]).await);
    }
    let mut seen_trees = 0;
    for _ in 0..3 {
        for (t, root) in roots.iter().enumerate() {
            let (_, out, _) = run(&c, &check_script("tc"), *root, &[]).await;
            assert!(out.contains(&format!("bound{t} file 15")), "{out}");
            let held = trees(&work);
            let bytes: u64 = held.iter().map(|(p, _)| file_bytes(p)).sum();
            assert!(
                bytes <= bound,
                "{} trees of {bytes} bytes, over the bound",
                held.len()
            );
            seen_trees = seen_trees.max(held.len());
        }
    }
    assert!(
        seen_trees >= 1,
        "the directory cache never kept a tree: nothing was bounded"
    );
    assert!(seen_trees <= 2, "{seen_trees} trees of 16,000 bytes held");
}

/// Actions share one user, so (without `--isolation namespaces`) one action can reach another
/// one's input root through `/proc/PID/cwd` and keep its working directory inside a tree
/// there. Once that tree is back in the cache it must not be able to change it: idle trees
/// belong to the worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_inside_another_actions_tree_cannot_change_it_once_cached() {
    let server = Server::start();
    // Actions may write the server's temp dir: the test tells the attacker when to strike.
    std::fs::set_permissions(
        server.dir.path(),
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o777),
    )
    .unwrap();
    let shared = server.dir.path().to_str().unwrap().to_string();
    let (_w, work) = start_worker(&server, 2, &["--action-writable", &shared]);
    let c = server.client().await;
    let tc = toolchain(&c, "held", 20, 0).await;
    let root = root_of(&c, &[("tc", tc)]).await;
    let (_, first, _) = run(&c, &check_script("tc"), root, &[]).await;

    // The victim is the tree's second staging: kept when it ends.
    let marker = format!("victim-{}", uuid::Uuid::new_v4().simple());
    let (head, tail) = marker.split_at(4);
    let go = server.dir.path().join("go");
    let victim = format!("sleep 2 # {marker}");
    let attacker = format!(
        "m={head}; m=\"${{m}}{tail}\"; \
         for i in $(seq 100); do \
           for p in /proc/[0-9]*; do grep -qs \"$m\" $p/cmdline && pid=${{p#/proc/}}; done; \
           [ -n \"$pid\" ] && break; sleep 0.1; done; \
         cd /proc/$pid/cwd/tc || exit 3; echo in; \
         for i in $(seq 600); do [ -e {go} ] && break; sleep 0.1; done; [ -e {go} ] || exit 4; \
         if rm -f f01 2>/dev/null && echo evil > new 2>/dev/null; then echo wrote; \
         else echo denied; fi; chmod 777 . 2>/dev/null; mkdir sub 2>/dev/null; true",
        go = go.display()
    );
    let empty = c.put_msg(&Directory::default()).await;
    let (c1, c2) = (c.clone(), c.clone());
    let a = tokio::spawn(async move { run(&c1, &attacker, empty, &[]).await });
    let v = tokio::spawn(async move { run(&c2, &victim, root, &[]).await });
    v.await.unwrap();
    poll("the victim's tree to be kept", || async {
        (trees(&work).len() == 1).then_some(())
    })
    .await;
    std::fs::write(&go, b"").unwrap();
    let (_, out, _) = a.await.unwrap();
    assert_eq!(
        out, "in\ndenied\n",
        "the attacker's handle in the cached tree"
    );
    // The next action is lent that tree: it is as it was.
    let (_, later, _) = run(&c, &check_script("tc"), root, &[]).await;
    assert_eq!(later, first, "an action changed a cached tree");
}

/// Makes a tree like the ones the cache keeps at `p`: read-only files (hardlinks of one
/// inode) in read-only directories, `n` levels of `width` directories.
fn old_tree(p: &Path, n: usize, width: usize) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(p).unwrap();
    let inode = p.join("inode");
    std::fs::write(&inode, b"old").unwrap();
    let mut level = vec![p.to_path_buf()];
    for _ in 0..n {
        let mut next = vec![];
        for d in &level {
            for i in 0..width {
                let sub = d.join(format!("d{i}"));
                std::fs::create_dir(&sub).unwrap();
                for f in 0..4 {
                    std::fs::hard_link(&inode, sub.join(format!("f{f}"))).unwrap();
                }
                next.push(sub);
            }
        }
        level = next;
    }
    std::fs::set_permissions(&inode, std::fs::Permissions::from_mode(0o444)).unwrap();
    for d in level {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
}

/// Entries of the work dir that hold old trees: `dirs/t*` and renamed-aside `dirs.*` dirs.
fn old_trees(work: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(work)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("dirs."))
        })
        .collect();
    out.extend(trees(work).into_iter().map(|t| t.0));
    out
}

/// A worker restarted on a work dir full of trees (and of trees an earlier start had renamed
/// aside but not deleted yet when it crashed) starts, deletes all of them in the background,
/// and its directory cache works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_trees_are_deleted_in_the_background_at_start() {
    let server = Server::start();
    let id = uuid::Uuid::new_v4();
    let work = server.dir.path().join(format!("work-{id}"));
    old_tree(&work.join("dirs/t1"), 3, 6);
    old_tree(&work.join("dirs/t7"), 1, 3);
    old_tree(&work.join("dirs.old-1-2-0/t3"), 2, 5);
    assert_eq!(old_trees(&work).len(), 3);
    let _w = KilnWorker::start_with(
        &server.bots,
        &work,
        &server.dir.path().join(format!("worker-{id}.log")),
        1,
        &[],
    );
    let c = server.client().await;
    let tc = toolchain(&c, "restart", 20, 0).await;
    let root = root_of(&c, &[("tc", tc)]).await;
    let (_, first, _) = run(&c, &check_script("tc"), root, &[]).await;
    assert!(first.ends_with("intact\n"), "{first}");
    poll("the old trees to be deleted", || async {
        let left = old_trees(&work);
        let old = |p: &PathBuf| {
            p.ends_with("dirs/t1") || p.ends_with("dirs/t7") || p.parent() == Some(work.as_path())
        };
        (!left.iter().any(old)).then_some(())
    })
    .await;
    // The cache keeps (second staging) and lends (third) trees in the new `dirs/`.
    run(&c, &check_script("tc"), root, &[]).await;
    let held = poll("the directory cache to keep the tree", || async {
        let t = trees(&work);
        (t.len() == 1).then(|| t[0].1)
    })
    .await;
    let (_, out, _) = run(
        &c,
        &format!("stat -c %i tc && {}", check_script("tc")),
        root,
        &[],
    )
    .await;
    assert_eq!(out.lines().next().unwrap().parse::<u64>().unwrap(), held);
    assert_eq!(body(&out), first);
    poll("no trees but the new one", || async {
        (old_trees(&work).len() == 1).then_some(())
    })
    .await;
}
