#!/usr/bin/env bash
# Checkpoint costs side by side: tenax-ckpt-bench on a state of MIB MiB (memory tier, local
# directory) and a synchronous torch.save of the same state; then the S3 tier against moto's
# server on loopback on S3_MIB MiB, multipart with 4 parts in flight vs one PUT stream
# (bench/compare_put_streams.sh).
# Usage: bench/compare_ckpt.sh [MIB=1024] [REPS=5] [S3_MIB=256]
set -euo pipefail
mib=${1:-1024} reps=${2:-5} s3_mib=${3:-256}
root=$(cd "$(dirname "$0")/.." && pwd)
bench=$root/build/bench/tenax-ckpt-bench
[ -x "$bench" ] || { echo "build first: make build" >&2; exit 1; }
"$bench" --mib "$mib" --reps "$reps"
"$root/.venv/bin/python" "$root/bench/ckpt_torch_save.py" --mib "$mib" --reps "$reps"
"$root/bench/compare_put_streams.sh" "$s3_mib" "$reps" 4
