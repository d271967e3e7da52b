#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack (issue 15, items 1 and 6): the device side reached from where it must not be, in the
network lab (netlab.py: a real bridge, real nftables, the real iotgwd and broker).

1. A LAN host and a WAN host each send one CoAP POST with thermo-01's address as its source to the
   gateway's device-side endpoint 192.168.50.1:5683, with rp_filter 0 (off) and 2 (loose): none
   may reach the broker as thermo-01's reading (before: all four did). Neither may open a
   connection to the plaintext, device-side-only MQTT listener (before: both could). thermo-01's
   own reading still arrives.
6. A device asks a resolver bound to the gateway's LAN address and one bound to its WAN address:
   nothing arrives (before: both queries did); the resolver on the device-side address gets its
   query.

Reproduce: ctest --preset default -R test_attack_network_forged_source -V
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, tmpdir  # noqa: E402
from netlab import (GW4, GW_LAN, GW_WAN, THERMO, Gateway, Receiver, coap_push, reach, run,  # noqa: E402
                    send_udp, sh, sysctl, NS)


def inside():
    from mqttlab import Subscriber
    t0 = time.time()
    root = tmpdir("iotgw-net-forged-")
    gw = Gateway(root)
    sub = None
    receivers = []
    try:
        if not check(gw.up, "iotgwd starts with its tables in the lab"):
            print("\n".join(gw.events.lines()[-20:]))
            return
        sub = Subscriber(gw.broker, "sensors/#", root)

        print("item 1: readings forged from the LAN and the WAN")
        coap_push("thermo", "/readings/temp", "21.5")
        check(sub.wait_for("sensors/thermo-01/readings/temp 21.5", 5),
              "control: thermo-01's own reading reaches the broker")
        for host in ("lan", "wan"):
            sh("ip", "-n", NS[host], "addr", "add", f"{THERMO}/32", "dev", "eth0")
        sent = 0
        for rp in (0, 2):
            for iface in ("all", "default", "gw-lan", "gw-wan"):
                sysctl("gw", f"net.ipv4.conf.{iface}.rp_filter", rp)
            for host in ("lan", "wan"):
                coap_push(host, "/readings/temp", f"{host}-rp{rp}-99.9", src=THERMO)
                sent += 1
        coap_push("thermo", "/readings/temp", "21.6")
        check(sub.wait_for("sensors/thermo-01/readings/temp 21.6", 5),
              "control: thermo-01's next reading, sent after the forged ones, arrives")
        time.sleep(0.3)
        forged = [line for line in sub.lines() if "-rp" in line]
        check(not forged, f"forged readings published as thermo-01's: {len(forged)} of {sent} "
                          f"(rp_filter 0 and 2, from the LAN and the WAN) {forged}")
        for host in ("lan", "wan"):
            check(not reach(host, GW4, 1883),
                  f"{host} host -> the device-side MQTT listener {GW4}:1883: no connection")
        check(reach("thermo", GW4, 1883), "control: the device reaches it")

        print("item 6: DNS only on the device-side address")
        for address in (GW_LAN, GW_WAN, GW4):
            receivers.append(Receiver(root, None, address, 53))
        for address in (GW_LAN, GW_WAN, GW4):
            send_udp("thermo", address, 53, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
        time.sleep(0.5)
        lan, wan, dev = (r.count() for r in receivers)
        check(lan == 0, f"thermo -> a resolver on the LAN address {GW_LAN}:53: {lan} queries arrived")
        check(wan == 0, f"thermo -> a resolver on the WAN address {GW_WAN}:53: {wan} queries arrived")
        check(dev == 1, f"control: thermo -> the resolver on the device-side address {GW4}:53: {dev}")
    finally:
        for r in receivers:
            r.stop()
        if sub:
            sub.stop()
        gw.stop()
        print(f"({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    run(inside)
