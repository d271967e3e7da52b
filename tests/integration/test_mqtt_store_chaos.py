#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Store-and-forward under chaos. In a private network namespace: iotgwd, four devices (MQTT
3.1.1 on raw sockets) publishing 2,500 QoS 1 messages each and one publishing 400 at QoS 2, a persistent
subscriber at the broker; the broker (mosquitto, mutual TLS, persistence on) in a second
namespace behind a veth pair — the gateway's uplink. While the stream runs, at random points
(the seed is printed): the broker is restarted, the uplink is cut (link down) and restored, and
iotgwd is killed with SIGKILL and started again. Then: every message acknowledged to a device
reached the subscriber at least once, in order per device; every QoS 2 message exactly once; the
counts are printed (acknowledged, received, duplicates).

The broker is told not to hold back messages for the subscriber (max_inflight_messages 0, see
there). The stream would be out of order without the devices' own discipline (see Device) and would
stall for the whole cut without iotgwd finding a silent link (mqtt::ClientSettings::
answerTimeout): both checked here. Run by hand to repeat or look at one fault:
  IOTGWD=build/default/daemon/iotgwd python3 tests/integration/test_mqtt_store_chaos.py
with IOTGW_CHAOS_SEED=N to repeat a run, IOTGW_CHAOS_ONLY="broker restart" (or "uplink cut",
"iotgwd SIGKILL", "none") for one kind of fault, IOTGW_KEEP=1 to keep the directory."""
import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time


from iotgw_testlib import (IOTGWD, NotifySocket, check, check_stopped_cleanly, cleanup, finish,
                           hash_password, in_private_namespaces, remove_namespaces, require_binary, tmpdir,
                           wait_ready, write)
from mqttlab import Pki, free_port, gateway_config, password_device
from mqttwire import DISCONNECT, PINGREQ, Client, connect, pubrel
from mqttwire import publish as wire_publish

QOS1_DEVICES, QOS1_EACH, QOS2_EACH = 4, 2500, 400
DURATION = 30.0  # seconds the stream runs: 83 messages a second per QoS 1 device
GW, BROKER = "10.77.0.1", "10.77.0.2"
PASSWORD = "s3cret"


class Device(threading.Thread):
    """A legacy device as MQTT 3.1.1 wants it (§4.6): publishes `count` messages at `qos` evenly over
    DURATION, at most `WINDOW` unacknowledged; when its connection to the gateway is lost it
    reconnects and sends what was unacknowledged again, in order and before anything new (PUBREL
    for a QoS 2 message that has its PUBREC). paho 1.6.1 does not: a publish() between a
    reconnect and paho's resend loop goes out ahead of the older messages (the device's own
    reordering, seen as "out of order" at the subscriber), so the devices here speak MQTT on a raw
    socket. A message counts as acknowledged at PUBACK, or PUBCOMP for QoS 2."""
    WINDOW = 10

    def __init__(self, name, port, qos, count):
        super().__init__(daemon=True)
        self.name, self.port, self.qos, self.count = name, port, qos, count
        self.acked = set()           # payloads
        self.unacked = {}            # packet id -> [index, released]; in send order (dict order)
        self.reconnects = 0
        self.stop = False
        self.last_ack, self.longest_wait = None, 0.0  # the longest time without an acknowledgement
        self.ack_times = []
        self.resent = set()  # PUBLISHed again after a lost connection (no PUBREC had come)

    def payload(self, i):
        return f"{self.name}-{i:05d}"

    def _connect(self):
        try:
            c = Client(self.port, timeout=5)
            code = c.connack(connect(f"{self.name}-fw", self.name, PASSWORD, keepalive=10))
        except OSError:
            return None
        if code != 0:
            c.close()
            return None
        c.sock.settimeout(0.005)
        for pid, (i, released) in self.unacked.items():  # §4.4: again, in order, first
            if not released:
                self.resent.add(self.payload(i))
            c.send(pubrel(pid) if released else
                   wire_publish(f"devices/{self.name}/r", self.payload(i), self.qos, pid, dup=True))
        return c

    def _read(self, c):
        while True:
            p = c.read_packet_nowait()
            if p is None:
                return True
            if p is False:
                return False
            header, body = p
            kind, pid = header >> 4, struct.unpack("!H", body[:2])[0] if len(body) >= 2 else 0
            entry = self.unacked.get(pid)
            if kind in (4, 5) and entry and not entry[1]:
                now = time.monotonic()
                if self.last_ack is not None:
                    self.longest_wait = max(self.longest_wait, now - self.last_ack)
                self.last_ack = now
                self.ack_times.append(now)
            if kind == 4 and entry:              # PUBACK
                self.acked.add(self.payload(entry[0]))
                del self.unacked[pid]
            elif kind == 5 and entry:            # PUBREC
                entry[1] = True
                c.send(pubrel(pid))
            elif kind == 7 and entry:            # PUBCOMP
                self.acked.add(self.payload(entry[0]))
                del self.unacked[pid]

    def run(self):
        start, i, c, last_sent = time.monotonic(), 0, None, 0.0
        while not self.stop and (i < self.count or self.unacked):
            if c is None:
                c = self._connect()
                if c is None:
                    time.sleep(0.2)
                    continue
                self.reconnects += 1
                last_sent = time.monotonic()
            try:
                now = time.monotonic()
                while i < self.count and len(self.unacked) < self.WINDOW and now >= start + i * DURATION / self.count:
                    pid = i % 65535 + 1
                    self.unacked[pid] = [i, False]
                    c.send(wire_publish(f"devices/{self.name}/r", self.payload(i), self.qos, pid))
                    i, last_sent = i + 1, now
                if now - last_sent > 5:
                    c.send(PINGREQ)
                    last_sent = now
                alive = self._read(c)
            except OSError:
                alive = False
            if not alive:
                c.close()
                c = None
        if c is not None:
            c.send(DISCONNECT)
            c.close()

    def wait_acked(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline and len(self.acked) < self.count:
            time.sleep(0.2)
        return len(self.acked)


SUBSCRIBER = """
import sys, time
import paho.mqtt.client as paho
host, port, ca, cert, key = sys.argv[1:6]
c = paho.Client(client_id="chaos-app", clean_session=False)
c.tls_set(ca_certs=ca, certfile=cert, keyfile=key)
c.reconnect_delay_set(0.2, 1)
c.on_connect = lambda c, u, f, rc: rc == 0 and c.subscribe("devices/#", 2)
c.on_message = lambda c, u, m: print(f"{time.monotonic():.3f} dup={int(m.dup)} qos={m.qos} mid={m.mid} "
                                     f"{m.payload.decode()}", flush=True)
c.on_subscribe = lambda *a: print("subscribed", flush=True)
c.connect(host, int(port), keepalive=10)
c.loop_forever()
"""


class Subscriber:
    """The app at the broker: a persistent paho session in the broker's namespace, so that the
    uplink cut is between the gateway and the broker only (a subscriber across it was once left
    hanging in paho's TLS reconnect, and every later message looked lost)."""

    def __init__(self, ns, pki, port):
        self.got, self.trace, self.lock = [], [], threading.Lock()
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "/usr/bin/python3", "-c", SUBSCRIBER, BROKER,
                                      str(port), pki.ca, pki.app[0], pki.app[1]],
                                     stdout=subprocess.PIPE, text=True)
        self.subscribed = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        check(self.subscribed.wait(10), "the app at the broker has subscribed")

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("subscribed"):
                self.subscribed.set()
                continue
            with self.lock:
                self.trace.append(line.rstrip("\n"))
                self.got.append(line.split()[-1])

    def of(self, device):
        with self.lock:
            return [p for p in self.got if p.startswith(device + "-")]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


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
# mosquitto 2.0.11 can send a message it queued for a reconnecting subscriber behind later ones
# (seen: its m3601 after m3605) when some wait past max_inflight_messages; with no limit nothing
# waits there, and the order the subscriber sees is the order the broker took them in.
max_inflight_messages 0
log_dest stderr
log_type error
log_type {'all' if os.environ.get('IOTGW_CHAOS_VERBOSE') else 'error'}
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
            password_device(os.path.join(root, "devices.d"), name, hashed)
        notify = NotifySocket(root)
        events = open(os.path.join(root, "events"), "w")

        def start_gateway():
            p = subprocess.Popen([IOTGWD, "--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path),
                                 stderr=events)
            check(wait_ready(notify, port), "iotgwd ready")
            return p

        gw = start_gateway()
        sub = Subscriber(ns, pki, bport)
        time.sleep(1)
        devices = [Device(n, port, 2 if n.startswith("valve") else 1,
                          QOS2_EACH if n.startswith("valve") else QOS1_EACH) for n in names]
        time.sleep(1)
        for dv in devices:
            dv.start()

        seed = int(os.environ.get("IOTGW_CHAOS_SEED", time.time()))
        rnd = random.Random(seed)
        duration = DURATION
        print(f"chaos seed {seed}; the stream runs {duration:.0f} s")
        # Each fault begins at its time or once the one before has ended (a cut lasts 14-17 s,
        # a restart 1-3 s): all three within the stream.
        at = sorted(rnd.uniform(1, duration - 22) for _ in range(3))
        cut = None
        kinds = ["broker restart", "uplink cut", "iotgwd SIGKILL"]
        rnd.shuffle(kinds)
        if os.environ.get("IOTGW_CHAOS_ONLY"):  # one kind of fault, to look at it alone
            kinds = [k for k in kinds if k == os.environ["IOTGW_CHAOS_ONLY"]]
        t0 = time.monotonic()
        for when, kind in zip(at, kinds):
            time.sleep(max(0, t0 + when - time.monotonic()))
            print(f"  {time.monotonic() - t0:5.1f} s ({time.monotonic():.3f}): {kind}")
            if kind == "broker restart":
                broker.terminate()
                broker.wait(timeout=10)
                time.sleep(rnd.uniform(1, 3))
                broker = start_broker()
            elif kind == "uplink cut":
                subprocess.run(["ip", "link", "set", "uplink", "down"], check=True)
                down = time.monotonic()
                time.sleep(rnd.uniform(14, 17))  # past the ~10 s in which a dead link is found
                subprocess.run(["ip", "link", "set", "uplink", "up"], check=True)
                cut = (down, time.monotonic())
            else:
                gw.send_signal(signal.SIGKILL)
                gw.wait(timeout=10)
                gw = start_gateway()
        for dv in devices:
            dv.join(timeout=duration + 60)
        if cut:
            # No FIN, no RST: iotgwd must find the dead link itself and acknowledge from the
            # outbox while the link is still down, or the devices stall for the whole cut.
            for dv in devices:
                if dv.qos == 1:
                    during = sum(1 for t in dv.ack_times if cut[0] < t < cut[1])
                    check(during > 0, f"{dv.name}: {during} messages acknowledged while the uplink "
                                      f"was cut ({cut[1] - cut[0]:.1f} s)")
        for dv in devices:
            n = dv.wait_acked(20)
            print(f"  {dv.name}: {n} of {dv.count} acknowledged, {dv.reconnects} connections, "
                  f"longest wait for an acknowledgement {dv.longest_wait:.1f} s")
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
                # Also what the device sent again (DUP) after losing its connection before the
                # PUBREC came — iotgwd killed, the uplink's faults — arrives once: the outbox
                # keeps each flow towards the device until its PUBREL.
                twice = sorted({p for p in got if got.count(p) > 1})
                print(f"  {dv.name}: {len(dv.resent)} QoS 2 message(s) resent by the device after a "
                      f"lost connection, {len(dv.resent & set(twice))} of them twice")
                check(not twice, f"{dv.name}: QoS 2 exactly once ({len(twice)} more than once{': ' + twice[0] if twice else ''})")
        print(f"  acknowledged {total_acked}, received {total_got}, duplicates {total_dups} (QoS 1 at least once)")
        check(gw.poll() is None, "iotgwd still runs")
        gw.terminate()
        gw.wait(timeout=30)
        with open(os.path.join(root, "events")) as f:  # both runs' stderr (a sanitizer's too)
            check_stopped_cleanly(gw, f.read().splitlines())
    finally:
        for dv in devices:
            dv.stop = True
        if sub:
            sub.stop()
        if gw and gw.poll() is None:
            gw.terminate()
            gw.wait(timeout=10)
        if broker and broker.poll() is None:
            broker.terminate()
            broker.wait(timeout=10)
        remove_namespaces([ns])
        if os.environ.get("IOTGW_KEEP") and sub:
            write(os.path.join(root, "subscriber.trace"), "\n".join(sub.trace) + "\n")
        if os.environ.get("IOTGW_KEEP"):
            print("kept", root)
        else:
            cleanup(root)


def main():
    require_binary()
    in_private_namespaces(["-n"], "network namespaces")
    inside()
    finish()


if __name__ == "__main__":
    main()
