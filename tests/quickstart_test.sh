#!/usr/bin/env bash
# Installs the built tenax into a scratch prefix, builds one of the README's examples against it
# with find_package(tenax), checks it is the code the README shows, and runs it.
#   quickstart_test.sh BUILD SRC train           the data-parallel example on 2 ranks (tenaxrun)
#   quickstart_test.sh BUILD SRC elastic_train   the elastic one on 3 ranks under
#                                                mpirun --enable-recovery, rank 2 killed at step 40
set -euo pipefail
build=$1 src=$2 example=${3:-train}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
sed -n "/quickstart:$example:begin/,/quickstart:$example:end/p" "$src/README.md" | sed '1,2d;$d' |
  sed '$d' > "$tmp/readme.cc"
diff -u "$src/examples/quickstart/$example.cc" "$tmp/readme.cc" ||
  { echo "README example differs from examples/quickstart/$example.cc"; exit 1; }
cmake --install "$build" --prefix "$tmp/prefix" > /dev/null
launcher=()
command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$src/examples/quickstart" -B "$tmp/build" -G Ninja -DCMAKE_PREFIX_PATH="$tmp/prefix" \
  -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" > /dev/null
cmake --build "$tmp/build" --target "$example" > /dev/null
loss_fell() {  # first and last logged loss of rank 0's output
  local first last
  first=$(grep -m1 -o "step 0 loss [0-9.e+-]*" "$tmp/out" | awk '{print $4}')
  last=$(grep -o "step $1 loss [0-9.e+-]*" "$tmp/out" | tail -1 | awk '{print $4}')
  awk -v a="$first" -v b="$last" 'BEGIN { if (!(b < a / 10)) { print "loss did not fall: " a " -> " b; exit 1 } }'
  echo "$example trained: loss $first -> $last"
}
if [ "$example" = train ]; then
  "$tmp/prefix/bin/tenaxrun" --nproc-per-node 2 "$tmp/build/train" | tee "$tmp/out"
  loss_fell 40
  exit 0
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
status=0
timeout 300 mpirun --oversubscribe --bind-to none --enable-recovery -np 3 \
  -x TENAX_FAULT=kill@40:rank=2 "$tmp/build/elastic_train" > "$tmp/out" 2>&1 || status=$?
cat "$tmp/out"
[ "$status" -eq 0 ] || { echo "mpirun exited with $status"; exit 1; }
grep -q "fault injection: kill rank 2 at step 40" "$tmp/out" || { echo "rank 2 was not killed"; exit 1; }
grep -q "resuming after step 39" "$tmp/out" || { echo "the survivors did not resume after step 39"; exit 1; }
[ "$(grep -c '^finished after 1 re-formations' "$tmp/out")" -eq 2 ] ||
  { echo "the two survivors did not both finish after one re-formation"; exit 1; }
loss_fell 90
