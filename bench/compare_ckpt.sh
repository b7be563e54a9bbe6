#!/usr/bin/env bash
# Checkpoint costs side by side: tenax-ckpt-bench on a state of MIB MiB (memory tier, local
# directory) and a synchronous torch.save of the same state; then the S3 tier against a local
# s3rver (installed by the test fixture under build/tests/s3rver) on S3_MIB MiB, multipart with
# 4 parts in flight vs one PUT stream.
# Usage: bench/compare_ckpt.sh [MIB=1024] [REPS=5] [S3_MIB=256]
set -euo pipefail
mib=${1:-1024} reps=${2:-5} s3_mib=${3:-256}
root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/build/bench/tenax-ckpt-bench
[ -x "$bench" ] || { echo "build first: make build" >&2; exit 1; }
"$bench" --mib "$mib" --reps "$reps"
/usr/bin/python3 "$root/bench/ckpt_torch_save.py" --mib "$mib" --reps "$reps"
s3rver=$root/build/tests/s3rver
[ -x "$s3rver/node_modules/.bin/s3rver" ] || (cd "$s3rver" && npm ci --no-audit --no-fund --loglevel=error)
data=$(mktemp -d)
log=$(mktemp)
NODE_OPTIONS=--openssl-legacy-provider "$s3rver/node_modules/.bin/s3rver" -d "$data" \
  -a 127.0.0.1 -p 0 --configure-bucket bench >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$data" "$log"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$log" | head -1)
AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ACCESS_KEY_ID=S3RVER AWS_SECRET_ACCESS_KEY=S3RVER \
  "$bench" --mib "$s3_mib" --reps "$reps" --s3 s3://bench/ckpt | grep -E "^# |s3|memcpy"
