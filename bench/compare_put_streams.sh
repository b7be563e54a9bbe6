#!/usr/bin/env bash
# Persisting a checkpoint to S3 with parts in flight vs one PUT stream, through the checkpoint
# engine (tenax-ckpt-bench --s3), against moto's threaded S3 server on loopback
# (tests/s3/moto_s3_server.py: a thread per request, signatures checked). Both sides persist the
# same MIB MiB state in the same run; medians over REPS; the table's last row is the ratio.
# PART_MIB is the object and part size: with the default 64 each of the state's 64 MiB tensors
# is one object of its own, a PUT; below 64 each is a multipart upload.
# Usage: bench/compare_put_streams.sh [MIB=1024] [REPS=5] [PARTS=4] [PART_MIB=64]
# Needs: make build (build/bench/tenax-ckpt-bench) and .venv/ (make setup).
set -euo pipefail
mib=${1:-1024}
reps=${2:-5}
parts=${3:-4}
part_mib=${4:-64}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"' EXIT
"$root/.venv/bin/python" "$root/tests/s3/moto_s3_server.py" bench > "$work/server.log" 2>&1 &
server=$!
for _ in $(seq 300); do grep -q '^listening on' "$work/server.log" && break; sleep 0.1; done
read -r _ _ addr _ key _ secret < <(grep '^listening on' "$work/server.log")
AWS_ENDPOINT_URL=http://$addr AWS_ACCESS_KEY_ID=$key AWS_SECRET_ACCESS_KEY=$secret \
AWS_REGION=us-east-1 AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null \
  "$root/build/bench/tenax-ckpt-bench" --mib "$mib" --reps "$reps" --parallel_parts "$parts" \
  --part_mib "$part_mib" \
  --s3 s3://bench/run --dir "$work/dir" | grep -E '^# state|^\| (measurement|---|persist, s3|restore, s3|s3 parallel)'
