#!/bin/sh
# SPDX-License-Identifier: GPL-3.0-or-later
# The OpenWrt package, checked as far as a machine without an OpenWrt SDK can (Debian's archive
# has none): its Makefile's metadata and recipes in a stand-in build tree (openwrt-stub/, which
# errors like the real package.mk on missing fields and demands sha256 hashes), its install step
# run for real into a scratch root, the procd init script with `shellcheck -s sh` and
# `checkbashisms`, and the UCI -> TOML bridge under busybox's awk (OpenWrt's) and mawk, its output
# judged by the real iotgwd --check-config, its refusals of bad input by their messages.
#
# usage: openwrt_package_test.sh SOURCE_DIR IOTGWD
set -eu

src=$1
iotgwd=$2
pkg=$src/packaging/openwrt
stub=$src/tests/integration/openwrt-stub
work=$(mktemp -d /tmp/iotgw-openwrt.XXXXXX)
trap 'rm -rf "$work"' EXIT
failures=0
ok() { echo "  [ok  ] $1"; }
fail() { echo "  [FAIL] $1"; failures=$((failures + 1)); }
expect() { # expect WHAT COMMAND...: the command succeeds
	what=$1
	shift
	if "$@" >"$work/out" 2>&1; then ok "$what"; else fail "$what"; sed 's/^/         /' "$work/out"; fi
}
lint() { make -s -C "$pkg" -f Makefile TOPDIR="$stub" STUB_WORK="$work" "$@"; }

# Metadata: what the package needs on the target, and nothing of systemd or D-Bus.
lint lint-metadata >"$work/meta"
sed 's/^/    /' "$work/meta"
for dep in +libstdcpp +libwolfssl +libopenssl +libnftnl +libmnl +libfmt +kmod-nft-core; do
	expect "depends on $dep" grep -q "^depends:.* $dep\\( \\|\$\\)" "$work/meta"
done
if grep -Eq '^depends:.*(systemd|sdbus|dbus)' "$work/meta"; then fail "no systemd or D-Bus dependency"; else ok "no systemd or D-Bus dependency"; fi
expect "license GPL-3.0-or-later" grep -qx 'license: GPL-3.0-or-later' "$work/meta"
expect "runs as its own user iotgw" grep -q '^userid: iotgw=[0-9]*:iotgw=[0-9]*$' "$work/meta"
expect "/etc/config/iotgw and /etc/iotgw/ are conffiles" grep -qx 'conffiles: /etc/config/iotgw /etc/iotgw/' "$work/meta"
expect "built without systemd and D-Bus" grep -q -- '-DIOTGW_WITH_SYSTEMD=OFF -DIOTGW_WITH_DBUS=OFF' "$work/meta"

# The configure recipe builds libcoap with OpenSSL DTLS (the feed's has none), then iotgw.
make -n -s -C "$pkg" -f Makefile TOPDIR="$stub" STUB_WORK="$work" lint-configure >"$work/configure"
expect "libcoap is configured with DTLS over OpenSSL" grep -q -- '--enable-dtls --with-openssl' "$work/configure"
expect "then iotgw with cmake" grep -q '^cmake .*-DIOTGW_WITH_DBUS=OFF' "$work/configure"
# The sources it downloads are the ones the test suite builds against here (Debian 12's).
expect "toml++ is Debian 12's version" sh -c "grep -q 'tomlplusplus_$(dpkg-query -W -f='${Version}' libtomlplusplus-dev | sed 's/-[^-]*$//')\\.orig' '$work/meta'"
expect "libcoap is Debian 12's version" sh -c "grep -q 'libcoap3_$(dpkg-query -W -f='${Version}' libcoap3-dev | sed 's/-[^-]*$//')\\.orig' '$work/meta'"

# The install step, run for real with this machine's iotgwd standing in for the cross-built one.
mkdir -p "$work/build/iotgw-0.1.0/daemon"
cp "$iotgwd" "$work/build/iotgw-0.1.0/daemon/iotgwd"
expect "the install recipe runs" lint lint-install
root=$work/root
for f in usr/sbin/iotgwd etc/init.d/iotgw usr/libexec/iotgw-uci2toml; do
	expect "/$f is installed executable" test -x "$root/$f"
done
expect "/etc/config/iotgw is installed" test -f "$root/etc/config/iotgw"
expect "/etc/iotgw/devices.d exists" test -d "$root/etc/iotgw/devices.d"
expect "procd's capabilities: exactly CAP_NET_ADMIN and CAP_NET_BIND_SERVICE in every set" \
	/usr/bin/python3 -c '
import json, sys
caps = json.load(open(sys.argv[1]))
want = ["CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"]
assert set(caps) == {"bounding", "effective", "ambient", "permitted", "inheritable"}, caps
assert all(sorted(v) == want for v in caps.values()), caps' "$root/etc/capabilities/iotgw.json"

# The procd init script: POSIX sh as busybox's ash runs it.
expect "shellcheck -s sh passes on the init script" shellcheck -s sh "$pkg/files/iotgw.init"
expect "checkbashisms passes on the init script" checkbashisms "$pkg/files/iotgw.init"
expect "the init script respawns iotgwd" grep -q 'procd_set_param respawn' "$pkg/files/iotgw.init"
expect "reload is SIGHUP" grep -q "procd_send_signal iotgw '\\*' HUP" "$pkg/files/iotgw.init"
expect "it runs as iotgw, not root" grep -q 'procd_set_param user iotgw' "$pkg/files/iotgw.init"

# The UCI bridge, with each awk an OpenWrt or Debian system has.
touch "$work/ca.crt" "$work/gw.crt" "$work/gw.key"
cat >"$work/full.uci" <<UCI
package iotgw

config iotgw 'main'
	option enabled '1'
	option state_directory '$work/state'
	list interface 'br-iot'
	list interface 'br-cam'
	list subnet '192.168.50.0/24'
	list subnet 'fd00:50::/64'
	option firewall '0'

config listener 'mqtt'
	option enabled '1'
	list address '192.168.50.1'
	option port '1884'

config listener 'coap'
	option enabled '0'

config upstream 'upstream'
	option enabled '1'
	option host 'broker.example'
	option port '8884'
	option ca_file '$work/ca.crt'
	option certificate '$work/gw.crt'
	option private_key '$work/gw.key'
UCI
printf "config iotgw 'main'\n\toption state_directory '/x\"y'\n" >"$work/quote.uci"
printf "config iotgw 'main'\n\toption state_directory '/x\"]\n[evil]'\n" >"$work/inject.uci"
printf "config iotgw 'main'\n\toption firewall '0'\nconfig listener 'mqtt'\n\toption enabled '1'\n\toption port '18x3'\n" >"$work/port.uci"
printf "config iotgw 'main'\n\toption state_directory /a b\n" >"$work/words.uci"
for awk in "busybox awk" mawk; do
	if ! command -v "${awk%% *}" >/dev/null; then fail "$awk is installed"; continue; fi
	b="$awk -f $pkg/files/iotgw-uci2toml"
	$b "$pkg/files/iotgw.config" >"$work/default.toml"
	expect "$awk: the default UCI file makes a configuration iotgwd accepts" "$iotgwd" --check-config --config "$work/default.toml"
	expect "$awk: it has the segment and syslog events" grep -qx 'interfaces = \["br-iot"\]' "$work/default.toml"
	$b <"$work/full.uci" >"$work/full.toml"
	expect "$awk: a full UCI export makes a configuration iotgwd accepts" "$iotgwd" --check-config --config "$work/full.toml"
	expect "$awk: lists become TOML arrays" grep -qx 'subnets = \["192.168.50.0/24", "fd00:50::/64"\]' "$work/full.toml"
	expect "$awk: the listener and upstream are there" sh -c "grep -qx 'port = 1884' '$work/full.toml' && grep -qx 'host = \"broker.example\"' '$work/full.toml' && grep -qx 'enabled = false' '$work/full.toml'"
	if $b "$work/quote.uci" >/dev/null 2>"$work/err"; then fail "$awk: a value with a quote is refused"; else
		expect "$awk: a value with a quote is refused at its line" grep -qx 'iotgw-uci2toml: line 2: a value with a quote, backslash or control character' "$work/err"
	fi
	if $b "$work/inject.uci" >/dev/null 2>"$work/err"; then fail "$awk: a value across lines (a TOML injection) is refused"; else
		expect "$awk: a value across lines (a TOML injection) is refused" grep -qx 'iotgw-uci2toml: line 2: a value must be one word or quoted once' "$work/err"
	fi
	if $b "$work/port.uci" >/dev/null 2>"$work/err"; then fail "$awk: a bad port is refused"; else
		expect "$awk: a bad port is refused" grep -q 'mqtt.port must be a number, not "18x3"' "$work/err"
	fi
	if $b "$work/words.uci" >/dev/null 2>"$work/err"; then fail "$awk: two bare words are refused"; else
		expect "$awk: two bare words are refused" grep -q 'line 2: a value must be one word or quoted once' "$work/err"
	fi
done

if [ "$failures" -ne 0 ]; then
	echo "$failures expectation(s) failed"
	exit 1
fi
echo "all expectations met"
