#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attacks on the device-side MQTT listener before anyone has logged in, against the real iotgwd
with a real mosquitto upstream, from many loopback source addresses:

1. memory: 1,024 connections (64 sources x 16, the default limits) each send a CONNECT header
   claiming 262,140 bytes and then all but one byte; then the same with CONNECTs just under the
   pre-login bound. iotgwd's memory stays within +32 MiB and an enrolled device connects and
   publishes during the flood.
2. CPU: 400 CONNECTs with a known username and a wrong password from 80 sources (5 each) at once.
   A connected device's PINGREQ is answered within 100 ms throughout and WATCHDOG=1 keeps
   arriving on the notify socket.
3. the username oracle: a known username with a wrong password and an unknown username get the
   same CONNACK code, after about the same time (printed, not asserted tightly)."""
import os
import selectors
import socket
import statistics
import threading
import time

from iotgw_testlib import (WITH_SYSTEMD, Daemon, NotifySocket, check, cleanup, finish,
                           hash_password, in_private_mount_namespace, require_binary, tmpdir,
                           wait_ready, write)
from mqttlab import Broker, Pki, Subscriber, free_port, gateway_config
import mqttwire as w

require_binary()
in_private_mount_namespace()

root = tmpdir()
procs = []


def policies(devices):
    write(os.path.join(devices, "sensor-01.toml"), """
[device]
id = "sensor-01"
mac = "02:00:00:00:01:01"
addresses = ["127.0.2.1"]
[device.mqtt]
client_id = "sensor-01"
[mqtt]
publish = ["devices/%c/telemetry/#"]
""")
    write(os.path.join(devices, "thermo-01.toml"), f"""
[device]
id = "thermo-01"
[device.mqtt]
client_id = "thermo-01"
username = "thermo"
password_hash = "{hash_password('s3cret-thermo')}"
[mqtt]
publish = ["devices/%c/telemetry/#"]
""")


def start(name, extra="", env=None):
    port = free_port()
    conf = os.path.join(root, f"{name}.toml")
    write(conf, gateway_config(root, broker, pki, port=port, devices=devices, extra=extra))
    os.makedirs(os.path.join(root, name), exist_ok=True)
    notify = NotifySocket(os.path.join(root, name))
    d = Daemon(["--config", conf],
               env=w.measurable_env(dict(os.environ, NOTIFY_SOCKET=notify.path, **(env or {}))))
    procs.append(d)
    check(wait_ready(notify, port, 15), f"{name}: iotgwd ready")
    return d, port, notify


def publish_as_sensor(port, topic, payload):
    """The enrolled sensor connects (identified by its address) and publishes at QoS 1."""
    c = w.Client(port, source="127.0.2.1", timeout=10)
    try:
        code = c.connack(w.connect("sensor-01"))
        if code != 0:
            return f"CONNACK {code}"
        c.send(w.publish(topic, payload, qos=1, packet_id=7))
        p = c.read_packet()
        return "ok" if p is not None and p[0] == 0x40 else f"no PUBACK ({p})"
    except OSError as e:
        return f"error {e}"
    finally:
        c.close()


def flood_partial(port, claim, count_per_source=16, nsources=64):
    """Opens nsources x count connections, each sending a CONNECT header that claims `claim`
    bytes of body, then all of it but one byte. Returns (the sockets, how many iotgwd closed)."""
    sel = selectors.DefaultSelector()
    header = bytes([0x10]) + w.varint(claim)
    body = header + b"\x00\x04MQTT\x04\x02\x00\x3c" + b"x" * (claim - 11)
    pending = {}
    held = []
    for src in w.sources(nsources, "127.0.1"):
        for _ in range(count_per_source):
            s = socket.socket()
            s.bind((src, 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            pending[s] = memoryview(body)
            held.append(s)
            sel.register(s, selectors.EVENT_WRITE)
    closed = 0
    deadline = time.time() + 20
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=0.5):
            s = key.fileobj
            try:
                n = s.send(pending[s][:65536])
                pending[s] = pending[s][n:]
            except BlockingIOError:
                continue
            except OSError:
                closed += 1
                sel.unregister(s)
                del pending[s]
                held.remove(s)
                s.close()
                continue
            if not pending[s]:
                sel.unregister(s)
                del pending[s]
    sel.close()
    return held, closed


try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    devices = os.path.join(root, "devices.d")
    policies(devices)
    sub = Subscriber(broker, "devices/#", root)

    print("1. memory held by half-sent CONNECTs (default limits)")
    for claim, label in ((262140, "claiming 262,140 bytes"), (8000, "claiming 8,000 bytes")):
        # A fresh daemon for each: memory freed after one flood would hide the next one's growth.
        d, port, notify = start(f"defaults-{claim}")
        sampler = w.RssSampler(d.proc.pid)
        t0 = time.time()
        result = {}

        def legit():
            time.sleep(1.0)  # the flood is under way
            result["pub"] = publish_as_sensor(port, "devices/sensor-01/telemetry/during",
                                              f"during {label}")

        t = threading.Thread(target=legit)
        t.start()
        held, closed = flood_partial(port, claim)
        t.join()
        time.sleep(1.0)  # held, as the attacker keeps the connections open
        grown = sampler.stop()
        for s in held:
            s.setblocking(False)
            try:
                closed += s.recv(1) == b""
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
            s.close()
        print(f"  flood {label}: {closed} of 1024 connections closed by iotgwd, "
              f"RSS +{grown / 1024:.1f} MiB (peak), {time.time() - t0:.1f} s")
        if claim < 262140:
            # 1,024 x 8,000 bytes is twice limits.max_unauthenticated_bytes: the slowest go.
            check(0 < closed < 1024, f"{label}: the budget for unauthenticated bytes closed some "
                                     f"({closed}) of the slow senders")
        check(grown < 32 * 1024, f"{label}: iotgwd's memory grew by {grown / 1024:.1f} MiB (< 32 MiB)")
        check(result.get("pub") == "ok", f"{label}: the enrolled sensor connected and published "
                                         f"during the flood ({result.get('pub')})")
        check(sub.wait_for(f"devices/sensor-01/telemetry/during during {label}", 5),
              f"{label}: its reading reached the broker")
        check(d.alive(), f"{label}: iotgwd is still running")
        d.stop()

    print("2. password hashing during 400 wrong logins from 80 sources")
    # A high lockout threshold: the attacker spreads guesses so that no lockout ever fires, and
    # the hashing itself is what is measured here (lockouts have their own attack test).
    d, port, notify = start("hashing", extra="""
[limits]
auth_failures_before_lockout = 1000
""", env={"WATCHDOG_USEC": "1000000"})
    device = w.Client(port, source="127.0.2.1", timeout=120)
    check(device.connack(w.connect("sensor-01")) == 0, "the sensor is connected")

    def thermo_login():
        """The thermostat logs in with its password; returns (CONNACK code, seconds)."""
        c = w.Client(port, source="127.0.2.2", timeout=30)
        t = time.monotonic()
        code = c.connack(w.connect("thermo-01", "thermo", "s3cret-thermo"))
        c.close()
        return code, time.monotonic() - t

    check(thermo_login()[0] == 0, "the thermostat has logged in before (from its usual address)")
    stop = threading.Event()
    rtts = []
    dogs = []

    def pinger():
        while not stop.is_set():
            r = device.ping_rtt()
            rtts.append(r if r is not None else 99.0)
            time.sleep(0.05)

    def watchdog():
        notify.sock.settimeout(0.1)
        while not stop.is_set():
            try:
                msg = notify.sock.recv(4096).decode()
            except socket.timeout:
                continue
            if "WATCHDOG=1" in msg:
                dogs.append(time.monotonic())

    threads = [threading.Thread(target=pinger), threading.Thread(target=watchdog)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    t0 = time.monotonic()
    sel = selectors.DefaultSelector()
    wrong = w.connect("thermo-01", "thermo", "not-the-password")
    conns = []
    for src in w.sources(80, "127.0.3"):
        for _ in range(5):
            s = socket.socket()
            s.bind((src, 0))
            s.connect(("127.0.0.1", port))
            s.sendall(wrong)
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ)
            conns.append(s)
    during = {}
    relogin = threading.Thread(target=lambda: during.update(r=thermo_login()))
    relogin.start()
    codes = {}
    left = len(conns)
    while left and time.monotonic() - t0 < 90:
        for key, _ in sel.select(timeout=1):
            s = key.fileobj
            try:
                data = s.recv(16)
            except OSError:
                data = b""
            code = data[3] if len(data) >= 4 and data[0] == 0x20 else None
            codes[code] = codes.get(code, 0) + 1
            sel.unregister(s)
            s.close()
            left -= 1
    flood_time = time.monotonic() - t0
    relogin.join()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    sel.close()
    gaps = [b - a for a, b in zip(dogs, dogs[1:])]
    worst_rtt = max(rtts) if rtts else 99.0
    worst_gap = max(gaps) if gaps else 99.0
    print(f"  400 CONNECTs answered in {flood_time:.1f} s, CONNACK codes {codes}; "
          f"PINGREQ round trip max {worst_rtt * 1000:.1f} ms over {len(rtts)} pings; "
          f"WATCHDOG=1 gap max {worst_gap:.2f} s over {len(dogs)} notifications")
    check(left == 0, f"every flooding connection was answered ({left} left)")
    code, took = during.get("r", (None, 99.0))
    print(f"  the thermostat's login during the flood: CONNACK {code} after {took:.2f} s")
    check(code == 0 and took < 2.0, "the thermostat logs in during the flood, within 2 s")
    check(worst_rtt < 0.1, f"the connected device's PINGREQ round trip stayed under 100 ms "
                           f"({worst_rtt * 1000:.1f} ms)")
    if WITH_SYSTEMD:  # without systemd (OpenWrt's build) there is no watchdog to feed
        check(len(dogs) >= 4 and worst_gap < 1.0,
              f"WATCHDOG=1 kept arriving every 0.5 s (largest gap {worst_gap:.2f} s)")
    device.close()

    print("3. the username oracle")
    samples = {"known": [], "unknown": []}
    answers = {"known": set(), "unknown": set()}
    for i in range(6):
        for kind, user in (("known", "thermo"), ("unknown", f"nobody-{i}")):
            c = w.Client(port, source=f"127.0.5.{i * 2 + (kind == 'unknown') + 1}")
            t = time.monotonic()
            answers[kind].add(c.connack(w.connect("thermo-01", user, "wrong")))
            samples[kind].append(time.monotonic() - t)
            c.close()
    known_ms = statistics.median(samples["known"]) * 1000
    unknown_ms = statistics.median(samples["unknown"]) * 1000
    print(f"  known username, wrong password: CONNACK {answers['known']}, median {known_ms:.1f} ms; "
          f"unknown username: CONNACK {answers['unknown']}, median {unknown_ms:.1f} ms")
    check(len(answers["known"]) == 1 and answers["known"] == answers["unknown"],
          "a known and an unknown username get the same answer")
    check(answers["known"] == {4}, "that answer is 'bad user name or password' (0x04)")
    d.stop()
finally:
    if "sub" in dir():
        sub.stop()
    for p in procs:
        p.stop()
    if "broker" in dir():
        broker.stop()
    cleanup(root)
finish()
