# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared parts of the CoAP attack tests: certificates, a legacy device (coap-server-notls), iotgwd
with its DTLS endpoint, coap-client-openssl as the app, raw DTLS records inside a session
(coap_dtls_probe), iotgwd's counters over a private system bus, and a network-namespace lab in
which an attacker can send datagrams from addresses it does not own.

The lab (names carry the test's pid, so parallel runs do not collide):

    app  (10.98.0.2) ---- gw (10.98.0.1, 10.97.0.1): iotgwd, the device on its loopback
    atk  (10.97.0.2) ----'   10.99.0.0/16 is routed to atk: the gateway's answers to spoofed
                             sources go back into atk, which forwards nothing, and stop there

No namespace has a route out of the lab.
"""
import json
import os
import re
import socket
import subprocess
import sys
import time

from iotgw_testlib import IOTGWD, check_stopped_cleanly, private_bus, remove_namespaces, terminate, write
from mqttlab import Pki

IOTGWCTL = os.path.join(os.path.dirname(IOTGWD), "iotgwctl")
PROBE = os.environ.get("COAP_DTLS_PROBE", "")
ROOT_MAY_OWN = ('<policy user="root"><allow own="org.iotgw.Gateway1"/>'
                '<allow send_destination="org.iotgw.Gateway1"/></policy>')
TIME_ANSWER = re.compile(r"[A-Z][a-z]{2} +\d+ \d\d:\d\d:\d\d")


def free_udp_port(address="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def sh(*args, check_rc=True):
    r = subprocess.run(list(args), capture_output=True, text=True, timeout=60)
    if check_rc and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


class Certificates:
    """The test CA, iotgwd's DTLS server certificate and an app's client certificate."""

    def __init__(self, directory, server_san="DNS:gateway.local,IP:127.0.0.1"):
        self.pki = Pki(directory)
        self.ca = self.pki.ca
        self.server = self.pki.leaf("gw-dtls", "gateway.local", san=server_san, server=True)
        self.app = self.pki.leaf("app-dtls", "app.hub.local", san="DNS:app.hub.local")


def leaf_with(pki, name, cn, ext, ca="ca"):
    """A certificate from the test CA with exactly the extensions in `ext` (openssl x509 -extfile
    lines), for certificates Pki.leaf does not make."""
    from mqttlab import openssl
    d = pki.dir
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=d)
    with open(os.path.join(d, f"{name}.ext"), "w") as f:
        f.write(ext)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)
    return (os.path.join(d, f"{name}.crt"), os.path.join(d, f"{name}.key"))


def device_policy(devices, dev_port, name="legacy-sensor", address="127.0.0.2", extra=""):
    mac = "02:00:00:00:00:%02x" % (sum(name.encode()) % 200 + 32)
    write(os.path.join(devices, f"{name}.toml"), f"""[device]
id = "{name}"
mac = "{mac}"
addresses = ["{address}"]
[coap]
port = {dev_port}
max_payload_bytes = 16384
[[coap.rule]]
methods = ["GET"]
path = "/**"
{extra}""")


def coap_config(root, certs, dtls_addresses, dtls_port, devices, limits="", extra=""):
    """iotgwd with its DTLS endpoint only (no broker, no firewall; events on stderr)."""
    addresses = ", ".join(f'"{a}"' for a in dtls_addresses)
    return f"""
[daemon]
state_directory = "{root}/state"
devices_directory = "{devices}"
[device_segment]
subnets = ["127.0.0.0/8"]
[firewall]
enabled = false
[dbus]
enabled = true
[upstream]
enabled = false
[listeners.coap_dtls]
addresses = [{addresses}]
port = {dtls_port}
certificate = "{certs.server[0]}"
private_key = "{certs.server[1]}"
ca_file = "{certs.ca}"
[limits]
{limits}
[events]
target = "stderr"
burst = 1000
{extra}"""


class Gateway:
    """iotgwd (optionally inside a namespace) on a private system bus, for its counters."""

    def __init__(self, root, conf, netns=None, env=None):
        self.root = root
        if os.path.exists(os.path.join(root, "system.sock")):
            os.unlink(os.path.join(root, "system.sock"))  # a gateway before this one
        self.bus, address = private_bus(root, "system", ROOT_MAY_OWN)
        self.env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address, **(env or {}))
        self.errpath = os.path.join(root, "iotgwd.err")
        self.err = open(self.errpath, "w")
        cmd = [IOTGWD, "--config", conf]
        if netns:
            cmd = ["ip", "netns", "exec", netns] + cmd
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=self.err)
        deadline = time.time() + 15
        while time.time() < deadline and not self.counters() and self.proc.poll() is None:
            time.sleep(0.1)

    def counters(self):
        r = subprocess.run([IOTGWCTL, "--json", "status"], capture_output=True, text=True,
                           timeout=10, env=self.env)
        if r.returncode != 0:
            return {}
        try:
            return json.loads(r.stdout)
        except ValueError:
            return {}

    def pid(self):
        """iotgwd's own pid (under `ip netns exec` it is the child of the Popen'd process)."""
        r = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        kids = r.stdout.split()
        return int(kids[0]) if kids else self.proc.pid

    def rss_kb(self):
        for line in open(f"/proc/{self.pid()}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def alive(self):
        return self.proc.poll() is None

    def events(self):
        self.err.flush()
        return open(self.errpath).read().splitlines()

    def stop(self):
        """Stops iotgwd; a non-zero exit or a sanitizer's report is a failed expectation."""
        terminate(self.proc)
        self.bus.terminate()
        self.bus.wait(timeout=10)
        lines = self.events()
        self.err.close()
        check_stopped_cleanly(self.proc, lines)


def coap_client(certs, url, *args, cert=None, netns=None, wait=5, timeout=30):
    """coap-client-openssl's output (it exits 0 even when the handshake fails)."""
    cert = cert or certs.app
    cmd = ["coap-client-openssl", "-B", str(wait), "-C", certs.ca]
    if cert != "none":
        cmd += ["-c", cert[0], "-j", cert[1]]
    cmd += list(args) + [url]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return (r.stdout + r.stderr).strip()


def client_hello():
    """One ClientHello (205 bytes) from OpenSSL, as the probe writes it without sending it."""
    return bytes.fromhex(subprocess.run([PROBE, "hello"], capture_output=True, text=True,
                                        check=True).stdout.strip())


class Lab:
    """The namespaces drawn in this module's docstring."""

    GW_APP, APP, GW_ATK, ATK, SPOOFED = "10.98.0.1", "10.98.0.2", "10.97.0.1", "10.97.0.2", "10.99.0.0/16"

    def __init__(self):
        p = f"iotgwc{os.getpid() % 100000}"
        self.ns = {n: f"{p}-{n}" for n in ("gw", "app", "atk")}
        try:
            self._build()
        except Exception:
            self.destroy()
            raise

    def _build(self):
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        gw = self.ns["gw"]
        for host, gwif, gwaddr, addr in (("app", "gw-app", self.GW_APP, self.APP),
                                         ("atk", "gw-atk", self.GW_ATK, self.ATK)):
            sh("ip", "link", "add", gwif, "netns", gw, "type", "veth", "peer", "name", "eth0",
               "netns", self.ns[host])
            sh("ip", "-n", gw, "addr", "add", f"{gwaddr}/24", "dev", gwif)
            sh("ip", "-n", gw, "link", "set", gwif, "up")
            sh("ip", "-n", self.ns[host], "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", self.ns[host], "link", "set", "eth0", "up")
            sh("ip", "-n", self.ns[host], "route", "add", "default", "via", gwaddr)
        sh("ip", "-n", gw, "route", "add", self.SPOOFED, "via", self.ATK)

    def cmd(self, ns, *args):
        return ["ip", "netns", "exec", self.ns[ns], *args]

    def destroy(self):
        remove_namespaces(self.ns.values())


# Sends UDP datagrams with forged source addresses through a raw socket (the kernel fills in the
# IPv4 checksum and identification; a zero UDP checksum means none, RFC 768).
SPOOFER = r"""
import socket, struct, sys, time
dst, port, hexdata, count, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
data = bytes.fromhex(hexdata)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
start = time.time()
for i in range(count):
    src = f"10.99.{i // 250}.{i % 250 + 1}"
    udp = struct.pack("!HHHH", 20000 + i % 40000, port, 8 + len(data), 0) + data
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + udp, (dst, 0))
    pause = start + seconds * (i + 1) / count - time.time()
    if pause > 0:
        time.sleep(pause)
print(f"sent {count} in {time.time() - start:.2f} s", flush=True)
"""


def spoof(lab, dst, port, data, count, seconds):
    """Starts the attacker: `count` datagrams from as many forged addresses over `seconds`."""
    return subprocess.Popen(lab.cmd("atk", sys.executable, "-c", SPOOFER, dst, str(port), data.hex(),
                                    str(count), str(seconds)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


# Completes the cookie exchange from each of the given (real) addresses and then stalls: the
# ClientHello with the cookie starts a handshake the gateway must keep half-open until it gives
# up. Prints "proved N" and holds the sockets until its stdin closes.
STALLER = r"""
import select, socket, sys, time
port, dst, hello = int(sys.argv[1]), sys.argv[2], bytes.fromhex(sys.argv[3])
addresses = sys.argv[4:]

def with_cookie(ch, cookie):
    sid_end = 13 + 12 + 2 + 32 + 1 + ch[13 + 12 + 2 + 32]
    assert ch[sid_end] == 0  # the first ClientHello has no cookie
    body = ch[25:sid_end] + bytes([len(cookie)]) + cookie + ch[sid_end + 1:]
    n = len(body)
    hs = bytes([1]) + n.to_bytes(3, "big") + (1).to_bytes(2, "big") + (0).to_bytes(3, "big") + n.to_bytes(3, "big")
    record = bytes([22]) + ch[1:3] + (0).to_bytes(2, "big") + (1).to_bytes(6, "big") + (12 + n).to_bytes(2, "big")
    return record + hs + body

def collect(socks, seconds):
    # The first datagram each socket receives within `seconds`.
    got, deadline = {}, time.time() + seconds
    while len(got) < len(socks) and time.time() < deadline:
        ready, _, _ = select.select([s for s in socks if s not in got], [], [], max(0.01, deadline - time.time()))
        for s in ready:
            got[s] = s.recv(4096)
    return got

# All at once, as an attacker would: every ClientHello, then every cookie, then the handshakes
# the gateway started are left waiting.
socks = []
for a in addresses:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((a, 0))
    s.sendto(hello, (dst, port))
    socks.append(s)
answered = collect(socks, 3.0)
cookied = []
for s, hvr in answered.items():
    if len(hvr) >= 28 and hvr[0] == 22 and hvr[13] == 3:
        s.sendto(with_cookie(hello, hvr[28:28 + hvr[27]]), (dst, port))
        cookied.append(s)
# Each first flight costs the gateway a key exchange: give a slow (sanitizer) build time to send them.
flights = collect(cookied, 5.0)
print(f"proved {sum(1 for f in flights.values() if f[0] == 22)}", flush=True)
sys.stdin.read()
"""


def stall(lab, dst, port, hello, addresses):
    """Starts an attacker that proves each address and leaves its handshake half-open."""
    batch = "".join(f"addr add {a}/32 dev eth0\n" for a in addresses)
    subprocess.run(["ip", "-n", lab.ns["atk"], "-batch", "-"], input=batch, text=True, check=True)
    return subprocess.Popen(lab.cmd("atk", sys.executable, "-c", STALLER, str(port), dst, hello.hex(),
                                    *addresses),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


# CoAP messages, RFC 7252 §3, as the tests write them by hand.
def opt(delta, value):
    """One CoAP option (delta from the previous number)."""
    def nib(n):
        if n < 13:
            return n, b""
        if n < 269:
            return 13, bytes([n - 13])
        return 14, (n - 269).to_bytes(2, "big")
    d, dx = nib(delta)
    ln, lx = nib(len(value))
    return bytes([d << 4 | ln]) + dx + lx + value


def options(*numbered):
    """Options given as (number, value) pairs, in ascending order."""
    out, last = b"", 0
    for number, value in numbered:
        out += opt(number - last, value)
        last = number
    return out


def uint(n):
    return n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""


def request(code, opts=b"", payload=b"", mid=1, token=b"\x42", type_=0):
    head = bytes([0x40 | type_ << 4 | len(token), code]) + mid.to_bytes(2, "big") + token
    return head + opts + (b"\xff" + payload if payload else b"")


def code_of(reply_hex):
    """The response code of a reply as "c.dd"."""
    c = int(reply_hex[2:4], 16)
    return f"{c >> 5}.{c & 31:02d}"


class Probe:
    """coap_dtls_probe in a DTLS session with the gateway: raw CoAP inside an authenticated
    session."""

    def __init__(self, port, certs, wait_ms=300):
        self.proc = subprocess.Popen([PROBE, str(port), certs.ca, certs.app[0], certs.app[1], str(wait_ms)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.connected = self.proc.stdout.readline().strip() == "connected"

    def _replies(self):
        out = []
        for line in iter(self.proc.stdout.readline, ""):
            line = line.strip()
            if line == "end":
                break
            if line.startswith("reply "):
                out.append(line[6:])
        return out

    def send(self, datagram):
        """Sends one datagram; the replies within the wait time."""
        self.proc.stdin.write(datagram.hex() + "\n")
        self.proc.stdin.flush()
        return self._replies()

    def burst(self, datagrams):
        """Sends them all at once; every reply until the wait time passes with none."""
        self.proc.stdin.write("".join("!" + d.hex() + "\n" for d in datagrams) + "wait\n")
        self.proc.stdin.flush()
        return self._replies()

    def close(self):
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class FakeDevice:
    """A legacy CoAP device (plain UDP) that counts the requests it gets and logs them as
    (time, path, query, block2 number). Its resources:

    * /big: a body of `size` bytes served block-wise (RFC 7959) as asked;
    * /endless: every block says more follow;
    * /huge: the first block announces a body of 4 GiB (Size2) and says more follow;
    * /slow: answers after `slow` seconds;
    * /obs: an observe registration is answered with a small 2.05, and then the device sends a
      small notification every 0.5 s;
    * /obs-endless: the same, every 0.1 s, and each notification's Block2 says more follow, as do
      all the blocks asked for after it;
    * anything else: 2.05 "ok".
    """

    def __init__(self, address, port, size=10_000, slow=2.0):
        import threading
        self.body = os.urandom(size // 2).hex().encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.05)
        self.slow = slow
        self.requests = 0
        self.log = []
        self.resets = 0
        self.observers = {}  # path -> (peer, token) of its latest registration
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    @staticmethod
    def parse(d):
        tkl = d[0] & 15
        token, i, number = d[4:4 + tkl], 4 + tkl, 0
        out = {"token": token, "path": [], "query": [], "block2": None, "observe": None}
        while i < len(d) and d[i] != 0xff:
            delta, length = d[i] >> 4, d[i] & 15
            i += 1
            if delta == 13:
                delta, i = d[i] + 13, i + 1
            elif delta == 14:
                delta, i = int.from_bytes(d[i:i + 2], "big") + 269, i + 2
            if length == 13:
                length, i = d[i] + 13, i + 1
            elif length == 14:
                length, i = int.from_bytes(d[i:i + 2], "big") + 269, i + 2
            number += delta
            value = d[i:i + length]
            i += length
            if number == 11:
                out["path"].append(value.decode(errors="replace"))
            elif number == 15:
                out["query"].append(value.decode(errors="replace"))
            elif number == 23:
                out["block2"] = int.from_bytes(value, "big")
            elif number == 6:
                out["observe"] = int.from_bytes(value, "big")
        out["path"] = "/".join(out["path"])
        return out

    def send(self, data, peer):
        with self.lock:
            self.sock.sendto(data, peer)

    def run(self):
        import threading
        seq, last = 2, {}
        while self.running:
            for path, (peer, token) in list(self.observers.items()):
                every = 0.1 if path == "obs-endless" else 0.5
                if time.time() - last.get(path, 0) < every:
                    continue
                last[path] = time.time()
                seq += 1
                head = bytes([0x50 | len(token), 0x45]) + (seq & 0xffff).to_bytes(2, "big") + token + opt(6, uint(seq))
                if path == "obs-endless":
                    self.send(head + opt(12 - 6, b"") + opt(23 - 12, uint(0 << 4 | 8 | 6)) + b"\xff" + b"n" * 1024, peer)
                else:
                    self.send(head + b"\xff" + f"n{seq}".encode(), peer)
            try:
                d, peer = self.sock.recvfrom(4096)
            except socket.timeout:
                continue
            if len(d) < 4 or d[0] >> 6 != 1:
                continue
            kind = (d[0] >> 4) & 3
            if kind == 3:
                self.resets += 1  # RFC 7641 §3.6: the observer is gone
                self.observers = {k: v for k, v in self.observers.items() if v[0] != peer}
                continue
            if kind != 0 or d[1] == 0 or d[1] >= 32:
                continue  # only confirmable requests are answered
            self.requests += 1
            r = self.parse(d)
            token, path, block2 = r["token"], r["path"], r["block2"]
            self.log.append((time.time(), path, r["query"], None if block2 is None else block2 >> 4))
            num, szx = (block2 >> 4, min(block2 & 7, 6)) if block2 is not None else (0, 6)
            size = 1 << (szx + 4)
            extra = b""
            if path == "endless" or (path == "obs-endless" and r["observe"] is None):
                chunk, more = b"x" * size, True
            elif path == "huge":
                chunk, more, extra = b"h" * size, True, opt(28 - 23, uint(0xffffffff))
            elif path in ("obs", "obs-endless") and r["observe"] == 0:
                self.observers[path] = (peer, token)
                self.send(bytes([0x60 | len(token), 0x45]) + d[2:4] + token + opt(6, uint(2)) + b"\xff" + b"first",
                          peer)
                continue
            elif path == "slow":
                reply = bytes([0x60 | len(token), 0x45]) + d[2:4] + token + b"\xffslow answer"
                threading.Timer(self.slow, self.send, (reply, peer)).start()
                continue
            elif path == "big":
                chunk = self.body[num * size:(num + 1) * size]
                more = (num + 1) * size < len(self.body)
            else:
                self.send(bytes([0x60 | len(token), 0x45]) + d[2:4] + token + b"\xffok", peer)
                continue
            reply = (bytes([0x60 | len(token), 0x45]) + d[2:4] + token
                     + opt(12, b"") + opt(23 - 12, uint(num << 4 | (8 if more else 0) | szx)) + extra
                     + b"\xff" + chunk)
            self.send(reply, peer)

    def stop(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def ns_run(ns, *cmd, **kw):
    """`cmd` inside network namespace `ns` (or here when ns is None)."""
    return (["ip", "netns", "exec", ns] if ns else []) + list(cmd)


class NsBroker:
    """mosquitto with a mutual-TLS listener on 127.0.0.1 inside namespace `ns` (certificates from
    mqttlab.Pki), and mosquitto_sub against it."""

    def __init__(self, directory, pki, ns=None, port=18883):
        self.dir, self.pki, self.ns, self.port = directory, pki, ns, port
        self.conf = os.path.join(directory, "mosquitto.conf")
        write(self.conf, f"""per_listener_settings false
user root
allow_anonymous true
persistence false
log_dest stderr
log_type error
listener {port} 127.0.0.1
cafile {pki.ca}
certfile {pki.server[0]}
keyfile {pki.server[1]}
require_certificate true
tls_version tlsv1.2
""")
        self.log = open(os.path.join(directory, "mosquitto.log"), "w")
        self.proc = subprocess.Popen(ns_run(ns, "mosquitto", "-c", self.conf), stdout=self.log,
                                     stderr=subprocess.STDOUT)
        probe = f"import socket,time\nfor _ in range(100):\n try:\n  socket.create_connection(('127.0.0.1',{port}),0.2);break\n except OSError: time.sleep(0.1)"
        subprocess.run(ns_run(ns, sys.executable, "-c", probe), timeout=30)

    def upstream(self):
        """iotgwd's [upstream] section for this broker."""
        return f"""[upstream]
host = "127.0.0.1"
port = {self.port}
ca_file = "{self.pki.ca}"
certificate = "{self.pki.gateway[0]}"
private_key = "{self.pki.gateway[1]}"
"""

    def subscribe(self, topic):
        out = os.path.join(self.dir, f"sub-{time.time_ns()}.txt")
        f = open(out, "w")
        p = subprocess.Popen(ns_run(self.ns, "mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.port),
                                    "--cafile", self.pki.ca, "--cert", self.pki.app[0], "--key",
                                    self.pki.app[1], "-t", topic, "-v", "-q", "1"),
                             stdout=f, stderr=subprocess.STDOUT)
        time.sleep(0.5)  # let the SUBSCRIBE reach the broker

        class Sub:
            def lines(self_):
                f.flush()
                return open(out).read().splitlines()

            def stop(self_):
                p.terminate()
                p.wait(timeout=5)
                f.close()
        return Sub()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.log.close()


class DeviceLab:
    """A gateway namespace with three networks, as a home router has them (names carry the
    test's pid; no namespace has a route out of the lab):

        dev (192.168.50.10) --- gw-dev 192.168.50.1   the device segment
        lan (10.96.0.2)     --- gw-lan 10.96.0.1      the home LAN
        wan (203.0.113.2)   --- gw-wan 203.0.113.1    the internet side

    lan and wan route everything to the gateway, so a datagram they forge from the device's
    address reaches the gateway's device-side address through their own interface."""

    GW_DEV, DEV, GW_LAN, LAN, GW_WAN, WAN = ("192.168.50.1", "192.168.50.10", "10.96.0.1", "10.96.0.2",
                                             "203.0.113.1", "203.0.113.2")

    def __init__(self):
        p = f"iotgwd{os.getpid() % 100000}"
        self.ns = {n: f"{p}-{n}" for n in ("gw", "dev", "lan", "wan")}
        try:
            self._build()
        except Exception:
            self.destroy()
            raise

    def _build(self):
        for ns in self.ns.values():
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        gw = self.ns["gw"]
        for host, gwif, gwaddr, addr, prefix in (("dev", "gw-dev", self.GW_DEV, self.DEV, 24),
                                                 ("lan", "gw-lan", self.GW_LAN, self.LAN, 24),
                                                 ("wan", "gw-wan", self.GW_WAN, self.WAN, 24)):
            sh("ip", "link", "add", gwif, "netns", gw, "type", "veth", "peer", "name", "eth0",
               "netns", self.ns[host])
            sh("ip", "-n", gw, "addr", "add", f"{gwaddr}/{prefix}", "dev", gwif)
            sh("ip", "-n", gw, "link", "set", gwif, "up")
            sh("ip", "-n", self.ns[host], "addr", "add", f"{addr}/{prefix}", "dev", "eth0")
            sh("ip", "-n", self.ns[host], "link", "set", "eth0", "up")
            sh("ip", "-n", self.ns[host], "route", "add", "default", "via", gwaddr)

    def rp_filter(self, value):
        """Sets reverse-path filtering on every interface of the gateway (0 off, 2 loose)."""
        for iface in ("all", "default", "gw-dev", "gw-lan", "gw-wan", "lo"):
            sh("ip", "netns", "exec", self.ns["gw"], "sysctl", "-qw", f"net.ipv4.conf.{iface}.rp_filter={value}")

    def cmd(self, ns, *args):
        return ["ip", "netns", "exec", self.ns[ns], *args]

    def destroy(self):
        remove_namespaces(self.ns.values())


# Sends one UDP datagram with a forged source address and port (raw socket; the kernel fills in
# the IPv4 checksum, a zero UDP checksum means none).
FORGER = r"""
import socket, struct, sys
src, sport, dst, dport, hexdata, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5], int(sys.argv[6])
data = bytes.fromhex(hexdata)
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(count):
    d = data[:2] + ((int.from_bytes(data[2:4], "big") + i) & 0xffff).to_bytes(2, "big") + data[4:]
    udp = struct.pack("!HHHH", sport, dport, 8 + len(d), 0) + d
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(ip + udp, (dst, 0))
"""


def forge(cmd_prefix, src, sport, dst, dport, data, count=1):
    """Sends `count` datagrams from `src`:`sport` (forged) to `dst`:`dport`, each with the next
    message id, from the namespace `cmd_prefix` runs commands in."""
    subprocess.run(cmd_prefix + [sys.executable, "-c", FORGER, src, str(sport), dst, str(dport), data.hex(),
                                 str(count)], check=True, timeout=30)
