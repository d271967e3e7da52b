#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Store-and-forward under chaos. In a private network namespace: iotgwd, four devices (paho,
3.1.1) publishing 2,500 QoS 1 messages each and one publishing 400 at QoS 2, a persistent
subscriber at the broker; the broker (mosquitto, mutual TLS, persistence on) in a second
namespace behind a veth pair — the gateway's uplink. While the stream runs, at random points
(the seed is printed): the broker is restarted, the uplink is cut (link down) and restored, and
iotgwd is killed with SIGKILL and started again. Then: every message acknowledged to a device
reached the subscriber at least once, in order per device; every QoS 2 message exactly once; the
counts are printed (acknowledged, received, duplicates).

Not yet registered in ctest (not named test_*): every acknowledged message arrives and QoS 2 is
exactly once in every run so far, but after a broker restart the order check fails — a run of
messages (for example 0-40 after 41-50) reaches the subscriber behind later ones; without faults
the order holds. Whether iotgwd or the broker's queue for the reconnecting subscriber reorders
them is being found out. Run by hand:
  IOTGWD=build/default/daemon/iotgwd python3 tests/integration/chaos_mqtt_store.py
with IOTGW_CHAOS_SEED=N to repeat a run, IOTGW_CHAOS_ONLY="broker restart" (or "uplink cut",
"iotgwd SIGKILL", "none") for one kind of fault, IOTGW_KEEP=1 to keep the directory."""
import os
import random
import signal
import subprocess
import sys
import threading
import time

import paho.mqtt.client as paho

from iotgw_testlib import (IOTGWD, NotifySocket, check, cleanup, finish, hash_password, remove_namespaces,
                           require_binary, tmpdir, wait_ready, write)
from mqttlab import Pki, free_port, gateway_config, wait_port

QOS1_DEVICES, QOS1_EACH, QOS2_EACH, RATE = 4, 2500, 400, 110  # messages a second per device
GW, BROKER = "10.77.0.1", "10.77.0.2"
PASSWORD = "s3cret"


class Device(threading.Thread):
    """Publishes `count` messages at `qos`, `RATE` a second, and records which were acknowledged."""

    def __init__(self, name, port, qos, count):
        super().__init__(daemon=True)
        self.name, self.qos, self.count = name, qos, count
        self.acked_mids, self.sent = set(), {}
        self.c = paho.Client(client_id=f"{name}-fw", clean_session=True)
        self.c.username_pw_set(name, PASSWORD)
        self.c.max_inflight_messages_set(10)
        self.c.reconnect_delay_set(0.2, 1)
        self.c.on_publish = self.on_publish
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()

    def on_publish(self, c, u, mid):
        # paho calls this holding its own lock, the one publish() takes: no lock of ours here.
        self.acked_mids.add(mid)

    def run(self):
        for i in range(self.count):
            payload = f"{self.name}-{i:05d}"
            info = self.c.publish(f"devices/{self.name}/r", payload, qos=self.qos)
            self.sent[info.mid] = payload
            time.sleep(1 / RATE)

    @property
    def acked(self):
        return {self.sent[m] for m in list(self.acked_mids) if m in self.sent}

    def wait_acked(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline and len(self.acked) < self.count:
            time.sleep(0.2)
        return len(self.acked)


class Subscriber:
    def __init__(self, pki, port):
        self.got, self.lock = [], threading.Lock()
        self.c = paho.Client(client_id="chaos-app", clean_session=False)
        self.c.tls_set(ca_certs=pki.ca, certfile=pki.app[0], keyfile=pki.app[1])
        self.c.reconnect_delay_set(0.2, 1)
        self.c.on_connect = lambda c, u, f, rc: rc == 0 and c.subscribe("devices/#", 2)
        self.c.on_message = self.on_message
        self.c.connect(BROKER, port, keepalive=10)
        self.c.loop_start()

    def on_message(self, c, u, m):
        with self.lock:
            self.got.append(m.payload.decode())

    def of(self, device):
        with self.lock:
            return [p for p in self.got if p.startswith(device + "-")]


def inside():
    ns = f"iotgw-chaos-wan-{os.getpid()}"
    root = tmpdir()
    broker = gw = sub = None
    devices = []
    try:
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "add", ns], check=True)
        for cmd in (["ip", "link", "add", "uplink", "type", "veth", "peer", "name", "wan0", "netns", ns],
                    ["ip", "addr", "add", f"{GW}/30", "dev", "uplink"], ["ip", "link", "set", "uplink", "up"],
                    ["ip", "-n", ns, "addr", "add", f"{BROKER}/30", "dev", "wan0"],
                    ["ip", "-n", ns, "link", "set", "wan0", "up"], ["ip", "-n", ns, "link", "set", "lo", "up"]):
            subprocess.run(cmd, check=True)
        pki = Pki(os.path.join(root, "pki"))
        cert, key = pki.leaf("wan-broker", "broker", san=f"IP:{BROKER}", server=True)
        bport = 8883
        os.makedirs(os.path.join(root, "mosquitto"))
        bconf = os.path.join(root, "mosquitto.conf")
        write(bconf, f"""per_listener_settings false
user root
allow_anonymous true
persistence true
persistence_location {root}/mosquitto/
autosave_interval 1
max_queued_messages 100000
log_dest stderr
log_type error
listener {bport} {BROKER}
cafile {pki.ca}
certfile {cert}
keyfile {key}
require_certificate true
""")
        blog = open(os.path.join(root, "mosquitto.log"), "a")

        def start_broker():
            p = subprocess.Popen(["ip", "netns", "exec", ns, "mosquitto", "-c", bconf], stdout=blog, stderr=blog)
            deadline = time.time() + 10
            while time.time() < deadline:
                if subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn", f"( sport = :{bport} )"],
                                  capture_output=True, text=True).stdout.strip():
                    return p
                time.sleep(0.05)
            raise RuntimeError("mosquitto did not start")

        broker = start_broker()
        port = free_port()

        class Upstream:
            pass
        up = Upstream()
        up.port = bport
        conf = os.path.join(root, "iotgw.toml")
        write(conf, gateway_config(root, up, pki, port=port, extra="""
[events]
target = "stderr"
[limits]
max_connections_per_source = 64
""").replace('host = "127.0.0.1"', f'host = "{BROKER}"').replace(
            "[upstream]\n", "[upstream]\nkeepalive_seconds = 5\n"))
        names = [f"meter-{k}" for k in range(QOS1_DEVICES)] + ["valve-0"]
        hashed = hash_password(PASSWORD)
        for name in names:
            write(os.path.join(root, "devices.d", f"{name}.toml"), f"""[device]
id = "{name}"
[device.mqtt]
username = "{name}"
password_hash = "{hashed}"
[mqtt]
publish = ["devices/%d/#"]
max_qos = 2
""")
        notify = NotifySocket(root)
        events = open(os.path.join(root, "events"), "w")

        def start_gateway():
            p = subprocess.Popen([IOTGWD, "--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path),
                                 stderr=events)
            check(wait_ready(notify, port), "iotgwd ready")
            return p

        gw = start_gateway()
        sub = Subscriber(pki, bport)
        time.sleep(1)
        devices = [Device(n, port, 2 if n.startswith("valve") else 1,
                          QOS2_EACH if n.startswith("valve") else QOS1_EACH) for n in names]
        time.sleep(1)
        for dv in devices:
            dv.start()

        seed = int(os.environ.get("IOTGW_CHAOS_SEED", time.time()))
        rnd = random.Random(seed)
        duration = QOS1_EACH / RATE
        print(f"chaos seed {seed}; the stream runs {duration:.0f} s")
        at = sorted(rnd.uniform(1, duration - 6) for _ in range(3))
        kinds = ["broker restart", "uplink cut", "iotgwd SIGKILL"]
        rnd.shuffle(kinds)
        if os.environ.get("IOTGW_CHAOS_ONLY"):  # one kind of fault, to look at it alone
            kinds = [k for k in kinds if k == os.environ["IOTGW_CHAOS_ONLY"]]
        t0 = time.monotonic()
        for when, kind in zip(at, kinds):
            time.sleep(max(0, t0 + when - time.monotonic()))
            print(f"  {time.monotonic() - t0:5.1f} s: {kind}")
            if kind == "broker restart":
                broker.terminate()
                broker.wait(timeout=10)
                time.sleep(rnd.uniform(1, 3))
                broker = start_broker()
            elif kind == "uplink cut":
                subprocess.run(["ip", "link", "set", "uplink", "down"], check=True)
                time.sleep(rnd.uniform(6, 10))
                subprocess.run(["ip", "link", "set", "uplink", "up"], check=True)
            else:
                gw.send_signal(signal.SIGKILL)
                gw.wait(timeout=10)
                gw = start_gateway()
        for dv in devices:
            dv.join(timeout=duration + 60)
        for dv in devices:
            n = dv.wait_acked(20)
            print(f"  {dv.name}: {n} of {dv.count} acknowledged")
        deadline = time.time() + 90
        while time.time() < deadline and not all(dv.acked <= set(sub.of(dv.name)) for dv in devices):
            time.sleep(0.5)
        total_acked = total_got = total_dups = 0
        for dv in devices:
            got = sub.of(dv.name)
            missing = dv.acked - set(got)
            total_acked += len(dv.acked)
            total_got += len(got)
            total_dups += len(got) - len(set(got))
            check(not missing, f"{dv.name}: every acknowledged message reached the subscriber "
                               f"({len(missing)} of {len(dv.acked)} missing{': ' + sorted(missing)[0] if missing else ''})")
            firsts = []
            seen = set()
            for p in got:
                if p not in seen:
                    seen.add(p)
                    firsts.append(p)
            inversion = next((f"{a} before {b}" for a, b in zip(firsts, firsts[1:]) if a > b), "")
            if inversion and os.environ.get("IOTGW_KEEP"):
                write(os.path.join(root, f"{dv.name}.received"), "\n".join(got) + "\n")
            check(not inversion, f"{dv.name}: in order{' (' + inversion + ')' if inversion else ''}")
            if dv.qos == 2:
                twice = sorted({p for p in got if got.count(p) > 1})
                check(not twice, f"{dv.name}: QoS 2 exactly once ({len(twice)} more than once{': ' + twice[0] if twice else ''})")
        print(f"  acknowledged {total_acked}, received {total_got}, duplicates {total_dups} (QoS 1 at least once)")
        check(gw.poll() is None, "iotgwd still runs")
    finally:
        for dv in devices:
            dv.c.loop_stop()
        if sub:
            sub.c.loop_stop()
        if gw and gw.poll() is None:
            gw.terminate()
            gw.wait(timeout=10)
        if broker and broker.poll() is None:
            broker.terminate()
            broker.wait(timeout=10)
        remove_namespaces([ns])
        if os.environ.get("IOTGW_KEEP"):
            print("kept", root)
        else:
            cleanup(root)


def main():
    require_binary()
    if os.environ.get("IOTGW_TEST_IN_NS") != "1":
        if os.geteuid() != 0:
            print("needs root (network namespaces)", file=sys.stderr)
            sys.exit(2)
        env = dict(os.environ, IOTGW_TEST_IN_NS="1")
        sys.exit(subprocess.call(["unshare", "-n", sys.executable] + sys.argv, env=env))
    inside()
    finish()


if __name__ == "__main__":
    main()
