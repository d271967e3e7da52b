#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack: an authenticated DTLS client (or a device) makes the CoAP proxy hold without bound
(issue 14, item 10, the CoAP part).

One client, with a valid certificate, sending raw CoAP inside its DTLS session (coap_dtls_probe):

* observe registrations by the thousand: each session holds at most
  limits.coap_max_observe_per_session relationships and all together at most coap_max_observe;
  beyond, a registration is served as a plain GET (RFC 7641 §4.1), counted;
* hundreds of requests at once to a device that never answers: at most
  limits.coap_max_pending_per_session reach it, the others are 4.29 with Max-Age (RFC 8516);
* block-wise uploads: a Size1 beyond the body limit is 4.13 at once; a body sent block after block
  without end (4 MB) is 4.13 at 64 KiB (before, libcoap collected all of it: RSS grew with it); more than
  4 uploads at once are 4.29, and a client that goes on starting uploads is closed;
* large answers it never fetches: at most 256 KiB of them per session, then 4.29;

and a device whose block-wise answer never ends: the client gets 5.02 and the gateway stops asking
the device for more (before, libcoap asked for ever and collected what came).
"""
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, cleanup, finish, require_binary, tmpdir, write  # noqa: E402
from coaplab import (PROBE, Certificates, FakeDevice, Gateway, Probe, code_of, coap_config,  # noqa: E402
                     device_policy, free_udp_port, options, request, uint)

GUARD_MS = 1500
PER_SESSION, TOTAL, PENDING = 32, 48, 16
GET, PUT = 1, 3


class SilentDevice:
    """Reads and never answers; counts the distinct requests (tokens) it got."""

    def __init__(self, address, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.2)
        self.tokens = set()
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                d = self.sock.recv(4096)
                self.tokens.add(d[4:4 + (d[0] & 15)])
            except socket.timeout:
                pass

    def stop(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def path(*segments):
    return [(11, s.encode()) for s in segments]


def main():
    require_binary()
    if os.geteuid() != 0 or not PROBE:
        print("needs root (a private system bus) and COAP_DTLS_PROBE", file=sys.stderr)
        sys.exit(2)
    root = tmpdir("iotgw-coap-exhaustion-")
    gw, procs, silent, fake, probes = None, [], None, None, []
    try:
        certs = Certificates(os.path.join(root, "pki"))
        dtls = free_udp_port()
        dev_port, silent_port, fake_port = free_udp_port("127.0.0.2"), free_udp_port("127.0.0.4"), free_udp_port("127.0.0.5")
        devices = os.path.join(root, "devices.d")
        device_policy(devices, dev_port, extra='[[coap.rule]]\nmethods = ["PUT"]\npath = "/upload/**"\n')
        device_policy(devices, silent_port, name="silent", address="127.0.0.4")
        device_policy(devices, fake_port, name="fake", address="127.0.0.5")
        procs.append(subprocess.Popen(["coap-server-notls", "-A", "127.0.0.2", "-p", str(dev_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        silent = SilentDevice("127.0.0.4", silent_port)
        fake = FakeDevice("127.0.0.5", fake_port)
        conf = os.path.join(root, "iotgw.toml")
        write(conf, coap_config(root, certs, ["127.0.0.1"], dtls, devices, limits=f"""
coap_request_timeout_ms = {GUARD_MS}
coap_max_observe_per_session = {PER_SESSION}
coap_max_observe = {TOTAL}
coap_max_observe_per_device = {TOTAL}
coap_max_pending_per_session = {PENDING}
"""))
        # In a sanitizer build freed memory is held back (quarantined) to catch its later use, so
        # RSS grows with every allocation made and freed, not only with what is kept: keep that
        # small, or the RSS check below would measure the sanitizer.
        asan = os.environ.get("ASAN_OPTIONS", "")
        gw = Gateway(root, conf, env={"ASAN_OPTIONS": (asan + ":" if asan else "") + "quarantine_size_mb=1"})
        check(bool(gw.counters()), "iotgwd is up")

        def probe(wait_ms=100):
            p = Probe(dtls, certs, wait_ms)
            probes.append(p)
            check(p.connected, "a client completes its handshake")
            return p

        print("observe registrations by the thousand, from two sessions")
        mid = [0]

        def observe_burst(p, n):
            codes = []
            for start in range(0, n, 12):
                batch = []
                for i in range(start, min(start + 12, n)):
                    mid[0] += 1
                    batch.append(request(GET, options((6, b""), *path("legacy-sensor", "time")),
                                         mid=mid[0] & 0xffff, token=mid[0].to_bytes(4, "big")))
                codes += [code_of(r) for r in p.burst(batch)]
            return codes

        first, second = probe(50), probe(50)
        codes = observe_burst(first, 600)
        c = gw.counters()
        check(c.get("coap_observing") == PER_SESSION,
              f"one session holds coap_max_observe_per_session = {PER_SESSION} relationships ({c.get('coap_observing')})")
        check(codes.count("2.05") >= 590, f"every registration was answered 2.05 ({codes.count('2.05')} of 600)")
        codes = observe_burst(second, 600)
        c = gw.counters()
        check(c.get("coap_observing") == TOTAL,
              f"all together they hold coap_max_observe = {TOTAL} ({c.get('coap_observing')})")
        check(c.get("coap_observe_refused", 0) >= 1200 - TOTAL - 10,
              f"the others were served without Observe, counted ({c.get('coap_observe_refused')})")
        first.close()
        second.close()
        time.sleep(0.5)
        check(gw.counters().get("coap_observing") == 0, "the relationships end with their sessions")

        print("a hundred requests at once to a device that never answers")
        p = probe(wait_ms=300)
        before = gw.counters()
        burst = [request(GET, options(*path("silent", "x")), mid=i, token=(0x5000 + i).to_bytes(2, "big"))
                 for i in range(100)]
        codes = [code_of(r) for r in p.burst(burst)]
        time.sleep(GUARD_MS / 1000 + 0.5)
        codes += [code_of(r) for r in p.burst([])]
        after = gw.counters()
        forwarded = after.get("coap_forwarded", 0) - before.get("coap_forwarded", 0)
        check(forwarded == PENDING, f"coap_max_pending_per_session = {PENDING} requests were forwarded ({forwarded})")
        check(codes.count("4.29") == 100 - PENDING, f"the others were 4.29 Too Many Requests ({codes.count('4.29')})")
        check(after.get("coap_rate_limited", 0) - before.get("coap_rate_limited", 0) == 100 - PENDING,
              "each refusal counted")
        p.close()

        print("block-wise uploads")
        p = probe(40)
        block = lambda num, more, szx=6: uint(num << 4 | (8 if more else 0) | szx)  # noqa: E731
        r = p.send(request(PUT, options(*path("legacy-sensor", "upload", "a"), (27, block(0, True)),
                                        (60, uint(100_000_000))), b"x" * 1024, mid=1, token=b"\x01"))
        check([code_of(x) for x in r] == ["4.13"], f"a Size1 of 100 MB: 4.13 at once ({[code_of(x) for x in r]})")
        rss0 = gw.rss_kb()
        codes = []
        for start in range(0, 4096, 32):  # 4 MB in 1 KiB blocks, never a last one
            codes += [code_of(x) for x in p.burst(
                [request(PUT, options(*path("legacy-sensor", "upload", "b"), (27, block(n, True))), b"y" * 1024,
                         mid=(2 + n) & 0xffff, token=b"\x02") for n in range(start, start + 32)])]
        rss1 = gw.rss_kb()
        check(codes[:64] == ["2.31"] * 64 and codes[64] == "4.13",
              f"a body without end: 2.31 up to 64 KiB, then 4.13 ({codes.count('2.31')} x 2.31, then {codes[64:66]})")
        # Kept, the body would be 4 MB; a sanitizer build's allocator alone moves RSS by ~1 MB.
        check(rss1 - rss0 < 2048, f"and the gateway did not keep the 4 MB: RSS {rss0} -> {rss1} kB")
        p.close()
        p = probe()

        def start_uploads(names, first_mid):
            # First blocks of 16 bytes (SZX 0): small datagrams, none lost in a burst.
            return [code_of(x) for x in p.burst(
                [request(PUT, options(*path("legacy-sensor", "upload", n), (27, block(0, True, 0))), b"z" * 16,
                         mid=first_mid + i, token=b"\x03") for i, n in enumerate(names)])]

        codes = start_uploads([f"u{i}" for i in range(60)], 0)
        check(codes.count("2.31") == 4 and codes.count("4.29") == 56,
              f"4 uploads in progress at once, the others 4.29 ({codes.count('2.31')}, {codes.count('4.29')})")
        before = gw.counters()
        for n in range(4):
            start_uploads([f"v{n}-{i}" for i in range(25)], 100 + 25 * n)
        time.sleep(0.3)
        after = gw.counters()
        check(after.get("coap_sessions_closed", 0) - before.get("coap_sessions_closed", 0) == 1,
              "a client that goes on starting uploads after 4.29 is closed")
        r = p.send(request(GET, options(*path("legacy-sensor", "time")), mid=999, token=b"\x05"))
        check(r == [], f"its session answers nothing more ({r})")
        p.close()

        print("large answers the client never fetches")
        p = probe()
        codes = [code_of(x)
                 for i in range(40)
                 for x in p.send(request(GET, options(*path("fake", "big"), (15, f"n={i}".encode())),
                                         mid=i, token=(0x6000 + i).to_bytes(2, "big")))]
        held = 256 * 1024 // len(fake.body)
        check(codes[:held] == ["2.05"] * held and codes[held + 1:] == ["4.29"] * (len(codes) - held - 1),
              f"about {held} of {len(fake.body)} bytes each are held for it, then 4.29 ({codes.count('2.05')} x 2.05, "
              f"{codes.count('4.29')} x 4.29)")
        p.close()

        print("a device whose block-wise answer never ends")
        p = probe(wait_ms=3000)
        before = fake.requests
        r = p.send(request(GET, options(*path("fake", "endless")), mid=1, token=b"\x07"))
        check([code_of(x) for x in r] == ["5.02"], f"the client gets 5.02 ({[code_of(x) for x in r]})")
        asked = fake.requests - before
        time.sleep(2)
        check(fake.requests - before == asked and asked <= 80,
              f"the gateway stopped asking the device for more after {asked} blocks ({fake.requests - before} now)")
        r = p.send(request(GET, options(*path("fake", "big"), (23, uint(6))), mid=2, token=b"\x08"))
        check([code_of(x) for x in r] == ["2.05"], "the device is reachable again with a new session")
        p.close()
        check(gw.alive(), "iotgwd survived all of it")
    finally:
        for p in probes:
            p.close()
        if gw:
            gw.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        if silent:
            silent.stop()
        if fake:
            fake.stop()
        cleanup(root)
    finish()


if __name__ == "__main__":
    main()
