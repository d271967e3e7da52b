#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The MQTT proxy end to end with real parts: a legacy device (mosquitto_pub/sub, paho-mqtt)
speaks plaintext MQTT to iotgwd, which re-originates its session over mutual TLS to a real
mosquitto broker; an app subscribes at the broker. Allowed traffic flows both ways at QoS 0/1/2,
denied traffic never arrives, default credentials are refused with a journald event, and
malformed packets from raw sockets are refused cleanly."""
import os
import signal
import socket
import subprocess
import time

from iotgw_testlib import (Daemon, Journald, NotifySocket, check, cleanup, finish, hash_password,
                           in_private_mount_namespace, require_binary, tmpdir, write)
from mqttlab import Broker, Pki, Subscriber, free_port, gateway_config, wait_port

DEFAULT_CREDENTIAL_ID = "82a5b708305e476e862d01e061731b22"
MALFORMED_ID = "467ff063bbdb42a5a4c35834b4c78758"
ACCESS_DENIED_ID = "ebe4e7671e0849c987d61e94eb2b3ae1"

require_binary()
in_private_mount_namespace()

journal = Journald()
root = tmpdir()
sub = None
broker = None
d = None
try:
    pki = Pki(os.path.join(root, "pki"))
    broker = Broker(root, pki)
    port = free_port()
    conf = os.path.join(root, "iotgw.toml")
    write(conf, gateway_config(root, broker, pki, port=port, extra="""
[limits]
auth_failures_before_lockout = 1000
max_connections_per_source = 64
[events]
target = "journal"
burst = 1000
"""))
    write(os.path.join(root, "devices.d", "thermo-01.toml"), f"""
[device]
id = "thermo-01"
[device.mqtt]
client_id = "thermo-01"
username = "thermo"
password_hash = "{hash_password('s3cret-thermo')}"
[mqtt]
publish = ["devices/%c/telemetry/#"]
subscribe = ["devices/%c/cmd/#"]
max_qos = 2
[[mqtt.payload]]
topic = "devices/%c/telemetry/temp"
format = "json"
required = ["t"]
[mqtt.payload.fields.t]
type = "number"
min = -40
max = 85
""")
    notify = NotifySocket(root)
    d = Daemon(["--config", conf], env=dict(os.environ, NOTIFY_SOCKET=notify.path))
    ready = notify.wait_for("READY=1")
    check(ready is not None and f"MQTT on port {port}" in ready, f"iotgwd ready with its MQTT listener: {ready!r}")
    check(wait_port(port), "device-side listener accepts connections")

    sub = Subscriber(broker, "devices/#", root)
    device = ["-h", "127.0.0.1", "-p", str(port), "-i", "thermo-01", "-u", "thermo", "-P", "s3cret-thermo"]

    def pub(topic, message, qos=1, extra=()):
        return subprocess.run(["mosquitto_pub", *device, "-t", topic, "-m", message, "-q", str(qos), *extra],
                              capture_output=True, text=True, timeout=20)

    print("allowed and denied publishes")
    for qos in (0, 1, 2):
        r = pub("devices/thermo-01/telemetry/temp", f'{{"t": 2{qos}.5}}', qos)
        check(r.returncode == 0, f"QoS {qos} publish accepted by the gateway ({r.stderr.strip()})")
        check(sub.wait_for(f'devices/thermo-01/telemetry/temp {{"t": 2{qos}.5}}'),
              f"QoS {qos} message reaches the subscriber at the broker over mTLS")
    pub("devices/thermo-02/telemetry/temp", '{"t": 1}')
    pub("devices/thermo-01/cmd/unlock", "1")
    pub("devices/thermo-01/telemetry/temp", '{"t": 900}')
    pub("devices/thermo-01/telemetry/temp", "not json")
    r = pub("devices/thermo-01/telemetry/raw", "marker-after-denials")
    check(sub.wait_for("marker-after-denials"), "a later allowed message still flows")
    lines = sub.lines()
    check(not any("thermo-02" in l or "unlock" in l or "900" in l or "not json" in l for l in lines),
          f"no denied message reached the broker ({len(lines)} lines seen)")
    denied = journal.entries(ACCESS_DENIED_ID, expect=2)
    check(len(denied) >= 2 and all(e.get("IOTGW_DEVICE") == "thermo-01" for e in denied),
          f"access-denied events name the device ({len(denied)})")

    print("default credentials")
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-i", "cam", "-u", "root",
                        "-P", "xc3511", "-t", "devices/cam/x", "-m", "1"], capture_output=True, text=True, timeout=20)
    check(r.returncode != 0 and "not authori" in (r.stderr + r.stdout).lower(),
          f"root/xc3511 refused with 'not authorised': {r.stderr.strip()!r}")
    events = journal.entries(DEFAULT_CREDENTIAL_ID)
    check(len(events) == 1, "default-credential-refused event in journald")
    if events:
        e = events[0]
        check(e.get("IOTGW_PROVISION") == "5.1-1", "tagged EN 303 645 5.1-1")
        check(e.get("IOTGW_PEER", "").startswith("127.0.0.1:"), "names the peer")
        check(e.get("IOTGW_PROTOCOL") == "mqtt" and e.get("IOTGW_ACTION") == "refuse", "protocol and action fields")
        check("xc3511" not in str(e), "the password is not in the journal")

    print("wrong password")
    r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-i", "thermo-01", "-u", "thermo",
                        "-P", "guess", "-t", "devices/thermo-01/telemetry/x", "-m", "1"],
                       capture_output=True, text=True, timeout=20)
    check(r.returncode != 0, f"wrong password refused: {r.stderr.strip()!r}")

    print("broker -> device, validated")
    import paho.mqtt.client as paho  # Debian's python3-paho-mqtt
    got = []
    dev = paho.Client(client_id="thermo-01", protocol=paho.MQTTv311)
    dev.username_pw_set("thermo", "s3cret-thermo")
    dev.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.qos))
    dev.connect("127.0.0.1", port, keepalive=30)
    dev.loop_start()
    result, _ = dev.subscribe([("devices/thermo-01/cmd/#", 2), ("devices/#", 0)])
    # The SUBACK comes before the broker has the subscription (issue 17): wait until a probe
    # gets through, however slow this machine is today.
    deadline = time.time() + 10
    while time.time() < deadline and not got:
        subprocess.run(["mosquitto_pub", *broker.tls_args(), "-t", "devices/thermo-01/cmd/probe",
                        "-m", "probe"], check=True, timeout=20)
        time.sleep(0.2)
    time.sleep(0.3)
    got.clear()
    for qos in (0, 1, 2):
        subprocess.run(["mosquitto_pub", *broker.tls_args(), "-t", "devices/thermo-01/cmd/set",
                        "-m", f"setpoint-{qos}", "-q", str(qos)], check=True, timeout=20)
    subprocess.run(["mosquitto_pub", *broker.tls_args(), "-t", "devices/thermo-02/cmd/set", "-m", "foreign"],
                   check=True, timeout=20)
    deadline = time.time() + 5
    while time.time() < deadline and len(got) < 3:
        time.sleep(0.05)
    time.sleep(0.3)
    payloads = sorted(p.decode() for _, p, _ in got)
    check(payloads == ["setpoint-0", "setpoint-1", "setpoint-2"],
          f"the device receives its commands at QoS 0/1/2 and nothing else: {payloads}")
    check(sorted(q for _, _, q in got) == [0, 1, 2], "QoS preserved towards the device")
    dev.loop_stop()
    dev.disconnect()

    print("malformed packets over raw sockets")
    cases = []
    with open(os.path.join(os.environ["IOTGW_SOURCE_DIR"], "tests/data/mqtt-malformed.txt")) as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                name, v, clause, hx = line.split()
                cases.append((name, int(v), clause, bytes.fromhex(hx)))
    connect4 = bytes.fromhex("101f00044d51545404c2003c0009746865726d6f2d30310006746865726d6f0000")
    before = len(sub.lines())
    closed = 0
    for name, v, clause, data in cases:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            if not name.startswith("connect-") and not name.startswith("remaining-length"):
                # A valid CONNECT first: these violations come after it.
                user, pw = b"thermo", b"s3cret-thermo"
                if v == 5:
                    body = (b"\x00\x04MQTT\x05\xc2\x00\x3c\x00" + len(b"thermo-01").to_bytes(2, "big") + b"thermo-01" +
                            len(user).to_bytes(2, "big") + user + len(pw).to_bytes(2, "big") + pw)
                else:
                    body = (b"\x00\x04MQTT\x04\xc2\x00\x3c" + len(b"thermo-01").to_bytes(2, "big") + b"thermo-01" +
                            len(user).to_bytes(2, "big") + user + len(pw).to_bytes(2, "big") + pw)
                s.sendall(bytes([0x10, len(body)]) + body)
                ack = s.recv(64)
                if not ack or ack[0] != 0x20:
                    check(False, f"{name}: CONNACK expected before the malformed packet")
                    continue
            s.sendall(data)
            s.settimeout(5)
            try:
                while s.recv(4096):
                    pass
                closed += 1
            except (ConnectionResetError, socket.timeout) as e:
                if isinstance(e, ConnectionResetError):
                    closed += 1
                else:
                    check(False, f"{name}: connection not closed")
    check(closed == len(cases), f"every malformed packet ends its connection ({closed}/{len(cases)})")
    check(d.alive(), "iotgwd survived all malformed packets")
    malformed = journal.entries(MALFORMED_ID, expect=len(cases), timeout=10)
    check(len(malformed) == len(cases), f"one malformed-packet event per case ({len(malformed)}/{len(cases)})")
    rules = {e.get("IOTGW_RULE") for e in malformed}
    check(all(c in rules for _, _, c, _ in cases), "events name each clause")
    time.sleep(0.5)
    check(len(sub.lines()) == before, "nothing of the malformed traffic reached the broker")

    print("broker restart mid-stream")
    keeper = paho.Client(client_id="thermo-01", protocol=paho.MQTTv311)
    keeper.username_pw_set("thermo", "s3cret-thermo")
    keeper.connect("127.0.0.1", port, keepalive=30)
    keeper.loop_start()
    time.sleep(0.5)
    broker.stop(signal.SIGKILL)
    infos = [keeper.publish("devices/thermo-01/telemetry/seq", f"seq-{i}", qos=1) for i in range(10)]
    time.sleep(1.0)
    broker.start()
    sub.stop()
    sub = Subscriber(broker, "devices/#", root)
    deadline = time.time() + 20
    while time.time() < deadline and not all(i.is_published() for i in infos):
        time.sleep(0.1)
    check(all(i.is_published() for i in infos), "every QoS 1 message sent during the outage was acknowledged after the broker returned")
    keeper.loop_stop()
    keeper.disconnect()

    d.signal(signal.SIGTERM)
    check(d.stop() == 0, "iotgwd exits cleanly")
finally:
    if sub:
        sub.stop()
    if d and d.alive():
        d.stop()
    if broker:
        broker.stop()
    journal.stop()
    cleanup(root)
finish()
