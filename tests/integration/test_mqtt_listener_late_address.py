#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The device segment's address comes after iotgwd. On a hub the bridge (br-iot) often gets its
address after the gateway starts — configured later, DHCP, a link that comes up late. In a
network namespace of the test's own: a bridge br-iot without an address, iotgwd told to
listen on 10.66.0.1 (IPv4) and fd66::1 (IPv6) there. iotgwd starts and says it is ready (before:
"cannot listen on 10.66.0.1 port N: Cannot assign requested address", and under systemd a
restart loop); once the addresses are added, a device on the segment logs in and publishes over
each of them and the broker has its messages."""
import os
import subprocess
import time

from iotgw_testlib import (Daemon, NotifySocket, check, cleanup, finish, hash_password,
                           WITH_SYSTEMD, in_private_namespaces, require_binary, tmpdir, write)
from mqttlab import Broker, Pki, free_port, password_device
import mqttwire as w

require_binary()
in_private_namespaces(["-n"], "a network namespace with a late address")

PASSWORD = "s3cret"
V4, V6 = "10.66.0.1", "fd66::1"


def ip(*args):
    subprocess.run(["ip", *args], check=True)


def login_and_publish(host, payload):
    """PUBACK's packet id for one QoS 1 message over `host`, or None."""
    c = w.Client(port, source=host, host=host, timeout=5.0)
    if c.connack(w.connect(f"sensor-{payload}", "sensor-01", PASSWORD)) != 0:
        return None
    c.send(w.publish("devices/sensor-01/r", payload, qos=1, packet_id=3))
    p = c.read_packet()
    c.close()
    return int.from_bytes(p[1][:2], "big") if p and p[0] >> 4 == 4 else None


root = tmpdir()
broker = d = None
try:
    ip("link", "set", "lo", "up")
    ip("link", "add", "br-iot", "type", "bridge")
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, f"""
[daemon]
state_directory = "{root}/state"
devices_directory = "{root}/devices.d"
[device_segment]
subnets = ["10.66.0.0/24", "fd66::/64"]
[firewall]
enabled = false
[dbus]
enabled = false
[listeners.mqtt]
addresses = ["{V4}", "{V6}"]
port = {port}
[upstream]
host = "127.0.0.1"
port = {broker.port}
ca_file = "{pki.ca}"
certificate = "{pki.gateway[0]}"
private_key = "{pki.gateway[1]}"
""")
    password_device(os.path.join(root, "devices.d"), "sensor-01", hash_password(PASSWORD))
    notify = NotifySocket(root)
    events = os.path.join(root, "events")
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path),
               stderr=open(events, "w"))
    if WITH_SYSTEMD:
        ready = notify.wait_for("READY=1", 10) is not None
    else:
        time.sleep(2)  # no readiness protocol: still running by then
        ready = d.alive()
    check(ready and d.alive(), "iotgwd starts before the segment has its addresses")
    if not d.alive():
        print(open(events).read())
        finish()  # nothing more to see

    ip("addr", "add", f"{V4}/24", "dev", "br-iot")
    ip("-6", "addr", "add", f"{V6}/64", "dev", "br-iot", "nodad")
    ip("link", "set", "br-iot", "up")
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port),
                            "--cafile", pki.ca, "--cert", pki.app[0], "--key", pki.app[1],
                            "-t", "devices/#", "-C", "2", "-W", "20"],
                           stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    check(login_and_publish(V4, "over-v4") == 3, f"once {V4} is there, a device publishes over it")
    check(login_and_publish(V6, "over-v6") == 3, f"and over {V6}")
    out, _ = sub.communicate(timeout=30)
    got = sorted(out.split())
    check(got == ["over-v4", "over-v6"], f"the broker has both ({got})")
    check(d.alive(), "iotgwd still runs")
finally:
    if d:
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
