#!/usr/bin/python3
# SPDX-License-Identifier: GPL-3.0-or-later
"""Attack: observe relationships without bound per device, and sessions that never expire
(issue 15, item 11).

Authenticated clients (coap_dtls_probe) register observations of a device's resource
(coap-server-notls's /time, which notifies every second):

* from two sessions, one device: all together they hold at most
  limits.coap_max_observe_per_device relationships with it; beyond, a registration is served as
  a plain GET (RFC 7641 §4.1). Another device's bound is its own. Before, only the bounds per
  session and in total held (20,000 relationships with one device were possible).
* clients that vanish (killed: no DTLS close_notify) while observing: their sessions expire
  after limits.idle_session_seconds although notifications still go to them, their relationships
  end, and their source address may open sessions again. Before, the notifications kept the
  sessions alive for ever, and enough of them locked the source address out.
"""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from iotgw_testlib import IOTGWD, check, cleanup, finish, require_binary, tmpdir, write  # noqa: E402
from coaplab import (PROBE, Certificates, Gateway, Probe, code_of, coap_config,  # noqa: E402
                     device_policy, free_udp_port, options, request)

PER_DEVICE, PER_SESSION, TOTAL = 8, 32, 48
IDLE = 5
PER_SOURCE = 3
GET = 1


def wait_for(what, seconds):
    """Polls `what` until it is true or `seconds` pass; its last value."""
    deadline = time.time() + seconds
    value = what()
    while not value and time.time() < deadline:
        time.sleep(0.2)
        value = what()
    return value


def main():
    require_binary()
    if os.geteuid() != 0 or not PROBE:
        print("needs root (a private system bus) and COAP_DTLS_PROBE", file=sys.stderr)
        sys.exit(2)
    root = tmpdir("iotgw-coap-observe-idle-")
    gw, procs, probes = None, [], []
    try:
        certs = Certificates(os.path.join(root, "pki"))
        dtls = free_udp_port()
        a_port, b_port = free_udp_port("127.0.0.2"), free_udp_port("127.0.0.3")
        devices = os.path.join(root, "devices.d")
        device_policy(devices, a_port)
        device_policy(devices, b_port, name="other-sensor", address="127.0.0.3")
        for address, port in (("127.0.0.2", a_port), ("127.0.0.3", b_port)):
            procs.append(subprocess.Popen(["coap-server-notls", "-A", address, "-p", str(port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        conf = os.path.join(root, "iotgw.toml")
        limits = f"""
coap_max_observe_per_session = {PER_SESSION}
coap_max_observe = {TOTAL}
coap_max_observe_per_device = {PER_DEVICE}
idle_session_seconds = {IDLE}
max_connections_per_source = {PER_SOURCE}
"""
        write(conf, coap_config(root, certs, ["127.0.0.1"], dtls, devices, limits=limits))
        if subprocess.run([IOTGWD, "--check-config", "--config", conf], capture_output=True).returncode != 0:
            # A gateway from before the bound: measure what it does without it.
            print("  this iotgwd does not know limits.coap_max_observe_per_device: run without it")
            write(conf, coap_config(root, certs, ["127.0.0.1"], dtls, devices,
                                    limits=limits.replace(f"coap_max_observe_per_device = {PER_DEVICE}\n", "")))
        gw = Gateway(root, conf)
        check(bool(gw.counters()), "iotgwd is up")
        mid = [0]

        def probe(wait_ms=150):
            p = Probe(dtls, certs, wait_ms)
            probes.append(p)
            return p

        def observe(p, device, n):
            """n registrations; how many were answered with an Observe option (a relationship)."""
            batch = []
            for _ in range(n):
                mid[0] += 1
                batch.append(request(GET, options((6, b""), (11, device.encode()), (11, b"time")),
                                     mid=mid[0], token=mid[0].to_bytes(4, "big")))
            replies = p.burst(batch)
            tokens = set()
            for r in replies:
                b = bytes.fromhex(r)
                tkl = b[0] & 15
                # The first option of a 2.05 with Observe is option 6: delta 6 in the high nibble.
                if code_of(r) == "2.05" and len(b) > 4 + tkl and b[4 + tkl] >> 4 == 6:
                    tokens.add(b[4:4 + tkl])
            return len(tokens)

        print(f"two sessions observe one device, {PER_DEVICE} relationships allowed with it")
        first, second = probe(), probe()
        check(first.connected and second.connected, "two clients complete their handshakes")
        held = observe(first, "legacy-sensor", 6) + observe(second, "legacy-sensor", 6)
        c = gw.counters()
        print(f"  12 registrations with legacy-sensor: {c.get('coap_observing')} relationships, "
              f"{held} answered as observations")
        check(c.get("coap_observing") == PER_DEVICE,
              f"at most coap_max_observe_per_device = {PER_DEVICE} with it ({c.get('coap_observing')})")
        check(held == PER_DEVICE, f"the others were served without Observe ({12 - held} of 12)")
        other = observe(second, "other-sensor", 3)
        c = gw.counters()
        check(other == 3 and c.get("coap_observing") == PER_DEVICE + 3,
              f"another device's bound is its own ({other} of 3, {c.get('coap_observing')} in all)")
        first.close()
        second.close()
        check(wait_for(lambda: gw.counters().get("coap_observing") == 0, 10),
              "the relationships end with their sessions")

        print(f"{PER_SOURCE} clients observe and vanish (limits.idle_session_seconds = {IDLE})")
        before = gw.counters()
        vanished = []
        for _ in range(PER_SOURCE):
            p = probe()
            check(p.connected, "a client completes its handshake")
            observe(p, "other-sensor", 2)
            vanished.append(p)
        c = gw.counters()
        check(c.get("coap_observing") == 2 * PER_SOURCE, f"they observe ({c.get('coap_observing')})")
        gone = time.time()
        for p in vanished:
            p.proc.kill()  # no close_notify: the client just stops
            p.proc.wait()
        p = probe()
        check(not p.connected, f"meanwhile, max_connections_per_source = {PER_SOURCE}: a new client is refused")
        p.close()
        limit = IDLE + 15
        ended = wait_for(lambda: gw.counters().get("coap_observing") == 0, limit)
        after = gw.counters()
        took = time.time() - gone
        expired = after.get("coap_sessions_expired", 0) - before.get("coap_sessions_expired", 0)
        print(f"  {took:.1f} s after they vanished: {after.get('coap_observing')} relationships left, "
              f"{after.get('coap_sessions')} sessions, {expired} expired")
        check(ended, f"their relationships ended within idle_session_seconds + 15 s ({after.get('coap_observing')} left)")
        check(expired == PER_SOURCE, f"their sessions expired, counted ({expired})")
        p = probe()
        check(p.connected, "and their source address may open a session again")
        r = p.send(request(GET, options((11, b"legacy-sensor"), (11, b"time")), mid=0x7000, token=b"\x77"))
        check([code_of(x) for x in r] == ["2.05"], f"which is served ({[code_of(x) for x in r]})")
        p.close()
        check(gw.alive(), "iotgwd is still running")
    finally:
        for p in probes:
            if p.proc.poll() is None:
                p.close()
        if gw:
            gw.stop()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
        cleanup(root)
    finish()


if __name__ == "__main__":
    main()
