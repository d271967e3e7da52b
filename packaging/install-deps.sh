#!/bin/sh
# Installs everything iotgw needs to build, run its demo lab and run its test suite on Debian 12.
# Shared by both README commands and by CI. Idempotent; run as root.
set -eu

export DEBIAN_FRONTEND=noninteractive

packages="
  g++ cmake pkgconf make ninja-build git
  clang-19 libclang-rt-19-dev clang-format-19
  libgtest-dev libgmock-dev googletest
  libtomlplusplus-dev libfmt-dev
  libwolfssl-dev
  libmosquitto-dev mosquitto mosquitto-clients python3-paho-mqtt
  libcoap3-dev libcoap3-bin
  libnftnl-dev libmnl-dev nftables
  libsdbus-c++-dev libsdbus-c++-bin dbus-daemon
  libsystemd-dev systemd
  libsqlite3-dev
  iproute2 socat ncat nmap openssl sslscan python3 python3-scapy procps util-linux mount coreutils
  groff-base
  debhelper dpkg-dev fakeroot lintian debootstrap systemd-container shellcheck devscripts busybox
"

missing=""
for p in $packages; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing="$missing $p"
  fi
done

if [ -n "$missing" ]; then
  echo "install-deps: installing:$missing"
  apt-get update -q
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing
else
  echo "install-deps: all packages present"
fi
