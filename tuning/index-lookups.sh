#!/usr/bin/env bash
# Lookup throughput at 10k, 1M and 10M entries: fresh 16 GiB-capacity store each, seeded through
# the API by kiln bench (find-missing seeds its pool), then find-missing and ac-get for 10 s.
set -u
K=${KILN:-target/release/kiln}
D=${DATA:-/tmp/kiln-lookups}
for n in 10000 1000000 10000000; do
  rm -rf $D; mkdir -p $D
  cat > $D.toml <<CFG
[server]
listen = ["127.0.0.1:18990"]
metrics_listen = "127.0.0.1:18991"
data_dir = "$D"
[execution]
enabled = false
[storage]
capacity_bytes = 17179869184
CFG
  $K serve --config $D.toml > $D.out 2> $D.log &
  pid=$!
  for i in $(seq 100); do grep -q '^ready' $D.out && break; sleep 0.1; done
  echo "== $n entries"
  $K bench --target grpc://127.0.0.1:18990 --workload find-missing --blobs $n --size 100 --present 1.0 --duration 10s --quiet 2>&1 | grep -E "^ *(ops|latency|errors)"
  curl -s 127.0.0.1:18991/metrics | grep -E "^kiln_storage_index_(slots|displaced|load_permille) " | tr '\n' ' '; echo
  $K bench --target grpc://127.0.0.1:18990 --workload ac-get --duration 10s --quiet 2>&1 | grep -E "^ *(ops|latency|errors)"
  kill $pid; wait $pid 2>/dev/null
done
rm -rf $D
