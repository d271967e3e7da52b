#!/bin/sh
# Scores the service unit's hardening with systemd's own analyser and fails above a threshold.
# usage: unit_exposure.sh UNIT MAX  (MAX on systemd's 0-10 scale, e.g. 2.0)
set -eu
unit=$1
max=$2
out=$(systemd-analyze security --offline=yes "$unit" 2>&1)
line=$(printf '%s\n' "$out" | grep 'Overall exposure level')
score=$(printf '%s\n' "$line" | sed -E 's/.*: ([0-9]+\.[0-9]+) .*/\1/')
echo "$line"
# Compare as tenths to stay in integer arithmetic.
score10=$(printf '%s' "$score" | tr -d .)
max10=$(printf '%s' "$max" | tr -d .)
if [ "$score10" -gt "$max10" ]; then
  printf '%s\n' "$out" | grep -v '✓' >&2
  echo "FAIL: exposure $score is above $max" >&2
  exit 1
fi
echo "PASS: exposure $score <= $max"
