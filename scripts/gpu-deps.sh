#!/usr/bin/env bash
# Prepares, on a machine with Debian's package registry, what building tenax on a GPU machine
# needs beyond that machine's image (a Python with PyTorch >= 2.11 and CUDA, CMake, ninja, nvcc,
# a compiler; no package registry): Gloo's source (.deps/gloo, from scripts/setup.sh) and the
# libraries tenax links, as Debian 12 packages unpacked into .deps/gpu-prefix. The two folders
# travel with the working tree to the GPU machine, where scripts/gpu-check.sh builds against them.
# Fails when the prefix would pass 60 MiB. Usage: scripts/gpu-deps.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
[ -f .deps/gloo/.source.sha256 ] || scripts/setup.sh

prefix=.deps/gpu-prefix
# Headers and the shared libraries they need; Open MPI stays out (tenax builds without it).
debs=(libabsl-dev libabsl20220623 libgtest-dev libbenchmark-dev libbenchmark1debian
      nlohmann-json3-dev libcpp-httplib-dev libcpp-httplib0.11 libcurl4-openssl-dev libcurl4
      libssl-dev libbrotli-dev zlib1g-dev)
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download "${debs[@]}" > /dev/null) || {
  echo "tenax: could not download ${debs[*]} from Debian's registry." >&2
  echo "  Run by hand: apt-get update && apt-get download ${debs[*]}" >&2
  exit 1
}
rm -rf "$prefix" && mkdir -p "$prefix"
for d in "$tmp"/*.deb; do dpkg-deb -x "$d" "$prefix"; done
rm -rf "$prefix"/usr/share/doc "$prefix"/usr/share/man
# Paths inside the packages' CMake files are absolute (/usr/...): make them relative to the
# prefix, and give the shared libraries' development names where only a versioned one came.
grep -rl '/usr/lib/x86_64-linux-gnu\|/usr/include' "$prefix"/usr/lib/x86_64-linux-gnu/cmake \
  "$prefix"/usr/share/cmake 2>/dev/null | while read -r f; do
  sed -i 's#"/usr/lib/x86_64-linux-gnu#"${_IMPORT_PREFIX}/lib/x86_64-linux-gnu#g' "$f"
done
size=$(du -sm "$prefix" | cut -f1)
echo "tenax: $prefix holds ${size} MiB (${#debs[@]} packages)"
if [ "$size" -gt 60 ]; then
  echo "tenax: $prefix is over 60 MiB" >&2
  exit 1
fi
