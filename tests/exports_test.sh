#!/usr/bin/env bash
# The installed libtenax.so exports the public API and nothing of tenax::detail (nor any other
# internal): it is built with hidden visibility and TENAX_API on include/tenax/. And it leaves
# the program's signals alone: no writev (Gloo's socket writes go through sendmsg with
# MSG_NOSIGNAL, cmake/gloo/send_nosignal.h) and no signal() call. Every program names libstdc++
# ahead of LibTorch.
# Usage: exports_test.sh BUILD
set -euo pipefail
build=$1
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" > /dev/null
lib=$(ls "$tmp"/prefix/lib*/libtenax.so* | head -1)
nm -D --defined-only -C "$lib" > "$tmp/symbols"
status=0
if grep -q 'tenax::detail' "$tmp/symbols"; then
  echo "libtenax.so exports tenax::detail symbols:"; grep 'tenax::detail' "$tmp/symbols" | head -20
  status=1
fi
# Internals outside tenax::detail stay inside too.
for internal in 'tenax::reduce_kernel' 'tenax::create_gloo_communicator' 'tenax::net::'; do
  if grep -q "$internal" "$tmp/symbols"; then echo "libtenax.so exports $internal"; status=1; fi
done
for public in 'tenax::init(' 'tenax::CheckpointEngine::save(' 'tenax::ElasticRunner::run(' \
              'typeinfo for tenax::PeerLostError' 'tenax::ElasticRunner::ElasticRunner(' \
              'tenax::DataParallel::DataParallel(' 'tenax::settings()'; do
  if ! grep -qF "$public" "$tmp/symbols"; then echo "libtenax.so does not export $public"; status=1; fi
done
# Open MPI is opened at run time under mpirun only: never a dependency of the library.
if objdump -p "$lib" | grep -E 'NEEDED +libmpi' ; then echo "libtenax.so links Open MPI"; status=1; fi
nm -D --undefined-only "$lib" > "$tmp/imports"
for call in writev signal; do
  if grep -qw "$call" "$tmp/imports"; then
    echo "libtenax.so calls $call(): a socket write without MSG_NOSIGNAL, or a process-wide handler"
    status=1
  fi
done
# Every program names libstdc++ ahead of libtorch (CMakeLists.txt: a LibTorch that exports a
# copy of std::filesystem, as torch 2.11's does, would otherwise take its calls).
for bin in "$lib" "$build"/tools/tenaxrun "$build"/examples/llama/llama_train "$build"/tests/*_tests; do
  [ -f "$bin" ] || continue
  needed=$(objdump -p "$bin" | awk '/NEEDED/ {print $2}')
  first_torch=$(echo "$needed" | grep -n -m1 '^lib\(torch\|c10\)' | cut -d: -f1 || true)
  cxx=$(echo "$needed" | grep -n -m1 '^libstdc++' | cut -d: -f1 || true)
  if [ -n "$first_torch" ] && { [ -z "$cxx" ] || [ "$cxx" -gt "$first_torch" ]; }; then
    echo "$(basename "$bin") names $(echo "$needed" | sed -n "${first_torch}p") ahead of libstdc++"
    status=1
  fi
done
[ $status -eq 0 ] && echo "libtenax.so exports $(grep -c ' [TVWBDR] ' "$tmp/symbols") symbols, none internal"
exit $status
