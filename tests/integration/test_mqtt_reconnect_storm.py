#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Orderly reconnection after a broker restart (EN 303 645 5.9-3; TS 103 701 5.9-3-2, "protection
against simultaneous mass-reconnections"): 150 devices, each from its own address, connected
through iotgwd to a real mosquitto; the broker is stopped for a second and started again. With
[limits] upstream_reconnects_per_second = 25, iotgwd's upstream sessions come back at most a
second's worth at once and then 25 a second — counted at the broker as established TCP
connections from iotgwd, sampled every 50 ms — and every one of them does come back. The devices
stay connected throughout."""
import os
import socket
import subprocess
import time

from iotgw_testlib import Daemon, NotifySocket, check, cleanup, finish, require_binary, tmpdir, wait_ready, write
from mqttlab import Broker, Pki, free_port, gateway_config
import mqttwire as w

require_binary()

N = 150
RATE = 25


def source(i):
    return f"127.3.{i // 250}.{i % 250 + 1}"


def upstream_connections(port):
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


root = tmpdir()
broker = d = None
clients = []
try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    port = free_port()
    devices = os.path.join(root, "devices.d")
    for i in range(N):
        write(os.path.join(devices, f"plug-{i:03d}.toml"),
              f'[device]\nid = "plug-{i:03d}"\nmac = "02:00:03:00:{i >> 8:02x}:{i & 255:02x}"\n'
              f'addresses = ["{source(i)}"]\n[mqtt]\npublish = ["plugs/%d"]\n')
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, port=port, devices=devices, extra=f"""
[limits]
upstream_reconnects_per_second = {RATE}
max_connections = 1000
[events]
target = "stderr"
"""))
    notify = NotifySocket(root)
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path),
               stderr=open(os.path.join(root, "events"), "w"))
    check(wait_ready(notify, port), "iotgwd ready")
    for i in range(N):
        c = w.Client(port, source=source(i))
        code = c.connack(w.connect(f"plug-{i:03d}", keepalive=120))
        if code != 0:
            break
        clients.append(c)
    check(len(clients) == N, f"{N} devices connected ({len(clients)})")
    deadline = time.time() + 30
    while time.time() < deadline and upstream_connections(broker.port) < N:
        time.sleep(0.1)
    check(upstream_connections(broker.port) == N, f"each has its upstream session ({upstream_connections(broker.port)})")

    broker.stop()
    time.sleep(1.0)
    broker.start()
    t0 = time.monotonic()
    samples = []
    while time.monotonic() - t0 < 40:
        n = upstream_connections(broker.port)
        samples.append((time.monotonic() - t0, n))
        if n >= N:
            break
        time.sleep(0.05)
    back = samples[-1]
    check(back[1] == N, f"every upstream session came back ({back[1]} of {N}, {back[0]:.1f} s)")
    worst = 0
    for t, n in samples:
        later = [m for u, m in samples if t < u <= t + 1.0]
        if later:
            worst = max(worst, max(later) - n)
    check(worst <= 2 * RATE + 3, f"at most a burst and {RATE} a second came back in any second ({worst})")
    check(back[0] >= (N - 2 * RATE) / RATE * 0.8,
          f"so it took the time that rate asks ({back[0]:.1f} s for {N} at {RATE}/s)")
    alive = 0
    for c in clients:
        try:
            c.send(b"\xc0\x00")  # PINGREQ
            p = c.read_packet()
            alive += 1 if p and p[0] == 0xD0 else 0
        except OSError:
            pass
    check(alive == N, f"the devices stayed connected throughout ({alive} of {N} answer a ping)")
    check(d.alive(), "iotgwd still runs")
finally:
    for c in clients:
        c.close()
    if d:
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
