#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The store-and-forward outbox's storage, by measurement: iotgwd's append-only log against
SQLite in WAL mode with synchronous=FULL (tests/tools/outbox_bench.cc), the same work for both —
N messages stored with one durable point per batch of B (group commit), then marked delivered in
batches of B — in a directory on the state directory's file system (/var/tmp, not a tmpfs: an
fsync there costs what it costs). Prints the figures and the ratios, log / SQLite.

usage: outbox_bench.py BUILD_DIR [--quick]
"""
import os
import shutil
import subprocess
import sys
import tempfile

build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/default")
quick = "--quick" in sys.argv
TOOL = os.path.join(build, "tests", "outbox_bench")
N = 2000 if quick else 20000

print(f"\nOutbox storage ({'quick' if quick else 'full'}), {N} messages of 64 B, /var/tmp")
print(f"{'batch':>5} {'engine':<11} {'in msg/s':>10} {'out msg/s':>10} {'durable points':>15} {'bytes/msg':>10}")
for batch in (1, 20, 200):
    root = tempfile.mkdtemp(prefix="iotgw-outbox-", dir="/var/tmp")
    try:
        r = subprocess.run([TOOL, root, str(N), str(batch), "64"], capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise SystemExit(f"outbox_bench failed: {r.stderr}")
        rows = {}
        for line in r.stdout.split("\n"):
            if line:
                kv = dict(f.split("=") for f in line.split())
                rows[kv["engine"]] = kv
                print(f"{batch:>5} {kv['engine']:<11} {float(kv['in_per_s']):>10.0f} {float(kv['out_per_s']):>10.0f}"
                      f" {kv['durable_points']:>15} {float(kv['bytes_per_message']):>10.0f}")
        log, sql = rows["log"], rows["sqlite-wal"]
        print(f"{batch:>5} {'log/sqlite':<11} {float(log['in_per_s']) / float(sql['in_per_s']):>10.2f}"
              f" {float(log['out_per_s']) / float(sql['out_per_s']):>10.2f} {'':>15}"
              f" {float(log['bytes_per_message']) / max(float(sql['bytes_per_message']), 1):>10.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
