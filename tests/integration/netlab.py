# SPDX-License-Identifier: GPL-3.0-or-later
"""The network attack lab: network namespaces joined by a real bridge and veth pairs, iotgwd in the
gateway with its real tables, a real mosquitto upstream, and crafted frames (python3-scapy).

    lan  (192.168.1.20)  ---- gw-lan (192.168.1.1)  \\
    wan  (203.0.113.5)   ---- gw-wan (203.0.113.1)   gw: iotgwd, routing, a broker on loopback
                                                    /
    br-iot (192.168.50.1, fd00:50::1): the device segment, a bridge with one port per host
      gw-dev    thermo (thermo-01: 192.168.50.10, fd00:50::10, 02:00:00:00:00:10)
      gw-plug   plug   (plug-02:   192.168.50.11, fd00:50::11, 02:00:00:00:00:11)
      gw-sensor sensor (sensor-05: 192.168.50.15, 02:00:00:00:00:15; a login-only policy)
      gw-rogue  rogue  (192.168.50.66, fd00:50::66, 02:00:00:00:00:66; not enrolled)

No namespace has a route anywhere but to the gateway. A test calls run(inside): the lab is built,
the test re-runs itself inside the gateway's namespace (where iotgwd and the broker run), and the
other hosts are reached with `ip netns exec`. Names carry the test's pid, so parallel runs do not
collide.
"""
import os
import signal
import socket
import subprocess
import sys
import time

from iotgw_testlib import IOTGWD, finish, hash_password, remove_namespaces, require_binary, tmpdir, write

HOSTS = {  # namespace: (port on br-iot or a routed interface, IPv4/prefix, IPv6, MAC)
    "thermo": ("gw-dev", "192.168.50.10/24", "fd00:50::10/64", "02:00:00:00:00:10"),
    "plug": ("gw-plug", "192.168.50.11/24", "fd00:50::11/64", "02:00:00:00:00:11"),
    "sensor": ("gw-sensor", "192.168.50.15/24", None, "02:00:00:00:00:15"),
    "rogue": ("gw-rogue", "192.168.50.66/24", "fd00:50::66/64", "02:00:00:00:00:66"),
    "lan": ("gw-lan", "192.168.1.20/24", None, "02:00:00:00:01:20"),
    "wan": ("gw-wan", "203.0.113.5/24", None, "02:00:00:00:02:05"),
}
GW4, GW6, GW_LAN, GW_WAN = "192.168.50.1", "fd00:50::1", "192.168.1.1", "203.0.113.1"
THERMO, PLUG, SENSOR, ROGUE, LAN, WAN = "192.168.50.10", "192.168.50.11", "192.168.50.15", "192.168.50.66", \
    "192.168.1.20", "203.0.113.5"
THERMO6, PLUG6 = "fd00:50::10", "fd00:50::11"
MAC = {h: v[3] for h, v in HOSTS.items()}

PREFIX = os.environ.get("IOTGW_LAB", f"iotgwn{os.getpid() % 100000}")
NS = {n: f"{PREFIX}-{n}" for n in ["gw", *HOSTS]}
PY = "/usr/bin/python3"


def sh(*args, check_rc=True, timeout=60, **kw):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, **kw)
    if check_rc and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


def in_ns(ns, *args):
    return ["ip", "netns", "exec", NS[ns], *args]


def sysctl(ns, key, value):
    sh(*in_ns(ns, "sysctl", "-qw", f"{key}={value}"))


def build():
    for ns in NS.values():
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    for ns in NS:
        # Addresses usable at once (no duplicate address detection in a lab that has none).
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
            sysctl(ns, key, 0)
    gw = NS["gw"]
    sh("ip", "-n", gw, "link", "add", "br-iot", "type", "bridge")
    for host, (port, v4, v6, mac) in HOSTS.items():
        sh("ip", "link", "add", port, "netns", gw, "type", "veth", "peer", "name", "eth0", "netns", NS[host])
        sh("ip", "-n", NS[host], "link", "set", "eth0", "address", mac)
        if host not in ("lan", "wan"):
            sh("ip", "-n", gw, "link", "set", port, "master", "br-iot")
        sh("ip", "-n", gw, "link", "set", port, "up")
    sh("ip", "-n", gw, "link", "set", "br-iot", "up")
    sh("ip", "-n", gw, "addr", "add", f"{GW4}/24", "dev", "br-iot")
    sh("ip", "-n", gw, "addr", "add", f"{GW6}/64", "dev", "br-iot", "nodad")
    sh("ip", "-n", gw, "addr", "add", f"{GW_LAN}/24", "dev", "gw-lan")
    sh("ip", "-n", gw, "addr", "add", f"{GW_WAN}/24", "dev", "gw-wan")
    sysctl("gw", "net.ipv4.ip_forward", 1)
    sysctl("gw", "net.ipv6.conf.all.forwarding", 1)
    for host, (port, v4, v6, mac) in HOSTS.items():
        n = NS[host]
        sh("ip", "-n", n, "addr", "add", v4, "dev", "eth0")
        if v6:
            sh("ip", "-n", n, "addr", "add", v6, "dev", "eth0", "nodad")
        sh("ip", "-n", n, "link", "set", "eth0", "up")
        via = GW_LAN if host == "lan" else GW_WAN if host == "wan" else GW4
        sh("ip", "-n", n, "route", "add", "default", "via", via)


def destroy():
    remove_namespaces(NS.values())


def run(inside):
    """Builds the lab, runs `inside()` in the gateway's namespace, tears the lab down."""
    require_binary()
    if len(sys.argv) > 2 and sys.argv[1] == "--inside":
        inside()
        finish()
    if os.geteuid() != 0:
        print("this test needs root (network namespaces, nftables)", file=sys.stderr)
        sys.exit(2)
    try:
        build()
        env = dict(os.environ, IOTGW_LAB=PREFIX)
        rc = subprocess.call(in_ns("gw", sys.executable, os.path.abspath(sys.argv[0]), "--inside", PREFIX), env=env)
    finally:
        destroy()
    sys.exit(rc)


# --- the gateway ------------------------------------------------------------------------------

THERMO_POLICY = """[device]
id = "thermo-01"
mac = "02:00:00:00:00:10"
addresses = ["192.168.50.10", "fd00:50::10"]
[device.mqtt]
client_id = "thermo-01"
username = "thermo"
password_hash = "{hash}"
[mqtt]
publish = ["devices/%c/telemetry/#"]
[coap]
[[coap.rule]]
methods = ["GET"]
path = "/**"
[[coap.push]]
path = "/readings/*"
topic = "sensors/%d/%p"
qos = 0
[network]
outbound = ["203.0.113.5:8883/tcp"]
"""

PLUG_POLICY = """[device]
id = "plug-02"
mac = "02:00:00:00:00:11"
addresses = ["192.168.50.11", "fd00:50::11"]
[network]
services = ["80/tcp"]
"""

SENSOR_POLICY = """[device]
id = "sensor-05"
mac = "02:00:00:00:00:15"
[device.mqtt]
username = "sensor"
password_hash = "{hash}"
[mqtt]
publish = ["devices/sensor-05/#"]
"""


class Events:
    """iotgwd's events on stderr, one line each."""

    def __init__(self, path):
        self.path = path

    def lines(self):
        with open(self.path, errors="replace") as f:
            return f.read().splitlines()

    def matching(self, *texts):
        return [line for line in self.lines() if all(t in line for t in texts)]

    def wait_for(self, *texts, timeout=5.0, count=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if len(self.matching(*texts)) >= count:
                return True
            time.sleep(0.05)
        return False


class Gateway:
    """iotgwd in the gateway namespace (the test runs there), with the broker and the app's DTLS
    certificates, events on stderr."""

    def __init__(self, root, ports=None):
        from mqttlab import Broker, Pki
        self.root = root
        self.pki = Pki(os.path.join(root, "pki"))
        self.broker = Broker(root, self.pki)
        self.dtls_server = self.pki.leaf("gw-dtls", "gateway.local", san=f"IP:{GW_LAN}", server=True)
        self.app = self.pki.leaf("app-dtls", "app.hub.local", san="DNS:app.hub.local")
        self.devices = os.path.join(root, "devices.d")
        self.state = os.path.join(root, "state")
        write(os.path.join(self.devices, "thermo-01.toml"), THERMO_POLICY.format(hash=hash_password("s3cret-thermo")))
        write(os.path.join(self.devices, "plug-02.toml"), PLUG_POLICY)
        write(os.path.join(self.devices, "sensor-05.toml"), SENSOR_POLICY.format(hash=hash_password("s3cret-sensor")))
        for name, text in (ports or {}).items():  # bindings learned earlier, or pinned by hand
            write(os.path.join(self.state, "ports", name), text)
        self.conf = os.path.join(root, "iotgw.toml")
        write(self.conf, f"""[daemon]
state_directory = "{self.state}"
devices_directory = "{self.devices}"
[device_segment]
interfaces = ["br-iot"]
subnets = ["192.168.50.0/24", "fd00:50::/64"]
[listeners.mqtt]
addresses = ["{GW4}"]
[listeners.coap]
addresses = ["{GW4}"]
[listeners.coap_dtls]
addresses = ["{GW_LAN}"]
certificate = "{self.dtls_server[0]}"
private_key = "{self.dtls_server[1]}"
ca_file = "{self.pki.ca}"
[upstream]
host = "127.0.0.1"
port = {self.broker.port}
ca_file = "{self.pki.ca}"
certificate = "{self.pki.gateway[0]}"
private_key = "{self.pki.gateway[1]}"
[limits]
coap_request_timeout_ms = 2000
[firewall]
keep_rules_on_exit = false
scan_interval_seconds = 0
telemetry_interval_seconds = 0
[dbus]
enabled = false
[events]
target = "stderr"
burst = 1000
""")
        self.errpath = os.path.join(root, "iotgwd.err")
        self.err = open(self.errpath, "w")
        self.proc = subprocess.Popen([IOTGWD, "--config", self.conf], stdout=subprocess.DEVNULL, stderr=self.err)
        self.events = Events(self.errpath)
        self.up = self.events.wait_for("started", timeout=15)

    def reload(self, count):
        """SIGHUP, then waits until `count` reloads in all have been applied."""
        self.proc.send_signal(signal.SIGHUP)
        return self.events.wait_for("applied", timeout=5, count=count)

    def stop(self):
        from iotgw_testlib import check_stopped_cleanly, terminate
        terminate(self.proc)
        self.broker.stop()
        lines = self.events.lines()
        self.err.close()
        check_stopped_cleanly(self.proc, lines)


# --- traffic ----------------------------------------------------------------------------------

PROBE = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_STREAM)
if sys.argv[3] != "-":
    s.bind((sys.argv[3], 0))
s.settimeout(float(sys.argv[4]))
sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)
"""


def reach(ns, host, port, src="-", timeout=0.8):
    """A TCP connection from namespace `ns` (None: the gateway itself) completes."""
    cmd = [PY, "-c", PROBE, host, str(port), src, str(timeout)]
    if ns is not None:
        cmd = in_ns(ns, *cmd)
    return subprocess.run(cmd, capture_output=True, timeout=timeout + 10).returncode == 0


SEND = r"""
import socket, sys
host, port, src, data = sys.argv[1], int(sys.argv[2]), sys.argv[3], bytes.fromhex(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
if family == socket.AF_INET6 and host.startswith("ff"):
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, socket.if_nametoindex("eth0"))
if family == socket.AF_INET and host.startswith("224."):
    s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(sys.argv[5]))
if src != "-":
    s.bind((src, 0))
target = (host, port, 0, socket.if_nametoindex("eth0")) if "%" in sys.argv[1] or host.startswith(("fe80", "ff")) else (host, port)
s.sendto(data, target)
"""


def send_udp(ns, host, port, data=b"probe", src="-", mcast_if="-"):
    cmd = [PY, "-c", SEND, host, str(port), src, data.hex(), mcast_if]
    if ns is not None:
        cmd = in_ns(ns, *cmd)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20)


RECEIVER = r"""
import socket, struct, sys
address, port, group, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
family = socket.AF_INET6 if ":" in address else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if family == socket.AF_INET6:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind((address, port))
if group != "-":
    if ":" in group:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP,
                     socket.inet_pton(socket.AF_INET6, group) + struct.pack("@I", socket.if_nametoindex(sys.argv[5])))
    else:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                     socket.inet_aton(group) + socket.inet_aton(sys.argv[6]))
with open(out, "a") as f:
    print("ready", file=f, flush=True)
    while True:
        data, peer = s.recvfrom(4096)
        print(peer[0], data.hex(), file=f, flush=True)
"""


class Receiver:
    """Counts UDP datagrams arriving at address:port in namespace `ns` (None: the gateway)."""

    def __init__(self, root, ns, address, port, group="-", ifname="eth0", mcast_addr="0.0.0.0"):
        self.out = os.path.join(root, f"rx-{ns}-{port}-{time.time_ns()}.txt")
        cmd = [PY, "-c", RECEIVER, address, str(port), group, self.out, ifname, mcast_addr]
        if ns is not None:
            cmd = in_ns(ns, *cmd)
        self.proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        deadline = time.time() + 5
        while time.time() < deadline and not (os.path.exists(self.out) and open(self.out).read()):
            time.sleep(0.02)

    def count(self):
        with open(self.out) as f:
            return sum(1 for line in f if line.strip() and line.strip() != "ready")

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def scapy(ns, script, *args, timeout=30):
    """Runs a scapy script in namespace `ns` (scapy.all imported); returns its stdout."""
    code = "import sys\nfrom scapy.all import *\nconf.verb = 0\n" + script
    r = subprocess.run(in_ns(ns, PY, "-c", code, *args), capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"scapy in {ns}: {r.stderr.strip()[-800:]}")
    return r.stdout


def neighbour(ns, address):
    """The MAC namespace `ns` (None: the gateway) has for `address` on its neighbour table."""
    cmd = ["ip", "neigh", "show", address]
    if ns is not None:
        cmd = in_ns(ns, *cmd)
    words = subprocess.run(cmd, capture_output=True, text=True).stdout.split()
    return words[words.index("lladdr") + 1] if "lladdr" in words else None


def coap_push(ns, path, payload, src="-", host=GW4):
    """A non-confirmable CoAP POST from namespace `ns` to the device-side endpoint."""
    cmd = ["coap-client-notls", "-m", "post", "-N", "-B", "1", "-e", payload]
    if src != "-":
        cmd += ["-a", src]
    return subprocess.run(in_ns(ns, *cmd, f"coap://{host}{path}"), capture_output=True, text=True, timeout=20)


def coap_get(gw, path, wait=3):
    """The app on the LAN reads `path` through iotgwd's DTLS endpoint; its output."""
    cmd = ["coap-client-openssl", "-B", str(wait), "-C", gw.pki.ca, "-c", gw.app[0], "-j", gw.app[1],
           f"coaps://{GW_LAN}{path}"]
    r = subprocess.run(in_ns("lan", *cmd), capture_output=True, text=True, timeout=30)
    return (r.stdout + r.stderr).strip()


COAP_DEVICE = r"""
import socket, sys
address, answer, out = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((address, 5683))
with open(out, "a") as f:
    print("ready", file=f, flush=True)
    while True:
        m, peer = s.recvfrom(2048)
        if len(m) < 4 or m[0] >> 6 != 1:
            continue
        tkl = m[0] & 0x0F
        print(peer[0], m[1], file=f, flush=True)
        if m[1] == 1:  # GET: a piggybacked 2.05 Content with our answer
            s.sendto(bytes([0x60 | tkl, 0x45]) + m[2:4] + m[4:4 + tkl] + b"\xff" + answer, peer)
"""


class CoapDevice:
    """A legacy CoAP server on `address`:5683 in namespace `ns` that answers every GET with
    `answer` and counts the requests it gets."""

    def __init__(self, root, ns, address, answer):
        self.out = os.path.join(root, f"coap-{ns}-{time.time_ns()}.txt")
        self.proc = subprocess.Popen(in_ns(ns, PY, "-c", COAP_DEVICE, address, answer, self.out),
                                     stderr=subprocess.DEVNULL)
        deadline = time.time() + 5
        while time.time() < deadline and not (os.path.exists(self.out) and open(self.out).read()):
            time.sleep(0.02)

    def requests(self):
        with open(self.out) as f:
            return sum(1 for line in f if line.strip() and line.strip() != "ready")

    def stop(self):
        self.proc.kill()
        self.proc.wait()
