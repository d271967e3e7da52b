#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack (issue 15, items 4 and 5): isolation that depended on sysctls and on addresses, in the
network lab (netlab.py: a real bridge, real nftables, the real iotgwd).

4. thermo-01 -> plug-02 on the same bridge: telnet over IPv4 and IPv6, and mDNS to 224.0.0.251 and
   ff02::fb, with net.bridge.bridge-nf-call-iptables / -ip6tables both 1, only the first, and
   neither (before: with only the first the IPv6 telnet and mDNS passed, with neither all four).
   After: nothing passes in any setting: the bridge table drops every frame from one device port
   to another, before br_netfilter is asked.
5. Quarantine: thermo-01 quarantined asks the gateway's DNS from its IPv6 link-local address
   (before: it was answered, quarantine held only its enrolled addresses); sensor-05, a device
   that only logs in (no address in its policy), quarantined, still reaches the gateway's MQTT
   listener and DNS (before: both). After: neither, the quarantine is keyed by MAC; DHCP still
   passes for both.

Reproduce: ctest --preset default -R test_attack_network_isolation -V
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, tmpdir, write  # noqa: E402
from netlab import (GW4, PLUG, PLUG6, THERMO, Gateway, Receiver, in_ns, reach, run,  # noqa: E402
                    send_udp, sh, sysctl)

DNS_QUERY = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"


def gateway_link_local():
    out = sh("ip", "-6", "addr", "show", "dev", "br-iot", "scope", "link").stdout
    return out.split("inet6 ")[1].split("/")[0]


def inside():
    t0 = time.time()
    root = tmpdir("iotgw-net-isolation-")
    gw = Gateway(root)
    procs = []
    receivers = []
    try:
        if not check(gw.up, "iotgwd starts with its tables in the lab"):
            print("\n".join(gw.events.lines()[-20:]))
            return

        print("item 4: device to device, with each br_netfilter setting")
        procs.append(subprocess.Popen(in_ns("plug", "socat", "TCP4-LISTEN:23,fork,reuseaddr", "SYSTEM:echo login:"),
                                      stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(in_ns("plug", "socat", "TCP6-LISTEN:23,fork,reuseaddr,ipv6only=1",
                                            "SYSTEM:echo login:"), stderr=subprocess.DEVNULL))
        mdns4 = Receiver(root, "plug", "0.0.0.0", 5353, group="224.0.0.251", mcast_addr=PLUG)
        mdns6 = Receiver(root, "plug", "::", 5353, group="ff02::fb")
        receivers += [mdns4, mdns6]
        time.sleep(0.3)
        for call4, call6 in ((1, 1), (1, 0), (0, 0)):
            sysctl("gw", "net.bridge.bridge-nf-call-iptables", call4)
            sysctl("gw", "net.bridge.bridge-nf-call-ip6tables", call6)
            before = (mdns4.count(), mdns6.count())
            telnet4 = reach("thermo", PLUG, 23)
            telnet6 = reach("thermo", PLUG6, 23)
            send_udp("thermo", "224.0.0.251", 5353, b"mdns", mcast_if=THERMO)
            send_udp("thermo", "ff02::fb", 5353, b"mdns")
            time.sleep(0.3)
            got4, got6 = mdns4.count() - before[0], mdns6.count() - before[1]
            passed = sum([telnet4, telnet6, got4 > 0, got6 > 0])
            check(passed == 0, f"bridge-nf-call-iptables={call4} ip6tables={call6}: {passed} of 4 passed "
                               f"thermo-01 -> plug-02 (telnet IPv4 {telnet4}, IPv6 {telnet6}, mDNS IPv4 {got4}, "
                               f"IPv6 {got6})")
        sysctl("gw", "net.bridge.bridge-nf-call-iptables", 1)
        sysctl("gw", "net.bridge.bridge-nf-call-ip6tables", 1)

        print("item 5: quarantine by MAC")
        dns6 = Receiver(root, None, "::", 53)
        dns4 = Receiver(root, None, GW4, 53)
        dhcp = Receiver(root, None, "0.0.0.0", 67)
        receivers += [dns6, dns4, dhcp]
        link_local = gateway_link_local()
        send_udp("thermo", link_local, 53, DNS_QUERY)
        time.sleep(0.3)
        check(dns6.count() == 1, f"control: before quarantine thermo-01 asks [{link_local}]:53 ({dns6.count()})")
        check(reach("sensor", GW4, 1883), "control: before quarantine sensor-05 reaches the MQTT listener")
        for device in ("thermo-01", "sensor-05"):
            write(os.path.join(gw.state, "quarantine", device), "reason = \"test\"\n")
        check(gw.reload(1), "quarantine files written, reload applied")
        check(gw.events.wait_for("IOTGW_EVENT=device-quarantined", "IOTGW_DEVICE=sensor-05"),
              "sensor-05 quarantined (event)")
        before = dns6.count()
        send_udp("thermo", link_local, 53, DNS_QUERY)
        sensor_mqtt = reach("sensor", GW4, 1883)
        send_udp("sensor", GW4, 53, DNS_QUERY)
        for host in ("thermo", "sensor"):
            send_udp(host, GW4, 67, b"dhcp")
        time.sleep(0.5)
        got = dns6.count() - before
        check(got == 0, f"quarantined thermo-01 -> the gateway's DNS from its link-local address: {got} arrived")
        check(not sensor_mqtt, f"quarantined sensor-05 (no address in its policy) -> {GW4}:1883: {sensor_mqtt}")
        check(dns4.count() == 0, f"quarantined sensor-05 -> {GW4}:53: {dns4.count()} arrived")
        check(dhcp.count() == 2, f"DHCP from both quarantined devices still reaches the gateway ({dhcp.count()} of 2)")
        check(not reach("thermo", GW4, 1883, src=THERMO), "quarantined thermo-01 -> its enrolled address too")
        for device in ("thermo-01", "sensor-05"):
            os.remove(os.path.join(gw.state, "quarantine", device))
        check(gw.reload(2), "released")
        check(reach("sensor", GW4, 1883), "released: sensor-05 reaches the MQTT listener again")
    finally:
        for r in receivers:
            r.stop()
        for p in procs:
            p.kill()
        gw.stop()
        print(f"({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    run(inside)
