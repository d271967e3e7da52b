#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Upstream authentication as brokers want it, against a real mosquitto with a password_file and an
ACL per user name:

* user name and password over server-authenticated TLS (no client certificate), one user name per
  device ("%d"): the broker's ACL tells the devices apart (a publish outside a device's ACL is
  dropped by the broker, though iotgwd's own policy let it through), a device may name its own
  user name, and a user name the broker does not know is refused by it — said in an event;
* the passwords come from a file that must not be readable by others (iotgwd refuses to start
  with one that is, naming it);
* plaintext only to a broker on this host's loopback: taken there, with an insecure-upstream
  warning event; refused by --check-config for any other host."""
import os
import subprocess
import time

from iotgw_testlib import (IOTGWD, Daemon, NotifySocket, check, cleanup, finish, require_binary, tmpdir,
                           wait_ready, write)
from mqttlab import Broker, Pki, free_port
import mqttwire as w

require_binary()

root = tmpdir()
broker = d = None
procs = []


def config(port, broker_port, tls=True, host="localhost", extra=""):
    upstream = f"""[upstream]
host = "{host}"
port = {broker_port}
username = "%d"
password_file = "{root}/upstream.passwd"
"""
    upstream += f'ca_file = "{pki.ca}"\n' if tls else "tls = false\n"
    return f"""
[daemon]
state_directory = "{root}/state"
devices_directory = "{root}/devices.d"
[device_segment]
subnets = ["127.0.0.0/8"]
[firewall]
enabled = false
[dbus]
enabled = false
[listeners.mqtt]
addresses = ["127.0.0.1"]
port = {port}
[events]
target = "stderr"
""" + upstream + extra


def start(name, text):
    conf = os.path.join(root, f"{name}.toml")
    write(conf, text)
    os.makedirs(os.path.join(root, name), exist_ok=True)
    notify = NotifySocket(os.path.join(root, name))
    events = os.path.join(root, f"{name}.events")
    p = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path), stderr=open(events, "w"))
    procs.append(p)
    return p, notify, events


def publish(port, source, client_id, topic, payload):
    """A device's QoS 1 publish; whether iotgwd acknowledged it."""
    c = w.Client(port, source=source)
    if c.connack(w.connect(client_id)) != 0:
        return False
    c.send(w.publish(topic, payload, qos=1, packet_id=1))
    p = c.read_packet()
    c.close()
    return p is not None and p[0] == 0x40


try:
    pki = Pki(os.path.join(root, "pki"))
    passwd = os.path.join(root, "broker.passwd")
    write(passwd, "thermo-01:pw-thermo\nplug-legacy:pw-plug\n")
    subprocess.run(["mosquitto_passwd", "-U", passwd], check=True)
    acl = os.path.join(root, "broker.acl")
    write(acl, """topic read #
user thermo-01
topic readwrite devices/thermo-01/#
user plug-legacy
topic readwrite devices/plug-02/#
""")
    server_auth = free_port()
    plain = free_port()
    broker = Broker(root, pki, extra=f"""password_file {passwd}
acl_file {acl}
listener {server_auth} 127.0.0.1
cafile {pki.ca}
certfile {pki.server[0]}
keyfile {pki.server[1]}
require_certificate false
listener {plain} 127.0.0.1
""")
    for i, (dev, extra) in enumerate((("thermo-01", ""), ("plug-02", 'upstream_username = "plug-legacy"\n'),
                                     ("rogue-03", ""))):
        write(os.path.join(root, "devices.d", f"{dev}.toml"), f"""
[device]
id = "{dev}"
mac = "02:00:00:00:0a:{i + 1:02x}"
addresses = ["127.0.18.{i + 1}"]
[device.mqtt]
client_id = "{dev}"
[mqtt]
publish = ["devices/#"]
{extra}""")
    secret = os.path.join(root, "upstream.passwd")
    write(secret, "# user:password, one per line\nthermo-01:pw-thermo\nplug-legacy:pw-plug\n*:nothing-known\n")

    print("the password file must not be readable by others")
    os.chmod(secret, 0o644)
    port = free_port()
    p, _, _ = start("open-file", config(port, server_auth))
    try:
        rc = p.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        rc = None
    said = open(os.path.join(root, "open-file.events")).read()
    check(rc not in (None, 0), f"iotgwd refuses to start (exit {rc})")
    check("readable by others" in said and "upstream.passwd" in said, "naming the file and why")
    os.chmod(secret, 0o600)

    print("user name and password over server-authenticated TLS, a user name per device")
    sub = subprocess.Popen(["mosquitto_sub", *broker.tls_args(), "-t", "devices/#", "-v", "-q", "1"],
                           stdout=open(os.path.join(root, "sub.txt"), "w"), stderr=subprocess.STDOUT)
    procs.append(sub)
    time.sleep(0.5)
    d, notify, events = start("password", config(port, server_auth))
    check(wait_ready(notify, port), "iotgwd ready, no client certificate configured")
    check(publish(port, "127.0.18.1", "thermo-01", "devices/thermo-01/t", "21.5"),
          "thermo-01 logs in to the broker as 'thermo-01' and publishes")
    check(publish(port, "127.0.18.1", "thermo-01", "devices/plug-02/t", "forged"),
          "its publish to plug-02's topic passes iotgwd's (broad) policy")
    check(publish(port, "127.0.18.2", "plug-02", "devices/plug-02/power", "on"),
          "plug-02 logs in under the user name its policy names ('plug-legacy')")
    time.sleep(1.0)
    seen = open(os.path.join(root, "sub.txt")).read()
    check("devices/thermo-01/t 21.5" in seen, "the broker has thermo-01's reading")
    check("devices/plug-02/power on" in seen, "and plug-02's")
    check("forged" not in seen, "but not thermo-01's publish to plug-02's topic: the broker's ACL told them apart")
    c = w.Client(port, source="127.0.18.3")
    c.connack(w.connect("rogue-03"))
    c.send(w.publish("devices/rogue-03/t", "x", qos=1, packet_id=1))
    c.sock.settimeout(3)
    check(c.read_packet() is None, "rogue-03, a user name the broker does not know, is never acknowledged")
    c.close()
    time.sleep(0.5)
    refused = [x for x in open(events) if "refused the login" in x and "rogue-03" in x]
    check(refused, "and the broker's refusal is said in an event naming the device")
    d.stop()

    print("plaintext, to a broker on this host's loopback only")
    d, notify, events = start("plain", config(port, plain, tls=False, host="127.0.0.1"))
    check(wait_ready(notify, port), "iotgwd ready with 'tls = false' to 127.0.0.1")
    check(publish(port, "127.0.18.1", "thermo-01", "devices/thermo-01/t", "plain-22"),
          "thermo-01 publishes through it")
    time.sleep(0.5)
    check("devices/thermo-01/t plain-22" in open(os.path.join(root, "sub.txt")).read(), "and the broker has it")
    warned = [x for x in open(events) if "IOTGW_EVENT=insecure-upstream" in x]
    check(len(warned) == 1, f"an insecure-upstream warning at start ({len(warned)})")
    d.stop()
    far = os.path.join(root, "far.toml")
    write(far, config(port, plain, tls=False, host="192.0.2.10"))
    r = subprocess.run([IOTGWD, "--config", far, "--check-config"], capture_output=True, text=True)
    check(r.returncode == 1 and "loopback" in r.stderr, f"and refused to any other host: {r.stderr.strip()}")
finally:
    for p in procs:
        if isinstance(p, Daemon):
            p.stop()
        else:
            p.terminate()
    if broker:
        broker.stop()
    cleanup(root)
finish()
