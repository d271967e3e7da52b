#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""CoAP over DTLS through iotgwd, with real parts only: coap-server-notls as the legacy device
(127.0.0.2), coap-client-openssl as the app (a valid certificate, none, one from another CA),
a silent device (a UDP socket that never answers), a device that pushes readings with
coap-client-notls (127.0.0.3) to the device-side endpoint, a mosquitto broker with mosquitto_sub
for those readings, and a private system bus for iotgwd's counters (iotgwctl status).

Checks: allowed GET/PUT answer, disallowed ones never reach the device; observe notifications
relayed; a block-wise transfer of a large resource both ways; the silent device -> 5.04 within
the guard time; a pushed reading at the broker; malformed datagrams before and after the
handshake (no crash, nothing forwarded, counters); the anti-amplification ratio per source; a
flood of ClientHellos from many addresses creates no session and leaves RSS flat.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import (IOTGWD, check, cleanup, finish, private_bus, require_binary,  # noqa: E402
                           tmpdir, write)
from mqttlab import Broker, Pki, Subscriber, free_port, gateway_config  # noqa: E402
from coaplab import free_udp_port, opt, request  # noqa: E402
from mqttwire import rss_kib as rss_kb  # noqa: E402

IOTGWCTL = os.path.join(os.path.dirname(IOTGWD), "iotgwctl")
PROBE = os.environ.get("COAP_DTLS_PROBE", "")
ROOT_MAY_OWN = ('<policy user="root"><allow own="org.iotgw.Gateway1"/>'
                '<allow send_destination="org.iotgw.Gateway1"/></policy>')
GUARD_MS = 1500


def path_opts(*segments, first_delta=11):
    out, delta = b"", first_delta
    for s in segments:
        out += opt(delta, s)
        delta = 0
    return out


def malformed_cases(prefix):
    """Datagrams a strict CoAP endpoint must refuse; `prefix` is the Uri-Path to aim at."""
    p = path_opts(*prefix)
    cases = [
        b"\x40",                                            # shorter than a header
        b"\x40\x01\x00",
        b"\x80\x01\x00\x01",                                # version 2
        b"\x49\x01\x00\x01" + b"A" * 9,                     # token length 9
        b"\x48\x01\x00\x01\x01\x02",                        # token runs past the end
        b"\x40\x20\x00\x01",                                # class 1 (reserved)
        b"\x40\xc0\x00\x01",                                # class 6
        b"\x40\xe1\x00\x01",                                # class 7
        b"\x40\x02\x00\x01\xf1\x00",                        # option delta 15
        b"\x40\x02\x00\x01\x1f",                            # option length 15
        b"\x40\x02\x00\x01\xd0",                            # extended delta missing
        b"\x40\x02\x00\x01\xb5ab",                          # value past the end
        b"\x40\x02\x00\x01\xff",                            # payload marker, no payload
        b"\x41\x00\x00\x01\xaa",                            # empty message with a token
        b"\x40\x00\x00\x01\xff\x01",                        # empty message with a payload
        b"\x40\x02\x00\x01" + b"\xe0\xff\xff" + b"\xe0\xff\xff",  # option number past 65535
        request(2, p + b"".join(opt(0, b"x") for _ in range(70)), mid=2),  # too many options
        request(2, path_opts(*prefix, b"x" * 100), b"1", mid=3),          # segment too long
        request(2, path_opts(*prefix, *[b"s"] * 20), b"1", mid=4),        # too many segments
        request(2, path_opts(*prefix, b"a\x01b"), b"1", mid=5),           # unprintable path
        request(2, p + opt(35 - 11, b"coap://10.0.0.1/x"), b"1", mid=6),  # Proxy-Uri
        request(2, p + opt(12 - 11, b"\x00\x00\x32"), b"1", mid=7),       # Content-Format 3 bytes
        request(2, p + opt(27 - 11, b"\x0f"), b"1", mid=8),               # Block1 size 7 (reserved)
        request(1, p, b"x", mid=9),                                       # GET with a payload
        request(2, opt(6, b"\x00\x00\x00\x01") + path_opts(*prefix, first_delta=5), b"1", mid=10),  # Observe 4 bytes
        request(2, p + opt(60 - 11, b"\x10\x00\x00\x00\x00"), b"1", mid=11),  # Size1 5 bytes
    ]
    return cases


class SilentDevice:
    """A UDP socket that reads and never answers: a device that hangs."""

    def __init__(self, address, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.2)
        self.received = 0
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                self.sock.recv(4096)
                self.received += 1
            except socket.timeout:
                pass

    def stop(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def main():
    require_binary()
    if os.geteuid() != 0:
        print("needs root (mosquitto's user, a private bus)", file=sys.stderr)
        sys.exit(2)
    if not PROBE:
        print("COAP_DTLS_PROBE is not set", file=sys.stderr)
        sys.exit(2)
    root = tmpdir("iotgw-coap-")
    procs, d, broker, silent = [], None, None, None
    try:
        pki = Pki(os.path.join(root, "pki"))
        gw_cert = pki.leaf("gw-dtls", "gateway.local", san="DNS:gateway.local,IP:127.0.0.1", server=True)
        app = pki.leaf("app-dtls", "app.hub.local", san="DNS:app.hub.local")
        other = pki.leaf("other-dtls", "other.hub.local", san="DNS:other.hub.local")
        broker = Broker(root, pki)
        revoked = pki.leaf("revoked-dtls", "app.hub.local", san="DNS:app.hub.local")
        crl = pki.revoke("revoked-dtls")
        bus, address = private_bus(root, "system", ROOT_MAY_OWN)
        procs.append(bus)
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=address)

        def counters():
            r = subprocess.run([IOTGWCTL, "--json", "status"], capture_output=True, text=True,
                               timeout=10, env=env)
            return json.loads(r.stdout) if r.returncode == 0 else {}

        dtls, devep = free_udp_port(), free_udp_port()
        dev_port, silent_port = free_udp_port("127.0.0.2"), free_udp_port("127.0.0.4")
        device_log = open(os.path.join(root, "device.log"), "w")
        device = subprocess.Popen(["coap-server-notls", "-A", "127.0.0.2", "-p", str(dev_port), "-v", "7"],
                                  stdout=device_log, stderr=subprocess.STDOUT)
        procs.append(device)
        silent = SilentDevice("127.0.0.4", silent_port)

        def device_requests():
            device_log.flush()
            return [ln for ln in open(device_log.name).read().splitlines()
                    if ln.startswith("v:1 t:CON c:") or ln.startswith("v:1 t:NON c:")]

        devices = os.path.join(root, "devices.d")
        write(os.path.join(devices, "legacy-sensor.toml"), f"""[device]
id = "legacy-sensor"
mac = "02:00:00:00:00:20"
addresses = ["127.0.0.2"]
[coap]
port = {dev_port}
max_payload_bytes = 16384
clients = ["app.hub.local"]
[[coap.rule]]
methods = ["GET"]
path = "/time"
[[coap.rule]]
methods = ["GET", "PUT"]
path = "/example_data"
""")
        write(os.path.join(devices, "silent.toml"), f"""[device]
id = "silent"
mac = "02:00:00:00:00:21"
addresses = ["127.0.0.4"]
[coap]
port = {silent_port}
[[coap.rule]]
methods = ["GET"]
path = "/**"
""")
        write(os.path.join(devices, "pusher.toml"), """[device]
id = "pusher"
mac = "02:00:00:00:00:22"
addresses = ["127.0.0.3"]
[coap]
max_payload_bytes = 256
content_formats = [0, 50]
[[coap.push]]
path = "/readings/*"
topic = "sensors/%d/%p"
""")
        conf = os.path.join(root, "iotgw.toml")
        write(conf, gateway_config(root, broker, pki, devices=devices, extra=f"""
[listeners.coap]
addresses = ["127.0.0.1"]
port = {devep}
[listeners.coap_dtls]
addresses = ["127.0.0.1"]
port = {dtls}
certificate = "{gw_cert[0]}"
private_key = "{gw_cert[1]}"
ca_file = "{pki.ca}"
crl_file = "{crl}"
[limits]
coap_request_timeout_ms = {GUARD_MS}
max_handshakes = 64
[events]
target = "stderr"
burst = 1000
""").replace("[dbus]\nenabled = false", "[dbus]\nenabled = true"))
        # A crl_file that holds no CRL (here: the CA certificate) stops iotgwd at start.
        bad = os.path.join(root, "iotgw-bad-crl.toml")
        write(bad, open(conf).read().replace(f'crl_file = "{crl}"', f'crl_file = "{pki.ca}"'))
        r = subprocess.run([IOTGWD, "--config", bad], env=env, capture_output=True, text=True, timeout=20)
        check(r.returncode != 0 and "holds no valid PEM CRL" in r.stderr,
              f"a crl_file without a CRL: iotgwd refuses to start (exit {r.returncode}: "
              f"{r.stderr.strip().splitlines()[-1] if r.stderr.strip() else ''!r})")
        err = open(os.path.join(root, "iotgwd.err"), "w")
        d = subprocess.Popen([IOTGWD, "--config", conf], env=env, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.time() + 10
        while time.time() < deadline and not counters():
            time.sleep(0.1)
        check(bool(counters()), "iotgwd is up, with CoAP counters in GetStatus")

        def coap(*args, cert=app, timeout=20):
            cmd = ["coap-client-openssl", "-C", pki.ca]
            if cert:
                cmd += ["-c", cert[0], "-j", cert[1]]
            r = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)
            return r.stdout + r.stderr

        url = f"coaps://127.0.0.1:{dtls}/legacy-sensor"
        print("authentication")
        out = coap("-m", "get", f"{url}/time")
        check(":" in out and "4." not in out and "5." not in out, f"GET /time with a valid certificate: {out.strip()!r}")
        out = coap("-N", "-m", "get", f"{url}/time")  # non-confirmable: answered NON, through the async
        check(re.fullmatch(r"[A-Z][a-z]{2} +\d+ \d\d:\d\d:\d\d", out.strip()) is not None,
              f"a non-confirmable GET is answered too: {out.strip()!r}")
        before = counters()
        out = coap("-m", "get", f"{url}/time", cert=None)
        check("handshake failure" in out and "cannot send" in out, "no client certificate: the handshake fails")
        out = coap("-m", "get", f"{url}/time", cert=pki.rogue)
        check("unknown ca" in out, "a certificate from another CA: unknown ca")
        out = coap("-m", "get", f"{url}/time", cert=revoked)
        check("certificate revoked" in out, f"a certificate in crl_file: certificate revoked ({out.strip()[-80:]!r})")
        out = coap("-m", "get", f"{url}/time", cert=other)
        check("4.03" in out, f"a valid certificate the device's coap.clients does not name: 4.03 ({out.strip()!r})")
        after = counters()
        check(after.get("coap_handshakes_failed", 0) - before.get("coap_handshakes_failed", 0) == 3,
              "the three failed handshakes counted")

        print("CRL reload on SIGHUP")
        pki.revoke("revoked-dtls", "other-dtls")
        d.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        out = coap("-m", "get", f"{url}/time", cert=other)
        check("certificate revoked" in out, "after SIGHUP, a newly revoked certificate fails the handshake")
        out = coap("-m", "get", f"{url}/time")
        check(":" in out and "4." not in out and "5." not in out, f"a valid certificate still works: {out.strip()!r}")
        with open(crl, "w") as f:
            f.write("not a CRL\n")
        d.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        out = coap("-m", "get", f"{url}/time", cert=other)
        check("certificate revoked" in out, "a reload with a broken crl_file is rejected: the running CRL stays")
        with open(os.path.join(root, "iotgwd.err")) as f:
            rejected = [line for line in f if "reload rejected" in line]
        check(any("holds no valid PEM CRL" in line for line in rejected),
              f"the config-rejected event names the CRL: {rejected[-1:]}")
        out = coap("-m", "get", f"{url}/time")
        check(":" in out and "4." not in out and "5." not in out, f"and valid clients are still served: {out.strip()!r}")
        pki.revoke("revoked-dtls", "other-dtls")

        print("policy")
        seen = len(device_requests())
        for method, path, expect in [("delete", "/time", "4.03"), ("get", "/async", "4.03"),
                                     ("put", "/time", "4.03"), ("post", "/example_data", "4.03")]:
            out = coap("-m", method, "-e", "x" if method in ("put", "post") else "", f"{url}{path}")
            check(expect in out, f"{method.upper()} {path} refused: {out.strip()!r}")
        out = coap("-m", "get", f"coaps://127.0.0.1:{dtls}/nodevice/time")
        check("4.04" in out, "a path naming no enrolled device: 4.04")
        check(len(device_requests()) == seen, "no refused request reached the device")

        print("block-wise, both ways")
        body = os.urandom(3000).hex()  # 6000 bytes: six 1024-byte blocks
        write(os.path.join(root, "body.txt"), body)
        out = coap("-m", "put", "-b", "512", "-f", os.path.join(root, "body.txt"), f"{url}/example_data")
        check("4." not in out and "5." not in out, f"PUT of 6000 bytes in 512-byte blocks: {out.strip()[:80]!r}")
        direct = subprocess.run(["coap-client-notls", "-m", "get", f"coap://127.0.0.2:{dev_port}/example_data"],
                                capture_output=True, text=True, timeout=20).stdout
        check(direct.strip() == body, "the device holds exactly the body sent through the proxy")
        got = coap("-m", "get", "-b", "256", f"{url}/example_data")
        check(got.strip() == body, f"GET through the proxy in 256-byte blocks returns all {len(body)} bytes")

        print("observe")
        out = coap("-s", "4", "-m", "get", f"{url}/time", timeout=30)
        stamps = re.findall(r"\d\d:\d\d:\d\d", out)
        check(len(set(stamps)) >= 3, f"observe for 4 s relays the first answer and notifications: {out.strip()!r}")
        c = counters()
        check(c.get("coap_notifications", 0) >= 2, f"notifications counted: {c.get('coap_notifications')}")
        time.sleep(0.5)
        check(counters().get("coap_observing", 1) == 0, "the relationship ended with the client")

        print("a device that does not answer")
        t0 = time.time()
        out = coap("-m", "get", f"coaps://127.0.0.1:{dtls}/silent/status")
        elapsed = time.time() - t0
        check("5.04" in out, f"silent device: 5.04 ({out.strip()!r})")
        check(elapsed < GUARD_MS / 1000 + 1.5, f"answered within the guard time ({elapsed:.2f} s, guard {GUARD_MS} ms)")
        check(silent.received >= 1, "the request did reach the silent device")
        check(counters().get("coap_timeouts", 0) >= 1, "the timeout counted")

        print("a device that pushes readings")
        sub = Subscriber(broker, "sensors/#", root)
        r = subprocess.run(["coap-client-notls", "-a", "127.0.0.3", "-m", "post", "-t", "50", "-e", '{"t":21.5}',
                            f"coap://127.0.0.1:{devep}/readings/temp"], capture_output=True, text=True, timeout=20)
        check("4." not in r.stdout + r.stderr and "5." not in r.stdout + r.stderr,
              f"the push is acknowledged: {(r.stdout + r.stderr).strip()!r}")
        check(sub.wait_for('sensors/pusher/readings/temp {"t":21.5}', 5),
              f"the reading arrives at the broker, on the topic its push rule maps it to: {sub.lines()}")
        r = subprocess.run(["coap-client-notls", "-a", "127.0.0.3", "-m", "post", "-t", "0", "-e", "1",
                            f"coap://127.0.0.1:{devep}/config/reset"], capture_output=True, text=True, timeout=20)
        check("4.03" in r.stdout + r.stderr, "a push to a path with no push rule: 4.03")
        r = subprocess.run(["coap-client-notls", "-a", "127.0.0.9", "-m", "post", "-e", "1",
                            f"coap://127.0.0.1:{devep}/readings/temp"], capture_output=True, text=True, timeout=20)
        check("4.03" in r.stdout + r.stderr, "a push from an address that is no enrolled device: 4.03")
        time.sleep(0.5)
        check(len(sub.lines()) == 1, f"only the allowed reading reached the broker: {sub.lines()}")
        # A device that missed the 2.04 repeats its confirmable push with the same message id: it gets
        # the same answer again, and the broker gets the reading once (RFC 7252 §4.5).
        dup = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        dup.bind(("127.0.0.3", 0))
        dup.settimeout(5)
        push = request(2, path_opts(b"readings", b"hum") + opt(1, bytes([50])), b'{"h":40}',
                       mid=0x7777, token=b"\x11")
        answers = []
        for _ in range(2):
            dup.sendto(push, ("127.0.0.1", devep))
            try:
                answers.append(dup.recv(2048))
            except socket.timeout:
                answers.append(None)
        dup.close()
        check(answers[0] is not None and answers[0][:5] == b"\x61\x44\x77\x77\x11" and answers[1] == answers[0],
              f"a repeated confirmable push gets the same 2.04 (ACK, same message id and token): {answers}")
        time.sleep(0.5)
        hum = [line for line in sub.lines() if '{"h":40}' in line]
        check(hum == ['sensors/pusher/readings/hum {"h":40}'], f"and the broker gets that reading once: {hum}")

        print("malformed datagrams at the device-side endpoint (no handshake there)")
        before = counters()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.3", 0))
        s.settimeout(0.2)
        cases = malformed_cases([b"readings", b"temp"]) + [b"\x40\x02\x00\x01" + b"x" * 3000]
        for case in cases:
            s.sendto(case, ("127.0.0.1", devep))
            try:
                s.recv(4096)
            except socket.timeout:
                pass
        s.close()
        after = counters()
        n = after.get("coap_device_malformed", 0) - before.get("coap_device_malformed", 0)
        check(n == len(cases), f"every malformed datagram counted ({n}/{len(cases)})")
        time.sleep(0.3)
        check(len(sub.lines()) == 2, f"nothing of them reached the broker: {sub.lines()}")
        check(d.poll() is None, "iotgwd survived them")

        print("malformed datagrams inside an authenticated DTLS session")
        before = counters()
        seen = len(device_requests())
        cases = malformed_cases([b"legacy-sensor", b"example_data"])
        cases += [request(3, path_opts(b"legacy-sensor", b"example_data") + opt(2049 - 11, b"x"), b"1", mid=40),  # unknown critical
                  request(3, opt(9, b"") + path_opts(b"legacy-sensor", b"example_data", first_delta=2), b"1", mid=41)]  # OSCORE
        probe = subprocess.Popen([PROBE, str(dtls), pki.ca, app[0], app[1], "300"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        check(probe.stdout.readline().strip() == "connected", "the probe completed its handshake")
        counted, libcoap_own, answers = 0, 0, []
        for case in cases:
            c0 = counters()
            probe.stdin.write(case.hex() + "\n")
            probe.stdin.flush()
            replies = []
            for line in iter(probe.stdout.readline, ""):
                if line.strip() == "end":
                    break
                replies.append(line.strip())
            reply = replies[0] if replies else "none"
            c1 = counters()
            answers.append(reply)
            if (c1.get("coap_malformed", 0) + c1.get("coap_denied", 0)
                    > c0.get("coap_malformed", 0) + c0.get("coap_denied", 0)):
                counted += 1
            elif reply == "none" or reply.startswith("reply 70") or reply[8:9] in "89ab":
                libcoap_own += 1  # dropped, reset or a 4.xx/5.xx by libcoap before any handler runs
                print(f"    libcoap itself: {case[:12].hex()}... -> {reply[:24]}")
        probe.stdin.close()
        probe.wait(timeout=10)
        print(f"  {counted} counted by iotgwd, {libcoap_own} refused by libcoap itself (no handler runs)")
        check(len(device_requests()) == seen, "none of them reached the device")
        check(not any(a.startswith("reply 6145") or a.startswith("reply 5145") for a in answers),
              "none was answered 2.05")
        check(counted + libcoap_own == len(cases), "each one counted, or refused by libcoap before the proxy sees it")
        check(counted >= len(cases) // 2, f"most of them counted ({counted} of {len(cases)})")
        check(any(a.startswith("reply 6182") for a in answers), "an unknown critical option is answered 4.02")
        check(d.poll() is None, "iotgwd survived them")

        print("before the handshake: garbage and amplification")
        hello = bytes.fromhex(subprocess.run([PROBE, "hello"], capture_output=True, text=True).stdout.strip())
        garbage = [os.urandom(n) for n in (1, 5, 13, 40, 100, 300, 1200)]
        garbage += [b"\x16\xfe\xfd" + os.urandom(20), b"\x15\xfe\xfd\x00\x00" + os.urandom(10), hello[:30], hello[:-5],
                    bytes([0x17]) + hello[1:], request(1, path_opts(b"legacy-sensor", b"time"))]
        sent = recv = 0
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.5", 0))
        s.settimeout(0.2)
        for g in garbage * 3:
            s.sendto(g, ("127.0.0.1", dtls))
            sent += len(g)
            try:
                while True:
                    recv += len(s.recv(4096))
            except socket.timeout:
                pass
        s.close()
        check(d.poll() is None, f"iotgwd survived {len(garbage) * 3} garbage datagrams on the DTLS port")
        check(recv <= 3 * sent, f"garbage: {recv} bytes back for {sent} sent (ratio {recv / max(sent, 1):.2f}, limit 3)")
        # Unauthenticated requests at the device-side endpoint (small requests, longer refusals).
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.10", 0))  # a source with no history (the budget is per source)
        s.settimeout(0.05)
        sent = recv = 0
        for i in range(100):
            g = request(1, b"", mid=i, token=b"") if i % 2 else b"\x40\x00" + i.to_bytes(2, "big")
            s.sendto(g, ("127.0.0.1", devep))
            sent += len(g)
            try:
                recv += len(s.recv(4096))
            except socket.timeout:
                pass
        s.close()
        check(0 < recv <= 3 * sent, f"device-side endpoint, unknown source: {recv} bytes back for {sent} (ratio {recv / sent:.2f}, limit 3)")

        print("a flood of ClientHellos from many addresses")
        before = counters()
        pid = d.pid
        for i in range(5):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((f"127.0.3.{i + 1}", 0))
            s.settimeout(1)
            s.sendto(hello, ("127.0.0.1", dtls))
            try:
                back = len(s.recv(4096))
            except socket.timeout:
                back = 0
            s.close()
            check(0 < back <= 3 * len(hello),
                  f"a ClientHello of {len(hello)} bytes gets a HelloVerifyRequest of {back} (ratio {back / len(hello):.2f})")

        def flood(addresses):
            sent = recv = 0
            worst = 0.0
            for a in addresses:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((a, 0))
                s.settimeout(0.002)
                s.sendto(hello, ("127.0.0.1", dtls))
                got = 0
                try:
                    got = len(s.recv(4096))
                except socket.timeout:
                    pass
                s.close()
                sent += len(hello)
                recv += got
                worst = max(worst, got / len(hello))
            return sent, recv, worst

        flood([f"127.1.{i // 250}.{i % 250 + 1}" for i in range(500)])  # warm-up: allocator pools
        rss0 = rss_kb(pid)
        sent, recv, worst = flood([f"127.2.{i // 250}.{i % 250 + 1}" for i in range(5000)])
        rss1 = rss_kb(pid)
        after = counters()
        print(f"  5000 ClientHellos ({sent} bytes), {recv} bytes of HelloVerifyRequest back; RSS {rss0} -> {rss1} kB")
        check(worst <= 3.0, f"per source at most 3x back before the handshake (worst {worst:.2f})")
        check(after.get("coap_sessions_opened", 0) == before.get("coap_sessions_opened", 0)
              and after.get("coap_sessions", 0) == 0, "no session from the flood")
        check(abs(rss1 - rss0) <= 1024, f"RSS flat within 1 MB ({rss1 - rss0:+d} kB)")
        check(d.poll() is None, "iotgwd survived the flood")
        sub.stop()
    finally:
        if silent:
            silent.stop()
        if d and d.poll() is None:
            d.terminate()
            d.wait(timeout=10)
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        if broker:
            broker.stop()
        if failures_present():
            print(open(os.path.join(root, "iotgwd.err")).read()[-3000:])
        cleanup(root)
    finish()


def failures_present():
    from iotgw_testlib import failures
    return bool(failures)


if __name__ == "__main__":
    main()
