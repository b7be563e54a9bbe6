#!/usr/bin/env bash
# One command for a GPU machine whose Python has PyTorch >= 2.11 with CUDA, CMake, ninja and nvcc
# but no package registry: builds tenax against that PyTorch and the libraries that
# scripts/gpu-deps.sh unpacked into .deps/ beforehand, then, within about 8 minutes, runs
#   1. the NCCL communicator tests (pass/fail/skip per test);
#   2. all_reduce, all_gather and reduce_scatter on one GPU, 8 B .. 1 GiB (busbw, #wrong);
#   3. llama_train in bf16 for 50 steps, the small preset and the largest that fits, beside the
#      same model in PyTorch eager (bench/llama_reference.py): tokens/s and MFU;
#   4. the checkpoint save stall for 1 GiB and 8 GiB of device memory against a plain
#      device-to-host copy of the same bytes;
#   5. llama_train killed at step 30 and started again: the time to its first step, resumed from
#      the memory tier.
# Prints a summary (also OUT/summary.md) and exits non-zero when any part failed.
#
# --dry-run runs all of it on the CPU against an existing CPU build (--build DIR, default build):
# no CMake step, Gloo instead of NCCL, the tiny preset, a few steps and MiB.
# Usage: scripts/gpu-check.sh [--dry-run] [--build DIR] [--out DIR] [--peak-tflops N]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

dry=0
build=""
out=""
peak=""
while [ $# -gt 0 ]; do
  case $1 in
    --dry-run) dry=1 ;;
    --build) build=$2; shift ;;
    --out) out=$2; shift ;;
    --peak-tflops) peak=$2; shift ;;
    *) echo "usage: $0 [--dry-run] [--build DIR] [--out DIR] [--peak-tflops N]" >&2; exit 2 ;;
  esac
  shift
done
if [ $dry -eq 1 ]; then build=${build:-build}; else build=${build:-build-gpu}; fi
out=${out:-${OUT:-$build/gpu-check}}
mkdir -p "$out"
summary=$out/summary.md
: > "$summary"
failed=0
say() { echo "$*" | tee -a "$summary"; }
fail() { say "FAILED: $*"; failed=1; }
started=$(date +%s)

if [ $dry -eq 1 ]; then
  py=$root/.venv/bin/python
  device=cpu; backend=gloo; dtype=fp32
  presets=(tiny); steps=6; kill_at=3; sizes=(8); max_bytes=64K
  [ -x "$build/examples/llama/llama_train" ] || { echo "no CPU build in $build (make build)" >&2; exit 2; }
  say "# gpu-check (dry run on the CPU, build $build)"
else
  py=$(command -v python3)
  device=cuda; backend=nccl; dtype=bf16
  presets=(llama3-8b llama3-1b small); steps=50; kill_at=30; sizes=(1024 8192); max_bytes=1G
  say "# gpu-check ($(date -u +%F), $(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
  if ! "$py" -c 'import sys, torch; v = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]); sys.exit(0 if v >= (2, 11) and torch.cuda.is_available() else 1)'; then
    echo "gpu-check: python3 needs PyTorch >= 2.11 with a visible CUDA device" >&2
    exit 2
  fi
  [ -d .deps/gpu-prefix/usr ] && [ -f .deps/gloo/.source.sha256 ] || {
    echo "gpu-check: .deps/gpu-prefix or .deps/gloo is missing: run scripts/gpu-deps.sh where a registry is reachable" >&2
    exit 2
  }
  prefix=$root/.deps/gpu-prefix/usr
  export LD_LIBRARY_PATH=$prefix/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  torch_prefix=$("$py" -c 'import torch.utils; print(torch.utils.cmake_prefix_path)')
  say "PyTorch $("$py" -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)')"
  if ! cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$torch_prefix;$prefix" -DTENAX_PYTHON="$py" \
      -DCMAKE_INCLUDE_PATH="$prefix/include" -DCMAKE_LIBRARY_PATH="$prefix/lib/x86_64-linux-gnu" \
      > "$out/configure.log" 2>&1 ||
     ! cmake --build "$build" -j "$(nproc)" --target comm_tests comm_worker tenax-collective-perf \
      llama_train llama_prepare tenax-ckpt-bench > "$out/build.log" 2>&1; then
    tail -30 "$out/configure.log" "$out/build.log" 2>/dev/null
    echo "gpu-check: the build failed (logs in $out)" >&2
    exit 1
  fi
  say "built in $(( $(date +%s) - started )) s"
  if [ -z "$peak" ]; then
    case $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) in
      *H100*|*H200*|*H800*) peak=989 ;;   # dense bf16, SXM
      *A100*) peak=312 ;;
      *L40S*) peak=362 ;;
      *) peak=0 ;;
    esac
  fi
fi
peak=${peak:-0}

# 1. The NCCL communicator tests.
say ""; say "## NCCL communicator tests"
timeout 120 "$build/tests/comm_tests" --gtest_filter='NcclTest.*' > "$out/nccl_tests.log" 2>&1
grep -E '^\[ +(OK|FAILED|SKIPPED) +\] [A-Za-z]+\.' "$out/nccl_tests.log" | sed 's/ (.*//' | sort -u | tee -a "$summary"
if grep -q '^\[  FAILED  \]' "$out/nccl_tests.log" || ! grep -qE '^\[ +(OK|SKIPPED) +\]' "$out/nccl_tests.log"; then
  fail "NCCL communicator tests (log: $out/nccl_tests.log)"
fi
if [ $dry -eq 0 ] && grep -q '^\[  SKIPPED \]' "$out/nccl_tests.log"; then
  fail "NCCL communicator tests skipped on a GPU machine"
fi

# 2. Collectives on one device.
say ""; say "## Collectives, one rank, $backend"
for coll in all_reduce all_gather reduce_scatter; do
  log=$out/collective_$coll.log
  if ! timeout 120 "$build/bench/tenax-collective-perf" --backend "$backend" --coll "$coll" \
       -b 8 -e "$max_bytes" -f 2 -n 20 -w 5 -c 1 > "$log" 2>&1; then
    fail "$coll (log: $log)"; continue
  fi
  wrong=$(awk '!/^#/ && NF >= 13 {w += ($9 == "N/A" ? 0 : $9) + ($13 == "N/A" ? 0 : $13)} END {print w + 0}' "$log")
  rows=$(grep -cvE '^#|^$' "$log")
  say "$coll: $rows sizes, #wrong $wrong, $(grep 'Avg bus bandwidth' "$log" | sed 's/^# *//')"
  [ "$wrong" -eq 0 ] && [ "$rows" -gt 0 ] || fail "$coll: #wrong $wrong over $rows sizes"
done

# 3. llama_train against PyTorch eager, same model, batch and steps.
say ""; say "## llama_train ($device, $dtype, $steps steps) vs PyTorch eager"
corpus=$out/corpus
if ! "$build/examples/llama/llama_prepare" --out "$corpus" README.md docs/*.md > "$out/prepare.log" 2>&1; then
  fail "llama_prepare (log: $out/prepare.log)"
fi
tps() { grep -oE "$1 [0-9.]+" "$2" | tail -1 | awk '{print $NF}'; }
for preset in "${presets[@]}"; do
  log=$out/llama_$preset.log
  timeout 240 "$build/examples/llama/llama_train" --device "$device" --dtype "$dtype" \
    --preset "$preset" --steps "$steps" --data "$corpus/train.bin" --val_data "$corpus/train.bin" --eval-interval 0 \
    --log-interval 10 --peak-tflops "$peak" > "$log" 2>&1
  rc=$?
  if [ $rc -ne 0 ]; then
    if grep -qiE 'out of memory|does not fit' "$log"; then say "$preset: does not fit"; continue; fi
    fail "llama_train --preset $preset (exit $rc, log: $log)"; continue
  fi
  t=$(grep -oE '[0-9.]+ tokens/s over steps' "$log" | awk '{print $1}')
  mfu=$(grep -oE 'MFU +[0-9.]+%' "$log" | tail -1 | awk '{print $2}')
  rlog=$out/reference_$preset.log
  timeout 240 "$py" bench/llama_reference.py --nproc 1 --device "$device" --dtype "$dtype" \
    --preset "$preset" --steps "$steps" --data "$corpus/train.bin" > "$rlog" 2>&1
  r=$(tps "reference tokens/s" "$rlog")
  ratio=$(awk -v a="${t:-0}" -v b="${r:-0}" 'BEGIN {print (b > 0 ? sprintf("%.2f", a / b) : "n/a")}')
  say "$preset: tenax ${t:-?} tokens/s (MFU ${mfu:-?} of $peak TFLOP/s), PyTorch eager ${r:-?} tokens/s, ratio $ratio"
  [ -n "$t" ] && [ -n "$r" ] || fail "$preset: no tokens/s from one side (logs: $log, $rlog)"
  [ $dry -eq 1 ] || [ "$preset" = small ] || break   # the largest that fits, then small
done

# 4. The save stall from device memory.
say ""; say "## Checkpoint save stall ($device memory)"
for mib in "${sizes[@]}"; do
  log=$out/ckpt_$mib.log
  if ! timeout 180 "$build/bench/tenax-ckpt-bench" --device "$device" --stall_only --mib "$mib" \
       --reps 3 > "$log" 2>&1; then
    fail "save stall, $mib MiB (log: $log)"; continue
  fi
  say "$mib MiB: $(grep 'save stall' "$log" | awk -F'|' '{print $3 "s, " $5}' | tr -s ' ')"
done

# 5. Killed at step kill_at, started again: resumed from the memory tier.
say ""; say "## Restart after a kill at step $kill_at"
run=gpu-check-$$
args=(--device "$device" --dtype "$dtype" --preset "${presets[-1]}" --steps "$((kill_at + 5))"
      --data "$corpus/train.bin" --val_data "$corpus/train.bin" --eval-interval 0 --log-interval 1 --ckpt-every 1
      --ckpt-run "$run")
TENAX_FAULT="kill@$kill_at" timeout 240 "$build/examples/llama/llama_train" "${args[@]}" \
  > "$out/kill.log" 2>&1
t0=$(date +%s.%N)
timeout 240 "$build/examples/llama/llama_train" "${args[@]}" > "$out/restart.log" 2>&1 &
pid=$!
first=""
for _ in $(seq 2400); do
  if grep -qE '^step +[0-9]+/' "$out/restart.log"; then first=$(date +%s.%N); break; fi
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
wait $pid
rc=$?
resumed=$(grep -o 'resumed at step [0-9]* from the [a-z]* tier' "$out/restart.log")
if [ $rc -ne 0 ] || [ -z "$first" ] || [ -z "$resumed" ]; then
  fail "restart (exit $rc; logs: $out/kill.log, $out/restart.log)"
else
  say "$resumed; process start to first step $(awk -v a="$t0" -v b="$first" 'BEGIN {printf "%.2f", b - a}') s"
fi
rm -f /dev/shm/tenax-"$run"-* 2>/dev/null  # the memory tier's regions

say ""; say "total $(( $(date +%s) - started )) s"
exit $failed
