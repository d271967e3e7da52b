#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack (issue 15, items 2 and 3): a rogue host on another port of the device bridge passes for
an enrolled device, in the network lab (netlab.py: a real bridge, real nftables, the real iotgwd
and broker, frames crafted with scapy).

2. With thermo-01's MAC and address: while thermo-01 is online, one CoAP push (before: published
   as its reading); while it is offline, a push, a connection to thermo-01's allowed destination
   and the answer to an app's proxied CoAP GET (before: all three got through, the app read the
   rogue's forged value). After: none, thermo-01 is bound to the port it was learned on, and each
   attempt is a device-port-conflict event.
3. With its own MAC: an ARP reply and a gratuitous ARP claiming thermo-01's address (before: the
   gateway's neighbour entry pointed at the rogue, which then got the proxied CoAP request), a
   neighbour advertisement for plug-02's fd00:50::11 (before: the gateway's TCP to plug-02 went to
   the rogue); the same two inside a pair of VLAN priority tags (before: both poisoned the
   gateway's entries past every check); a router advertisement and DHCP/DHCPv6 server replies, with br_netfilter passing
   bridged traffic to the IP hooks and without (before, without: thermo-01 took a SLAAC address
   and a default route from the rogue and heard both replies). After: none, each a
   neighbour-spoofing event.

And the bindings' own failure modes: a binding whose file cannot be written still holds across
reloads (before: the next reload dropped it, and whoever came first was bound), and a port file
that cannot be read binds its device to no port at all, with an event (before: it was deleted
and the device learned again).

Reproduce: ctest --preset default -R test_attack_network_impersonation -V
"""
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, tmpdir  # noqa: E402
from netlab import (GW4, MAC, NS, PLUG6, THERMO, WAN, CoapDevice, Gateway, Receiver, coap_get,  # noqa: E402
                    coap_push, in_ns, neighbour, reach, run, scapy, sh, sysctl)

ARP_POISON = """
rogue, gwmac, victim, gw = sys.argv[1:5]
reply = Ether(src=rogue, dst=gwmac) / ARP(op=2, hwsrc=rogue, psrc=victim, hwdst=gwmac, pdst=gw)
announce = Ether(src=rogue, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=rogue, psrc=victim, pdst=victim)
sendp([reply, announce, reply], iface="eth0")
"""

NA_POISON = """
rogue, gwmac, victim = sys.argv[1:4]
ll = "fe80::" + in6_mactoifaceid(rogue)
na = ICMPv6ND_NA(tgt=victim, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=rogue)
sendp([Ether(src=rogue, dst="33:33:00:00:00:01") / IPv6(src=ll, dst="ff02::1") / na,
       Ether(src=rogue, dst=gwmac) / IPv6(src=ll, dst="fe80::" + in6_mactoifaceid(gwmac)) / na], iface="eth0")
"""

# The same claims inside two priority tags (802.1Q, VLAN 0): the kernel takes the outer tag off
# before the bridge hook, so the frame's type there is the inner tag, and the stack strips both on
# the way up and learns from what is inside.
VLAN_POISON = """
rogue, gwmac, victim, gw, plug6 = sys.argv[1:6]
ll = "fe80::" + in6_mactoifaceid(rogue)
tags = Dot1Q(vlan=0) / Dot1Q(vlan=0)
arp = Ether(src=rogue, dst=gwmac) / tags / ARP(op=2, hwsrc=rogue, psrc=victim, hwdst=gwmac, pdst=gw)
na = (Ether(src=rogue, dst=gwmac) / tags / IPv6(src=ll, dst="fe80::" + in6_mactoifaceid(gwmac)) /
      ICMPv6ND_NA(tgt=plug6, R=0, S=0, O=1) / ICMPv6NDOptDstLLAddr(lladdr=rogue))
sendp([arp, na, arp, na], iface="eth0")
"""

ROGUE_SERVERS = """
rogue, thermo = sys.argv[1:3]
ll = "fe80::" + in6_mactoifaceid(rogue)
thermo_ll = "fe80::" + in6_mactoifaceid(thermo)
ra = (Ether(src=rogue, dst="33:33:00:00:00:01") / IPv6(src=ll, dst="ff02::1") /
      ICMPv6ND_RA(routerlifetime=1800) / ICMPv6NDOptSrcLLAddr(lladdr=rogue) /
      ICMPv6NDOptPrefixInfo(prefix="fd99::", prefixlen=64, L=1, A=1, validlifetime=3600, preferredlifetime=3600))
offer = (Ether(src=rogue, dst="ff:ff:ff:ff:ff:ff") / IP(src="192.168.50.66", dst="255.255.255.255") /
         UDP(sport=67, dport=68) / BOOTP(op=2, yiaddr="192.168.50.99", chaddr=bytes.fromhex(thermo.replace(":", ""))) /
         DHCP(options=[("message-type", "offer"), ("router", "192.168.50.66"), "end"]))
advertise = (Ether(src=rogue, dst=thermo) / IPv6(src=ll, dst=thermo_ll) / UDP(sport=547, dport=546) /
             Raw(b"\\x02\\x00\\x00\\x01"))
sendp([ra, offer, advertise], iface="eth0")
"""


def set_mac(ns, mac, add=None, remove=None):
    sh("ip", "-n", NS[ns], "link", "set", "eth0", "down")
    sh("ip", "-n", NS[ns], "link", "set", "eth0", "address", mac)
    if add:
        sh("ip", "-n", NS[ns], "addr", "add", add, "dev", "eth0")
    if remove:
        sh("ip", "-n", NS[ns], "addr", "del", remove, "dev", "eth0")
    sh("ip", "-n", NS[ns], "link", "set", "eth0", "up")
    # Taking the link down took the default route with it.
    sh("ip", "-n", NS[ns], "route", "replace", "default", "via", GW4)


def port_drops():
    """Frames the bridge table dropped for carrying an enrolled MAC on the wrong port (the control
    that a refused push did leave its sender and was stopped by the table)."""
    out = sh("nft", "list", "chain", "bridge", "iotgw", "wrong_port").stdout
    return sum(int(w) for w in out.split("counter packets ")[1:] for w in [w.split()[0]])


def thermo_slaac():
    """thermo's addresses and default routes that came from a router advertisement."""
    addrs = sh(*in_ns("thermo", "ip", "-6", "addr", "show", "dev", "eth0")).stdout
    routes = sh(*in_ns("thermo", "ip", "-6", "route", "show", "default")).stdout
    return ("fd99:" in addrs), ("default via fe80" in routes)


def inside():
    from mqttlab import Subscriber
    t0 = time.time()
    root = tmpdir("iotgw-net-impersonation-")
    gw = Gateway(root)
    sub = None
    procs = []
    try:
        if not check(gw.up, "iotgwd starts with its tables in the lab"):
            print("\n".join(gw.events.lines()[-20:]))
            return
        sub = Subscriber(gw.broker, "sensors/#", root)
        thermo_coap = CoapDevice(root, "thermo", THERMO, "thermo 21.5")
        procs.append(subprocess.Popen(in_ns("wan", "socat", "TCP-LISTEN:8883,fork,reuseaddr", "SYSTEM:echo wan"),
                                      stderr=subprocess.DEVNULL))
        procs.append(subprocess.Popen(in_ns("plug", "socat", "TCP6-LISTEN:80,fork,reuseaddr", "SYSTEM:echo plug"),
                                      stderr=subprocess.DEVNULL))
        coap_push("thermo", "/readings/temp", "21.5")
        check(sub.wait_for("sensors/thermo-01/readings/temp 21.5", 5), "control: thermo-01's reading arrives")
        out = coap_get(gw, "/thermo-01/temp")
        check("thermo 21.5" in out, f"control: the app reads thermo-01 through the DTLS proxy ({out!r})")
        time.sleep(0.5)  # the bridge table's report of thermo-01's first frames

        print("item 2: the rogue takes thermo-01's MAC and address (thermo-01 online)")
        set_mac("rogue", MAC["thermo"], add=f"{THERMO}/32")
        coap_push("rogue", "/readings/temp", "rogue-online-66.6", src=THERMO)
        print("item 2: thermo-01 offline")
        sh("ip", "-n", NS["thermo"], "link", "set", "eth0", "down")
        coap_push("rogue", "/readings/temp", "rogue-offline-66.6", src=THERMO)
        outbound = reach("rogue", WAN, 8883, src=THERMO)
        rogue_coap = CoapDevice(root, "rogue", THERMO, "FORGED 99.9")
        out = coap_get(gw, "/thermo-01/temp")
        rogue_coap.stop()
        time.sleep(0.3)
        forged = [line for line in sub.lines() if "rogue-" in line]
        check(not forged, f"forged readings published: {len(forged)} of 2 (thermo-01 online, offline) {forged}")
        check(not outbound, f"the rogue reaches thermo-01's allowed destination {WAN}:8883 as thermo-01: {outbound}")
        check("FORGED" not in out, f"the app's proxied GET answered by the rogue: {'FORGED' in out} ({out!r})")
        check(gw.events.wait_for("IOTGW_EVENT=device-port-bound", "IOTGW_DEVICE=thermo-01", "port gw-dev"),
              "thermo-01 was bound to port gw-dev when first seen (device-port-bound)")
        conflicts = gw.events.matching("IOTGW_EVENT=device-port-conflict", "IOTGW_DEVICE=thermo-01", "gw-rogue")
        check(bool(conflicts) and "IOTGW_PROVISION=5.10-1" in conflicts[0],
              f"its MAC on port gw-rogue is a device-port-conflict event ({len(conflicts)}): {conflicts[:1]}")
        # Back as they were.
        set_mac("rogue", MAC["rogue"], remove=f"{THERMO}/32")
        sh("ip", "-n", NS["thermo"], "link", "set", "eth0", "up")
        sh("ip", "-n", NS["thermo"], "route", "replace", "default", "via", GW4)
        coap_push("thermo", "/readings/temp", "21.7")
        check(sub.wait_for("sensors/thermo-01/readings/temp 21.7", 5), "control: thermo-01 back on its port is heard")

        print("item 3: ARP and neighbour advertisements from the rogue's own MAC")
        out = coap_get(gw, "/thermo-01/temp")  # the gateway's neighbour entry for thermo-01, fresh
        reach(None, PLUG6, 80)  # and for plug-02
        gwmac = sh("cat", "/sys/class/net/br-iot/address").stdout.strip()
        time.sleep(1.2)  # past the neighbour entries' lock time, so that an override would take
        sh("ip", "-n", NS["rogue"], "addr", "add", f"{THERMO}/32", "dev", "eth0")
        rogue_coap = CoapDevice(root, "rogue", THERMO, "FORGED 77.7")
        scapy("rogue", ARP_POISON, MAC["rogue"], gwmac, THERMO, GW4)
        scapy("rogue", NA_POISON, MAC["rogue"], gwmac, PLUG6)
        time.sleep(0.3)
        arp = neighbour(None, THERMO)
        nd = neighbour(None, PLUG6)
        out = coap_get(gw, "/thermo-01/temp")
        plug_tcp = reach(None, PLUG6, 80)
        requests = rogue_coap.requests()
        rogue_coap.stop()
        check(arp == MAC["thermo"], f"the gateway's ARP entry for {THERMO} after the rogue's ARP: {arp}")
        check(requests == 0 and "FORGED" not in out,
              f"proxied CoAP requests that went to the rogue: {requests} ({out!r})")
        check(nd == MAC["plug"], f"the gateway's neighbour entry for {PLUG6} after the rogue's advertisement: {nd}")
        check(plug_tcp, "the gateway's TCP to plug-02 [fd00:50::11]:80 reaches plug-02")
        check(gw.events.wait_for("IOTGW_EVENT=neighbour-spoofing", "IOTGW_RULE=bridge:arp", "IOTGW_DEVICE=thermo-01"),
              "the ARP poisoning is a neighbour-spoofing event naming thermo-01")
        check(gw.events.wait_for("IOTGW_EVENT=neighbour-spoofing", "IOTGW_RULE=bridge:nd", "IOTGW_DEVICE=plug-02"),
              "the neighbour advertisement is a neighbour-spoofing event naming plug-02")

        print("item 3: the same inside two VLAN tags (priority tags, VLAN 0)")
        time.sleep(1.2)  # past the neighbour entries' lock time again
        rogue_coap = CoapDevice(root, "rogue", THERMO, "FORGED 55.5")
        scapy("rogue", VLAN_POISON, MAC["rogue"], gwmac, THERMO, GW4, PLUG6)
        time.sleep(0.3)
        arp = neighbour(None, THERMO)
        nd = neighbour(None, PLUG6)
        out = coap_get(gw, "/thermo-01/temp")
        requests = rogue_coap.requests()
        rogue_coap.stop()
        check(arp == MAC["thermo"], f"double-tagged ARP: the gateway's entry for {THERMO}: {arp}")
        check(nd == MAC["plug"], f"double-tagged advertisement: the gateway's entry for {PLUG6}: {nd}")
        check(requests == 0 and "FORGED" not in out,
              f"proxied CoAP requests that went to the rogue: {requests} ({out!r})")
        check(gw.events.wait_for("IOTGW_EVENT=neighbour-spoofing", "IOTGW_RULE=bridge:ethertype", "0x8100"),
              "the tagged frames are neighbour-spoofing events (bridge:ethertype, type 0x8100)")
        sh("ip", "-n", NS["rogue"], "addr", "del", f"{THERMO}/32", "dev", "eth0")

        print("item 3: a router advertisement and DHCP server replies from a device port")
        dhcp = Receiver(root, "thermo", "0.0.0.0", 68)
        dhcp6 = Receiver(root, "thermo", "::", 546)
        for call_iptables in (1, 0):
            sysctl("gw", "net.bridge.bridge-nf-call-iptables", call_iptables)
            sysctl("gw", "net.bridge.bridge-nf-call-ip6tables", call_iptables)
            before = (dhcp.count(), dhcp6.count())
            scapy("rogue", ROGUE_SERVERS, MAC["rogue"], MAC["thermo"])
            time.sleep(1.0)
            address, route = thermo_slaac()
            what = f"bridge-nf-call-ip(6)tables = {call_iptables}"
            check(not address and not route,
                  f"{what}: thermo-01 took a SLAAC address from the rogue: {address}, a default route: {route}")
            got = (dhcp.count() - before[0], dhcp6.count() - before[1])
            check(got == (0, 0), f"{what}: DHCP and DHCPv6 server replies thermo-01 heard: {got[0]}, {got[1]}")
            subprocess.run(in_ns("thermo", "ip", "-6", "addr", "flush", "dev", "eth0", "to", "fd99::/64"),
                           capture_output=True)
            subprocess.run(in_ns("thermo", "ip", "-6", "route", "flush", "default"), capture_output=True)
        dhcp.stop()
        dhcp6.stop()
        check(gw.events.wait_for("IOTGW_EVENT=neighbour-spoofing", "IOTGW_RULE=bridge:router"),
              "the router advertisement is a neighbour-spoofing event")
        check(gw.events.wait_for("IOTGW_EVENT=neighbour-spoofing", "IOTGW_RULE=bridge:dhcp-server"),
              "the DHCP server replies are neighbour-spoofing events")
        thermo_coap.stop()

        print("item 2: the moves a household makes")
        # Two more ports for thermo-01, one interface group (as two radios of the gateway's, or two
        # access points' uplinks, would be made one place).
        gwns, thermo = NS["gw"], NS["thermo"]
        for port, eth in (("gw-dev2", "eth1"), ("gw-dev3", "eth2")):
            sh("ip", "link", "add", port, "netns", gwns, "group", "7", "type", "veth", "peer", "name", eth,
               "netns", thermo)
            sh("ip", "-n", thermo, "link", "set", eth, "address", MAC["thermo"])
            sh("ip", "-n", gwns, "link", "set", port, "master", "br-iot")
            sh("ip", "-n", gwns, "link", "set", port, "up")

        def plug_into(eth, old):
            sh("ip", "-n", thermo, "link", "set", old, "down")
            sh("ip", "-n", thermo, "addr", "replace", f"{THERMO}/24", "dev", eth)
            sh("ip", "-n", thermo, "link", "set", eth, "up")

        plug_into("eth1", "eth0")
        before = port_drops()
        coap_push("thermo", "/readings/temp", "moved-21.1")
        check(not sub.wait_for("moved-21.1", 1) and port_drops() > before,
              f"thermo-01 replugged into gw-dev2: its reading is refused by the table "
              f"({port_drops() - before} frames dropped on the wrong port)")
        check(gw.events.wait_for("IOTGW_EVENT=device-port-conflict", "IOTGW_DEVICE=thermo-01", "port gw-dev2"),
              "until released: a device-port-conflict event names gw-dev2")
        os.remove(os.path.join(gw.state, "ports", "thermo-01"))
        check(gw.reload(1), "the administrator releases its port (removes state/ports/thermo-01, reloads)")
        # Its ARP for the gateway from before the release may still be running out its probes (all
        # dropped on the wrong port), and a datagram sent now would only wait in that queue until
        # it fails; the device's next attempt starts afresh, as this one does.
        sh("ip", "-n", thermo, "neigh", "flush", "dev", "eth1")
        coap_push("thermo", "/readings/temp", "moved-21.2")
        check(sub.wait_for("sensors/thermo-01/readings/temp moved-21.2", 5), "then its reading from gw-dev2 arrives")
        check(gw.events.wait_for("IOTGW_EVENT=device-port-bound", "IOTGW_DEVICE=thermo-01", "interface group 7"),
              "and it is bound again, to gw-dev2's interface group 7")
        plug_into("eth2", "eth1")
        time.sleep(0.3)
        coap_push("thermo", "/readings/temp", "moved-21.3")
        check(sub.wait_for("sensors/thermo-01/readings/temp moved-21.3", 5),
              "moved to gw-dev3 in the same group (another radio): heard with nobody's help")

        print("item 2: a binding that cannot be saved still holds")
        path = os.path.join(gw.state, "ports", "thermo-01")
        os.remove(path)
        os.makedirs(os.path.join(path, "in-the-way"))  # a directory where its file goes: no write lands
        check(gw.reload(2), "released again, with its file's place taken")
        coap_push("thermo", "/readings/temp", "unsaved-21.5")
        check(sub.wait_for("sensors/thermo-01/readings/temp unsaved-21.5", 5), "control: thermo-01 heard, bound again")
        check(gw.events.wait_for("IOTGW_EVENT=device-port-bound", "IOTGW_DEVICE=thermo-01", "not saved"),
              "its device-port-bound event says the binding is not saved")
        check(gw.reload(3), "a reload while its file still cannot be written")
        set_mac("rogue", MAC["thermo"], add=f"{THERMO}/32")
        before = port_drops()
        coap_push("rogue", "/readings/temp", "rogue-unsaved-66.6", src=THERMO)
        check(not sub.wait_for("rogue-unsaved", 1.5) and port_drops() > before,
              "after the reload the rogue with thermo-01's MAC is still refused (the binding held)")
        set_mac("rogue", MAC["rogue"], remove=f"{THERMO}/32")
        shutil.rmtree(path)
        check(gw.reload(4), "the way cleared, a reload")
        saved = open(path).read() if os.path.isfile(path) else ""
        check("group = 7" in saved, f"and the binding is written: {saved!r}")

        print("item 2: the binding outlives a restart of iotgwd")
        ports_dir = os.path.join(gw.state, "ports")
        ports = {n: open(os.path.join(ports_dir, n)).read() for n in os.listdir(ports_dir)}
        check("thermo-01" in ports and "group = 7" in ports["thermo-01"], f"kept on disk: {sorted(ports)}")
        # And an administrator's pin with a mistake in it: fail closed, not "learn again".
        ports["plug-02"] = 'mac = "02:00:00:00:00:11"\nprot = "gw-plug"\n'  # "port" misspelt
        sub.stop()
        sub = None
        gw.stop()
        gw = Gateway(tmpdir("iotgw-net-impersonation-2-"), ports=ports)
        check(gw.up, "iotgwd starts again")
        sub = Subscriber(gw.broker, "sensors/#", gw.root)
        coap_push("thermo", "/readings/temp", "restart-21.4")
        check(sub.wait_for("restart-21.4", 5), "control: thermo-01 is heard through the new iotgwd")
        sh("ip", "-n", thermo, "link", "set", "eth2", "down")  # and goes offline
        set_mac("rogue", MAC["thermo"], add=f"{THERMO}/32")
        before = port_drops()
        coap_push("rogue", "/readings/temp", "rogue-restart-66.6", src=THERMO)
        check(not sub.wait_for("rogue-restart", 1.5) and port_drops() > before,
              "the rogue with thermo-01's MAC right after the restart: refused by the table")
        check(gw.events.wait_for("IOTGW_EVENT=device-port-conflict", "IOTGW_DEVICE=thermo-01", "gw-rogue"),
              "a device-port-conflict event")
        check(gw.events.wait_for("IOTGW_EVENT=device-port-conflict", "IOTGW_DEVICE=plug-02", "IOTGW_RULE=ports:file"),
              "plug-02's unreadable port file is an event")
        check(not reach(None, PLUG6, 80), "and plug-02 is refused on every port until it is fixed")
        check(os.path.isfile(os.path.join(gw.state, "ports", "plug-02")), "the file is left for the administrator")
    finally:
        for p in procs:
            p.kill()
        if sub:
            sub.stop()
        gw.stop()
        print(f"({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    run(inside)
