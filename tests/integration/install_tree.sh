#!/bin/sh
# What `cmake --install` puts where, as a packager or `sudo cmake --install build` would get it:
# every file where the system's own services look for it (systemd, dbus-daemon, journald,
# systemd-sysusers, man), the binaries where the unit runs them, the man pages the unit names,
# each rendering without a warning.
# usage: install_tree.sh BUILD_DIR
set -eu
build=$1
dest=$(mktemp -d)
trap 'rm -rf "$dest"' EXIT
DESTDIR=$dest cmake --install "$build" >/dev/null
prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$build/CMakeCache.txt")
fail=0
expect() {
  if [ -f "$dest$1" ]; then
    echo "ok   $1"
  else
    echo "FAIL $1 is missing (installed: $(cd "$dest" && find . -type f | tr '\n' ' '))" >&2
    fail=1
  fi
}
[ "$prefix" = /usr ] || { echo "FAIL the default prefix is $prefix, not /usr" >&2; exit 1; }
unit=/usr/lib/systemd/system/iotgwd.service
for f in /usr/sbin/iotgwd /usr/bin/iotgwctl $unit /usr/lib/systemd/catalog/iotgwd.catalog \
         /usr/share/dbus-1/system.d/org.iotgw.Gateway1.conf /usr/lib/sysusers.d/iotgw.conf \
         /usr/lib/tmpfiles.d/iotgw.conf /usr/share/doc/iotgw/examples/iotgw.toml.default \
         /usr/share/doc/iotgw/examples/devices.d/thermo-01.toml \
         /usr/share/doc/iotgw/examples/mosquitto/iotgw.conf \
         /usr/share/man/man8/iotgwd.8 /usr/share/man/man1/iotgwctl.1 \
         /usr/share/man/man5/iotgw.toml.5 /usr/share/man/man5/iotgw-device.5 \
         /usr/share/bash-completion/completions/iotgwctl; do
  expect "$f"
done
# Every page the unit documents itself with is installed, and renders without a warning.
for page in $(sed -n 's/^Documentation=//p' "$dest$unit" | tr ' ' '\n' | sed -n 's/^man:\(.*\)(\([0-9]\))$/\1.\2/p'); do
  expect "/usr/share/man/man${page##*.}/$page"
done
for page in "$dest"/usr/share/man/man*/*; do
  warnings=$(groff -man -ww -z "$page" 2>&1)
  if [ -n "$warnings" ]; then
    echo "FAIL ${page#"$dest"}: $warnings" >&2
    fail=1
  fi
done
# Every program the unit runs is where it was installed.
# shellcheck disable=SC2013 # one path per line, without spaces
for exe in $(sed -n 's/^Exec[A-Za-z]*=[-@+!]*\([^ ]*\).*/\1/p' "$dest$unit" | sort -u); do
  case $exe in
  /bin/kill) ;; # the system's
  *) expect "$exe" ;;
  esac
done
[ "$fail" -eq 0 ] && echo "PASS: the installed tree is where systemd, dbus-daemon and journald look"
exit "$fail"
