#!/usr/bin/env bash
# Installs what building and testing tenax needs, and nothing outside the project but Debian's
# packages:
#   1. Debian 12 packages (compiler, CMake, Open MPI, Abseil, GoogleTest, libcurl, etcd, Slurm,
#      Prometheus, the aws CLI, ...). As root it runs apt-get; otherwise it prints the exact
#      command and fails.
#   2. The project's Python environment, .venv/, from requirements.txt (exact versions): torch
#      (whose LibTorch the build links), moto (the S3 test server) and what the benchmarks run.
#   3. Gloo's source, .deps/gloo/, taken from a pinned source archive in the Python registry; the
#      build compiles it into libtenax under a namespace of its own (docs/ARCHITECTURE.md, "One
#      Gloo and one NCCL per process").
# Each step is skipped when what it makes is already there and up to date.
# Usage: scripts/setup.sh [bench]   (bench: also what the benchmarks' references need)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

pkgs=(g++ cmake ninja-build ccache make libopenmpi-dev openmpi-bin
      libabsl-dev libgtest-dev libbenchmark-dev fortunes
      libcurl4-openssl-dev nlohmann-json3-dev awscli iproute2 python3 python3-venv
      etcd-server etcd-client slurm-wlm munge python3-yaml libcpp-httplib-dev prometheus)
# The benchmarks' raw Gloo reference compiles against Debian's Gloo (never linked into tenax).
if [ "${1:-}" = bench ]; then pkgs+=(libgloo-dev); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  cmd="apt-get install -y --no-install-recommends ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "tenax: missing Debian packages. Run as root:" >&2
    echo "  apt-get update && $cmd" >&2
    exit 1
  fi
  echo "tenax: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  $cmd
fi

# A pip install that fails names the package it could not get and the command to run by hand.
pip_or_explain() {
  local what=$1; shift
  local log; log=$(mktemp)
  if ! "$@" > "$log" 2>&1; then
    cat "$log" >&2
    local pkg; pkg=$(grep -oE "(requirement|distribution found for) [A-Za-z0-9_.\[\]-]+(==[^ ]+)?" "$log" \
      | tail -1 | awk '{print $NF}')
    echo "tenax: could not get ${pkg:-$what} from the Python package registry." >&2
    echo "  Run by hand: $*" >&2
    rm -f "$log"
    exit 1
  fi
  rm -f "$log"
}

venv=.venv
stamp=$venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x $venv/bin/python ] || [ "$(cat $stamp 2>/dev/null)" != "$want" ]; then
  echo "tenax: preparing the Python environment $venv (requirements.txt)"
  [ -x $venv/bin/python ] || python3 -m venv $venv
  pip_or_explain requirements.txt $venv/bin/pip install --disable-pip-version-check -q \
    -r requirements.txt
  echo "$want" > $stamp
fi

# Gloo from a pinned source archive (its third_party/gloo, Gloo 0.5.0).
gloo_pkg=horovod==0.28.1
gloo_sha256=92a43f5a94c43907a56805bad15f19700c62ffc83b7ca483f9e104e229f67ef0
if [ "$(cat .deps/gloo/.source.sha256 2>/dev/null)" != "$gloo_sha256" ]; then
  echo "tenax: unpacking Gloo's source into .deps/gloo ($gloo_pkg)"
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  pip_or_explain "$gloo_pkg" $venv/bin/pip download --disable-pip-version-check -q --no-deps \
    --no-binary :all: -d "$tmp" "$gloo_pkg"
  archive=$(ls "$tmp"/*.tar.gz)
  got=$(sha256sum "$archive" | cut -d' ' -f1)
  if [ "$got" != "$gloo_sha256" ]; then
    echo "tenax: $gloo_pkg's archive has sha256 $got, expected $gloo_sha256" >&2
    exit 1
  fi
  tar -xzf "$archive" -C "$tmp" --wildcards '*/third_party/gloo/*'
  rm -rf .deps/gloo && mkdir -p .deps
  mv "$tmp"/*/third_party/gloo .deps/gloo
  echo "$gloo_sha256" > .deps/gloo/.source.sha256
fi
