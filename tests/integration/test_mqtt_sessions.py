#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""MQTT sessions as real clients use them, through iotgwd to a real mosquitto (mutual TLS), each
behaviour compared with the same client straight to mosquitto where they should match:

* two clients of one device at once (mosquitto_sub and mosquitto_pub from one address);
* SUBACK only once the broker has the subscription: a message published the instant the device
  hears "subscribed" reaches it;
* offline queueing: a persistent session (clean session 0) is told the truth about
  session-present, and what was published while it was away arrives when it comes back;
* a QoS 1 or QoS 2 message delivered and not acknowledged when the device dropped comes again
  when it reconnects to its persistent session (MQTT-4.4.0-1); overlapping subscriptions give as
  many copies as mosquitto gives; a 5.0 session (Clean Start 0, Session Expiry) is resumed;
* the same client id connecting again takes its session over (MQTT-3.1.4-3), and the device's
  mqtt.max_clients is a clear refusal (3.1.1: return code 3; 5.0: 0x97);
* a device's persistent sessions at the broker end when it is removed or its policy no longer
  allows what they subscribed (and stay when it does);
* a zero-length client id (3.1.1, clean session) is taken; a subscription the policy refuses is
  answered with 0x80 (3.1.1) and 0x87 (5.0);
* iotgwd killed (SIGKILL) under a paho QoS 1 stream with 20 in flight, and restarted: the client
  recovers within seconds and every message it was acknowledged reaches the broker."""
import os
import signal
import ssl
import struct
import subprocess
import threading
import time

import paho.mqtt.client as paho

from iotgw_testlib import (Daemon, NotifySocket, check, cleanup, finish, hash_password,
                           require_binary, tmpdir, wait_ready, write)
from mqttlab import Broker, Pki, Subscriber, free_port, gateway_config
import mqttwire as w

require_binary()

USER, PASSWORD = "hub", "s3cret"


class Paho:
    """A paho-mqtt client (3.1.1 unless told), collecting what it receives."""

    def __init__(self, client_id, port, clean=True, version=paho.MQTTv311, tls=None, login=True,
                 inflight=20):
        self.received = []
        self.connected = threading.Event()
        self.flags = {}
        self.code = None
        kwargs = {"clean_session": clean} if version != paho.MQTTv5 else {}
        self.c = paho.Client(client_id=client_id, protocol=version, **kwargs)
        self.c.max_inflight_messages_set(inflight)
        self.c.max_queued_messages_set(0)
        self.c.reconnect_delay_set(0.2, 1)
        if login:
            self.c.username_pw_set(USER, PASSWORD)
        if tls:
            self.c.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2],
                           tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.c.on_connect = self.on_connect
        self.c.on_message = lambda c, u, m: self.received.append((m.topic, m.payload.decode(), m.qos))
        if version == paho.MQTTv5:
            from paho.mqtt.properties import Properties
            from paho.mqtt.packettypes import PacketTypes
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 300
            self.c.connect("127.0.0.1", port, keepalive=30, clean_start=clean, properties=props)
        else:
            self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        self.connected.wait(10)

    def on_connect(self, client, userdata, flags, rc, properties=None):
        self.code = rc
        self.flags = flags
        self.connected.set()

    def subscribe(self, topic, qos=1, then=None):
        done = threading.Event()
        granted = []

        def on_subscribe(c, u, mid, g, properties=None):
            granted.extend(g)
            if then:
                then()
            done.set()
        self.c.on_subscribe = on_subscribe
        self.c.subscribe(topic, qos)
        done.wait(10)
        return granted

    def publish(self, topic, payload, qos=1):
        info = self.c.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)
        return info.is_published()

    def wait_for(self, count, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline and len(self.received) < count:
            time.sleep(0.05)
        return len(self.received) >= count

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def raw_connect(port, client_id, clean=True, login=True, version=4):
    c = w.Client(port)
    code = c.connack(w.connect(client_id, USER if login else None, PASSWORD if login else None,
                               version=version, clean=clean))
    return c, code


def session_present(c, connect_packet):
    c.send(connect_packet)
    p = c.read_packet()
    return None if p is None or p[0] != 0x20 else (p[1][0] & 1, p[1][1])


def suback_codes(c, packet_id, topic, qos=1, version=4):
    c.send(w.subscribe(packet_id, [topic], qos=qos, version=version))
    while True:
        p = c.read_packet()
        if p is None:
            return None
        if p[0] == 0x90:
            return list(p[1][3 if version == 5 else 2:])


def read_publish(c):
    """(topic, payload, packet id) of the next PUBLISH, or None."""
    while True:
        p = c.read_packet()
        if p is None:
            return None
        if p[0] >> 4 == 3:
            body = p[1]
            n = struct.unpack("!H", body[:2])[0]
            topic = body[2:2 + n].decode()
            qos = (p[0] >> 1) & 3
            pid = struct.unpack("!H", body[2 + n:4 + n])[0] if qos else 0
            return topic, body[4 + n if qos else 2 + n:].decode(), pid


root = tmpdir()
broker = d = None
clients = []
copies = {}
try:
    pki = Pki(os.path.join(root, "pki"))
    plain = free_port()  # the broker's plaintext listener, for raw-socket clients straight to it
    # The stream below sends 3,000 QoS 1 messages; a subscriber that falls behind while iotgwd's
    # outbox drains must not lose them to the broker's per-client queue limit (1,000 by default).
    broker = Broker(root, pki, extra=f"listener {plain} 127.0.0.1\nmax_queued_messages 10000\n")
    port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, port=port,
                               extra='[events]\ntarget = "stderr"\n[limits]\nmax_connections_per_source = 64\n'))
    hashed = hash_password(PASSWORD)
    write(os.path.join(root, "devices.d", "hub-01.toml"), f"""
[device]
id = "hub-01"
[device.mqtt]
username = "{USER}"
password_hash = "{hashed}"
[mqtt]
publish = ["devices/%d/#"]
subscribe = ["devices/%d/#"]
max_qos = 2
max_clients = 12
""")
    notify = NotifySocket(root)
    events = open(os.path.join(root, "events"), "w")
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path), stderr=events)
    check(wait_ready(notify, port), "iotgwd ready")
    app = Paho("app", broker.port, tls=(pki.ca, *pki.app), login=False)
    clients.append(app)
    tls_args = broker.tls_args()

    print("two clients of one device at once: mosquitto_sub and mosquitto_pub")
    for name, args, topic in (("through iotgwd", ["-h", "127.0.0.1", "-p", str(port), "-u", USER, "-P", PASSWORD],
                               "devices/hub-01/cmd/two"),
                              ("straight to mosquitto", tls_args, "direct/cmd/two")):
        out = open(os.path.join(root, f"sub-{time.time_ns()}"), "w+")
        s = subprocess.Popen(["mosquitto_sub", *args, "-i", "sub-a", "-t", topic, "-q", "1", "-C", "1"],
                             stdout=out, stderr=subprocess.STDOUT)
        time.sleep(0.7)
        r = subprocess.run(["mosquitto_pub", *args, "-i", "pub-b", "-t", topic, "-q", "1", "-m", "both"],
                           capture_output=True, text=True, timeout=10)
        try:
            s.wait(timeout=5)
        except subprocess.TimeoutExpired:
            s.kill()
        out.seek(0)
        got = out.read().strip()
        check(r.returncode == 0 and got == "both", f"{name}: the subscriber gets the publisher's message ({got!r})")

    print("SUBACK only once the broker has the subscription")
    dev = Paho("suback-c", port)
    clients.append(dev)
    for i in range(10):
        dev.subscribe(f"devices/hub-01/cmd/now/{i}", 1,
                      then=lambda i=i: app.c.publish(f"devices/hub-01/cmd/now/{i}", f"now-{i}", qos=1))
    check(dev.wait_for(10), f"each message published the instant SUBACK came arrived ({len(dev.received)} of 10)")

    print("offline queueing in a persistent session")
    for name, p, args, topic in (("through iotgwd", port, {}, "devices/hub-01/cmd/q"),
                                 ("straight to mosquitto", broker.port, {"tls": (pki.ca, *pki.app), "login": False},
                                  "direct/cmd/q")):
        first = Paho("persist-d", p, clean=False, **args)
        granted = first.subscribe(topic + "/#", 1)
        first.stop()
        time.sleep(0.3)
        for i in range(5):
            app.publish(f"{topic}/{i}", f"queued-{i}")
        back = Paho("persist-d", p, clean=False, **args)
        clients.append(back)
        present = back.flags.get("session present")
        check(granted == [1] and present == 1, f"{name}: granted QoS 1, and back with session present = {present}")
        check(back.wait_for(5), f"{name}: the 5 messages published meanwhile arrive ({len(back.received)})")
        back.stop()

    print("redelivery of an unacknowledged QoS 1 and QoS 2 message")
    for qos in (1, 2):
        for name, p, login, topic in (("through iotgwd", port, True, f"devices/hub-01/cmd/r{qos}"),
                                      ("straight to mosquitto", plain, False, f"direct/cmd/r{qos}")):
            cid = f"redeliver-{qos}"
            c, code = raw_connect(p, cid, clean=False, login=login)
            codes = suback_codes(c, 1, topic, qos=qos)
            app.publish(topic, "once", qos)
            first = read_publish(c)
            c.close()  # without PUBACK / PUBREC
            time.sleep(0.3)
            c = w.Client(p)
            sp = session_present(c, w.connect(cid, USER if login else None, PASSWORD if login else None,
                                              clean=False))
            again = read_publish(c)
            check(code == 0 and codes == [qos] and first and first[1] == "once",
                  f"QoS {qos}, {name}: subscribed and delivered ({codes}, {first})")
            check(sp == (1, 0) and again and again[1] == "once",
                  f"QoS {qos}, {name}: on reconnect the session is there and the message comes again "
                  f"({sp}, {again})")
            if again and qos == 1:
                c.send(w.packet(0x40, struct.pack("!H", again[2])))
            elif again:
                c.send(w.packet(0x50, struct.pack("!H", again[2])))  # PUBREC
                rel = c.read_packet()
                c.send(w.packet(0x70, struct.pack("!H", again[2])))  # PUBCOMP
                check(rel is not None and rel[0] == 0x62, f"QoS {qos}, {name}: the flow completes with PUBREL")
            c.send(w.DISCONNECT)
            c.close()

    print("overlapping subscriptions, and a 5.0 session with an expiry")
    for name, p, args, base in (("through iotgwd", port, {}, "devices/hub-01/cmd/o"),
                                ("straight to mosquitto", broker.port, {"tls": (pki.ca, *pki.app), "login": False},
                                 "direct/cmd/o")):
        o = Paho(f"overlap-{len(name)}", p, **args)
        clients.append(o)
        o.subscribe(base + "/#", 1)
        o.subscribe(base + "/+", 0)
        app.publish(base + "/x", "overlap", 1)
        o.wait_for(1)
        time.sleep(0.5)
        copies.setdefault("n", []).append(len(o.received))
        v5 = Paho("persist-5", p, version=paho.MQTTv5, clean=False, **args)
        v5.subscribe(base + "/five/#", 1)
        v5.stop()
        time.sleep(0.3)
        app.publish(base + "/five/a", "while away", 1)
        back = Paho("persist-5", p, version=paho.MQTTv5, clean=False, **args)
        clients.append(back)
        present = getattr(back.flags, "get", lambda k: None)("session present")
        check(present == 1 and back.wait_for(1),
              f"5.0, {name}: Clean Start 0 with an expiry is resumed (session present {present}) with "
              f"what came meanwhile ({back.received})")
    check(copies["n"][0] == copies["n"][1], f"overlapping filters: as many copies as mosquitto sends ({copies['n']})")

    print("session takeover and the limit on clients per device")
    for name, p, login in (("through iotgwd", port, True), ("straight to mosquitto", plain, False)):
        t1, c1 = raw_connect(p, "take-t", login=login)
        t2, c2 = raw_connect(p, "take-t", login=login)
        gone = t1.read_packet() is None
        check(c1 == 0 and c2 == 0 and gone, f"{name}: the second connection with the same client id takes over")
        check(t2.ping_rtt() is not None, f"{name}: and works")
        t1.close()
        t2.close()
    write(os.path.join(root, "devices.d", "few-01.toml"), f"""
[device]
id = "few-01"
[device.mqtt]
username = "few"
password_hash = "{hashed}"
[mqtt]
publish = ["devices/%d/#"]
max_clients = 2
""")
    d.signal(signal.SIGHUP)
    time.sleep(1.0)
    held = []
    for i in range(2):
        c = w.Client(port)
        held.append(c)
        check(c.connack(w.connect(f"few-{i}", "few", PASSWORD)) == 0, f"client {i + 1} of few-01 logs in")
    for version, expected in ((4, 3), (5, 0x97)):
        c = w.Client(port)
        got = c.connack(w.connect("few-x", "few", PASSWORD, version=version))
        check(got == expected, f"a third (MQTT {'5.0' if version == 5 else '3.1.1'}) is refused with {expected:#x} ({got})")
        c.close()
    c = w.Client(port)
    check(c.connack(w.connect("few-0", "few", PASSWORD)) == 0, "the first one's client id may still take its session over")
    for c in held:
        c.close()

    print("zero-length client id, refused subscriptions")
    for name, p, login in (("through iotgwd", port, True), ("straight to mosquitto", plain, False)):
        c, code = raw_connect(p, "", login=login)
        check(code == 0, f"{name}: a zero-length client id with a clean session is taken ({code})")
        c.close()
    c, _ = raw_connect(port, "refuse-311")
    check(suback_codes(c, 1, "devices/other/#") == [0x80], "3.1.1: a filter outside the policy gets 0x80")
    c.close()
    c, _ = raw_connect(port, "refuse-5", version=5)
    check(suback_codes(c, 1, "devices/other/#", version=5) == [0x87], "5.0: and 0x87")
    c.close()

    print("persistent sessions end when the policy no longer allows them")
    for dev, sub_list in (("gone-01", '["devices/%d/#"]'), ("narrow-01", '["devices/%d/#"]'),
                          ("kept-01", '["devices/%d/#"]')):
        write(os.path.join(root, "devices.d", f"{dev}.toml"), f"""
[device]
id = "{dev}"
[device.mqtt]
username = "{dev}"
password_hash = "{hashed}"
[mqtt]
publish = ["devices/%d/#"]
subscribe = {sub_list}
""")
    d.signal(signal.SIGHUP)
    time.sleep(1.0)
    for dev in ("gone-01", "narrow-01", "kept-01"):
        c = w.Client(port)
        c.connack(w.connect(dev, dev, PASSWORD, clean=False))
        suback_codes(c, 1, f"devices/{dev}/cmd/#")
        c.send(w.DISCONNECT)
        c.close()
    os.remove(os.path.join(root, "devices.d", "gone-01.toml"))
    narrowed = open(os.path.join(root, "devices.d", "narrow-01.toml")).read().replace(
        'subscribe = ["devices/%d/#"]', 'subscribe = ["devices/%d/status"]')
    write(os.path.join(root, "devices.d", "narrow-01.toml"), narrowed)
    d.signal(signal.SIGHUP)
    time.sleep(1.5)
    for dev, expected, why in (("gone-01", 0, "a removed device's session is gone from the broker"),
                               ("narrow-01", 0, "so is one whose subscription the new policy refuses"),
                               ("kept-01", 1, "one the new policy still allows is kept")):
        c = w.Client(plain)
        sp = session_present(c, w.connect(f"iotgw-{dev}", clean=False))
        c.send(w.DISCONNECT)
        c.close()
        check(sp == (expected, 0), f"{why} (session present at the broker: {sp})")

    print("iotgwd killed under a QoS 1 stream, and restarted")
    sub = Subscriber(broker, "devices/hub-01/stream", root)
    acked = set()
    stream = Paho("stream-s", port, inflight=20)
    clients.append(stream)
    stream.c.on_publish = lambda c, u, mid: acked.add(mid)
    mids = {}
    total = 3000
    for i in range(total):
        info = stream.c.publish("devices/hub-01/stream", f"m{i}", qos=1)
        mids[info.mid] = f"m{i}"
        if i == 1000:
            while len(acked) < 500:
                time.sleep(0.01)
            d.proc.kill()
            d.proc.wait()
            killed_at = len(acked)
            os.makedirs(os.path.join(root, "again"), exist_ok=True)
            notify = NotifySocket(os.path.join(root, "again"))
            d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path), stderr=events)
            check(wait_ready(notify, port), f"iotgwd killed after {killed_at} acknowledgements, and back")
    restarted = time.monotonic()
    while len(acked) < total and time.monotonic() - restarted < 60:
        time.sleep(0.1)
    recovered = time.monotonic() - restarted
    check(len(acked) == total, f"every message is acknowledged in the end ({len(acked)} of {total}, {recovered:.1f} s)")
    check(recovered < 30, f"within seconds of the restart ({recovered:.1f} s)")
    # Messages acknowledged from the outbox reach the broker as it drains: wait for them (a lost
    # one never comes), longer than a loaded CI machine needs to drain 3,000.
    drained = time.monotonic()
    while True:
        at_broker = {line.split(" ", 1)[1] for line in sub.lines() if " " in line}
        missing = [mids[m] for m in acked if m in mids and mids[m] not in at_broker]
        if not missing or time.monotonic() - drained > 20:
            break
        time.sleep(0.2)
    check(not missing, f"every acknowledged message reached the broker ({len(missing)} missing, "
          f"{time.monotonic() - drained:.1f} s after the last acknowledgement)")
    sub.stop()
    check(d.alive(), "iotgwd still runs")
finally:
    for x in clients:
        try:
            x.stop()
        except Exception:
            pass
    if d and d.alive():
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
