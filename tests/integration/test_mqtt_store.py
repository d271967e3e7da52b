#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Store-and-forward through a real outage: iotgwd in front of a real mosquitto (mutual TLS,
persistence on), a legacy device (paho, one message in flight at a time) publishing QoS 1 and
QoS 2, and a persistent subscriber at the broker:

* with the broker up, QoS 1 goes straight through (no outbox file written) and QoS 2 through the
  outbox, exactly once;
* the broker stopped: every message the device sends is acknowledged within a second (it is on
  disk in state/outbox/<device>.queue, owner-only), an outbox-queuing event says so once;
* iotgwd killed with SIGKILL while the broker is away, and started again: the device reconnects
  and goes on publishing, acknowledged; the outbox is resumed (event);
* the broker back: every acknowledged message reaches the subscriber, in order, QoS 2 exactly once;
  outbox-drained; the file is empty again;
* a QoS 2 PUBREC lost on the way to the device (its connection dropped, iotgwd killed): the
  device sends the message again (DUP) and it reaches the subscriber once; a PUBREL after an
  iotgwd restart completes the flow its PUBREC opened (5.0 PUBCOMP "success", not "packet
  identifier not found");
* a full outbox: a device whose policy refuses gets no PUBACK past the bound (3.1.1) or "quota
  exceeded" (5.0), and every one it was acknowledged arrives; one whose policy drops the oldest
  gets every PUBACK and loses exactly the oldest ones, each drop reported.
"""
import os
import signal
import stat
import threading
import time

import paho.mqtt.client as paho

from iotgw_testlib import (Daemon, NotifySocket, check, cleanup, finish, hash_password,
                           require_binary, tmpdir, wait_ready, write)
from mqttlab import Broker, Pki, free_port, gateway_config, password_device
import mqttwire as w

require_binary()

PASSWORD = "s3cret"
BOUND = 60  # [store] max_messages_per_device (the outage below stores 50 of one device)


class AppSubscriber:
    """A persistent paho subscriber at the broker (clean session 0), reconnecting by itself."""

    def __init__(self, broker, pki):
        self.received = []
        self.lock = threading.Lock()
        self.connected = threading.Event()
        self.c = paho.Client(client_id="app-sub", clean_session=False)
        self.c.tls_set(ca_certs=pki.ca, certfile=pki.app[0], keyfile=pki.app[1])
        self.c.reconnect_delay_set(0.2, 1)
        self.c.on_connect = self.on_connect
        self.c.on_message = self.on_message
        self.c.connect("127.0.0.1", broker.port, keepalive=10)
        self.c.loop_start()
        check(self.connected.wait(10), "the subscriber at the broker is connected")

    def on_connect(self, c, u, flags, rc):
        if rc == 0:
            c.subscribe("devices/#", 2)
            self.connected.set()

    def on_message(self, c, u, m):
        with self.lock:
            self.received.append((m.topic, m.payload.decode()))

    def payloads(self, device):
        with self.lock:
            return [p for t, p in self.received if t.startswith(f"devices/{device}/")]

    def wait_for(self, device, want, timeout=30.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if set(want) <= set(self.payloads(device)):
                return True
            time.sleep(0.1)
        return False

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


class LegacyDevice:
    """paho, 3.1.1, one QoS > 0 message in flight at a time (as small devices do)."""

    def __init__(self, user, port):
        self.connected = threading.Event()
        self.c = paho.Client(client_id=f"{user}-fw", clean_session=True)
        self.c.max_inflight_messages_set(1)
        self.c.username_pw_set(user, PASSWORD)
        self.c.reconnect_delay_set(0.2, 1)
        self.c.on_connect = lambda c, u, f, rc: rc == 0 and self.connected.set()
        self.c.on_disconnect = lambda c, u, rc: self.connected.clear()
        self.c.connect("127.0.0.1", port, keepalive=10)
        self.c.loop_start()
        check(self.connected.wait(10), f"{user} is connected")

    def publish(self, topic, payload, qos=1, timeout=2.0):
        """Seconds until acknowledged, or None."""
        t0 = time.time()
        info = self.c.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout)
        return time.time() - t0 if info.is_published() else None

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def valve(port):
    """valve-01 logs in as a MQTT 5.0 client on a raw socket (clean start, as paho's default)."""
    c = w.Client(port, timeout=3.0)
    check(c.connack(w.connect("valve-01-a", "valve-01", PASSWORD, version=5)) == 0, "valve-01 logs in")
    return c


def answer(c, kind, pid):
    """The reason code of the next packet when it is a `kind` (5 PUBREC, 7 PUBCOMP) for `pid`."""
    p = c.read_packet()
    if p is None or p[0] >> 4 != kind or int.from_bytes(p[1][:2], "big") != pid:
        return f"not that: {p}"
    return p[1][2] if len(p[1]) > 2 else 0


def qos2_publish(topic, payload, pid, dup=False):
    return w.publish(topic, payload, qos=2, packet_id=pid, version=5, dup=dup)


def events_of(path, kind):
    return [line for line in open(path) if f"IOTGW_EVENT={kind}" in line]


def raw_publishes(port, user, count, topic, version=4, first_id=1):
    """A raw client sends `count` QoS 1 PUBLISHes at once; returns {packet id: reason code} of the
    PUBACKs that come within 3 s (3.1.1 PUBACKs have no code: 0)."""
    c = w.Client(port, timeout=3.0)
    code = c.connack(w.connect(f"{user}-raw{version}", user, PASSWORD, version=version))
    check(code == 0, f"{user} logs in (MQTT {version})")
    for i in range(count):
        c.send(w.publish(topic, f"m-{first_id + i:03d}", qos=1, packet_id=first_id + i, version=version))
    acks = {}
    while True:
        p = c.read_packet()
        if p is None:
            break
        if p[0] >> 4 == 4:
            pid = int.from_bytes(p[1][:2], "big")
            acks[pid] = p[1][2] if len(p[1]) > 2 else 0
    c.close()
    return acks


root = tmpdir()
broker = d = app = dev = None
try:
    pki = Pki(os.path.join(root, "pki"))
    os.makedirs(os.path.join(root, "mosquitto"))
    broker = Broker(root, pki, extra=f"persistence true\npersistence_location {root}/mosquitto/\n"
                                     "max_queued_messages 10000\nmax_inflight_messages 20\n")
    port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, port=port, extra=f"""
[events]
target = "stderr"
burst = 1000
[store]
max_messages_per_device = {BOUND}
"""))
    hashed = hash_password(PASSWORD)
    for name, extra in (("meter-01", ""), ("valve-01", ""), ("full-01", ""),
                        ("drop-01", 'when_queue_full = "drop-oldest"\n')):
        password_device(os.path.join(root, "devices.d"), name, hashed, extra)
    notify = NotifySocket(root)
    events = os.path.join(root, "events")
    log = open(events, "w")

    def start_gateway():
        g = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path), stderr=log)
        check(wait_ready(notify, port), "iotgwd ready")
        return g

    d = start_gateway()
    app = AppSubscriber(broker, pki)
    dev = LegacyDevice("meter-01", port)
    outbox = os.path.join(root, "state", "outbox", "meter-01.queue")
    sent = []

    print("broker up: QoS 1 straight through, QoS 2 through the outbox, exactly once")
    check(dev.publish("devices/meter-01/r", "up-1") is not None, "QoS 1 acknowledged")
    check(app.wait_for("meter-01", ["up-1"], 5), "and at the broker")
    check(not os.path.exists(outbox) or os.path.getsize(outbox) <= 8,
          "QoS 1 with the broker up wrote nothing to the outbox")
    check(dev.publish("devices/meter-01/r", "q2-up", qos=2) is not None, "QoS 2 acknowledged")
    check(app.wait_for("meter-01", ["q2-up"], 5), "and at the broker")
    sent += ["up-1", "q2-up"]
    mode = stat.S_IMODE(os.stat(outbox).st_mode)
    dmode = stat.S_IMODE(os.stat(os.path.dirname(outbox)).st_mode)
    check(mode == 0o600 and dmode == 0o700, f"the outbox is owner-only (file {mode:o}, directory {dmode:o})")

    print("broker stopped: the device keeps publishing, acknowledged from the outbox")
    broker.stop()
    time.sleep(0.5)
    latencies = []
    for i in range(1, 26):
        p = f"out-{i:02d}"
        latencies.append(dev.publish("devices/meter-01/r", p, qos=2 if i % 5 == 0 else 1, timeout=15))
        sent.append(p)
    check(all(x is not None for x in latencies), "every message acknowledged while the broker is away")
    check(max(latencies[5:]) < 1.0, f"within a second once the outage is known ({max(latencies[5:]):.3f} s at most)")
    check(os.path.getsize(outbox) > 8, f"they are on disk ({os.path.getsize(outbox)} bytes)")
    check(len([e for e in events_of(events, "outbox-queuing") if "meter-01" in e]) == 1,
          "one outbox-queuing event for the outage")

    print("iotgwd killed (SIGKILL) while the broker is away, and started again")
    d.signal(signal.SIGKILL)
    d.proc.wait(timeout=10)
    d = start_gateway()
    check(dev.connected.wait(10), "the device reconnects")
    resumed = [e for e in events_of(events, "outbox-queuing") if "meter-01" in e and "resume" in e]
    check(len(resumed) == 1, "the outbox is resumed after the restart (event)")
    late = []
    for i in range(26, 51):
        p = f"out-{i:02d}"
        late.append(dev.publish("devices/meter-01/r", p, qos=2 if i % 5 == 0 else 1, timeout=15))
        sent.append(p)
    check(all(x is not None for x in late), f"every message acknowledged after the restart too ({late})")

    print("broker back: everything acknowledged arrives, in order, QoS 2 once")
    broker.start()
    check(app.wait_for("meter-01", sent, 30), "every acknowledged message reached the subscriber")
    got = app.payloads("meter-01")
    q2 = [p for p in sent if p.startswith("q2") or p.endswith("0") or p.endswith("5")]
    # MQTT orders messages of one QoS (a QoS 2 message is the subscriber's only after PUBREL,
    # so the broker interleaves the two levels): each level in the order the device sent it.
    for level, want in (("QoS 1", [p for p in sent if p not in q2]), ("QoS 2", q2)):
        firsts = []
        for p in got:
            if p in want and p not in firsts:
                firsts.append(p)
        check(firsts == want, f"{level} in the order the device sent it ({firsts if firsts != want else len(want)})")
    twice = [p for p in q2 if got.count(p) != 1]
    check(not twice, f"QoS 2 exactly once ({len(q2)} messages; more than once: {twice})")
    dups = len(got) - len(set(got))
    print(f"  QoS 1 duplicates: {dups} of {len(got)}")
    deadline = time.time() + 10
    while time.time() < deadline and not [e for e in events_of(events, "outbox-drained") if "meter-01" in e]:
        time.sleep(0.2)
    check([e for e in events_of(events, "outbox-drained") if "meter-01" in e], "outbox-drained")
    check(os.path.getsize(outbox) == 8, f"the outbox file is empty again ({os.path.getsize(outbox)} bytes)")

    print("a QoS 2 PUBREC lost on the way: the device sends the message again, it arrives once")
    topic = "devices/valve-01/state"
    c = valve(port)
    c.send(qos2_publish(topic, "rec-lost-1", 7))
    check(answer(c, 5, 7) == 0, "PUBREC")
    c.close()  # as if it had never come: the connection dropped first
    c = valve(port)
    c.send(qos2_publish(topic, "rec-lost-1", 7, dup=True))
    check(answer(c, 5, 7) == 0, "the resend (DUP, on a new connection) is answered PUBREC")
    c.send(w.pubrel(7))
    check(answer(c, 7, 7) == 0, "PUBREL: PUBCOMP")
    c.send(w.pubrel(7))
    check(answer(c, 7, 7) == 0x92, "a second PUBREL: 'packet identifier not found'")
    c.send(qos2_publish(topic, "rec-lost-2", 8))
    check(answer(c, 5, 8) == 0, "PUBREC")
    c.send(qos2_publish(topic, "rec-lost-3", 9))
    check(answer(c, 5, 9) == 0, "PUBREC")
    d.signal(signal.SIGKILL)  # before the device's PUBRELs for 8 and 9
    d.proc.wait(timeout=10)
    c.close()
    d = start_gateway()
    c = valve(port)
    c.send(qos2_publish(topic, "rec-lost-2", 8, dup=True))
    check(answer(c, 5, 8) == 0, "after a SIGKILL of iotgwd the resend is answered PUBREC")
    c.send(w.pubrel(8))
    check(answer(c, 7, 8) == 0, "and its PUBREL completes it")
    c.send(w.pubrel(9))
    code = answer(c, 7, 9)
    check(code == 0, f"a PUBREL on the new run for a flow of the old one completes it (PUBCOMP {code})")
    c.close()
    want = ["rec-lost-1", "rec-lost-2", "rec-lost-3"]
    check(app.wait_for("valve-01", want, 10), "all three reach the subscriber")
    time.sleep(1.5)  # what would come twice comes by now
    got = app.payloads("valve-01")
    check(sorted(got) == want, f"each exactly once ({got})")

    print("a full outbox: refuse, or drop the oldest, as the device's policy says")
    broker.stop()
    time.sleep(0.5)
    # The device's upstream learns of the outage with its first attempt: one message waits for it.
    raw_publishes(port, "full-01", 1, "devices/full-01/r", first_id=500)
    raw_publishes(port, "drop-01", 1, "devices/drop-01/r", first_id=500)
    time.sleep(1.5)
    acks = raw_publishes(port, "full-01", BOUND + 5, "devices/full-01/r")
    check(len(acks) == BOUND - 1, f"refuse: PUBACKs up to the bound only ({len(acks)} of {BOUND + 5}, bound {BOUND})")
    acks5 = raw_publishes(port, "full-01", 1, "devices/full-01/r5", version=5, first_id=900)
    check(acks5.get(900) == 0x97, f"refuse, MQTT 5.0: PUBACK 'quota exceeded' ({acks5})")
    refused = [e for e in events_of(events, "outbox-full") if "full-01" in e and "IOTGW_ACTION=refuse" in e]
    check(len(refused) >= 6, f"each refusal reported ({len(refused)})")
    dacks = raw_publishes(port, "drop-01", BOUND + 5, "devices/drop-01/r")
    check(len(dacks) == BOUND + 5, f"drop-oldest: every message acknowledged ({len(dacks)})")
    drops = [e for e in events_of(events, "outbox-full") if "drop-01" in e and "drop-oldest" in e]
    check(len(drops) == 6, f"each drop reported ({len(drops)})")
    broker.start()
    full_sent = ["m-500"] + [f"m-{i:03d}" for i in range(1, BOUND)]
    check(app.wait_for("full-01", full_sent, 30), "refuse: every acknowledged message arrives")
    check(not set(app.payloads("full-01")) - set(full_sent), "and none that was refused")
    kept = [f"m-{i:03d}" for i in range(1 + 5, BOUND + 6)]
    check(app.wait_for("drop-01", kept, 30), "drop-oldest: the newest ones arrive")
    lost = {"m-500", *[f"m-{i:03d}" for i in range(1, 6)]} & set(app.payloads("drop-01"))
    check(not lost, f"the dropped oldest ones do not ({sorted(lost)})")
    check(d.alive(), "iotgwd still runs")
finally:
    for c in (dev, app):
        if c:
            c.stop()
    if d:
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
