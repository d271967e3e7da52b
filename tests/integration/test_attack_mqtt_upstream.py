#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attacks from the broker's side, against the real iotgwd:

1. a broker that completes TLS and CONNACK and then never reads: a device publishes 16 KB QoS 0
   messages as fast as it can (no rate limit in its policy). iotgwd holds a bounded number of
   bytes (limits.max_queued_bytes), stops reading the device (flow control), says the broker is
   not reading (an upstream-unavailable event), and lets the device go on once the broker reads
   again; its memory stays bounded throughout.
2. a hostile (real mosquitto) broker sends the device a 65,000-byte topic and a retained message
   to a device whose policy has no retain: the device never sees the long topic, and gets the
   message without the retain flag."""
import os
import socket
import ssl
import subprocess
import threading
import time

from iotgw_testlib import (Daemon, NotifySocket, check, cleanup, finish, in_private_mount_namespace,
                           require_binary, tmpdir, wait_ready, write)
from mqttlab import Broker, Pki, free_port, gateway_config
import mqttwire as w

UPSTREAM_UNAVAILABLE_ID = "736e815b77c64f94948555a9570be238"

require_binary()
in_private_mount_namespace()

root = tmpdir()
procs = []
broker = None


class SilentBroker:
    """A TLS server that accepts iotgwd's client certificate, answers its CONNECT with a CONNACK
    and then reads nothing until resume()."""

    def __init__(self, pki):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(*pki.server)
        self.ctx.load_verify_locations(pki.ca)
        self.ctx.verify_mode = ssl.CERT_REQUIRED
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.reading = threading.Event()
        self.stop = threading.Event()
        self.received = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.5)
        while not self.stop.is_set():
            try:
                raw, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            conn = self.ctx.wrap_socket(raw, server_side=True)
            conn.recv(4096)  # CONNECT
            conn.sendall(b"\x20\x02\x00\x00")
            self.reading.wait()
            conn.settimeout(0.5)
            while not self.stop.is_set():
                try:
                    data = conn.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    return
                self.received += len(data)
        except (OSError, ssl.SSLError):
            return


def start(name, broker_port, devices_dir):
    port = free_port()
    conf = os.path.join(root, f"{name}.toml")
    text = gateway_config(root, broker, pki, port=port, devices=devices_dir, extra="""
[events]
target = "stderr"
burst = 100
""").replace(f"port = {broker.port}", f"port = {broker_port}")
    write(conf, text)
    os.makedirs(os.path.join(root, name), exist_ok=True)
    notify = NotifySocket(os.path.join(root, name))
    events = os.path.join(root, f"{name}.events")
    d = Daemon(["--config", conf], env=w.measurable_env(dict(os.environ, NOTIFY_SOCKET=notify.path)),
               stderr=open(events, "w"))
    procs.append(d)
    check(wait_ready(notify, port, 15), f"{name}: iotgwd ready")
    return d, port, events


try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    devices = os.path.join(root, "devices.d")
    write(os.path.join(devices, "flood-01.toml"), """
[device]
id = "flood-01"
mac = "02:00:00:00:0f:01"
addresses = ["127.0.15.1"]
[device.mqtt]
client_id = "flood-01"
[mqtt]
publish = ["devices/%c/telemetry/#"]
subscribe = ["devices/%c/cmd/#"]
max_payload_bytes = 65536
""")

    print("1. a broker that stops reading")
    silent = SilentBroker(pki)
    d, port, events = start("silent", silent.port, devices)
    base = w.rss_kib(d.proc.pid)
    c = w.Client(port, source="127.0.15.1", timeout=10)
    check(c.connack(w.connect("flood-01")) == 0, "the device is connected")
    time.sleep(0.5)
    message = w.publish("devices/flood-01/telemetry/bulk", b"z" * 16384)
    c.sock.settimeout(0.2)
    sent = 0
    blocked_since = None
    peak = base
    t0 = time.monotonic()
    while time.monotonic() - t0 < 8:
        try:
            c.sock.sendall(message)
            sent += 1
            blocked_since = None
        except socket.timeout:
            blocked_since = blocked_since or time.monotonic()
        peak = max(peak, w.rss_kib(d.proc.pid))
    held_back = blocked_since is not None and time.monotonic() - blocked_since > 2
    grown = peak - base
    print(f"   {sent} messages of 16 KB taken from the device in 8 s; iotgwd RSS +{grown / 1024:.1f} "
          f"MiB at its peak; the device {'was' if held_back else 'was not'} held back")
    check(grown < 32 * 1024, f"iotgwd's memory stayed bounded (+{grown / 1024:.1f} MiB)")
    check(held_back, "the device was no longer read once the broker's bytes were at their bound")
    time.sleep(0.3)
    said = [x for x in open(events) if UPSTREAM_UNAVAILABLE_ID in x and "not reading" in x]
    check(len(said) == 1, f"one upstream-unavailable event says the broker is not reading ({len(said)})")
    silent.reading.set()  # the broker reads again
    resumed = 0
    t1 = time.monotonic()
    while time.monotonic() - t1 < 5 and resumed < 20:
        try:
            c.sock.sendall(message)
            resumed += 1
        except socket.timeout:
            pass
    print(f"   the broker read {silent.received} bytes once it read again")
    check(resumed >= 20, f"once the broker reads again the device is read again ({resumed})")
    time.sleep(1.0)
    after = w.rss_kib(d.proc.pid)
    print(f"   after the queue drained: RSS +{(after - base) / 1024:.1f} MiB over the start")
    check(after - base < 16 * 1024, "and the memory is back")
    c.close()
    d.stop()
    silent.stop.set()

    print("2. odd packets from a hostile broker")
    long_topic = "devices/flood-01/cmd/" + "x" * 65000

    def at_broker(topic, message, *extra):
        subprocess.run(["mosquitto_pub", *broker.tls_args(), "-t", topic, "-m", message, *extra],
                       check=True, capture_output=True, timeout=10)

    # Retained before the device subscribes: the broker hands it over with the retain flag.
    at_broker("devices/flood-01/cmd/mode", "retained", "-r")
    d, port, events = start("hostile", broker.port, devices)
    c = w.Client(port, source="127.0.15.1", timeout=10)
    check(c.connack(w.connect("flood-01")) == 0, "the device is connected")
    c.send(w.subscribe(1, ["devices/flood-01/cmd/#"], qos=0))
    check(c.read_packet()[0] == 0x90, "and subscribed")
    time.sleep(0.5)
    at_broker(long_topic, "long")
    at_broker("devices/flood-01/cmd/ok", "plain")
    got = []
    c.sock.settimeout(3)
    while True:
        p = c.read_packet()
        if p is None:
            break
        if p[0] & 0xF0 == 0x30:
            tlen = int.from_bytes(p[1][:2], "big")
            got.append((p[0], p[1][2:2 + tlen].decode(errors="replace"), p[1][2 + tlen:]))
        if any(t.endswith("/ok") for _, t, _ in got):
            break
    topics = [t for _, t, _ in got]
    print(f"   the device received {[(hex(h), t[:40], len(t)) for h, t, _ in got]}")
    check(long_topic not in topics, "the 65,000-byte topic never reached the device")
    retained = [h for h, t, _ in got if t.endswith("/mode")]
    check(retained and all(h & 1 == 0 for h in retained),
          "the retained message arrived without the retain flag (its policy has no retain)")
    check(any(t.endswith("/ok") for t in topics), "an ordinary message still arrives")
    c.close()
    check(d.alive(), "iotgwd is still running")
finally:
    for p in procs:
        p.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
