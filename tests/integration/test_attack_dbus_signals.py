#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""A device that floods violations does not flood the system bus.

Every event reaches the D-Bus adaptor before the journal's rate limit (so that an administrator's
changes are never lost to a budget). A logged-in device publishing 2,000 messages to a topic its
policy denies must still cost the bus no more PolicyViolation signals than the journal's budget
(events.burst, 10 by default), while an administrator's change right after the flood is still
signalled and iotgwd keeps answering. Real parts: iotgwd, mosquitto over mutual TLS, a private
dbus-daemon, iotgwctl watching the signals.
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import (IOTGWD, check, finish, hash_password, private_bus, require_binary,  # noqa: E402
                           tmpdir, wait_port, write)
from mqttlab import Broker, Pki, free_port, gateway_config  # noqa: E402

NAME, PATH, IFACE = "org.iotgw.Gateway1", "/org/iotgw/Gateway1", "org.iotgw.Gateway1.Manager"
ROOT_MAY_OWN = '<policy user="root"><allow own="org.iotgw.Gateway1"/><allow send_destination="org.iotgw.Gateway1"/></policy>'
IOTGWCTL = os.path.join(os.path.dirname(IOTGWD), "iotgwctl")
FLOOD = 2000
BURST = 10  # events.burst's default
LAMP = """[device]
id = "lamp-10"
mac = "02:00:00:00:01:0a"
addresses = ["192.168.50.20"]
[mqtt]
publish = ["devices/%d/state"]
"""


def main():
    require_binary()
    if os.geteuid() != 0:
        print("needs root (mosquitto's user, a private bus)", file=sys.stderr)
        sys.exit(2)
    import paho.mqtt.client as paho  # Debian's python3-paho-mqtt

    root = tmpdir("iotgw-attack-dbus-")
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
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)
        err = open(os.path.join(root, "iotgwd.err"), "w")
        d = subprocess.Popen([IOTGWD, "--config", conf], env=env, stdout=subprocess.DEVNULL, stderr=err)
        check(wait_port(port), "iotgwd listens")

        def busctl(method, *args):
            return subprocess.run(["busctl", f"--address={address}", "--json=short", "call", NAME, PATH, IFACE,
                                   method, *args], capture_output=True, text=True, timeout=20)

        deadline = time.time() + 10
        while busctl("GetStatus").returncode != 0 and time.time() < deadline:
            time.sleep(0.05)
        check(busctl("GetStatus").returncode == 0, "iotgwd answers on the private bus")

        watcher = subprocess.Popen([IOTGWCTL, "--json", "watch", "--count", "100000"], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(watcher)
        time.sleep(0.3)  # its match rules in place first

        dev = paho.Client(client_id="thermo-01", protocol=paho.MQTTv311)
        dev.username_pw_set("thermo", "s3cret-thermo")
        dev.connect("127.0.0.1", port, keepalive=30)
        dev.loop_start()
        time.sleep(0.5)
        t0 = time.monotonic()
        for i in range(FLOOD):
            dev.publish("devices/thermo-01/forbidden", f"x-{i}", qos=0)
        # The flood has been read once iotgwd counted it; its own legitimate message still passes.
        denied = 0
        deadline = time.time() + 20
        while time.time() < deadline:
            r = busctl("GetStatus")
            if r.returncode == 0:
                counters = json.loads(r.stdout)["data"][0]
                denied = counters.get("mqtt_denied", {}).get("data", 0)
                if denied >= FLOOD:
                    break
            time.sleep(0.1)
        flood_s = time.monotonic() - t0
        check(denied >= FLOOD, f"iotgwd refused the flood: mqtt_denied {denied} of {FLOOD} ({flood_s:.2f} s)")
        info = dev.publish("devices/thermo-01/telemetry/t", "21.5", qos=1)
        info.wait_for_publish(timeout=5)
        check(info.is_published(), "the device's own permitted publish is acknowledged after the flood")
        dev.loop_stop()
        dev.disconnect()

        # An administrator's change right after: its signal is not held to the spent budget.
        r = busctl("EnrollDevice", "ss", "lamp-10", LAMP)
        check(r.returncode == 0, f"EnrollDevice after the flood ({r.stderr.strip()})")
        time.sleep(1.0)
        watcher.terminate()
        out, _ = watcher.communicate(timeout=10)
        procs.remove(watcher)
        signals = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        violations = sum(s["signal"] == "PolicyViolation" for s in signals)
        check(0 < violations <= BURST,
              f"PolicyViolation signals for {FLOOD} denied publishes: {violations} (the journal's budget: {BURST})")
        check(any(s["signal"] == "DeviceChanged" and s.get("id") == "lamp-10" for s in signals),
              "the enrolment right after is still a DeviceChanged signal")
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
