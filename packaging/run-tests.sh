#!/bin/sh
# Installs what is needed, checks the formatting, builds every configuration and runs the whole
# test suite:
#   0. format     clang-format-19 --dry-run -Werror over every C++ source (.clang-format), and
#                 no source file over 800 lines
#   1. fuzz       clang-19, libFuzzer + ASan/UBSan: each parser fuzzed for 30 s
#   2. asan       clang-19, ASan + UBSan: unit and integration tests (not the chaos test,
#                 label chaos: a minute of faults under a stream, run in default)
#   3. nosystemd  g++ 12 without systemd (syslog events, no sd_notify), as on OpenWrt; the
#                 attack suite (label attack) runs in asan and default, not again here, and the
#                 chaos test in default only
#   4. default    g++ 12, RelWithDebInfo: the configuration that ships
# Run as root on Debian 12 (integration tests use mount and network namespaces).
set -eu
cd "$(dirname "$0")/.."

start=$(date +%s)
sh packaging/install-deps.sh

echo "=== format: clang-format-19 --dry-run -Werror"
find daemon policy protocols firewall tests \( -name '*.cc' -o -name '*.h' \) -print0 |
  xargs -0 clang-format-19 --dry-run -Werror
long=$(find daemon policy protocols firewall tests \( -name '*.cc' -o -name '*.h' \) \
  -exec awk 'END { if (NR > 800) print FILENAME " (" NR " lines)" }' {} \;)
if [ -n "$long" ]; then
  echo "files over 800 lines (split them by what they do):"
  echo "$long"
  exit 1
fi

jobs=$(nproc 2>/dev/null || echo 2)
for preset in fuzz asan nosystemd default; do
  echo "=== $preset: configure and build"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$jobs"
  echo "=== $preset: test"
  ctest --preset "$preset" -j "$jobs"
done

echo "=== all configurations passed in $(( $(date +%s) - start )) s"
