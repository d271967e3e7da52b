#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack: a device pushes readings over CoAP far beyond its rate (issue 15, item 12).

A device whose policy says [mqtt.rate] messages_per_second = 5 pushed ~44,000 readings a second
over the device-side CoAP endpoint, and all of them reached the broker: the rate held for its
MQTT session only. The device's rate holds for its pushes too (5.10-1): beyond it a push is
4.29 Too Many Requests with Max-Age (RFC 8516), counted (coap_pushes_rate_limited), with a
rate-limited event, and never published. A device that slows down is published again.

The device is a raw UDP socket on 127.0.0.3 sending non-confirmable pushes as fast as it can for
three seconds, then confirmable ones; the broker a real mosquitto, counted with mosquitto_sub.
"""
import os
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, cleanup, finish, require_binary, tmpdir, write  # noqa: E402
from coaplab import Gateway, code_of, free_udp_port, options, request  # noqa: E402
from mqttlab import Broker, Pki, Subscriber, gateway_config  # noqa: E402

RATE, BURST = 5, 5
SECONDS = 3.0
POST = 2


def main():
    require_binary()
    if os.geteuid() != 0:
        print("needs root (mosquitto's user, a private system bus)", file=sys.stderr)
        sys.exit(2)
    root = tmpdir("iotgw-push-rate-")
    gw, broker, sub = None, None, None
    try:
        pki = Pki(os.path.join(root, "pki"))
        broker = Broker(root, pki)
        devep = free_udp_port()
        devices = os.path.join(root, "devices.d")
        write(os.path.join(devices, "pusher.toml"), f"""[device]
id = "pusher"
mac = "02:00:00:00:00:22"
addresses = ["127.0.0.3"]
[mqtt.rate]
messages_per_second = {RATE}
message_burst = {BURST}
[coap]
max_payload_bytes = 64
[[coap.push]]
path = "/readings/*"
topic = "sensors/%d/%p"
qos = 0
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
        sub = Subscriber(broker, "sensors/#", root, qos=0)

        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.3", 0))
        s.setblocking(False)
        path = options((11, b"readings"), (11, b"temp"))
        print(f"non-confirmable pushes as fast as the device can send them for {SECONDS:.0f} s")
        before = gw.counters()
        sent, start = 0, time.time()
        while time.time() - start < SECONDS:
            for _ in range(50):
                sent += 1
                try:
                    s.sendto(request(POST, path, str(sent).encode(), mid=sent & 0xffff, token=b"\x01", type_=1),
                             ("127.0.0.1", devep))
                except BlockingIOError:
                    pass
            try:
                while s.recv(2048):
                    pass
            except BlockingIOError:
                pass
        elapsed = time.time() - start
        time.sleep(1.0)
        after = gw.counters()
        published = after.get("coap_pushes_published", 0) - before.get("coap_pushes_published", 0)
        limited = after.get("coap_pushes_rate_limited", 0) - before.get("coap_pushes_rate_limited", 0)
        at_broker = len(sub.lines())
        allowed = BURST + RATE * elapsed
        print(f"  {sent} pushes in {elapsed:.1f} s ({sent / elapsed:,.0f}/s): {published} published, "
              f"{at_broker} at the broker ({at_broker / elapsed:.1f}/s), {limited} refused with 4.29")
        check(at_broker <= allowed + 1, f"the broker got at most burst + rate x time = {allowed:.0f} ({at_broker})")
        check(published <= allowed + 1, f"and iotgwd published no more ({published})")
        # What iotgwd read of the flood (a loaded machine drops some in the socket's buffer): all
        # of it beyond the rate refused.
        read = after.get("coap_device_datagrams", 0) - before.get("coap_device_datagrams", 0)
        check(read > allowed and limited >= read - published - 2,
              f"the rest were refused and counted ({limited} of the {read} iotgwd read, {sent} sent)")

        print("confirmable pushes beyond the rate: 4.29 with Max-Age")
        s.setblocking(True)
        s.settimeout(5)

        def reply_to(token):
            # Answers to the flood may still be on their way: the one for this token.
            while True:
                reply = s.recv(2048)
                if reply[4:4 + (reply[0] & 15)] == token:
                    return reply

        codes, max_age = [], None
        for i in range(10):
            s.sendto(request(POST, path, b"c", mid=0x8000 + i, token=bytes([0x20 + i])), ("127.0.0.1", devep))
            reply = reply_to(bytes([0x20 + i]))
            codes.append(code_of(reply.hex()))
            if code_of(reply.hex()) == "4.29":
                max_age = reply[4 + (reply[0] & 15):]
        check(codes.count("4.29") >= 10 - BURST - 1, f"refused with 4.29 Too Many Requests ({codes})")
        # The reply's first option is Max-Age (14): one delta-14 option, "d" then the extended delta.
        check(max_age is not None and max_age[0] >> 4 == 13 and max_age[1] == 1,
              f"with Max-Age, the seconds to wait (option bytes {max_age[:4].hex() if max_age else None})")
        events = [e for e in gw.events() if "IOTGW_EVENT=rate-limited" in e and "IOTGW_PROVISION=5.10-1" in e]
        check(bool(events) and "IOTGW_DEVICE=pusher" in events[0],
              f"a rate-limited event for the device, provision 5.10-1: {events[:1]}")
        time.sleep(1.5)
        s.sendto(request(POST, path, b"slow", mid=0x9000, token=b"\x30"), ("127.0.0.1", devep))
        reply = reply_to(b"\x30")
        check(code_of(reply.hex()) == "2.04", f"a device that slows down is published again ({code_of(reply.hex())})")
        deadline = time.time() + 10
        while time.time() < deadline and not any(line.endswith(" slow") for line in sub.lines()):
            time.sleep(0.1)
        check(any(line.endswith(" slow") for line in sub.lines()), "and the reading reaches the broker")
        s.close()
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
