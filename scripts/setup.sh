#!/usr/bin/env bash
# Installs what building and testing tenax needs from Debian 12's packages. As root it runs
# apt-get; otherwise it prints the exact command and fails. Usage: scripts/setup.sh [bench]
set -euo pipefail
pkgs=(g++ cmake ninja-build ccache make libtorch-dev libgloo-dev libopenmpi-dev openmpi-bin
      libabsl-dev libgtest-dev libbenchmark-dev libopenblas0-pthread fortunes
      libcurl4-openssl-dev nlohmann-json3-dev awscli iproute2 python3 etcd-server etcd-client
      slurm-wlm munge python3-yaml
      libcpp-httplib-dev prometheus)
if [ "${1:-}" = bench ]; then pkgs+=(python3-torch); fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# The S3 test server runs on Node.js; any node/npm on PATH will do (Debian's or another).
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
[ ${#missing[@]} -eq 0 ] && exit 0
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
