#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack: requests to a silent device, timeouts lost and stale requests sent again (issue 15,
item 13).

Authenticated clients (coap_dtls_probe) send a burst of confirmable PUTs to a device that reads
and never answers. Before, of 3,000 such requests 9 got 5.04 and the rest nothing for over 33 s,
until some other client's request woke the loop (libcoap's timer was not driven when only the
proxy's guard was due); and the device got the requests again ~10 s after the clients had been
told 5.04 (the guard dropped its own record, not libcoap's queued retransmissions).

Now: every request is answered 5.04 by its deadline (limits.coap_request_timeout_ms) with the
loop otherwise idle, and no request answered 5.04 reaches the device again, while another
client's requests to another device keep the loop busy for the ten seconds after.
"""
import os
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import check, cleanup, finish, require_binary, tmpdir, write  # noqa: E402
from coaplab import (PROBE, Certificates, Gateway, Probe, code_of, coap_config,  # noqa: E402
                     device_policy, free_udp_port, options, request)

GUARD_MS = 1500
SESSIONS, PER_SESSION = 4, 32
PUT, GET = 3, 1
# What "by its deadline" allows beyond the guard: a loaded machine and a sanitizer build.
SLACK = 2.5


class SilentDevice:
    """Reads and never answers; logs (time, token) of every datagram it gets."""

    def __init__(self, address, port):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, port))
        self.sock.settimeout(0.2)
        self.log = []
        self.running = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            try:
                d = self.sock.recv(4096)
                self.log.append((time.time(), d[4:4 + (d[0] & 15)]))
            except socket.timeout:
                pass

    def stop(self):
        self.running = False
        self.thread.join()
        self.sock.close()


def token_of(reply_hex):
    b = bytes.fromhex(reply_hex)
    return b[4:4 + (b[0] & 15)]


def main():
    require_binary()
    if os.geteuid() != 0 or not PROBE:
        print("needs root (a private system bus) and COAP_DTLS_PROBE", file=sys.stderr)
        sys.exit(2)
    root = tmpdir("iotgw-coap-deadline-")
    gw, procs, silent, probes = None, [], None, []
    try:
        certs = Certificates(os.path.join(root, "pki"))
        dtls = free_udp_port()
        dev_port, silent_port = free_udp_port("127.0.0.2"), free_udp_port("127.0.0.4")
        devices = os.path.join(root, "devices.d")
        device_policy(devices, dev_port)
        device_policy(devices, silent_port, name="silent", address="127.0.0.4",
                      extra='[[coap.rule]]\nmethods = ["PUT"]\npath = "/**"\n')
        procs.append(subprocess.Popen(["coap-server-notls", "-A", "127.0.0.2", "-p", str(dev_port)],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        silent = SilentDevice("127.0.0.4", silent_port)
        conf = os.path.join(root, "iotgw.toml")
        write(conf, coap_config(root, certs, ["127.0.0.1"], dtls, devices, limits=f"""
coap_request_timeout_ms = {GUARD_MS}
coap_max_pending_per_session = {PER_SESSION}
"""))
        gw = Gateway(root, conf)
        check(bool(gw.counters()), "iotgwd is up")

        clients = []
        for _ in range(SESSIONS):
            p = Probe(dtls, certs, 200)
            probes.append(p)
            clients.append(p)
        check(all(p.connected for p in clients), f"{SESSIONS} clients complete their handshakes")

        print(f"{SESSIONS} x {PER_SESSION} confirmable PUTs at once to a device that never answers")
        answered, codes = {}, {}  # token -> when its answer arrived, and its code
        lock = threading.Lock()

        def reader(p):
            for line in iter(p.proc.stdout.readline, ""):
                line = line.strip()
                if not line.startswith("reply ") or code_of(line[6:]) == "0.00":
                    continue  # an empty ACK is no answer
                with lock:
                    token = token_of(line[6:])
                    if token not in answered:
                        answered[token] = time.time()
                        codes[token] = code_of(line[6:])

        tokens = []
        start = time.time()
        for n, p in enumerate(clients):
            batch = []
            for i in range(PER_SESSION):
                token = bytes([0x70, n, i])
                tokens.append(token)
                batch.append("!" + request(PUT, options((11, b"silent"), (11, b"valve")), b"open",
                                           mid=n * 256 + i, token=token).hex())
            p.proc.stdin.write("\n".join(batch) + "\n")
            p.proc.stdin.flush()
        sent_at = time.time()
        # Every reply the probes read: "wait" keeps each reading until nothing came for 200 ms, so
        # ask again until the deadline, without sending anything to the gateway.
        threads = [threading.Thread(target=reader, args=(p,), daemon=True) for p in clients]
        for t in threads:
            t.start()
        deadline = sent_at + GUARD_MS / 1000 + SLACK
        while time.time() < deadline and len(answered) < len(tokens):
            for p in clients:
                p.proc.stdin.write("wait\n")
                p.proc.stdin.flush()
            time.sleep(0.25)
        late_until = time.time() + 4
        while time.time() < late_until and len(answered) < len(tokens):
            for p in clients:
                p.proc.stdin.write("wait\n")
                p.proc.stdin.flush()
            time.sleep(0.25)
        with lock:
            on_time = [t for t in tokens if t in answered and answered[t] - start <= GUARD_MS / 1000 + SLACK]
            got = len(answered)
            slowest = max(answered.values()) - start if answered else None
            by_code = {c: list(codes.values()).count(c) for c in sorted(set(codes.values()))}
        print(f"  {len(tokens)} requests: {got} answered within {GUARD_MS / 1000 + SLACK + 4:.1f} s ({by_code}), "
              f"{len(on_time)} by the deadline + {SLACK} s; slowest {slowest if slowest is None else round(slowest, 2)} s")
        # Those beyond the device's queue are refused at once (5.03 with Max-Age); the others wait
        # for the device and get 5.04 at the deadline.
        check(len(on_time) == len(tokens),
              f"every request answered by its deadline ({len(on_time)} of {len(tokens)})")
        check(by_code.get("5.04", 0) >= 1 and set(by_code) <= {"5.04", "5.03"},
              f"with 5.04, or 5.03 beyond the device's queue ({by_code})")

        print("ten seconds of another client's requests to another device (the loop is busy)")
        other = Probe(dtls, certs, 300)
        probes.append(other)
        served = []
        busy_until = time.time() + 10
        i = 0
        while time.time() < busy_until:
            i += 1
            served += [code_of(r) for r in other.send(request(GET, options((11, b"legacy-sensor"), (11, b"time")),
                                                             mid=0x4000 + i, token=(0x4000 + i).to_bytes(2, "big")))]
            time.sleep(0.2)
        check(served.count("2.05") >= i // 2, f"the other client is served ({served.count('2.05')} of {i})")
        with lock:
            told = {t: at for t, at in answered.items() if codes[t] == "5.04"}
        log = list(silent.log)
        first = {}
        for at, token in log:
            first.setdefault(token, at)
        # A request is stale once its client was told 5.04 (or, unanswered, once its deadline passed).
        again = [(at, token) for at, token in log if token in first and
                 at > told.get(token, first[token] + GUARD_MS / 1000) + 0.05]
        stale = {token for _, token in again}
        print(f"  the device got {len(log)} datagrams for {len(first)} requests; "
              f"{len(again)} after the client was told 5.04, for {len(stale)} requests")
        check(len(first) >= 1, f"requests reached the device ({len(first)})")
        check(not again, f"no request answered 5.04 was sent to the device again ({len(again)} datagrams)")
        check(gw.alive(), "iotgwd is still running")
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
        cleanup(root)
    finish()


if __name__ == "__main__":
    main()
