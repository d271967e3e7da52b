#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""A connected device tries to make iotgwd (and the broker behind it) hold without bound what it
asks for, with the default limits, against the real iotgwd and a real mosquitto:

1. 20,000 distinct filters inside its own allowed subtree, 100 per SUBSCRIBE (3.1.1), then the
   same with 5.0: past limits.max_subscriptions_per_session (and max_filters_per_subscribe in one
   packet) each filter is refused with the failure code (0x80, 5.0: 0x97), never reaches the
   broker, and neither iotgwd's nor the broker's memory grows with the count.
2. QoS 2 messages that policy drops, never released (no PUBREL): the flows it may leave open are
   bounded by the receive maximum; past it the session is closed as a protocol violation.
3. a device reconnecting in a loop while the broker never answers: the upstream connections its
   closed sessions leave draining are bounded per device."""
import os
import socket
import time

from iotgw_testlib import (Daemon, NotifySocket, check, cleanup, finish, in_private_mount_namespace,
                           require_binary, tmpdir, wait_ready, write)
from mqttlab import Broker, Pki, free_port, gateway_config
import mqttwire as w

require_binary()
in_private_mount_namespace()

root = tmpdir()
d = None
broker = None
try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    port = free_port()
    devices = os.path.join(root, "devices.d")
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, port=port, devices=devices))
    for n, name in enumerate(("dev-s", "dev-t", "dev-q")):
        write(os.path.join(devices, f"{name}.toml"), f"""
[device]
id = "{name}"
mac = "02:00:00:00:0e:0{n + 1}"
addresses = ["127.0.14.{n + 1}"]
[device.mqtt]
client_id = "{name}"
[mqtt]
publish = ["devices/%c/telemetry/#"]
subscribe = ["devices/%c/cmd/#"]
max_qos = 2
""")
    notify = NotifySocket(root)
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path))
    check(wait_ready(notify, port), "iotgwd ready")

    print("1. subscriptions per session")
    for name, version, failure in (("dev-s", 4, 0x80), ("dev-t", 5, 0x97)):
        c = w.Client(port, source=f"127.0.14.{1 if name == 'dev-s' else 2}", timeout=30)
        check(c.connack(w.connect(name, version=version)) == 0, f"{name} connects (MQTT {version})")
        time.sleep(0.5)  # its upstream session is up: what grows from here is the subscriptions'
        base_gw = w.rss_kib(d.proc.pid)
        base_broker = w.rss_kib(broker.proc.pid)
        codes = []
        for k in range(200):
            filters = [f"devices/{name}/cmd/{k}/{i}" for i in range(100)]
            c.send(w.subscribe(k + 1, filters, qos=1, version=version))
            p = c.read_packet()
            if p is None or p[0] != 0x90:
                break
            codes += list(p[1][3:] if version == 5 else p[1][2:])
        granted = sum(1 for x in codes if x < 0x80)
        refused = sum(1 for x in codes if x == failure)
        time.sleep(1.0)
        grown_gw = w.rss_kib(d.proc.pid) - base_gw
        grown_broker = w.rss_kib(broker.proc.pid) - base_broker
        print(f"   {name}: {len(codes)} filters answered, {granted} granted, {refused} refused with "
              f"0x{failure:02x}; iotgwd +{grown_gw / 1024:.1f} MiB, broker +{grown_broker / 1024:.1f} MiB")
        check(len(codes) == 20000, "every filter was answered")
        check(0 < granted <= 1000, f"only a bounded number of filters is granted ({granted})")
        check(refused == 20000 - granted, f"the rest are refused with 0x{failure:02x}")
        check(grown_broker < 4 * 1024, f"the broker's memory did not grow with them "
                                       f"(+{grown_broker / 1024:.1f} MiB)")
        # iotgwd's own figure is printed, not asserted: it keeps only the granted filters (the
        # counts above say how many), and a sanitizer build's allocator makes its RSS noisy.
        c.close()

    print("2. QoS 2 flows left open")
    c = w.Client(port, source="127.0.14.3", timeout=10)
    check(c.connack(w.connect("dev-q")) == 0, "dev-q connects (MQTT 3.1.1)")
    pubrecs = 0
    closed = False
    for i in range(1000):
        try:
            # Outside its publish list: dropped by policy, acknowledged with PUBREC, never released.
            c.send(w.publish("devices/dev-q/elsewhere", "x", qos=2, packet_id=i + 1))
        except OSError:
            closed = True
            break
        p = c.read_packet()
        if p is None:
            closed = True
            break
        pubrecs += p[0] == 0x50
    print(f"   PUBREC for {pubrecs} unreleased QoS 2 messages, then "
          f"{'the session was closed' if closed else 'still open'}")
    check(closed and pubrecs <= 100, "the open QoS 2 flows are bounded and the session closed past them")
    c.close()
    check(d.alive(), "iotgwd is still running")
    d.stop()

    print("3. a reconnect storm while the broker does not answer")
    # A broker that accepts connections and never says a word: each upstream stays half open.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(1024)
    conf2 = os.path.join(root, "blackhole.toml")
    write(conf2, gateway_config(root, broker, pki, port=port, devices=devices).replace(
        f"port = {broker.port}", f"port = {hole.getsockname()[1]}"))
    os.makedirs(os.path.join(root, "second"), exist_ok=True)
    notify2 = NotifySocket(os.path.join(root, "second"))
    d = Daemon(["--config", conf2], env=dict(os.environ, NOTIFY_SOCKET=notify2.path))
    check(wait_ready(notify2, port), "iotgwd ready, its broker a black hole")
    base_fds = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
    for i in range(200):
        c = w.Client(port, source="127.0.14.1", timeout=5)
        c.connack(w.connect("dev-s"))
        c.send(w.publish("devices/dev-s/telemetry/t", "x", qos=0))
        c.close()
    time.sleep(0.5)
    held = len(os.listdir(f"/proc/{d.proc.pid}/fd")) - base_fds
    print(f"   after 200 reconnects: iotgwd holds {held} more descriptors")
    check(held <= 16, f"the upstreams a reconnecting device leaves behind are bounded ({held})")
    check(d.alive(), "iotgwd is still running")
    d.stop()

    print("4. many devices reconnecting while the broker does not answer")
    # limits.max_connections = 64: at most 16 closed sessions' upstreams wait, all devices together.
    conf3 = os.path.join(root, "blackhole-small.toml")
    write(conf3, open(conf2).read() + "[limits]\nmax_connections = 64\nmax_connections_per_source = 8\n"
          "[events]\ntarget = \"stderr\"\nburst = 100\n")
    for n in range(10):
        write(os.path.join(devices, f"churn-{n}.toml"), f"""
[device]
id = "churn-{n}"
mac = "02:00:00:00:0c:{n:02x}"
addresses = ["127.0.16.{n + 1}"]
[device.mqtt]
client_id = "churn-{n}"
[mqtt]
publish = ["devices/%c/telemetry/#"]
""")
    os.makedirs(os.path.join(root, "third"), exist_ok=True)
    notify3 = NotifySocket(os.path.join(root, "third"))
    events = os.path.join(root, "third", "events")
    d = Daemon(["--config", conf3], env=dict(os.environ, NOTIFY_SOCKET=notify3.path),
               stderr=open(events, "w"))
    check(wait_ready(notify3, port), "iotgwd ready, its broker a black hole, 64 connections")
    base_fds = len(os.listdir(f"/proc/{d.proc.pid}/fd"))
    accepted = 0
    for i in range(20):
        for n in range(10):
            c = w.Client(port, source=f"127.0.16.{n + 1}", timeout=5)
            accepted += c.connack(w.connect(f"churn-{n}")) == 0
            c.send(w.publish(f"devices/churn-{n}/telemetry/t", "x", qos=0)) # to deliver, first
            c.close()
    check(accepted == 200, f"each of the 200 logins was accepted ({accepted})")
    time.sleep(0.5)
    held = len(os.listdir(f"/proc/{d.proc.pid}/fd")) - base_fds
    given_up = [x for x in open(events) if "upstream.draining" in x]
    print(f"   after 200 reconnects of 10 devices: {held} more descriptors; "
          f"{len(given_up)} event(s) about upstreams given up")
    check(held <= 16 * 3 + 8, f"the closed sessions' upstreams are bounded in total ({held})")
    check(len(given_up) >= 1, "and giving them up is said in an event")
    check(d.alive(), "iotgwd is still running")
    hole.close()
finally:
    if d:
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
