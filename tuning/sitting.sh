#!/usr/bin/env bash
# Reproduce a "sitting" of tuning/RESULTS.md: kiln against BuildGrid 0.4.4 (in memory),
# alternated run by run under the same load, medians of 3.
#
#   tuning/sitting.sh [OUTDIR]
#
# Environment:
#   KILN           kiln binary (default: target/release/kiln of this repo)
#   VENV           BuildGrid venv (default /tmp/bg-venv; created with buildgrid==0.4.4 if absent)
#   SITTING_SHORT  1: smoke mode, --duration 2s / --ops 1 and 1 run per server
#   BENCH_TIMEOUT  seconds before one bench run is killed (default 600)
#   SITTING_ONLY   extended regex: run only the steps whose label matches (labels: baseline,
#                  find-missing, upload-small, read-small, read-small-bytestream, upload-large,
#                  read-large, ac-get, ac-update, bazel-like, ac-get-unix, bazel-like-unix,
#                  execute-noop); default: all
#
# Per workload: fresh kiln (empty data dir) and fresh BuildGrid, then runs alternating
# kiln / BuildGrid; each run's JSON is OUTDIR/<workload>-<server>-<run>.json and is listed in
# OUTDIR/runs.tsv. Then kiln only: ac-get and bazel-like over the Unix socket, execute-noop
# with a `kiln worker`. Load average before every run goes to OUTDIR/load.log. A bench that
# exits non-zero (or reports errors) is printed and counted; the script exits 1 if any did.
# Ports used: 127.0.0.1:18980 (kiln) and 127.0.0.1:50051 (BuildGrid); both must be free.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KILN=${KILN:-$REPO/target/release/kiln}
VENV=${VENV:-/tmp/bg-venv}
SHORT=${SITTING_SHORT:-0}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-600}
ONLY=${SITTING_ONLY:-.}
OUTDIR=${1:-/tmp/kiln-sitting-$(date -u +%Y%m%dT%H%M%SZ)}
KILN_ADDR=127.0.0.1:18980
BG_HOST=127.0.0.1
BG_PORT=50051

if [[ $SHORT == 1 ]]; then RUNS=1; DUR=2s; LARGE_OPS=1; BASELINE_RUNS=1
else RUNS=3; DUR=10s; LARGE_OPS=4; BASELINE_RUNS=3; fi

[[ -x $KILN ]] || { echo "sitting: no kiln binary at $KILN (set KILN=...)" >&2; exit 2; }
KILN=$(cd "$(dirname "$KILN")" && pwd)/$(basename "$KILN")
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOAD_LOG=$OUTDIR/load.log
RUNS_TSV=$OUTDIR/runs.tsv
FAILS=0
KILN_PID=""; BG_PID=""; WORKER_PID=""; CHILD_PID=""
KILN_UNIX=""; KILN_BOTS=""

selected() { [[ $1 =~ $ONLY ]]; }

log() { printf '%s sitting: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

# Stop one process group we started (each server runs under setsid, so its pid is its
# group id) and reap it: TERM, up to 20 s, then KILL.
stop_pid() {
  local pid=$1 i
  [[ -n $pid ]] || return 0
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid still alive after TERM, sending KILL"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}
stop_worker() { stop_pid "$WORKER_PID"; WORKER_PID=""; }
stop_kiln() { stop_worker; stop_pid "$KILN_PID"; KILN_PID=""; }
stop_bg() { stop_pid "$BG_PID"; BG_PID=""; }
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$CHILD_PID"
  stop_kiln; stop_bg
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- setup
for p in 18980 "$BG_PORT"; do
  if port_open 127.0.0.1 "$p"; then
    echo "sitting: 127.0.0.1:$p is already in use; stop whatever listens there first" >&2
    exit 2
  fi
done

if [[ ! -x $VENV/bin/bgd ]]; then
  log "installing buildgrid==0.4.4 into $VENV"
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    log "python3 has no venv/ensurepip: installing python3-venv"
    apt-get update -qq && apt-get install -y -qq python3-venv
  fi
  [[ -x $VENV/bin/pip ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q buildgrid==0.4.4
fi
BG_VERSION=$("$VENV/bin/pip" show buildgrid 2>/dev/null | awk '/^Version:/ {print $2}') || BG_VERSION=unknown

cat > "$OUTDIR/bg-mem.yml" <<EOF
thread-pool-size: 64
server:
  - !channel
    address: "$BG_HOST:$BG_PORT"
    insecure-mode: true
storages:
  - !lru-storage &main-storage
    size: 4096M
caches:
  - !lru-action-cache &main-action
    storage: *main-storage
    max-cached-refs: 1000000
    allow-updates: true
instances:
  - name: ""
    services:
      - !action-cache
        cache: *main-action
      - !cas
        storage: *main-storage
      - !bytestream
        storage: *main-storage
EOF

KILN_DATA=$OUTDIR/kiln-data
cat > "$OUTDIR/kiln.toml" <<EOF
[server]
listen = ["$KILN_ADDR"]
data_dir = "$KILN_DATA"
metrics_listen = ""
[storage]
capacity_bytes = 8589934592
segment_size_bytes = 268435456
max_blob_size_bytes = 1073741824
EOF

{
  echo "date_utc: $(date -u +%FT%TZ)"
  echo "repo_head: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "repo_dirty: $(git -C "$REPO" status --porcelain 2>/dev/null | wc -l) changed paths"
  echo "kiln: $KILN ($("$KILN" --version 2>&1)), mtime $(date -u -r "$KILN" +%FT%TZ)"
  echo "buildgrid: $BG_VERSION ($VENV)"
  echo "mode: $([[ $SHORT == 1 ]] && echo SHORT || echo full), runs per server $RUNS, duration $DUR, upload-large ops $LARGE_OPS"
  echo "nproc: $(nproc); uptime: $(uptime)"
} | tee "$OUTDIR/meta.txt" >&2
printf 'label\tserver\trun\trc\tfile\n' > "$RUNS_TSV"
: > "$LOAD_LOG"

# ---------------------------------------------------------------- servers
SERVE_N=0
start_kiln() {
  stop_kiln
  rm -rf "$KILN_DATA"
  SERVE_N=$((SERVE_N + 1))
  local out=$OUTDIR/logs/kiln-serve-$SERVE_N.out i
  mkdir -p "$OUTDIR/logs"
  setsid "$KILN" serve --config "$OUTDIR/kiln.toml" > "$out" 2> "${out%.out}.err" &
  KILN_PID=$!
  for ((i = 0; i < 600; i++)); do
    grep -qx ready "$out" 2>/dev/null && break
    kill -0 "$KILN_PID" 2>/dev/null || { cat "$out" "${out%.out}.err" >&2; echo "sitting: kiln serve died" >&2; exit 1; }
    sleep 0.1
  done
  grep -qx ready "$out" || { echo "sitting: kiln not ready after 60 s" >&2; exit 1; }
  KILN_UNIX=$(sed -n 's/^listening \(unix:.*\)$/\1/p' "$out" | head -1)
  KILN_BOTS=$(sed -n 's/^listening bots \(unix:.*\)$/\1/p' "$out" | head -1)
}

start_bg() {
  stop_bg
  SERVE_N=$((SERVE_N + 1))
  local out=$OUTDIR/logs/bgd-$SERVE_N.log i
  mkdir -p "$OUTDIR/logs"
  (cd "$OUTDIR" && exec setsid "$VENV/bin/bgd" server start bg-mem.yml) > "$out" 2>&1 &
  BG_PID=$!
  for ((i = 0; i < 1200; i++)); do
    port_open "$BG_HOST" "$BG_PORT" && break
    kill -0 "$BG_PID" 2>/dev/null || { cat "$out" >&2; echo "sitting: bgd died" >&2; exit 1; }
    sleep 0.1
  done
  port_open "$BG_HOST" "$BG_PORT" || { cat "$out" >&2; echo "sitting: BuildGrid not listening after 120 s" >&2; exit 1; }
}

start_worker() {
  stop_worker
  [[ -n $KILN_BOTS ]] || { echo "sitting: kiln printed no 'listening bots' line" >&2; exit 1; }
  local out=$OUTDIR/logs/worker-$SERVE_N.out i
  rm -rf "$OUTDIR/worker-work"; mkdir -p "$OUTDIR/worker-work"
  setsid "$KILN" worker --server "$KILN_BOTS" --work-dir "$OUTDIR/worker-work" --concurrency 2 \
    > "$out" 2> "${out%.out}.err" &
  WORKER_PID=$!
  for ((i = 0; i < 300; i++)); do
    grep -q ready "$out" 2>/dev/null && return 0
    kill -0 "$WORKER_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$out" "${out%.out}.err" >&2; echo "sitting: kiln worker not ready" >&2; exit 1
}

# ---------------------------------------------------------------- bench runs
# run_child OUT ERR CMD...: run CMD in the background and wait for it, so that a signal to
# this script stops it at once (the EXIT trap kills CMD); its exit status goes to CHILD_RC.
run_child() {
  local out=$1 err=$2; shift 2
  setsid "$@" > "$out" 2> "$err" &
  CHILD_PID=$!
  CHILD_RC=0
  wait "$CHILD_PID" || CHILD_RC=$?
  CHILD_PID=""
}

# run_bench LABEL SERVER RUN TARGET ARGS...
run_bench() {
  local label=$1 server=$2 run=$3 target=$4; shift 4
  local file=$label-$server-$run.json rc errs
  printf '%s %-24s %-10s run %s | %s\n' "$(date -u +%FT%TZ)" "$label" "$server" "$run" "$(uptime)" >> "$LOAD_LOG"
  log "$label / $server / run $run: bench --target $target $*"
  run_child "$OUTDIR/$file" "$OUTDIR/logs/${file%.json}.err" \
    timeout "$BENCH_TIMEOUT" "$KILN" bench --target "$target" "$@" --quiet --json
  rc=$CHILD_RC
  printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$server" "$run" "$rc" "$file" >> "$RUNS_TSV"
  errs=$(grep -o '"errors":[0-9]*' "$OUTDIR/$file" | head -1 | cut -d: -f2 || true)
  if [[ $rc != 0 ]]; then
    FAILS=$((FAILS + 1))
    echo "BENCH FAILED (exit $rc$([[ $rc == 124 ]] && echo ", timed out after ${BENCH_TIMEOUT}s")): $label $server run $run" >&2
    sed 's/^/  | /' "$OUTDIR/$file" "$OUTDIR/logs/${file%.json}.err" | tail -20 >&2
  elif [[ -n $errs && $errs != 0 ]]; then
    FAILS=$((FAILS + 1))
    echo "BENCH REPORTED $errs ERRORS: $label $server run $run (see $file error_samples)" >&2
  fi
}

# LABEL | ARGS (from RESULTS.md; DUR and LARGE_OPS shrink in SITTING_SHORT mode)
WORKLOADS=(
  "find-missing|--workload find-missing --concurrency 16 --duration $DUR"
  "upload-small|--workload upload-small --concurrency 16 --duration $DUR"
  "read-small|--workload read-small --concurrency 16 --duration $DUR"
  "read-small-bytestream|--workload read-small --small-api bytestream --concurrency 16 --duration $DUR"
  "upload-large|--workload upload-large --concurrency 2 --ops $LARGE_OPS"
  "read-large|--workload read-large --concurrency 2 --duration $DUR"
  "ac-get|--workload ac-get --concurrency 16 --duration $DUR"
  "ac-update|--workload ac-update --concurrency 16 --duration $DUR"
  "bazel-like|--workload bazel-like --concurrency 16 --duration $DUR"
)

T0=$(date +%s)

# ---------------------------------------------------------------- baseline
mkdir -p "$OUTDIR/logs" "$OUTDIR/baseline-dir"
for ((r = 1; r <= BASELINE_RUNS; r++)); do
  selected baseline || break
  printf '%s %-24s %-10s run %s | %s\n' "$(date -u +%FT%TZ)" baseline - "$r" "$(uptime)" >> "$LOAD_LOG"
  log "baseline run $r"
  run_child "$OUTDIR/baseline-$r.json" "$OUTDIR/logs/baseline-$r.err" \
    timeout "$BENCH_TIMEOUT" "$KILN" bench baseline --dir "$OUTDIR/baseline-dir" --size 256MiB --duration 2s --json
  rc=$CHILD_RC
  printf '%s\t%s\t%s\t%s\t%s\n' baseline - "$r" "$rc" "baseline-$r.json" >> "$RUNS_TSV"
  if [[ $rc != 0 ]]; then
    FAILS=$((FAILS + 1))
    echo "BASELINE FAILED (exit $rc), run $r" >&2
    tail -20 "$OUTDIR/logs/baseline-$r.err" >&2
  fi
done
rm -rf "$OUTDIR/baseline-dir"

# ---------------------------------------------------------------- kiln vs BuildGrid
for w in "${WORKLOADS[@]}"; do
  label=${w%%|*}
  selected "$label" || continue
  read -r -a args <<< "${w#*|}"
  log "== $label: fresh kiln and BuildGrid"
  start_kiln
  start_bg
  for ((r = 1; r <= RUNS; r++)); do
    run_bench "$label" kiln "$r" "grpc://$KILN_ADDR" "${args[@]}"
    run_bench "$label" buildgrid "$r" "grpc://$BG_HOST:$BG_PORT" "${args[@]}"
  done
  stop_kiln
  stop_bg
done

# ---------------------------------------------------------------- kiln only
for w in "ac-get-unix|--workload ac-get --concurrency 16 --duration $DUR" \
         "bazel-like-unix|--workload bazel-like --concurrency 16 --duration $DUR"; do
  label=${w%%|*}
  selected "$label" || continue
  read -r -a args <<< "${w#*|}"
  log "== $label: fresh kiln"
  start_kiln
  [[ -n $KILN_UNIX ]] || { echo "sitting: kiln printed no 'listening unix:' line" >&2; exit 1; }
  for ((r = 1; r <= RUNS; r++)); do
    run_bench "$label" kiln "$r" "$KILN_UNIX" "${args[@]}"
  done
  stop_kiln
done

# RESULTS.md's table lists execute-noop at --duration 2s; it is run like the others here.
if selected execute-noop; then
  log "== execute-noop: fresh kiln and a kiln worker (--concurrency 2)"
  start_kiln
  start_worker
  for ((r = 1; r <= RUNS; r++)); do
    run_bench execute-noop kiln "$r" "grpc://$KILN_ADDR" --workload execute-noop --concurrency 4 --duration "$DUR"
  done
  stop_kiln
fi
rm -rf "$KILN_DATA" "$OUTDIR/worker-work"

log "bench part took $(( $(date +%s) - T0 )) s; $FAILS failed run(s)"
echo "after: $(uptime)" >> "$OUTDIR/meta.txt"
# Server-side complaints are not bench errors, but belong next to the figures.
shopt -s nullglob
for f in "$OUTDIR"/logs/kiln-serve-*.err "$OUTDIR"/logs/worker-*.err; do
  n=$(grep -c -E '\b(WARN|ERROR)\b' "$f" || true)
  if [[ $n != 0 ]]; then echo "server log: $n WARN/ERROR line(s) in logs/${f##*/}" >> "$OUTDIR/meta.txt"; fi
done
shopt -u nullglob

# ---------------------------------------------------------------- summary
python3 - "$OUTDIR" <<'PY' | tee "$OUTDIR/summary.md"
import csv, json, os, statistics, sys

out = sys.argv[1]

def load(path):
    """The report: the last stdout line that parses as a JSON object."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def num(x, nd=None):
    if x is None:
        return "–"
    if nd is None:
        nd = 0 if abs(x) >= 100 else (1 if abs(x) >= 10 else 2)
    return f"{x:,.{nd}f}"

with open(os.path.join(out, "runs.tsv")) as f:
    rows = list(csv.DictReader(f, delimiter="\t"))

print(open(os.path.join(out, "meta.txt")).read().rstrip())
print()

# baseline
bl = [load(os.path.join(out, r["file"])) for r in rows if r["label"] == "baseline"]
bl = [b for b in bl if b]
if bl:
    fields = [
        ("SHA-256, one core (MB/s)", lambda b: b["sha256_mb_per_s"]),
        ("disk write O_DIRECT + fdatasync (MB/s)", lambda b: b["disk"]["write_direct_mb_per_s"]),
        ("disk write buffered + fdatasync (MB/s)", lambda b: b["disk"]["write_buffered_mb_per_s"]),
        ("disk read O_DIRECT (MB/s)", lambda b: b["disk"]["read_direct_mb_per_s"]),
        ("empty unary call, TCP (calls/s)", lambda b: b["unary_tcp"]["calls_per_s"]),
        ("empty unary call, Unix socket (calls/s)", lambda b: b["unary_unix"]["calls_per_s"]),
        ("bare ByteStream read (MB/s)", lambda b: b["stream_read_mb_per_s"]),
        ("bare ByteStream write (MB/s)", lambda b: b["stream_write_mb_per_s"]),
    ]
    print(f"## Baseline, median of {len(bl)}\n")
    print("| limit | median | runs |")
    print("|---|---|---|")
    for name, get in fields:
        vals = []
        for b in bl:
            try:
                vals.append(get(b))
            except (KeyError, TypeError):
                vals.append(None)
        print(f"| {name} | {num(med(vals))} | {' / '.join(num(v) for v in vals)} |")
    print()

# workloads, in run order
order, groups, failed = [], {}, []
for r in rows:
    if r["label"] == "baseline":
        continue
    key = (r["label"], r["server"])
    if key not in groups:
        order.append(key)
        groups[key] = []
    rep = load(os.path.join(out, r["file"])) if r["rc"] == "0" else None
    if rep is None or "ops_per_s" not in rep:
        failed.append((r, rep))
        rep = None
    groups[key].append(rep)

print("## Workloads (each column is the median over the runs of that column)\n")
print("| workload | server | ops/s | items/s | MB/s | p50 ms | p90 ms | p99 ms | max ms | errors | per-run ops/s | per-run MB/s |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for key in order:
    reps = groups[key]
    ok = [x for x in reps if x]
    lat = lambda k: med([x["latency"][k] for x in ok])
    mbs = med([x["mb_per_s"] for x in ok])
    has_bytes = any(x.get("bytes") for x in ok)
    per_ops = " / ".join("FAIL" if x is None else num(x["ops_per_s"]) for x in reps)
    per_mb = " / ".join("FAIL" if x is None else num(x["mb_per_s"], 1) for x in reps) if has_bytes else "–"
    print(f"| {key[0]} | {key[1]} | {num(med([x['ops_per_s'] for x in ok]))} "
          f"| {num(med([x['items_per_s'] for x in ok]))} | {num(mbs, 1) if has_bytes else '–'} "
          f"| {num(lat('p50_ms'))} | {num(lat('p90_ms'))} | {num(lat('p99_ms'))} | {num(lat('max_ms'))} "
          f"| {sum(x['errors'] for x in ok) if ok else '–'} | {per_ops} | {per_mb} |")
print()

mixed = [k for k in order if any(x and x.get("extra", {}).get("rpcs") for x in groups[k])]
if mixed:
    print("RPCs per action (bazel-like; items/s above counts actions):")
    for k in mixed:
        runs = [x for x in groups[k] if x and x.get("extra", {}).get("rpcs")]
        rates = [sum(x["extra"]["rpcs"].values()) / x["wall_s"] for x in runs if x["wall_s"]]
        first = runs[0]
        per = sum(first["extra"]["rpcs"].values()) / first["ops"] if first["ops"] else 0
        print(f"- {k[0]} / {k[1]}: median {num(med(rates))} RPCs/s, {per:.1f} RPCs per action; "
              "first run: " + ", ".join(f"{v:,} {n}" for n, v in sorted(first["extra"]["rpcs"].items())))
    print()

errs = [(k, x) for k in order for x in groups[k] if x and x.get("errors")]
for k, x in errs:
    print(f"- {k[0]} / {k[1]}: {x['errors']} errors, samples: {x.get('error_samples', [])[:3]}")
if failed:
    print(f"**{len(failed)} run(s) failed:**")
    for r, rep in failed:
        why = (rep or {}).get("error") or f"exit {r['rc']}, no report"
        print(f"- {r['label']} / {r['server']} run {r['run']}: {why}")
else:
    print("All runs exited 0.")
PY

if ((FAILS > 0)); then
  echo "sitting: $FAILS failed run(s); results in $OUTDIR" >&2
  exit 1
fi
echo "sitting: done; results in $OUTDIR" >&2
