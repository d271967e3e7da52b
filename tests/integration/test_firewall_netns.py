#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""The per-device firewall with real packets, in network namespaces this test makes:

    lan (192.168.1.20) ---+
                          |  gw: iotgwd, routing, table inet iotgw, a mosquitto broker on its loopback
    wan (203.0.113.5) ----+
                          |  br-iot (192.168.50.1): the device segment, a bridge
    device (192.168.50.10, MAC 02:00:00:00:00:10; telnet, HTTP and more open)
    rogue  (192.168.50.66, another host on the segment)

No namespace has a route anywhere but to the gateway. The test re-runs itself inside the gateway's
namespace; the other hosts are reached with `ip netns exec`.
"""
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import (IOTGWD, check, finish, hash_password, require_binary, tmpdir,  # noqa: E402
                           write)

P = f"iotgwt{os.getpid() % 100000}"
NS = {n: f"{P}-{n}" for n in ("gw", "dev", "lan", "wan", "rogue")}
DEVICE, ROGUE, LAN, WAN, GW = "192.168.50.10", "192.168.50.66", "192.168.1.20", "203.0.113.5", "192.168.50.1"
DEVICE_MAC = "02:00:00:00:00:10"


def sh(*args, check_rc=True):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check_rc and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


def in_ns(ns, *args):
    return ["ip", "netns", "exec", NS[ns], *args]


def build_lab():
    for ns in NS.values():
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    gw = NS["gw"]
    sh("ip", "-n", gw, "link", "add", "br-iot", "type", "bridge")
    for host, gwif in (("dev", "gw-dev"), ("rogue", "gw-rogue"), ("lan", "gw-lan"), ("wan", "gw-wan")):
        sh("ip", "link", "add", gwif, "netns", gw, "type", "veth", "peer", "name", "eth0", "netns", NS[host])
        sh("ip", "-n", gw, "link", "set", gwif, "up")
    for port in ("gw-dev", "gw-rogue"):
        sh("ip", "-n", gw, "link", "set", port, "master", "br-iot")
    sh("ip", "-n", gw, "link", "set", "br-iot", "up")
    sh("ip", "-n", gw, "addr", "add", f"{GW}/24", "dev", "br-iot")
    sh("ip", "-n", gw, "addr", "add", "192.168.1.1/24", "dev", "gw-lan")
    sh("ip", "-n", gw, "addr", "add", "203.0.113.1/24", "dev", "gw-wan")
    sh(*in_ns("gw", "sysctl", "-qw", "net.ipv4.ip_forward=1"))
    sh("ip", "-n", NS["dev"], "link", "set", "eth0", "address", DEVICE_MAC)
    for host, addr, via in (("dev", f"{DEVICE}/24", GW), ("rogue", f"{ROGUE}/24", GW),
                            ("lan", f"{LAN}/24", "192.168.1.1"), ("wan", f"{WAN}/24", "203.0.113.1")):
        sh("ip", "-n", NS[host], "addr", "add", addr, "dev", "eth0")
        sh("ip", "-n", NS[host], "link", "set", "eth0", "up")
        sh("ip", "-n", NS[host], "route", "add", "default", "via", via)


def destroy_lab():
    for ns in NS.values():
        subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


PROBE = """
import socket, sys
host, port, proto, src = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
if src != "-":
    s.bind((src, 0))
s.settimeout(0.8)
sys.exit(0 if s.connect_ex((host, port)) == 0 else 1)
"""


def reach(ns, host, port, src="-"):
    """A TCP connection from namespace `ns` (None: the gateway itself) completes."""
    cmd = [sys.executable, "-c", PROBE, host, str(port), "tcp", src]
    if ns is not None:
        cmd = in_ns(ns, *cmd)
    return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0


def table_exists():
    return subprocess.run(["nft", "list", "table", "inet", "iotgw"], capture_output=True).returncode == 0


class Events:
    """iotgwd's events on stderr, one line each."""

    def __init__(self, path):
        self.path = path

    def lines(self):
        with open(self.path) as f:
            return f.read().splitlines()

    def wait_for(self, text, timeout=5.0, count=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if sum(text in line for line in self.lines()) >= count:
                return True
            time.sleep(0.02)
        return False


def listeners():
    procs = []
    for port in (21, 22, 23, 80, 443, 554, 2323, 7547, 8080, 8443):
        procs.append(subprocess.Popen(in_ns("dev", "socat", f"TCP-LISTEN:{port},fork,reuseaddr", "SYSTEM:echo device"),
                                      stderr=subprocess.DEVNULL))
    for port in (8883, 443, 1883):
        procs.append(subprocess.Popen(in_ns("wan", "socat", f"TCP-LISTEN:{port},fork,reuseaddr", "SYSTEM:echo wan"),
                                      stderr=subprocess.DEVNULL))
    return procs


def inside():
    from mqttlab import Broker, Pki, Subscriber  # noqa: E402 (imported in the gateway's namespace)

    root = tmpdir("iotgw-fw-")
    procs = []
    d = None
    broker = None
    try:
        pki = Pki(os.path.join(root, "pki"))
        broker = Broker(root, pki)
        devices = os.path.join(root, "devices.d")
        thermo = f"""[device]
id = "thermo-01"
mac = "{DEVICE_MAC}"
addresses = ["{DEVICE}"]
[device.mqtt]
client_id = "thermo-01"
username = "thermo"
password_hash = "{hash_password('s3cret-thermo')}"
[mqtt]
publish = ["devices/%c/telemetry/#"]
[network]
outbound = ["{WAN}:8883/tcp"]
services = ["80/tcp"]
[violation]
action = "quarantine"
"""
        write(os.path.join(devices, "thermo-01.toml"), thermo)
        state = os.path.join(root, "state")
        conf = os.path.join(root, "iotgw.toml")
        write(conf, f"""[daemon]
state_directory = "{state}"
devices_directory = "{devices}"
[device_segment]
interfaces = ["br-iot"]
subnets = ["192.168.50.0/24"]
[listeners.mqtt]
addresses = ["{GW}"]
port = 1883
[upstream]
host = "127.0.0.1"
port = {broker.port}
ca_file = "{pki.ca}"
certificate = "{pki.gateway[0]}"
private_key = "{pki.gateway[1]}"
[firewall]
keep_rules_on_exit = false
scan_probes_per_second = 100
telemetry_interval_seconds = 1
[dbus]
enabled = false
[events]
target = "stderr"
burst = 1000
""")
        procs += listeners()
        errlog = os.path.join(root, "iotgwd.err")
        err = open(errlog, "w")
        d = subprocess.Popen([IOTGWD, "--config", conf], stdout=subprocess.DEVNULL, stderr=err)
        events = Events(errlog)
        if not check(events.wait_for("started", 10), "iotgwd starts and installs table inet iotgw"):
            print(open(errlog).read())
            return
        time.sleep(0.3)  # socat listeners
        check(table_exists(), "table inet iotgw exists")

        print("isolation")
        check(not reach("lan", DEVICE, 23), "lan -> device:23 (telnet) blocked")
        check(not reach("lan", DEVICE, 80), "lan -> device:80 (HTTP admin) blocked")
        check(not reach("wan", DEVICE, 23), "wan -> device:23 blocked")
        check(reach("dev", WAN, 8883), "device -> wan:8883 allowed (its policy)")
        check(not reach("dev", WAN, 443), "device -> wan:443 blocked (not in its policy)")
        check(not reach("dev", LAN, 22), "device -> lan blocked")
        check(reach("dev", GW, 1883), "device -> gw:1883 allowed (iotgwd's listener)")
        check(not reach("dev", GW, 22), "device -> gw:22 blocked (not a device-side service)")
        check(reach(None, DEVICE, 80), "gw -> device:80 allowed (a service its policy lists)")
        check(not reach(None, DEVICE, 23), "gw -> device:23 blocked (not listed)")
        check(reach("lan", WAN, 443), "lan -> wan untouched by the table")
        scan = subprocess.run(in_ns("lan", "nmap", "-n", "-Pn", "-sT", "--max-retries", "1", "--host-timeout", "60s",
                                    "-p", "21,22,23,80,443,554,1883,2323,7547,8080,8443,8883", DEVICE),
                              capture_output=True, text=True, timeout=120)
        open_ports = [line for line in scan.stdout.splitlines() if "/tcp" in line and " open " in line]
        check(scan.returncode == 0 and "/tcp" in scan.stdout and not open_ports,
              f"nmap from lan finds no open port on the device ({open_ports or 'none open'})")

        print("exposure scan")
        check(events.wait_for("IOTGW_RULE=exposure-scan:23/tcp", 15),
              "the exposure scan finds telnet open on the device (event 5.6-1)")
        telnet = [line for line in events.lines() if "exposure-scan:23/tcp" in line]
        check(telnet and "Mirai" in telnet[0] and "IOTGW_PROVISION=5.6-1" in telnet[0],
              "the telnet event names Mirai and provision 5.6-1")
        found = sorted(int(line.split("exposure-scan:")[1].split("/")[0]) for line in events.lines()
                       if "exposure-scan:" in line)
        check(found == [21, 22, 23, 443, 554, 2323, 7547, 8080, 8443],
              f"every open port the policy does not list is reported, and 80/tcp (listed) is not ({found})")
        check(not reach("lan", DEVICE, 2323), "and the firewall keeps them unreachable from the LAN")

        print("interception and telemetry")
        sub = Subscriber(broker, "#", root)
        pub = subprocess.run(in_ns("dev", "mosquitto_pub", "-h", WAN, "-p", "1883", "-i", "thermo-01", "-u", "thermo",
                                   "-P", "s3cret-thermo", "-q", "1", "-t", "devices/thermo-01/telemetry/temp",
                                   "-m", "21.5"), capture_output=True, text=True, timeout=20)
        check(pub.returncode == 0 and sub.wait_for("devices/thermo-01/telemetry/temp 21.5"),
              "device MQTT aimed at a cloud broker (wan:1883) is intercepted by iotgwd and reaches the broker over mTLS")
        sub.stop()
        tx = subprocess.run(["nft", "list", "counter", "inet", "iotgw", "tx-thermo-01"], capture_output=True, text=True).stdout
        packets = int(tx.split("packets")[1].split()[0]) if "packets" in tx else 0
        check(packets > 0, f"per-device counter tx-thermo-01 counts the device's packets ({packets})")
        # The device, quiet so far, floods a (denied) UDP port for 3 s: iotgwd reads the counters
        # every second and reports the surge (5.10-1), once.
        check(not events.wait_for("traffic-surge", 0.1), "no traffic surge while the device is quiet")
        blast = subprocess.run(in_ns("dev", os.environ["UDP_BLAST"], WAN, "9", "3"), capture_output=True,
                               text=True, timeout=20)
        sent = int(blast.stdout.strip().split("=")[1]) if blast.returncode == 0 else 0
        check(events.wait_for("traffic-surge", 3), f"a flood from the device ({sent} datagrams in 3 s) is a traffic-surge event")
        surge = [line for line in events.lines() if "traffic-surge" in line]
        check(len(surge) == 1 and "IOTGW_DEVICE=thermo-01" in surge[0] and "IOTGW_PROVISION=5.10-1" in surge[0],
              f"one event, naming the device and provision 5.10-1 ({surge[:1]})")

        print("drift repair")
        t0 = time.time()
        subprocess.run(["nft", "delete", "table", "inet", "iotgw"], check=True)
        while not table_exists() and time.time() - t0 < 3:
            time.sleep(0.01)
        repaired = time.time() - t0
        check(table_exists() and repaired < 1.0, f"`nft delete table inet iotgw` repaired within 1 s ({repaired * 1000:.0f} ms)")
        check(events.wait_for("table inet iotgw was changed by nft", 2), "the repair is an event naming who changed it")
        check(not reach("lan", DEVICE, 23), "after the repair lan -> device:23 is blocked again")
        t0 = time.time()
        subprocess.run(["nft", "flush", "ruleset"], check=True)
        while not table_exists() and time.time() - t0 < 3:
            time.sleep(0.01)
        check(table_exists() and time.time() - t0 < 1.0, "`nft flush ruleset` repaired within 1 s")

        print("atomicity: a denied flow during 100 policy reloads")
        received = os.path.join(root, "udp-received")
        recv = subprocess.Popen(in_ns("dev", "socat", "-u", "UDP-RECV:9999", f"OPEN:{received},creat,append"),
                                stderr=subprocess.DEVNULL)
        procs.append(recv)
        # The sender keeps sending until told to stop, then says how many datagrams it sent.
        sender = subprocess.Popen(in_ns("lan", sys.executable, "-c", """
import signal, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n = 0
def done(*_):
    print(n, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
while True:
    s.sendto(b"probe", (sys.argv[1], 9999))
    n += 1
    if n % 50 == 0:
        time.sleep(0.001)
""", DEVICE), stdout=subprocess.PIPE, text=True)
        time.sleep(0.3)
        plug = os.path.join(devices, "plug-02.toml")
        reloads = 0
        for i in range(100):
            if i % 2 == 0:
                write(plug, '[device]\nid = "plug-02"\nmac = "02:00:00:00:00:11"\naddresses = ["192.168.50.11"]\n'
                      f'[network]\noutbound = ["{WAN}:{8000 + i}/tcp"]\n')
            else:
                os.remove(plug)
            d.send_signal(signal.SIGHUP)
            reloads += 1
            if not events.wait_for("applied", 5, count=reloads):
                break
        sender.send_signal(signal.SIGTERM)
        sent = int((sender.communicate(timeout=10)[0] or "0").strip() or 0)
        time.sleep(0.2)
        got = os.path.getsize(received) if os.path.exists(received) else 0
        applied = sum("applied" in line for line in events.lines())
        check(reloads == 100 and applied == 100, f"100 reloads applied ({applied})")
        if applied != 100:
            print("\n".join(line for line in events.lines() if "reload" in line)[-2000:])
        check(got == 0, f"zero datagrams of the denied flow reached the device during the reloads ({got} bytes)")
        check(sent > 1000, f"the probe kept sending throughout ({sent} datagrams sent, none arrived)")
        subprocess.run(in_ns("dev", sys.executable, "-c",
                             f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{DEVICE}', 9999))"))
        time.sleep(0.3)
        check(os.path.exists(received) and os.path.getsize(received) > 0,
              "control: the device's receiver does take datagrams (sent on the device itself)")

        print("quarantine")
        subprocess.run(in_ns("dev", "mosquitto_pub", "-h", GW, "-p", "1883", "-i", "thermo-01", "-u", "thermo",
                             "-P", "s3cret-thermo", "-q", "0", "-t", "devices/thermo-01/admin/shell", "-m", "x"),
                       capture_output=True, text=True, timeout=20)
        check(events.wait_for("thermo-01 quarantined", 5), "an out-of-policy publish quarantines the device (event 5.3-15)")
        quarantine_event = [line for line in events.lines() if "quarantined" in line]
        check(quarantine_event and "IOTGW_PROVISION=5.3-15" in quarantine_event[-1], "the event names provision 5.3-15")
        check(os.path.exists(os.path.join(state, "quarantine", "thermo-01")), "the quarantine is persisted in the state directory")
        check(not reach("dev", GW, 1883), "quarantined: device -> gw:1883 cut off")
        check(not reach("dev", WAN, 8883), "quarantined: device -> wan:8883 cut off")
        check(not reach(None, DEVICE, 80), "quarantined: gw -> device:80 cut off")
        dhcp = os.path.join(root, "dhcp-received")
        dh = subprocess.Popen(["socat", "-u", f"UDP-RECV:67,bind={GW}", f"OPEN:{dhcp},creat,append"], stderr=subprocess.DEVNULL)
        procs.append(dh)
        time.sleep(0.2)
        subprocess.run(in_ns("dev", sys.executable, "-c",
                             f"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'dhcp', ('{GW}', 67))"))
        time.sleep(0.3)
        check(os.path.exists(dhcp) and os.path.getsize(dhcp) > 0, "quarantined: DHCP to the gateway still passes")
        os.remove(os.path.join(state, "quarantine", "thermo-01"))
        d.send_signal(signal.SIGHUP)
        check(events.wait_for("applied", 5, count=101), "release: quarantine file removed, reload applied")
        check(reach("dev", WAN, 8883), "released: device -> wan:8883 restored")
        check(reach("dev", GW, 1883), "released: device -> gw:1883 restored")

        print("anti-spoofing")
        check(reach("rogue", GW, 1883), "another host on the segment may reach the gateway's MQTT port from its own address")
        sh("ip", "-n", NS["rogue"], "addr", "add", f"{DEVICE}/32", "dev", "eth0")
        check(not reach("rogue", GW, 1883, src=DEVICE), "the device's address from another MAC is dropped")
        # The bridge table sees it first (at layer 2, whatever br_netfilter says) and reports it.
        drops = subprocess.run(["nft", "list", "chain", "bridge", "iotgw", "spoofed"], capture_output=True,
                               text=True).stdout
        spoof_line = [line for line in drops.splitlines() if "anti-spoofing" in line and "packets" in line]
        spoofed = int(spoof_line[0].split("packets")[1].split()[0]) if spoof_line else 0
        check(spoofed > 0, f"the anti-spoofing rule counted the spoofed packets ({spoofed})")
        check(events.wait_for("IOTGW_EVENT=device-port-conflict", 3)
              and any("thermo-01's address 192.168.50.10" in line for line in events.lines()),
              "and it is a device-port-conflict event naming the device and its address")

        print("shutdown")
        d.send_signal(signal.SIGTERM)
        check(d.wait(timeout=10) == 0, "iotgwd exits cleanly")
        check(not table_exists(), "keep_rules_on_exit = false: the table is removed at exit")
        d = None
    finally:
        if d is not None:
            d.kill()
            d.wait()
        for p in procs:
            p.kill()
        if broker:
            broker.stop()


def main():
    require_binary()
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        global P, NS
        P = sys.argv[2]
        NS = {n: f"{P}-{n}" for n in NS}
        inside()
        finish()
    if os.geteuid() != 0:
        print("this test needs root (network namespaces, nftables)", file=sys.stderr)
        sys.exit(2)
    try:
        build_lab()
        rc = subprocess.call(in_ns("gw", sys.executable, os.path.abspath(__file__), "--inside", P))
    finally:
        destroy_lab()
    sys.exit(rc)


if __name__ == "__main__":
    main()
