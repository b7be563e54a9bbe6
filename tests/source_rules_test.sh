#!/usr/bin/env bash
# Rules the library's sources keep, checked on the tree. Usage: source_rules_test.sh <source dir>
# <rule>, the rule one of
#   env      the environment is read only at the edges (core settings and comm's bootstrap);
#   threads  no thread is detached: each has an owner that joins it (docs/ARCHITECTURE.md).
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
       grep -vE '^src/(core/config|comm/bootstrap)\.cc:')
if [ -n "$hits" ]; then
  echo "environment read outside src/core/config.cc and src/comm/bootstrap.cc:"
  echo "$hits"
  status=1
fi

[ $status -eq 0 ] && echo "source rules hold"
exit $status
