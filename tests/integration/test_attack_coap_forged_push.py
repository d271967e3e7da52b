#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack: a reading forged from the LAN or the WAN (issue 15, item 1, the CoAP part).

The device-side endpoint knows a device by its source address. A host on the LAN or the WAN
side of the gateway sends one UDP datagram with the device's address (192.168.50.10) as its
source to the gateway's device-side address (192.168.50.1:5683): with reverse-path filtering off
(0) or loose (2) the kernel delivers it, and it was published as thermo-01's reading. The table
will filter by interface as well; here it is off (firewall.enabled = false) so that iotgwd's own
check is what is tested: only datagrams that arrived on device_segment.interfaces are a device's.
The real device's push still arrives; every forged one is counted and reaches no broker.

Lab (coaplab.DeviceLab): gw runs iotgwd and mosquitto (on its loopback); dev is thermo-01; lan
and wan forge with raw sockets.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, cleanup, finish, require_binary, tmpdir, write  # noqa: E402
from coaplab import DeviceLab, Gateway, NsBroker, forge, options, request  # noqa: E402
from mqttlab import Pki  # noqa: E402

PORT = 5683
POST = 2


def main():
    require_binary()
    if os.geteuid() != 0:
        print("needs root (namespaces, raw sockets)", file=sys.stderr)
        sys.exit(2)
    root = tmpdir("iotgw-forged-push-")
    lab, gw, broker, sub = None, None, None, None
    try:
        lab = DeviceLab()
        pki = Pki(os.path.join(root, "pki"))
        broker = NsBroker(root, pki, ns=lab.ns["gw"])
        devices = os.path.join(root, "devices.d")
        write(os.path.join(devices, "thermo-01.toml"), f"""[device]
id = "thermo-01"
mac = "02:00:00:00:00:10"
addresses = ["{DeviceLab.DEV}"]
[coap]
max_payload_bytes = 64
[[coap.push]]
path = "/readings/*"
topic = "sensors/%d/%p"
""")
        conf = os.path.join(root, "iotgw.toml")
        write(conf, f"""
[daemon]
state_directory = "{root}/state"
devices_directory = "{devices}"
[device_segment]
interfaces = ["gw-dev"]
subnets = ["192.168.50.0/24"]
[firewall]
enabled = false
[dbus]
enabled = true
[listeners.coap]
addresses = ["{DeviceLab.GW_DEV}"]
port = {PORT}
[events]
target = "stderr"
burst = 1000
""" + broker.upstream())
        gw = Gateway(root, conf, netns=lab.ns["gw"])
        check(bool(gw.counters()), "iotgwd is up in the gateway namespace")
        sub = broker.subscribe("sensors/#")

        def push(payload, mid):
            return request(POST, options((11, b"readings"), (11, b"temp")), payload.encode(), mid=mid,
                           token=b"\x07", type_=1)

        r = subprocess.run(lab.cmd("dev", "coap-client-notls", "-m", "post", "-B", "5", "-e", "21.5",
                                   f"coap://{DeviceLab.GW_DEV}:{PORT}/readings/temp"),
                           capture_output=True, text=True, timeout=20)
        check("4." not in r.stdout + r.stderr and "5." not in r.stdout + r.stderr,
              f"the device's own push is acknowledged: {(r.stdout + r.stderr).strip()!r}")
        time.sleep(0.5)
        check(sub.lines() == ["sensors/thermo-01/readings/temp 21.5"], f"and published: {sub.lines()}")

        accepted = 0
        for value in (0, 2):
            lab.rp_filter(value)
            for origin in ("lan", "wan"):
                before = gw.counters()
                payload = f"{origin}-rp{value}"
                forge(lab.cmd(origin), DeviceLab.DEV, 40000, DeviceLab.GW_DEV, PORT, push(payload, 0x100), count=5)
                time.sleep(0.7)
                after = gw.counters()
                got = [line for line in sub.lines() if payload in line]
                accepted += len(got)
                check(not got, f"rp_filter {value}: 5 readings forged from the {origin} reach no broker ({got})")
                refused = after.get("coap_device_wrong_interface", 0) - before.get("coap_device_wrong_interface", 0)
                check(refused == 5, f"rp_filter {value}: each forged datagram from the {origin} is counted ({refused})")
                published = after.get("coap_pushes_published", 0) - before.get("coap_pushes_published", 0)
                check(published == 0, f"rp_filter {value}: none published ({published})")
        print(f"  forged readings accepted: {accepted} of 20 from the LAN and the WAN")
        events = [e for e in gw.events() if "IOTGW_RULE=device_segment.interfaces" in e]
        check(events and "IOTGW_EVENT=access-denied" in events[0], f"each refusal is an access-denied event: {events[:1]}")

        r = subprocess.run(lab.cmd("dev", "coap-client-notls", "-m", "post", "-B", "5", "-e", "22.0",
                                   f"coap://{DeviceLab.GW_DEV}:{PORT}/readings/temp"),
                           capture_output=True, text=True, timeout=20)
        time.sleep(0.5)
        check("sensors/thermo-01/readings/temp 22.0" in sub.lines(), f"the device's next push still arrives: {sub.lines()}")
        check(gw.alive(), "iotgwd is still running")
    finally:
        if sub:
            sub.stop()
        if gw:
            gw.stop()
        if broker:
            broker.stop()
        if lab:
            lab.destroy()
        cleanup(root)
    finish()


if __name__ == "__main__":
    main()
