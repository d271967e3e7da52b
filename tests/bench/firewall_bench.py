#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Firewall benchmarks, each in a fresh network namespace (unshare -n), as root:

  * loading 10,000 devices: iotgwd's one libnftnl batch (compile included) vs `nft -f` of the
    identical ruleset (the same Ruleset written in nft's language; `nft list ruleset` shows the
    same thing either way);
  * adding and removing one device with 100, 1,000 and 10,000 enrolled (element batches).

usage: firewall_bench.py BUILD_DIR [--quick]
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/default")
quick = "--quick" in sys.argv
LOAD = os.path.join(build, "tests", "nft_load")
ROUNDS = 3 if quick else 7
DEVICES = 10_000


def in_fresh_netns(script):
    r = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return r.stdout


def main():
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        sys.exit(2)
    with tempfile.TemporaryDirectory(prefix="iotgw-fwbench-") as d:
        script = os.path.join(d, "ruleset.nft")
        with open(script, "w") as f:
            subprocess.run([LOAD, "script", str(DEVICES)], stdout=f, check=True)
        nft_times = []
        for _ in range(ROUNDS):
            out = in_fresh_netns(f"s=$(date +%s%N); nft -f {script}; e=$(date +%s%N); echo $(( (e - s) / 1000 ))")
            nft_times.append(int(out.strip()) / 1000)
        ours = in_fresh_netns(f"{LOAD} replace {DEVICES} {ROUNDS}")
        fields = dict(kv.split("=") for kv in ours.split())
        ours_ms = float(fields["median_ms"])
        nft_ms = statistics.median(nft_times)
        print(f"\nFirewall benchmarks ({'quick' if quick else 'full'}), {os.cpu_count()} cores, fresh network namespaces")
        print(f"load {DEVICES} devices: libnftnl batch {ours_ms:.1f} ms ({fields['messages']} messages, "
              f"{int(fields['bytes']) // 1024} KiB)  nft -f {nft_ms:.1f} ms  ratio {ours_ms / nft_ms:.2f}  (target <= 0.7)")
        for n in (100, 1000, 10_000):
            out = in_fresh_netns(f"{LOAD} churn {n} {20 if quick else 100}")
            f = dict(kv.split("=") for kv in out.split())
            print(f"one device with {n:>6} enrolled: add {float(f['add_median_ms']) * 1000:.0f} us, "
                  f"remove {float(f['remove_median_ms']) * 1000:.0f} us")


if __name__ == "__main__":
    main()
