#!/usr/bin/env bash
# Rules the library's sources keep, checked on the tree. Usage: source_rules_test.sh <source dir>
# <rule>, the rule one of
#   env      the environment is read only at the edges (core settings and the store layer's
#            launch detection), and settings() only at the launch edge: config.cc and each
#            layer's environment.cc, which build options from it; the rest of a layer gets its
#            values through its options;
#   threads  no thread is detached: each has an owner that joins it (docs/ARCHITECTURE.md);
#   layers   each layer includes only the layers below it (docs/ARCHITECTURE.md), and only
#            their public headers (tenax/<layer>/…); core and store include no LibTorch.
set -uo pipefail
src=${1:?source dir}
rule=${2:?rule: env or threads}
cd "$src" || exit 2
status=0

if [ "$rule" = threads ]; then
  # A statement that only detaches (a tensor's detach() is always part of an expression).
  hits=$(grep -rnE --include='*.cc' --include='*.h' '^\s*[A-Za-z_][A-Za-z0-9_.>()-]*\.detach\(\);' \
         src tools examples)
  if [ -n "$hits" ]; then
    echo "a detached thread (give it an owner that joins it):"
    echo "$hits"
    exit 1
  fi
  echo "no thread is detached"
  exit 0
fi
if [ "$rule" = layers ]; then
  # What each layer may include besides itself.
  declare -A below=(
    [core]=""
    [store]="core"
    [comm]="core store"
    [parallel]="core store comm"
    [observe]="core store comm"
    [checkpoint]="core store comm parallel"
    [health]="core store comm parallel checkpoint"
    [elastic]="core store comm parallel checkpoint health"
  )
  for layer in "${!below[@]}"; do
    allowed="$layer ${below[$layer]}"
    for dir in "src/$layer" "include/tenax/$layer"; do
      [ -d "$dir" ] || continue
      while IFS= read -r hit; do
        inc=$(sed -E 's/.*#include "([^"]*)".*/\1/' <<< "$hit")
        if [[ $inc == tenax/*/* ]]; then
          other=$(cut -d/ -f2 <<< "$inc")
          if ! grep -qw "$other" <<< "$allowed"; then
            echo "$layer includes the $other layer, which is not below it: $hit"; status=1
          fi
        elif [[ $inc == */* ]]; then
          other=${inc%%/*}
          if [ "$other" != "$layer" ]; then
            echo "$layer includes a private header of $other (use its public tenax/$other/): $hit"
            status=1
          fi
        fi
      done < <(grep -rnE '^#include "' "$dir")
    done
  done
  for dir in src/core src/store include/tenax/core include/tenax/store; do
    hits=$(grep -rnE '^#include <(ATen|torch|c10)/' "$dir")
    if [ -n "$hits" ]; then echo "$dir includes LibTorch:"; echo "$hits"; status=1; fi
  done
  [ $status -eq 0 ] && echo "every layer includes only the public headers of the layers below it"
  exit $status
fi
[ "$rule" = env ] || { echo "unknown rule '$rule'"; exit 2; }

# getenv only where settings are read.
hits=$(grep -rn --include='*.cc' --include='*.h' 'getenv' src | grep -v '^src/core/config\.cc:')
if [ -n "$hits" ]; then
  echo "getenv outside src/core/config.cc (read settings once: settings() or launch_info()):"
  echo "$hits"
  status=1
fi

# The env_* helpers only in core settings and the launcher's bootstrap.
hits=$(grep -rnE --include='*.cc' --include='*.h' '\benv_(string|int|flag)\(' src |
       grep -vE '^src/(core/config|store/launch)\.cc:')
if [ -n "$hits" ]; then
  echo "environment read outside src/core/config.cc and src/store/launch.cc:"
  echo "$hits"
  status=1
fi

# settings() (and default_timeout(), which reads it) only where options are built.
hits=$(grep -rnE --include='*.cc' --include='*.h' '\b(settings|default_timeout)\(\)' src |
       grep -vE '^src/(core/config|[a-z]+/environment)\.cc:' | grep -vE '^[^:]+:[0-9]+:\s*//')
if [ -n "$hits" ]; then
  echo "settings() read outside the launch edge (src/core/config.cc, src/<layer>/environment.cc):"
  echo "  give the value to the layer through its options, built by a from_environment() there"
  echo "$hits"
  status=1
fi

[ $status -eq 0 ] && echo "source rules hold"
exit $status
