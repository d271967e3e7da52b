#!/bin/sh
# Installs what is needed, builds iotgw, and runs the demo lab: iotgwd with its built-in default
# protecting a legacy device in network namespaces. Run as root on Debian 12.
set -eu
cd "$(dirname "$0")/.."
sh packaging/install-deps.sh
cmake --preset default >/dev/null
cmake --build --preset default -j "$(nproc 2>/dev/null || echo 2)"
exec env IOTGW_DEMO_IN_NS=1 unshare -m --propagation private bash tests/demo/lab.sh build/default
