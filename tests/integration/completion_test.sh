#!/bin/bash
# iotgwctl's bash completion, as bash runs it: commands, the options each command takes, the
# ids of enrolled devices (from `iotgwctl devices`, here a stand-in printing two; test_dbus.py asks
# the real one over a private bus), and files for the policy document.
# usage: completion_test.sh COMPLETION_FILE
set -u
# shellcheck source=/dev/null
source "$1"
# shellcheck disable=SC2317 # called by the completion
iotgwctl() { # the stand-in for the real client: what `iotgwctl devices` prints
  [[ $1 == devices ]] && printf '%s\n' "thermo-01                        api" "cam-01    conf  quarantined"
}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
touch "$dir/plug-02.toml"
fail=0
expect() { # expect "WORDS..." "SUGGESTIONS"
  local line=$1 want=$2
  read -ra COMP_WORDS <<<"$line"
  [[ $line == *" " ]] && COMP_WORDS+=("")
  COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
  COMPREPLY=()
  _iotgwctl
  local got="${COMPREPLY[*]}"
  if [[ $got == "$want" ]]; then
    echo "ok   '$line' -> $got"
  else
    echo "FAIL '$line' -> '$got', want '$want'" >&2
    fail=1
  fi
}
expect "iotgwctl st" "status"
expect "iotgwctl re" "remove release reload"
expect "iotgwctl show th" "thermo-01"
expect "iotgwctl --json show " "thermo-01 cam-01"
expect "iotgwctl quarantine cam-01 --r" "--reason"
expect "iotgwctl quarantine --reason x " "thermo-01 cam-01"
expect "iotgwctl status --" "--json --help --version"
expect "iotgwctl watch --c" "--count"
expect "iotgwctl enroll new-01 $dir/pl" "$dir/plug-02.toml"
expect "iotgwctl status " ""
[[ $fail == 0 ]] && echo "PASS: iotgwctl's completion"
exit $fail
