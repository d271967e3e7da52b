#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""A device floods its outbox while the broker is away: an MQTT 5.0 client sends 300 QoS 1
messages of 2 KiB (600 KiB) with [store] max_bytes_per_device = 64 KiB. What it may store is
bounded: the outbox file stays within its bound, every message past it is answered "quota
exceeded" (0x97) and reported, iotgwd keeps running, and another device's messages are still
stored and acknowledged (the flood took its own share of the disk budget, not the others')."""
import os

from iotgw_testlib import (Daemon, NotifySocket, check, cleanup, finish, hash_password,
                           require_binary, tmpdir, wait_ready, write)
from mqttlab import Broker, Pki, free_port, gateway_config
import mqttwire as w

require_binary()

PASSWORD = "s3cret"
BOUND = 64 * 1024


def flood(port, user, count, size):
    """{reason code: how many PUBACKs} for `count` QoS 1 PUBLISHes sent at once."""
    c = w.Client(port, timeout=3.0)
    check(c.connack(w.connect(f"{user}-c", user, PASSWORD, version=5)) == 0, f"{user} logs in")
    for i in range(1, count + 1):
        c.send(w.publish(f"devices/{user}/r", "x" * size, qos=1, packet_id=i, version=5))
    codes = {}
    while True:
        p = c.read_packet()
        if p is None:
            break
        if p[0] >> 4 == 4:
            code = p[1][2] if len(p[1]) > 2 else 0
            codes[code] = codes.get(code, 0) + 1
    c.close()
    return codes


root = tmpdir()
broker = d = None
try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, port=port, extra=f"""
[events]
target = "stderr"
burst = 1000
[store]
max_bytes_per_device = {BOUND}
max_bytes = {4 * BOUND}
"""))
    for name in ("flood-01", "calm-01"):
        write(os.path.join(root, "devices.d", f"{name}.toml"), f"""[device]
id = "{name}"
[device.mqtt]
username = "{name}"
password_hash = "{hash_password(PASSWORD)}"
[mqtt]
publish = ["devices/%d/#"]
max_payload_bytes = 4096
""")
    notify = NotifySocket(root)
    events = os.path.join(root, "events")
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path), stderr=open(events, "w"))
    check(wait_ready(notify, port), "iotgwd ready")
    broker.stop()
    flood(port, "flood-01", 1, 10)  # the device's upstream learns of the outage
    codes = flood(port, "flood-01", 300, 2048)
    stored, refused = codes.get(0, 0), codes.get(0x97, 0)
    print(f"  PUBACKs: {codes}")
    check(stored + refused == 300, f"every message answered ({stored} stored, {refused} refused)")
    check(0 < stored <= BOUND // 2048, f"no more stored than the bound takes ({stored} of at most {BOUND // 2048})")
    size = os.path.getsize(os.path.join(root, "state", "outbox", "flood-01.queue"))
    check(size <= BOUND + 4096, f"the outbox file stays within its bound ({size} bytes, bound {BOUND})")
    full = [x for x in open(events) if "IOTGW_EVENT=outbox-full" in x and "flood-01" in x]
    check(len(full) == refused, f"each refusal reported ({len(full)} of {refused})")
    calm = flood(port, "calm-01", 3, 100)
    check(calm == {0: 3}, f"another device's messages are still stored and acknowledged ({calm})")
    check(d.alive(), "iotgwd still runs")
finally:
    if d:
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
