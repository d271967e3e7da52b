#!/bin/sh
# Builds the Debian package from packaging/debian/ in a copy of the source tree (debian/ must sit
# at the top of it) and checks it with lintian: no error, and no warning without an override.
# usage: build-deb.sh OUTPUT_DIR        (the .deb, .buildinfo, .changes and lintian.txt go there)
set -eu
src=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir "$work/iotgw"
# What a source package holds: the tree without build directories and version control.
tar -C "$src" --exclude=./build --exclude=./.git --exclude='./obj-*' -cf - . | tar -C "$work/iotgw" -xf -
cp -r "$src/packaging/debian" "$work/iotgw/debian"
(cd "$work/iotgw" && DEB_BUILD_OPTIONS="parallel=$(nproc) nocheck" dpkg-buildpackage -us -uc -b)
cp "$work"/*.deb "$work"/*.buildinfo "$work"/*.changes "$out"/

# lintian: errors fail the build, and so does a warning that has no override with its reason.
lintian --info --display-info --pedantic "$out"/*.changes > "$out/lintian.txt" 2>&1 || true
cat "$out/lintian.txt"
if grep -E '^[EW]: ' "$out/lintian.txt"; then
  echo "build-deb: lintian reports the errors or warnings above" >&2
  exit 1
fi
echo "build-deb: $(cd "$out" && ls ./*.deb) built, lintian clean"
