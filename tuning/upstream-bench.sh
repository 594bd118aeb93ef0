#!/bin/bash
# `kiln bench` through a local tier with [upstream] (write = "none") against a plain kiln:
# hits (read-small, ac-get, read-large) and miss paths (find-missing of absent digests,
# ac-get misses). Three `kiln serve` on ports 19080 (upstream), 19081 (local tier), 19082
# (plain); runs alternate the two targets. Figures: tuning/RESULTS.md (issue #12).
# `misses`: blob reads that all miss the local tier (`--seed-target` seeds the upstream, and
# reads go through the seeded blobs once, in order) against the same reads of a plain kiln
# seeded with them (all hits).
# Usage: cargo build --release && tuning/upstream-bench.sh [hits|misses]
#   KILN   the kiln binary (default target/release/kiln)
#   OUTDIR scratch dir (default /tmp/kiln-upstream-bench; its data dirs are wiped)
set -euo pipefail
K=${KILN:-$(dirname "$0")/../target/release/kiln}
D=${OUTDIR:-/tmp/kiln-upstream-bench}
mkdir -p "$D"
rm -rf $D/up $D/local $D/plain
cat > $D/up.toml <<T
[server]
listen = ["127.0.0.1:19080"]
data_dir = "$D/up"
metrics_listen = ""
unix_socket = ""
[storage]
capacity_bytes = 4294967296
segment_size_bytes = 268435456
max_blob_size_bytes = 1073741824
[execution]
enabled = false
T
sed -e 's/19080/19081/' -e "s|$D/up|$D/local|" $D/up.toml > $D/local.toml
printf '[upstream]\nendpoint = "grpc://127.0.0.1:19080"\nwrite = "none"\n' >> $D/local.toml
sed -e 's/19080/19082/' -e "s|$D/up|$D/plain|" $D/up.toml > $D/plain.toml
for n in up local plain; do
  $K serve --config $D/$n.toml > $D/$n.out 2> $D/$n.err &
  echo $! > $D/$n.pid
done
for p in 19080 19081 19082; do
  for i in $(seq 1 100); do (echo > /dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.1; done
done
run() { # label target args...
  local label=$1 t=$2; shift 2
  $K bench --target grpc://127.0.0.1:$t --duration 10s --quiet --json "$@" > $D/r.json
  python3 - "$label" "$D/r.json" <<'P'
import json,sys
r=json.load(open(sys.argv[2]))
l=r["latency"]
print(f'{sys.argv[1]:28s} ops/s {r["ops_per_s"]:9.0f} items/s {r["items_per_s"]:9.0f} MB/s {r["mb_per_s"]:8.1f} errors {r["errors"]} p50 {l["p50_ms"]:.3f} ms p99 {l["p99_ms"]:.3f} ms')
P
}
uptime
if [ "${1:-}" = misses ]; then
  # 3 pairs in alternating order; fresh seeds, so every run reads blobs no target has served.
  for i in 1 2 3; do
    if [ $((i % 2)) = 1 ]; then order="plain:19082:19082 local:19081:19080"; else order="local:19081:19080 plain:19082:19082"; fi
    for t in $order; do
      IFS=: read -r name port seedport <<< "$t"
      run "$name read-small-miss" $port --workload read-small --blobs 30000 --batch 100 --ops 300 \
        --seed-target grpc://127.0.0.1:$seedport --seed $((800+i))
      run "$name read-large-miss" $port --workload read-large --size 64MiB --blobs 4 --ops 4 \
        --concurrency 1 --seed-target grpc://127.0.0.1:$seedport --seed $((900+i))
    done
  done
elif [ "${1:-}" = hits ]; then
  # Hits only, 4 pairs in alternating order.
  for i in 1 2 3 4; do
    if [ $((i % 2)) = 1 ]; then order="plain:19082 local:19081"; else order="local:19081 plain:19082"; fi
    for pair in $order; do
      name=${pair%:*}; port=${pair#*:}
      run "$name read-small" $port --workload read-small --seed $((600+i))
      run "$name ac-get-hit" $port --workload ac-get --hit-ratio 1.0 --seed $((700+i))
    done
  done
else
  for i in 1 2 3; do
    for pair in "plain 19082" "local 19081"; do
      set -- $pair
      run "$1 read-small" $2 --workload read-small --seed $((100+i))
      run "$1 ac-get-hit" $2 --workload ac-get --hit-ratio 1.0 --seed $((200+i))
      run "$1 read-large-64M" $2 --workload read-large --size 64MiB --concurrency 2 --seed $((300+i))
      run "$1 find-missing-absent" $2 --workload find-missing --present 0 --seed $((400+i))
      run "$1 ac-get-miss" $2 --workload ac-get --hit-ratio 0 --seed $((500+i))
    done
  done
fi
uptime
for n in up local plain; do kill $(cat $D/$n.pid); done
