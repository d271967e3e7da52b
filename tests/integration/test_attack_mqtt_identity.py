#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attacks on identity and lockout, against the real iotgwd and a real mosquitto:

1. %c chosen by the client: a policy scoping topics by %c without a pinned client id is refused
   at load; a device identified by its address that calls itself `dev-b` does not reach
   `dev-b`'s topics.
2. %u chosen by the client: a device that logged in with its certificate and sends the CONNECT
   user name `dev-b` does not publish into `dev-b`'s namespace.
3. lockout erased by success: 40 wrong guesses at one device's password, interleaved with valid
   logins of another device from the same source, lock the source out (with its event); the real
   password is then refused until the lockout ends, and accepted after it.
4. guesses spread over many sources lock the user name out, except from the device's own
   enrolled address."""
import os
import socket
import ssl
import subprocess
import time

from iotgw_testlib import (IOTGWD, Daemon, NotifySocket, check, cleanup, finish, hash_password,
                           in_private_mount_namespace, require_binary, tmpdir, wait_ready, write)
from mqttlab import Broker, Pki, Subscriber, free_port, gateway_config
import mqttwire as w

LOCKOUT_ID = "9d9b5baf7fbc450a881b61e69d96c096"

require_binary()
in_private_mount_namespace()

root = tmpdir()
d = None
broker = None
sub = None
try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    sub = Subscriber(broker, "#", root)
    devices = os.path.join(root, "devices.d")
    port = free_port()
    tls_port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, port=port, tls_port=tls_port, devices=devices,
                               extra="""
[limits]
auth_lockout_seconds = 3
[events]
target = "stderr"
burst = 1000
"""))
    hashes = {name: hash_password(f"pw-{name}") for name in ("dev-b", "dev-c", "dev-x", "dev-y",
                                                             "dev-w", "dev-z")}

    def login_device(name, extra=""):
        write(os.path.join(devices, f"{name}.toml"), f"""
[device]
id = "{name}"
{extra}
[device.mqtt]
client_id = "{name}"
username = "{name}"
password_hash = "{hashes[name]}"
[mqtt]
publish = ["devices/%c/telemetry/#", "users/%u/#"]
""")

    login_device("dev-b")
    for name in ("dev-x", "dev-y", "dev-w"):
        login_device(name)
    login_device("dev-z", 'mac = "02:00:00:00:0a:01"\naddresses = ["127.0.10.1"]')
    # dev-c logs in with its certificate (and has a login of its own too).
    dev_c_cert = pki.leaf("dev-c", "dev-c")
    write(os.path.join(devices, "dev-c.toml"), f"""
[device]
id = "dev-c"
[device.certificate]
common_name = "dev-c"
[device.mqtt]
username = "dev-c"
password_hash = "{hashes['dev-c']}"
[mqtt]
publish = ["users/%u/#"]
""")
    # dev-a is known by its address only and scopes its topics by %c, which it chooses itself.
    dev_a = os.path.join(devices, "dev-a.toml")
    write(dev_a, """
[device]
id = "dev-a"
mac = "02:00:00:00:08:01"
addresses = ["127.0.8.1"]
[mqtt]
publish = ["devices/%c/telemetry/#"]
subscribe = ["devices/%c/cmd/#"]
""")

    print("1. %c chosen by the client")
    r = subprocess.run([IOTGWD, "--config", conf, "--check-config"], capture_output=True, text=True)
    print("   " + (r.stdout + r.stderr).strip().replace("\n", "\n   "))
    check(r.returncode == 1 and "dev-a.toml" in r.stdout + r.stderr and "client_id" in r.stdout + r.stderr,
          "a policy using %c without a pinned device.mqtt.client_id is refused at load, naming the file")
    if r.returncode == 0:
        print("   (accepted: running the spoof against it)")
    else:
        # The same device with a scope it cannot choose: its device id.
        write(dev_a, open(dev_a).read().replace("%c", "%d"))
    notify = NotifySocket(root)
    events = os.path.join(root, "events.txt")
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path),
               stderr=open(events, "w"))
    check(wait_ready(notify, port), "iotgwd ready")

    c = w.Client(port, source="127.0.8.1")
    code = c.connack(w.connect("dev-b"))
    check(code == 0, f"dev-a connects (by its address) calling itself dev-b (CONNACK {code})")
    if code == 0:
        c.send(w.subscribe(1, ["devices/dev-b/cmd/#"], qos=1))
        p = c.read_packet()
        check(p is not None and p[0] == 0x90 and p[1][-1] == 0x80,
              f"its SUBSCRIBE to devices/dev-b/cmd/# is refused (SUBACK {p and p[1].hex()})")
        c.send(w.publish("devices/dev-b/telemetry/t", "spoofed-by-client-id", qos=1))
        c.read_packet()
    c.close()

    print("2. %u chosen by the client")
    tctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tctx.load_verify_locations(pki.ca)
    tctx.load_cert_chain(*dev_c_cert)
    raw = socket.create_connection(("127.0.0.1", tls_port), timeout=10)
    t = tctx.wrap_socket(raw, server_hostname="localhost")
    t.sendall(w.connect("dev-c-app", "dev-b", "whatever"))
    ack = t.recv(4)
    check(len(ack) == 4 and ack[3] == 0, f"dev-c logs in with its certificate ({ack.hex()})")
    t.sendall(w.publish("users/dev-b/state", "spoofed-by-user-name", qos=1))
    t.settimeout(5)
    try:
        t.recv(16)
    except OSError:
        pass
    t.close()

    time.sleep(1.0)
    lines = sub.lines()
    check(not any("spoofed-by-client-id" in x for x in lines),
          "the broker never sees dev-a's message in dev-b's namespace")
    check(not any("spoofed-by-user-name" in x for x in lines),
          "the broker never sees dev-c's message in dev-b's user-name namespace")

    print("3. lockout not erased by another device's valid logins")
    src = "127.0.9.1"

    def attempt(user, password, source=src):
        c = w.Client(port, source=source)
        code = c.connack(w.connect(user, user, password, version=5))
        c.close()
        return code

    codes = []
    for i in range(40):
        codes.append(attempt("dev-x", f"guess-{i}"))
        codes.append(attempt("dev-y", "pw-dev-y"))
    guesses = codes[0::2]
    locked_after = next((i for i, code in enumerate(guesses) if code == 0x8A), None)
    print(f"   wrong guesses answered: {guesses.count(0x86)} x 'bad user name or password', "
          f"{guesses.count(0x8A)} x 'banned'; first refusal as locked out at guess "
          f"{locked_after}; dev-y's valid logins accepted: {codes[1::2].count(0)} of 40")
    check(locked_after is not None and locked_after <= 5, "the source is locked out within 5 failures")
    time.sleep(0.2)
    check(any(f"MESSAGE_ID={LOCKOUT_ID}" in line and "127.0.9.1" in line for line in open(events)),
          "an authentication-lockout event is written, naming the source")
    check(attempt("dev-x", "pw-dev-x") == 0x8A, "dev-x's real password is refused during the lockout")
    time.sleep(3.5)
    check(attempt("dev-x", "pw-dev-x") == 0, "and accepted once the lockout has ended")

    print("4. guesses spread over many sources")
    spread = [attempt("dev-w", f"guess-{i}", source=f"127.0.12.{i + 1}") for i in range(6)]
    spread += [attempt("dev-z", f"guess-{i}", source=f"127.0.13.{i + 1}") for i in range(6)]
    print(f"   answers: {spread}")
    locked = attempt("dev-w", "pw-dev-w", source="127.0.12.100")
    print(f"   the right password from a new source: {locked}")
    check(locked == 0x8A,
          "dev-w's user name is locked out after guesses from six sources")
    check(attempt("dev-z", "pw-dev-z", source="127.0.10.1") == 0,
          "dev-z still logs in from its own enrolled address")
    check(d.alive(), "iotgwd is still running")
finally:
    if d:
        d.stop()
    if sub:
        sub.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
