#!/usr/bin/env bash
# Installs the built tenax into a scratch prefix, builds the README's example against it with
# find_package(tenax), checks it is the code the README shows, and runs it on 2 ranks.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sed -n '/quickstart:begin/,/quickstart:end/p' "$src/README.md" | sed '1,2d;$d' | sed '$d' > "$tmp/readme.cc"
diff -u "$src/examples/quickstart/train.cc" "$tmp/readme.cc" || { echo "README example differs from examples/quickstart/train.cc"; exit 1; }
cmake --install "$build" --prefix "$tmp/prefix" > /dev/null
launcher=()
command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$src/examples/quickstart" -B "$tmp/build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" > /dev/null
cmake --build "$tmp/build" > /dev/null
"$tmp/prefix/bin/tenaxrun" --nproc-per-node 2 "$tmp/build/train" | tee "$tmp/out"
first=$(grep -m1 -o 'step 0 loss [0-9.e+-]*' "$tmp/out" | awk '{print $4}')
last=$(grep -o 'step 40 loss [0-9.e+-]*' "$tmp/out" | awk '{print $4}')
awk -v a="$first" -v b="$last" 'BEGIN { if (!(b < a / 10)) { print "loss did not fall: " a " -> " b; exit 1 } }'
echo "quickstart trained: loss $first -> $last"
