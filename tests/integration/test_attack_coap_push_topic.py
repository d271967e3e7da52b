#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack: a device pushes to a path that would put an MQTT wildcard into the topic (issue 14,
item 14).

A [[coap.push]] rule maps the push's path into the topic ("sensors/%d/%p"), so a path segment of
"+" or "#" (or one containing them) would become a topic name with a wildcard, which no broker
takes as a PUBLISH. iotgwd must answer 4.00 Bad Request with the real reason (not a valid MQTT
topic name), count it, emit a malformed-packet event, and publish nothing; a proper push on the
same rule still reaches the broker. The device is coap-client-notls, the broker a real mosquitto.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, cleanup, finish, require_binary, tmpdir, write  # noqa: E402
from coaplab import Gateway, free_udp_port  # noqa: E402
from mqttlab import Broker, Pki, Subscriber, gateway_config  # noqa: E402


def main():
    require_binary()
    if os.geteuid() != 0:
        print("needs root (mosquitto's user, a private system bus)", file=sys.stderr)
        sys.exit(2)
    root = tmpdir("iotgw-push-topic-")
    gw, broker, sub = None, None, None
    try:
        pki = Pki(os.path.join(root, "pki"))
        broker = Broker(root, pki)
        devep = free_udp_port()
        devices = os.path.join(root, "devices.d")
        write(os.path.join(devices, "pusher.toml"), """[device]
id = "pusher"
mac = "02:00:00:00:00:22"
addresses = ["127.0.0.3"]
[coap]
max_payload_bytes = 256
[[coap.push]]
path = "/readings/*"
topic = "sensors/%d/%p"
""")
        conf = os.path.join(root, "iotgw.toml")
        write(conf, gateway_config(root, broker, pki, devices=devices, extra=f"""
[listeners.coap]
addresses = ["127.0.0.1"]
port = {devep}
[events]
target = "stderr"
burst = 1000
""").replace("[dbus]\nenabled = false", "[dbus]\nenabled = true"))
        gw = Gateway(root, conf)
        check(bool(gw.counters()), "iotgwd is up")
        sub = Subscriber(broker, "#", root)

        def push(path, payload="21.5", confirmable=True):
            cmd = ["coap-client-notls", "-a", "127.0.0.3", "-B", "5", "-m", "post", "-e", payload]
            if not confirmable:
                cmd.append("-N")
            r = subprocess.run(cmd + [f"coap://127.0.0.1:{devep}{path}"], capture_output=True, text=True,
                               timeout=20)
            return (r.stdout + r.stderr).strip()

        out = push("/readings/temp")
        check("4." not in out and "5." not in out, f"a proper push is acknowledged: {out!r}")
        check(sub.wait_for("sensors/pusher/readings/temp 21.5", 5), f"and published: {sub.lines()}")
        before = gw.counters()
        attempts = [("/readings/+", "a '+' segment"), ("/readings/%23", "a '#' segment"),
                    ("/readings/a+b", "a '+' inside a segment")]
        for path, what in attempts:
            out = push(path, payload="666")
            check("4.00" in out and "not a valid MQTT topic name" in out,
                  f"{what} ({path}): 4.00 with the reason ({out!r})")
        out = push("/readings/+", payload="666", confirmable=False)
        check("4.00" in out, f"a non-confirmable one too ({out!r})")
        time.sleep(0.5)
        after = gw.counters()
        bad = after.get("coap_pushes_bad_topic", 0) - before.get("coap_pushes_bad_topic", 0)
        check(bad == len(attempts) + 1, f"each one counted ({bad})")
        failed = after.get("coap_pushes_failed", 0) - before.get("coap_pushes_failed", 0)
        check(failed == 0, f"none taken for an upstream failure ({failed})")
        events = [e for e in gw.events() if "IOTGW_EVENT=malformed-packet" in e and "IOTGW_RULE=coap.push.topic" in e]
        check(len(events) == len(attempts) + 1, f"each one a malformed-packet event: {events[-1:]}")
        check(not any("666" in line for line in sub.lines()), f"nothing of them reached the broker: {sub.lines()}")
        out = push("/readings/hum", payload="40")
        check(sub.wait_for("sensors/pusher/readings/hum 40", 5), f"the device's next proper push is published ({out!r})")
        check(gw.alive(), "iotgwd is still running")
    finally:
        if sub:
            sub.stop()
        if gw:
            gw.stop()
        if broker:
            broker.stop()
        cleanup(root)
    finish()


if __name__ == "__main__":
    main()
