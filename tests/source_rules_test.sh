#!/usr/bin/env bash
# Rules the library's sources keep, checked on the tree: the environment is read only at the
# edges (core settings and comm's bootstrap). Usage: source_rules_test.sh <source dir>
set -uo pipefail
src=${1:?source dir}
cd "$src" || exit 2
status=0

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
