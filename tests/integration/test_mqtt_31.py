#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""MQTT 3.1 (protocol name "MQIsdp", level 3), as legacy devices and old client libraries speak
it, through iotgwd to a real mosquitto over mutual TLS: paho-mqtt's 3.1 client logs in,
publishes at QoS 0 and 1 and receives what the broker sends it; the same client straight to
mosquitto behaves the same; 3.1's client identifier rule (1 to 23 bytes) is answered with its
own return code (2)."""
import os
import socket
import ssl
import threading
import time

import paho.mqtt.client as paho

from iotgw_testlib import Daemon, NotifySocket, check, cleanup, finish, hash_password, require_binary, tmpdir, write, wait_ready
from mqttlab import Broker, Pki, Subscriber, gateway_config, free_port

require_binary()


class Device:
    """paho-mqtt's MQTT 3.1 client, collecting what it receives."""

    def __init__(self, client_id, port, username=None, password=None, tls=None):
        self.received = []
        self.connected = threading.Event()
        self.code = None
        self.c = paho.Client(client_id=client_id, protocol=paho.MQTTv31)
        if username:
            self.c.username_pw_set(username, password)
        if tls:
            self.c.tls_set(ca_certs=tls[0], certfile=tls[1], keyfile=tls[2], tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.c.on_connect = self.on_connect
        self.c.on_message = lambda c, u, m: self.received.append((m.topic, m.payload.decode(), m.qos))
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        self.connected.wait(10)

    def on_connect(self, client, userdata, flags, rc):
        self.code = rc
        self.connected.set()

    def subscribe(self, topic, qos=1):
        done = threading.Event()
        self.c.on_subscribe = lambda c, u, mid, granted: done.set()
        self.c.subscribe(topic, qos)
        return done.wait(10)

    def publish(self, topic, payload, qos):
        info = self.c.publish(topic, payload, qos=qos)
        info.wait_for_publish(10)
        return info.is_published()

    def wait_for(self, payload, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p == payload for _, p, _ in self.received):
                return True
            time.sleep(0.05)
        return False

    def stop(self):
        self.c.disconnect()
        self.c.loop_stop()


def mqtt31_connack(port, client_id, wrap=None):
    """The CONNACK return code for a raw 3.1 CONNECT with `client_id`."""
    def s(x):
        b = x.encode()
        return len(b).to_bytes(2, "big") + b
    body = s("MQIsdp") + bytes([3, 0x02]) + (30).to_bytes(2, "big") + s(client_id)
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if wrap:
        sock = wrap.wrap_socket(sock, server_hostname="localhost")
    sock.sendall(bytes([0x10, len(body)]) + body)
    ack = sock.recv(4)
    sock.close()
    return ack[3] if len(ack) == 4 and ack[0] == 0x20 else None


root = tmpdir()
broker = sub = d = None
devices = []
try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, port=port, extra='[events]\ntarget = "stderr"\n'))
    write(os.path.join(root, "devices.d", "plug-31.toml"), f"""
[device]
id = "plug-31"
[device.mqtt]
client_id = "plug-31"
username = "plug"
password_hash = "{hash_password('s3cret')}"
[mqtt]
upstream_prefix = "home/%d/"
publish = ["state", "energy"]
subscribe = ["cmd/#"]
max_qos = 1
""")
    notify = NotifySocket(root)
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path))
    check(wait_ready(notify, port), "iotgwd ready")
    sub = Subscriber(broker, "home/#", root)

    print("an MQTT 3.1 device through iotgwd")
    dev = Device("plug-31", port, "plug", "s3cret")
    devices.append(dev)
    check(dev.code == 0, f"paho's 3.1 client is logged in (return code {dev.code})")
    check(dev.subscribe("cmd/#"), "its SUBSCRIBE is answered (once the broker has it)")
    check(dev.publish("state", "on", 1), "a QoS 1 publish is acknowledged")
    check(dev.publish("energy", "12.5", 0), "a QoS 0 publish is sent")
    check(sub.wait_for("home/plug-31/state on"), "the QoS 1 reading reaches the broker under the device's prefix")
    check(sub.wait_for("home/plug-31/energy 12.5"), "so does the QoS 0 one")
    back = Device("app", broker.port, tls=(pki.ca, *pki.app))
    devices.append(back)
    back.publish("home/plug-31/cmd/switch", "off", 1)
    check(dev.wait_for("off"), f"the broker's command reaches the 3.1 device: {dev.received}")
    check(("cmd/switch", "off", 1) in dev.received, "under the device's own topic name, at QoS 1")

    print("the same 3.1 client straight to mosquitto")
    direct = Device("direct-31", broker.port, tls=(pki.ca, *pki.app))
    devices.append(direct)
    check(direct.code == 0, "mosquitto takes it as well")
    check(direct.subscribe("home/direct/#"), "and its SUBSCRIBE")
    check(direct.publish("home/direct/state", "on", 1), "and its QoS 1 publish")
    check(direct.wait_for("on"), "which it receives back")

    print("3.1's client identifier rule: 1 to 23 bytes, return code 2 beyond")
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.load_cert_chain(*pki.app)
    ctx.check_hostname = False
    via = mqtt31_connack(port, "")
    straight = mqtt31_connack(broker.port, "", wrap=ctx)
    check(via == 2, f"an empty identifier through iotgwd: return code {via}")
    check(via == straight, f"as mosquitto answers it ({straight})")
    # 3.1 §3.1 allows 1 to 23 characters; mosquitto 2.0 takes longer ones from 3.1 clients too.
    # iotgwd keeps to the specification (the parsers of 3.1-era devices were written for it).
    via = mqtt31_connack(port, "x" * 24)
    straight = mqtt31_connack(broker.port, "x" * 24, wrap=ctx)
    check(via == 2, f"a 24-byte identifier through iotgwd: return code {via} (mosquitto: {straight})")
    check(mqtt31_connack(port, "x" * 23) == 5, "a 23-byte one is taken as 3.1 and refused by the policy only")
    check(d.alive(), "iotgwd still runs")
finally:
    for x in devices:
        try:
            x.stop()
        except Exception:
            pass
    if sub:
        sub.stop()
    if d and d.alive():
        d.stop()
    if broker:
        broker.stop()
    cleanup(root)
finish()
