#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""A device that makes up client ids, against the real iotgwd and a real mosquitto: each new id
would be an upstream session at the broker (and, with clean session 0, one the broker keeps and
queues for). At once it gets at most mqtt.max_clients (4) connections; over time at most 16
persistent client ids; past either it is refused with return code 3 and a rate-limited event,
and the broker's client count stays bounded."""
import os

from iotgw_testlib import (Daemon, NotifySocket, check, cleanup, finish, hash_password,
                           in_private_mount_namespace, require_binary, tmpdir, wait_ready, write)
from mqttlab import Broker, Pki, free_port, gateway_config
import mqttwire as w

require_binary()
in_private_mount_namespace()

root = tmpdir()
broker = d = None
try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, port=port, extra='[events]\ntarget = "stderr"\n'))
    write(os.path.join(root, "devices.d", "cam-01.toml"), f"""
[device]
id = "cam-01"
[device.mqtt]
username = "cam"
password_hash = "{hash_password('pw')}"
[mqtt]
publish = ["devices/%d/#"]
""")
    notify = NotifySocket(root)
    events = os.path.join(root, "events")
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path), stderr=open(events, "w"))
    check(wait_ready(notify, port), "iotgwd ready")

    print("1. many connections at once, each with a new client id")
    held, codes = [], []
    for i in range(20):
        c = w.Client(port)
        codes.append(c.connack(w.connect(f"made-up-{i}", "cam", "pw")))
        held.append(c)
    print(f"   CONNACK codes: {codes}")
    check(codes.count(0) == 4 and codes.count(3) == 16, "4 accepted (max_clients), 16 refused with 3")
    for c in held:
        c.close()

    print("2. persistent sessions under ever new client ids, one at a time")
    codes = []
    for i in range(40):
        c = w.Client(port)
        codes.append(c.connack(w.connect(f"persist-{i}", "cam", "pw", clean=False)))
        c.send(w.DISCONNECT)
        c.close()
    print(f"   CONNACK codes: {codes}")
    check(codes[:16] == [0] * 16 and set(codes[16:]) == {3},
          "16 persistent client ids taken, every further one refused with 3")
    said = [x for x in open(events) if "mqtt.max_clients" in x]
    check(len(said) >= 2, f"the refusals are rate-limited events naming mqtt.max_clients ({len(said)})")
    c = w.Client(port)
    check(c.connack(w.connect("persist-3", "cam", "pw", clean=False)) == 0,
          "a persistent client id it holds already still comes back")
    c.close()
    check(d.alive(), "iotgwd is still running")
finally:
    if d and d.alive():
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
