#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Firewall benchmarks, each in a fresh network namespace (unshare -n), as root:

  * loading 10,000 devices: iotgwd's one libnftnl batch (compile included) vs `nft -f` of the
    identical ruleset (the same Ruleset written in nft's language; `nft list ruleset` shows the
    same thing either way);
  * adding and removing one device with 100, 1,000 and 10,000 enrolled (element batches);
  * the forwarded packet rate through a gateway namespace (device -> gw -> wan, UDP, 64-byte
    frames, one flow the device's policy allows) with no ruleset, with a conntrack-only ruleset
    (what any stateful router pays), and with iotgwd's table holding 1 and 10,000 devices, and
    10,000 devices none of which is intercepted (the table then has no nat chain), and 10,000
    devices with table bridge iotgw as well (every device bound to the port the sender is on).
    The device side is a bridge with the sender's veth as its port, as on a home gateway.
    The sender (udp_blast, sendmmsg) is pinned to one core; veth pairs process each packet on
    the sending core, so the rate is the whole path's; configurations alternate, median taken.

usage: firewall_bench.py BUILD_DIR [--quick] [--forward-only]
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
BLAST = os.path.join(build, "tests", "udp_blast")
ROUNDS = 3 if quick else 7
DEVICES = 10_000


def in_fresh_netns(script):
    r = subprocess.run(["unshare", "-n", "bash", "-c", script], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    return r.stdout


CONNTRACK_ONLY = """table inet baseline {
	chain forward {
		type filter hook forward priority 0; policy accept;
		ct state established,related accept
	}
}
"""


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def forward_rates(tmp):
    """Median forwarded packets/s per configuration."""
    tag = f"fb{os.getpid()}"
    dev, gw, wan = f"{tag}dev", f"{tag}gw", f"{tag}wan"
    seconds = 1 if quick else 2
    rounds = 3 if quick else 7
    baseline = os.path.join(tmp, "conntrack-only.nft")
    with open(baseline, "w") as f:
        f.write(CONNTRACK_ONLY)
    try:
        for ns in (dev, gw, wan):
            sh("ip", "netns", "add", ns)
        # dev-00000 of nft_load's ruleset: 10.0.0.1, 02:00:00:00:00:01, allowed 192.0.2.10:9000/udp.
        # The device segment is a bridge, as on a home gateway: d0 is plugged into its port p0.
        sh("ip", "-n", gw, "link", "add", "br-iot", "type", "bridge")
        sh("ip", "link", "add", "d0", "netns", dev, "type", "veth", "peer", "name", "p0", "netns", gw)
        sh("ip", "-n", gw, "link", "set", "p0", "master", "br-iot")
        sh("ip", "link", "add", "w0", "netns", wan, "type", "veth", "peer", "name", "wan", "netns", gw)
        sh("ip", "-n", dev, "link", "set", "d0", "address", "02:00:00:00:00:01")
        sh("ip", "-n", dev, "addr", "add", "10.0.0.1/8", "dev", "d0")
        sh("ip", "-n", gw, "addr", "add", "10.255.255.254/8", "dev", "br-iot")
        sh("ip", "-n", gw, "addr", "add", "192.0.2.1/24", "dev", "wan")
        for ns, ifs in ((dev, ("lo", "d0")), (gw, ("lo", "p0", "br-iot", "wan")), (wan, ("lo", "w0"))):
            for i in ifs:
                sh("ip", "-n", ns, "link", "set", i, "up")
        sh("ip", "-n", dev, "route", "add", "default", "via", "10.255.255.254")
        sh("ip", "netns", "exec", gw, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        # The wan side has no address: it counts what arrives and drops it quietly (no ICMP back).
        mac = sh("ip", "-n", wan, "-br", "link", "show", "w0").split()[2]
        sh("ip", "-n", gw, "neigh", "add", "192.0.2.10", "lladdr", mac, "dev", "wan", "nud", "permanent")

        def load(config):
            sh("ip", "netns", "exec", gw, "nft", "flush", "ruleset")
            if config == "conntrack only":
                sh("ip", "netns", "exec", gw, "nft", "-f", baseline)
            elif config.startswith("iotgw"):
                flags = ["--no-intercept"] if "no interception" in config else []
                flags += ["--bridge"] if "bridge table" in config else []
                sh("ip", "netns", "exec", gw, LOAD, "replace", config.split()[1].replace(",", ""), "1", *flags)

        def rate():
            counter = "/sys/class/net/wan/statistics/tx_packets"
            before = int(sh("ip", "netns", "exec", gw, "cat", counter))
            sh("ip", "netns", "exec", dev, "taskset", "-c", str(os.cpu_count() - 1), BLAST, "192.0.2.10", "9000", str(seconds))
            return (int(sh("ip", "netns", "exec", gw, "cat", counter)) - before) / seconds

        configs = ["no ruleset", "conntrack only", "iotgw 1 device", "iotgw 10,000 devices",
                   "iotgw 10,000 devices, no interception", "iotgw 10,000 devices and the bridge table"]
        rates = {c: [] for c in configs}
        for _ in range(rounds):
            for c in configs:
                load(c)
                rates[c].append(rate())
        return {c: statistics.median(v) for c, v in rates.items()}
    finally:
        for ns in (dev, gw, wan):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main():
    if os.geteuid() != 0:
        print("needs root (network namespaces, nftables)", file=sys.stderr)
        sys.exit(2)
    print(f"Firewall benchmarks ({'quick' if quick else 'full'}), {os.cpu_count()} cores, fresh network namespaces")
    with tempfile.TemporaryDirectory(prefix="iotgw-fwbench-") as d:
        script = os.path.join(d, "ruleset.nft")
        with open(script, "w") as f:
            subprocess.run([LOAD, "script", str(DEVICES)], stdout=f, check=True)
        if "--forward-only" not in sys.argv:
            load_and_churn(script)
        report_forwarding(forward_rates(d))


def load_and_churn(script):
    nft_times = []
    for _ in range(ROUNDS):
        out = in_fresh_netns(f"s=$(date +%s%N); nft -f {script}; e=$(date +%s%N); echo $(( (e - s) / 1000 ))")
        nft_times.append(int(out.strip()) / 1000)
    ours = in_fresh_netns(f"{LOAD} replace {DEVICES} {ROUNDS}")
    fields = dict(kv.split("=") for kv in ours.split())
    ours_ms = float(fields["median_ms"])
    nft_ms = statistics.median(nft_times)
    print(f"load {DEVICES} devices: libnftnl batch {ours_ms:.1f} ms ({fields['messages']} messages, "
          f"{int(fields['bytes']) // 1024} KiB)  nft -f {nft_ms:.1f} ms  ratio {ours_ms / nft_ms:.2f}  (target <= 0.7)")
    for n in (100, 1000, 10_000):
        out = in_fresh_netns(f"{LOAD} churn {n} {20 if quick else 100}")
        f = dict(kv.split("=") for kv in out.split())
        print(f"one device with {n:>6} enrolled: add {float(f['add_median_ms']) * 1000:.0f} us, "
              f"remove {float(f['remove_median_ms']) * 1000:.0f} us")


def report_forwarding(rates):
    empty = rates["no ruleset"]
    for c, r in rates.items():
        print(f"forwarded, {c:<38} {r:>9,.0f} packets/s  ratio to no ruleset {r / empty:.2f}"
              + ("  (target >= 0.85)" if c == "iotgw 10,000 devices" else ""))
    full = rates["iotgw 10,000 devices"]
    print(f"forwarded, 10,000 devices vs 1 device: {full / rates['iotgw 1 device']:.2f}; "
          f"vs conntrack only: {full / rates['conntrack only']:.2f}; without interception (no NAT) vs "
          f"conntrack only: {rates['iotgw 10,000 devices, no interception'] / rates['conntrack only']:.2f}")
    both = rates["iotgw 10,000 devices and the bridge table"]
    print(f"forwarded, 10,000 devices, both tables vs the inet table alone: {both / full:.2f}; "
          f"vs conntrack only: {both / rates['conntrack only']:.2f}")


if __name__ == "__main__":
    main()
