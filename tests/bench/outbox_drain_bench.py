#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Store-and-forward through iotgwd, against mosquitto on the same machine in the same run:

* store: the broker stopped, one device publishes N QoS 1 messages (20 in flight) and iotgwd
  acknowledges each once it is in the outbox on disk — against the same publisher straight to
  mosquitto, which acknowledges from memory;
* drain: the broker started again, the N stored messages delivered by the device's store session
  (64 in flight), timed at a subscriber from the first message to the last — against one client
  publishing N with 64 in flight straight to mosquitto, timed the same way;
* QoS 2 with the broker up (it always passes through the outbox) against QoS 2 straight to
  mosquitto, 20 in flight;
* fdatasync calls per stored message (iotgwd under strace, a separate run).

usage: outbox_drain_bench.py BUILD_DIR [--quick]
"""
import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

build = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build/default")
quick = "--quick" in sys.argv
IOTGWD = os.environ["IOTGWD"] = os.path.join(build, "daemon", "iotgwd")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
from mqttlab import Broker, Pki, free_port, gateway_config, wait_port  # noqa: E402
from iotgw_testlib import hash_password  # noqa: E402

LOAD = os.path.join(build, "tests", "mqtt_load")
N = 20000 if quick else 100000


def load(*args, timeout=600):
    r = subprocess.run([LOAD, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"mqtt_load {args[0]} failed: {r.stderr}")
    return {k: float(v) for k, v in (kv.split("=") for kv in r.stdout.split())}


root = tempfile.mkdtemp(prefix="iotgw-bench-")
broker = gw = None
try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    port = free_port()
    os.makedirs(os.path.join(root, "devices.d"))
    with open(os.path.join(root, "devices.d", "bench.toml"), "w") as f:
        f.write(f'[device]\nid = "bench"\n[device.mqtt]\nusername = "bench"\n'
                f'password_hash = "{hash_password("pw")}"\n[mqtt]\npublish = ["bench/#"]\nmax_qos = 2\n')
    conf = os.path.join(root, "iotgw.toml")
    with open(conf, "w") as f:
        f.write(gateway_config(root, broker, pki, port=port, extra=f"""
[store]
max_messages_per_device = {2 * N}
max_bytes_per_device = {64 * 1024 * 1024}
max_bytes = {128 * 1024 * 1024}
[events]
target = "stderr"
"""))

    def start_gateway(prefix=()):
        p = subprocess.Popen([*prefix, IOTGWD, "--config", conf], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        if not wait_port(port):
            raise RuntimeError("iotgwd did not start")
        time.sleep(0.5)
        return p

    app = f"tls:{pki.ca}:{pki.app[0]}:{pki.app[1]}"
    via_gateway = f"127.0.0.1:{port},user:bench:pw,id:bench"
    direct = f"127.0.0.1:{broker.port},{app},id:bench-direct"
    sub = f"127.0.0.1:{broker.port},{app},id:bench-drain"
    gw = start_gateway()
    print(f"outbox (store-and-forward), {N} messages of 64 B, 2 cores:", flush=True)

    # The peers first, with iotgwd idle.
    d_pub = load("publish", direct, "--count", str(N), "--qos", "1", "--inflight", "20")
    d_drain = load("throughput", direct, sub, "--count", str(N), "--qos", "1", "--inflight", "64")
    d_q2 = load("throughput", direct, sub, "--count", str(N // 5), "--qos", "2", "--inflight", "20")
    g_q2 = load("throughput", via_gateway, sub, "--count", str(N // 5), "--qos", "2", "--inflight", "20",
                "--topic", "bench/q2")

    broker.stop()
    time.sleep(1)  # the upstream sessions see the broker gone
    g_store = load("publish", via_gateway, "--count", str(N), "--qos", "1", "--inflight", "20",
                   "--topic", "bench/s")
    queue = glob.glob(os.path.join(root, "state", "outbox", "*.queue"))
    queue_bytes = sum(os.path.getsize(q) for q in queue)
    broker.start()
    wait_port(broker.port)
    drainer = subprocess.Popen([LOAD, "drain", sub, "--count", str(N), "--topic", "bench/s", "--wait", "300"],
                               stdout=subprocess.PIPE, text=True)
    drainer.stdout.readline()  # subscribed; the store session comes back at its own backoff
    out, _ = drainer.communicate(timeout=400)
    g_drain = {k: float(v) for k, v in (kv.split("=") for kv in out.split())}
    gw.terminate()
    gw.wait(timeout=10)

    print(f"  store, QoS 1, 20 in flight: iotgwd (broker down, acknowledged once on disk) "
          f"{g_store['rate']:.0f}/s ({int(g_store['acknowledged'])} acknowledged) vs mosquitto direct "
          f"{d_pub['rate']:.0f}/s: ratio {g_store['rate'] / d_pub['rate']:.2f}")
    print(f"  outbox on disk after storing: {queue_bytes} bytes ({queue_bytes / N:.1f} per message)")
    print(f"  drain, QoS 1, 64 in flight: iotgwd's store session {g_drain['rate']:.0f}/s "
          f"({int(g_drain['received'])} received in {g_drain['seconds']:.2f} s) vs one client direct "
          f"{d_drain['rate']:.0f}/s: ratio {g_drain['rate'] / d_drain['rate']:.2f}")
    print(f"  QoS 2 through the outbox, 20 in flight, broker up: {g_q2['rate']:.0f}/s vs direct "
          f"{d_q2['rate']:.0f}/s: ratio {g_q2['rate'] / d_q2['rate']:.2f}")
    # fdatasync per stored message: a separate iotgwd under strace (each traced call costs a
    # stop, so no rate is taken from this run).
    shutil.rmtree(os.path.join(root, "state", "outbox"), ignore_errors=True)
    trace = os.path.join(root, "strace")
    broker.stop()
    gw = start_gateway(("strace", "-f", "--seccomp-bpf", "-c", "-e", "trace=fdatasync,fsync", "-o", trace))
    m = N // 5
    s_store = load("publish", via_gateway, "--count", str(m), "--qos", "1", "--inflight", "20", "--topic", "bench/s")
    with open(f"/proc/{gw.pid}/task/{gw.pid}/children") as f:
        os.kill(int(f.read().split()[0]), signal.SIGTERM)  # iotgwd; strace writes its summary after
    gw.wait(timeout=20)
    syncs = 0
    with open(trace) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and fields[-1] in ("fdatasync", "fsync"):
                syncs += int(fields[3])
    gw = None

    print(f"  fdatasync: {syncs} for {int(s_store['acknowledged'])} stored messages "
          f"({syncs / max(1, s_store['acknowledged']):.3f} per message; group commit per turn of the loop)")
finally:
    if gw and gw.poll() is None:
        gw.terminate()
        gw.wait(timeout=10)
    if broker:
        broker.stop()
    shutil.rmtree(root, ignore_errors=True)
