#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack: MQTT 3.1 ("MQIsdp", level 3) as a way around the login defences, against the real
iotgwd with a real mosquitto upstream. The 3.1 name is read after the pre-login bounds, so it
must cost nothing more and open nothing more than 3.1.1:

1. a 3.1 CONNECT header announcing more than limits.max_connect_bytes is refused from its header
   (the connection closed, no CONNACK), as for 3.1.1;
2. client identifiers beyond 3.1's 23 bytes are refused with return code 2, and one of 60 KB is
   cut off by the pre-login bound before it is read;
3. a universal default credential over 3.1 is refused (return code 5, a default-credential event);
4. wrong passwords over 3.1 lock the source out after the usual five, and the lockout holds for
   3.1.1 from that source too (and the other way round: a 3.1.1 lockout holds for 3.1);
5. the enrolled 3.1 device still logs in from its own address (a user name locked out by guesses
   from elsewhere is not locked out for the device itself)."""
import os
import socket

from iotgw_testlib import Daemon, NotifySocket, check, cleanup, finish, hash_password, require_binary, tmpdir, wait_ready, write
from mqttlab import Broker, Pki, free_port, gateway_config
import mqttwire as w

require_binary()

root = tmpdir()
broker = d = None
try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, port=port, extra='[events]\ntarget = "stderr"\n'))
    write(os.path.join(root, "devices.d", "plug-31.toml"), f"""
[device]
id = "plug-31"
mac = "02:00:00:00:00:31"
addresses = ["127.0.0.1"]
[device.mqtt]
client_id = "plug-31"
username = "plug"
password_hash = "{hash_password('s3cret')}"
[mqtt]
publish = ["plug/state"]
""")
    notify = NotifySocket(root)
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path))
    check(wait_ready(notify, port), "iotgwd ready")

    print("1. a 3.1 CONNECT header beyond the pre-login bound")
    c = w.Client(port, source="127.0.2.1")
    c.send(bytes([0x10]) + w.varint(262_140) + w.utf8("MQIsdp") + bytes([3]))
    try:
        answer = c.sock.recv(16)
    except (ConnectionResetError, socket.timeout):
        answer = b""
    check(answer == b"", f"closed without a CONNACK: {answer!r}")

    print("2. client identifiers beyond 23 bytes")
    codes = []
    for n in (24, 1000, 60_000):
        c = w.Client(port, source="127.0.2.2")
        codes.append(c.connack(w.connect("x" * n, version=3)))
        c.sock.close()
    check(codes[:2] == [2, 2], f"identifier rejected (2) for 24 and 1,000 bytes: {codes[:2]}")
    check(codes[2] is None, f"60 KB: closed by the pre-login bound, no CONNACK: {codes[2]}")

    print("3. a universal default credential over 3.1")
    c = w.Client(port, source="127.0.2.3")
    code = c.connack(w.connect("cam", "root", "xc3511", version=3))
    check(code == 5, f"refused, not authorized: {code}")

    print("4. password guesses over 3.1 lock the source out, for every version")
    guesses = []
    for i in range(5):
        c = w.Client(port, source="127.0.2.4")
        guesses.append(c.connack(w.connect("plug-31", "plug", f"guess-{i}", version=3)))
        c.sock.close()
    check(guesses == [4] * 5, f"five wrong passwords: bad user name or password (4): {guesses}")
    c = w.Client(port, source="127.0.2.4")
    right = c.connack(w.connect("plug-31", "plug", "s3cret", version=4))
    check(right not in (0, None), f"then even the right password over 3.1.1 is refused: {right}")
    for i in range(5):
        c = w.Client(port, source="127.0.2.5")
        c.connack(w.connect("plug-31", "plug", f"guess-{i}", version=4))
        c.sock.close()
    c = w.Client(port, source="127.0.2.5")
    right = c.connack(w.connect("plug-31", "plug", "s3cret", version=3))
    check(right not in (0, None), f"and a 3.1.1 lockout holds for 3.1: {right}")

    print("5. the enrolled 3.1 device from its own address")
    c = w.Client(port, source="127.0.0.1")
    check(c.connack(w.connect("plug-31", "plug", "s3cret", version=3)) == 0, "logs in")
    check(d.alive(), "iotgwd still runs")
finally:
    if d and d.alive():
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
