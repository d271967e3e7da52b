#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""CoAP proxy benchmark: the same client (tests/tools/coap_load.cc, sequential confirmable GETs
on one session) (a) straight to coap-server-notls over plain CoAP, and (b) through iotgwd's DTLS
endpoint (mutual certificates), which validates each request, checks the device's policy and
forwards it as plain CoAP to the same server. Prints requests/s, CPU per request and ratios.
The two runs alternate for ROUNDS rounds (a virtual machine's speed drifts by tens of percent
over a minute), and the ratios printed last are the medians of the rounds' ratios.

usage: coap_bench.py BUILD_DIR [SECONDS] [ROUNDS]
"""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from mqttlab import Pki  # noqa: E402

build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/default")
SECONDS = float(sys.argv[2]) if len(sys.argv) > 2 else 10.0
ROUNDS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
IOTGWD = os.path.join(build, "daemon", "iotgwd")
LOAD = os.path.join(build, "tests", "coap_load")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_udp_port(address):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def load(*args):
    r = subprocess.run([LOAD, *args], capture_output=True, text=True, timeout=SECONDS + 60)
    if r.returncode != 0:
        raise RuntimeError(f"coap_load failed: {r.stderr}")
    return {k: float(v) for k, v in (kv.split("=") for kv in r.stdout.split())}


def main():
    root = tempfile.mkdtemp(prefix="iotgw-coap-bench-")
    pki = Pki(os.path.join(root, "pki"))
    gw = pki.leaf("gw-dtls", "gateway.local", san="DNS:gateway.local,IP:127.0.0.1", server=True)
    app = pki.leaf("app-dtls", "app.hub.local", san="DNS:app.hub.local")
    dev_port, dtls = free_udp_port("127.0.0.2"), free_udp_port("127.0.0.1")
    server = subprocess.Popen(["coap-server-notls", "-A", "127.0.0.2", "-p", str(dev_port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    devices = os.path.join(root, "devices.d")
    os.makedirs(devices)
    os.makedirs(os.path.join(root, "state"))
    with open(os.path.join(devices, "legacy-sensor.toml"), "w") as f:
        f.write(f"""[device]
id = "legacy-sensor"
mac = "02:00:00:00:00:20"
addresses = ["127.0.0.2"]
[coap]
port = {dev_port}
[[coap.rule]]
methods = ["GET"]
path = "/time"
""")
    conf = os.path.join(root, "iotgw.toml")
    with open(conf, "w") as f:
        f.write(f"""[daemon]
state_directory = "{root}/state"
devices_directory = "{devices}"
[device_segment]
subnets = ["127.0.0.0/8"]
[firewall]
enabled = false
[dbus]
enabled = false
[events]
target = "stderr"
[listeners.coap_dtls]
addresses = ["127.0.0.1"]
port = {dtls}
certificate = "{gw[0]}"
private_key = "{gw[1]}"
ca_file = "{pki.ca}"
[upstream]
enabled = false
""")
    gwd = subprocess.Popen([IOTGWD, "--config", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)
        direct_url = f"coap://127.0.0.2:{dev_port}/time"
        proxied_url = f"coaps://127.0.0.1:{dtls}/legacy-sensor/time"
        load(direct_url, "1")  # warm-up
        load(proxied_url, "1", pki.ca, *app)
        rates, cpus = [], []
        for n in range(1, ROUNDS + 1):
            s0 = cpu_seconds(server.pid)
            direct = load(direct_url, str(SECONDS))
            origin_cpu = (cpu_seconds(server.pid) - s0) / max(direct["requests"], 1)

            g0 = cpu_seconds(gwd.pid)
            proxied = load(proxied_url, str(SECONDS), pki.ca, *app)
            gw_cpu = (cpu_seconds(gwd.pid) - g0) / max(proxied["requests"], 1)

            d_rate = direct["requests"] / direct["seconds"]
            p_rate = proxied["requests"] / proxied["seconds"]
            rates.append(p_rate / d_rate)
            cpus.append(gw_cpu / max(origin_cpu, 1e-9))
            print(f"round {n}: direct {d_rate:6.0f} req/s ({int(direct['failed'])} failed), "
                  f"proxied {p_rate:6.0f} req/s ({int(proxied['failed'])} failed) = {rates[-1]:.2f}; "
                  f"CPU/request iotgwd {gw_cpu * 1e6:.1f} us, origin {origin_cpu * 1e6:.1f} us "
                  f"= {cpus[-1]:.2f}")
        print(f"throughput ratio proxied/direct (median of {ROUNDS}): "
              f"{statistics.median(rates):.2f} (target >= 0.5)")
        print(f"CPU per request iotgwd/origin (median of {ROUNDS}): "
              f"{statistics.median(cpus):.2f} (target <= 2)")
    finally:
        gwd.terminate()
        gwd.wait(timeout=10)
        server.terminate()
        server.wait(timeout=10)
        subprocess.run(["rm", "-rf", root])


if __name__ == "__main__":
    main()
