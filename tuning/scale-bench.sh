#!/usr/bin/env bash
# Cost as the store grows (issue #15): a fresh store filled through the API to 10k, 1M and
# 10M blobs of 100 bytes (find-missing's seeding), then at each size: p50/p99 of
# find-missing (all present), ac-get and read-small; the server's RSS (anonymous, i.e. heap,
# and file-backed, i.e. mapped index and segment pages) beside the index file's size; and the
# restart time after kill -9 (spawn to `ready`, with the replay it needed).
# `wrap`: upload-large of 64 MiB blobs for 20 s into a 2 GiB ring (it wraps several times,
# copy-forward on) against the same into a 16 GiB ring that 20 s do not fill; 3 pairs.
# Usage: cargo build --release && tuning/scale-bench.sh [sizes|wrap]
#   KILN  the kiln binary (default target/release/kiln)
#   DATA  scratch data dir (default /tmp/kiln-scale; wiped)
set -u
K=${KILN:-$(dirname "$0")/../target/release/kiln}
D=${DATA:-/tmp/kiln-scale}
PORT=18992
MPORT=18993

config() { # capacity segment_size
  cat > $D.toml <<CFG
[server]
listen = ["127.0.0.1:$PORT"]
metrics_listen = "127.0.0.1:$MPORT"
data_dir = "$D"
[execution]
enabled = false
[storage]
capacity_bytes = $1
segment_size_bytes = $2
# 10M blobs of 100 bytes are more entries than the derived maximum (capacity / 512) holds.
index_max_slots = 33554432
CFG
}
start() {
  $K serve --config $D.toml > $D.out 2> $D.log &
  pid=$!
  local t0=$(date +%s%N)
  for i in $(seq 600); do grep -q '^ready' $D.out && break; sleep 0.05; done
  ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
}
bench() { # label args...
  local label=$1; shift
  $K bench --target grpc://127.0.0.1:$PORT --quiet --json "$@" > $D.json
  python3 - "$label" $D.json <<'P'
import json,sys
r=json.load(open(sys.argv[2])); l=r["latency"]
print(f'  {sys.argv[1]:14s} ops/s {r["ops_per_s"]:9.0f} items/s {r["items_per_s"]:10.0f} MB/s {r["mb_per_s"]:7.1f} p50 {l["p50_ms"]:7.3f} ms p99 {l["p99_ms"]:7.3f} ms errors {r["errors"]}')
P
}
rss() {
  awk '/^(VmRSS|RssAnon|RssFile)/ {printf "%s %d MiB  ", $1, $2/1024}' /proc/$pid/status
  printf 'index file %d MiB\n' $(( $(stat -c %s $D/store/index 2>/dev/null || stat -c %s $(find $D -name index | head -1)) / 1048576 ))
}
uptime
case "${1:-sizes}" in
sizes)
  for n in 10000 1000000 10000000; do
    rm -rf $D; mkdir -p $D
    config 6442450944 268435456
    start
    echo "== $n blobs of 100 bytes"
    bench find-missing --workload find-missing --blobs $n --size 100 --present 1.0 --duration 10s
    bench ac-get --workload ac-get --duration 10s
    bench read-small --workload read-small --duration 10s
    curl -s 127.0.0.1:$MPORT/metrics | grep -E "^kiln_storage_(index_slots|index_displaced|blobs) " | tr '\n' ' '; echo
    rss
    kill -9 $pid; wait $pid 2>/dev/null
    start
    echo "  restart after kill -9: ${ready_ms} ms to ready; $(grep -o 'replayed[^"]*' $D.log | head -1)"
    kill $pid; wait $pid 2>/dev/null
  done ;;
wrap)
  for cap in 17179869184 2147483648 2147483648 17179869184 17179869184 2147483648; do
    rm -rf $D; mkdir -p $D
    config $cap 67108864
    start
    echo "== capacity $cap, 64 MiB segments"
    bench upload-large --workload upload-large --size 64MiB --concurrency 2 --duration 20s
    curl -s 127.0.0.1:$MPORT/metrics | grep -E "^kiln_storage_(evictions|copy_forwards|copy_forward_bytes|copy_forward_budget_cuts|bytes_written) " | tr '\n' ' '; echo
    kill $pid; wait $pid 2>/dev/null
  done ;;
esac
rm -rf $D
