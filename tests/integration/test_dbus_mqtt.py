#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""D-Bus calls during MQTT traffic do not stall sessions: a legacy device publishes QoS 1 every
5 ms through iotgwd (plaintext) to a real mosquitto (mutual TLS) while, on a private system bus,
busctl keeps reading the gateway and enrolling, changing and removing another device. Both run
on iotgwd's one event loop; every message must be acknowledged quickly and reach the broker.
"""
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import (IOTGWD, check, finish, hash_password, private_bus, require_binary,  # noqa: E402
                           tmpdir, wait_port, write)
from mqttlab import Broker, Pki, Subscriber, free_port, gateway_config  # noqa: E402

NAME, PATH, IFACE = "org.iotgw.Gateway1", "/org/iotgw/Gateway1", "org.iotgw.Gateway1.Manager"
ROOT_MAY_OWN = '<policy user="root"><allow own="org.iotgw.Gateway1"/><allow send_destination="org.iotgw.Gateway1"/></policy>'
LAMP = """[device]
id = "lamp-{n}"
mac = "02:00:00:00:01:{n:02x}"
addresses = ["192.168.50.{n}"]
[mqtt]
publish = ["devices/%d/state"]
"""


def main():
    require_binary()
    if os.geteuid() != 0:
        print("needs root (mosquitto's user, a private bus)", file=sys.stderr)
        sys.exit(2)
    import paho.mqtt.client as paho  # Debian's python3-paho-mqtt

    root = tmpdir("iotgw-dbus-mqtt-")
    procs = []
    d = None
    broker = None
    try:
        pki = Pki(os.path.join(root, "pki"))
        broker = Broker(root, pki)
        write(os.path.join(root, "devices.d", "thermo-01.toml"), f"""[device]
id = "thermo-01"
[device.mqtt]
client_id = "thermo-01"
username = "thermo"
password_hash = "{hash_password('s3cret-thermo')}"
[mqtt]
publish = ["devices/%c/telemetry/#"]
""")
        port = free_port()
        conf = os.path.join(root, "iotgw.toml")
        write(conf, gateway_config(root, broker, pki, port=port).replace("[dbus]\nenabled = false", "[dbus]\nenabled = true"))
        bus, address = private_bus(root, "system", ROOT_MAY_OWN)
        procs.append(bus)
        err = open(os.path.join(root, "iotgwd.err"), "w")
        d = subprocess.Popen([IOTGWD, "--config", conf], env=dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address),
                             stdout=subprocess.DEVNULL, stderr=err)
        check(wait_port(port), "iotgwd listens")

        def busctl(method, *args):
            return subprocess.run(["busctl", f"--address={address}", "call", NAME, PATH, IFACE, method, *args],
                                  capture_output=True, text=True, timeout=20).returncode == 0

        deadline = time.time() + 10
        while not busctl("GetStatus") and time.time() < deadline:
            time.sleep(0.05)
        check(busctl("GetStatus"), "iotgwd answers on the private bus")

        sub = Subscriber(broker, "devices/thermo-01/#", root)
        sent, acked = {}, {}
        lock = threading.Lock()

        def on_publish(client, userdata, mid, *rest):
            with lock:
                acked[mid] = time.monotonic()

        dev = paho.Client(client_id="thermo-01", protocol=paho.MQTTv311)
        dev.username_pw_set("thermo", "s3cret-thermo")
        dev.on_publish = on_publish
        dev.max_inflight_messages_set(100)
        dev.connect("127.0.0.1", port, keepalive=30)
        dev.loop_start()
        time.sleep(0.5)

        stop = threading.Event()
        calls = {"ok": 0, "failed": 0}

        def control():
            n = 10
            while not stop.is_set():
                doc = LAMP.format(n=n)
                for ok in (busctl("GetStatus"), busctl("ListDevices"),
                           busctl("EnrollDevice", "ss", f"lamp-{n}", doc),
                           busctl("SetDevicePolicy", "ss", f"lamp-{n}", doc.replace("state", "status")),
                           busctl("GetDevice", "s", f"lamp-{n}"),
                           busctl("RemoveDevice", "s", f"lamp-{n}")):
                    calls["ok" if ok else "failed"] += 1
                n = 10 + (n - 9) % 200

        worker = threading.Thread(target=control)
        worker.start()
        end = time.monotonic() + 6
        i = 0
        while time.monotonic() < end:
            info = dev.publish("devices/thermo-01/telemetry/seq", f"m-{i}", qos=1)
            with lock:
                sent[info.mid] = time.monotonic()
            i += 1
            time.sleep(0.005)
        stop.set()
        worker.join(timeout=30)
        deadline = time.time() + 10
        while time.time() < deadline and len(acked) < len(sent):
            time.sleep(0.05)
        dev.loop_stop()
        dev.disconnect()

        latencies = sorted((acked[m] - sent[m]) * 1000 for m in sent if m in acked)
        check(calls["ok"] >= 60 and calls["failed"] == 0,
              f"D-Bus calls throughout, all answered ({calls['ok']} ok, {calls['failed']} failed)")
        check(len(acked) == len(sent), f"every publish acknowledged ({len(acked)} of {len(sent)})")
        if latencies:
            p50 = statistics.median(latencies)
            p99 = latencies[int(len(latencies) * 0.99) - 1]
            check(p99 < 250 and latencies[-1] < 1000,
                  f"no stall: PUBACK latency p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms")
        deadline = time.time() + 10
        while time.time() < deadline and sum("m-" in line for line in sub.lines()) < len(sent):
            time.sleep(0.1)
        got = sum("m-" in line for line in sub.lines())
        check(got == len(sent), f"every message reached the broker ({got} of {len(sent)})")
        sub.stop()

        # The outbox through D-Bus: the broker away, three readings stored and acknowledged.
        broker.stop()
        for k in range(3):
            r = subprocess.run(["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-i", "thermo-01",
                                "-u", "thermo", "-P", "s3cret-thermo", "-t", "devices/thermo-01/telemetry/x",
                                "-m", f"away-{k}", "-q", "1"], capture_output=True, text=True, timeout=15)
            check(r.returncode == 0, f"reading {k} acknowledged while the broker is away")
        time.sleep(1.1)

        def call(method, *args):
            return subprocess.run(["busctl", f"--address={address}", "--json=short", "call", NAME, PATH, IFACE,
                                   method, *args], capture_output=True, text=True, timeout=20).stdout

        import json
        state = json.loads(call("GetDevice", "s", "thermo-01"))["data"][1]
        status = json.loads(call("GetStatus"))["data"][0]
        check(state["queued_messages"]["data"] == 3 and state["queued_bytes"]["data"] > 0
              and state["queued_oldest_age_seconds"]["data"] >= 1,
              f"GetDevice: its outbox depth and age ({state['queued_messages']['data']} messages, "
              f"{state['queued_bytes']['data']} bytes, {state['queued_oldest_age_seconds']['data']} s)")
        check(status["mqtt_queued_messages"]["data"] == 3 and status["mqtt_queued_devices"]["data"] == 1
              and status["mqtt_stored"]["data"] >= 3,
              f"GetStatus: queued {status['mqtt_queued_messages']['data']} messages of "
              f"{status['mqtt_queued_devices']['data']} device(s), stored {status['mqtt_stored']['data']}")
    finally:
        if d is not None:
            d.terminate()
            d.wait(timeout=10)
        for p in procs:
            p.terminate()
            p.wait(timeout=5)
        if broker:
            broker.stop()
        subprocess.run(["rm", "-rf", root])
    finish()


if __name__ == "__main__":
    main()
