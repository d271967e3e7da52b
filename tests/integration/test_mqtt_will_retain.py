#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Wills and retained messages through the proxy, against a real TLS mosquitto: a device that
goes silent past 1.5 × its keepalive has its will published at the broker; a clean DISCONNECT
discards it; retained messages keep their flag in both directions; topics are mapped under the
policy's upstream prefix."""
import os
import socket
import subprocess
import time

from iotgw_testlib import Daemon, NotifySocket, check, cleanup, finish, hash_password, require_binary, tmpdir, write, wait_ready
from mqttlab import Broker, Pki, Subscriber, free_port, gateway_config, wait_port

require_binary()


def mqtt_string(s):
    b = s.encode()
    return len(b).to_bytes(2, "big") + b


def raw_connect(port, keepalive, will_topic, will_message):
    """A CONNECT with a will, from a raw socket that then goes silent."""
    flags = 0x80 | 0x40 | 0x04 | 0x02  # user name, password, will, clean session
    body = (mqtt_string("MQTT") + bytes([4, flags]) + keepalive.to_bytes(2, "big") + mqtt_string("thermo-01") +
            mqtt_string(will_topic) + mqtt_string(will_message) + mqtt_string("thermo") + mqtt_string("s3cret"))
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(bytes([0x10, len(body)]) + body)
    ack = s.recv(4)
    return s, ack


root = tmpdir()
broker = sub = d = None
try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, port=port, extra='[events]\ntarget = "stderr"\n'))
    write(os.path.join(root, "devices.d", "thermo-01.toml"), f"""
[device]
id = "thermo-01"
[device.mqtt]
username = "thermo"
password_hash = "{hash_password('s3cret')}"
[mqtt]
upstream_prefix = "site-a/%d/"
publish = ["status", "state"]
subscribe = ["cmd/#"]
retain = true
""")
    notify = NotifySocket(root)
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path), stderr=subprocess.DEVNULL)
    check(wait_ready(notify, port), "iotgwd ready")
    sub = Subscriber(broker, "site-a/#", root)

    print("will on keepalive expiry")
    s, ack = raw_connect(port, 2, "status", "offline-after-silence")
    check(ack == bytes([0x20, 2, 0, 0]), f"CONNACK accepted: {ack.hex()}")
    t0 = time.time()
    got = sub.wait_for("site-a/thermo-01/status offline-after-silence", timeout=8)
    elapsed = time.time() - t0
    check(got, "the will reaches the broker, under the device's prefix")
    check(2.9 <= elapsed <= 4.5, f"after 1.5 × keepalive (2 s): {elapsed:.1f} s")
    try:
        closed = s.recv(1) == b""
    except OSError:
        closed = True
    check(closed, "the silent connection was closed")
    s.close()

    print("clean DISCONNECT discards the will")
    s, ack = raw_connect(port, 30, "status", "must-not-appear")
    s.sendall(bytes([0xE0, 0x00]))
    time.sleep(1.5)
    s.close()
    check(not any("must-not-appear" in l for l in sub.lines()), "no will after DISCONNECT")

    print("retained messages")
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-i", "thermo-01", "-u", "thermo",
                        "-P", "s3cret", "-t", "state", "-m", "heating", "-r", "-q", "1"], capture_output=True, text=True, timeout=20)
    check(r.returncode == 0, "device publishes a retained state")
    late = subprocess.run(["mosquitto_sub", *broker.tls_args(), "-t", "site-a/thermo-01/state", "-C", "1", "-W", "5",
                           "-F", "%r %t %p"], capture_output=True, text=True, timeout=20)
    check(late.stdout.strip() == "1 site-a/thermo-01/state heating",
          f"a later subscriber at the broker gets it retained: {late.stdout.strip()!r}")
    subprocess.run(["mosquitto_pub", *broker.tls_args(), "-t", "site-a/thermo-01/cmd/mode", "-m", "eco", "-r", "-q", "1"],
                   check=True, timeout=20)
    got = subprocess.run(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-i", "thermo-01", "-u", "thermo",
                          "-P", "s3cret", "-t", "cmd/#", "-C", "1", "-W", "5", "-F", "%r %t %p"],
                         capture_output=True, text=True, timeout=20)
    check(got.stdout.strip() == "1 cmd/mode eco",
          f"the device gets the retained command with its flag, under its own topic name: {got.stdout.strip()!r}")
    d.stop()
finally:
    if sub:
        sub.stop()
    if d and d.alive():
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
