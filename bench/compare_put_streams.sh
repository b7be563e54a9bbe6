#!/usr/bin/env bash
# One 128 MiB PUT vs 4 × 32 MiB PUTs in parallel (curl), against s3rver and against
# bench/body_sink.js (a bare Node.js server: dropping the body, MD5 of it, MD5 and a file
# write). Prints the median ratio of REPS alternating runs per server.
# Usage: bench/compare_put_streams.sh [REPS=7]
set -euo pipefail
reps=${1:-7}
root=$(cd "$(dirname "$0")/.." && pwd)
s3rver=$root/build/tests/s3rver
[ -x "$s3rver/node_modules/.bin/s3rver" ] || (cd "$s3rver" && npm ci --no-audit --no-fund --loglevel=error)
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; rm -rf "$work"' EXIT
head -c $((128 << 20)) /dev/urandom >"$work/big"
head -c $((32 << 20)) "$work/big" >"$work/part"
start() {  # start NAME COMMAND...: sets port from what NAME.log says
  "${@:2}" >"$work/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do grep -qE '^[0-9]+$|listening on' "$work/$1.log" && break; sleep 0.1; done
  port=$(grep -oE '^[0-9]+$|:[0-9]+$' "$work/$1.log" | tr -d : | head -1)
}
mkdir -p "$work/s3" "$work/sink"
compare() {  # compare NAME PORT URL-PREFIX CURL-ARGS...
  local name=$1 port=$2 prefix=$3
  shift 3
  for r in $(seq "$reps"); do
    local t0 t1 t2
    t0=$(date +%s.%N)
    curl -sf -o /dev/null "$@" -T "$work/big" "http://127.0.0.1:$port/$prefix/one"
    t1=$(date +%s.%N)
    for i in 1 2 3 4; do curl -sf -o /dev/null "$@" -T "$work/part" "http://127.0.0.1:$port/$prefix/p$i" & done
    wait
    t2=$(date +%s.%N)
    echo "$t0 $t1 $t2"
  done | python3 -c "
import sys, statistics as st
rows = [list(map(float, l.split())) for l in sys.stdin]
one = [b - a for a, b, c in rows]; par = [c - b for a, b, c in rows]
print('| $name | %.3f | %.3f | %.2fx |' % (st.median(one), st.median(par),
      st.median(o / p for o, p in zip(one, par))))"
}
echo "| server | one 128 MiB PUT (s) | 4 x 32 MiB in parallel (s) | one / parallel (median) |"
echo "|---|---|---|---|"
start s3rver env NODE_OPTIONS=--openssl-legacy-provider "$s3rver/node_modules/.bin/s3rver" \
  -d "$work/s3" -a 127.0.0.1 -p 0 --configure-bucket b --silent
compare s3rver "$port" b --aws-sigv4 "aws:amz:us-east-1:s3" --user S3RVER:S3RVER \
  -H "x-amz-content-sha256: UNSIGNED-PAYLOAD"
for mode in drop md5 file; do
  start "sink-$mode" node "$root/bench/body_sink.js" "$mode" "$work/sink"
  compare "node, $mode" "$port" x
done
