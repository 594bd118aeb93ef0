#!/usr/bin/env bash
# Soak: one `kiln serve` (and one `kiln worker`, for Execute) under SOAK_CLIENTS concurrent
# clients mixing every `kiln bench` workload for SOAK_SECS, while the server's memory is
# sampled from /proc/<pid>/status. Fails (exit 1) on any client error, on a server that dies
# or logs a panic, or on memory that does not level off.
#
# Memory: VmRSS counts the store's mapped segment and index pages, which grow with the data
# until the ring is full and say nothing about leaks; the check is on RssAnon (heap and other
# anonymous memory): the maximum of the last third of the samples may exceed the maximum of
# the middle third by at most SOAK_RSS_MARGIN_PCT percent plus SOAK_RSS_SLACK_MIB MiB.
#
# Environment (defaults):
#   SOAK_SECS=600            timed run of every workload (CI: 60, see tests/reliability/main.rs)
#   SOAK_CLIENTS=256         total concurrent clients, split over the workloads below
#   SOAK_SAMPLE_SECS=5       memory sampling period
#   SOAK_RSS_MARGIN_PCT=10   allowed growth of RssAnon, last third over middle third
#   SOAK_RSS_SLACK_MIB=16    plus this much
#   SOAK_EXECUTE=1           start a worker and include execute-noop
#   SOAK_CAPACITY_GIB=16     the store's ring (disk space used, at most)
#   SOAK_COPY_BUDGET_MIB=    storage.copy_forward_budget_bytes in MiB (default: the engine's,
#                            a quarter segment: 16 MiB of the soak's 64 MiB segments)
#   SOAK_WORKER_ARGS=        extra `kiln worker` arguments
#   KILN_BIN=                the kiln binary (default: target/release/kiln if built, else
#                            target/debug/kiln, built with `cargo build --locked` if missing)
#   SOAK_OUT=                directory for logs, reports and samples (default: a temp dir,
#                            kept and printed)
# Output: one line per workload (ops, errors, ops/s, MB/s), the memory samples' summary, and
# SOAK_OUT/summary.env (errors=, ops=, rss_anon_*_kib=, rss_ok=) for tests to assert on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

SECS="${SOAK_SECS:-600}"
CLIENTS="${SOAK_CLIENTS:-256}"
SAMPLE="${SOAK_SAMPLE_SECS:-5}"
MARGIN="${SOAK_RSS_MARGIN_PCT:-10}"
SLACK="${SOAK_RSS_SLACK_MIB:-16}"
EXECUTE="${SOAK_EXECUTE:-1}"
CAPACITY_GIB="${SOAK_CAPACITY_GIB:-16}"
if [[ -z "${KILN_BIN:-}" ]]; then
    if [[ -x target/release/kiln ]]; then
        KILN_BIN=target/release/kiln
    else
        [[ -x target/debug/kiln ]] || cargo build --locked
        KILN_BIN=target/debug/kiln
    fi
fi
OUT="${SOAK_OUT:-$(mktemp -d /tmp/kiln-soak.XXXXXX)}"
mkdir -p "$OUT"
DATA="$OUT/data"
echo "soak: $CLIENTS clients for ${SECS}s against $KILN_BIN; output in $OUT"

# Workloads and their share of the clients (weights sum to 64). Uploads are kept to a share
# whose bytes fit the ring (SOAK_CAPACITY_GIB) for a 10-minute run on a fast box: once the ring
# wraps, blobs the read workloads seeded at the start may be evicted, which a cache may do and
# which would count as errors here (copy-forward keeps only blobs read often enough).
WORKLOADS=(
    "upload-small:5:--small-api batch --batch 8"
    "upload-small:3:--small-api bytestream"
    "read-small:7:--small-api batch --batch 8"
    "read-small:5:--small-api bytestream"
    "find-missing:9:--batch 200"
    "ac-get:9:"
    "ac-update:6:"
    "upload-large:1:--size 1MiB"
    "read-large:3:--size 4MiB --blobs 16"
    "bazel-like:12:"
)
if [[ "$EXECUTE" == 1 ]]; then
    WORKLOADS+=("execute-noop:4:")
fi
total_weight=0
for w in "${WORKLOADS[@]}"; do
    IFS=: read -r _ weight _ <<<"$w"
    total_weight=$((total_weight + weight))
done

cat >"$OUT/kiln.toml" <<EOF
[storage]
capacity_bytes = $((CAPACITY_GIB << 30))
segment_size_bytes = 67108864
max_blob_size_bytes = 268435456
copy_forward_budget_bytes = $(( ${SOAK_COPY_BUDGET_MIB:-0} << 20 ))
[execution]
# Completed operations are kept this long; short, so their memory reaches a steady state
# within the run instead of growing for the default 10 minutes.
operation_retention_secs = 20
EOF

pids=()
cleanup() {
    for p in "${pids[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT

"$KILN_BIN" serve --config "$OUT/kiln.toml" --data-dir "$DATA" --listen 127.0.0.1:0 \
    --metrics-listen 127.0.0.1:0 >"$OUT/serve.out" 2>"$OUT/serve.log" &
server=$!
pids+=("$server")
deadline=$((SECONDS + 120))
until grep -qx ready "$OUT/serve.out" 2>/dev/null; do
    if ! kill -0 "$server" 2>/dev/null || ((SECONDS > deadline)); then
        echo "soak: kiln serve did not become ready" >&2
        tail -20 "$OUT/serve.log" >&2
        exit 1
    fi
    sleep 0.2
done
port=$(sed -n 's#^listening grpc://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$OUT/serve.out" | head -1)
target="grpc://127.0.0.1:$port"
echo "soak: kiln serve pid $server on $target"

if [[ "$EXECUTE" == 1 ]]; then
    bots=$(sed -n 's#^listening bots unix:##p' "$OUT/serve.out" | head -1)
    # shellcheck disable=SC2086
    "$KILN_BIN" worker --server "unix:$bots" --work-dir "$OUT/work" --concurrency 4 \
        ${SOAK_WORKER_ARGS:-} >"$OUT/worker.out" 2>"$OUT/worker.log" &
    pids+=("$!")
    deadline=$((SECONDS + 60))
    until grep -qx "worker ready" "$OUT/worker.out" 2>/dev/null; do
        if ((SECONDS > deadline)); then
            echo "soak: kiln worker did not become ready" >&2
            tail -20 "$OUT/worker.log" >&2
            exit 1
        fi
        sleep 0.2
    done
fi

# The clients: one `kiln bench` per workload, concurrency by weight.
bench_pids=()
assigned=0
i=0
for w in "${WORKLOADS[@]}"; do
    IFS=: read -r name weight extra <<<"$w"
    i=$((i + 1))
    if ((i == ${#WORKLOADS[@]})); then
        conc=$((CLIENTS - assigned))
    else
        conc=$((CLIENTS * weight / total_weight))
    fi
    conc=$((conc > 0 ? conc : 1))
    assigned=$((assigned + conc))
    # shellcheck disable=SC2086
    "$KILN_BIN" bench --target "$target" --workload "$name" --concurrency "$conc" \
        --connections 2 --duration "${SECS}s" --seed "$((1000 + i))" --json --quiet $extra \
        >"$OUT/bench-$i-$name.json" 2>"$OUT/bench-$i-$name.log" &
    bench_pids+=("$!")
    pids+=("$!")
done

# Memory samples until every client is done: seconds, VmRSS KiB, RssAnon KiB.
echo -e "secs\tvmrss_kib\trss_anon_kib" >"$OUT/rss.tsv"
start=$SECONDS
while :; do
    running=0
    for p in "${bench_pids[@]}"; do
        kill -0 "$p" 2>/dev/null && running=1
    done
    ((running)) || break
    if ! kill -0 "$server" 2>/dev/null; then
        echo "soak: kiln serve died during the run" >&2
        tail -20 "$OUT/serve.log" >&2
        exit 1
    fi
    awk -v t=$((SECONDS - start)) '/^VmRSS:/{r=$2} /^RssAnon:/{a=$2} END{print t "\t" r "\t" a}' \
        "/proc/$server/status" >>"$OUT/rss.tsv"
    sleep "$SAMPLE"
done

failed=0
for idx in "${!bench_pids[@]}"; do
    if ! wait "${bench_pids[$idx]}"; then
        failed=1
    fi
done

# Per-workload figures from the JSON reports (top-level numeric fields).
field() { grep -o "\"$2\":[-0-9.e+]*" "$1" | head -1 | cut -d: -f2; }
total_ops=0
total_errors=0
printf '%-14s %8s %10s %7s %10s %8s\n' workload clients ops errors ops/s MB/s
for f in "$OUT"/bench-*.json; do
    if ! grep -q '"ops":' "$f"; then
        echo "soak: $(basename "$f"): no report: $(cat "$f") $(tail -3 "${f%.json}.log")" >&2
        failed=1
        continue
    fi
    ops=$(field "$f" ops)
    errors=$(field "$f" errors)
    total_ops=$((total_ops + ops))
    total_errors=$((total_errors + errors))
    printf '%-14s %8s %10s %7s %10.1f %8.1f\n' "$(grep -o '"workload":"[a-z-]*"' "$f" | cut -d'"' -f4)" \
        "$(field "$f" concurrency)" "$ops" "$errors" "$(field "$f" ops_per_s)" "$(field "$f" mb_per_s)"
    if ((errors > 0)); then
        grep -o '"error_samples":\[[^]]*\]' "$f" | head -c 600 >&2
        echo >&2
    fi
done

# Memory: thirds of the samples by index.
read -r n mid_max last_max first_max vm_max <<<"$(awk -F'\t' 'NR>1{a[n]=$3; v[n]=$2; n++}
    END{t=int(n/3); m=0; l=0; f=0; vm=0
        for(i=0;i<t;i++) if(a[i]>f) f=a[i]
        for(i=t;i<2*t;i++) if(a[i]>m) m=a[i]
        for(i=2*t;i<n;i++) if(a[i]>l) l=a[i]
        for(i=0;i<n;i++) if(v[i]>vm) vm=v[i]
        print n, m, l, f, vm}' "$OUT/rss.tsv")"
allowed=$((mid_max + mid_max * MARGIN / 100 + SLACK * 1024))
rss_ok=1
if ((n < 6)); then
    echo "soak: only $n memory samples; lower SOAK_SAMPLE_SECS" >&2
    rss_ok=0
elif ((last_max > allowed)); then
    echo "soak: RssAnon does not level off: last third max ${last_max} KiB > middle third max ${mid_max} KiB + ${MARGIN}% + ${SLACK} MiB" >&2
    rss_ok=0
fi
echo "memory: $n samples; RssAnon max by thirds $((first_max / 1024)) / $((mid_max / 1024)) / $((last_max / 1024)) MiB (allowed $((allowed / 1024))); VmRSS max $((vm_max / 1024)) MiB"
echo "total: $total_ops ops, $total_errors errors, $(awk -v o="$total_ops" -v s="$SECS" 'BEGIN{printf "%.0f", o/s}') ops/s; store $(du -sm "$DATA" | cut -f1) MiB on disk"

panics=$(grep -c "panicked" "$OUT/serve.log" || true)
if ((panics > 0)); then
    echo "soak: kiln serve logged $panics panic(s)" >&2
    failed=1
fi
cat >"$OUT/summary.env" <<EOF
ops=$total_ops
errors=$total_errors
rss_samples=$n
rss_anon_middle_max_kib=$mid_max
rss_anon_last_max_kib=$last_max
vmrss_max_kib=$vm_max
rss_ok=$rss_ok
server_panics=$panics
EOF
if ((failed || total_errors > 0 || !rss_ok)); then
    echo "soak: FAILED (see $OUT)" >&2
    exit 1
fi
echo "soak: ok"
